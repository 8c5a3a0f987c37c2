"""`bgplb router`: BGP sessions from servers into kernel ECMP nexthop groups.

Structure (one owner per table):

* a :class:`~bgplb.io.bgp.BgpListener` per listening port accepts connections; a source inside a
  ``[[peer_ranges]]`` prefix (most specific range wins) gets a passive
  :class:`~bgplb.bgp.session.Session` of its own (dynamic neighbor); a source outside every range
  is refused with a log line and nothing else happens;
* every session event goes into one queue; a single task (:meth:`Router._rib_task`) owns the pure
  :class:`~bgplb.router.rib.Rib`, applies policy (``accept``, ``max_prefixes``), and after each
  batch of events pushes the desired state to :class:`~bgplb.linux.fib.KernelFib`;
* the kernel's nexthop/route notifications are watched: whatever of ours someone deletes is
  re-installed; on start our stale objects are removed (reconcile), on exit ours are removed
  (unless ``[fib] keep_on_exit``);
* SIGTERM / SIGINT: clean exit (Cease/Administrative Shutdown to every peer); SIGHUP: reload.

Supervision (nothing dies silently) and per-peer bounds: :mod:`bgplb.router.supervisor`.

This module holds the start-up/shutdown, the supervision and the RIB task; listening, accepting
and reload are in :mod:`bgplb.router.ranges`, the FIB and connected subnets in
:mod:`bgplb.router.kernel`, BFD in :mod:`bgplb.router.bfd`, connection pinning in
:mod:`bgplb.router.pinning_runtime`, status and metrics in :mod:`bgplb.control.router_status`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import logging
import signal
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
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
from bgplb.control.socket import ControlError
from bgplb.io.bgp import BgpListener, IPAddress
from bgplb.io.sdnotify import sd_notify
from bgplb.router import bfd as router_bfd
from bgplb.router.kernel import CONNECTED_POLL, KernelSide, default_router_id, read_connected
from bgplb.router.ranges import (
    OUR_RESTART_TIME,
    PeerEntry,
    PeerRanges,
    RangeState,
    compile_ranges,
)
from bgplb.router.rib import Connected, Rib, UpdateResult
from bgplb.router.supervisor import (
    BATCH,
    MAX_PENDING,
    YIELD_WORK,
    Flow,
    Item,
    LogLimiter,
    RibQueue,
    Supervised,
    Supervision,
)

__all__ = [
    "CONNECTED_POLL",
    "FAMILIES",
    "MAX_PENDING",
    "OUR_RESTART_TIME",
    "Counters",
    "Flow",
    "LogLimiter",
    "PeerEntry",
    "RangeState",
    "Router",
    "Supervision",
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


@dataclass(slots=True)
class Counters:
    refused_connections: int = 0
    filtered_prefixes: int = 0
    refused_prefixes: int = 0
    bad_bandwidth: int = 0
    max_prefix_resets: int = 0
    fib_applies: int = 0
    fib_errors: int = 0
    updates_received: int = 0
    last_apply_ops: int = 0
    internal_errors: dict[str, int] = field(default_factory=dict)
    internal_resets: int = 0  # peers reset after an internal error
    pauses: int = 0  # times a peer's reading was paused (too many events pending)
    queue_peak: int = 0  # the most events ever waiting for the RIB task
    started_at: float = field(default_factory=time.time)


class Router(Supervised, PeerRanges, KernelSide):
    """The router daemon. `run()` until `stop` is set (or a signal); returns the exit status."""

    def __init__(self, config: RouterConfig, config_path: str | Path | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.ranges = compile_ranges(config)
        self.peers: dict[IPAddress, PeerEntry] = {}
        self.rib = self._new_rib()
        self._probe_rib = self._new_rib()
        self._probed: set[tuple[Any, ...]] = set()  # UPDATE paths that passed _probe
        self.counters = Counters()
        self.queue: asyncio.Queue[Item] = RibQueue(self._on_enqueue)
        self.flows: dict[int, Flow] = {}  # id(entry) -> its flow (the entry keeps the id unique)
        self.supervision = Supervision()
        self.limiter = LogLimiter()
        self.fatal: str | None = None  # why the daemon gave up (exit status 1)
        self.fib: Any = None  # KernelFib when [fib] install
        self.listeners: list[BgpListener] = []
        self.stop_event = asyncio.Event()
        self.router_id = config.bgp.router_id
        self.installed: dict[Prefix, tuple[Any, ...]] = {}
        self.nexthop_counts: collections.Counter[str] = collections.Counter()
        self._connected: list[Connected] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.reloads = 0
        self.bfd: Any = None  # bgplb.io.bfd.BfdService, made by router/bfd.py on first need
        self.pinning: Any = None  # router/pinning_runtime.py when [fib] pinning
        self.loop_watch: Any = None  # bgplb.io.loopwatch.LoopWatch while running

    def _new_rib(self) -> Rib:
        # graceful_restart = false: we do not advertise the capability, so we are no helper
        # either (RFC 4724 §4.2): a closed session purges at once
        bgp = self.config.bgp
        return Rib(max_stale_time=bgp.max_stale_time if bgp.graceful_restart else 0.0)

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
        loop.set_exception_handler(self._loop_exception)
        self._connected = await asyncio.to_thread(read_connected)
        self.rib.set_connected(self._connected)
        self._probe_rib.set_connected(self._connected)
        if self.router_id is None:
            self.router_id = default_router_id(self._connected)
        if self.config.fib.install:
            self._open_fib()
        from bgplb.control.router_status import RouterStatusServer
        from bgplb.io.loopwatch import LoopWatch

        self.loop_watch = LoopWatch(period=0.05)
        self.loop_watch.start()
        status = RouterStatusServer(self)
        try:
            await status.start()
        except (ControlError, OSError) as exc:
            log.error("control socket: %s", exc)
            await self.loop_watch.stop()
            self._close_fib()
            return 1
        try:
            await self._start_listeners()
        except OSError as exc:
            log.error("cannot listen: %s", exc)
            await status.close()
            await self.loop_watch.stop()
            self._close_fib()
            return 1
        for sig, handler in (
            (signal.SIGTERM, self.stop_event.set),
            (signal.SIGINT, self.stop_event.set),
            (signal.SIGHUP, self._on_sighup),
        ):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, handler)
        self._tasks = [
            loop.create_task(self._supervise("rib", self._rib_task, restartable=False)),
            loop.create_task(self._supervise("connected", self._connected_task)),
        ]
        log.info(
            "router AS %s id %s: %d peer range(s), fib %s",
            self.config.bgp.asn,
            self.router_id,
            len(self.ranges),
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
        for listener in self.listeners:
            await listener.close()
        self.abort_candidates()  # connections waiting for their OPEN next to a known session
        if self.fatal:  # we will be back: the neighbors should reconnect
            subcode, message = CeaseSubcode.ADMINISTRATIVE_RESET, "router restarting after an error"
        else:
            subcode, message = CeaseSubcode.ADMINISTRATIVE_SHUTDOWN, "router shutting down"
        await asyncio.gather(
            *(e.peer.stop(message, subcode) for e in list(self.peers.values())),
            return_exceptions=True,
        )
        if self.bfd is not None:
            self.bfd.close()  # AdminDown: not a failure for the neighbors (RFC 5882 §3.2)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await status.close()
        await self.loop_watch.stop()
        self._close_fib()
        return 1 if self.fatal else 0

    @staticmethod
    def _signal_while_stopping(sig: int) -> None:
        log.warning(
            "%s: already shutting down; removing our routes from the kernel first "
            "(SIGKILL would leave them)",
            signal.Signals(sig).name,
        )

    def _kernel_events(self) -> None:
        try:
            super()._kernel_events()
        except Exception as exc:
            self._internal_error("kernel-watch", exc)

    # -- the RIB task ---------------------------------------------------------------------------

    def _wait_timeout(self, now: float) -> float | None:
        # stale paths to expire; failed VIPs to retry, the end of the startup deferral
        deadlines = [self.rib.next_deadline(), self._fib_next_deadline()]
        present = [d for d in deadlines if d is not None]
        # at least 1 ms: a deadline already due must not keep queued events from being taken
        return max(0.001, min(present) - now) if present else None

    async def _rib_task(self) -> None:
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
            await self._sync_fib()

    def _handle_item(self, entry: PeerEntry | None, event: Event | str, now: float) -> None:
        if entry is None:
            self._handle(None, event, now)  # an error here is the task's own: not recoverable
            return
        try:
            if not self._flow(entry).failed or isinstance(event, SessionDown):
                self._handle(entry, event, now)
        except Exception as exc:
            self._internal_error("rib", exc, entry)
        finally:
            self._handled(entry)

    def _handle(self, entry: PeerEntry | None, event: Event | str, now: float) -> None:
        if entry is None:
            if event == "reload":
                self.reload()
            elif event == "connected":
                self._probe_rib.set_connected(self._connected)
                self._probed.clear()
            return
        key = str(entry.address)
        current = self.peers.get(entry.address) is entry
        if event == "replaced":
            router_bfd.detach(entry)
            self._fib_peer_lost(key, graceful=True)  # before the per-VIP purge
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
            self._fib_end_of_rib(entry.address, event.family)
        elif isinstance(event, SessionDown):
            entry.last_error = event.reason
            if isinstance(event, InternalSessionError):
                # the session recovered by itself (Cease sent, Idle); its routes are purged below
                errors = self.counters.internal_errors
                errors["session"] = errors.get("session", 0) + 1
                log.error("%s: %s (traceback logged by the session)", key, event.reason)
            failed = self._flow(entry).failed
            graceful = (
                event.connection_lost and not event.hold_expired and not entry.bfd_down
            ) and not failed
            router_bfd.detach(entry)
            if event.was_established and (current or not failed):
                self._fib_peer_lost(key, graceful)  # kernel first, then the per-VIP purge
                kept = self.rib.peer_down(key, now, graceful=graceful)
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
        rib, key = self._probe_rib, "probe"
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
        self._fib_before_update(key, accepted, update.attributes, update.all_withdrawn)
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
        flow = self._flow(entry)
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

    def peer_rows(self) -> list[dict[str, Any]]:
        from bgplb.control.router_status import peer_rows

        return peer_rows(self)


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
