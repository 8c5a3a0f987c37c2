"""The router's fast path of a server's loss (KernelSide._fib_peer_lost, called by the RIB
task before Rib.peer_down) on MemoryFib with a fake clock: a purged peer's gateway leaves the
kernel's groups before any per-VIP work, and the FIB sync that follows does nothing; a peer
whose paths Graceful Restart keeps stale is not touched; a gateway another peer also announces
stays."""

from __future__ import annotations

import asyncio
import threading
from ipaddress import ip_address, ip_network
from pathlib import Path
from types import SimpleNamespace

from bgplb.bgp.attributes import PathAttributes
from bgplb.bgp.events import SessionDown
from bgplb.bgp.families import IPV4_UNICAST, IPV6_UNICAST
from bgplb.bgp.prefix import Prefix
from bgplb.config import load_router_config
from bgplb.config.router import FibConfig
from bgplb.linux.memfib import MemoryFib, MemoryKernel
from bgplb.router import fastpath as fastpath_module
from bgplb.router import kernel as kernel_module
from bgplb.router.daemon import Router
from bgplb.router.entry import Counters
from bgplb.router.kernel import KernelSide
from bgplb.router.ranges import PeerEntry
from bgplb.router.rib import Connected, Rib

IFINDEX = 7
SUBNET = ip_network("192.0.2.0/24")
A, B, C = (ip_address(f"192.0.2.{i}") for i in (10, 11, 12))
VIPS = [Prefix.parse(f"198.51.100.{i}/32") for i in range(1, 41)]
SOLO = [Prefix.parse(f"198.51.100.{i}/32") for i in range(101, 106)]  # A alone


class FakeRouter(KernelSide):
    def __init__(self, kernel: MemoryKernel) -> None:
        rib = Rib([Connected(SUBNET, IFINDEX, ip_address("192.0.2.1"))], max_stale_time=120)
        super().__init__(FibConfig(), rib, Counters(), asyncio.Queue())
        self.clock = 100.0
        self.memfib = MemoryFib(kernel, buckets=32, clock=lambda: self.clock)

    def _fib_now(self) -> float:
        return self.clock

    def announce(self, peer, vips, gateway=None, gr=False, third_party=False):
        if peer not in self.rib.peers or not self.rib.peers[peer].established:
            self.rib.peer_up(
                peer,
                self.clock,
                asn=65001,
                restart_time=120 if gr else None,
                gr_families=[IPV4_UNICAST, IPV6_UNICAST] if gr else (),
                source=ip_address(peer),
                third_party_next_hop=third_party,
            )
        attrs = PathAttributes(next_hop=gateway or ip_address(peer))
        self.rib.update(peer, vips, attrs, [], self.clock)


def forwarding(kernel):
    return {str(k): set(v) for k, v in kernel.forwarding().items()}


def run(coro_fn):
    async def main():
        return await coro_fn()

    return asyncio.run(main())


def loaded(kernel, gr=False):
    """A, B and C announce VIPS; A alone SOLO. Installed."""
    router = FakeRouter(kernel)

    async def go():
        router._open_fib(router.memfib)
        for peer in (A, B, C):
            router.announce(str(peer), VIPS, gr=gr and peer == A)
        router.announce(str(A), SOLO, gr=gr)
        await router._sync_fib()

    run(go)
    return router


def test_a_purged_peer_leaves_the_groups_before_the_rib_is_touched():
    kernel = MemoryKernel()
    router = loaded(kernel)
    group = kernel.routes[(254, VIPS[0].network)].nh_id
    buckets = list(kernel.nexthops[group].buckets)
    a_id = next(nh.id for nh in kernel.nexthops.values() if nh.gateway and nh.gateway.address == A)

    router._fib_peer_lost(str(A), graceful=False)  # e.g. hold timer expired, BFD Down

    fwd = forwarding(kernel)
    assert all(fwd[str(v.network)] == {B, C} for v in VIPS)
    assert all(fwd[str(v.network)] == {A} for v in SOLO)  # A alone: the normal path's
    assert len(router.rib.peers[str(A)].paths) == len(VIPS) + len(SOLO)  # RIB untouched
    after = kernel.nexthops[group].buckets
    assert [n for n, o in zip(after, buckets, strict=True) if o != a_id] == [
        o for o in buckets if o != a_id
    ]
    requests = kernel.requests

    async def purge():
        router.rib.peer_down(str(A), router.clock, graceful=False)
        await router._sync_fib()

    run(purge)
    # the per-VIP results of the purge: only SOLO's routes go (and their group, A's nexthop)
    done = kernel.requests - requests
    assert done == len(SOLO) + 2
    assert forwarding(kernel) == {str(v.network): {B, C} for v in VIPS}
    assert router.fib_status()["fast_drops"] == 1


