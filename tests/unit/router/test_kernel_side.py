"""The router's kernel glue (bgplb.router.kernel.KernelSide) on MemoryFib with a fake clock:
only dirty VIPs reach the FIB, failed VIPs are retried when due, the restart deferral keeps
adopted routes until End-of-RIB or startup_defer, and status comes from counters."""

from __future__ import annotations

import asyncio
import errno
from ipaddress import ip_address, ip_network

from bgplb.bgp.attributes import PathAttributes
from bgplb.bgp.families import IPV4_UNICAST, IPV6_UNICAST
from bgplb.bgp.prefix import Prefix
from bgplb.config.router import FibConfig
from bgplb.linux import diff as d
from bgplb.linux.memfib import Fault, MemoryFib, MemoryKernel
from bgplb.router.entry import Counters
from bgplb.router.kernel import NO_EOR_SETTLE, KernelSide
from bgplb.router.rib import Connected, Rib

IFINDEX = 7
SUBNET = ip_network("192.0.2.0/24")
A, B, C = (ip_address(f"192.0.2.{i}") for i in (10, 11, 12))
VIPS = [Prefix.parse(f"198.51.100.{i}/32") for i in range(1, 31)]


class FakeRouter(KernelSide):
    def __init__(self, kernel: MemoryKernel, **fib_config) -> None:
        rib = Rib([Connected(SUBNET, IFINDEX, ip_address("192.0.2.1"))])
        super().__init__(FibConfig(**fib_config), rib, Counters(), asyncio.Queue())
        self.clock = 100.0
        self.memfib = MemoryFib(kernel, buckets=16, clock=lambda: self.clock)
        self.updates: list[set] = []
        real = self.memfib.update

        def counting(changes, now=None):
            self.updates.append(set(changes))
            return real(changes, now)

        self.memfib.update = counting  # type: ignore[method-assign]

    def _fib_now(self) -> float:
        return self.clock

    def announce(self, peer, vips, gateway=None, gr=True):
        if peer not in self.rib.peers or not self.rib.peers[peer].established:
            self.rib.peer_up(
                peer,
                self.clock,
                asn=65001,
                restart_time=120 if gr else None,
                gr_families=[IPV4_UNICAST, IPV6_UNICAST] if gr else (),
            )
        attrs = PathAttributes(next_hop=gateway or ip_address(peer))
        self.rib.update(peer, vips, attrs, [], self.clock)

    def withdraw(self, peer, vips):
        self.rib.update(peer, [], PathAttributes(), vips, self.clock)


def forwarding(kernel):
    return {str(k): set(v) for k, v in kernel.forwarding().items()}


def run(coro_fn):
    async def main():
        return await coro_fn()

    return asyncio.run(main())


def test_only_dirty_vips_reach_the_fib():
    kernel = MemoryKernel()
    router = FakeRouter(kernel)

    async def go():
        router._open_fib(router.memfib)
        router.announce(str(A), VIPS)
        await router._sync_fib()
        router.announce(str(B), VIPS[:2])
        await router._sync_fib()
        await router._sync_fib()  # nothing dirty: no FIB call at all
        router._close_fib()

    run(go)
    assert router.updates == [set(VIPS), set(VIPS[:2])]
    assert router.counters.fib_applies == 2


def test_a_refused_vip_is_retried_when_due_and_reported():
    kernel = MemoryKernel()
    router = FakeRouter(kernel, keep_on_exit=True)
    bad = VIPS[3].network
    kernel.add_route(bad, None, protocol=4)  # someone's route at the VIP

    async def go():
        router._open_fib(router.memfib)
        router.announce(str(A), VIPS[:5])
        await router._sync_fib()
        assert router._fib_next_deadline() == 101.0
        status = router.fib_status()
        assert status["failed_count"] == 1
        assert status["failed"][str(bad)]["errno"] == errno.EEXIST
        assert status["next_retry_in"] == 1.0
        assert len(forwarding(kernel)) == 4  # the four others are installed
        router.clock = 101.0
        await router._sync_fib()  # due: retried, fails again
        assert router.memfib.failures()[bad].attempts == 2
        assert router._fib_next_deadline() == 103.0
        kernel.del_route(bad, protocol=4)
        router.clock = 103.0
        await router._sync_fib()
        assert router._fib_next_deadline() is None
        assert forwarding(kernel)[str(bad)] == {A}

    run(go)
    assert router.counters.fib_errors == 2


