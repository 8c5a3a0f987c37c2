"""bgplb.io.bfd.BfdService with its timers in a thread (bgplb.io.bfd_timing.ThreadDriver), on
loopback UDP sockets: sessions come Up and go Down on the peer's silence, notifications run on
the loop's thread in order, a stalled loop does not take sessions down, close() joins the
thread. No assertion on speed: only states, order and bounds far above the detection time."""

from __future__ import annotations

import asyncio
import gc
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from bgplb.bfd import Diag, State
from bgplb.io.bfd import BfdService, Timing
from bgplb.io.bfd_timing import ThreadDriver, gc_pauses

pytestmark = pytest.mark.serial  # real BFD timers at 20 ms on loopback


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _until(what: str, pred: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def _bfd_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "bgplb-bfd"]


def _pair(port: int, timing: Timing = "thread", **kw: int) -> tuple[BfdService, BfdService]:
    a = BfdService(
        rng=random.Random(1), single_hop_port=port, listen_v4="127.0.0.1", timing=timing, **kw
    )
    b = BfdService(rng=random.Random(2), single_hop_port=port, listen_v4="127.0.1.1", timing=timing)
    return a, b


def test_up_then_peer_silent_goes_down_notified_on_the_loop_in_order() -> None:
    async def main() -> None:
        before = len(_bfd_threads())
        a, b = _pair(_free_port())
        seen: list[tuple[State, Diag, int]] = []
        try:
            h = a.request(
                "127.0.1.1",
                "127.0.0.1",
                False,
                20,
                3,
                lambda s, d: seen.append((s, d, threading.get_ident())),
            )
            hb = b.request("127.0.0.1", "127.0.1.1", False, 20, 3)
            await _until("Up", lambda: h.state == State.UP and hb.state == State.UP)
            assert len(_bfd_threads()) == before + 2  # one per service
            await _until("Up notified", lambda: any(s == State.UP for s, _, _ in seen))
            info = h.info
            assert info is not None
            await _until("fast rate", lambda: a.sessions()[0].tx_interval_ms == 20)
            b._driver.stop()  # b's host dies: no more packets, no AdminDown
            await _until("Down notified", lambda: seen[-1][0] == State.DOWN)
            states = [s for s, _, _ in seen]
            assert states[-1] == State.DOWN and State.UP in states
            assert states.index(State.UP) < len(states) - 1
            assert seen[-1][1] == Diag.CONTROL_DETECTION_TIME_EXPIRED
            assert {ident for _, _, ident in seen} == {threading.get_ident()}  # the loop's
            assert h.state == State.DOWN
            assert h.event_info is not None and h.event_info.state == State.DOWN
        finally:
            a.close()
            b.close()
        assert not any(t.is_alive() for t in _bfd_threads()[before:])

    asyncio.run(main())


@pytest.mark.parametrize("timing", ["thread", pytest.param("loop", marks=pytest.mark.xfail)])
def test_a_stalled_event_loop_does_not_take_sessions_down(timing: Timing) -> None:
    """The loop is blocked (time.sleep) for several detection times: with thread timing both
    services keep sending and reading, nothing goes Down. With loop timing nobody sends during
    the stall and the sessions fail after it (expected failure: the reason for the thread)."""

    async def main() -> None:
        a, b = _pair(_free_port(), timing)
        downs: list[Diag] = []

        def note(state: State, diag: Diag) -> None:
            if state == State.DOWN:
                downs.append(diag)

        try:
            h = a.request("127.0.1.1", "127.0.0.1", False, 50, 5, note)
            hb = b.request("127.0.0.1", "127.0.1.1", False, 50, 5, note)
            await _until("Up", lambda: h.state == State.UP and hb.state == State.UP)
            await _until("fast rate", lambda: a.sessions()[0].detection_time_ms == 250)
            sent = a.sessions()[0].packets_sent
            time.sleep(1.5)  # the loop is stuck: six detection times
            await asyncio.sleep(0.3)  # and the notifications it owes are delivered
            assert a.sessions()[0].packets_sent > sent
            assert downs == [] and h.state == State.UP and hb.state == State.UP
        finally:
            a.close()
            b.close()

    asyncio.run(main())


def test_close_joins_the_thread_and_is_idempotent() -> None:
    async def main() -> None:
        before = {t.ident for t in _bfd_threads()}
        svc = BfdService(single_hop_port=_free_port(), listen_v4="127.0.0.1")
        assert isinstance(svc._driver, ThreadDriver) and not svc._driver.alive  # lazy
        svc.request("127.0.1.9", "127.0.0.1", False, 20, 3)
        assert svc._driver.alive
        svc.close()
        svc.close()
        assert not svc._driver.alive
        assert {t.ident for t in _bfd_threads()} <= before
        with pytest.raises(RuntimeError, match="closed"):
            svc.request("127.0.1.9", "127.0.0.1", False, 20, 3)

    asyncio.run(main())


