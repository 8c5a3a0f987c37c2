"""Desired versus installed kernel FIB state: pure planning into ordered nexthop/route operations.

No I/O here (no pyroute2, sockets, clock). `FibModel` is our objects as the kernel holds them,
with the indexes planning needs; `plan()` turns the changes of some VIPs into `Step`s (an
operation, the VIPs that fail with it, the objects of the same plan it needs); `garbage()` names
what no VIP uses any more; `diff()` is the whole-table version (reconcile, tests).

Model (one owner: the objects carrying bgplb's route protocol number):
- one single nexthop object per distinct (gateway, oif), shared by every group that uses it;
- one nexthop *group* per path set: VIPs whose usable paths (gateways, weights) and group
  parameters are the same share one group, counted by the routes pointing at it;
- one route per VIP: `VIP nhid <group>`.

Changing a group (see docs/kernel.md for what it means for flows):
- all VIPs of a group change the same way (a server dies, drains, returns): the group is
  replaced in place, one operation for all of them, resilient buckets of the members that stay
  do not move;
- the VIPs of a group diverge: the most common new set keeps the group (VIPs that did not
  change count for the current set, which wins ties); the others move (route replace) to a
  group that has (or gets in this very plan) their set, else to a new group;
- a group no VIP uses is deleted; so is a single nexthop no group uses.
Two groups may end with the same set (both replaced into it): they are never merged, since
moving the VIPs of one into the other would move their flows.

Kernel rules the order respects (see linux/net/ipv4/nexthop.c):
- a group's members must exist before the group, a route's group before the route;
- deleting a group deletes the routes using it; deleting a group's last member deletes the group:
  so routes are re-pointed or deleted before groups, groups replaced before members go;
- a replace that changes a group's type or a resilient group's bucket count is refused (EINVAL):
  such a change is make-before-break — a new group, the routes re-pointed, the old group deleted.
Phases: new nexthops, new groups, routes (moves off a group first), in-place group replaces,
routes to a replaced group, then (garbage) group and nexthop deletions.

Ids: an object we already have keeps its id (a group member keeps its nexthop id across a
replace: swapping it would move its buckets). A new one gets the smallest id >= `id_base` that no
nexthop object in the namespace (ours or anyone's) uses, so a foreign id is never taken, and the
same inputs always give the same ids.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

DEFAULT_ID_BASE = 0x40000000
"""First nexthop id bgplb allocates: above FRR zebra's ranges (< 250M kernel, < ~750M protocol
groups) and iproute2's habit of small hand-picked ids."""

MAX_WEIGHT = 256  # struct nexthop_grp carries weight - 1 in a u8


class GroupKind(StrEnum):
    RESILIENT = "resilient"
    MULTIPATH = "multipath"


@dataclass(frozen=True, slots=True)
class GroupParams:
    """Group type and, for resilient groups, buckets and timers (seconds, kernel unit 1/100 s)."""

    kind: GroupKind = GroupKind.RESILIENT
    buckets: int = 512
    idle_timer: float = 10.0
    unbalanced_timer: float = 60.0

    def __post_init__(self) -> None:
        if self.kind is GroupKind.RESILIENT and not 1 <= self.buckets <= 0xFFFF:
            raise ValueError(f"buckets must be within 1..65535, not {self.buckets}")
        for name in ("idle_timer", "unbalanced_timer"):
            value = getattr(self, name)
            if not 0 <= value * 100 <= 0xFFFFFFFF:
                raise ValueError(f"{name} out of range: {value}")

    def same_shape(self, other: GroupParams) -> bool:
        """True if a replace can turn `other` into `self` (same type, same bucket count)."""
        if self.kind is not other.kind:
            return False
        return self.kind is GroupKind.MULTIPATH or self.buckets == other.buckets

    def same(self, other: GroupParams) -> bool:
        """True if the kernel would show no difference (timers compared in 1/100 s)."""
        if not self.same_shape(other):
            return False
        if self.kind is GroupKind.MULTIPATH:
            return True
        return round(self.idle_timer * 100) == round(other.idle_timer * 100) and round(
            self.unbalanced_timer * 100
        ) == round(other.unbalanced_timer * 100)


