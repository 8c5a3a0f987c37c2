"""Peer ranges (dynamic neighbors) of the router: listening, accepting sessions, reload.

One :class:`PeerRanges` per router daemon owns the listeners, the neighbors (``peers``), the
compiled ranges and the running configuration (a reload replaces it); it hands each admitted
neighbor's events to the RIB task's queue and its BFD to :class:`~bgplb.router.bfd.RouterBfd`,
both given to its constructor. A connection from inside a ``[[peer_ranges]]``
prefix (most specific range wins) gets a passive :class:`~bgplb.bgp.session.Session` of its own
(RFC 4271 §8.2.1 PassiveTcpEstablishment); a source outside every range is refused. TCP MD5
passwords (RFC 2385) are set per range on every listener. SIGHUP re-reads the ranges: sessions
whose range changed are reset with Cease (RFC 4486 §4: Other Configuration Change, Peer
De-configured), the others are untouched.

Admission, in this order, each refusal logged (rate-limited) and counted:

* **Rate.** Connection attempts per source address are limited by a token bucket
  (`CONNECT_BURST` at once, then `CONNECT_RATE` per second); excess connections are closed at
  once.
* **GTSM** (RFC 5082) for a range with ``ttl_security``. The listener is shared by every range,
  so the check is per connection: the listener keeps each connection's SYN (``TCP_SAVE_SYN``) and
  one whose SYN arrived with a TTL (hop limit) below 255 is closed before anything is read;
  then ``IP_MINTTL`` / ``IPV6_MINHOPCOUNT`` 255 is set on the accepted socket, so the kernel
  drops every later segment with a lower TTL, and we send with TTL 255. (A segment that arrived
  between the handshake and that call was sent by whoever completed a handshake whose SYN had
  TTL 255, i.e. an adjacent host.) When every range of an address family asks for GTSM, the
  listening sockets of that family get the minimum TTL too and the kernel drops such SYNs
  itself. A range without ``ttl_security`` accepts any TTL.
* **max_sessions** per range: a new neighbor beyond it is refused.
* **Half-open connections.** A session waits at most ``[bgp] open_timeout`` for the peer's OPEN
  (the OpenSent HoldTimer, RFC 4271 §8.2.2), then sends Hold Timer Expired and closes.

Connection collisions (RFC 4271 §6.8). The router only accepts, so a second connection from a
known neighbor's address is either its restart or junk. It is kept apart (it has its own session,
but no routes, BFD or status of the neighbor) until it has sent a valid OPEN (right AS, acceptable
hold time and identifier: what the session checks before OpenConfirm); a connection that closes
or times out before that never touches the existing session. Once it has:

* existing session **Established**: the new connection replaces it. §6.8 would keep the
  Established one, but that rule is for two connections in opposite directions; here both came
  from the neighbor, and a speaker opens a new connection to an address it already has a session
  with only after it lost that session: the neighbor restarted. As a Graceful Restart helper
  (RFC 4724 §4.2) we treat the old session as a closed transport: its routes are kept as stale
  until the new session's End-of-RIB or the restart time;
* existing session in **OpenConfirm** (its identifier is known): the §6.8 rule,
  :func:`~bgplb.bgp.fsm.collision_keeps_existing` with the existing connection incoming; the
  loser gets Cease / Connection Collision Resolution (RFC 4486). For two connections both
  initiated by the neighbor this keeps the existing one exactly when the neighbor's identifier
  is the higher, which is the choice the neighbor makes too when it applies §6.8 to its own two
  connections;
* existing connection still in **OpenSent** (no OPEN received, identifier unknown, so §6.8 cannot
  compare): the connection that has sent a valid OPEN wins.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bgplb.bgp.errors import CeaseSubcode
from bgplb.bgp.fsm import State, collision_keeps_existing
from bgplb.bgp.session import Event, Session, SessionConfig, SessionDown, StateChanged
from bgplb.config import RouterConfig, load_router_config
from bgplb.io import sockopt
from bgplb.io.bgp import BgpListener, BgpPeer, IPAddress
from bgplb.router.bfd import RouterBfd
from bgplb.router.entry import Counters, PeerEntry, RangeState
from bgplb.router.policy import PrefixList, match_range

__all__ = [
    "CONNECT_BURST",
    "CONNECT_RATE",
    "OUR_RESTART_TIME",
    "ConnectRate",
    "LogThrottle",
    "PeerEntry",
    "PeerRanges",
    "RangeState",
    "compile_ranges",
]

log = logging.getLogger("bgplb.router")

#: Restart time we advertise in our own Graceful Restart capability (we are a helper).
OUR_RESTART_TIME = 120


#: Connection attempts per source address: this many at once, then CONNECT_RATE per second.
CONNECT_BURST = 5
CONNECT_RATE = 1.0
#: Sources remembered by the rate limiter (sources with a full bucket are forgotten first).
CONNECT_SOURCES = 4096
#: A refusal of one kind is logged at most once per this many seconds.
LOG_INTERVAL = 10.0
#: RFC 5082: what a directly connected GTSM peer's packets arrive with.
GTSM_TTL = 255


class ConnectRate:
    """Token bucket per source address (pure: `now` is a parameter)."""

    def __init__(
        self, rate: float = CONNECT_RATE, burst: int = CONNECT_BURST, sources: int = CONNECT_SOURCES
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.sources = sources
        self._buckets: dict[Any, tuple[float, float]] = {}  # key -> (tokens, at)

    def allow(self, key: Any, now: float) -> bool:
        tokens, at = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate)
        allowed = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
        if len(self._buckets) > self.sources:
            self._forget(now)
        return allowed

    def _forget(self, now: float) -> None:
        full = [
            k for k, (t, at) in self._buckets.items() if t + (now - at) * self.rate >= self.burst
        ]
        for k in full:
            del self._buckets[k]
        while len(self._buckets) > self.sources:  # all busy: drop the oldest
            del self._buckets[next(iter(self._buckets))]


class LogThrottle:
    """At most one log line per kind and `interval`; the next one says how many were dropped."""

    def __init__(self, interval: float = LOG_INTERVAL) -> None:
        self.interval = interval
        self._last: dict[str, tuple[float, int]] = {}  # kind -> (logged at, suppressed since)

    def log(self, now: float, kind: str, level: int, msg: str, *args: Any) -> bool:
        at, suppressed = self._last.get(kind, (float("-inf"), 0))
        if now - at < self.interval:
            self._last[kind] = (at, suppressed + 1)
            return False
        if suppressed:
            msg += f" ({suppressed} similar line(s) suppressed)"
        log.log(level, msg, *args)
        self._last[kind] = (now, 0)
        if len(self._last) > 1024:
            self._last = {k: v for k, v in self._last.items() if now - v[0] < self.interval}
        return True


@dataclass(slots=True)
class Candidate:
    """A second connection from a known neighbor's address, kept apart until a valid OPEN."""

    entry: PeerEntry
    transport: Any


