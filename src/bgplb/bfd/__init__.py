"""bgplb.bfd — sans-IO Bidirectional Forwarding Detection (RFC 5880).

`packet` is the Control packet codec (§4.1), `session` the state machine (§6.2, §6.5, §6.8).
No I/O and no clock here: see `bgplb.io.bfd` for the UDP transport (RFC 5881, RFC 5883).
"""

from .packet import (
    HEADER_LENGTH,
    VERSION,
    AuthType,
    BfdError,
    ControlPacket,
    Diag,
    State,
    decode_packet,
    encode_packet,
)
from .session import (
    SLOW_TX_INTERVAL,
    TRANSITIONS,
    PollSequenceCompleted,
    Session,
    SessionDown,
    SessionEvent,
    SessionUp,
    StateChanged,
)

__all__ = [
    "HEADER_LENGTH",
    "SLOW_TX_INTERVAL",
    "TRANSITIONS",
    "VERSION",
    "AuthType",
    "BfdError",
    "ControlPacket",
    "Diag",
    "PollSequenceCompleted",
    "Session",
    "SessionDown",
    "SessionEvent",
    "SessionUp",
    "State",
    "StateChanged",
    "decode_packet",
    "encode_packet",
]
