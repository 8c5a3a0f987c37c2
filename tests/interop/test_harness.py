"""The interop harness itself (bgplb.lab.peers, wirecapture), proven by peering the real
daemons with each other in network namespaces: each class configures its daemon, brings the
session up, originates routes with attributes, and reads back what it received."""

from __future__ import annotations

import time

import pytest
from wirecapture import Capture, tshark_bgp_messages, tshark_check

from bgplb.lab.peers import Bird, ExaBgp, Frr, GoBgp, PeerError, ReceivedRoute, kernel_routes

pytestmark = pytest.mark.interop

V4 = "198.51.100.0/24"
V6 = "2001:db8:100::/48"


def md5_failures(ns) -> int:
    for line in ns.exec("nstat", "-az", "TcpExtTCPMD5Failure").splitlines():
        fields = line.split()
        if fields and fields[0] == "TcpExtTCPMD5Failure":
            return int(fields[1])
    raise AssertionError("nstat shows no TcpExtTCPMD5Failure counter")


def by_prefix(routes: list[ReceivedRoute]) -> dict[str, ReceivedRoute]:
    return {r.prefix: r for r in routes}


def test_gobgp_announces_to_bird(two_hosts, daemons):
    left, right = two_hosts
    gobgp = daemons(GoBgp, left.ns, 65001, left.ipv4)
    bird = daemons(Bird, right.ns, 4200000002, right.ipv4)
    gobgp.add_neighbor(right.ipv4, 4200000002, families=["ipv4"])
    gobgp.add_neighbor(right.ipv6, 4200000002, families=["ipv6"])
    bird.add_neighbor(left.ipv4, 65001, families=["ipv4"])
    bird.add_neighbor(left.ipv6, 65001, families=["ipv6"])
    gobgp.announce(V4, left.ipv4, ["65001:100", "65001:200"], ["65001:1:2"], med=50)
    gobgp.announce(V6, left.ipv6, ["65001:300"], ["4200000002:3:4"], med=7)
    gobgp.start()
    bird.start()
    bird.wait_established(left.ipv4, 20)
    bird.wait_established(left.ipv6, 20)
    gobgp.wait_established(right.ipv4, 5)
    routes = by_prefix(bird.wait_routes(lambda rs: len(rs) == 2, 10))
    assert routes[V4] == ReceivedRoute(
        V4, left.ipv4, [65001], ["65001:100", "65001:200"], ["65001:1:2"], 50, left.ipv4
    )
    assert routes[V6] == ReceivedRoute(
        V6, left.ipv6, [65001], ["65001:300"], ["4200000002:3:4"], 7, left.ipv6
    )
    # live withdrawal through the GoBGP API reaches BIRD
    gobgp.withdraw(V4)
    bird.wait_routes(lambda rs: [r.prefix for r in rs] == [V6], 10, "withdrawal of " + V4)


def test_frr_to_gobgp_and_kernel(two_hosts, daemons):
    left, right = two_hosts
    frr = daemons(Frr, left.ns, 65010, left.ipv4)
    gobgp = daemons(GoBgp, right.ns, 65020, right.ipv4)
    frr.add_neighbor(right.ipv4, 65020, families=["ipv4"])
    frr.add_neighbor(right.ipv6, 65020, families=["ipv6"])
    gobgp.add_neighbor(left.ipv4, 65010, families=["ipv4"])
    gobgp.add_neighbor(left.ipv6, 65010, families=["ipv6"])
    frr.announce(V4, communities=["65010:1"], large_communities=["65010:2:3"], med=20)
    frr.announce(V6, communities=["65535:0"], med=30)
    gobgp.announce("203.0.113.0/24", right.ipv4, ["65020:5"])
    frr.start()
    gobgp.start()
    frr.wait_established(right.ipv4, 20)
    frr.wait_established(right.ipv6, 20)
    routes = by_prefix(gobgp.wait_routes(lambda rs: len(rs) == 2, 10))
    assert routes[V4] == ReceivedRoute(
        V4, left.ipv4, [65010], ["65010:1"], ["65010:2:3"], 20, left.ipv4
    )
    assert routes[V6].next_hop == left.ipv6
    assert routes[V6].communities == ["65535:0"]
    assert routes[V6].med == 30
    got = frr.wait_routes(lambda rs: len(rs) == 1, 10)
    assert got == [
        ReceivedRoute("203.0.113.0/24", right.ipv4, [65020], ["65020:5"], [], None, right.ipv4)
    ]
    deadline = time.monotonic() + 5
    while not kernel_routes(left.ns, "203.0.113.0/24") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert kernel_routes(left.ns, "203.0.113.0/24") == [right.ipv4]
    # live changes through vtysh
    frr.announce("198.51.100.128/25", communities=["65010:9"])
    frr.withdraw(V4)
    gobgp.wait_routes(lambda rs: set(by_prefix(rs)) == {"198.51.100.128/25", V6}, 10, "vtysh")


