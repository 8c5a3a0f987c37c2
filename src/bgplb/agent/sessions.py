"""The agent's BGP peers and their BFD links (part of :class:`~bgplb.agent.daemon.AgentDaemon`).

One :class:`~bgplb.io.bgp.BgpPeer` per ``[[peers]]``, each independent. A peer with
``bfd = {...}`` holds a :class:`~bgplb.io.bgp_bfd.BfdLink` from the moment it is configured; an
Up -> Down transition stops its BGP session at once (Cease / BFD Down, RFC 9384) and starts it
again after ``BFD_RESTART_DELAY`` (RFC 5882; see docs/bfd.md). A reload that changes only a
peer's ``bfd`` re-requests BFD and leaves the BGP session alone (RFC 5880 §6.5, RFC 5882 §3.2).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging

from bgplb.agent import peers as bgp
from bgplb.agent.metrics import AgentMetrics
from bgplb.bgp.attributes import PathAttributes
from bgplb.bgp.errors import CeaseSubcode
from bgplb.bgp.fsm import State as BgpState
from bgplb.bgp.prefix import Prefix
from bgplb.bgp.session import Event, Session, SessionDown, SessionEstablished
from bgplb.config import AgentConfig, PeerConfig
from bgplb.io.bfd import BfdService
from bgplb.io.bgp import BgpPeer
from bgplb.io.bgp_bfd import BfdLink, diag_text, tear_down

log = logging.getLogger("bgplb.agent")

#: After BFD tore a session down, start it again this much later (a short Idle hold, §8.1.1).
BFD_RESTART_DELAY = 1.0


class PeerSessions:
    """Adding, removing and restarting BGP peers; requesting and releasing their BFD links."""

    config: AgentConfig
    router_id: ipaddress.IPv4Address | None
    restarting: bool
    announced: dict[Prefix, PathAttributes]
    peers: dict[str, BgpPeer]
    peer_configs: dict[str, PeerConfig]
    metrics: AgentMetrics
    bfd: BfdService | None
    bfd_links: dict[str, BfdLink]

    def _add_peer(self, peer_cfg: PeerConfig, start: bool = True) -> None:
        assert self.router_id is not None
        key = str(peer_cfg.address)
        session = Session(
            bgp.session_config(self.config.bgp, peer_cfg, self.router_id, self.restarting)
        )
        for prefix, attrs in self.announced.items():
            session.announce(prefix, attrs)
        peer = BgpPeer(
            session, bgp.transport(peer_cfg), self._on_peer_event, name=key, next_hops=bgp.next_hops
        )
        self.peers[key] = peer
        self.peer_configs[key] = peer_cfg
        self.metrics.peer_up.labels(key).set(0)
        if peer_cfg.bfd is not None:
            self._request_bfd(key, peer_cfg)
        if start:
            peer.start()

    def _request_bfd(self, key: str, peer_cfg: PeerConfig) -> None:
        assert peer_cfg.bfd is not None
        if self.bfd is None:
            self.bfd = BfdService()
        try:
            self.bfd_links[key] = BfdLink(
                self.bfd,
                key,
                local=str(peer_cfg.local_address) if peer_cfg.local_address else None,
                multihop=(peer_cfg.multihop or 1) > 1,
                interval_ms=peer_cfg.bfd.interval_ms,
                multiplier=peer_cfg.bfd.multiplier,
                min_ttl=peer_cfg.bfd.min_ttl,
                on_down=lambda diag: self._on_bfd_down(key, diag),
            )
        except (OSError, ValueError) as exc:  # e.g. port 3784 taken by another BFD daemon
            log.error("peer %s: BFD not started: %s (BGP runs without it)", key, exc)

    def _rerequest_bfd(self, key: str, peer_cfg: PeerConfig) -> None:
        """Reload changed only the peer's `bfd`: the new request is made before the old one is
        released, so a shared BFD session is not interrupted (its timers change with a Poll
        Sequence, RFC 5880 §6.5) and the BGP session is not touched. Without `bfd` any more, the
        release sends AdminDown: the router does not take it as a failure (RFC 5882 §3.2)."""
        old = self.bfd_links.pop(key, None)
        self.peer_configs[key] = peer_cfg
        log.info("peer %s: BFD settings changed to %s (BGP session kept)", key, peer_cfg.bfd)
        if peer_cfg.bfd is not None:
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
        asyncio.get_running_loop().call_later(BFD_RESTART_DELAY, self._restart_peer, key, peer)

    def _restart_peer(self, key: str, peer: BgpPeer) -> None:
        if self.peers.get(key) is peer and peer.session.state is BgpState.IDLE:
            peer.start()

    def _close_bfd(self) -> None:
        self.bfd_links.clear()
        if self.bfd is not None:
            self.bfd.close()

    async def _remove_peer(self, key: str, message: str) -> None:
        peer = self.peers.pop(key)
        self.peer_configs.pop(key, None)
        await peer.stop(message, CeaseSubcode.PEER_DECONFIGURED)
        link = self.bfd_links.pop(key, None)
        if link is not None:
            link.release()
        self.metrics.peer_up.remove(key)

    def _on_peer_event(self, peer: BgpPeer, event: Event) -> None:
        if isinstance(event, SessionEstablished):
            self.metrics.peer_up.labels(peer.name).set(1)
        elif isinstance(event, SessionDown):
            self.metrics.peer_up.labels(peer.name).set(0)
            if event.was_established:
                self.metrics.session_flaps.labels(peer.name).inc()
