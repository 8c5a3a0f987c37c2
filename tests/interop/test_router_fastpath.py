"""`bgplb router`'s fast path of a server's loss, on the real kernel in network namespaces.

Three lab speakers (`tests/interop/bgpspeaker.py`) announce the same VIPs; the router puts them
in one resilient group. Speaker 1 is killed with SIGKILL (its kernel closes the connection:
no NOTIFICATION). Without Graceful Restart the router takes its gateway out of the group in
place before any per-VIP work: every VIP's route keeps its group, and every bucket that did not
belong to speaker 1 still points where it pointed before (read with RTM_GETNEXTHOPBUCKET).
With Graceful Restart its paths are kept stale and the group is left alone.

Layout as in test_router_interop: router namespace `rtr`, server i linked by a veth pair,
192.0.2.(8i+1)/29 on the router side, .(8i+2) on the server.
"""

from __future__ import annotations

import ipaddress
import time
from pathlib import Path

import pytest
from bgpspeaker import SpeakerProcess
from test_router_interop import (
    OPEN_RANGES,
    ROUTER_AS,
    RouterProc,
    build,
    router_config,
    server_addrs,
    wait_for,
)

from bgplb.linux.nexthop import NexthopSocket

pytestmark = [pytest.mark.interop]

VIPS = [f"198.51.100.{i}/32" for i in range(20, 40)]
SOLO = "198.51.100.50/32"  # announced by speaker 1 alone


def speaker(ns, i: int, tmp_path: Path, *extra: str) -> SpeakerProcess:
    r4, s4, _, _ = server_addrs(i)
    return SpeakerProcess(
        ns,
        "--asn", str(65000 + i),
        "--router-id", s4,
        "--peer", r4,
        "--peer-as", str(ROUTER_AS),
        "--hold", "9",
        "--families", "ipv4",
        *extra,
        log_path=str(tmp_path / f"speaker{i}.log"),
    )  # fmt: skip


def kernel_view(netns: str) -> tuple[dict[str, int | None], dict[int, str], dict[int, list[int]]]:
    """(VIP -> group id, nexthop id -> gateway, group id -> bucket owners by index)."""
    with NexthopSocket(netns) as sock:
        routes = {
            str(r.dst): r.nh_id
            for r in sock.dump_routes(protocol=200, table=254)
            if str(r.dst) in (*VIPS, SOLO)
        }
        nexthops = sock.dump_nexthops(protocol=200)
        gateways = {n.id: str(n.gateway) for n in nexthops if n.gateway is not None}
        buckets: dict[int, list[int]] = {}
        for n in nexthops:
            if n.is_group:
                owners = sorted(sock.dump_buckets(n.id), key=lambda b: b.index)
                buckets[n.id] = [b.nh_id for b in owners]
    return routes, gateways, buckets


def gateways_of(view, vip: str) -> set[str]:
    routes, gateways, buckets = view
    group = routes.get(vip)
    if group is None or group not in buckets:
        return set()
    return {gateways[m] for m in set(buckets[group])}


def setup(topo, tmp_path: Path, gr: bool):
    rtr, servers = build(topo, 3)
    router = RouterProc(rtr, tmp_path, router_config(OPEN_RANGES, buckets=64))
    router.start()
    extra = ("--graceful-restart", "60") if gr else ()
    speakers: list[SpeakerProcess] = []
    try:
        for i, ns in enumerate(servers, start=1):
            sp = speaker(ns, i, tmp_path, *extra)
            speakers.append(sp)
            for vip in VIPS:
                sp.send(announce=vip)
            if i == 1:
                sp.send(announce=SOLO)
        gws = [server_addrs(i)[1] for i in (1, 2, 3)]
        wait_for(
            "every VIP on the 3 servers",
            lambda: all(gateways_of(kernel_view(rtr.name), v) == set(gws) for v in VIPS),
            60,
        )
    except BaseException:
        stop_all(router, speakers)  # nothing of ours left running
        raise
    return rtr, router, speakers, gws


def stop_all(router: RouterProc, speakers: list[SpeakerProcess]) -> None:
    for sp in speakers:
        sp.stop()
    if router.proc is not None and router.proc.poll() is None:
        router.stop()


def test_aborted_session_leaves_the_group_in_place_and_other_buckets_stay(
    topo, tmp_path: Path
) -> None:
    rtr, router, speakers, gws = setup(topo, tmp_path, gr=False)
    try:
        before = kernel_view(rtr.name)
        routes, gateways, buckets = before
        groups = {routes[v] for v in VIPS}
        assert len(groups) == 1  # one group for the 20 VIPs
        group = groups.pop()
        assert group is not None
        s1_id = next(i for i, g in gateways.items() if g == gws[0])
        old = buckets[group]
        assert s1_id in old and len(old) == 64

        speakers[0].proc.kill()  # SIGKILL: the connection closes, no NOTIFICATION
        speakers[0].proc.wait(10)
        wait_for(
            "speaker 1's gateway out of the group",
            lambda: gws[0] not in gateways_of(kernel_view(rtr.name), VIPS[0]),
            15,
        )
        after = kernel_view(rtr.name)
        assert {after[0][v] for v in VIPS} == {group}  # the routes never changed group
        new = after[2][group]
        assert len(new) == 64 and s1_id not in new
        moved = [i for i, (o, n) in enumerate(zip(old, new, strict=True)) if o != s1_id and o != n]
        assert moved == []  # every bucket of servers 2 and 3 stayed where it was
        assert all(gateways_of(after, v) == set(gws[1:]) for v in VIPS)
        wait_for("the VIP of speaker 1 alone gone", lambda: SOLO not in kernel_view(rtr.name)[0])
        log = router.log_text()
        assert f"fib: {gws[0]} lost: {gws[0]} removed from 1 group(s) at once (" in log, log[-3000:]
        time.sleep(0.5)  # the RIB's per-VIP results: nothing more changes the group
        assert kernel_view(rtr.name)[2][group] == new
        assert router.status()["fib"]["status"]["fast_drops"] == 1
    finally:
        stop_all(router, speakers)


