"""The router requests BFD for a neighbor only once its BGP session is Established (RFC 5882
§4.3), not when the connection is accepted. In-process on loopback (harness:
test_daemon_supervision), with the BFD service replaced by a recorder."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from pathlib import Path
from typing import Any

import pytest
from test_daemon_supervision import Lab, until

from bgplb.bgp.capabilities import FourOctetAS, Multiprotocol
from bgplb.bgp.fsm import State
from bgplb.bgp.messages import Keepalive, Open, encode
from bgplb.router import bfd as router_bfd

BFD_RANGE = """allow_third_party_next_hop = true
bfd = { interval_ms = 300, multiplier = 3 }"""


class FakeLink:
    made: list[FakeLink] = []

    def __init__(self, service: Any, peer: str, **kw: Any) -> None:
        self.peer, self.kw = peer, kw
        self.interval_ms, self.multiplier = kw["interval_ms"], kw["multiplier"]
        self.released = False
        FakeLink.made.append(self)

    def release(self) -> None:
        self.released = True

    def status(self) -> dict[str, Any]:
        return {"state": "Down", "state_code": 1, "downs": 0}


class FakeService:
    def __init__(self, realtime_priority: int | None = None) -> None:
        self.realtime_priority = realtime_priority

    def close(self) -> None:
        pass


def test_bfd_is_requested_only_once_the_session_is_established(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    FakeLink.made = []
    monkeypatch.setattr(router_bfd, "BfdLink", FakeLink)
    monkeypatch.setattr(router_bfd, "BfdService", FakeService)

    async def main() -> None:
        async with Lab(tmp_path, monkeypatch, range_extra=BFD_RANGE) as lab:
            router = lab.router
            loop = asyncio.get_running_loop()
            sock = socket.socket()
            sock.bind(("127.0.0.6", 0))
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", lab.port))
            address = ipaddress.IPv4Address("127.0.0.6")
            hello = Open(
                asn=65006,
                hold_time=30,
                router_id=ipaddress.IPv4Address("192.0.2.6"),
                capabilities=(Multiprotocol(1, 1), FourOctetAS(65006)),
            )
            await loop.sock_sendall(sock, encode(hello))
            await until(
                lambda: (
                    address in router.peers
                    and router.peers[address].peer.session.state is State.OPEN_CONFIRM
                ),
                "OpenConfirm",
            )
            await asyncio.sleep(0.2)
            # accepted, OPEN exchanged, not Established: no BFD yet
            assert router.peers[address].bfd is None
            assert FakeLink.made == [] and router.bfd.service is None
            await loop.sock_sendall(sock, encode(Keepalive()))
            await until(lambda: FakeLink.made, "BFD requested")
            (link,) = FakeLink.made
            assert router.peers[address].peer.session.state is State.ESTABLISHED
            assert link.peer == "127.0.0.6" and link.kw["local"] == "127.0.0.1"
            assert link.kw["multihop"] is True  # 127.0.0.6 is not in a connected subnet
            assert router.peers[address].bfd is link
            sock.close()  # the session ends: the request is released
            await until(lambda: link.released, "BFD released")

    asyncio.run(main())


def test_an_exception_in_the_bfd_down_callback_is_an_internal_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BFD Down runs the router's callback; if it raises, the peer is reset all the same and
    the error is counted, the BFD service is not disturbed."""
    FakeLink.made = []
    monkeypatch.setattr(router_bfd, "BfdLink", FakeLink)
    monkeypatch.setattr(router_bfd, "BfdService", FakeService)

    def broken_tear_down(peer: Any) -> bool:
        raise RuntimeError("tear_down is broken")

    monkeypatch.setattr(router_bfd, "tear_down", broken_tear_down)

    async def main() -> None:
        async with Lab(tmp_path, monkeypatch, range_extra=BFD_RANGE) as lab:
            client = await lab.client(2)
            client.announce("198.51.100.10/32")
            await until(lambda: lab.hops() == ["192.0.2.2"], "the VIP")
            (link,) = FakeLink.made
            link.kw["on_down"](1)  # what BfdLink does on Up -> Down (diag 1)
            assert lab.router.counters.internal_errors == {"bfd": 1}
            await asyncio.wait_for(client.down.wait(), 10)
            assert lab.hops() == []

    asyncio.run(main())
