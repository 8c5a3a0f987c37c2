"""bgplb.io.bfd.BfdService over real UDP sockets on loopback (RFC 5881 transport rules).

Services listen on distinct loopback addresses (127.0.0.1, 127.0.1.x) and a random
unprivileged port so that several can share this namespace; no root needed.
"""

from __future__ import annotations

import asyncio
import random
import socket

import pytest
from bfdlab import free_port, until

from bgplb.bfd import ControlPacket, Diag, State, decode_packet, encode_packet
from bgplb.io.bfd import BfdService

pytestmark = pytest.mark.serial  # BFD detection at 50 ms x 3 on loopback


def test_shared_session_release_and_admin_down() -> None:
    async def main() -> None:
        port = free_port()
        a = BfdService(rng=random.Random(1), single_hop_port=port, listen_v4="127.0.0.1")
        b = BfdService(rng=random.Random(2), single_hop_port=port, listen_v4="127.0.1.1")
        seen_a1: list[tuple[State, Diag]] = []
        seen_a2: list[tuple[State, Diag]] = []
        seen_b: list[tuple[State, Diag]] = []
        try:
            h1 = a.request(
                "127.0.1.1", "127.0.0.1", False, 300, 3, lambda s, d: seen_a1.append((s, d))
            )
            hb = b.request(
                "127.0.0.1", "127.0.1.1", False, 50, 3, lambda s, d: seen_b.append((s, d))
            )
            await until("Up", lambda: h1.state == State.UP and hb.state == State.UP)
            # A second requester shares the session, is told it is Up, and its faster timers
            # are applied with a Poll Sequence.
            h2 = a.request(
                "127.0.1.1", "127.0.0.1", False, 50, 3, lambda s, d: seen_a2.append((s, d))
            )
            assert len(a.sessions()) == 1 and a.sessions()[0].requests == 2
            await until("h2 notified", lambda: seen_a2 == [(State.UP, Diag.NO_DIAGNOSTIC)])
            await until("fast timers", lambda: a.sessions()[0].tx_interval_ms == 50)
            assert a.sessions()[0].detection_time_ms == 150
            # Releasing one keeps the session; releasing the last takes it AdminDown.
            h2.release()
            await until("slow again", lambda: a.sessions()[0].tx_interval_ms == 300)
            assert h1.state == State.UP
            h1.release()
            assert a.sessions() == []
            # Notifications reach the loop after the state changed (timing thread).
            await until("b told Down", lambda: bool(seen_b) and seen_b[-1][0] == State.DOWN)
            assert hb.state == State.DOWN
            assert seen_b[-1] == (State.DOWN, Diag.NEIGHBOR_SIGNALED_SESSION_DOWN)
            info = hb.info
            assert info is not None and info.remote_state == State.ADMIN_DOWN
            assert (State.UP, Diag.NO_DIAGNOSTIC) in seen_a1
        finally:
            a.close()
            b.close()

    asyncio.run(main())


def test_source_port_range_and_ttl_255_sent() -> None:
    async def main() -> None:
        port = free_port()
        listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        listener.bind(("127.0.1.2", port))
        listener.setsockopt(socket.IPPROTO_IP, 12, 1)  # IP_RECVTTL
        listener.setblocking(False)
        svc = BfdService(rng=random.Random(3), single_hop_port=port, listen_v4="127.0.0.1")
        try:
            svc.request("127.0.1.2", "127.0.0.1", False, 100, 3)
            loop = asyncio.get_running_loop()
            data, anc, _, addr = await asyncio.wait_for(
                loop.run_in_executor(None, _recvmsg_blocking, listener), 5
            )
            assert 49152 <= addr[1] <= 65535
            [(_, _, ttl)] = [c for c in anc if c[1] == socket.IP_TTL]
            assert int.from_bytes(ttl[:4], "little") == 255
            pkt = decode_packet(data)
            assert pkt.state == State.DOWN and pkt.your_discriminator == 0
        finally:
            svc.close()
            listener.close()

    asyncio.run(main())


def _recvmsg_blocking(
    sock: socket.socket,
) -> tuple[bytes, list[tuple[int, int, bytes]], int, tuple[str, int]]:
    sock.setblocking(True)
    sock.settimeout(5)
    return sock.recvmsg(512, 256)  # type: ignore[return-value]


@pytest.mark.parametrize(("ttl", "accepted"), [(64, False), (254, False), (255, True)])
def test_single_hop_drops_ttl_below_255(ttl: int, accepted: bool) -> None:
    async def main() -> None:
        port = free_port()
        svc = BfdService(rng=random.Random(4), single_hop_port=port, listen_v4="127.0.0.1")
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            h = svc.request("127.0.1.3", "127.0.0.1", False, 100, 3)
            sender.bind(("127.0.1.3", 0))
            sender.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
            pkt = ControlPacket(
                state=State.DOWN,
                my_discriminator=77,
                detect_mult=3,
                desired_min_tx_interval=1_000_000,
                required_min_rx_interval=100_000,
            )
            sender.sendto(encode_packet(pkt), ("127.0.0.1", port))
            sender.sendto(b"garbage", ("127.0.0.1", port))
            await until("packets handled", lambda: sum(svc.dropped.values()) >= 1 + (not accepted))
            await asyncio.sleep(0.05)
            if accepted:
                assert h.state == State.INIT and svc.dropped == {"malformed": 1}
            else:
                assert h.state == State.DOWN and svc.dropped["ttl"] == 2
        finally:
            svc.close()
            sender.close()

    asyncio.run(main())
