"""The agent's BGP peers and their BFD links: :class:`PeerSessions`.

One :class:`~bgplb.io.bgp.BgpPeer` per ``[[peers]]``, each independent, every one carrying every
announced VIP (the Adj-RIB-Out of each session, RFC 4271 §3.2, is the same set). A peer with
``bfd = {...}`` holds a :class:`~bgplb.io.bgp_bfd.BfdLink` from the moment it is configured; an
Up -> Down transition stops its BGP session at once (Cease / BFD Down, RFC 9384) and starts it
again after ``BFD_RESTART_DELAY`` (RFC 5882; see docs/bfd.md). A reload that changes only a
peer's ``bfd`` re-requests BFD and leaves the BGP session alone (RFC 5880 §6.5, RFC 5882 §3.2).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable

from bgplb.agent import peers as bgp
from bgplb.agent.metrics import AgentMetrics
from bgplb.agent.runtime import Clock, CurrentConfig
from bgplb.agent.status import HeldBack, PeerStatus
from bgplb.bgp.attributes import PathAttributes
from bgplb.bgp.errors import CeaseSubcode
from bgplb.bgp.fsm import State as BgpState
from bgplb.bgp.prefix import Prefix
from bgplb.bgp.session import Event, Session, SessionDown, SessionEstablished
from bgplb.config import PeerConfig
from bgplb.io.bfd import BfdService
from bgplb.io.bgp import BgpPeer, EventHandler
from bgplb.io.bgp_bfd import BfdLink, diag_text, tear_down

log = logging.getLogger("bgplb.agent")

#: After BFD tore a session down, start it again this much later (a short Idle hold, §8.1.1).
BFD_RESTART_DELAY = 1.0

PeerFactory = Callable[[Session, PeerConfig, EventHandler], BgpPeer]


def tcp_peer(session: Session, peer_cfg: PeerConfig, on_event: EventHandler) -> BgpPeer:
    """A peer over TCP as configured (the default :data:`PeerFactory`)."""
    return BgpPeer(
        session,
        bgp.transport(peer_cfg),
        on_event,
        name=str(peer_cfg.address),
        next_hops=bgp.next_hops,
    )


class PeerSessions:
    """Adding, removing and restarting BGP peers; requesting and releasing their BFD links; the
    announcements sent to all of them (the :class:`~bgplb.agent.steps.Routes` of the agent).

    ``router_id`` and ``restarting`` (Graceful Restart, RFC 4724 §4.1) are set at start, before
    the first peer is added."""

    def __init__(
        self,
        config: CurrentConfig,
        metrics: AgentMetrics,
        clock: Clock,
        *,
        peer_factory: PeerFactory = tcp_peer,
        bfd_factory: Callable[[], BfdService] = BfdService,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.clock = clock
        self.peer_factory = peer_factory
        self.bfd_factory = bfd_factory
        self.router_id: ipaddress.IPv4Address | None = None
        self.restarting = False
        self.peers: dict[str, BgpPeer] = {}
        self.peer_configs: dict[str, PeerConfig] = {}
        self.announced: dict[Prefix, PathAttributes] = {}
        self.bfd: BfdService | None = None  # created when the first peer asks for BFD
        self.bfd_links: dict[str, BfdLink] = {}

    # -- Routes -------------------------------------------------------------------------------

    def announce(self, prefix: Prefix, attrs: PathAttributes) -> None:
        self.announced[prefix] = attrs
        for peer in self.peers.values():
            peer.session.announce(prefix, attrs)

    def withdraw(self, prefix: Prefix) -> None:
        self.announced.pop(prefix, None)
        for peer in self.peers.values():
            peer.session.withdraw(prefix)

    def kick(self) -> None:
        for peer in self.peers.values():
            peer.kick()

    async def flushed(self, timeout: float) -> bool:
        return await bgp.flushed(list(self.peers.values()), timeout=timeout)

    # -- peers --------------------------------------------------------------------------------

    def add(self, peer_cfg: PeerConfig, start: bool = True) -> BgpPeer:
        if self.router_id is None:
            raise RuntimeError("router_id must be set before the first peer is added")
        key = str(peer_cfg.address)
        config = bgp.session_config(
            self.config.value.bgp, peer_cfg, self.router_id, self.restarting
        )
        session = Session(config)
        for prefix, attrs in self.announced.items():
            session.announce(prefix, attrs)
        peer = self.peer_factory(session, peer_cfg, self._on_peer_event)
        self.peers[key] = peer
        self.peer_configs[key] = peer_cfg
        self.metrics.peer_up.labels(key).set(0)
        if peer_cfg.bfd is not None:
            self._request_bfd(key, peer_cfg)
        if start:
            peer.start()
        return peer

    def start_all(self) -> None:
        for peer in self.peers.values():
            peer.start()

    async def remove(self, key: str, message: str) -> None:
        peer = self.peers.pop(key)
        self.peer_configs.pop(key, None)
        await peer.stop(message, CeaseSubcode.PEER_DECONFIGURED)
        link = self.bfd_links.pop(key, None)
        if link is not None:
            link.release()
        self.metrics.peer_up.remove(key)

    async def stop_all(self, message: str) -> None:
        """Cease / Administrative Shutdown with ``message`` to every peer, then close BFD."""
        await asyncio.gather(
            *(p.stop(message) for p in self.peers.values()), return_exceptions=True
        )
        self.close_bfd()

    def close_silently(self) -> None:
        """Close every connection without a NOTIFICATION (Graceful Restart helpers keep our
        routes), and BFD with AdminDown, not silence: the routers must not see a failure
        (RFC 5882 §3.2), or they would drop our routes at once."""
        for peer in self.peers.values():
            peer.close_silently()
        self.close_bfd()

    def close_bfd(self) -> None:
        self.bfd_links.clear()
        if self.bfd is not None:
            self.bfd.close()

    # -- BFD ----------------------------------------------------------------------------------

    def _request_bfd(self, key: str, peer_cfg: PeerConfig) -> None:
        bfd = peer_cfg.bfd
        if bfd is None:
            return
        try:
            if self.bfd is None:
                self.bfd = self.bfd_factory()
            self.bfd_links[key] = BfdLink(
                self.bfd,
                key,
                local=str(peer_cfg.local_address) if peer_cfg.local_address else None,
                multihop=(peer_cfg.multihop or 1) > 1,
                interval_ms=bfd.interval_ms,
                multiplier=bfd.multiplier,
                min_ttl=bfd.min_ttl,
                on_down=lambda diag: self._on_bfd_down(key, diag),
            )
        except (OSError, ValueError) as exc:  # e.g. port 3784 taken by another BFD daemon
            log.error("peer %s: BFD not started: %s (BGP runs without it)", key, exc)

    def rerequest_bfd(self, key: str, peer_cfg: PeerConfig) -> None:
        """Reload changed only the peer's `bfd`: the new request is made before the old one is
        released, so a shared BFD session is not interrupted (its timers change with a Poll
        Sequence, RFC 5880 §6.5) and the BGP session is not touched. Without `bfd` any more, the
        release sends AdminDown: the router does not take it as a failure (RFC 5882 §3.2)."""
        old = self.bfd_links.pop(key, None)
        self.peer_configs[key] = peer_cfg
        log.info("peer %s: BFD settings changed to %s (BGP session kept)", key, peer_cfg.bfd)
        self._request_bfd(key, peer_cfg)
        if old is not None:
            if (link := self.bfd_links.get(key)) is not None:  # keep the failure history
                link.downs, link.last_down_diag = old.downs, old.last_down_diag
                link.last_down_at = old.last_down_at
            old.release()

    def _on_bfd_down(self, key: str, diag: int) -> None:
        peer = self.peers.get(key)
        if peer is None or not tear_down(peer):
            return
        log.warning("peer %s: BFD down (%s): BGP session closed", key, diag_text(diag))
        self.metrics.bfd_teardowns.labels(key).inc()
        self.clock.call_at(self.clock.now() + BFD_RESTART_DELAY, lambda: self._restart(key, peer))

    def _restart(self, key: str, peer: BgpPeer) -> None:
        if self.peers.get(key) is peer and peer.session.state is BgpState.IDLE:
            peer.start()

    def _on_peer_event(self, peer: BgpPeer, event: Event) -> None:
        if isinstance(event, SessionEstablished):
            self.metrics.peer_up.labels(peer.name).set(1)
        elif isinstance(event, SessionDown):
            self.metrics.peer_up.labels(peer.name).set(0)
            if event.was_established:
                self.metrics.session_flaps.labels(peer.name).inc()

    # -- status -------------------------------------------------------------------------------

    def statuses(self) -> list[PeerStatus]:
        now = self.clock.now()
        out = []
        for key, peer in self.peers.items():
            session = peer.session
            cfg = self.peer_configs.get(key)
            established = session.established_at
            link = self.bfd_links.get(key)
            out.append(
                PeerStatus(
                    name=peer.name,
                    address=str(peer.transport.remote),
                    asn=cfg.asn if cfg else session.config.peer_asn,
                    state=session.state.value,
                    uptime=(now - established) if established is not None else None,
                    local_address=str(peer.local_address) if peer.local_address else None,
                    routes_sent=len(session.rib_out.sent),
                    updates_sent=session.updates_sent,
                    last_error=session.last_error,
                    bfd=link.status() if link is not None else None,
                    held_back=tuple(
                        HeldBack(str(prefix), why)
                        for prefix, why in sorted(
                            session.held_back.items(), key=lambda i: str(i[0])
                        )
                    ),
                )
            )
        return out

    def bfd_rows(self) -> list[tuple[str, dict[str, object]]]:
        return [(k, link.status()) for k, link in list(self.bfd_links.items())]
