"""BGP protocol errors: NOTIFICATION codes (RFC 4271 §4.5, §6) and RFC 7606 error actions.

Every decoder in :mod:`bgplb.bgp` raises only :class:`BGPError`, whatever bytes it is given.
The error carries the NOTIFICATION code, subcode and data to send (RFC 4271 §6.1-§6.3) and the
RFC 7606 §2 action the receiver should apply; only ``SESSION_RESET`` errors are raised, the
recoverable ones are recorded in ``Update.errors`` by the UPDATE decoder.

Registries: IANA "BGP Error (Notification) Codes" and subcodes, RFC 4486/RFC 9384 (Cease),
RFC 7313 (ROUTE-REFRESH), RFC 9234 (Role Mismatch).
"""

from __future__ import annotations

from enum import Enum, IntEnum


class ErrorCode(IntEnum):
    """NOTIFICATION Error Code (RFC 4271 §4.5, RFC 7313 §5)."""

    MESSAGE_HEADER = 1
    OPEN_MESSAGE = 2
    UPDATE_MESSAGE = 3
    HOLD_TIMER_EXPIRED = 4
    FSM = 5
    CEASE = 6
    ROUTE_REFRESH = 7


class HeaderSubcode(IntEnum):
    """Message Header Error subcodes (RFC 4271 §6.1)."""

    UNSPECIFIC = 0
    CONNECTION_NOT_SYNCHRONIZED = 1
    BAD_MESSAGE_LENGTH = 2
    BAD_MESSAGE_TYPE = 3


class OpenSubcode(IntEnum):
    """OPEN Message Error subcodes (RFC 4271 §6.2, RFC 5492, RFC 9234)."""

    UNSPECIFIC = 0
    UNSUPPORTED_VERSION = 1
    BAD_PEER_AS = 2
    BAD_BGP_IDENTIFIER = 3
    UNSUPPORTED_OPTIONAL_PARAMETER = 4
    UNACCEPTABLE_HOLD_TIME = 6
    UNSUPPORTED_CAPABILITY = 7
    ROLE_MISMATCH = 11


class UpdateSubcode(IntEnum):
    """UPDATE Message Error subcodes (RFC 4271 §6.3)."""

    UNSPECIFIC = 0
    MALFORMED_ATTRIBUTE_LIST = 1
    UNRECOGNIZED_WELL_KNOWN_ATTRIBUTE = 2
    MISSING_WELL_KNOWN_ATTRIBUTE = 3
    ATTRIBUTE_FLAGS_ERROR = 4
    ATTRIBUTE_LENGTH_ERROR = 5
    INVALID_ORIGIN_ATTRIBUTE = 6
    INVALID_NEXT_HOP_ATTRIBUTE = 8
    OPTIONAL_ATTRIBUTE_ERROR = 9
    INVALID_NETWORK_FIELD = 10
    MALFORMED_AS_PATH = 11


class FsmSubcode(IntEnum):
    """Finite State Machine Error subcodes (RFC 6608)."""

    UNSPECIFIED = 0
    UNEXPECTED_IN_OPENSENT = 1
    UNEXPECTED_IN_OPENCONFIRM = 2
    UNEXPECTED_IN_ESTABLISHED = 3


class CeaseSubcode(IntEnum):
    """Cease subcodes (RFC 4486, RFC 8538, RFC 9384)."""

    UNSPECIFIC = 0
    MAX_PREFIXES = 1
    ADMINISTRATIVE_SHUTDOWN = 2
    PEER_DECONFIGURED = 3
    ADMINISTRATIVE_RESET = 4
    CONNECTION_REJECTED = 5
    OTHER_CONFIGURATION_CHANGE = 6
    CONNECTION_COLLISION_RESOLUTION = 7
    OUT_OF_RESOURCES = 8
    HARD_RESET = 9
    BFD_DOWN = 10


