"""RIB safety rules (bgplb.router.rib): what a peer can never get installed whatever `accept`
says, link bandwidth that is not a number, the local cap on stale time, max_prefixes with
refusals, and the compact (interned) path storage."""

from __future__ import annotations

import math
import struct
import tracemalloc
from dataclasses import dataclass
from ipaddress import ip_address, ip_network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bgplb.bgp.attributes import (
    AsPathSegment,
    AsPathSegmentType,
    ExtendedCommunity,
    MPReachNLRI,
    Origin,
    PathAttributes,
)
from bgplb.bgp.families import AFI, IPV4_UNICAST
from bgplb.bgp.prefix import Prefix
from bgplb.router.rib import EQUAL_WEIGHT, REFUSED_SHOWN, Connected, Rib

P = Prefix.parse
VIP = P("198.51.100.10/32")
VIP6 = P("2001:db8:100::10/128")
CONNECTED = [
    Connected(ip_network("192.0.2.0/24"), 3, ip_address("192.0.2.1")),
    Connected(ip_network("2001:db8::/64"), 3, ip_address("2001:db8::1")),
    Connected(ip_network("203.0.113.0/31"), 5, ip_address("203.0.113.0")),
]
S1, S2 = "192.0.2.11", "192.0.2.12"


@dataclass(frozen=True)
class RawLbw:
    """An extended community whose link bandwidth is any float (the wire carries float32)."""

    link_bandwidth_value: float


def attrs(next_hop: str, *, lbw: float | None = None, raw_lbw: float | None = None):
    ext: tuple[object, ...] = ()
    if lbw is not None:
        ext = (ExtendedCommunity.link_bandwidth(65001, lbw),)
    if raw_lbw is not None:
        ext = (RawLbw(raw_lbw),)
    nh = ip_address(next_hop)
    base = dict(
        origin=Origin.IGP,
        as_path=(AsPathSegment(AsPathSegmentType.AS_SEQUENCE, (65001,)),),
        extended_communities=ext,
    )
    if nh.version == 4:
        return PathAttributes(next_hop=nh, **base)
    return PathAttributes(mp_reach=MPReachNLRI(AFI.IPV6, 1, (nh,), ()), **base)


def up(rib: Rib, peer: str, **kw) -> None:
    rib.peer_up(peer, 0.0, source=ip_address(peer), **kw)


def weights(rib: Rib, vip: Prefix = VIP) -> dict[str, int]:
    return {str(n.address): n.weight for n in rib.fib_entry(vip)}


# -- link bandwidth that is not a positive finite number ------------------------------------------


def lbw_community(value_bits: int) -> ExtendedCommunity:
    """A link bandwidth community with these float32 bits (inf/NaN cannot be built otherwise)."""
    return ExtendedCommunity(bytes([0x40, 0x04, 0xFD, 0xE9]) + struct.pack("!I", value_bits))


@pytest.mark.parametrize(
    "bits",
    [0x7F800000, 0xFF800000, 0x7FC00000, 0x00000000, 0xBF800000],
    ids=["+inf", "-inf", "nan", "zero", "negative"],
)
def test_bad_link_bandwidth_is_ignored_and_reported(bits: int) -> None:
    rib = Rib(CONNECTED)
    up(rib, S1)
    a = attrs(S1)
    a = PathAttributes(
        origin=a.origin, as_path=a.as_path, next_hop=a.next_hop,
        extended_communities=(lbw_community(bits),),
    )  # fmt: skip
    res = rib.update(S1, [VIP], a, [], 0.0)
    assert res.bad_bandwidth and res.added == 1
    # the only path with a bandwidth: used to raise OverflowError/ValueError in round()
    assert weights(rib) == {S1: EQUAL_WEIGHT}
    up(rib, S2)
    assert not rib.update(S2, [VIP], attrs(S2, lbw=1e9), [], 0.0).bad_bandwidth
    # mixing a path without a usable bandwidth: equal weights
    assert weights(rib) == {S1: EQUAL_WEIGHT, S2: EQUAL_WEIGHT}


FLOATS = st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True)


@settings(max_examples=300)
@given(st.lists(st.one_of(st.none(), FLOATS, st.sampled_from([1e308, 5e-324, -0.0])), min_size=1,
                max_size=4), st.integers(0, 3))  # fmt: skip
