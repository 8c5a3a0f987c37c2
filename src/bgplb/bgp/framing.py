"""BGP message framing: the 19-octet header (RFC 4271 §4.1) and its checks (§6.1).

:class:`MessageReader` buffers bytes from the transport and yields ``(type, body)`` one message
at a time, checking the marker, the length (19..4096, or 65535 after RFC 8654 negotiation; OPEN
and KEEPALIVE never above 4096) and each type's minimum or exact length.
"""

from __future__ import annotations

import struct

from .errors import BGPError, ErrorCode, HeaderSubcode, RouteRefreshSubcode

MARKER = b"\xff" * 16
HEADER_SIZE = 19

# type -> (minimum length, exact?)  RFC 4271 §4.2-§4.5, RFC 2918 §3
_LENGTHS: dict[int, tuple[int, bool]] = {
    1: (29, False),  # OPEN
    2: (23, False),  # UPDATE
    3: (21, False),  # NOTIFICATION
    4: (19, True),  # KEEPALIVE
    5: (23, True),  # ROUTE-REFRESH
}


def frame(msg_type: int, body: bytes) -> bytes:
    """Prefix a message body with the marker, the length and the type."""
    return MARKER + struct.pack("!HB", HEADER_SIZE + len(body), msg_type) + body


class MessageReader:
    """Sans-IO message splitter: ``feed()`` bytes, then call ``next_message()`` until None.

    Set ``extended = True`` once Extended Message (RFC 8654) is negotiated. After an error the
    reader is broken: every later call raises the same BGPError.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self.extended = False
        self._error: BGPError | None = None

    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        """Octets received but not yet returned as a message."""
        return len(self._buf)

    def next_message(self) -> tuple[int, bytes] | None:
        """The next complete message as ``(type, body)``, or None if more bytes are needed."""
        if self._error is not None:
            raise self._error
        buf = self._buf
        if len(buf) < HEADER_SIZE:
            return None
        try:
            length = self._check_header(buf)
        except BGPError as exc:
            self._error = exc
            raise
        if len(buf) < length:
            return None
        msg_type = buf[18]
        if msg_type == 5 and length != 23:
            self._error = self._bad_route_refresh(bytes(buf[:length]))
            raise self._error
        body = bytes(buf[HEADER_SIZE:length])
        del buf[:length]
        return msg_type, body

    @staticmethod
    def _bad_route_refresh(message: bytes) -> BGPError:
        length = len(message)
        if message[21] in (1, 2):
            # RFC 7313 §5: a BoRR/EoRR of the wrong length; data is the whole message
            return BGPError(
                ErrorCode.ROUTE_REFRESH,
                RouteRefreshSubcode.INVALID_MESSAGE_LENGTH,
                message,
                reason=f"ROUTE-REFRESH length {length}",
            )
        return _bad_length(length, 5)

    def _check_header(self, buf: bytearray) -> int:
        if buf[:16] != MARKER:
            raise BGPError(
                ErrorCode.MESSAGE_HEADER,
                HeaderSubcode.CONNECTION_NOT_SYNCHRONIZED,
                reason="marker is not all ones",
            )
        length, msg_type = struct.unpack_from("!HB", buf, 16)
        if length < HEADER_SIZE or length > (65535 if self.extended else 4096):
            raise _bad_length(length, msg_type)
        spec = _LENGTHS.get(msg_type)
        if spec is None:
            raise BGPError(
                ErrorCode.MESSAGE_HEADER,
                HeaderSubcode.BAD_MESSAGE_TYPE,
                bytes((msg_type,)),
                reason=f"unknown message type {msg_type}",
            )
        minimum, exact = spec
        maximum = 65535 if self.extended and msg_type not in (1, 4) else 4096
        if msg_type == 5 and HEADER_SIZE + 3 <= length <= maximum:
            return int(length)  # exact length checked in next_message (RFC 7313 §5)
        if length < minimum or length > maximum or (exact and length != minimum):
            raise _bad_length(length, msg_type)
        return int(length)


def _bad_length(length: int, msg_type: int) -> BGPError:
    return BGPError(
        ErrorCode.MESSAGE_HEADER,
        HeaderSubcode.BAD_MESSAGE_LENGTH,
        length.to_bytes(2, "big"),
        reason=f"length {length} for message type {msg_type}",
    )
