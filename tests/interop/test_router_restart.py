"""`bgplb router` restarted under traffic-bearing routes: with `[fib] keep_on_exit`, a router
killed with SIGKILL and started again adopts its kernel objects and defers every deletion until
the peers of the adopted gateways have sent End-of-RIB (RFC 4724 §4.1), so the kernel route of
a VIP never loses a nexthop while the speakers reconnect one after the other.

The kernel is sampled every 20 ms over netlink (bgplb.linux.nexthop, not `ip`) from just
before the kill until the router reports the deferral over.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from pathlib import Path

import pytest
from test_router_interop import (
    OPEN_RANGES,
    VIP,
    VIP6,
    RouterProc,
    build,
    hops,
    make_speaker,
    router_config,
    server_addrs,
    wait_for,
)

from bgplb.lab.peers import GoBgp
from bgplb.linux.nexthop import NexthopSocket

pytestmark = [pytest.mark.interop]

EXTRA = [f"198.51.100.{i}/32" for i in range(20, 30)]


class Sampler(threading.Thread):
    """Every `period` s: the gateways of each watched VIP's route in the router namespace."""

    def __init__(self, netns: str, vips: list[str], period: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.netns = netns
        self.vips = [ipaddress.ip_network(v) for v in vips]
        self.period = period
        self.stop = threading.Event()
        self.samples: list[dict[str, frozenset[str]]] = []
        self.errors: list[str] = []

    def sample(self, sock: NexthopSocket) -> dict[str, frozenset[str]]:
        routes = {r.dst: r.nh_id for r in sock.dump_routes(protocol=200, table=254)}
        nexthops = {n.id: n for n in sock.dump_nexthops()}
        out: dict[str, frozenset[str]] = {}
        for vip in self.vips:
            group = nexthops.get(routes.get(vip))  # type: ignore[arg-type]
            gws: set[str] = set()
            if group is not None:
                for member, _ in group.members:
                    nh = nexthops.get(member)
                    if nh is not None and nh.gateway is not None:
                        gws.add(str(nh.gateway))
            out[str(vip)] = frozenset(gws)
        return out

    def run(self) -> None:
        deadline = time.monotonic() + 180  # bounded whatever happens
        with NexthopSocket(self.netns) as sock:
            while not self.stop.is_set() and time.monotonic() < deadline:
                try:
                    self.samples.append(self.sample(sock))
                except OSError as exc:  # a dump raced with a change: count it, go on
                    self.errors.append(str(exc))
                self.stop.wait(self.period)


def test_router_kill9_with_keep_on_exit_never_loses_a_nexthop(
    topo, daemons, tmp_path: Path
) -> None:
    rtr, servers = build(topo, 3)
    config = router_config(OPEN_RANGES, 'keep_on_exit = true\nstartup_defer = "45s"')
    router = RouterProc(rtr, tmp_path, config)
    router.start()
    speakers = [make_speaker(daemons, GoBgp, s, i + 1, 65001 + i) for i, s in enumerate(servers)]
    v4 = sorted(server_addrs(i)[1] for i in (1, 2, 3))
    v6 = sorted(server_addrs(i)[3] for i in (1, 2, 3))
    for d in speakers:
        for vip in (VIP, VIP6, *EXTRA):
            d.announce(vip)
        d.start()
    wait_for(
        "3 nexthops everywhere",
        lambda: (
            sorted(hops(rtr, VIP) or []) == v4
            and sorted(hops(rtr, VIP6) or []) == v6
            and all(sorted(hops(rtr, v) or []) == v4 for v in EXTRA)
        ),
        40,
    )
    fib = router.status()["fib"]["status"]
    assert fib["groups"] == 2 and fib["vips"] == 2 + len(EXTRA)  # one group per path set
    sampler = Sampler(rtr.name, [VIP, VIP6, *EXTRA])
    sampler.start()
    try:
        time.sleep(0.2)
        router.kill9()
        router.start()
        st = router.status()["fib"]["status"]
        assert st["deferring"] is True and st["defer_adopted_vips"] == 2 + len(EXTRA)
        for address in (*v4, *v6):
            router.wait_established(address, 30)
        wait_for(
            "the deferral over (End-of-RIB from every adopted gateway)",
            lambda: router.status()["fib"]["status"]["deferring"] is False,
            40,
        )
        time.sleep(0.3)
    finally:
        sampler.stop.set()
        sampler.join(10)
    assert len(sampler.samples) > 50, sampler.errors
    want = {VIP: frozenset(v4), VIP6: frozenset(v6)} | {v: frozenset(v4) for v in EXTRA}
    bad = [s for s in sampler.samples if s != want]
    assert not bad, f"{len(bad)} of {len(sampler.samples)} samples differ, first: {bad[0]}"
    assert "deferral over" in router.log_text()
    assert router.stop() == 0
