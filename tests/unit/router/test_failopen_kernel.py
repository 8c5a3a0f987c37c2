"""Fail open in the router's kernel side (KernelSide + Rib with fail-open on MemoryFib, fake
clock): servers failing together keep their nexthops and buckets; one failing among others
leaves the groups at the end of the batch (the fast path, decided once the batch is in)."""

from __future__ import annotations

import asyncio
from ipaddress import ip_address, ip_network

import pytest

from bgplb.bgp.attributes import PathAttributes
from bgplb.bgp.prefix import Prefix
from bgplb.config.router import FibConfig
from bgplb.linux.memfib import MemoryFib, MemoryKernel
from bgplb.router.entry import Counters
from bgplb.router.failopen import BFD_DOWN, HOLD_EXPIRED, FailOpen
from bgplb.router.kernel import KernelSide
from bgplb.router.rib import Connected, Rib

IFINDEX = 7
SUBNET = ip_network("192.0.2.0/24")
A, B, C = (ip_address(f"192.0.2.{i}") for i in (10, 11, 12))
VIPS = [Prefix.parse(f"198.51.100.{i}/32") for i in range(1, 21)]
SOLO = [Prefix.parse(f"198.51.100.{i}/32") for i in range(101, 104)]  # A alone


class FakeRouter(KernelSide):
    def __init__(self, kernel: MemoryKernel, fail_open: bool) -> None:
        rib = Rib(
            [Connected(SUBNET, IFINDEX, ip_address("192.0.2.1"))],
            max_stale_time=120,
            fail_open=FailOpen(9.0, 0.5) if fail_open else None,
        )
        super().__init__(FibConfig(), rib, Counters(), asyncio.Queue())
        self.clock = 100.0
        self.memfib = MemoryFib(kernel, buckets=32, clock=lambda: self.clock)

    def _fib_now(self) -> float:
        return self.clock

    def announce(self, peer: str, vips: list[Prefix]) -> None:
        if peer not in self.rib.peers:
            self.rib.peer_up(peer, self.clock, asn=65001, source=ip_address(peer))
        self.rib.update(peer, vips, PathAttributes(next_hop=ip_address(peer)), [], self.clock)

    def fail(self, peer: str, kind: str = BFD_DOWN) -> None:
        """What the RIB task does with a failed session (daemon._handle)."""
        self._fib_peer_lost(peer, False, kind)
        self.rib.peer_down(peer, self.clock, graceful=False, failure=kind)


def forwarding(kernel: MemoryKernel) -> dict[str, set[object]]:
    return {str(k): set(v) for k, v in kernel.forwarding().items()}


def loaded(
    kernel: MemoryKernel, fail_open: bool = True, solo: bool = True, vips: list[Prefix] = VIPS
) -> FakeRouter:
    router = FakeRouter(kernel, fail_open)

    async def go() -> None:
        router._open_fib(router.memfib)
        for peer in (A, B, C):
            router.announce(str(peer), vips)
        if solo:
            router.announce(str(A), SOLO)
        await router._sync_fib()

    asyncio.run(go())
    return router


def buckets_of(kernel: MemoryKernel, vip: Prefix) -> list[int]:
    return list(kernel.nexthops[kernel.routes[(254, vip.network)].nh_id].buckets)


MANY = [Prefix.parse(f"198.18.{i // 256}.{i % 256}/32") for i in range(300)]


@pytest.mark.parametrize("vips", [VIPS, MANY], ids=["20", "300"])  # 300: the regroup path
def test_all_failing_in_one_batch_keeps_groups_and_buckets(vips: list[Prefix]) -> None:
    kernel = MemoryKernel()
    router = loaded(kernel, vips=vips)
    before = forwarding(kernel)
    buckets = buckets_of(kernel, vips[0])

    async def batch() -> None:
        for peer in (A, B, C):
            router.fail(str(peer), BFD_DOWN if peer != C else HOLD_EXPIRED)
        router.rib.fail_open_check(router.clock)
        await router._sync_fib()

    asyncio.run(batch())
    assert forwarding(kernel) == before
    assert buckets_of(kernel, vips[0]) == buckets  # no flow moved
    assert router.fib_status()["fast_drops"] == 0
    assert router.rib.fail_open_vips == len(vips) + len(SOLO)


def test_same_batch_without_fail_open_blackholes() -> None:
    kernel = MemoryKernel()
    router = loaded(kernel, fail_open=False)

    async def batch() -> None:
        for peer in (A, B, C):
            router.fail(str(peer))
        await router._sync_fib()

    asyncio.run(batch())
    assert forwarding(kernel) == {}


def test_one_failure_among_others_still_leaves_at_once() -> None:
    kernel = MemoryKernel()
    router = loaded(kernel, solo=False)

    async def batch() -> None:
        router.fail(str(A))
        router.rib.fail_open_check(router.clock)
        await router._sync_fib()

    asyncio.run(batch())
    assert forwarding(kernel) == {str(v.network): {B, C} for v in VIPS}
    assert router.fib_status()["fast_drops"] == 1  # the group-level removal, as without
    assert router.rib.fail_open.event is None  # type: ignore[union-attr]


def test_a_server_alone_on_some_vips_is_kept_there_only() -> None:
    kernel = MemoryKernel()
    router = loaded(kernel)

    async def batch() -> None:
        router.fail(str(A))
        router.rib.fail_open_check(router.clock)
        await router._sync_fib()

    asyncio.run(batch())
    fwd = forwarding(kernel)
    assert all(fwd[str(v.network)] == {B, C} for v in VIPS)  # failed over
    assert all(fwd[str(v.network)] == {A} for v in SOLO)  # its only server: kept
    assert router.rib.fail_open_vips == len(SOLO)