@dataclass(slots=True)
class Admission:
    """State of the admission of new connections (created on first use)."""

    rate: ConnectRate = field(default_factory=ConnectRate)
    throttle: LogThrottle = field(default_factory=LogThrottle)
    candidates: dict[IPAddress, Candidate] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)  # reason -> connections refused


def compile_ranges(config: RouterConfig) -> list[RangeState]:
    return [
        RangeState(i, r, PrefixList.from_filters(r.accept))
        for i, r in enumerate(config.peer_ranges)
    ]


class PeerRanges:
    """Listeners, the admission of a new connection, and the reload of ``[[peer_ranges]]``.

    `peers`: the neighbors, filled here (the RIB task removes those whose session ended);
    `counters`: refused connections; `queue`: the RIB task's, which gets every admitted
    neighbor's events and the reload request; `bfd`: BFD of the neighbors (None: without)."""

    def __init__(
        self,
        config: RouterConfig,
        config_path: str | Path | None,
        peers: dict[IPAddress, PeerEntry],
        counters: Counters,
        queue: asyncio.Queue[tuple[PeerEntry | None, Event | str]],
        bfd: RouterBfd | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.ranges = compile_ranges(config)
        self.peers = peers
        self.counters = counters
        self.queue = queue
        self.bfd = bfd
        self.listeners: list[BgpListener] = []
        self.router_id: ipaddress.IPv4Address | None = config.bgp.router_id
        self.reloads = 0
        self.admission = Admission()

    def _admission(self) -> Admission:
        return self.admission

    async def _start_listeners(self) -> None:
        by_port: dict[int, list[str]] = {}
        for hp in self.config.bgp.listen:
            by_port.setdefault(hp.port, []).append(hp.host)
        for port, hosts in by_port.items():
            listener = BgpListener(hosts, port, self._on_accept, save_syn=True)
            await listener.start()
            self.listeners.append(listener)
        self._install_passwords(self.ranges, None)
        self._install_gtsm()

    def _install_passwords(self, new: list[RangeState], old: list[RangeState] | None) -> None:
        for listener in self.listeners:
            for r in old or []:
                if r.config.password:
                    listener.set_password(str(r.network), None)
            for r in new:
                if r.config.password:
                    listener.set_password(str(r.network), r.config.password)

    def _install_gtsm(self) -> None:
        """GTSM on the listeners: SYN-ACKs with TTL 255 when a range of the family asks for it
        (a GTSM peer drops anything lower), the kernel's minimum TTL when all of them do."""
        for version in (4, 6):
            ranges = [r for r in self.ranges if r.network.version == version]
            anyone = any(r.config.ttl_security for r in ranges)
            everyone = bool(ranges) and all(r.config.ttl_security for r in ranges)
            for listener in self.listeners:
                listener.set_ttl(version, GTSM_TTL if anyone else None)
                listener.set_gtsm(version, 1 if everyone else None)

    def _refuse(self, remote: IPAddress, kind: str, why: str) -> None:
        adm = self._admission()
        self.counters.refused_connections += 1
        adm.refused[kind] = adm.refused.get(kind, 0) + 1
        now = asyncio.get_running_loop().time()
        adm.throttle.log(
            now, kind, logging.WARNING, "refused BGP connection from %s: %s", remote, why
        )

    def _on_accept(self, transport: Any, protocol: Any, remote: IPAddress) -> BgpPeer | None:
        adm = self._admission()
        now = asyncio.get_running_loop().time()
        if not adm.rate.allow(remote, now):
            self._refuse(
                remote,
                "rate",
                f"more than {CONNECT_BURST} connection attempts, {CONNECT_RATE:g}/s after that",
            )
            return None
        found = match_range([(r.network, r) for r in self.ranges], remote)
        if found is None:
            self._refuse(remote, "outside", "outside every peer range")
            return None
        rng = found[1]
        if rng.config.ttl_security and not self._gtsm_ok(transport, protocol, remote):
            return None
        old = self.peers.get(remote)
        if old is None:
            sessions = sum(1 for e in self.peers.values() if e.range.network == rng.network)
            if sessions >= rng.config.max_sessions:
                self._refuse(
                    remote,
                    f"max_sessions {rng.network}",
                    f"range {rng.network} has max_sessions={rng.config.max_sessions} sessions",
                )
                return None
        entry = self._new_entry(remote, rng)
        peer = entry.peer
        if old is None:
            self._admit(entry, transport, None)
            log.info("accepted BGP connection from %s (range %s)", remote, rng.network)
        else:
            # A second connection from a known neighbor: kept apart until a valid OPEN.
            previous = adm.candidates.pop(remote, None)
            if previous is not None:
                previous.entry.peer.abort()  # superseded by this newer attempt
            candidate = Candidate(entry, transport)
            adm.candidates[remote] = candidate
            peer.on_event = lambda _p, event: self._candidate_event(candidate, event)
            log.info(
                "%s: new connection while its session is %s: waiting for its OPEN",
                remote,
                old.peer.session.state.value,
            )
        peer.start()
        return peer

    def _gtsm_ok(self, transport: Any, protocol: Any, remote: IPAddress) -> bool:
        """RFC 5082 for one accepted connection (see the module docstring)."""
        ttl = getattr(protocol, "syn_ttl", None)
        if ttl is not None and ttl < GTSM_TTL:
            self._refuse(remote, "gtsm", f"ttl_security: its SYN arrived with TTL {ttl}, not 255")
            return False
        sock = transport.get_extra_info("socket")
        family = socket.AF_INET6 if remote.version == 6 else socket.AF_INET
        try:
            sockopt.set_gtsm(sock, family, 1)  # send with 255; drop later segments below 255
        except OSError as exc:
            self._refuse(remote, "gtsm", f"ttl_security: cannot set the minimum TTL: {exc}")
            return False
        return True

    def _new_entry(self, remote: IPAddress, rng: RangeState) -> PeerEntry:
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
                open_hold_time=c.bgp.open_timeout,
            )
        )
        peer = BgpPeer(session, _transport_for(remote), None, name=str(remote))
        return PeerEntry(remote, peer, rng, time.time())

    def _admit(self, entry: PeerEntry, transport: Any, replaces: PeerEntry | None) -> None:
        """`entry` becomes the neighbor's session: its events go to the RIB task."""
        entry.peer.on_event = lambda _p, event: self.queue.put_nowait((entry, event))
        self.peers[entry.address] = entry
        if self.bfd is not None:
            self.bfd.attach(entry, transport, replaces=replaces)

    def _candidate_event(self, candidate: Candidate, event: Event) -> None:
        remote = candidate.entry.address
        adm = self._admission()
        if isinstance(event, StateChanged) and event.new is State.OPEN_CONFIRM:
            if adm.candidates.get(remote) is candidate:
                del adm.candidates[remote]
            self._resolve_collision(candidate)
        elif isinstance(event, SessionDown):
            if adm.candidates.get(remote) is candidate:
                del adm.candidates[remote]
            now = asyncio.get_running_loop().time()
            adm.throttle.log(
                now,
                f"candidate {remote}",
                logging.INFO,
                "%s: extra connection closed before a valid OPEN (existing session untouched): %s",
                remote,
                event.reason,
            )

    def _resolve_collision(self, candidate: Candidate) -> None:
        """The candidate sent a valid OPEN: RFC 4271 §6.8 (see the module docstring)."""
        entry = candidate.entry
        remote = entry.address
        old = self.peers.get(remote)
        if old is None:
            self._admit(entry, candidate.transport, None)
            log.info("%s: accepted the new connection (the previous one is gone)", remote)
            return
        state = old.peer.session.state
        if state is State.ESTABLISHED:
            log.info(
                "%s: new connection with a valid OPEN replaces the Established session "
                "(the neighbor restarted: graceful restart applies)",
                remote,
            )
            old.peer.on_event = None
            self.queue.put_nowait((old, "replaced"))
            old.peer.abort()
            self._admit(entry, candidate.transport, old)
            return
        existing_open = old.peer.session.remote_open
        if state is State.OPEN_CONFIRM and existing_open is not None:
            local_id = self.router_id or ipaddress.IPv4Address("192.0.2.255")
            if collision_keeps_existing(local_id, existing_open.router_id, False):
                log.info("%s: connection collision: keeping the existing connection", remote)
                entry.peer.on_event = None
                loop = asyncio.get_running_loop()
                loop.call_soon(
                    entry.peer.stop_now, CeaseSubcode.CONNECTION_COLLISION_RESOLUTION, ""
                )
                return
        log.info("%s: connection collision: the new connection replaces the existing one", remote)
        old.peer.on_event = None
        old.peer.stop_now(CeaseSubcode.CONNECTION_COLLISION_RESOLUTION)
        self._admit(entry, candidate.transport, old)

    def abort_candidates(self) -> None:
        """Drop the connections still waiting for their OPEN next to a known neighbor's
        session (at shutdown: they are not in `peers`)."""
        candidates = self._admission().candidates
        for candidate in list(candidates.values()):
            candidate.entry.peer.abort()
        candidates.clear()

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
        self._install_gtsm()
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
                if self.bfd is not None:
                    self.bfd.reconfigure(entry)
        log.info("configuration reloaded from %s", self.config_path)


def _transport_for(remote: IPAddress) -> Any:
    from bgplb.io.bgp import Transport

    return Transport(remote=remote)
