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
* **Refused prefixes** (in :meth:`Rib.update`, whatever ``accept`` says): RFC 6890
  special-purpose prefixes and martians (:func:`bgplb.router.policy.special_purpose`) and the
  default route unless the peer's range has ``allow_default``. They are not stored; one the peer
  already had is removed (as if withdrawn); :class:`UpdateResult` lists them.
* **Next hop.** A path's next hop is the NEXT_HOP attribute (IPv4 NLRI) or the first next hop of
  MP_REACH_NLRI of the prefix's AFI (RFC 4760 §3; for IPv6 the global address — a link-local-only
  next hop is not usable, as the RIB does not know the session's interface). **A path is usable
  only if its next hop lies inside a directly connected subnet of the router** (the daemon passes
  the subnets of its interface addresses in, :class:`Connected`), **is not one of the router's
  own addresses, nor the subnet's network or broadcast address** (IPv4, RFC 919; not on /31,
  RFC 3021) **or its subnet-router anycast address** (IPv6, RFC 4291 §2.6.1; not on /127, RFC
  6164), **nor an address no kernel takes as a gateway**
  (:func:`bgplb.router.policy.gateway_refusal`), **is of the VIP's family** (the FIB cannot pin
  an IPv4 VIP to an IPv6 gateway) **and is the session's source address** unless the peer's
  range has ``allow_third_party_next_hop`` (RFC 4271 §5.1.3 lets a speaker name a third party;
  a server has no business doing so). The path's outgoing interface is that subnet's interface
  (the most specific subnet when several match).
* **VIPs overlapping the router** (inside or covering one of its connected subnets or own
  addresses; the default route excepted, see ``allow_default``) are never installed: a VIP
  inside a subnet would shadow hosts on it, one covering it is a mistake.
* These path rules are evaluated in :meth:`Rib.fib_entry`, not on receipt: unusable paths are
  kept (Adj-RIB-In), become usable when the subnets change (:meth:`Rib.set_connected`), and
  :meth:`Rib.unusable` says why.
* **Weight.** When every non-draining path of a VIP carries a link-bandwidth extended community
  (draft-ietf-idr-link-bandwidth) with a positive value, weights are proportional to it, scaled
  to 2..255; otherwise all non-draining paths get :data:`EQUAL_WEIGHT`. A bandwidth that is not
  a finite positive number (inf, NaN, 0, negative) is ignored, as if absent, and reported
  (``UpdateResult.bad_bandwidth``). (Mixing is ignored, as
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
  The restart time is capped locally by ``max_stale_time`` (0 turns the helper off). The
  Forwarding State bit is not required: a server restarting its BGP speaker keeps serving.
  An UPDATE from a peer that is not Established (a late event) is ignored.
* **max_prefixes.** A peer's count is the number of prefixes it has in the RIB (stale ones
  included; refused prefixes are not stored, so they do not count). An update that would
  exceed the limit adds nothing beyond it and reports ``exceeded``; the owner then resets the
  session (RFC 4486 Cease/1), which purges the peer.

