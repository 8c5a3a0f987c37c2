"""Malformed messages -> the expected error (code, subcode, data, action).

Each row is built by hand from the RFC text it cites: RFC 4271 §6.1-§6.3 (NOTIFICATION to send),
RFC 7606 §3-§7 (treat-as-withdraw / attribute-discard / session reset), RFC 7607 (AS 0),
RFC 6793 §6 (AS4_* attributes), RFC 4760 (MP attributes), RFC 7313 §5, RFC 9072.
"""

from __future__ import annotations

import struct
from ipaddress import IPv4Address

import pytest

from bgplb.bgp import (
    AFI,
    IPV4_UNICAST,
    IPV6_UNICAST,
    SAFI,
    Aggregator,
    BGPError,
    ErrorAction,
    ErrorCode,
    HeaderSubcode,
    MessageReader,
    MPUnreachNLRI,
    Negotiated,
    OpenSubcode,
    PathAttributes,
    Prefix,
    RouteRefreshSubcode,
    UnknownAttribute,
    Update,
    UpdateSubcode,
    decode,
)

U = ErrorCode.UPDATE_MESSAGE
S = UpdateSubcode
TAW = ErrorAction.TREAT_AS_WITHDRAW
DISCARD = ErrorAction.ATTRIBUTE_DISCARD
RESET = ErrorAction.SESSION_RESET

NEG4 = Negotiated(four_octet_as=True, ebgp=False)
NEG46 = Negotiated(four_octet_as=True, families=frozenset({IPV4_UNICAST, IPV6_UNICAST}))
NEG2 = Negotiated(four_octet_as=False, ebgp=False)


def attr(flags: int, code: int, value: bytes) -> bytes:
    if flags & 0x10:
        return struct.pack("!BBH", flags, code, len(value)) + value
    return struct.pack("!BBB", flags, code, len(value)) + value


ORIGIN = attr(0x40, 1, b"\x00")
AS_PATH = attr(0x40, 2, b"\x02\x01" + (65001).to_bytes(4, "big"))
NEXT_HOP = attr(0x40, 3, bytes([192, 0, 2, 1]))
BASE = ORIGIN + AS_PATH + NEXT_HOP
NLRI = b"\x18\xc6\x33\x64"  # 198.51.100.0/24
P24 = Prefix.parse("198.51.100.0/24")
V6NLRI = b"\x30\x20\x01\x0d\xb8\x01\x00"  # 2001:db8:100::/48
P6 = Prefix.parse("2001:db8:100::/48")
MP_REACH_V6 = attr(
    0x80, 14, struct.pack("!HBB", 2, 1, 16) + bytes.fromhex("20010db8" + "00" * 11 + "02") + b"\x00"
)


def mp_reach_v6(nlri: bytes = V6NLRI) -> bytes:
    return attr(0x80, 14, MP_REACH_V6[3:] + nlri)


def update(attrs: bytes, nlri: bytes = b"", withdrawn: bytes = b"") -> bytes:
    return (
        struct.pack("!H", len(withdrawn)) + withdrawn + struct.pack("!H", len(attrs)) + attrs + nlri
    )


# --- UPDATE errors that reset the session ---------------------------------------------------

