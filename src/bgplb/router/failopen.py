"""Fail open: keep a VIP's paths when every one of them fails at once (a stalled router).

Theory of operation. A router process stopped for longer than the BFD detection time (a
SIGSTOP, a long garbage collection, a VM paused, a CPU starved) sees every BFD session and,
later, every hold timer fail together when it runs again, while the servers behind them are
fine. Purging every path then blackholes the whole service because of the router itself.
Envoy's panic threshold answers the same question for its health checks: when too few hosts
are healthy, it sends traffic to all of them rather than to none. Here:

* **Only failures count** (:func:`failure_kind`): our BFD session going Down (RFC 5880
  §6.8.4; the Up -> Down the router acts on, RFC 5882 §3.2), our hold timer expiring (RFC 4271
  §6.5), a NOTIFICATION *received* with Hold Timer Expired (the neighbor's own hold timer: it
  did not hear from us) or Cease / BFD Down (RFC 9384: its BFD did not hear from us). Not
  failures: withdrawals, a GRACEFUL_SHUTDOWN drain (a draining path is never kept), any other
  NOTIFICATION (administrative shutdown or reset, deconfiguration, max-prefix, an error in a
  message), an internal error of ours, and a TCP connection closed by FIN/RST without a
  NOTIFICATION: the neighbor's host answered, and Graceful Restart (RFC 4724) is the tool for
  that case.
* **At once.** Each failure is remembered for ``window`` seconds (:class:`FailOpen`). When a
  failure leaves a VIP without any usable path that is not itself kept (a VIP that had one),
  the VIP gets back every path it lost to a failure within the window — kept, not draining —
  marked *stale* and held by its peer, as the Graceful Restart helper holds a restarting
  peer's paths (:class:`bgplb.router.rib.Rib` does this; its expiry machinery purges them).
  A failure that leaves other usable paths changes nothing: that server's path goes at once.
* **The end.** Kept paths go when ``hold`` has passed since they were kept; when their peer
  comes back (its fresh routes replace them; its End-of-RIB purges the rest); when any peer of
  the event comes back, the others get :data:`RETURN_GRACE` seconds to follow (the router
  runs again: a server that does not return now is really gone); and at once, for a VIP, when
  a usable path from a peer outside the event appears for it.

This module is pure (no clock, no I/O): the RIB calls :meth:`FailOpen.failed`,
:meth:`FailOpen.recent` and the daemon :meth:`FailOpen.take_logs` after each batch.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bgplb.bgp.errors import CeaseSubcode, ErrorCode
from bgplb.bgp.events import SessionDown

if TYPE_CHECKING:  # the RIB, which imports this module, stays free of the config layer
    from bgplb.config import RouterConfig

RETURN_GRACE = 5.0
"""Seconds the other kept peers of an event get to come back once one of them is back."""

MIN_WINDOW = 0.5
"""Smallest default window: failures of a resumed process arrive within milliseconds, those of
a real outage within one BFD detection time of each other."""

BFD_DOWN = "BFD Down"
HOLD_EXPIRED = "hold timer expired"
PEER_HOLD_EXPIRED = "peer's hold timer expired"
PEER_BFD_DOWN = "peer's BFD Down"


def failure_kind(event: SessionDown, bfd_down: bool) -> str | None:
    """Why `event` is a failure (see the module docstring), or None when it is not."""
    if bfd_down:
        return BFD_DOWN
    if event.hold_expired:
        return HOLD_EXPIRED
    n = event.notification
    if n is not None and not event.local:
        if n.code == ErrorCode.HOLD_TIMER_EXPIRED:
            return PEER_HOLD_EXPIRED
        if n.code == ErrorCode.CEASE and n.subcode == CeaseSubcode.BFD_DOWN:
            return PEER_BFD_DOWN
    return None


def default_window(detection_times: list[float]) -> float:
    """The default ``fail_open_window``: the longest BFD detection time, at least MIN_WINDOW."""
    return max([MIN_WINDOW, *detection_times])


def from_config(config: RouterConfig) -> FailOpen | None:
    """The router's fail-open policy from ``[fib] fail_open*`` (None when off): hold defaults
    to ``[bgp] hold_time`` (9 s when it is 0), window to :func:`default_window` of the
    ranges' BFD detection times."""
    fib = config.fib
    if not fib.fail_open:
        return None
    hold = fib.fail_open_hold or float(config.bgp.hold_time or 9)
    detection = [
        r.bfd.interval_ms * r.bfd.multiplier / 1000 for r in config.peer_ranges if r.bfd is not None
    ]
    window = fib.fail_open_window or default_window(detection)
    return FailOpen(hold, window)