def test_graceful_restart_retention_keeps_the_peer_in_the_kernel():
    kernel = MemoryKernel()
    router = loaded(kernel, gr=True)
    before = forwarding(kernel)
    requests = kernel.requests
    router._fib_peer_lost(str(A), graceful=True)  # connection closed: paths kept stale
    assert kernel.requests == requests

    async def purge():
        assert router.rib.peer_down(str(A), router.clock, graceful=True) > 0
        await router._sync_fib()

    run(purge)
    assert forwarding(kernel) == before  # stale paths stay installed, by design


def test_graceful_restart_does_not_apply_to_hold_expiry_or_peers_without_it():
    for gr, graceful in ((True, False), (False, True)):
        kernel = MemoryKernel()
        router = loaded(kernel, gr=gr)
        router._fib_peer_lost(str(A), graceful=graceful)
        assert all(forwarding(kernel)[str(v.network)] == {B, C} for v in VIPS), (gr, graceful)


def test_a_gateway_another_peer_also_announces_stays():
    kernel = MemoryKernel()
    router = FakeRouter(kernel)
    other = ip_address("192.0.2.99")

    async def go():
        router._open_fib(router.memfib)
        router.announce(str(A), VIPS)
        router.announce(str(B), VIPS)
        router.announce(str(other), VIPS, gateway=A, third_party=True)  # same next hop as A
        await router._sync_fib()

    run(go)
    requests = kernel.requests
    router._fib_peer_lost(str(A), graceful=False)
    assert kernel.requests == requests
    router._fib_peer_lost(str(other), graceful=False)  # A's own session still provides A
    assert kernel.requests == requests


def test_a_third_party_peer_loses_the_next_hops_it_announced():
    kernel = MemoryKernel()
    router = FakeRouter(kernel)
    speaker = ip_address("192.0.2.99")

    async def go():
        router._open_fib(router.memfib)
        router.announce(str(speaker), VIPS[:20], gateway=A, third_party=True)
        router.announce(str(B), VIPS)
        await router._sync_fib()

    run(go)
    router._fib_peer_lost(str(speaker), graceful=False)
    assert all(forwarding(kernel)[str(v.network)] == {B} for v in VIPS)


def test_a_peer_that_withdrew_everything_leaves_the_groups_before_the_per_vip_work():
    kernel = MemoryKernel()
    router = loaded(kernel)
    group = kernel.routes[(254, VIPS[0].network)].nh_id
    calls = []
    real = router.memfib.update

    def update(changes, now=None):
        calls.append(forwarding(kernel)[str(VIPS[0].network)])  # the kernel at that moment
        return real(changes, now)

    router.memfib.update = update  # type: ignore[method-assign]
    router.rib.update(str(A), [], PathAttributes(), VIPS + SOLO, router.clock)

    async def sync():
        await router._sync_fib()

    requests = kernel.requests
    run(sync)
    assert calls == [{B, C}]  # A was out of the group before the per-VIP results came
    assert kernel.nexthops[group].members is not None
    assert forwarding(kernel) == {str(v.network): {B, C} for v in VIPS}
    # the replace, then the per-VIP results: SOLO's routes, their group and A's nexthop
    assert kernel.requests - requests == 1 + len(SOLO) + 2
    assert router.fib_status()["fast_drops"] == 1


def test_a_partial_withdrawal_takes_the_normal_path():
    kernel = MemoryKernel()
    router = loaded(kernel)
    router.rib.update(str(A), [], PathAttributes(), VIPS[:10], router.clock)

    async def sync():
        await router._sync_fib()

    run(sync)
    assert router.fib_status()["fast_drops"] == 0
    fwd = forwarding(kernel)
    assert all(fwd[str(v.network)] == {B, C} for v in VIPS[:10])
    assert all(fwd[str(v.network)] == {A, B, C} for v in VIPS[10:])