@dataclass(frozen=True, slots=True)
class Gateway:
    """Identity of a single nexthop: gateway address and outgoing interface index."""

    address: IPAddress
    oif: int

    def sort_key(self) -> tuple[int, int, int]:
        return (self.address.version, int(self.address), self.oif)


Members = tuple[tuple[int, int], ...]  # (nexthop id, weight), sorted by id


@dataclass(frozen=True, slots=True)
class InstalledGroup:
    id: int
    members: Members
    params: GroupParams


@dataclass(frozen=True, slots=True)
class InstalledState:
    """What the kernel holds: our objects in detail, and the ids everyone else uses."""

    nexthops: Mapping[int, Gateway] = field(default_factory=dict)
    groups: Mapping[int, InstalledGroup] = field(default_factory=dict)
    routes: Mapping[IPNetwork, int | None] = field(default_factory=dict)
    foreign_ids: frozenset[int] = frozenset()


DesiredState = Mapping[IPNetwork, Mapping[Gateway, int]]
"""VIP -> {gateway: weight 1..256}. A VIP with no gateway means: no route."""


# --- operations -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class AddNexthop:
    id: int
    gateway: Gateway


@dataclass(frozen=True, slots=True)
class AddGroup:
    id: int
    members: Members
    params: GroupParams


@dataclass(frozen=True, slots=True)
class ReplaceGroup:
    id: int
    members: Members
    params: GroupParams


@dataclass(frozen=True, slots=True)
class AddRoute:
    dst: IPNetwork
    nh_id: int


@dataclass(frozen=True, slots=True)
class ReplaceRoute:
    dst: IPNetwork
    nh_id: int


@dataclass(frozen=True, slots=True)
class DeleteRoute:
    dst: IPNetwork


@dataclass(frozen=True, slots=True)
class DeleteGroup:
    id: int


@dataclass(frozen=True, slots=True)
class DeleteNexthop:
    id: int


Op = (
    AddNexthop
    | AddGroup
    | ReplaceGroup
    | AddRoute
    | ReplaceRoute
    | DeleteRoute
    | DeleteGroup
    | DeleteNexthop
)


# --- building the desired state -----------------------------------------------------------------
def _net_key(net: IPNetwork) -> tuple[int, int, int]:
    return (net.version, int(net.network_address), net.prefixlen)


def desired_state(
    entries: Mapping[IPNetwork | IPAddress | str, Iterable[tuple[IPAddress | str, int, int]]],
) -> dict[IPNetwork, dict[Gateway, int]]:
    """Normalise {vip: [(gateway, oif index, weight)]}: a bare address becomes a /32 or /128,
    duplicate (gateway, oif) entries are merged with their weights summed (capped at 256).
    Raises ValueError for a weight < 1, an IPv4 gateway for an IPv6 VIP, a bad address."""
    out: dict[IPNetwork, dict[Gateway, int]] = {}
    for vip, paths in entries.items():
        net = ip_network(vip)
        gws = out.setdefault(net, {})
        for gateway, oif, weight in paths:
            gw = Gateway(ip_address(gateway), int(oif))
            if weight < 1:
                raise ValueError(f"{net}: weight {weight} of {gw.address} must be >= 1")
            if net.version == 6 and gw.address.version == 4:
                raise ValueError(f"{net}: an IPv6 route cannot use IPv4 gateway {gw.address}")
            gws[gw] = min(MAX_WEIGHT, gws.get(gw, 0) + weight)
    return out


# --- the model ----------------------------------------------------------------------------------
PathSet = tuple[tuple[Gateway, int], ...]
"""A VIP's usable paths: (gateway, weight 1..256) sorted by gateway; () means no route."""

ParamsKey = tuple[object, ...]
GroupKey = tuple[PathSet, ParamsKey]
"""What makes two groups interchangeable: the same path set and the same kernel parameters."""

_ODD = Gateway(IPv4Address(0), 0)  # a member id that is not one of our single nexthops


def path_set(gateways: Mapping[Gateway, int]) -> PathSet:
    return tuple(sorted(gateways.items(), key=lambda kv: kv[0].sort_key()))


def params_key(params: GroupParams) -> ParamsKey:
    """Parameters as the kernel shows them (timers in 1/100 s)."""
    if params.kind is GroupKind.MULTIPATH:
        return (GroupKind.MULTIPATH.value,)
    return (
        GroupKind.RESILIENT.value,
        params.buckets,
        round(params.idle_timer * 100),
        round(params.unbalanced_timer * 100),
    )