@dataclass(slots=True)
class Failure:
    """One peer lost by failure at `at`: its paths as they were (prefix -> path) and its
    `PeerState` (for the next-hop rules when its paths are kept)."""

    peer: str
    at: float
    kind: str
    paths: dict[Any, Any]
    state: Any


@dataclass(slots=True)
class Event:
    """One fail-open episode: from the first kept path until none is left."""

    started: float
    first_failure: float
    last_failure: float
    hold: float
    vips: set[Any] = field(default_factory=set)
    peers: dict[str, str] = field(default_factory=dict)  # peer -> failure kind
    logged_vips: int = 0
    ended_by: dict[str, str] = field(default_factory=dict)  # peer -> why its kept paths went


class FailOpen:
    """The failures of the last `window` seconds and the current episode (pure: `now` is
    passed in). `hold`: how long kept paths stay at most."""

    def __init__(self, hold: float, window: float) -> None:
        if hold <= 0 or window <= 0:
            raise ValueError("fail-open hold and window must be positive")
        self.hold = hold
        self.window = window
        self._recent: deque[Failure] = deque()
        self.event: Event | None = None
        self.events = 0  # episodes started, for metrics
        self._logs: list[tuple[str, str]] = []

    def failed(self, failure: Failure) -> None:
        """Remember a failure (the older ones beyond the window are forgotten)."""
        self._prune(failure.at)
        self._recent.append(failure)

    def recent(self, now: float) -> Iterator[Failure]:
        """The failures of the window, newest first, one per peer."""
        self._prune(now)
        seen: set[str] = set()
        for f in reversed(self._recent):
            if f.peer not in seen:
                seen.add(f.peer)
                yield f

    def _prune(self, now: float) -> None:
        while self._recent and self._recent[0].at < now - self.window:
            self._recent.popleft()

    def kept(self, vip: Any, failure: Failure, now: float) -> Event:
        """`failure`'s path of `vip` is kept: the episode (started if none)."""
        ev = self.event
        if ev is None:
            ev = self.event = Event(now, failure.at, failure.at, self.hold)
            self.events += 1
        ev.first_failure = min(ev.first_failure, failure.at)
        ev.last_failure = max(ev.last_failure, failure.at)
        ev.vips.add(vip)
        ev.peers.setdefault(failure.peer, failure.kind)
        return ev

    def note_end(self, peer: str, why: str) -> None:
        """`peer`'s kept paths are gone (or going) because of `why` (first reason wins)."""
        if self.event is not None:
            self.event.ended_by.setdefault(peer, why)

    def check(self, kept_peers: int, now: float) -> None:
        """After a batch: log what started, grew or ended. `kept_peers`: peers still holding
        kept paths."""
        ev = self.event
        if ev is None:
            return
        if len(ev.vips) > ev.logged_vips:
            grown = ev.logged_vips > 0
            ev.logged_vips = len(ev.vips)
            self._logs.append(("warning", _start_message(ev, grown)))
        if kept_peers == 0:
            self._logs.append(("warning", _end_message(ev, now)))
            self.event = None

    def take_logs(self) -> list[tuple[str, str]]:
        """(level, message) lines to log since the last call."""
        logs, self._logs = self._logs, []
        return logs


def _peer_list(peers: list[str], shown: int = 5) -> str:
    text = ", ".join(sorted(peers, key=_address_key)[:shown])
    return text + (f", ... (+{len(peers) - shown})" if len(peers) > shown else "")


def _address_key(peer: str) -> tuple[int, str]:
    return (len(peer), peer)


def _start_message(ev: Event, grown: bool) -> str:
    by_kind: dict[str, list[str]] = {}
    for peer, kind in ev.peers.items():
        by_kind.setdefault(kind, []).append(peer)
    kinds = "; ".join(f"{kind}: {_peer_list(peers)}" for kind, peers in sorted(by_kind.items()))
    n = len(ev.vips)
    return (
        f"fail-open: {n} VIP{'s' if n != 1 else ''} lost every path to failures within "
        f"{ev.last_failure - ev.first_failure:.2f} s ({kinds}); keeping them for "
        f"{ev.hold:g} s" + (" (the episode grew)" if grown else "")
    )


def _end_message(ev: Event, now: float) -> str:
    by_why: dict[str, list[str]] = {}
    for peer in ev.peers:
        by_why.setdefault(ev.ended_by.get(peer, "gone"), []).append(peer)
    whys = "; ".join(f"{why}: {_peer_list(peers)}" for why, peers in sorted(by_why.items()))
    n = len(ev.vips)
    plural = "s" if n != 1 else ""
    return f"fail-open over after {now - ev.started:.1f} s for {n} VIP{plural} ({whys})"