RESETS = [
    # RFC 4271 §6.3: Withdrawn Routes Length / Total Attribute Length too large
    ("withdrawn-length-overrun", b"\x00\xff\x00\x00", NEG4, S.MALFORMED_ATTRIBUTE_LIST, b""),
    ("attr-length-overrun", b"\x00\x00\xff\xff" + BASE, NEG4, S.MALFORMED_ATTRIBUTE_LIST, b""),
    ("short-body", b"\x00\x00\x00", NEG4, S.MALFORMED_ATTRIBUTE_LIST, b""),
    # RFC 4271 §6.3 / RFC 7606 §5.3: NLRI syntactically incorrect
    (
        "nlri-length-33",
        update(BASE, b"\x21\x01\x02\x03\x04\x05"),
        NEG4,
        S.INVALID_NETWORK_FIELD,
        b"",
    ),
    ("nlri-truncated", update(BASE, b"\x18\xc6\x33"), NEG4, S.INVALID_NETWORK_FIELD, b""),
    ("withdrawn-truncated", update(b"", withdrawn=b"\x20\xc6"), NEG4, S.INVALID_NETWORK_FIELD, b""),
    # RFC 7606 §3.g: MP_REACH_NLRI twice
    (
        "duplicate-mp-reach",
        update(mp_reach_v6() + mp_reach_v6() + ORIGIN + AS_PATH),
        NEG46,
        S.MALFORMED_ATTRIBUTE_LIST,
        b"",
    ),
    # RFC 7606 §7.11: MP_REACH_NLRI next-hop length inconsistent, NLRI malformed, too short
    (
        "mp-reach-bad-nh-len",
        update(attr(0x80, 14, b"\x00\x02\x01\x04\xc0\x00\x02\x01\x00" + V6NLRI) + ORIGIN + AS_PATH),
        NEG46,
        S.OPTIONAL_ATTRIBUTE_ERROR,
        attr(0x80, 14, b"\x00\x02\x01\x04\xc0\x00\x02\x01\x00" + V6NLRI),
    ),
    (
        "mp-reach-nh-overrun",
        update(attr(0x80, 14, b"\x00\x02\x01\x20\x00")),
        NEG46,
        S.OPTIONAL_ATTRIBUTE_ERROR,
        attr(0x80, 14, b"\x00\x02\x01\x20\x00"),
    ),
    (
        "mp-reach-bad-nlri",
        update(mp_reach_v6(b"\x81" + b"\x00" * 16) + ORIGIN + AS_PATH),
        NEG46,
        S.OPTIONAL_ATTRIBUTE_ERROR,
        mp_reach_v6(b"\x81" + b"\x00" * 16),
    ),
    (
        "mp-reach-too-short",
        update(attr(0x80, 14, b"\x00\x02\x01")),
        NEG46,
        S.OPTIONAL_ATTRIBUTE_ERROR,
        attr(0x80, 14, b"\x00\x02\x01"),
    ),
    (
        "mp-unreach-bad-nlri",
        update(attr(0x80, 15, b"\x00\x02\x01\x40\x20\x01")),
        NEG46,
        S.OPTIONAL_ATTRIBUTE_ERROR,
        attr(0x80, 15, b"\x00\x02\x01\x40\x20\x01"),
    ),
    # RFC 4271 §6.3: unrecognized well-known attribute
    (
        "unknown-well-known",
        update(BASE + attr(0x40, 99, b"x"), NLRI),
        NEG4,
        S.UNRECOGNIZED_WELL_KNOWN_ATTRIBUTE,
        attr(0x40, 99, b"x"),
    ),
    # RFC 7606 §4 overrun while MP_REACH_NLRI may be hidden in the rest (IPv6 negotiated)
    (
        "attr-overrun-mp-session",
        update(ORIGIN + b"\x40\x02\x09\x02\x01"),
        NEG46,
        S.MALFORMED_ATTRIBUTE_LIST,
        b"",
    ),
]


@pytest.mark.parametrize(
    ("body", "neg", "subcode", "data"),
    [row[1:] for row in RESETS],
    ids=[row[0] for row in RESETS],
)
def test_update_session_reset(body: bytes, neg: Negotiated, subcode: int, data: bytes) -> None:
    with pytest.raises(BGPError) as info:
        decode(2, body, neg)
    err = info.value
    assert (err.code, err.subcode, err.data, err.action) == (U, subcode, data, RESET)
    assert str(err).startswith("UPDATE Message Error/")


# --- UPDATE errors recovered by treat-as-withdraw ---------------------------------------------

