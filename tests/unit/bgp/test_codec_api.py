"""Unit tests of the codec's helpers: Prefix, communities, capabilities/OPEN, negotiation,
Notification text, and the UPDATE packer."""

from __future__ import annotations

import ipaddress
import pickle
from ipaddress import IPv4Address, IPv6Address

import pytest

from bgplb.bgp import (
    AFI,
    AS_TRANS,
    BLACKHOLE,
    GRACEFUL_SHUTDOWN,
    IPV4_UNICAST,
    IPV6_UNICAST,
    NO_EXPORT,
    SAFI,
    Aggregator,
    AsPathSegment,
    AsPathSegmentType,
    BGPError,
    CeaseSubcode,
    ErrorAction,
    ErrorCode,
    ExtendedCommunity,
    ExtendedMessage,
    FourOctetAS,
    GracefulRestart,
    LargeCommunity,
    MessageReader,
    MPReachNLRI,
    Multiprotocol,
    Negotiated,
    Notification,
    Open,
    Origin,
    PathAttributes,
    Prefix,
    RouteRefresh,
    RouteRefreshCapability,
    UnknownCapability,
    Update,
    UpdateSubcode,
    decode,
    encode,
    format_community,
    negotiate,
    pack_updates,
    parse_community,
)

# --- Prefix --------------------------------------------------------------------------------


def test_prefix_basics() -> None:
    p = Prefix.parse("198.51.100.10/32")
    assert str(p) == "198.51.100.10/32"
    assert repr(p) == "Prefix('198.51.100.10/32')"
    assert p.afi is AFI.IPV4 and p.length == 32
    assert p.network == ipaddress.IPv4Network("198.51.100.10/32")
    assert Prefix.from_network(ipaddress.ip_network("2001:db8::/32")) == Prefix.parse(
        "2001:db8::/32"
    )
    assert str(Prefix.parse("2001:db8::10/128")) == "2001:db8::10/128"
    assert hash(p) == hash(Prefix.parse("198.51.100.10/32"))
    assert pickle.loads(pickle.dumps(p)) == p


def test_prefix_order_ipv4_before_ipv6_then_address_then_length() -> None:
    items = ["2001:db8::/32", "198.51.100.0/25", "198.51.100.0/24", "192.0.2.0/24"]
    assert [str(p) for p in sorted(Prefix.parse(t) for t in items)] == [
        "192.0.2.0/24",
        "198.51.100.0/24",
        "198.51.100.0/25",
        "2001:db8::/32",
    ]


@pytest.mark.parametrize(
    "text", ["198.51.100.1/24", "198.51.100.0/33", "foo", "2001:db8::1/32", ""]
)
def test_prefix_parse_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        Prefix.parse(text)


def test_prefix_constructor_validates() -> None:
    with pytest.raises(ValueError):
        Prefix(AFI.IPV4, 1, 24)
    with pytest.raises(ValueError):
        Prefix(AFI.IPV4, 0, 33)


def test_nlri_trailing_bits_are_masked() -> None:
    # RFC 4271 §4.3: trailing bits past the length are irrelevant (198.51.101.0/23 -> .100.0/23)
    body = b"\x00\x04" + bytes([23, 198, 51, 101]) + b"\x00\x00"
    got = decode(2, body, Negotiated())
    assert got == Update(withdrawn=(Prefix.parse("198.51.100.0/23"),))


# --- communities -----------------------------------------------------------------------------


def test_communities() -> None:
    assert parse_community("65000:100") == (65000 << 16) | 100
    assert parse_community("graceful-shutdown") == GRACEFUL_SHUTDOWN == 0xFFFF0000
    assert parse_community("NO_EXPORT") == NO_EXPORT
    assert parse_community("blackhole") == BLACKHOLE
    assert format_community((65000 << 16) | 100) == "65000:100"
    assert format_community(GRACEFUL_SHUTDOWN) == "graceful-shutdown"
    for bad in ("65536:1", "1:2:3", "x:1", "", "-1:5"):
        with pytest.raises(ValueError):
            parse_community(bad)


def test_large_and_extended_communities() -> None:
    lc = LargeCommunity.parse("65000:1:2")
    assert lc == LargeCommunity(65000, 1, 2) and str(lc) == "65000:1:2"
    with pytest.raises(ValueError):
        LargeCommunity.parse("65000:1")
    with pytest.raises(ValueError):
        LargeCommunity.parse("4294967296:1:2")
    lbw = ExtendedCommunity.link_bandwidth(65000, 1.25e9)
    assert lbw.value[:4] == bytes([0x40, 0x04]) + (65000).to_bytes(2, "big")
    assert lbw.link_bandwidth_value == 1.25e9
    assert ExtendedCommunity.link_bandwidth(4200000000, 1.0).value[2:4] == AS_TRANS.to_bytes(
        2, "big"
    )
    assert ExtendedCommunity(b"\x00\x02" + b"\x00" * 6).link_bandwidth_value is None
    with pytest.raises(ValueError):
        ExtendedCommunity(b"\x00")