def _previous_run(kernel):
    """A router that installed VIPS[:3] via A+B and VIPS[3] via C, then was killed."""
    fib = MemoryFib(kernel, buckets=16)
    p = [(str(A), IFINDEX, 64), (str(B), IFINDEX, 64)]
    fib.update({v.network: p for v in VIPS[:3]} | {VIPS[3].network: [(str(C), IFINDEX, 64)]})
    return forwarding(kernel)


def test_restart_keeps_adopted_routes_until_every_gateway_sent_end_of_rib():
    kernel = MemoryKernel()
    before = _previous_run(kernel)
    router = FakeRouter(kernel, startup_defer=60.0)
    seen = []

    async def go():
        router._open_fib(router.memfib)
        assert router.fib_status()["deferring"] is True
        assert forwarding(kernel) == before  # nothing removed at start
        router.announce(str(A), VIPS[:2])  # A comes back first, with 2 of its 3 VIPs
        await router._sync_fib()
        seen.append(forwarding(kernel))
        router._fib_end_of_rib(A, IPV4_UNICAST)
        router._fib_end_of_rib(A, IPV6_UNICAST)
        await router._sync_fib()
        seen.append(forwarding(kernel))
        router.announce(str(B), VIPS[:2])
        router._fib_end_of_rib(B, IPV4_UNICAST)
        await router._sync_fib()
        assert router._fib_defer is not None  # C has not sent End-of-RIB
        router.announce(str(C), [VIPS[3]])
        router._fib_end_of_rib(C, IPV4_UNICAST)
        await router._sync_fib()  # the deferral ends: a full reconcile
        assert router._fib_defer is None

    run(go)
    assert seen[0] == before  # A's first announcements alone shrank nothing, removed nothing
    # A's End-of-RIB: A does not serve VIPS[2] any more; B, not heard yet, still holds it
    assert seen[1] == before | {str(VIPS[2].network): {B}}
    assert forwarding(kernel) == {
        str(VIPS[0].network): {A, B},
        str(VIPS[1].network): {A, B},
        str(VIPS[3].network): {C},
    }  # VIPS[2], announced by nobody since the restart, went at the reconcile


def test_restart_deferral_ends_at_startup_defer():
    kernel = MemoryKernel()
    before = _previous_run(kernel)
    router = FakeRouter(kernel, startup_defer=30.0)

    async def go():
        router._open_fib(router.memfib)
        assert router._fib_next_deadline() == 130.0
        router.announce(str(A), VIPS[:1])
        await router._sync_fib()
        assert forwarding(kernel) == before
        router.clock = 129.9
        await router._sync_fib()
        assert forwarding(kernel) == before
        status = router.fib_status()
        assert status["deferring"] and status["defer_remaining"] == 0.1
        router.clock = 130.0
        await router._sync_fib()
        assert router._fib_next_deadline() is None

    run(go)
    assert forwarding(kernel) == {str(VIPS[0].network): {A}}
    assert kernel.counts(200) == (1, 1, 1)


def test_peers_without_graceful_restart_release_the_deferral_after_settling():
    """RFC 4724 §4.1 excludes peers without the capability from the End-of-RIB wait; they
    stop holding it NO_EOR_SETTLE s after their session is seen Established."""
    kernel = MemoryKernel()
    before = _previous_run(kernel)
    router = FakeRouter(kernel, startup_defer=60.0)

    async def go():
        router._open_fib(router.memfib)
        router.announce(str(A), VIPS[:2], gr=False)
        router.announce(str(B), VIPS[:2], gr=False)
        await router._sync_fib()
        assert forwarding(kernel) == before
        assert router._fib_next_deadline() == 100.0 + NO_EOR_SETTLE
        router.announce(str(C), [VIPS[3]], gr=True)  # C has the capability: End-of-RIB
        router.clock = 100.0 + NO_EOR_SETTLE
        await router._sync_fib()
        # A and B count as heard: VIPS[2], which neither announced, goes; C still awaited
        assert router._fib_defer is not None
        assert forwarding(kernel) == {k: v for k, v in before.items() if k != str(VIPS[2].network)}
        router._fib_end_of_rib(C, IPV4_UNICAST)
        await router._sync_fib()
        assert router._fib_defer is None

    run(go)
    assert set(forwarding(kernel)) == {str(VIPS[i].network) for i in (0, 1, 3)}


def test_no_adopted_objects_means_no_deferral_and_debris_goes():
    kernel = MemoryKernel()
    kernel.add_nexthop(0x40000000, d.Gateway(A, IFINDEX), 200)  # debris of ours, no route
    router = FakeRouter(kernel)

    async def go():
        router._open_fib(router.memfib)
        assert router._fib_defer is None and router.fib_status()["deferring"] is False

    run(go)
    assert kernel.counts(200) == (0, 0, 0)


