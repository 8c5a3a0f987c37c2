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
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import struct
import time
from collections.abc import Iterable
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
    Session,
    SessionConfig,
    SessionDown,
    SessionEstablished,
)
from bgplb.config import PeerRange, RouterConfig, load_router_config
from bgplb.io.bgp import BgpListener, BgpPeer, IPAddress
from bgplb.router import bfd as router_bfd
from bgplb.router import pinning_runtime as router_pinning
from bgplb.router.policy import IPNetwork, PrefixList, match_range
from bgplb.router.rib import Connected, Rib

log = logging.getLogger("bgplb.router")

#: Restart time we advertise in our own Graceful Restart capability (we are a helper).
OUR_RESTART_TIME = 120
CONNECTED_POLL = 2.0


@dataclass(slots=True)
class RangeState:
    """One ``[[peer_ranges]]`` entry, compiled."""

    index: int
    config: PeerRange
    accept: PrefixList

    @property
    def network(self) -> IPNetwork:
        return self.config.prefix

    def key(self) -> tuple[Any, ...]:
        c = self.config
        return (str(c.prefix), c.asn, c.password, c.max_prefixes, str(self.accept), c.hold_time)


@dataclass(slots=True)
class PeerEntry:
    """A dynamic neighbor: the connection's peer and the range it belongs to."""

    address: IPAddress
    peer: BgpPeer
    range: RangeState
    accepted_at: float
    filtered: int = 0
    over_limit: bool = False
    updates: int = 0
    last_error: str | None = None
    bfd: Any = None  # bgplb.io.bgp_bfd.BfdLink when the range has `bfd` (router/bfd.py)
    bfd_down: bool = False  # BFD tore the session down: no Graceful Restart for its paths


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


def compile_ranges(config: RouterConfig) -> list[RangeState]:
    return [
        RangeState(i, r, PrefixList.from_filters(r.accept))
        for i, r in enumerate(config.peer_ranges)
    ]


def read_connected(netns: str | None = None) -> list[Connected]:
    """Directly connected subnets of this namespace: every interface address except loopback,
    host routes (/32, /128) and IPv6 link-local ones."""
    from pyroute2 import IPRoute, NetNS

    out: list[Connected] = []
    ipr = NetNS(netns) if netns else IPRoute()
    try:
        loopbacks = {link["index"] for link in ipr.get_links() if link["flags"] & 0x8}
        for msg in ipr.get_addr():
            if msg["index"] in loopbacks:
                continue
            address = msg.get_attr("IFA_ADDRESS")
            if address is None:
                continue
            iface = ipaddress.ip_interface(f"{address}/{msg['prefixlen']}")
            if iface.network.prefixlen == iface.max_prefixlen or iface.ip.is_link_local:
                continue
            out.append(Connected(iface.network, msg["index"], iface.ip))
    finally:
        ipr.close()
    return out


def default_router_id(connected: Iterable[Connected]) -> ipaddress.IPv4Address:
    for c in connected:
        if isinstance(c.local, ipaddress.IPv4Address):
            return c.local
    return ipaddress.IPv4Address("192.0.2.255")