TAWS = [
    ("origin-length", attr(0x40, 1, b"\x00\x00") + AS_PATH + NEXT_HOP, S.ATTRIBUTE_LENGTH_ERROR, 0),
    ("origin-value", attr(0x40, 1, b"\x03") + AS_PATH + NEXT_HOP, S.INVALID_ORIGIN_ATTRIBUTE, 0),
    ("origin-flags", attr(0xC0, 1, b"\x00") + AS_PATH + NEXT_HOP, S.ATTRIBUTE_FLAGS_ERROR, 0),
    (
        "as-path-seg-type",
        ORIGIN + attr(0x40, 2, b"\x05\x01\x00\x00\xfd\xe9") + NEXT_HOP,
        S.MALFORMED_AS_PATH,
        1,
    ),
    ("as-path-zero-seg", ORIGIN + attr(0x40, 2, b"\x02\x00") + NEXT_HOP, S.MALFORMED_AS_PATH, 1),
    (
        "as-path-overrun",
        ORIGIN + attr(0x40, 2, b"\x02\x02\x00\x00\xfd\xe9") + NEXT_HOP,
        S.MALFORMED_AS_PATH,
        1,
    ),
    (
        "as-path-underrun",
        ORIGIN + attr(0x40, 2, b"\x02\x01\x00\x00\xfd\xe9\x02") + NEXT_HOP,
        S.MALFORMED_AS_PATH,
        1,
    ),
    (
        "as-path-as0",
        ORIGIN + attr(0x40, 2, b"\x02\x01\x00\x00\x00\x00") + NEXT_HOP,
        S.MALFORMED_AS_PATH,
        1,
    ),
    (
        "next-hop-length",
        ORIGIN + AS_PATH + attr(0x40, 3, b"\xc0\x00\x02\x01\x00"),
        S.ATTRIBUTE_LENGTH_ERROR,
        2,
    ),
    (
        "next-hop-zero",
        ORIGIN + AS_PATH + attr(0x40, 3, b"\x00\x00\x00\x00"),
        S.INVALID_NEXT_HOP_ATTRIBUTE,
        2,
    ),
    (
        "next-hop-multicast",
        ORIGIN + AS_PATH + attr(0x40, 3, b"\xe0\x00\x00\x01"),
        S.INVALID_NEXT_HOP_ATTRIBUTE,
        2,
    ),
    ("med-length", BASE + attr(0x80, 4, b"\x00\x00\x01"), S.ATTRIBUTE_LENGTH_ERROR, 3),
    ("med-flags", BASE + attr(0x40, 4, b"\x00\x00\x00\x01"), S.ATTRIBUTE_FLAGS_ERROR, 3),
    ("local-pref-length", BASE + attr(0x40, 5, b"\x00\x64"), S.ATTRIBUTE_LENGTH_ERROR, 3),
    (
        "communities-length",
        BASE + attr(0xC0, 8, b"\xfd\xe9\x00\x64\x00"),
        S.OPTIONAL_ATTRIBUTE_ERROR,
        3,
    ),
    ("communities-empty", BASE + attr(0xC0, 8, b""), S.OPTIONAL_ATTRIBUTE_ERROR, 3),
    ("ext-communities-length", BASE + attr(0xC0, 16, b"\x00" * 7), S.OPTIONAL_ATTRIBUTE_ERROR, 3),
    (
        "large-communities-length",
        BASE + attr(0xC0, 32, b"\x00" * 11),
        S.OPTIONAL_ATTRIBUTE_ERROR,
        3,
    ),
    ("large-communities-flags", BASE + attr(0x80, 32, b"\x00" * 12), S.ATTRIBUTE_FLAGS_ERROR, 3),
]


@pytest.mark.parametrize(
    ("attrs", "subcode", "bad_index"), [r[1:] for r in TAWS], ids=[r[0] for r in TAWS]
)
def test_update_treat_as_withdraw(attrs: bytes, subcode: int, bad_index: int) -> None:
    # the offending attribute is the `bad_index`-th one: data must be exactly that attribute
    pieces = []
    i = 0
    while i < len(attrs):
        n = 3 + attrs[i + 2]
        pieces.append(attrs[i : i + n])
        i += n
    msg = decode(2, update(attrs, NLRI, withdrawn=b"\x20\xc0\x00\x02\x63"), NEG4)
    assert isinstance(msg, Update)
    assert msg.nlri == ()
    assert msg.withdrawn == (Prefix.parse("192.0.2.99/32"), P24)
    assert msg.attributes == PathAttributes()
    assert [(e.code, e.subcode, e.data, e.action) for e in msg.errors] == [
        (U, subcode, pieces[bad_index], TAW)
    ]


def taw_errors(msg: object) -> list[tuple[int, int, bytes, ErrorAction]]:
    assert isinstance(msg, Update)
    return [(e.code, e.subcode, e.data, e.action) for e in msg.errors]


@pytest.mark.parametrize(
    ("attrs", "missing"),
    [(AS_PATH + NEXT_HOP, 1), (ORIGIN + NEXT_HOP, 2), (ORIGIN + AS_PATH, 3)],
    ids=["origin", "as-path", "next-hop"],
)
def test_missing_well_known_is_treat_as_withdraw(attrs: bytes, missing: int) -> None:
    # RFC 7606 §3.d; RFC 4271 §6.3: data is the missing attribute's type code
    msg = decode(2, update(attrs, NLRI), NEG4)
    assert taw_errors(msg) == [(U, S.MISSING_WELL_KNOWN_ATTRIBUTE, bytes([missing]), TAW)]
    assert msg.withdrawn == (P24,)  # type: ignore[union-attr]


