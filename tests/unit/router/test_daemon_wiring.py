"""The router hands each session's rules to the RIB and reports what the RIB refuses: in-process
on loopback (harness: test_daemon_supervision)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from test_daemon_supervision import VIP, Lab, until

from bgplb.bgp.attributes import ExtendedCommunity
from bgplb.bgp.prefix import Prefix


def test_refused_prefixes_are_counted_per_peer_and_logged_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="bgplb.router")

    async def main() -> None:
        accept = '"198.51.100.0/24 le 32", "0.0.0.0/0"'
        async with Lab(tmp_path, monkeypatch, accept=accept) as lab:
            a = await lab.client(2)
            for med in range(3):  # three UPDATEs with the default route (allow_default off)
                a.announce("0.0.0.0/0", med=med)
                await asyncio.sleep(0.05)
            a.announce(VIP)
            await until(lambda: lab.hops() == ["192.0.2.2"], "the VIP")
            await until(lambda: lab.router.counters.refused_prefixes == 3, "3 refused")
            st = await lab.status()
            (row,) = st["peers"]
            assert row["refused"] == 3 and row["filtered"] == 0
            assert st["counters"]["refused_prefixes"] == 3
            assert st["vips_total"] == 1

    asyncio.run(main())
    lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert lines == [
        "127.0.0.2: refused 1 prefix(es): 0.0.0.0/0 (default route (allow_default is off))"
    ], lines


def test_the_session_source_is_the_only_next_hop_without_third_party(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        async with Lab(tmp_path, monkeypatch, range_extra="") as lab:
            a = await lab.client(2)
            a.announce(VIP)  # next hop 192.0.2.2, source 127.0.0.2: not usable
            await until(lambda: Prefix.parse(VIP) in lab.router.rib.vips, "the path stored")
            assert lab.hops() == []
            st = await lab.status()
            (vip,) = st["vips"]
            assert vip["nexthops"] == [] and vip["paths"] == 1
            (why,) = vip["unusable"]
            assert why["peer"] == "127.0.0.2" and why["next_hop"] == "192.0.2.2"
            assert why["reason"]

    asyncio.run(main())


def test_a_bad_link_bandwidth_gets_equal_weight_and_one_log_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="bgplb.router")

    async def main() -> None:
        async with Lab(tmp_path, monkeypatch) as lab:
            good, bad = await lab.client(2), await lab.client(3)
            good.announce(VIP, extended_communities=(ExtendedCommunity.link_bandwidth(65002, 1e9),))
            inf = ExtendedCommunity.link_bandwidth(65003, float("inf"))
            bad.announce(VIP, extended_communities=(inf,))
            await until(lambda: len(lab.hops()) == 2, "two nexthops")
            weights = {
                str(n.address): n.weight for n in lab.router.rib.fib_entry(Prefix.parse(VIP))
            }
            assert weights["192.0.2.2"] == weights["192.0.2.3"], weights
            bad.announce("198.51.100.11/32", extended_communities=(inf,), med=1)
            await until(lambda: lab.hops("198.51.100.11/32") == ["192.0.2.3"], "another")
            st = await lab.status()
            assert {p["address"]: p["bad_bandwidth"] for p in st["peers"]} == {
                "127.0.0.2": 0,
                "127.0.0.3": 2,
            }
            assert lab.router.counters.internal_errors == {}

    asyncio.run(main())
    lines = [r.getMessage() for r in caplog.records if "link bandwidth" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("127.0.0.3: "), lines


def test_the_router_tells_systemd_when_it_is_ready_and_when_it_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Type=notify`` units wait for READY=1: it comes once the router listens."""
    import socket

    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    said: list[str] = []

    def drain() -> None:
        while True:
            try:
                said.append(sock.recv(4096).decode())
            except BlockingIOError:
                return

    async def main() -> None:
        async with Lab(tmp_path, monkeypatch) as lab:
            await until(lambda: drain() or said, "READY=1")
            assert said[0].startswith("READY=1"), said
            assert lab.router.listeners
        drain()

    try:
        asyncio.run(main())
    finally:
        sock.close()
    assert [m.split("\n")[0] for m in said] == ["READY=1", "STOPPING=1"], said


def test_the_collector_runs_rarely_while_the_router_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gc

    from bgplb.router.daemon import GC_THRESHOLD

    before = gc.get_threshold()
    seen: list[tuple[int, ...]] = []

    async def main() -> None:
        async with Lab(tmp_path, monkeypatch):
            seen.append(gc.get_threshold())

    asyncio.run(main())
    assert seen == [GC_THRESHOLD] and before != GC_THRESHOLD
    assert gc.get_threshold() == before  # put back at exit
