"""Pure pinning planner (bgplb.router.pinning): states, slots, groups, ordering. Fake clock."""

from __future__ import annotations

from ipaddress import ip_address, ip_network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bgplb.router.pinning import (
    GroupMember,
    PinState,
    Planner,
    Server,
    deposit,
    extract,
    mask_values,
    merge_pins,
)
from bgplb.router.rib import FibNexthop

VIP = ip_network("198.51.100.10/32")
VIP6 = ip_network("2001:db8:100::10/128")
S1, S2, S3 = (ip_address(f"192.0.2.{8 * i + 2}") for i in (1, 2, 3))


def nh(addr, ifindex=None, weight=64, draining=False, peer=None):
    ifindex = ifindex if ifindex is not None else int(addr) % 100
    return FibNexthop(addr, ifindex, weight, draining, False, (peer or str(addr),))


def servers(plan):
    return {p.server.address: p for p in plan.pins}


def test_active_servers_are_pinned_and_in_the_group():
    p = Planner(mask=0xFF00, tables=(100, 199))
    plan = p.plan({VIP: [nh(S1), nh(S2), nh(S3)]}, {str(S1), str(S2), str(S3)}, 0.0)
    pins = servers(plan)
    assert [pins[s].slot for s in (S1, S2, S3)] == [1, 2, 3]
    assert [pins[s].mark for s in (S1, S2, S3)] == [0x100, 0x200, 0x300]
    assert [pins[s].table for s in (S1, S2, S3)] == [100, 101, 102]
    assert all(p.vips == (VIP,) for p in plan.pins)
    assert [m.address for m in plan.groups[VIP]] == [S1, S2, S3]


def test_draining_leaves_the_group_keeps_its_pin_then_lingers_then_goes():
    p = Planner(drain_linger=30.0)
    peers = {str(S1), str(S2), str(S3)}
    p.plan({VIP: [nh(S1), nh(S2), nh(S3)]}, peers, 0.0)
    plan = p.plan({VIP: [nh(S1), nh(S2), nh(S3, weight=1, draining=True)]}, peers, 1.0)
    assert [m.address for m in plan.groups[VIP]] == [S1, S2]
    assert S3 in servers(plan)
    assert plan.states[(Server(S3, nh(S3).ifindex), VIP)] is PinState.DRAINING
    # withdrawn while its session is up: lingers
    plan = p.plan({VIP: [nh(S1), nh(S2)]}, peers, 10.0)
    assert S3 in servers(plan) and plan.next_deadline == 40.0
    plan = p.plan({VIP: [nh(S1), nh(S2)]}, peers, 39.9)
    assert S3 in servers(plan)
    plan = p.plan({VIP: [nh(S1), nh(S2)]}, peers, 40.0)
    assert S3 not in servers(plan) and plan.next_deadline is None


def test_withdrawn_while_active_or_session_down_goes_at_once():
    p = Planner(drain_linger=30.0)
    peers = {str(S1), str(S2), str(S3)}
    p.plan({VIP: [nh(S1), nh(S2), nh(S3)]}, peers, 0.0)
    plan = p.plan({VIP: [nh(S1), nh(S2)]}, peers, 1.0)  # health failure: plain withdraw
    assert S3 not in servers(plan)
    # draining, then its session dies (BFD, hold timer, closed): no linger
    p.plan({VIP: [nh(S1), nh(S2, draining=True, weight=1)]}, peers, 2.0)
    plan = p.plan({VIP: [nh(S1)]}, {str(S1)}, 3.0)
    assert set(servers(plan)) == {S1}


def test_all_draining_stay_in_the_group():
    p = Planner()
    plan = p.plan(
        {VIP: [nh(S1, draining=True, weight=1), nh(S2, draining=True, weight=1)]},
        {str(S1), str(S2)},
        0.0,
    )
    assert [m.address for m in plan.groups[VIP]] == [S1, S2]
    assert set(servers(plan)) == {S1, S2}


def test_undrain_rejoins_with_the_same_slot():
    p = Planner()
    peers = {str(S1), str(S2)}
    a = p.plan({VIP: [nh(S1), nh(S2)]}, peers, 0.0)
    p.plan({VIP: [nh(S1), nh(S2, draining=True)]}, peers, 1.0)
    b = p.plan({VIP: [nh(S1), nh(S2)]}, peers, 2.0)
    assert a.pins == b.pins
    assert b.groups[VIP] == (
        GroupMember(S1, nh(S1).ifindex, 64),
        GroupMember(S2, nh(S2).ifindex, 64),
    )


def test_before_is_the_union_so_tables_exist_before_and_after_group_changes():
    p = Planner()
    peers = {str(S1), str(S2), str(S3)}
    a = p.plan({VIP: [nh(S1), nh(S2)]}, peers, 0.0)
    b = p.plan({VIP: [nh(S1), nh(S3)]}, peers, 1.0)  # S2 leaves, S3 joins
    before = b.before(a.pins)
    assert {x.server.address for x in before} == {S1, S2, S3}
    assert len({x.slot for x in before}) == 3  # a slot freed now is not reused now