def test_nlri_without_attributes_is_treat_as_withdraw() -> None:
    msg = decode(2, update(b"", NLRI), NEG4)
    assert taw_errors(msg) == [(U, S.MISSING_WELL_KNOWN_ATTRIBUTE, b"\x01", TAW)]
    assert msg.withdrawn == (P24,)  # type: ignore[union-attr]


def test_missing_attributes_fine_without_nlri() -> None:
    msg = decode(2, update(b"", withdrawn=NLRI), NEG4)
    assert msg == Update(withdrawn=(P24,))


def test_mp_reach_missing_as_path_withdraws_mp_prefixes() -> None:
    msg = decode(2, update(mp_reach_v6() + ORIGIN), NEG46)
    assert taw_errors(msg) == [(U, S.MISSING_WELL_KNOWN_ATTRIBUTE, b"\x02", TAW)]
    assert isinstance(msg, Update)
    assert msg.attributes == PathAttributes(mp_unreach=MPUnreachNLRI(AFI.IPV6, SAFI.UNICAST, (P6,)))
    assert msg.all_withdrawn == (P6,)
    assert msg.announced == ()


def test_mp_reach_flags_error_withdraws_mp_prefixes_and_keeps_unreach() -> None:
    bad = attr(0xC0, 14, mp_reach_v6()[3:])
    unreach = attr(0x80, 15, b"\x00\x02\x01\x40\x20\x01\x0d\xb8\x00\x00\x00\x01")
    msg = decode(2, update(bad + unreach + ORIGIN + AS_PATH), NEG46)
    assert taw_errors(msg) == [(U, S.ATTRIBUTE_FLAGS_ERROR, bad, TAW)]
    assert isinstance(msg, Update)
    assert msg.all_withdrawn == (Prefix.parse("2001:db8:0:1::/64"), P6)


def test_attribute_overrun_ipv4_only_is_treat_as_withdraw() -> None:
    # RFC 7606 §4: last attribute overruns the Total Attribute Length
    msg = decode(2, update(BASE + b"\x40\x05\x09\x00", NLRI), NEG4)
    assert taw_errors(msg) == [(U, S.MALFORMED_ATTRIBUTE_LIST, b"", TAW)]
    # fewer than three octets remain
    msg = decode(2, update(BASE + b"\x40\x05", NLRI), NEG4)
    assert taw_errors(msg) == [(U, S.MALFORMED_ATTRIBUTE_LIST, b"", TAW)]
    assert msg.withdrawn == (P24,)  # type: ignore[union-attr]


# --- attribute discard ---------------------------------------------------------------------

DISCARDS = [
    ("atomic-aggregate-length", attr(0x40, 6, b"\x00"), S.ATTRIBUTE_LENGTH_ERROR, NEG4),
    ("aggregator-length", attr(0xC0, 7, b"\x00" * 7), S.ATTRIBUTE_LENGTH_ERROR, NEG4),
    ("aggregator-2octet-length", attr(0xC0, 7, b"\x00" * 8), S.ATTRIBUTE_LENGTH_ERROR, NEG2),
    (
        "aggregator-as0",
        attr(0xC0, 7, b"\x00" * 4 + b"\xc0\x00\x02\x01"),
        S.OPTIONAL_ATTRIBUTE_ERROR,
        NEG4,
    ),
    (
        "aggregator-flags",
        attr(0x40, 7, b"\x00\x00\xfd\xe9\xc0\x00\x02\x01"),
        S.ATTRIBUTE_FLAGS_ERROR,
        NEG4,
    ),
    ("as4-path-malformed", attr(0xC0, 17, b"\x02\x02\x00\x01"), S.MALFORMED_AS_PATH, NEG2),
    ("as4-path-confed", attr(0xC0, 17, b"\x03\x01\x00\x01\x00\x00"), S.MALFORMED_AS_PATH, NEG2),
    ("as4-aggregator-length", attr(0xC0, 18, b"\x00" * 6), S.ATTRIBUTE_LENGTH_ERROR, NEG2),
    ("duplicate-med", attr(0x80, 4, b"\x00\x00\x00\x01"), S.MALFORMED_ATTRIBUTE_LIST, NEG4),
    # MP_REACH_NLRI of a family bgplb does not decode (IPv4 multicast): dropped, not fatal
    (
        "mp-reach-multicast",
        attr(0x80, 14, b"\x00\x01\x02\x04\xc0\x00\x02\x01\x00\x18\xc6\x33\x64"),
        S.OPTIONAL_ATTRIBUTE_ERROR,
        NEG4,
    ),
]


