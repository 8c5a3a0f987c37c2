"""`bgplb agent` on two servers against BIRD 2 as the router, in network namespaces, with the
kernel's multipath route as the judge: ECMP, health failover, drain, SIGTERM, SIGHUP, IPv6."""

from __future__ import annotations

import signal

import pytest
from agent_lab import VIP4, VIP6, build_lab, wait_for

pytestmark = pytest.mark.interop


@pytest.fixture
def lab(topo, daemons):
    lab = build_lab(topo, daemons)
    try:
        yield lab
    finally:
        lab.close()


def test_two_servers_ecmp_and_health_failover(lab):
    lab.start()
    s1, s2 = lab.servers
    lab.wait_nexthops([s1.address, s2.address])
    assert s1.has_vip(VIP4) and s2.has_vip(VIP4)
    routes = lab.bird.received_routes()
    assert {r.next_hop for r in routes if r.prefix == VIP4} == {s1.address, s2.address}
    assert all(r.as_path == [65000] for r in routes)

    s1.stop_http()
    lab.wait_nexthops([s2.address])
    # the VIP goes from lo once the withdrawal is out
    wait_for(lambda: not s1.has_vip(VIP4), 10, "VIP removed from s1's lo")
    status = s1.status()
    web = status["services"][0]
    assert web["healthy"] is False and web["status"] == "withdrawn"
    assert web["checks"][0]["last_ok"] is False

    s1.start_http()
    lab.wait_nexthops([s1.address, s2.address])
    assert s1.has_vip(VIP4)


def test_drain_sends_graceful_shutdown_then_withdraws_and_undrain(lab):
    lab.start()
    s1, s2 = lab.servers
    lab.wait_nexthops([s1.address, s2.address])
    out = s1.cli("drain", "web", "--socket", str(s1.socket)).stdout
    assert "draining" in out
    routes = lab.bird.wait_routes(
        lambda rs: any(r.next_hop == s1.address and "65535:0" in r.communities for r in rs),
        timeout=5,
        what="GRACEFUL_SHUTDOWN from s1",
    )
    s2_route = [r for r in routes if r.next_hop == s2.address]
    assert s2_route and "65535:0" not in s2_route[0].communities
    assert s1.has_vip(VIP4)  # still serving while drained
    lab.wait_nexthops([s2.address], timeout=10)  # withdrawn after drain_time (2s)
    # drain_vip_linger (3 s here): the VIP stays on lo after a drain's withdrawal, so
    # connections a pinning router still sends to this server keep working; then it goes.
    assert s1.has_vip(VIP4)
    wait_for(lambda: not s1.has_vip(VIP4), 10, "VIP removed after the drain linger")
    assert s1.status()["services"][0]["drained"] is True

    s1.cli("undrain", "--socket", str(s1.socket))
    lab.wait_nexthops([s1.address, s2.address])


def test_drain_survives_restart(lab):
    lab.start()
    s1, s2 = lab.servers
    lab.wait_nexthops([s1.address, s2.address])
    s1.cli("drain", "web", "--socket", str(s1.socket))
    lab.wait_nexthops([s2.address], timeout=10)
    s1.signal(signal.SIGTERM)
    assert s1.wait_exit() == 0
    s1.start_agent()
    lab.bird.wait_established(s1.address, timeout=20)
    status = wait_for(
        lambda: (st := s1.status())["services"][0]["healthy"] and st, 10, "s1 healthy again"
    )
    assert status["services"][0]["drained"] is True
    assert lab.nexthops() == [s2.address]


def test_sigterm_withdraws_everything_and_removes_vips(lab):
    lab.start()
    s1, s2 = lab.servers
    lab.wait_nexthops([s1.address, s2.address])
    s1.signal(signal.SIGTERM)
    # draining first: GRACEFUL_SHUTDOWN is seen before the withdrawal
    lab.bird.wait_routes(
        lambda rs: any(r.next_hop == s1.address and "65535:0" in r.communities for r in rs),
        timeout=5,
        what="GRACEFUL_SHUTDOWN on SIGTERM",
    )
    assert s1.wait_exit(timeout=20) == 0, s1.log_tail()
    assert lab.nexthops() == [s2.address]
    assert not s1.has_vip(VIP4)
    assert lab.bird.neighbor_state(s1.address) != "established"
    log = s1.log_path.read_text()
    assert "agent stopped: everything withdrawn" in log
    assert "Traceback" not in log


def test_sighup_adds_and_removes_a_service(lab):
    vip_b = "198.51.100.20/32"
    lab.start()
    s1, s2 = lab.servers
    lab.wait_nexthops([s1.address, s2.address])
    s1.write_config(s1.service() + s1.service("api", (vip_b,)))
    s1.signal(signal.SIGHUP)
    lab.wait_nexthops([s1.address], prefix=vip_b)
    assert lab.nexthops() == sorted([s1.address, s2.address])  # web untouched
    # an invalid config is refused, the running one kept
    good = s1.config_path.read_text()
    s1.config_path.write_text(good + "\nbogus_key = 1\n")
    s1.signal(signal.SIGHUP)
    wait_for(lambda: "reload refused" in s1.log_path.read_text(), 10, "reload refused")
    assert lab.nexthops(vip_b) == [s1.address]
    # remove the service again
    s1.write_config(s1.service())
    s1.signal(signal.SIGHUP)
    lab.wait_nexthops([], prefix=vip_b)
    wait_for(lambda: not s1.has_vip(vip_b), 10, "api VIP removed")
    assert lab.nexthops() == sorted([s1.address, s2.address])
    assert s1.agent is not None and s1.agent.poll() is None


def test_ipv6_vip_over_mp_bgp(lab):
    lab.start(services=None)
    s1, s2 = lab.servers
    for s in lab.servers:
        s.write_config(s.service(vips=(VIP4, VIP6)))
        s.signal(signal.SIGHUP)
    lab.wait_nexthops([s1.address6, s2.address6], prefix=VIP6)
    assert s1.has_vip(VIP6)
    s1.stop_http()
    lab.wait_nexthops([s2.address6], prefix=VIP6)
    lab.wait_nexthops([s2.address], prefix=VIP4)
