"""bgplb.linux.nexthop against the real kernel in a namespace, checked with iproute2 (`ip -j`),
which understands nexthop objects independently of our codec."""

from __future__ import annotations

import errno
import ipaddress
import json

import pytest

from bgplb.linux.nexthop import (
    GroupType,
    NexthopChanged,
    NexthopDeleted,
    NexthopError,
    NexthopMonitor,
    NexthopSocket,
    RouteDeleted,
)

pytestmark = pytest.mark.netns
PROTO = 200


def _ip_json(ns, *args):
    out = ns.exec("ip", "-j", *args)
    return json.loads(out) if out.strip() else []


@pytest.fixture
def router(topo):
    router = topo.add("router")
    peer = topo.add("peer")
    topo.link(
        router,
        peer,
        ["192.0.2.1/29", "2001:db8:1::1/64"],
        ["192.0.2.2/29", "2001:db8:1::2/64"],
        left_if="eth-srv",
        right_if="eth-rtr",
    )
    oif = _ip_json(router, "link", "show", "eth-srv")[0]["ifindex"]
    return router, oif


def test_nexthops_groups_and_routes(router):
    ns, oif = router
    with NexthopSocket(ns.name) as nl:
        nl.add_nexthop(11, gateway="192.0.2.2", oif=oif, protocol=PROTO)
        nl.add_nexthop(12, gateway="192.0.2.3", oif=oif, protocol=PROTO)
        nl.add_nexthop(13, gateway="2001:db8:1::2", oif=oif, protocol=PROTO)
        nl.add_group(
            21,
            members=[(11, 1), (12, 3)],
            protocol=PROTO,
            buckets=32,
            idle_timer=10,
            unbalanced_timer=60,
        )
        nl.add_group(22, members=[(13, 1)], protocol=PROTO, group_type=GroupType.MPATH)
        nl.add_route("198.51.100.10/32", nh_id=21, protocol=PROTO)
        nl.add_route("2001:db8:100::10/128", nh_id=22, protocol=PROTO)

        shown = {n["id"]: n for n in _ip_json(ns, "nexthop", "show")}
        assert shown[11]["gateway"] == "192.0.2.2" and shown[11]["protocol"] == str(PROTO)
        assert [(g["id"], g.get("weight", 1)) for g in shown[21]["group"]] == [(11, 1), (12, 3)]
        assert shown[21]["type"] == "resilient"
        res = shown[21]["resilient_args"]
        assert (res["buckets"], res["idle_timer"], res["unbalanced_timer"]) == (32, 10, 60)
        assert shown[22].get("type", "mpath") == "mpath"
        (r4,) = _ip_json(ns, "route", "show", "198.51.100.10/32")
        assert r4["nhid"] == 21 and r4["protocol"] == str(PROTO)
        (r6,) = _ip_json(ns, "-6", "route", "show", "2001:db8:100::10/128")
        assert r6["nhid"] == 22

        # our own dump agrees
        ours = {n.id: n for n in nl.dump_nexthops(protocol=PROTO)}
        assert set(ours) == {11, 12, 13, 21, 22}
        assert ours[21].members == ((11, 1), (12, 3))
        routes = {r.dst: r.nh_id for r in nl.dump_routes(protocol=PROTO)}
        assert routes == {
            ipaddress.ip_network("198.51.100.10/32"): 21,
            ipaddress.ip_network("2001:db8:100::10/128"): 22,
        }
        # weights 1:3 over 32 buckets -> 8:24
        assert nl.bucket_share(21) == {11: 8, 12: 24}

        # membership changes in place; bucket count and type changes are refused
        nl.add_group(21, members=[(12, 1)], protocol=PROTO, buckets=32, idle_timer=10, replace=True)
        assert nl.get_nexthop(21).members == ((12, 1),)  # type: ignore[union-attr]
        with pytest.raises(NexthopError) as exc:
            nl.add_group(21, members=[(12, 1)], protocol=PROTO, buckets=64, replace=True)
        assert exc.value.errno == errno.EINVAL and "buckets" in str(exc.value)
        with pytest.raises(NexthopError) as exc:
            nl.add_group(
                21, members=[(12, 1)], protocol=PROTO, group_type=GroupType.MPATH, replace=True
            )
        assert exc.value.errno == errno.EINVAL
        with pytest.raises(NexthopError) as exc:
            nl.add_nexthop(11, gateway="192.0.2.2", oif=oif, protocol=PROTO)
        assert exc.value.errno == errno.EEXIST

        nl.del_route("198.51.100.10/32", protocol=PROTO)
        nl.del_route("2001:db8:100::10/128", protocol=PROTO)
        for nh_id in (21, 22, 11, 12, 13):
            nl.del_nexthop(nh_id)
        assert _ip_json(ns, "nexthop", "show") == []
        assert nl.get_nexthop(21) is None


