"""Pack routes into as few UPDATE messages as fit the negotiated size (RFC 4271 §4.3, §9.2;
RFC 4760 §3-§4 for IPv6 in MP_REACH_NLRI / MP_UNREACH_NLRI; RFC 8654 for the size limit).

Withdrawals come first. IPv4 unicast uses the classic Withdrawn Routes and NLRI fields;
IPv6 unicast uses the MP attributes, which are put first in the attribute list
(RFC 7606 §5.1).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping, Sequence

from .attributes import IPAddress, PathAttributes, encode_attribute, encode_attributes
from .families import AFI, SAFI
from .framing import HEADER_SIZE, frame
from .negotiated import Negotiated
from .prefix import Prefix, encode_prefixes

_UPDATE = 2
_FIXED = HEADER_SIZE + 4  # header + Withdrawn Routes Length + Total Path Attribute Length
_MP_HEADER = 4  # attribute flags, code, 2-octet length


def _chunks(prefixes: Sequence[Prefix], room: int) -> Iterator[bytes]:
    """Encoded NLRI fields, each at most ``room`` octets."""
    if room < 17:
        raise ValueError("path attributes leave no room for NLRI in one UPDATE")
    parts: list[bytes] = []
    size = 0
    for p in prefixes:
        enc = encode_prefixes((p,))
        if size + len(enc) > room:
            yield b"".join(parts)
            parts, size = [], 0
        parts.append(enc)
        size += len(enc)
    if parts:
        yield b"".join(parts)


def _update(withdrawn: bytes, attrs: bytes, nlri: bytes = b"") -> bytes:
    body = struct.pack("!H", len(withdrawn)) + withdrawn + struct.pack("!H", len(attrs))
    return frame(_UPDATE, body + attrs + nlri)


def pack_updates(
    announce: Mapping[PathAttributes, Sequence[Prefix]],
    withdraw: Sequence[Prefix],
    neg: Negotiated,
    next_hops: Mapping[AFI, tuple[IPAddress, ...]] | None = None,
) -> list[bytes]:
    """Encoded UPDATE messages announcing ``announce`` and withdrawing ``withdraw``.

    IPv4 prefixes take ``attributes.next_hop`` or ``next_hops[AFI.IPV4][0]``; IPv6 prefixes take
    ``attributes.mp_reach.next_hop`` or ``next_hops[AFI.IPV6]`` (global [, link-local]).
    Raises ValueError if a next hop is missing or the attributes alone exceed a message.
    """
    limit = neg.max_message_size
    four = neg.four_octet_as
    out: list[bytes] = []
    v4 = [p for p in withdraw if p[0] == AFI.IPV4]
    v6 = [p for p in withdraw if p[0] == AFI.IPV6]
    for chunk in _chunks(v4, limit - _FIXED):
        out.append(_update(chunk, b""))
    unreach_head = struct.pack("!HB", AFI.IPV6, SAFI.UNICAST)
    for chunk in _chunks(v6, limit - _FIXED - _MP_HEADER - len(unreach_head)):
        out.append(_update(b"", encode_attribute(0x80, 15, unreach_head + chunk)))
    for attrs, prefixes in announce.items():
        p4 = [p for p in prefixes if p[0] == AFI.IPV4]
        p6 = [p for p in prefixes if p[0] == AFI.IPV6]
        if p4:
            out.extend(_pack_ipv4(attrs, p4, limit, four, next_hops))
        if p6:
            out.extend(_pack_ipv6(attrs, p6, limit, four, next_hops))
    return out


def _pack_ipv4(
    attrs: PathAttributes,
    prefixes: list[Prefix],
    limit: int,
    four: bool,
    next_hops: Mapping[AFI, tuple[IPAddress, ...]] | None,
) -> list[bytes]:
    hop = attrs.next_hop
    if hop is None and next_hops and next_hops.get(AFI.IPV4):
        candidate = next_hops[AFI.IPV4][0]
        if candidate.version == 4:
            hop = candidate
    if hop is None:
        raise ValueError("no IPv4 next hop for IPv4 prefixes")
    encoded = encode_attributes(attrs.with_(next_hop=hop, mp_reach=None, mp_unreach=None), four)
    return [
        _update(b"", encoded, nlri) for nlri in _chunks(prefixes, limit - _FIXED - len(encoded))
    ]


def _pack_ipv6(
    attrs: PathAttributes,
    prefixes: list[Prefix],
    limit: int,
    four: bool,
    next_hops: Mapping[AFI, tuple[IPAddress, ...]] | None,
) -> list[bytes]:
    if attrs.mp_reach is not None and attrs.mp_reach.next_hop:
        hops = attrs.mp_reach.next_hop
    elif next_hops and next_hops.get(AFI.IPV6):
        hops = next_hops[AFI.IPV6]
    else:
        raise ValueError("no IPv6 next hop for IPv6 prefixes")
    # RFC 4760 §3: no NEXT_HOP attribute when only MP_REACH_NLRI carries NLRI
    encoded = encode_attributes(attrs.with_(next_hop=None, mp_reach=None, mp_unreach=None), four)
    hop_bytes = b"".join(h.packed for h in hops)
    head = struct.pack("!HBB", AFI.IPV6, SAFI.UNICAST, len(hop_bytes)) + hop_bytes + b"\x00"
    room = limit - _FIXED - len(encoded) - _MP_HEADER - len(head)
    return [
        _update(b"", encode_attribute(0x80, 14, head + nlri) + encoded)
        for nlri in _chunks(prefixes, room)
    ]
