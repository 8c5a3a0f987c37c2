"""`bgplb router` in a namespace against real speakers (GoBGP, BIRD 2, ExaBGP) in server
namespaces: kernel nexthop groups follow announcements and withdrawals, policy refusals leave the
other sessions alone, restart leaves no stale kernel objects, Graceful Restart helper.

Layout: router namespace `rtr`; server i in its own namespace linked to `rtr` by a veth pair,
192.0.2.(8i+1)/29 on the router side, .(8i+2) on the server; 2001:db8:i::1/64 and ::2.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bgplb.control.socket import ControlError, request
from bgplb.lab.netns import NetnsError
from bgplb.lab.peers import Bird, ExaBgp, GoBgp, kernel_routes

pytestmark = [pytest.mark.interop]

ROOT = Path(__file__).resolve().parents[2]
BGPLB = ROOT / ".venv" / "bin" / "bgplb"
VIP = "198.51.100.10/32"
VIP6 = "2001:db8:100::10/128"
ROUTER_AS = 65530
PROTO = "200"


def wait_for(what: str, probe: Callable[[], object], timeout: float = 20.0) -> object:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def hops(ns, prefix: str) -> list[str] | None:
    """kernel_routes, or None when the kernel changed between its two reads (retry)."""
    try:
        return kernel_routes(ns, prefix)
    except NetnsError:
        return None


def server_addrs(i: int) -> tuple[str, str, str, str]:
    """(router v4, server v4, router v6, server v6) of link i (1-based)."""
    return (f"192.0.2.{8 * i + 1}", f"192.0.2.{8 * i + 2}", f"2001:db8:{i}::1", f"2001:db8:{i}::2")


class RouterProc:
    """`bgplb router -c FILE` inside the router namespace, as a child process of the test."""

    def __init__(self, ns, workdir: Path, config: str) -> None:
        self.ns = ns
        self.workdir = workdir
        self.conf = workdir / "router.toml"
        self.sock = workdir / "router.sock"
        self.log = workdir / "router.log"
        self.conf.write_text(config.replace("@SOCK@", str(self.sock)))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = self.ns.popen(
                str(BGPLB),
                "router",
                "-c",
                str(self.conf),
                "--log-level",
                "debug",
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_for("the router's control socket", lambda: self.try_status() is not None, 15)

    def try_status(self) -> dict | None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"router exited {self.proc.returncode}:\n{self.log_text()}")
        try:
            return request(self.sock, "status", timeout=5)
        except ControlError:
            return None

    def status(self) -> dict:
        st = self.try_status()
        assert st is not None, self.log_text()
        return st

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def peer(self, address: str) -> dict | None:
        for p in self.status()["peers"]:
            if p["address"] == address:
                return p
        return None

    def wait_established(self, address: str, timeout: float = 20.0) -> None:
        wait_for(
            f"session with {address} Established",
            lambda: (p := self.peer(address)) is not None and p["established"],
            timeout,
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(5)

    def kill9(self) -> None:
        assert self.proc is not None
        # `ip netns exec` execs the command, so this PID is the router itself.
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


def router_config(ranges: str, fib: str = "") -> str:
    return f"""
[bgp]
asn = {ROUTER_AS}
router_id = "192.0.2.1"
listen = ["0.0.0.0", "::"]
hold_time = 9

{ranges}

[fib]
group = "resilient"
buckets = 64
idle_timer = "1s"
unbalanced_timer = "0s"
{fib}

[control]
socket = "@SOCK@"
metrics = "off"
"""


OPEN_RANGES = """
[[peer_ranges]]
prefix = "192.0.2.0/24"
asn = "any"
accept = ["198.51.100.0/24 le 32"]

[[peer_ranges]]
prefix = "2001:db8::/32"
asn = "any"
accept = ["2001:db8:100::/48 le 128"]
"""


def build(topo, n: int):
    rtr = topo.add("rtr")
    rtr.sysctl("net.ipv4.ip_forward", 1)
    rtr.sysctl("net.ipv6.conf.all.forwarding", 1)
    servers = []
    for i in range(1, n + 1):
        s = topo.add(f"s{i}")
        r4, s4, r6, s6 = server_addrs(i)
        topo.link(
            rtr,
            s,
            [f"{r4}/29", f"{r6}/64"],
            [f"{s4}/29", f"{s6}/64"],
            left_if=f"srv{i}",
            right_if="uplink",
        )
        servers.append(s)
    # IPv6 DAD would delay the addresses; wait until they are usable
    for ns in (rtr, *servers):
        wait_for("IPv6 addresses", lambda ns=ns: "tentative" not in ns.exec("ip", "-6", "addr"), 10)
    return rtr, servers


def ours(rtr) -> tuple[list, list]:
    routes = [
        r
        for fam in ("-4", "-6")
        for r in json.loads(rtr.exec("ip", "-j", fam, "route", "show", "proto", PROTO) or "[]")
    ]
    nhs = json.loads(rtr.exec("ip", "-j", "nexthop", "show", "protocol", PROTO) or "[]")
    return routes, nhs


def make_speaker(daemons, cls, ns, i: int, asn: int, **nb):
    r4, s4, r6, s6 = server_addrs(i)
    d = daemons(cls, ns, asn, s4)
    d.add_neighbor(r4, ROUTER_AS, families=("ipv4",), **nb)
    if cls is not ExaBgp:
        d.add_neighbor(r6, ROUTER_AS, families=("ipv6",), **nb)
    return d


def test_router_groups_follow_gobgp_bird_exabgp(topo, daemons, tmp_path: Path) -> None:
    rtr, (s1, s2, s3, s4) = build(topo, 4)
    router = RouterProc(rtr, tmp_path, router_config(OPEN_RANGES))
    router.start()
    speakers = [
        make_speaker(daemons, GoBgp, s1, 1, 65001),
        make_speaker(daemons, GoBgp, s2, 2, 65002),
        make_speaker(daemons, Bird, s3, 3, 65003),
        make_speaker(daemons, ExaBgp, s4, 4, 65004),
    ]
    try:
        for d in speakers:
            d.announce(VIP)
            if not isinstance(d, ExaBgp):
                d.announce(VIP6)
            d.start()
        v4 = [server_addrs(i)[1] for i in range(1, 5)]
        v6 = [server_addrs(i)[3] for i in range(1, 4)]
        wait_for("4 IPv4 nexthops", lambda: hops(rtr, VIP) == v4, 30)
        wait_for("3 IPv6 nexthops", lambda: hops(rtr, VIP6) == v6, 30)
        routes, nhs = ours(rtr)
        assert len(routes) == 2
        group = next(n for n in nhs if n["id"] == routes[0]["nhid"])
        assert group.get("type") == "resilient", group
        st = router.status()
        assert {p["asn"] for p in st["peers"]} == {65001, 65002, 65003, 65004}
        # withdrawals shrink the group, the last one removes the route
        speakers[0].withdraw(VIP)
        wait_for("3 nexthops", lambda: hops(rtr, VIP) == v4[1:], 20)
        speakers[2].withdraw(VIP)
        wait_for("2 nexthops", lambda: hops(rtr, VIP) == [v4[1], v4[3]], 20)
        speakers[1].withdraw(VIP)
        speakers[3].withdraw(VIP)
        wait_for("no IPv4 route", lambda: hops(rtr, VIP) == [], 20)
        assert hops(rtr, VIP6) == v6  # the other VIP untouched
        # clean exit removes everything of ours
        assert router.stop() == 0
        assert ours(rtr) == ([], []), router.log_text()
    finally:
        if router.proc and router.proc.poll() is None:
            router.stop()
