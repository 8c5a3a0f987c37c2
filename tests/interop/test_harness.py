"""The interop harness itself (bgplb.lab.peers, bgplb.lab.capture), proven by peering the real
daemons with each other in network namespaces: each class configures its daemon, brings the
session up, originates routes with attributes, and reads back what it received."""

from __future__ import annotations

import pytest

from bgplb.lab.peers import Bird, GoBgp, ReceivedRoute

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