def test_path_attributes_helpers() -> None:
    pa = PathAttributes(
        as_path=(
            AsPathSegment(AsPathSegmentType.AS_SEQUENCE, (65001, 65002)),
            AsPathSegment(AsPathSegmentType.AS_SET, (65003,)),
        )
    )
    assert pa.as_path_list() == [65001, 65002, 65003]
    assert pa.with_(med=5).med == 5 and pa.med is None
    assert len({pa, pa.with_(), pa.with_(med=5)}) == 2


# --- OPEN / capabilities / negotiation -------------------------------------------------------


def test_open_rfc9072_extended_optional_parameters() -> None:
    caps = tuple(UnknownCapability(200 + i % 50, bytes(40)) for i in range(10))
    msg = Open(65001, 90, IPv4Address("192.0.2.1"), caps)
    wire = encode(msg)
    assert wire[28:30] == b"\xff\xff"  # Non-Ext OP Len, Non-Ext OP Type
    assert decode(1, wire[19:]) == msg


def test_open_families_default_to_ipv4_unicast() -> None:
    assert Open(65001, 90, IPv4Address("192.0.2.1")).families == {IPV4_UNICAST}
    o = Open(65001, 90, IPv4Address("192.0.2.1"), (Multiprotocol(2, 1), Multiprotocol(25, 70)))
    assert o.families == {IPV6_UNICAST}


def test_negotiate() -> None:
    local = Open(
        65000,
        9,
        IPv4Address("192.0.2.11"),
        (
            Multiprotocol(1, 1),
            Multiprotocol(2, 1),
            RouteRefreshCapability(),
            FourOctetAS(65000),
            ExtendedMessage(),
            GracefulRestart(120),
        ),
    )
    remote = Open(
        65530,
        90,
        IPv4Address("192.0.2.1"),
        (Multiprotocol(1, 1), FourOctetAS(65530), GracefulRestart(60, restarting=True)),
    )
    neg = negotiate(local, remote, 65000)
    assert neg == Negotiated(
        four_octet_as=True,
        extended_message=False,
        families=frozenset({IPV4_UNICAST}),
        route_refresh=False,
        peer_graceful_restart=GracefulRestart(60, restarting=True),
        local_graceful_restart=GracefulRestart(120),
        hold_time=9,
        keepalive_time=3,
        peer_asn=65530,
        peer_router_id=IPv4Address("192.0.2.1"),
        ebgp=True,
    )
    assert neg.max_message_size == 4096
    # a side without any Multiprotocol capability means IPv4 unicast only (RFC 4760 §8)
    bare = Open(65000, 0, IPv4Address("192.0.2.2"))
    neg2 = negotiate(local, bare, 65000)
    assert neg2.families == {IPV4_UNICAST}
    assert (neg2.hold_time, neg2.keepalive_time, neg2.ebgp, neg2.four_octet_as) == (
        0,
        0,
        False,
        False,
    )
    both = negotiate(local, local, 65000)
    assert both.extended_message and both.max_message_size == 65535 and both.route_refresh


# --- NOTIFICATION / errors -------------------------------------------------------------------


def test_notification_text_and_truncation() -> None:
    n = Notification.cease_shutdown(CeaseSubcode.ADMINISTRATIVE_RESET, "é" * 200)
    assert n.data[0] == 254  # 127 two-octet characters: cut at a character boundary
    assert n.shutdown_message == "é" * 127
    assert str(Notification(ErrorCode.HOLD_TIMER_EXPIRED, 0)) == "Hold Timer Expired/subcode 0"
    assert str(Notification(3, 11, b"\x01")) == "UPDATE Message Error/Malformed AS Path (data 01)"
    assert Notification(6, 2, b"\x09abc").shutdown_message is None  # length beyond the data
    assert Notification(6, 2).shutdown_message is None
    assert str(Notification(6, 2)) == "Cease/Administrative Shutdown"


def test_bgp_error_str() -> None:
    err = BGPError(3, UpdateSubcode.MALFORMED_AS_PATH, b"", ErrorAction.TREAT_AS_WITHDRAW, "x")
    assert str(err) == "UPDATE Message Error/Malformed AS Path: x [treat-as-withdraw]"


def test_route_refresh_subtypes() -> None:
    for subtype in (0, 1, 2):
        msg = RouteRefresh(AFI.IPV6, SAFI.UNICAST, subtype)
        assert encode(msg)[19:] == bytes([0, 2, subtype, 1])
        assert decode(5, encode(msg)[19:]) == msg


def test_encode_refuses_oversized_update() -> None:
    attrs = PathAttributes(origin=Origin.IGP, next_hop=IPv4Address("192.0.2.1"))
    nlri = tuple(Prefix(AFI.IPV4, i << 8, 24) for i in range(1100))
    with pytest.raises(ValueError):
        encode(Update(attributes=attrs, nlri=nlri))
    assert (
        len(encode(Update(attributes=attrs, nlri=nlri), Negotiated(extended_message=True))) > 4096
    )