def test_release_sends_admin_down_and_stops_the_session_timer() -> None:
    async def main() -> None:
        a, b = _pair(_free_port())
        told: list[tuple[State, Diag]] = []
        try:
            h = a.request("127.0.1.1", "127.0.0.1", False, 20, 3)
            hb = b.request("127.0.0.1", "127.0.1.1", False, 20, 3, lambda s, d: told.append((s, d)))
            await _until("Up", lambda: h.state == State.UP and hb.state == State.UP)
            h.release()
            assert a.sessions() == [] and h.state == State.ADMIN_DOWN
            await _until("b told Down", lambda: bool(told) and told[-1][0] == State.DOWN)
            assert told[-1] == (State.DOWN, Diag.NEIGHBOR_SIGNALED_SESSION_DOWN)
            assert isinstance(a._driver, ThreadDriver) and a._driver._armed == {}
        finally:
            a.close()
            b.close()

    asyncio.run(main())


def test_bad_thread_options_are_refused() -> None:
    async def main() -> None:
        with pytest.raises(ValueError, match="priority"):
            BfdService(realtime_priority=0)
        with pytest.raises(ValueError, match="switch interval"):
            BfdService(switch_interval=0)
        with pytest.raises(ValueError, match="timing"):
            BfdService(timing="fast")

    asyncio.run(main())


def test_realtime_priority_applies_to_the_thread_only() -> None:
    async def main() -> None:
        svc = BfdService(single_hop_port=_free_port(), listen_v4="127.0.0.1", realtime_priority=5)
        try:
            svc.request("127.0.1.9", "127.0.0.1", False, 20, 3)
            await asyncio.sleep(0.1)
            driver = svc._driver
            assert isinstance(driver, ThreadDriver) and driver._thread is not None
            tid = driver._thread.native_id
            assert tid is not None
            policy = os.sched_getscheduler(tid)
            if os.geteuid() == 0:
                assert policy == os.SCHED_FIFO
                assert os.sched_getparam(tid).sched_priority == 5
            assert os.sched_getscheduler(0) == os.SCHED_OTHER  # not the loop's thread
        finally:
            svc.close()

    asyncio.run(main())


def test_gc_pauses_are_recorded() -> None:
    watch = gc_pauses()
    watch.read(reset=True)
    gc.collect()
    figures = watch.read()
    assert figures["collections"] >= 1 and figures["max_generation"] == 2
    assert watch.read(reset=True)["collections"] >= 1 and watch.read()["collections"] == 0


def test_router_service_reads_the_realtime_option_with_a_default() -> None:
    from types import SimpleNamespace

    from bgplb.config.agent import BfdProcessConfig
    from bgplb.router.bfd import make_service

    def config(**bfd: int) -> Any:
        return SimpleNamespace(bfd=BfdProcessConfig(**bfd))

    async def main() -> None:
        plain = make_service(config())
        fifo = make_service(config(realtime_priority=7))
        try:
            assert plain.timing == "thread" and fifo.timing == "thread"
            assert isinstance(plain._driver, ThreadDriver) and plain._driver._realtime is None
            assert isinstance(fifo._driver, ThreadDriver) and fifo._driver._realtime == 7
        finally:
            plain.close()
            fifo.close()

    asyncio.run(main())


class _FakeService:
    """The driver's view of a service: records the order of drains and timer calls."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.calls: list[object] = []

    def drain(self) -> None:
        self.calls.append("drain")

    def _on_timer(self, ep: object) -> None:
        self.calls.append(("timer", ep))

    def _on_readable(self, sock: socket.socket, family: int, multihop: bool) -> int:
        return 0

    def _is_live(self, ep: object) -> bool:
        return True


def test_the_thread_reads_queued_packets_before_judging_due_timers() -> None:
    """With 1,000 sessions a socket can hold more datagrams than one readiness event reads: a
    punctual detection timer must still see them first (else: a false Down, no lateness)."""

    async def main() -> None:
        fake = _FakeService()
        driver = ThreadDriver(fake, asyncio.get_running_loop())
        driver._thread = threading.current_thread()  # run its steps here, no thread started
        try:
            due, later, stale = object(), object(), object()
            now = time.monotonic()
            driver.arm(stale, now - 2)
            driver.arm(stale, now + 60)  # re-armed: the first deadline is stale
            driver.arm(due, now - 1)
            driver.arm(later, now + 60)
            driver._run_timers()
            assert fake.calls == ["drain", ("timer", due)]
            fake.calls.clear()
            driver._run_timers()  # nothing due: no drain either
            assert fake.calls == []
        finally:
            driver._thread = None
            driver.stop()

    asyncio.run(main())
