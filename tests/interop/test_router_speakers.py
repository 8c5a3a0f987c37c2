"""`bgplb router` fed by real `bgplb agent` processes and by FRR: the VIP's nexthop group has
one member per healthy server, a failed health check shrinks it, a drain (GRACEFUL_SHUTDOWN,
RFC 8326) keeps the draining member with weight 1 until the withdrawal, and the last
withdrawal removes the route.

Layout (as tests/interop/test_router_interop.py): router namespace `rtr`; server i linked to it
by a veth pair, 192.0.2.(8i+1)/29 on the router, .(8i+2) on the server. s1 and s2 run
`bgplb agent` checking a local `python -m http.server` (tests/interop/agent_lab.py's Server);
s3 runs FRR (zebra + bgpd) announcing the VIP with a `network` statement.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from agent_lab import Server
from test_router_interop import (
    OPEN_RANGES,
    RouterProc,
    build,
    hops,
    ours,
    router_config,
    server_addrs,
    wait_for,
)

from bgplb.lab.netns import Namespace, NetnsError
from bgplb.lab.peers import Frr

pytestmark = [pytest.mark.interop]

VIP = "198.51.100.10/32"
ROUTER_AS = 65530
GSHUT = "65535:0"


def group_weights(ns: Namespace, prefix: str) -> dict[str, int] | None:
    """{gateway: weight} of the nexthop group the kernel route for `prefix` points to;
    {} without a route, None when the kernel changed between reads (retry)."""
    try:
        routes = json.loads(ns.exec("ip", "-j", "-4", "route", "show", "exact", prefix) or "[]")
        if not routes:
            return {}
        (route,) = routes
        (group,) = json.loads(ns.exec("ip", "-j", "nexthop", "show", "id", str(route["nhid"])))
        out = {}
        for member in group["group"]:
            (nh,) = json.loads(ns.exec("ip", "-j", "nexthop", "show", "id", str(member["id"])))
            out[nh["gateway"]] = int(member.get("weight", 1))
        return out
    except (NetnsError, ValueError, KeyError):
        return None


def agent_service(port: int, drain_time: str) -> str:
    return f"""
[[services]]
name = "web"
vips = ["{VIP}"]
drain_time = "{drain_time}"

