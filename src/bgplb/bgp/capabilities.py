"""BGP capabilities (RFC 5492) carried in the OPEN message's Capabilities optional parameter.

Implemented: Multiprotocol (RFC 4760 §8), Route Refresh (RFC 2918), Extended Message
(RFC 8654), BGP Role (RFC 9234), Graceful Restart (RFC 4724 §3), 4-octet AS (RFC 6793),
ADD-PATH (RFC 7911 §4), Enhanced Route Refresh (RFC 7313), FQDN (draft-walton-bgp-hostname).
Any other capability is kept as :class:`UnknownCapability` and re-encodes byte for byte.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar

from .errors import BGPError, ErrorCode, OpenSubcode


class CapabilityCode(IntEnum):
    """IANA "Capability Codes"."""

    MULTIPROTOCOL = 1
    ROUTE_REFRESH = 2
    OUTBOUND_ROUTE_FILTERING = 3
    EXTENDED_NEXT_HOP = 5
    EXTENDED_MESSAGE = 6
    BGPSEC = 7
    MULTIPLE_LABELS = 8
    ROLE = 9
    GRACEFUL_RESTART = 64
    FOUR_OCTET_AS = 65
    DYNAMIC = 67
    MULTISESSION = 68
    ADD_PATH = 69
    ENHANCED_ROUTE_REFRESH = 70
    LONG_LIVED_GRACEFUL_RESTART = 71
    FQDN = 73
    SOFTWARE_VERSION = 75
    ROUTE_REFRESH_CISCO = 128


@dataclass(frozen=True, slots=True)
class Multiprotocol:
    """Multiprotocol Extensions for one AFI/SAFI (RFC 4760 §8)."""

    code: ClassVar[int] = CapabilityCode.MULTIPROTOCOL
    afi: int
    safi: int


@dataclass(frozen=True, slots=True)
class RouteRefreshCapability:
    """Route Refresh (RFC 2918 §3)."""

    code: ClassVar[int] = CapabilityCode.ROUTE_REFRESH


@dataclass(frozen=True, slots=True)
class ExtendedMessage:
    """Messages up to 65535 octets (RFC 8654 §3)."""

    code: ClassVar[int] = CapabilityCode.EXTENDED_MESSAGE


@dataclass(frozen=True, slots=True)
class EnhancedRouteRefresh:
    """Enhanced Route Refresh (RFC 7313 §3.1)."""

    code: ClassVar[int] = CapabilityCode.ENHANCED_ROUTE_REFRESH


@dataclass(frozen=True, slots=True)
class FourOctetAS:
    """Support for 4-octet AS numbers, carrying the speaker's real AS (RFC 6793 §3)."""

    code: ClassVar[int] = CapabilityCode.FOUR_OCTET_AS
    asn: int


@dataclass(frozen=True, slots=True)
class GracefulRestartFamily:
    """One AFI/SAFI of the Graceful Restart capability; F bit = forwarding state preserved."""

    afi: int
    safi: int
    forwarding_preserved: bool = False


@dataclass(frozen=True, slots=True)
class GracefulRestart:
    """Graceful Restart (RFC 4724 §3; N bit from RFC 8538). ``restart_time`` is 12 bits."""

    code: ClassVar[int] = CapabilityCode.GRACEFUL_RESTART
    restart_time: int
    restarting: bool = False
    notification: bool = False
    families: tuple[GracefulRestartFamily, ...] = ()


class AddPathMode(IntEnum):
    """ADD-PATH Send/Receive field (RFC 7911 §4)."""

    RECEIVE = 1
    SEND = 2
    BOTH = 3


@dataclass(frozen=True, slots=True)
class AddPathFamily:
    afi: int
    safi: int
    send_receive: int


@dataclass(frozen=True, slots=True)
class AddPath:
    """ADD-PATH (RFC 7911 §4). Advertised-only: bgplb never negotiates path identifiers."""

    code: ClassVar[int] = CapabilityCode.ADD_PATH
    families: tuple[AddPathFamily, ...] = ()


@dataclass(frozen=True, slots=True)
class BGPRole:
    """BGP Role (RFC 9234 §4.1): 0 provider, 1 RS, 2 RS-client, 3 customer, 4 peer."""

    code: ClassVar[int] = CapabilityCode.ROLE
    role: int


@dataclass(frozen=True, slots=True)
class Fqdn:
    """Hostname capability (draft-walton-bgp-hostname-capability), sent by FRR and GoBGP."""

    code: ClassVar[int] = CapabilityCode.FQDN
    hostname: str
    domain: str = ""


@dataclass(frozen=True, slots=True)
class UnknownCapability:
    """Any other capability, kept verbatim."""

    code: int
    value: bytes = b""


Capability = (
    Multiprotocol
    | RouteRefreshCapability
    | ExtendedMessage
    | EnhancedRouteRefresh
    | FourOctetAS
    | GracefulRestart
    | AddPath
    | BGPRole
    | Fqdn
    | UnknownCapability
)