class RouteRefreshSubcode(IntEnum):
    """ROUTE-REFRESH Message Error subcodes (RFC 7313 §5)."""

    INVALID_MESSAGE_LENGTH = 1


class ErrorAction(Enum):
    """What the receiver does about an error (RFC 7606 §2), strongest first."""

    SESSION_RESET = "session-reset"
    AFI_SAFI_DISABLE = "afi-safi-disable"
    TREAT_AS_WITHDRAW = "treat-as-withdraw"
    ATTRIBUTE_DISCARD = "attribute-discard"


_CODE_NAMES = {
    1: "Message Header Error",
    2: "OPEN Message Error",
    3: "UPDATE Message Error",
    4: "Hold Timer Expired",
    5: "Finite State Machine Error",
    6: "Cease",
    7: "ROUTE-REFRESH Message Error",
}
_SUBCODES: dict[int, type[IntEnum]] = {
    1: HeaderSubcode,
    2: OpenSubcode,
    3: UpdateSubcode,
    5: FsmSubcode,
    6: CeaseSubcode,
    7: RouteRefreshSubcode,
}
_ACRONYMS = {"As": "AS", "Bgp": "BGP", "Bfd": "BFD", "Fsm": "FSM", "Afi": "AFI", "Safi": "SAFI"}


#: Octets of NOTIFICATION data shown in messages and logs (the data can be 65 KB).
SHOWN_DATA = 32


def data_hex(data: bytes) -> str:
    """NOTIFICATION data for humans: hex, the first `SHOWN_DATA` octets only."""
    if len(data) <= SHOWN_DATA:
        return data.hex()
    return f"{data[:SHOWN_DATA].hex()}... ({len(data)} octets)"


def code_name(code: int) -> str:
    """Readable name of an error code, e.g. ``"Cease"``; unknown codes print as numbers."""
    return _CODE_NAMES.get(code, f"Error {code}")


def subcode_name(code: int, subcode: int) -> str:
    """Readable name of a subcode, e.g. ``"Administrative Shutdown"``."""
    enum = _SUBCODES.get(code)
    if enum is not None:
        try:
            words = enum(subcode).name.replace("_", " ").title().split()
        except ValueError:
            pass
        else:
            return " ".join(_ACRONYMS.get(w, w) for w in words)
    return f"subcode {subcode}"


class BGPError(Exception):
    """The one protocol error type: a NOTIFICATION to send plus the RFC 7606 action.

    ``code``/``subcode``/``data`` are the NOTIFICATION fields (RFC 4271 §4.5); ``action`` tells
    the receiver how to recover (RFC 7606 §2); ``reason`` is a human explanation.
    """

    code: int
    subcode: int
    data: bytes
    action: ErrorAction
    reason: str

    def __init__(
        self,
        code: int,
        subcode: int,
        data: bytes = b"",
        action: ErrorAction = ErrorAction.SESSION_RESET,
        reason: str = "",
    ) -> None:
        super().__init__(code, subcode, data, action, reason)
        self.code = code
        self.subcode = subcode
        self.data = bytes(data)
        self.action = action
        self.reason = reason

    def __str__(self) -> str:
        text = f"{code_name(self.code)}/{subcode_name(self.code, self.subcode)}"
        if self.reason:
            text += f": {self.reason}"
        if self.data:
            text += f" (data {data_hex(self.data)})"
        if self.action is not ErrorAction.SESSION_RESET:
            text += f" [{self.action.value}]"
        return text

    def __repr__(self) -> str:
        return (
            f"BGPError(code={self.code}, subcode={self.subcode}, data={self.data!r}, "
            f"action={self.action}, reason={self.reason!r})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BGPError):
            return NotImplemented
        return (self.code, self.subcode, self.data, self.action) == (
            other.code,
            other.subcode,
            other.data,
            other.action,
        )

    def __hash__(self) -> int:
        return hash((self.code, self.subcode, self.data, self.action))