def test_fib_entry_never_raises_on_any_bandwidth(bandwidths, draining_mask) -> None:
    rib = Rib(CONNECTED)
    for i, bw in enumerate(bandwidths):
        peer = f"192.0.2.{11 + i}"
        up(rib, peer)
        rib.update(peer, [VIP], attrs(peer, raw_lbw=bw), [], 0.0)
    entry = rib.fib_entry(VIP)
    assert len(entry) == len(bandwidths)
    assert all(1 <= n.weight <= 256 for n in entry)
    good = [b for b in bandwidths if b is not None and 0 < b < math.inf]
    if len(good) < len(bandwidths):
        assert {n.weight for n in entry} == {EQUAL_WEIGHT}


# -- prefixes refused whatever accept says -------------------------------------------------------


def test_special_purpose_and_default_are_refused_and_treated_as_withdraw() -> None:
    rib = Rib(CONNECTED)
    up(rib, S1)
    bad = [P("127.0.0.1/32"), P("224.0.0.5/32"), P("0.0.0.0/0"), P("169.254.1.1/32")]
    res = rib.update(S1, [VIP, *bad], attrs(S1), [], 0.0)
    assert res.added == 1 and res.refused_count == 4
    reasons = dict(res.refused)
    assert "loopback" in reasons[P("127.0.0.1/32")]
    assert "allow_default" in reasons[P("0.0.0.0/0")]
    assert set(rib.vips) == {VIP}
    assert rib.peers[S1].prefix_count == 1
    # with allow_default the default route is stored; a later session without it drops it
    up(rib, S1, allow_default=True)
    assert rib.update(S1, [P("0.0.0.0/0")], attrs(S1), [], 1.0).refused_count == 0
    assert P("0.0.0.0/0") in rib.vips
    assert weights(rib, P("0.0.0.0/0")) == {S1: EQUAL_WEIGHT}  # covering the subnets is its job
    up(rib, S1)
    assert P("0.0.0.0/0") not in rib.vips
    # a refusal of a prefix the peer already holds removes it (treat-as-withdraw)
    up(rib, S1, allow_default=True)
    rib.update(S1, [P("0.0.0.0/0")], attrs(S1), [], 2.0)
    rib.peers[S1].allow_default = False
    res = rib.update(S1, [P("0.0.0.0/0")], attrs(S1), [], 3.0)
    assert res.refused_count == 1 and res.withdrawn == 1
    assert P("0.0.0.0/0") not in rib.vips


def test_refused_list_is_capped_but_counted() -> None:
    rib = Rib(CONNECTED)
    up(rib, S1)
    many = [Prefix(AFI.IPV4, (127 << 24) + i, 32) for i in range(50)]
    res = rib.update(S1, many, attrs(S1), [], 0.0)
    assert res.refused_count == 50 and len(res.refused) == REFUSED_SHOWN
    assert rib.vips == {}


def test_refused_prefixes_do_not_count_against_max_prefixes() -> None:
    rib = Rib(CONNECTED)
    up(rib, S1, max_prefixes=2)
    res = rib.update(S1, [P("127.0.0.1/32"), P("0.0.0.0/0"), VIP], attrs(S1), [], 0.0)
    assert not res.exceeded and res.added == 1
    res = rib.update(S1, [P("198.51.100.11/32"), P("198.51.100.12/32")], attrs(S1), [], 1.0)
    assert res.exceeded and res.added == 1 and res.dropped == 1


@pytest.mark.parametrize(
    ("vip", "why"),
    [
        ("192.0.2.77/32", "inside connected subnet 192.0.2.0/24"),
        ("192.0.2.1/32", "inside connected subnet 192.0.2.0/24"),
        ("192.0.2.0/23", "covers connected subnet 192.0.2.0/24"),
        ("2001:db8::5/128", "inside connected subnet 2001:db8::/64"),
    ],
)
def test_vip_overlapping_connected_or_own_address_is_never_installed(vip: str, why: str) -> None:
    rib = Rib(CONNECTED)
    up(rib, S1)
    peer6 = "2001:db8::11"
    up(rib, peer6)
    prefix = P(vip)
    peer = S1 if prefix.afi == AFI.IPV4 else peer6
    rib.update(peer, [prefix], attrs(peer), [], 0.0)
    assert prefix in rib.vips and rib.fib_entry(prefix) == ()
    assert rib.unusable(prefix) == [(peer, why)]
    # re-evaluated when the connected subnets change
    rib.take_dirty()
    rib.set_connected([c for c in CONNECTED if c.network.version != prefix.network.version])
    assert prefix in rib.take_dirty()
    assert rib.unusable(prefix) == [(peer, f"next hop {peer} is not in a connected subnet")]


