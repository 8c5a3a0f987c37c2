"""BFD wired into BGP: `bgplb agent` with `bfd = {...}` against FRR 8.4 as the router
(zebra + bgpd + bfdd in the router namespace, `neighbor X bfd` for s1 only), two servers
announcing the same VIP, BGP hold time 30 s on every session. The lab is tests/interop/agent_lab.py
with `kind=Frr`.

s1's traffic is dropped (nftables in its namespace) -> FRR's bfdd goes Down with "control
detection time expired", bgpd resets the session *because of BFD* ("BFD down received" in
`show bgp neighbors json`) and zebra takes s1's nexthop out of the kernel route while s2 stays.
The proof that BFD did it, not the hold timer, is the stated reasons and the order of events
(the route is gone while the 30 s hold timer cannot have expired); nothing compares a duration
with a speed. Traffic restored -> BFD Up, BGP Established and both nexthops back.

FRR 8.4 quirk seen here (not a bgplb fault): bgpd requests its BFD session from 0.0.0.0 while
the BGP session is not up, and replaces it by one from its BGP source address and interface
when BGP becomes Established (bfdd deletes the first session, which sends Down, diag 3, and
creates a new one). The agent requests BFD as soon as the peer is configured, so the first
session is sometimes already Up: then bgpd sees BFD go Up -> Down and resets the new BGP
session with Cease/BFD Down (and the agent, told Down by its neighbor, does the same); BGP and
BFD come back a second later and the replacement session is stable from then on. The test
waits for that final session before it measures anything.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from agent_lab import SERVER_AS, Server, build_lab, wait_for

from bgplb.lab.peers import Frr

pytestmark = [pytest.mark.interop, pytest.mark.serial]  # BFD detection at 100 ms x 3

HOLD = 30  # BGP hold time on every session: far longer than any wait below
BFD_PEER = f"hold_time = {HOLD}\nbfd = {{ interval_ms = 100, multiplier = 3 }}\n"


def bfd_of(server: Server) -> dict[str, Any]:
    return server.status()["peers"][0]["bfd"] or {}


def frr_bfd_peer(frr: Frr, address: str, local: str | None = None) -> dict[str, Any]:
    """FRR bfdd's `show bfd peers json` entry for `address` (and local address `local` if
    given); {} if none."""
    try:
        peers = json.loads(frr.control("show bfd peers json") or "[]")
    except json.JSONDecodeError:
        return {}
    return next(
        (
            p
            for p in peers
            if p.get("peer") == address and (local is None or p.get("local") == local)
        ),
        {},
    )


def frr_neighbor(frr: Frr, address: str) -> dict[str, Any]:
    """bgpd's `show bgp neighbors X json` entry for `address`."""
    data: dict[str, Any] = json.loads(frr.control(f"show bgp neighbors {address} json"))
    return data.get(address, {})


def test_agent_bfd_against_frr(topo, daemons):
    lab = build_lab(topo, daemons, kind=Frr)
    frr = lab.daemon
    assert isinstance(frr, Frr)
    try:
        for s in lab.servers:  # s1 with BFD, s2 without (its path must stay)
            bfd = s is lab.servers[0]
            frr.add_neighbor(s.address, SERVER_AS, passive=True, hold_time=HOLD, bfd=bfd)
            s.peer_extra = BFD_PEER if bfd else f"hold_time = {HOLD}\n"
        s1, s2 = lab.servers
        assert f"neighbor {s1.address} bfd" in frr.config_text()
        assert f"neighbor {s2.address} bfd" not in frr.config_text()
        frr.start()
        assert len(frr.pids) == 3  # zebra, bfdd, bgpd
        for s in lab.servers:
            s.write_config(s.service())
            s.start_http()
            s.start_agent()
        for s in lab.servers:
            frr.wait_established(s.address, timeout=20)
        lab.wait_nexthops([s1.address, s2.address])
        # bgpd first asks bfdd for a session from 0.0.0.0 and replaces it with one from its
        # BGP source address once BGP is Established. If the first one was already Up, bgpd
        # sees its BFD go Up -> Down and resets BGP once (Cease/BFD Down; FRR 8.4 behaviour,
        # see the module docstring). Wait for the final session, then take the baselines.
        wait_for(
            lambda: frr_bfd_peer(frr, s1.address, s1.router).get("status") == "up",
            15,
            "FRR's BFD (from the BGP source address) Up",
        )
        frr.wait_established(s1.address, timeout=20)
        wait_for(lambda: bfd_of(s1).get("state") == "up", 15, "agent's BFD Up")
        lab.wait_nexthops([s1.address, s2.address])
        assert frr_bfd_peer(frr, s2.address) == {}  # s2 has no BFD in FRR
        nb = frr_neighbor(frr, s1.address)
        assert nb["bgpTimerHoldTimeMsecs"] == HOLD * 1000, nb
        assert nb.get("peerBfdInfo", {}).get("status") == "Up", nb.get("peerBfdInfo")
        dropped0 = nb["connectionsDropped"]
        notifications0 = nb["messageStats"]["notificationsSent"]
        st = bfd_of(s1)
        downs0 = st["downs"]
        # FRR's bfdd default profile: 300 ms x 3; the slower side sets the pace (RFC 5880 §6.8.2)
        assert st["remote_state"] == "up" and st["tx_interval_ms"] == 300, st
        assert st["detection_time_ms"] == 900, st
        assert s2.status()["peers"][0]["bfd"] is None

        s1.ns.drop_all_traffic()
        dropped = time.monotonic()
        lab.wait_nexthops([s2.address], timeout=HOLD - 10)
        gone = time.monotonic()
        # bfdd saw the failure, bgpd reset the session because of it, not its hold timer
        bp = wait_for(
            lambda: (p := frr_bfd_peer(frr, s1.address, s1.router)).get("status") == "down" and p,
            10,
            "FRR's BFD Down",
        )
        assert bp["diagnostic"] == "control detection time expired", bp
        nb = frr_neighbor(frr, s1.address)
        assert nb["bgpState"] != "Established", nb
        assert nb["connectionsDropped"] == dropped0 + 1, nb
        # bgpd closed it with its own Cease/BFD Down (RFC 9384), not a Hold Timer Expired
        assert nb["messageStats"]["notificationsSent"] == notifications0 + 1, nb
        assert nb["lastNotificationReason"] == "Cease/BFD Down", nb
        assert nb["lastErrorCodeSubcode"] == "060A", nb
        # the agent saw the same failure: BFD Down with diag 1, BGP torn down
        st = wait_for(
            lambda: (b := bfd_of(s1)).get("downs") == downs0 + 1 and b, 10, "agent BFD down"
        )
        assert st["last_down_diag"] == "control detection time expired", st
        assert s1.status()["peers"][0]["state"] != "Established"
        assert "BFD down (control detection time expired)" in s1.log_path.read_text()
        assert gone - dropped < HOLD  # order of events, not speed: before any hold expiry
        assert frr.neighbor_state(s2.address) == "established"
        assert frr_neighbor(frr, s2.address)["connectionsDropped"] == 0

        s1.ns.allow_all_traffic()
        frr.wait_established(s1.address, timeout=25)
        lab.wait_nexthops([s1.address, s2.address], timeout=20)
        wait_for(lambda: bfd_of(s1).get("state") == "up", 15, "agent's BFD Up again")
        wait_for(
            lambda: frr_bfd_peer(frr, s1.address, s1.router).get("status") == "up",
            10,
            "FRR's BFD Up again",
        )
        assert "Traceback" not in s1.log_path.read_text()
    finally:
        lab.close()
