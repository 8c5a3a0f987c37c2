"""The router's RIB, pure: per VIP the usable paths from every peer, and the FIB it implies.

Theory of operation. One task owns a :class:`Rib` and feeds it what sessions report:
:meth:`Rib.peer_up`, :meth:`Rib.update` (announced prefixes with their attributes, withdrawn
prefixes), :meth:`Rib.end_of_rib`, :meth:`Rib.peer_down`, and time through :meth:`Rib.expire`
(call it at :meth:`Rib.next_deadline`). Every input takes ``now`` (seconds, monotonic); nothing
here reads a clock or does I/O. The output is the desired FIB: :meth:`Rib.fib_entry` per VIP,
:meth:`Rib.desired` for all of them, and :meth:`Rib.take_dirty` for the VIPs whose entry may have
changed since the last call.

Rules:

* **Multipath across ASes.** Every usable path of a VIP is in its ECMP set, whatever the peer's
  AS, AS_PATH length, MED or LOCAL_PREF: the router load-balances over servers, it does not pick
  a best path among them.
* **Next hop.** A path's next hop is the NEXT_HOP attribute (IPv4 NLRI) or the first next hop of
  MP_REACH_NLRI of the prefix's AFI (RFC 4760 §3; for IPv6 the global address — a link-local-only
  next hop is not usable, as the RIB does not know the session's interface). **A path is usable
  only if its next hop lies inside a directly connected subnet of the router** (the daemon passes
  the subnets of its interface addresses in, :class:`Connected`) **and is not one of the router's
  own addresses.** The path's outgoing interface is that subnet's interface (the most specific
  subnet when several match). Unusable paths are kept (Adj-RIB-In) and become usable when the
  subnet appears (:meth:`Rib.set_connected`).
* **Weight.** When every non-draining path of a VIP carries a link-bandwidth extended community
  (draft-ietf-idr-link-bandwidth) with a positive value, weights are proportional to it, scaled
  to 2..255; otherwise all non-draining paths get :data:`EQUAL_WEIGHT`. (Mixing is ignored, as
  FRR does, because a path without bandwidth has no meaningful share.)
* **Draining.** A path carrying GRACEFUL_SHUTDOWN (65535:0, RFC 8326) is *draining*: it keeps its
  nexthop with weight :data:`DRAIN_WEIGHT` (1), the smallest, so a resilient group moves its
  buckets only as they go idle and established flows keep going; when every path is draining
  they all get weight 1 (traffic must go somewhere).
* **Same next hop from two peers** (e.g. a route server): one nexthop, weights summed (capped at
  256), draining only if all its paths are.
* **Graceful Restart helper (RFC 4724 §4.2).** When a peer that advertised the capability loses
  its session *by a closed transport* (FIN/RST: its host is alive) — ``graceful=True`` in
  :meth:`Rib.peer_down` — its paths of the families listed in its capability are kept, marked
  stale, until ``now + restart_time``. Any other loss (hold timer expiry, BFD Down, a
  NOTIFICATION, our own reset) purges at once, and so does a peer without the capability or with
  restart time 0. When the session comes back: a family no longer in its capability (or no
  capability at all) is purged at once (§4.2); what it re-announces replaces the stale path;
  End-of-RIB for a family purges that family's remaining stale paths; the deadline still purges
  whatever is stale when it passes (re-armed to ``now + restart_time`` at re-establishment).
  The Forwarding State bit is not required: a server restarting its BGP speaker keeps serving.
* **max_prefixes.** A peer's count is the number of prefixes it has in the RIB (stale ones
  included). An update that would exceed the limit adds nothing beyond it and reports
  ``exceeded``; the owner then resets the session (RFC 4486 Cease/1), which purges the peer.

Checked with ``mypy --strict``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from bgplb.bgp.attributes import GRACEFUL_SHUTDOWN, PathAttributes
from bgplb.bgp.families import AFI, SAFI, Family
from bgplb.bgp.prefix import Prefix

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
PeerId = str

DRAIN_WEIGHT = 1
"""Weight of a draining nexthop: the smallest the kernel has."""
EQUAL_WEIGHT = 64
"""Weight of each nexthop when weights are equal (far above DRAIN_WEIGHT)."""
MAX_SCALED_WEIGHT = 255
MAX_WEIGHT = 256  # struct nexthop_grp carries weight - 1 in a u8


@dataclass(frozen=True, slots=True)
class Connected:
    """A directly connected subnet: the network of an interface address, its ifindex, and the
    router's own address on it (never a usable next hop)."""

    network: IPNetwork
    ifindex: int
    local: IPAddress | None = None


