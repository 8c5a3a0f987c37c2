"""Fail open on a real kernel: `bgplb router` with three `bgplb agent`s (BFD 100 ms x 3) announcing
one VIP, in network namespaces.

The router is stopped (SIGSTOP) for three BFD detection times, then continued: every BFD
session and BGP session fails at once (the agents' BFD sees the silence and tears BGP down; the
router, running again, sees its own BFD Down and the agents' Cease / BFD Down). With fail-open
(the default) the kernel route of the VIP keeps its three nexthops throughout — watched with
`ip monitor` and by polling the route — and the sessions come back; with ``fail_open = false``
the route goes (the proof that the test can fail). And one server dying while the two others
live loses its path at once, fail-open or not.

Layout as tests/interop/agent_lab.py: rt eth-sN 192.0.2.(4N-3)/30 <-> sN eth-rt 192.0.2.(4N-2).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
from agent_lab import VIP4, Server, add_servers, wait_for
from test_router_interop import RouterProc, hops, router_config

pytestmark = [pytest.mark.interop, pytest.mark.serial]  # BFD at 100 ms x 3, a stopped process

BFD = "bfd = { interval_ms = 100, multiplier = 3 }"
DETECTION = 0.3
STALL = 3 * DETECTION
RANGES = f"""
[[peer_ranges]]
prefix = "192.0.2.0/24"
asn = "any"
accept = ["198.51.100.0/24 le 32"]
{BFD}
"""


class RouteWatch:
    """Every change of the router namespace's routes and nexthops (`ip -o monitor`), and the
    VIP's nexthops polled every ~20 ms in a thread, until `stop()` (bounded: at most
    `seconds`)."""

    def __init__(self, rt, seconds: float = 30.0) -> None:
        self.rt = rt
        self.seen: list[list[str] | None] = []
        self.monitor = rt.popen(
            "ip", "-o", "monitor", "route", "nexthop", stdout=subprocess.PIPE, text=True
        )
        self._stop = threading.Event()
        self._deadline = time.monotonic() + seconds
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            self.seen.append(hops(self.rt, VIP4))
            time.sleep(0.02)

    def stop(self) -> str:
        self._stop.set()
        self._thread.join(10)
        self.monitor.terminate()
        try:
            out, _ = self.monitor.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            self.monitor.kill()
            out, _ = self.monitor.communicate(timeout=5)
        return out or ""


def start_lab(topo, fib: str) -> tuple[object, RouterProc, list[Server], Path]:
    rt = topo.add("rt")
    rt.sysctl("net.ipv4.ip_forward", 1)
    workdir = Path(tempfile.mkdtemp(prefix="bgplb-failopen-"))
    router = RouterProc(rt, workdir, router_config(RANGES, fib, listen=("0.0.0.0",)))
    servers = add_servers(topo, rt, count=3)
    for s in servers:
        s.peer_extra = BFD
    return rt, router, servers, workdir


def wait_all_up(router: RouterProc, rt, servers: list[Server]) -> None:
    for s in servers:
        router.wait_established(s.address, timeout=25)
    want = [s.address for s in servers]  # ascending, as hops() sorts
    wait_for(lambda: hops(rt, VIP4) == want, 20, "three nexthops")
    for s in servers:
        wait_for(
            lambda s=s: ((router.peer(s.address) or {}).get("bfd") or {}).get("state") == "up",
            15,
            f"router's BFD with {s.name} Up",
        )


def stall(router: RouterProc) -> None:
    assert router.proc is not None
    router.proc.send_signal(signal.SIGSTOP)  # `ip netns exec` execs: the router's own PID
    try:
        time.sleep(STALL)
    finally:
        router.proc.send_signal(signal.SIGCONT)


def close(router: RouterProc, servers: list[Server], workdir: Path) -> None:
    for s in servers:
        s.stop()
    if router.proc is not None:
        router.proc.send_signal(signal.SIGCONT)
        router.stop()
    for s in servers:
        shutil.rmtree(s.workdir, ignore_errors=True)
    shutil.rmtree(workdir, ignore_errors=True)


def run_stall(rt, router: RouterProc, servers: list[Server]) -> tuple[list[list[str] | None], str]:
    """Start everything, stall the router, wait for every session to be back; return the
    polled nexthops and the `ip monitor` lines."""
    router.start()
    for s in servers:
        s.write_config(s.service())
        s.start_http()
        s.start_agent()
    wait_all_up(router, rt, servers)
    downs_before = [s.status()["peers"][0]["bfd"]["downs"] for s in servers]
    watch = RouteWatch(rt)
    time.sleep(0.2)
    stall(router)
    # the agents saw the stall (BFD Down), then come back
    for s, before in zip(servers, downs_before, strict=True):
        wait_for(
            lambda s=s, b=before: s.status()["peers"][0]["bfd"]["downs"] > b,
            10,
            f"{s.name}'s BFD saw the stall",
        )
    wait_all_up(router, rt, servers)
    time.sleep(0.5)
    events = watch.stop()
    return watch.seen, events


def test_router_stall_keeps_the_vip_with_fail_open(topo):
    rt, router, servers, workdir = start_lab(topo, "")
    try:
        seen, events = run_stall(rt, router, servers)
        want = [s.address for s in servers]  # ascending, as hops() sorts
        log = router.log_text()
        assert "fail-open: 1 VIP lost every path to failures" in log, log[-4000:]
        assert "fail-open over after" in log, log[-4000:]
        assert "came back" in log
        # the route kept its three nexthops all along: every poll, and no kernel deletion
        assert seen and all(h == want or h is None for h in seen), seen
        assert sum(h == want for h in seen) > 10, seen
        vip = VIP4.split("/")[0]
        deleted = [line for line in events.splitlines() if line.startswith("Deleted")]
        assert not [line for line in deleted if vip in line], events
        assert "Traceback" not in log
    finally:
        close(router, servers, workdir)


def test_router_stall_without_fail_open_loses_the_vip(topo):
    rt, router, servers, workdir = start_lab(topo, "fail_open = false")
    try:
        seen, events = run_stall(rt, router, servers)
        want = [s.address for s in servers]  # ascending, as hops() sorts
        log = router.log_text()
        assert "fail-open:" not in log
        vip = VIP4.split("/")[0]
        lost = [h for h in seen if h is not None and h != want]
        deleted = [
            line for line in events.splitlines() if line.startswith("Deleted") and vip in line
        ]
        assert lost or deleted, (seen, events)
    finally:
        close(router, servers, workdir)


def test_one_server_dying_fails_over_at_once_with_fail_open(topo):
    rt, router, servers, workdir = start_lab(topo, "")
    try:
        router.start()
        for s in servers:
            s.write_config(s.service())
            s.start_http()
            s.start_agent()
        wait_all_up(router, rt, servers)
        s1, s2, s3 = servers
        s1.ns.drop_all_traffic()  # a dead host: nothing in or out, then its agent killed
        assert s1.agent is not None
        s1.agent.kill()  # its FIN/RST cannot leave: like a crashed machine
        s1.agent.wait(5)
        # the BGP hold time (3 s, the agents') is not waited for: BFD's 300 ms
        wait_for(lambda: hops(rt, VIP4) == [s2.address, s3.address], 2.5, "s1's nexthop gone")
        log = router.log_text()
        assert "BFD down (control detection time expired)" in log, log[-3000:]
        assert "fail-open" not in log
        assert router.peer(s1.address) is None  # nothing kept
        st = router.status()
        assert st["vips"][0]["fail_open_until"] is None
        s1.ns.allow_all_traffic()
        s1.start_agent()
        wait_all_up(router, rt, servers)
    finally:
        close(router, servers, workdir)