@pytest.mark.parametrize(
    ("bad", "subcode", "neg"), [r[1:] for r in DISCARDS], ids=[r[0] for r in DISCARDS]
)
def test_update_attribute_discard(bad: bytes, subcode: int, neg: Negotiated) -> None:
    base = (
        ORIGIN + attr(0x40, 2, b"\x02\x01\xfd\xe9") if not neg.four_octet_as else ORIGIN + AS_PATH
    )
    base += NEXT_HOP
    extra = attr(0x80, 4, b"\x00\x00\x00\x07")
    msg = decode(2, update(base + extra + bad, NLRI), neg)
    assert taw_errors(msg) == [(U, subcode, bad, DISCARD)]
    assert isinstance(msg, Update)
    assert msg.nlri == (P24,)
    assert msg.attributes.med == 7  # the first MED survives a duplicate
    assert msg.attributes.aggregator is None
    assert msg.attributes.as_path_list() == [65001]


def test_next_hop_malformed_without_classic_nlri_is_discarded() -> None:
    # RFC 4760 §3: NEXT_HOP is ignored when only MP_REACH_NLRI carries NLRI
    bad_nh = attr(0x40, 3, b"\x00\x00\x00\x00")
    msg = decode(2, update(mp_reach_v6() + ORIGIN + AS_PATH + bad_nh), NEG46)
    assert taw_errors(msg) == [(U, S.INVALID_NEXT_HOP_ATTRIBUTE, bad_nh, DISCARD)]
    assert msg.announced == (P6,)  # type: ignore[union-attr]


def test_local_pref_from_ebgp_is_discarded_silently() -> None:
    # RFC 7606 §7.5
    lp = attr(0x40, 5, b"\x00\x00\x00\x64")
    ebgp = decode(2, update(BASE + lp, NLRI), Negotiated(four_octet_as=True, ebgp=True))
    ibgp = decode(2, update(BASE + lp, NLRI), NEG4)
    assert isinstance(ebgp, Update) and isinstance(ibgp, Update)
    assert ebgp.attributes.local_pref is None and not ebgp.errors
    assert ibgp.attributes.local_pref == 100 and not ibgp.errors


def test_as4_attributes_from_four_octet_peer_are_dropped() -> None:
    # RFC 6793 §6: a NEW speaker discards AS4_PATH / AS4_AGGREGATOR from a NEW speaker
    as4 = attr(0xC0, 17, b"\x02\x01\x00\x00\xfd\xea")
    msg = decode(2, update(BASE + as4, NLRI), NEG4)
    assert isinstance(msg, Update)
    assert msg.attributes.as_path_list() == [65001]
    assert not msg.errors


def test_unknown_optional_attributes() -> None:
    # RFC 4271 §5: unknown optional transitive kept with Partial set, non-transitive dropped
    msg = decode(2, update(BASE + attr(0xC0, 99, b"ab") + attr(0x80, 98, b"cd"), NLRI), NEG4)
    assert isinstance(msg, Update)
    assert msg.attributes.unknown == (UnknownAttribute(0xE0, 99, b"ab"),)
    assert not msg.errors


def test_as4_merge_from_two_octet_peer() -> None:
    # RFC 6793 §4.2.3: AS_PATH 65001 23456 23456 + AS4_PATH 4200000001 4200000002
    as_path = attr(0x40, 2, b"\x02\x03\xfd\xe9\x5b\xa0\x5b\xa0")
    as4_path = attr(0xC0, 17, b"\x02\x02" + struct.pack("!II", 4200000001, 4200000002))
    agg = attr(0xC0, 7, b"\x5b\xa0\xc0\x00\x02\x09")
    as4_agg = attr(0xC0, 18, struct.pack("!I", 4200000001) + b"\xc0\x00\x02\x09")
    msg = decode(2, update(ORIGIN + as_path + NEXT_HOP + agg + as4_path + as4_agg, NLRI), NEG2)
    assert isinstance(msg, Update)
    assert msg.attributes.as_path_list() == [65001, 4200000001, 4200000002]
    assert msg.attributes.aggregator == Aggregator(4200000001, IPv4Address("192.0.2.9"))
    # AGGREGATOR not AS_TRANS: both AS4 attributes ignored
    agg2 = attr(0xC0, 7, b"\xfd\xe9\xc0\x00\x02\x09")
    msg = decode(2, update(ORIGIN + as_path + NEXT_HOP + agg2 + as4_path + as4_agg, NLRI), NEG2)
    assert isinstance(msg, Update)
    assert msg.attributes.as_path_list() == [65001, 23456, 23456]
    assert msg.attributes.aggregator == Aggregator(65001, IPv4Address("192.0.2.9"))
    # AS4_PATH longer than AS_PATH: ignored
    short = attr(0x40, 2, b"\x02\x01\x5b\xa0")
    msg = decode(2, update(ORIGIN + short + NEXT_HOP + as4_path, NLRI), NEG2)
    assert msg.attributes.as_path_list() == [23456]  # type: ignore[union-attr]