def test_a_big_peer_is_dropped_from_a_worker_thread_before_the_sync(monkeypatch):
    kernel = MemoryKernel()
    router = loaded(kernel)
    monkeypatch.setattr(kernel_module, "DROP_INLINE", 10)  # the peer has 45 paths
    threads = []
    real = router.memfib.drop_gateways

    def drop(gateways, now=None):
        threads.append(threading.get_ident())
        return real(gateways, now)

    router.memfib.drop_gateways = drop  # type: ignore[method-assign]
    seen = []
    real_update = router.memfib.update

    def update(changes, now=None):
        seen.append(forwarding(kernel)[str(VIPS[0].network)])
        return real_update(changes, now)

    router.memfib.update = update  # type: ignore[method-assign]

    async def go():
        router._fib_peer_lost(str(A), graceful=False)
        router.rib.peer_down(str(A), router.clock, graceful=False)
        await router._sync_fib()

    run(go)
    assert len(threads) == 1 and threads[0] != threading.get_ident()
    assert seen == [{B, C}]  # the sync waited for the fast path
    assert router.fib_status()["fast_drops"] == 1
    assert forwarding(kernel) == {str(v.network): {B, C} for v in VIPS}


# -- the RIB task's order: Router._handle -----------------------------------------------------


def _router(tmp_path: Path) -> Router:
    conf = tmp_path / "router.toml"
    conf.write_text(
        f"""
[bgp]
asn = 65530
router_id = "192.0.2.1"
listen = ["127.0.0.1:1179"]

[[peer_ranges]]
prefix = "192.0.2.0/24"
asn = "any"
accept = ["198.51.100.0/24 le 32"]

[fib]
install = false

[control]
socket = "{tmp_path / "router.sock"}"
metrics = "off"
"""
    )
    return Router(load_router_config(conf), conf)


def test_session_down_takes_the_gateway_out_before_the_purge(tmp_path):
    kernel = MemoryKernel()
    router = _router(tmp_path)
    fake = FakeRouter(kernel)
    router.rib = fake.rib
    router.fib = fake.memfib
    fake.fib = fake.memfib
    for peer in (A, B):
        fake.announce(str(peer), VIPS)
    fake.memfib.update(
        {v.network: [(str(A), IFINDEX, 64), (str(B), IFINDEX, 64)] for v in VIPS}, 0.0
    )
    entry = PeerEntry(A, SimpleNamespace(), SimpleNamespace(config=None), 0.0)  # type: ignore[arg-type]
    router.peers[A] = entry
    seen = []
    real = router.rib.peer_down

    def peer_down(key, now, *, graceful, **kw):
        seen.append(forwarding(kernel)[str(VIPS[0].network)])
        return real(key, now, graceful=graceful, **kw)

    router.rib.peer_down = peer_down  # type: ignore[method-assign]
    router.kernel.installed = {v: (object(), object()) for v in VIPS}  # A and B, handed before

    async def go():
        down = SessionDown("hold timer expired", True, hold_expired=True)
        router.rib_task._handle(entry, down, 1.0)
        assert seen == [{B}]  # the kernel had lost A when the purge started
        assert A not in router.peers and str(A) not in router.rib.peers
        assert router.fib.engine.fast_drops == 1
        requests = kernel.requests
        changes = router.kernel._fib_changes(router.rib.take_dirty())
        assert len(changes) == len(VIPS)
        result = router.fib.update(
            {v.network: [(n.address, n.ifindex, n.weight) for n in e] for v, e in changes.items()}
        )
        assert result.ops == [] and kernel.requests == requests  # the purge: nothing to do

    run(go)


# -- an UPDATE withdrawing everything; a whole group announced again -------------------------


def test_an_update_withdrawing_everything_takes_the_gateway_out_before_the_rib():
    kernel = MemoryKernel()
    router = loaded(kernel)
    requests = kernel.requests
    router._fib_withdrawing(str(A), [], VIPS + SOLO + VIPS[:3])  # duplicates are harmless
    assert all(forwarding(kernel)[str(v.network)] == {B, C} for v in VIPS)
    assert len(router.rib.peers[str(A)].paths) == len(VIPS) + len(SOLO)  # RIB untouched
    assert kernel.requests - requests == 1  # one in-place replace

    async def rest():
        router.rib.update(str(A), [], PathAttributes(), VIPS + SOLO, router.clock)
        await router._sync_fib()

    run(rest)
    # the per-VIP results: SOLO's routes, their group and A's nexthop; no second fast drop
    assert kernel.requests - requests == 1 + len(SOLO) + 2
    assert router.fib_status()["fast_drops"] == 1
    assert forwarding(kernel) == {str(v.network): {B, C} for v in VIPS}