@dataclass(frozen=True, slots=True)
class Path:
    """One peer's path to one VIP."""

    peer: PeerId
    next_hop: IPAddress | None
    bandwidth: float | None = None  # link bandwidth, bytes per second
    draining: bool = False
    stale: bool = False

    def as_stale(self) -> Path:
        return Path(self.peer, self.next_hop, self.bandwidth, self.draining, True)


@dataclass(frozen=True, slots=True)
class FibNexthop:
    """One member of a VIP's nexthop group."""

    address: IPAddress
    ifindex: int
    weight: int
    draining: bool
    stale: bool
    peers: tuple[PeerId, ...]


@dataclass(frozen=True, slots=True)
class UpdateResult:
    """What an update did: counts, prefixes filtered by policy, and the max_prefixes verdict."""

    added: int = 0
    withdrawn: int = 0
    exceeded: bool = False
    dropped: int = 0  # announced prefixes not stored because the limit was reached


@dataclass(slots=True)
class PeerState:
    """What the RIB knows of one peer."""

    peer: PeerId
    asn: int | None = None
    established: bool = False
    max_prefixes: int | None = None
    restart_time: int | None = None  # from its Graceful Restart capability, None without
    gr_families: frozenset[Family] = frozenset()
    stale_deadline: float | None = None
    paths: dict[Prefix, Path] = field(default_factory=dict)

    @property
    def prefix_count(self) -> int:
        return len(self.paths)

    @property
    def stale_count(self) -> int:
        return sum(1 for p in self.paths.values() if p.stale)


def _family(prefix: Prefix) -> Family:
    return (prefix.afi, SAFI.UNICAST)


def next_hop_for(afi: AFI, attributes: PathAttributes) -> IPAddress | None:
    """The next hop of an `afi` route in `attributes` (see the module's next-hop rule)."""
    mp = attributes.mp_reach
    if mp is not None and mp.afi == afi and mp.next_hop:
        hop = mp.next_hop[0]
        if isinstance(hop, ipaddress.IPv6Address) and hop.is_link_local:
            return None
        return hop
    if afi == AFI.IPV4:
        return attributes.next_hop
    return None


def link_bandwidth(attributes: PathAttributes) -> float | None:
    """The first link bandwidth extended community's value, if any."""
    for ec in attributes.extended_communities:
        value = ec.link_bandwidth_value
        if value is not None:
            return value
    return None


def path_from(peer: PeerId, afi: AFI, attributes: PathAttributes) -> Path:
    return Path(
        peer,
        next_hop_for(afi, attributes),
        link_bandwidth(attributes),
        GRACEFUL_SHUTDOWN in attributes.communities,
    )