Memory. A peer's prefixes announced with the same attributes share one interned :class:`Path`
(per peer: it names the peer), next-hop address objects are shared by all peers, VIPs with the
same paths share one tuple of them (:attr:`Rib.vips`) and one FIB entry (cached per path set),
and a VIP's :class:`~bgplb.bgp.prefix.Prefix` object is the key of every table that holds it
(a second peer's copy is dropped): a (peer, prefix) costs its dict slots and, for the first
peer of a VIP, the Prefix object. Measured with tracemalloc, 2 peers x 20,000 /32 VIPs
(prefixes built per peer, as decoded, after :meth:`Rib.take_dirty`): 244 bytes per (peer,
prefix) before interning, ~180 with it, ~113 now (docs/router.md, "Memory").

Checked with ``mypy --strict``.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from bgplb.bgp.attributes import GRACEFUL_SHUTDOWN, PathAttributes
from bgplb.bgp.families import AFI, SAFI, Family
from bgplb.bgp.prefix import Prefix
from bgplb.router.failopen import RETURN_GRACE, FailOpen, Failure
from bgplb.router.policy import gateway_refusal, special_purpose

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
PeerId = str

DRAIN_WEIGHT = 1
"""Weight of a draining nexthop: the smallest the kernel has."""
EQUAL_WEIGHT = 64
"""Weight of each nexthop when weights are equal (far above DRAIN_WEIGHT)."""
MAX_SCALED_WEIGHT = 255
MAX_WEIGHT = 256  # struct nexthop_grp carries weight - 1 in a u8
REFUSED_SHOWN = 8
"""How many refused prefixes an :class:`UpdateResult` lists (``refused_count`` has them all)."""
_BITS = {AFI.IPV4: 32, AFI.IPV6: 128}
_VERSION = {AFI.IPV4: 4, AFI.IPV6: 6}
_INTERN_LIMIT = 4096  # caches are cleared past this size (a peer cycling attributes)
_TUPLE_LIMIT = 1 << 16  # distinct path sets interned (VIPs with the same paths share one)


@dataclass(frozen=True, slots=True)
class Connected:
    """A directly connected subnet: the network of an interface address, its ifindex, and the
    router's own address on it (never a usable next hop)."""

    network: IPNetwork
    ifindex: int
    local: IPAddress | None = None


@dataclass(frozen=True, slots=True, eq=False)
class Path:
    """One peer's path, shared by every prefix it announced with the same attributes (compared
    and hashed by identity: the RIB interns them)."""

    peer: PeerId
    next_hop: IPAddress | None
    bandwidth: float | None = None  # link bandwidth, bytes per second; finite and > 0
    draining: bool = False
    stale: bool = False


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
    """What an update did: counts, refused prefixes, the max_prefixes verdict.

    ``refused``: up to :data:`REFUSED_SHOWN` ``(prefix, reason)`` pairs of prefixes that can never
    be installed (special purpose, default route not allowed); ``refused_count`` counts them
    all. ``bad_bandwidth``: the link bandwidth community was not a finite positive number and
    was ignored. ``ignored``: the peer is not Established; nothing was applied.
    """

    added: int = 0
    withdrawn: int = 0
    exceeded: bool = False
    dropped: int = 0  # announced prefixes not stored because the limit was reached
    refused: tuple[tuple[Prefix, str], ...] = ()
    refused_count: int = 0
    bad_bandwidth: bool = False
    ignored: bool = False


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
    source: IPAddress | None = None  # the session's remote address
    third_party_next_hop: bool = False
    allow_default: bool = False
    stale_count: int = 0  # paths with .stale, kept up to date by the Rib
    # its stale paths are kept by fail-open (bgplb.router.failopen), not Graceful Restart
    fail_open_until: float | None = None
    interned: dict[tuple[IPAddress | None, float | None, bool, bool], Path] = field(
        default_factory=dict
    )

    @property
    def prefix_count(self) -> int:
        return len(self.paths)


def _family(prefix: Prefix) -> Family:
    return (prefix.afi, SAFI.UNICAST)


def _usable_bandwidth(value: float | None) -> bool:
    """Finite and positive (NaN fails every comparison)."""
    return value is not None and 0.0 < value < math.inf


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
    """The first link bandwidth extended community's value, if any (not checked)."""
    for ec in attributes.extended_communities:
        value = ec.link_bandwidth_value
        if value is not None:
            return value
    return None


def _unmapped(address: IPAddress | None) -> IPAddress | None:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class Rib:
    """Paths per VIP from all peers, and the desired FIB. See the module docstring."""

    def __init__(
        self,
        connected: Iterable[Connected] = (),
        *,
        max_stale_time: float | None = None,
        fail_open: FailOpen | None = None,
    ) -> None:
        self.peers: dict[PeerId, PeerState] = {}
        #: None: fail-open off (every failure purges at once)
        self.fail_open = fail_open
        self.fail_open_vips = 0  # VIPs holding kept paths, as of the last fail_open_check
        self._kept_changed = False
        # per VIP its paths, one per peer (a tuple: the common case is one or two)
        self.vips: dict[Prefix, tuple[Path, ...]] = {}
        self.max_stale_time = max_stale_time
        self._connected: tuple[Connected, ...] = ()
        self._own: tuple[tuple[Prefix, str], ...] = ()
        self._verdicts: dict[Path, tuple[int, str | None]] = {}
        # the FIB entry of a path set, per IP version of the VIP (VIP refusals apart)
        self._entries: dict[int, dict[tuple[Path, ...], tuple[FibNexthop, ...]]] = {4: {}, 6: {}}
        # one tuple object per distinct path set: the VIPs of the same servers share it
        self._tuples: dict[tuple[Path, ...], tuple[Path, ...]] = {}
        # the key object of each VIP: a peer announcing a VIP another one has stores that
        # object, not its own copy (the keys of `vips` and of every `PeerState.paths`)
        self._keys: dict[Prefix, Prefix] = {}
        #: Changes whenever a VIP appears in or leaves `vips` (status caches its sorted page on it)
        self.vips_version = 0
        self._addresses: dict[IPAddress, IPAddress] = {}
        self._dirty: set[Prefix] = set()
        self.set_connected(connected)

    # -- inputs ---------------------------------------------------------------------------------

    def set_connected(self, connected: Iterable[Connected]) -> None:
        """Replace the directly connected subnets; every VIP is re-evaluated."""
        # most specific first, so the first match is the longest
        self._connected = tuple(sorted(connected, key=lambda c: -c.network.prefixlen))
        own: list[tuple[Prefix, str]] = []
        for c in self._connected:
            own.append((Prefix.from_network(c.network), f"connected subnet {c.network}"))
            if c.local is not None:
                local = ipaddress.ip_network(c.local)
                own.append((Prefix.from_network(local), f"the router's own address {c.local}"))
        self._own = tuple(own)
        self._forget_verdicts()
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
        source: IPAddress | None = None,
        third_party_next_hop: bool = False,
        allow_default: bool = False,
    ) -> None:
        """The session with `peer` is Established; `restart_time`/`gr_families` from its Graceful
        Restart capability (None: it did not advertise it). `source`: the session's remote
        address (next hops must equal it unless `third_party_next_hop`; None: not checked);
        `allow_default`: the default route may be announced."""
        state = self.peers.get(peer)
        if state is None:
            state = self.peers[peer] = PeerState(peer)
        source = _unmapped(source)
        if state.paths and (
            state.source != source or state.third_party_next_hop != third_party_next_hop
        ):
            self._dirty.update(state.paths)  # next-hop verdicts of kept paths may change
        state.asn = asn
        state.established = True
        state.max_prefixes = max_prefixes
        state.restart_time = restart_time
        state.gr_families = frozenset(gr_families) if restart_time is not None else frozenset()
        state.source = source
        state.third_party_next_hop = third_party_next_hop
        state.allow_default = allow_default
        self._forget_verdicts()
        if not allow_default:
            for afi in _BITS:
                if Prefix(afi, 0, 0) in state.paths:
                    self._remove(state, Prefix(afi, 0, 0))
        if state.fail_open_until is not None:
            self._fail_open_back(state, now)
            return
        if state.stale_count:
            # RFC 4724 §4.2: families it no longer preserves lose their stale routes now.
            for prefix, path in list(state.paths.items()):
                if path.stale and (not restart_time or _family(prefix) not in state.gr_families):
                    self._remove(state, prefix)
        hold = self._stale_time(state)
        state.stale_deadline = now + hold if hold and state.stale_count else None

    def update(
        self,
        peer: PeerId,
        announced: Iterable[Prefix],
        attributes: PathAttributes | None,
        withdrawn: Iterable[Prefix],
        now: float,
    ) -> UpdateResult:
        """Apply one UPDATE's announcements (already filtered by ``accept``) and withdrawals.

        Prefixes that can never be a VIP (:func:`~bgplb.router.policy.special_purpose`, the
        default route without `allow_default`) are refused: not stored, and removed if the peer
        had them (treat-as-withdraw). An UPDATE from a peer that is not Established (a late
        event after :meth:`peer_down`) is ignored.
        """
        state = self.peers.get(peer)
        if state is None or not state.established:
            return UpdateResult(ignored=True)
        paths = state.paths
        removed = 0
        for prefix in withdrawn:
            if prefix in paths:
                self._remove(state, prefix)
                removed += 1
        added = dropped = refused_count = 0
        refused: list[tuple[Prefix, str]] = []
        exceeded = bad_bandwidth = False
        # fail-open: a usable path from a peer outside the episode ends it for its VIPs
        # (a peer of the episode coming back is not: the others get RETURN_GRACE)
        event = self.fail_open.event if self.fail_open is not None else None
        fresh: list[Prefix] | None = [] if event is not None and peer not in event.peers else None
        if attributes is not None:
            raw = link_bandwidth(attributes)
            bandwidth = raw if _usable_bandwidth(raw) else None
            bad_bandwidth = raw is not None and bandwidth is None
            draining = GRACEFUL_SHUTDOWN in attributes.communities
            cache: dict[AFI, Path] = {}
            limit = state.max_prefixes
            vips, keys, dirty = self.vips, self._keys, self._dirty
            more: dict[tuple[tuple[Path, ...], Path], tuple[Path, ...]] = {}
            for prefix in announced:
                afi = prefix[0]
                reason = None
                if prefix[2] == 0 and not state.allow_default:
                    reason = "default route (allow_default is off)"
                elif prefix not in vips:  # what is stored passed this (static) check
                    reason = special_purpose(prefix)
                if reason is not None:
                    refused_count += 1
                    if len(refused) < REFUSED_SHOWN:
                        refused.append((prefix, reason))
                    if prefix in paths:
                        self._remove(state, prefix)
                        removed += 1
                    continue
                path = cache.get(afi)
                if path is None:
                    hop = next_hop_for(afi, attributes)
                    path = cache[afi] = self._intern(state, hop, bandwidth, draining, False)
                if limit is not None and len(paths) >= limit and prefix not in paths:
                    exceeded = True
                    dropped += 1
                    continue
                added += 1
                if fresh is not None:
                    fresh.append(prefix)
                if prefix in paths:
                    self._set(state, prefix, path)  # a replacement: the general case
                    continue
                # a path new to this peer (the bulk of a full table), _set inlined: the tuple
                # of the VIP's paths with this one added is looked up once per distinct tuple
                current = vips.get(prefix)
                if current is None:
                    keys[prefix] = prefix
                    vips[prefix] = self._shared((path,))
                    self.vips_version += 1
                else:
                    prefix = keys.get(prefix, prefix)
                    grown = more.get((current, path))
                    if grown is None:
                        grown = more[(current, path)] = self._shared((*current, path))
                    vips[prefix] = grown
                paths[prefix] = path
                dirty.add(prefix)
        if fresh:
            self._real_path_appeared(fresh)
        if not state.stale_count:
            state.stale_deadline = None  # every stale path was replaced or withdrawn
            if state.fail_open_until is not None:
                self._fail_open_done(state, "came back")
        return UpdateResult(
            added, removed, exceeded, dropped, tuple(refused), refused_count, bad_bandwidth
        )

    def entries_after_announce(
        self, peer: PeerId, announced: Iterable[Prefix], attributes: PathAttributes | None
    ) -> tuple[tuple[FibNexthop, ...], tuple[FibNexthop, ...]] | None:
        """For the fast path of a server announcing many VIPs again, before :meth:`update`:
        if every prefix of `announced` is a stored VIP with the same paths (one shared tuple),
        none of them from `peer`, of one family, not the default route, and within the peer's
        ``max_prefixes``, the (FIB entry they all have now, FIB entry they will all have once
        `update` applied these announcements) — what :meth:`fib_entry` gives before and after.
        None otherwise. Changes nothing but the interning caches. O(announced) dict lookups."""
        state = self.peers.get(peer)
        if state is None or not state.established or attributes is None:
            return None
        prefixes = announced if isinstance(announced, (list, tuple)) else list(announced)
        if not prefixes:
            return None
        first = prefixes[0]
        current = self.vips.get(first)
        if current is None or first[2] == 0:
            return None
        afi, paths, vips = first[0], state.paths, self.vips
        for prefix in prefixes:
            if vips.get(prefix) is not current or prefix in paths or prefix[0] != afi:
                return None
        limit = state.max_prefixes
        if limit is not None and len(paths) + len(prefixes) > limit:
            return None
        raw = link_bandwidth(attributes)
        bandwidth = raw if _usable_bandwidth(raw) else None
        draining = GRACEFUL_SHUTDOWN in attributes.communities
        path = self._intern(state, next_hop_for(afi, attributes), bandwidth, draining, False)
        grown = self._shared((*current, path))  # the tuple `update` makes: paths appended
        version = _VERSION[afi]
        cache = self._entries[version]
        entry = cache.get(grown)
        if entry is None:
            if len(cache) >= _TUPLE_LIMIT:
                cache.clear()
            entry = cache[grown] = self._entry(grown, version)
        return self.fib_entry(first), entry

    def end_of_rib(self, peer: PeerId, family: Family, now: float) -> int:
        """End-of-RIB (RFC 4724 §2) for `family`: purge that family's stale paths. Returns how
        many were purged."""
        state = self.peers.get(peer)
        if state is None:
            return 0
        stale = [p for p, path in state.paths.items() if path.stale and _family(p) == family]
        self._purge(state, stale)
        if not state.stale_count:
            state.stale_deadline = None
            if state.fail_open_until is not None:
                self._fail_open_done(state, "came back")
            if not state.established:  # nothing left of a peer that is down
                del self.peers[peer]
        return len(stale)

    def peer_down(
        self, peer: PeerId, now: float, *, graceful: bool, failure: str | None = None
    ) -> int:
        """The session with `peer` went down. `graceful`: the transport was closed by FIN/RST
        (not hold expiry, not BFD, not a NOTIFICATION). Returns how many paths were kept stale
        for Graceful Restart. `failure`: why it is a failure
        (:func:`bgplb.router.failopen.failure_kind`), None when it is not: with fail-open on,
        VIPs it leaves without a usable path keep their paths (see :mod:`~bgplb.router.failopen`).
        """
        state = self.peers.get(peer)
        if state is None:
            return 0
        state.established = False
        hold = self._stale_time(state)
        keep = graceful and bool(hold) and bool(state.gr_families)
        kept = 0
        if state.fail_open_until is not None:
            self._fail_open_done(state, "failed again" if failure else "closed again")
        if not keep and failure is not None and self.fail_open is not None:
            self._fail(state, now, failure)
            return 0
        if keep:
            kept_afis = {afi for afi, safi in state.gr_families if safi == SAFI.UNICAST}
            gone = [p for p in state.paths if p[0] not in kept_afis]
            self._purge(state, gone)
            kept = self._make_stale(state)
        else:
            self._purge(state, list(state.paths))
        if kept and hold:
            state.stale_deadline = now + hold
        else:
            state.stale_deadline = None
            del self.peers[peer]
        return kept

    def forget_peer(self, peer: PeerId) -> None:
        """Purge every path of `peer` at once (deconfigured, or stopped by us)."""
        state = self.peers.pop(peer, None)
        if state is not None:
            if state.fail_open_until is not None:
                self._fail_open_done(state, "removed")
            self._purge(state, list(state.paths))

    def expire(self, now: float) -> list[PeerId]:
        """Purge the stale paths of every peer whose restart time ran out. Returns those peers."""
        expired = [
            s.peer
            for s in self.peers.values()
            if s.stale_deadline is not None and s.stale_deadline <= now
        ]
        kept_by_fail_open = []
        for peer in expired:
            state = self.peers[peer]
            if state.fail_open_until is not None:
                kept_by_fail_open.append(peer)
                if state.established:
                    why = "came back (kept paths it did not announce again purged)"
                elif state.fail_open_until <= now:
                    why = "fail_open_hold ran out"
                else:
                    why = f"not back within {RETURN_GRACE:g} s of the first one back"
                self._fail_open_done(state, why)
            # a peer that is down holds only stale paths; purge all of it, never leave paths
            # behind a forgotten PeerState
            if state.established:
                self._purge(state, [p for p, path in state.paths.items() if path.stale])
            else:
                self._purge(state, list(state.paths))
            state.stale_deadline = None
            if not state.established:
                del self.peers[peer]
        return [p for p in expired if p not in kept_by_fail_open]

    def next_deadline(self) -> float | None:
        """When :meth:`expire` must next be called, or None."""
        deadlines = [s.stale_deadline for s in self.peers.values() if s.stale_deadline is not None]
        return min(deadlines) if deadlines else None

    # -- fail-open (bgplb.router.failopen) ------------------------------------------------------

    def fail_open_check(self, now: float) -> list[tuple[str, str]]:
        """After a batch of inputs: forget fail-open marks of peers with no kept path left,
        count the VIPs still holding kept paths (:attr:`fail_open_vips`), and return the
        (level, message) lines to log (episode started, grew, ended). O(peers), plus the
        episode's VIPs when kept paths changed."""
        fo = self.fail_open
        if fo is None or fo.event is None:
            return fo.take_logs() if fo is not None else []
        kept_peers = 0
        for state in list(self.peers.values()):
            if state.fail_open_until is None:
                continue
            if state.stale_count:
                kept_peers += 1
            else:
                self._fail_open_done(state, "came back" if state.established else "gone")
                if not state.established and not state.paths:
                    del self.peers[state.peer]
        if self._kept_changed or not kept_peers:
            self._kept_changed = False
            self.fail_open_vips = sum(1 for v in fo.event.vips if self._kept_in(v))
        fo.check(kept_peers, now)
        return fo.take_logs()

    def fail_open_until(self, vip: Prefix) -> float | None:
        """When the last kept path of `vip` goes at the latest, or None (status): O(its paths)."""
        deadlines = []
        for path in self.vips.get(vip, ()):
            state = self.peers.get(path.peer) if path.stale else None
            if state is not None and state.fail_open_until is not None:
                deadlines.append(state.stale_deadline or state.fail_open_until)
        return max(deadlines) if deadlines else None

    def _kept_in(self, vip: Prefix) -> bool:
        return any(p.stale and self.kept_by_fail_open(p.peer) for p in self.vips.get(vip, ()))

    def kept_by_fail_open(self, peer: PeerId) -> bool:
        """Whether `peer`'s stale paths are kept by fail-open (not Graceful Restart)."""
        state = self.peers.get(peer)
        return state is not None and state.fail_open_until is not None

    def _real(self, paths: tuple[Path, ...], version: int) -> bool:
        """Whether `paths` hold a usable path of IP `version` that fail-open is not keeping."""
        for p in paths:
            hop = p.next_hop
            if p.stale and self.kept_by_fail_open(p.peer):
                continue
            if hop is not None and hop.version == version and self._verdict(p)[1] is None:
                return True
        return False

    def _fail(self, state: PeerState, now: float, kind: str) -> None:
        """`state`'s session failed (`kind`): purge its paths; the VIPs this leaves without a
        real usable path get back the paths they lost to failures within the window."""
        fo = self.fail_open
        assert fo is not None
        snapshot = {p: path for p, path in state.paths.items() if not path.draining}
        fo.failed(Failure(state.peer, now, kind, snapshot, state))
        orphans: list[Prefix] = []
        self._purge(state, list(state.paths), orphans)
        state.stale_deadline = None
        del self.peers[state.peer]
        if not orphans:
            return
        recent = list(fo.recent(now))
        for prefix in orphans:
            for failure in recent:
                path = failure.paths.get(prefix)
                if path is None:
                    continue
                kept_state = self._kept_state(failure, now)
                if kept_state is None or prefix in kept_state.paths:
                    continue
                kept = self._intern(kept_state, path.next_hop, path.bandwidth, False, True)
                self._set(kept_state, prefix, kept)
                fo.kept(prefix, failure, now)
        self._kept_changed = True

    def _kept_state(self, failure: Failure, now: float) -> PeerState | None:
        """The state that holds `failure`'s kept paths (its own, put back), or None when the
        peer has a session again (its own routes count, not the old ones)."""
        assert self.fail_open is not None
        state = self.peers.get(failure.peer)
        if state is None:
            own: PeerState = failure.state
            state = self.peers[failure.peer] = own
        elif state is not failure.state or state.established:
            return None
        if state.fail_open_until is None:
            state.fail_open_until = now + self.fail_open.hold
            state.stale_deadline = state.fail_open_until
        return state

    def _fail_open_back(self, state: PeerState, now: float) -> None:
        """A peer holding kept paths is Established again: its fresh routes replace them, its
        End-of-RIB purges the rest; every kept peer (itself included) now has RETURN_GRACE
        seconds at most (the router runs again: who does not come back now is gone)."""
        until = now + RETURN_GRACE
        for other in self.peers.values():
            if other.fail_open_until is not None and other.stale_deadline is not None:
                other.stale_deadline = min(other.stale_deadline, until)

    def _fail_open_done(self, state: PeerState, why: str) -> None:
        if self.fail_open is not None:
            self.fail_open.note_end(state.peer, why)
        state.fail_open_until = None
        self._kept_changed = True

    def _real_path_appeared(self, prefixes: list[Prefix]) -> None:
        """A peer outside the fail-open episode announced `prefixes`: where its path is usable,
        the kept paths of those VIPs go."""
        for prefix in prefixes:
            paths = self.vips.get(prefix, ())
            if not any(p.stale and self.kept_by_fail_open(p.peer) for p in paths):
                continue
            if not self._real(paths, _VERSION[prefix[0]]):
                continue
            for p in paths:
                state = self.peers.get(p.peer)
                if p.stale and state is not None and state.fail_open_until is not None:
                    self._remove(state, prefix)
                    if not state.stale_count:
                        self._fail_open_done(state, "a usable path from outside the episode")
                        if not state.established:
                            del self.peers[state.peer]
            self._kept_changed = True

    # -- outputs --------------------------------------------------------------------------------

    def resolve(self, next_hop: IPAddress | None) -> int | None:
        """The ifindex through which `next_hop` is directly reachable, or None (not usable)."""
        ifindex, reason = self._resolve(next_hop)
        return None if reason is not None else ifindex

    def fib_entry(self, vip: Prefix) -> tuple[FibNexthop, ...]:
        """The nexthop group `vip` should have: one member per usable next hop, sorted. VIPs
        with the same paths get the same (cached) tuple."""
        paths = self.vips.get(vip)
        if not paths or (self._own and self._vip_refusal(vip) is not None):
            return ()
        version = _VERSION[vip[0]]
        cache = self._entries[version]
        entry = cache.get(paths)
        if entry is None:
            if len(cache) >= _TUPLE_LIMIT:
                cache.clear()
            entry = cache[paths] = self._entry(paths, version)
        return entry

    def _entry(self, paths: tuple[Path, ...], version: int) -> tuple[FibNexthop, ...]:
        """The FIB entry of a VIP of IP `version` with these paths (see fib_entry)."""
        if len(paths) == 1:  # the common case
            path = paths[0]
            ifindex, reason = self._verdict(path)
            hop = path.next_hop
            if reason is not None or hop is None or hop.version != version:
                return ()
            if path.draining:
                weight = DRAIN_WEIGHT
            else:
                weight = MAX_SCALED_WEIGHT if _usable_bandwidth(path.bandwidth) else EQUAL_WEIGHT
            return (FibNexthop(hop, ifindex, weight, path.draining, path.stale, (path.peer,)),)
        # one member per (address, ifindex); keyed by int: IPv*Address hashing is slow
        merged: dict[tuple[int, int], list[Path]] = {}
        for path in paths:
            ifindex, reason = self._verdict(path)
            hop = path.next_hop
            if reason is None and hop is not None and hop.version == version:
                group = merged.get((int(hop), ifindex))
                if group is None:
                    merged[(int(hop), ifindex)] = [path]
                else:
                    group.append(path)
        if not merged:
            return ()
        keys = sorted(merged)
        groups = [merged[key] for key in keys]
        draining = [all(p.draining for p in group) for group in groups]
        all_draining = all(draining)
        proportional, top = False, 0.0
        if not all_draining:
            bandwidths = [
                p.bandwidth
                for group, d in zip(groups, draining, strict=True)
                if not d
                for p in group
            ]
            if all(_usable_bandwidth(b) for b in bandwidths):
                top = max(b or 0.0 for b in bandwidths)
                proportional = True
        out: list[FibNexthop] = []
        for (_, ifindex), group, drains in zip(keys, groups, draining, strict=True):
            if drains or all_draining:
                weight = DRAIN_WEIGHT
            elif proportional:
                # the ratio first: 255 * 1e308 would overflow to inf
                weight = sum(
                    max(2, round(MAX_SCALED_WEIGHT * ((p.bandwidth or 0.0) / top)))
                    for p in group
                    if not p.draining
                )
            elif len(group) == 1:
                weight = EQUAL_WEIGHT
            else:
                weight = EQUAL_WEIGHT * sum(1 for p in group if not p.draining)
            first = group[0]
            hop = first.next_hop
            assert hop is not None
            if len(group) == 1:
                out.append(FibNexthop(hop, ifindex, weight, drains, first.stale, (first.peer,)))
            else:
                peers = tuple(sorted(p.peer for p in group))
                stale = all(p.stale for p in group)
                weight = min(weight, MAX_WEIGHT)
                out.append(FibNexthop(hop, ifindex, weight, drains, stale, peers))
        return tuple(out)

    def unusable(self, vip: Prefix) -> list[tuple[PeerId, str]]:
        """Why each path of `vip` that is not in its FIB entry is not (for status), by peer."""
        paths = self.vips.get(vip, ())
        whole = self._vip_refusal(vip)
        out: list[tuple[PeerId, str]] = []
        version = _VERSION[vip[0]]
        for path in paths:
            hop = path.next_hop
            reason = whole
            if reason is None and hop is not None and hop.version != version:
                reason = f"IPv{hop.version} next hop {hop} for an IPv{version} VIP"
            if reason is None:
                reason = self._verdict(path)[1]
            if reason is not None:
                out.append((path.peer, reason))
        return sorted(out)

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
        return {p.peer: p for p in self.vips.get(vip, ())}

    # -- internals ------------------------------------------------------------------------------

    def _stale_time(self, state: PeerState) -> float:
        """How long `state`'s stale paths are kept: its restart time, capped locally."""
        hold = float(state.restart_time or 0)
        if self.max_stale_time is not None:
            hold = min(hold, self.max_stale_time)
        return max(hold, 0.0)

    def _intern(
        self,
        state: PeerState,
        hop: IPAddress | None,
        bandwidth: float | None,
        draining: bool,
        stale: bool,
    ) -> Path:
        """The peer's one Path object for these attributes (shared by all its prefixes)."""
        key = (hop, bandwidth, draining, stale)
        path = state.interned.get(key)
        if path is None:
            if len(state.interned) > _INTERN_LIMIT:
                state.interned.clear()
            if len(self._addresses) > _INTERN_LIMIT:
                self._addresses.clear()
            if hop is not None:
                hop = self._addresses.setdefault(hop, hop)  # one object per address, all peers
            path = state.interned[key] = Path(state.peer, hop, bandwidth, draining, stale)
        return path

    def _resolve(self, hop: IPAddress | None) -> tuple[int, str | None]:
        """(ifindex, None) if `hop` is a usable gateway on a connected subnet, else (0, why)."""
        if hop is None:
            return 0, "no usable next hop (none, or IPv6 link-local only)"
        refusal = gateway_refusal(hop)
        if refusal is not None:
            return 0, f"next hop {hop}: {refusal}"
        for c in self._connected:
            net = c.network
            if net.version != hop.version or hop not in net:
                continue
            if hop == c.local:
                return 0, f"next hop {hop} is the router's own address"
            if hop == net.network_address and net.prefixlen < net.max_prefixlen - 1:
                # RFC 3021 (/31) and RFC 6164 (/127) have no network address
                what = "subnet-router anycast" if hop.version == 6 else "network"
                return 0, f"next hop {hop} is the {what} address of {net}"
            if hop.version == 4 and hop == net.broadcast_address and net.prefixlen < 31:
                return 0, f"next hop {hop} is the broadcast address of {net}"
            return c.ifindex, None
        return 0, f"next hop {hop} is not in a connected subnet"

    def _verdict(self, path: Path) -> tuple[int, str | None]:
        """`_resolve` plus the peer's next-hop rule, cached per Path object."""
        verdict = self._verdicts.get(path)
        if verdict is None:
            verdict = self._resolve(path.next_hop)
            state = self.peers.get(path.peer)
            hop = path.next_hop
            if (
                verdict[1] is None
                and state is not None
                and state.source is not None
                and not state.third_party_next_hop
                and hop != state.source
            ):
                verdict = (
                    0,
                    f"next hop {hop} is not the session address {state.source}"
                    " (allow_third_party_next_hop is off)",
                )
            if len(self._verdicts) > _INTERN_LIMIT:
                self._verdicts.clear()
            self._verdicts[path] = verdict
        return verdict

    def _forget_verdicts(self) -> None:
        """Connected subnets or a peer's next-hop rule changed: every cached verdict and entry
        may be wrong."""
        self._verdicts.clear()
        for cache in self._entries.values():
            cache.clear()

    def _shared(self, paths: tuple[Path, ...]) -> tuple[Path, ...]:
        """The one tuple object of this path set."""
        shared = self._tuples.get(paths)
        if shared is None:
            if len(self._tuples) >= _TUPLE_LIMIT:
                self._tuples.clear()  # only sharing is lost
            shared = self._tuples[paths] = paths
        return shared

    def _vip_refusal(self, vip: Prefix) -> str | None:
        """Why `vip` overlaps the router's own addresses or connected subnets, or None. The
        default route covers everything: it is ``allow_default``'s call alone."""
        afi, address, length = vip
        bits = _BITS[afi]
        for (own_afi, own_address, own_length), what in self._own:  # contains one or the other
            if own_afi != afi:
                continue
            if own_length <= length:
                shift = bits - own_length
                if address >> shift == own_address >> shift:
                    return f"inside {what}"
            elif length and own_address >> (bits - length) == address >> (bits - length):
                return f"covers {what}"
        return None

    def _set(self, state: PeerState, prefix: Prefix, path: Path) -> None:
        old = state.paths.get(prefix)
        if old is path:
            return
        paths = self.vips.get(prefix)
        if paths is None:
            self._keys[prefix] = prefix
            self.vips[prefix] = self._shared((path,))
            self.vips_version += 1
        elif old is None:
            prefix = self._keys.get(prefix, prefix)  # one Prefix object per VIP, for all peers
            self.vips[prefix] = self._shared((*paths, path))
        else:
            self.vips[prefix] = self._shared(tuple(path if p is old else p for p in paths))
        state.paths[prefix] = path
        state.stale_count += path.stale - (old.stale if old is not None else False)
        self._dirty.add(prefix)

    def _purge(
        self,
        state: PeerState,
        prefixes: Iterable[Prefix],
        orphans: list[Prefix] | None = None,
    ) -> int:
        """Remove `state`'s paths of `prefixes`, in bulk: ~0.3 us per prefix, so that a peer
        leaving with 100k paths holds the caller for tens of ms, not hundreds. Returns how many
        were removed. `orphans`: gets the VIPs this leaves without a real usable path that had
        one (fail-open)."""
        orphan_of: dict[tuple[tuple[Path, ...], int], bool] = {}
        vips, paths, dirty, keys = self.vips, state.paths, self._dirty, self._keys
        # a VIP's tuple holds one path per peer: what is left without this peer's path depends
        # on the tuple alone, and VIPs with the same paths share their tuple
        rest: dict[tuple[Path, ...], tuple[Path, ...]] = {}
        removed = stale = 0
        for prefix in prefixes:
            old = paths.pop(prefix, None)
            if old is None:
                continue
            removed += 1
            stale += old.stale
            dirty.add(prefix)
            before = vips.get(prefix, ())
            after = rest.get(before)
            if after is None:
                after = rest[before] = tuple(p for p in before if p is not old)
                if after:
                    after = rest[before] = self._shared(after)
            if orphans is not None:
                version = _VERSION[prefix[0]]
                lost = orphan_of.get((before, version))
                if lost is None:
                    lost = orphan_of[(before, version)] = self._real(
                        before, version
                    ) and not self._real(after, version)
                if lost:
                    orphans.append(prefix)
            if after:
                vips[prefix] = after
            else:
                vips.pop(prefix, None)
                keys.pop(prefix, None)
                self.vips_version += 1
        state.stale_count -= stale
        return removed

    def _make_stale(self, state: PeerState) -> int:
        """Mark every path of `state` stale (Graceful Restart), in bulk. Returns how many."""
        vips, paths, dirty = self.vips, state.paths, self._dirty
        stale_of: dict[Path, Path] = {}
        swapped: dict[tuple[Path, ...], tuple[Path, ...]] = {}
        for prefix, path in paths.items():
            if path.stale:
                continue
            new = stale_of.get(path)
            if new is None:
                new = stale_of[path] = self._intern(
                    state, path.next_hop, path.bandwidth, path.draining, True
                )
            paths[prefix] = new  # a value replaced, no key added: iteration goes on
            dirty.add(prefix)
            before = vips[prefix]
            after = swapped.get(before)
            if after is None:
                after = swapped[before] = self._shared(
                    tuple(new if p is path else p for p in before)
                )
            vips[prefix] = after
            state.stale_count += 1
        return len(paths)

    def _remove(self, state: PeerState, prefix: Prefix) -> None:
        old = state.paths.pop(prefix, None)
        if old is None:
            return
        state.stale_count -= old.stale
        paths = self.vips.get(prefix, ())
        rest = tuple(p for p in paths if p is not old)
        if rest:
            self.vips[prefix] = self._shared(rest)
        else:
            self.vips.pop(prefix, None)
            self._keys.pop(prefix, None)
            self.vips_version += 1
        self._dirty.add(prefix)