def test_exabgp_and_frr_both_ways_live_api(two_hosts, daemons):
    left, right = two_hosts
    exa = daemons(ExaBgp, left.ns, 65030, left.ipv4)
    frr = daemons(Frr, right.ns, 65040, right.ipv4)
    exa.add_neighbor(right.ipv4, 65040, families=["ipv4"])
    exa.add_neighbor(right.ipv6, 65040, families=["ipv6"])
    frr.add_neighbor(left.ipv4, 65030, families=["ipv4"])
    frr.add_neighbor(left.ipv6, 65030, families=["ipv6"])
    exa.announce(V4, left.ipv4, ["65030:7"], ["65030:8:9"], med=70)
    exa.announce(V6, left.ipv6, ["65030:6"], med=60)
    frr.announce("203.0.113.0/24", communities=["65040:1"], med=5)
    exa.start()
    frr.start()
    frr.wait_established(left.ipv4, 20)
    frr.wait_established(left.ipv6, 20)
    exa.wait_established(right.ipv4, 5)
    routes = by_prefix(frr.wait_routes(lambda rs: len(rs) == 2, 10))
    assert routes[V4] == ReceivedRoute(
        V4, left.ipv4, [65030], ["65030:7"], ["65030:8:9"], 70, left.ipv4
    )
    assert routes[V6] == ReceivedRoute(V6, left.ipv6, [65030], ["65030:6"], [], 60, left.ipv6)
    got = exa.wait_routes(lambda rs: len(rs) == 1, 10)
    assert got == [
        ReceivedRoute("203.0.113.0/24", right.ipv4, [65040], ["65040:1"], [], 5, right.ipv4)
    ]
    # live announcement and withdrawal through ExaBGP's API process
    exa.announce("198.51.100.128/25", left.ipv4, ["65030:9"])
    frr.wait_routes(lambda rs: "198.51.100.128/25" in by_prefix(rs), 10, "live announcement")
    exa.withdraw(V4)
    frr.wait_routes(lambda rs: V4 not in by_prefix(rs), 10, "live withdrawal")


def test_bird_to_exabgp_with_md5(two_hosts, daemons):
    left, right = two_hosts
    bird = daemons(Bird, left.ns, 65050, left.ipv4)
    exa = daemons(ExaBgp, right.ns, 4200000060, right.ipv4)
    bird.add_neighbor(right.ipv4, 4200000060, password="s3cret key", families=["ipv4"])
    bird.add_neighbor(right.ipv6, 4200000060, families=["ipv6"])
    exa.add_neighbor(left.ipv4, 65050, password="s3cret key", families=["ipv4"])
    exa.add_neighbor(left.ipv6, 65050, families=["ipv6"])
    bird.announce(V4, communities=["65050:1", "65535:65281"], large_communities=["65050:0:1"])
    bird.announce(V6, med=99)
    bird.start()
    exa.start()
    exa.wait_established(left.ipv4, 20)
    exa.wait_established(left.ipv6, 20)
    routes = by_prefix(exa.wait_routes(lambda rs: len(rs) == 2, 10))
    assert routes[V4] == ReceivedRoute(
        V4, left.ipv4, [65050], ["65050:1", "65535:65281"], ["65050:0:1"], None, left.ipv4
    )
    assert routes[V6] == ReceivedRoute(V6, left.ipv6, [65050], [], [], 99, left.ipv6)
    # live changes: BIRD rewrites its config and `birdc configure`s
    bird.announce("203.0.113.0/24", med=3)
    bird.withdraw(V4)
    exa.wait_routes(lambda rs: set(by_prefix(rs)) == {"203.0.113.0/24", V6}, 10, "reconfig")


def test_md5_wrong_key_does_not_establish(two_hosts, daemons):
    left, right = two_hosts
    bird = daemons(Bird, left.ns, 65070, left.ipv4)
    gobgp = daemons(GoBgp, right.ns, 65080, right.ipv4)
    bird.add_neighbor(right.ipv4, 65080, password="right", families=["ipv4"])
    gobgp.add_neighbor(left.ipv4, 65070, password="wrong", families=["ipv4"])
    bird.start()
    gobgp.start()
    with pytest.raises(PeerError, match="not established"):
        bird.wait_established(right.ipv4, 4)
    assert gobgp.neighbor_state(left.ipv4) != "established"
    # the receiving kernel drops SYNs whose signature is wrong, and counts them
    failures = sum(md5_failures(host.ns) for host in two_hosts)
    assert failures > 0


