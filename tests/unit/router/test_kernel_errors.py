"""KernelSide when the kernel misbehaves: every failure is logged and counted, never raised into
the RIB task, and the kernel watcher's exceptions go to the handler it was given. MemoryFib
with injected failures; the connected-subnets poll with a fake reader."""

from __future__ import annotations

import asyncio
import logging
from ipaddress import ip_address, ip_network
from typing import Any

import pytest
from test_kernel_side import FakeRouter

from bgplb.bgp.prefix import Prefix
from bgplb.linux.memfib import MemoryKernel
from bgplb.router import kernel as kernel_module
from bgplb.router.rib import Connected

A = ip_address("192.0.2.10")


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_watcher_exceptions_go_to_the_handler_or_up(monkeypatch: pytest.MonkeyPatch) -> None:
    router = FakeRouter(MemoryKernel())
    errors: list[tuple[str, BaseException]] = []

    def broken() -> None:
        raise RuntimeError("watcher bug")

    monkeypatch.setattr(router, "_kernel_events", broken)
    with pytest.raises(RuntimeError):
        router._watch()  # no handler: raised (asyncio's handler counts it)
    router.on_error = lambda task, exc: errors.append((task, exc))
    router._watch()
    assert errors and errors[0][0] == "kernel-watch"


def test_kernel_failures_are_counted_and_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    router = FakeRouter(MemoryKernel())
    fib = router.memfib

    def boom(*args: Any, **kw: Any) -> Any:
        raise OSError("netlink went away")

    async def go() -> None:
        router._kernel_events()  # no FIB yet: nothing to read
        router._open_fib(fib)
        # reading the notifications fails
        monkeypatch.setattr(fib, "poll_events", boom)
        router._kernel_events()
        assert router.counters.fib_errors == 1
        # the re-install after lost notifications fails
        monkeypatch.setattr(fib, "poll_events", lambda: True)
        monkeypatch.setattr(fib, "resync", boom)
        router._kernel_events()
        router._kernel_events()  # coalesced into the running one
        task = router._fib_resync_task
        assert task is not None
        await task
        assert router.counters.fib_errors == 2 and router._fib_resync_task is None
        # the apply fails: counted, the RIB task goes on
        monkeypatch.setattr(fib, "update", boom)
        router.announce(str(A), [Prefix.parse("198.51.100.1/32")])
        await router._sync_fib()
        assert router.counters.fib_errors == 3 and router.counters.fib_applies == 0
        # the clean-up at exit fails: logged, the FIB is closed all the same
        monkeypatch.setattr(fib, "cleanup", boom)
        router._close_fib()
        assert router.fib is None
        router._close_fib()  # twice: nothing

    with caplog.at_level(logging.ERROR, "bgplb.router"):
        run(go())
    text = caplog.text
    assert "reading kernel notifications failed" in text
    assert "re-install failed" in text
    assert "apply failed" in text
    assert "cleanup failed" in text


def test_fib_status_without_a_running_loop_and_closed() -> None:
    router = FakeRouter(MemoryKernel())
    assert router.fib_status() == {"installed": False}

    async def open_it() -> None:
        router._open_fib(router.memfib)

    run(open_it())

    def loop_time() -> float:
        return asyncio.get_running_loop().time()

    router._fib_now = loop_time  # type: ignore[method-assign]
    status = router.fib_status()  # no loop: the monotonic clock
    assert status["deferring"] is False and status["next_retry_in"] is None


def test_the_connected_subnets_are_polled(monkeypatch: pytest.MonkeyPatch) -> None:
    router = FakeRouter(MemoryKernel())
    subnet = Connected(ip_network("198.18.0.0/24"), 3, ip_address("198.18.0.1"))
    reads: list[int] = []

    def read() -> list[Connected]:
        reads.append(1)
        if len(reads) == 1:
            raise OSError("netlink trouble")  # the last view is kept
        return [subnet]

    monkeypatch.setattr(kernel_module, "CONNECTED_POLL", 0.001)
    monkeypatch.setattr(kernel_module, "read_connected", read)

    async def go() -> None:
        task = asyncio.get_running_loop().create_task(router._connected_task())
        item = await asyncio.wait_for(router.queue.get(), 5)
        task.cancel()
        assert item == (None, "connected")

    run(go())
    assert router.connected == [subnet] and len(reads) >= 2
    assert router.rib.resolve(ip_address("198.18.0.7")) is not None
