"""`group = "consistent"` without root: the tables per path set (bgplb.router.consistent), the
nftables transaction (bgplb.linux.nft_consistent) and the runtime (pinning_runtime) on the
in-memory FIB, with and without pinning."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from ipaddress import ip_address, ip_network
from types import SimpleNamespace
from typing import Any

import pytest
from test_pinning_runtime import VIP1, VIP2, A, B, MemoryPins, close, forwarding, nexthop, sync

from bgplb.config.router import FibConfig
from bgplb.linux.memfib import MemoryFib, MemoryKernel
from bgplb.linux.nft_consistent import ConsistentChain, consistent_ruleset
from bgplb.linux.nftables import PinMark, parse_marks
from bgplb.linux.pinroutes import PinSpec
from bgplb.router import pinning_runtime as runtime
from bgplb.router.consistent import ConsistentTables
from bgplb.router.maglev import Backend, build_table
from bgplb.router.pinning import GroupMember, Pin, Server

C = ip_address("192.0.2.12")
N1, N2, N3 = (ip_network(f"198.51.100.{i}/32") for i in (1, 2, 3))


def pin(address: Any, slot: int, *vips: Any) -> Pin:
    return Pin(Server(address, 7), slot, slot << 16, 20000 + slot, tuple(vips))


def members(*pairs: tuple[Any, int]) -> tuple[GroupMember, ...]:
    return tuple(GroupMember(a, 7, w) for a, w in pairs)


def test_vips_with_one_path_set_share_a_table_and_marks_follow_slots() -> None:
    ct = ConsistentTables(1021, 5)
    groups = {N1: members((A, 64), (B, 64)), N2: members((B, 64), (A, 64)), N3: members((A, 64))}
    pins = [pin(A, 1, N1, N2, N3), pin(B, 2, N1, N2)]
    plans = ct.plan(groups, pins)
    assert len(plans) == 2
    both = next(p for p in plans if len(p.vips) == 2)
    assert both.vips == (N1, N2)
    want = build_table([Backend(A, 64), Backend(B, 64)], 1021, 5)
    assert both.table == want
    mark = {A: 1 << 16, B: 2 << 16}
    assert both.marks == tuple(mark[a] for a in want.addresses())
    st = ct.status(N1)
    assert st is not None and st.fingerprint == want.fingerprint() and st.size == 1021
    assert sum(st.shares.values()) == pytest.approx(1.0)
    assert ct.status(ip_network("198.51.100.99/32")) is None


def test_two_routers_with_other_slots_have_the_same_tables() -> None:
    groups = {N1: members((A, 64), (B, 64), (C, 1))}
    r1 = ConsistentTables(4093, 9).plan(groups, [pin(A, 1, N1), pin(B, 2, N1), pin(C, 3, N1)])
    r2 = ConsistentTables(4093, 9).plan(groups, [pin(C, 1, N1), pin(A, 5, N1), pin(B, 2, N1)])
    assert r1[0].name == r2[0].name and r1[0].table == r2[0].table
    assert r1[0].marks != r2[0].marks  # the marks are local to each router


def test_a_member_without_a_pin_is_left_out() -> None:
    ct = ConsistentTables(1021, 5)
    (plan,) = ct.plan({N1: members((A, 64), (B, 64))}, [pin(A, 1, N1)])
    assert {b.address for b in plan.table.backends} == {A}
    assert ct.plan({N1: members((A, 64))}, []) == ()


def test_ruleset_with_and_without_pinning() -> None:
    chain = ConsistentChain("cset_x", 4, 3, (0x10000, 0x20000, 0x10000), (N1, N2))
    marks = [PinMark(A, 7, 0x10000, 1), PinMark(B, 7, 0x20000, 2)]
    cmds = consistent_ruleset("bgplb", 0xFF0000, marks, [N1, N2], [chain], pinning=True)
    rules = [c["add"]["rule"] for c in cmds if "rule" in c.get("add", {})]
    pre = [r for r in rules if r["chain"] == "prerouting"]
    # the consistent rule comes first, for every packet (no conntrack condition: INVALID
    # packets have no entry); pinning's rules follow and override it for pinned connections
    assert pre[0]["comment"] == "bgplb-consistent ipv4"
    assert "'ct'" not in str(pre[0]["expr"])
    assert pre[1]["expr"][1] == {"return": None}
    vmap = pre[0]["expr"][-1]["vmap"]
    assert vmap["data"]["set"] == [
        ["198.51.100.1", {"jump": {"target": "cset_x"}}],
        ["198.51.100.2", {"jump": {"target": "cset_x"}}],
    ]
    (body,) = [r for r in rules if r["chain"] == "cset_x"]
    m = body["expr"][0]["mangle"]["value"]["map"]
    assert m["key"]["jhash"]["mod"] == 3 and m["key"]["jhash"]["seed"] == 3
    assert [e["payload"]["field"] for e in m["key"]["jhash"]["expr"]["concat"]] == [
        "saddr",
        "sport",
        "daddr",
        "dport",
    ]
    assert m["data"]["set"] == [[0, 0x10000], [1, 0x20000], [2, 0x10000]]
    assert any(r["chain"] == "forward" for r in rules)
    # chains are created before the rule that jumps to them
    adds = [c["add"] for c in cmds if "add" in c]
    first_chain = next(i for i, a in enumerate(adds) if a.get("chain", {}).get("name") == "cset_x")
    first_jump = next(i for i, a in enumerate(adds) if "vmap" in str(a.get("rule")))
    assert first_chain < first_jump

    alone = consistent_ruleset("bgplb", 0xFF0000, marks, [N1, N2], [chain], pinning=False)
    text = str(alone)
    assert "forward" not in text and "'ct'" not in text
    # the servers' slots survive a kill -9 without pinning too: a chain without a hook carries
    # them in its rules' comments, read back at the next start
    slots = [c["add"]["chain"] for c in alone if "chain" in c.get("add", {})]
    assert {"family": "inet", "table": "bgplb", "name": "slots"} in slots
    assert not any("hook" in c for c in slots if c["name"] == "slots")
    listing = [{"rule": c["add"]["rule"]} for c in alone if "rule" in c.get("add", {})]
    assert sorted(parse_marks(listing), key=lambda m: m.slot) == sorted(marks, key=lambda m: m.slot)
    assert [c for c in alone if "table" in c.get("delete", {})]  # replaced atomically
    with pytest.raises(ValueError, match="mask"):
        consistent_ruleset(
            "bgplb", 0xFF0000, [], [], [ConsistentChain("cset_y", 4, 0, (1,), (N1,))], False
        )


class ChainPins(MemoryPins):
    """MemoryPins that also keeps the consistent chains and the be_liberal calls."""

    def __init__(self) -> None:
        super().__init__()
        self.chains: list[Any] = []
        self.liberal = 0

    def apply(self, pins: Sequence[PinSpec], chains: Sequence[Any] = ()) -> int:
        self.chains = list(chains)
        return super().apply(pins)

    def ensure_be_liberal(self) -> bool:
        self.liberal += 1
        return True


def backends(pins: ChainPins, vip: Any) -> dict[Any, int]:
    (chain,) = [c for c in pins.chains if vip.network in c.vips]
    by_mark = {p.mark: p.gateway for p in pins.pins}
    out: dict[Any, int] = {}
    for m in chain.marks:
        out[by_mark[m]] = out.get(by_mark[m], 0) + 1
    return out


@pytest.mark.parametrize("pinning", [False, True])
def test_runtime_drain_follows_the_mode(pinning: bool) -> None:
    pins = ChainPins()
    config = FibConfig(
        pinning=pinning, drain_linger=30.0, group="consistent", consistent_table_size=1021
    )
    kernel = MemoryKernel()
    router = SimpleNamespace(
        config=SimpleNamespace(fib=config),
        fib=MemoryFib(kernel, buckets=16),
        pinning=runtime.RouterPinning(config, kernel=pins),
        rib=SimpleNamespace(
            peers={
                str(A): SimpleNamespace(established=True),
                str(B): SimpleNamespace(established=True),
            }
        ),
        queue=asyncio.Queue(),
    )

    async def go() -> None:
        t = asyncio.get_running_loop().time()
        await sync(router, {VIP1: (nexthop(A), nexthop(B)), VIP2: (nexthop(A),)}, t)
        assert set(backends(pins, VIP1)) == {A, B} and set(backends(pins, VIP2)) == {A}
        st = runtime.consistent_status(router.pinning, VIP1.network)
        assert st is not None and set(st.shares) == {str(A), str(B)}
        assert pins.liberal == (1 if pinning else 0)
        # B drains
        await sync(router, {VIP1: (nexthop(A), nexthop(B, draining=True))}, t + 1)
        if pinning:  # it leaves group and table; its pin keeps its connections
            assert set(backends(pins, VIP1)) == {A}
            assert forwarding(kernel)[str(VIP1.network)] == {A}
        else:  # it stays, as in a resilient group (the RIB gives it weight 1)
            assert set(backends(pins, VIP1)) == {A, B}
            assert forwarding(kernel)[str(VIP1.network)] == {A, B}
        assert B in {p.gateway for p in pins.pins}
        # B withdraws: without pinning nothing lingers
        await sync(router, {VIP1: (nexthop(A),)}, t + 2)
        assert (B in {p.gateway for p in pins.pins}) is pinning
        assert set(backends(pins, VIP1)) == {A}
        assert pins.liberal == (1 if pinning else 0)  # once
        close(router)

    asyncio.run(go())


def test_tables_keep_the_adopted_paths_while_the_fib_defers() -> None:
    """After a restart the RIB re-learns servers one by one; while the FIB's startup deferral
    holds the previous run's paths, the tables count them too (the same table as before the
    restart), the FIB is only told the RIB's members, and when the deferral ends within a sync
    the tables are planned again without them."""
    pins = ChainPins()
    config = FibConfig(group="consistent", consistent_table_size=1021)
    rp = runtime.RouterPinning(config, kernel=pins)
    state: dict[str, Any] = {"hold": (1, {VIP1.network: [(A, 7, 1), (B, 7, 1)]})}
    told: list[dict[Any, Any]] = []

    def apply_fib(changes: dict[Any, Any]) -> Any:
        told.append(changes)
        if state.get("end"):
            state["hold"] = None
        from bgplb.linux.fibapi import FibResult

        return FibResult()

    # only A re-learned: the table is still {A, B}; the FIB is told {A}
    rp.sync({VIP1: (nexthop(A),)}, {str(A)}, 1.0, apply_fib, lambda: state["hold"])
    assert set(backends(pins, VIP1)) == {A, B}
    assert [a for a, _, _ in told[-1][VIP1.network]] == [A]
    full = rp.consistent_status(VIP1.network)
    assert full is not None and set(full.shares) == {str(A), str(B)}
    # the deferral ends during the next sync: planned again, B leaves the table and its pin
    state["end"] = True
    rp.sync({VIP2: (nexthop(A),)}, {str(A)}, 2.0, apply_fib, lambda: state["hold"])
    assert set(backends(pins, VIP1)) == {A}
    assert {p.gateway for p in pins.pins} == {A}