def _key_order(key: GroupKey) -> tuple[object, ...]:
    return (tuple((gw.sort_key(), w) for gw, w in key[0]), key[1])


class FibModel:
    """Our objects as the kernel holds them (the mutable twin of `InstalledState`, whose dicts
    `state()` shares), kept up to date by `note()`-ing each successful operation, with indexes:
    the VIPs of each group, the groups of each nexthop, the groups of each key, one preferred
    nexthop id per gateway, and the id allocator. Every `note` costs O(members)."""

    __slots__ = (
        "_next",
        "by_key",
        "foreign_ids",
        "groups",
        "gw_count",
        "gw_id",
        "id_base",
        "key_of",
        "nexthops",
        "pool",
        "routes",
        "used_ids",
        "users",
        "vips_of",
    )

    def __init__(
        self,
        state: InstalledState | None = None,
        id_base: int = DEFAULT_ID_BASE,
        pool: dict[object, object] | None = None,
    ):
        """`pool` (optional): path sets are interned in it (the FIB's own pool, see
        `fibapi.resolve_changes`), so that the key of a group and the path set of a VIP that
        wants it are one object: comparing them costs one identity check, not a walk."""
        state = state or InstalledState()
        self.pool = pool
        self.nexthops: dict[int, Gateway] = dict(state.nexthops)
        self.groups: dict[int, InstalledGroup] = {}
        self.routes: dict[IPNetwork, int | None] = {}
        self.foreign_ids: set[int] = set(state.foreign_ids)
        self.id_base = id_base
        self._next = id_base
        self.used_ids: set[int] = {*self.nexthops, *state.groups, *self.foreign_ids}
        self.vips_of: dict[int, set[IPNetwork]] = {}
        self.users: dict[int, int] = {}
        self.key_of: dict[int, GroupKey] = {}
        self.by_key: dict[GroupKey, set[int]] = {}
        self.gw_id: dict[Gateway, int] = {}
        self.gw_count: dict[Gateway, int] = {}  # our nexthops per gateway (more than 1: debris)
        for gw in self.nexthops.values():
            self.gw_count[gw] = self.gw_count.get(gw, 0) + 1
        for group in state.groups.values():
            self._set_group(group)
        for net, nh_id in state.routes.items():
            self._set_route(net, nh_id)
        # one nexthop per gateway; with duplicates (debris of a crash) prefer one a routed group
        # uses, then one any group uses, then the lowest id: never swap a live member
        rank: dict[int, int] = {}
        for g in self.groups.values():
            for m, _ in g.members:
                rank[m] = min(rank.get(m, 2), 0 if self.vips_of.get(g.id) else 1)
        for nh_id in sorted(self.nexthops, key=lambda i: (rank.get(i, 2), i)):
            self.gw_id.setdefault(self.nexthops[nh_id], nh_id)

    def state(self) -> InstalledState:
        return InstalledState(self.nexthops, self.groups, self.routes, frozenset(self.foreign_ids))

    # -- ids ----------------------------------------------------------------------------------
    def alloc(self) -> int:
        """The smallest id >= id_base nobody uses (reserved until noted or `release`d)."""
        while self._next in self.used_ids:
            self._next += 1
        if self._next > 0xFFFFFFFF:
            raise ValueError("nexthop ids exhausted")
        self.used_ids.add(self._next)
        return self._next

    def release(self, nh_id: int) -> None:
        """An allocated id whose object was never created goes back to the pool."""
        known = nh_id in self.nexthops or nh_id in self.groups or nh_id in self.foreign_ids
        if not known:
            self.used_ids.discard(nh_id)
            self._next = max(self.id_base, min(self._next, nh_id))

    def _free(self, nh_id: int) -> None:
        self.used_ids.discard(nh_id)
        if nh_id >= self.id_base:
            self._next = min(self._next, nh_id)

    # -- keys ---------------------------------------------------------------------------------
    def group_key(self, group: InstalledGroup) -> GroupKey:
        gws: dict[Gateway, int] = {}
        for m, w in group.members:
            gw = self.nexthops.get(m, _ODD)
            gws[gw] = gws.get(gw, 0) + w
        pset = path_set(gws) if len(gws) > 1 else tuple(gws.items())
        if self.pool is not None:
            pset = self.pool.setdefault(pset, pset)  # type: ignore[assignment]
        return (pset, params_key(group.params))

    def members_for(
        self, pset: PathSet, keep: InstalledGroup | None, new: Mapping[Gateway, int]
    ) -> Members:
        """Member ids for `pset`: the ids `keep` already uses for these gateways, else the
        preferred id of each gateway, else its id in `new` (allocated by the plan)."""
        mine = {self.nexthops.get(m): m for m, _ in keep.members} if keep is not None else {}
        return tuple(sorted((mine.get(gw) or self.gw_id.get(gw) or new[gw], w) for gw, w in pset))

    # -- bookkeeping --------------------------------------------------------------------------
    def _set_group(self, group: InstalledGroup) -> None:
        old = self.groups.get(group.id)
        if old is not None:
            self._unset_group(old, keep_vips=True)
        self.groups[group.id] = group
        self.used_ids.add(group.id)
        key = self.group_key(group)
        self.key_of[group.id] = key
        self.by_key.setdefault(key, set()).add(group.id)
        for m, _ in group.members:
            self.users[m] = self.users.get(m, 0) + 1

    def _unset_group(self, group: InstalledGroup, keep_vips: bool = False) -> None:
        key = self.key_of.pop(group.id)
        ids = self.by_key[key]
        ids.discard(group.id)
        if not ids:
            del self.by_key[key]
        for m, _ in group.members:
            left = self.users[m] - 1
            if left:
                self.users[m] = left
            else:
                del self.users[m]
        if not keep_vips:
            del self.groups[group.id]
            self._free(group.id)
            for net in self.vips_of.pop(group.id, set()):
                del self.routes[net]  # the kernel deletes the routes of a deleted group

    def _set_route(self, net: IPNetwork, nh_id: int | None) -> None:
        self._unset_route(net)
        self.routes[net] = nh_id
        if nh_id is not None and nh_id in self.groups:
            self.vips_of.setdefault(nh_id, set()).add(net)

    def _unset_route(self, net: IPNetwork) -> None:
        old = self.routes.pop(net, None)
        if old is not None and old in self.vips_of:
            vips = self.vips_of[old]
            vips.discard(net)
            if not vips:
                del self.vips_of[old]

    def note(self, op: Op) -> None:
        """Record a successful operation."""
        match op:
            case AddNexthop(id=nh_id, gateway=gw):
                old = self.nexthops.get(nh_id)
                if old is not None:
                    self._uncount(old)
                self.nexthops[nh_id] = gw
                self.gw_count[gw] = self.gw_count.get(gw, 0) + 1
                self.used_ids.add(nh_id)
                self.gw_id.setdefault(gw, nh_id)
            case (
                AddGroup(id=nh_id, members=members, params=p)
                | ReplaceGroup(id=nh_id, members=members, params=p)
            ):
                self._set_group(InstalledGroup(nh_id, members, p))
            case AddRoute(dst=dst, nh_id=nh_id) | ReplaceRoute(dst=dst, nh_id=nh_id):
                self._set_route(dst, nh_id)
            case DeleteRoute(dst=dst):
                self._unset_route(dst)
            case DeleteGroup(id=nh_id):
                group = self.groups.get(nh_id)
                if group is not None:
                    self._unset_group(group)
            case DeleteNexthop(id=nh_id):
                if nh_id in self.nexthops:
                    gw = self.nexthops.pop(nh_id)
                    self._free(nh_id)
                    self._uncount(gw)
                    if self.gw_id.get(gw) == nh_id:
                        del self.gw_id[gw]
                        if gw in self.gw_count:  # debris of a crash only: a walk, rarely
                            others = [i for i, g in self.nexthops.items() if g == gw]
                            self.gw_id[gw] = min(others)

    def _uncount(self, gw: Gateway) -> None:
        left = self.gw_count.get(gw, 0) - 1
        if left > 0:
            self.gw_count[gw] = left
        else:
            self.gw_count.pop(gw, None)