def test_an_update_leaving_a_path_or_announcing_is_not_taken_early():
    kernel = MemoryKernel()
    router = loaded(kernel)
    requests = kernel.requests
    router._fib_withdrawing(str(A), [], VIPS)  # SOLO stays
    router._fib_withdrawing(str(A), [], VIPS + VIPS[:5])  # as many prefixes, not all of them
    router._fib_withdrawing(str(A), [SOLO[0]], VIPS + SOLO)  # announces one again
    router._fib_withdrawing(str(B), [], [])  # nothing
    assert kernel.requests == requests


def test_a_peer_announcing_every_vip_of_a_group_again_moves_the_group_in_place(monkeypatch):
    monkeypatch.setattr(kernel_module, "SYNC_INLINE", 8)  # a worker thread: the real path
    monkeypatch.setattr(fastpath_module, "REGROUP_MIN", 4)
    kernel = MemoryKernel()
    router = loaded(kernel)
    group = kernel.routes[(254, VIPS[0].network)].nh_id

    async def withdraw_and_announce():
        router.rib.update(str(A), [], PathAttributes(), VIPS + SOLO, router.clock)
        await router._sync_fib()
        before = list(kernel.nexthops[group].buckets)
        seen = []
        real = router.memfib.update

        def update(changes, now=None):
            seen.append(forwarding(kernel)[str(VIPS[0].network)])  # the kernel at that moment
            return real(changes, now)

        router.memfib.update = update  # type: ignore[method-assign]
        requests = kernel.requests
        router.announce(str(A), VIPS)
        await router._sync_fib()
        return before, seen, kernel.requests - requests

    before, seen, requests = run(withdraw_and_announce)
    assert seen == [{A, B, C}]  # in place before the per-VIP work
    assert requests == 2  # A's nexthop, the replace; the per-VIP update: nothing
    assert kernel.routes[(254, VIPS[0].network)].nh_id == group
    after = kernel.nexthops[group].buckets
    a_id = next(nh.id for nh in kernel.nexthops.values() if nh.gateway and nh.gateway.address == A)
    assert all(x == y for x, y in zip(after, before, strict=True) if x != a_id)  # B, C stay put
    assert router.fib_status()["fast_moves"] == 1
    assert forwarding(kernel) == {str(v.network): {A, B, C} for v in VIPS}


def test_a_group_half_announced_again_takes_the_normal_path(monkeypatch):
    monkeypatch.setattr(kernel_module, "SYNC_INLINE", 8)
    monkeypatch.setattr(fastpath_module, "REGROUP_MIN", 4)
    kernel = MemoryKernel()
    router = loaded(kernel)

    async def go():
        router.rib.update(str(A), [], PathAttributes(), VIPS + SOLO, router.clock)
        await router._sync_fib()
        router.announce(str(A), VIPS[:20])
        await router._sync_fib()

    run(go)
    assert router.fib_status()["fast_moves"] == 0
    fwd = forwarding(kernel)
    assert all(fwd[str(v.network)] == {A, B, C} for v in VIPS[:20])
    assert all(fwd[str(v.network)] == {B, C} for v in VIPS[20:])


# -- a few VIPs: the FIB update on the event loop ---------------------------------------------