# --- OPEN -------------------------------------------------------------------------------------


def open_body(
    version: int = 4,
    my_as: int = 65001,
    hold: int = 90,
    bgp_id: bytes = b"\xc0\x00\x02\x01",
    params: bytes = b"",
) -> bytes:
    return struct.pack("!BHH", version, my_as, hold) + bgp_id + bytes([len(params)]) + params


OPENS = [
    ("version-3", open_body(version=3), OpenSubcode.UNSUPPORTED_VERSION, b"\x00\x04"),
    ("hold-1", open_body(hold=1), OpenSubcode.UNACCEPTABLE_HOLD_TIME, b"\x00\x01"),
    ("hold-2", open_body(hold=2), OpenSubcode.UNACCEPTABLE_HOLD_TIME, b"\x00\x02"),
    ("bgp-id-zero", open_body(bgp_id=b"\x00" * 4), OpenSubcode.BAD_BGP_IDENTIFIER, b"\x00" * 4),
    (
        "bgp-id-multicast",
        open_body(bgp_id=b"\xe0\x00\x00\x05"),
        OpenSubcode.BAD_BGP_IDENTIFIER,
        b"\xe0\x00\x00\x05",
    ),
    ("as-0", open_body(my_as=0), OpenSubcode.BAD_PEER_AS, b"\x00\x00"),
    (
        "four-octet-as-0",
        open_body(params=b"\x02\x06\x41\x04\x00\x00\x00\x00"),
        OpenSubcode.BAD_PEER_AS,
        b"\xfd\xe9",
    ),
    (
        "param-type-1",
        open_body(params=b"\x01\x02ab"),
        OpenSubcode.UNSUPPORTED_OPTIONAL_PARAMETER,
        b"",
    ),
    ("param-len-mismatch", open_body()[:-1] + b"\x05", OpenSubcode.UNSPECIFIC, b""),
    ("param-overrun", open_body(params=b"\x02\x09\x01\x04"), OpenSubcode.UNSPECIFIC, b""),
    (
        "cap-overrun",
        open_body(params=b"\x02\x04\x01\x04\x00\x01"),
        OpenSubcode.UNSPECIFIC,
        b"\x01\x04\x00\x01",
    ),
    (
        "mp-cap-len-3",
        open_body(params=b"\x02\x05\x01\x03\x00\x01\x01"),
        OpenSubcode.UNSPECIFIC,
        b"\x01\x03\x00\x01\x01",
    ),
    (
        "rfc9072-bad-length",
        open_body()[:-1] + b"\xff\xff\x00\x09\x02\x00\x00",
        OpenSubcode.UNSPECIFIC,
        b"",
    ),
]


@pytest.mark.parametrize(
    ("body", "subcode", "data"), [r[1:] for r in OPENS], ids=[r[0] for r in OPENS]
)
def test_open_errors(body: bytes, subcode: int, data: bytes) -> None:
    with pytest.raises(BGPError) as info:
        decode(1, body)
    err = info.value
    assert (err.code, err.subcode, err.data, err.action) == (
        ErrorCode.OPEN_MESSAGE,
        subcode,
        data,
        RESET,
    )


# --- message header (RFC 4271 §6.1) ----------------------------------------------------------

M = b"\xff" * 16


def hdr(length: int, msg_type: int) -> bytes:
    return M + struct.pack("!HB", length, msg_type)


