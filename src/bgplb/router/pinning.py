"""Connection pinning, pure: from the RIB's FIB entries to the pins the kernel must hold.

Why. A resilient nexthop group keeps *active* flows in place, but a flow idle for longer than
``idle_timer`` moves when its bucket migrates, and plain multipath rehashes flows whenever the
set changes. Pinning makes every connection stick to the server ECMP chose for its first packet,
through conntrack (mechanism in ``docs/pinning.md``):

* forward hook: a connection whose conntrack mark (within ``mask``) is still 0, going to a VIP,
  gets the *slot mark* of the server its route chose (``rt ip nexthop``);
* prerouting: a packet whose conntrack mark is set gets it as packet mark (before routing);
* one ``ip rule fwmark MARK/MASK lookup TABLE`` per server, and in that table one route per
  pinned VIP: ``VIP via SERVER``. A mark whose table has no route for the destination falls
  through to the main ECMP route (the kernel continues with the next rule).

This module decides *what* to hold; :mod:`bgplb.linux.nftables` and :mod:`bgplb.linux.pinroutes`
install it. No I/O, no clock: ``now`` (seconds, monotonic) is a parameter.

Rules (per server = (gateway address, ifindex), per VIP):

* **Active** (in the FIB entry, not draining): pinned, and a member of the VIP's group.
* **Draining** (GRACEFUL_SHUTDOWN): pinned, and *removed from the group*, so no new connection
  goes there while every pinned one keeps flowing. If every member of a VIP is draining, they all
  stay in the group (weight 1, as the RIB says): traffic must go somewhere.
* **Withdrawn after draining** (gone from the FIB entry, its peer session still Established):
  the pin *lingers* for ``drain_linger`` seconds (the server is alive, finishing its
  connections), then goes; its connections then fall back to the ECMP set.
* **Withdrawn otherwise** (it was active; or its session is down: health failure, BFD Down,
  hold timer expiry, session closed): the pin goes at once.
* A server keeps its **slot** (mark + table) while it holds at least one pin. A freed slot is
  reused last (least recently freed first), so stale conntrack marks of a dead server's
  connections are unlikely to point at a new server.
* **Adoption** (:meth:`Planner.adopt`): after a restart, the slots read back from the kernel
  are reserved for their servers until a deadline, so a server that announces again gets its
  old mark back and old conntrack marks keep naming it.
* **Refusals**: a server whose next hop is of the other address family than the VIP (an IPv4
  VIP via an IPv6 next hop, RFC 8950) cannot be matched by ``rt ip nexthop``; it is not pinned
  (it stays in the group with its RIB weight) and :attr:`PinPlan.refused` says why. Same when
  every slot is taken.

Ordering (the owner applies): hold :meth:`PinPlan.before` (old and new pins united) before
changing the groups, then :attr:`PinPlan.pins`; so a server's table and rule exist before it
enters a group and go only after it left.

Checked with ``mypy --strict``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from bgplb.router.rib import FibNexthop

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_MASK = 0x00FF0000
DEFAULT_TABLES = (20000, 20254)


@dataclass(frozen=True, slots=True)
class Server:
    """A pinnable server: next hop and outgoing interface."""

    address: IPAddress
    ifindex: int

    def sort_key(self) -> tuple[int, int, int]:
        return (self.address.version, int(self.address), self.ifindex)

    def __str__(self) -> str:
        return f"{self.address}%{self.ifindex}"


@dataclass(frozen=True, slots=True)
class Pin:
    """What the kernel holds for one server: its mark, its table, the VIPs routed there."""

    server: Server
    slot: int
    mark: int
    table: int
    vips: tuple[IPNetwork, ...]


class PinState(StrEnum):
    ACTIVE = "active"
    DRAINING = "draining"
    LINGER = "linger"


@dataclass(frozen=True, slots=True)
class GroupMember:
    address: IPAddress
    ifindex: int
    weight: int


@dataclass(frozen=True, slots=True)
class PinPlan:
    """The outcome of :meth:`Planner.plan`."""

    pins: tuple[Pin, ...]
    groups: Mapping[IPNetwork, tuple[GroupMember, ...]]
    states: Mapping[tuple[Server, IPNetwork], PinState]
    refused: tuple[str, ...] = ()
    next_deadline: float | None = None

    def before(self, installed: Iterable[Pin]) -> tuple[Pin, ...]:
        """What to hold while the groups change: `installed` united with :attr:`pins`."""
        return merge_pins(installed, self.pins)


def merge_pins(old: Iterable[Pin], new: Iterable[Pin]) -> tuple[Pin, ...]:
    """Union per server (the new slot wins for a server in both; VIPs united)."""
    out: dict[Server, Pin] = {p.server: p for p in old}
    for p in new:
        prev = out.get(p.server)
        if prev is not None and prev.slot == p.slot:
            vips = tuple(sorted(set(prev.vips) | set(p.vips), key=_net_key))
            out[p.server] = Pin(p.server, p.slot, p.mark, p.table, vips)
        else:
            out[p.server] = p
    # a slot held by two servers (one leaving, one arriving) cannot be: the planner never
    # reuses a slot that is still installed
    return tuple(sorted(out.values(), key=lambda p: p.slot))


def _net_key(net: IPNetwork) -> tuple[int, int, int]:
    return (net.version, int(net.network_address), net.prefixlen)


def mask_values(mask: int) -> int:
    """How many non-zero values fit in `mask` (2 ** popcount - 1)."""
    return (1 << bin(mask).count("1")) - 1


def deposit(value: int, mask: int) -> int:
    """Spread the low bits of `value` over the set bits of `mask` (like x86 PDEP)."""
    out, bit = 0, 0
    for pos in range(32):
        if mask >> pos & 1:
            if value >> bit & 1:
                out |= 1 << pos
            bit += 1
    return out


def extract(mark: int, mask: int) -> int:
    """Inverse of :func:`deposit`."""
    out, bit = 0, 0
    for pos in range(32):
        if mask >> pos & 1:
            if mark >> pos & 1:
                out |= 1 << bit
            bit += 1
    return out


@dataclass(slots=True)
class _Entry:
    state: PinState
    peers: tuple[str, ...]
    until: float | None = None


@dataclass(slots=True)
class Planner:
    """Keeps slots and pin states across calls. See the module docstring."""

    mask: int = DEFAULT_MASK
    tables: tuple[int, int] = DEFAULT_TABLES
    drain_linger: float = 60.0
    _entries: dict[tuple[Server, IPNetwork], _Entry] = field(default_factory=dict)
    _slots: dict[Server, int] = field(default_factory=dict)
    _freed: dict[int, float] = field(default_factory=dict)
    _reserved: dict[Server, float] = field(default_factory=dict)  # adopted, until

    def __post_init__(self) -> None:
        if not 0 < self.mask <= 0xFFFFFFFF:
            raise ValueError(f"mark mask {self.mask:#x} must be a non-zero 32-bit value")
        lo, hi = self.tables
        if not 0 < lo <= hi <= 0xFFFFFFFF:
            raise ValueError(f"table range {lo}..{hi}: need 1 <= first <= last < 2**32")
        if lo <= 255 and hi >= 253:
            raise ValueError(f"table range {lo}..{hi} contains a reserved table (253..255)")
        if self.drain_linger < 0:
            raise ValueError("drain_linger must be >= 0")

    @property
    def capacity(self) -> int:
        return min(mask_values(self.mask), self.tables[1] - self.tables[0] + 1)

    def slot_mark(self, slot: int) -> int:
        return deposit(slot, self.mask)

    def slot_table(self, slot: int) -> int:
        return self.tables[0] + slot - 1

    def slot_of_mark(self, mark: int) -> int:
        return extract(mark & self.mask, self.mask)

    def slots(self) -> Mapping[Server, int]:
        return dict(self._slots)

    def adopt(self, assignments: Mapping[Server, int], until: float) -> None:
        """At start: keep the slots the kernel already holds (a restart after kill -9 or with
        ``keep_on_exit``), so conntrack marks keep pointing at the same servers. A server that
        has not come back by `until` loses its slot; before, nobody else gets it."""
        for server, slot in assignments.items():
            if 1 <= slot <= self.capacity and slot not in self._slots.values():
                self._slots.setdefault(server, slot)
                self._reserved[server] = until

    def plan(
        self,
        entries: Mapping[IPNetwork, Sequence[FibNexthop]],
        established: Collection[str],
        now: float,
    ) -> PinPlan:
        """The pins and groups for `entries` (VIP -> the RIB's FIB entry); `established`: the
        peers whose session is Established now."""
        current: dict[tuple[Server, IPNetwork], FibNexthop] = {}
        refused: list[str] = []
        for vip, nexthops in entries.items():
            for nh in nexthops:
                server = Server(nh.address, nh.ifindex)
                if nh.address.version != vip.version:
                    refused.append(
                        f"{vip} via {nh.address}: next hop of another address family; "
                        "rt nexthop cannot match it, so this path is not pinned"
                    )
                    continue
                current[(server, vip)] = nh
        # 1. states
        for key, entry in list(self._entries.items()):
            if key in current:
                continue
            if entry.state is PinState.LINGER:
                if entry.until is not None and entry.until <= now:
                    del self._entries[key]
            elif (
                entry.state is PinState.DRAINING
                and self.drain_linger > 0
                and any(p in established for p in entry.peers)
            ):
                entry.state = PinState.LINGER
                entry.until = now + self.drain_linger
            else:
                del self._entries[key]
        for key, nh in current.items():
            state = PinState.DRAINING if nh.draining else PinState.ACTIVE
            self._entries[key] = _Entry(state, nh.peers)
        # 2. slots: free those of servers without pins, then give slots to new servers
        wanted = {server for server, _ in self._entries}
        for server in list(self._slots):
            if server in wanted:
                self._reserved.pop(server, None)
            elif self._reserved.get(server, now) <= now:
                self._reserved.pop(server, None)
                self._freed[self._slots.pop(server)] = now
        for server in sorted(wanted, key=Server.sort_key):
            if server in self._slots:
                continue
            slot = self._free_slot(now)
            if slot is None:
                refused.append(f"{server.address}: no free pinning slot (capacity {self.capacity})")
                for key in [k for k in self._entries if k[0] == server]:
                    del self._entries[key]
                continue
            self._slots[server] = slot
            self._freed.pop(slot, None)
        # 3. pins
        by_server: dict[Server, list[IPNetwork]] = {}
        for server, vip in self._entries:
            by_server.setdefault(server, []).append(vip)
        pins = tuple(
            sorted(
                (
                    Pin(
                        server,
                        self._slots[server],
                        self.slot_mark(self._slots[server]),
                        self.slot_table(self._slots[server]),
                        tuple(sorted(vips, key=_net_key)),
                    )
                    for server, vips in by_server.items()
                ),
                key=lambda p: p.slot,
            )
        )
        # 4. groups: pinned draining members leave (unless all are draining)
        groups: dict[IPNetwork, tuple[GroupMember, ...]] = {}
        for vip, nexthops in entries.items():
            members = [GroupMember(n.address, n.ifindex, n.weight) for n in nexthops]
            keep = [
                GroupMember(n.address, n.ifindex, n.weight)
                for n in nexthops
                if not (n.draining and (Server(n.address, n.ifindex), vip) in self._entries)
            ]
            if not keep:
                keep = members
            if keep:
                groups[vip] = tuple(keep)
        deadlines = [e.until for e in self._entries.values() if e.until is not None]
        return PinPlan(
            pins=pins,
            groups=groups,
            states={k: e.state for k, e in self._entries.items()},
            refused=tuple(refused),
            next_deadline=min(deadlines) if deadlines else None,
        )

    def next_deadline(self) -> float | None:
        deadlines = [e.until for e in self._entries.values() if e.until is not None]
        return min(deadlines) if deadlines else None

    def _free_slot(self, now: float) -> int | None:
        used = set(self._slots.values())
        never = (s for s in range(1, self.capacity + 1) if s not in used and s not in self._freed)
        first = next(never, None)
        if first is not None:
            return first
        # a slot freed in this very plan may still be installed: never hand it out at once
        freed = [(t, s) for s, t in self._freed.items() if s not in used and t < now]
        return min(freed)[1] if freed else None
