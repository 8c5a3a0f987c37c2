"""What two BGP speakers agreed in their OPEN messages; the codec's per-session options.

RFC 5492 §3 (capabilities), RFC 4760 §8 (families; no Multiprotocol capability means IPv4
unicast only), RFC 6793 (4-octet AS), RFC 8654 (extended messages), RFC 2918 / RFC 7313
(route refresh), RFC 4724 (graceful restart), RFC 4271 §4.2 (hold time = the smaller one).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Protocol

from .capabilities import (
    Capability,
    CapabilityCode,
    EnhancedRouteRefresh,
    ExtendedMessage,
    FourOctetAS,
    GracefulRestart,
    RouteRefreshCapability,
)
from .families import IPV4_UNICAST, Family


class Open(Protocol):
    """What :func:`negotiate` reads of an OPEN (:class:`bgplb.bgp.messages.Open`); a protocol,
    so that this module does not import the message codec, which imports it."""

    @property
    def asn(self) -> int: ...
    @property
    def hold_time(self) -> int: ...
    @property
    def router_id(self) -> ipaddress.IPv4Address: ...
    @property
    def capabilities(self) -> tuple[Capability, ...]: ...
    @property
    def families(self) -> frozenset[Family]: ...
    def capability(self, code: int) -> Capability | None: ...


MAX_MESSAGE_SIZE = 4096
MAX_EXTENDED_MESSAGE_SIZE = 65535


@dataclass(frozen=True, slots=True)
class Negotiated:
    """Session options the codec needs. The defaults are the safe wire defaults (no 4-octet
    AS, 4096-octet messages, IPv4 unicast only)."""

    four_octet_as: bool = False
    extended_message: bool = False
    families: frozenset[Family] = frozenset({IPV4_UNICAST})
    route_refresh: bool = False
    enhanced_route_refresh: bool = False
    peer_graceful_restart: GracefulRestart | None = None
    local_graceful_restart: GracefulRestart | None = None
    hold_time: int = 0
    keepalive_time: int = 0
    peer_asn: int = 0
    peer_router_id: ipaddress.IPv4Address | None = None
    ebgp: bool = True

    @property
    def max_message_size(self) -> int:
        return MAX_EXTENDED_MESSAGE_SIZE if self.extended_message else MAX_MESSAGE_SIZE


def _has(open_: Open, kind: type) -> bool:
    return any(isinstance(c, kind) for c in open_.capabilities)


def negotiate(local: Open, remote: Open, local_asn: int) -> Negotiated:
    """Combine our OPEN and the peer's OPEN into the session options."""
    hold = 0 if 0 in (local.hold_time, remote.hold_time) else min(local.hold_time, remote.hold_time)
    peer_gr = remote.capability(CapabilityCode.GRACEFUL_RESTART)
    local_gr = local.capability(CapabilityCode.GRACEFUL_RESTART)
    remote_rr = _has(remote, RouteRefreshCapability) or (
        remote.capability(CapabilityCode.ROUTE_REFRESH_CISCO) is not None
    )
    return Negotiated(
        four_octet_as=_has(local, FourOctetAS) and _has(remote, FourOctetAS),
        extended_message=_has(local, ExtendedMessage) and _has(remote, ExtendedMessage),
        families=local.families & remote.families,
        route_refresh=_has(local, RouteRefreshCapability) and remote_rr,
        enhanced_route_refresh=(
            _has(local, EnhancedRouteRefresh) and _has(remote, EnhancedRouteRefresh)
        ),
        peer_graceful_restart=peer_gr if isinstance(peer_gr, GracefulRestart) else None,
        local_graceful_restart=local_gr if isinstance(local_gr, GracefulRestart) else None,
        hold_time=hold,
        keepalive_time=hold // 3,
        peer_asn=remote.asn,
        peer_router_id=remote.router_id,
        ebgp=remote.asn != local_asn,
    )
