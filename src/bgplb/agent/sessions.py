"""The agent's BGP peers: :class:`PeerSessions`.

One :class:`~bgplb.io.bgp.BgpPeer` per ``[[peers]]``, each independent, every one carrying every
announced VIP (the Adj-RIB-Out of each session, RFC 4271 §3.2, is the same set), and its BFD
link (:class:`~bgplb.agent.bfd_links.BfdLinks`). A reload that changes only a peer's ``bfd``
re-requests BFD and leaves the BGP session alone (RFC 5880 §6.5, RFC 5882 §3.2).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable

from bgplb.agent.bfd_links import BfdLinks
from bgplb.agent.metrics import AgentMetrics
from bgplb.agent.peers import flushed, next_hops, session_config, transport
from bgplb.agent.runtime import Clock, CurrentConfig
from bgplb.agent.status import HeldBack, PeerStatus
from bgplb.bgp.attributes import PathAttributes
from bgplb.bgp.errors import CeaseSubcode
from bgplb.bgp.prefix import Prefix
from bgplb.bgp.session import Event, Session, SessionDown, SessionEstablished
from bgplb.config import PeerConfig
from bgplb.io.bfd import BfdService
from bgplb.io.bgp import BgpPeer, EventHandler

log = logging.getLogger("bgplb.agent")

PeerFactory = Callable[[Session, PeerConfig, EventHandler], BgpPeer]


def tcp_peer(session: Session, peer_cfg: PeerConfig, on_event: EventHandler) -> BgpPeer:
    """A peer over TCP as configured (the default :data:`PeerFactory`)."""
    return BgpPeer(
        session,
        transport(peer_cfg),
        on_event,
        name=str(peer_cfg.address),
        next_hops=next_hops,
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
        bfd_factory: Callable[[], BfdService] | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.clock = clock
        self.peer_factory = peer_factory
        self.router_id: ipaddress.IPv4Address | None = None
        self.restarting = False
        self.peers: dict[str, BgpPeer] = {}
        self.peer_configs: dict[str, PeerConfig] = {}
        self.announced: dict[Prefix, PathAttributes] = {}
        if bfd_factory is None:  # [bfd] realtime_priority is read when BFD starts

            def bfd_factory() -> BfdService:
                return BfdService(realtime_priority=config.value.bfd.realtime_priority)

        self.bfd = BfdLinks(metrics, clock, self.peers.get, bfd_factory)

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
        return await flushed(list(self.peers.values()), timeout=timeout)

    # -- peers --------------------------------------------------------------------------------

    def add(self, peer_cfg: PeerConfig, start: bool = True) -> BgpPeer:
        if self.router_id is None:
            raise RuntimeError("router_id must be set before the first peer is added")
        key = str(peer_cfg.address)
        config = session_config(self.config.value.bgp, peer_cfg, self.router_id, self.restarting)
        session = Session(config)
        for prefix, attrs in self.announced.items():
            session.announce(prefix, attrs)
        peer = self.peer_factory(session, peer_cfg, self._on_peer_event)
        self.peers[key] = peer
        self.peer_configs[key] = peer_cfg
        self.metrics.peer_up.labels(key).set(0)
        # counters get their series at 0 now: rate()/increase() then see the first event
        self.metrics.session_flaps.labels(key)
        self.metrics.bfd_teardowns.labels(key)
        self.bfd.request(key, peer_cfg)
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
        self.bfd.release(key)
        self.metrics.peer_up.remove(key)

    async def stop_all(self, message: str) -> None:
        """Cease / Administrative Shutdown with ``message`` to every peer, then close BFD."""
        await asyncio.gather(
            *(p.stop(message) for p in self.peers.values()), return_exceptions=True
        )
        self.bfd.close()

    def close_silently(self) -> None:
        """Close every connection without a NOTIFICATION (Graceful Restart helpers keep our
        routes), and BFD with AdminDown, not silence: the routers must not see a failure
        (RFC 5882 §3.2), or they would drop our routes at once."""
        for peer in self.peers.values():
            peer.close_silently()
        self.bfd.close()

    def rerequest_bfd(self, key: str, peer_cfg: PeerConfig) -> None:
        """A reload changed only the peer's `bfd`: the BGP session is not touched."""
        self.peer_configs[key] = peer_cfg
        self.bfd.rerequest(key, peer_cfg)

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
                    bfd=self.bfd.status(key),
                    held_back=tuple(
                        HeldBack(str(prefix), why)
                        for prefix, why in sorted(
                            session.held_back.items(), key=lambda i: str(i[0])
                        )
                    ),
                )
            )
        return out
