"""bgplb.linux.diff against a model of the kernel's nexthop rules (no kernel needed).

The model enforces what Linux does (net/ipv4/nexthop.c, fib): ids are unique; a group's members
must exist and be single nexthops; a route needs an existing group; replacing a group cannot
change its type or bucket count; deleting a group deletes its routes; deleting a group's last
member deletes the group. An operation that would make the kernel silently delete something is
treated as an error here, so the diff must order its operations to never rely on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import ip_address, ip_network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bgplb.linux.diff import (
    DEFAULT_ID_BASE,
    AddGroup,
    AddNexthop,
    AddRoute,
    DeleteGroup,
    DeleteNexthop,
    DeleteRoute,
    FibModel,
    Gateway,
    GroupKind,
    GroupParams,
    InstalledGroup,
    InstalledState,
    ReplaceGroup,
    ReplaceRoute,
    desired_state,
    diff,
)


class KernelRefused(Exception):
    pass


@dataclass
class KernelModel:
    """Our objects plus foreign ones (ids in `foreign`, never to be touched)."""

    nexthops: dict[int, Gateway] = field(default_factory=dict)
    groups: dict[int, InstalledGroup] = field(default_factory=dict)
    routes: dict = field(default_factory=dict)
    foreign: frozenset[int] = frozenset()

    def _exists(self, nh_id):
        return nh_id in self.nexthops or nh_id in self.groups or nh_id in self.foreign

    def apply(self, op):
        match op:
            case AddNexthop(id=i, gateway=gw):
                if self._exists(i):
                    raise KernelRefused(f"EEXIST {i}")
                self.nexthops[i] = gw
            case AddGroup(id=i, members=m, params=p):
                if self._exists(i):
                    raise KernelRefused(f"EEXIST {i}")
                self._check_members(m)
                self.groups[i] = InstalledGroup(i, m, p)
            case ReplaceGroup(id=i, members=m, params=p):
                if i not in self.groups:
                    raise KernelRefused(f"replace of non-group {i}")
                if not p.same_shape(self.groups[i].params):
                    raise KernelRefused("EINVAL: type or bucket change on replace")
                self._check_members(m)
                self.groups[i] = InstalledGroup(i, m, p)
            case AddRoute(dst=d, nh_id=i):
                if d in self.routes:
                    raise KernelRefused(f"EEXIST route {d}")
                self._check_route(d, i)
                self.routes[d] = i
            case ReplaceRoute(dst=d, nh_id=i):
                if d not in self.routes:
                    raise KernelRefused(f"replace of missing route {d}")
                self._check_route(d, i)
                self.routes[d] = i
            case DeleteRoute(dst=d):
                if d not in self.routes:
                    raise KernelRefused(f"ESRCH {d}")
                del self.routes[d]
            case DeleteGroup(id=i):
                if i not in self.groups:
                    raise KernelRefused(f"ENOENT group {i}")
                if i in self.routes.values():
                    raise KernelRefused(f"deleting group {i} would silently delete routes")
                del self.groups[i]
            case DeleteNexthop(id=i):
                if i not in self.nexthops:
                    raise KernelRefused(f"ENOENT nexthop {i}")
                if any(i == m for g in self.groups.values() for m, _ in g.members):
                    raise KernelRefused(f"deleting member {i} would change/delete a group")
                del self.nexthops[i]
            case _:
                raise AssertionError(op)

    def _check_members(self, members):
        if not members:
            raise KernelRefused("empty group")
        ids = [m for m, _ in members]
        if len(set(ids)) != len(ids):
            raise KernelRefused("duplicate member")
        for m, w in members:
            if m not in self.nexthops:
                raise KernelRefused(f"member {m} missing or not ours")
            if not 1 <= w <= 256:
                raise KernelRefused("weight")

    def _check_route(self, dst, nh_id):
        if nh_id not in self.groups:
            raise KernelRefused(f"route {dst} to missing group {nh_id}")
        if dst.version == 6:
            for m, _ in self.groups[nh_id].members:
                if self.nexthops[m].address.version == 4:
                    raise KernelRefused("IPv6 route with IPv4 gateway")

    def installed(self) -> InstalledState:
        return InstalledState(
            nexthops=dict(self.nexthops),
            groups=dict(self.groups),
            routes=dict(self.routes),
            foreign_ids=self.foreign,
        )

    def view(self):
        """{vip: ({gateway: weight}, params)} as the kernel would forward."""
        out = {}
        for dst, gid in self.routes.items():
            group = self.groups[gid]
            out[dst] = ({self.nexthops[m]: w for m, w in group.members}, group.params)
        return out


def run(model: KernelModel, desired, params):
    ops = diff(desired, model.installed(), params)
    for op in ops:
        model.apply(op)
    return ops


def expected_view(desired, params):
    return {net: (dict(gws), params) for net, gws in desired.items() if gws}


# --- strategies ---------------------------------------------------------------------------------
V4_VIPS = [ip_network(f"198.51.100.{i}/32") for i in range(1, 6)]
V6_VIPS = [ip_network(f"2001:db8:100::{i}/128") for i in range(1, 4)]
V4_GWS = [Gateway(ip_address(f"192.0.2.{i}"), oif) for i in range(2, 7) for oif in (2, 3)]
V6_GWS = [Gateway(ip_address(f"2001:db8:1::{i}"), 2) for i in range(2, 5)]

weights = st.integers(1, 256)
desired_states = st.builds(
    lambda v4, v6: {**v4, **v6},
    st.dictionaries(
        st.sampled_from(V4_VIPS),
        st.dictionaries(st.sampled_from(V4_GWS + V6_GWS), weights, max_size=5),
        max_size=5,
    ),
    st.dictionaries(
        st.sampled_from(V6_VIPS),
        st.dictionaries(st.sampled_from(V6_GWS), weights, max_size=3),
        max_size=3,
    ),
)
params_st = st.one_of(
    st.just(GroupParams(GroupKind.MULTIPATH)),
    st.builds(
        GroupParams,
        st.just(GroupKind.RESILIENT),
        st.sampled_from([32, 64, 512]),
        st.sampled_from([0.0, 10.0, 12.34]),
        st.sampled_from([0.0, 60.0]),
    ),
)
foreign_ids = st.frozensets(
    st.one_of(st.integers(1, 100), st.integers(DEFAULT_ID_BASE, DEFAULT_ID_BASE + 20)),
    max_size=10,
)


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(st.tuples(desired_states, params_st), min_size=1, max_size=6),
    foreign=foreign_ids,
)
def test_applying_ops_yields_exactly_desired(steps, foreign):
    model = KernelModel(foreign=foreign)
    previous_ids: dict[Gateway, int] = {}
    for desired, params in steps:
        ops = run(model, desired, params)
        assert model.view() == expected_view(desired, params)
        # no leftovers: every object of ours is in use
        used_groups = set(model.routes.values())
        assert set(model.groups) == used_groups
        used_nh = {m for g in model.groups.values() for m, _ in g.members}
        assert set(model.nexthops) == used_nh
        # foreign ids never allocated (the model raises on a clash) nor named
        for op in ops:
            assert getattr(op, "id", None) not in foreign
        # idempotent
        assert diff(desired, model.installed(), params) == []
        # stable ids: a gateway kept across steps keeps its nexthop id
        now_ids = {gw: i for i, gw in model.nexthops.items()}
        for gw, i in now_ids.items():
            if gw in previous_ids:
                assert previous_ids[gw] == i
        previous_ids = now_ids


@settings(max_examples=100, deadline=None)
@given(desired=desired_states, params=params_st, foreign=foreign_ids)
def test_deterministic(desired, params, foreign):
    installed = KernelModel(foreign=foreign).installed()
    assert diff(desired, installed, params) == diff(dict(desired), installed, params)


@settings(max_examples=200, deadline=None)
@given(
    before=desired_states,
    after=desired_states,
    params=params_st,
    foreign=foreign_ids,
    # a crash left objects of ours behind: start from `before`, then drop random routes
    drop=st.sets(st.sampled_from(V4_VIPS + V6_VIPS)),
)
def test_reconcile_after_crash(before, after, params, foreign, drop):
    model = KernelModel(foreign=foreign)
    run(model, before, params)
    for dst in drop:
        model.routes.pop(dst, None)  # orphaned groups stay behind, as after a partial apply
    run(model, after, params)
    assert model.view() == expected_view(after, params)
    assert set(model.groups) == set(model.routes.values())


def vip(s):
    return ip_network(s)


GW1 = Gateway(ip_address("192.0.2.2"), 2)
GW2 = Gateway(ip_address("192.0.2.6"), 3)
GW3 = Gateway(ip_address("192.0.2.10"), 4)
RES = GroupParams(GroupKind.RESILIENT, 64, 10.0, 60.0)


def test_first_install_order_and_ids():
    ops = diff({vip("198.51.100.10/32"): {GW2: 1, GW1: 2}}, InstalledState(), RES)
    base = DEFAULT_ID_BASE
    assert ops == [
        AddNexthop(base, GW1),
        AddNexthop(base + 1, GW2),
        AddGroup(base + 2, ((base, 2), (base + 1, 1)), RES),
        AddRoute(vip("198.51.100.10/32"), base + 2),
    ]


def test_membership_change_is_replace_in_place():
    model = KernelModel()
    run(model, {vip("198.51.100.10/32"): {GW1: 1, GW2: 1}}, RES)
    gid = model.routes[vip("198.51.100.10/32")]
    ops = run(model, {vip("198.51.100.10/32"): {GW1: 1, GW2: 1, GW3: 1}}, RES)
    assert [type(op) for op in ops] == [AddNexthop, ReplaceGroup]
    ops = run(model, {vip("198.51.100.10/32"): {GW3: 1}}, RES)
    assert [type(op) for op in ops] == [ReplaceGroup, DeleteNexthop, DeleteNexthop]
    assert model.routes[vip("198.51.100.10/32")] == gid


def test_bucket_change_is_make_before_break():
    model = KernelModel()
    run(model, {vip("198.51.100.10/32"): {GW1: 1}}, RES)
    old = model.routes[vip("198.51.100.10/32")]
    bigger = GroupParams(GroupKind.RESILIENT, 128, 10.0, 60.0)
    ops = run(model, {vip("198.51.100.10/32"): {GW1: 1}}, bigger)
    assert [type(op) for op in ops] == [AddGroup, ReplaceRoute, DeleteGroup]
    assert ops[-1] == DeleteGroup(old)


def test_timer_change_is_replace():
    model = KernelModel()
    run(model, {vip("198.51.100.10/32"): {GW1: 1}}, RES)
    ops = run(model, {vip("198.51.100.10/32"): {GW1: 1}}, GroupParams(idle_timer=5, buckets=64))
    assert [type(op) for op in ops] == [ReplaceGroup]


def test_removing_the_last_path_removes_route_group_and_nexthop():
    model = KernelModel()
    run(model, {vip("198.51.100.10/32"): {GW1: 1}}, RES)
    ops = run(model, {vip("198.51.100.10/32"): {}}, RES)
    assert [type(op) for op in ops] == [DeleteRoute, DeleteGroup, DeleteNexthop]
    assert model.installed() == InstalledState()


def test_desired_state_normalisation():
    got = desired_state(
        {
            "198.51.100.10": [("192.0.2.2", 2, 1), ("192.0.2.2", 2, 300), ("192.0.2.6", 3, 2)],
            ip_address("2001:db8:100::10"): [("2001:db8:1::2", 2, 1)],
        }
    )
    assert got == {
        vip("198.51.100.10/32"): {GW1: 256, GW2: 2},
        vip("2001:db8:100::10/128"): {Gateway(ip_address("2001:db8:1::2"), 2): 1},
    }
    with pytest.raises(ValueError, match="IPv4 gateway"):
        desired_state({"2001:db8:100::10/128": [("192.0.2.2", 2, 1)]})
    with pytest.raises(ValueError, match="weight"):
        desired_state({"198.51.100.10/32": [("192.0.2.2", 2, 0)]})


def test_bad_params_rejected():
    with pytest.raises(ValueError):
        GroupParams(buckets=0)
    with pytest.raises(ValueError):
        diff({vip("198.51.100.10/32"): {GW1: 0}}, InstalledState(), RES)


def test_duplicate_nexthop_debris_never_swaps_a_group_member():
    # a crash left nexthop 5 with the same gateway as member 9 of the live group
    installed = InstalledState(
        nexthops={5: GW1, 9: GW1},
        groups={20: InstalledGroup(20, ((9, 1),), RES), 21: InstalledGroup(21, ((5, 1),), RES)},
        routes={vip("198.51.100.10/32"): 20},
    )
    ops = diff({vip("198.51.100.10/32"): {GW1: 1}}, installed, RES)
    assert ops == [DeleteGroup(21), DeleteNexthop(5)]


def test_deleting_a_nexthop_keeps_the_preferred_id_of_its_gateway_and_of_debris():
    # nexthops 5 and 9 share GW1 (debris), 7 is GW2 alone
    model = FibModel(InstalledState(nexthops={5: GW1, 9: GW1, 7: GW2}))
    assert model.gw_id == {GW1: 5, GW2: 7} and model.gw_count == {GW1: 2, GW2: 1}
    model.note(DeleteNexthop(5))
    assert model.gw_id == {GW1: 9, GW2: 7} and model.gw_count == {GW1: 1, GW2: 1}
    model.note(DeleteNexthop(7))
    assert model.gw_id == {GW1: 9} and model.gw_count == {GW1: 1}
    model.note(AddNexthop(7, GW2))
    model.note(DeleteNexthop(9))
    assert model.gw_id == {GW2: 7} and model.gw_count == {GW2: 1}
