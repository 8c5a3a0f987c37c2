"""A BGP session, sans-IO (RFC 4271 §8, §4, §6, §10; RFC 4724 End-of-RIB; RFC 2918).

Theory of operation. A `Session` is driven by three kinds of input and produces three kinds of
output, in the style of h11 and aioquic:

* inputs: API calls (`start`, `stop`, `announce`, `withdraw`), transport notifications
  (`connection_made`, `connection_lost`), bytes (`receive_data`) and time (`handle_timer`);
  every input takes `now` (seconds on a monotonic clock), the session never reads a clock;
* outputs: bytes to write (`data_to_send`), events (`next_event`, past tense), and the next
  deadline (`get_timer`) at which `handle_timer` must be called.

Each input is turned into an RFC 4271 §8.1 event and dispatched through the transition table in
`fsm.py`; the handler for each (state, event) pair is a method `_on_<name>` here. The transport
learns what to do from two events: `ConnectRequested` (open a TCP connection now) and
`CloseRequested` (write what `data_to_send` still holds, then close).

Timers (§10): ConnectRetry (with exponential backoff on consecutive failures), Hold, Keepalive
(hold/3) and IdleHold (automatic restart after an error, with exponential backoff: the
DampPeerOscillations option of §8.1.1). All are jittered to 75-100% as §10 asks, with an injected
`random.Random` so tests are deterministic.

Routes to advertise are kept in an `AdjRibOut`; updates are built when the transport pulls bytes,
so many `announce()` calls in a row become as few UPDATE messages as possible.

Robustness. No input ever raises out of the session (`start`, `stop`, `connection_made`,
`connection_lost`, `receive_data`, `handle_timer`, `data_to_send`): protocol errors become the
NOTIFICATION RFC 4271 §6 names, and an unexpected exception inside the session (a bug) becomes
Cease with subcode 0 (RFC 4271 §6.7: a speaker closes a connection "in the absence of any fatal
errors" detected in the peer's messages with Cease; an FSM Error, 5, would blame the peer's state
machine, and RFC 4486 has no subcode for an internal failure). The session then goes Idle with
`InternalSessionError`, a `SessionDown` that carries the traceback for the owner to log and that
is not a transport loss (so a Graceful Restart helper purges the peer's routes).
"""

from __future__ import annotations

import functools
import inspect
import random
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv6Address
from typing import Concatenate, ParamSpec

from bgplb.bgp.adj_rib_out import AdjRibOut
from bgplb.bgp.attributes import AsPathSegment, AsPathSegmentType, Origin, PathAttributes
from bgplb.bgp.capabilities import (
    Capability,
    ExtendedMessage,
    FourOctetAS,
    GracefulRestart,
    GracefulRestartFamily,
    Multiprotocol,
    RouteRefreshCapability,
)
from bgplb.bgp.errors import BGPError, CeaseSubcode, ErrorCode, FsmSubcode, OpenSubcode
from bgplb.bgp.events import (
    CloseRequested,
    ConnectRequested,
    EndOfRibReceived,
    Event,
    InternalSessionError,
    RouteRefreshReceived,
    RoutesHeldBack,
    RoutesReceived,
    SessionDown,
    SessionEstablished,
    StateChanged,
)
from bgplb.bgp.families import AFI, IPV4_UNICAST, IPV6_UNICAST, Family
from bgplb.bgp.framing import HEADER_SIZE, MessageReader
from bgplb.bgp.fsm import TRANSITIONS, Input, State
from bgplb.bgp.messages import (
    Keepalive,
    Message,
    MessageType,
    Notification,
    Open,
    RouteRefresh,
    Update,
    decode,
    encode,
)
from bgplb.bgp.negotiated import Negotiated, negotiate
from bgplb.bgp.packing import pack_updates
from bgplb.bgp.prefix import Prefix

__all__ = [
    "OPEN_HOLD_TIME",
    "CloseRequested",
    "ConnectRequested",
    "EndOfRibReceived",
    "Event",
    "InternalSessionError",
    "RouteRefreshReceived",
    "RoutesHeldBack",
    "RoutesReceived",
    "Session",
    "SessionConfig",
    "SessionDown",
    "SessionEstablished",
    "StateChanged",
]

IPAddress = IPv4Address | IPv6Address
_P = ParamSpec("_P")