def test_two_octet_encoding_uses_as_trans_and_as4_attributes() -> None:
    attrs = PathAttributes(
        origin=Origin.IGP,
        as_path=(AsPathSegment(AsPathSegmentType.AS_SEQUENCE, (4200000000, 65001)),),
        next_hop=IPv4Address("192.0.2.1"),
        aggregator=Aggregator(4200000000, IPv4Address("192.0.2.1")),
    )
    wire = encode(Update(attributes=attrs), Negotiated(four_octet_as=False))
    assert bytes.fromhex("4002060202" + "5ba0fde9") in wire  # AS_PATH with AS_TRANS
    assert bytes([0xC0, 7, 6, 0x5B, 0xA0, 192, 0, 2, 1]) in wire  # AGGREGATOR with AS_TRANS
    assert bytes([0xC0, 17, 10, 2, 2]) + (4200000000).to_bytes(4, "big") in wire
    assert bytes([0xC0, 18, 8]) + (4200000000).to_bytes(4, "big") in wire
    assert decode(2, wire[19:], Negotiated(four_octet_as=False)) == Update(attributes=attrs)


# --- packing ---------------------------------------------------------------------------------

NEXT_HOPS = {
    AFI.IPV4: (IPv4Address("192.0.2.11"),),
    AFI.IPV6: (IPv6Address("2001:db8::11"), IPv6Address("fe80::11")),
}
NEG46 = Negotiated(four_octet_as=True, families=frozenset({IPV4_UNICAST, IPV6_UNICAST}))


def split_all(messages: list[bytes], neg: Negotiated) -> list[Update]:
    reader = MessageReader()
    reader.extended = neg.extended_message
    for m in messages:
        assert len(m) <= neg.max_message_size
        reader.feed(m)
    out = []
    while (framed := reader.next_message()) is not None:
        msg = decode(*framed, neg)
        assert isinstance(msg, Update) and not msg.errors
        out.append(msg)
    return out


def test_pack_updates_small() -> None:
    attrs = PathAttributes(origin=Origin.IGP, communities=(GRACEFUL_SHUTDOWN,))
    v4, v6 = Prefix.parse("198.51.100.10/32"), Prefix.parse("2001:db8::10/128")
    gone4, gone6 = Prefix.parse("198.51.100.11/32"), Prefix.parse("2001:db8::11/128")
    updates = split_all(pack_updates({attrs: [v4, v6]}, [gone4, gone6], NEG46, NEXT_HOPS), NEG46)
    assert [u.all_withdrawn for u in updates[:2]] == [(gone4,), (gone6,)]
    assert updates[2] == Update(
        attributes=attrs.with_(next_hop=IPv4Address("192.0.2.11")), nlri=(v4,)
    )
    assert updates[3] == Update(
        attributes=attrs.with_(
            mp_reach=MPReachNLRI(AFI.IPV6, SAFI.UNICAST, NEXT_HOPS[AFI.IPV6], (v6,))
        )
    )
    assert len(updates) == 4


def test_pack_updates_fills_messages() -> None:
    attrs = PathAttributes(origin=Origin.IGP, next_hop=IPv4Address("192.0.2.11"))
    other = attrs.with_(med=5)
    v4 = [Prefix(AFI.IPV4, (0xC6120000 + i) << 0, 32) for i in range(2000)]
    v6 = [Prefix(AFI.IPV6, (0x20010DB8 << 96) + (i << 64), 64) for i in range(700)]
    withdraw = [Prefix(AFI.IPV4, 0xC6130000 + (i << 8), 24) for i in range(1500)]
    msgs = pack_updates({attrs: v4 + v6, other: v4[:10]}, withdraw, NEG46, NEXT_HOPS)
    updates = split_all(msgs, NEG46)
    assert [p for u in updates for p in u.all_withdrawn] == withdraw
    assert [p for u in updates if u.attributes.med is None for p in u.announced] == v4 + v6
    assert [p for u in updates if u.attributes.med == 5 for p in u.announced] == v4[:10]
    # as few messages as the 4096-octet limit allows: 2000 x 5 octets need 3, 700 x 9 need 2
    assert len([u for u in updates if u.nlri and u.attributes.med is None]) == 3
    assert len([u for u in updates if u.attributes.mp_reach]) == 2
    assert len([u for u in updates if u.withdrawn]) == 2
    big = split_all(
        pack_updates({attrs: v4}, [], Negotiated(extended_message=True)),
        Negotiated(extended_message=True),
    )
    assert len(big) == 1


def test_pack_updates_needs_next_hops() -> None:
    attrs = PathAttributes(origin=Origin.IGP)
    with pytest.raises(ValueError):
        pack_updates({attrs: [Prefix.parse("198.51.100.10/32")]}, [], NEG46)
    with pytest.raises(ValueError):
        pack_updates(
            {attrs: [Prefix.parse("2001:db8::10/128")]}, [], NEG46, {AFI.IPV4: NEXT_HOPS[AFI.IPV4]}
        )
