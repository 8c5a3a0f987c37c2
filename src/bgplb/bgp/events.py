"""Events a BGP `Session` reports (past tense), read with `Session.next_event()`.

The transport acts on `ConnectRequested` and `CloseRequested`; the owner (agent, router) on the
rest. See session.py for when each is produced.
"""

from __future__ import annotations

from dataclasses import dataclass

from bgplb.bgp.families import Family
from bgplb.bgp.fsm import State
from bgplb.bgp.messages import Notification, Update
from bgplb.bgp.negotiated import Negotiated
from bgplb.bgp.prefix import Prefix


@dataclass(frozen=True, slots=True)
class StateChanged:
    old: State
    new: State


@dataclass(frozen=True, slots=True)
class ConnectRequested:
    """The transport must open a TCP connection to the peer now (dropping any pending one)."""


@dataclass(frozen=True, slots=True)
class CloseRequested:
    """The transport must write what `data_to_send` still returns, then close the connection."""


@dataclass(frozen=True, slots=True)
class SessionEstablished:
    negotiated: Negotiated


@dataclass(frozen=True, slots=True)
class SessionDown:
    """The session left OpenSent/OpenConfirm/Established (or a start was cancelled).

    `notification` is the NOTIFICATION sent (`local=True`) or received (`local=False`), if any.
    `hold_expired` and `connection_lost` tell how the peer went away: a router acting as a
    Graceful Restart helper keeps routes only when the transport closed (the peer's host is
    alive), not on hold-timer expiry (RFC 4724 §4.2; see also RFC 8538).
    """

    reason: str
    was_established: bool
    notification: Notification | None = None
    local: bool = True
    hold_expired: bool = False
    connection_lost: bool = False


@dataclass(frozen=True, slots=True)
class RoutesReceived:
    update: Update

    @property
    def announced(self) -> tuple[Prefix, ...]:
        return self.update.announced

    @property
    def withdrawn(self) -> tuple[Prefix, ...]:
        return self.update.all_withdrawn


@dataclass(frozen=True, slots=True)
class RoutesHeldBack:
    """Prefixes that cannot be sent to this peer, with the reason (empty: none any more)."""

    held: tuple[tuple[Prefix, str], ...]


@dataclass(frozen=True, slots=True)
class EndOfRibReceived:
    family: Family


@dataclass(frozen=True, slots=True)
class RouteRefreshReceived:
    afi: int
    safi: int


@dataclass(frozen=True, slots=True)
class InternalSessionError(SessionDown):
    """The session failed on an unexpected exception (a bug, not the peer's fault).

    Cease/0 was sent if a connection existed; `reason` starts with "internal error";
    `traceback` is the formatted exception for the owner's log. `connection_lost` is False:
    the peer's routes must not be kept as Graceful Restart stale routes.
    """

    traceback: str = ""


Event = (
    StateChanged
    | ConnectRequested
    | CloseRequested
    | SessionEstablished
    | SessionDown
    | RoutesReceived
    | EndOfRibReceived
    | RouteRefreshReceived
    | RoutesHeldBack
)