@pytest.mark.parametrize(
    ("hop", "why"),
    [
        ("192.0.2.0", "network address of 192.0.2.0/24"),
        ("192.0.2.255", "broadcast address of 192.0.2.0/24"),
        ("192.0.2.1", "the router's own address"),
        ("127.0.0.1", "loopback"),
        ("224.0.0.1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("169.254.0.1", "link-local"),
        ("255.255.255.255", "limited broadcast"),
        ("198.18.0.1", "not in a connected subnet"),
        ("2001:db8::", "subnet-router anycast address of 2001:db8::/64"),
        ("ff02::1", "multicast"),
        ("::ffff:192.0.2.11", "IPv4-mapped"),
        ("::1", "loopback"),
    ],
)
def test_next_hops_the_kernel_would_refuse_are_unusable(hop: str, why: str) -> None:
    rib = Rib(CONNECTED)
    rib.peer_up(S1, 0.0, third_party_next_hop=True)
    vip = VIP if ip_address(hop).version == 4 else VIP6
    rib.update(S1, [vip], attrs(hop), [], 0.0)
    assert rib.fib_entry(vip) == ()
    ((peer, reason),) = rib.unusable(vip)
    assert peer == S1 and why in reason, reason


def test_point_to_point_subnet_has_no_network_or_broadcast_address() -> None:
    rib = Rib(CONNECTED)
    rib.peer_up("203.0.113.1", 0.0, source=ip_address("203.0.113.1"))
    rib.update("203.0.113.1", [VIP], attrs("203.0.113.1"), [], 0.0)
    assert weights(rib) == {"203.0.113.1": EQUAL_WEIGHT}  # RFC 3021 /31


def test_ipv4_vip_with_ipv6_next_hop_is_refused_with_a_reason() -> None:
    rib = Rib(CONNECTED)
    up(rib, S1)
    a = PathAttributes(mp_reach=MPReachNLRI(AFI.IPV4, 1, (ip_address("2001:db8::11"),), ()))
    rib.update(S1, [VIP], a, [], 0.0)
    assert rib.fib_entry(VIP) == ()
    assert rib.unusable(VIP) == [(S1, "IPv6 next hop 2001:db8::11 for an IPv4 VIP")]


def test_third_party_next_hop_needs_the_range_to_allow_it() -> None:
    rib = Rib(CONNECTED)
    up(rib, S1)
    rib.update(S1, [VIP], attrs(S2), [], 0.0)
    assert rib.fib_entry(VIP) == ()
    ((_, reason),) = rib.unusable(VIP)
    assert "not the session address 192.0.2.11" in reason
    rib.take_dirty()
    up(rib, S1, third_party_next_hop=True)  # the next session allows it: re-evaluated
    assert VIP in rib.take_dirty()
    assert weights(rib) == {S2: EQUAL_WEIGHT}
    # an IPv4-mapped session address counts as the IPv4 address
    rib.peer_up(S1, 1.0, source=ip_address("::ffff:192.0.2.12"))
    assert weights(rib) == {S2: EQUAL_WEIGHT}


# -- stale time cap -------------------------------------------------------------------------------


def test_max_stale_time_caps_the_advertised_restart_time() -> None:
    rib = Rib(CONNECTED, max_stale_time=120.0)
    up(rib, S1, restart_time=4095, gr_families=[IPV4_UNICAST])
    rib.update(S1, [VIP], attrs(S1), [], 0.0)
    assert rib.peer_down(S1, 10.0, graceful=True) == 1
    assert rib.next_deadline() == 130.0
    up(rib, S1, restart_time=4095, gr_families=[IPV4_UNICAST])
    assert rib.next_deadline() == 120.0 + 0.0  # re-armed at re-establishment (now = 0.0)
    assert rib.expire(120.0) == [S1] and rib.vips == {}


def test_max_stale_time_zero_disables_the_helper() -> None:
    rib = Rib(CONNECTED, max_stale_time=0.0)
    up(rib, S1, restart_time=30, gr_families=[IPV4_UNICAST])
    rib.update(S1, [VIP], attrs(S1), [], 0.0)
    assert rib.peer_down(S1, 1.0, graceful=True) == 0
    assert rib.vips == {} and rib.peers == {}


# -- compact storage ------------------------------------------------------------------------------


def test_paths_are_interned_per_peer_and_addresses_shared() -> None:
    rib = Rib(CONNECTED)
    up(rib, S1, third_party_next_hop=True)
    up(rib, S2, third_party_next_hop=True)
    vips = [Prefix(AFI.IPV4, VIP.address + i, 32) for i in range(100)]
    for i in range(0, 100, 10):  # ten UPDATEs, each with its own (equal) attributes object
        rib.update(S1, vips[i : i + 10], attrs("192.0.2.20"), [], 0.0)
        rib.update(S2, vips[i : i + 10], attrs("192.0.2.20"), [], 0.0)
    one = {id(p) for p in rib.peers[S1].paths.values()}
    two = {id(p) for p in rib.peers[S2].paths.values()}
    assert len(one) == len(two) == 1 and one != two
    (p1,), (p2,) = rib.vips[vips[0]][:1], rib.vips[vips[0]][1:]
    assert p1.next_hop is p2.next_hop


def bytes_per_path(n: int) -> float:
    rib = Rib(CONNECTED)
    up(rib, S1)
    up(rib, S2)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for peer in (S1, S2):
            a = attrs(peer)
            prefixes = [Prefix(AFI.IPV4, (198 << 24) + (18 << 16) + i, 32) for i in range(n)]
            for i in range(0, n, 500):
                rib.update(peer, prefixes[i : i + 500], a, [], 0.0)
            del prefixes
        rib.take_dirty()
        return (tracemalloc.get_traced_memory()[0] - before) / (2 * n)
    finally:
        tracemalloc.stop()


def test_memory_per_peer_and_prefix_stays_small() -> None:
    # 2 peers x 20k prefixes after take_dirty; the Prefix objects (built per peer, as a decoder
    # does) are part of the figure. Before interning and tuple storage: 244 bytes; with them
    # ~180; with path sets and VIP keys shared between peers ~113.
    assert bytes_per_path(20_000) < 140


HOPS = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
    st.sampled_from(["192.0.2.0", "192.0.2.255", "192.0.2.1", "203.0.113.0", "203.0.113.1",
                     "2001:db8::", "2001:db8::1", "::ffff:192.0.2.11", "192.0.2.11"]),
)  # fmt: skip
VIPS = st.sampled_from([VIP, VIP6, P("192.0.2.0/25"), P("0.0.0.0/0"), P("10.0.0.0/8")])