#: RFC 4271 §8.2.2: "a large value" for the HoldTimer while waiting for OPEN (4 minutes).
OPEN_HOLD_TIME = 240.0


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """What a session is configured with. `peer_asn=None` accepts any AS (router ranges)."""

    local_asn: int
    router_id: IPv4Address
    peer_asn: int | None
    hold_time: int = 9
    passive: bool = False
    families: tuple[Family, ...] = (IPV4_UNICAST, IPV6_UNICAST)
    route_refresh: bool = True
    extended_message: bool = True
    graceful_restart_time: int | None = None  # advertise RFC 4724 with this restart time
    graceful_restart_restarting: bool = False  # the R bit: we restarted and kept forwarding
    connect_retry_time: float = 5.0
    connect_retry_max: float = 60.0
    idle_hold_time: float = 1.0
    idle_hold_max: float = 60.0
    automatic_restart: bool = True
    send_end_of_rib: bool = True
    # HoldTimer while waiting for the peer's OPEN (§8.2.2 "a large value"); a listener that
    # must not keep half-open connections uses a few seconds.
    open_hold_time: float = OPEN_HOLD_TIME

    def __post_init__(self) -> None:
        if self.hold_time in (1, 2) or not 0 <= self.hold_time <= 65535:
            raise ValueError(f"hold time must be 0 or 3..65535 seconds, not {self.hold_time}")
        if not 1 <= self.local_asn <= 0xFFFFFFFF:
            raise ValueError(f"local AS {self.local_asn} out of range")
        if not self.open_hold_time > 0:
            raise ValueError(f"open hold time must be positive, not {self.open_hold_time}")


def _guarded(
    method: Callable[Concatenate[Session, _P], None],
) -> Callable[Concatenate[Session, _P], None]:
    """Run an input method; an unexpected exception ends the session (see the module doc)."""
    index = list(inspect.signature(method).parameters).index("now") - 1  # after self

    @functools.wraps(method)
    def wrapper(self: Session, /, *args: _P.args, **kwargs: _P.kwargs) -> None:
        try:
            method(self, *args, **kwargs)
        except Exception as exc:  # every bug must end in a clean Idle
            now = args[index] if len(args) > index else kwargs.get("now", 0.0)
            self._internal_error(float(now) if isinstance(now, int | float) else 0.0, exc)

    return wrapper


_MESSAGE_INPUT = {
    MessageType.OPEN: Input.BGP_OPEN,
    MessageType.UPDATE: Input.UPDATE_MSG,
    MessageType.NOTIFICATION: Input.NOTIF_MSG,
    MessageType.KEEPALIVE: Input.KEEPALIVE_MSG,
    MessageType.ROUTE_REFRESH: Input.ROUTE_REFRESH_MSG,
}
_ERROR_INPUT = {
    MessageType.OPEN: Input.BGP_OPEN_MSG_ERR,
    MessageType.UPDATE: Input.UPDATE_MSG_ERR,
}
_CONNECTED = (State.OPEN_SENT, State.OPEN_CONFIRM, State.ESTABLISHED)
_FSM_SUBCODE = {
    State.OPEN_SENT: FsmSubcode.UNEXPECTED_IN_OPENSENT,
    State.OPEN_CONFIRM: FsmSubcode.UNEXPECTED_IN_OPENCONFIRM,
    State.ESTABLISHED: FsmSubcode.UNEXPECTED_IN_ESTABLISHED,
}


#: Timer name -> the RFC 4271 §8.1 event its expiry fires, in the order they are checked.
_TIMER_INPUTS = (
    ("idle_hold", Input.AUTOMATIC_START),
    ("connect_retry", Input.CONNECT_RETRY_TIMER_EXPIRES),
    ("hold", Input.HOLD_TIMER_EXPIRES),
    ("keepalive", Input.KEEPALIVE_TIMER_EXPIRES),
)


@dataclass(slots=True)
class _Timers:
    connect_retry: float | None = None
    hold: float | None = None
    keepalive: float | None = None
    idle_hold: float | None = None

    def earliest(self) -> float | None:
        timers = (self.connect_retry, self.hold, self.keepalive, self.idle_hold)
        present = [d for d in timers if d is not None]
        return min(present) if present else None

    def clear(self) -> None:
        self.connect_retry = self.hold = self.keepalive = self.idle_hold = None