def test_restart_reconnects_and_capture_is_clean(two_hosts, daemons, tmp_path):
    left, right = two_hosts
    bird = daemons(Bird, left.ns, 65090, left.ipv4)
    gobgp = daemons(GoBgp, right.ns, 65100, right.ipv4)
    bird.add_neighbor(right.ipv4, 65100, password="md5", families=["ipv4"])
    gobgp.add_neighbor(left.ipv4, 65090, password="md5", passive=True, families=["ipv4"])
    bird.announce(V4, communities=["65090:1"], med=1)
    pcap = tmp_path / "bgp.pcap"
    with Capture(right.ns, right.ifname, pcap):
        bird.start()
        gobgp.start()
        gobgp.wait_established(left.ipv4, 20)
        gobgp.wait_routes(lambda rs: [r.prefix for r in rs] == [V4], 10)
        old_pids = bird.pids
        bird.restart()
        assert bird.pids != old_pids
        bird.wait_established(right.ipv4, 20)
        gobgp.wait_established(left.ipv4, 10)
        routes = gobgp.wait_routes(lambda rs: [r.prefix for r in rs] == [V4], 10)
        assert routes[0].communities == ["65090:1"]
        gobgp.restart()
        bird.wait_established(right.ipv4, 20)
    assert tshark_check(pcap) == []
    seen = tshark_bgp_messages(pcap)
    assert seen["OPEN"] >= 6  # three sessions, two OPENs each
    assert seen["UPDATE"] >= 2
    assert seen["KEEPALIVE"] >= 6
    assert seen["NOTIFICATION"] >= 1  # BIRD says Cease when stopped


def test_tshark_check_reports_a_malformed_message(two_hosts, tmp_path):
    """The second opinion can fail: a BGP header with an impossible length is flagged."""
    left, right = two_hosts
    pcap = tmp_path / "bad.pcap"
    listener = right.ns.popen(
        "/usr/bin/python3", "-c",
        "import socket; s=socket.create_server(('192.0.2.2', 179)); c,_=s.accept(); c.recv(99)",
    )  # fmt: skip
    try:
        with Capture(left.ns, left.ifname, pcap):
            payload = "b'\\xff'*16 + bytes([0, 10, 4])"
            # the listener may not be listening yet: retry the connect, bounded (5 s)
            left.ns.exec(
                "/usr/bin/python3", "-c",
                "import socket,time\n"
                "for _ in range(50):\n"
                "    try:\n"
                "        c=socket.create_connection(('192.0.2.2', 179), 5); break\n"
                "    except ConnectionRefusedError:\n"
                "        time.sleep(0.1)\n"
                f"c.sendall({payload}); time.sleep(0.3)",
            )  # fmt: skip
    finally:
        listener.kill()
        listener.wait()
    assert tshark_check(pcap)


@pytest.mark.parametrize("router_cls", [Bird, Frr], ids=["bird", "frr"])
def test_router_installs_ecmp_in_kernel(topo, daemons, router_cls):
    """Two speakers with different ASNs announce one VIP; the router installs both paths."""
    router_ns = topo.add("router")
    router = daemons(router_cls, router_ns, 65200, "192.0.2.254")
    vip = "198.51.100.10/32"
    servers = []
    for i in (1, 2):
        ns = topo.add(f"srv{i}")
        topo.link(router_ns, ns, [f"203.0.113.{4 * i + 1}/30"], [f"203.0.113.{4 * i + 2}/30"])
        speaker = daemons(GoBgp, ns, 65200 + i, f"203.0.113.{4 * i + 2}")
        # GoBGP waits 5-10 s before its first active connect: let the router dial
        speaker.add_neighbor(f"203.0.113.{4 * i + 1}", 65200, passive=True, families=["ipv4"])
        speaker.announce(vip, f"203.0.113.{4 * i + 2}", [f"{65200 + i}:1"])
        router.add_neighbor(f"203.0.113.{4 * i + 2}", 65200 + i, families=["ipv4"])
        servers.append(speaker)
    router.start()
    for speaker in servers:
        speaker.start()
    for i in (1, 2):
        router.wait_established(f"203.0.113.{4 * i + 2}", 20)
    routes = router.wait_routes(lambda rs: len(rs) == 2, 10)
    assert {(r.peer, r.as_path[0]) for r in routes} == {
        ("203.0.113.6", 65201),
        ("203.0.113.10", 65202),
    }
    want = ["203.0.113.6", "203.0.113.10"]
    deadline = time.monotonic() + 5
    while kernel_routes(router_ns, vip) != want and time.monotonic() < deadline:
        time.sleep(0.05)
    assert kernel_routes(router_ns, vip) == want
    servers[0].withdraw(vip)
    deadline = time.monotonic() + 5
    while kernel_routes(router_ns, vip) != want[1:] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert kernel_routes(router_ns, vip) == want[1:]  # the withdrawn path left the kernel
