"""Connection pinning end to end: `bgplb router` with `[fib] pinning`, 3 servers with
bgplb speakers, a client holding >= 300 long-lived connections that stay idle for longer than
`idle_timer` (1 s) between probes.

drain one server -> 0 broken anywhere, and new connections avoid it; re-add it -> 0 broken;
300 new connections spread over all three, 0 broken; withdraw one for good -> exactly its
connections break; drain + withdraw another (session up) -> its pins linger for drain_linger
(0 broken meanwhile), then go. For the resilient group, the multipath group, and the resilient
group with strict rp_filter on the router. `bgplb status` counts the pinned connections per
server from conntrack.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from pinlab import VIP, VIP6, PinLab, server_addrs, wait_for

from prerequisites import require_binary

pytestmark = [pytest.mark.interop]

IDLE = 2.0  # > idle_timer (1 s): every bucket the kernel may migrate is migrated


def pins_by_server(lab: PinLab) -> dict[str, dict]:
    return {s["address"]: s for s in lab.status()["pinning"]["servers"]}


@pytest.mark.parametrize(
    ("group", "rp_filter"),
    [("resilient", 0), ("multipath", 0), ("resilient", 1)],
    ids=["resilient", "multipath", "resilient-strict-rp_filter"],
)
def test_pinning_no_planned_change_breaks_a_connection(
    topo, tmp_path: Path, group: str, rp_filter: int
) -> None:
    require_binary("nft")
    with PinLab(topo, tmp_path, rp_filter=rp_filter) as lab:
        lab.start_router(group, pinning=True, linger="4s")
        lab.start_servers()
        lab.wait_members([1, 2, 3])
        v = {i: server_addrs(i)[1] for i in (1, 2, 3)}
        lab.start_client()
        spread = lab.open(300)
        assert set(spread) == {"s1", "s2", "s3"}, spread  # every connect worked, all 3 used
        assert lab.probe()["broken"] == {}
        # status: conntrack counts per pinned server = the client's view
        pins = wait_for(
            "conntrack counts",
            lambda: (
                (p := pins_by_server(lab))
                and all(p[v[i]]["connections"] == spread[f"s{i}"] for i in (1, 2, 3))
                and p
            ),
            10,
        )
        assert {p["table"] for p in pins.values()} == {20000, 20001, 20002}
        if rp_filter:
            assert lab.rtr.exec("sysctl", "-n", "net.ipv4.conf.all.src_valid_mark").strip() == "1"

        # 1. drain s3: it leaves the group, its pinned connections keep working
        time.sleep(IDLE)
        lab.announce(3, drain=True)
        lab.wait_members([1, 2])
        assert pins_by_server(lab)[v[3]]["vips"] == {VIP: "draining"}
        time.sleep(IDLE)
        r = lab.probe()
        assert r["broken"] == {}, r
        assert r["ok"] == spread
        new = lab.open(60)
        assert "s3" not in new and "failed" not in new, new
        time.sleep(IDLE)
        assert lab.probe()["broken"] == {}

        # 2. re-add s3: nothing breaks
        lab.announce(3)
        lab.wait_members([1, 2, 3])
        time.sleep(IDLE)
        assert lab.probe()["broken"] == {}

        # 3. 300 more: spread over all three, nothing breaks
        more = lab.open(300)
        assert set(more) == {"s1", "s2", "s3"}, more
        time.sleep(IDLE)
        r = lab.probe()
        assert r["broken"] == {}, r
        total = {s: spread.get(s, 0) + new.get(s, 0) + more.get(s, 0) for s in ("s1", "s2", "s3")}
        assert r["ok"] == total

        # 4. s3 withdraws for good (not drained first): exactly its connections break
        lab.withdraw(3)
        lab.wait_members([1, 2])
        wait_for("s3's pin removed", lambda: v[3] not in pins_by_server(lab), 10)
        time.sleep(IDLE)
        r = lab.probe()
        assert r["broken"] == {"s3": total["s3"]}, r
        assert r["ok"] == {"s1": total["s1"], "s2": total["s2"]}, r

        # 5. s2 drains, then withdraws while its session stays up: pins linger (4 s)
        lab.announce(2, drain=True)
        lab.wait_members([1])
        lab.withdraw(2)
        wait_for("s2 lingering", lambda: pins_by_server(lab)[v[2]]["vips"] == {VIP: "linger"}, 10)
        r = lab.probe()
        assert r["broken"] == {"s3": total["s3"]}, r  # s2's still fine while lingering
        wait_for("s2's pin gone after drain_linger", lambda: v[2] not in pins_by_server(lab), 10)
        time.sleep(0.5)
        r = lab.probe()
        assert r["broken"].get("s1", 0) == 0 and r["broken"].get("s2") == total["s2"], r

        # clean exit: no rule, table route or nftables table of ours left
        assert lab.stop_router() == 0
        assert "bgplb" not in lab.rtr.exec("nft", "list", "tables")
        assert "fwmark" not in lab.rtr.exec("ip", "rule", "show")
        assert lab.rtr.exec("ip", "route", "show", "table", "20000", check=False).strip() == ""


def test_pinning_ipv6_and_status(topo, tmp_path: Path) -> None:
    """IPv6 VIP pinned the same way (rt ip6 nexthop): a drain breaks nothing; the status and
    its human rendering show the servers, marks and connection counts."""
    require_binary("nft")
    with PinLab(topo, tmp_path) as lab:
        lab.start_router("resilient", pinning=True)
        lab.start_servers(ipv6=True)
        for i in (1, 2, 3):
            lab.announce(i, v6=True)
        lab.wait_members([1, 2, 3], VIP6)
        lab.start_client("2001:db8:100::10")
        spread = lab.open(90)
        assert set(spread) == {"s1", "s2", "s3"}, spread
        v6 = {i: server_addrs(i)[3] for i in (1, 2, 3)}
        time.sleep(IDLE)
        lab.announce(1, drain=True, v6=True)
        lab.wait_members([2, 3], VIP6)
        time.sleep(IDLE)
        r = lab.probe()
        assert r["broken"] == {} and r["ok"] == spread, r
        assert "s1" not in lab.open(30)
        pins = pins_by_server(lab)
        assert pins[v6[1]]["vips"] == {VIP6: "draining"}
        assert pins[v6[1]]["connections"] == spread["s1"]
        listing = lab.rtr.exec("nft", "list", "table", "inet", "bgplb")
        assert f"rt ip6 nexthop {v6[1]}" in listing
        # the CLI rendering
        bgplb = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "bgplb"
        out = lab.rtr.exec(str(bgplb), "status", "--socket", str(lab.sock), "--role", "router")
        assert "Connection pinning" in out and v6[1] in out, out
        st = json.loads(
            lab.rtr.exec(str(bgplb), "status", "--json", "--socket", str(lab.sock), "--role",
                         "router")
        )  # fmt: skip
        assert st["pinning"]["enabled"] is True


def test_pinning_slots_survive_router_kill9_restart(topo, tmp_path: Path) -> None:
    """kill -9 leaves our nftables table behind; the new router reads the servers' slots from
    it, so the conntrack marks of established connections keep naming the same servers: after
    the restart a drained server's pinned connections still reach it (0 broken)."""
    import os
    import signal

    require_binary("nft")
    with PinLab(topo, tmp_path) as lab:
        lab.start_router("resilient", pinning=True)
        lab.start_servers()
        lab.wait_members([1, 2, 3])
        lab.start_client()
        spread = lab.open(90)
        assert set(spread) == {"s1", "s2", "s3"}, spread
        lab.announce(3, drain=True)
        lab.wait_members([1, 2])
        before = {a: (p["slot"], p["mark"]) for a, p in pins_by_server(lab).items()}
        assert lab.router is not None
        os.kill(lab.router.pid, signal.SIGKILL)
        lab.router.wait(10)
        assert "bgplb" in lab.rtr.exec("nft", "list", "tables")  # left behind by kill -9
        lab.start_router("resilient", pinning=True)
        assert "adopted 3 server slot(s)" in lab.router_log()
        lab.wait_members([1, 2], timeout=40)
        wait_for("3 pins again", lambda: len(pins_by_server(lab)) == 3, 20)
        after = {a: (p["slot"], p["mark"]) for a, p in pins_by_server(lab).items()}
        assert after == before
        time.sleep(IDLE)
        r = lab.probe()
        assert r["broken"] == {} and r["ok"] == spread, r


def test_pinning_conntrack_expiry_repins_to_the_current_group(topo, tmp_path: Path) -> None:
    """Documented limit: a connection idle for longer than its conntrack timeout loses its pin.
    With nf_conntrack_tcp_timeout_established = 3 s in the router's namespace: a drained
    server's connections survive while their entries live, and break once the entries expired
    (the next packet makes a new entry, pinned to the current group, i.e. to another server);
    the other servers' connections are re-pinned to the same servers and keep working."""
    require_binary("nft")
    with PinLab(topo, tmp_path) as lab:
        lab.rtr.sysctl("net.netfilter.nf_conntrack_tcp_timeout_established", 3)
        lab.start_router("resilient", pinning=True)
        lab.start_servers()
        lab.wait_members([1, 2, 3])
        lab.start_client()
        spread = lab.open(90)
        assert set(spread) == {"s1", "s2", "s3"}, spread
        lab.announce(3, drain=True)
        lab.wait_members([1, 2])
        r = lab.probe()
        assert r["broken"] == {}, r  # entries alive (< 3 s idle): pins hold
        time.sleep(5)  # entries expire
        r = lab.probe()
        assert r["broken"] == {"s3": spread["s3"]}, r
