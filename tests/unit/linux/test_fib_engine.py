"""The FIB engine (bgplb.linux.fibapi) on MemoryFib: groups per path set, in-place replaces,
fault isolation, retries with backoff, no orphans, restart adoption. No root needed.

MemoryKernel enforces the kernel rules the FIB relies on (bgplb.linux.memfib docstring); the
same cases run against the real kernel in tests/interop/test_linux_fib.py.
"""

from __future__ import annotations

import errno
from ipaddress import ip_address, ip_network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bgplb.linux import diff as d
from bgplb.linux.fibapi import RETRY_MAX, backoff
from bgplb.linux.memfib import Fault, MemoryFib, MemoryKernel

GW = [ip_address(f"192.0.2.{i}") for i in range(2, 8)]
VIPS = [ip_network(f"198.51.100.{i}/32") for i in range(1, 41)]


def paths(*which, weight=64):
    return [(str(GW[i]), 2, weight) for i in which]


def fwd(*which, weight=64):
    return {GW[i]: weight for i in which}


def make(**kw):
    kernel = MemoryKernel()
    kw.setdefault("buckets", 16)
    return kernel, MemoryFib(kernel, **kw)


def orphans(fib: MemoryFib):
    """Groups without a route of ours and single nexthops without a group of ours."""
    state = fib.installed()
    used_groups = set(state.routes.values())
    used_nh = {m for g in state.groups.values() for m, _ in g.members}
    return (set(state.groups) - used_groups, set(state.nexthops) - used_nh)


def group_of(fib, vip):
    return fib.installed().routes[vip]


def test_vips_with_the_same_paths_share_one_group():
    kernel, fib = make()
    result = fib.update({v: paths(0, 1, 2) for v in VIPS}, now=0)
    assert not result.failed
    assert kernel.counts(200) == (3, 1, len(VIPS))
    assert len({group_of(fib, v) for v in VIPS}) == 1


def test_a_server_leaving_all_vips_is_one_replace_and_keeps_other_buckets():
    kernel, fib = make()
    fib.update({v: paths(0, 1, 2) for v in VIPS}, now=0)
    gid = group_of(fib, VIPS[0])
    before = list(kernel.nexthops[gid].buckets)
    result = fib.update({v: paths(0, 1) for v in VIPS}, now=1)
    assert [type(op) for op in result.ops] == [d.ReplaceGroup, d.DeleteNexthop]
    after = kernel.nexthops[gid].buckets
    gone = result.ops[-1].id
    assert all(a == b for a, b in zip(before, after, strict=True) if a != gone)
    assert gone not in after
    assert kernel.forwarding()[VIPS[0]] == fwd(0, 1)
    assert group_of(fib, VIPS[-1]) == gid


def test_diverging_minority_moves_and_comes_back():
    kernel, fib = make()
    vips = VIPS[:10]
    fib.update({v: paths(0, 1) for v in vips}, now=0)
    gid = group_of(fib, vips[0])
    result = fib.update({v: paths(0, 1, 2) for v in vips[:3]}, now=1)  # 3 of 10 gain a server
    types = [type(op) for op in result.ops]
    assert types == [d.AddNexthop, d.AddGroup, d.ReplaceRoute, d.ReplaceRoute, d.ReplaceRoute]
    assert all(group_of(fib, v) == gid for v in vips[3:])
    assert kernel.forwarding()[vips[0]] == fwd(0, 1, 2)
    assert kernel.forwarding()[vips[9]] == fwd(0, 1)
    moved = group_of(fib, vips[0])
    # they all return to the original set the same way: their group is replaced in place
    # (their flows to servers 0 and 1 stay), not merged into the original one (that would
    # move them); two groups then have the same set
    result = fib.update({v: paths(0, 1) for v in vips[:3]}, now=2)
    assert [type(op) for op in result.ops] == [d.ReplaceGroup, d.DeleteNexthop]
    assert all(group_of(fib, v) == moved for v in vips[:3])
    # a new VIP with that set joins the group with the lowest id
    fib.update({VIPS[30]: paths(0, 1)}, now=3)
    assert group_of(fib, VIPS[30]) == min(gid, moved)
    assert orphans(fib) == (set(), set())