# --- planning -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Step:
    """One operation of a plan: `vips` fail with it; it is skipped if an object of `needs`
    (created or replaced earlier in the same plan) failed. `phase`: steps of one phase are
    independent of each other (they may go to the kernel in one batch)."""

    op: Op
    phase: int
    vips: tuple[IPNetwork, ...] = ()
    needs: tuple[int, ...] = ()


PHASE_NEXTHOPS, PHASE_GROUPS, PHASE_ROUTES, PHASE_REPLACE, PHASE_ROUTES_AFTER = range(5)
PHASE_DELETE_GROUPS, PHASE_DELETE_NEXTHOPS = 5, 6


def plan(
    model: FibModel,
    changes: Mapping[IPNetwork, PathSet],
    params: GroupParams,
    bulk_delete: bool = False,
) -> list[Step]:
    """Steps that give each VIP of `changes` its path set (() = no route), leaving every other
    VIP's forwarding as it is, in an order the kernel accepts. Costs O(changed VIPs + members),
    plus O(VIPs of a group) only for a group whose unchanged VIPs must move off it (fewer than
    the changed ones, since the most common set keeps the group). Ids are allocated from
    `model` (call `model.release` for those whose object was never created). Deletions of
    what is left unused come from `garbage()` once the steps ran. With `bulk_delete` (exit), a
    group all of whose VIPs go is deleted with them in one operation (the kernel deletes the
    routes of a deleted group; IPv6 ones with a notification that is not ours, so the watcher
    would react: not for normal withdrawals)."""
    pk = params_key(params)
    # 1. who changes, grouped by current group and new key; who goes. Per VIP only cheap
    # dict lookups: path sets are mostly a few objects shared by many VIPs, so their key,
    # validity and equality with a group's key are computed once per object (by id; the
    # objects stay alive in `changes` meanwhile), never hashed or compared per VIP.
    moving: dict[int | None, dict[int, tuple[GroupKey, list[IPNetwork]]]] = {}
    deletes: list[IPNetwork] = []
    deleting: dict[int, list[IPNetwork]] = {}  # group -> its VIPs that go
    leaving: dict[int, int] = {}  # group -> its VIPs that leave it (deleted or changed)
    keys: dict[int, GroupKey] = {}  # id(path set) -> its canonical key
    canon: dict[GroupKey, GroupKey] = {}
    same: dict[tuple[int, int], bool] = {}  # (group, id(key)) -> the group has that key
    routes, groups, key_of = model.routes, model.groups, model.key_of
    for net, pset in changes.items():
        current = routes.get(net)
        group: int | None = current if current in groups else None
        if not pset:
            if net in routes:
                deletes.append(net)
                if group is not None:
                    leaving[group] = leaving.get(group, 0) + 1
                    deleting.setdefault(group, []).append(net)
            continue
        key = keys.get(id(pset))
        if key is None:
            for gw, weight in pset:
                if not 1 <= weight <= MAX_WEIGHT:
                    raise ValueError(f"{net}: weight {weight} of {gw.address} outside 1..256")
            made = (pset, pk)
            key = keys[id(pset)] = canon.setdefault(made, made)
        if group is not None:
            hit = same.get((group, id(key)))
            if hit is None:
                hit = same[(group, id(key))] = key_of[group] == key
            if hit:
                continue
        by_group = moving.get(group)
        if by_group is None:
            by_group = moving[group] = {}
        entry = by_group.get(id(key))
        if entry is None:
            entry = by_group[id(key)] = (key, [])
        entry[1].append(net)
        if group is not None:
            leaving[group] = leaving.get(group, 0) + 1

    # 2. per group: the most common new key keeps it (replace in place), the others move
    replace: dict[int, GroupKey] = {}
    replace_vips: dict[int, list[IPNetwork]] = {}
    movers: dict[GroupKey, list[IPNetwork]] = {}
    for g in sorted(k for k in moving if k is not None):
        by_key = dict(moving[g].values())
        installed = model.groups[g]
        current_key = model.key_of[g]
        staying = len(model.vips_of.get(g, ())) - leaving.get(g, 0)
        candidates: list[tuple[int, int, tuple[object, ...], GroupKey]] = []
        if staying > 0:
            candidates.append((staying, 1, (), current_key))
        if params.same_shape(installed.params):
            for key, changed in by_key.items():
                # ties: the current key first (nothing to do), then a fixed order of keys
                candidates.append((len(changed), 0, tuple(-x for x in _flat(key)), key))
        winner = max(candidates)[3] if candidates else None
        if winner is not None and winner != current_key:
            replace[g] = winner
            replace_vips[g] = by_key[winner]
            if staying > 0:  # the unchanged VIPs keep their set: they move off the group
                stay = model.vips_of[g].difference(changes)
                movers.setdefault(current_key, []).extend(stay)
        for key, changed in by_key.items():
            if key != winner:
                movers.setdefault(key, []).extend(changed)
    for key, changed in moving.get(None, {}).values():
        movers.setdefault(key, []).extend(changed)

    # 3. nexthops for every gateway a new or replaced group needs
    steps: list[Step] = []
    new_gw: dict[Gateway, int] = {}
    wanted_gws = {gw for key in (*replace.values(), *movers) for gw, _ in key[0]}
    for gw in sorted(wanted_gws - model.gw_id.keys(), key=Gateway.sort_key):
        new_gw[gw] = model.alloc()
        steps.append(Step(AddNexthop(new_gw[gw], gw), PHASE_NEXTHOPS))
    new_ids = set(new_gw.values())

    def needs_of(members: Members) -> tuple[int, ...]:
        return tuple(m for m, _ in members if m in new_ids)

    # 4. in-place replaces (run after the moves off these groups)
    for g, key in sorted(replace.items()):
        members = model.members_for(key[0], model.groups[g], new_gw)
        rvips = tuple(replace_vips[g])  # the VIPs that fail with it: order does not matter
        steps.append(
            Step(ReplaceGroup(g, members, params), PHASE_REPLACE, rvips, needs_of(members))
        )

    # 5. a group for each key VIPs move to: one that keeps (or gets) the key, else a new one
    for key in sorted(movers, key=_key_order):
        vips = tuple(sorted(movers[key], key=_net_key))
        static = [g for g in model.by_key.get(key, ()) if g not in replace]
        after = False
        needs: tuple[int, ...] = ()
        if static:
            target = min(static)
        else:
            replaced = [g for g, k in replace.items() if k == key]
            if replaced:
                target, after, needs = min(replaced), True, (min(replaced),)
            else:
                target = model.alloc()
                members = model.members_for(key[0], None, new_gw)
                steps.append(
                    Step(AddGroup(target, members, params), PHASE_GROUPS, vips, needs_of(members))
                )
                needs = (target,)
        phase = PHASE_ROUTES_AFTER if after else PHASE_ROUTES
        for net in vips:
            op: Op = ReplaceRoute(net, target) if net in model.routes else AddRoute(net, target)
            steps.append(Step(op, phase, (net,), needs))
    targets = {s.op.nh_id for s in steps if isinstance(s.op, (AddRoute, ReplaceRoute))}
    bulk: set[IPNetwork] = set()
    if bulk_delete:
        for g, nets in sorted(deleting.items()):
            if len(nets) == len(model.vips_of.get(g, ())) and g not in targets:
                steps.append(Step(DeleteGroup(g), PHASE_DELETE_GROUPS, tuple(nets)))
                bulk.update(nets)
    for net in sorted(deletes, key=_net_key):
        if net not in bulk:
            steps.append(Step(DeleteRoute(net), PHASE_ROUTES, (net,)))
    steps.sort(key=lambda s: s.phase)  # stable: the order within a phase stays
    return steps


