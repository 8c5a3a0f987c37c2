"""The FIB's fast path of a server's loss (`Fib.drop_gateways`) on MemoryFib, whose kernel
model keeps resilient buckets: every group that has the gateway and another member is replaced
in place in one batch, the other members' buckets do not move, groups of that gateway alone are
left to the normal path, and the per-VIP results that follow cause no kernel operation."""

from __future__ import annotations

import random
import threading
from ipaddress import ip_address, ip_network

import pytest

from bgplb.linux import diff as d
from bgplb.linux.memfib import Fault, MemoryFib, MemoryKernel

IF = 3
A, B, C, D = (ip_address(f"192.0.2.{i}") for i in (10, 18, 26, 34))
V6A, V6B = ip_address("2001:db8::a"), ip_address("2001:db8::b")


def vips(start: int, count: int) -> list:
    return [ip_network(f"198.18.{(start + i) // 256}.{(start + i) % 256}/32") for i in range(count)]


ALL3, TWO, ALONE, OTHERS = vips(0, 40), vips(100, 20), vips(200, 5), vips(300, 10)


def paths(*gws, weight=64):
    return [(str(g), IF, weight) for g in gws]


def layout() -> dict:
    """40 VIPs on A+B+C, 20 on A+B, 5 on A alone, 10 on B+C (A is not there)."""
    return (
        {v: paths(A, B, C) for v in ALL3}
        | {v: paths(A, B) for v in TWO}
        | {v: paths(A) for v in ALONE}
        | {v: paths(B, C) for v in OTHERS}
    )


def make(group="resilient", buckets=64):
    kernel = MemoryKernel()
    fib = MemoryFib(kernel, group=group, buckets=buckets, clock=lambda: 0.0)
    batches: list[list[d.Op]] = []
    real = fib._run

    def counting(ops):
        batches.append(list(ops))
        return real(ops)

    fib._run = counting  # type: ignore[method-assign]
    fib.engine._run = counting
    return kernel, fib, batches


def group_of(kernel: MemoryKernel, vip) -> int:
    return kernel.routes[(254, vip)].nh_id


def gateway_ids(kernel: MemoryKernel) -> dict:
    return {nh.gateway.address: nh.id for nh in kernel.nexthops.values() if nh.gateway}


def test_a_gateway_loss_replaces_every_affected_group_in_place_in_one_batch():
    kernel, fib, batches = make()
    fib.update(layout())
    ids = gateway_ids(kernel)
    g3, g2, g1, g0 = (group_of(kernel, v[0]) for v in (ALL3, TWO, ALONE, OTHERS))
    buckets = {g: list(kernel.nexthops[g].buckets) for g in (g3, g2, g1, g0)}
    routes = dict(kernel.routes)
    batches.clear()

    result = fib.drop_gateways([A])

    assert result is not None
    assert sorted(batches[0], key=lambda op: op.id) == sorted(
        [
            d.ReplaceGroup(g3, tuple(sorted(((ids[B], 64), (ids[C], 64)))), fib.params),
            d.ReplaceGroup(g2, ((ids[B], 64),), fib.params),
        ],
        key=lambda op: op.id,
    )  # one batch, one operation per group, whatever the number of VIPs
    assert len(batches) == 1  # A's nexthop is still used by the group of A alone: kept
    assert result.ops == batches[0]
    assert kernel.routes == routes  # no route touched
    fwd = kernel.forwarding()
    assert all(set(fwd[v]) == {B, C} for v in ALL3)
    assert all(set(fwd[v]) == {B} for v in TWO)
    assert all(set(fwd[v]) == {A} for v in ALONE)  # single-member group: left alone
    assert kernel.nexthops[g1].buckets == buckets[g1]
    assert kernel.nexthops[g0].buckets == buckets[g0]
    for g in (g3, g2):  # buckets of the members that stay did not move
        after = kernel.nexthops[g].buckets
        assert [b for b, was in zip(after, buckets[g], strict=True) if was != ids[A]] == [
            was for was in buckets[g] if was != ids[A]
        ]
        assert ids[A] not in after


def test_the_rib_results_that_follow_cause_no_further_kernel_operation():
    kernel, fib, _ = make()
    fib.update(layout())
    fib.drop_gateways([A])
    requests = kernel.requests
    groups = {v: group_of(kernel, v) for v in ALL3 + TWO}

    # what the RIB says once it purged A: every multi-member VIP without A
    result = fib.update({v: paths(B, C) for v in ALL3} | {v: paths(B) for v in TWO})

    assert result.ops == [] and not result.failed
    assert kernel.requests == requests  # not one request: the kernel already matched
    assert {v: group_of(kernel, v) for v in ALL3 + TWO} == groups
    # the VIPs of A alone go by the normal path, and A's nexthop with their group
    result = fib.update({v: [] for v in ALONE})
    assert not result.failed
    assert all(v not in kernel.forwarding() for v in ALONE)
    assert A not in gateway_ids(kernel)


