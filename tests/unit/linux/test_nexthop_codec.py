"""Codec of the nexthop netlink messages (bgplb.linux.nexthop), no kernel needed.

Golden vectors: captured from Linux 6.18 (this project's CI kernel) answering RTM_GETNEXTHOP /
RTM_GETNEXTHOPBUCKET / a refused RTM_NEWNEXTHOP, after these requests made with bgplb itself and
cross-checked with iproute2 6.1 (`ip -d route` printed
`nh_info id 2001 group 1001,3/1002 type resilient buckets 8 idle_timer 10 unbalanced_timer 60`).
"""

from __future__ import annotations

import ipaddress
import socket
import struct

from hypothesis import given
from hypothesis import strategies as st

from bgplb.linux.nexthop import (
    RTM_NEWNEXTHOP,
    RTM_NEWROUTE,
    GroupType,
    decode_bucket,
    decode_event,
    decode_nexthop,
    decode_route,
    group_request,
    nexthop_request,
    parse_messages,
    route_request,
)

# RTM_NEWNEXTHOP reply: id 2001 group 1001,3/1002 type resilient buckets 8 idle_timer 10
# unbalanced_timer 60 proto 200 (the trailing attribute 14 is NHA_OP_FLAGS of newer kernels)
GROUP_REPLY = bytes.fromhex(
    "6c0000006800000004000000cd1a00000000c8000000000008000100d1070000060003000100000014000200"
    "e903000002000000ea0300000000000028000c80060001000800000008000200e80300000800030070170000"
    "0c000400000000000000000008000e0000000080"
)
# RTM_NEWNEXTHOP reply: id 1002 via 2001:db8:1::2 dev (ifindex 3) proto 200
V6_NEXTHOP_REPLY = bytes.fromhex(
    "3c0000006800000005000000cd1a00000afdc8000000000008000100ea03000008000500030000001400060020"
    "010db8000100000000000000000002"
)
# First two RTM_NEWNEXTHOPBUCKET messages of the dump of group 2001 (buckets 0, 1 -> 1002)
BUCKET_REPLY = bytes.fromhex(
    "400000007400020006000000cd1a00000000c8000000000008000100d107000020000d800600010000000000"
    "08000300ea0300000c0002000000000000000000400000007400020006000000cd1a00000000c80000000000"
    "08000100d107000020000d80060001000100000008000300ea0300000c0002000000000000000000"
)
# NLMSG_ERROR (EINVAL, capped, with extended ack) for a replace that changed the bucket count
EINVAL_REPLY = bytes.fromhex(
    "680000000200000302000000cf190000eaffffff5000000068000505020000000000000043000100"
    "43616e206e6f74206368616e6765206e756d626572206f66206275636b657473206f662061207265"
    "73696c69656e74206e657874686f702067726f75702e0000"
)


def test_decode_resilient_group_from_kernel():
    (msg,) = parse_messages(GROUP_REPLY)
    nh = decode_nexthop(msg)
    assert nh.id == 2001
    assert nh.protocol == 200
    assert nh.members == ((1001, 3), (1002, 1))
    assert nh.group_type is GroupType.RES
    assert nh.resilient is not None
    assert (nh.resilient.buckets, nh.resilient.idle_timer, nh.resilient.unbalanced_timer) == (
        8,
        10.0,
        60.0,
    )
    assert nh.is_group and nh.gateway is None


def test_decode_ipv6_nexthop_from_kernel():
    (msg,) = parse_messages(V6_NEXTHOP_REPLY)
    nh = decode_nexthop(msg)
    assert (nh.id, nh.family, nh.oif, nh.protocol) == (1002, socket.AF_INET6, 3, 200)
    assert nh.gateway == ipaddress.ip_address("2001:db8:1::2")
    assert not nh.is_group


def test_decode_buckets_from_kernel():
    buckets = [decode_bucket(m) for m in parse_messages(BUCKET_REPLY)]
    assert [(b.group_id, b.index, b.nh_id) for b in buckets] == [(2001, 0, 1002), (2001, 1, 1002)]


def test_error_carries_extended_ack_text():
    (msg,) = parse_messages(EINVAL_REPLY)
    assert msg["error"] == -22
    assert msg["ext_ack"] == "Can not change number of buckets of a resilient nexthop group."


