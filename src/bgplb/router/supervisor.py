"""Supervision of the router's tasks and callbacks, and per-peer bounds on its event queue.

One :class:`Supervisor` per router daemon owns the RIB task's queue, the per-peer flows and the
decision to give up; :class:`LogLimiter` and :class:`Supervision` are pure (time is a
parameter).

**Nothing dies silently.** Every long-lived task runs under :meth:`Supervisor._supervise`, and every
callback the daemon owns (a session's events, the kernel watcher, BFD) catches what it raises.
An unexpected exception is logged with its traceback and counted (``internal_errors`` per task,
metric ``bgplb_router_internal_errors_total{task}``). If it happened while one peer's event was
handled, that peer is reset with Cease / Administrative Reset (RFC 4486 §4, with an RFC 8203
message) and its routes are purged at once, not kept for Graceful Restart: what the RIB holds of
that peer can no longer be trusted, the other peers' state can. Administrative Reset rather than
Administrative Shutdown (which tells the neighbor the session is meant to stay down) or Out of
Resources (which would mislead): we want the neighbor back, re-sending its routes into a clean
state. What cannot be recovered makes the daemon log why and exit with status 1, so that the
service manager restarts it: an error of the RIB task outside any peer's event (its tables and
the kernel's may disagree from then on), or a task failing more than :data:`MAX_FAILURES` times
within :data:`FAILURE_WINDOW` seconds (for failures handling a peer's event, distinct peers are
counted: one bad peer is reset each time, several in a row mean the router is broken).

Each UPDATE's path is first tried alone in a scratch RIB (``Router._probe``), so an error that
its attributes provoke when the FIB entry is computed (e.g. a link bandwidth the weight
arithmetic cannot take) is raised while that peer's event is handled, not later in the FIB sync
where it could not be blamed on anyone.

**Bounds.** A peer may have at most :data:`MAX_PENDING` events waiting in the queue; beyond that
its socket is no longer read (``BgpPeer.pause_reading``; TCP flow control then slows the sender)
until the RIB task has brought it down to :data:`RESUME_PENDING`. The queue thus holds at most
``MAX_PENDING`` + ``bgplb.io.bgp.MESSAGES_PER_TURN`` events per peer, whatever the peers send
(the transport hands the session at most that many messages per loop turn). Repeated
warnings about a peer (filtered and refused prefixes, bad link bandwidth, paused reading) are
rate-limited per peer and kind (:class:`LogLimiter`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any

from bgplb.bgp.errors import CeaseSubcode
from bgplb.bgp.fsm import State
from bgplb.bgp.session import Event, SessionEstablished
from bgplb.io.bgp import IPAddress
from bgplb.router.bfd import RouterBfd, detach
from bgplb.router.entry import Counters, PeerEntry
from bgplb.router.rib import Rib
from bgplb.router.status import QueueStatus

__all__ = [
    "FAILURE_WINDOW",
    "MAX_FAILURES",
    "MAX_PENDING",
    "RESUME_PENDING",
    "Flow",
    "Item",
    "LogLimiter",
    "RibQueue",
    "Supervision",
    "Supervisor",
]

log = logging.getLogger("bgplb.router")

#: A peer with more events than this waiting for the RIB task is no longer read.
MAX_PENDING = 2000
#: ... until the RIB task has brought it down to this many.
RESUME_PENDING = 200
#: Events handled in one go before the FIB is synced.
BATCH = 2000
#: The RIB task lets the event loop run after this many prefixes (~10-30 ms of work), not
#: after a number of events: one UPDATE may carry one prefix or ~900.
YIELD_WORK = 2000
#: More failures than this within FAILURE_WINDOW seconds: the task cannot be recovered.
MAX_FAILURES = 5
FAILURE_WINDOW = 60.0
#: A failed (restartable) task is started again after this many seconds.
RESTART_DELAY = 0.5
#: At most one warning line per peer and kind in this many seconds.
WARN_INTERVAL = 10.0
#: The RFC 8203 message of the reset after an internal error.
RESET_MESSAGE = "internal error in bgplb router, see its log; session reset"

Item = tuple[PeerEntry | None, Event | str]


class LogLimiter:
    """At most one log line per `interval` seconds per key (e.g. ``(peer, kind)``). Pure: time
    is the `now` argument. Memory is bounded: past `max_keys` keys, idle ones are forgotten."""

    def __init__(self, interval: float = WARN_INTERVAL, max_keys: int = 10_000) -> None:
        self.interval = interval
        self.max_keys = max_keys
        self._last: dict[Hashable, float] = {}
        self._suppressed: dict[Hashable, int] = {}

    def allow(self, key: Hashable, now: float) -> int | None:
        """None: suppress this line (it is counted). Otherwise log it, with the number of lines
        of this key suppressed since the last one shown."""
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return None
        if last is None and len(self._last) >= self.max_keys:
            for k, t in list(self._last.items()):
                if now - t >= self.interval:
                    del self._last[k]
                    self._suppressed.pop(k, None)
            if len(self._last) >= self.max_keys:
                self._last.clear()
                self._suppressed.clear()
        self._last[key] = now
        return self._suppressed.pop(key, 0)


class Supervision:
    """Decides when a failing task must be given up. Pure: time is the `now` argument."""

    def __init__(self, max_failures: int = MAX_FAILURES, window: float = FAILURE_WINDOW) -> None:
        self.max_failures = max_failures
        self.window = window
        self._failures: dict[str, deque[tuple[float, str | None]]] = {}

    def failed(self, task: str, now: float, peer: str | None = None) -> str | None:
        """Record a failure of `task` (while handling `peer`'s event, if given). Returns why the
        daemon must give up, or None. A peer failing again and again counts once: it is reset
        each time; many distinct failures mean the task itself is broken."""
        seen = self._failures.setdefault(task, deque(maxlen=1000))
        seen.append((now, peer))
        while seen and seen[0][0] <= now - self.window:
            seen.popleft()
        distinct = len({p if p is not None else i for i, (_, p) in enumerate(seen)})
        if distinct > self.max_failures:
            return f"failed {distinct} times within {self.window:g} s"
        return None


@dataclass(slots=True, eq=False)
class Flow:
    """The RIB task's view of one connection (one :class:`PeerEntry`)."""

    entry: PeerEntry
    pending: int = 0  # its events waiting in the queue
    paused: bool = False  # its socket is not read (too many pending)
    failed: bool = False  # reset after an internal error: its later events are ignored
    refused: int = 0  # prefixes the RIB refused (policy of rib.py)
    bad_bandwidth: int = 0


class RibQueue(asyncio.Queue[Item]):
    """The RIB task's queue: every put is also seen by `on_put` (per-peer accounting)."""

    def __init__(self, on_put: Callable[[Item], None]) -> None:
        super().__init__()
        self._on_put = on_put

    def put_nowait(self, item: Item) -> None:
        super().put_nowait(item)
        self._on_put(item)


class Supervisor:
    """Supervision and flow control of the router: the RIB task's queue, one :class:`Flow` per
    connection, the tasks' restarts, and the decision to exit (``fatal``, ``stop_event``).

    `peers`: the daemon's neighbors (read); `rib`: reset peers are purged from it; `bfd`: a
    session Established asks it for BFD at once, a reset one releases it."""

    def __init__(
        self, peers: dict[IPAddress, PeerEntry], rib: Rib, counters: Counters, bfd: RouterBfd
    ) -> None:
        self.peers = peers
        self.rib = rib
        self.counters = counters
        self.bfd = bfd
        self.queue: asyncio.Queue[Item] = RibQueue(self._on_enqueue)
        self.flows: dict[int, Flow] = {}  # id(entry) -> its flow (the entry keeps the id unique)
        self.supervision = Supervision()
        self.limiter = LogLimiter()
        self.fatal: str | None = None  # why the daemon gave up (exit status 1)
        self.stop_event = asyncio.Event()

    # -- supervision ----------------------------------------------------------------------------

    async def _supervise(
        self, name: str, factory: Callable[[], Awaitable[None]], *, restartable: bool = True
    ) -> None:
        """Run a long-lived task; log and count what ends it; start it again (after
        RESTART_DELAY) or, if it is not `restartable` or fails too often, give up."""
        while not self.stop_event.is_set():
            try:
                await factory()
                error: BaseException = RuntimeError("the task ended")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error = exc
            self._internal_error(name, error, fatal=not restartable)
            if self.fatal is not None:
                return
            await asyncio.sleep(RESTART_DELAY)

    def _internal_error(
        self, task: str, exc: BaseException, entry: PeerEntry | None = None, *, fatal: bool = False
    ) -> None:
        """Log (with the traceback) and count an unexpected exception of `task`; reset the peer
        whose event was being handled (`entry`), or give up if it cannot be recovered."""
        errors = self.counters.internal_errors
        errors[task] = errors.get(task, 0) + 1
        peer = str(entry.address) if entry is not None else None
        log.error(
            "internal error in %s%s: %s: %s",
            task,
            f" handling an event of {peer}" if peer else "",
            type(exc).__name__,
            exc,
            exc_info=exc,
        )
        if fatal and entry is None:
            why: str | None = "an error outside any peer's event"
        else:
            why = self.supervision.failed(task, time.monotonic(), peer)
        if entry is not None:
            try:
                self._reset_peer(entry)
            except Exception as again:
                log.error("%s: reset after the internal error failed: %r", peer, again)
                why = why or "a peer could not be reset"
        if why is not None:
            self._die(f"{task}: {why}")

    def _die(self, reason: str) -> None:
        if self.fatal is None:
            self.fatal = reason
            log.critical(
                "internal error not recoverable (%s): exiting with status 1 so that the"
                " service manager restarts the router",
                reason,
            )
        self.stop_event.set()

    def _reset_peer(self, entry: PeerEntry) -> None:
        """After an internal error while handling `entry`'s event: purge its routes now (not
        kept for Graceful Restart), ignore its queued events, send Cease/Administrative Reset."""
        flow = self._flow(entry)
        if flow.failed:
            return
        flow.failed = True
        self.counters.internal_resets += 1
        key = str(entry.address)
        if self.peers.get(entry.address) is entry:
            self.rib.forget_peer(key)
        detach(entry)
        log.warning("%s: session reset (Cease/Administrative Reset), its routes purged", key)
        # not from inside the session's own event dispatch (BgpPeer._process): on the next turn
        asyncio.get_running_loop().call_soon(self._stop_peer, entry)

    def _stop_peer(self, entry: PeerEntry) -> None:
        peer = entry.peer
        if peer.session.state is State.IDLE:
            return
        peer.session.stop(peer.now(), CeaseSubcode.ADMINISTRATIVE_RESET, RESET_MESSAGE)
        peer.kick()

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """Exceptions of callbacks nobody awaited: logged by asyncio, and counted here."""
        errors = self.counters.internal_errors
        errors["loop"] = errors.get("loop", 0) + 1
        loop.default_exception_handler(context)

    def warn_limited(self, peer: str, kind: str, msg: str, *args: Any) -> None:
        """A warning about `peer`, at most one per WARN_INTERVAL per (peer, kind)."""
        suppressed = self.limiter.allow((peer, kind), time.monotonic())
        if suppressed is None:
            return
        if suppressed:
            msg += " (%d more suppressed)"
            args = (*args, suppressed)
        log.warning(msg, *args)

    # -- per-peer flow control ------------------------------------------------------------------

    def _flow(self, entry: PeerEntry) -> Flow:
        flow = self.flows.get(id(entry))
        if flow is None or flow.entry is not entry:
            flow = self.flows[id(entry)] = Flow(entry)
        return flow

    def _on_enqueue(self, item: Item) -> None:
        size = self.queue.qsize()
        if size > self.counters.queue_peak:
            self.counters.queue_peak = size
        entry, event = item
        if entry is None:
            return
        try:
            flow = self._flow(entry)
            flow.pending += 1
            if isinstance(event, SessionEstablished) and not flow.failed:
                # BFD for the session from now on (RFC 5882 §4.3), without waiting for the queue
                self.bfd.established(entry)
            if flow.pending > MAX_PENDING and not flow.paused:
                self._pause(flow)
        except Exception as exc:
            self._internal_error("peer-events", exc, entry)

    def _pause(self, flow: Flow) -> None:
        flow.entry.peer.pause_reading()  # its hold timer is suspended meanwhile
        flow.paused = True
        self.counters.pauses += 1
        self.warn_limited(
            str(flow.entry.address),
            "paused",
            "%s: %d events waiting for the RIB: not reading from it until they are handled",
            flow.entry.address,
            flow.pending,
        )

    def _handled(self, entry: PeerEntry) -> None:
        """One of `entry`'s events left the queue."""
        flow = self.flows.get(id(entry))
        if flow is None or flow.entry is not entry:
            return
        flow.pending -= 1
        if flow.paused and flow.pending <= RESUME_PENDING:
            flow.paused = False
            entry.peer.resume_reading()
        if flow.pending <= 0 and self.peers.get(entry.address) is not entry:
            del self.flows[id(entry)]

    def flow_of(self, entry: PeerEntry) -> Flow | None:
        """`entry`'s flow if it has one (status: never creates one)."""
        flow = self.flows.get(id(entry))
        return flow if flow is not None and flow.entry is entry else None

    def queue_status(self) -> QueueStatus:
        flows = list(self.flows.values())
        return QueueStatus(
            depth=self.queue.qsize(),
            peak=self.counters.queue_peak,
            paused_peers=sum(1 for f in flows if f.paused),
            pauses=self.counters.pauses,
            max_pending=MAX_PENDING,
        )

    def queue_stats(self) -> dict[str, int]:
        q = self.queue_status()
        return {
            "depth": q.depth,
            "peak": q.peak,
            "paused_peers": q.paused_peers,
            "pauses": q.pauses,
            "max_pending": q.max_pending,
        }
