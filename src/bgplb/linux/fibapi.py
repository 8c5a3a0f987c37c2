"""The FIB interface of the router, its shared types, and the engine both FIBs run on.

`Fib` (a Protocol) is what the router needs from a FIB: incremental changes per VIP, per-VIP
errors with retries, reading and watching the kernel, restart adoption with deferral (RFC 4724
§4.1), cleanup, bucket shares and counters. Two implementations: `bgplb.linux.fib.KernelFib`
(netlink, the real kernel) and `bgplb.linux.memfib.MemoryFib` (an in-memory kernel that enforces
the kernel's rules, with fault injection, for tests without root).

`FibEngine` is the part they share, sans-IO: it keeps the desired path set of every VIP, the
model of what is installed (`bgplb.linux.diff.FibModel`), plans the changed VIPs
(`diff.plan`), runs the steps phase by phase through a `Runner` (the kernel, real or modelled),
and isolates faults:

* a refused operation fails only the VIPs it serves; steps that need an object a failed step
  should have made are skipped (their VIPs fail too); every other VIP's change goes on;
* removals (routes of withdrawn VIPs, then unused groups and nexthops) always run, and objects
  a failed step left unused are deleted in the same apply (no orphan groups or nexthops);
* a failed VIP is retried with exponential backoff (`backoff`: 1 s doubling to 60 s), and
  reported (`VipError`: errno, message, attempts, next retry);
* the first failure of a VIP that hints at a stale model (an id taken, an object gone) reads
  the kernel again and plans that VIP once more in the same apply.

Nothing here imports sockets or reads a clock: `now` (seconds, monotonic) is a parameter.
"""

from __future__ import annotations

import errno as _errno
import ipaddress
import itertools
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from bgplb.linux import diff as d

STATUS_BUCKET_LIMIT = 262144
"""Most buckets `buckets_shares()` reads per call by default (512 VIPs of 512 buckets)."""

RETRY_FIRST = 1.0
RETRY_MAX = 60.0
STATUS_FAILED_LIMIT = 100

PathSpec = tuple[Any, Any, int]  # (gateway, oif name or index, weight)
ChangesInput = Mapping[Any, Iterable[PathSpec]]  # VIP -> paths; no path: withdraw the VIP


def backoff(attempts: int, first: float = RETRY_FIRST, cap: float = RETRY_MAX) -> float:
    """Seconds to wait after the `attempts`-th failure in a row: 1, 2, 4, ... capped at 60."""
    if attempts < 1:
        return 0.0
    return float(min(cap, first * 2.0 ** min(attempts - 1, 32)))


@dataclass(frozen=True, slots=True)
class OpError:
    """The kernel refused one operation."""

    errno: int
    message: str


Runner = Callable[[Sequence[d.Op]], list[OpError | None]]
"""Runs operations in order (they are independent of each other: one phase of a plan) and
returns None for each applied one, the OpError of each refused one."""


@dataclass(frozen=True, slots=True)
class VipError:
    """Why a VIP is not as desired in the kernel, and when it is tried again."""

    errno: int
    message: str
    op: str
    attempts: int
    next_retry: float

    def as_dict(self, now: float) -> dict[str, Any]:
        return {
            "errno": self.errno,
            "error": _errno.errorcode.get(self.errno, str(self.errno)),
            "message": self.message,
            "op": self.op,
            "attempts": self.attempts,
            "retry_in": round(max(0.0, self.next_retry - now), 3),
        }


@dataclass(slots=True)
class FibResult:
    """What one apply did: the operations the kernel took, and the VIPs that failed in it."""

    ops: list[d.Op] = field(default_factory=list)
    failed: dict[d.IPNetwork, VipError] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Adopted:
    """Objects of a previous run found at start: VIPs with a route of ours, and the gateways of
    their groups with the address family (4 or 6) of the VIPs each serves."""

    vips: int = 0
    groups: int = 0
    gateways: frozenset[tuple[d.IPAddress, int]] = frozenset()