class Router:
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

    def _open_fib(self) -> None:
        from bgplb.linux.fib import KernelFib

        f = self.config.fib
        self.fib = KernelFib(
            table=f.table,
            group=f.group,
            buckets=f.buckets,
            idle_timer=f.idle_timer,
            unbalanced_timer=f.unbalanced_timer,
        )
        self.fib.start_watching()
        if not f.keep_on_exit:
            ops = self.fib.reconcile()
            if ops:
                log.info("fib: removed %d stale kernel object(s) of ours", len(ops))
        loop = asyncio.get_running_loop()
        loop.add_reader(self.fib.watch_fileno(), self._kernel_events)
        router_pinning.open(self)

    def _kernel_events(self) -> None:
        try:
            ops = self.fib.process_events()
        except Exception as exc:
            self.counters.fib_errors += 1
            log.error("fib: re-install failed: %s", exc)
            return
        if ops:
            log.warning("fib: re-installed %d object(s) someone else removed", len(ops))

    def _close_fib(self) -> None:
        if self.fib is None:
            return
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self.fib.watch_fileno())
        router_pinning.close(self)  # waits for a sync still running in its thread, then cleans up
        try:
            if self.config.fib.keep_on_exit:
                log.info("fib: keeping our routes in the kernel (keep_on_exit)")
            else:
                self.fib.cleanup()
        except Exception as exc:
            log.error("fib: cleanup failed: %s", exc)
        finally:
            self.fib.close()
            self.fib = None

    async def _start_listeners(self) -> None:
        by_port: dict[int, list[str]] = {}
        for hp in self.config.bgp.listen:
            by_port.setdefault(hp.port, []).append(hp.host)
        for port, hosts in by_port.items():
            listener = BgpListener(hosts, port, self._on_accept)
            await listener.start()
            self.listeners.append(listener)
        self._install_passwords(self.ranges, None)

    def _install_passwords(self, new: list[RangeState], old: list[RangeState] | None) -> None:
        for listener in self.listeners:
            for r in old or []:
                if r.config.password:
                    listener.set_password(str(r.network), None)
            for r in new:
                if r.config.password:
                    listener.set_password(str(r.network), r.config.password)

    # -- accepting sessions ---------------------------------------------------------------------

    def _on_accept(self, transport: Any, protocol: Any, remote: IPAddress) -> BgpPeer | None:
        found = match_range([(r.network, r) for r in self.ranges], remote)
        if found is None:
            self.counters.refused_connections += 1
            log.warning("refused BGP connection from %s: outside every peer range", remote)
            return None
        rng = found[1]
        old = self.peers.get(remote)
        if old is not None:
            # A new connection from a known neighbor: it restarted. The old session is over
            # (treated as a closed transport, so Graceful Restart applies).
            log.info("%s: new connection replaces the existing session", remote)
            old_peer = old.peer
            old_peer.on_event = None
            if old_peer.session.state is State.ESTABLISHED:
                self.queue.put_nowait((old, "replaced"))
            old_peer.abort()
        c = self.config
        session = Session(
            SessionConfig(
                local_asn=c.bgp.asn,
                router_id=self.router_id or ipaddress.IPv4Address("192.0.2.255"),
                peer_asn=None if rng.config.asn == "any" else rng.config.asn,
                hold_time=rng.config.hold_time or c.bgp.hold_time,
                passive=True,
                automatic_restart=False,
                graceful_restart_time=OUR_RESTART_TIME if c.bgp.graceful_restart else None,
            )
        )
        entry: PeerEntry
        peer = BgpPeer(session, _transport_for(remote), None, name=str(remote))
        entry = PeerEntry(remote, peer, rng, time.time())
        peer.on_event = lambda _p, event: self.queue.put_nowait((entry, event))
        self.peers[remote] = entry
        router_bfd.attach(self, entry, transport, replaces=old)
        peer.start()
        log.info("accepted BGP connection from %s (range %s)", remote, rng.network)
        return peer

    def _on_sighup(self) -> None:
        self.queue.put_nowait((None, "reload"))

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

    async def _sync_fib(self) -> None:
        dirty = self.rib.take_dirty()
        due = router_pinning.due(self)  # a drained server's pins reached drain_linger
        if not dirty and not due:
            return
        changed = due
        for vip in dirty:
            entry = self.rib.fib_entry(vip)
            if entry:
                if self.installed.get(vip) != entry:
                    self.installed[vip] = entry
                    changed = True
            elif self.installed.pop(vip, None) is not None:
                changed = True
        if not changed or self.fib is None:
            return
        desired = {
            vip.network: [(n.address, n.ifindex, n.weight) for n in entry]
            for vip, entry in self.installed.items()
        }
        try:
            ops = await router_pinning.sync(self, desired)
            self.counters.fib_applies += 1
            self.counters.last_apply_ops = len(ops)
            log.debug("fib: %d operation(s)", len(ops))
        except Exception as exc:
            self.counters.fib_errors += 1
            log.error("fib: apply failed: %s", exc)

    async def _connected_task(self) -> None:
        while True:
            await asyncio.sleep(CONNECTED_POLL)
            try:
                connected = await asyncio.to_thread(read_connected)
            except Exception as exc:  # netlink trouble: keep the last view
                log.debug("reading interface addresses failed: %s", exc)
                continue
            if connected != self._connected:
                self._connected = connected
                self.rib.set_connected(connected)
                self.queue.put_nowait((None, "connected"))

    # -- reload ---------------------------------------------------------------------------------

    def reload(self) -> None:
        """SIGHUP: read the file again; sessions whose range settings changed (or whose source
        left every range) are reset with Cease; the others are untouched."""
        if self.config_path is None:
            return
        try:
            config = load_router_config(self.config_path)
        except Exception as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)
            return
        self.reloads += 1
        old_ranges = self.ranges
        new_ranges = compile_ranges(config)
        self.config = config.model_copy(update={"fib": self.config.fib, "bgp": self.config.bgp})
        self.ranges = new_ranges
        self._install_passwords(new_ranges, old_ranges)
        pairs = [(r.network, r) for r in new_ranges]
        now = asyncio.get_running_loop().time()
        for address, entry in list(self.peers.items()):
            found = match_range(pairs, address)
            if found is None:
                log.warning("%s: no longer inside any peer range: closing", address)
                entry.peer.session.stop(now, CeaseSubcode.PEER_DECONFIGURED)
                entry.peer.kick()
            elif found[1].key() != entry.range.key():
                log.info("%s: its peer range changed: resetting the session", address)
                entry.peer.session.stop(now, CeaseSubcode.OTHER_CONFIGURATION_CHANGE)
                entry.peer.kick()
            else:
                entry.range = found[1]
                router_bfd.reconfigure(self, entry)
        log.info("configuration reloaded from %s", self.config_path)

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


def _transport_for(remote: IPAddress) -> Any:
    from bgplb.io.bgp import Transport

    return Transport(remote=remote)


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