def test_a_kernel_fault_on_one_group_does_not_block_the_others():
    kernel = MemoryKernel()
    router = FakeRouter(kernel)

    async def go():
        router._open_fib(router.memfib)
        router.announce(str(A), VIPS[:10])
        router.announce(str(B), VIPS[10:20])
        await router._sync_fib()
        gid = kernel.installed(200, 254).routes[VIPS[0].network]
        kernel.inject(Fault(errno.ENOMEM, op=d.ReplaceGroup, id=gid))
        router.announce(str(C), VIPS[:20])  # both groups gain C; A's group is refused
        router.withdraw(str(B), VIPS[15:20])
        await router._sync_fib()

    run(go)
    fwd = forwarding(kernel)
    assert all(fwd[str(v.network)] == {A} for v in VIPS[:10])
    assert all(fwd[str(v.network)] == {B, C} for v in VIPS[10:15])
    assert all(fwd[str(v.network)] == {C} for v in VIPS[15:20])  # B withdrew, C still there
    failed = router.memfib.failures()
    assert set(failed) == {v.network for v in VIPS[:10]}


def test_someone_elses_deletion_is_reinstalled_off_the_event_loop():
    kernel = MemoryKernel()
    router = FakeRouter(kernel)

    async def go():
        router._open_fib(router.memfib)
        router.announce(str(A), VIPS[:3])
        await router._sync_fib()
        gid = kernel.installed(200, 254).routes[VIPS[0].network]
        kernel.del_nexthop(gid)  # someone else: the group and its routes go
        assert forwarding(kernel) == {}
        router._kernel_events()  # reads the notification only; the resync is a task
        router._kernel_events()  # coalesced into the same task
        task = router._fib_resync_task
        assert task is not None
        await task
        assert router._fib_resync_task is None
        assert all(forwarding(kernel)[str(v.network)] == {A} for v in VIPS[:3])
        router._close_fib()

    run(go)
    assert router.memfib.reinstalls == 1


def test_many_dirty_vips_are_turned_into_entries_off_the_loop():
    from bgplb.router.kernel import SYNC_INLINE

    kernel = MemoryKernel()
    router = FakeRouter(kernel)
    many = [Prefix.parse(f"198.18.{i // 200}.{i % 200}/32") for i in range(SYNC_INLINE + 50)]
    router.rib = Rib([Connected(SUBNET, IFINDEX, ip_address("192.0.2.1"))])

    async def go():
        router._open_fib(router.memfib)
        router.announce(str(A), many)
        await router._sync_fib()
        router.withdraw(str(A), many[:10])
        await router._sync_fib()

    run(go)
    assert len(router.installed) == len(many) - 10
    assert router.updates[0] == set(many)
    assert kernel.counts(200) == (1, 1, len(many) - 10)


def test_a_big_sync_freezes_what_it_built(monkeypatch):
    """After a sync of many VIPs the objects it built are long-lived: they are frozen out of
    the cyclic collector's full collections (a small sync freezes nothing)."""
    import gc

    from bgplb.router import kernel as kernel_module

    monkeypatch.setattr(kernel_module, "FREEZE_AFTER", 3)
    kernel = MemoryKernel()
    router = FakeRouter(kernel)
    counts: list[int] = []

    async def go():
        router._open_fib(router.memfib)
        router.announce(str(A), VIPS[:2])
        await router._sync_fib()
        counts.append(gc.get_freeze_count())
        router.announce(str(B), VIPS)
        await router._sync_fib()
        counts.append(gc.get_freeze_count())
        router._close_fib()

    try:
        gc.unfreeze()
        run(go)
    finally:
        gc.unfreeze()
    assert counts[0] == 0 and counts[1] > 0, counts


def test_installed_vips_are_counted_by_their_number_of_next_hops():
    """`bgplb_router_vips_by_nexthops` comes from counts kept as entries change (no walk)."""
    kernel = MemoryKernel()
    router = FakeRouter(kernel)

    def counts():
        return {k: v for k, v in router.nexthop_counts.items() if v}

    async def go():
        router._open_fib(router.memfib)
        router.announce(str(A), VIPS)
        await router._sync_fib()
        assert counts() == {"1": len(VIPS)}
        router.announce(str(B), VIPS[:2])
        await router._sync_fib()
        assert counts() == {"1": len(VIPS) - 2, "2": 2}
        router.withdraw(str(A), VIPS)
        await router._sync_fib()
        assert counts() == {"1": 2}  # only the two B carries are left, each via B alone
        router.withdraw(str(B), VIPS[:2])
        await router._sync_fib()
        assert counts() == {}
        router._close_fib()

    run(go)
