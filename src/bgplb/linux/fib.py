"""The router's kernel FIB: one route per VIP pointing to one nexthop group (resilient by
default), owned by bgplb's route protocol number and kept in sync with a desired state.

    fib = KernelFib(netns=None, protocol=200, group="resilient", buckets=512)
    fib.reconcile()                       # start: remove stale objects of ours, nobody else's
    fib.apply({"198.51.100.10/32": [("192.0.2.2", "eth1", 1), ("192.0.2.6", "eth2", 1)]})
    fib.buckets_share("198.51.100.10/32") # {IPv4Address('192.0.2.2'): 256, ...}
    fib.cleanup()                         # exit: remove everything of ours

Ownership: every nexthop and route bgplb creates carries `protocol` (default 200, "bgplb";
not in iproute2's reserved list, see /etc/iproute2/rt_protos; operators can name it with
`echo "200 bgplb" > /etc/iproute2/rt_protos.d/bgplb.conf`). Objects with any other protocol are
never modified or deleted; their nexthop ids are never reused.

Threads: every method is blocking (netlink round trips of well under a millisecond each for a
handful of VIPs). Changes go through one socket guarded by one lock, so `watch()` may run in a
thread while another thread calls `apply()`. Reads of the kernel (`installed()`,
`buckets_shares()`) use a second socket with its own lock: a status request in a thread
neither races with nor waits for an apply in another. From asyncio either run `watch(stop)`
with `asyncio.to_thread`, or register `loop.add_reader(fib.watch_fileno(), fib.process_events)`
after `start_watching()`.

Cost: while watching, the installed state is kept from our own successful operations, and the
kernel is dumped again only at the first apply (reconcile), after a failed operation, or when
the watcher sees a change it did not make (or lost notifications). The notifications of our own
changes carry our socket's port id and are dropped undecoded. Without a watcher every apply
dumps the kernel first (nothing would notice someone else's changes otherwise).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address

from bgplb.linux import diff as d
from bgplb.linux.nexthop import (
    GroupType,
    KernelEvent,
    Nexthop,
    NexthopChanged,
    NexthopDeleted,
    NexthopError,
    NexthopMonitor,
    NexthopSocket,
    RouteChanged,
    RouteDeleted,
)

log = logging.getLogger(__name__)

DEFAULT_PROTOCOL = 200
"""Route/nexthop protocol number of bgplb (RTPROT_*; 200 is unassigned in linux/rtnetlink.h
and iproute2's rt_protos)."""

_ODD = d.Gateway(IPv4Address(0), 0)  # identity given to our nexthops of an unexpected shape

PathSpec = tuple[str | d.IPAddress, str | int, int]  # (gateway, oif name or index, weight)
DesiredInput = Mapping[str | d.IPNetwork | d.IPAddress, Iterable[PathSpec]]


STATUS_BUCKET_LIMIT = 262144
"""Most buckets `buckets_shares()` reads per call by default (512 VIPs of 512 buckets)."""


@dataclass(frozen=True, slots=True)
class BucketShares:
    """Buckets per gateway of each VIP's resilient group, from one kernel dump."""

    shares: dict[d.IPNetwork, dict[d.IPAddress, int]]
    omitted: tuple[d.IPNetwork, ...] = ()  # resilient groups not read: over `limit`
    limit: int = STATUS_BUCKET_LIMIT


class _Installed:
    """Our objects as the kernel holds them, kept up to date by our own operations (the
    mutable twin of `diff.InstalledState`; `state()` shares its dicts, no copy)."""

    __slots__ = ("foreign_ids", "groups", "nexthops", "routes")

    def __init__(self, state: d.InstalledState) -> None:
        self.nexthops = dict(state.nexthops)
        self.groups = dict(state.groups)
        self.routes = dict(state.routes)
        self.foreign_ids = state.foreign_ids

    def state(self) -> d.InstalledState:
        return d.InstalledState(self.nexthops, self.groups, self.routes, self.foreign_ids)

    def note(self, op: d.Op) -> None:
        """Record a successful operation. The side effects the kernel adds (a deleted group
        takes its routes, a deleted nexthop leaves its groups) never apply to the orders
        `diff` gives: routes are re-pointed or deleted before their group, groups replaced
        or deleted before their members."""
        match op:
            case d.AddNexthop(id=nh_id, gateway=gw):
                self.nexthops[nh_id] = gw
            case (
                d.AddGroup(id=nh_id, members=members, params=p)
                | d.ReplaceGroup(id=nh_id, members=members, params=p)
            ):
                self.groups[nh_id] = d.InstalledGroup(nh_id, members, p)
            case d.AddRoute(dst=dst, nh_id=nh_id) | d.ReplaceRoute(dst=dst, nh_id=nh_id):
                self.routes[dst] = nh_id
            case d.DeleteRoute(dst=dst):
                self.routes.pop(dst, None)
            case d.DeleteGroup(id=nh_id):
                self.groups.pop(nh_id, None)
            case d.DeleteNexthop(id=nh_id):
                self.nexthops.pop(nh_id, None)


class FibError(RuntimeError):
    """An operation failed twice (also after re-reading the kernel); `op` and `errno` say which."""

    def __init__(self, op: d.Op, cause: NexthopError) -> None:
        super().__init__(f"{op}: {cause}")
        self.op = op
        self.errno = cause.errno


class KernelFib:
    """Desired VIP -> paths state, installed as nexthop groups. See the module docstring."""

    def __init__(
        self,
        netns: str | None = None,
        protocol: int = DEFAULT_PROTOCOL,
        table: int = 254,
        group: str = "resilient",
        buckets: int = 512,
        idle_timer: float = 10.0,
        unbalanced_timer: float = 60.0,
        id_base: int = d.DEFAULT_ID_BASE,
    ) -> None:
        if not 1 <= protocol <= 255 or protocol in (1, 2, 3, 4):
            raise ValueError(f"protocol {protocol}: use a number in 5..255 that is ours alone")
        self.netns = netns
        self.protocol = protocol
        self.table = table
        self.id_base = id_base
        self.params = d.GroupParams(d.GroupKind(group), buckets, idle_timer, unbalanced_timer)
        self._nl = NexthopSocket(netns)  # changes, under _lock
        self._reader = NexthopSocket(netns)  # dumps, under _read_lock (taken after _lock)
        self._lock = threading.RLock()
        self._read_lock = threading.Lock()
        self._cache: _Installed | None = None  # only while watching; None: dump first
        self.dumps = 0  # full kernel reads (installed())
        self._desired: dict[d.IPNetwork, dict[d.Gateway, int]] | None = None  # None: no apply yet
        self._monitor: NexthopMonitor | None = None
        self.reinstalls = 0  # times process_events found something of ours missing or changed

    def close(self) -> None:
        """Close the sockets (leaves the kernel objects as they are: see cleanup())."""
        with self._lock:
            if self._monitor is not None:
                self._monitor.close()
                self._monitor = None
            self._cache = None
            self._nl.close()
            with self._read_lock:
                self._reader.close()

    def __enter__(self) -> KernelFib:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading the kernel -------------------------------------------------------------------
    def installed(self) -> d.InstalledState:
        """Dump the kernel: our nexthops, groups and routes, and every id in use by others."""
        with self._read_lock:
            self.dumps += 1
            nexthops = self._reader.dump_nexthops()
            routes = self._reader.dump_routes(protocol=self.protocol, table=self.table)
        singles: dict[int, d.Gateway] = {}
        groups: dict[int, d.InstalledGroup] = {}
        foreign: set[int] = set()
        for nh in nexthops:
            if nh.protocol != self.protocol:
                foreign.add(nh.id)
            elif nh.is_group:
                groups[nh.id] = d.InstalledGroup(
                    nh.id, tuple(sorted(nh.members)), self._params_of(nh)
                )
            elif nh.gateway is not None and nh.oif is not None:
                singles[nh.id] = d.Gateway(nh.gateway, nh.oif)
            else:
                singles[nh.id] = _ODD  # e.g. a blackhole with our protocol: not ours to keep
        return d.InstalledState(
            nexthops=singles,
            groups=groups,
            routes={r.dst: r.nh_id for r in routes},
            foreign_ids=frozenset(foreign),
        )

    @staticmethod
    def _params_of(nh: Nexthop) -> d.GroupParams:
        if nh.group_type is GroupType.RES and nh.resilient is not None:
            r = nh.resilient
            return d.GroupParams(d.GroupKind.RESILIENT, r.buckets, r.idle_timer, r.unbalanced_timer)
        return d.GroupParams(d.GroupKind.MULTIPATH)

    # -- changing the kernel ------------------------------------------------------------------
    def resolve(self, desired: DesiredInput) -> dict[d.IPNetwork, dict[d.Gateway, int]]:
        """Interface names -> indexes in our namespace, then `diff.desired_state`."""
        with self._lock:
            entries = {
                vip: [
                    (gw, oif if isinstance(oif, int) else self._nl.link_index(oif), weight)
                    for gw, oif, weight in paths
                ]
                for vip, paths in desired.items()
            }
        return d.desired_state(entries)

    def apply(self, desired: DesiredInput) -> list[d.Op]:
        """Make the kernel hold exactly `desired` (for our protocol); idempotent. Returns the
        operations executed. Raises FibError if one fails twice, ValueError for bad input."""
        state = self.resolve(desired)
        with self._lock:
            self._desired = state
            return self._sync(state)

    def reconcile(self, desired: DesiredInput | None = None) -> list[d.Op]:
        """At start: remove every stale object of ours (desired None), or adopt what matches
        `desired` and remove the rest (graceful restart: nothing that should stay is touched).
        Objects of other protocols are never touched. Always reads the kernel first."""
        with self._lock:
            self._cache = None
            return self.apply(desired or {})

    def cleanup(self) -> list[d.Op]:
        """Remove every route, group and nexthop of ours (and stop re-installing them).
        Reads the kernel first, like reconcile()."""
        return self.reconcile()

    def _sync(self, state: Mapping[d.IPNetwork, Mapping[d.Gateway, int]]) -> list[d.Op]:
        """Under self._lock. Diff against the cached state (while watching) or a dump, run the
        operations, keep the result as the cache. A failed operation drops the cache."""
        done: list[d.Op] = []
        for attempt in (1, 2):
            model = self._cache if attempt == 1 else None
            self._cache = None  # invalid until every operation succeeded
            if model is None:
                model = _Installed(self.installed())
            ops = d.diff(state, model.state(), self.params, self.id_base)
            try:
                for op in ops:
                    self._execute(op)
                    done.append(op)
                    model.note(op)
            except NexthopError as exc:
                if attempt == 2:
                    raise FibError(op, exc) from exc
                # someone changed the kernel under us (or a group vanished with its last
                # member): read it again and redo the diff once
                log.warning("fib: %s failed (%s); re-reading the kernel", op, exc)
                continue
            if self._monitor is not None:
                self._cache = model
            return done
        return done

    def _execute(self, op: d.Op) -> None:
        nl, proto = self._nl, self.protocol
        match op:
            case d.AddNexthop(id=nh_id, gateway=gw):
                nl.add_nexthop(nh_id, gateway=gw.address, oif=gw.oif, protocol=proto)
            case (
                d.AddGroup(id=nh_id, members=members, params=p)
                | d.ReplaceGroup(id=nh_id, members=members, params=p)
            ):
                nl.add_group(
                    nh_id,
                    members=members,
                    protocol=proto,
                    group_type=GroupType.RES
                    if p.kind is d.GroupKind.RESILIENT
                    else GroupType.MPATH,
                    buckets=p.buckets,
                    idle_timer=p.idle_timer,
                    unbalanced_timer=p.unbalanced_timer,
                    replace=isinstance(op, d.ReplaceGroup),
                )
            case d.AddRoute(dst=dst, nh_id=nh_id) | d.ReplaceRoute(dst=dst, nh_id=nh_id):
                nl.add_route(
                    dst,
                    nh_id=nh_id,
                    protocol=proto,
                    table=self.table,
                    replace=isinstance(op, d.ReplaceRoute),
                )
            case d.DeleteRoute(dst=dst):
                try:
                    nl.del_route(dst, protocol=proto, table=self.table)
                except NexthopError as exc:
                    if exc.errno != errno.ESRCH:
                        raise
            case d.DeleteGroup(id=nh_id) | d.DeleteNexthop(id=nh_id):
                try:
                    nl.del_nexthop(nh_id)
                except NexthopError as exc:
                    if exc.errno != errno.ENOENT:
                        raise

    # -- visibility ---------------------------------------------------------------------------
    def buckets_share(self, vip: str | d.IPNetwork | d.IPAddress) -> dict[d.IPAddress, int]:
        """Buckets per gateway of the VIP's resilient group ({} for none or multipath)."""
        net = ipaddress.ip_network(vip)
        return self.buckets_shares([net], limit=0xFFFF).shares.get(net, {})

    def buckets_shares(
        self,
        vips: Iterable[str | d.IPNetwork | d.IPAddress] | None = None,
        limit: int = STATUS_BUCKET_LIMIT,
    ) -> BucketShares:
        """Buckets per gateway of every VIP's resilient group (`vips`, or all of ours), from
        one dump of nexthops and routes plus one bucket dump per group. Groups are read in VIP
        order while the bucket count stays within `limit`; the others are listed in `omitted`.
        VIPs without a resilient group of ours are absent. Never takes the lock of `apply()`:
        safe to call from another thread (e.g. `asyncio.to_thread`) while an apply runs."""
        state = self.installed()
        nets = state.routes if vips is None else {ipaddress.ip_network(v) for v in vips}
        shares: dict[d.IPNetwork, dict[d.IPAddress, int]] = {}
        omitted: list[d.IPNetwork] = []
        used = 0
        for net in sorted(nets, key=lambda n: (n.version, int(n.network_address), n.prefixlen)):
            group_id = state.routes.get(net)
            group = state.groups.get(group_id) if group_id is not None else None
            if group is None or group.params.kind is not d.GroupKind.RESILIENT:
                continue
            if used + group.params.buckets > limit:
                omitted.append(net)
                continue
            with self._read_lock:
                try:
                    share = self._reader.bucket_share(group.id)
                except NexthopError as exc:
                    if exc.errno in (errno.ENOENT, errno.EINVAL):
                        continue  # gone since the dump
                    raise
            used += group.params.buckets
            out: dict[d.IPAddress, int] = {}
            for nh_id, count in share.items():
                gw = state.nexthops.get(nh_id)
                if gw is not None:
                    out[gw.address] = out.get(gw.address, 0) + count
            shares[net] = out
        return BucketShares(shares, tuple(omitted), limit)

    # -- watching -----------------------------------------------------------------------------
    def start_watching(self) -> None:
        """Subscribe to nexthop and route notifications (before the first apply is best)."""
        with self._lock:
            if self._monitor is None:
                self._monitor = NexthopMonitor(self.netns)
                # the kernel stamps the notifications of our own changes with our port id
                self._monitor.ignore_pids = frozenset({self._nl.portid})
                self._cache = None  # dumped before we listened: read again

    def watch_fileno(self) -> int:
        """The notification socket, for selectors / `loop.add_reader`."""
        self.start_watching()
        assert self._monitor is not None
        return self._monitor.fileno()

    def _ours(self, event: KernelEvent) -> bool:
        match event:
            case NexthopChanged(nexthop=nh) | NexthopDeleted(nexthop=nh):
                return nh.protocol == self.protocol
            case RouteChanged(route=r) | RouteDeleted(route=r):
                # other tables (e.g. pinning's, protocol 200 too) are not the FIB's business
                return r.table == self.table and (
                    r.protocol == self.protocol or r.dst in (self._desired or {})
                )
        return False

    def process_events(self) -> list[d.Op]:
        """Non-blocking: read pending notifications; if one concerns our objects (or events
        were lost), read the kernel again and re-install the last desired state. Returns the
        operations it took. Notifications of our own changes are dropped undecoded (their
        nlmsg_pid is our socket's); they take no lock, so this does not wait for an apply
        running in another thread unless someone else changed our objects."""
        self.start_watching()
        assert self._monitor is not None
        overruns = self._monitor.overruns
        return self._handle(self._monitor.read(), self._monitor.overruns != overruns)

    def _handle(self, events: list[KernelEvent], lost: bool) -> list[d.Op]:
        if not lost and not any(self._ours(e) for e in events):
            return []
        with self._lock:
            self._cache = None  # someone else changed our objects: read the kernel again
            if self._desired is None:  # nothing applied yet: nothing to defend
                return []
            ops = self._sync(self._desired)
        if ops:
            self.reinstalls += 1
            log.warning(
                "fib: kernel objects of ours changed by someone else; re-installed: %s", ops
            )
        return ops

    def watch(self, stop: threading.Event, poll: float = 0.5) -> None:
        """Blocking loop for a thread: re-install whatever someone deletes, until `stop` is
        set (checked every `poll` seconds). A failing re-install is logged, not raised."""
        self.start_watching()
        assert self._monitor is not None
        while not stop.is_set():
            overruns = self._monitor.overruns
            events = self._monitor.wait(poll)
            try:
                self._handle(events, self._monitor.overruns != overruns)
            except (FibError, NexthopError) as exc:
                log.error("fib: re-install failed: %s", exc)