@settings(max_examples=300)
@given(st.lists(st.tuples(HOPS, st.booleans()), min_size=1, max_size=5), VIPS, st.booleans())
def test_any_next_hop_gives_a_sane_entry_or_a_reason(hops, vip, allow_default) -> None:
    rib = Rib(CONNECTED)
    for i, (hop, third_party) in enumerate(hops):
        peer = f"192.0.2.{11 + i}"
        up(rib, peer, third_party_next_hop=third_party, allow_default=allow_default)
        rib.update(peer, [vip], attrs(hop), [], 0.0)
    entry = rib.fib_entry(vip)
    unusable = dict(rib.unusable(vip))
    # every stored path is either a member or explained, never both
    in_entry = {peer for n in entry for peer in n.peers}
    assert in_entry.isdisjoint(unusable)
    assert in_entry | unusable.keys() == set(rib.paths(vip))
    for n in entry:
        assert n.address.version == vip.network.version
        assert any(n.address in c.network and n.address != c.local for c in CONNECTED)
        assert 1 <= n.weight <= 256


def test_a_lower_limit_on_a_new_session_refuses_further_growth() -> None:
    rib = Rib(CONNECTED)
    up(rib, S1, restart_time=30, gr_families=[IPV4_UNICAST])
    vips = [Prefix(AFI.IPV4, VIP.address + i, 32) for i in range(3)]
    rib.update(S1, vips, attrs(S1), [], 0.0)
    rib.peer_down(S1, 1.0, graceful=True)
    up(rib, S1, restart_time=30, gr_families=[IPV4_UNICAST], max_prefixes=2)
    # re-announcing what it has is not growth; a new prefix is
    assert not rib.update(S1, vips, attrs(S1), [], 2.0).exceeded
    res = rib.update(S1, [Prefix(AFI.IPV4, VIP.address + 9, 32)], attrs(S1), [], 3.0)
    assert res.exceeded and res.dropped == 1 and rib.peers[S1].prefix_count == 3


# -- bulk operations and caches keep the tables consistent ---------------------------------------