def test_del_route_matches_protocol(router):
    ns, _oif = router
    ns.exec("ip", "route", "add", "198.51.100.20/32", "via", "192.0.2.2", "proto", "static")
    with NexthopSocket(ns.name) as nl, pytest.raises(NexthopError) as exc:
        nl.del_route("198.51.100.20/32", protocol=PROTO)
    assert exc.value.errno == errno.ESRCH
    assert _ip_json(ns, "route", "show", "198.51.100.20/32")


def test_monitor_sees_foreign_deletions(router):
    ns, oif = router
    with NexthopSocket(ns.name) as nl, NexthopMonitor(ns.name) as mon:
        nl.add_nexthop(31, gateway="192.0.2.2", oif=oif, protocol=PROTO)
        nl.add_nexthop(32, gateway="2001:db8:1::2", oif=oif, protocol=PROTO)
        nl.add_group(41, members=[(31, 1)], protocol=PROTO, buckets=8)
        nl.add_group(42, members=[(32, 1)], protocol=PROTO, buckets=8)
        nl.add_route("198.51.100.10/32", nh_id=41, protocol=PROTO)
        nl.add_route("2001:db8:100::10/128", nh_id=42, protocol=PROTO)
        created = mon.wait(2.0)
        assert any(isinstance(e, NexthopChanged) and e.nexthop.id == 41 for e in created)

        ns.exec("ip", "nexthop", "del", "id", "31")
        events = []
        for _ in range(20):
            events += mon.wait(0.1)
            if any(isinstance(e, NexthopDeleted) and e.nexthop.id == 41 for e in events):
                break
        deleted = {e.nexthop.id for e in events if isinstance(e, NexthopDeleted)}
        # removing the last member removes the group (and silently its IPv4 route)
        assert deleted == {31, 41}
        assert _ip_json(ns, "route", "show", "198.51.100.10/32") == []

        ns.exec("ip", "nexthop", "del", "id", "42")
        events = []
        for _ in range(20):
            events += mon.wait(0.1)
            if any(isinstance(e, RouteDeleted) for e in events):
                break
        assert any(
            isinstance(e, RouteDeleted)
            and e.route.dst == ipaddress.ip_network("2001:db8:100::10/128")
            for e in events
        )


def test_monitor_reads_a_burst_in_bounded_slices(router):
    """A burst of notifications is read a slice at a time (the event loop is never held for the
    whole burst) and nothing is lost: the socket stays readable until it is all read."""
    import select

    ns, oif = router
    with NexthopSocket(ns.name) as nl, NexthopMonitor(ns.name) as mon:
        nl.add_nexthop(51, gateway="192.0.2.2", oif=oif, protocol=PROTO)
        for i in range(30):
            nl.add_route(f"198.51.100.{100 + i}/32", nh_id=51, protocol=PROTO)
        slices = []
        for _ in range(40):  # bounded: 40 slices of 10 at most
            if not select.select([mon], [], [], 1.0)[0]:
                break
            slices.append(mon.read(limit=10))
        routes = [e for batch in slices for e in batch if not isinstance(e, NexthopChanged)]
        assert len(routes) == 30, slices
        assert all(len(batch) <= 10 for batch in slices)
        assert len([b for b in slices if b]) >= 3


def test_our_own_changes_are_dropped_in_the_kernel(router):
    """With `ignore_pids` set, the echo of our own requests never reaches the monitor's socket
    (a socket filter drops it: nothing to read, nothing skipped), while changes by anyone else
    still arrive."""
    import select

    ns, oif = router
    with NexthopSocket(ns.name) as nl, NexthopMonitor(ns.name) as mon:
        mon.ignore_pids = frozenset({nl.portid})
        nl.add_nexthop(61, gateway="192.0.2.2", oif=oif, protocol=PROTO)
        for i in range(20):
            nl.add_route(f"198.51.100.{150 + i}/32", nh_id=61, protocol=PROTO)
        assert select.select([mon], [], [], 0.5)[0] == []
        assert mon.read() == [] and mon.skipped == 0
        ns.exec("ip", "route", "del", "198.51.100.150/32")
        events = []
        for _ in range(20):
            events += mon.wait(0.1)
            if events:
                break
        assert any(isinstance(e, RouteDeleted) for e in events), events
