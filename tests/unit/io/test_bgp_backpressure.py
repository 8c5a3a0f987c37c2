"""BgpPeer.pause_reading / resume_reading on loopback, the listener's saved SYN TTL and its
kernel-side GTSM, and the router's pure admission helpers (rate limit, log throttle)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import struct

import pytest

from bgplb.bgp.attributes import PathAttributes
from bgplb.bgp.families import IPV4_UNICAST
from bgplb.bgp.framing import frame
from bgplb.bgp.fsm import State
from bgplb.bgp.prefix import Prefix
from bgplb.bgp.session import RoutesReceived, Session, SessionConfig, SessionDown
from bgplb.io.bgp import BgpListener, BgpPeer, Transport
from bgplb.router.ranges import ConnectRate, LogThrottle

LOOP = ipaddress.IPv4Address("127.0.0.1")
VIP = Prefix.parse("198.51.100.10/32")


def cfg(asn: int, rid: str, peer_asn: int, passive: bool = False) -> SessionConfig:
    return SessionConfig(
        local_asn=asn,
        router_id=ipaddress.IPv4Address(rid),
        peer_asn=peer_asn,
        hold_time=3,  # keepalive every second: a paused reader would miss three
        passive=passive,
        connect_retry_time=0.2,
        idle_hold_time=0.2,
    )


async def wait(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def paused_scenario() -> None:
    received: list[Prefix] = []
    downs: list[SessionDown] = []

    def on_server(_peer: BgpPeer, event: object) -> None:
        if isinstance(event, RoutesReceived):
            received.extend(event.announced)
        if isinstance(event, SessionDown):
            downs.append(event)

    server = BgpPeer(Session(cfg(65010, "192.0.2.1", 65020, True)), Transport(LOOP), on_server)
    ttls: list[int | None] = []

    def accept(transport, proto, remote):  # type: ignore[no-untyped-def]
        ttls.append(proto.syn_ttl)
        return server

    listener = BgpListener(["127.0.0.1"], 0, accept, save_syn=True)
    await listener.start()
    port = listener.bound[0][1]
    server.start()
    client_downs: list[object] = []
    client = BgpPeer(
        Session(cfg(65020, "192.0.2.2", 65010)),
        Transport(LOOP, port=port),
        lambda _p, e: client_downs.append(e) if isinstance(e, SessionDown) else None,
    )
    client.start()
    try:
        await wait(lambda: server.session.state is State.ESTABLISHED)
        await wait(lambda: client.session.state is State.ESTABLISHED)
        assert ttls == [64]  # loopback SYN, default TTL
        server.pause_reading()
        assert server.reading_paused and server.session.hold_timer_paused
        assert server._proto is not None and server._proto.transport is not None
        assert not server._proto.transport.is_reading()
        client.session.announce(VIP, PathAttributes())
        client.kick()
        await asyncio.sleep(4.5)  # longer than the hold time of 3 s
        assert server.session.state is State.ESTABLISHED, downs
        assert client.session.state is State.ESTABLISHED, client_downs  # our KEEPALIVEs went out
        assert received == []  # nothing read while paused
        delivered = server.events_delivered
        server.resume_reading()
        assert not server.reading_paused
        await wait(lambda: VIP in received)
        assert server.events_delivered > delivered
        # the HoldTimer runs again: a silent client is detected
        client.pause_reading()
        client._cancel_all()  # stop the client's timers: no more KEEPALIVEs
        await wait(lambda: bool(downs), 8.0)
        assert downs[0].hold_expired
    finally:
        client.abort()
        await server.stop()
        await listener.close()


def test_pause_reading_keeps_session_and_resume_delivers() -> None:
    asyncio.run(paused_scenario())


async def gtsm_scenario() -> None:
    accepted: list[object] = []
    listener = BgpListener(["127.0.0.1"], 0, lambda *a: accepted.append(a), save_syn=True)
    await listener.start()
    port = listener.bound[0][1]
    loop = asyncio.get_running_loop()

    async def connect(ttl: int) -> bool:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", port)), 1.0)
            return True
        except TimeoutError:
            return False
        finally:
            sock.close()

    try:
        listener.set_gtsm(4, 1)
        assert not await connect(64)  # SYN dropped by the kernel
        assert await connect(255)
        listener.set_gtsm(4, None)
        assert await connect(64)
        await wait(lambda: len(accepted) == 2)
    finally:
        await listener.close()


def test_listener_gtsm_drops_low_ttl_syn() -> None:
    asyncio.run(gtsm_scenario())


async def syn_ttl_v6() -> list[int | None]:
    ttls: list[int | None] = []
    listener = BgpListener(["::1"], 0, lambda t, p, r: ttls.append(p.syn_ttl), save_syn=True)
    await listener.start()
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 200)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, ("::1", listener.bound[0][1]))
        await wait(lambda: bool(ttls))
    finally:
        sock.close()
        await listener.close()
    return ttls


def test_listener_reports_ipv6_syn_hop_limit() -> None:
    assert asyncio.run(syn_ttl_v6()) == [200]


async def foreign_family_scenario() -> list[Prefix]:
    received: list[Prefix] = []
    v4_only = SessionConfig(
        local_asn=65010,
        router_id=ipaddress.IPv4Address("192.0.2.1"),
        peer_asn=65020,
        passive=True,
        families=(IPV4_UNICAST,),
    )
    server = BgpPeer(
        Session(v4_only),
        Transport(LOOP),
        lambda _p, e: received.extend(e.announced) if isinstance(e, RoutesReceived) else None,
    )
    listener = BgpListener(["127.0.0.1"], 0, lambda *a: server)
    await listener.start()
    server.start()
    client = BgpPeer(
        Session(cfg(65020, "192.0.2.2", 65010)), Transport(LOOP, port=listener.bound[0][1])
    )
    client.start()
    try:
        await wait(lambda: server.session.state is State.ESTABLISHED)
        await wait(lambda: client.session.state is State.ESTABLISHED)
        nlri = b"\x40" + bytes.fromhex("20010db801000000")
        value = struct.pack("!HBB", 2, 1, 16) + bytes.fromhex("20010db8" + "00" * 11 + "01")
        value += b"\x00" + nlri
        attrs = b"\x40\x01\x01\x00\x40\x02\x00" + bytes((0x80, 14, len(value))) + value
        update = frame(2, struct.pack("!H", 0) + struct.pack("!H", len(attrs)) + attrs)
        assert client._proto is not None and client._proto.transport is not None
        client._proto.transport.write(update * 3)
        await wait(lambda: server.session.ignored_families.get((2, 1)) == 3)
        assert server.session.state is State.ESTABLISHED
    finally:
        client.abort()
        await server.stop()
        await listener.close()
    return received


def test_foreign_family_ignored_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "bgplb.bgp"):
        assert asyncio.run(foreign_family_scenario()) == []
    lines = [r.getMessage() for r in caplog.records if "AFI 2 SAFI 1" in r.getMessage()]
    assert len(lines) == 1, lines


def test_connect_rate_token_bucket() -> None:
    rate = ConnectRate(rate=1.0, burst=3, sources=2)
    assert [rate.allow("a", 0.0) for _ in range(4)] == [True, True, True, False]
    assert not rate.allow("a", 0.5)
    assert rate.allow("a", 1.6)
    assert rate.allow("b", 1.6) and rate.allow("c", 1.6)  # others are independent
    assert len(rate._buckets) <= 2  # bounded memory


def test_log_throttle(caplog: pytest.LogCaptureFixture) -> None:
    throttle = LogThrottle(interval=10.0)
    with caplog.at_level(logging.INFO, "bgplb.router"):
        assert throttle.log(0.0, "k", logging.WARNING, "refused %s", "x")
        assert not throttle.log(1.0, "k", logging.WARNING, "refused %s", "y")
        assert not throttle.log(2.0, "k", logging.WARNING, "refused %s", "z")
        assert throttle.log(2.0, "other", logging.WARNING, "other")
        assert throttle.log(11.0, "k", logging.WARNING, "refused %s", "w")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["refused x", "other", "refused w (2 similar line(s) suppressed)"]
