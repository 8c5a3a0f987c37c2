"""Golden vectors: messages captured from real peers, and RFC examples.

Provenance: captured with tcpdump on a veth between two network namespaces on 2026-11-26,
GoBGP 3.10.0 (AS 65001, 192.0.2.1 / 2001:db8::1) peering with BIRD 2.0.12 (AS 65002,
192.0.2.2 / 2001:db8::2), Debian 12 packages; TCP payloads extracted with tshark 4.0 and split
into messages. Configs: GoBGP with graceful restart + ipv4/ipv6 unicast; BIRD exporting statics
with MED/communities/large communities; routes added with
``gobgp global rib add 203.0.113.0/24 origin igp med 10 community 65001:100,65535:0
large-community 65001:1:2``; shutdowns with ``birdc 'disable gob4 "..."'`` and
``gobgp neighbor 2001:db8::2 shutdown --reason "..."``.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

import pytest

from bgplb.bgp import (
    AFI,
    GRACEFUL_SHUTDOWN,
    IPV4_UNICAST,
    IPV6_UNICAST,
    SAFI,
    AsPathSegment,
    AsPathSegmentType,
    CapabilityCode,
    CeaseSubcode,
    EnhancedRouteRefresh,
    ErrorCode,
    FourOctetAS,
    Fqdn,
    GracefulRestart,
    GracefulRestartFamily,
    Keepalive,
    LargeCommunity,
    MessageReader,
    MPReachNLRI,
    MPUnreachNLRI,
    Multiprotocol,
    Negotiated,
    Notification,
    Open,
    Origin,
    PathAttributes,
    Prefix,
    RouteRefreshCapability,
    UnknownCapability,
    Update,
    decode,
    encode,
)

NEG = Negotiated(four_octet_as=True, families=frozenset({IPV4_UNICAST, IPV6_UNICAST}))
SEQ = AsPathSegmentType.AS_SEQUENCE


def h(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


def split(message: bytes) -> tuple[int, bytes]:
    reader = MessageReader()
    reader.feed(message)
    framed = reader.next_message()
    assert framed is not None
    assert reader.next_message() is None
    return framed


# GoBGP 3.10 OPEN on the IPv4 session (captured 2026-11-26): each capability in its own
# optional parameter; RR, FQDN "vm", MP ipv4+ipv6, 4-octet AS, GR 120 s, Extended Next Hop.
GOBGP_OPEN = h(
    "ffffffffffffffffffffffffffffffff004d0104fde90009c000020130022e0200490402766d"
    "0001040001000101040002000141040000fde9400a007800010100000201000506000100010002"
)
# BIRD 2.0.12 OPEN on the IPv4 session (captured 2026-11-26): one optional parameter holding
# MP ipv4, RR, GR, 4-octet AS, Enhanced RR, Long-Lived GR.
BIRD_OPEN = h(
    "ffffffffffffffffffffffffffffffff00350104fdea0009c000020218021601040001000102"
    "004002007841040000fdea46004700"
)
# GoBGP 3.10 UPDATE (captured 2026-11-26): 203.0.113.0/24, ORIGIN IGP, AS_PATH 65001, NEXT_HOP,
# MED 10, COMMUNITIES 65001:100 + GRACEFUL_SHUTDOWN, LARGE_COMMUNITY 65001:1:2.
GOBGP_UPDATE = h(
    "ffffffffffffffffffffffffffffffff005002000000354001010040020602010000fde9400304"
    "c00002018004040000000ac00808fde90064ffff0000c0200c0000fde9000000010000000218cb0071"
)
# BIRD 2.0.12 UPDATE (captured 2026-11-26): two IPv4 prefixes, MED 50, communities, large.
BIRD_UPDATE = h(
    "ffffffffffffffffffffffffffffffff005502000000354001010040020602010000fdea400304"
    "c000020280040400000032c00808fdea0064ffff0000c0200c0000fdea000000010000000218c633"
    "6420c633640a"
)
# BIRD 2.0.12 IPv6 UPDATE over the IPv6 session (captured 2026-11-26): MP_REACH_NLRI first,
# next hop 2001:db8::2 + link-local fe80::9813:48ff:fede:4079, two prefixes.
BIRD_UPDATE_V6 = h(
    "ffffffffffffffffffffffffffffffff006c0200000055900e003d0002012020010db800000000"
    "0000000000000002fe80000000000000981348fffede4079003020010db801008020010db80000"
    "000000000000000000104001010040020602010000fdeac00804fdea0258"
)
# BIRD 2.0.12 End-of-RIB for IPv6 unicast (captured 2026-11-26)
BIRD_EOR_V6 = h("ffffffffffffffffffffffffffffffff001d0200000006800f03000201")
# BIRD/GoBGP End-of-RIB for IPv4 unicast (captured 2026-11-26)
EOR_V4 = h("ffffffffffffffffffffffffffffffff00170200000000")
KEEPALIVE = h("ffffffffffffffffffffffffffffffff001304")
# BIRD 2.0.12 `disable gob4 "maintenance window: back at 10:00 ü"` (captured 2026-11-26)
BIRD_SHUTDOWN = h(
    "ffffffffffffffffffffffffffffffff003a030602246d61696e74656e616e63652077696e646f77"
    "3a206261636b2061742031303a303020c3bc"
)
# GoBGP 3.10 `neighbor 2001:db8::2 shutdown --reason "GoBGP planned shutdown"` (2026-11-26)
GOBGP_SHUTDOWN = h(
    "ffffffffffffffffffffffffffffffff002c03060216476f42475020706c616e6e65642073687574646f776e"
)


def test_gobgp_open() -> None:
    msg = decode(*split(GOBGP_OPEN))
    assert msg == Open(
        asn=65001,
        hold_time=9,
        router_id=IPv4Address("192.0.2.1"),
        capabilities=(
            RouteRefreshCapability(),
            Fqdn("vm", ""),
            Multiprotocol(AFI.IPV4, SAFI.UNICAST),
            Multiprotocol(AFI.IPV6, SAFI.UNICAST),
            FourOctetAS(65001),
            GracefulRestart(
                120, families=(GracefulRestartFamily(1, 1, False), GracefulRestartFamily(2, 1))
            ),
            UnknownCapability(CapabilityCode.EXTENDED_NEXT_HOP, h("000100010002")),
        ),
    )
    assert isinstance(msg, Open)
    assert msg.four_octet_as
    assert msg.families == {IPV4_UNICAST, IPV6_UNICAST}
    assert msg.capability(CapabilityCode.GRACEFUL_RESTART) == msg.capabilities[5]
    # our encoder puts every capability into one optional parameter, like BIRD
    assert decode(*split(encode(msg))) == msg


def test_bird_open_reencodes_byte_for_byte() -> None:
    msg = decode(*split(BIRD_OPEN))
    assert msg == Open(
        65002,
        9,
        IPv4Address("192.0.2.2"),
        (
            Multiprotocol(1, 1),
            RouteRefreshCapability(),
            GracefulRestart(120),
            FourOctetAS(65002),
            EnhancedRouteRefresh(),
            UnknownCapability(CapabilityCode.LONG_LIVED_GRACEFUL_RESTART, b""),
        ),
    )
    assert encode(msg) == BIRD_OPEN


def test_gobgp_update_communities_large_med() -> None:
    msg = decode(*split(GOBGP_UPDATE), NEG)
    expected = Update(
        attributes=PathAttributes(
            origin=Origin.IGP,
            as_path=(AsPathSegment(SEQ, (65001,)),),
            next_hop=IPv4Address("192.0.2.1"),
            med=10,
            communities=((65001 << 16) | 100, GRACEFUL_SHUTDOWN),
            large_communities=(LargeCommunity(65001, 1, 2),),
        ),
        nlri=(Prefix.parse("203.0.113.0/24"),),
    )
    assert msg == expected
    assert encode(expected, NEG) == GOBGP_UPDATE


def test_bird_update_reencodes() -> None:
    msg = decode(*split(BIRD_UPDATE), NEG)
    assert isinstance(msg, Update)
    assert msg.nlri == (Prefix.parse("198.51.100.0/24"), Prefix.parse("198.51.100.10/32"))
    assert msg.attributes.med == 50
    assert msg.attributes.as_path_list() == [65002]
    assert encode(msg, NEG) == BIRD_UPDATE


def test_bird_ipv6_update_with_link_local_next_hop() -> None:
    msg = decode(*split(BIRD_UPDATE_V6), NEG)
    assert msg == Update(
        attributes=PathAttributes(
            origin=Origin.IGP,
            as_path=(AsPathSegment(SEQ, (65002,)),),
            communities=((65002 << 16) | 600,),
            mp_reach=MPReachNLRI(
                AFI.IPV6,
                SAFI.UNICAST,
                (IPv6Address("2001:db8::2"), IPv6Address("fe80::9813:48ff:fede:4079")),
                (Prefix.parse("2001:db8:100::/48"), Prefix.parse("2001:db8::10/128")),
            ),
        )
    )
    assert isinstance(msg, Update)
    assert msg.announced == msg.attributes.mp_reach.nlri  # type: ignore[union-attr]
    # BIRD sets Extended Length on MP_REACH_NLRI even for 61 octets; we use it only when needed
    assert BIRD_UPDATE_V6[23] == 0x90
    wire = encode(msg, NEG)
    assert wire[23] == 0x80
    assert len(wire) == len(BIRD_UPDATE_V6) - 1
    assert decode(*split(wire), NEG) == msg


def test_end_of_rib_markers() -> None:
    v6 = decode(*split(BIRD_EOR_V6), NEG)
    assert isinstance(v6, Update)
    assert v6.is_end_of_rib == IPV6_UNICAST
    assert v6.attributes.mp_unreach == MPUnreachNLRI(AFI.IPV6, SAFI.UNICAST, ())
    assert encode(Update.end_of_rib(IPV6_UNICAST)) == BIRD_EOR_V6
    v4 = decode(*split(EOR_V4))
    assert isinstance(v4, Update)
    assert v4.is_end_of_rib == IPV4_UNICAST
    assert encode(Update.end_of_rib(IPV4_UNICAST)) == EOR_V4
    assert decode(*split(GOBGP_UPDATE), NEG).is_end_of_rib is None  # type: ignore[union-attr]


def test_keepalive() -> None:
    assert decode(*split(KEEPALIVE)) == Keepalive()
    assert encode(Keepalive()) == KEEPALIVE


@pytest.mark.parametrize(
    ("wire", "text"),
    [
        (BIRD_SHUTDOWN, "maintenance window: back at 10:00 ü"),
        (GOBGP_SHUTDOWN, "GoBGP planned shutdown"),
    ],
)
def test_shutdown_notifications(wire: bytes, text: str) -> None:
    msg = decode(*split(wire))
    assert isinstance(msg, Notification)
    assert (msg.code, msg.subcode) == (ErrorCode.CEASE, CeaseSubcode.ADMINISTRATIVE_SHUTDOWN)
    assert msg.shutdown_message == text
    assert str(msg) == f"Cease/Administrative Shutdown: {text!r}"
    assert encode(Notification.cease_shutdown(CeaseSubcode.ADMINISTRATIVE_SHUTDOWN, text)) == wire


# RFC 4271 §4.1 / §4.4: the smallest message, a KEEPALIVE, and RFC 8203 §2's example layout
# (length octet then UTF-8) are covered above; RFC 6793 §4.2.2's AS_TRANS value:
def test_as_trans_in_open_for_four_octet_asn() -> None:
    msg = Open(4200000000, 90, IPv4Address("192.0.2.11"), (FourOctetAS(4200000000),))
    wire = encode(msg)
    assert wire[20:22] == (23456).to_bytes(2, "big")  # My AS = AS_TRANS
    assert decode(*split(wire)) == msg
