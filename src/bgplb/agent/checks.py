"""The agent's health checks: :class:`HealthChecks`.

A :class:`~bgplb.health.CheckRunner` runs every check in its own task; a check transition is
handed to the state at once (event-driven withdrawal, no polling): ``on_change`` is called in the
same event-loop step, and the owner pumps the state's actions.

*Stop drain*: a ``systemd`` check whose probe reports ``deactivating`` (:data:`DEACTIVATING`:
``systemctl stop`` or ``restart`` has begun) is not a failure here: the check counts as up for
the service's health and the state is told the service is stopping
(:meth:`~bgplb.agent.state.AgentState.set_stopping`: GRACEFUL_SHUTDOWN, withdrawal after
``drain_time``). This is decided on every probe result (``on_result``, which the runner calls
before the transition), so the check's own transition to DOWN that follows changes nothing
(``fall`` is 1 for a ``systemd`` check). The next result decides how the stop ends: any other
down state (``inactive``, ``failed``, ``activating`` of a restart, a lost bus) is the check's
failure, told to the state at once (withdrawal); ``active`` again ends the stop drain once the
check is UP (after its ``rise``, at once if it never went down).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable

from bgplb.agent.metrics import AgentMetrics
from bgplb.agent.runtime import Clock
from bgplb.agent.state import AgentState
from bgplb.agent.status import CheckStatus
from bgplb.config import AgentConfig, CheckConfig, ServiceConfig, SystemdCheck
from bgplb.health.checks import (
    DEACTIVATING,
    CheckEvent,
    CheckRunner,
    Probe,
    ProbeResult,
    make_probe,
)
from bgplb.health.state import ServiceHealth

log = logging.getLogger("bgplb.agent")

CheckKey = tuple[str, int]  # (service, index of the check)


def _key(key: Hashable) -> CheckKey:
    """The runner hands back the keys it was given: (service, index)."""
    if not (isinstance(key, tuple) and len(key) == 2):
        raise TypeError(f"not a check key: {key!r}")
    service, index = key
    return str(service), int(index)


class HealthChecks:
    """Keeps the runner's checks equal to the config's and feeds their verdicts to the state."""

    def __init__(
        self,
        state: AgentState,
        metrics: AgentMetrics,
        clock: Clock,
        on_change: Callable[[], None],
        *,
        probe_factory: Callable[[CheckConfig], Probe] = make_probe,
        jitter: float = 0.1,
    ) -> None:
        self.state = state
        self.metrics = metrics
        self.clock = clock
        self.on_change = on_change
        self.health: dict[str, ServiceHealth] = {}
        # systemd checks whose unit is deactivating: up for the health, the service drains
        self.stopping: set[CheckKey] = set()
        self.runner = CheckRunner(
            self._on_check,
            on_result=self._on_result,
            jitter=jitter,
            probe_factory=probe_factory,
            on_error=lambda: metrics.internal_error("check-callback"),
        )

    def start(self) -> None:
        self.runner.start()

    async def stop(self) -> None:
        await self.runner.stop()

    async def sync(self, cfg: AgentConfig) -> None:
        """Make the runner run exactly cfg's checks: changed or removed ones are stopped, new
        or changed ones added (they start DOWN); unchanged checks keep their state."""
        wanted: dict[CheckKey, CheckConfig] = {
            (s.name, i): check for s in cfg.services for i, check in enumerate(s.checks)
        }
        for status in self.runner.statuses():
            key = _key(status.key)
            if key not in wanted or wanted[key] != status.check:
                self.stopping.discard(key)
                await self.runner.remove(key)
        current = {_key(status.key) for status in self.runner.statuses()}
        for key, check in wanted.items():
            if key not in current:
                self.runner.add(key, check)

    def rebuild(self, cfg: AgentConfig, reason: str) -> None:
        """Recompute every service's health from its checks and tell the state."""
        now = self.clock.now()
        self.health = {}
        for s in cfg.services:
            keys = [(s.name, i) for i in range(len(s.checks))]
            health = ServiceHealth(keys)
            for key in keys:
                health.update(key, self._up(key))
            self.health[s.name] = health
            self.metrics.service_healthy.labels(s.name).set(1 if health.healthy else 0)
            # counters get their series at 0 now: rate()/increase() then see the first event
            self.metrics.announcements.labels(s.name)
            self.metrics.withdrawals.labels(s.name)
            if health.healthy:
                self.state.set_health(s.name, True, now, reason)
            else:
                down = ", ".join(self.describe(_key(k)) for k in health.down_checks())
                self.state.set_health(s.name, False, now, f"{reason}: waiting for {down}")
            stopping = any(key in self.stopping for key in keys)
            what = "unit deactivating" if stopping else "no stop under way"
            self.state.set_stopping(s.name, stopping, now, f"{reason}: {what}")

    def describe(self, key: CheckKey) -> str:
        try:
            return f"check {key[1]} ({self.runner.status(key).check.describe()})"
        except KeyError:
            return f"check {key[1]}"

    def have_verdicts(self) -> bool:
        """Every check is UP, or has failed `fall` times (Graceful Restart waits for this)."""
        return all(
            s.machine.up or s.machine.failures >= s.machine.fall for s in self.runner.statuses()
        )

    def statuses(self, service: ServiceConfig) -> list[CheckStatus]:
        out = []
        for i, check in enumerate(service.checks):
            try:
                status = self.runner.status((service.name, i))
            except KeyError:
                continue
            last = status.last
            out.append(
                CheckStatus(
                    check=check.describe(),
                    state=status.machine.state.value,
                    suppressed=status.machine.suppressed,
                    last_ok=last.ok if last else None,
                    latency_ms=round(last.latency * 1000, 2) if last else None,
                    output=last.detail if last else None,
                    probes=status.probes,
                )
            )
        return out

    def _on_check(self, event: CheckEvent) -> None:
        key = _key(event.key)
        service = key[0]
        up = event.transition.up
        what = self.describe(key)
        detail = event.result.detail
        log.log(
            logging.INFO if up else logging.WARNING,
            "service %s: %s %s: %s (%s)",
            service,
            what,
            "up" if up else "down",
            detail,
            event.transition.reason,
            extra={"service": service, "check": what, "up": up},
        )
        self.metrics.check_up.labels(service, str(key[1])).set(1 if up else 0)
        health = self.health.get(service)
        if health is None:
            return
        changed = health.update(key, up or key in self.stopping)
        if changed is not None:
            self.metrics.service_healthy.labels(service).set(1 if changed else 0)
            reason = f"{what} {'up' if up else 'down'}: {detail}"
            self.state.set_health(service, changed, self.clock.now(), reason)
            self.on_change()

    def _on_result(self, key: Hashable, result: ProbeResult) -> None:
        service, index = _key(key)
        self.metrics.check_duration.labels(service, str(index)).observe(result.latency)
        k = (service, index)
        try:
            status = self.runner.status(k)
        except KeyError:
            return
        if not isinstance(status.check, SystemdCheck):
            return
        if not result.ok and result.detail == DEACTIVATING:
            if k not in self.stopping:
                self.stopping.add(k)
                log.warning(
                    "service %s: %s: unit deactivating: draining before the stop",
                    service,
                    self.describe(k),
                    extra={"service": service, "check": self.describe(k), "up": False},
                )
                self._stopping_changed(service, f"{self.describe(k)}: unit deactivating")
        elif k in self.stopping:
            if result.ok and not status.machine.up:
                return  # active again: the stop drain lasts until the check is UP (rise)
            self.stopping.discard(k)
            health = self.health.get(service)
            what = f"{self.describe(k)} {'up' if result.ok else 'down'}: {result.detail}"
            if health is not None:
                changed = health.update(k, status.machine.up)
                if changed is not None:  # the stop ended in a failure: withdraw at once
                    self.metrics.service_healthy.labels(service).set(1 if changed else 0)
                    self.state.set_health(service, changed, self.clock.now(), what)
            self._stopping_changed(service, what)

    def _up(self, key: CheckKey) -> bool:
        """The check counts as up for its service: UP, or its unit is deactivating."""
        try:
            up = self.runner.status(key).machine.up
        except KeyError:
            up = False
        return up or key in self.stopping

    def _stopping_changed(self, service: str, reason: str) -> None:
        stopping = any(k[0] == service for k in self.stopping)
        self.state.set_stopping(service, stopping, self.clock.now(), reason)
        self.on_change()
