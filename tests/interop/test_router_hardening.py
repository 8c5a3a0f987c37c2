"""`bgplb router` in namespaces with the real kernel: one server sends a poisonous UPDATE (a link
bandwidth extended community of +inf, built with the bgplb.bgp codec), the other servers'
announcements and withdrawals keep reaching the kernel, and the poisonous path is installed with
equal weight after one log line, without any internal error.

Layout as in test_router_interop: router namespace `rtr`, server i linked by a veth pair,
192.0.2.(8i+1)/29 on the router side, .(8i+2) on the server.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_router_interop import (
    OPEN_RANGES,
    VIP,
    RouterProc,
    build,
    hops,
    make_speaker,
    router_config,
    server_addrs,
    wait_for,
)

from bgplb.lab.peers import GoBgp

pytestmark = [pytest.mark.interop]

# A BGP speaker announcing one prefix with a +inf link bandwidth; withdraws and stops on stdin
# EOF or any line; exits by itself after 600 s.
POISON = """
import asyncio, ipaddress, sys
from bgplb.bgp.attributes import ExtendedCommunity, PathAttributes
from bgplb.bgp.families import IPV4_UNICAST
from bgplb.bgp.prefix import Prefix
from bgplb.bgp.session import Session, SessionConfig, SessionEstablished
from bgplb.io.bgp import BgpPeer, Transport

async def main():
    local, router, vip = sys.argv[1:4]
    up = asyncio.Event()
    session = Session(SessionConfig(
        local_asn=65003, router_id=ipaddress.IPv4Address(local), peer_asn=65530,
        hold_time=9, families=(IPV4_UNICAST,), connect_retry_time=1.0))
    peer = BgpPeer(session, Transport(remote=ipaddress.IPv4Address(router),
                                      local=ipaddress.IPv4Address(local)),
                   lambda p, e: up.set() if isinstance(e, SessionEstablished) else None)
    peer.start()
    await asyncio.wait_for(up.wait(), 30)
    inf = ExtendedCommunity.link_bandwidth(65003, float("inf"))
    session.announce(Prefix.parse(vip), PathAttributes(
        next_hop=ipaddress.IPv4Address(local), extended_communities=(inf,)))
    peer.kick()
    print("announced", flush=True)
    loop = asyncio.get_running_loop()
    await asyncio.wait_for(loop.run_in_executor(None, sys.stdin.readline), 600)
    await peer.stop("test done")

asyncio.run(main())
"""

BAD_BANDWIDTH_LINE = "link bandwidth community not a finite positive number"


def group_weights(rtr, prefix: str) -> list[int]:
    """Weights of the members of the nexthop group of `prefix`'s route."""
    (route,) = json.loads(rtr.exec("ip", "-j", "route", "show", prefix, "proto", "200"))
    (group,) = json.loads(rtr.exec("ip", "-j", "nexthop", "show", "id", str(route["nhid"])))
    return sorted(m.get("weight", 1) for m in group["group"])


def test_router_poisonous_update_leaves_the_other_peers_alone(
    topo, daemons, tmp_path: Path
) -> None:
    rtr, (s1, s2, s3) = build(topo, 3)
    router = RouterProc(rtr, tmp_path, router_config(OPEN_RANGES))
    router.start()
    (tmp_path / "poison.py").write_text(POISON)
    poison: subprocess.Popen[bytes] | None = None
    v4 = [server_addrs(i)[1] for i in (1, 2, 3)]
    try:
        good = [make_speaker(daemons, GoBgp, s, i, 65000 + i) for i, s in ((1, s1), (2, s2))]
        for d in good:
            d.announce(VIP)
            d.start()
        wait_for("2 nexthops", lambda: hops(rtr, VIP) == v4[:2], 30)

        poison = s3.popen(
            sys.executable,
            str(tmp_path / "poison.py"),
            v4[2],
            server_addrs(3)[0],
            VIP,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert poison.stdout is not None
        assert poison.stdout.readline().strip() == b"announced"
        # the poisonous path is installed, with the same weight as the others
        wait_for("3 nexthops", lambda: hops(rtr, VIP) == v4, 30)
        (row,) = router.status()["vips"]
        assert {n["address"]: n["weight"] for n in row["nexthops"]} == dict.fromkeys(v4, 64)
        assert len(set(group_weights(rtr, VIP))) == 1, group_weights(rtr, VIP)

        # the others' changes keep reaching the kernel
        good[0].withdraw(VIP)
        wait_for("s1 withdrawn", lambda: hops(rtr, VIP) == v4[1:], 20)
        good[1].announce("198.51.100.11/32")
        wait_for("s2's new VIP", lambda: hops(rtr, "198.51.100.11/32") == [v4[1]], 20)
        good[0].announce(VIP)
        wait_for("s1 back", lambda: hops(rtr, VIP) == v4, 20)

        st = router.status()
        log = router.log_text()
        assert log.count(BAD_BANDWIDTH_LINE) == 1, log
        assert "internal error" not in log, log
        assert st["counters"]["internal_errors"] == {}
        assert {p["address"]: p["bad_bandwidth"] for p in st["peers"]}[v4[2]] == 1
        assert all(p["established"] for p in st["peers"])
        assert router.stop() == 0
    finally:
        if poison is not None:
            if poison.poll() is None:
                poison.kill()
            poison.wait(5)
            for pipe in (poison.stdin, poison.stdout):
                if pipe is not None:
                    pipe.close()
        if router.proc and router.proc.poll() is None:
            router.stop()