def test_a_small_sync_updates_the_fib_on_the_loop_and_a_busy_fib_goes_to_a_thread():
    kernel = MemoryKernel()
    router = loaded(kernel)
    threads = []
    real = router.memfib.update

    def update(changes, now=None):
        threads.append(threading.get_ident())
        return real(changes, now)

    router.memfib.update = update  # type: ignore[method-assign]

    async def one(vip):
        router.rib.update(str(B), [], PathAttributes(), [vip], router.clock)
        await router._sync_fib()
        return threading.get_ident()

    loop_thread = run(lambda: one(VIPS[0]))
    assert threads == [loop_thread]  # no hop to a worker thread
    assert forwarding(kernel)[str(VIPS[0].network)] == {A, C}
    with router.memfib._lock:  # e.g. a resync in another thread: the loop must not wait

        def busy():
            return run(lambda: one(VIPS[1]))

        done = []
        worker = threading.Thread(target=lambda: done.append(busy()))
        worker.start()
        worker.join(0.5)
        assert worker.is_alive()  # waiting in the worker thread, not on the loop
    worker.join(5)
    assert len(threads) == 2 and threads[1] != done[0]
    assert forwarding(kernel)[str(VIPS[1].network)] == {A, C}


def test_an_update_announcing_every_vip_of_a_group_moves_it_before_the_rib(monkeypatch):
    monkeypatch.setattr(fastpath_module, "REGROUP_MIN", 4)
    kernel = MemoryKernel()
    router = loaded(kernel)
    group = kernel.routes[(254, VIPS[0].network)].nh_id
    attrs = PathAttributes(next_hop=A)

    async def go():
        router.rib.update(str(A), [], PathAttributes(), VIPS + SOLO, router.clock)
        await router._sync_fib()
        requests = kernel.requests
        # not every VIP of the group, a prefix twice, a prefix the peer has: nothing early
        router._fib_before_update(str(A), VIPS[:20], attrs, [])
        router._fib_before_update(str(A), VIPS[:39] + VIPS[:1], attrs, [])
        router._fib_before_update(str(B), VIPS, PathAttributes(next_hop=B), [])
        assert kernel.requests == requests
        router._fib_before_update(str(A), VIPS, attrs, [])
        assert forwarding(kernel)[str(VIPS[0].network)] == {A, B, C}  # before the RIB
        assert str(A) not in {p.peer for p in router.rib.vips[VIPS[0]]}
        assert kernel.requests - requests == 2  # A's nexthop, the replace
        router.rib.update(str(A), VIPS, attrs, [], router.clock)
        await router._sync_fib()
        return kernel.requests - requests

    assert run(go) == 2  # the sync that follows: nothing more
    assert kernel.routes[(254, VIPS[0].network)].nh_id == group
    assert router.fib_status()["fast_moves"] == 1
    assert forwarding(kernel) == {str(v.network): {A, B, C} for v in VIPS}


def test_a_peer_alone_on_its_vips_is_not_dropped_early():
    kernel = MemoryKernel()
    router = FakeRouter(kernel)

    async def go():
        router._open_fib(router.memfib)
        router.announce(str(A), SOLO)
        router.announce(str(B), VIPS)
        await router._sync_fib()

    run(go)
    calls = []
    router.memfib.drop_gateways = lambda *a, **k: calls.append(a)  # type: ignore[method-assign]
    router._fib_withdrawing(str(A), [], SOLO)  # nothing to keep: no FIB call at all
    router._fib_peer_lost(str(A), graceful=False)
    assert calls == [] and not router.memfib.engine.gone


def test_a_big_early_group_move_goes_from_a_worker_thread(monkeypatch):
    monkeypatch.setattr(fastpath_module, "REGROUP_MIN", 4)
    monkeypatch.setattr(fastpath_module, "REGROUP_INLINE", 10)  # the group has 40 VIPs
    kernel = MemoryKernel()
    router = loaded(kernel)
    threads = []
    real = router.memfib.regroup

    def regroup(*args, **kwargs):
        threads.append(threading.get_ident())
        return real(*args, **kwargs)

    router.memfib.regroup = regroup  # type: ignore[method-assign]
    attrs = PathAttributes(next_hop=A)

    async def go():
        router.rib.update(str(A), [], PathAttributes(), VIPS + SOLO, router.clock)
        await router._sync_fib()
        router._fib_before_update(str(A), VIPS, attrs, [])
        assert len(router._fib_drops_pending) == 1  # the sync waits for it
        router.rib.update(str(A), VIPS, attrs, [], router.clock)
        await router._sync_fib()
        return threading.get_ident()

    loop_thread = run(go)
    assert threads and threads[0] != loop_thread
    assert router.fib_status()["fast_moves"] == 1
    assert forwarding(kernel) == {str(v.network): {A, B, C} for v in VIPS}
