"""The router's connection-pinning runtime without root: the real planner and the real
in-memory FIB (MemoryFib), an in-memory stand-in for the kernel's pins (rules, tables, nftables
marks), and the module hooks the router calls (open, sync, due, status, close)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from ipaddress import ip_address
from types import SimpleNamespace
from typing import Any

import pytest

from bgplb.bgp.prefix import Prefix
from bgplb.config.router import FibConfig
from bgplb.linux.memfib import MemoryFib, MemoryKernel
from bgplb.linux.nftables import PinMark
from bgplb.linux.pinroutes import PinSpec
from bgplb.router import pinning_runtime as runtime
from bgplb.router.rib import FibNexthop
from bgplb.router.status import PinningStatus, plain

A, B = ip_address("192.0.2.10"), ip_address("192.0.2.11")
VIP1, VIP2 = Prefix.parse("198.51.100.1/32"), Prefix.parse("198.51.100.2/32")
IFINDEX = 7


class MemoryPins:
    """What KernelPins holds, in memory; `fail` makes the next call of that name raise."""

    def __init__(self, marks: Sequence[PinMark] = ()) -> None:
        self.marks = list(marks)
        self.pins: list[PinSpec] = []
        self.history: list[list[PinSpec]] = []
        self.cleaned = self.closed = False
        self.src_valid_mark_checks = 0
        self.conntrack: dict[int, int] = {}
        self.fail: set[str] = set()

    def _maybe_fail(self, name: str) -> None:
        if name in self.fail:
            self.fail.discard(name)
            raise OSError(f"{name} failed")

    def installed_marks(self) -> list[PinMark]:
        self._maybe_fail("installed_marks")
        return list(self.marks)

    def apply(self, pins: Sequence[PinSpec]) -> int:
        self._maybe_fail("apply")
        self.pins = list(pins)
        self.history.append(list(pins))
        return len(pins)

    def ensure_src_valid_mark(self) -> bool:
        self.src_valid_mark_checks += 1
        return False

    def counts(self) -> dict[int, int]:
        self._maybe_fail("counts")
        return dict(self.conntrack)

    def cleanup(self) -> int:
        self._maybe_fail("cleanup")
        self.cleaned = True
        self.pins = []
        return 1

    def close(self) -> None:
        self.closed = True


def nexthop(address: Any, *, draining: bool = False, peer: str | None = None) -> FibNexthop:
    return FibNexthop(address, IFINDEX, 1, draining, False, (peer or str(address),))


def make_router(
    pins: MemoryPins, **fib: Any
) -> tuple[SimpleNamespace, runtime.RouterPinning, MemoryKernel]:
    config = FibConfig(pinning=True, drain_linger=30.0, **fib)
    kernel = MemoryKernel()
    memfib = MemoryFib(kernel, buckets=16)
    pinning = runtime.RouterPinning(config, kernel=pins)
    peers = {str(A): SimpleNamespace(established=True), str(B): SimpleNamespace(established=True)}
    router = SimpleNamespace(
        config=SimpleNamespace(fib=config),
        fib=memfib,
        pinning=pinning,
        rib=SimpleNamespace(peers=peers),
        queue=asyncio.Queue(),
    )
    return router, pinning, kernel


# the kernel side's calls (bgplb.router.kernel.KernelSide), on the fake router
async def sync(router: SimpleNamespace, changes: Any, now: float) -> Any:
    return await runtime.sync(
        router.fib,
        router.pinning,
        changes,
        now,
        lambda: {k for k, s in router.rib.peers.items() if s.established},
        lambda: router.queue.put_nowait((None, "pinning")),
    )


def status(router: SimpleNamespace, counts: bool = True) -> PinningStatus:
    return runtime.status(router.pinning, counts)


def due(router: SimpleNamespace) -> bool:
    return runtime.due(router.pinning, time.monotonic())


def close(router: SimpleNamespace) -> None:
    runtime.close(router.pinning, keep=router.config.fib.keep_on_exit)
    router.pinning = None


def open_pinning(router: SimpleNamespace) -> None:
    router.pinning = runtime.open(router.config.fib)


def forwarding(kernel: MemoryKernel) -> dict[str, set[Any]]:
    return {str(k): set(v) for k, v in kernel.forwarding().items()}


def test_pins_are_installed_around_the_group_change_and_drained_servers_linger() -> None:
    pins = MemoryPins()
    router, pinning, kernel = make_router(pins)

    async def go() -> None:
        t = asyncio.get_running_loop().time()  # `due` compares with the loop's clock
        # two servers: both pinned, both in the groups
        changes = {VIP1: (nexthop(A), nexthop(B)), VIP2: (nexthop(A),)}
        await sync(router, changes, t)
        assert {p.gateway for p in pins.pins} == {A, B}
        assert forwarding(kernel) == {str(VIP1.network): {A, B}, str(VIP2.network): {A}}
        assert pins.src_valid_mark_checks == 1
        # B drains: it leaves the group at once, its pin stays (connections keep flowing)
        await sync(router, {VIP1: (nexthop(A), nexthop(B, draining=True))}, t + 1)
        assert forwarding(kernel)[str(VIP1.network)] == {A}
        assert B in {p.gateway for p in pins.pins}
        # B withdraws: its pin lingers for drain_linger, then goes; the RIB task is woken
        await sync(router, {VIP1: (nexthop(A),)}, t + 2)
        states = status(router, counts=False).servers or ()
        assert {s.address: s.vips for s in states}[str(B)] == {str(VIP1.network): "linger"}
        assert not due(router)  # nothing due before the deadline
        assert pinning.planner.next_deadline() == pytest.approx(t + 32)
        await sync(router, {}, t + 33)
        assert {p.gateway for p in pins.pins} == {A}
        close(router)

    asyncio.run(go())
    assert pins.cleaned and pins.closed and router.pinning is None


def test_status_counts_connections_per_mark_and_survives_conntrack_trouble(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pins = MemoryPins()
    router, _, _ = make_router(pins)

    async def go() -> None:
        await sync(router, {VIP1: (nexthop(A),)}, 100.0)

    asyncio.run(go())
    (pin,) = pins.pins
    pins.conntrack = {pin.mark: 5, 0x00FE0000: 2}  # 2 connections of a mark no server holds
    st = status(router)
    assert st.enabled is True and st.orphan_connections == 2
    (server,) = st.servers or ()
    assert server.connections == 5 and server.mark == f"{pin.mark:#x}"
    pins.fail.add("counts")
    with caplog.at_level(logging.DEBUG, "bgplb.router"):
        st = status(router)
    assert (st.servers or ())[0].connections == 0 and "conntrack counts" in caplog.text
    assert runtime.status(None) == PinningStatus(enabled=False)
    assert plain(runtime.status(None)) == {"enabled": False}


def test_adopted_slots_keep_their_marks_after_a_restart() -> None:
    """A restart finds our nftables rules: the same server gets the same slot (and mark), so
    the conntrack marks of its established connections keep meaning it."""
    old = MemoryPins()
    router, _, _ = make_router(old)

    async def first() -> None:
        await sync(router, {VIP1: (nexthop(B),), VIP2: (nexthop(A),)}, 100.0)

    asyncio.run(first())
    marks = [PinMark(p.gateway, p.oif, p.mark, p.slot) for p in old.pins]

    pins = MemoryPins(marks)
    router, pinning, _ = make_router(pins)

    async def second() -> None:
        pinning.adopt()
        # the servers come back in the other order: the slots stay theirs
        await sync(router, {VIP2: (nexthop(A),), VIP1: (nexthop(B),)}, 200.0)

    asyncio.run(second())
    assert {(p.gateway, p.mark) for p in pins.pins} == {(m.gateway, m.mark) for m in marks}


def test_errors_are_logged_and_close_keeps_the_pins_when_asked(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    pins = MemoryPins()
    pins.fail.add("installed_marks")
    router, _, _ = make_router(pins, keep_on_exit=True)
    router.pinning = None
    real = runtime.RouterPinning
    monkeypatch.setattr(runtime, "RouterPinning", lambda config: real(config, kernel=pins))
    with caplog.at_level(logging.ERROR, "bgplb.router"):
        asyncio.run(_open(router))
    assert "reading our nftables table failed" in caplog.text
    assert router.pinning is not None  # pinning still runs: it starts without adopted slots
    close(router)
    assert not pins.cleaned and pins.closed  # keep_on_exit: rules and tables stay

    monkeypatch.undo()
    pins = MemoryPins()
    pins.fail.add("cleanup")
    router, _, _ = make_router(pins)
    with caplog.at_level(logging.ERROR, "bgplb.router"):
        close(router)
    assert "pinning: cleanup failed" in caplog.text and pins.closed
    close(router)  # closing twice is harmless


async def _open(router: SimpleNamespace) -> None:
    open_pinning(router)


def test_a_sync_after_close_does_nothing_and_pinning_off_is_plain() -> None:
    pins = MemoryPins()
    router, pinning, kernel = make_router(pins)
    pinning.close(keep=False)

    async def go() -> None:
        result = await sync(router, {VIP1: (nexthop(A),)}, 100.0)
        assert result.ops == [] and pins.history == []
        # without pinning the FIB gets the changes as they are
        router.pinning = None
        await sync(router, {VIP1: (nexthop(A),)}, 100.0)

    asyncio.run(go())
    assert forwarding(kernel) == {str(VIP1.network): {A}}
    assert runtime.open(FibConfig(pinning=False)) is None
    assert runtime.due(None, 0.0) is False


def test_no_free_slot_is_reported_and_a_gone_vip_leaves_the_plan(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One pin table: the second server gets no slot (a warning, once, and in the status); a
    VIP withdrawn leaves the planner's input; a linger timer is cancelled at close."""
    pins = MemoryPins()
    router, pinning, kernel = make_router(pins, pin_tables=(20000, 20000))

    async def go() -> None:
        t = asyncio.get_running_loop().time()
        with caplog.at_level(logging.WARNING, "bgplb.router"):
            await sync(router, {VIP1: (nexthop(A),), VIP2: (nexthop(B),)}, t)
            await sync(router, {VIP1: (nexthop(A),), VIP2: (nexthop(B),)}, t)
        assert caplog.text.count("pinning: ") == 1
        assert status(router, counts=False).refused
        await sync(router, {VIP2: ()}, t + 1)
        assert set(pinning.entries) == {VIP1.network}
        assert forwarding(kernel) == {str(VIP1.network): {A}}
        await sync(router, {VIP1: (nexthop(A, draining=True),)}, t + 2)
        await sync(router, {VIP1: ()}, t + 3)  # A lingers: a timer wakes the RIB task
        assert pinning._timer is not None
        close(router)
        assert pinning._timer.cancelled()

    asyncio.run(go())