@dataclass(frozen=True, slots=True)
class BucketShares:
    """Buckets per gateway of each VIP's resilient group, from one kernel read."""

    shares: dict[d.IPNetwork, dict[d.IPAddress, int]]
    omitted: tuple[d.IPNetwork, ...] = ()  # resilient groups not read: over `limit`
    limit: int = STATUS_BUCKET_LIMIT


def collect_shares(
    state: d.InstalledState,
    vips: Iterable[Any] | None,
    limit: int,
    read_group: Callable[[int], dict[int, int] | None],
) -> BucketShares:
    """Buckets per gateway of each VIP's resilient group, from `state` (one dump) and one
    `read_group(id)` ({member id: buckets}, None if gone) per *group*: VIPs sharing a group
    share the answer. Groups are read in VIP order while the buckets read stay within
    `limit`; the VIPs of groups over it are listed as omitted."""
    nets = state.routes if vips is None else {ipaddress.ip_network(v) for v in vips}
    shares: dict[d.IPNetwork, dict[d.IPAddress, int]] = {}
    omitted: list[d.IPNetwork] = []
    seen: dict[int, dict[d.IPAddress, int] | None] = {}
    used = 0
    for net in sorted(nets, key=lambda n: (n.version, int(n.network_address), n.prefixlen)):
        group_id = state.routes.get(net)
        group = state.groups.get(group_id) if group_id is not None else None
        if group is None or group.params.kind is not d.GroupKind.RESILIENT:
            continue
        if group.id not in seen:
            if used + group.params.buckets > limit:
                omitted.append(net)
                continue
            used += group.params.buckets
            share = read_group(group.id)
            out: dict[d.IPAddress, int] | None = None
            if share is not None:
                out = {}
                for nh_id, count in share.items():
                    gw = state.nexthops.get(nh_id)
                    if gw is not None:
                        out[gw.address] = out.get(gw.address, 0) + count
            seen[group.id] = out
        found = seen[group.id]
        if found is not None:
            shares[net] = dict(found)
    return BucketShares(shares, tuple(omitted), limit)


class Fib(Protocol):
    """What the router needs from a FIB (KernelFib, MemoryFib). Methods block; `now` defaults
    to the monotonic clock."""

    params: d.GroupParams
    dumps: int
    reinstalls: int

    def update(self, changes: ChangesInput, now: float | None = None) -> FibResult:
        """Incremental: give each VIP of `changes` its paths (none: remove it). Only these
        VIPs are planned (plus VIPs of a shared group that must move off it)."""
        ...

    def drop_gateways(
        self, gateways: Iterable[d.IPAddress], now: float | None = None
    ) -> FibResult | None:
        """A server is gone (its session died, none of its paths kept): take these gateways
        out of every group that keeps another member, in place, at once; None if the FIB was
        busy (nothing done). Later updates find the kernel as they want it."""
        ...

    def regroup(
        self,
        moves: Iterable[tuple[Any, Iterable[PathSpec], Iterable[PathSpec], int]],
        now: float | None = None,
        wait: bool = True,
    ) -> FibResult | None:
        """Many VIPs change the same way (`moves`: one of them, its old paths, its new paths,
        how many): groups all of whose VIPs move are replaced in place at once, before the
        `update()` of these VIPs (which then finds them as it wants them). With `wait` False:
        None at once if the FIB is busy."""
        ...

    def apply(self, desired: ChangesInput) -> list[d.Op]:
        """Whole table: make the kernel hold exactly `desired` (tests, simple users)."""
        ...

    def retry_due(self, now: float | None = None) -> FibResult: ...
    def next_retry(self) -> float | None: ...
    def failures(self) -> dict[d.IPNetwork, VipError]: ...
    def installed(self) -> d.InstalledState: ...
    def adopt(self) -> Adopted:
        """At start: read the kernel, keep every object of ours; until `finish_deferral`,
        changes are additive for the adopted VIPs (nothing adopted is deleted or shrunk)."""
        ...

    @property
    def deferring(self) -> bool: ...
    def release_gateways(
        self, gateways: Iterable[tuple[d.IPAddress, int]], now: float | None = None
    ) -> FibResult:
        """While deferring: these adopted gateways' peers sent End-of-RIB; drop what they
        did not announce again."""
        ...

    def finish_deferral(self, now: float | None = None) -> FibResult: ...
    def reconcile(self, desired: ChangesInput | None = None) -> list[d.Op]: ...
    def cleanup(self) -> list[d.Op]: ...
    def start_watching(self) -> None: ...
    def watch_fileno(self) -> int: ...
    def process_events(self) -> list[d.Op]: ...
    def poll_events(self) -> bool:
        """Non-blocking, lock-free: True if `resync()` is needed (someone changed our objects,
        or notifications were lost)."""
        ...

    def resync(self, now: float | None = None) -> list[d.Op]:
        """Read the kernel, re-install every wanted VIP (blocking: a worker thread)."""
        ...

    def buckets_shares(
        self, vips: Iterable[Any] | None = None, limit: int = STATUS_BUCKET_LIMIT
    ) -> BucketShares: ...
    def buckets_share(self, vip: Any) -> dict[d.IPAddress, int]: ...
    def status(self, now: float) -> dict[str, Any]: ...
    def close(self) -> None: ...


