"""BFD wired into BGP: `bgplb agent` with `bfd = {...}` against BIRD 2 as the router
and against `bgplb router` (peer range with `bfd`), in network namespaces.

Two servers announce the same VIP; s1 runs BFD at 100 ms x 3, the BGP hold time is 30 s on every
session. s1's traffic is dropped (nftables in its namespace) -> the router's BFD goes Down with
diag 1, the router closes the BGP session *because of BFD* (BIRD: "BFD session down"; bgplb
router: Cease/BFD Down, peer removed) and the kernel route loses s1 while s2 stays. The proof
that BFD did it, not the hold timer, is the order of events and the stated reasons (no clock
is compared with a speed): the route is gone while the BGP hold timer (30 s) cannot have
expired. Traffic restored -> BFD Up, BGP Established and both nexthops back.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from agent_lab import SERVER_AS, VIP4, Server, add_servers, build_lab, wait_for
from test_router_interop import RouterProc, hops, router_config

pytestmark = [pytest.mark.interop, pytest.mark.serial]  # BFD detection at 100 ms x 3

HOLD = 30  # BGP hold time on every session: far longer than any wait below
BFD_PEER = f"hold_time = {HOLD}\nbfd = {{ interval_ms = 100, multiplier = 3 }}\n"


def bfd_of(server: Server) -> dict:
    return server.status()["peers"][0]["bfd"] or {}


def test_agent_bfd_against_bird(topo, daemons):
    lab = build_lab(topo, daemons)
    try:
        bird = lab.bird
        for s in lab.servers:  # s1 with BFD, s2 without (its path must stay)
            bfd = s is lab.servers[0]
            bird.add_neighbor(s.address, SERVER_AS, passive=True, hold_time=HOLD, bfd=bfd)
            s.peer_extra = BFD_PEER if bfd else f"hold_time = {HOLD}\n"
        bird.start()
        for s in lab.servers:
            s.write_config(s.service())
            s.start_http()
            s.start_agent()
        s1, s2 = lab.servers
        for s in lab.servers:
            bird.wait_established(s.address, timeout=20)
        lab.wait_nexthops([s1.address, s2.address])
        wait_for(lambda: bfd_of(s1).get("state") == "up", 15, "agent's BFD Up")
        wait_for(
            lambda: re.search(r"\bUp\b", bird.control("show", "bfd", "sessions")),
            10,
            "BIRD's BFD Up",
        )
        st = bfd_of(s1)
        assert st["tx_interval_ms"] == 100 and st["detection_time_ms"] == 300, st
        assert s2.status()["peers"][0]["bfd"] is None

        s1.ns.drop_all_traffic()
        dropped = time.monotonic()
        lab.wait_nexthops([s2.address], timeout=HOLD - 10)
        gone = time.monotonic()
        # BIRD closed the session because of BFD, not its hold timer.
        info = bird.control("show", "protocols", "all", bird._proto(s1.address))
        assert "BFD session down" in info, info
        # the agent saw the same failure: BFD Down with diag 1, BGP torn down
        st = wait_for(lambda: (b := bfd_of(s1)).get("downs") == 1 and b, 10, "agent BFD down")
        assert st["last_down_diag"] == "control detection time expired", st
        assert s1.status()["peers"][0]["state"] != "Established"
        assert "BFD down (control detection time expired)" in s1.log_path.read_text()
        assert gone - dropped < HOLD  # order of events, not speed: before any hold expiry
        assert bird.neighbor_state(s2.address) == "established"

        s1.ns.allow_all_traffic()
        bird.wait_established(s1.address, timeout=25)
        lab.wait_nexthops([s1.address, s2.address], timeout=20)
        wait_for(lambda: bfd_of(s1).get("state") == "up", 15, "agent's BFD Up again")
        assert "Traceback" not in s1.log_path.read_text()
    finally:
        lab.close()


ROUTER_CONFIG = router_config(
    f"""
[[peer_ranges]]
prefix = "192.0.2.0/30"
asn = {SERVER_AS}
accept = ["198.51.100.0/24 le 32"]
bfd = {{ interval_ms = 100, multiplier = 3 }}

[[peer_ranges]]
prefix = "192.0.2.0/24"
asn = {SERVER_AS}
accept = ["198.51.100.0/24 le 32"]
""",
    hold_time=HOLD,
    listen=("0.0.0.0",),
)


def test_agent_bfd_against_bgplb_router(topo):
    rt = topo.add("rt")
    rt.sysctl("net.ipv4.ip_forward", 1)
    servers: list[Server] = []
    workdir = Path(tempfile.mkdtemp(prefix="bgplb-bfd-router-"))
    router = RouterProc(rt, workdir, ROUTER_CONFIG)
    try:
        # s1 192.0.2.2 (range with BFD), s2 192.0.2.6 (range without)
        servers = add_servers(topo, rt)
        for s in servers:
            s.extra_config = "graceful_restart = false"
            # s2 asks for BFD too: its range has none, so BFD never comes Up; BGP must not
            # care (RFC 5882 §3.3).
            s.peer_extra = BFD_PEER
        router.start()
        for s in servers:
            s.write_config(s.service())
            s.start_http()
            s.start_agent()
        s1, s2 = servers

        def nexthops() -> list[str] | None:  # None: the kernel changed between two reads
            return hops(rt, VIP4)

        for s in servers:
            router.wait_established(s.address, timeout=20)
        wait_for(lambda: nexthops() == [s1.address, s2.address], 20, "both nexthops")
        wait_for(
            lambda: ((router.peer(s1.address) or {}).get("bfd") or {}).get("state") == "up",
            15,
            "router's BFD with s1 Up",
        )
        wait_for(lambda: bfd_of(s1).get("state") == "up", 15, "s1's BFD Up")
        assert router.peer(s2.address)["bfd"] is None  # type: ignore[index]
        assert bfd_of(s2)["state"] == "down"  # requested, never Up: BGP unaffected
        rb = router.peer(s1.address)["bfd"]  # type: ignore[index]
        assert rb["tx_interval_ms"] == 100 and rb["detection_time_ms"] == 300, rb

        s1.ns.drop_all_traffic()
        wait_for(lambda: nexthops() == [s2.address], HOLD - 10, "s1's nexthop removed")
        log = router.log_text()
        assert "BFD down (control detection time expired)" in log, log[-3000:]
        assert router.peer(s1.address) is None  # session over, no stale (GR) paths kept
        st = wait_for(lambda: (b := bfd_of(s1)).get("downs") == 1 and b, 10, "s1's BFD down")
        assert st["last_down_diag"] == "control detection time expired"
        assert (router.peer(s2.address) or {}).get("established")

        s1.ns.allow_all_traffic()
        router.wait_established(s1.address, timeout=25)
        wait_for(lambda: nexthops() == [s1.address, s2.address], 20, "both nexthops again")
        wait_for(
            lambda: ((router.peer(s1.address) or {}).get("bfd") or {}).get("state") == "up",
            15,
            "router's BFD with s1 Up again",
        )
        for s in servers:
            assert "Traceback" not in s.log_path.read_text()
        assert "Traceback" not in router.log_text()
    finally:
        for s in servers:
            s.stop()
        if router.proc is not None:
            router.stop()
        for s in servers:
            shutil.rmtree(s.workdir, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)