_EMPTY: dict[int, Capability] = {
    CapabilityCode.ROUTE_REFRESH: RouteRefreshCapability(),
    CapabilityCode.EXTENDED_MESSAGE: ExtendedMessage(),
    CapabilityCode.ENHANCED_ROUTE_REFRESH: EnhancedRouteRefresh(),
}


def _malformed(code: int, value: bytes, why: str) -> BGPError:
    return BGPError(
        ErrorCode.OPEN_MESSAGE,
        OpenSubcode.UNSPECIFIC,
        bytes((code, len(value))) + value,
        reason=f"malformed capability {code}: {why}",
    )


def _decode_one(code: int, value: bytes) -> Capability:
    n = len(value)
    if code in _EMPTY:
        if n:
            raise _malformed(code, value, "expected no value")
        return _EMPTY[code]
    if code == CapabilityCode.MULTIPROTOCOL:
        if n != 4:
            raise _malformed(code, value, "length is not 4")
        afi, _, safi = struct.unpack("!HBB", value)
        return Multiprotocol(afi, safi)
    if code == CapabilityCode.FOUR_OCTET_AS:
        if n != 4:
            raise _malformed(code, value, "length is not 4")
        return FourOctetAS(int.from_bytes(value, "big"))
    if code == CapabilityCode.GRACEFUL_RESTART:
        if n < 2 or (n - 2) % 4:
            raise _malformed(code, value, "length is not 2 + 4k")
        head = int.from_bytes(value[:2], "big")
        fams = tuple(
            GracefulRestartFamily(afi, safi, bool(flags & 0x80))
            for afi, safi, flags in struct.iter_unpack("!HBB", value[2:])
        )
        return GracefulRestart(head & 0x0FFF, bool(head & 0x8000), bool(head & 0x4000), fams)
    if code == CapabilityCode.ADD_PATH:
        if n % 4:
            raise _malformed(code, value, "length is not a multiple of 4")
        return AddPath(tuple(AddPathFamily(*t) for t in struct.iter_unpack("!HBB", value)))
    if code == CapabilityCode.ROLE:
        if n != 1:
            raise _malformed(code, value, "length is not 1")
        return BGPRole(value[0])
    if code == CapabilityCode.FQDN and n >= 1:
        hl = value[0]
        if 1 + hl < n and 2 + hl + value[1 + hl] == n:
            try:
                host = value[1 : 1 + hl].decode()
                domain = value[2 + hl :].decode()
            except UnicodeDecodeError:
                pass
            else:
                return Fqdn(host, domain)
    return UnknownCapability(code, value)


def decode_capabilities(data: bytes | memoryview) -> list[Capability]:
    """Decode the value of one Capabilities optional parameter (a list of code/length/value)."""
    b = bytes(data)
    out: list[Capability] = []
    i = 0
    n = len(b)
    while i < n:
        if i + 2 > n or i + 2 + b[i + 1] > n:
            raise BGPError(
                ErrorCode.OPEN_MESSAGE,
                OpenSubcode.UNSPECIFIC,
                b[i:],
                reason="capability runs past the end of its optional parameter",
            )
        code, length = b[i], b[i + 1]
        out.append(_decode_one(code, b[i + 2 : i + 2 + length]))
        i += 2 + length
    return out


def _value(cap: Capability) -> bytes:
    if isinstance(cap, UnknownCapability):
        return cap.value
    if isinstance(cap, Multiprotocol):
        return struct.pack("!HBB", cap.afi, 0, cap.safi)
    if isinstance(cap, FourOctetAS):
        return cap.asn.to_bytes(4, "big")
    if isinstance(cap, GracefulRestart):
        if not 0 <= cap.restart_time <= 0x0FFF:
            raise ValueError("graceful restart time must fit 12 bits")
        head = cap.restart_time | (0x8000 if cap.restarting else 0)
        head |= 0x4000 if cap.notification else 0
        return head.to_bytes(2, "big") + b"".join(
            struct.pack("!HBB", f.afi, f.safi, 0x80 if f.forwarding_preserved else 0)
            for f in cap.families
        )
    if isinstance(cap, AddPath):
        return b"".join(struct.pack("!HBB", f.afi, f.safi, f.send_receive) for f in cap.families)
    if isinstance(cap, BGPRole):
        return bytes((cap.role,))
    if isinstance(cap, Fqdn):
        host, domain = cap.hostname.encode(), cap.domain.encode()
        return bytes((len(host),)) + host + bytes((len(domain),)) + domain
    return b""


def encode_capability(cap: Capability) -> bytes:
    """Encode one capability as code, length, value."""
    value = _value(cap)
    if len(value) > 255:
        raise ValueError(f"capability {cap.code} value longer than 255 octets")
    return bytes((cap.code, len(value))) + value
