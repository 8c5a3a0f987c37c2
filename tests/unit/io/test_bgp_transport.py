"""The asyncio transport on loopback: sessions come up, routes flow, and a peer that stops
reading never stalls another peer in the same process."""

from __future__ import annotations

import asyncio
import ipaddress
import socket

from bgplb.bgp.attributes import PathAttributes
from bgplb.bgp.fsm import State
from bgplb.bgp.prefix import Prefix
from bgplb.bgp.session import (
    RoutesHeldBack,
    RoutesReceived,
    Session,
    SessionConfig,
    SessionDown,
    SessionEstablished,
)
from bgplb.io.bgp import BgpListener, BgpPeer, Transport

LOOP = ipaddress.IPv4Address("127.0.0.1")


def cfg(asn: int, rid: str, peer_asn: int | None, passive: bool = False) -> SessionConfig:
    return SessionConfig(
        local_asn=asn,
        router_id=ipaddress.IPv4Address(rid),
        peer_asn=peer_asn,
        hold_time=30,
        passive=passive,
        connect_retry_time=0.2,
        idle_hold_time=0.2,
    )


def prefixes(count: int) -> list[Prefix]:
    base = int(ipaddress.IPv4Address("198.18.0.0"))
    return [Prefix.from_network(ipaddress.IPv4Network((base + i, 32))) for i in range(count)]


