"""Batched hand-encoded requests (NexthopSocket.transact) against the real kernel in a namespace.

Seen on Linux 6.18: rtnetlink handles each message of a datagram on its own; a refused request
is answered with its own NLMSG_ERROR (even without NLM_F_ACK) and the following requests of
the same datagram are still applied.
"""

from __future__ import annotations

import errno
import ipaddress
import json

import pytest

from bgplb.linux.nexthop import (
    GroupType,
    NetlinkOverrun,
    NexthopSocket,
    encode_del_nexthop,
    encode_del_route,
    encode_group,
    encode_nexthop,
    encode_route,
)

pytestmark = pytest.mark.netns
PROTO = 200
ACK_MODES = pytest.mark.parametrize("ack_each", [False, True], ids=["errors-only", "ack-each"])


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
        ["192.0.2.1/24", "2001:db8:1::1/64"],
        ["192.0.2.2/24", "2001:db8:1::2/64"],
        left_if="eth-srv",
        right_if="eth-rtr",
    )
    oif = _ip_json(router, "link", "show", "eth-srv")[0]["ifindex"]
    return router, oif


def _v4_dst(i: int) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network((int(ipaddress.IPv4Address("198.18.0.0")) + i, 32))


def _v6_dst(i: int) -> ipaddress.IPv6Network:
    return ipaddress.IPv6Network((int(ipaddress.IPv6Address("2001:db8:100::")) + i, 128))


@ACK_MODES
@pytest.mark.parametrize("family", [4, 6])
def test_batch_of_5000_routes_equals_dump(router, ack_each, family):
    ns, oif = router
    gateways = [
        ipaddress.ip_address(f"192.0.2.{10 + i}" if family == 4 else f"2001:db8:1::{10 + i:x}")
        for i in range(100)
    ]
    dst = _v4_dst if family == 4 else _v6_dst
    msgs = [
        encode_nexthop(100 + i, gateway=gw, oif=oif, protocol=PROTO)
        for i, gw in enumerate(gateways)
    ]
    groups = {
        1000 + g: ((100 + g, 1), (100 + (g + 1) % 100, 2)) for g in range(100)
    }  # fmt: skip
    msgs += [
        encode_group(gid, members=mem, protocol=PROTO, buckets=16, idle_timer=5)
        for gid, mem in groups.items()
    ]
    routes = {dst(i): 1000 + i % 100 for i in range(5000)}
    msgs += [encode_route(d, nh_id=n, protocol=PROTO, table=1000) for d, n in routes.items()]
    with NexthopSocket(ns.name) as nl:
        assert nl.transact(msgs, ack_each=ack_each) == [None] * len(msgs)

        nexthops = {n.id: n for n in nl.dump_nexthops(protocol=PROTO)}
        assert {i: nexthops[i].gateway for i in range(100, 200)} == dict(
            zip(range(100, 200), gateways, strict=True)
        )
        assert {g: nexthops[g].members for g in groups} == groups
        assert {nexthops[g].resilient.buckets for g in groups} == {16}  # type: ignore[union-attr]
        dumped = {r.dst: r.nh_id for r in nl.dump_routes(protocol=PROTO, table=1000)}
        assert dumped == routes

        # and everything goes again in one batch: routes, groups, then nexthops
        undo = [encode_del_route(d, protocol=PROTO, table=1000) for d in routes]
        undo += [encode_del_nexthop(n) for n in [*groups, *range(100, 200)]]
        assert nl.transact(undo, ack_each=ack_each) == [None] * len(undo)
        assert nl.dump_routes(protocol=PROTO) == []
        assert nl.dump_nexthops(protocol=PROTO) == []