def test_graceful_restart_keeps_the_aborted_server_in_the_group(topo, tmp_path: Path) -> None:
    rtr, router, speakers, gws = setup(topo, tmp_path, gr=True)
    try:
        routes, _, buckets = kernel_view(rtr.name)
        group = routes[VIPS[0]]
        assert group is not None
        old = buckets[group]
        speakers[0].proc.kill()
        speakers[0].proc.wait(10)
        wait_for(
            "speaker 1's paths kept stale",
            lambda: "keeping 21 stale route(s)" in router.log_text(),
            15,
        )
        time.sleep(0.5)
        view = kernel_view(rtr.name)
        assert all(gateways_of(view, v) == set(gws) for v in VIPS)
        assert view[2][group] == old
        assert ipaddress.ip_network(SOLO) and SOLO in view[0]
        assert router.status()["fib"]["status"]["fast_drops"] == 0
    finally:
        stop_all(router, speakers)


BULK = 200  # /32s from 198.51.100.0: a sync of that many VIPs tries the group-level move
BULK_VIPS = [f"198.51.100.{i}/32" for i in range(BULK)]


def bulk_view(netns: str) -> tuple[dict[str, int | None], dict[int, str], dict[int, list[int]]]:
    """kernel_view for BULK_VIPS."""
    with NexthopSocket(netns) as sock:
        routes = {
            str(r.dst): r.nh_id
            for r in sock.dump_routes(protocol=200, table=254)
            if str(r.dst) in BULK_VIPS
        }
        nexthops = sock.dump_nexthops(protocol=200)
        gateways = {n.id: str(n.gateway) for n in nexthops if n.gateway is not None}
        buckets: dict[int, list[int]] = {}
        for n in nexthops:
            if n.is_group:
                owners = sorted(sock.dump_buckets(n.id), key=lambda b: b.index)
                buckets[n.id] = [b.nh_id for b in owners]
    return routes, gateways, buckets


@pytest.mark.serial
def test_a_server_announcing_its_vips_again_rejoins_the_group_in_place(
    topo, tmp_path: Path
) -> None:
    """Speaker 1 is killed (fast drop), then comes back and announces its 200 VIPs in one
    burst: the group is replaced in place (no route moves), and no bucket moves between the
    servers that stayed."""
    rtr, servers = build(topo, 3)
    router = RouterProc(rtr, tmp_path, router_config(OPEN_RANGES, buckets=64))
    router.start()
    speakers: list[SpeakerProcess] = []
    bulk = {"bulk": {"count": BULK, "start": "198.51.100.0", "length": 32}}
    gws = [server_addrs(i)[1] for i in (1, 2, 3)]

    def on(view, gateways: list[str]) -> bool:
        return len(view[0]) == BULK and all(
            gateways_of(view, v) == set(gateways) for v in BULK_VIPS
        )

    try:
        for i, ns in enumerate(servers, start=1):
            speakers.append(speaker(ns, i, tmp_path))
            speakers[-1].send(**bulk)
        wait_for("every VIP on the 3 servers", lambda: on(bulk_view(rtr.name), gws), 60)
        speakers[0].proc.kill()
        speakers[0].proc.wait(10)
        wait_for("speaker 1 out", lambda: on(bulk_view(rtr.name), gws[1:]), 15)
        time.sleep(0.5)  # the RIB's per-VIP results of the purge
        routes, gateways, buckets = bulk_view(rtr.name)
        (group,) = set(routes.values())
        assert group is not None
        old = buckets[group]
        moves = router.status()["fib"]["status"]["fast_moves"]  # servers 2, 3 joined so too

        speakers[0].stop()
        speakers[0] = speaker(servers[0], 1, tmp_path)
        speakers[0].send(**bulk)
        wait_for("speaker 1 back", lambda: on(bulk_view(rtr.name), gws), 30)
        routes, gateways, buckets = bulk_view(rtr.name)
        assert set(routes.values()) == {group}  # no route changed group
        s1_id = next(i for i, g in gateways.items() if g == gws[0])
        new = buckets[group]
        moved = [i for i, (o, n) in enumerate(zip(old, new, strict=True)) if n != s1_id and o != n]
        assert moved == []  # buckets only went to speaker 1
        log = router.log_text()
        assert f"fib: {BULK} VIP(s) moved with 1 group(s) replaced in place at once" in log, log[
            -3000:
        ]
        assert router.status()["fib"]["status"]["fast_moves"] == moves + 1
    finally:
        stop_all(router, speakers)