def drop_gateways(model: FibModel, addresses: Collection[IPAddress]) -> list[Step]:
    """The fast path of a server's loss: one in-place replace per routed group that has a
    member whose gateway address is in `addresses` and keeps at least one other member, with
    those members removed (weights and member ids of the others unchanged, so a resilient
    group's other buckets stay where they are). Groups whose every member goes are left alone:
    their VIPs lose their route through `plan()` when the RIB says so. O(our groups and
    nexthops), never O(VIPs). `garbage(model, (), ids)` afterwards names the nexthops of these
    gateways that no group uses any more."""
    gone = {nh_id for nh_id, gw in model.nexthops.items() if gw.address in addresses}
    steps: list[Step] = []
    if not gone:
        return steps
    for g in sorted(model.vips_of):
        group = model.groups.get(g)
        if group is None:
            continue
        keep = tuple(mw for mw in group.members if mw[0] not in gone)
        if keep and len(keep) != len(group.members):
            steps.append(Step(ReplaceGroup(g, keep, group.params), PHASE_REPLACE))
    return steps


def regroup(
    model: FibModel,
    moves: Iterable[tuple[PathSet, PathSet, int]],
    params: GroupParams,
) -> list[Step]:
    """Group-level fast path of many VIPs changing the same way (a server withdrawing or
    announcing every VIP of a path set at once): for each (old set, new set, count) — `count`
    VIPs whose installed set is `old` now want `new` — if the routed groups with key `old`
    hold exactly `count` VIPs between them (so the movers are all their VIPs), each is replaced
    in place with `new` (members it keeps keep their nexthop ids: a resilient group's buckets
    of the servers that stay do not move), after the single nexthops `new` needs. Anything
    else (a group also serving VIPs that do not change, a change of group shape, an empty set)
    is left to `plan()`, which then finds these VIPs' groups as they want them. O(moves +
    members), never O(VIPs). Ids are allocated from `model` (`model.release` those whose object
    was never created)."""
    pk = params_key(params)
    replace: dict[int, PathSet] = {}
    for old, new, count in moves:
        if not old or not new or old == new:
            continue
        for gw, weight in new:
            if not 1 <= weight <= MAX_WEIGHT:
                raise ValueError(f"weight {weight} of {gw.address} outside 1..256")
        groups = model.by_key.get((old, pk), ())
        routed = [g for g in groups if g not in replace and model.vips_of.get(g)]
        if not routed or sum(len(model.vips_of[g]) for g in routed) != count:
            continue
        if all(params.same_shape(model.groups[g].params) for g in routed):
            replace.update((g, new) for g in routed)
    steps: list[Step] = []
    new_gw: dict[Gateway, int] = {}
    wanted_gws = {gw for pset in replace.values() for gw, _ in pset}
    for gw in sorted(wanted_gws - model.gw_id.keys(), key=Gateway.sort_key):
        new_gw[gw] = model.alloc()
        steps.append(Step(AddNexthop(new_gw[gw], gw), PHASE_NEXTHOPS))
    new_ids = set(new_gw.values())
    for g, pset in sorted(replace.items()):
        members = model.members_for(pset, model.groups[g], new_gw)
        needs = tuple(m for m, _ in members if m in new_ids)
        steps.append(Step(ReplaceGroup(g, members, params), PHASE_REPLACE, (), needs))
    return steps


