"""`[fib] group = "consistent"` with the real kernel: the Maglev table in nftables, the pin slot
marks it sets, and the key property — two routers with the same paths send every flow to the
same server, whatever their history (paths learned in another order, a server leaving and
returning on one router only, a router killed with SIGKILL and restarted).

Flows are UDP datagrams with distinct source ports from one client address; a receiver in each
server namespace logs which flows it got (tests/interop/consistentlab.py). Also: pinned TCP
connections moving between the routers (and opened through the one that does not see the
replies), an IPv6 VIP, the table held by the FIB's startup deferral after a kill -9, and
tcp_be_liberal saved and restored.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from consistentlab import VIP_ADDR, ConsistentLab, expected_fingerprint, server_addr
from test_router_interop import wait_for

from prerequisites import require_binary

pytestmark = [pytest.mark.interop]

FLOWS = 200


def rules_and_tables(lab: ConsistentLab, name: str) -> dict[int, str]:
    """{fwmark: server} from the router's ip rules and per-server tables."""
    ns = lab.rns[name]
    out: dict[int, str] = {}
    for rule in json.loads(ns.exec("ip", "-j", "rule", "show")):
        if rule.get("priority") != 1000 or "fwmark" not in rule:
            continue
        table = rule["table"]
        routes = json.loads(ns.exec("ip", "-j", "route", "show", "table", str(table)))
        for r in routes:
            if r["dst"] == VIP_ADDR:
                out[int(rule["fwmark"], 16)] = r["gateway"]
    return out


def chain_marks(lab: ConsistentLab, name: str, chain: str) -> list[int]:
    out = lab.rns[name].exec("nft", "-j", "list", "chain", "inet", "bgplb", chain)
    for item in json.loads(out)["nftables"]:
        rule = item.get("rule")
        if rule:
            m = rule["expr"][0]["mangle"]["value"]["map"]
            pairs = sorted(m["data"]["set"], key=lambda p: p[0])
            return [int(v) for _, v in pairs]
    raise AssertionError(f"no rule in chain {chain}")


