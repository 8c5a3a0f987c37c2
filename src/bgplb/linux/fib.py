"""The router's kernel FIB: one route per VIP pointing to the nexthop group (resilient by
default) of its path set, owned by bgplb's route protocol number and kept in sync with the
desired state, VIP by VIP.

    fib = KernelFib(netns=None, protocol=200, group="resilient", buckets=512)
    fib.adopt()                           # start: keep what a previous run left (deferral)
    fib.update({"198.51.100.10/32": [("192.0.2.2", "eth1", 64), ("192.0.2.6", "eth2", 64)]})
    fib.finish_deferral()                 # every peer re-sent its routes: drop the rest
    fib.failures()                        # VIPs the kernel refused, retried with backoff
    fib.buckets_share("198.51.100.10/32") # {IPv4Address('192.0.2.2'): 256, ...}
    fib.cleanup()                         # exit: remove everything of ours

Planning, fault isolation and retries are `bgplb.linux.fibapi.FibEngine` (shared with the
in-memory `bgplb.linux.memfib.MemoryFib`); this module runs its operations over netlink and
reads and watches the kernel.

Ownership: every nexthop and route bgplb creates carries `protocol` (default 200, "bgplb";
not in iproute2's reserved list, see /etc/iproute2/rt_protos; operators can name it with
`echo "200 bgplb" > /etc/iproute2/rt_protos.d/bgplb.conf`). Objects with any other protocol are
never modified or deleted; their nexthop ids are never reused.

Threads: every method is blocking. Changes go through one socket guarded by one lock, so
`watch()` may run in a thread while another thread calls `update()`. Reads of the kernel
(`installed()`, `buckets_shares()`) use a second socket with its own lock: a status request in
a thread neither races with nor waits for an apply in another. From asyncio either run
`watch(stop)` with `asyncio.to_thread`, or register
`loop.add_reader(fib.watch_fileno(), fib.process_events)` after `start_watching()`.

Cost: while watching, the installed state is kept from our own successful operations, and the
kernel is dumped again only at adoption/reconcile, after a refusal that hints at a stale model,
or when the watcher sees a change it did not make (or lost notifications). The notifications of
our own changes carry our socket's port id and are dropped undecoded. Without a watcher every
apply dumps the kernel first (nothing would notice someone else's changes otherwise). The
operations of one phase of a plan go to the kernel in batches (`NexthopSocket.transact`: many
requests per sendmsg, each answer mapped back to its request).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any, assert_never

from bgplb.linux import diff as d
from bgplb.linux.enginefib import EngineFib
from bgplb.linux.fibapi import (
    STATUS_BUCKET_LIMIT,
    BucketShares,
    ChangesInput,
    FibEngine,
    OpError,
    collect_shares,
    resolve_changes,
)
from bgplb.linux.nexthop import (
    GroupType,
    KernelEvent,
    Nexthop,
    NexthopChanged,
    NexthopDeleted,
    NexthopError,
    NexthopMonitor,
    NexthopSocket,
    Route,
    RouteChanged,
    RouteDeleted,
)

__all__ = [
    "DEFAULT_PROTOCOL",
    "STATUS_BUCKET_LIMIT",
    "BucketShares",
    "DesiredInput",
    "FibError",
    "KernelFib",
    "PathSpec",
]

log = logging.getLogger(__name__)

DEFAULT_PROTOCOL = 200
"""Route/nexthop protocol number of bgplb (RTPROT_*; 200 is unassigned in linux/rtnetlink.h
and iproute2's rt_protos)."""

BATCHED = True
"""Run each phase of a plan as one `NexthopSocket.transact` (False: one round trip per op)."""

_ODD = d.Gateway(ipaddress.IPv4Address(0), 0)  # identity given to our nexthops of an odd shape

PathSpec = tuple[str | d.IPAddress, str | int, int]  # (gateway, oif name or index, weight)
DesiredInput = ChangesInput


class FibError(RuntimeError):
    """An operation failed; `op` and `errno` say which (kept for callers of older versions:
    the FIB itself reports per-VIP errors, see `KernelFib.failures()`)."""

    def __init__(self, op: d.Op, cause: NexthopError) -> None:
        super().__init__(f"{op}: {cause}")
        self.op = op
        self.errno = cause.errno


class KernelFib(EngineFib):
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
        self.engine = FibEngine(self.params, self._run, self.installed, id_base)
        self._monitor: NexthopMonitor | None = None
        self.reinstalls = 0  # times process_events found something of ours missing or changed
        self.batches = 0  # netlink transactions (batched mode)
        self.dumps = 0  # full kernel reads (installed())

    def _now(self, now: float | None) -> float:
        return _now(now)

    def _engine(self) -> FibEngine:
        """The engine, made to read the kernel first when nothing watches it (nothing would
        notice someone else's changes otherwise). Under self._lock."""
        if self._monitor is None:
            self.engine.invalidate()
        return self.engine

    def close(self) -> None:
        """Close the sockets (leaves the kernel objects as they are: see cleanup())."""
        with self._lock:
            if self._monitor is not None:
                self._monitor.close()
                self._monitor = None
            self.engine.invalidate()
            self._nl.close()
            with self._read_lock:
                self._reader.close()

    def __enter__(self) -> KernelFib:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading the kernel -------------------------------------------------------------------
    def installed(self, vips: Iterable[d.IPNetwork] | None = None) -> d.InstalledState:
        """Dump the kernel: our nexthops, groups and routes, and every id in use by others.
        With `vips`, only the routes of those VIPs are read (one lookup each), not every route:
        what status needs for a page of VIPs, without a dump of 100k routes."""
        with self._read_lock:
            self.dumps += 1
            nexthops = self._reader.dump_nexthops()
            if vips is None:
                routes = self._reader.dump_routes(protocol=self.protocol, table=self.table)
            else:
                routes = self._routes_of(vips)
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

    def _routes_of(self, vips: Iterable[d.IPNetwork]) -> list[Route]:
        """Under _read_lock: our routes of `vips` (exact-match lookups)."""
        found = []
        for net in vips:
            try:
                route = self._reader.get_route(net, table=self.table)
            except NexthopError:
                continue
            if route is not None and route.protocol == self.protocol and route.dst == net:
                found.append(route)
        return found

    @staticmethod
    def _params_of(nh: Nexthop) -> d.GroupParams:
        if nh.group_type is GroupType.RES and nh.resilient is not None:
            r = nh.resilient
            return d.GroupParams(d.GroupKind.RESILIENT, r.buckets, r.idle_timer, r.unbalanced_timer)
        return d.GroupParams(d.GroupKind.MULTIPATH)

    # -- changing the kernel ------------------------------------------------------------------
    def _link(self, name: str) -> int:
        with self._lock:
            return self._nl.link_index(name)

    def resolve(self, desired: ChangesInput) -> dict[d.IPNetwork, dict[d.Gateway, int]]:
        """Interface names -> indexes in our namespace, then `diff.desired_state`."""
        return {net: dict(p) for net, p in resolve_changes(desired, self._link).items()}

    def reconcile(self, desired: ChangesInput | None = None) -> list[d.Op]:
        """At start: remove every stale object of ours (desired None), or adopt what matches
        `desired` and remove the rest. Objects of other protocols are never touched. Always
        reads the kernel first."""
        resolved = resolve_changes(desired or {}, self._link)
        with self._lock:
            return self.engine.reset(resolved, time.monotonic()).ops

    def cleanup(self) -> list[d.Op]:
        """Remove every route, group and nexthop of ours (and stop re-installing them).
        Reads the kernel first, like reconcile(), unless a watcher kept our model exact (no
        notification pending about our objects, none lost): a dump of 100k routes takes ~10 s,
        and deleting a group takes its routes with it."""
        known = self._monitor is not None and not self.poll_events()
        with self._lock:
            ops = self.engine.reset({}, time.monotonic(), reread=not known).ops
            if known and self._leftovers():
                # the model missed something (it must not, but an exit that leaves routes
                # blackholes the VIPs): read the kernel and remove what is really there
                log.warning("fib: objects of ours left after the clean-up; reading the kernel")
                ops += self.engine.reset({}, time.monotonic(), reread=True).ops
            self.engine.applied = False
            return ops

    def _leftovers(self) -> int:
        """Nexthop objects of ours in the kernel (a cheap dump: one per server and group; every
        route of ours points at one, and goes with it)."""
        with self._read_lock:
            return sum(1 for nh in self._reader.dump_nexthops() if nh.protocol == self.protocol)

    def _run(self, ops: Sequence[d.Op]) -> list[OpError | None]:
        """Runner of the engine (under self._lock): one phase's operations."""
        if BATCHED and len(ops) > 1:
            return self._run_batch(ops)
        out: list[OpError | None] = []
        for op in ops:
            try:
                self._execute(op)
                out.append(None)
            except NexthopError as exc:
                out.append(OpError(exc.errno or errno.EIO, str(exc)))
        return out

    def _run_batch(self, ops: Sequence[d.Op]) -> list[OpError | None]:
        from bgplb.linux import nlbatch

        messages = [self._encode(op) for op in ops]
        self.batches += 1
        try:
            results = self._nl.transact(messages)
        except nlbatch.NetlinkOverrun as exc:
            # answers lost: which requests were applied is unknown; read the kernel next time
            self.engine.invalidate()
            return [OpError(errno.ENOBUFS, str(exc)) for _ in ops]
        return [None if r is None else OpError(r.errno or errno.EIO, str(r)) for r in results]

    def _execute(self, op: d.Op) -> None:
        """One operation, one round trip (raises NexthopError)."""
        self._nl.request_raw(self._encode(op))

    def _encode(self, op: d.Op) -> bytes:
        """The netlink request of one operation (hand-encoded, bgplb.linux.nlbatch)."""
        from bgplb.linux import nlbatch

        proto, table = self.protocol, self.table
        match op:
            case d.AddNexthop(id=nh_id, gateway=gw):
                return nlbatch.encode_nexthop(nh_id, gateway=gw.address, oif=gw.oif, protocol=proto)
            case (
                d.AddGroup(id=nh_id, members=members, params=p)
                | d.ReplaceGroup(id=nh_id, members=members, params=p)
            ):
                return nlbatch.encode_group(
                    nh_id,
                    members=members,
                    protocol=proto,
                    group_type=_group_type(p),
                    buckets=p.buckets,
                    idle_timer=p.idle_timer,
                    unbalanced_timer=p.unbalanced_timer,
                    replace=isinstance(op, d.ReplaceGroup),
                )
            case d.AddRoute(dst=dst, nh_id=nh_id) | d.ReplaceRoute(dst=dst, nh_id=nh_id):
                return nlbatch.encode_route(
                    dst,
                    nh_id=nh_id,
                    protocol=proto,
                    table=table,
                    replace=isinstance(op, d.ReplaceRoute),
                )
            case d.DeleteRoute(dst=dst):
                return nlbatch.encode_del_route(dst, protocol=proto, table=table)
            case d.DeleteGroup(id=nh_id) | d.DeleteNexthop(id=nh_id):
                return nlbatch.encode_del_nexthop(nh_id)
        assert_never(op)

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
        one dump of nexthops and routes plus one bucket dump per group (VIPs sharing a group
        share it). Groups are read in VIP order while the buckets read stay within `limit`; the
        VIPs of the others are listed in `omitted`.
        VIPs without a resilient group of ours are absent. Never takes the lock of `apply()`:
        safe to call from another thread (e.g. `asyncio.to_thread`) while an apply runs."""

        def read_group(group_id: int) -> dict[int, int] | None:
            with self._read_lock:
                try:
                    return self._reader.bucket_share(group_id)
                except NexthopError as exc:
                    if exc.errno in (errno.ENOENT, errno.EINVAL):
                        return None  # gone since the dump
                    raise

        nets = None if vips is None else [ipaddress.ip_network(v) for v in vips]
        return collect_shares(self.installed(nets), nets, limit, read_group)

    def status(self, now: float | None = None) -> dict[str, Any]:
        """Counters (no kernel read, no walk over VIPs): see FibEngine.status."""
        return {
            **self.engine.status(_now(now)),
            "reinstalls": self.reinstalls,
            "batches": self.batches,
        }

    # -- watching -----------------------------------------------------------------------------
    def start_watching(self) -> None:
        """Subscribe to nexthop and route notifications (before the first apply is best)."""
        if self._monitor is not None:  # no lock: poll_events runs on an event loop
            return
        with self._lock:
            if self._monitor is None:
                monitor = NexthopMonitor(self.netns)
                # the kernel stamps the notifications of our own changes with our port id
                monitor.ignore_pids = frozenset({self._nl.portid})
                _grow_receive_buffer(monitor.fileno())
                self._monitor = monitor
                self.engine.invalidate()  # read before we listened: read again

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
                    r.protocol == self.protocol or r.dst in self.engine.wanted
                )
        return False

    def process_events(self) -> list[d.Op]:
        """Non-blocking read, then (if needed) a blocking resync: `poll_events()` +
        `resync()`. Returns the operations taken."""
        return self.resync() if self.poll_events() else []

    def poll_events(self) -> bool:
        """Non-blocking and lock-free: read pending notifications; True if one concerns our
        objects or events were lost (ENOBUFS: e.g. a burst of our own changes overflowed the
        socket), i.e. `resync()` is needed — a kernel dump, so call it from a worker thread.
        Notifications of our own changes are dropped undecoded (their nlmsg_pid is our
        socket's)."""
        self.start_watching()
        assert self._monitor is not None
        overruns = self._monitor.overruns
        events = self._monitor.read()
        needed = self._monitor.overruns != overruns or any(self._ours(e) for e in events)
        if needed:
            self.engine.invalidate()  # atomic; an apply running elsewhere keeps its own model
        return needed

    def resync(self, now: float | None = None) -> list[d.Op]:
        """Read the kernel again and re-install every wanted VIP (after someone else changed
        our objects, or lost notifications). Returns the operations taken."""
        with self._lock:
            engine = self.engine
            if not engine.applied and engine.adopted is None:  # nothing to defend yet
                engine.invalidate()
                return []
            ops = engine.resync(_now(now)).ops  # reads the kernel again
        if ops:
            self.reinstalls += 1
            log.warning(
                "fib: kernel objects of ours changed by someone else; re-installed %d "
                "operation(s): %s",
                len(ops),
                ops[:10],
            )
        return ops

    def _handle(self, events: list[KernelEvent], lost: bool) -> list[d.Op]:
        if not lost and not any(self._ours(e) for e in events):
            return []
        return self.resync()

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
            except (OSError, ValueError) as exc:
                log.error("fib: re-install failed: %s", exc)


def _now(now: float | None) -> float:
    return time.monotonic() if now is None else now


def _group_type(p: d.GroupParams) -> GroupType:
    return GroupType.RES if p.kind is d.GroupKind.RESILIENT else GroupType.MPATH


WATCH_BUFFER = 128 << 20
"""Receive buffer of the watch socket: a batch of ~100k route changes of our own queues about
that many notifications (~0.8 KiB each in the kernel) before the reader drops them; an
overflow (ENOBUFS) costs a full kernel dump. Memory is only used while notifications wait."""


def _grow_receive_buffer(fd: int) -> None:
    """SO_RCVBUFFORCE (root: beyond net.core.rmem_max), else leave the buffer as it is."""
    import socket

    sock = socket.socket(fileno=os.dup(fd))
    try:
        sock.setsockopt(socket.SOL_SOCKET, 33, WATCH_BUFFER)  # SO_RCVBUFFORCE
    except OSError as exc:
        log.debug("fib: watch socket buffer stays as it is: %s", exc)
    finally:
        sock.close()
