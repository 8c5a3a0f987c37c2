"""The router RIB (bgplb.router.rib): multipath, next-hop rule, weights, drain, GR helper,
max_prefixes. Pure: a fake clock is a float."""

from __future__ import annotations

import subprocess
import sys
from ipaddress import ip_address, ip_network
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from bgplb.bgp.attributes import (
    GRACEFUL_SHUTDOWN,
    AsPathSegment,
    AsPathSegmentType,
    ExtendedCommunity,
    MPReachNLRI,
    Origin,
    PathAttributes,
)
from bgplb.bgp.families import AFI, IPV4_UNICAST, IPV6_UNICAST
from bgplb.bgp.prefix import Prefix
from bgplb.router.rib import DRAIN_WEIGHT, EQUAL_WEIGHT, Connected, Rib

VIP = Prefix.parse("198.51.100.10/32")
VIP6 = Prefix.parse("2001:db8:100::10/128")
CONNECTED = [
    Connected(ip_network("192.0.2.0/24"), 3, ip_address("192.0.2.1")),
    Connected(ip_network("2001:db8::/64"), 3, ip_address("2001:db8::1")),
    Connected(ip_network("203.0.113.0/28"), 4, ip_address("203.0.113.1")),
]


def attrs(next_hop: str, *, asn: int = 65000, communities=(), lbw: float | None = None):
    ext = (ExtendedCommunity.link_bandwidth(asn, lbw),) if lbw is not None else ()
    nh = ip_address(next_hop)
    base = dict(
        origin=Origin.IGP,
        as_path=(AsPathSegment(AsPathSegmentType.AS_SEQUENCE, (asn,)),),
        communities=tuple(communities),
        extended_communities=ext,
    )
    if nh.version == 4:
        return PathAttributes(next_hop=nh, **base)
    return PathAttributes(mp_reach=MPReachNLRI(AFI.IPV6, 1, (nh,), ()), **base)


def rib_with(*servers: tuple[str, str, int], **kw) -> Rib:
    rib = Rib(CONNECTED)
    for peer, nh, asn in servers:
        rib.peer_up(peer, 0.0, asn=asn, **kw)
        rib.update(peer, [VIP], attrs(nh, asn=asn), [], 0.0)
    return rib


def members(rib: Rib, vip: Prefix = VIP) -> dict[str, int]:
    return {str(n.address): n.weight for n in rib.fib_entry(vip)}


def test_multipath_across_ases_equal_weights() -> None:
    rib = rib_with(("192.0.2.11", "192.0.2.11", 65001), ("192.0.2.12", "192.0.2.12", 65002))
    assert members(rib) == {"192.0.2.11": EQUAL_WEIGHT, "192.0.2.12": EQUAL_WEIGHT}
    entry = rib.fib_entry(VIP)
    assert [n.ifindex for n in entry] == [3, 3]
    assert rib.take_dirty() == {VIP}
    assert rib.take_dirty() == set()


def test_withdraw_shrinks_then_last_removes() -> None:
    rib = rib_with(("192.0.2.11", "192.0.2.11", 65001), ("192.0.2.12", "192.0.2.12", 65001))
    rib.take_dirty()
    res = rib.update("192.0.2.11", [], None, [VIP], 1.0)
    assert res.withdrawn == 1
    assert members(rib) == {"192.0.2.12": EQUAL_WEIGHT}
    rib.update("192.0.2.12", [], None, [VIP], 2.0)
    assert rib.fib_entry(VIP) == ()
    assert VIP not in rib.desired()
    assert rib.take_dirty() == {VIP}
    assert rib.vips == {}


def test_next_hop_not_on_connected_subnet_is_not_used() -> None:
    rib = rib_with(("192.0.2.11", "192.0.2.11", 65001), ("192.0.2.12", "198.18.0.5", 65001))
    assert members(rib) == {"192.0.2.11": EQUAL_WEIGHT}
    # the router's own address is never a next hop
    rib.update("192.0.2.11", [VIP], attrs("192.0.2.1"), [], 1.0)
    assert rib.fib_entry(VIP) == ()
    # a subnet that appears later makes the stored path usable
    rib.set_connected([*CONNECTED, Connected(ip_network("198.18.0.0/24"), 9)])
    assert {str(n.address): n.ifindex for n in rib.fib_entry(VIP)} == {"198.18.0.5": 9}


