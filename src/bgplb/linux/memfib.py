"""An in-memory FIB: `MemoryFib` runs the same engine as `KernelFib` (bgplb.linux.fibapi) on
`MemoryKernel`, a model of the Linux nexthop/route rules, so the router's glue and the FIB's
fault isolation can be tested without root.

The model enforces what the FIB relies on (net/ipv4/nexthop.c, fib_semantics.c, seen on 6.18):

* nexthop ids are unique across single nexthops and groups; adding an existing id or route
  without replace is EEXIST; deleting a missing nexthop is ENOENT, a missing route ESRCH;
* ownership by protocol number: a route delete names its protocol and only matches that one;
  objects of other protocols are listed as foreign ids;
* a group needs existing single-nexthop members (EINVAL otherwise); a replace that changes a
  group's type or a resilient group's bucket count is EINVAL; an IPv6 route to a group with an
  IPv4 gateway is EINVAL;
* deleting a group deletes its routes; deleting a member removes it from its groups, and a group
  left without members is deleted (with its routes);
* resilient groups have buckets: on create they are dealt in member order by weight; on a
  replace or a member's deletion the buckets of a member that left go to the members below
  their share, and buckets of members that stay do not move (every bucket is busy). With
  `idle=True` buckets over a member's share also move (every bucket idle);
* fault injection: `Fault` rules make an operation (by kind, VIP, id or gateway) fail with an
  errno, once or always.

Changes made through `MemoryKernel`'s methods by a test (someone else) are notified on a pipe
(`MemoryFib.watch_fileno()`); the FIB's own operations are not, like `KernelFib`'s.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

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

DEFAULT_PROTOCOL = 200


class KernelRefusal(OSError):
    """The modelled kernel refused a request."""


@dataclass(slots=True)
class MemNexthop:
    id: int
    protocol: int
    gateway: d.Gateway | None = None  # a single nexthop
    members: d.Members | None = None  # a group: (member id, weight)
    params: d.GroupParams | None = None
    buckets: list[int] = field(default_factory=list)  # resilient: member id of each bucket


@dataclass(frozen=True, slots=True)
class MemRoute:
    dst: d.IPNetwork
    table: int
    protocol: int
    nh_id: int | None = None  # None: a plain route (e.g. someone's static route)


@dataclass(slots=True)
class Fault:
    """Make matching operations fail with `errno`. `op`: an operation class of bgplb.linux.diff
    (None: any); `vip`, `id`, `gateway`: what it must name (None: anything)."""

    errno: int
    op: type | None = None
    vip: d.IPNetwork | None = None
    id: int | None = None
    gateway: d.IPAddress | None = None
    once: bool = False
    fired: int = 0

    def matches(self, op: d.Op) -> bool:
        if self.op is not None and not isinstance(op, self.op):
            return False
        if self.vip is not None and getattr(op, "dst", None) != self.vip:
            return False
        if self.id is not None and getattr(op, "id", getattr(op, "nh_id", None)) != self.id:
            return False
        if self.gateway is not None:
            gw = getattr(op, "gateway", None)
            return gw is not None and gw.address == self.gateway
        return True


def _refuse(code: int, text: str) -> KernelRefusal:
    return KernelRefusal(code, text)


def _shares(members: d.Members, buckets: int) -> dict[int, int]:
    """Buckets each member should have: proportional to weight, largest remainder, by id."""
    total = sum(w for _, w in members)
    exact = {m: buckets * w / total for m, w in members}
    out = {m: int(x) for m, x in exact.items()}
    left = buckets - sum(out.values())
    for m in sorted(exact, key=lambda m: (-(exact[m] - out[m]), m))[:left]:
        out[m] += 1
    return out


class MemoryKernel:
    """Nexthop objects and routes of one namespace (see the module docstring)."""

    def __init__(self, idle: bool = False) -> None:
        self.nexthops: dict[int, MemNexthop] = {}
        self.routes: dict[tuple[int, d.IPNetwork], MemRoute] = {}
        self.links: dict[str, int] = {}
        self.faults: list[Fault] = []
        self.idle = idle
        self.requests = 0  # operations asked of the kernel (refused ones included)
        self._lock = threading.RLock()
        self._pipe: tuple[int, int] | None = None

    # -- notifications -------------------------------------------------------------------------
    def fileno(self) -> int:
        if self._pipe is None:
            self._pipe = os.pipe()
            os.set_blocking(self._pipe[0], False)
        return self._pipe[0]

    def drain(self) -> bool:
        if self._pipe is None:
            return False
        try:
            return bool(os.read(self._pipe[0], 4096))
        except BlockingIOError:
            return False

    def _notify(self, notify: bool) -> None:
        if notify and self._pipe is not None:
            os.write(self._pipe[1], b"x")

    def close(self) -> None:
        if self._pipe is not None:
            for fd in self._pipe:
                os.close(fd)
            self._pipe = None

    # -- faults --------------------------------------------------------------------------------
    def inject(self, fault: Fault) -> Fault:
        self.faults.append(fault)
        return fault

    def _fault(self, op: d.Op) -> None:
        for fault in self.faults:
            if fault.matches(op):
                fault.fired += 1
                if fault.once:
                    self.faults.remove(fault)
                raise _refuse(fault.errno, f"injected fault on {op}")

    def execute(self, op: d.Op, protocol: int, table: int) -> None:
        """One operation of bgplb.linux.diff, as KernelFib sends it (no notification)."""
        with self._lock:
            self.requests += 1
            self._fault(op)
            match op:
                case d.AddNexthop(id=nh_id, gateway=gw):
                    self.add_nexthop(nh_id, gw, protocol, notify=False)
                case d.AddGroup(id=nh_id, members=m, params=p):
                    self.add_group(nh_id, m, p, protocol, notify=False)
                case d.ReplaceGroup(id=nh_id, members=m, params=p):
                    self.add_group(nh_id, m, p, protocol, replace=True, notify=False)
                case d.AddRoute(dst=dst, nh_id=nh_id):
                    self.add_route(dst, nh_id, protocol, table, notify=False)
                case d.ReplaceRoute(dst=dst, nh_id=nh_id):
                    self.add_route(dst, nh_id, protocol, table, replace=True, notify=False)
                case d.DeleteRoute(dst=dst):
                    self.del_route(dst, protocol, table, notify=False)
                case d.DeleteGroup(id=nh_id) | d.DeleteNexthop(id=nh_id):
                    self.del_nexthop(nh_id, notify=False)

    # -- the kernel's operations ---------------------------------------------------------------
    def add_nexthop(
        self, nh_id: int, gw: d.Gateway, protocol: int, replace: bool = False, notify: bool = True
    ) -> None:
        with self._lock:
            old = self.nexthops.get(nh_id)
            if not 1 <= nh_id <= 0xFFFFFFFF:
                raise _refuse(errno.EINVAL, "Invalid nexthop id")
            if old is not None and not replace:
                raise _refuse(errno.EEXIST, "Nexthop id already exists")
            if old is not None and old.members is not None:
                raise _refuse(errno.EINVAL, "Can not replace a group with a nexthop")
            self.nexthops[nh_id] = MemNexthop(nh_id, protocol, gateway=gw)
            self._notify(notify)

    def add_group(
        self,
        nh_id: int,
        members: d.Members,
        params: d.GroupParams,
        protocol: int,
        replace: bool = False,
        notify: bool = True,
    ) -> None:
        with self._lock:
            old = self.nexthops.get(nh_id)
            if old is not None and not replace:
                raise _refuse(errno.EEXIST, "Nexthop id already exists")
            if not members or len({m for m, _ in members}) != len(members):
                raise _refuse(errno.EINVAL, "Invalid nexthop group")
            for m, w in members:
                nh = self.nexthops.get(m)
                if nh is None or nh.members is not None or not 1 <= w <= 256:
                    raise _refuse(errno.EINVAL, f"Invalid nexthop id {m} in group")
            if old is not None:
                if old.members is None or old.params is None:
                    raise _refuse(errno.EINVAL, "Can not replace a nexthop with a group")
                if not params.same_shape(old.params):
                    raise _refuse(
                        errno.EINVAL, "Can not change number of buckets of a resilient group"
                    )
            group = MemNexthop(nh_id, protocol, members=tuple(sorted(members)), params=params)
            if params.kind is d.GroupKind.RESILIENT:
                group.buckets = self._rebalance(
                    old.buckets if old is not None else [], group.members or (), params.buckets
                )
            self.nexthops[nh_id] = group
            self._notify(notify)

    def _rebalance(self, buckets: list[int], members: d.Members, count: int) -> list[int]:
        share = _shares(members, count)
        if not buckets:
            return [m for m, _ in members for _ in range(share[m])]
        out = list(buckets)
        have: dict[int, int] = {}
        for m in out:
            have[m] = have.get(m, 0) + 1
        free = [i for i, m in enumerate(out) if m not in share]
        if self.idle:  # idle buckets of over-served members may move too, from the end
            for i in reversed(range(len(out))):
                m = out[i]
                if m in share and have[m] > share[m]:
                    have[m] -= 1
                    free.append(i)
        for i in sorted(free):
            under = [m for m, _ in members if have.get(m, 0) < share[m]]
            target = under[0] if under else min(share, key=lambda m: (have.get(m, 0), m))
            old = out[i]
            if old in share and not self.idle:
                continue
            out[i] = target
            have[target] = have.get(target, 0) + 1
        return out

    def del_nexthop(self, nh_id: int, notify: bool = True) -> None:
        with self._lock:
            nh = self.nexthops.pop(nh_id, None)
            if nh is None:
                raise _refuse(errno.ENOENT, "Nexthop id does not exist")
            if nh.members is not None:
                self._drop_routes(nh_id)
            else:
                for group in list(self.nexthops.values()):
                    if group.members is None or all(m != nh_id for m, _ in group.members):
                        continue
                    left = tuple(mw for mw in group.members if mw[0] != nh_id)
                    if not left:
                        del self.nexthops[group.id]
                        self._drop_routes(group.id)
                        continue
                    group.members = left
                    if group.params is not None and group.params.kind is d.GroupKind.RESILIENT:
                        group.buckets = self._rebalance(group.buckets, left, len(group.buckets))
            self._notify(notify)

    def _drop_routes(self, nh_id: int) -> None:
        for key in [k for k, r in self.routes.items() if r.nh_id == nh_id]:
            del self.routes[key]

    def add_route(
        self,
        dst: d.IPNetwork,
        nh_id: int | None,
        protocol: int,
        table: int = 254,
        replace: bool = False,
        notify: bool = True,
    ) -> None:
        with self._lock:
            if (table, dst) in self.routes and not replace:
                raise _refuse(errno.EEXIST, "File exists")
            if nh_id is not None:
                group = self.nexthops.get(nh_id)
                if group is None:
                    raise _refuse(errno.EINVAL, "Nexthop id does not exist")
                if dst.version == 6:
                    members = group.members or ((nh_id, 1),)
                    for m, _ in members:
                        gw = self.nexthops[m].gateway
                        if gw is not None and gw.address.version == 4:
                            raise _refuse(errno.EINVAL, "IPv6 route with an IPv4 gateway")
            self.routes[(table, dst)] = MemRoute(dst, table, protocol, nh_id)
            self._notify(notify)

    def del_route(
        self, dst: d.IPNetwork, protocol: int, table: int = 254, notify: bool = True
    ) -> None:
        with self._lock:
            route = self.routes.get((table, dst))
            if route is None or route.protocol != protocol:
                raise _refuse(errno.ESRCH, "No such process")
            del self.routes[(table, dst)]
            self._notify(notify)

    # -- reading -------------------------------------------------------------------------------
    def installed(self, protocol: int, table: int) -> d.InstalledState:
        with self._lock:
            singles: dict[int, d.Gateway] = {}
            groups: dict[int, d.InstalledGroup] = {}
            foreign: set[int] = set()
            for nh in self.nexthops.values():
                if nh.protocol != protocol:
                    foreign.add(nh.id)
                elif nh.members is not None and nh.params is not None:
                    groups[nh.id] = d.InstalledGroup(nh.id, nh.members, nh.params)
                elif nh.gateway is not None:
                    singles[nh.id] = nh.gateway
            routes = {
                r.dst: r.nh_id
                for (t, _), r in self.routes.items()
                if t == table and r.protocol == protocol
            }
            return d.InstalledState(singles, groups, routes, frozenset(foreign))

    def forwarding(self, table: int = 254) -> dict[d.IPNetwork, dict[d.IPAddress, int]]:
        """Every route with a group in `table`: {dst: {gateway address: weight}}."""
        with self._lock:
            out: dict[d.IPNetwork, dict[d.IPAddress, int]] = {}
            for (t, dst), route in self.routes.items():
                nh = self.nexthops.get(route.nh_id) if route.nh_id is not None else None
                if t != table or nh is None:
                    continue
                members = nh.members if nh.members is not None else ((nh.id, 1),)
                gws: dict[d.IPAddress, int] = {}
                for m, w in members:
                    gw = self.nexthops[m].gateway
                    if gw is not None:
                        gws[gw.address] = gws.get(gw.address, 0) + w
                out[dst] = gws
            return out

    def bucket_share(self, group_id: int) -> dict[int, int]:
        with self._lock:
            out: dict[int, int] = {}
            for m in self.nexthops[group_id].buckets:
                out[m] = out.get(m, 0) + 1
            return out

    def counts(self, protocol: int) -> tuple[int, int, int]:
        """(single nexthops, groups, routes) of `protocol`: leak checks."""
        with self._lock:
            singles = sum(
                1 for n in self.nexthops.values() if n.protocol == protocol and n.members is None
            )
            groups = sum(
                1
                for n in self.nexthops.values()
                if n.protocol == protocol and n.members is not None
            )
            routes = sum(1 for r in self.routes.values() if r.protocol == protocol)
            return singles, groups, routes


class MemoryFib(EngineFib):
    """A `bgplb.linux.fibapi.Fib` on a `MemoryKernel` (shared with the test, which may change
    it behind the FIB's back and inject faults). `clock`: the `now` used when none is given."""

    def __init__(
        self,
        kernel: MemoryKernel | None = None,
        protocol: int = DEFAULT_PROTOCOL,
        table: int = 254,
        group: str = "resilient",
        buckets: int = 512,
        idle_timer: float = 10.0,
        unbalanced_timer: float = 60.0,
        id_base: int = d.DEFAULT_ID_BASE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kernel = kernel if kernel is not None else MemoryKernel()
        self.protocol = protocol
        self.table = table
        self.params = d.GroupParams(d.GroupKind(group), buckets, idle_timer, unbalanced_timer)
        self.clock = clock
        self.engine = FibEngine(self.params, self._run, self.installed, id_base)
        self._lock = threading.RLock()
        self.reinstalls = 0
        self.closed = False

    @property
    def dumps(self) -> int:
        return self.engine.dumps

    def _run(self, ops: Iterable[d.Op]) -> list[OpError | None]:
        out: list[OpError | None] = []
        for op in ops:
            try:
                self.kernel.execute(op, self.protocol, self.table)
                out.append(None)
            except KernelRefusal as exc:
                out.append(OpError(exc.errno or errno.EIO, exc.strerror or str(exc)))
        return out

    def _link(self, name: str) -> int:
        if name not in self.kernel.links:
            raise ValueError(f"no interface {name!r}")
        return self.kernel.links[name]

    def _now(self, now: float | None) -> float:
        return self.clock() if now is None else now

    # -- changes -------------------------------------------------------------------------------
    def installed(self) -> d.InstalledState:
        return self.kernel.installed(self.protocol, self.table)

    def reconcile(self, desired: ChangesInput | None = None) -> list[d.Op]:
        resolved = resolve_changes(desired or {}, self._link)
        with self._lock:
            return self.engine.reset(resolved, self.clock()).ops

    def cleanup(self) -> list[d.Op]:
        with self._lock:
            ops = self.engine.reset({}, self.clock()).ops
            self.engine.applied = False
            return ops

    # -- watching ------------------------------------------------------------------------------
    def start_watching(self) -> None:
        self.kernel.fileno()

    def watch_fileno(self) -> int:
        return self.kernel.fileno()

    def process_events(self) -> list[d.Op]:
        return self.resync() if self.poll_events() else []

    def poll_events(self) -> bool:
        return self.kernel.drain()

    def resync(self, now: float | None = None) -> list[d.Op]:
        with self._lock:
            if not self.engine.applied and self.engine.adopted is None:
                self.engine.invalidate()
                return []
            ops = self.engine.resync(self._now(now)).ops
        if ops:
            self.reinstalls += 1
        return ops

    # -- visibility ----------------------------------------------------------------------------
    def buckets_shares(
        self, vips: Iterable[Any] | None = None, limit: int = STATUS_BUCKET_LIMIT
    ) -> BucketShares:
        def read_group(group_id: int) -> dict[int, int] | None:
            try:
                return self.kernel.bucket_share(group_id)
            except KeyError:
                return None

        return collect_shares(self.installed(), vips, limit, read_group)

    def buckets_share(self, vip: Any) -> dict[d.IPAddress, int]:
        net = ipaddress.ip_network(vip)
        return self.buckets_shares([net], limit=0xFFFF).shares.get(net, {})

    def status(self, now: float) -> dict[str, Any]:
        return {**self.engine.status(now), "reinstalls": self.reinstalls}

    def close(self) -> None:
        self.closed = True