@ACK_MODES
@pytest.mark.parametrize("window", [1024, 3, 1])
def test_failures_in_the_middle_are_reported_where_they_happened(router, ack_each, window):
    ns, oif = router
    with NexthopSocket(ns.name) as nl:
        nl.add_nexthop(1, gateway="192.0.2.2", oif=oif, protocol=PROTO)
        nl.add_group(2, members=[(1, 1)], protocol=PROTO, buckets=8)
        nl.add_route("198.51.100.1/32", nh_id=2, protocol=PROTO)
        batch = [
            encode_nexthop(3, gateway="192.0.2.3", oif=oif, protocol=PROTO),  # 0 ok
            encode_route("198.51.100.1/32", nh_id=2, protocol=PROTO),  # 1 EEXIST
            encode_route("198.51.100.2/32", nh_id=2, protocol=PROTO),  # 2 ok
            encode_del_nexthop(999),  # 3 ENOENT
            encode_group(4, members=[(3, 1), (998, 1)], protocol=PROTO, buckets=8),  # 4 EINVAL
            encode_group(5, members=[(3, 1), (1, 1)], protocol=PROTO, buckets=8),  # 5 ok
            encode_route("198.51.100.3/32", nh_id=5, protocol=PROTO),  # 6 ok
            encode_route("198.51.100.1/32", nh_id=5, protocol=PROTO, replace=True),  # 7 ok
            encode_del_route("198.51.100.9/32", protocol=PROTO),  # 8 ESRCH (last)
        ]
        results = nl.transact(batch, ack_each=ack_each, window=window)
        codes = {i: r.errno for i, r in enumerate(results) if r is not None}
        assert codes == {1: errno.EEXIST, 3: errno.ENOENT, 4: errno.EINVAL, 8: errno.ESRCH}
        # the kernel's extended ack text travels with the error
        assert "Invalid nexthop id" in str(results[4])

        assert {n.id for n in nl.dump_nexthops(protocol=PROTO)} == {1, 2, 3, 5}
        routes = {str(r.dst): r.nh_id for r in nl.dump_routes(protocol=PROTO)}
        assert routes == {
            "198.51.100.1/32": 5,
            "198.51.100.2/32": 2,
            "198.51.100.3/32": 5,
        }
        # the one-at-a-time methods still work on the same socket afterwards
        nl.del_route("198.51.100.2/32", protocol=PROTO)
        assert nl.get_nexthop(3) is not None


def test_replace_of_resilient_group_in_batch_keeps_buckets(router):
    ns, oif = router
    with NexthopSocket(ns.name) as nl:
        batch = [
            encode_nexthop(1, gateway="192.0.2.2", oif=oif, protocol=PROTO),
            encode_nexthop(2, gateway="2001:db8:1::2", oif=oif, protocol=PROTO),
            encode_group(10, members=[(1, 1)], protocol=PROTO, buckets=32, idle_timer=0),
            encode_route("198.51.100.1/32", nh_id=10, protocol=PROTO),
        ]
        assert nl.transact(batch) == [None] * 4
        assert nl.bucket_share(10) == {1: 32}
        replace = [
            encode_group(
                10, members=[(1, 1), (2, 1)], protocol=PROTO, buckets=32, idle_timer=0, replace=True
            ),
            encode_group(  # a different bucket count is refused, the rest goes on
                10, members=[(2, 1)], protocol=PROTO, buckets=64, replace=True
            ),
            encode_group(
                10, members=[(2, 1)], protocol=PROTO, group_type=GroupType.MPATH, replace=True
            ),
        ]
        results = nl.transact(replace)
        assert results[0] is None
        assert [r.errno if r else None for r in results[1:]] == [errno.EINVAL, errno.EINVAL]
        group = nl.get_nexthop(10)
        assert group is not None and group.resilient is not None
        assert group.resilient.buckets == 32 and group.members == ((1, 1), (2, 1))
        assert sum(nl.bucket_share(10).values()) == 32
        (route,) = _ip_json(ns, "route", "show", "198.51.100.1/32")
        assert route["nhid"] == 10


def test_receive_overrun_is_a_clear_error(router):
    """With a tiny receive buffer and every request acknowledged in one window, answers are
    lost: transact says so instead of waiting or guessing."""
    ns, oif = router
    with NexthopSocket(ns.name, buffer_size=4096) as nl:
        nl.add_nexthop(1, gateway="192.0.2.2", oif=oif, protocol=PROTO)
        nl.add_group(2, members=[(1, 1)], protocol=PROTO, buckets=8)
        msgs = [encode_route(_v4_dst(i), nh_id=2, protocol=PROTO) for i in range(2000)]
        with pytest.raises(NetlinkOverrun) as exc:
            nl.transact(msgs, ack_each=True, window=len(msgs))
        assert exc.value.errno == errno.ENOBUFS
        # the socket stays usable: stale answers of the lost batch are skipped
        nl.del_route(_v4_dst(0), protocol=PROTO)
        assert nl.transact([encode_del_route(_v4_dst(1), protocol=PROTO)]) == [None]


def test_malformed_message_is_refused_before_sending(router):
    ns, _oif = router
    good = encode_del_nexthop(1)
    with NexthopSocket(ns.name) as nl:
        for bad in (good[:-4], good + b"\0" * 4, b"", good[:15]):
            with pytest.raises(ValueError):
                nl.transact([good, bad])