def test_a_gateway_no_group_keeps_is_deleted_in_the_fast_path():
    kernel, fib, batches = make()
    fib.update({v: paths(A, B, C) for v in ALL3})
    ids = gateway_ids(kernel)
    batches.clear()
    result = fib.drop_gateways([A])
    assert result is not None
    assert [type(op) for op in result.ops] == [d.ReplaceGroup, d.DeleteNexthop]
    assert batches[1] == [d.DeleteNexthop(ids[A])]  # after the replace, not before
    requests = kernel.requests
    assert fib.update({v: paths(B, C) for v in ALL3}).ops == []
    assert kernel.requests == requests


def test_a_retry_or_resync_before_the_rib_results_does_not_bring_the_gateway_back():
    kernel, fib, _ = make()
    fib.update(layout())
    fib.drop_gateways([A])
    fib.resync()  # a full re-plan from what the FIB was last told (A everywhere)
    fwd = kernel.forwarding()
    assert all(set(fwd[v]) == {B, C} for v in ALL3)
    assert all(set(fwd[v]) == {B} for v in TWO)
    assert all(v not in fwd for v in ALONE)  # what the RIB's purge will ask anyway
    assert A not in gateway_ids(kernel)


def test_an_update_naming_the_gateway_again_brings_it_back():
    kernel, fib, _ = make()
    fib.update(layout())
    fib.drop_gateways([A])
    fib.update({v: paths(B, C) for v in ALL3})
    # the server returns: its VIPs name A again, its group is replaced in place
    g3 = group_of(kernel, ALL3[0])
    result = fib.update({v: paths(A, B, C) for v in ALL3})
    assert [type(op) for op in result.ops] == [d.ReplaceGroup]  # A's nexthop: still used
    assert all(group_of(kernel, v) == g3 for v in ALL3)
    assert all(set(kernel.forwarding()[v]) == {A, B, C} for v in ALL3)
    assert fib.engine.gone == frozenset()
    fib.resync()
    assert all(set(kernel.forwarding()[v]) == {A, B, C} for v in ALL3)


def test_multipath_groups_and_ipv6_gateways_too():
    kernel, fib, _ = make(group="multipath")
    v6 = [ip_network(f"2001:db8:100::{i}/128") for i in range(1, 6)]
    fib.update({v: paths(A, B) for v in ALL3} | {v: paths(V6A, V6B) for v in v6})
    result = fib.drop_gateways([A, V6A])
    assert result is not None
    assert sum(isinstance(op, d.ReplaceGroup) for op in result.ops) == 2
    fwd = kernel.forwarding()
    assert all(set(fwd[v]) == {B} for v in ALL3)
    assert all(set(fwd[v]) == {V6B} for v in v6)


def test_an_unknown_gateway_or_nothing_changes_nothing():
    _, fib, batches = make()
    fib.update(layout())
    batches.clear()
    assert fib.drop_gateways([D]).ops == []
    assert fib.drop_gateways([]).ops == []
    assert batches == []


def test_a_busy_fib_is_not_waited_for():
    kernel, fib, _ = make()
    fib.update(layout())
    taken, release = threading.Event(), threading.Event()

    def hold():
        with fib._lock:
            taken.set()
            release.wait(5)

    t = threading.Thread(target=hold)
    t.start()
    try:
        taken.wait(5)
        assert fib.drop_gateways([A]) is None
    finally:
        release.set()
        t.join(5)
    assert all(set(kernel.forwarding()[v]) == {A, B, C} for v in ALL3)


def test_a_refused_replace_is_left_to_the_normal_path():
    kernel, fib, _ = make()
    fib.update(layout())
    g3 = group_of(kernel, ALL3[0])
    kernel.inject(Fault(17, op=d.ReplaceGroup, id=g3, once=True))
    result = fib.drop_gateways([A])
    assert result is not None
    assert all(set(kernel.forwarding()[v]) == {B} for v in TWO)  # the other group changed
    assert all(set(kernel.forwarding()[v]) == {A, B, C} for v in ALL3)
    result = fib.update({v: paths(B, C) for v in ALL3})  # the RIB's results fix it
    assert not result.failed
    assert all(set(kernel.forwarding()[v]) == {B, C} for v in ALL3)
    assert all(group_of(kernel, v) == g3 for v in ALL3)


