"""The router's admission of connections (router/ranges.py) on loopback, with raw clients:
RFC 4271 §6.8 against a session in OpenConfirm (both outcomes of the identifier rule), an
Established session left alone by a connection that never sends a valid OPEN, and the per-source
connection rate limit."""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any

from bgplb.bgp.capabilities import FourOctetAS, Multiprotocol
from bgplb.bgp.framing import MessageReader
from bgplb.bgp.fsm import State
from bgplb.bgp.messages import Keepalive, Notification, Open, decode, encode
from bgplb.config import RouterConfig
from bgplb.io.bgp import BgpListener
from bgplb.router.entry import Counters
from bgplb.router.ranges import CONNECT_BURST, PeerRanges

ROUTER_ID = ipaddress.IPv4Address("192.0.2.1")


class FakeRouter(PeerRanges):
    """PeerRanges alone: no RIB task reads its queue, no BFD."""

    def __init__(self) -> None:
        config = RouterConfig.model_validate(
            {
                "bgp": {"asn": 65530, "listen": ["127.0.0.1:1179"], "open_timeout": 2},
                "peer_ranges": [
                    {"prefix": "127.0.0.0/8", "asn": 65001, "accept": ["198.51.100.0/24 le 32"]}
                ],
            }
        )
        super().__init__(config, None, {}, Counters(), asyncio.Queue())
        self.router_id = ROUTER_ID


class Client:
    """A raw BGP client from a chosen loopback address."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.messages: list[Any] = []
        self.closed = False
        self._framer = MessageReader()

    @classmethod
    async def connect(cls, port: int, source: str) -> Client:
        r, w = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        return cls(r, w)

    def send_open(self, router_id: str) -> None:
        caps = (Multiprotocol(1, 1), FourOctetAS(65001))
        self.writer.write(encode(Open(65001, 30, ipaddress.IPv4Address(router_id), caps)))

    async def read(self, timeout: float = 1.0) -> None:
        """Read what arrives within `timeout` (or until the router closes)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not self.closed:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return
            try:
                data = await asyncio.wait_for(self.reader.read(65536), left)
            except TimeoutError:
                return
            except ConnectionResetError:
                data = b""
            if not data:
                self.closed = True
                return
            self._framer.feed(data)
            while (m := self._framer.next_message()) is not None:
                self.messages.append(decode(*m))

    def notifications(self) -> list[tuple[int, int]]:
        return [(m.code, m.subcode) for m in self.messages if isinstance(m, Notification)]

    def close(self) -> None:
        self.writer.close()


async def started() -> tuple[FakeRouter, int]:
    router = FakeRouter()
    listener = BgpListener(["127.0.0.1"], 0, router._on_accept, save_syn=True)  # any free port
    await listener.start()
    router.listeners.append(listener)
    router._install_gtsm()
    return router, listener.bound[0][1]


async def stop(router: FakeRouter) -> None:
    for entry in list(router.peers.values()):
        entry.peer.abort()
    for listener in router.listeners:
        await listener.close()


async def collision_in_open_confirm(remote_id: str) -> tuple[Client, Client, FakeRouter]:
    router, port = await started()
    first = await Client.connect(port, "127.0.0.2")
    first.send_open(remote_id)  # and never a KEEPALIVE: the router's session waits in OpenConfirm
    await first.read(0.3)
    entry = router.peers[ipaddress.IPv4Address("127.0.0.2")]
    assert entry.peer.session.state is State.OPEN_CONFIRM
    second = await Client.connect(port, "127.0.0.2")
    await second.read(0.2)
    assert router.peers[ipaddress.IPv4Address("127.0.0.2")] is entry  # no OPEN yet: apart
    second.send_open(remote_id)
    await second.read(0.5)
    await first.read(0.2)
    return first, second, router


def test_collision_with_open_confirm_higher_remote_id_keeps_existing() -> None:
    async def run() -> None:
        first, second, router = await collision_in_open_confirm("192.0.2.200")
        try:
            assert second.notifications() == [(6, 7)] and second.closed  # Cease/Collision
            assert first.notifications() == [] and not first.closed
            entry = router.peers[ipaddress.IPv4Address("127.0.0.2")]
            first.writer.write(encode(Keepalive()))
            await first.read(0.3)
            assert entry.peer.session.state is State.ESTABLISHED
        finally:
            first.close()
            second.close()
            await stop(router)

    asyncio.run(run())


def test_collision_with_open_confirm_lower_remote_id_takes_new() -> None:
    async def run() -> None:
        first, second, router = await collision_in_open_confirm("10.0.0.1")
        try:
            assert first.notifications() == [(6, 7)] and first.closed
            assert second.notifications() == [] and not second.closed
            second.writer.write(encode(Keepalive()))
            await second.read(0.3)
            entry = router.peers[ipaddress.IPv4Address("127.0.0.2")]
            assert entry.peer.session.state is State.ESTABLISHED
        finally:
            first.close()
            second.close()
            await stop(router)

    asyncio.run(run())


def test_established_session_untouched_until_valid_open_then_replaced() -> None:
    async def run() -> None:
        router, port = await started()
        address = ipaddress.IPv4Address("127.0.0.3")
        first = await Client.connect(port, "127.0.0.3")
        first.send_open("192.0.2.3")
        first.writer.write(encode(Keepalive()))
        await first.read(0.3)
        entry = router.peers[address]
        assert entry.peer.session.state is State.ESTABLISHED
        bare = await Client.connect(port, "127.0.0.3")
        await bare.read(2.6)  # open_timeout is 2 s
        assert bare.notifications() == [(4, 0)] and bare.closed
        assert router.peers[address] is entry
        assert entry.peer.session.state is State.ESTABLISHED and not first.closed
        restart = await Client.connect(port, "127.0.0.3")
        restart.send_open("192.0.2.3")
        await restart.read(0.3)
        await first.read(0.3)
        assert first.closed and first.notifications() == []  # closed, no NOTIFICATION (GR)
        assert router.peers[address] is not entry
        items = []
        while not router.queue.empty():
            items.append(router.queue.get_nowait())
        assert (entry, "replaced") in items
        first.close()
        bare.close()
        restart.close()
        await stop(router)

    asyncio.run(run())


def test_connection_rate_limited_per_source() -> None:
    async def run() -> None:
        router, port = await started()
        clients = []
        try:
            for _ in range(CONNECT_BURST + 1):
                c = await Client.connect(port, "127.0.0.4")
                await c.read(0.1)
                clients.append(c)
            assert all(c.messages for c in clients[:-1])  # each got the router's OPEN
            assert clients[-1].messages == [] and clients[-1].closed
            assert router.counters.refused_connections == 1
            other = await Client.connect(port, "127.0.0.5")  # another source is not limited
            await other.read(0.1)
            assert other.messages
            clients.append(other)
        finally:
            for c in clients:
                c.close()
            await stop(router)

    asyncio.run(run())


def test_abort_candidates_closes_waiting_connections() -> None:
    async def run() -> None:
        router, port = await started()
        first = await Client.connect(port, "127.0.0.6")
        first.send_open("192.0.2.6")
        first.writer.write(encode(Keepalive()))
        await first.read(0.3)
        waiting = await Client.connect(port, "127.0.0.6")
        await waiting.read(0.2)
        assert not waiting.closed
        router.abort_candidates()
        await waiting.read(0.5)
        await first.read(0.1)
        assert waiting.closed and not first.closed
        first.close()
        waiting.close()
        await stop(router)

    asyncio.run(run())
