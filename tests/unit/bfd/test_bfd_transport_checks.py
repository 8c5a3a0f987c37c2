"""Reception checks of bgplb.io.bfd.BfdService without a peer: datagrams are fed to the
service's receive path with hand-made ancillary data (TTL, destination), as `recvmsg` returns
them. RFC 5881 §5 (single hop: TTL 255), RFC 5883 §2 (multihop: a minimum TTL per session),
RFC 5880 §6.3/§6.8.6 (Your Discriminator zero on an Up session)."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import struct
from collections.abc import Awaitable, Callable

import pytest

from bgplb.bfd import ControlPacket, State, encode_packet
from bgplb.io.bfd import IP_PKTINFO, BfdService
from bgplb.io.bgp_bfd import BfdLink

PEER, LOCAL = "127.0.0.1", "127.0.0.1"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _anc(ttl: int, dst: str = LOCAL) -> list[tuple[int, int, bytes]]:
    pktinfo = struct.pack("=i4s4s", 1, socket.inet_aton(dst), socket.inet_aton(dst))
    return [
        (socket.IPPROTO_IP, socket.IP_TTL, struct.pack("=i", ttl)),
        (socket.IPPROTO_IP, IP_PKTINFO, pktinfo),
    ]


def _pkt(state: State, my: int, your: int = 0) -> bytes:
    return encode_packet(
        ControlPacket(
            state=state,
            my_discriminator=my,
            your_discriminator=your,
            detect_mult=3,
            desired_min_tx_interval=1_000_000,
            required_min_rx_interval=100_000,
        )
    )


def _run(body: Callable[[BfdService], Awaitable[None]], **kw: int) -> None:
    async def main() -> None:
        port = _free_port()
        svc = BfdService(
            rng=random.Random(7),
            single_hop_port=port,
            multihop_port=port,
            listen_v4="127.0.0.1",
            timing="loop",  # the receive path, fed by hand: no timer may run meanwhile
            **kw,
        )
        try:
            await body(svc)
        finally:
            svc.close()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("min_ttl", "ttl", "accepted"),
    [
        (None, 1, False),
        (None, 253, False),
        (None, 254, True),
        (None, 255, True),
        (64, 64, True),
        (64, 63, False),
        (1, 1, True),
    ],
)
def test_multihop_minimum_ttl_per_session(min_ttl: int | None, ttl: int, accepted: bool) -> None:
    async def body(svc: BfdService) -> None:
        h = svc.request(PEER, LOCAL, True, 100, 3, min_ttl=min_ttl)
        svc._datagram(_pkt(State.DOWN, 77), _anc(ttl), (PEER, 49152), socket.AF_INET, True)
        info = h.info
        assert info is not None and info.min_ttl == (254 if min_ttl is None else min_ttl)
        if accepted:
            assert h.state == State.INIT and not svc.dropped
        else:
            assert h.state == State.DOWN and svc.dropped == {"ttl": 1}

    _run(body)


def test_multihop_service_default_and_shared_session_uses_the_strictest() -> None:
    async def body(svc: BfdService) -> None:
        loose = svc.request(PEER, LOCAL, True, 100, 3)
        strict = svc.request(PEER, LOCAL, True, 100, 3, min_ttl=250)
        assert svc.sessions()[0].min_ttl == 250
        svc._datagram(_pkt(State.DOWN, 77), _anc(200), (PEER, 49152), socket.AF_INET, True)
        assert svc.dropped == {"ttl": 1} and loose.state == State.DOWN
        strict.release()
        assert svc.sessions()[0].min_ttl == 10
        svc._datagram(_pkt(State.DOWN, 77), _anc(200), (PEER, 49152), socket.AF_INET, True)
        assert loose.state == State.INIT

    _run(body, multihop_min_ttl=10)


def test_single_hop_still_requires_255_whatever_min_ttl() -> None:
    async def body(svc: BfdService) -> None:
        h = svc.request(PEER, LOCAL, False, 100, 3, min_ttl=1)
        svc._datagram(_pkt(State.DOWN, 77), _anc(254), (PEER, 49152), socket.AF_INET, False)
        assert h.state == State.DOWN and svc.dropped == {"ttl": 1}

    _run(body)


def test_bad_min_ttl_is_refused() -> None:
    async def body(svc: BfdService) -> None:
        for bad in (0, 256):
            with pytest.raises(ValueError, match="min_ttl"):
                svc.request(PEER, LOCAL, True, 100, 3, min_ttl=bad)
        with pytest.raises(ValueError, match="min_ttl"):
            BfdService(multihop_min_ttl=0)

    _run(body)


def test_bfd_link_passes_min_ttl() -> None:
    async def body(svc: BfdService) -> None:
        link = BfdLink(
            svc,
            PEER,
            local=LOCAL,
            multihop=True,
            interval_ms=100,
            multiplier=3,
            on_down=lambda d: None,
            min_ttl=200,
        )
        assert link.status()["min_ttl"] == 200
        link.release()

    _run(body)


@pytest.mark.serial  # stays Up on 300 ms detection
def test_zero_your_discriminator_down_is_dropped_on_an_up_session() -> None:
    """Bring a session Up by hand (Down -> Init -> Up), then a forged Down with Your
    Discriminator 0 from the peer's address: dropped, the session stays Up."""

    async def body(svc: BfdService) -> None:
        h = svc.request(PEER, LOCAL, False, 100, 3)
        info = h.info
        assert info is not None
        ours = info.local_discriminator
        addr = (PEER, 49152)
        svc._datagram(_pkt(State.DOWN, 77), _anc(255), addr, socket.AF_INET, False)
        svc._datagram(_pkt(State.UP, 77, ours), _anc(255), addr, socket.AF_INET, False)
        assert h.state == State.UP
        svc._datagram(_pkt(State.DOWN, 77, 0), _anc(255), addr, socket.AF_INET, False)
        assert h.state == State.UP and svc.dropped == {"session_discard": 1}
        svc._datagram(_pkt(State.DOWN, 77, ours ^ 1), _anc(255), addr, socket.AF_INET, False)
        assert h.state == State.UP and svc.dropped["no_session"] == 1

    _run(body)