def test_freed_slots_are_reused_last():
    p = Planner(mask=0x3, tables=(100, 199))  # 3 slots
    assert p.capacity == 3
    p.plan({VIP: [nh(S1)]}, {str(S1)}, 0.0)
    p.plan({VIP: [nh(S2)]}, {str(S2)}, 1.0)  # S1 freed slot 1 at t=1; S2 gets slot 2
    plan = p.plan({VIP: [nh(S2), nh(S3)]}, {str(S2), str(S3)}, 2.0)
    assert servers(plan)[S3].slot == 3  # never-used before freed
    s4 = ip_address("192.0.2.50")
    plan = p.plan({VIP: [nh(S2), nh(S3), nh(s4)]}, set(), 3.0)
    assert servers(plan)[s4].slot == 1
    s5 = ip_address("192.0.2.51")
    plan = p.plan({VIP: [nh(S2), nh(S3), nh(s4), nh(s5)]}, set(), 4.0)
    assert s5 not in servers(plan)
    assert any("no free pinning slot" in r for r in plan.refused)
    assert nh(s5).address in [m.address for m in plan.groups[VIP]]  # still in the group


def test_ipv4_vip_via_ipv6_next_hop_is_refused_clearly():
    p = Planner()
    v6 = ip_address("2001:db8:1::2")
    plan = p.plan({VIP: [nh(S1), nh(v6, 7, draining=True)]}, {str(S1)}, 0.0)
    assert set(servers(plan)) == {S1}
    assert plan.refused and "another address family" in plan.refused[0]
    # not pinned: a draining unpinnable member keeps its place (weight 1) in the group
    assert [m.address for m in plan.groups[VIP]] == [S1, v6]


def test_one_server_two_vips_one_slot():
    p = Planner()
    s6 = ip_address("2001:db8:1::2")
    plan = p.plan(
        {VIP: [nh(S1)], ip_network("198.51.100.11/32"): [nh(S1)], VIP6: [nh(s6, 9)]}, set(), 0
    )
    pins = servers(plan)
    assert pins[S1].vips == (VIP, ip_network("198.51.100.11/32"))
    assert pins[s6].vips == (VIP6,)


def test_adopt_keeps_kernel_slots():
    p = Planner()
    p.adopt({Server(S2, nh(S2).ifindex): 5}, until=100.0)
    plan = p.plan({VIP: [nh(S1), nh(S2)]}, set(), 0.0)
    assert servers(plan)[S2].slot == 5 and servers(plan)[S1].slot == 1


def test_adopted_slots_wait_for_their_server_until_the_grace_ends():
    p = Planner(mask=0x3, tables=(100, 199))  # 3 slots
    a, b = Server(S1, nh(S1).ifindex), Server(S2, nh(S2).ifindex)
    p.adopt({a: 1, b: 2}, until=50.0)
    plan = p.plan({VIP: [nh(S3)]}, set(), 1.0)  # S3 first: must not take 1 or 2
    assert servers(plan)[S3].slot == 3
    plan = p.plan({VIP: [nh(S3), nh(S2)]}, set(), 2.0)
    assert servers(plan)[S2].slot == 2 and S1 not in servers(plan)
    s4 = ip_address("192.0.2.50")
    plan = p.plan({VIP: [nh(S3), nh(S2), nh(s4)]}, set(), 3.0)
    assert s4 not in servers(plan)  # slot 1 still reserved for S1
    plan = p.plan({VIP: [nh(S3), nh(S2), nh(s4)]}, set(), 50.0)
    assert s4 not in servers(plan)  # freed at 50, never handed out in the same plan
    plan = p.plan({VIP: [nh(S3), nh(S2), nh(s4)]}, set(), 51.0)
    assert servers(plan)[s4].slot == 1


def test_bad_settings():
    with pytest.raises(ValueError, match="reserved"):
        Planner(tables=(200, 300))
    with pytest.raises(ValueError, match="mask"):
        Planner(mask=0)
    with pytest.raises(ValueError, match="drain_linger"):
        Planner(drain_linger=-1)


def test_merge_pins_unites_vips():
    p = Planner()
    a = p.plan({VIP: [nh(S1)]}, set(), 0.0)
    b = p.plan({ip_network("198.51.100.11/32"): [nh(S1)]}, set(), 1.0)
    (m,) = merge_pins(a.pins, b.pins)
    assert m.vips == (VIP, ip_network("198.51.100.11/32"))


@given(st.integers(1, 0xFFFFFFFF), st.integers(0, 0xFFFFFFFF))
def test_deposit_extract_roundtrip(mask, value):
    v = value % (mask_values(mask) + 1)
    m = deposit(v, mask)
    assert m & ~mask == 0
    assert extract(m, mask) == v


@given(
    st.lists(st.tuples(st.integers(0, 5), st.booleans(), st.booleans()), min_size=0, max_size=6),
    st.floats(0, 100),
)
def test_properties_marks_unique_and_group_nonempty(members, now):
    p = Planner(drain_linger=5.0)
    entry = {}
    for idx, draining, _ in members:
        entry[idx] = nh(ip_address(f"192.0.2.{idx + 2}"), 1, 1 if draining else 64, draining)
    plan = p.plan({VIP: list(entry.values())} if entry else {}, set(), now)
    marks = [x.mark for x in plan.pins]
    assert len(marks) == len(set(marks))
    assert all(m & ~p.mask == 0 and m for m in marks)
    if entry:
        assert plan.groups[VIP]
        in_group = {m.address for m in plan.groups[VIP]}
        active = {n.address for n in entry.values() if not n.draining}
        assert active <= in_group
