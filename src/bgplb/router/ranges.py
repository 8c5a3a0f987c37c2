"""Peer ranges (dynamic neighbors) of the router: listening, accepting sessions, reload.

Part of :class:`~bgplb.router.daemon.Router`. A connection from inside a ``[[peer_ranges]]``
prefix (most specific range wins) gets a passive :class:`~bgplb.bgp.session.Session` of its own
(RFC 4271 §8.2.1 PassiveTcpEstablishment); a new connection from a known neighbor replaces its
session (treated as a closed transport, so Graceful Restart applies, RFC 4724 §4.2); a source
outside every range is refused. TCP MD5 passwords (RFC 2385) are set per range on every
listener. SIGHUP re-reads the ranges: sessions whose range changed are reset with Cease (RFC 4486
§4: Other Configuration Change, Peer De-configured), the others are untouched.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from bgplb.bgp.errors import CeaseSubcode
from bgplb.bgp.fsm import State
from bgplb.bgp.session import Event, Session, SessionConfig
from bgplb.config import PeerRange, RouterConfig, load_router_config
from bgplb.io.bgp import BgpListener, BgpPeer, IPAddress
from bgplb.router import bfd as router_bfd
from bgplb.router.policy import IPNetwork, PrefixList, match_range

if TYPE_CHECKING:
    from bgplb.router.daemon import Counters, Router

log = logging.getLogger("bgplb.router")

#: Restart time we advertise in our own Graceful Restart capability (we are a helper).
OUR_RESTART_TIME = 120


@dataclass(slots=True)
class RangeState:
    """One ``[[peer_ranges]]`` entry, compiled."""

    index: int
    config: PeerRange
    accept: PrefixList

    @property
    def network(self) -> IPNetwork:
        return self.config.prefix

    def key(self) -> tuple[Any, ...]:
        c = self.config
        return (str(c.prefix), c.asn, c.password, c.max_prefixes, str(self.accept), c.hold_time)


@dataclass(slots=True)
class PeerEntry:
    """A dynamic neighbor: the connection's peer and the range it belongs to."""

    address: IPAddress
    peer: BgpPeer
    range: RangeState
    accepted_at: float
    filtered: int = 0
    over_limit: bool = False
    updates: int = 0
    last_error: str | None = None
    bfd: Any = None  # bgplb.io.bgp_bfd.BfdLink when the range has `bfd` (router/bfd.py)
    bfd_down: bool = False  # BFD tore the session down: no Graceful Restart for its paths


def compile_ranges(config: RouterConfig) -> list[RangeState]:
    return [
        RangeState(i, r, PrefixList.from_filters(r.accept))
        for i, r in enumerate(config.peer_ranges)
    ]


class PeerRanges:
    """Listeners, the admission of a new connection, and the reload of ``[[peer_ranges]]``."""

    config: RouterConfig
    config_path: str | Path | None
    ranges: list[RangeState]
    peers: dict[IPAddress, PeerEntry]
    counters: Counters
    queue: asyncio.Queue[tuple[PeerEntry | None, Event | str]]
    listeners: list[BgpListener]
    router_id: ipaddress.IPv4Address | None
    reloads: int

    async def _start_listeners(self) -> None:
        by_port: dict[int, list[str]] = {}
        for hp in self.config.bgp.listen:
            by_port.setdefault(hp.port, []).append(hp.host)
        for port, hosts in by_port.items():
            listener = BgpListener(hosts, port, self._on_accept)
            await listener.start()
            self.listeners.append(listener)
        self._install_passwords(self.ranges, None)

    def _install_passwords(self, new: list[RangeState], old: list[RangeState] | None) -> None:
        for listener in self.listeners:
            for r in old or []:
                if r.config.password:
                    listener.set_password(str(r.network), None)
            for r in new:
                if r.config.password:
                    listener.set_password(str(r.network), r.config.password)

    def _on_accept(self, transport: Any, protocol: Any, remote: IPAddress) -> BgpPeer | None:
        found = match_range([(r.network, r) for r in self.ranges], remote)
        if found is None:
            self.counters.refused_connections += 1
            log.warning("refused BGP connection from %s: outside every peer range", remote)
            return None
        rng = found[1]
        old = self.peers.get(remote)
        if old is not None:
            # A new connection from a known neighbor: it restarted. The old session is over
            # (treated as a closed transport, so Graceful Restart applies).
            log.info("%s: new connection replaces the existing session", remote)
            old_peer = old.peer
            old_peer.on_event = None
            if old_peer.session.state is State.ESTABLISHED:
                self.queue.put_nowait((old, "replaced"))
            old_peer.abort()
        c = self.config
        session = Session(
            SessionConfig(
                local_asn=c.bgp.asn,
                router_id=self.router_id or ipaddress.IPv4Address("192.0.2.255"),
                peer_asn=None if rng.config.asn == "any" else rng.config.asn,
                hold_time=rng.config.hold_time or c.bgp.hold_time,
                passive=True,
                automatic_restart=False,
                graceful_restart_time=OUR_RESTART_TIME if c.bgp.graceful_restart else None,
            )
        )
        entry: PeerEntry
        peer = BgpPeer(session, _transport_for(remote), None, name=str(remote))
        entry = PeerEntry(remote, peer, rng, time.time())
        peer.on_event = lambda _p, event: self.queue.put_nowait((entry, event))
        self.peers[remote] = entry
        router_bfd.attach(cast("Router", self), entry, transport, replaces=old)
        peer.start()
        log.info("accepted BGP connection from %s (range %s)", remote, rng.network)
        return peer

    def _on_sighup(self) -> None:
        self.queue.put_nowait((None, "reload"))

    def reload(self) -> None:
        """SIGHUP: read the file again; sessions whose range settings changed (or whose source
        left every range) are reset with Cease; the others are untouched."""
        if self.config_path is None:
            return
        try:
            config = load_router_config(self.config_path)
        except Exception as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)
            return
        self.reloads += 1
        old_ranges = self.ranges
        new_ranges = compile_ranges(config)
        self.config = config.model_copy(update={"fib": self.config.fib, "bgp": self.config.bgp})
        self.ranges = new_ranges
        self._install_passwords(new_ranges, old_ranges)
        pairs = [(r.network, r) for r in new_ranges]
        now = asyncio.get_running_loop().time()
        for address, entry in list(self.peers.items()):
            found = match_range(pairs, address)
            if found is None:
                log.warning("%s: no longer inside any peer range: closing", address)
                entry.peer.session.stop(now, CeaseSubcode.PEER_DECONFIGURED)
                entry.peer.kick()
            elif found[1].key() != entry.range.key():
                log.info("%s: its peer range changed: resetting the session", address)
                entry.peer.session.stop(now, CeaseSubcode.OTHER_CONFIGURATION_CHANGE)
                entry.peer.kick()
            else:
                entry.range = found[1]
                router_bfd.reconfigure(cast("Router", self), entry)
        log.info("configuration reloaded from %s", self.config_path)


def _transport_for(remote: IPAddress) -> Any:
    from bgplb.io.bgp import Transport

    return Transport(remote=remote)