def test_while_deferring_adopted_paths_of_the_gateway_go_too():
    kernel = MemoryKernel()
    MemoryFib(kernel, buckets=64).update({v: paths(A, B) for v in ALL3})
    fib = MemoryFib(kernel, buckets=64, clock=lambda: 0.0)
    assert fib.adopt().vips == len(ALL3)
    fib.update({v: paths(B) for v in ALL3[:5]})  # B is back; A's adopted paths still hold
    assert all(set(kernel.forwarding()[v]) == {A, B} for v in ALL3)
    fib.drop_gateways([A])
    assert all(set(kernel.forwarding()[v]) == {B} for v in ALL3)
    requests = kernel.requests
    fib.update({v: paths(B) for v in ALL3})
    assert kernel.requests == requests


@pytest.mark.parametrize("seed", range(20))
def test_random_layouts_lose_exactly_the_gateway_and_keep_the_other_buckets(seed):
    rnd = random.Random(seed)
    gws = [A, B, C, D]
    kernel, fib, _ = make(buckets=32)
    sets = [tuple(g for g in gws if rnd.random() < 0.6) or (A,) for _ in range(6)]
    want = {v: paths(*rnd.choice(sets), weight=rnd.choice((1, 64, 200))) for v in vips(0, 60)}
    fib.update(want)
    lost = rnd.choice(gws)
    ids = gateway_ids(kernel)
    before = {g: list(nh.buckets) for g, nh in kernel.nexthops.items() if nh.members}
    fwd = kernel.forwarding()
    fib.drop_gateways([lost])
    after = kernel.forwarding()
    for v, gw in fwd.items():
        expected = {g: w for g, w in gw.items() if g != lost} or gw  # alone: left as it was
        assert after[v] == expected
    for g, old in before.items():
        new = kernel.nexthops[g].buckets
        assert [b for b, o in zip(new, old, strict=True) if o != ids.get(lost)] == [
            o for o in old if o != ids.get(lost)
        ]
    requests = kernel.requests
    rest = {v: [(str(g), IF, w) for g, w in fwd[v].items() if g != lost] for v in want}
    result = fib.update({v: p for v, p in rest.items() if p})
    assert result.ops == [] and kernel.requests == requests


def test_vips_given_as_prefixes_are_one_network_object_from_call_to_call():
    from bgplb.bgp.prefix import Prefix

    kernel, fib, _ = make()
    prefixes = [Prefix.parse(str(v)) for v in ALL3]
    fib.update({p: paths(A, B) for p in prefixes})
    assert set(kernel.forwarding()) == set(ALL3)
    nets = {p: fib.engine.networks[p] for p in prefixes}
    assert all(nets[p] == p.network for p in prefixes)
    result = fib.update({p: paths(B) for p in prefixes})
    assert [type(op) for op in result.ops] == [d.ReplaceGroup, d.DeleteNexthop]
    assert all(fib.engine.networks[p] is nets[p] for p in prefixes)  # not built again
    assert all(any(w is nets[p] for w in fib.engine.wanted) for p in prefixes[:3])
    fib.update({p: [] for p in prefixes})  # withdrawn: forgotten
    assert fib.engine.networks == {} and kernel.forwarding() == {}


# -- regroup: many VIPs changing the same way -------------------------------------------------


def test_a_server_announcing_every_vip_of_a_group_again_replaces_it_in_place():
    kernel, fib, batches = make()
    fib.update({v: paths(B, C) for v in ALL3} | {v: paths(B, C) for v in TWO})
    group = group_of(kernel, ALL3[0])
    buckets = list(kernel.nexthops[group].buckets)
    ids = gateway_ids(kernel)
    batches.clear()

    result = fib.regroup([(ALL3[0], paths(B, C), paths(A, B, C), len(ALL3) + len(TWO))])

    assert [type(op).__name__ for batch in batches for op in batch] == [
        "AddNexthop",
        "ReplaceGroup",
    ]
    assert len(result.ops) == 2 and fib.engine.fast_moves == 1
    assert group_of(kernel, ALL3[0]) == group  # no route moved
    after = kernel.nexthops[group].buckets
    # buckets only went to A: none moved between B and C
    assert all(a == b for a, b in zip(after, buckets, strict=True) if a in (ids[B], ids[C]))
    assert set(kernel.forwarding()[ALL3[0]]) == {A, B, C}
    batches.clear()
    assert fib.update({v: paths(A, B, C) for v in ALL3 + TWO}).ops == []
    assert batches == []


def test_a_group_whose_vips_do_not_all_move_is_left_to_update():
    kernel, fib, batches = make()
    fib.update({v: paths(B, C) for v in ALL3})
    batches.clear()
    assert fib.regroup([(ALL3[0], paths(B, C), paths(A, B, C), len(ALL3) - 1)]).ops == []
    assert batches == [] and fib.engine.fast_moves == 0
    changes = {v: paths(A, B, C) for v in ALL3[:-1]}
    fib.update(changes)
    fwd = kernel.forwarding()
    assert all(set(fwd[v]) == {A, B, C} for v in ALL3[:-1])
    assert set(fwd[ALL3[-1]]) == {B, C}


