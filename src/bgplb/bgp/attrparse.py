"""Decoding the Path Attributes field of an UPDATE, with RFC 7606 error handling.

The attribute-list parser applies the action for each malformed attribute (RFC 7606 §7), flags
conflicts (§3.c), duplicates (§3.g), missing well-known attributes (§3.d), length overruns (§4),
RFC 7607 (AS 0) and RFC 6793 §4.2.3/§6 (AS4_PATH / AS4_AGGREGATOR). Per-attribute decoders:
RFC 4271 §4.3/§5, RFC 1997, RFC 4360, RFC 8092, RFC 4760 §3/§4. The types and the encoding side
are in :mod:`bgplb.bgp.attributes` (which does not import this module).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .attributes import (
    AS_TRANS,
    Aggregator,
    AsPathSegment,
    AsPathSegmentType,
    AttrCode,
    AttrFlag,
    ExtendedCommunity,
    IPAddress,
    LargeCommunity,
    MPReachNLRI,
    MPUnreachNLRI,
    Origin,
    PathAttributes,
    UnknownAttribute,
)
from .errors import BGPError, ErrorAction, ErrorCode, UpdateSubcode
from .families import AFI, IPV4_UNICAST, SAFI
from .prefix import Prefix, decode_prefixes

if TYPE_CHECKING:
    from .negotiated import Negotiated

__all__ = [
    "MAX_RECORDED_ERRORS",
    "DecodedAttributes",
    "decode_as_path",
    "decode_attributes",
    "decode_mp_reach",
    "decode_mp_unreach",
    "merge_as4_path",
]

_SEG_TYPES = {t.value: t for t in AsPathSegmentType}
_TAW = ErrorAction.TREAT_AS_WITHDRAW
_DISCARD = ErrorAction.ATTRIBUTE_DISCARD
_RESET = ErrorAction.SESSION_RESET
_UPDATE = ErrorCode.UPDATE_MESSAGE
_S = UpdateSubcode

# code -> (expected Optional|Transitive bits, action when malformed) -- RFC 7606 §7
_SPEC: dict[int, tuple[int, ErrorAction]] = {
    AttrCode.ORIGIN: (0x40, _TAW),
    AttrCode.AS_PATH: (0x40, _TAW),
    AttrCode.NEXT_HOP: (0x40, _TAW),
    AttrCode.MULTI_EXIT_DISC: (0x80, _TAW),
    AttrCode.LOCAL_PREF: (0x40, _TAW),
    AttrCode.ATOMIC_AGGREGATE: (0x40, _DISCARD),
    AttrCode.AGGREGATOR: (0xC0, _DISCARD),
    AttrCode.COMMUNITIES: (0xC0, _TAW),
    AttrCode.MP_REACH_NLRI: (0x80, _RESET),
    AttrCode.MP_UNREACH_NLRI: (0x80, _RESET),
    AttrCode.EXTENDED_COMMUNITIES: (0xC0, _TAW),
    AttrCode.AS4_PATH: (0xC0, _DISCARD),
    AttrCode.AS4_AGGREGATOR: (0xC0, _DISCARD),
    AttrCode.LARGE_COMMUNITIES: (0xC0, _TAW),
}
_DECODABLE_FAMILIES = {(AFI.IPV4, SAFI.UNICAST), (AFI.IPV6, SAFI.UNICAST)}

#: Recoverable errors kept per UPDATE; the rest are only counted. An UPDATE of 65535 octets can
#: hold over 20000 (duplicate) attributes: keeping an error object for each would cost a
#: hundred times the message in memory.
MAX_RECORDED_ERRORS = 8
_IPV4_ONLY = frozenset({IPV4_UNICAST})


class _Malformed(Exception):
    def __init__(
        self,
        subcode: int,
        reason: str,
        action: ErrorAction | None = None,
        family: tuple[int, int] | None = None,
    ) -> None:
        super().__init__(reason)
        self.subcode = subcode
        self.reason = reason
        self.action = action
        self.family = family  # set when the attribute is for a family we do not exchange


def _len_is(value: bytes, n: int, what: str) -> None:
    if len(value) != n:
        raise _Malformed(_S.ATTRIBUTE_LENGTH_ERROR, f"{what} length {len(value)}, expected {n}")


def decode_as_path(value: bytes, four_octet: bool, what: str = "AS_PATH") -> list[AsPathSegment]:
    """AS_PATH / AS4_PATH value; malformed per RFC 7606 §7.2 and RFC 7607 (AS 0)."""
    size, fmt = (4, "I") if four_octet else (2, "H")
    segments: list[AsPathSegment] = []
    i, n = 0, len(value)
    while i < n:
        if n - i < 2:
            raise _Malformed(_S.MALFORMED_AS_PATH, f"{what}: truncated segment header")
        seg_type = _SEG_TYPES.get(value[i])
        count = value[i + 1]
        if seg_type is None:
            raise _Malformed(_S.MALFORMED_AS_PATH, f"{what}: unknown segment type {value[i]}")
        if count == 0:
            raise _Malformed(_S.MALFORMED_AS_PATH, f"{what}: empty segment")
        end = i + 2 + count * size
        if end > n:
            raise _Malformed(_S.MALFORMED_AS_PATH, f"{what}: segment overruns the attribute")
        asns = struct.unpack_from(f"!{count}{fmt}", value, i + 2)
        if 0 in asns:
            raise _Malformed(_S.MALFORMED_AS_PATH, f"{what} contains AS 0 (RFC 7607)")
        segments.append(AsPathSegment(seg_type, asns))
        i = end
    return segments


def _count(segments: tuple[AsPathSegment, ...] | list[AsPathSegment]) -> int:
    """Path length for RFC 6793 §4.2.3: AS_SET counts 1, confederation segments 0."""
    total = 0
    for seg in segments:
        if seg.type == AsPathSegmentType.AS_SEQUENCE:
            total += len(seg.asns)
        elif seg.type == AsPathSegmentType.AS_SET:
            total += 1
    return total


def merge_as4_path(
    as_path: tuple[AsPathSegment, ...], as4_path: list[AsPathSegment]
) -> tuple[AsPathSegment, ...]:
    """Reconstruct the path from AS_PATH and AS4_PATH (RFC 6793 §4.2.3)."""
    keep = _count(as_path) - _count(as4_path)
    if keep < 0:
        return as_path  # AS4_PATH is longer: ignore it
    out: list[AsPathSegment] = []
    for seg in as_path:
        if seg.type >= AsPathSegmentType.AS_CONFED_SEQUENCE:
            out.append(seg)
            continue
        if keep == 0:
            break
        if seg.type == AsPathSegmentType.AS_SET:
            out.append(seg)
            keep -= 1
        else:
            take = min(keep, len(seg.asns))
            out.append(AsPathSegment(seg.type, seg.asns[:take]))
            keep -= take
    tail = list(as4_path)
    seq = AsPathSegmentType.AS_SEQUENCE
    if out and tail and out[-1].type == seq and tail[0].type == seq:
        joined = out[-1].asns + tail[0].asns
        if len(joined) <= 255:
            out[-1] = AsPathSegment(seq, joined)
            tail.pop(0)
    return tuple(out + tail)


def _decode_next_hops(afi: int, hop: bytes) -> tuple[IPAddress, ...]:
    n = len(hop)
    if afi == AFI.IPV4 and n == 4:
        return (ipaddress.IPv4Address(hop),)
    if n == 16:
        return (ipaddress.IPv6Address(hop),)
    if n == 32:
        return (ipaddress.IPv6Address(hop[:16]), ipaddress.IPv6Address(hop[16:]))
    raise _Malformed(_S.OPTIONAL_ATTRIBUTE_ERROR, f"MP_REACH_NLRI next hop length {n}")


def _mp_family(
    value: bytes, minimum: int, what: str, families: frozenset[tuple[AFI, SAFI]] | None = None
) -> tuple[AFI, SAFI]:
    """The AFI/SAFI of an MP attribute. One for a family that was not negotiated (or that we
    cannot decode) is discarded: RFC 4760 §8 exchanges a family only when both sides advertised
    it, and RFC 7606 §3 asks for the least disruptive action; the routes of the negotiated
    families in the same session are unaffected (as BIRD and FRR do: log, ignore)."""
    if len(value) < minimum:
        raise _Malformed(_S.OPTIONAL_ATTRIBUTE_ERROR, f"{what} too short ({len(value)} octets)")
    afi, safi = struct.unpack_from("!HB", value)
    if (afi, safi) not in _DECODABLE_FAMILIES:
        raise _Malformed(
            _S.OPTIONAL_ATTRIBUTE_ERROR,
            f"{what} for unsupported AFI {afi} SAFI {safi} ignored",
            _DISCARD,
            (afi, safi),
        )
    if families is not None and (afi, safi) not in families:
        raise _Malformed(
            _S.OPTIONAL_ATTRIBUTE_ERROR,
            f"{what} for AFI {afi} SAFI {safi}, which was not negotiated, ignored (RFC 4760 §8)",
            _DISCARD,
            (afi, safi),
        )
    return AFI(afi), SAFI(safi)


def _nlri(value: bytes, afi: AFI, what: str) -> tuple[Prefix, ...]:
    try:
        return tuple(decode_prefixes(value, afi))
    except BGPError as exc:
        raise _Malformed(_S.OPTIONAL_ATTRIBUTE_ERROR, f"{what}: {exc.reason}") from None


def decode_mp_reach(
    value: bytes, families: frozenset[tuple[AFI, SAFI]] | None = None
) -> MPReachNLRI:
    """MP_REACH_NLRI value (RFC 4760 §3); malformed per RFC 7606 §7.11 -> session reset.
    With `families`, one for another family is discarded (see `_mp_family`)."""
    afi, safi = _mp_family(value, 5, "MP_REACH_NLRI", families)
    nh_len = value[3]
    if 5 + nh_len > len(value):
        raise _Malformed(_S.OPTIONAL_ATTRIBUTE_ERROR, "MP_REACH_NLRI next hop overruns it")
    hops = _decode_next_hops(afi, value[4 : 4 + nh_len])
    return MPReachNLRI(afi, safi, hops, _nlri(value[5 + nh_len :], afi, "MP_REACH_NLRI"))


def decode_mp_unreach(
    value: bytes, families: frozenset[tuple[AFI, SAFI]] | None = None
) -> MPUnreachNLRI:
    """MP_UNREACH_NLRI value (RFC 4760 §4); `families` as for `decode_mp_reach`."""
    afi, safi = _mp_family(value, 3, "MP_UNREACH_NLRI", families)
    return MPUnreachNLRI(afi, safi, _nlri(value[3:], afi, "MP_UNREACH_NLRI"))


def _multiple(value: bytes, size: int, what: str) -> int:
    if not value or len(value) % size:
        raise _Malformed(
            _S.OPTIONAL_ATTRIBUTE_ERROR,
            f"{what} length {len(value)} is not a non-zero multiple of {size}",
        )
    return len(value) // size


def _decode_value(
    code: int, value: bytes, four_octet: bool, families: frozenset[tuple[AFI, SAFI]] | None = None
) -> Any:
    """Decode one recognized attribute value; raise _Malformed per RFC 7606 §7."""
    if code == AttrCode.ORIGIN:
        _len_is(value, 1, "ORIGIN")
        if value[0] > 2:
            raise _Malformed(_S.INVALID_ORIGIN_ATTRIBUTE, f"ORIGIN value {value[0]}")
        return Origin(value[0])
    if code == AttrCode.AS_PATH:
        return tuple(decode_as_path(value, four_octet))
    if code == AttrCode.NEXT_HOP:
        _len_is(value, 4, "NEXT_HOP")
        addr = int.from_bytes(value, "big")
        if addr == 0 or addr >> 28 == 0xE or addr == 0xFFFFFFFF:
            raise _Malformed(
                _S.INVALID_NEXT_HOP_ATTRIBUTE, f"NEXT_HOP {ipaddress.IPv4Address(addr)}"
            )
        return ipaddress.IPv4Address(addr)
    if code in (AttrCode.MULTI_EXIT_DISC, AttrCode.LOCAL_PREF):
        _len_is(value, 4, AttrCode(code).name)
        return int.from_bytes(value, "big")
    if code == AttrCode.ATOMIC_AGGREGATE:
        _len_is(value, 0, "ATOMIC_AGGREGATE")
        return True
    if code in (AttrCode.AGGREGATOR, AttrCode.AS4_AGGREGATOR):
        four = four_octet or code == AttrCode.AS4_AGGREGATOR
        _len_is(value, 8 if four else 6, AttrCode(code).name)
        asn = int.from_bytes(value[:-4], "big")
        if asn == 0:
            raise _Malformed(_S.OPTIONAL_ATTRIBUTE_ERROR, "AGGREGATOR AS 0 (RFC 7607)")
        return Aggregator(asn, ipaddress.IPv4Address(value[-4:]))
    if code == AttrCode.COMMUNITIES:
        return struct.unpack(f"!{_multiple(value, 4, 'COMMUNITIES')}I", value)
    if code == AttrCode.EXTENDED_COMMUNITIES:
        count = _multiple(value, 8, "EXTENDED_COMMUNITIES")
        return tuple(ExtendedCommunity(value[8 * i : 8 * i + 8]) for i in range(count))
    if code == AttrCode.LARGE_COMMUNITIES:
        count = _multiple(value, 12, "LARGE_COMMUNITIES")
        # RFC 8092 §5: duplicates are removed silently
        lcs = (LargeCommunity(*t) for t in struct.iter_unpack("!III", value))
        return tuple(dict.fromkeys(lcs)) if count > 1 else tuple(lcs)
    if code == AttrCode.AS4_PATH:
        segments = decode_as_path(value, True, "AS4_PATH")
        if any(s.type >= AsPathSegmentType.AS_CONFED_SEQUENCE for s in segments):
            raise _Malformed(_S.MALFORMED_AS_PATH, "AS4_PATH with confederation segments")
        return segments
    if code == AttrCode.MP_REACH_NLRI:
        return decode_mp_reach(value, families)
    return decode_mp_unreach(value, families)


_FIELD: dict[int, str] = {
    AttrCode.ORIGIN: "origin",
    AttrCode.AS_PATH: "as_path",
    AttrCode.NEXT_HOP: "next_hop",
    AttrCode.MULTI_EXIT_DISC: "med",
    AttrCode.LOCAL_PREF: "local_pref",
    AttrCode.ATOMIC_AGGREGATE: "atomic_aggregate",
    AttrCode.AGGREGATOR: "aggregator",
    AttrCode.COMMUNITIES: "communities",
    AttrCode.EXTENDED_COMMUNITIES: "extended_communities",
    AttrCode.LARGE_COMMUNITIES: "large_communities",
    AttrCode.MP_REACH_NLRI: "mp_reach",
    AttrCode.MP_UNREACH_NLRI: "mp_unreach",
    AttrCode.AS4_PATH: "as4_path",
    AttrCode.AS4_AGGREGATOR: "as4_aggregator",
}


@dataclass(slots=True)
class DecodedAttributes:
    """Result of :func:`decode_attributes`: the attributes kept and the RFC 7606 verdict."""

    attributes: PathAttributes
    errors: list[BGPError]
    treat_as_withdraw: bool
    errors_not_recorded: int = 0  # recoverable errors beyond MAX_RECORDED_ERRORS
    #: (AFI, SAFI) of MP attributes discarded because the family was not negotiated
    ignored_families: tuple[tuple[int, int], ...] = ()


def decode_attributes(
    data: bytes, neg: Negotiated, classic_nlri: bool = False
) -> DecodedAttributes:
    """Parse the Path Attributes field with RFC 7606 error handling.

    Raises BGPError only for session-reset errors; recoverable ones are returned in
    ``errors`` (``treat_as_withdraw`` set when any calls for it). ``classic_nlri`` tells whether
    the UPDATE's NLRI field is non-empty (NEXT_HOP is then mandatory, RFC 7606 §3.d).
    """
    four = neg.four_octet_as
    families = frozenset(neg.families)
    fields: dict[str, Any] = {}
    unknown: list[UnknownAttribute] = []
    errors: list[BGPError] = []
    not_recorded = 0
    ignored: list[tuple[int, int]] = []
    seen: set[int] = set()
    taw = False

    def record(err: BGPError) -> None:
        nonlocal not_recorded
        if len(errors) < MAX_RECORDED_ERRORS:
            errors.append(err)
        else:
            not_recorded += 1

    i, n = 0, len(data)
    while i < n:
        flags = data[i]
        hdr = 4 if flags & 0x10 else 3
        if n - i < hdr or (end := i + hdr + int.from_bytes(data[i + 2 : i + hdr], "big")) > n:
            # RFC 7606 §4: treat-as-withdraw, unless an MP attribute may be lost in the rest
            err = BGPError(_UPDATE, _S.MALFORMED_ATTRIBUTE_LIST, b"", _TAW, "attribute overrun")
            if "mp_reach" in fields or neg.families <= _IPV4_ONLY:
                record(err)
                taw = True
                break
            err.action = _RESET
            err.reason += " (MP_REACH_NLRI may be lost in it)"
            raise err
        code = data[i + 1]
        raw = data[i:end]
        value = data[i + hdr : end]
        i = end
        if code in seen:
            if code in (AttrCode.MP_REACH_NLRI, AttrCode.MP_UNREACH_NLRI):
                raise BGPError(
                    _UPDATE, _S.MALFORMED_ATTRIBUTE_LIST, b"", reason=f"duplicate {code}"
                )
            reason = f"duplicate attribute {code} discarded (RFC 7606 §3.g)"
            record(BGPError(_UPDATE, _S.MALFORMED_ATTRIBUTE_LIST, raw, _DISCARD, reason))
            continue
        seen.add(code)
        spec = _SPEC.get(code)
        if spec is None:
            if not flags & AttrFlag.OPTIONAL:
                raise BGPError(
                    _UPDATE, _S.UNRECOGNIZED_WELL_KNOWN_ATTRIBUTE, raw, reason=f"type {code}"
                )
            if flags & AttrFlag.TRANSITIVE:  # RFC 4271 §5: pass on with Partial set
                unknown.append(UnknownAttribute((flags | 0x20) & 0xE0, code, value))
            continue
        expected, action = spec
        if code == AttrCode.NEXT_HOP and not classic_nlri:
            action = _DISCARD  # RFC 4760 §3: ignored when only MP_REACH_NLRI carries NLRI
        if (code == AttrCode.LOCAL_PREF and neg.ebgp) or (
            four and code in (AttrCode.AS4_PATH, AttrCode.AS4_AGGREGATOR)
        ):
            continue  # RFC 7606 §7.5, RFC 6793 §6: discarded silently
        if flags & 0xC0 != expected:  # RFC 7606 §3.c
            flag_action = _TAW if action is _RESET else action
            reason = f"attribute {code} flags {flags:#04x}"
            record(BGPError(_UPDATE, _S.ATTRIBUTE_FLAGS_ERROR, raw, flag_action, reason))
            taw = taw or flag_action is _TAW
            if action is not _RESET:
                continue  # MP attributes are still parsed so their NLRI can be withdrawn
        try:
            fields[_FIELD[code]] = _decode_value(code, value, four, families)
        except _Malformed as m:
            act = m.action or action
            if act is _RESET:
                raise BGPError(_UPDATE, m.subcode, raw, _RESET, m.reason) from None
            if m.family is not None and m.family not in ignored:
                ignored.append(m.family)
            record(BGPError(_UPDATE, m.subcode, raw, act, m.reason))
            taw = taw or act is _TAW
    _apply_as4(fields, four)
    mp_reach = fields.get("mp_reach")
    if classic_nlri or (mp_reach is not None and mp_reach.nlri):
        missing = [AttrCode.ORIGIN, AttrCode.AS_PATH]
        if classic_nlri:
            missing.append(AttrCode.NEXT_HOP)
        for code in missing:
            if code not in seen:
                reason = f"missing well-known attribute {code.name}"
                err = BGPError(
                    _UPDATE, _S.MISSING_WELL_KNOWN_ATTRIBUTE, bytes((code,)), _TAW, reason
                )
                record(err)
                taw = True
    attributes = PathAttributes(**fields, unknown=tuple(unknown))
    return DecodedAttributes(attributes, errors, taw, not_recorded, tuple(ignored))


def _apply_as4(fields: dict[str, Any], four: bool) -> None:
    """Merge AS4_PATH / AS4_AGGREGATOR into as_path / aggregator (RFC 6793 §4.2.3)."""
    as4_path = fields.pop("as4_path", None)
    as4_agg = fields.pop("as4_aggregator", None)
    if four:
        return
    agg = fields.get("aggregator")
    if as4_agg is not None and agg is not None:
        if agg.asn != AS_TRANS:
            return  # AGGREGATOR is authoritative: ignore both AS4_ attributes
        fields["aggregator"] = as4_agg
    if as4_path is not None and "as_path" in fields:
        fields["as_path"] = merge_as4_path(fields["as_path"], as4_path)
