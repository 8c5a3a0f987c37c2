"""BGP-4 messages and their codec (RFC 4271 §4, §6).

OPEN (§4.2; capabilities RFC 5492, extended optional parameters RFC 9072, 4-octet AS RFC 6793),
UPDATE (§4.3; multiprotocol RFC 4760, error handling RFC 7606, End-of-RIB RFC 4724 §2),
NOTIFICATION (§4.5; shutdown communication RFC 9003), KEEPALIVE (§4.4), ROUTE-REFRESH
(RFC 2918, RFC 7313). ``encode`` returns whole messages with the header; ``decode`` takes the
type and body from :class:`~bgplb.bgp.framing.MessageReader` and raises only BGPError.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field, replace
from enum import IntEnum

from .attributes import (
    AS_TRANS,
    MPUnreachNLRI,
    PathAttributes,
    encode_attributes,
)
from .attrparse import decode_attributes
from .capabilities import (
    Capability,
    FourOctetAS,
    Multiprotocol,
    decode_capabilities,
    encode_capability,
)
from .errors import (
    BGPError,
    CeaseSubcode,
    ErrorAction,
    ErrorCode,
    HeaderSubcode,
    OpenSubcode,
    UpdateSubcode,
    code_name,
    data_hex,
    subcode_name,
)
from .families import AFI, IPV4_UNICAST, SAFI, Family
from .framing import frame
from .negotiated import Negotiated
from .prefix import Prefix, decode_prefixes, encode_prefixes


class MessageType(IntEnum):
    OPEN = 1
    UPDATE = 2
    NOTIFICATION = 3
    KEEPALIVE = 4
    ROUTE_REFRESH = 5


# --- OPEN ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Open:
    """OPEN (RFC 4271 §4.2). ``asn`` is the real AS: from the 4-octet AS capability if present."""

    asn: int
    hold_time: int
    router_id: ipaddress.IPv4Address
    capabilities: tuple[Capability, ...] = ()
    version: int = 4

    @property
    def four_octet_as(self) -> bool:
        return any(isinstance(c, FourOctetAS) for c in self.capabilities)

    @property
    def families(self) -> frozenset[Family]:
        """Families of the Multiprotocol capabilities; none means IPv4 unicast (RFC 4760 §8)."""
        mps = [c for c in self.capabilities if isinstance(c, Multiprotocol)]
        if not mps:
            return frozenset({IPV4_UNICAST})
        out: set[Family] = set()
        for c in mps:
            if c.afi in AFI._value2member_map_ and c.safi in SAFI._value2member_map_:
                out.add((AFI(c.afi), SAFI(c.safi)))
        return frozenset(out)

    def capability(self, code: int) -> Capability | None:
        """The first capability with this code, or None."""
        for c in self.capabilities:
            if c.code == code:
                return c
        return None


def _open_error(subcode: int, reason: str, data: bytes = b"") -> BGPError:
    return BGPError(ErrorCode.OPEN_MESSAGE, subcode, data, reason=reason)


def _encode_open(msg: Open) -> bytes:
    caps = [encode_capability(c) for c in msg.capabilities]
    params: list[bytes] = []  # capability values, each one optional parameter of <= 255 octets
    current = b""
    for cap in caps:
        if current and len(current) + len(cap) > 255:
            params.append(current)
            current = b""
        current += cap
    if current:
        params.append(current)
    total = sum(2 + len(p) for p in params)
    if total <= 255:
        opt = bytes((total,)) + b"".join(b"\x02" + bytes((len(p),)) + p for p in params)
    else:  # RFC 9072 extended optional parameters
        body = b"".join(struct.pack("!BH", 2, len(p)) + p for p in params)
        opt = struct.pack("!BBH", 255, 255, len(body)) + body
    my_as = msg.asn if msg.asn <= 0xFFFF else AS_TRANS
    head = struct.pack("!BHH", msg.version, my_as, msg.hold_time) + msg.router_id.packed
    return head + opt


def _decode_open(b: bytes) -> Open:
    if len(b) < 10:
        raise BGPError(ErrorCode.MESSAGE_HEADER, HeaderSubcode.BAD_MESSAGE_LENGTH, reason="OPEN")
    version, my_as, hold, bgp_id, opt_len = struct.unpack_from("!BHHIB", b)
    if version != 4:
        raise _open_error(OpenSubcode.UNSUPPORTED_VERSION, f"version {version}", b"\x00\x04")
    rest = b[10:]
    params: list[tuple[int, bytes]] = []
    if opt_len == 255 and rest[:1] == b"\xff":  # RFC 9072
        if len(rest) < 3 or 3 + int.from_bytes(rest[1:3], "big") != len(rest):
            raise _open_error(OpenSubcode.UNSPECIFIC, "extended optional parameters length")
        i, hdr = 3, 3
    else:
        if opt_len != len(rest):
            raise _open_error(OpenSubcode.UNSPECIFIC, "optional parameters length mismatch")
        i, hdr = 0, 2
    while i < len(rest):
        if i + hdr > len(rest):
            raise _open_error(OpenSubcode.UNSPECIFIC, "truncated optional parameter")
        ptype = rest[i]
        plen = int.from_bytes(rest[i + 1 : i + hdr], "big")
        if i + hdr + plen > len(rest):
            raise _open_error(OpenSubcode.UNSPECIFIC, "optional parameter overruns the OPEN")
        params.append((ptype, rest[i + hdr : i + hdr + plen]))
        i += hdr + plen
    capabilities: list[Capability] = []
    for ptype, value in params:
        if ptype != 2:
            raise _open_error(
                OpenSubcode.UNSUPPORTED_OPTIONAL_PARAMETER, f"optional parameter type {ptype}"
            )
        capabilities.extend(decode_capabilities(value))
    four = next((c for c in capabilities if isinstance(c, FourOctetAS)), None)
    asn = four.asn if four is not None else my_as
    if asn == 0:  # RFC 7607
        raise _open_error(OpenSubcode.BAD_PEER_AS, "AS 0", b[1:3])
    if hold in (1, 2):
        raise _open_error(
            OpenSubcode.UNACCEPTABLE_HOLD_TIME, f"hold time {hold}", hold.to_bytes(2, "big")
        )
    if bgp_id == 0 or bgp_id >> 28 == 0xE:
        raise _open_error(
            OpenSubcode.BAD_BGP_IDENTIFIER,
            f"BGP identifier {ipaddress.IPv4Address(bgp_id)}",
            b[5:9],
        )
    return Open(asn, hold, ipaddress.IPv4Address(bgp_id), tuple(capabilities), version)


# --- UPDATE -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Update:
    """UPDATE (RFC 4271 §4.3). ``withdrawn``/``nlri`` are the classic IPv4 unicast fields; other
    families ride in ``attributes.mp_reach`` / ``mp_unreach``. ``errors`` lists the RFC 7606
    errors the decoder recovered from (already applied to this object)."""

    withdrawn: tuple[Prefix, ...] = ()
    attributes: PathAttributes = field(default_factory=PathAttributes)
    nlri: tuple[Prefix, ...] = ()
    errors: tuple[BGPError, ...] = ()
    #: recoverable errors beyond the first ``MAX_RECORDED_ERRORS`` (counted, not kept)
    errors_not_recorded: int = 0
    #: (AFI, SAFI) of MP_REACH/MP_UNREACH_NLRI discarded: family not negotiated (RFC 4760 §8)
    ignored_families: tuple[tuple[int, int], ...] = ()

    @property
    def announced(self) -> tuple[Prefix, ...]:
        """Every prefix announced: classic NLRI then MP_REACH_NLRI."""
        mp = self.attributes.mp_reach
        return self.nlri + mp.nlri if mp is not None else self.nlri

    @property
    def all_withdrawn(self) -> tuple[Prefix, ...]:
        """Every prefix withdrawn: classic Withdrawn Routes then MP_UNREACH_NLRI."""
        mp = self.attributes.mp_unreach
        return self.withdrawn + mp.withdrawn if mp is not None else self.withdrawn

    @property
    def is_end_of_rib(self) -> Family | None:
        """The family this End-of-RIB marker is for (RFC 4724 §2), else None."""
        if self.withdrawn or self.nlri or self.errors or self.errors_not_recorded:
            return None
        attrs = self.attributes
        if attrs == _EMPTY_ATTRIBUTES:
            return IPV4_UNICAST
        mp = attrs.mp_unreach
        if mp is not None and not mp.withdrawn and attrs == PathAttributes(mp_unreach=mp):
            try:
                return (AFI(mp.afi), SAFI(mp.safi))
            except ValueError:
                return None
        return None

    @classmethod
    def end_of_rib(cls, family: Family) -> Update:
        """The End-of-RIB marker for a family (RFC 4724 §2)."""
        if tuple(family) == IPV4_UNICAST:
            return cls()
        return cls(attributes=PathAttributes(mp_unreach=MPUnreachNLRI(family[0], family[1])))


_EMPTY_ATTRIBUTES = PathAttributes()


def _update_error(subcode: int, reason: str) -> BGPError:
    return BGPError(ErrorCode.UPDATE_MESSAGE, subcode, reason=reason)


def _encode_update(msg: Update, neg: Negotiated) -> bytes:
    withdrawn = encode_prefixes(msg.withdrawn)
    attrs = encode_attributes(msg.attributes, neg.four_octet_as)
    nlri = encode_prefixes(msg.nlri)
    if len(withdrawn) > 0xFFFF or len(attrs) > 0xFFFF:
        raise ValueError("UPDATE field longer than 65535 octets")
    return b"".join(
        (len(withdrawn).to_bytes(2, "big"), withdrawn, len(attrs).to_bytes(2, "big"), attrs, nlri)
    )


def _decode_update(b: bytes, neg: Negotiated) -> Update:
    n = len(b)
    if n < 4:
        raise _update_error(UpdateSubcode.MALFORMED_ATTRIBUTE_LIST, "UPDATE shorter than 4 octets")
    wlen = int.from_bytes(b[:2], "big")
    if 4 + wlen > n:
        raise _update_error(UpdateSubcode.MALFORMED_ATTRIBUTE_LIST, "Withdrawn Routes overrun")
    alen = int.from_bytes(b[2 + wlen : 4 + wlen], "big")
    if 4 + wlen + alen > n:
        raise _update_error(UpdateSubcode.MALFORMED_ATTRIBUTE_LIST, "Path Attributes overrun")
    withdrawn = tuple(decode_prefixes(b[2 : 2 + wlen], AFI.IPV4))
    nlri = tuple(decode_prefixes(b[4 + wlen + alen :], AFI.IPV4))
    if not alen:
        if nlri:
            return _treat_as_withdraw(withdrawn, nlri, PathAttributes(), [_missing_origin()], 0)
        return Update(withdrawn, _EMPTY_ATTRIBUTES, nlri)
    decoded = decode_attributes(b[4 + wlen : 4 + wlen + alen], neg, bool(nlri))
    if decoded.treat_as_withdraw:
        update = _treat_as_withdraw(
            withdrawn, nlri, decoded.attributes, decoded.errors, decoded.errors_not_recorded
        )
    else:
        update = Update(
            withdrawn, decoded.attributes, nlri, tuple(decoded.errors), decoded.errors_not_recorded
        )
    if decoded.ignored_families:
        update = replace(update, ignored_families=decoded.ignored_families)
    return update


def _missing_origin() -> BGPError:
    return BGPError(
        ErrorCode.UPDATE_MESSAGE,
        UpdateSubcode.MISSING_WELL_KNOWN_ATTRIBUTE,
        b"\x01",
        ErrorAction.TREAT_AS_WITHDRAW,
        "NLRI without path attributes",
    )


def _treat_as_withdraw(
    withdrawn: tuple[Prefix, ...],
    nlri: tuple[Prefix, ...],
    attrs: PathAttributes,
    errors: list[BGPError],
    errors_not_recorded: int,
) -> Update:
    """RFC 7606 §2 treat-as-withdraw: every announced prefix becomes a withdrawal."""
    classic = withdrawn + nlri
    reach, unreach = attrs.mp_reach, attrs.mp_unreach
    if reach is not None and reach.nlri:
        if unreach is None:
            unreach = MPUnreachNLRI(reach.afi, reach.safi, reach.nlri)
        elif (unreach.afi, unreach.safi) == (reach.afi, reach.safi):
            unreach = MPUnreachNLRI(unreach.afi, unreach.safi, unreach.withdrawn + reach.nlri)
        elif reach.afi == AFI.IPV4:
            classic += reach.nlri
        else:  # unreach is IPv4 unicast: fold it into the classic field
            classic += unreach.withdrawn
            unreach = MPUnreachNLRI(reach.afi, reach.safi, reach.nlri)
    return Update(
        classic, PathAttributes(mp_unreach=unreach), (), tuple(errors), errors_not_recorded
    )


# --- NOTIFICATION, KEEPALIVE, ROUTE-REFRESH -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Notification:
    """NOTIFICATION (RFC 4271 §4.5)."""

    code: int
    subcode: int
    data: bytes = b""

    @classmethod
    def cease_shutdown(cls, subcode: int, message: str) -> Notification:
        """Cease with a shutdown communication (RFC 9003 §2): length octet + UTF-8, at most
        255 octets, cut at a character boundary."""
        text = message.encode()
        if len(text) > 255:
            text = text[:255].decode("utf-8", errors="ignore").encode()
        return cls(ErrorCode.CEASE, subcode, bytes((len(text),)) + text)

    @property
    def shutdown_message(self) -> str | None:
        """The shutdown communication of an Administrative Shutdown/Reset, if well formed."""
        if self.code != ErrorCode.CEASE or self.subcode not in (
            CeaseSubcode.ADMINISTRATIVE_SHUTDOWN,
            CeaseSubcode.ADMINISTRATIVE_RESET,
        ):
            return None
        if not self.data or self.data[0] + 1 > len(self.data):
            return None
        return self.data[1 : 1 + self.data[0]].decode("utf-8", errors="replace")

    def __str__(self) -> str:
        text = f"{code_name(self.code)}/{subcode_name(self.code, self.subcode)}"
        message = self.shutdown_message
        if message is not None:
            return f"{text}: {message!r}"
        if self.data:
            return f"{text} (data {data_hex(self.data)})"
        return text


@dataclass(frozen=True, slots=True)
class Keepalive:
    """KEEPALIVE (RFC 4271 §4.4): a header alone."""


@dataclass(frozen=True, slots=True)
class RouteRefresh:
    """ROUTE-REFRESH (RFC 2918 §3); subtype 1/2 = BoRR/EoRR (RFC 7313 §3.2). Messages with
    another subtype decode fine and must be ignored by the receiver (RFC 7313 §5)."""

    afi: int
    safi: int
    subtype: int = 0


Message = Open | Update | Notification | Keepalive | RouteRefresh

_TYPES: dict[type, int] = {
    Open: MessageType.OPEN,
    Update: MessageType.UPDATE,
    Notification: MessageType.NOTIFICATION,
    Keepalive: MessageType.KEEPALIVE,
    RouteRefresh: MessageType.ROUTE_REFRESH,
}
_DEFAULT_NEG = Negotiated()


def encode(msg: Message, neg: Negotiated = _DEFAULT_NEG) -> bytes:
    """The whole message, header included. ValueError if it exceeds the negotiated size."""
    if isinstance(msg, Update):
        body = _encode_update(msg, neg)
    elif isinstance(msg, Keepalive):
        body = b""
    elif isinstance(msg, Notification):
        # RFC 4271 §4.5: the Data field is variable and only diagnostic. When it would not fit
        # (e.g. it echoes a maximum-size message, RFC 7313 §5), it is truncated, as deployed
        # speakers do, rather than not sending the NOTIFICATION at all.
        room = neg.max_message_size - 21
        body = struct.pack("!BB", msg.code & 0xFF, msg.subcode & 0xFF) + msg.data[:room]
    elif isinstance(msg, Open):
        body = _encode_open(msg)
    else:
        body = struct.pack("!HBB", msg.afi, msg.subtype, msg.safi)
    limit = 4096 if isinstance(msg, Open) else neg.max_message_size
    if 19 + len(body) > limit:
        raise ValueError(f"{type(msg).__name__} of {19 + len(body)} octets exceeds {limit}")
    return frame(_TYPES[type(msg)], body)


def decode(msg_type: int, body: bytes | memoryview, neg: Negotiated = _DEFAULT_NEG) -> Message:
    """Decode one message body (after :class:`MessageReader`); raises only BGPError."""
    b = bytes(body)
    try:
        if msg_type == MessageType.UPDATE:
            return _decode_update(b, neg)
        if msg_type == MessageType.KEEPALIVE:
            if b:
                raise _bad_length(len(b))
            return Keepalive()
        if msg_type == MessageType.NOTIFICATION:
            if len(b) < 2:
                raise _bad_length(len(b))
            return Notification(b[0], b[1], b[2:])
        if msg_type == MessageType.OPEN:
            return _decode_open(b)
        if msg_type == MessageType.ROUTE_REFRESH:
            if len(b) != 4:
                raise _bad_length(len(b))
            afi, subtype, safi = struct.unpack("!HBB", b)
            return RouteRefresh(afi, safi, subtype)
    except BGPError:
        raise
    except Exception as exc:  # pragma: no cover - a decoder bug must still end in a NOTIFICATION
        raise BGPError(  # OPEN -> OPEN Message Error, UPDATE -> UPDATE Message Error
            ErrorCode.MESSAGE_HEADER if msg_type not in (1, 2) else msg_type + 1,
            0,
            reason=f"internal decoder error: {exc!r}",
        ) from exc
    raise BGPError(
        ErrorCode.MESSAGE_HEADER,
        HeaderSubcode.BAD_MESSAGE_TYPE,
        bytes((msg_type & 0xFF,)),
        reason=f"unknown message type {msg_type}",
    )


def _bad_length(body_len: int) -> BGPError:
    return BGPError(
        ErrorCode.MESSAGE_HEADER,
        HeaderSubcode.BAD_MESSAGE_LENGTH,
        (19 + body_len).to_bytes(2, "big") if body_len < 65517 else b"",
        reason="bad message length",
    )
