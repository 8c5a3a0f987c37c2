"""``[fib] group = "consistent"``, pure: from each VIP's group members and the pin slots to the
Maglev tables (:mod:`bgplb.router.maglev`) the kernel must hold, one per distinct path set.

A VIP's backends are its group's members — exactly what the other modes put in the nexthop
group: without pinning a draining member stays with weight 1; with pinning it leaves (its pins
keep its established connections) — keyed by next-hop address, with their RIB weights, and
only those that hold a pin slot for the VIP (the slot's mark selects the per-server table).
A member without one (an IPv4 VIP via an IPv6 next hop, no free slot) is left out of the
table; the VIP's packets still reach it through the main table's group only for what the table
does not match.

The table is a pure function of (backends, weights, size, seed): every router with the same
paths computes the same table, whatever happened before. The marks are local (each router
numbers its slots its own way); they never enter the fingerprint.

No I/O, no clock. Checked with ``mypy --strict``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from bgplb.router.maglev import Backend, Table, build_table, check_seed, check_size
from bgplb.router.pinning import GroupMember, Pin
from bgplb.router.rib import FibNexthop
from bgplb.router.status import ConsistentStatus

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class TablePlan:
    """One table for the kernel: its chain name, the pin mark of every slot, its VIPs."""

    name: str
    table: Table
    marks: tuple[int, ...]
    vips: tuple[IPNetwork, ...]

    @property
    def version(self) -> int:
        return self.table.backends[0].address.version


def _net_key(net: IPNetwork) -> tuple[int, int, int]:
    return (net.version, int(net.network_address), net.prefixlen)


@dataclass(slots=True)
class ConsistentTables:
    """Builds (and caches, by path set) the tables of every VIP."""

    size: int
    seed: int
    _cache: dict[tuple[Backend, ...], Table] = field(default_factory=dict)
    _fingerprints: dict[tuple[Backend, ...], str] = field(default_factory=dict)
    _status: dict[tuple[Backend, ...], ConsistentStatus] = field(default_factory=dict)
    by_vip: dict[IPNetwork, Table] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_size(self.size)
        check_seed(self.seed)

    def table(self, backends: tuple[Backend, ...]) -> Table:
        t = self._cache.get(backends)
        if t is None:
            t = self._cache[backends] = build_table(backends, self.size, self.seed)
        return t

    def fingerprint(self, table: Table) -> str:
        fp = self._fingerprints.get(table.backends)
        if fp is None:
            fp = self._fingerprints[table.backends] = table.fingerprint()
        return fp

    def plan(
        self, groups: Mapping[IPNetwork, Sequence[GroupMember]], pins: Iterable[Pin]
    ) -> tuple[TablePlan, ...]:
        """The tables for `groups` (VIP -> members), given the pins the kernel holds."""
        # per address: its pin's mark and the VIPs it is pinned for (first pin of an address
        # wins: one router sees a server on one interface)
        pinned: dict[IPAddress, tuple[int, frozenset[IPNetwork]]] = {}
        for p in pins:
            pinned.setdefault(p.server.address, (p.mark, frozenset(p.vips)))
        # VIPs usually share a few member tuples: the work per distinct tuple is done once
        memo: dict[tuple[GroupMember, ...], tuple[tuple[Backend, ...], tuple[int, ...]]] = {}
        by_key: dict[tuple[tuple[Backend, ...], tuple[int, ...]], list[IPNetwork]] = {}
        by_vip: dict[IPNetwork, Table] = {}
        used: dict[tuple[Backend, ...], Table] = {}
        for vip, members in groups.items():
            usable = tuple(
                m for m in members if (e := pinned.get(m.address)) is not None and vip in e[1]
            )
            if not usable:
                continue
            key = memo.get(usable)
            if key is None:
                weights: dict[IPAddress, int] = {}
                for m in usable:
                    weights[m.address] = weights.get(m.address, 0) + m.weight
                backends = tuple(
                    sorted((Backend(a, w) for a, w in weights.items()), key=Backend.sort_key)
                )
                t = used[backends] = self.table(backends)
                key = memo[usable] = (backends, tuple(pinned[b.address][0] for b in t.backends))
            by_vip[vip] = used[key[0]]
            by_key.setdefault(key, []).append(vip)
        # only the path sets in use stay cached
        self._cache = used
        self._fingerprints = {b: f for b, f in self._fingerprints.items() if b in used}
        self._status = {b: st for b, st in self._status.items() if b in used}
        self.by_vip = by_vip
        out: list[TablePlan] = []
        names: set[str] = set()
        for (backends, marks), vips in by_key.items():
            t = used[backends]
            fp = self.fingerprint(t)
            name = f"cset_{fp[:16]}"
            n = 2
            while name in names:  # same table, other marks (a server on two interfaces)
                name = f"cset_{fp[:16]}_{n}"
                n += 1
            names.add(name)
            slot_marks = tuple(marks[i] for i in t.entries)
            out.append(TablePlan(name, t, slot_marks, tuple(sorted(vips, key=_net_key))))
        return tuple(sorted(out, key=lambda p: p.name))

    def status(self, vip: IPNetwork) -> ConsistentStatus | None:
        t = self.by_vip.get(vip)
        if t is None:
            return None
        st = self._status.get(t.backends)  # computed once per path set (status runs per VIP)
        if st is None:
            st = self._status[t.backends] = ConsistentStatus(
                t.size,
                t.seed,
                self.fingerprint(t),
                {str(a): round(s, 4) for a, s in t.shares().items()},
            )
        return st


def with_held(
    entries: Mapping[IPNetwork, Sequence[FibNexthop]],
    held: Mapping[IPNetwork, Sequence[tuple[IPAddress, int, int]]],
) -> dict[IPNetwork, Sequence[FibNexthop]]:
    """`entries` (VIP -> the RIB's FIB entry) plus, per VIP, the `held` paths (address, ifindex,
    weight) of an address its entry lacks: after a restart, the paths the kernel's adopted
    groups still hold while the FIB defers (RFC 4724 §4.1), so the tables stay those of the
    previous run instead of shrinking to the servers re-learned so far."""
    out: dict[IPNetwork, Sequence[FibNexthop]] = dict(entries)
    for net, paths in held.items():
        entry = out.get(net, ())
        have = {n.address for n in entry}
        extra = tuple(
            FibNexthop(a, oif, w, False, False, ()) for a, oif, w in paths if a not in have
        )
        if extra:
            out[net] = (*entry, *extra)
    return out