class Session:
    """One BGP peer's session state machine. See the module docstring."""

    def __init__(self, config: SessionConfig, *, rng: random.Random | None = None) -> None:
        self.config = config
        self._rng = rng or random.Random()
        self._state = State.IDLE
        self._events: deque[Event] = deque()
        self._out = bytearray()
        self._reader = MessageReader()
        #: complete messages may still be buffered (receive_data stopped at its limit)
        self.input_pending = False
        self._timers = _Timers()
        self._neg: Negotiated | None = None
        self._remote_open: Open | None = None
        self._next_hops: dict[AFI, tuple[IPAddress, ...]] = {}
        self._stopped = True
        self._connect_failures = 0
        self._idle_hold = config.idle_hold_time
        self._eor_pending: list[Family] = []
        self.rib_out = AdjRibOut()
        self.last_error: str | None = None
        self.established_at: float | None = None
        self.updates_sent = 0
        self.updates_received = 0
        self.held_back: dict[Prefix, str] = {}
        self.last_traceback: str | None = None
        self._hold_paused = False
        #: (AFI, SAFI) -> UPDATEs on this connection whose MP_REACH/MP_UNREACH_NLRI for that
        #: family was discarded because it was not negotiated (RFC 4760 §8); the transport
        #: logs the first one of each family.
        self.ignored_families: dict[tuple[int, int], int] = {}

    # -- read-only state ----------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def negotiated(self) -> Negotiated | None:
        """The negotiated parameters once an OPEN was accepted, else None."""
        return self._neg

    @property
    def remote_open(self) -> Open | None:
        return self._remote_open

    def local_open(self) -> Open:
        """The OPEN this session sends (RFC 4271 §4.2, RFC 5492 capabilities)."""
        c = self.config
        caps: list[Capability] = [Multiprotocol(afi, safi) for afi, safi in c.families]
        if c.route_refresh:
            caps.append(RouteRefreshCapability())
        if c.extended_message:
            caps.append(ExtendedMessage())
        if c.graceful_restart_time is not None:
            caps.append(
                GracefulRestart(
                    restart_time=c.graceful_restart_time,
                    restarting=c.graceful_restart_restarting,
                    families=tuple(
                        GracefulRestartFamily(afi, safi, c.graceful_restart_restarting)
                        for afi, safi in c.families
                    ),
                )
            )
        caps.append(FourOctetAS(c.local_asn))
        return Open(
            asn=c.local_asn, hold_time=c.hold_time, router_id=c.router_id, capabilities=tuple(caps)
        )

    # -- API inputs ---------------------------------------------------------------------------

    @_guarded
    def start(self, now: float) -> None:
        """ManualStart (Event 1): begin connecting (or listening, when passive)."""
        self._stopped = False
        self._fire(Input.MANUAL_START, now)

    @_guarded
    def stop(
        self,
        now: float,
        subcode: int = CeaseSubcode.ADMINISTRATIVE_SHUTDOWN,
        message: str = "",
        data: bytes | None = None,
    ) -> None:
        """ManualStop (Event 2): send Cease with `subcode` (and RFC 8203 `message`), go Idle.

        No automatic restart follows. `data` overrides the NOTIFICATION data (e.g. for
        Maximum Number of Prefixes Reached, RFC 4486 §4).
        """
        self._stopped = True
        if data is not None:
            notification = Notification(ErrorCode.CEASE, subcode, data)
        elif message and subcode in (
            CeaseSubcode.ADMINISTRATIVE_SHUTDOWN,
            CeaseSubcode.ADMINISTRATIVE_RESET,
        ):
            notification = Notification.cease_shutdown(subcode, message)
        else:
            notification = Notification(ErrorCode.CEASE, subcode)
        self._fire(Input.MANUAL_STOP, now, notification)

    @_guarded
    def connection_made(
        self, now: float, next_hops: Mapping[AFI, tuple[IPAddress, ...]] | None = None
    ) -> None:
        """The transport is connected (Events 16/17). `next_hops` are our addresses on it."""
        self._next_hops = dict(next_hops or {})
        self._fire(Input.TCP_CONNECTION_CONFIRMED, now)

    @_guarded
    def connection_lost(self, now: float, reason: str = "connection closed by peer") -> None:
        """The transport failed or was closed by the peer (Event 18)."""
        self._fire(Input.TCP_CONNECTION_FAILS, now, reason)

    @_guarded
    def receive_data(self, data: bytes, now: float, limit: int | None = None) -> None:
        """Feed bytes read from the transport; complete messages are processed at once, or at
        most `limit` of them: then `input_pending` is True and `receive_data(b"", now, limit)`
        goes on with the buffered ones (an owner keeps its event loop responsive that way)."""
        self.input_pending = False
        if self._state not in _CONNECTED:
            return
        self._reader.feed(data)
        processed = 0
        while self._state in _CONNECTED:
            if limit is not None and processed >= limit:
                self.input_pending = True
                return
            processed += 1
            try:
                framed = self._reader.next_message()
            except BGPError as err:
                self._fire(Input.BGP_HEADER_ERR, now, err)
                return
            if framed is None:
                return
            msg_type, body = framed
            try:
                message = decode(msg_type, body, self._neg or Negotiated())
            except BGPError as err:
                self._fire(_ERROR_INPUT.get(MessageType(msg_type), Input.BGP_HEADER_ERR), now, err)
                return
            self._fire(_MESSAGE_INPUT[MessageType(msg_type)], now, message)

    @_guarded
    def handle_timer(self, now: float) -> None:
        """Fire every timer whose deadline is at or before `now`."""
        for name, inp in _TIMER_INPUTS:
            deadline = getattr(self._timers, name)
            if deadline is not None and deadline <= now:
                setattr(self._timers, name, None)
                self._fire(inp, now)

    def announce(self, prefix: Prefix, attributes: PathAttributes) -> None:
        """Advertise `prefix` (sent when Established; remembered across session restarts)."""
        self.rib_out.set(prefix, attributes)

    def withdraw(self, prefix: Prefix) -> None:
        self.rib_out.remove(prefix)

    def request_route_refresh(self, family: Family) -> None:
        """Ask the peer to re-send its routes of `family` (RFC 2918), if it supports it."""
        if self._state is State.ESTABLISHED and self._neg is not None and self._neg.route_refresh:
            self._send(RouteRefresh(family[0], family[1]))

    # -- outputs ------------------------------------------------------------------------------

    def data_to_send(self, now: float) -> bytes:
        """Bytes to write to the transport now (builds pending UPDATEs first)."""
        if self._state is State.ESTABLISHED:
            try:
                self._flush_updates(now)
            except Exception as exc:  # a bug: see the module docstring
                self._internal_error(now, exc)
        data = bytes(self._out)
        self._out.clear()
        return data

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def events(self) -> list[Event]:
        """All pending events, oldest first."""
        out = list(self._events)
        self._events.clear()
        return out

    def get_timer(self) -> float | None:
        """The earliest deadline at which `handle_timer` must be called, or None."""
        return self._timers.earliest()

    @property
    def hold_timer_paused(self) -> bool:
        return self._hold_paused

    def pause_hold_timer(self) -> None:
        """The owner stopped reading the socket (backpressure): suspend our HoldTimer.

        Unread KEEPALIVEs wait in the socket buffer, so the peer is not silent, we just do not
        look; our KeepaliveTimer keeps running, so the peer's HoldTimer is fed as usual."""
        self._hold_paused = True
        self._timers.hold = None

    def resume_hold_timer(self, now: float) -> None:
        """Reading again: the HoldTimer restarts from `now` with its full value."""
        if not self._hold_paused:
            return
        self._hold_paused = False
        if self._state is State.OPEN_SENT:
            self._timers.hold = now + self.config.open_hold_time
        elif self._state in (State.OPEN_CONFIRM, State.ESTABLISHED):
            self._arm_hold(now)
            if self._state is State.OPEN_CONFIRM:
                self._bound_open_confirm(now)

    def _internal_error(self, now: float, exc: BaseException) -> None:
        """An unexpected exception: Cease/0 if connected, Idle, and an InternalSessionError."""
        text = "".join(traceback.format_exception(exc))
        reason = f"internal error: {type(exc).__name__}: {exc}"
        self.last_traceback = text
        was_established = self._state is State.ESTABLISHED
        notification: Notification | None = None
        if self._state in _CONNECTED:
            notification = Notification(ErrorCode.CEASE, CeaseSubcode.UNSPECIFIC)
            self._out += b"\xff" * 16 + b"\x00\x15\x03\x06\x00"  # cannot fail to encode
        self._events.append(
            InternalSessionError(reason, was_established, notification, traceback=text)
        )
        try:
            self._reset_connection()
        except Exception:  # the state is rebuilt below anyway
            self._events.append(CloseRequested())
        self._neg = None
        self._reader = MessageReader()
        self._timers.clear()
        self.last_error = reason
        self.established_at = None
        if self._state is not State.IDLE:
            self._events.append(StateChanged(self._state, State.IDLE))
            self._state = State.IDLE
        if self.config.automatic_restart and not self._stopped:
            self._timers.idle_hold = now + self._idle_hold
            self._idle_hold = min(self._idle_hold * 2, self.config.idle_hold_max)

    # -- dispatch -----------------------------------------------------------------------------

    def _fire(self, inp: Input, now: float, arg: object = None) -> None:
        handler = TRANSITIONS[self._state, inp]
        getattr(self, f"_on_{handler}")(now, arg)

    def _set_state(self, new: State) -> None:
        if new is not self._state:
            old, self._state = self._state, new
            self._events.append(StateChanged(old, new))

    def _jitter(self, seconds: float) -> float:
        """RFC 4271 §10: timers are jittered to a random 75-100% of their value."""
        return seconds * (0.75 + 0.25 * self._rng.random())

    def _send(self, message: Message) -> None:
        self._out += encode(message, self._neg or Negotiated())

    # -- handlers (names from fsm.TRANSITIONS) -------------------------------------------------

    def _on_ignore(self, now: float, arg: object) -> None:
        return

    def _on_start(self, now: float, arg: object) -> None:
        self._reader = MessageReader()
        self._timers.idle_hold = None
        if self.config.passive:
            self._set_state(State.ACTIVE)  # wait for the peer to connect; never connect
        else:
            self._set_state(State.CONNECT)
            self._arm_connect_retry(now)
            self._events.append(ConnectRequested())

    def _on_stop_idle(self, now: float, arg: object) -> None:
        self._timers.clear()

    def _on_stop_without_connection(self, now: float, arg: object) -> None:
        self._timers.clear()
        self._set_state(State.IDLE)
        self._events.append(CloseRequested())

    def _on_retry_connect(self, now: float, arg: object) -> None:
        self._set_state(State.CONNECT)
        self._arm_connect_retry(now)
        self._events.append(ConnectRequested())

    def _on_connect_failed(self, now: float, arg: object) -> None:
        # §8.2.2 Connect/Active, Event 18: restart the ConnectRetryTimer, go to Active.
        self._connect_failures += 1
        self.last_error = str(arg) if arg else "connection failed"
        self._set_state(State.ACTIVE)
        if not self.config.passive:
            self._arm_connect_retry(now)

    def _arm_connect_retry(self, now: float) -> None:
        base = self.config.connect_retry_time * (2 ** min(self._connect_failures, 16))
        self._timers.connect_retry = now + self._jitter(min(base, self.config.connect_retry_max))

    def _on_send_open(self, now: float, arg: object) -> None:
        self._timers.connect_retry = None
        self._reader = MessageReader()
        self._neg = None
        self.ignored_families = {}
        self._send(self.local_open())
        self._timers.hold = None if self._hold_paused else now + self.config.open_hold_time
        self._set_state(State.OPEN_SENT)

    def _on_open_received(self, now: float, arg: object) -> None:
        assert isinstance(arg, Open)
        c = self.config
        if c.peer_asn is not None and arg.asn != c.peer_asn:
            self._error(
                now,
                BGPError(
                    ErrorCode.OPEN_MESSAGE, OpenSubcode.BAD_PEER_AS, reason=f"peer AS {arg.asn}"
                ),
            )
            return
        if arg.asn == c.local_asn and arg.router_id == c.router_id:
            # RFC 6286 §2.2: within an AS the identifiers must differ.
            err = BGPError(
                ErrorCode.OPEN_MESSAGE, OpenSubcode.BAD_BGP_IDENTIFIER, reason="same identifier"
            )
            self._error(now, err)
            return
        self._remote_open = arg
        self._neg = negotiate(self.local_open(), arg, c.local_asn)
        self._reader.extended = self._neg.extended_message
        self._send(Keepalive())
        self._arm_hold(now)
        self._bound_open_confirm(now)
        self._arm_keepalive(now)
        self._set_state(State.OPEN_CONFIRM)

    def _bound_open_confirm(self, now: float) -> None:
        # A negotiated hold time of 0 arms no HoldTimer (§8.2.2), which would leave OpenConfirm
        # waiting for the peer's KEEPALIVE for ever: that wait is bounded like the OPEN wait.
        if self._timers.hold is None and not self._hold_paused:
            self._timers.hold = now + self.config.open_hold_time

    def _arm_hold(self, now: float) -> None:
        hold = self._neg.hold_time if self._neg else 0
        self._timers.hold = now + hold if hold and not self._hold_paused else None

    def _arm_keepalive(self, now: float) -> None:
        keepalive = self._neg.keepalive_time if self._neg else 0
        self._timers.keepalive = now + self._jitter(keepalive) if keepalive else None

    def _on_keepalive_confirms(self, now: float, arg: object) -> None:
        assert self._neg is not None
        self._arm_hold(now)
        self._connect_failures = 0
        self._idle_hold = self.config.idle_hold_time
        self.established_at = now
        self.last_error = None
        self._set_state(State.ESTABLISHED)
        self.rib_out.reset()
        self._eor_pending = sorted(self._neg.families) if self.config.send_end_of_rib else []
        self._events.append(SessionEstablished(self._neg))

    def _on_keepalive_received(self, now: float, arg: object) -> None:
        self._arm_hold(now)

    def _on_update_received(self, now: float, arg: object) -> None:
        assert isinstance(arg, Update)
        self._arm_hold(now)
        self.updates_received += 1
        for afi, safi in arg.ignored_families:
            self.ignored_families[afi, safi] = self.ignored_families.get((afi, safi), 0) + 1
        family = arg.is_end_of_rib
        if family is not None:
            self._events.append(EndOfRibReceived(family))
        else:
            self._events.append(RoutesReceived(arg))

    def _on_route_refresh_received(self, now: float, arg: object) -> None:
        assert isinstance(arg, RouteRefresh)
        self._arm_hold(now)
        self.rib_out.resend_all()
        if self.config.send_end_of_rib:
            self._eor_pending = sorted(self._neg.families) if self._neg else []
        self._events.append(RouteRefreshReceived(arg.afi, arg.safi))

    def _on_send_keepalive(self, now: float, arg: object) -> None:
        self._send(Keepalive())
        self._arm_keepalive(now)

    def _on_hold_timer_expired(self, now: float, arg: object) -> None:
        notification = Notification(ErrorCode.HOLD_TIMER_EXPIRED, 0)
        self._send(notification)
        self._go_idle(now, "hold timer expired", notification, local=True, hold_expired=True)

    def _on_notification_received(self, now: float, arg: object) -> None:
        assert isinstance(arg, Notification)
        self._go_idle(now, f"NOTIFICATION received: {arg}", arg, local=False)

    def _on_connection_lost(self, now: float, arg: object) -> None:
        self._go_idle(now, str(arg or "connection lost"), None, connection_lost=True)

    def _on_open_sent_connection_lost(self, now: float, arg: object) -> None:
        # §8.2.2 OpenSent, Event 18: close, restart the ConnectRetryTimer, go to Active.
        self._events.append(
            SessionDown(
                str(arg or "connection lost"), False, None, local=False, connection_lost=True
            )
        )
        self.last_error = str(arg or "connection lost")
        self._reset_connection()
        self._connect_failures += 1
        self._set_state(State.ACTIVE)
        if not self.config.passive:
            self._arm_connect_retry(now)

    def _on_message_error(self, now: float, arg: object) -> None:
        assert isinstance(arg, BGPError)
        self._error(now, arg)

    def _on_fsm_error(self, now: float, arg: object) -> None:
        subcode = _FSM_SUBCODE.get(self._state, FsmSubcode.UNSPECIFIED)
        what = type(arg).__name__ if arg is not None else "event"
        reason = f"unexpected {what} in {self._state.value}"
        self._error(now, BGPError(ErrorCode.FSM, subcode, reason=reason))

    def _on_fsm_error_no_connection(self, now: float, arg: object) -> None:
        return  # bytes after the connection went away: nothing to answer on

    def _on_stop_with_notification(self, now: float, arg: object) -> None:
        assert isinstance(arg, Notification)
        self._send(arg)
        self._go_idle(now, f"stopped: {arg}", arg, local=True)

    def _error(self, now: float, err: BGPError) -> None:
        # The Data field is cut to what fits (see messages.encode), here too so that the
        # NOTIFICATION reported in SessionDown is the one sent.
        room = (self._neg or Negotiated()).max_message_size - HEADER_SIZE - 2
        notification = Notification(err.code, err.subcode, err.data[:room])
        self._send(notification)
        self._go_idle(now, str(err), notification, local=True)

    # -- leaving a connection -----------------------------------------------------------------

    def _reset_connection(self) -> None:
        self._timers.hold = self._timers.keepalive = None
        self._neg = None
        self._reader = MessageReader()
        self.rib_out.reset()
        self._eor_pending = []
        self._events.append(CloseRequested())

    def _go_idle(
        self,
        now: float,
        reason: str,
        notification: Notification | None,
        *,
        local: bool = True,
        hold_expired: bool = False,
        connection_lost: bool = False,
    ) -> None:
        was_established = self._state is State.ESTABLISHED
        self.last_error = reason
        self.established_at = None
        self._events.append(
            SessionDown(reason, was_established, notification, local, hold_expired, connection_lost)
        )
        self._reset_connection()
        self._timers.clear()
        self._set_state(State.IDLE)
        if self.config.automatic_restart and not self._stopped:
            # §8.1.1 DampPeerOscillations: wait IdleHoldTime, doubling on each restart.
            self._timers.idle_hold = now + self._jitter(self._idle_hold)
            self._idle_hold = min(self._idle_hold * 2, self.config.idle_hold_max)

    # -- sending routes -----------------------------------------------------------------------

    def _export(self, attributes: PathAttributes) -> PathAttributes:
        """Attributes as sent to this peer: our AS prepended on eBGP, LOCAL_PREF on iBGP only."""
        assert self._neg is not None
        changes: dict[str, object] = {}
        if attributes.origin is None:
            changes["origin"] = Origin.IGP
        if self._neg.ebgp:
            segments = list(attributes.as_path)
            if segments and segments[0].type == AsPathSegmentType.AS_SEQUENCE:
                first = segments[0]
                segments[0] = AsPathSegment(first.type, (self.config.local_asn, *first.asns))
            else:
                segments.insert(
                    0, AsPathSegment(AsPathSegmentType.AS_SEQUENCE, (self.config.local_asn,))
                )
            changes["as_path"] = tuple(segments)
            if attributes.local_pref is not None:
                changes["local_pref"] = None
        elif attributes.local_pref is None:
            changes["local_pref"] = 100
        return replace(attributes, **changes) if changes else attributes  # type: ignore[arg-type]

    def _has_next_hop(self, prefix: Prefix, attributes: PathAttributes) -> bool:
        if prefix.afi == AFI.IPV4 and attributes.next_hop is not None:
            return True
        if attributes.mp_reach is not None and attributes.mp_reach.afi == prefix.afi:
            return True
        return bool(self._next_hops.get(prefix.afi))

    def _sendable(self) -> Iterable[Prefix]:
        """Prefixes that can go to this peer now; the others are held back with a reason.

        A prefix is held back when its family was not negotiated, or when neither its
        attributes nor this connection give a next hop of its family (e.g. an IPv6 VIP on a
        session between IPv4 addresses). Withdrawals are never held back.
        """
        assert self._neg is not None
        families = {afi for afi, _ in self._neg.families}
        out: list[Prefix] = []
        held: dict[Prefix, str] = {}
        for prefix, attributes in self.rib_out.desired.items():
            if prefix.afi not in families:
                held[prefix] = f"{prefix.afi.name} unicast was not negotiated with this peer"
            elif not self._has_next_hop(prefix, attributes):
                held[prefix] = f"no {prefix.afi.name} next hop on this session"
            else:
                out.append(prefix)
        out += [p for p in self.rib_out.sent if p.afi in families]
        if held != self.held_back:
            self.held_back = held
            self._events.append(RoutesHeldBack(tuple(sorted(held.items()))))
        return out

    def _flush_updates(self, now: float) -> None:
        assert self._neg is not None
        if self.rib_out.has_pending():
            include = set(self._sendable())
            announce, withdraw = self.rib_out.pending(include)
            if announce or withdraw:
                exported: dict[PathAttributes, list[Prefix]] = {}
                for attributes, prefixes in announce.items():
                    exported.setdefault(self._export(attributes), []).extend(prefixes)
                messages = pack_updates(exported, withdraw, self._neg, self._next_hops)
                for message in messages:
                    self._out += message
                self.updates_sent += len(messages)
                self._arm_keepalive(now)  # §10: sending an UPDATE restarts the KeepaliveTimer
            self.rib_out.commit(include)
        for family in self._eor_pending:
            self._out += encode(Update.end_of_rib(family), self._neg)
        self._eor_pending = []
