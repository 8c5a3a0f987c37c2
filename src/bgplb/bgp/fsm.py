"""The BGP finite state machine of RFC 4271 §8, as data.

States and inputs carry the RFC's names (§8.1 events, §8.2.2 states). `TRANSITIONS` maps every
(state, input) pair to the name of the `Session` method that handles it; a pair that is not in the
table cannot happen by construction, and `tests/unit/bgp/test_fsm_table.py` checks that the table
is total. The handlers live in `session.py`; this module holds only the rules that can be read
without the mechanics:

* Idle: only a start (manual, or automatic after the IdleHoldTimer) leaves it. Everything else
  is ignored (§8.2.2 "Idle state": "any other event ... is ignored").
* Connect / Active: the transport is not up. The ConnectRetryTimer alternates between them:
  in Active (passive or after a failed attempt) its expiry asks for a new outgoing connection
  and moves to Connect. A message input here is impossible (no connection), so it is an FSM error.
* OpenSent / OpenConfirm / Established: a connection exists. An unexpected message gets a
  NOTIFICATION "Finite State Machine Error" with the subcode of RFC 6608 naming the state.

Connection collisions (§6.8) are resolved by the pure function `collision_keeps_existing`.
"""

from __future__ import annotations

from enum import Enum
from ipaddress import IPv4Address


class State(Enum):
    """RFC 4271 §8.2.2 states."""

    IDLE = "Idle"
    CONNECT = "Connect"
    ACTIVE = "Active"
    OPEN_SENT = "OpenSent"
    OPEN_CONFIRM = "OpenConfirm"
    ESTABLISHED = "Established"


class Input(Enum):
    """RFC 4271 §8.1 events that can reach this implementation (numbers from the RFC)."""

    MANUAL_START = 1
    MANUAL_STOP = 2
    AUTOMATIC_START = 3  # IdleHoldTimer expired (§8.1.2, DampPeerOscillations)
    CONNECT_RETRY_TIMER_EXPIRES = 9
    HOLD_TIMER_EXPIRES = 10
    KEEPALIVE_TIMER_EXPIRES = 11
    TCP_CONNECTION_CONFIRMED = 17  # events 16/17 merged: the transport is connected
    TCP_CONNECTION_FAILS = 18
    BGP_OPEN = 19
    BGP_HEADER_ERR = 21
    BGP_OPEN_MSG_ERR = 22
    NOTIF_MSG = 25
    KEEPALIVE_MSG = 26
    UPDATE_MSG = 27
    UPDATE_MSG_ERR = 28
    ROUTE_REFRESH_MSG = 100  # RFC 2918: not numbered in RFC 4271


_MESSAGES = (
    Input.BGP_OPEN,
    Input.NOTIF_MSG,
    Input.KEEPALIVE_MSG,
    Input.UPDATE_MSG,
    Input.UPDATE_MSG_ERR,
    Input.ROUTE_REFRESH_MSG,
    Input.BGP_HEADER_ERR,
    Input.BGP_OPEN_MSG_ERR,
)


def _table() -> dict[tuple[State, Input], str]:
    t: dict[tuple[State, Input], str] = {}
    # Idle: only starts matter.
    for inp in Input:
        t[State.IDLE, inp] = "ignore"
    t[State.IDLE, Input.MANUAL_START] = "start"
    t[State.IDLE, Input.AUTOMATIC_START] = "start"
    t[State.IDLE, Input.MANUAL_STOP] = "stop_idle"

    # Connect and Active: no transport yet.
    for st in (State.CONNECT, State.ACTIVE):
        for inp in _MESSAGES:
            t[st, inp] = "fsm_error_no_connection"
        t[st, Input.MANUAL_START] = "ignore"
        t[st, Input.AUTOMATIC_START] = "ignore"
        t[st, Input.MANUAL_STOP] = "stop_without_connection"
        t[st, Input.HOLD_TIMER_EXPIRES] = "ignore"  # no hold timer runs here
        t[st, Input.KEEPALIVE_TIMER_EXPIRES] = "ignore"
        t[st, Input.TCP_CONNECTION_CONFIRMED] = "send_open"
    t[State.CONNECT, Input.CONNECT_RETRY_TIMER_EXPIRES] = "retry_connect"
    t[State.ACTIVE, Input.CONNECT_RETRY_TIMER_EXPIRES] = "retry_connect"
    t[State.CONNECT, Input.TCP_CONNECTION_FAILS] = "connect_failed"
    t[State.ACTIVE, Input.TCP_CONNECTION_FAILS] = "connect_failed"

    # With a connection.
    for st in (State.OPEN_SENT, State.OPEN_CONFIRM, State.ESTABLISHED):
        t[st, Input.MANUAL_START] = "ignore"
        t[st, Input.AUTOMATIC_START] = "ignore"
        t[st, Input.MANUAL_STOP] = "stop_with_notification"
        t[st, Input.CONNECT_RETRY_TIMER_EXPIRES] = "fsm_error"
        t[st, Input.HOLD_TIMER_EXPIRES] = "hold_timer_expired"
        t[st, Input.TCP_CONNECTION_CONFIRMED] = "fsm_error"  # a second connection: see §6.8
        t[st, Input.TCP_CONNECTION_FAILS] = "connection_lost"
        t[st, Input.BGP_HEADER_ERR] = "message_error"
        t[st, Input.BGP_OPEN_MSG_ERR] = "message_error"
        t[st, Input.NOTIF_MSG] = "notification_received"
        t[st, Input.UPDATE_MSG_ERR] = "fsm_error"
        t[st, Input.UPDATE_MSG] = "fsm_error"
        t[st, Input.ROUTE_REFRESH_MSG] = "fsm_error"
        t[st, Input.BGP_OPEN] = "fsm_error"
        t[st, Input.KEEPALIVE_MSG] = "fsm_error"
        t[st, Input.KEEPALIVE_TIMER_EXPIRES] = "send_keepalive"
    t[State.OPEN_SENT, Input.BGP_OPEN] = "open_received"
    t[State.OPEN_SENT, Input.KEEPALIVE_TIMER_EXPIRES] = "ignore"  # not running before OPEN
    # RFC 4271 §8.2.2 OpenSent: TcpConnectionFails -> restart ConnectRetryTimer, go to Active.
    t[State.OPEN_SENT, Input.TCP_CONNECTION_FAILS] = "open_sent_connection_lost"
    t[State.OPEN_CONFIRM, Input.KEEPALIVE_MSG] = "keepalive_confirms"
    t[State.ESTABLISHED, Input.KEEPALIVE_MSG] = "keepalive_received"
    t[State.ESTABLISHED, Input.UPDATE_MSG] = "update_received"
    t[State.ESTABLISHED, Input.UPDATE_MSG_ERR] = "message_error"
    t[State.ESTABLISHED, Input.ROUTE_REFRESH_MSG] = "route_refresh_received"
    return t


TRANSITIONS: dict[tuple[State, Input], str] = _table()


def collision_keeps_existing(
    local_id: IPv4Address, remote_id: IPv4Address, existing_is_outgoing: bool
) -> bool:
    """RFC 4271 §6.8: which of two connections between the same pair of speakers survives.

    The connection initiated by the speaker with the higher BGP Identifier is kept. Returns True
    when the existing connection is kept (and the new one must be closed with Cease/Connection
    Collision Resolution), False when the existing one must be closed instead.
    The identifiers are compared as 4-octet unsigned integers (RFC 6286 §2.3).
    """
    local_wins = int(local_id) > int(remote_id)
    # Keep the connection that was initiated by the winner.
    return existing_is_outgoing == local_wins
