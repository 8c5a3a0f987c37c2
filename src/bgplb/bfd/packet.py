"""BFD Control packet codec (RFC 5880 §4.1, §4.2, reception checks of §6.8.6).

Mandatory section, network byte order::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |Vers |  Diag   |Sta|P|F|C|A|D|M|  Detect Mult  |    Length     |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |                       My Discriminator                        |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |                      Your Discriminator                       |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |                    Desired Min TX Interval                    |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |                   Required Min RX Interval                    |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |                 Required Min Echo RX Interval                 |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

followed, when the A bit is set, by an authentication section (§4.2) whose first two octets are
Auth Type and Auth Len. The codec checks the section's length against its type but does not
verify it (authentication is not implemented by the session yet).

`decode_packet` applies every packet-level check of §6.8.6 and raises `BfdError` — and no other
exception, whatever the bytes — for anything that must be discarded. Intervals are microseconds.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

__all__ = [
    "AuthType",
    "BfdError",
    "ControlPacket",
    "Diag",
    "HEADER_LENGTH",
    "State",
    "VERSION",
    "decode_packet",
    "encode_packet",
]

VERSION = 1
HEADER_LENGTH = 24
_HEADER = struct.Struct("!BBBBIIIII")
_U32_MAX = 0xFFFFFFFF


class BfdError(Exception):
    """A BFD packet (or a request on a session) that must be discarded or refused."""


class State(IntEnum):
    """Session states (RFC 5880 §4.1 "Sta", §6.2)."""

    ADMIN_DOWN = 0
    DOWN = 1
    INIT = 2
    UP = 3


class Diag(IntEnum):
    """Diagnostic codes (RFC 5880 §4.1 "Diag"); 9-31 are reserved."""

    NO_DIAGNOSTIC = 0
    CONTROL_DETECTION_TIME_EXPIRED = 1
    ECHO_FUNCTION_FAILED = 2
    NEIGHBOR_SIGNALED_SESSION_DOWN = 3
    FORWARDING_PLANE_RESET = 4
    PATH_DOWN = 5
    CONCATENATED_PATH_DOWN = 6
    ADMINISTRATIVELY_DOWN = 7
    REVERSE_CONCATENATED_PATH_DOWN = 8


class AuthType(IntEnum):
    """Authentication types (RFC 5880 §4.2)."""

    RESERVED = 0
    SIMPLE_PASSWORD = 1
    KEYED_MD5 = 2
    METICULOUS_KEYED_MD5 = 3
    KEYED_SHA1 = 4
    METICULOUS_KEYED_SHA1 = 5


# Auth Len allowed per type (§4.2.2 - §4.2.4): (minimum, maximum).
_AUTH_LEN: dict[int, tuple[int, int]] = {
    AuthType.SIMPLE_PASSWORD: (4, 19),
    AuthType.KEYED_MD5: (24, 24),
    AuthType.METICULOUS_KEYED_MD5: (24, 24),
    AuthType.KEYED_SHA1: (28, 28),
    AuthType.METICULOUS_KEYED_SHA1: (28, 28),
}


@dataclass(frozen=True, slots=True)
class ControlPacket:
    """One BFD Control packet. `diag` is an int because reserved codes must still be accepted.

    `auth` is the raw authentication section (Auth Type and Auth Len included) when the A bit
    is set, else None.
    """

    state: State
    my_discriminator: int
    detect_mult: int
    desired_min_tx_interval: int
    required_min_rx_interval: int
    your_discriminator: int = 0
    diag: int = Diag.NO_DIAGNOSTIC
    poll: bool = False
    final: bool = False
    control_plane_independent: bool = False
    demand: bool = False
    required_min_echo_rx_interval: int = 0
    auth: bytes | None = None
    version: int = VERSION

    @property
    def auth_present(self) -> bool:
        return self.auth is not None


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise BfdError(message)


def _check_u32(value: int, name: str) -> None:
    _check(isinstance(value, int) and 0 <= value <= _U32_MAX, f"{name} out of range: {value!r}")


def _check_auth(auth: bytes) -> None:
    _check(len(auth) >= 2, "authentication section shorter than 2 octets")
    auth_type, auth_len = auth[0], auth[1]
    _check(auth_len == len(auth), f"Auth Len {auth_len} does not match section of {len(auth)}")
    bounds = _AUTH_LEN.get(auth_type)
    _check(bounds is not None, f"unknown Auth Type {auth_type}")
    assert bounds is not None
    _check(bounds[0] <= auth_len <= bounds[1], f"Auth Len {auth_len} invalid for type {auth_type}")


def encode_packet(pkt: ControlPacket) -> bytes:
    """Serialize a Control packet; raise BfdError if a field cannot be encoded validly."""
    _check(pkt.version == VERSION, f"version must be {VERSION}")
    _check(0 <= pkt.diag <= 31, f"Diag out of range: {pkt.diag}")
    _check(pkt.state in State.__members__.values(), f"bad state {pkt.state!r}")
    _check(1 <= pkt.detect_mult <= 255, f"Detect Mult out of range: {pkt.detect_mult}")
    _check(not (pkt.poll and pkt.final), "Poll and Final must not both be set")
    _check(1 <= pkt.my_discriminator <= _U32_MAX, "My Discriminator must be non-zero")
    for name in (
        "your_discriminator",
        "desired_min_tx_interval",
        "required_min_rx_interval",
        "required_min_echo_rx_interval",
    ):
        _check_u32(getattr(pkt, name), name)
    auth = pkt.auth or b""
    if pkt.auth is not None:
        _check_auth(pkt.auth)
    flags = (
        (int(pkt.state) << 6)
        | (pkt.poll << 5)
        | (pkt.final << 4)
        | (pkt.control_plane_independent << 3)
        | ((pkt.auth is not None) << 2)
        | (pkt.demand << 1)
    )
    header = _HEADER.pack(
        (pkt.version << 5) | pkt.diag,
        flags,
        pkt.detect_mult,
        HEADER_LENGTH + len(auth),
        pkt.my_discriminator,
        pkt.your_discriminator,
        pkt.desired_min_tx_interval,
        pkt.required_min_rx_interval,
        pkt.required_min_echo_rx_interval,
    )
    return header + auth


def decode_packet(data: bytes) -> ControlPacket:
    """Parse and validate one Control packet (the UDP payload); raise BfdError to discard it.

    Checks of §6.8.6 that need no session: version, Length against the payload and the A bit,
    Detect Mult non-zero, Multipoint clear, My Discriminator non-zero, Your Discriminator zero
    only in Down/AdminDown; plus Poll and Final not both set (§4.1) and the auth section shape.
    Octets after Length (padding) are ignored.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BfdError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    _check(len(data) >= HEADER_LENGTH, f"packet of {len(data)} octets is shorter than 24")
    (vers_diag, flags, detect_mult, length, my_d, your_d, tx, rx, echo) = _HEADER.unpack_from(data)
    version, diag = vers_diag >> 5, vers_diag & 0x1F
    _check(version == VERSION, f"unsupported version {version}")
    auth_bit = bool(flags & 0x04)
    _check(length >= (HEADER_LENGTH + 2 if auth_bit else HEADER_LENGTH), f"Length {length} short")
    _check(length <= len(data), f"Length {length} exceeds payload of {len(data)} octets")
    _check(auth_bit or length == HEADER_LENGTH, f"Length {length} with the A bit clear")
    _check(detect_mult != 0, "Detect Mult is zero")
    _check(not flags & 0x01, "Multipoint bit is set")
    _check(my_d != 0, "My Discriminator is zero")
    state = State(flags >> 6)
    _check(
        your_d != 0 or state in (State.DOWN, State.ADMIN_DOWN),
        f"Your Discriminator is zero in state {state.name}",
    )
    poll, final = bool(flags & 0x20), bool(flags & 0x10)
    _check(not (poll and final), "Poll and Final both set")
    auth: bytes | None = None
    if auth_bit:
        auth = data[HEADER_LENGTH:length]
        _check_auth(auth)
    return ControlPacket(
        state=state,
        my_discriminator=my_d,
        detect_mult=detect_mult,
        desired_min_tx_interval=tx,
        required_min_rx_interval=rx,
        your_discriminator=your_d,
        diag=diag,
        poll=poll,
        final=final,
        control_plane_independent=bool(flags & 0x08),
        demand=bool(flags & 0x02),
        required_min_echo_rx_interval=echo,
        auth=auth,
        version=version,
    )