def test_most_specific_connected_subnet_gives_the_interface() -> None:
    rib = Rib([Connected(ip_network("192.0.2.0/24"), 3), Connected(ip_network("192.0.2.0/28"), 7)])
    assert rib.resolve(ip_address("192.0.2.5")) == 7
    assert rib.resolve(ip_address("192.0.2.50")) == 3
    assert rib.resolve(ip_address("2001:db8::5")) is None


def test_ipv6_uses_mp_reach_global_next_hop_link_local_only_unusable() -> None:
    rib = Rib(CONNECTED)
    rib.peer_up("2001:db8::11", 0.0)
    rib.update("2001:db8::11", [VIP6], attrs("2001:db8::11"), [], 0.0)
    assert members(rib, VIP6) == {"2001:db8::11": EQUAL_WEIGHT}
    ll = PathAttributes(mp_reach=MPReachNLRI(AFI.IPV6, 1, (ip_address("fe80::1"),), ()))
    rib.update("2001:db8::11", [VIP6], ll, [], 1.0)
    assert rib.fib_entry(VIP6) == ()


def test_graceful_shutdown_path_drains_with_smallest_weight() -> None:
    rib = rib_with(("192.0.2.11", "192.0.2.11", 65001), ("192.0.2.12", "192.0.2.12", 65001))
    rib.update("192.0.2.12", [VIP], attrs("192.0.2.12", communities=[GRACEFUL_SHUTDOWN]), [], 1)
    entry = {str(n.address): n for n in rib.fib_entry(VIP)}
    assert entry["192.0.2.12"].draining and entry["192.0.2.12"].weight == DRAIN_WEIGHT
    assert not entry["192.0.2.11"].draining and entry["192.0.2.11"].weight > DRAIN_WEIGHT
    # all draining: all weight 1, still forwarded
    rib.update("192.0.2.11", [VIP], attrs("192.0.2.11", communities=[GRACEFUL_SHUTDOWN]), [], 2)
    assert members(rib) == {"192.0.2.11": 1, "192.0.2.12": 1}


def test_link_bandwidth_sets_weights_only_when_all_carry_it() -> None:
    rib = Rib(CONNECTED)
    for peer, bw in (("192.0.2.11", 1.25e9), ("192.0.2.12", 2.5e9)):
        rib.peer_up(peer, 0.0)
        rib.update(peer, [VIP], attrs(peer, lbw=bw), [], 0.0)
    assert members(rib) == {"192.0.2.11": 128, "192.0.2.12": 255}
    rib.peer_up("192.0.2.13", 0.0)
    rib.update("192.0.2.13", [VIP], attrs("192.0.2.13"), [], 0.0)
    assert set(members(rib).values()) == {EQUAL_WEIGHT}


def test_same_next_hop_from_two_peers_is_one_member() -> None:
    rib = rib_with(("192.0.2.11", "192.0.2.20", 65001), ("192.0.2.12", "192.0.2.20", 65002))
    (only,) = rib.fib_entry(VIP)
    assert only.peers == ("192.0.2.11", "192.0.2.12")
    assert only.weight == 2 * EQUAL_WEIGHT


GR = dict(restart_time=30, gr_families=[IPV4_UNICAST, IPV6_UNICAST])


def test_gr_connection_lost_keeps_stale_until_restart_time() -> None:
    rib = rib_with(("192.0.2.11", "192.0.2.11", 65001), ("192.0.2.12", "192.0.2.12", 65001), **GR)
    assert rib.peer_down("192.0.2.11", 10.0, graceful=True) == 1
    entry = {str(n.address): n for n in rib.fib_entry(VIP)}
    assert entry["192.0.2.11"].stale and entry["192.0.2.11"].weight == EQUAL_WEIGHT
    assert rib.next_deadline() == 40.0
    assert rib.expire(39.9) == []
    assert "192.0.2.11" in members(rib)
    assert rib.expire(40.0) == ["192.0.2.11"]
    assert members(rib) == {"192.0.2.12": EQUAL_WEIGHT}
    assert rib.next_deadline() is None
    assert "192.0.2.11" not in rib.peers


