"""BGP over TCP with asyncio: the thin adapter around the sans-IO `Session`.

One `BgpPeer` drives one `Session`: it opens the TCP connection when the session asks
(`ConnectRequested`), feeds received bytes in, writes what the session has to send, closes when
asked (`CloseRequested`) and re-arms a single `loop.call_at` from `session.get_timer()`, the way
aioquic's asyncio layer does. Peers never wait on each other: each has its own transport and
timer, and writes are buffered by asyncio (while a peer's socket is full, no new UPDATEs are built
for it). `BgpListener` accepts connections (passive side) and hands them to a callback that
decides which peer, if any, gets the connection.

Backpressure on the receiving side: `BgpPeer.pause_reading()` stops reading the socket (the
kernel's receive window then closes and the peer's TCP stops sending). Our KEEPALIVEs keep
going out, so the peer's HoldTimer is fed; our own HoldTimer is suspended while paused, because
the peer's KEEPALIVEs are waiting unread in our socket buffer: dropping the session for a
silence we caused would be wrong. `resume_reading()` restarts it with its full value.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bgplb.bgp.errors import CeaseSubcode
from bgplb.bgp.families import AFI
from bgplb.bgp.fsm import State
from bgplb.bgp.session import (
    CloseRequested,
    ConnectRequested,
    Event,
    InternalSessionError,
    RoutesHeldBack,
    RoutesReceived,
    Session,
    SessionDown,
    SessionEstablished,
    StateChanged,
)
from bgplb.io import sockopt

log = logging.getLogger("bgplb.bgp")

#: Messages handled per event-loop turn; the rest of a read waits for the next turn.
MESSAGES_PER_TURN = 64

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
EventHandler = Callable[["BgpPeer", Event], None]


@dataclass(frozen=True, slots=True)
class Transport:
    """How to reach a peer: address, port, source, TTL and authentication."""

    remote: IPAddress
    port: int = 179
    local: IPAddress | None = None
    password: str | None = None
    ttl: int | None = None  # eBGP multihop TTL; None keeps the kernel's default
    ttl_security: bool = False  # GTSM (RFC 5082), `ttl` then counts hops (default 1)
    connect_timeout: float = 5.0

    @property
    def family(self) -> int:
        return socket.AF_INET6 if self.remote.version == 6 else socket.AF_INET


#: Why a GTSM session may never hear from its peer (RFC 5082: both sides send TTL 255).
GTSM_HINT = (
    " (ttl_security is on: the peer must send with TTL 255 - GTSM on its side too - or the"
    " kernel drops its packets silently; see nstat TcpExtTCPMinTTLDrop)"
)


class _Protocol(asyncio.Protocol):
    def __init__(self, peer: BgpPeer) -> None:
        self.peer = peer
        self.transport: asyncio.Transport | None = None
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.peer._data_received(self, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.peer._transport_lost(self, exc)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.peer._process()


def local_next_hops(sock: socket.socket) -> dict[AFI, tuple[IPAddress, ...]]:
    """Our address on this connection, as the next hop of the routes we send over it.

    IPv4 sessions give an IPv4 next hop; IPv6 sessions give the IPv6 global address (and the
    link-local one is added by the owner when it knows the interface).
    """
    host = sock.getsockname()[0]
    address = ipaddress.ip_address(host.split("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    if address.version == 4:
        return {AFI.IPV4: (address,)}
    return {AFI.IPV6: (address,)}


class BgpPeer:
    """One BGP peer over TCP. `on_event` sees every session event (after the peer handled it)."""

    def __init__(
        self,
        session: Session,
        transport: Transport,
        on_event: EventHandler | None = None,
        *,
        name: str | None = None,
        next_hops: Callable[[socket.socket], dict[AFI, tuple[IPAddress, ...]]] | None = None,
    ) -> None:
        self.session = session
        self.transport = transport
        self.on_event = on_event
        self.name = name or f"{transport.remote}"
        self._next_hops = next_hops or local_next_hops
        self._loop = asyncio.get_running_loop()
        self._proto: _Protocol | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._closed = asyncio.Event()
        self._closed.set()
        self.local_address: IPAddress | None = None
        self._reading_paused = False
        self._backlog = False  # the session holds complete messages not processed yet
        self._continue_scheduled = False
        self._families_logged: set[tuple[int, int]] = set()
        #: events handed to `on_event` so far (an owner that queues them can subtract the
        #: number it handled to know how many are pending for this peer)
        self.events_delivered = 0

    # -- control ------------------------------------------------------------------------------

    def now(self) -> float:
        return self._loop.time()

    def start(self) -> None:
        """Start the session (connect, or wait for `attach` when passive)."""
        self.session.start(self.now())
        self._process()

    async def stop(
        self, message: str = "", subcode: int = CeaseSubcode.ADMINISTRATIVE_SHUTDOWN
    ) -> None:
        """Send Cease (RFC 8203 message), close the connection and wait until it is closed."""
        self.session.stop(self.now(), subcode, message)
        self._process()
        if self._connecting is not None:
            self._connecting.cancel()
        try:
            await asyncio.wait_for(self._closed.wait(), 3.0)
        except TimeoutError:
            if self._proto and self._proto.transport:
                self._proto.transport.abort()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    @property
    def reading_paused(self) -> bool:
        return self._reading_paused

    def pause_reading(self) -> None:
        """Stop reading from the socket (backpressure: the owner's queue is long).

        KEEPALIVEs are still sent; the session's HoldTimer is suspended until
        `resume_reading` (see the module docstring). Idempotent."""
        if self._reading_paused:
            return
        self._reading_paused = True
        self.session.pause_hold_timer()
        self._apply_reading(self._proto)
        self._arm_timer()

    def resume_reading(self) -> None:
        """Read from the socket again; the HoldTimer restarts with its full value."""
        if not self._reading_paused:
            return
        self._reading_paused = False
        self.session.resume_hold_timer(self.now())
        self._apply_reading(self._proto)
        self._process()
        if self._proto is not None:
            self._after_input(self._proto)

    def _apply_reading(self, proto: _Protocol | None) -> None:
        transport = proto.transport if proto is not None else None
        if transport is None or transport.is_closing():
            return
        paused = self._reading_paused or self._backlog
        if paused and transport.is_reading():
            transport.pause_reading()
        elif not paused and not transport.is_reading():
            transport.resume_reading()

    def attach(self, transport: asyncio.Transport, protocol: _Protocol) -> None:
        """Give an accepted connection to this (passive) peer."""
        self._proto = protocol
        self._backlog = False
        protocol.peer = self
        self._closed.clear()
        self._families_logged.clear()
        self._apply_reading(protocol)
        sock = transport.get_extra_info("socket")
        self.local_address = ipaddress.ip_address(sock.getsockname()[0].split("%")[0])
        self.session.connection_made(self.now(), self._next_hops(sock))
        self._process()

    def stop_now(self, subcode: int, message: str = "") -> None:
        """Send Cease (`subcode`) and drop the connection at once, without waiting for the
        write buffer (the neighbor is presumed unreachable, e.g. BFD Down). Events still reach
        `on_event`, and the session does not restart by itself."""
        proto = self._proto
        self.session.stop(self.now(), subcode, message)
        self._process()  # hands the NOTIFICATION to the kernel and closes the transport
        if proto is not None and proto.transport is not None:
            proto.transport.abort()

    def write_buffer_size(self) -> int:
        """Bytes handed to this peer's transport but not yet to the kernel (0 if closed)."""
        proto = self._proto
        if proto is None or proto.transport is None:
            return 0
        return int(proto.transport.get_write_buffer_size())

    def close_silently(self) -> None:
        """Close the connection without a NOTIFICATION (the kernel sends FIN).

        For an exit that keeps routes: a Graceful Restart helper keeps our paths when the
        transport closes, but not after a Cease (RFC 4724 §4.2, RFC 8538).
        """
        self.on_event = None
        proto, self._proto = self._proto, None
        if proto is not None and proto.transport is not None:
            proto.transport.close()
        self._cancel_all()

    def abort(self) -> None:
        """Drop the connection at once (RST), without a NOTIFICATION or further events."""
        self.on_event = None
        proto, self._proto = self._proto, None
        if proto is not None and proto.transport is not None:
            proto.transport.abort()
        self._cancel_all()

    def _cancel_all(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._closed.set()

    def kick(self) -> None:
        """Push pending announcements now (after `session.announce`/`withdraw`)."""
        self._process()

    # -- the loop ----------------------------------------------------------------------------

    def _process(self) -> None:
        session = self.session
        now = self.now()
        # Events first: they may ask to connect or to close after the data is written.
        close = self._deliver_events()
        proto = self._proto
        if proto is not None and proto.transport is not None and not proto.paused:
            data = session.data_to_send(now)
            if data:
                proto.transport.write(data)
        elif proto is None or proto.transport is None:
            session.data_to_send(now)  # nothing to write to: drop (the session is not connected)
        # Building the UPDATEs may itself raise events (routes held back, an internal error):
        # deliver them now, not at the next timer, so logs and status agree.
        close = self._deliver_events() or close
        if close and proto is not None and proto.transport is not None:
            proto.transport.close()
            self._proto = None
        self._arm_timer()

    def _deliver_events(self) -> bool:
        """Log and hand on every pending event; True if one asked to close the connection."""
        session = self.session
        close = False
        while (event := session.next_event()) is not None:
            if isinstance(event, ConnectRequested):
                self._connect()
            elif isinstance(event, CloseRequested):
                close = True
            elif isinstance(event, StateChanged):
                log.debug("%s: %s -> %s", self.name, event.old.value, event.new.value)
            elif isinstance(event, SessionEstablished):
                log.info(
                    "%s: session established (AS %s, hold %ss, families %s)",
                    self.name,
                    event.negotiated.peer_asn,
                    event.negotiated.hold_time,
                    ",".join(f"{a.name}/{s.name}" for a, s in sorted(event.negotiated.families)),
                )
            elif isinstance(event, RoutesHeldBack):
                for prefix, why in event.held:
                    log.warning("%s: not announcing %s: %s", self.name, prefix, why)
            elif isinstance(event, InternalSessionError):
                log.error("%s: session reset by an internal error:\n%s", self.name, event.traceback)
            elif isinstance(event, SessionDown):
                why = event.reason
                if (
                    self.transport.ttl_security
                    and not event.was_established
                    and why == "hold timer expired"
                    and session.last_error == why
                ):
                    # no OPEN ever came: with GTSM the kernel drops a peer's packets sent with a
                    # lower TTL, silently (last_error is what status shows)
                    why = session.last_error = why + GTSM_HINT
                level = logging.INFO if not event.was_established else logging.WARNING
                log.log(level, "%s: session down: %s", self.name, why)
            elif isinstance(event, RoutesReceived) and event.update.ignored_families:
                self._log_ignored(event)
            self.events_delivered += 1
            if self.on_event is not None:
                try:
                    self.on_event(self, event)
                except Exception:  # an owner's bug must not kill the transport
                    log.exception("%s: event handler failed on %r", self.name, event)
        return close

    def _log_ignored(self, event: RoutesReceived) -> None:
        """Log once per family and connection that the peer sent a family not negotiated."""
        for afi, safi in event.update.ignored_families:
            if (afi, safi) not in self._families_logged:
                self._families_logged.add((afi, safi))
                log.warning(
                    "%s: ignoring MP_REACH/MP_UNREACH_NLRI for AFI %d SAFI %d: not negotiated "
                    "on this session (RFC 4760 §8); further ones are only counted",
                    self.name,
                    afi,
                    safi,
                )

    def _arm_timer(self) -> None:
        deadline = self.session.get_timer()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if deadline is not None:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.session.handle_timer(self.now())
        self._process()

    def _data_received(self, proto: _Protocol, data: bytes) -> None:
        if proto is not self._proto:
            return
        self.session.receive_data(data, self.now(), limit=MESSAGES_PER_TURN)
        self._process()
        self._after_input(proto)

    def _after_input(self, proto: _Protocol) -> None:
        """One read can carry thousands of messages (256 KiB of small UPDATEs): they are
        processed MESSAGES_PER_TURN at a time, one loop turn each, with the socket not read
        meanwhile, so the event loop (keepalives, BFD, other peers) never waits long."""
        backlog = self.session.input_pending
        if backlog != self._backlog:
            self._backlog = backlog
            self._apply_reading(proto)
        if backlog and not self._reading_paused and not self._continue_scheduled:
            self._continue_scheduled = True
            asyncio.get_running_loop().call_soon(self._continue_input, proto)

    def _continue_input(self, proto: _Protocol) -> None:
        self._continue_scheduled = False
        if proto is not self._proto or self._reading_paused:
            return
        self.session.receive_data(b"", self.now(), limit=MESSAGES_PER_TURN)
        self._process()
        self._after_input(proto)

    def _transport_lost(self, proto: _Protocol, exc: Exception | None) -> None:
        if proto is self._proto:
            self._proto = None
            reason = f"connection lost: {exc}" if exc else "connection closed by peer"
            self.session.connection_lost(self.now(), reason)
            self._process()
        if self._proto is None:
            self._closed.set()

    # -- active open --------------------------------------------------------------------------

    def _connect(self) -> None:
        if self._connecting is not None and not self._connecting.done():
            # The ConnectRetryTimer fired before the attempt completed: no SYN-ACK came back.
            log.info("%s: %s", self.name, self._timeout_message())
            self._connecting.cancel()
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.abort()
            self._proto = None
        self._connecting = self._loop.create_task(self._open())

    async def _open(self) -> None:
        t = self.transport
        sock = socket.socket(t.family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            if t.password:
                sockopt.set_md5(sock, f"{t.remote}/{t.remote.max_prefixlen}", t.password)
            if t.ttl_security:
                sockopt.set_gtsm(sock, t.family, t.ttl or 1)
            elif t.ttl is not None:
                sockopt.set_ttl(sock, t.family, t.ttl)
            if t.local is not None:
                sock.bind((str(t.local), 0))
            await asyncio.wait_for(
                self._loop.sock_connect(sock, (str(t.remote), t.port)), t.connect_timeout
            )
        except TimeoutError:
            sock.close()
            self._connect_failed(self._timeout_message())
            return
        except asyncio.CancelledError:
            sock.close()
            raise
        except OSError as exc:
            sock.close()
            self._connect_failed(f"connect to {t.remote}:{t.port} failed: {exc.strerror or exc}")
            return
        transport, proto = await self._loop.create_connection(lambda: _Protocol(self), sock=sock)
        assert isinstance(proto, _Protocol) and isinstance(transport, asyncio.Transport)
        self._proto = proto
        self._backlog = False
        self._closed.clear()
        self._families_logged.clear()
        self._apply_reading(proto)
        self.local_address = ipaddress.ip_address(sock.getsockname()[0].split("%")[0])
        log.debug("%s: connected from %s", self.name, self.local_address)
        self.session.connection_made(self.now(), self._next_hops(sock))
        self._process()

    def _timeout_message(self) -> str:
        t = self.transport
        if t.password:
            hint = (
                " (TCP-MD5 is configured: a wrong or missing key on either side looks exactly"
                " like this, the kernel drops the segments silently; see nstat TcpExtTCPMD5*)"
            )
        elif t.ttl_security:
            hint = GTSM_HINT
        else:
            hint = " (peer down, filtered, or not listening)"
        return f"connect to {t.remote}:{t.port} timed out{hint}"

    def _connect_failed(self, reason: str) -> None:
        if self.session.state in (State.CONNECT, State.ACTIVE):
            log.info("%s: %s", self.name, reason)
            self.session.connection_lost(self.now(), reason)
            self._process()


AcceptHandler = Callable[[asyncio.Transport, "_Protocol", IPAddress], "BgpPeer | None"]


class BgpListener:
    """Accepts BGP connections on the given addresses and asks `on_accept` who gets them.

    `on_accept(transport, protocol, remote_address)` returns the `BgpPeer` that takes the
    connection (it is then attached) or None to refuse it (the connection is closed at once).
    TCP-MD5 keys for peer prefixes are installed on every listening socket with `set_password`.
    With `save_syn`, `protocol.syn_ttl` holds the TTL / hop limit of the connection's SYN when
    `on_accept` runs (for GTSM decided per source, RFC 5082 §3); `set_gtsm` makes the kernel
    drop low-TTL segments on the listening sockets of one address family.
    """

    def __init__(
        self,
        addresses: Sequence[str],
        port: int,
        on_accept: AcceptHandler,
        *,
        gtsm_hops: int | None = None,
        save_syn: bool = False,
    ) -> None:
        self.addresses = list(addresses)
        self.port = port
        self.on_accept = on_accept
        self.gtsm_hops = gtsm_hops
        self.save_syn = save_syn
        self._servers: list[asyncio.Server] = []
        self._sockets: list[socket.socket] = []

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for address in self.addresses:
            ip = ipaddress.ip_address(address)
            family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if self.gtsm_hops is not None:
                sockopt.set_gtsm(sock, family, self.gtsm_hops)
            if self.save_syn:
                sockopt.save_syn(sock)
            sock.bind((address, self.port))
            sock.listen(128)
            sock.setblocking(False)
            self._sockets.append(sock)
            server = await loop.create_server(self._factory, sock=sock)
            self._servers.append(server)
            log.info("listening for BGP on %s port %d", address, self.port)

    @property
    def bound(self) -> list[tuple[str, int]]:
        """(address, port) of every listening socket (the real port when 0 was asked)."""
        return [sock.getsockname()[:2] for sock in self._sockets]

    def set_password(self, network: str, password: str | None) -> None:
        """Install (or remove) a TCP-MD5 key for a peer prefix on every listening socket."""
        net = ipaddress.ip_network(network, strict=False)
        for sock in self._sockets:
            if (sock.family == socket.AF_INET6) == (net.version == 6):
                sockopt.set_md5(sock, net, password)

    def set_gtsm(self, version: int, hops: int | None) -> None:
        """Kernel-side GTSM on the listening sockets of IP `version` (4 or 6): SYNs with a TTL
        below 256 - hops are dropped (None: accept any TTL). Accepted sockets inherit it."""
        for sock in self._sockets:
            if (sock.family == socket.AF_INET6) == (version == 6):
                minimum = 0 if hops is None else 256 - max(1, hops)
                sockopt.set_min_ttl(sock, sock.family, minimum)

    def set_ttl(self, version: int, ttl: int | None) -> None:
        """TTL / hop limit of what the listening sockets of IP `version` send (their SYN-ACKs,
        inherited by accepted sockets); None restores the system default. A GTSM peer drops
        a SYN-ACK below 255 (RFC 5082 §3), so a listener serving any GTSM range sends 255."""
        for sock in self._sockets:
            if (sock.family == socket.AF_INET6) == (version == 6):
                sockopt.set_ttl(sock, sock.family, -1 if ttl is None else ttl)

    def _factory(self) -> _Protocol:
        return _AcceptingProtocol(self)

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        self._sockets.clear()


class _AcceptingProtocol(_Protocol):
    def __init__(self, listener: BgpListener) -> None:
        self.listener = listener
        self.transport = None
        self.paused = False
        self.syn_ttl: int | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.listener.save_syn:
            self.syn_ttl = sockopt.syn_ttl(transport.get_extra_info("socket"))
        host = transport.get_extra_info("peername")[0]
        remote = ipaddress.ip_address(host.split("%")[0])
        if isinstance(remote, ipaddress.IPv6Address) and remote.ipv4_mapped:
            remote = remote.ipv4_mapped
        try:
            peer = self.listener.on_accept(transport, self, remote)
        except Exception:
            log.exception("accepting a connection from %s failed", remote)
            peer = None
        if peer is None:
            transport.close()
            return
        peer.attach(transport, self)

    def data_received(self, data: bytes) -> None:
        if getattr(self, "peer", None) is not None:
            self.peer._data_received(self, data)

    def connection_lost(self, exc: Exception | None) -> None:
        if getattr(self, "peer", None) is not None:
            self.peer._transport_lost(self, exc)