HEADERS = [
    (
        "bad-marker",
        b"\xff" * 15 + b"\xfe" + struct.pack("!HB", 19, 4),
        False,
        HeaderSubcode.CONNECTION_NOT_SYNCHRONIZED,
        b"",
    ),
    ("length-18", hdr(18, 4), False, HeaderSubcode.BAD_MESSAGE_LENGTH, b"\x00\x12"),
    ("length-4097", hdr(4097, 2), False, HeaderSubcode.BAD_MESSAGE_LENGTH, b"\x10\x01"),
    ("open-4097-extended", hdr(4097, 1), True, HeaderSubcode.BAD_MESSAGE_LENGTH, b"\x10\x01"),
    ("type-6", hdr(19, 6), False, HeaderSubcode.BAD_MESSAGE_TYPE, b"\x06"),
    ("type-0", hdr(19, 0), False, HeaderSubcode.BAD_MESSAGE_TYPE, b"\x00"),
    ("keepalive-20", hdr(20, 4) + b"\x00", False, HeaderSubcode.BAD_MESSAGE_LENGTH, b"\x00\x14"),
    ("open-28", hdr(28, 1), False, HeaderSubcode.BAD_MESSAGE_LENGTH, b"\x00\x1c"),
    ("update-22", hdr(22, 2), False, HeaderSubcode.BAD_MESSAGE_LENGTH, b"\x00\x16"),
    ("notification-20", hdr(20, 3), False, HeaderSubcode.BAD_MESSAGE_LENGTH, b"\x00\x14"),
    (
        "route-refresh-22",
        hdr(22, 5) + b"\x00\x01\x00",
        False,
        HeaderSubcode.BAD_MESSAGE_LENGTH,
        b"\x00\x16",
    ),
    (
        "route-refresh-24-subtype0",
        hdr(24, 5) + b"\x00\x01\x00\x01\x00",
        False,
        HeaderSubcode.BAD_MESSAGE_LENGTH,
        b"\x00\x18",
    ),
]


@pytest.mark.parametrize(
    ("wire", "extended", "subcode", "data"), [r[1:] for r in HEADERS], ids=[r[0] for r in HEADERS]
)
def test_header_errors(wire: bytes, extended: bool, subcode: int, data: bytes) -> None:
    reader = MessageReader()
    reader.extended = extended
    reader.feed(wire)
    with pytest.raises(BGPError) as info:
        reader.next_message()
    err = info.value
    assert (err.code, err.subcode, err.data) == (ErrorCode.MESSAGE_HEADER, subcode, data)
    with pytest.raises(BGPError):  # the reader stays broken
        reader.next_message()


def test_route_refresh_bad_length_with_borr_subtype() -> None:
    # RFC 7313 §5: Invalid Message Length, data is the complete message
    wire = hdr(24, 5) + b"\x00\x01\x01\x01\x00"
    reader = MessageReader()
    reader.feed(wire)
    with pytest.raises(BGPError) as info:
        reader.next_message()
    err = info.value
    assert (err.code, err.subcode, err.data) == (
        ErrorCode.ROUTE_REFRESH,
        RouteRefreshSubcode.INVALID_MESSAGE_LENGTH,
        wire,
    )


def test_extended_message_allows_big_update() -> None:
    reader = MessageReader()
    reader.extended = True
    body = b"\x00\x00\x00\x00" + b"\x18\xc6\x33\x64" * 2000
    reader.feed(hdr(19 + len(body), 2) + body)
    assert reader.next_message() == (2, body)


def test_reader_handles_split_and_coalesced_input() -> None:
    keepalive = hdr(19, 4)
    update_msg = hdr(23, 2) + b"\x00\x00\x00\x00"
    stream = keepalive + update_msg + keepalive
    reader = MessageReader()
    got = []
    for i in range(len(stream)):
        reader.feed(stream[i : i + 1])
        while (m := reader.next_message()) is not None:
            got.append(m)
    assert got == [(4, b""), (2, b"\x00\x00\x00\x00"), (4, b"")]
    assert reader.buffered == 0


def test_decode_checks_lengths_itself() -> None:
    for msg_type, body in ((4, b"\x00"), (3, b"\x06"), (5, b"\x00\x01\x00")):
        with pytest.raises(BGPError) as info:
            decode(msg_type, body)
        assert info.value.subcode == HeaderSubcode.BAD_MESSAGE_LENGTH
    with pytest.raises(BGPError) as info:
        decode(9, b"")
    assert (info.value.subcode, info.value.data) == (HeaderSubcode.BAD_MESSAGE_TYPE, b"\x09")
