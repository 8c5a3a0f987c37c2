"""Desired versus installed kernel FIB state: a pure diff into ordered nexthop/route operations.

No I/O here (no pyroute2, sockets, clock): `bgplb.linux.fib` dumps the kernel into an
`InstalledState`, calls `diff()`, and executes the returned operations in order.

Model (one owner: the objects carrying bgplb's route protocol number):
- one single nexthop object per distinct (gateway, oif), shared by every VIP that uses it;
- one nexthop *group* per VIP (even with one member), so a server joining or leaving is an
  in-place replace of the group's membership and the VIP's route never changes;
- one route per VIP: `VIP nhid <group>`.

Kernel rules the order respects (see linux/net/ipv4/nexthop.c):
- a group's members must exist before the group, a route's group before the route;
- deleting a group deletes the routes using it; deleting a group's last member deletes the group:
  so routes are re-pointed or deleted before groups, groups replaced before members go;
- a replace that changes a group's type or a resilient group's bucket count is refused (EINVAL):
  such a change is make-before-break — a new group, the route re-pointed, the old group deleted.

Ids: an object we already have keeps its id. A new one gets the smallest id >= `id_base` that
no nexthop object in the namespace (ours or anyone's) uses, so an id is never reused while in
use, and the same inputs always give the same ids.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
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


# --- the diff -----------------------------------------------------------------------------------
class _Ids:
    def __init__(self, used: Iterable[int], base: int) -> None:
        self.used = set(used)
        self.next = base

    def alloc(self) -> int:
        while self.next in self.used:
            self.next += 1
        if self.next > 0xFFFFFFFF:
            raise ValueError("nexthop ids exhausted")
        self.used.add(self.next)
        return self.next


def diff(
    desired: DesiredState,
    installed: InstalledState,
    params: GroupParams,
    id_base: int = DEFAULT_ID_BASE,
) -> list[Op]:
    """Operations that turn `installed` into `desired`, in an order the kernel accepts.

    Applying them and diffing again gives []. Objects not in `installed` (foreign) are never
    named by an operation; ids in `foreign_ids` are never allocated.
    """
    wanted = {net: dict(gws) for net, gws in desired.items() if gws}
    for net, gws in wanted.items():
        for gw, weight in gws.items():
            if not 1 <= weight <= MAX_WEIGHT:
                raise ValueError(f"{net}: weight {weight} of {gw.address} outside 1..256")
    ids = _Ids(
        [*installed.nexthops, *installed.groups, *installed.foreign_ids],
        id_base,
    )
    adds: list[Op] = []
    groups: list[Op] = []
    routes: list[Op] = []
    removals: list[Op] = []

    # 1. single nexthops: reuse ours, create the missing ones. With duplicates for a gateway
    # (debris of a crash) keep the one a VIP's live group uses, else one any group uses:
    # swapping a member id in a resilient group would move its buckets, i.e. its flows.
    # Ties: lowest id.
    live = {installed.routes.get(net) for net in wanted}
    rank: dict[int, int] = {}
    for g in installed.groups.values():
        for m, _ in g.members:
            rank[m] = min(rank.get(m, 2), 0 if g.id in live else 1)
    by_gateway: dict[Gateway, int] = {}
    for nh_id in sorted(installed.nexthops, key=lambda i: (rank.get(i, 2), i)):
        by_gateway.setdefault(installed.nexthops[nh_id], nh_id)
    needed = {gw for gws in wanted.values() for gw in gws}
    for gw in sorted(needed, key=Gateway.sort_key):
        if gw not in by_gateway:
            by_gateway[gw] = ids.alloc()
            adds.append(AddNexthop(by_gateway[gw], gw))

    # 2. one group per VIP: keep the route's group if the kernel can replace it into shape
    claimed: set[int] = set()
    target: dict[IPNetwork, int] = {}
    for net in sorted(wanted, key=_net_key):
        members: Members = tuple(sorted((by_gateway[gw], w) for gw, w in wanted[net].items()))
        current = installed.routes.get(net)
        group = installed.groups.get(current) if current is not None else None
        if group is None or group.id in claimed or not params.same_shape(group.params):
            target[net] = ids.alloc()
            groups.append(AddGroup(target[net], members, params))
        else:
            target[net] = group.id
            if tuple(sorted(group.members)) != members or not params.same(group.params):
                groups.append(ReplaceGroup(group.id, members, params))
        claimed.add(target[net])

    # 3. routes point at their group
    for net in sorted(wanted, key=_net_key):
        if net not in installed.routes:
            routes.append(AddRoute(net, target[net]))
        elif installed.routes[net] != target[net]:
            routes.append(ReplaceRoute(net, target[net]))

    # 4. removals, reverse order: routes, then groups, then single nexthops
    for net in sorted(installed.routes, key=_net_key):
        if net not in wanted:
            removals.append(DeleteRoute(net))
    for group_id in sorted(installed.groups):
        if group_id not in claimed:
            removals.append(DeleteGroup(group_id))
    keep = {by_gateway[gw] for gw in needed}
    for nh_id in sorted(installed.nexthops):
        if nh_id not in keep:
            removals.append(DeleteNexthop(nh_id))
    return [*adds, *groups, *routes, *removals]
