"""`bgplb agent` against other routers than the single BIRD of test_agent_bird.py:

* two routers at once, BIRD 2 and FRR 8, each with a session to both servers: both sessions
  carry the routes, a failing check withdraws from both, recovery re-announces to both;
* FRR as Graceful Restart (RFC 4724) helper: the router's kernel route keeps the server's
  nexthop through an agent restart (SIGUSR1 exit + start), and loses it when the agent does not
  come back within the advertised restart time (5 s in the lab config).

    ra (BIRD) eth-s1 192.0.2.1/30   <->  s1 eth-ra 192.0.2.2/30
    ra (BIRD) eth-s2 192.0.2.5/30   <->  s2 eth-ra 192.0.2.6/30
    rb (FRR)  eth-s1 192.0.2.9/30   <->  s1 eth-rb 192.0.2.10/30
    rb (FRR)  eth-s2 192.0.2.13/30  <->  s2 eth-rb 192.0.2.14/30

Every wait is bounded; no assertion on timing.
"""

from __future__ import annotations

import json
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from agent_lab import ROUTER_AS, SERVER_AS, VIP4, VIP6, Server, wait_for

from bgplb.lab.netns import Namespace, Topology
from bgplb.lab.peers import Bird, Daemon, Frr, kernel_routes

pytestmark = pytest.mark.interop


@dataclass
class Router:
    ns: Namespace
    daemon: Daemon
    #: the servers' addresses on this router's links (the next hops it should install)
    hops: dict[str, str]
    hops6: dict[str, str]
    #: server name -> (its namespace, its interface towards this router)
    links: dict[str, tuple[Namespace, str]] = field(default_factory=dict)

    def nexthops(self, prefix: str = VIP4) -> list[str]:
        return kernel_routes(self.ns, prefix)

    def owners(self, prefix: str = VIP4) -> list[str]:
        """The servers the kernel route points to, sorted. An IPv6 next hop may be the global
        address or (FRR prefers it when both are sent) the server's link-local one."""
        names = {v: k for k, v in (self.hops6 if ":" in prefix else self.hops).items()}
        out = []
        for hop in self.nexthops(prefix):
            if hop not in names and hop.startswith("fe80:"):
                names.update(self._link_locals())
            out.append(names.get(hop, hop))
        return sorted(out)

    def _link_locals(self) -> dict[str, str]:
        out = {}
        for server, (ns, ifname) in self.links.items():
            data = json.loads(
                ns.exec("ip", "-j", "-6", "addr", "show", "dev", ifname, "scope", "link")
            )
            out.update(
                {a["local"]: server for i in data for a in i.get("addr_info", []) if "local" in a}
            )
        return out

    def wait_nexthops(self, servers: list[str], prefix: str = VIP4, timeout: float = 20) -> None:
        want = sorted(servers)
        try:
            wait_for(lambda: self.owners(prefix) == want, timeout, f"{self.ns.name} nexthops")
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}: {self.daemon.name} in {self.ns.name} has {self.nexthops(prefix)} "
                f"({self.owners(prefix)}), "
                f"want {want}\n{self.daemon.log_tail()}"
            ) from None


@dataclass
class Lab:
    routers: list[Router]
    servers: list[Server]

    def logs(self) -> str:
        return "\n".join(s.log_tail() for s in self.servers)


def build(
    topo: Topology,
    daemons: Callable[..., Any],
    kinds: tuple[type[Daemon], ...],
    *,
    graceful_restart: bool = False,
) -> Lab:
    """One router namespace per daemon class in `kinds`, two servers linked to every router;
    each server's agent has one [[peers]] per router. Nothing is started."""
    routers: list[Router] = []
    servers: list[Server] = []
    for i in (1, 2):
        ns = topo.add(f"s{i}")
        workdir = Path(tempfile.mkdtemp(prefix=f"bgplb-routers-s{i}-"))
        servers.append(Server(f"s{i}", ns, "", "", "", "", workdir))
    for r, kind in enumerate(kinds):
        tag = "ab"[r]
        ns = topo.add(f"r{tag}")
        ns.sysctl("net.ipv4.ip_forward", 1)
        ns.sysctl("net.ipv6.conf.all.forwarding", 1)
        daemon = daemons(kind, ns, ROUTER_AS, f"192.0.2.{1 + 8 * r}")
        router = Router(ns, daemon, {}, {})
        for i, server in enumerate(servers, start=1):
            base = 8 * r + 4 * (i - 1)
            net6 = f"2001:db8:{r + 1}{i}::"
            topo.link(
                ns,
                server.ns,
                [f"192.0.2.{base + 1}/30", f"{net6}1/64"],
                [f"192.0.2.{base + 2}/30", f"{net6}2/64"],
                f"eth-s{i}",
                f"eth-r{tag}",
            )
            here, here6 = f"192.0.2.{base + 2}", f"{net6}2"
            router.hops[server.name], router.hops6[server.name] = here, here6
            router.links[server.name] = (server.ns, f"eth-r{tag}")
            daemon.add_neighbor(here, SERVER_AS, passive=True, graceful_restart=graceful_restart)
            if r == 0:
                server.address, server.address6 = here, here6
                server.router, server.router6 = f"192.0.2.{base + 1}", f"{net6}1"
            else:
                server.peer_extra += (
                    f'\n[[peers]]\naddress = "192.0.2.{base + 1}"\nasn = {ROUTER_AS}\n'
                )
        routers.append(router)
    for server in servers:
        if not graceful_restart:
            server.extra_config = "graceful_restart = false"
    return Lab(routers, servers)


