"""`bgplb router`: BGP sessions from servers into kernel ECMP nexthop groups.

Structure (one owner per table):

* a :class:`~bgplb.io.bgp.BgpListener` per listening port accepts connections; a source inside a
  ``[[peer_ranges]]`` prefix (most specific range wins) gets a passive
  :class:`~bgplb.bgp.session.Session` of its own (dynamic neighbor); a source outside every range
  is refused with a log line and nothing else happens;
* every session event goes into one queue; a single task (:meth:`RibTask.run`) owns the pure
  :class:`~bgplb.router.rib.Rib`, applies policy (``accept``, ``max_prefixes``), and after each
  batch of events pushes the desired state to the FIB (:class:`~bgplb.linux.fibapi.Fib`:
  :class:`~bgplb.linux.fib.KernelFib`, or :class:`~bgplb.linux.memfib.MemoryFib` in tests);
* the kernel's nexthop/route notifications are watched: whatever of ours someone deletes is
  re-installed; on start our stale objects are removed (reconcile), on exit ours are removed
  (unless ``[fib] keep_on_exit``);
* SIGTERM / SIGINT: clean exit (Cease/Administrative Shutdown to every peer); SIGHUP: reload.

Supervision (nothing dies silently) and per-peer bounds: :mod:`bgplb.router.supervisor`.

The router is made of parts, each with one job and its dependencies passed to its
constructor (no part reaches into another through the daemon):

* :class:`~bgplb.router.ranges.PeerRanges` (``sessions``): listeners, admission, the neighbors,
  reload;
* :class:`~bgplb.router.supervisor.Supervisor` (``supervisor``): the RIB task's queue, per-peer
  flow control, internal errors, the decision to exit;
* :class:`~bgplb.router.kernel.KernelSide` (``kernel``): the FIB, connection pinning
  (:mod:`bgplb.router.pinning_runtime`), the connected subnets;
* :class:`~bgplb.router.bfd.RouterBfd` (``bfd``): BFD of the neighbors;
* :class:`~bgplb.router.report.RouterReport` (``report``): the typed status
  (:mod:`bgplb.router.status`), served by :class:`~bgplb.control.router_status.RouterStatusServer`.

* :class:`RibTask` (``rib_task``, here): the only writer of the RIB (policy, the scratch RIB
  that blames a bad path on its peer, max_prefixes).

:class:`Router` wires them and runs start-up and shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import logging
import signal
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bgplb.bgp.attributes import PathAttributes
from bgplb.bgp.errors import CeaseSubcode
from bgplb.bgp.families import AFI, IPV4_UNICAST, IPV6_UNICAST, SAFI
from bgplb.bgp.prefix import Prefix
from bgplb.bgp.session import (
    EndOfRibReceived,
    Event,
    InternalSessionError,
    RoutesReceived,
    SessionDown,
    SessionEstablished,
)
from bgplb.config import RouterConfig
from bgplb.control.router_status import RouterStatusServer
from bgplb.control.socket import ControlError
from bgplb.io.bgp import BgpListener, IPAddress
from bgplb.io.loopwatch import LoopWatch
from bgplb.io.sdnotify import sd_notify
from bgplb.linux.fibapi import Fib
from bgplb.router import failopen
from bgplb.router.bfd import RouterBfd, detach
from bgplb.router.entry import Counters
from bgplb.router.kernel import CONNECTED_POLL, KernelSide, default_router_id, read_connected
from bgplb.router.ranges import (
    OUR_RESTART_TIME,
    PeerEntry,
    PeerRanges,
    RangeState,
    compile_ranges,
)
from bgplb.router.report import RouterReport
from bgplb.router.rib import Rib, UpdateResult
from bgplb.router.supervisor import (
    BATCH,
    MAX_PENDING,
    YIELD_WORK,
    Flow,
    Item,
    LogLimiter,
    Supervision,
    Supervisor,
)

__all__ = [
    "CONNECTED_POLL",
    "FAMILIES",
    "MAX_PENDING",
    "OUR_RESTART_TIME",
    "Counters",
    "Flow",
    "KernelSide",
    "LogLimiter",
    "PeerEntry",
    "PeerRanges",
    "RangeState",
    "RibTask",
    "Router",
    "RouterBfd",
    "RouterReport",
    "Supervision",
    "Supervisor",
    "compile_ranges",
    "default_router_id",
    "read_connected",
    "run_router",
    "setup_logging",
]

log = logging.getLogger("bgplb.router")

#: Paths remembered as probed (the set is emptied when full).
PROBED_MAX = 4096
# gc.set_threshold while the router runs (defaults: 700, 10, 10): see Router.run
GC_THRESHOLD = (100_000, 50, 1000)


class Router:
    """The router daemon. `run()` until `stop` is set (or a signal); returns the exit status."""

    def __init__(self, config: RouterConfig, config_path: str | Path | None = None) -> None:
        self.peers: dict[IPAddress, PeerEntry] = {}
        self.counters = Counters()
        bgp = config.bgp
        # graceful_restart = false: we do not advertise the capability, so we are no helper
        # either (RFC 4724 §4.2): a closed session purges at once
        rib = Rib(
            max_stale_time=bgp.max_stale_time if bgp.graceful_restart else 0.0,
            fail_open=failopen.from_config(config),  # None when [fib] fail_open = false
        )
        self.bfd = RouterBfd(
            self.peers,
            lambda: self.kernel.connected,
            lambda task, exc, entry: self.supervisor._internal_error(task, exc, entry),
            config.bfd.realtime_priority,
        )
        self.supervisor = Supervisor(self.peers, rib, self.counters, self.bfd)
        self.queue = self.supervisor.queue
        self.sessions = PeerRanges(
            config, config_path, self.peers, self.counters, self.queue, self.bfd
        )
        self.kernel = KernelSide(
            config.fib, rib, self.counters, self.queue, self.supervisor._internal_error
        )
        self.rib_task = RibTask(
            self.peers, rib, self.counters, self.supervisor, self.kernel, self.sessions
        )
        self.loop_watch: LoopWatch | None = None  # while running
        self.report = RouterReport(
            self.sessions, self.kernel, self.supervisor, lambda: self.loop_watch
        )
        self._tasks: list[asyncio.Task[None]] = []

    # -- the parts' state, under the names it always had ----------------------------------------

    @property
    def config(self) -> RouterConfig:
        return self.sessions.config  # a reload replaces it

    @property
    def listeners(self) -> list[BgpListener]:
        return self.sessions.listeners

    @property
    def router_id(self) -> ipaddress.IPv4Address | None:
        return self.sessions.router_id

    @router_id.setter
    def router_id(self, value: ipaddress.IPv4Address | None) -> None:
        self.sessions.router_id = value

    @property
    def rib(self) -> Rib:
        return self.kernel.rib

    @rib.setter
    def rib(self, rib: Rib) -> None:
        self.kernel.rib = self.supervisor.rib = self.rib_task.rib = rib

    @property
    def fib(self) -> Fib | None:
        return self.kernel.fib

    @fib.setter
    def fib(self, fib: Fib | None) -> None:
        self.kernel.fib = fib

    @property
    def fatal(self) -> str | None:
        return self.supervisor.fatal

    @property
    def stop_event(self) -> asyncio.Event:
        return self.supervisor.stop_event

    # -- lifecycle ------------------------------------------------------------------------------

    async def run(self) -> int:
        thresholds = gc.get_threshold()
        # Millions of long-lived objects (paths, prefixes, FIB state) make CPython's default
        # collector run full collections of 200-450 ms during a big load; collect the young
        # generation less often and the old one rarely (big syncs also freeze what they built:
        # bgplb.router.kernel).
        gc.set_threshold(*GC_THRESHOLD)
        try:
            return await self._run()
        finally:
            gc.set_threshold(*thresholds)

    async def _run(self) -> int:
        loop = asyncio.get_running_loop()
        sup, kernel, sessions = self.supervisor, self.kernel, self.sessions
        loop.set_exception_handler(sup._loop_exception)
        connected = await asyncio.to_thread(read_connected)
        kernel.connected = connected
        self.rib.set_connected(connected)
        self.rib_task.probe_rib.set_connected(connected)
        if sessions.router_id is None:
            sessions.router_id = default_router_id(connected)
        if kernel.fib_config.install:
            kernel._open_fib()
        watch = self.loop_watch = LoopWatch(period=0.05)
        watch.start()
        status = RouterStatusServer(self.config.control, self.report, sup._supervise)
        try:
            await status.start()
        except (ControlError, OSError) as exc:
            log.error("control socket: %s", exc)
            await watch.stop()
            kernel._close_fib()
            return 1
        try:
            await sessions._start_listeners()
        except OSError as exc:
            log.error("cannot listen: %s", exc)
            await status.close()
            await watch.stop()
            kernel._close_fib()
            return 1
        for sig, handler in (
            (signal.SIGTERM, sup.stop_event.set),
            (signal.SIGINT, sup.stop_event.set),
            (signal.SIGHUP, sessions._on_sighup),
        ):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, handler)
        self._tasks = [
            loop.create_task(sup._supervise("rib", self.rib_task.run, restartable=False)),
            loop.create_task(sup._supervise("connected", kernel._connected_task)),
        ]
        log.info(
            "router AS %s id %s: %d peer range(s), fib %s",
            self.config.bgp.asn,
            self.router_id,
            len(sessions.ranges),
            f"{self.config.fib.group} table {self.config.fib.table}"
            if self.config.fib.install
            else "not installed",
        )
        sd_notify("READY=1\nSTATUS=routing")
        await self.stop_event.wait()
        sd_notify("STOPPING=1\nSTATUS=shutting down")
        log.info("shutting down" + (" after an unrecoverable internal error" if self.fatal else ""))
        # A second SIGTERM/SIGINT must not kill us half-way: the kernel clean-up comes last
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._signal_while_stopping, sig)
        for listener in sessions.listeners:
            await listener.close()
        sessions.abort_candidates()  # connections waiting for their OPEN next to a known session
        if self.fatal:  # we will be back: the neighbors should reconnect
            subcode, message = CeaseSubcode.ADMINISTRATIVE_RESET, "router restarting after an error"
        else:
            subcode, message = CeaseSubcode.ADMINISTRATIVE_SHUTDOWN, "router shutting down"
        await asyncio.gather(
            *(e.peer.stop(message, subcode) for e in list(self.peers.values())),
            return_exceptions=True,
        )
        self.bfd.close()  # AdminDown: not a failure for the neighbors (RFC 5882 §3.2)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await status.close()
        await watch.stop()
        kernel._close_fib()
        return 1 if self.fatal else 0

    @staticmethod
    def _signal_while_stopping(sig: int) -> None:
        log.warning(
            "%s: already shutting down; removing our routes from the kernel first "
            "(SIGKILL would leave them)",
            signal.Signals(sig).name,
        )


class RibTask:
    """The RIB task: the only writer of the :class:`~bgplb.router.rib.Rib`. It takes the
    sessions' events from the supervisor's queue, applies the ranges' policy (``accept``,
    ``max_prefixes``), tries each new path alone in a scratch RIB first (an error is blamed on
    its peer), and after each batch has the kernel side sync the FIB.

    `peers`: the neighbors (a session that ended leaves them here); `sessions`: reload;
    `supervisor`: flows and internal errors; `kernel`: the fast path of a lost peer, End-of-RIB,
    the FIB sync."""

    def __init__(
        self,
        peers: dict[IPAddress, PeerEntry],
        rib: Rib,
        counters: Counters,
        supervisor: Supervisor,
        kernel: KernelSide,
        sessions: PeerRanges,
    ) -> None:
        self.peers = peers
        self.rib = rib
        self.counters = counters
        self.supervisor = supervisor
        self.kernel = kernel
        self.sessions = sessions
        self.queue = supervisor.queue
        self.probe_rib = Rib(max_stale_time=rib.max_stale_time)
        self._probed: set[tuple[Any, ...]] = set()  # UPDATE paths that passed _probe

    def warn_limited(self, peer: str, kind: str, msg: str, *args: Any) -> None:
        self.supervisor.warn_limited(peer, kind, msg, *args)

    def _wait_timeout(self, now: float) -> float | None:
        # stale paths to expire; failed VIPs to retry, the end of the startup deferral
        deadlines = [self.rib.next_deadline(), self.kernel._fib_next_deadline()]
        present = [d for d in deadlines if d is not None]
        # at least 1 ms: a deadline already due must not keep queued events from being taken
        return max(0.001, min(present) - now) if present else None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            item: Item | None
            try:
                item = await asyncio.wait_for(self.queue.get(), self._wait_timeout(loop.time()))
            except TimeoutError:
                item = None
            handled = work = 0
            while item is not None:
                self._handle_item(item[0], item[1], loop.time())
                handled += 1
                work += _work(item[1])
                if handled >= BATCH:
                    break
                if work >= YIELD_WORK:  # sessions, timers and status run between chunks
                    work = 0
                    await asyncio.sleep(0)
                item = None if self.queue.empty() else self.queue.get_nowait()
            expired = self.rib.expire(loop.time())
            for peer in expired:
                log.warning("%s: graceful restart time ran out: stale routes purged", peer)
            for level, message in self.rib.fail_open_check(loop.time()):
                log.log(logging.getLevelName(level.upper()), "%s", message)
            await self.kernel._sync_fib()

    def _handle_item(self, entry: PeerEntry | None, event: Event | str, now: float) -> None:
        if entry is None:
            self._handle(None, event, now)  # an error here is the task's own: not recoverable
            return
        try:
            if not self.supervisor._flow(entry).failed or isinstance(event, SessionDown):
                self._handle(entry, event, now)
        except Exception as exc:
            self.supervisor._internal_error("rib", exc, entry)
        finally:
            self.supervisor._handled(entry)

    def _handle(self, entry: PeerEntry | None, event: Event | str, now: float) -> None:
        if entry is None:
            if event == "reload":
                self.sessions.reload()
            elif event == "connected":
                self.probe_rib.set_connected(self.kernel.connected)
                self._probed.clear()
            return
        key = str(entry.address)
        current = self.peers.get(entry.address) is entry
        if event == "replaced":
            detach(entry)
            self.kernel._fib_peer_lost(key, graceful=True)  # before the per-VIP purge
            self.rib.peer_down(key, now, graceful=True)
            return
        if isinstance(event, SessionEstablished):
            self._peer_up(self.rib, key, entry, event, now)
        elif isinstance(event, RoutesReceived):
            self._routes(entry, key, event, now)
        elif isinstance(event, EndOfRibReceived):
            purged = self.rib.end_of_rib(key, event.family, now)
            if purged:
                log.info("%s: End-of-RIB: %d stale route(s) purged", key, purged)
            self.kernel._fib_end_of_rib(entry.address, event.family)
        elif isinstance(event, SessionDown):
            entry.last_error = event.reason
            if isinstance(event, InternalSessionError):
                # the session recovered by itself (Cease sent, Idle); its routes are purged below
                errors = self.counters.internal_errors
                errors["session"] = errors.get("session", 0) + 1
                log.error("%s: %s (traceback logged by the session)", key, event.reason)
            failed = self.supervisor._flow(entry).failed
            graceful = (
                event.connection_lost and not event.hold_expired and not entry.bfd_down
            ) and not failed
            # fail-open: BFD Down / hold timer (ours or the peer's), not a Cease or an error
            failure = None if failed else failopen.failure_kind(event, entry.bfd_down)
            detach(entry)
            if event.was_established and (current or not failed):
                self.kernel._fib_peer_lost(key, graceful, failure)  # kernel first, then purge
                kept = self.rib.peer_down(key, now, graceful=graceful, failure=failure)
                if kept:
                    log.info(
                        "%s: connection closed; graceful restart: keeping %d stale route(s)",
                        key,
                        kept,
                    )
            elif not event.was_established:
                log.warning("%s: session failed: %s", key, event.reason)
            if current:
                del self.peers[entry.address]

    def _peer_up(
        self, rib: Rib, key: str, entry: PeerEntry, event: SessionEstablished, now: float
    ) -> None:
        neg = event.negotiated
        gr = neg.peer_graceful_restart
        rng = entry.range.config
        rib.peer_up(
            key,
            now,
            asn=neg.peer_asn,
            max_prefixes=rng.max_prefixes,
            restart_time=gr.restart_time if gr is not None else None,
            gr_families=[
                (AFI(f.afi), SAFI(f.safi)) for f in gr.families if f.afi in (1, 2) and f.safi == 1
            ]
            if gr is not None
            else (),
            source=entry.address,
            third_party_next_hop=rng.allow_third_party_next_hop,
            allow_default=rng.allow_default,
        )

    def _probe(self, entry: PeerEntry, prefixes: Sequence[Prefix], attrs: PathAttributes) -> None:
        """Compute the FIB entry of this UPDATE's path alone (one prefix per family) in a
        scratch RIB with the peer's rules: an error its attributes cause is raised now, blamed
        on this peer, before the path reaches the real RIB."""
        one: dict[AFI, Prefix] = {}
        for prefix in prefixes:
            one.setdefault(prefix.afi, prefix)
            if len(one) == 2:
                break
        if not one:
            return
        rng = entry.range.config
        # the weights depend on the path, not the prefix: one probe per path (connected
        # subnets changing clear the cache)
        seen = (
            attrs,
            entry.address,
            rng.allow_third_party_next_hop,
            rng.allow_default,
            tuple(sorted(one)),
        )
        if seen in self._probed:
            return
        rib, key = self.probe_rib, "probe"
        try:
            rib.peer_up(
                key,
                0.0,
                source=entry.address,
                third_party_next_hop=rng.allow_third_party_next_hop,
                allow_default=rng.allow_default,
            )
            rib.update(key, list(one.values()), attrs, (), 0.0)
            evaluated = all([rib.fib_entry(prefix) for prefix in one.values()])
        finally:
            rib.forget_peer(key)
            rib.take_dirty()
        if evaluated:  # refused or unusable: nothing was computed, the next one is tried again
            if len(self._probed) >= PROBED_MAX:
                self._probed.clear()
            self._probed.add(seen)

    def _routes(self, entry: PeerEntry, key: str, event: RoutesReceived, now: float) -> None:
        update = event.update
        self.counters.updates_received += 1
        entry.updates += 1
        accepted, rejected = entry.range.accept.split(update.announced)
        if rejected:
            entry.filtered += len(rejected)
            self.counters.filtered_prefixes += len(rejected)
            self.warn_limited(
                key,
                "filtered",
                "%s: filtered %d prefix(es) outside accept [%s]: %s",
                key,
                len(rejected),
                entry.range.accept,
                _some(rejected),
            )
        if accepted and update.attributes is not None:
            self._probe(entry, accepted, update.attributes)
        # the group-level fast paths of this UPDATE go to the kernel first
        self.kernel._fib_before_update(key, accepted, update.attributes, update.all_withdrawn)
        result = self.rib.update(key, accepted, update.attributes, update.all_withdrawn, now)
        self._refusals(entry, key, result)
        if result.exceeded:
            limit = entry.range.config.max_prefixes or 0
            refused = {p for p, _ in result.refused}
            state = self.rib.peers.get(key)
            over = [
                p for p in accepted if p not in refused and (state is None or p not in state.paths)
            ]
            afi = (over or accepted)[0].afi
            self.counters.max_prefix_resets += 1
            entry.over_limit = True
            log.warning(
                "%s: more than max_prefixes=%d prefixes: sending Cease/Maximum Number of "
                "Prefixes Reached",
                key,
                limit,
            )
            # RFC 4486 §4: data = AFI (2 octets), SAFI (1), upper bound (4).
            data = struct.pack("!HBI", afi, SAFI.UNICAST, limit)
            entry.peer.session.stop(now, CeaseSubcode.MAX_PREFIXES, data=data)
            entry.peer.kick()

    def _refusals(self, entry: PeerEntry, key: str, result: UpdateResult) -> None:
        """Count and log (rate-limited) what the RIB refused in an update."""
        flow = self.supervisor._flow(entry)
        if result.refused_count:
            flow.refused += result.refused_count
            self.counters.refused_prefixes += result.refused_count
            shown = ", ".join(f"{p} ({why})" for p, why in result.refused)
            more = result.refused_count - len(result.refused)
            self.warn_limited(
                key,
                "refused",
                "%s: refused %d prefix(es): %s%s",
                key,
                result.refused_count,
                shown,
                f" (+{more} more)" if more > 0 else "",
            )
        if result.bad_bandwidth:
            flow.bad_bandwidth += 1
            self.counters.bad_bandwidth += 1
            self.warn_limited(
                key,
                "bad_bandwidth",
                "%s: link bandwidth community not a finite positive number: ignored (equal weight)",
                key,
            )


def _some(items: Sequence[object], n: int = 5) -> str:
    shown = ", ".join(str(p) for p in items[:n])
    return shown + (f" (+{len(items) - n} more)" if len(items) > n else "")


FAMILIES = (IPV4_UNICAST, IPV6_UNICAST)


def setup_logging(level: str, json_output: bool = False) -> None:
    """Plain lines or one JSON object per line (``[logging] json``), as the agent does."""
    from bgplb.logs import setup

    setup(level, json_output)


async def run_router(config: RouterConfig, config_path: str | Path | None = None) -> int:
    return await Router(config, config_path).run()


def _work(event: Event | str) -> int:
    """How much RIB work an event is: its prefixes (an UPDATE carries up to ~900 /32s)."""
    if isinstance(event, RoutesReceived):
        update = event.update
        return 1 + len(update.announced) + len(update.all_withdrawn)
    return 1