def test_listening_socket_gets_a_large_receive_buffer() -> None:
    """One socket receives every session's packets: its buffer must outlast a loop stall."""
    import socket

    from bgplb.io import bfd as iobfd

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        default = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        iobfd._large_receive_buffer(sock)
        got = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    assert got > default
    if os.geteuid() == 0:  # SO_RCVBUFFORCE: the kernel doubles the value it stores
        assert got >= iobfd.RECEIVE_BUFFER


@pytest.mark.serial  # real 1 s detection timers
def test_packets_queued_during_a_loop_stall_count_before_detection() -> None:
    """After our own event-loop stall, the peers' packets of that time wait in the socket; a
    wake-up reads 64 of them, so with many sessions most detection timers would fire first and
    take Up sessions Down although every peer kept sending. A late timer drains the socket."""
    import threading
    import time

    n = 100  # sessions: far more queued packets than one wake-up reads

    async def body(svc: BfdService) -> None:
        port = svc._ports[True]
        peers = [f"127.0.0.{i + 2}" for i in range(n)]
        handles = [svc.request(p, LOCAL, True, 100, 3, min_ttl=1) for p in peers]
        socks = []
        for p in peers:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((p, 0))
            socks.append(s)

        def send(state: State, your: list[int]) -> None:
            for i, s in enumerate(socks):
                s.sendto(
                    encode_packet(
                        ControlPacket(
                            state=state,
                            my_discriminator=1000 + i,
                            your_discriminator=your[i],
                            detect_mult=10,  # detection 1 s: robust to a slow host
                            desired_min_tx_interval=100_000,
                            required_min_rx_interval=100_000,
                            final=state is State.UP,
                        )
                    ),
                    (LOCAL, port),
                )

        try:
            send(State.DOWN, [0] * n)
            await asyncio.sleep(0.2)
            ours = {int(i.peer.split(".")[-1]) - 2: i.local_discriminator for i in svc.sessions()}
            mine = [ours[i] for i in range(n)]
            for _ in range(20):  # Up, and answer any Poll with Final, for 2 s
                send(State.UP, mine)
                await asyncio.sleep(0.1)
            assert all(h.state == State.UP for h in handles)
            stop = threading.Event()

            def keep_sending() -> None:  # the peers go on while our loop is stuck
                while not stop.is_set():
                    send(State.UP, mine)
                    time.sleep(0.05)

            sender = threading.Thread(target=keep_sending, daemon=True)
            sender.start()
            try:
                time.sleep(1.6)  # our stall: longer than the 1 s detection time
                await asyncio.sleep(0.5)
            finally:
                stop.set()
                sender.join(5)
            downs = sum(1 for h in handles if h.state != State.UP)
            assert downs == 0, f"{downs} of {n} sessions went Down after our own stall"
        finally:
            for s in socks:
                s.close()

    _run(body, multihop_min_ttl=1)