[[services.checks]]
type = "http"
url = "http://127.0.0.1:{port}/"
interval = "200ms"
timeout = "150ms"
rise = 2
fall = 2
damping = false
"""


def test_router_with_bgplb_agents_and_frr(topo, daemons, tmp_path: Path) -> None:
    rtr, (s1ns, s2ns, s3ns) = build(topo, 3)
    router = RouterProc(rtr, tmp_path, router_config(OPEN_RANGES))
    router.start()
    agents: list[Server] = []
    try:
        for i, ns in ((1, s1ns), (2, s2ns)):
            r4, s4, r6, s6 = server_addrs(i)
            srv = Server(f"s{i}", ns, s4, s6, r4, r6, Path(tempfile.mkdtemp(prefix="bgplb-rs-")))
            srv.write_config(agent_service(srv.http_port, "4s"))
            srv.start_http()
            srv.start_agent()
            agents.append(srv)
        a1, a2 = agents
        frr = daemons(Frr, s3ns, 65003, server_addrs(3)[1])
        frr.add_neighbor(server_addrs(3)[0], ROUTER_AS, families=("ipv4",))
        frr.announce(VIP)
        frr.start()
        v1, v2, v3 = (server_addrs(i)[1] for i in (1, 2, 3))

        def weights() -> dict[str, int] | None:
            return group_weights(rtr, VIP)

        def logs() -> str:
            return "\n".join(
                [a1.log_tail(), a2.log_tail(), frr.log_tail(), router.log_text()[-3000:]]
            )

        try:
            wait_for("3 nexthops", lambda: hops(rtr, VIP) == [v1, v2, v3], 40)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{logs()}") from None
        w = weights()
        assert w is not None and set(w) == {v1, v2, v3} and len(set(w.values())) == 1, w
        full = w[v1]
        assert full > 1  # equal weights, and room below them for a draining member
        routes, nhs = ours(rtr)
        (group,) = [n for n in nhs if "group" in n]
        assert group.get("type") == "resilient" and routes[0]["nhid"] == group["id"]
        st = router.status()
        assert {p["asn"] for p in st["peers"]} == {65000, 65003}

        # a failed health check on s2 shrinks the group; recovery brings it back
        a2.stop_http()
        wait_for("s2 out after its check failed", lambda: hops(rtr, VIP) == [v1, v3], 20)
        assert weights() == {v1: full, v3: full}
        a2.start_http()
        wait_for("s2 back", lambda: hops(rtr, VIP) == [v1, v2, v3], 20)
        assert group_weights(rtr, VIP) == {v1: full, v2: full, v3: full}
        # ... the same group object was changed in place: the route never moved
        assert ours(rtr)[0][0]["nhid"] == group["id"]

        # drain s1 (bgplb drain): GRACEFUL_SHUTDOWN for drain_time (4 s), then the withdrawal
        a1.cli("drain", "web", "--socket", str(a1.socket))
        wait_for("s1 draining with weight 1", lambda: weights() == {v1: 1, v2: full, v3: full}, 5)
        (vip_row,) = router.status()["vips"]
        draining = {n["address"]: n["draining"] for n in vip_row["nexthops"]}
        assert draining == {v1: True, v2: False, v3: False}, vip_row
        assert hops(rtr, VIP) == [v1, v2, v3]  # still a member while draining
        wait_for("s1 withdrawn after its drain time", lambda: hops(rtr, VIP) == [v2, v3], 10)
        assert weights() == {v2: full, v3: full}

        # FRR drains too: the same prefix re-announced with GRACEFUL_SHUTDOWN
        frr.announce(VIP, communities=[GSHUT])
        wait_for("FRR's path draining", lambda: weights() == {v2: full, v3: 1}, 15)
        frr.withdraw(VIP)
        wait_for("FRR's path withdrawn", lambda: hops(rtr, VIP) == [v2], 15)
        assert weights() == {v2: full}

        # the last withdrawal (s2's check fails) removes the route and our kernel objects
        a2.stop_http()
        wait_for("no route", lambda: hops(rtr, VIP) == [], 20)
        assert ours(rtr) == ([], []), ours(rtr)
        assert router.status()["vips"] == []
        assert router.stop() == 0
        assert "Traceback" not in router.log_text()
    finally:
        for a in agents:
            a.stop()
            shutil.rmtree(a.workdir, ignore_errors=True)
        if router.proc and router.proc.poll() is None:
            router.stop()


def test_router_status_reads_the_kernel_once_per_request_not_once_per_vip(
    topo, tmp_path: Path
) -> None:
    """`bgplb status` runs `build_status` in the router's event loop. The bucket share of each
    VIP must come from one kernel read per request: today every VIP's `buckets_share` dumps all
    nexthops and routes again (`KernelFib.installed()`), so a status request costs
    O(VIPs x (VIPs + nexthops)) netlink decoding with the event loop blocked — measured with
    1000 VIPs x 10 peers: the request timed out, keepalives stopped and SIGTERM went unanswered
    for minutes (docs/benchmarks.md, router_scale). Counted, not timed: the real KernelFib in a
    namespace, its `installed` wrapped to count calls."""
    import asyncio
    import ipaddress

    from bgplb.bgp.attributes import PathAttributes
    from bgplb.bgp.prefix import Prefix
    from bgplb.config import load_router_config
    from bgplb.control.router_status import build_status
    from bgplb.linux.fib import KernelFib
    from bgplb.router.daemon import Router
    from bgplb.router.rib import Connected

    rtr = topo.add("rtr")
    srv = topo.add("s1")
    topo.link(rtr, srv, ["192.0.2.9/29"], ["192.0.2.10/29"], "srv1", "uplink")
    conf = tmp_path / "router.toml"
    conf.write_text(router_config(OPEN_RANGES).replace("@SOCK@", str(tmp_path / "router.sock")))
    router = Router(load_router_config(conf), conf)
    ifindex = json.loads(rtr.exec("ip", "-j", "link", "show", "srv1"))[0]["ifindex"]
    router.rib.set_connected(
        [
            Connected(
                ipaddress.ip_network("192.0.2.8/29"), ifindex, ipaddress.ip_address("192.0.2.9")
            )
        ]
    )
    vips = [Prefix.parse(f"198.51.100.{i}/32") for i in range(1, 41)]
    for peer, gw in (("192.0.2.10", "192.0.2.10"), ("192.0.2.11", "192.0.2.11")):
        router.rib.peer_up(peer, 0.0, asn=65001)
        router.rib.update(peer, vips, PathAttributes(next_hop=ipaddress.IPv4Address(gw)), [], 0.0)
    fib = KernelFib(netns=rtr.name, group="resilient", buckets=64, idle_timer=1, unbalanced_timer=0)
    try:
        desired = {
            vip.network: [(n.address, n.ifindex, n.weight) for n in router.rib.fib_entry(vip)]
            for vip in vips
        }
        fib.apply(desired)
        router.fib = fib
        calls = 0
        real_installed = fib.installed

        def counting_installed(vips=None):  # type: ignore[no-untyped-def]
            nonlocal calls
            calls += 1
            return real_installed(vips)

        fib.installed = counting_installed  # type: ignore[method-assign]

        async def status() -> dict:
            return build_status(router)

        st = asyncio.run(status())
        # the answer itself is right: 40 VIPs, 64 buckets each, split over the two gateways
        assert len(st["vips"]) == 40
        for row in st["vips"]:
            assert sum(n["buckets"] for n in row["nexthops"]) == 64, row
        assert calls <= 1, f"status read the kernel {calls} times for 40 VIPs"
    finally:
        fib.cleanup()
        fib.close()
