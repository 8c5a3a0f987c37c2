"""The router's BFD (RFC 5880/5881/5883 via :mod:`bgplb.io.bfd`, rules of RFC 5882 §4.3).

A ``[[peer_ranges]]`` entry with ``bfd = {interval_ms, multiplier}`` makes every neighbor
accepted from that range request a BFD session to its address (from our address on the
connection) **once its BGP session is Established** (:func:`established`), not when the
connection is accepted: BFD protects an Established session (RFC 5882 §4.3), and a BFD session
started while BGP is still in OpenSent/OpenConfirm races the neighbor's own BFD set-up (FRR
only creates its BFD session when its BGP session comes up, and flaps it once when ours is
already talking to it). The request is released when that BGP session ends. Single hop
(RFC 5881) when the neighbor is inside one of our connected subnets, multihop (RFC 5883)
otherwise.

The BFD service runs its transmit and detection timers in a thread of its own, so a busy event
loop (a large RIB update, a FIB apply) does not delay BFD packets; its notifications come back
to the loop (:mod:`bgplb.io.bfd_timing`).

One :class:`RouterBfd` per daemon: it reads the neighbors (``peers``) and the connected subnets
it is handed, reports what its callbacks raise to ``on_error`` (the supervisor), and makes the
:class:`~bgplb.io.bfd.BfdService` on first need.

BFD Up -> Down (not AdminDown from the neighbor): the session is stopped with Cease / BFD Down
and the connection aborted (:func:`bgplb.io.bgp_bfd.tear_down`); the RIB then drops the
neighbor's paths at once, like on hold-timer expiry — never kept stale for Graceful Restart
(the host is presumed dead; RFC 4724 §4.2 keeps routes only when the TCP session merely
closed). The nexthop leaves every group in the next FIB apply. An exception in that callback is
an internal error of the router (logged, counted, and the peer reset all the same).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from bgplb.bfd import Diag
from bgplb.bgp.fsm import State as BgpState
from bgplb.config import RouterConfig
from bgplb.io.bfd import BfdService
from bgplb.io.bgp import IPAddress
from bgplb.io.bgp_bfd import BfdLink, diag_text, tear_down
from bgplb.router.entry import PeerEntry
from bgplb.router.rib import Connected

__all__ = ["RouterBfd", "detach", "make_service"]

log = logging.getLogger("bgplb.router")

#: What the router does with an exception of a BFD callback: (task, exception, entry).
OnError = Callable[[str, BaseException, PeerEntry], None]


def _local_of(transport: Any) -> str | None:
    try:
        host = transport.get_extra_info("sockname")[0]
    except (TypeError, IndexError, AttributeError):
        return None
    ip = ipaddress.ip_address(str(host).split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return str(ip)


def make_service(config: RouterConfig) -> BfdService:
    """The router's BFD service: timers in their own thread (bgplb.io.bfd_timing), SCHED_FIFO
    when ``[bfd] realtime_priority`` asks for it (off by default)."""
    return BfdService(realtime_priority=config.bfd.realtime_priority)


def detach(entry: PeerEntry) -> None:
    """Release the neighbor's BFD request (its BGP session is over)."""
    if entry.bfd is not None:
        entry.bfd.release()


class RouterBfd:
    """BFD for the router's neighbors: requests, releases, reload, and BFD Down.

    `peers`: the daemon's neighbors (read, never changed); `connected`: the current connected
    subnets (single hop or multihop); `on_error`: the supervisor's handler of internal errors;
    `realtime_priority`: ``[bfd] realtime_priority`` of the service made on first need."""

    def __init__(
        self,
        peers: Mapping[IPAddress, PeerEntry],
        connected: Callable[[], Sequence[Connected]],
        on_error: OnError,
        realtime_priority: int | None = None,
    ) -> None:
        self.peers = peers
        self.connected = connected
        self.on_error = on_error
        self.realtime_priority = realtime_priority
        self.service: BfdService | None = None

    def attach(self, entry: PeerEntry, transport: Any, replaces: PeerEntry | None = None) -> None:
        """A connection was just accepted: no BFD yet (see :meth:`established`). The BFD request
        of the connection it ``replaces`` is released: that session is over, and the new one
        asks again when it is Established (the neighbor sees AdminDown in between, not a
        failure: RFC 5882 §3.2)."""
        if replaces is not None:
            detach(replaces)

    def established(self, entry: PeerEntry) -> None:
        """`entry`'s BGP session is Established: request BFD if its range asks for it."""
        if entry.bfd is not None or self.peers.get(entry.address) is not entry:
            return
        local = entry.peer.local_address
        self._attach(entry, None if local is None else str(local))

    def _attach(self, entry: PeerEntry, local: str | None) -> None:
        cfg = entry.range.config.bfd
        if cfg is None:
            return
        if self.service is None:
            self.service = BfdService(realtime_priority=self.realtime_priority)
        address = entry.address
        single_hop = any(address in c.network for c in self.connected())
        try:
            entry.bfd = BfdLink(
                self.service,
                str(address),
                local=local,
                multihop=not single_hop,
                interval_ms=cfg.interval_ms,
                multiplier=cfg.multiplier,
                on_down=lambda diag: self._on_down(entry, diag),
                min_ttl=None if single_hop else cfg.min_ttl,
            )
        except (OSError, ValueError) as exc:  # e.g. port 3784 taken by another BFD daemon
            log.error("%s: BFD not started: %s (BGP runs without it)", address, exc)

    def reconfigure(self, entry: PeerEntry, transport: Any = None) -> None:
        """After a reload: follow the range's new ``bfd`` setting without touching BGP. The new
        request is made before the old one is released, so a shared session is not interrupted.
        A session not Established yet gets the new setting when it is."""
        if entry.peer.session.state is not BgpState.ESTABLISHED:
            return
        cfg = entry.range.config.bfd
        link = entry.bfd
        if (link is None and cfg is None) or (
            link is not None
            and cfg is not None
            and (link.interval_ms, link.multiplier) == (cfg.interval_ms, cfg.multiplier)
        ):
            return
        old = link
        entry.bfd = None
        if cfg is not None:
            if old is not None:
                local: object = old.handle.key.local
            else:
                local = entry.peer.local_address if transport is None else _local_of(transport)
            self._attach(entry, None if local is None else str(local))
        if old is not None:
            old.release()

    def close(self) -> None:
        """At exit: AdminDown to every BFD neighbor (not a failure for them, RFC 5882 §3.2)."""
        if self.service is not None:
            self.service.close()

    def _on_down(self, entry: PeerEntry, diag: Diag) -> None:
        try:
            self._tear_down(entry, diag)
        except Exception as exc:
            self.on_error("bfd", exc, entry)

    def _tear_down(self, entry: PeerEntry, diag: Diag) -> None:
        if self.peers.get(entry.address) is not entry:
            return  # an older connection of a neighbor that reconnected
        entry.bfd_down = True
        if tear_down(entry.peer):
            log.warning(
                "%s: BFD down (%s): BGP session closed, its paths removed",
                entry.address,
                diag_text(diag),
            )
