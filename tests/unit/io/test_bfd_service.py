"""bgplb.io.bfd.BfdService, the requesters' side: argument checks, one session shared by
several requests (the most demanding timers win, and are given back on release), a late
requester told the session's state, a failing or releasing callback, the counters and the
send-lateness statistics.

The service runs with `timing="loop"` on loopback; the peer (127.0.0.2) does not exist: its
packets are fed to the receive path by hand, with the ancillary data `recvmsg` would return,
so nothing here depends on real timer precision (the session's Detection Time is 3 s and each
test is over in milliseconds)."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import struct
from collections.abc import Awaitable, Callable

import pytest

from bgplb.bfd import ControlPacket, Diag, State, encode_packet
from bgplb.io.bfd import IP_PKTINFO, BfdService

LOCAL, PEER = "127.0.0.1", "127.0.0.2"  # nothing listens on PEER: our packets go nowhere
FROM_PEER = (PEER, 49152)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOCAL, 0))
        return int(s.getsockname()[1])


def _anc(ttl: int = 255, dst: str = LOCAL) -> list[tuple[int, int, bytes]]:
    pktinfo = struct.pack("=i4s4s", 1, socket.inet_aton(dst), socket.inet_aton(dst))
    return [
        (socket.IPPROTO_IP, socket.IP_TTL, struct.pack("=i", ttl)),
        (socket.IPPROTO_IP, IP_PKTINFO, pktinfo),
    ]


def _pkt(state: State, my: int, your: int = 0) -> bytes:
    """The peer's packet: it sends every second with multiplier 3 (our Detection Time: 3 s)."""
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


def _run(body: Callable[[BfdService], Awaitable[None]]) -> None:
    async def main() -> None:
        port = _free_port()
        svc = BfdService(
            rng=random.Random(11),
            single_hop_port=port,
            multihop_port=port,
            listen_v4=LOCAL,
            timing="loop",
        )
        try:
            await body(svc)
        finally:
            svc.close()

    asyncio.run(main())


def _bring_up(svc: BfdService, ours: int, peer_discr: int = 77) -> None:
    """The peer's side of the three-way handshake (RFC 5880 §6.2): Down, then Up."""
    svc._datagram(_pkt(State.DOWN, peer_discr), _anc(), FROM_PEER, socket.AF_INET, False)
    svc._datagram(_pkt(State.UP, peer_discr, ours), _anc(), FROM_PEER, socket.AF_INET, False)


def test_bad_requests_are_refused_with_the_reason() -> None:
    async def body(svc: BfdService) -> None:
        with pytest.raises(ValueError, match="different families"):
            svc.request("2001:db8::2", LOCAL)
        with pytest.raises(ValueError, match="bad BFD timers"):
            svc.request(PEER, LOCAL, interval_ms=0)
        with pytest.raises(ValueError, match="bad BFD timers"):
            svc.request(PEER, LOCAL, multiplier=256)
        with pytest.raises(ValueError):
            svc.request("not an address")
        assert svc.sessions() == []  # nothing half-created
        svc.close()
        with pytest.raises(RuntimeError, match="closed"):
            svc.request(PEER, LOCAL)

    _run(body)


def test_bad_timing_is_refused() -> None:
    async def body(svc: BfdService) -> None:
        with pytest.raises(ValueError, match="timing"):
            BfdService(timing="poll")  # type: ignore[arg-type]

    _run(body)


def test_shared_session_runs_the_most_demanding_timers_and_gives_them_back() -> None:
    async def body(svc: BfdService) -> None:
        slow = svc.request(PEER, LOCAL, interval_ms=300, multiplier=3)
        (info,) = svc.sessions()
        assert (info.desired_min_tx_ms, info.detect_mult, info.requests) == (300, 3, 1)
        fast = svc.request(PEER, LOCAL, interval_ms=50, multiplier=3)
        (info,) = svc.sessions()  # one session for both
        assert (info.desired_min_tx_ms, info.required_min_rx_ms, info.requests) == (50, 50, 2)
        # smallest interval x multiplier wins, not the smallest interval
        picky = svc.request(PEER, LOCAL, interval_ms=40, multiplier=5)
        assert svc.sessions()[0].desired_min_tx_ms == 50
        picky.release()
        fast.release()
        fast.release()  # twice: harmless
        (info,) = svc.sessions()
        assert (info.desired_min_tx_ms, info.detect_mult, info.requests) == (300, 3, 1)
        assert slow.state == State.DOWN
        slow.release()
        assert svc.sessions() == [] and slow.state == State.ADMIN_DOWN and slow.info is None

    _run(body)


def test_a_late_requester_is_told_the_session_is_already_up() -> None:
    async def body(svc: BfdService) -> None:
        first = svc.request(PEER, LOCAL, interval_ms=100, multiplier=3)
        assert first.info is not None
        _bring_up(svc, first.info.local_discriminator)
        assert first.state == State.UP
        seen: list[tuple[State, Diag]] = []
        late = svc.request(
            PEER, LOCAL, interval_ms=100, multiplier=3, notify=lambda s, d: seen.append((s, d))
        )
        assert seen == []  # on the loop, soon: never from inside request()
        for _ in range(3):
            await asyncio.sleep(0)
        assert seen == [(State.UP, Diag.NO_DIAGNOSTIC)]
        assert late.event_info is not None and late.event_info.state == State.UP

    _run(body)


