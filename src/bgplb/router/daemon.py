"""`bgplb router`: BGP sessions from servers into kernel ECMP nexthop groups.

Structure (one owner per table):

* a :class:`~bgplb.io.bgp.BgpListener` per listening port accepts connections; a source inside a
  ``[[peer_ranges]]`` prefix (most specific range wins) gets a passive
  :class:`~bgplb.bgp.session.Session` of its own (dynamic neighbor); a source outside every range
  is refused with a log line and nothing else happens;
* every session event goes into one :class:`asyncio.Queue`; a single task (:meth:`Router._rib_task`)
  owns the pure :class:`~bgplb.router.rib.Rib`, applies policy (``accept``, ``max_prefixes``),
  and after each batch of events pushes the desired state to :class:`~bgplb.linux.fib.KernelFib`;
* the kernel's nexthop/route notifications are watched: whatever of ours someone deletes is
  re-installed; on start our stale objects are removed (reconcile), on exit ours are removed
  (unless ``[fib] keep_on_exit``);
* SIGTERM / SIGINT: clean exit (Cease/Administrative Shutdown to every peer); SIGHUP: reload.

This module holds the start-up/shutdown and the RIB task; listening, accepting and reload are in
:mod:`bgplb.router.ranges`, the FIB and connected subnets in :mod:`bgplb.router.kernel`, BFD in
:mod:`bgplb.router.bfd`, connection pinning in :mod:`bgplb.router.pinning_runtime`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bgplb.bgp.errors import CeaseSubcode
from bgplb.bgp.families import AFI, IPV4_UNICAST, IPV6_UNICAST, SAFI
from bgplb.bgp.fsm import State
from bgplb.bgp.prefix import Prefix
from bgplb.bgp.session import (
    EndOfRibReceived,
    Event,
    RoutesReceived,
    SessionDown,
    SessionEstablished,
)
from bgplb.config import RouterConfig
from bgplb.io.bgp import BgpListener, IPAddress
from bgplb.router import bfd as router_bfd
from bgplb.router.kernel import CONNECTED_POLL, KernelSide, default_router_id, read_connected
from bgplb.router.ranges import (
    OUR_RESTART_TIME,
    PeerEntry,
    PeerRanges,
    RangeState,
    compile_ranges,
)
from bgplb.router.rib import Connected, Rib

__all__ = [
    "CONNECTED_POLL",
    "FAMILIES",
    "OUR_RESTART_TIME",
    "Counters",
    "PeerEntry",
    "RangeState",
    "Router",
    "compile_ranges",
    "default_router_id",
    "read_connected",
    "run_router",
    "setup_logging",
]

log = logging.getLogger("bgplb.router")


@dataclass(slots=True)
class Counters:
    refused_connections: int = 0
    filtered_prefixes: int = 0
    max_prefix_resets: int = 0
    fib_applies: int = 0
    fib_errors: int = 0
    updates_received: int = 0
    last_apply_ops: int = 0
    started_at: float = field(default_factory=time.time)


class Router(PeerRanges, KernelSide):
    """The router daemon. `run()` until `stop` is set (or a signal)."""

    def __init__(self, config: RouterConfig, config_path: str | Path | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.ranges = compile_ranges(config)
        self.peers: dict[IPAddress, PeerEntry] = {}
        self.rib = Rib()
        self.counters = Counters()
        self.queue: asyncio.Queue[tuple[PeerEntry | None, Event | str]] = asyncio.Queue()
        self.fib: Any = None  # KernelFib when [fib] install
        self.listeners: list[BgpListener] = []
        self.stop_event = asyncio.Event()
        self.router_id = config.bgp.router_id
        self.installed: dict[Prefix, tuple[Any, ...]] = {}
        self._connected: list[Connected] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.reloads = 0
        self.bfd: Any = None  # bgplb.io.bfd.BfdService, made by router/bfd.py on first need
        self.pinning: Any = None  # router/pinning_runtime.py when [fib] pinning

    # -- lifecycle ------------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self._connected = await asyncio.to_thread(read_connected)
        self.rib.set_connected(self._connected)
        if self.router_id is None:
            self.router_id = default_router_id(self._connected)
        if self.config.fib.install:
            self._open_fib()
        from bgplb.control.router_status import RouterStatusServer

        status = RouterStatusServer(self)
        await status.start()
        try:
            await self._start_listeners()
        except OSError as exc:
            log.error("cannot listen: %s", exc)
            await status.close()
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
            loop.create_task(self._rib_task(), name="rib"),
            loop.create_task(self._connected_task(), name="connected"),
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
        await self.stop_event.wait()
        log.info("shutting down")
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
        for listener in self.listeners:
            await listener.close()
        await asyncio.gather(
            *(e.peer.stop("router shutting down") for e in list(self.peers.values())),
            return_exceptions=True,
        )
        if self.bfd is not None:
            self.bfd.close()  # AdminDown: not a failure for the neighbors (RFC 5882 §3.2)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await status.close()
        self._close_fib()
        return 0

    # -- the RIB task ---------------------------------------------------------------------------

    async def _rib_task(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            deadline = self.rib.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - loop.time())
            try:
                item = await asyncio.wait_for(self.queue.get(), timeout)
                batch = [item]
                while not self.queue.empty() and len(batch) < 10_000:
                    batch.append(self.queue.get_nowait())
            except TimeoutError:
                batch = []
            for entry, event in batch:
                try:
                    self._handle(entry, event, loop.time())
                except Exception:
                    log.exception("router: handling %r failed", event)
            expired = self.rib.expire(loop.time())
            for peer in expired:
                log.warning("%s: graceful restart time ran out: stale routes purged", peer)
            await self._sync_fib()

    def _handle(self, entry: PeerEntry | None, event: Event | str, now: float) -> None:
        if entry is None:
            if event == "reload":
                self.reload()
            elif event == "connected":
                pass
            return
        key = str(entry.address)
        current = self.peers.get(entry.address) is entry
        if event == "replaced":
            router_bfd.detach(entry)
            self.rib.peer_down(key, now, graceful=True)
            return
        if isinstance(event, SessionEstablished):
            neg = event.negotiated
            gr = neg.peer_graceful_restart
            self.rib.peer_up(
                key,
                now,
                asn=neg.peer_asn,
                max_prefixes=entry.range.config.max_prefixes,
                restart_time=gr.restart_time if gr is not None else None,
                gr_families=[
                    (AFI(f.afi), SAFI(f.safi))
                    for f in gr.families
                    if f.afi in (1, 2) and f.safi == 1
                ]
                if gr is not None
                else (),
            )
        elif isinstance(event, RoutesReceived):
            self._routes(entry, key, event, now)
        elif isinstance(event, EndOfRibReceived):
            purged = self.rib.end_of_rib(key, event.family, now)
            if purged:
                log.info("%s: End-of-RIB: %d stale route(s) purged", key, purged)
        elif isinstance(event, SessionDown):
            entry.last_error = event.reason
            graceful = event.connection_lost and not event.hold_expired and not entry.bfd_down
            router_bfd.detach(entry)
            if event.was_established:
                kept = self.rib.peer_down(key, now, graceful=graceful)
                if kept:
                    log.info(
                        "%s: connection closed; graceful restart: keeping %d stale route(s)",
                        key,
                        kept,
                    )
            else:
                log.warning("%s: session failed: %s", key, event.reason)
            if current:
                del self.peers[entry.address]

    def _routes(self, entry: PeerEntry, key: str, event: RoutesReceived, now: float) -> None:
        update = event.update
        self.counters.updates_received += 1
        entry.updates += 1
        accepted, rejected = entry.range.accept.split(update.announced)
        if rejected:
            entry.filtered += len(rejected)
            self.counters.filtered_prefixes += len(rejected)
            shown = ", ".join(str(p) for p in rejected[:5])
            more = f" (+{len(rejected) - 5} more)" if len(rejected) > 5 else ""
            log.warning(
                "%s: filtered %d prefix(es) outside accept [%s]: %s%s",
                key,
                len(rejected),
                entry.range.accept,
                shown,
                more,
            )
        result = self.rib.update(key, accepted, update.attributes, update.all_withdrawn, now)
        if result.exceeded:
            limit = entry.range.config.max_prefixes or 0
            first = next(p for p in accepted if p not in self.rib.peers[key].paths)
            afi = first.afi
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

    # -- visibility -----------------------------------------------------------------------------

    def peer_rows(self) -> list[dict[str, Any]]:
        now = asyncio.get_running_loop().time()
        rows = []
        for address, entry in sorted(self.peers.items(), key=lambda kv: (kv[0].version, kv[0])):
            s = entry.peer.session
            neg = s.negotiated
            state = self.rib.peers.get(str(address))
            rows.append(
                {
                    "address": str(address),
                    "asn": neg.peer_asn if neg is not None else None,
                    "state": s.state.value,
                    "established": s.state is State.ESTABLISHED,
                    "prefixes": state.prefix_count if state else 0,
                    "stale": state.stale_count if state else 0,
                    "filtered": entry.filtered,
                    "uptime": round(now - s.established_at, 1) if s.established_at else None,
                    "range": str(entry.range.network),
                    "graceful_restart": (
                        neg.peer_graceful_restart.restart_time
                        if neg is not None and neg.peer_graceful_restart is not None
                        else None
                    ),
                    "last_error": s.last_error or entry.last_error,
                    "bfd": entry.bfd.status() if entry.bfd is not None else None,
                }
            )
        # peers gone but still holding stale routes (graceful restart)
        for key, state in self.rib.peers.items():
            if not state.established and state.stale_count:
                rows.append(
                    {
                        "address": key,
                        "asn": state.asn,
                        "state": "restarting",
                        "established": False,
                        "prefixes": state.prefix_count,
                        "stale": state.stale_count,
                        "filtered": 0,
                        "uptime": None,
                        "range": None,
                        "graceful_restart": state.restart_time,
                        "stale_until": (
                            round(state.stale_deadline - now, 1) if state.stale_deadline else None
                        ),
                        "last_error": None,
                    }
                )
        return rows


FAMILIES = (IPV4_UNICAST, IPV6_UNICAST)


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("pyroute2", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


async def run_router(config: RouterConfig, config_path: str | Path | None = None) -> int:
    return await Router(config, config_path).run()