def test_gr_hold_expiry_or_notification_purges_at_once() -> None:
    rib = rib_with(("192.0.2.11", "192.0.2.11", 65001), **GR)
    assert rib.peer_down("192.0.2.11", 10.0, graceful=False) == 0
    assert rib.fib_entry(VIP) == ()
    assert rib.next_deadline() is None


def test_peer_without_gr_purged_at_once_even_on_fin() -> None:
    rib = rib_with(("192.0.2.11", "192.0.2.11", 65001))
    assert rib.peer_down("192.0.2.11", 10.0, graceful=True) == 0
    assert rib.fib_entry(VIP) == ()


def test_gr_reannounce_replaces_stale_and_eor_purges_the_rest() -> None:
    other = Prefix.parse("198.51.100.11/32")
    rib = Rib(CONNECTED)
    rib.peer_up("192.0.2.11", 0.0, **GR)
    rib.update("192.0.2.11", [VIP, other], attrs("192.0.2.11"), [], 0.0)
    rib.peer_down("192.0.2.11", 5.0, graceful=True)
    rib.peer_up("192.0.2.11", 6.0, **GR)
    assert rib.next_deadline() == 36.0
    rib.update("192.0.2.11", [VIP], attrs("192.0.2.11"), [], 7.0)
    assert not rib.fib_entry(VIP)[0].stale
    assert rib.fib_entry(other)[0].stale
    assert rib.end_of_rib("192.0.2.11", IPV4_UNICAST, 8.0) == 1
    assert rib.fib_entry(other) == ()
    assert members(rib) == {"192.0.2.11": EQUAL_WEIGHT}
    assert rib.next_deadline() is None


def test_gr_back_without_capability_purges_stale_at_once() -> None:
    rib = rib_with(("192.0.2.11", "192.0.2.11", 65001), **GR)
    rib.peer_down("192.0.2.11", 5.0, graceful=True)
    rib.peer_up("192.0.2.11", 6.0)
    assert rib.fib_entry(VIP) == ()
    assert rib.next_deadline() is None


def test_gr_only_listed_families_are_kept() -> None:
    rib = Rib(CONNECTED)
    rib.peer_up("2001:db8::11", 0.0, restart_time=30, gr_families=[IPV4_UNICAST])
    rib.update("2001:db8::11", [VIP6], attrs("2001:db8::11"), [], 0.0)
    assert rib.peer_down("2001:db8::11", 1.0, graceful=True) == 0
    assert rib.fib_entry(VIP6) == ()


def test_max_prefixes_stops_at_limit_and_reports() -> None:
    rib = Rib(CONNECTED)
    rib.peer_up("192.0.2.11", 0.0, max_prefixes=2)
    vips = [Prefix.parse(f"198.51.100.{i}/32") for i in range(1, 5)]
    res = rib.update("192.0.2.11", vips[:2], attrs("192.0.2.11"), [], 0.0)
    assert not res.exceeded and res.added == 2
    # re-announcing a known prefix is not growth
    assert not rib.update("192.0.2.11", vips[:2], attrs("192.0.2.11"), [], 0.0).exceeded
    res = rib.update("192.0.2.11", vips[2:], attrs("192.0.2.11"), [], 1.0)
    assert res.exceeded and res.dropped == 2
    assert rib.peers["192.0.2.11"].prefix_count == 2
    rib.peer_down("192.0.2.11", 2.0, graceful=False)
    assert rib.desired() == {}


MAX_STALE = 3.0  # below the restart time the peers advertise (5 s): the local cap applies


def check_invariants(rib: Rib, now: float) -> None:
    """rib.vips and every PeerState.paths are exact mirrors (the same Path objects), nothing is
    empty, counts and stale deadlines agree with the paths."""
    from_peers = {(p, v): path for p, s in rib.peers.items() for v, path in s.paths.items()}
    from_vips = {}
    for vip, paths in rib.vips.items():
        assert paths, vip
        assert len({p.peer for p in paths}) == len(paths), vip  # one path per peer
        for path in paths:
            from_vips[(path.peer, vip)] = path
    assert from_peers.keys() == from_vips.keys()
    assert all(from_peers[k] is from_vips[k] for k in from_peers)
    for peer, s in rib.peers.items():
        assert s.peer == peer
        assert all(path.peer == peer for path in s.paths.values())
        assert s.prefix_count == len(s.paths)
        assert s.stale_count == sum(path.stale for path in s.paths.values())
        # stale paths exist exactly while a deadline is armed, never beyond the local cap
        assert (s.stale_deadline is not None) == (s.stale_count > 0), s
        if s.stale_deadline is not None:
            assert now < s.stale_deadline <= now + MAX_STALE
        # a peer that is down is only kept for its stale paths
        if not s.established:
            assert 0 < s.stale_count == s.prefix_count, s
    assert rib.next_deadline() == min(
        (s.stale_deadline for s in rib.peers.values() if s.stale_deadline is not None),
        default=None,
    )