def test_majority_change_replaces_in_place_and_unchanged_vips_move_off():
    kernel, fib = make()
    vips = VIPS[:10]
    fib.update({v: paths(0, 1, 2) for v in vips}, now=0)
    gid = group_of(fib, vips[0])
    result = fib.update({v: paths(0, 1) for v in vips[:7]}, now=1)  # 7 of 10 lose server 2
    assert all(group_of(fib, v) == gid for v in vips[:7])
    moved = {group_of(fib, v) for v in vips[7:]}
    assert len(moved) == 1 and gid not in moved
    assert kernel.forwarding()[vips[0]] == fwd(0, 1)
    assert kernel.forwarding()[vips[9]] == fwd(0, 1, 2)
    # the unchanged VIPs moved *before* the replace (never saw the majority's new set)
    kinds = [type(op) for op in result.ops]
    assert kinds.index(d.ReplaceRoute) < kinds.index(d.ReplaceGroup)


def test_a_foreign_route_fails_only_its_vip_and_removals_still_run():
    kernel, fib = make()
    fib.update({VIPS[0]: paths(0), VIPS[1]: paths(0, 1)}, now=0)
    kernel.add_route(VIPS[5], None, protocol=4)  # someone's static route at a VIP
    result = fib.update({VIPS[5]: paths(0, 2), VIPS[0]: []}, now=1)
    assert set(result.failed) == {VIPS[5]}
    err = result.failed[VIPS[5]]
    assert err.errno == errno.EEXIST and err.attempts == 1 and err.next_retry == 2.0
    assert VIPS[0] not in kernel.forwarding()  # the withdrawal went through
    assert orphans(fib) == (set(), set())
    counts = kernel.counts(200)
    for t in range(2, 12):  # retries never leak objects
        fib.retry_due(now=1000.0 * t)
        assert kernel.counts(200) == counts
        assert orphans(fib) == (set(), set())
    assert fib.failures()[VIPS[5]].attempts == 11


def test_a_rejected_next_hop_fails_only_the_vips_that_need_it():
    kernel, fib = make()
    kernel.inject(Fault(errno.EINVAL, op=d.AddNexthop, gateway=GW[3]))
    result = fib.update({VIPS[0]: paths(0, 3), VIPS[1]: paths(0, 1), VIPS[2]: paths(3)}, now=0)
    assert set(result.failed) == {VIPS[0], VIPS[2]}
    assert kernel.forwarding() == {VIPS[1]: fwd(0, 1)}
    assert orphans(fib) == (set(), set())
    assert fib.next_retry() == 1.0
    assert fib.retry_due(now=0.5).ops == []  # not due yet
    kernel.faults.clear()
    result = fib.retry_due(now=1.0)
    assert not result.failed and fib.failures() == {}
    assert kernel.forwarding()[VIPS[0]] == fwd(0, 3)


def test_a_shared_group_whose_replace_fails_marks_its_vips_and_retries():
    kernel, fib = make()
    vips = VIPS[:5]
    fib.update({v: paths(0, 1) for v in vips}, now=0)
    gid = group_of(fib, vips[0])
    kernel.inject(Fault(errno.EBUSY, op=d.ReplaceGroup, id=gid, once=True))
    result = fib.update({v: paths(0, 1, 2) for v in vips} | {VIPS[20]: paths(4)}, now=1)
    assert set(result.failed) == set(vips)
    assert kernel.forwarding()[VIPS[20]] == fwd(4)  # an unrelated change went through
    assert kernel.forwarding()[vips[0]] == fwd(0, 1)
    assert orphans(fib) == (set(), set())
    result = fib.retry_due(now=2)
    assert not result.failed
    assert [type(op) for op in result.ops] == [d.AddNexthop, d.ReplaceGroup]
    assert all(kernel.forwarding()[v] == fwd(0, 1, 2) for v in vips)


