"""Rise/fall health state of one check, with flap damping; the health of a service. Pure.

Theory of operation
-------------------
A check starts DOWN: nothing is announced before it has been proven healthy. Each probe
result is fed to :meth:`RiseFall.record` with the time it completed (``now``, monotonic
seconds; this module never reads a clock). A DOWN check goes UP after ``rise`` consecutive
successes; an UP check goes DOWN after ``fall`` consecutive failures. ``record`` returns the
:class:`Transition` at the very result that causes it, so the caller can withdraw at once.

Flap damping (after RFC 2439 §4.2, route flap damping, applied to a check instead of a route):

- every UP → DOWN transition adds ``penalty`` (1000) to a figure of merit that decays
  exponentially with ``half_life`` (default 30 s): ``p(t) = p(t0) * 2 ** (-(t - t0) / half_life)``;
- when the figure reaches ``suppress`` (default 3000) the check is *suppressed*: it stays DOWN,
  even after ``rise`` successes, until the figure has decayed to ``reuse`` (default 750); then
  the next success (with at least ``rise`` in a row) brings it UP;
- the figure is capped at ``reuse * 2 ** (max_suppress / half_life)`` so no check is held
  down longer than ``max_suppress`` (default 120 s) after its last flap.

With the defaults, up to three flaps in a short time are not damped at all (a restarted web
server comes back after ``rise``); the fourth flap in quick succession (the fifth when they are
10 s apart) suppresses. Going DOWN is never delayed: damping only delays the return to UP, so
a failing service is always withdrawn at once. Damping is optional (``damping=None``).

A service is healthy when all its checks are UP (:class:`ServiceHealth`); a service without
checks is healthy.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from enum import Enum


class Health(Enum):
    DOWN = "down"
    UP = "up"


@dataclass(frozen=True, slots=True)
class Damping:
    """Parameters of the flap-damping rule (RFC 2439 names; durations in seconds)."""

    half_life: float = 30.0
    suppress: float = 3000.0
    reuse: float = 750.0
    max_suppress: float = 120.0
    penalty: float = 1000.0

    def __post_init__(self) -> None:
        if self.half_life <= 0 or self.max_suppress <= 0 or self.penalty <= 0:
            raise ValueError("half_life, max_suppress and penalty must be positive")
        if not 0 < self.reuse < self.suppress:
            raise ValueError("need 0 < reuse < suppress")

    @property
    def ceiling(self) -> float:
        """The highest figure of merit: decays to ``reuse`` in exactly ``max_suppress``."""
        return self.reuse * 2 ** (self.max_suppress / self.half_life)

    def decay(self, figure: float, elapsed: float) -> float:
        return figure * 2 ** (-max(elapsed, 0.0) / self.half_life)


@dataclass(frozen=True, slots=True)
class Transition:
    """A check changed state at ``at``; ``detail`` is the probe output that caused it."""

    old: Health
    new: Health
    at: float
    detail: str
    reason: str

    @property
    def up(self) -> bool:
        return self.new is Health.UP


class RiseFall:
    """The rise/fall state machine of one check (see the module docstring)."""

    def __init__(
        self,
        rise: int,
        fall: int,
        initial: Health = Health.DOWN,
        damping: Damping | None = None,
    ) -> None:
        if rise < 1 or fall < 1:
            raise ValueError("rise and fall must be >= 1")
        self.rise = rise
        self.fall = fall
        self.damping = damping
        self.state = initial
        self.successes = 0  # consecutive
        self.failures = 0  # consecutive
        self.suppressed = False
        self.flaps = 0  # UP -> DOWN transitions so far
        self.last_detail = ""
        self._figure = 0.0
        self._figure_at = 0.0

    @property
    def up(self) -> bool:
        return self.state is Health.UP

    def penalty(self, now: float) -> float:
        """The damping figure of merit at ``now`` (0 without damping)."""
        if self.damping is None:
            return 0.0
        return self.damping.decay(self._figure, now - self._figure_at)

    def reuse_at(self, now: float) -> float | None:
        """When a suppressed check may come UP again (None when it is not suppressed)."""
        if self.damping is None or not self.suppressed:
            return None
        figure = self.penalty(now)
        if figure <= self.damping.reuse:
            return now
        return now + self.damping.half_life * math.log2(figure / self.damping.reuse)

    def record(self, ok: bool, now: float, detail: str) -> Transition | None:
        """Feed one probe result; returns the transition it causes, if any."""
        self.last_detail = detail
        if ok:
            self.successes += 1
            self.failures = 0
        else:
            self.failures += 1
            self.successes = 0
        if self.state is Health.UP and self.failures >= self.fall:
            self.state = Health.DOWN
            self.flaps += 1
            self._add_penalty(now)
            return Transition(
                Health.UP, Health.DOWN, now, detail, f"{self.failures} consecutive failure(s)"
            )
        if self.state is Health.DOWN and self.successes >= self.rise:
            reason = f"{self.successes} consecutive success(es)"
            if self.suppressed:
                assert self.damping is not None
                if self.penalty(now) > self.damping.reuse:
                    return None  # held down by damping; see reuse_at()
                self.suppressed = False
                reason += ", flap damping released"
            self.state = Health.UP
            return Transition(Health.DOWN, Health.UP, now, detail, reason)
        return None

    def _add_penalty(self, now: float) -> None:
        if self.damping is None:
            return
        figure = min(self.penalty(now) + self.damping.penalty, self.damping.ceiling)
        self._figure, self._figure_at = figure, now
        if figure >= self.damping.suppress:
            self.suppressed = True


class ServiceHealth:
    """A service is healthy when every one of its checks is UP (and with no checks at all)."""

    def __init__(self, checks: Iterable[Hashable]) -> None:
        self._up: dict[Hashable, bool] = dict.fromkeys(checks, False)

    @property
    def healthy(self) -> bool:
        return all(self._up.values())

    def down_checks(self) -> list[Hashable]:
        return [key for key, up in self._up.items() if not up]

    def update(self, check: Hashable, up: bool) -> bool | None:
        """Record a check's state; returns the service's new health if it changed."""
        if check not in self._up:
            raise KeyError(check)
        before = self.healthy
        self._up[check] = up
        after = self.healthy
        return after if after != before else None