OPS = ["announce", "withdraw", "drain", "down", "fin", "up", "eor", "martian", "limit", "conn"]


def run_ops(ops, rib: Rib | None = None) -> Rib:
    rib = rib or Rib(CONNECTED, max_stale_time=MAX_STALE)
    now = 0.0
    vips = [Prefix.parse(f"198.51.100.{i}/32") for i in range(4)]
    martians = [Prefix.parse(p) for p in ("127.0.0.1/32", "0.0.0.0/0", "224.0.0.1/32", VIP_IN)]
    seen: set[Prefix] = set()
    for peer, op, i in ops:
        now += 1.0
        before = {v: rib.fib_entry(v) for v in rib.vips}
        state = rib.peers.get(peer)
        count = state.prefix_count if state else 0
        if op == "up":
            rib.peer_up(peer, now, restart_time=5, gr_families=[IPV4_UNICAST])
        elif op == "limit":
            rib.peer_up(peer, now, max_prefixes=2, source=ip_address(peer))
        elif op == "announce":
            rib.update(peer, [vips[i]], attrs(peer), [], now)
        elif op == "martian":
            res = rib.update(peer, [martians[i]], attrs(peer), [], now)
            assert res.ignored or res.refused_count == (i < 3)
        elif op == "drain":
            rib.update(peer, [vips[i]], attrs(peer, communities=[GRACEFUL_SHUTDOWN]), [], now)
        elif op == "withdraw":
            rib.update(peer, [], None, [vips[i]], now)
        elif op in ("down", "fin"):
            rib.peer_down(peer, now, graceful=op == "fin")
        elif op == "eor":
            rib.end_of_rib(peer, IPV4_UNICAST, now)
        elif op == "conn":
            rib.set_connected(CONNECTED[i % 2 :])
        state = rib.peers.get(peer)
        if state is not None and state.max_prefixes is not None and op != "limit":
            # an UPDATE never grows a peer past its limit (a new, lower limit may find it
            # above: the next growth is refused)
            assert state.prefix_count <= max(count, state.max_prefixes)
        rib.expire(now)
        check_invariants(rib, now)
        # take_dirty is incremental: every VIP whose entry changed is in it
        dirty = rib.take_dirty()
        after = {v: rib.fib_entry(v) for v in rib.vips}
        for v in before.keys() | after.keys():
            if before.get(v, ()) != after.get(v, ()):
                assert v in dirty, (op, v)
        seen |= set(rib.vips)
        for vip, entry in rib.desired().items():
            assert all(1 <= n.weight <= 256 for n in entry)
            assert {str(n.address) for n in entry} <= set(rib.paths(vip))
        assert not any(m in rib.vips for m in martians[:3])
    rib.expire(now + 10)
    assert all(not p.stale for s in rib.peers.values() for p in s.paths.values())
    return rib


VIP_IN = "192.0.2.77/32"  # inside a connected subnet: stored, never installed

OP = st.tuples(
    st.sampled_from(["192.0.2.11", "192.0.2.12", "192.0.2.13"]),
    st.sampled_from(OPS),
    st.integers(0, 3),
)


@settings(max_examples=300)
@given(st.lists(OP, max_size=40))
def test_invariants_under_any_sequence(ops) -> None:
    run_ops(ops)