def _flat(key: GroupKey) -> tuple[int, ...]:
    out: list[int] = []
    for gw, w in key[0]:
        out.extend((*gw.sort_key(), w))
    return tuple(out)


def garbage(
    model: FibModel, groups: Iterable[int] | None = None, nexthops: Iterable[int] | None = None
) -> list[Step]:
    """Deletions of our groups no route uses and of our single nexthops no group uses, among
    the candidates given (None: all of ours). Groups first: their members may go after."""
    steps: list[Step] = []
    gone: list[InstalledGroup] = []
    for g in sorted(model.groups if groups is None else set(groups)):
        group = model.groups.get(g)
        if group is not None and not model.vips_of.get(g):
            gone.append(group)
            steps.append(Step(DeleteGroup(g), PHASE_DELETE_GROUPS))
    users = dict(model.users)
    candidates = set(model.nexthops) if nexthops is None else set(nexthops)
    for group in gone:
        for m, _ in group.members:
            users[m] -= 1
            candidates.add(m)
    for nh_id in sorted(candidates):
        if nh_id in model.nexthops and users.get(nh_id, 0) <= 0:
            steps.append(Step(DeleteNexthop(nh_id), PHASE_DELETE_NEXTHOPS))
    return steps


# --- the whole-table diff -----------------------------------------------------------------------
def diff(
    desired: DesiredState,
    installed: InstalledState,
    params: GroupParams,
    id_base: int = DEFAULT_ID_BASE,
) -> list[Op]:
    """Operations that turn `installed` into `desired`, in an order the kernel accepts.

    Applying them and diffing again gives []. Objects not in `installed` (foreign) are never
    named by an operation; ids in `foreign_ids` are never allocated. Everything of ours that
    `desired` does not use is deleted."""
    model = FibModel(installed, id_base)
    changes = {net: path_set(gws) for net, gws in desired.items()}
    for net in installed.routes:
        changes.setdefault(net, ())
    ops = [s.op for s in plan(model, changes, params)]
    for op in ops:
        model.note(op)
    rest = [s.op for s in garbage(model)]
    return [*ops, *rest]