def test_a_withdrawal_of_every_vip_of_a_group_replaces_it_without_the_server():
    kernel, fib, batches = make()
    fib.update(layout())
    group = group_of(kernel, TWO[0])
    buckets = list(kernel.nexthops[group].buckets)
    ids = gateway_ids(kernel)
    fib.regroup([(TWO[0], paths(A, B), paths(B), len(TWO))])
    after = kernel.nexthops[group].buckets
    assert group_of(kernel, TWO[0]) == group
    assert all(a == b for a, b in zip(after, buckets, strict=True) if b == ids[B])
    batches.clear()
    assert fib.update({v: paths(B) for v in TWO}).ops == []
    assert {set(kernel.forwarding()[v]) == {A, B, C} for v in ALL3} == {True}


def test_regroup_skips_empty_sets_a_refused_replace_and_while_deferring():
    kernel, fib, _ = make()
    fib.update({v: paths(B, C) for v in ALL3})
    assert fib.regroup([(ALL3[0], paths(B, C), [], len(ALL3))]).ops == []
    assert fib.regroup([(ALL3[0], [], paths(B, C), len(ALL3))]).ops == []
    kernel.inject(Fault(22, op=d.ReplaceGroup, once=True))
    ops = fib.regroup([(ALL3[0], paths(B, C), paths(A, B, C), len(ALL3))]).ops
    assert [type(op) for op in ops] == [d.AddNexthop]  # the replace was refused
    assert fib.engine.fast_moves == 0
    result = fib.update({v: paths(A, B, C) for v in ALL3})  # the normal path does it
    assert not result.failed
    assert all(set(kernel.forwarding()[v]) == {A, B, C} for v in ALL3)
    fib.engine.adopted = {}
    assert fib.regroup([(ALL3[0], paths(A, B, C), paths(B, C), len(ALL3))]).ops == []


def test_regroup_after_a_drop_names_the_gateway_again():
    kernel, fib, batches = make()
    fib.update({v: paths(A, B, C) for v in ALL3})
    group = group_of(kernel, ALL3[0])
    fib.drop_gateways([A])
    fib.update({v: paths(B, C) for v in ALL3})  # the RIB's results: nothing to do
    assert fib.regroup([(ALL3[0], paths(B, C), paths(A, B, C), len(ALL3))]).ops
    assert group_of(kernel, ALL3[0]) == group
    assert all(set(kernel.forwarding()[v]) == {A, B, C} for v in ALL3)
    batches.clear()
    assert fib.update({v: paths(A, B, C) for v in ALL3}).ops == []


@pytest.mark.parametrize("seed", range(30))
def test_random_group_moves_change_only_the_movers_and_keep_the_stayers_buckets(seed):
    rnd = random.Random(seed)
    gws = [A, B, C, D]
    kernel, fib, _ = make(buckets=32)
    sets = [tuple(g for g in gws if rnd.random() < 0.6) or (A,) for _ in range(6)]
    want = {v: paths(*rnd.choice(sets)) for v in vips(0, 60)}
    fib.update(want)
    old_set = rnd.choice(sorted({tuple(p) for p in want.values()}))
    movers = [v for v, p in want.items() if tuple(p) == old_set]
    if rnd.random() < 0.3 and len(movers) > 1:
        movers = movers[1:]  # not every VIP of the group: regroup must leave it alone
    new_set = paths(*(tuple(g for g in gws if rnd.random() < 0.5) or (B,)))
    before = {g: list(nh.buckets) for g, nh in kernel.nexthops.items() if nh.members}
    others = {v: kernel.forwarding()[v] for v in want if v not in movers}
    routes = {v: group_of(kernel, v) for v in want}
    fib.regroup([(movers[0], list(old_set), new_set, len(movers))])
    after = kernel.forwarding()
    whole = len(movers) == sum(1 for p in want.values() if tuple(p) == old_set)
    changed = sorted(new_set) != sorted(old_set)
    assert fib.engine.fast_moves == (1 if whole and changed else 0)
    assert {v: after[v] for v in others} == others  # nobody else's forwarding changed
    for g, old in before.items():  # a member that stays keeps every bucket it had
        if g not in kernel.nexthops:
            continue
        new = kernel.nexthops[g].buckets
        members = {m for m, _ in kernel.nexthops[g].members}
        assert all(n == o for n, o in zip(new, old, strict=True) if o in members)
    assert {v: group_of(kernel, v) for v in want} == routes  # no route moved
    fib.update({v: new_set for v in movers})
    final = kernel.forwarding()
    wanted = {ip_address(g): w for g, _, w in new_set}
    assert all(final[v] == wanted for v in movers)
    assert {v: final[v] for v in others} == others