def test_a_failing_callback_is_logged_and_the_others_are_still_told(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def body(svc: BfdService) -> None:
        def broken(state: State, diag: Diag) -> None:
            raise RuntimeError("requester bug")

        seen: list[State] = []
        a = svc.request(PEER, LOCAL, notify=broken)
        svc.request(PEER, LOCAL, notify=lambda s, d: seen.append(s))
        assert a.info is not None
        with caplog.at_level(logging.INFO, logger="bgplb.io.bfd"):
            _bring_up(svc, a.info.local_discriminator)
        assert seen == [State.INIT, State.UP]
        assert "BFD notify callback for 127.0.0.2 failed" in caplog.text
        assert "BFD 127.0.0.2: DOWN -> INIT" in caplog.text

    _run(body)


def test_a_requester_may_release_from_its_callback() -> None:
    """The last requester lets go when told Up: the session is removed at once (AdminDown sent)
    and the service does not touch it afterwards."""

    async def body(svc: BfdService) -> None:
        handles = []

        def on_change(state: State, diag: Diag) -> None:
            if state == State.UP:
                handles[0].release()

        handles.append(svc.request(PEER, LOCAL, notify=on_change))
        info = handles[0].info
        assert info is not None
        _bring_up(svc, info.local_discriminator)
        assert svc.sessions() == [] and handles[0].state == State.ADMIN_DOWN
        # the peer's next packet finds no session
        svc._datagram(
            _pkt(State.UP, 77, info.local_discriminator), _anc(), FROM_PEER, socket.AF_INET, False
        )
        assert svc.counters() == {"no_session": 1}

    _run(body)


def test_a_peer_that_changes_its_discriminator_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """RFC 5880 §6.3: the peer may change My Discriminator in a packet that carries ours; the
    session follows it (and stays Up), the change is logged."""

    async def body(svc: BfdService) -> None:
        h = svc.request(PEER, LOCAL)
        assert h.info is not None
        ours = h.info.local_discriminator
        _bring_up(svc, ours)
        with caplog.at_level(logging.INFO, logger="bgplb.io.bfd"):
            svc._datagram(_pkt(State.UP, 78, ours), _anc(), FROM_PEER, socket.AF_INET, False)
        assert "peer changed its discriminator to 78" in caplog.text
        assert h.info.remote_discriminator == 78 and h.state == State.UP

    _run(body)


def test_bad_datagrams_are_counted_by_reason_and_counters_is_a_copy() -> None:
    async def body(svc: BfdService) -> None:
        h = svc.request(PEER, LOCAL)
        good = _pkt(State.DOWN, 77)
        svc._datagram(good, [], FROM_PEER, socket.AF_INET, False)  # no TTL ancillary data
        svc._datagram(good[:10], _anc(), FROM_PEER, socket.AF_INET, False)  # truncated
        svc._datagram(b"\x00" * 24, _anc(), FROM_PEER, socket.AF_INET, False)  # version 0
        svc._datagram(good, _anc(), ("127.0.0.3", 49152), socket.AF_INET, False)  # stranger
        counts = svc.counters()
        assert counts == {"no_ttl": 1, "malformed": 2, "no_session": 1}
        counts["no_ttl"] = 100
        assert svc.counters()["no_ttl"] == 1
        assert h.state == State.DOWN  # none of them touched the session

    _run(body)


def test_send_lateness_is_reported_once_and_statistics_reset() -> None:
    """The first packet is due at once; the loop sends it when it runs the timer, a little
    after: one lateness sample, seen once by take_lateness() and by timing_stats() until a
    reset. (Only counts are asserted, never durations.)"""

    async def body(svc: BfdService) -> None:
        h = svc.request(PEER, LOCAL)
        for _ in range(100):
            if h.info is not None and h.info.packets_sent:
                break
            await asyncio.sleep(0.01)
        assert h.info is not None and h.info.packets_sent >= 1
        samples = svc.take_lateness()
        assert len(samples) >= 1 and all(s >= 0 for s in samples)
        assert svc.take_lateness() == []  # taken
        stats = svc.timing_stats(reset=True)
        assert stats["timing"] == "loop" and stats["packets"] >= 1
        assert stats["late_max_ms"] >= stats["late_p99_ms"] >= stats["late_p50_ms"] >= 0
        assert "collections" in stats["gc"]
        after = svc.timing_stats()
        assert after["packets"] == 0 and after["late_max_ms"] == 0.0

    _run(body)


def test_a_send_the_kernel_refuses_is_counted_not_raised() -> None:
    """BFD tolerates loss: a `sendto` error (here the limited broadcast address, refused
    without SO_BROADCAST, or unreachable) is counted by errno name."""

    async def body(svc: BfdService) -> None:
        h = svc.request("255.255.255.255")
        for _ in range(100):
            if any(k.startswith("send_") for k in svc.counters()):
                break
            await asyncio.sleep(0.01)
        assert any(k.startswith("send_") for k in svc.counters()), svc.counters()
        assert h.state == State.DOWN

    _run(body)


def test_close_is_idempotent_and_releases_every_handle() -> None:
    async def body(svc: BfdService) -> None:
        a = svc.request(PEER, LOCAL)
        b = svc.request("127.0.0.4", LOCAL)
        svc.close()
        svc.close()
        assert a.released and b.released and svc.sessions() == []
        a.release()  # after close: nothing left to release, no error

    _run(body)