def test_backoff_doubles_to_a_cap():
    assert [backoff(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert backoff(10_000) == RETRY_MAX


def test_failures_back_off_exponentially():
    kernel, fib = make()
    kernel.inject(Fault(errno.EPERM, vip=VIPS[0]))
    fib.update({VIPS[0]: paths(0)}, now=0)
    seen = []
    now = 0.0
    for _ in range(8):
        e = fib.failures()[VIPS[0]]
        seen.append(e.next_retry - now)
        now = e.next_retry
        fib.retry_due(now)
    assert seen == [1, 2, 4, 8, 16, 32, 60, 60]


def test_adoption_is_additive_until_the_deferral_ends():
    kernel, first = make()
    first.update({VIPS[0]: paths(0, 1, 2), VIPS[1]: paths(0, 1, 2), VIPS[2]: paths(3)}, now=0)
    before = kernel.counts(200)
    fib = MemoryFib(kernel, buckets=16)  # the restarted router
    adopted = fib.adopt()
    assert adopted.vips == 3 and adopted.groups == 2
    assert adopted.gateways == {(GW[i], 4) for i in (0, 1, 2, 3)}
    assert fib.deferring
    # server 0 comes back first and announces VIPS[0] only
    result = fib.update({VIPS[0]: paths(0)}, now=1)
    assert result.ops == [] and kernel.counts(200) == before
    # a withdrawal of a VIP never re-learned does not remove it either
    fib.update({VIPS[2]: []}, now=1)
    assert kernel.forwarding()[VIPS[2]] == fwd(3)
    # a new VIP is added
    fib.update({VIPS[9]: paths(0)}, now=1)
    assert kernel.forwarding()[VIPS[9]] == fwd(0)
    # server 0's peer sent End-of-RIB: it dropped VIPS[1]; servers 1 and 2 still hold it
    result = fib.release_gateways({(GW[0], 4)}, now=1.5)
    assert [type(op) for op in result.ops] == [d.AddGroup, d.ReplaceRoute]
    assert kernel.forwarding()[VIPS[1]] == fwd(1, 2)
    assert kernel.forwarding()[VIPS[0]] == fwd(0, 1, 2)  # announced by 0, 1 and 2 adopted
    fib.finish_deferral(now=2)
    assert not fib.deferring
    assert kernel.forwarding() == {VIPS[0]: fwd(0), VIPS[9]: fwd(0)}
    assert orphans(fib) == (set(), set())


def test_watcher_reinstalls_what_someone_else_deletes():
    kernel, fib = make()
    fib.start_watching()
    fib.update({v: paths(0, 1) for v in VIPS[:3]}, now=0)
    assert fib.process_events() == []  # our own changes are not notified
    kernel.del_nexthop(group_of(fib, VIPS[0]))  # takes the routes with it
    assert kernel.forwarding() == {}
    assert fib.process_events()
    assert all(kernel.forwarding()[v] == fwd(0, 1) for v in VIPS[:3])
    assert fib.reinstalls == 1


def test_status_is_counters_and_caps_the_failed_list():
    kernel, fib = make()
    kernel.inject(Fault(errno.EPERM, op=d.AddRoute))
    fib.update({ip_network(f"203.0.113.{i}/32"): paths(0) for i in range(150)}, now=0)
    status = fib.status(now=0.25)
    assert status["failed_count"] == 150 and len(status["failed"]) == 100
    one = next(iter(status["failed"].values()))
    assert one["errno"] == errno.EPERM and one["error"] == "EPERM"
    assert one["attempts"] == 1 and one["retry_in"] == 0.75
    assert status["vips"] == 0 and status["groups"] == 0  # the unused group was removed


# --- the kernel model itself ----------------------------------------------------------------------
def test_memory_kernel_rules():
    k = MemoryKernel()
    g1, g2 = d.Gateway(GW[0], 2), d.Gateway(GW[1], 2)
    res = d.GroupParams(buckets=8)
    k.add_nexthop(1, g1, 200)
    with pytest.raises(OSError) as exc:
        k.add_nexthop(1, g2, 200)
    assert exc.value.errno == errno.EEXIST
    with pytest.raises(OSError) as exc:
        k.add_group(10, ((1, 1), (2, 1)), res, 200)  # member 2 missing
    assert exc.value.errno == errno.EINVAL
    k.add_nexthop(2, g2, 200)
    k.add_group(10, ((1, 1), (2, 1)), res, 200)
    with pytest.raises(OSError) as exc:
        k.add_group(10, ((1, 1),), d.GroupParams(buckets=16), 200, replace=True)
    assert exc.value.errno == errno.EINVAL
    k.add_route(VIPS[0], 10, 200)
    with pytest.raises(OSError) as exc:
        k.add_route(VIPS[0], 10, 200)
    assert exc.value.errno == errno.EEXIST
    with pytest.raises(OSError) as exc:
        k.del_route(VIPS[0], protocol=4)  # not that protocol's route
    assert exc.value.errno == errno.ESRCH
    before = list(k.nexthops[10].buckets)
    k.del_nexthop(2)  # a member leaves: only its buckets move
    assert k.nexthops[10].buckets == [1] * 8 and before.count(1) == 4
    k.del_nexthop(1)  # the last member: the group and its route go
    assert 10 not in k.nexthops and k.routes == {}
    with pytest.raises(OSError) as exc:
        k.del_nexthop(1)
    assert exc.value.errno == errno.ENOENT


# --- properties ----------------------------------------------------------------------------------
small_vips = st.sampled_from(VIPS[:6])
path_sets = st.lists(st.integers(0, 4), min_size=0, max_size=3, unique=True)
batches = st.dictionaries(small_vips, path_sets, min_size=1, max_size=6)


@settings(max_examples=150, deadline=None)
@given(steps=st.lists(batches, min_size=1, max_size=8), failing=st.sets(st.integers(0, 4)))
def test_incremental_updates_converge_without_orphans(steps, failing):
    """Random incremental batches, some next hops refused at first: every VIP that did not
    fail forwards exactly as wanted, nothing leaks; once the faults go and retries ran, the
    kernel holds exactly the wanted state and a whole-table diff finds nothing to do."""
    kernel, fib = make()
    faults = [kernel.inject(Fault(errno.EINVAL, op=d.AddNexthop, gateway=GW[i])) for i in failing]
    wanted: dict = {}
    now = 0.0
    for batch in steps:
        now += 1
        result = fib.update({v: paths(*which) for v, which in batch.items()}, now)
        for v, which in batch.items():
            wanted[v] = which
        forwarding = kernel.forwarding()
        for v, which in wanted.items():
            if v in fib.failures():
                continue
            assert forwarding.get(v, {}) == (fwd(*which) if which else {}), (v, result)
        assert orphans(fib) == (set(), set())
        # shared: never more groups than VIPs routed, one group per set when built at once
        assert kernel.counts(200)[1] <= kernel.counts(200)[2]
    for f in faults:
        kernel.faults.remove(f)
    fib.retry_due(now + 1000)
    assert fib.failures() == {}
    expected = {v: fwd(*w) for v, w in wanted.items() if w}
    assert kernel.forwarding() == expected
    desired = {
        v: {d.Gateway(gw, 2): w for gw, w in fwd(*which).items()} for v, which in wanted.items()
    }
    assert d.diff(desired, fib.installed(), fib.params) == []


def test_resolve_changes_normalises_like_desired_state_and_interns():
    from bgplb.linux.fibapi import resolve_changes

    pool: dict = {}
    entries = {
        "198.51.100.10": [("192.0.2.2", 2, 1), ("192.0.2.2", 2, 300), ("192.0.2.6", 3, 2)],
        VIPS[1]: [("192.0.2.6", 3, 2), ("192.0.2.2", 2, 256)],
        "2001:db8:100::10": [("2001:db8:1::2", "eth0", 1)],
    }
    got = resolve_changes(entries, {"eth0": 9}.__getitem__, pool)
    expected = d.desired_state(
        {
            "198.51.100.10": [("192.0.2.2", 2, 1), ("192.0.2.2", 2, 300), ("192.0.2.6", 3, 2)],
            VIPS[1]: [("192.0.2.6", 3, 2), ("192.0.2.2", 2, 256)],
            "2001:db8:100::10": [("2001:db8:1::2", 9, 1)],
        }
    )
    assert got == {net: d.path_set(gws) for net, gws in expected.items()}
    assert got[ip_network("198.51.100.10/32")] is got[VIPS[1]]  # one object per set
    again = resolve_changes({VIPS[2]: [("192.0.2.2", 2, 256), ("192.0.2.6", 3, 2)]}, int, pool)
    assert again[VIPS[2]] is got[VIPS[1]]
    with pytest.raises(ValueError, match="IPv4 gateway"):
        resolve_changes({"2001:db8:100::10/128": [("192.0.2.2", 2, 1)]}, int)
    with pytest.raises(ValueError, match="weight"):
        resolve_changes({"198.51.100.10/32": [("192.0.2.2", 2, 0)]}, int)
    with pytest.raises(ValueError):
        resolve_changes({"198.51.100.300/32": []}, int)