def test_update_while_down_leaves_no_orphan_path() -> None:
    """A late UPDATE after a graceful peer_down used to add a path that expire() then left in
    rib.vips when it dropped the peer's state: an orphan nothing could remove."""
    rib = Rib(CONNECTED)
    rib.peer_up("192.0.2.11", 0.0, restart_time=5, gr_families=[IPV4_UNICAST])
    rib.update("192.0.2.11", [VIP], attrs("192.0.2.11"), [], 1.0)
    rib.peer_down("192.0.2.11", 2.0, graceful=True)
    late = Prefix.parse("198.51.100.11/32")
    rib.update("192.0.2.11", [late], attrs("192.0.2.11"), [], 3.0)
    rib.expire(7.0)
    assert rib.vips == {}
    assert rib.peers == {}
    assert rib.fib_entry(late) == ()


def test_end_of_rib_while_down_leaves_no_empty_peer() -> None:
    rib = Rib(CONNECTED)
    rib.peer_up("192.0.2.11", 0.0, restart_time=5, gr_families=[IPV4_UNICAST])
    rib.update("192.0.2.11", [VIP], attrs("192.0.2.11"), [], 1.0)
    rib.peer_down("192.0.2.11", 2.0, graceful=True)
    assert rib.end_of_rib("192.0.2.11", IPV4_UNICAST, 3.0) == 1
    assert rib.peers == {} and rib.vips == {}
    assert rib.next_deadline() is None


def test_reannouncing_every_stale_path_disarms_the_deadline() -> None:
    rib = Rib(CONNECTED)
    rib.peer_up("192.0.2.11", 0.0, restart_time=5, gr_families=[IPV4_UNICAST])
    rib.update("192.0.2.11", [VIP], attrs("192.0.2.11"), [], 1.0)
    rib.peer_down("192.0.2.11", 2.0, graceful=True)
    rib.peer_up("192.0.2.11", 3.0, restart_time=5, gr_families=[IPV4_UNICAST])
    assert rib.next_deadline() == 8.0
    rib.update("192.0.2.11", [VIP], attrs("192.0.2.11"), [], 4.0)
    assert rib.peers["192.0.2.11"].stale_count == 0
    assert rib.next_deadline() is None


def test_update_from_a_peer_that_is_not_up_is_ignored() -> None:
    rib = Rib(CONNECTED)
    res = rib.update("192.0.2.11", [VIP], attrs("192.0.2.11"), [], 0.0)
    assert res.ignored and res.added == 0
    assert rib.vips == {} and rib.peers == {}


def test_pure_modules_pass_mypy_strict_and_import_no_io() -> None:
    root = Path(__file__).resolve().parents[3]
    files = ["src/bgplb/router/rib.py", "src/bgplb/router/policy.py"]
    for f in files:
        text = (root / f).read_text()
        for banned in ("asyncio", "socket", "subprocess", "pyroute2", "time"):
            assert f"import {banned}\n" not in text, (f, banned)
            assert f"from {banned} " not in text, (f, banned)
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", *files],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stdout + out.stderr


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.sampled_from([None, 10.0, 40.0]), min_size=1, max_size=3),
    st.sampled_from([None, 20.0]),
    st.booleans(),
    st.booleans(),
)
def test_entries_after_announce_predict_what_update_gives(
    bandwidths, new_bandwidth, draining, overlap
) -> None:
    vips = [Prefix.parse(f"198.51.100.{i}/32") for i in range(1, 9)]
    rib = Rib(CONNECTED)
    for i, lbw in enumerate(bandwidths):
        peer = f"192.0.2.{11 + i}"
        rib.peer_up(peer, 0.0, asn=65001 + i, source=ip_address(peer))
        rib.update(peer, vips, attrs(peer, asn=65001 + i, lbw=lbw), [], 0.0)
    new = "192.0.2.20"
    rib.peer_up(new, 0.0, asn=65010, source=ip_address(new))
    if overlap:  # the peer already has one: no prediction
        rib.update(new, vips[:1], attrs(new, asn=65010), [], 0.0)
    communities = (GRACEFUL_SHUTDOWN,) if draining else ()
    a = attrs(new, asn=65010, lbw=new_bandwidth, communities=communities)
    before = rib.fib_entry(vips[1])
    found = rib.entries_after_announce(new, vips, a)
    if overlap:
        assert found is None
        return
    assert found is not None and found[0] == before
    rib.update(new, vips, a, [], 1.0)
    assert all(rib.fib_entry(v) == found[1] for v in vips)
    other = [*vips[:4], Prefix.parse("198.51.100.99/32")]  # one not a VIP yet
    assert rib.entries_after_announce("192.0.2.11", other, a) is None
