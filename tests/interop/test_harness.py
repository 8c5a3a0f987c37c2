"""The interop harness itself (bgplb.lab.peers, bgplb.lab.capture), proven by peering the real
daemons with each other in network namespaces: each class configures its daemon, brings the
session up, originates routes with attributes, and reads back what it received."""

from __future__ import annotations

import time

import pytest

from bgplb.lab.peers import Bird, ExaBgp, Frr, GoBgp, ReceivedRoute, kernel_routes

pytestmark = pytest.mark.interop

V4 = "198.51.100.0/24"
V6 = "2001:db8:100::/48"


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
