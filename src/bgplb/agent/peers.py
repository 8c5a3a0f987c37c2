"""The agent's BGP side: sessions built from the config, next hops, path attributes, and
"the withdrawal is on the wire" (every established peer's write buffer flushed).

RFC 4271 §5.1.3 (NEXT_HOP = our address on the session), RFC 4760 §3 (IPv6 over MP-BGP, next
hop global [+ link-local], RFC 2545 §3), RFC 1997 / RFC 8092 (communities, large communities),
RFC 8326 (GRACEFUL_SHUTDOWN), RFC 4724 (Graceful Restart capability).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import struct
from collections.abc import Iterable

from bgplb.agent.state import ServiceSpec
from bgplb.bgp.attributes import (
    GRACEFUL_SHUTDOWN,
    AsPathSegment,
    AsPathSegmentType,
    LargeCommunity,
    Origin,
    PathAttributes,
)
from bgplb.bgp.families import AFI
from bgplb.bgp.fsm import State
from bgplb.bgp.prefix import Prefix
from bgplb.bgp.session import SessionConfig
from bgplb.config import AgentBgp, PeerConfig
from bgplb.io.bgp import BgpPeer, Transport

log = logging.getLogger("bgplb.agent")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPv6 = ipaddress.IPv6Address


def attributes(spec: ServiceSpec, local_asn: int, graceful_shutdown: bool) -> PathAttributes:
    """The path attributes of a service's VIPs (the session adds our AS once more on eBGP and
    the next hop)."""
    communities = tuple(spec.communities)
    if graceful_shutdown and GRACEFUL_SHUTDOWN not in communities:
        communities += (GRACEFUL_SHUTDOWN,)
    as_path = (
        (AsPathSegment(AsPathSegmentType.AS_SEQUENCE, (local_asn,) * spec.as_path_prepend),)
        if spec.as_path_prepend
        else ()
    )
    return PathAttributes(
        origin=Origin.IGP,
        as_path=as_path,
        med=spec.med,
        communities=communities,
        large_communities=tuple(LargeCommunity(*c) for c in spec.large_communities),
    )


def session_config(
    bgp: AgentBgp, peer: PeerConfig, router_id: ipaddress.IPv4Address, restarting: bool
) -> SessionConfig:
    return SessionConfig(
        local_asn=bgp.asn,
        router_id=router_id,
        peer_asn=peer.asn,
        hold_time=peer.hold_time if peer.hold_time is not None else bgp.hold_time,
        passive=peer.passive,
        graceful_restart_time=bgp.graceful_restart_time if bgp.graceful_restart else None,
        graceful_restart_restarting=restarting and bgp.graceful_restart,
        connect_retry_time=5.0,  # longer than the connect timeout, so a failure is seen
        connect_retry_max=30.0,
        idle_hold_time=1.0,
        idle_hold_max=30.0,
    )


def transport(peer: PeerConfig) -> Transport:
    return Transport(
        remote=peer.address,
        port=peer.port,
        local=peer.local_address,
        password=peer.password,
        ttl=peer.multihop,
        ttl_security=peer.ttl_security,
        connect_timeout=3.0,
    )


def _ipv6_addresses() -> list[tuple[IPv6, str]]:
    """(address, interface name) of every IPv6 address, from /proc/net/if_inet6 (no netlink:
    this runs inside the event loop, where pyroute2's sync API cannot)."""
    out = []
    with open("/proc/net/if_inet6") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 6:
                out.append((ipaddress.IPv6Address(int(fields[0], 16)), fields[5]))
    return out


def _ipv4_address(ifname: str) -> ipaddress.IPv4Address | None:
    """The primary IPv4 address of an interface (SIOCGIFADDR), or None."""
    import fcntl

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            data = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", ifname.encode()[:15]))
        except OSError:
            return None
    return ipaddress.IPv4Address(data[20:24])


def _interface_of(local: IPAddress) -> str | None:
    if local.version == 6:
        return next((name for a, name in _ipv6_addresses() if a == local), None)
    for _, name in socket.if_nameindex():
        if _ipv4_address(name) == local:
            return name
    return None


def next_hops(sock: socket.socket) -> dict[AFI, tuple[IPAddress, ...]]:
    """Next hops for both families on this connection: our address on it for its own family;
    for the other family, our address of that family on the same interface (IPv6: global, then
    link-local). A family without an address gets no next hop: the session holds that family's
    VIPs back, logs them and shows them in `bgplb status` (``held_back``)."""
    host = sock.getsockname()[0].split("%")[0]
    local = ipaddress.ip_address(host)
    if isinstance(local, ipaddress.IPv6Address) and local.ipv4_mapped:
        local = local.ipv4_mapped
    out: dict[AFI, tuple[IPAddress, ...]] = {}
    try:
        ifname = _interface_of(local)
        v6 = [a for a, name in _ipv6_addresses() if name == ifname]
        v4_found = _ipv4_address(ifname) if ifname and local.version == 6 else None
    except OSError as exc:  # no /proc: only the session's own family
        log.debug("cannot list interface addresses: %s", exc)
        v6, v4_found = [], None
    v4 = [v4_found] if v4_found else []
    v6_global = [a for a in v6 if not a.is_link_local]
    v6_ll = [a for a in v6 if a.is_link_local]
    if local.version == 4:
        out[AFI.IPV4] = (local,)
        if v6_global:
            out[AFI.IPV6] = (v6_global[0], *v6_ll[:1])
        # no global IPv6 on that link: no IPv6 next hop; the session holds the IPv6 VIPs back
        # and reports them (an IPv4-mapped next hop would be unusable for the router)
    else:
        out[AFI.IPV6] = (local, *v6_ll[:1]) if not local.is_link_local else (local,)
        if v4:
            out[AFI.IPV4] = (v4[0],)
    return out


def default_router_id() -> ipaddress.IPv4Address | None:
    """The host's first global IPv4 address (lowest interface index), else None."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        found = []
        for msg in ipr.get_addr(family=socket.AF_INET):
            address = msg.get_attr("IFA_ADDRESS") or msg.get_attr("IFA_LOCAL")
            if address and not ipaddress.ip_address(address).is_loopback:
                found.append((msg["index"], ipaddress.IPv4Address(address)))
    return min(found)[1] if found else None


def write_buffer_size(peer: BgpPeer) -> int:
    """Bytes of ``peer`` not yet handed to the kernel (its session's pending UPDATEs count 1)."""
    pending = 1 if peer.session.rib_out.has_pending() else 0
    return peer.write_buffer_size() + pending


async def flushed(peers: Iterable[BgpPeer], timeout: float = 2.0) -> bool:
    """Wait until every Established peer wrote everything out (bounded). A peer that is not
    Established has nothing on the wire to wait for. True if all flushed in time."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    pending = list(peers)
    while True:
        pending = [
            p for p in pending if p.session.state is State.ESTABLISHED and write_buffer_size(p) > 0
        ]
        if not pending:
            return True
        if loop.time() >= deadline:
            log.warning(
                "withdrawal not flushed to %s after %.1fs; going on",
                ", ".join(p.name for p in pending),
                timeout,
            )
            return False
        for p in pending:
            p.kick()
        await asyncio.sleep(0.005)


def prefix_of(vip: ipaddress.IPv4Network | ipaddress.IPv6Network) -> Prefix:
    return Prefix.from_network(vip)
