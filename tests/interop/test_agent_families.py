"""A VIP whose address family the session cannot carry: an IPv6 VIP on a session between IPv4
addresses over a link without global IPv6, and an IPv4 VIP on a session between IPv6 addresses
over a link without IPv4. The agent holds that VIP back on that session (a log line and a
`held_back` entry in `bgplb status`), announces everything else, and never raises.

    rt eth-s1 192.0.2.1/30         <->  s1 eth-rt 192.0.2.2/30          (IPv4 only)
    rt eth-s2 2001:db8:2::1/64     <->  s2 eth-rt 2001:db8:2::2/64      (IPv6 only)

BIRD 2 is the router; every wait is bounded.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import pytest
from agent_lab import ROUTER_AS, SERVER_AS, VIP4, VIP6, Server, wait_for

from bgplb.lab.peers import Bird, kernel_routes

pytestmark = pytest.mark.interop


def test_vip_of_a_family_the_session_cannot_carry_is_held_back(topo, daemons):
    router = topo.add("rt")
    router.sysctl("net.ipv4.ip_forward", 1)
    router.sysctl("net.ipv6.conf.all.forwarding", 1)
    bird = daemons(Bird, router, ROUTER_AS, "192.0.2.1")
    s1ns, s2ns = topo.add("s1"), topo.add("s2")
    topo.link(router, s1ns, ["192.0.2.1/30"], ["192.0.2.2/30"], "eth-s1", "eth-rt")
    topo.link(router, s2ns, ["2001:db8:2::1/64"], ["2001:db8:2::2/64"], "eth-s2", "eth-rt")
    # s2 has no IPv4 address at all: its `address` is only its router id
    s1 = Server(
        "s1",
        s1ns,
        "192.0.2.2",
        "",
        "192.0.2.1",
        "",
        Path(tempfile.mkdtemp(prefix="bgplb-families-")),
    )
    s2 = Server("s2", s2ns, "198.18.0.2", "2001:db8:2::2", "2001:db8:2::1", "2001:db8:2::1",
                Path(tempfile.mkdtemp(prefix="bgplb-families-")))  # fmt: skip
    bird.add_neighbor("192.0.2.2", SERVER_AS, passive=True)
    bird.add_neighbor("2001:db8:2::2", SERVER_AS, passive=True)
    try:
        bird.start()
        for s in (s1, s2):
            s.extra_config = "graceful_restart = false"
            s.write_config(s.service(vips=(VIP4, VIP6)))
            s.start_http()
            s.start_agent()
        bird.wait_established("192.0.2.2", timeout=30)
        bird.wait_established("2001:db8:2::2", timeout=30)

        # each server's VIP of its session's family reaches the router's kernel
        wait_for(lambda: kernel_routes(router, VIP4) == ["192.0.2.2"], 20, "VIP4 via s1")
        wait_for(lambda: kernel_routes(router, VIP6) == ["2001:db8:2::2"], 20, "VIP6 via s2")
        # ... and the other one is reported, not sent
        for server, held, reason in (
            (s1, VIP6, "no IPV6 next hop"),
            (s2, VIP4, "no IPV4 next hop"),
        ):
            status = wait_for(
                lambda server=server: (st := server.status())["peers"][0]["held_back"] and st,
                10,
                f"{server.name} reports a held-back VIP",
            )
            entries = status["peers"][0]["held_back"]
            assert [e["prefix"] for e in entries] == [held], entries
            assert reason in entries[0]["reason"], entries
            assert status["services"][0]["status"] == "announced"
            log = server.log_path.read_text()
            assert f"not announcing {held}" in log, server.log_tail()
            assert "Traceback" not in log, server.log_tail()
            assert server.agent is not None and server.agent.poll() is None
            # the readable table says it too (squashed: rich wraps cells at 80 columns)
            table = server.cli("status", "--socket", str(server.socket)).stdout
            squashed = re.sub(r"[^0-9A-Za-z:.]", "", table)
            assert "notannounced" in squashed and held[:12] in squashed, table

        routes = bird.received_routes()
        assert {(r.prefix, r.peer) for r in routes} == {
            (VIP4, "192.0.2.2"),
            (VIP6, "2001:db8:2::2"),
        }, routes
    finally:
        for s in (s1, s2):
            s.stop()
            shutil.rmtree(s.workdir, ignore_errors=True)