@pytest.fixture
def make_lab(topo: Topology, daemons: Callable[..., Any]) -> Iterator[Callable[..., Lab]]:
    made: list[Lab] = []

    def make(kinds: tuple[type[Daemon], ...], **kw: Any) -> Lab:
        lab = build(topo, daemons, kinds, **kw)
        made.append(lab)
        return lab

    try:
        yield make
    finally:
        for lab in made:
            for server in lab.servers:
                server.stop()
            for router in lab.routers:
                router.daemon.stop()
            for server in lab.servers:
                shutil.rmtree(server.workdir, ignore_errors=True)


def start(lab: Lab, vips: tuple[str, ...] = (VIP4,)) -> None:
    for router in lab.routers:
        router.daemon.start()
    for s in lab.servers:
        s.write_config(s.service(vips=vips))
        s.start_http()
        s.start_agent()
    for router in lab.routers:
        for s in lab.servers:
            router.daemon.wait_established(router.hops[s.name], timeout=30)


def test_two_routers_both_sessions_carry_the_routes(make_lab):
    lab = make_lab((Bird, Frr))
    start(lab, vips=(VIP4, VIP6))
    s1, s2 = lab.servers
    for router in lab.routers:
        router.wait_nexthops(["s1", "s2"])
        router.wait_nexthops(["s1", "s2"], prefix=VIP6)
    # each router got the route from each server with that server's address on its own link
    for router in lab.routers:
        received = {
            (r.prefix, r.next_hop) for r in router.daemon.received_routes() if r.prefix == VIP4
        }
        assert received == {(VIP4, router.hops["s1"]), (VIP4, router.hops["s2"])}
    peers = s1.status()["peers"]
    assert len(peers) == 2 and all(p["state"].lower() == "established" for p in peers), peers

    # a failing check withdraws from both routers ...
    s1.stop_http()
    for router in lab.routers:
        router.wait_nexthops(["s2"])
        router.wait_nexthops(["s2"], prefix=VIP6)
    wait_for(lambda: not s1.has_vip(VIP4), 10, "VIP removed from s1's lo")
    # ... and recovery announces to both again
    s1.start_http()
    for router in lab.routers:
        router.wait_nexthops(["s1", "s2"])
        router.wait_nexthops(["s1", "s2"], prefix=VIP6)

    # losing one router leaves the other one's routes alone
    bird, frr = lab.routers
    bird.daemon.stop()
    wait_for(
        lambda: any(p["state"].lower() != "established" for p in s1.status()["peers"]),
        15,
        "s1 sees the BIRD session down",
    )
    assert frr.nexthops() == sorted([frr.hops["s1"], frr.hops["s2"]])
    assert s1.has_vip(VIP4) and s2.has_vip(VIP4)
    log = s1.log_path.read_text()
    assert "Traceback" not in log, s1.log_tail()


class NexthopWatch:
    """Samples a router's kernel route in a thread (bounded by `stop()` and a time cap) and
    records every sample in which `hop` was missing."""

    def __init__(self, router: Router, hop: str, cap: float = 60.0) -> None:
        self.router, self.hop, self.cap = router, hop, cap
        self.samples = 0
        self.missing: list[list[str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + self.cap
        while not self._stop.is_set() and time.monotonic() < deadline:
            hops = self.router.nexthops()
            self.samples += 1
            if self.hop not in hops:
                self.missing.append(hops)
            self._stop.wait(0.02)

    def __enter__(self) -> NexthopWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.mark.serial  # the agent must be back within the 5 s restart time
def test_frr_helper_keeps_nexthop_through_agent_restart(make_lab):
    lab = make_lab((Frr,), graceful_restart=True)
    start(lab)
    (frr,) = lab.routers
    s1, _ = lab.servers
    frr.wait_nexthops(["s1", "s2"])
    hop = frr.hops["s1"]
    with NexthopWatch(frr, hop) as watch:
        s1.signal(signal.SIGUSR1)  # exit keeping the routes
        assert s1.wait_exit() == 0
        assert s1.has_vip(VIP4)  # left on lo
        wait_for(lambda: frr.daemon.neighbor_state(hop) != "established", 10, "session down")
        s1.start_agent()
        frr.daemon.wait_established(hop, timeout=20)
        # re-announced and End-of-RIB sent: FRR clears the stale flag without a gap
        wait_for(lambda: _eors(frr, hop) >= 2, 10, "FRR got End-of-RIB again")
        time.sleep(1.0)  # keep sampling a while after the stale routes were refreshed
    assert watch.samples > 10
    assert not watch.missing, f"nexthop {hop} missing in {len(watch.missing)} samples"
    assert frr.nexthops() == sorted(frr.hops.values())
    assert "graceful restart" in s1.log_path.read_text()


def test_frr_helper_drops_nexthop_if_agent_does_not_return(make_lab):
    lab = make_lab((Frr,), graceful_restart=True)
    start(lab)
    (frr,) = lab.routers
    s1, _ = lab.servers
    frr.wait_nexthops(["s1", "s2"])
    hop = frr.hops["s1"]
    s1.signal(signal.SIGUSR1)
    assert s1.wait_exit() == 0
    wait_for(lambda: frr.daemon.neighbor_state(hop) != "established", 10, "session down")
    # helper mode: kept as stale first (so the drop below is the restart timer, not a purge)
    assert hop in frr.nexthops()
    # the restart time advertised by the agent is 5 s: FRR drops the stale path after it
    frr.wait_nexthops(["s2"], timeout=30)


def _eors(frr: Router, hop: str) -> int:
    """How many IPv4 End-of-RIB markers FRR logged from `hop` (one per session)."""
    text = frr.daemon.log_path.read_text(errors="replace")
    return text.count(f"rcvd End-of-RIB for IPv4 Unicast from {hop} ")