class Rib:
    """Paths per VIP from all peers, and the desired FIB. See the module docstring."""

    def __init__(self, connected: Iterable[Connected] = ()) -> None:
        self.peers: dict[PeerId, PeerState] = {}
        self.vips: dict[Prefix, dict[PeerId, Path]] = {}
        self._connected: tuple[Connected, ...] = ()
        self._dirty: set[Prefix] = set()
        self.set_connected(connected)

    # -- inputs ---------------------------------------------------------------------------------

    def set_connected(self, connected: Iterable[Connected]) -> None:
        """Replace the directly connected subnets; every VIP is re-evaluated."""
        # most specific first, so the first match is the longest
        self._connected = tuple(sorted(connected, key=lambda c: -c.network.prefixlen))
        self._dirty.update(self.vips)

    def peer_up(
        self,
        peer: PeerId,
        now: float,
        *,
        asn: int | None = None,
        max_prefixes: int | None = None,
        restart_time: int | None = None,
        gr_families: Iterable[Family] = (),
    ) -> None:
        """The session with `peer` is Established; `restart_time`/`gr_families` from its Graceful
        Restart capability (None: it did not advertise it)."""
        state = self.peers.get(peer)
        if state is None:
            state = self.peers[peer] = PeerState(peer)
        state.asn = asn
        state.established = True
        state.max_prefixes = max_prefixes
        state.restart_time = restart_time
        state.gr_families = frozenset(gr_families) if restart_time is not None else frozenset()
        if state.stale_count:
            # RFC 4724 §4.2: families it no longer preserves lose their stale routes now.
            for prefix, path in list(state.paths.items()):
                if path.stale and (not restart_time or _family(prefix) not in state.gr_families):
                    self._remove(state, prefix)
        state.stale_deadline = now + restart_time if restart_time and state.stale_count else None

    def update(
        self,
        peer: PeerId,
        announced: Iterable[Prefix],
        attributes: PathAttributes | None,
        withdrawn: Iterable[Prefix],
        now: float,
    ) -> UpdateResult:
        """Apply one UPDATE's (already policy-filtered) announcements and withdrawals."""
        state = self.peers.get(peer)
        if state is None:
            state = self.peers[peer] = PeerState(peer, established=True)
        removed = 0
        for prefix in withdrawn:
            if prefix in state.paths:
                self._remove(state, prefix)
                removed += 1
        added = dropped = 0
        exceeded = False
        if attributes is not None:
            cache: dict[AFI, Path] = {}
            limit = state.max_prefixes
            for prefix in announced:
                afi = prefix.afi
                path = cache.get(afi)
                if path is None:
                    path = cache[afi] = path_from(peer, afi, attributes)
                if limit is not None and prefix not in state.paths and len(state.paths) >= limit:
                    exceeded = True
                    dropped += 1
                    continue
                self._set(state, prefix, path)
                added += 1
        return UpdateResult(added, removed, exceeded, dropped)

    def end_of_rib(self, peer: PeerId, family: Family, now: float) -> int:
        """End-of-RIB (RFC 4724 §2) for `family`: purge that family's stale paths. Returns how
        many were purged."""
        state = self.peers.get(peer)
        if state is None:
            return 0
        stale = [p for p, path in state.paths.items() if path.stale and _family(p) == family]
        for prefix in stale:
            self._remove(state, prefix)
        if not state.stale_count:
            state.stale_deadline = None
        return len(stale)

    def peer_down(self, peer: PeerId, now: float, *, graceful: bool) -> int:
        """The session with `peer` went down. `graceful`: the transport was closed by FIN/RST
        (not hold expiry, not BFD, not a NOTIFICATION). Returns how many paths were kept stale.
        """
        state = self.peers.get(peer)
        if state is None:
            return 0
        state.established = False
        keep = graceful and bool(state.restart_time) and bool(state.gr_families)
        kept = 0
        for prefix, path in list(state.paths.items()):
            if keep and _family(prefix) in state.gr_families:
                if not path.stale:
                    self._set(state, prefix, path.as_stale())
                kept += 1
            else:
                self._remove(state, prefix)
        if kept and state.restart_time:
            state.stale_deadline = now + state.restart_time
        else:
            state.stale_deadline = None
            del self.peers[peer]
        return kept

    def forget_peer(self, peer: PeerId) -> None:
        """Purge every path of `peer` at once (deconfigured, or stopped by us)."""
        state = self.peers.pop(peer, None)
        if state is not None:
            for prefix in list(state.paths):
                self._remove(state, prefix)

    def expire(self, now: float) -> list[PeerId]:
        """Purge the stale paths of every peer whose restart time ran out. Returns those peers."""
        expired = [
            s.peer
            for s in self.peers.values()
            if s.stale_deadline is not None and s.stale_deadline <= now
        ]
        for peer in expired:
            state = self.peers[peer]
            for prefix, path in list(state.paths.items()):
                if path.stale:
                    self._remove(state, prefix)
            state.stale_deadline = None
            if not state.established:
                del self.peers[peer]
        return expired

    def next_deadline(self) -> float | None:
        """When :meth:`expire` must next be called, or None."""
        deadlines = [s.stale_deadline for s in self.peers.values() if s.stale_deadline is not None]
        return min(deadlines) if deadlines else None

    # -- outputs --------------------------------------------------------------------------------

    def resolve(self, next_hop: IPAddress | None) -> int | None:
        """The ifindex through which `next_hop` is directly reachable, or None (not usable)."""
        if next_hop is None:
            return None
        for c in self._connected:
            if c.network.version == next_hop.version and next_hop in c.network:
                if next_hop == c.local:
                    return None
                return c.ifindex
        return None

    def fib_entry(self, vip: Prefix) -> tuple[FibNexthop, ...]:
        """The nexthop group `vip` should have: one member per usable next hop, sorted."""
        paths = self.vips.get(vip)
        if not paths:
            return ()
        merged: dict[tuple[IPAddress, int], list[Path]] = {}
        for path in paths.values():
            ifindex = self.resolve(path.next_hop)
            if ifindex is None or path.next_hop is None:
                continue
            merged.setdefault((path.next_hop, ifindex), []).append(path)
        if not merged:
            return ()
        draining = {key: all(p.draining for p in group) for key, group in merged.items()}
        all_draining = all(draining.values())
        active = [p for key, group in merged.items() for p in group if not draining[key]]
        bandwidths = [p.bandwidth for p in active]
        proportional = bool(active) and all(b is not None and b > 0 for b in bandwidths)
        top = max((b for b in bandwidths if b is not None), default=0.0)
        out: list[FibNexthop] = []
        for key, group in merged.items():
            address, ifindex = key
            if draining[key] or all_draining:
                weight = DRAIN_WEIGHT
            elif proportional:
                weight = sum(
                    max(2, round(MAX_SCALED_WEIGHT * (p.bandwidth or 0.0) / top))
                    for p in group
                    if not p.draining
                )
            else:
                weight = EQUAL_WEIGHT * sum(1 for p in group if not p.draining)
            out.append(
                FibNexthop(
                    address,
                    ifindex,
                    min(weight, MAX_WEIGHT),
                    draining[key],
                    all(p.stale for p in group),
                    tuple(sorted(p.peer for p in group)),
                )
            )
        out.sort(key=lambda n: (n.address.version, int(n.address), n.ifindex))
        return tuple(out)

    def desired(self) -> dict[Prefix, tuple[FibNexthop, ...]]:
        """Every VIP with at least one usable nexthop."""
        out = {}
        for vip in self.vips:
            entry = self.fib_entry(vip)
            if entry:
                out[vip] = entry
        return out

    def take_dirty(self) -> set[Prefix]:
        """VIPs touched since the last call (their FIB entry may have changed, or gone)."""
        dirty, self._dirty = self._dirty, set()
        return dirty

    def paths(self, vip: Prefix) -> Mapping[PeerId, Path]:
        return self.vips.get(vip, {})

    # -- internals ------------------------------------------------------------------------------

    def _set(self, state: PeerState, prefix: Prefix, path: Path) -> None:
        state.paths[prefix] = path
        self.vips.setdefault(prefix, {})[state.peer] = path
        self._dirty.add(prefix)

    def _remove(self, state: PeerState, prefix: Prefix) -> None:
        state.paths.pop(prefix, None)
        paths = self.vips.get(prefix)
        if paths is not None:
            paths.pop(state.peer, None)
            if not paths:
                del self.vips[prefix]
        self._dirty.add(prefix)
