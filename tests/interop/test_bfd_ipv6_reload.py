"""BFD wired into BGP, `bgplb agent` against `bgplb router`, in network namespaces
(the servers of tests/interop/agent_lab.py, the router process of test_router_interop.py):

* IPv6: both agents peer with the router over IPv6 (single hop, RFC 5881 over IPv6) and
  announce an IPv6 VIP; s1's range has BFD, s2's has none. BFD Up on both sides over IPv6;
  s1's traffic dropped -> the router's BFD goes Down (diag 1), it ends the BGP session because
  of BFD and s1's nexthop leaves the kernel's IPv6 route (hold time 30 s: it cannot have been
  the hold timer); traffic restored -> BGP, route and BFD back.
* Reload: the agent's peer `bfd` changed on SIGHUP (100 -> 200 ms, removed, added again)
  re-requests BFD without touching BGP: the negotiated timers follow (Poll Sequence), removing
  BFD sends AdminDown which the router does not take as a failure (RFC 5882 §3.2), adding it
  back brings BFD Up; the BGP session is the same one throughout (its uptime only grows, no
  session down on either side).

No assertion compares a duration with a speed; every wait is bounded.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from agent_lab import SERVER_AS, VIP6, Server, add_servers, wait_for
from test_router_interop import RouterProc, hops, router_config

from bgplb.lab.netns import Namespace, Topology

pytestmark = [pytest.mark.interop, pytest.mark.serial]  # BFD detection at 100 ms x 3

HOLD = 30  # BGP hold time on every session: far longer than any wait below

ROUTER_CONFIG = router_config(
    f"""
[[peer_ranges]]
prefix = "192.0.2.0/30"
asn = {SERVER_AS}
accept = ["198.51.100.0/24 le 32"]
bfd = {{ interval_ms = 100, multiplier = 3 }}

[[peer_ranges]]
prefix = "2001:db8:1::/64"
asn = {SERVER_AS}
accept = ["2001:db8:100::/48 le 128"]
bfd = {{ interval_ms = 100, multiplier = 3 }}