@pytest.mark.serial
@pytest.mark.parametrize("pinning", [False, True], ids=["alone", "pinning"])
def test_one_router_table_marks_and_traffic(topo, tmp_path: Path, pinning: bool) -> None:
    require_binary("nft")
    fib = "pinning = true" if pinning else ""
    with ConsistentLab(topo, tmp_path, routers=("ra",), fib=fib) as lab:
        lab.start_router("ra")
        for i in (1, 2, 3):
            lab.announce("ra", i)
        fp = lab.wait_table("ra", [1, 2, 3])
        assert lab.status_fingerprint("ra", fp) == fp
        # the table's marks are the pin slots: mark -> ip rule -> table with VIP via server
        by_mark = rules_and_tables(lab, "ra")
        assert sorted(by_mark.values()) == [server_addr(i) for i in (1, 2, 3)]
        marks = chain_marks(lab, "ra", f"cset_{fp[:16]}")
        assert len(marks) == 4093 and set(marks) == set(by_mark)
        # the kernel's table is the pure one: slot i's mark names slot i's server
        from ipaddress import ip_address

        from bgplb.router.maglev import Backend, build_table

        table = build_table([Backend(ip_address(server_addr(i)), 64) for i in (1, 2, 3)])
        assert [by_mark[m] for m in marks] == [str(a) for a in table.addresses()]
        st = lab.vip_status("ra")
        assert st is not None and st["consistent"]["size"] == 4093
        assert set(st["consistent"]["shares"]) == {server_addr(i) for i in (1, 2, 3)}
        # traffic reaches all three servers
        got = lab.flows("ra", "one", FLOWS)
        assert len(got) == FLOWS
        counts = {i: sum(1 for s in got.values() if s == i) for i in (1, 2, 3)}
        assert all(c >= FLOWS // 6 for c in counts.values()), counts
        if pinning:
            liberal = lab.rns["ra"].exec(
                "sysctl", "-n", "net.netfilter.nf_conntrack_tcp_be_liberal"
            )
            assert liberal.strip() == "1"
        # the same flows again: the same servers (pinned or hashed again)
        assert lab.flows("ra", "again", FLOWS) == got


@pytest.mark.serial
def test_two_routers_map_every_flow_to_the_same_server_whatever_their_history(
    topo, tmp_path: Path
) -> None:
    require_binary("nft")
    with ConsistentLab(topo, tmp_path) as lab:
        lab.start_router("ra")
        lab.start_router("rb")
        # paths learned in opposite orders
        for i in (1, 2, 3):
            lab.announce("ra", i)
            lab.wait_table("ra", list(range(1, i + 1)))
        for i in (3, 2, 1):
            lab.announce("rb", i)
        fp = lab.wait_table("ra", [1, 2, 3])
        assert lab.wait_table("rb", [1, 2, 3]) == fp
        assert lab.status_fingerprint("ra", fp) == lab.status_fingerprint("rb", fp) == fp

        before = lab.flows("ra", "a1", FLOWS)
        assert len(before) == FLOWS and set(before.values()) == {1, 2, 3}
        assert lab.flows("rb", "b1", FLOWS) == before

        # history on rb only: s2 leaves -> only s2's flows move; then it returns
        lab.withdraw("rb", 2)
        lab.wait_table("rb", [1, 3])
        want = expected_fingerprint([1, 3])
        assert lab.status_fingerprint("rb", want) == want
        during = lab.flows("rb", "b2", FLOWS)
        assert len(during) == FLOWS and set(during.values()) == {1, 3}
        stayed = {f: s for f, s in before.items() if s != 2}
        assert {f: during[f] for f in stayed} == stayed  # flows of s1 and s3 did not move
        lab.announce("rb", 2)
        lab.wait_table("rb", [1, 2, 3])
        assert lab.flows("rb", "b3", FLOWS) == before
        assert lab.flows("ra", "a3", FLOWS) == before

        # ra killed with SIGKILL and restarted: the same mapping again
        lab.kill9("ra")
        lab.start_router("ra")
        assert lab.wait_table("ra", [1, 2, 3], timeout=60) == fp
        assert lab.status_fingerprint("ra", fp) == fp
        assert lab.flows("ra", "a4", FLOWS) == before
        assert lab.flows("rb", "b4", FLOWS) == before

        # rb stopped cleanly (our table, rules and routes removed) and started again
        assert lab.routers["rb"].stop() == 0
        assert lab.vmap_target("rb") is None
        lab.start_router("rb")
        assert lab.wait_table("rb", [1, 2, 3], timeout=60) == fp
        assert lab.flows("rb", "b5", FLOWS) == before


@pytest.mark.serial
def test_pinned_connections_move_between_routers_without_breaking(topo, tmp_path: Path) -> None:
    """With pinning: 90 idle TCP connections opened through ra, then the client's route moves
    to rb (which has never seen them; the servers still answer through ra, so rb sees one
    direction only): rb hashes them to the same servers (tcp_be_liberal keeps their packets
    valid) and pins them; none breaks. Then back to ra: none breaks."""
    require_binary("nft")
    with ConsistentLab(topo, tmp_path, fib="pinning = true") as lab:
        lab.start_router("ra")
        lab.start_router("rb")
        for name in ("ra", "rb"):
            for i in (1, 2, 3):
                lab.announce(name, i)
        fp = lab.wait_table("ra", [1, 2, 3])
        assert lab.wait_table("rb", [1, 2, 3]) == fp
        lab.start_tcp()
        opened = lab.ask(open=90)["opened"]
        assert None not in opened and set(opened) == {"s1", "s2", "s3"}, opened
        r = lab.ask(probe=True)
        assert r["broken"] == {} and r["alive"] == 90, r
        assert (
            lab.rns["rb"].exec("sysctl", "-n", "net.netfilter.nf_conntrack_tcp_be_liberal").strip()
            == "1"
        )
        lab.via("rb")
        r = lab.ask(probe=True)
        assert r["broken"] == {} and r["alive"] == 90, r
        # rb pinned them (conntrack entries with a pin mark) to the servers ra had chosen
        pins = lab.routers["rb"].status()["pinning"]["servers"]
        assert sum(s["connections"] or 0 for s in pins) >= 90, pins
        lab.via("ra")
        r = lab.ask(probe=True)
        assert r["broken"] == {} and r["alive"] == 90, r

        # 90 new connections through rb, the servers answering through ra: rb sees the SYN but
        # not the SYN-ACK, so conntrack finds the client's next packets INVALID (no entry, no
        # pin); they still follow rb's table, the SYN's server, and nothing breaks
        lab.via("rb")
        opened = lab.ask(open=90)["opened"]
        assert None not in opened and set(opened) == {"s1", "s2", "s3"}, opened
        r = lab.ask(probe=True)
        assert r["broken"] == {} and r["alive"] == 180, r


@pytest.mark.serial
def test_ipv6_vip_gets_an_ip6_table_and_reaches_every_server(topo, tmp_path: Path) -> None:
    """IPv6: `ip6 daddr vmap` -> a chain hashing `ip6 saddr . th sport . ip6 daddr . th dport`;
    its marks are the pin slots whose tables route VIP6 to the servers; 90 TCP connections to
    the IPv6 VIP reach all three servers (one router, a link per server)."""
    from ipaddress import ip_address

    from pinlab import VIP6, PinLab, server_addrs, wait_for

    from bgplb.router.maglev import Backend, build_table

    require_binary("nft")
    with PinLab(topo, tmp_path) as lab:
        lab.start_router("consistent", pinning=False)
        lab.start_servers(ipv6=True)
        for i in (1, 2, 3):
            lab.announce(i, v6=True)
        lab.wait_members([1, 2, 3], VIP6)
        v6 = [server_addrs(i)[3] for i in (1, 2, 3)]
        table = build_table([Backend(ip_address(a), 64) for a in v6])
        chain = f"cset_{table.fingerprint()[:16]}"
        vip6 = VIP6.split("/")[0]

        def target() -> str | None:
            items = json.loads(lab.rtr.exec("nft", "-j", "list", "table", "inet", "bgplb"))
            for item in items["nftables"]:
                for e in (item.get("rule") or {}).get("expr", []):
                    if "vmap" in e and e["vmap"]["key"]["payload"]["protocol"] == "ip6":
                        for key, verdict in e["vmap"]["data"]["set"]:
                            if key == vip6:
                                return str(verdict["jump"]["target"])
            return None

        wait_for("the IPv6 VIP's table", lambda: target() == chain, 30)
        by_mark: dict[int, str] = {}
        for rule in json.loads(lab.rtr.exec("ip", "-6", "-j", "rule", "show")):
            if rule.get("priority") == 1000 and "fwmark" in rule:
                for r in json.loads(
                    lab.rtr.exec("ip", "-6", "-j", "route", "show", "table", str(rule["table"]))
                ):
                    if r["dst"] == vip6:
                        by_mark[int(rule["fwmark"], 16)] = r["gateway"]
        out = lab.rtr.exec("nft", "-j", "list", "chain", "inet", "bgplb", chain)
        rule = next(i["rule"] for i in json.loads(out)["nftables"] if "rule" in i)
        m = rule["expr"][0]["mangle"]["value"]["map"]
        assert m["key"]["jhash"]["expr"]["concat"][0]["payload"]["protocol"] == "ip6"
        marks = [int(v) for _, v in sorted(m["data"]["set"], key=lambda p: p[0])]
        assert [by_mark[k] for k in marks] == [str(a) for a in table.addresses()]
        lab.start_client(vip6)
        spread = lab.open(90)
        assert set(spread) == {"s1", "s2", "s3"}, spread


def test_tcp_be_liberal_is_saved_and_restored_even_after_kill(topo, tmp_path: Path) -> None:
    """Consistent mode with pinning sets nf_conntrack_tcp_be_liberal = 1 in the router's
    namespace after saving the value found; a later instance (restart after kill -9) restores
    it at its cleanup; a value changed by someone since is kept."""
    from bgplb.linux.pinroutes import KernelPins

    rtr = topo.add("rtr")
    key = "net.netfilter.nf_conntrack_tcp_be_liberal"

    def value() -> str:
        return rtr.exec("sysctl", "-n", key).strip()

    rtr.sysctl(key, 0)
    first = KernelPins(0xFF0000, (20000, 20254), 1000, "bgplb", netns=rtr.name, state_dir=tmp_path)
    assert first.ensure_be_liberal() is True and value() == "1"
    state = first.be_liberal_state
    assert json.loads(state.read_text())["tcp_be_liberal"] == "0"
    assert first.ensure_be_liberal() is False  # already 1: the saved value is kept
    again = KernelPins(0xFF0000, (20000, 20254), 1000, "bgplb", netns=rtr.name, state_dir=tmp_path)
    again.cleanup()  # the first never cleaned up ("kill -9")
    assert value() == "0" and not state.exists()
    assert again.ensure_be_liberal() is True
    rtr.sysctl(key, 0)  # someone set it back to 0 after us: our cleanup leaves it
    again.cleanup()
    assert value() == "0" and not state.exists()
    rtr.sysctl(key, 1)  # someone else's 1, nothing saved: kept
    again.cleanup()
    assert value() == "1"
    first.close()
    again.close()


@pytest.mark.serial
def test_after_a_kill_the_table_holds_the_servers_not_yet_relearned(topo, tmp_path: Path) -> None:
    """kill -9, then only s1's session comes back: while the FIB's startup deferral holds the
    adopted paths of s2 and s3, the table is still that of {s1, s2, s3} (not {s1}), so every
    flow keeps its server; when s2 and s3 announce again nothing changes either."""
    require_binary("nft")
    with ConsistentLab(topo, tmp_path, routers=("ra",), fib='startup_defer = "60s"') as lab:
        lab.start_router("ra")
        for i in (1, 2, 3):
            lab.announce("ra", i)
        fp = lab.wait_table("ra", [1, 2, 3])
        before = lab.flows("ra", "a1", FLOWS)
        assert len(before) == FLOWS and set(before.values()) == {1, 2, 3}
        lab.kill9("ra")
        lab.drop_speaker("ra", 2)
        lab.drop_speaker("ra", 3)
        lab.start_router("ra")

        def relearned_s1_only() -> bool:
            v = lab.vip_status("ra")
            return bool(v and v["paths"] == 1 and (v.get("consistent") or {}).get("fingerprint"))

        wait_for("ra re-learned s1 and planned its table", relearned_s1_only, 30)
        assert lab.status_fingerprint("ra") == fp
        assert lab.vmap_target("ra") == f"cset_{fp[:16]}"
        assert lab.flows("ra", "a2", FLOWS) == before
        lab.announce("ra", 2)
        lab.announce("ra", 3)
        wait_for(
            "ra re-learned all three", lambda: (lab.vip_status("ra") or {}).get("paths") == 3, 30
        )
        assert lab.status_fingerprint("ra", fp) == fp
        assert lab.flows("ra", "a3", FLOWS) == before