async def scenario() -> tuple[int, State, int, int]:
    received: set[Prefix] = set()
    established = asyncio.Event()

    def on_server_event(peer: BgpPeer, event: object) -> None:
        if isinstance(event, RoutesReceived):
            received.update(event.announced)

    server_session = Session(cfg(65010, "192.0.2.1", 65020, passive=True))
    server_peer = BgpPeer(server_session, Transport(remote=LOOP), on_server_event)

    def accept(transport, proto, remote):  # type: ignore[no-untyped-def]
        return server_peer

    listener = BgpListener(["127.0.0.1"], 0, accept)
    await listener.start()
    port = listener.bound[0][1]
    server_peer.start()

    # A peer that completes the OPEN exchange and then stops reading: with a small receive
    # buffer, our writes to it back up into asyncio's buffer.
    stuck_transports: list[asyncio.Transport] = []  # paused transports must stay referenced

    class Stuck(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            self.transport = transport
            stuck_transports.append(transport)

        def data_received(self, data: bytes) -> None:
            from bgplb.bgp.messages import Keepalive, Open, encode

            hello = Open(asn=65010, hold_time=0, router_id=ipaddress.IPv4Address("192.0.2.9"))
            self.transport.write(encode(hello) + encode(Keepalive()))
            self.transport.pause_reading()

    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.bind(("127.0.0.1", 0))
    stuck.listen(1)
    stuck.setblocking(False)
    stuck_port = stuck.getsockname()[1]
    stuck_server = await asyncio.get_running_loop().create_server(Stuck, sock=stuck)

    def on_client_event(peer: BgpPeer, event: object) -> None:
        if isinstance(event, SessionEstablished):
            established.set()

    good = BgpPeer(
        Session(cfg(65020, "192.0.2.2", 65010)), Transport(LOOP, port=port), on_client_event
    )
    blocked = BgpPeer(Session(cfg(65020, "192.0.2.2", 65010)), Transport(LOOP, port=stuck_port))
    many = prefixes(50_000)
    attrs = PathAttributes()
    for p in many:
        good.session.announce(p, attrs)
        blocked.session.announce(p, attrs)
    blocked.start()
    good.start()
    await asyncio.wait_for(established.wait(), 10)
    good.kick()
    for _ in range(400):  # bounded: at most 20 s
        if len(received) == len(many):
            break
        await asyncio.sleep(0.05)
    blocked_state = blocked.session.state
    backlog = blocked.session.updates_sent
    await good.stop("done")
    await blocked.stop("done")
    await server_peer.stop("done")
    await listener.close()
    stuck_server.close()
    for transport in stuck_transports:
        transport.abort()
    await asyncio.sleep(0)
    return len(received), blocked_state, len(many), backlog


def test_a_peer_that_never_reads_does_not_stall_another():
    got, blocked_state, want, backlog = asyncio.run(scenario())
    assert got == want
    # The stuck peer is Established (hold time 0: no keepalives needed) and was given its
    # UPDATEs, which it never reads, while the other peer received every route.
    assert blocked_state is State.ESTABLISHED
    assert backlog > 0


async def held_back_scenario() -> tuple[list[object], dict[Prefix, str]]:
    """Announce an IPv6 prefix over a session between IPv4 addresses, after it is up."""
    server_session = Session(cfg(65010, "192.0.2.1", 65020, passive=True))
    server_peer = BgpPeer(server_session, Transport(remote=LOOP))
    listener = BgpListener(["127.0.0.1"], 0, lambda transport, proto, remote: server_peer)
    await listener.start()
    server_peer.start()
    established = asyncio.Event()
    seen: list[object] = []

    def on_event(peer: BgpPeer, event: object) -> None:
        seen.append(event)
        if isinstance(event, SessionEstablished):
            established.set()

    client = BgpPeer(
        Session(cfg(65020, "192.0.2.2", 65010)),
        Transport(LOOP, port=listener.bound[0][1]),
        on_event,
    )
    client.start()
    try:
        await asyncio.wait_for(established.wait(), 10)
        seen.clear()
        client.session.announce(Prefix.parse("2001:db8:100::10/128"), PathAttributes())
        client.kick()
        # Whatever `kick` made the session say is delivered before it returns.
        return list(seen), dict(client.session.held_back)
    finally:
        await client.stop("done")
        await server_peer.stop("done")
        await listener.close()


def test_routes_held_back_while_sending_are_reported_at_once():
    """The status (`held_back`) and the log line must agree at every moment: the event raised
    while the UPDATEs are built is delivered in the same turn, not at the next timer."""
    seen, held = asyncio.run(held_back_scenario())
    assert list(held) == [Prefix.parse("2001:db8:100::10/128")]
    reported = [e for e in seen if isinstance(e, RoutesHeldBack)]
    assert [dict(e.held) for e in reported] == [held], seen


async def gtsm_scenario() -> tuple[str | None, State]:
    """A GTSM client against a peer that sends with the default TTL (64, on loopback)."""
    server_session = Session(cfg(65010, "192.0.2.1", 65020, passive=True))
    server_peer = BgpPeer(server_session, Transport(remote=LOOP))
    listener = BgpListener(["127.0.0.1"], 0, lambda transport, proto, remote: server_peer)
    await listener.start()
    server_peer.start()
    session = Session(
        SessionConfig(
            local_asn=65020,
            router_id=ipaddress.IPv4Address("192.0.2.2"),
            peer_asn=65010,
            open_hold_time=0.5,
            connect_retry_time=30,
        )
    )
    client = BgpPeer(
        session,
        Transport(LOOP, port=listener.bound[0][1], ttl_security=True, connect_timeout=0.5),
    )
    client.start()
    try:
        for _ in range(100):  # bounded: 10 s
            if session.last_error and "ttl_security" in session.last_error:
                break
            await asyncio.sleep(0.1)
        return session.last_error, session.state
    finally:
        await client.stop("done")
        await server_peer.stop("done")
        await listener.close()


def test_a_gtsm_session_that_never_hears_its_peer_says_why():
    """With ttl_security the kernel drops the peer's packets sent with TTL < 255 without a
    trace: the session's last error (what status shows) names GTSM and the counter to read."""
    error, state = asyncio.run(gtsm_scenario())
    assert error is not None and "ttl_security is on" in error, error
    assert "TcpExtTCPMinTTLDrop" in error
    assert state is not State.ESTABLISHED


def test_a_gtsm_session_whose_open_never_comes_says_why():
    """Connected, but the peer's OPEN is dropped by the kernel (its TTL < 255): the OpenSent
    hold timer expires, and the last error names GTSM (sans-IO session, no socket)."""

    async def main() -> tuple[str | None, list[object]]:
        session = Session(
            SessionConfig(
                local_asn=65020,
                router_id=ipaddress.IPv4Address("192.0.2.2"),
                peer_asn=65010,
                open_hold_time=3.0,
            )
        )
        seen: list[object] = []
        peer = BgpPeer(session, Transport(LOOP, ttl_security=True), lambda p, e: seen.append(e))
        session.start(0.0)
        session.connection_made(0.0)
        assert session.state is State.OPEN_SENT
        session.handle_timer(3.5)  # no OPEN from the peer within the OpenSent hold time
        peer._deliver_events()
        return session.last_error, seen

    error, seen = asyncio.run(main())
    assert error is not None and error.startswith("hold timer expired (ttl_security is on")
    assert any(isinstance(e, SessionDown) for e in seen)