def test_encode_group_matches_uapi_layout():
    msg = group_request(
        2001,
        members=[(1001, 3), (1002, 1)],
        protocol=200,
        buckets=8,
        idle_timer=10,
        unbalanced_timer=60,
    )
    msg["header"]["type"] = RTM_NEWNEXTHOP
    msg["header"]["flags"] = 0
    msg["header"]["sequence_number"] = 0
    msg["header"]["pid"] = 0
    msg.encode()
    body = struct.pack("=BBBBI", socket.AF_UNSPEC, 0, 200, 0, 0)
    body += struct.pack("=HHI", 8, 1, 2001)  # NHA_ID
    body += struct.pack("=HH", 4 + 16, 2) + struct.pack("=IBBHIBBH", 1001, 2, 0, 0, 1002, 0, 0, 0)
    body += struct.pack("=HHH2x", 6, 3, 1)  # NHA_GROUP_TYPE resilient (padded)
    nested = struct.pack("=HHH2x", 6, 1, 8) + struct.pack("=HHI", 8, 2, 1000)
    nested += struct.pack("=HHI", 8, 3, 6000)
    body += struct.pack("=HH", 4 + len(nested), 12 | 0x8000) + nested  # NLA_F_NESTED
    expected = struct.pack("=IHHII", 16 + len(body), RTM_NEWNEXTHOP, 0, 0, 0) + body
    assert bytes(msg.data) == expected


def test_multipath_group_has_no_resilient_attribute():
    msg = group_request(7, members=[(1, 1)], protocol=200, group_type=GroupType.MPATH)
    names = [name for name, _ in msg["attrs"]]
    assert "NHA_RES_GROUP" not in names


def _roundtrip(msg, msg_type):
    msg["header"]["type"] = msg_type
    msg["header"]["flags"] = 0
    msg["header"]["sequence_number"] = 1
    msg["header"]["pid"] = 0
    msg.encode()
    (decoded,) = parse_messages(bytes(msg.data))
    return decoded


@given(
    nh_id=st.integers(1, 2**32 - 1),
    members=st.lists(
        st.tuples(st.integers(1, 2**32 - 1), st.integers(1, 256)), min_size=1, max_size=32
    ),
    buckets=st.integers(1, 2**16 - 1),
    idle=st.integers(0, 2**31).map(lambda cs: cs / 100),
    unbalanced=st.integers(0, 2**31).map(lambda cs: cs / 100),
    protocol=st.integers(0, 255),
)
def test_group_roundtrip(nh_id, members, buckets, idle, unbalanced, protocol):
    msg = group_request(
        nh_id,
        members=members,
        protocol=protocol,
        buckets=buckets,
        idle_timer=idle,
        unbalanced_timer=unbalanced,
    )
    nh = decode_nexthop(_roundtrip(msg, RTM_NEWNEXTHOP))
    assert nh.id == nh_id and nh.protocol == protocol
    assert nh.members == tuple(members)
    assert nh.resilient is not None
    assert nh.resilient.buckets == buckets
    assert nh.resilient.idle_timer == idle and nh.resilient.unbalanced_timer == unbalanced


@given(
    gateway=st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)),
    oif=st.integers(1, 2**31),
    nh_id=st.integers(1, 2**32 - 1),
)
def test_single_nexthop_roundtrip(gateway, oif, nh_id):
    nh = decode_nexthop(
        _roundtrip(nexthop_request(nh_id, gateway=gateway, oif=oif, protocol=200), RTM_NEWNEXTHOP)
    )
    assert (nh.id, nh.gateway, nh.oif) == (nh_id, gateway, oif)


@given(
    net=st.one_of(
        st.builds(
            lambda a, n: ipaddress.ip_network(f"{a}/{n}", strict=False),
            st.ip_addresses(v=4),
            st.integers(0, 32),
        ),
        st.builds(
            lambda a, n: ipaddress.ip_network(f"{a}/{n}", strict=False),
            st.ip_addresses(v=6),
            st.integers(0, 128),
        ),
    ),
    table=st.integers(1, 2**32 - 1),
    nh_id=st.integers(1, 2**32 - 1),
)
def test_route_roundtrip(net, table, nh_id):
    decoded = _roundtrip(route_request(net, nh_id=nh_id, protocol=200, table=table), RTM_NEWROUTE)
    route = decode_route(decoded)
    assert (route.dst, route.table, route.nh_id, route.protocol) == (net, table, nh_id, 200)
    event = decode_event(decoded)
    assert event is not None and event.route == route  # type: ignore[union-attr]


@given(
    kind=st.sampled_from([2, 3, 16, 24, 25, 104, 105, 116]),
    payload=st.binary(max_size=120),
)
def test_malformed_messages_are_skipped_not_raised(kind, payload):
    # A truncated or garbled message of any type we decode is skipped (or decodes to no event).
    data = struct.pack("=IHHII", 16 + len(payload), kind, 0, 0, 0) + payload
    for msg in parse_messages(data):
        assert "header" in msg
        decode_event(msg)