[[peer_ranges]]
prefix = "2001:db8::/32"
asn = {SERVER_AS}
accept = ["2001:db8:100::/48 le 128"]
""",
    hold_time=HOLD,
)


def bfd_peer(interval_ms: int | None) -> str:
    bfd = "" if interval_ms is None else f"bfd = {{ interval_ms = {interval_ms}, multiplier = 3 }}"
    return f"hold_time = {HOLD}\n{bfd}\n"


@dataclass
class Lab:
    rt: Namespace
    router: RouterProc
    servers: list[Server]

    def router_bfd(self, address: str) -> dict[str, Any]:
        return ((self.router.peer(address) or {}).get("bfd")) or {}


@pytest.fixture
def lab(topo: Topology) -> Iterator[Lab]:
    rt = topo.add("rt")
    rt.sysctl("net.ipv4.ip_forward", 1)
    rt.sysctl("net.ipv6.conf.all.forwarding", 1)
    workdir = Path(tempfile.mkdtemp(prefix="bgplb-bfd6-router-"))
    servers = add_servers(topo, rt)
    router = RouterProc(rt, workdir, ROUTER_CONFIG)
    try:
        for s in servers:
            s.extra_config = "graceful_restart = false"
        yield Lab(rt, router, servers)
    finally:
        for s in servers:
            s.stop()
        if router.proc is not None:
            router.stop()
        for s in servers:
            shutil.rmtree(s.workdir, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)


def agent_bfd(server: Server) -> dict[str, Any]:
    return server.status()["peers"][0]["bfd"] or {}


def test_agent_bfd_over_ipv6_against_bgplb_router(lab: Lab) -> None:
    s1, s2 = lab.servers
    lab.router.start()
    for s in lab.servers:
        s.peer_family = 6  # [[peers]] address = the router's IPv6 address on the link
        s.peer_extra = bfd_peer(100)  # s2's range has no BFD: never Up, BGP unaffected
        s.write_config(s.service(vips=(VIP6,)))
        s.start_http()
        s.start_agent()

    def nexthops() -> list[str] | None:  # None: the kernel changed between two reads
        return hops(lab.rt, VIP6)

    for s in lab.servers:
        lab.router.wait_established(s.address6, timeout=20)
    wait_for(lambda: nexthops() == [s1.address6, s2.address6], 20, "both IPv6 nexthops")
    wait_for(lambda: lab.router_bfd(s1.address6).get("state") == "up", 15, "router's BFD Up")
    wait_for(lambda: agent_bfd(s1).get("state") == "up", 15, "s1's BFD Up")
    rb = lab.router_bfd(s1.address6)
    assert rb["local"] == s1.router6 and rb["multihop"] is False, rb
    assert rb["tx_interval_ms"] == 100 and rb["detection_time_ms"] == 300, rb
    ab = agent_bfd(s1)
    assert ab["remote_state"] == "up" and ab["tx_interval_ms"] == 100, ab
    assert lab.router.peer(s2.address6)["bfd"] is None  # type: ignore[index]
    assert agent_bfd(s2)["state"] == "down"

    s1.ns.drop_all_traffic()
    wait_for(lambda: nexthops() == [s2.address6], HOLD - 10, "s1's IPv6 nexthop removed")
    log = lab.router.log_text()
    assert "BFD down (control detection time expired)" in log, log[-3000:]
    assert lab.router.peer(s1.address6) is None  # session over, no stale paths kept
    st = wait_for(lambda: (b := agent_bfd(s1)).get("downs") == 1 and b, 10, "s1's BFD down")
    assert st["last_down_diag"] == "control detection time expired", st
    assert (lab.router.peer(s2.address6) or {}).get("established")

    s1.ns.allow_all_traffic()
    lab.router.wait_established(s1.address6, timeout=25)
    wait_for(lambda: nexthops() == [s1.address6, s2.address6], 20, "both IPv6 nexthops again")
    wait_for(lambda: lab.router_bfd(s1.address6).get("state") == "up", 15, "router's BFD Up again")
    for s in lab.servers:
        assert "Traceback" not in s.log_path.read_text(), s.log_tail()
    assert "Traceback" not in lab.router.log_text()


def test_agent_bfd_reload_keeps_bgp(lab: Lab) -> None:
    s1 = lab.servers[0]
    lab.router.start()
    s1.peer_extra = bfd_peer(100)
    s1.write_config(s1.service())
    s1.start_http()
    s1.start_agent()
    lab.router.wait_established(s1.address, timeout=20)
    wait_for(lambda: lab.router_bfd(s1.address).get("state") == "up", 15, "router's BFD Up")
    wait_for(lambda: agent_bfd(s1).get("state") == "up", 15, "s1's BFD Up")
    assert agent_bfd(s1)["tx_interval_ms"] == 100

    uptimes: list[tuple[float, float]] = []

    def same_session() -> None:
        """The BGP session is still the first one: both sides' uptimes only grew."""
        agent_up = s1.status()["peers"][0]["uptime"]
        router_up = (lab.router.peer(s1.address) or {}).get("uptime")
        assert agent_up is not None and router_up is not None, (agent_up, router_up)
        if uptimes:
            assert agent_up >= uptimes[-1][0] and router_up >= uptimes[-1][1], (
                uptimes,
                agent_up,
                router_up,
            )
        uptimes.append((agent_up, router_up))

    def reload(interval_ms: int | None) -> None:
        before = s1.log_path.read_text().count("configuration reloaded")
        s1.peer_extra = bfd_peer(interval_ms)
        s1.write_config()
        s1.signal(signal.SIGHUP)
        wait_for(
            lambda: s1.log_path.read_text().count("configuration reloaded") > before,
            10,
            "the agent's reload",
        )

    same_session()
    # slower: the router still wants 100 ms, we now send every 200 ms; its detection time is
    # 3 x 200 ms, ours 3 x max(our 200 ms RX, its 100 ms TX)
    reload(200)
    st = wait_for(
        lambda: (b := agent_bfd(s1)).get("tx_interval_ms") == 200 and b, 10, "s1 at 200 ms"
    )
    assert st["configured"] == {"interval_ms": 200, "multiplier": 3}, st
    assert st["state"] == "up" and st["detection_time_ms"] == 600, st
    wait_for(
        lambda: lab.router_bfd(s1.address).get("detection_time_ms") == 600,
        10,
        "router's detection time 600 ms",
    )
    same_session()

    # removed: the agent releases its session (AdminDown); the router keeps BGP (§3.2)
    reload(None)
    wait_for(lambda: s1.status()["peers"][0]["bfd"] is None, 10, "s1 without BFD")
    rb = wait_for(
        lambda: (b := lab.router_bfd(s1.address)).get("state") == "down" and b,
        10,
        "router's BFD down (neighbor AdminDown)",
    )
    assert rb["remote_state"] == "admindown" and rb["downs"] == 0, rb
    same_session()

    # added back: BFD Up again on both sides, same BGP session
    reload(100)
    wait_for(lambda: agent_bfd(s1).get("state") == "up", 15, "s1's BFD Up again")
    wait_for(lambda: lab.router_bfd(s1.address).get("state") == "up", 15, "router's BFD Up again")
    assert agent_bfd(s1)["tx_interval_ms"] == 100
    same_session()

    log = s1.log_path.read_text()
    assert log.count("BFD settings changed") == 3, s1.log_tail()
    assert "closing the session" not in log and "session down" not in log, s1.log_tail()
    assert "Traceback" not in log, s1.log_tail()
    router_log = lab.router.log_text()
    assert "BFD down" not in router_log, router_log[-3000:]
    assert "Traceback" not in router_log