def resolve_changes(
    changes: ChangesInput,
    link_index: Callable[[str], int],
    interned: dict[Any, Any] | None = None,
    networks: dict[Any, d.IPNetwork] | None = None,
) -> dict[d.IPNetwork, d.PathSet]:
    """{vip: [(gateway, oif name or index, weight)]} -> {network: path set}; interface names
    through `link_index`; duplicate gateways merged, weights summed (capped at 256), as
    `diff.desired_state` does. Raises ValueError for bad input. `interned` (kept by the
    caller across calls) makes equal gateways and path sets one object each: less memory, and
    comparisons that stop at identity.

    Cost per VIP: a few dict lookups on ints. The router hands the same gateway objects for
    every VIP (its RIB interns next hops), so a gateway is recognised by identity (checked,
    the object is kept meanwhile) and a VIP's paths by the identities of its gateways and its
    weights: the path set is built and checked once per distinct set, not per VIP (hashing an
    `ipaddress` object is slow Python code).

    A VIP may be given as a network, an address or string, or an object with a `network`
    attribute (the router's `bgplb.bgp.prefix.Prefix`, hashed in C). `networks` (kept by the
    caller) remembers the network of each such key, so a VIP is one network object from call
    to call (dict lookups stop at identity, nothing is built per VIP); withdrawn VIPs leave it."""
    pool: dict[Any, Any] = {} if interned is None else interned
    gateways: dict[tuple[Any, Any], d.Gateway] = {}
    by_id: dict[tuple[int, Any], tuple[Any, d.Gateway]] = {}
    sets: dict[tuple[Any, ...], d.PathSet] = {}
    out: dict[d.IPNetwork, d.PathSet] = {}

    def gateway_of(gateway: Any, oif: Any) -> d.Gateway:
        hit = by_id.get((id(gateway), oif))
        if hit is not None and hit[0] is gateway:
            return hit[1]
        gw = gateways.get((gateway, oif))
        if gw is None:
            index = oif if isinstance(oif, int) else link_index(oif)
            made = d.Gateway(ipaddress.ip_address(gateway), int(index))
            gw = gateways[(gateway, oif)] = pool.setdefault(made, made)
        by_id[(id(gateway), oif)] = (gateway, gw)
        return gw

    for vip, paths in changes.items():
        net = vip if isinstance(vip, (ipaddress.IPv4Network, ipaddress.IPv6Network)) else None
        if net is None:
            net = networks.get(vip) if networks is not None else None
            if net is None:
                made_net = getattr(vip, "network", None)
                if not isinstance(made_net, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
                    made_net = ipaddress.ip_network(vip)
                net = made_net
                if networks is not None:
                    networks[vip] = net
        if not isinstance(paths, (list, tuple)):
            paths = list(paths)
        if not paths and networks is not None:
            networks.pop(vip, None)
        sig: list[Any] = [net.version]
        for gateway, oif, weight in paths:
            sig.append(id(gateway_of(gateway, oif)))
            sig.append(weight)
        signature = tuple(sig)
        pset = sets.get(signature)
        if pset is None:
            gws: dict[d.Gateway, int] = {}
            for gateway, oif, weight in paths:
                gw = gateway_of(gateway, oif)
                if weight < 1:
                    raise ValueError(f"{net}: weight {weight} of {gw.address} must be >= 1")
                if net.version == 6 and gw.address.version == 4:
                    raise ValueError(f"{net}: an IPv6 route cannot use IPv4 gateway {gw.address}")
                gws[gw] = min(d.MAX_WEIGHT, gws.get(gw, 0) + weight)
            made_set = d.path_set(gws) if len(gws) > 1 else tuple(gws.items())
            pset = sets[signature] = pool.setdefault(made_set, made_set)
        out[net] = pset
    return out


# --- the engine ---------------------------------------------------------------------------------
_CREATES = (d.AddNexthop, d.AddGroup, d.ReplaceGroup)
_DELETES = (d.DeleteRoute, d.DeleteGroup, d.DeleteNexthop)


#: Refusals that say our model of the kernel is wrong (an object missing or invalid), not that
#: the kernel refuses the change as such (EEXIST of a foreign route, ENOSPC, EPERM).
_MODEL_ERRNOS = frozenset({_errno.EINVAL, _errno.ENOENT, _errno.ESRCH, _errno.ENOBUFS})


def _stale_hint(op: d.Op, err: OpError) -> bool:
    """True if the refusal suggests that our model of the kernel is out of date."""
    if err.errno in (_errno.ENOENT, _errno.ESRCH, _errno.ENOBUFS):  # ENOBUFS: answers lost
        return True
    if isinstance(op, (d.AddNexthop, d.AddGroup)) and err.errno == _errno.EEXIST:
        return True  # someone took the id
    # EINVAL on a group: a member is gone; on a route: its group is gone (e.g. deleted by the
    # kernel with its last member while a refused DeleteGroup left it in our model)
    return err.errno == _errno.EINVAL and isinstance(
        op, (d.AddGroup, d.ReplaceGroup, d.AddRoute, d.ReplaceRoute)
    )


class FibEngine:
    """Desired path sets per VIP -> kernel operations with fault isolation (module docstring).
    Not thread-safe by itself: the FIB serialises calls; `status()` may run concurrently."""

    def __init__(
        self,
        params: d.GroupParams,
        run: Runner,
        read: Callable[[], d.InstalledState],
        id_base: int = d.DEFAULT_ID_BASE,
    ) -> None:
        self.params = params
        self.id_base = id_base
        self._run = run
        self._read = read
        self.model: d.FibModel | None = None  # None: read the kernel first
        self.wanted: dict[d.IPNetwork, d.PathSet] = {}
        self.failed: dict[d.IPNetwork, VipError] = {}
        self.adopted: dict[d.IPNetwork, d.PathSet] | None = None
        self._adopted_by_set: dict[d.PathSet, list[d.IPNetwork]] = {}
        self.released: set[tuple[d.IPAddress, int]] = set()  # adopted gateways that spoke
        # gateways whose server is gone (`drop_gateways`): left out of every VIP's paths until
        # an update names them again; id(path set) -> (path set, path set without them)
        self.gone: frozenset[d.IPAddress] = frozenset()
        self._gone_memo: dict[int, tuple[d.PathSet, d.PathSet]] = {}
        self.fast_drops = 0  # groups changed by drop_gateways
        self.fast_moves = 0  # groups changed by regroup
        self.applied = False  # something to defend against others' changes
        self.dumps = 0
        self.applies = 0
        self.ops = 0
        self.errors = 0  # operations the kernel refused
        self.retries = 0
        self.interned: dict[Any, Any] = {}  # gateways and path sets, see resolve_changes
        self.networks: dict[Any, d.IPNetwork] = {}  # VIP key -> network, see resolve_changes
        self.counts: tuple[int, int, int] | None = None  # routes, groups, nexthops: last apply
        self._status_lock = threading.Lock()

    # -- state ---------------------------------------------------------------------------------
    def load(self) -> d.FibModel:
        if self.model is None:
            state = self._read()
            self.dumps += 1
            self.model = d.FibModel(state, self.id_base, self.interned)
        return self.model

    def invalidate(self) -> None:
        self.model = None

    def effective(self, net: d.IPNetwork) -> d.PathSet:
        """What VIP `net` gets: its desired paths, united while deferring with the paths it
        had when adopted (the desired weight wins for a gateway in both), except the adopted
        gateways whose peer has spoken since (`release`: its announcements are the truth)."""
        want = self.wanted.get(net, ())
        if self.adopted is not None:
            old = self.adopted.get(net)
            if old:
                merged = {gw: w for gw, w in old if (gw.address, net.version) not in self.released}
                if merged:
                    merged.update(want)
                    want = d.path_set(merged)
        return self._without_gone(want) if self.gone else want

    def _without_gone(self, pset: d.PathSet) -> d.PathSet:
        """`pset` without the gateways of `gone` (memoised per path set object: they are
        interned, a few for many VIPs)."""
        hit = self._gone_memo.get(id(pset))
        if hit is not None and hit[0] is pset:
            return hit[1]
        out = tuple(kv for kv in pset if kv[0].address not in self.gone)
        if len(out) == len(pset):
            out = pset
        if len(self._gone_memo) > 4096:
            self._gone_memo.clear()
        self._gone_memo[id(pset)] = (pset, out)
        return out

    # -- entry points --------------------------------------------------------------------------
    def update(self, changes: Mapping[d.IPNetwork, d.PathSet], now: float) -> FibResult:
        if len(self.interned) > 4 * (len(self.model.groups) if self.model else 0) + 4096:
            self.interned.clear()  # sets nobody uses any more: start again (re-filled on use)
        if self.gone:
            self._lift(changes.values())
        wanted = self.wanted
        for net, pset in changes.items():
            if pset:
                wanted[net] = pset
            else:
                wanted.pop(net, None)
        self.applied = True
        if self.adopted is None and not self.gone:
            return self._execute(changes, now, full=False)  # effective() is the identity
        return self._execute({net: self.effective(net) for net in changes}, now, full=False)

    def _lift(self, psets: Iterable[d.PathSet]) -> None:
        """Gateways of `gone` that a change names again are no longer left out."""
        back: set[d.IPAddress] = set()
        for pset in psets:
            if self._without_gone(pset) is not pset:
                back.update(gw.address for gw, _ in pset if gw.address in self.gone)
        if back:
            self.gone = self.gone - back
            self._gone_memo.clear()

    def drop_gateways(self, addresses: Iterable[d.IPAddress], now: float) -> FibResult:
        """Fast path of a server's loss (its session died and none of its paths are kept):
        before any per-VIP work, every installed group having one of these gateways and at
        least one other member is replaced in place without it — one operation per group, one
        batch — and the nexthops of these gateways no group uses any more are deleted.
        Groups of these gateways alone are left to `update()` (the VIPs' routes go). Until an
        update names a gateway again, it is left out of every VIP's paths (`gone`), so a
        re-plan before the RIB's own results (a retry, a resync) does not put it back; the
        RIB's results then find the kernel as they want it: no operation. O(groups)."""
        addrs = frozenset(addresses)
        if not addrs:
            return FibResult()
        model = self.load()
        self.gone = self.gone | addrs
        self._gone_memo.clear()
        if self.adopted is not None:  # their adopted paths do not hold the deferral either
            self.released |= {(a, v) for a in addrs for v in (4, 6)}
        steps = d.drop_gateways(model, addrs)
        done: list[d.Op] = []
        for step, result in zip(steps, self._run_ops(steps), strict=True):
            if result is None:
                model.note(step.op)
                done.append(step.op)
                self.fast_drops += 1
            else:
                # left to update(), which plans these VIPs again when the RIB's results come
                self.errors += 1
                if _stale_hint(step.op, result):
                    self.model = None
        if self.model is model:
            ids = [nh_id for nh_id, gw in model.nexthops.items() if gw.address in addrs]
            gc = d.garbage(model, (), ids)
            for step, result in zip(gc, self._run_ops(gc), strict=True):
                if result is None:
                    model.note(step.op)
                    done.append(step.op)
                else:
                    self.errors += 1
        self.applies += 1
        self.ops += len(done)
        return FibResult(done)

    def regroup(self, moves: Sequence[tuple[d.PathSet, d.PathSet, int]], now: float) -> FibResult:
        """Fast path of many VIPs changing the same way, before `update()` gets them: `moves`
        are (old path set, new path set, number of VIPs); every routed group whose VIPs are
        all among the movers is replaced in place with the new set, in one batch
        (`diff.regroup`). Nothing else is planned or recorded: the `update()` of these VIPs
        that follows finds their groups as they want them (no operation), or does the rest.
        Not while deferring or with failed VIPs (the model's sets are not the desired ones
        there). O(moves + groups)."""
        if self.adopted is not None or self.failed or not moves:
            return FibResult()
        model = self.load()
        if self.gone:  # what is installed for `old` lacks them; `new` names some again
            olds = [self._without_gone(old) for old, _, _ in moves]
            self._lift([new for _, new, _ in moves])
            moves = [
                (o, self._without_gone(new), n) for o, (_, new, n) in zip(olds, moves, strict=True)
            ]
        steps = d.regroup(model, moves, self.params)
        done: list[d.Op] = []
        failed: set[int] = set()
        allocated = [s.op.id for s in steps if isinstance(s.op, d.AddNexthop)]
        try:
            for _, batch in itertools.groupby(steps, key=lambda s: s.phase):
                runnable = [s for s in batch if not failed.intersection(s.needs)]
                for step, result in zip(runnable, self._run_ops(runnable), strict=True):
                    if result is None:
                        model.note(step.op)
                        done.append(step.op)
                        if isinstance(step.op, d.ReplaceGroup):
                            self.fast_moves += 1
                    else:  # left to update(), which plans these VIPs as usual
                        self.errors += 1
                        if isinstance(step.op, d.AddNexthop):
                            failed.add(step.op.id)
                        if _stale_hint(step.op, result):
                            self.model = None
        finally:
            for nh_id in allocated:
                model.release(nh_id)
        self.applies += 1
        self.ops += len(done)
        return FibResult(done)

    def replace_all(self, desired: Mapping[d.IPNetwork, d.PathSet], now: float) -> FibResult:
        """Whole table: `desired` becomes the wanted state, everything else of ours goes."""
        self.wanted = {net: pset for net, pset in desired.items() if pset}
        self.applied = True
        return self._execute({}, now, full=True)

    def retry_due(self, now: float) -> FibResult:
        due = [net for net, e in list(self.failed.items()) if e.next_retry <= now]
        if not due:
            return FibResult()
        self.retries += len(due)
        if any(self.failed[net].errno in _MODEL_ERRNOS for net in due):
            # the first attempt already re-read the kernel once; a VIP still refused for a
            # reason that names our objects means the model is still wrong: read it again
            self.model = None
        return self._execute({net: self.effective(net) for net in due}, now, full=False)

    def next_retry(self) -> float | None:
        with self._status_lock:
            return min((e.next_retry for e in self.failed.values()), default=None)

    def resync(self, now: float) -> FibResult:
        """Read the kernel and plan every VIP (someone else changed our objects)."""
        self.model = None
        return self._execute({}, now, full=True)

    def adopt(self) -> Adopted:
        self.model = None
        model = self.load()
        adopted: dict[d.IPNetwork, d.PathSet] = {}
        by_set: dict[d.PathSet, list[d.IPNetwork]] = {}
        gateways: set[tuple[d.IPAddress, int]] = set()
        for g, vips in model.vips_of.items():
            pset = model.key_of[g][0]
            versions = {net.version for net in vips}
            gateways.update((gw.address, v) for gw, _ in pset for v in versions)
            by_set.setdefault(pset, []).extend(vips)
            for net in vips:
                adopted[net] = pset
        self.adopted = adopted or None
        self._adopted_by_set = by_set
        self.released = set()
        return Adopted(len(adopted), len(model.vips_of), frozenset(gateways))

    def release(self, gateways: Iterable[tuple[d.IPAddress, int]], now: float) -> FibResult:
        """While deferring: the peers of these adopted gateways (address, IP version of the
        VIPs) have sent End-of-RIB; what they did not announce again goes now. Plans only the
        adopted VIPs whose adopted set has one of them."""
        new = set(gateways) - self.released
        if self.adopted is None or not new:
            return FibResult()
        self.released |= new
        changes: dict[d.IPNetwork, d.PathSet] = {}
        for pset, nets in self._adopted_by_set.items():
            hit = {v for gw, _ in pset for v in (4, 6) if (gw.address, v) in new}
            for net in nets:
                if net.version in hit:
                    changes[net] = self.effective(net)
        if not changes:
            return FibResult()
        return self._execute(changes, now, full=False)

    def finish_deferral(self, now: float) -> FibResult:
        self.adopted = None
        self._adopted_by_set = {}
        self.released = set()
        return self.resync(now)

    def reset(
        self, desired: Mapping[d.IPNetwork, d.PathSet], now: float, reread: bool = True
    ) -> FibResult:
        """reconcile()/cleanup(): forget adoption and failures, read the kernel (unless
        `reread` is False and the model is known good), install exactly `desired`. With
        nothing desired (exit) a group is deleted with its routes in one operation."""
        self.adopted = None
        self._adopted_by_set = {}
        self.released = set()
        self.gone = frozenset()
        self._gone_memo.clear()
        with self._status_lock:
            self.failed.clear()
        self.wanted = {net: pset for net, pset in desired.items() if pset}
        if reread:
            self.model = None
        return self._execute({}, now, full=True, bulk_delete=not self.wanted)

    # -- execution -----------------------------------------------------------------------------
    def _all(self, model: d.FibModel) -> dict[d.IPNetwork, d.PathSet]:
        nets = set(self.wanted) | set(model.routes) | set(self.adopted or ())
        return {net: self.effective(net) for net in nets}

    def _execute(
        self,
        changes: Mapping[d.IPNetwork, d.PathSet],
        now: float,
        full: bool,
        bulk_delete: bool = False,
    ) -> FibResult:
        model = self.load()
        if full:
            changes = self._all(model)
        done: list[d.Op] = []
        errors = self._attempt(model, changes, full, done, bulk_delete)
        stale = [
            net
            for net, (op, err) in errors.items()
            if _stale_hint(op, err) and net not in self.failed
        ]
        if stale:
            # our model may be out of date (someone changed the kernel): read it, try again once
            self.model = None
            model = self.load()
            again = self._all(model) if full else {net: self.effective(net) for net in stale}
            retried = self._attempt(model, again, full, done)
            for net in stale:
                errors.pop(net, None)
            errors.update(retried)
        self.applies += 1
        self.ops += len(done)
        self.counts = (len(model.routes), len(model.groups), len(model.nexthops))
        with self._status_lock:
            failed = self.failed
            if failed:
                recovered = (
                    [net for net in failed if net in changes and net not in errors]
                    if len(failed) < len(changes)
                    else [net for net in changes if net in failed and net not in errors]
                )
                for net in recovered:
                    del failed[net]
            for net, (op, err) in errors.items():
                previous = self.failed.get(net)
                attempts = (previous.attempts if previous else 0) + 1
                self.failed[net] = VipError(
                    err.errno, err.message, _op_text(op), attempts, now + backoff(attempts)
                )
        return FibResult(done, {net: self.failed[net] for net in errors})

    def _attempt(
        self,
        model: d.FibModel,
        changes: Mapping[d.IPNetwork, d.PathSet],
        full: bool,
        done: list[d.Op],
        bulk_delete: bool = False,
    ) -> dict[d.IPNetwork, tuple[d.Op, OpError]]:
        steps = d.plan(model, changes, self.params, bulk_delete)
        groups: set[int] = set()
        nexthops: set[int] = set()
        allocated: list[int] = []
        for step in steps:
            op = step.op
            if isinstance(op, (d.ReplaceRoute, d.DeleteRoute)):
                current = model.routes.get(op.dst)  # a group a VIP leaves may end unused
                if current is not None:
                    groups.add(current)
            elif isinstance(op, d.AddNexthop):
                nexthops.add(op.id)
                allocated.append(op.id)
            elif isinstance(op, d.AddGroup):
                groups.add(op.id)
                allocated.append(op.id)
            elif isinstance(op, d.ReplaceGroup):
                nexthops.update(m for m, _ in model.groups[op.id].members)
        errors: dict[d.IPNetwork, tuple[d.Op, OpError]] = {}
        failed_ids: dict[int, tuple[d.Op, OpError]] = {}
        try:
            for _, batch in itertools.groupby(steps, key=lambda s: s.phase):
                runnable: list[d.Step] = []
                for step in batch:
                    cause = next((failed_ids[i] for i in step.needs if i in failed_ids), None)
                    if cause is None:
                        runnable.append(step)
                        continue
                    self._failed(step, cause[0], cause[1], failed_ids, errors)
                for step, result in zip(runnable, self._run_ops(runnable), strict=True):
                    if result is None:
                        model.note(step.op)
                        done.append(step.op)
                    else:
                        self.errors += 1
                        self._failed(step, step.op, result, failed_ids, errors)
        finally:
            for nh_id in allocated:
                model.release(nh_id)
        # removals always run, and take whatever the failed steps left unused
        gc = d.garbage(model, None if full else groups, None if full else nexthops)
        for _, batch in itertools.groupby(gc, key=lambda s: s.phase):
            runnable = list(batch)
            for step, result in zip(runnable, self._run_ops(runnable), strict=True):
                if result is None:
                    model.note(step.op)
                    done.append(step.op)
                else:
                    self.errors += 1
        return errors

    def _run_ops(self, steps: Sequence[d.Step]) -> list[OpError | None]:
        if not steps:
            return []
        results = self._run([s.op for s in steps])
        out: list[OpError | None] = []
        for step, result in zip(steps, results, strict=True):
            gone = result is not None and result.errno in (_errno.ENOENT, _errno.ESRCH)
            out.append(None if gone and isinstance(step.op, _DELETES) else result)
        return out

    @staticmethod
    def _failed(
        step: d.Step,
        op: d.Op,
        cause: OpError,
        failed_ids: dict[int, tuple[d.Op, OpError]],
        errors: dict[d.IPNetwork, tuple[d.Op, OpError]],
    ) -> None:
        """`step` failed or was skipped because `op` (itself or one it needs) was refused."""
        if isinstance(step.op, _CREATES):
            failed_ids[step.op.id] = (op, cause)
        for net in step.vips:
            errors.setdefault(net, (op, cause))

    # -- visibility ----------------------------------------------------------------------------
    def status(self, now: float) -> dict[str, Any]:
        """Counters only (no walk over VIPs); at most STATUS_FAILED_LIMIT failed VIPs listed."""
        model = self.model
        counts = (
            (len(model.routes), len(model.groups), len(model.nexthops))
            if model is not None
            else self.counts
        )
        with self._status_lock:
            failed = {
                str(net): e.as_dict(now)
                for net, e in itertools.islice(self.failed.items(), STATUS_FAILED_LIMIT)
            }
            n_failed = len(self.failed)
        return {
            "vips": counts[0] if counts is not None else None,
            "wanted": len(self.wanted),
            "groups": counts[1] if counts is not None else None,
            "nexthops": counts[2] if counts is not None else None,
            "failed_count": n_failed,
            "failed": failed,
            "adopted": len(self.adopted) if self.adopted is not None else 0,
            "applies": self.applies,
            "ops": self.ops,
            "errors": self.errors,
            "retries": self.retries,
            "dumps": self.dumps,
            "fast_drops": self.fast_drops,
            "fast_moves": self.fast_moves,
        }


def _op_text(op: d.Op) -> str:
    name = type(op).__name__
    target = getattr(op, "dst", None) or getattr(op, "id", "")
    return f"{name} {target}"