PEERS = ("192.0.2.11", "192.0.2.12", "192.0.2.13")
OPS = st.one_of(
    st.tuples(
        st.just("update"),
        st.sampled_from(PEERS),
        st.lists(st.integers(0, 5), max_size=4),  # announced (index into the VIPs)
        st.lists(st.integers(0, 5), max_size=3),  # withdrawn
        st.sampled_from([None, 0, 1]),  # next hop: the peer's own, or 192.0.2.20 + n
        st.booleans(),  # draining
    ),
    st.tuples(st.just("up"), st.sampled_from(PEERS), st.booleans(), st.booleans()),
    st.tuples(st.just("down"), st.sampled_from(PEERS), st.booleans()),
    st.tuples(st.just("eor"), st.sampled_from(PEERS), st.sampled_from([AFI.IPV4, AFI.IPV6])),
    st.tuples(st.just("forget"), st.sampled_from(PEERS)),
    st.tuples(st.just("expire"), st.floats(0, 200)),
    st.tuples(st.just("connected"), st.booleans()),
)
BULK_VIPS = [
    P(text)
    for text in (
        "198.51.100.10/32",
        "198.51.100.11/32",
        "198.51.100.0/28",
        "2001:db8:100::10/128",
        "2001:db8:100::11/128",
        "2001:db8:100::/124",
    )
]


def _attrs_for(peer: str, vips: list[Prefix], hop: int | None, draining: bool) -> PathAttributes:
    v4 = peer if hop is None else f"192.0.2.{20 + hop}"
    v6 = f"2001:db8::{11 + PEERS.index(peer)}" if hop is None else f"2001:db8::{20 + hop}"
    six = [v for v in vips if v.afi == AFI.IPV6]
    return PathAttributes(
        origin=Origin.IGP,
        as_path=(),
        next_hop=ip_address(v4),
        mp_reach=MPReachNLRI(AFI.IPV6, 1, (ip_address(v6),), tuple(six)) if six else None,
        communities=(0xFFFF0000,) if draining else (),
    )


def _check(rib: Rib, before: dict[Prefix, tuple], dirty: set[Prefix]) -> dict[Prefix, tuple]:
    # the VIP table is exactly the union of the peers' tables, one path per peer
    held: dict[Prefix, set[int]] = {}
    for state in rib.peers.values():
        assert state.stale_count == sum(p.stale for p in state.paths.values())
        for prefix, path in state.paths.items():
            assert path.peer == state.peer
            held.setdefault(prefix, set()).add(id(path))
    assert {v: {id(p) for p in paths} for v, paths in rib.vips.items()} == held
    # one Prefix object per VIP, whichever peers announced it
    keys = {id(v) for v in rib.vips}
    assert all(id(k) in keys for state in rib.peers.values() for k in state.paths)
    assert rib._keys.keys() == rib.vips.keys()
    assert all(len(paths) == len({p.peer for p in paths}) for paths in rib.vips.values())
    # cached entries are what a fresh computation gives; every changed entry was marked dirty
    now = {}
    for vip, paths in rib.vips.items():
        entry = rib.fib_entry(vip)
        if rib._vip_refusal(vip) is None:
            assert entry == rib._entry(paths, vip.network.version)
        if entry:
            now[vip] = entry
    for vip in before.keys() | now.keys():
        if before.get(vip) != now.get(vip):
            assert vip in dirty, vip
    return now


@settings(max_examples=300, deadline=None)
@given(st.lists(OPS, max_size=25))
def test_bulk_removals_and_caches_keep_the_tables_consistent(ops) -> None:
    rib = Rib(CONNECTED, max_stale_time=100.0)
    entries: dict[Prefix, tuple] = {}
    t = 0.0
    for op in ops:
        keys, version = set(rib.vips), rib.vips_version
        t += 1.0
        kind = op[0]
        if kind == "update":
            _, peer, announced, withdrawn, hop, draining = op
            if peer not in rib.peers:
                up(rib, peer, restart_time=50, gr_families=[IPV4_UNICAST, (AFI.IPV6, 1)])
            vips = [P(str(BULK_VIPS[i])) for i in announced]  # objects of its own, as decoded
            a = _attrs_for(peer, vips, hop, draining)
            four = [v for v in vips if v.afi == AFI.IPV4]
            rib.update(
                peer,
                four + [v for v in vips if v not in four],
                a,
                [BULK_VIPS[i] for i in withdrawn],
                t,
            )
        elif kind == "up":
            _, peer, gr, third = op
            families = [IPV4_UNICAST] if gr else []
            up(rib, peer, restart_time=50 if gr else None, gr_families=families,
               third_party_next_hop=third)  # fmt: skip
        elif kind == "down":
            rib.peer_down(op[1], t, graceful=op[2])
        elif kind == "eor":
            rib.end_of_rib(op[1], (op[2], 1), t)
        elif kind == "forget":
            rib.forget_peer(op[1])
        elif kind == "expire":
            rib.expire(op[1])
        else:
            rib.set_connected(CONNECTED if op[1] else CONNECTED[:1])
        entries = _check(rib, entries, rib.take_dirty())
        if set(rib.vips) != keys:  # status caches its sorted page on this
            assert rib.vips_version != version
