"""The BFD links of the agent's BGP peers: :class:`BfdLinks`.

A peer with ``bfd = {...}`` holds a :class:`~bgplb.io.bgp_bfd.BfdLink` from the moment it is
configured; an Up -> Down transition stops its BGP session at once (Cease / BFD Down, RFC 9384)
and starts it again after ``BFD_RESTART_DELAY`` (RFC 5882; see docs/bfd.md). A change of only
the ``bfd`` settings re-requests BFD before releasing the old request, so a shared BFD session
is not interrupted (its timers change with a Poll Sequence, RFC 5880 §6.5). Releasing sends
AdminDown: the router does not take it as a failure (RFC 5882 §3.2).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from bgplb.agent.metrics import AgentMetrics
from bgplb.agent.runtime import Clock
from bgplb.bgp.fsm import State as BgpState
from bgplb.config import PeerConfig
from bgplb.io.bfd import BfdService
from bgplb.io.bgp import BgpPeer
from bgplb.io.bgp_bfd import BfdLink, diag_text, tear_down

log = logging.getLogger("bgplb.agent")

#: After BFD tore a session down, start it again this much later (a short Idle hold, §8.1.1).
BFD_RESTART_DELAY = 1.0


class BfdLinks:
    """One BFD link per peer that asks for it; ``peer(key)`` is the peer's BGP session now."""

    def __init__(
        self,
        metrics: AgentMetrics,
        clock: Clock,
        peer: Callable[[str], BgpPeer | None],
        factory: Callable[[], BfdService] = BfdService,
    ) -> None:
        self.metrics = metrics
        self.clock = clock
        self.peer = peer
        self.factory = factory
        self.service: BfdService | None = None  # created when the first peer asks for BFD
        self.links: dict[str, BfdLink] = {}

    def request(self, key: str, peer_cfg: PeerConfig) -> None:
        bfd = peer_cfg.bfd
        if bfd is None:
            return
        try:
            if self.service is None:
                self.service = self.factory()
            self.links[key] = BfdLink(
                self.service,
                key,
                local=str(peer_cfg.local_address) if peer_cfg.local_address else None,
                multihop=(peer_cfg.multihop or 1) > 1,
                interval_ms=bfd.interval_ms,
                multiplier=bfd.multiplier,
                min_ttl=bfd.min_ttl,
                on_down=lambda diag: self._on_down(key, diag),
            )
        except (OSError, ValueError) as exc:  # e.g. port 3784 taken by another BFD daemon
            log.error("peer %s: BFD not started: %s (BGP runs without it)", key, exc)

    def rerequest(self, key: str, peer_cfg: PeerConfig) -> None:
        """New settings (or none): the new request first, then the old one is released; the
        failure history is kept."""
        old = self.links.pop(key, None)
        log.info("peer %s: BFD settings changed to %s (BGP session kept)", key, peer_cfg.bfd)
        self.request(key, peer_cfg)
        if old is not None:
            if (link := self.links.get(key)) is not None:
                link.downs, link.last_down_diag = old.downs, old.last_down_diag
                link.last_down_at = old.last_down_at
            old.release()

    def release(self, key: str) -> None:
        link = self.links.pop(key, None)
        if link is not None:
            link.release()

    def close(self) -> None:
        """Every session AdminDown, the BFD service closed."""
        self.links.clear()
        if self.service is not None:
            self.service.close()

    def status(self, key: str) -> dict[str, object] | None:
        link = self.links.get(key)
        return link.status() if link is not None else None

    def rows(self) -> list[tuple[str, dict[str, object]]]:
        """(peer, status) of every link, for the metrics."""
        return [(k, link.status()) for k, link in list(self.links.items())]

    def _on_down(self, key: str, diag: int) -> None:
        peer = self.peer(key)
        if peer is None or not tear_down(peer):
            return
        log.warning("peer %s: BFD down (%s): BGP session closed", key, diag_text(diag))
        self.metrics.bfd_teardowns.labels(key).inc()
        self.clock.call_at(self.clock.now() + BFD_RESTART_DELAY, lambda: self._restart(key, peer))

    def _restart(self, key: str, peer: BgpPeer) -> None:
        if self.peer(key) is peer and peer.session.state is BgpState.IDLE:
            peer.start()
