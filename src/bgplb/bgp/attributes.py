"""Path attributes of the UPDATE message: types and wire encoding.

RFC 4271 §4.3/§5 (ORIGIN, AS_PATH, NEXT_HOP, MULTI_EXIT_DISC, LOCAL_PREF, ATOMIC_AGGREGATE,
AGGREGATOR), RFC 1997 (COMMUNITIES), RFC 4360 (EXTENDED_COMMUNITIES), RFC 8092
(LARGE_COMMUNITY), RFC 4760 (MP_REACH_NLRI / MP_UNREACH_NLRI), RFC 6793 (AS4_PATH /
AS4_AGGREGATOR, AS_TRANS), RFC 8326 (GRACEFUL_SHUTDOWN), RFC 7999 (BLACKHOLE),
draft-ietf-idr-link-bandwidth (link bandwidth extended community).

The decoding side -- per-attribute decoders and the attribute-list parser with the RFC 7606
error handling -- is :mod:`bgplb.bgp.attrparse`, which imports this module (not the reverse).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import Any

from .prefix import Prefix, encode_prefixes

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
AS_TRANS = 23456


class AttrCode(IntEnum):
    """Path attribute type codes (IANA "BGP Path Attributes")."""

    ORIGIN = 1
    AS_PATH = 2
    NEXT_HOP = 3
    MULTI_EXIT_DISC = 4
    LOCAL_PREF = 5
    ATOMIC_AGGREGATE = 6
    AGGREGATOR = 7
    COMMUNITIES = 8
    ORIGINATOR_ID = 9
    CLUSTER_LIST = 10
    MP_REACH_NLRI = 14
    MP_UNREACH_NLRI = 15
    EXTENDED_COMMUNITIES = 16
    AS4_PATH = 17
    AS4_AGGREGATOR = 18
    LARGE_COMMUNITIES = 32
    ONLY_TO_CUSTOMER = 35


class AttrFlag(IntFlag):
    """Attribute Flags octet (RFC 4271 §4.3)."""

    OPTIONAL = 0x80
    TRANSITIVE = 0x40
    PARTIAL = 0x20
    EXTENDED_LENGTH = 0x10


class Origin(IntEnum):
    IGP = 0
    EGP = 1
    INCOMPLETE = 2


class AsPathSegmentType(IntEnum):
    """AS_PATH segment types (RFC 4271 §4.3, RFC 5065 §3)."""

    AS_SET = 1
    AS_SEQUENCE = 2
    AS_CONFED_SEQUENCE = 3
    AS_CONFED_SET = 4


@dataclass(frozen=True, slots=True)
class AsPathSegment:
    type: AsPathSegmentType
    asns: tuple[int, ...]


# --- communities (RFC 1997, RFC 8326, RFC 7999) -------------------------------------------------

Community = int
GRACEFUL_SHUTDOWN = 0xFFFF0000
ACCEPT_OWN = 0xFFFF0001
LLGR_STALE = 0xFFFF0006
NO_LLGR = 0xFFFF0007
BLACKHOLE = 0xFFFF029A
NO_EXPORT = 0xFFFFFF01
NO_ADVERTISE = 0xFFFFFF02
NO_EXPORT_SUBCONFED = 0xFFFFFF03
NO_PEER = 0xFFFFFF04

WELL_KNOWN_COMMUNITIES: dict[int, str] = {
    GRACEFUL_SHUTDOWN: "graceful-shutdown",
    ACCEPT_OWN: "accept-own",
    LLGR_STALE: "llgr-stale",
    NO_LLGR: "no-llgr",
    BLACKHOLE: "blackhole",
    NO_EXPORT: "no-export",
    NO_ADVERTISE: "no-advertise",
    NO_EXPORT_SUBCONFED: "no-export-subconfed",
    NO_PEER: "no-peer",
}
_COMMUNITY_NAMES = {v: k for k, v in WELL_KNOWN_COMMUNITIES.items()}


def format_community(community: int) -> str:
    """``"65000:100"``, or the well-known name (``"graceful-shutdown"``)."""
    name = WELL_KNOWN_COMMUNITIES.get(community)
    return name if name else f"{community >> 16}:{community & 0xFFFF}"


def _parse_u(text: str, bits: int, what: str) -> int:
    t = text.strip()
    if not t.isdigit():
        raise ValueError(f"invalid {what} {text!r}")
    value = int(t)
    if value >= 1 << bits:
        raise ValueError(f"{what} {text!r} does not fit {bits} bits")
    return value


def parse_community(text: str) -> int:
    """Parse ``"65000:100"`` or a well-known name (``"graceful-shutdown"``, ``"NO_EXPORT"``)."""
    name = text.strip().lower().replace("_", "-")
    if name in _COMMUNITY_NAMES:
        return _COMMUNITY_NAMES[name]
    parts = text.split(":")
    if len(parts) != 2:
        raise ValueError(f"invalid community {text!r}: expected ASN:VALUE or a well-known name")
    return (_parse_u(parts[0], 16, "community") << 16) | _parse_u(parts[1], 16, "community")


@dataclass(frozen=True, slots=True)
class ExtendedCommunity:
    """An 8-octet extended community (RFC 4360), kept as bytes."""

    value: bytes

    def __post_init__(self) -> None:
        if len(self.value) != 8:
            raise ValueError("an extended community is 8 octets")

    @classmethod
    def link_bandwidth(cls, asn: int, bytes_per_second: float) -> ExtendedCommunity:
        """Link bandwidth (draft-ietf-idr-link-bandwidth): type 0x40, subtype 0x04, IEEE float.

        A 4-octet ``asn`` is carried as AS_TRANS, as the 2-octet field cannot hold it.
        """
        asn2 = asn if 0 <= asn <= 0xFFFF else AS_TRANS
        return cls(struct.pack("!BBHf", 0x40, 0x04, asn2, bytes_per_second))

    @property
    def link_bandwidth_value(self) -> float | None:
        """Bytes per second if this is a link bandwidth community (transitive or not)."""
        if self.value[0] & 0xBF == 0x00 and self.value[1] == 0x04:
            return float(struct.unpack_from("!f", self.value, 4)[0])
        return None

    def __str__(self) -> str:
        lbw = self.link_bandwidth_value
        if lbw is not None:
            return f"lbw:{int.from_bytes(self.value[2:4], 'big')}:{lbw:g}"
        return f"ext:{self.value.hex()}"


@dataclass(frozen=True, slots=True, order=True)
class LargeCommunity:
    """A large community ``global:local1:local2`` of three 32-bit values (RFC 8092)."""

    global_admin: int
    local1: int
    local2: int

    @classmethod
    def parse(cls, text: str) -> LargeCommunity:
        parts = text.split(":")
        if len(parts) != 3:
            raise ValueError(f"invalid large community {text!r}: expected A:B:C")
        a, b, c = (_parse_u(p, 32, "large community") for p in parts)
        return cls(a, b, c)

    def __str__(self) -> str:
        return f"{self.global_admin}:{self.local1}:{self.local2}"


@dataclass(frozen=True, slots=True)
class Aggregator:
    asn: int
    address: ipaddress.IPv4Address


@dataclass(frozen=True, slots=True)
class MPReachNLRI:
    """MP_REACH_NLRI (RFC 4760 §3); IPv6 next hop is (global,) or (global, link-local)."""

    afi: int
    safi: int
    next_hop: tuple[IPAddress, ...]
    nlri: tuple[Prefix, ...] = ()


@dataclass(frozen=True, slots=True)
class MPUnreachNLRI:
    """MP_UNREACH_NLRI (RFC 4760 §4)."""

    afi: int
    safi: int
    withdrawn: tuple[Prefix, ...] = ()


@dataclass(frozen=True, slots=True)
class UnknownAttribute:
    """An optional transitive attribute bgplb does not know; re-sent with PARTIAL set."""

    flags: int
    code: int
    value: bytes


@dataclass(frozen=True, slots=True)
class PathAttributes:
    """All path attributes of an UPDATE. Hashable: Adj-RIB-Out groups prefixes by it.

    ``as_path`` and ``aggregator`` always hold 4-octet ASNs: AS4_PATH / AS4_AGGREGATOR are
    merged on decode and generated on encode (RFC 6793 §4.2).
    """

    origin: Origin | None = None
    as_path: tuple[AsPathSegment, ...] = ()
    next_hop: ipaddress.IPv4Address | None = None
    med: int | None = None
    local_pref: int | None = None
    atomic_aggregate: bool = False
    aggregator: Aggregator | None = None
    communities: tuple[int, ...] = ()
    extended_communities: tuple[ExtendedCommunity, ...] = ()
    large_communities: tuple[LargeCommunity, ...] = ()
    mp_reach: MPReachNLRI | None = None
    mp_unreach: MPUnreachNLRI | None = None
    unknown: tuple[UnknownAttribute, ...] = ()

    def as_path_list(self) -> list[int]:
        """Every ASN of the AS_PATH, left to right, segments flattened."""
        return [asn for seg in self.as_path for asn in seg.asns]

    def with_(self, **changes: Any) -> PathAttributes:
        """A copy with some fields replaced (dataclasses.replace)."""
        return dataclasses.replace(self, **changes)


# --- encoding ---------------------------------------------------------------------------------

_WK = AttrFlag.TRANSITIVE
_OPT = AttrFlag.OPTIONAL
_OPT_TRANS = AttrFlag.OPTIONAL | AttrFlag.TRANSITIVE


def encode_attribute(flags: int, code: int, value: bytes) -> bytes:
    """One attribute: flags, type code, 1- or 2-octet length (EXTENDED_LENGTH when > 255)."""
    n = len(value)
    if n > 255:
        return struct.pack("!BBH", (flags | 0x10) & 0xF0, code, n) + value
    return struct.pack("!BBB", flags & 0xE0, code, n) + value


def encode_as_path(segments: tuple[AsPathSegment, ...], four_octet: bool) -> bytes:
    """AS_PATH value; 2-octet ASNs become AS_TRANS when ``four_octet`` is False."""
    parts: list[bytes] = []
    for seg in segments:
        asns = seg.asns
        if not four_octet:
            asns = tuple(a if a <= 0xFFFF else AS_TRANS for a in asns)
        fmt = "I" if four_octet else "H"
        for i in range(0, max(len(asns), 1), 255):
            chunk = asns[i : i + 255]
            parts.append(struct.pack(f"!BB{len(chunk)}{fmt}", seg.type, len(chunk), *chunk))
    return b"".join(parts)


def _encode_next_hops(hops: tuple[IPAddress, ...]) -> bytes:
    return b"".join(h.packed for h in hops)


def encode_mp_reach(mp: MPReachNLRI) -> bytes:
    """MP_REACH_NLRI attribute value (RFC 4760 §3)."""
    nh = _encode_next_hops(mp.next_hop)
    return struct.pack("!HBB", mp.afi, mp.safi, len(nh)) + nh + b"\x00" + encode_prefixes(mp.nlri)


def encode_mp_unreach(mp: MPUnreachNLRI) -> bytes:
    """MP_UNREACH_NLRI attribute value (RFC 4760 §4)."""
    return struct.pack("!HB", mp.afi, mp.safi) + encode_prefixes(mp.withdrawn)


def encode_attributes(attrs: PathAttributes, four_octet: bool, *, mp: bool = True) -> bytes:
    """The Path Attributes field. MP attributes come first (RFC 7606 §5.1), then by type code.

    ``four_octet`` is the session's 4-octet AS state; when False, AS4_PATH / AS4_AGGREGATOR are
    added as needed (RFC 6793 §4.2.2). With ``mp=False`` the MP attributes are left out (the
    UPDATE packer adds its own).
    """
    out: list[bytes] = []
    add = out.append
    if mp and attrs.mp_reach is not None:
        add(encode_attribute(_OPT, AttrCode.MP_REACH_NLRI, encode_mp_reach(attrs.mp_reach)))
    if mp and attrs.mp_unreach is not None:
        add(encode_attribute(_OPT, AttrCode.MP_UNREACH_NLRI, encode_mp_unreach(attrs.mp_unreach)))
    if attrs.origin is not None:
        add(encode_attribute(_WK, AttrCode.ORIGIN, bytes((attrs.origin,))))
    need_as4_path = False
    if attrs.origin is not None or attrs.as_path:
        add(encode_attribute(_WK, AttrCode.AS_PATH, encode_as_path(attrs.as_path, four_octet)))
        need_as4_path = not four_octet and any(a > 0xFFFF for a in attrs.as_path_list())
    if attrs.next_hop is not None:
        add(encode_attribute(_WK, AttrCode.NEXT_HOP, attrs.next_hop.packed))
    if attrs.med is not None:
        add(encode_attribute(_OPT, AttrCode.MULTI_EXIT_DISC, attrs.med.to_bytes(4, "big")))
    if attrs.local_pref is not None:
        add(encode_attribute(_WK, AttrCode.LOCAL_PREF, attrs.local_pref.to_bytes(4, "big")))
    if attrs.atomic_aggregate:
        add(encode_attribute(_WK, AttrCode.ATOMIC_AGGREGATE, b""))
    agg = attrs.aggregator
    if agg is not None:
        if four_octet:
            value = agg.asn.to_bytes(4, "big") + agg.address.packed
        else:
            asn2 = agg.asn if agg.asn <= 0xFFFF else AS_TRANS
            value = asn2.to_bytes(2, "big") + agg.address.packed
        add(encode_attribute(_OPT_TRANS, AttrCode.AGGREGATOR, value))
    if attrs.communities:
        value = struct.pack(f"!{len(attrs.communities)}I", *attrs.communities)
        add(encode_attribute(_OPT_TRANS, AttrCode.COMMUNITIES, value))
    if attrs.extended_communities:
        value = b"".join(c.value for c in attrs.extended_communities)
        add(encode_attribute(_OPT_TRANS, AttrCode.EXTENDED_COMMUNITIES, value))
    if need_as4_path:
        as4 = tuple(s for s in attrs.as_path if s.type <= AsPathSegmentType.AS_SEQUENCE)
        add(encode_attribute(_OPT_TRANS, AttrCode.AS4_PATH, encode_as_path(as4, True)))
    if agg is not None and not four_octet and agg.asn > 0xFFFF:
        value = agg.asn.to_bytes(4, "big") + agg.address.packed
        add(encode_attribute(_OPT_TRANS, AttrCode.AS4_AGGREGATOR, value))
    if attrs.large_communities:
        value = b"".join(
            struct.pack("!III", c.global_admin, c.local1, c.local2) for c in attrs.large_communities
        )
        add(encode_attribute(_OPT_TRANS, AttrCode.LARGE_COMMUNITIES, value))
    for u in attrs.unknown:
        add(encode_attribute(u.flags, u.code, u.value))
    return b"".join(out)
