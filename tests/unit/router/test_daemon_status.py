"""Status and metrics of a router holding 100k VIPs never walk every VIP on the event loop.

The worst event-loop lateness during a status request is measured with
:class:`bgplb.io.loopwatch.LoopWatch` and printed (``-s``), not asserted: what is asserted is the
shape of the answer (a page of VIPs, ``vips_omitted``) and that metrics come from counters."""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from test_daemon_supervision import Lab

from bgplb.bgp.attributes import PathAttributes
from bgplb.bgp.prefix import Prefix
from bgplb.control.metrics import MetricsServer, SnapshotCollector
from bgplb.control.router_status import VIPS_LIMIT, build_status, metric_families, status_answer
from bgplb.io.loopwatch import LoopWatch

VIPS = 100_000


def fill(router: Any, count: int = VIPS) -> None:
    """`count` VIPs from two peers (no sessions: straight into the RIB)."""
    base = int(ipaddress.IPv4Address("198.18.0.0"))
    vips = [Prefix(1, base + i, 32) for i in range(count)]
    for peer in ("192.0.2.10", "192.0.2.11"):
        router.rib.peer_up(peer, 0.0, asn=65001, max_prefixes=None)
        router.rib.update(peer, vips, PathAttributes(next_hop=ipaddress.IPv4Address(peer)), [], 0.0)
    router.rib.take_dirty()


async def worst_stall(coro: Any) -> tuple[Any, float, float]:
    """Run `coro`; return its result, the worst loop lateness (ms) meanwhile, and its duration."""
    watch = LoopWatch(period=0.001, stall=0.005)
    watch.start()
    await asyncio.sleep(0.05)
    watch.read(reset=True)
    start = time.perf_counter()
    result = await coro
    took = time.perf_counter() - start
    await asyncio.sleep(0.01)
    figures = watch.read(reset=True)
    await watch.stop()
    return result, figures["max_ms"], took


def test_status_of_100k_vips_pages_and_does_not_stall_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        async with Lab(tmp_path, monkeypatch) as lab:
            router = lab.router
            fill(router)
            # steady state: the collection the 250k new objects are due for is not the request's
            gc.collect()
            _, idle, _ = await worst_stall(asyncio.sleep(0.05))
            print(f"\nidle loop: worst lateness {idle:.1f} ms")
            # through the control socket, as `bgplb status` does (the JSON encoding included)
            st, stall, took = await worst_stall(lab.status())
            print(
                f"status (socket, {VIPS_LIMIT} of {VIPS} VIPs): worst loop lateness "
                f"{stall:.1f} ms, request {took * 1000:.0f} ms"
            )
            assert st["vips_total"] == VIPS
            assert len(st["vips"]) == VIPS_LIMIT
            assert st["vips_omitted"] == VIPS - VIPS_LIMIT
            assert st["vips"][0]["vip"] == "198.18.0.0/32"
            assert [n["address"] for n in st["vips"][0]["nexthops"]] == [
                "192.0.2.10",
                "192.0.2.11",
            ]
            page = await lab.status(vips_offset=99_999, vips_limit=10)
            assert [v["vip"] for v in page["vips"]] == ["198.19.134.159/32"]
            one = await lab.status(vip="198.18.0.7/32")
            assert [v["vip"] for v in one["vips"]] == ["198.18.0.7/32"]
            assert one["vips_total"] == 1

            # the handler alone, largest page
            big, stall, took = await worst_stall(status_answer(router, {"vips_limit": 1000}))
            print(
                f"status (handler, 1000 VIPs): worst loop lateness {stall:.1f} ms, "
                f"request {took * 1000:.0f} ms"
            )
            assert len(big["vips"]) == 1000

            # metrics: from counters, O(peers)
            families, stall, took = await worst_stall(asyncio.sleep(0, metric_families(router)))
            print(f"metrics refresh: {took * 1000:.2f} ms on the loop")
            server = MetricsServer()
            collector = SnapshotCollector(server)
            collector.set(families)
            text = generate_latest(server.registry).decode()
            assert "bgplb_router_vips 100000.0" in text
            assert "bgplb_router_paths 200000.0" in text
            assert "bgplb_router_queue_events 0.0" in text
            assert "# TYPE bgplb_router_internal_errors_total counter" in text

            # what the loop used to do on every request: every VIP, synchronously
            start = time.perf_counter()
            whole = build_status(router, buckets=False)
            took = time.perf_counter() - start
            print(f"for comparison, every VIP on the loop (build_status): {took * 1000:.0f} ms")
            assert len(whole["vips"]) == VIPS

    asyncio.run(main())


def test_metrics_count_internal_errors_by_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> str:
        async with Lab(tmp_path, monkeypatch) as lab:
            lab.router.supervisor._internal_error("connected", RuntimeError("test"))
            server = MetricsServer()
            SnapshotCollector(server).set(metric_families(lab.router))
            return generate_latest(server.registry).decode()

    text = asyncio.run(main())
    assert 'bgplb_router_internal_errors_total{task="connected"} 1.0' in text
    assert 'bgplb_router_peers{state="Established"}' not in text  # no peer yet


def test_render_says_how_many_vips_were_not_shown_and_the_internal_errors() -> None:
    import io

    from rich.console import Console

    from bgplb.cli_router import render_status

    doc = {
        "asn": 65530,
        "router_id": "192.0.2.1",
        "fib": {"install": False, "group": "resilient", "buckets": 64},
        "peers": [],
        "vips": [],
        "vips_total": 250,
        "vips_offset": 0,
        "vips_omitted": 250,
        "counters": {"internal_errors": {"rib": 2}},
    }
    out = io.StringIO()
    render_status(doc, Console(file=out, width=120))
    text = out.getvalue()
    assert "250 of 250 VIP(s) not shown" in text
    assert "internal errors" in text and "rib 2" in text


def test_status_does_not_wait_for_a_slow_kernel_read_of_bucket_shares(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a big FIB sync in another thread makes the read of the shares slow: the answer comes
    # without them (and says why) instead of waiting; a second request while the first read
    # still runs starts no other one
    import threading

    from bgplb.router.report import RouterReport

    release = threading.Event()
    reads: list[Any] = []

    finished: list[bool] = []

    def slow_read(report: Any, vips: Any = None) -> Any:
        reads.append(vips)
        release.wait(30)  # bounded; released by the test as soon as it has its answers
        finished.append(True)
        return None

    monkeypatch.setattr(RouterReport, "read_shares", slow_read)
    monkeypatch.setattr(RouterReport, "wants_shares", lambda report: True)

    async def main() -> None:
        async with Lab(tmp_path, monkeypatch) as lab:
            fill(lab.router, 1000)
            try:
                st = await status_answer(lab.router, {})
                answered_while_reading = not finished  # the read is still blocked
                again = await status_answer(lab.router, {})
            finally:
                release.set()
            assert answered_while_reading  # the answer did not wait for the slow read
            assert "longer than" in st["fib"]["bucket_shares_skipped"]
            assert "still running" in again["fib"]["bucket_shares_skipped"]
            assert len(reads) == 1
            assert all(n["buckets"] is None for row in st["vips"] for n in row["nexthops"])
            await asyncio.sleep(0.05)  # the read ends: the next request reads again
            third = await status_answer(lab.router, {})
            assert "bucket_shares_skipped" not in third["fib"] and len(reads) == 2

    asyncio.run(main())


def test_the_sorted_page_is_reused_while_the_vips_do_not_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bgplb.router import report

    async def main() -> None:
        async with Lab(tmp_path, monkeypatch) as lab:
            router = lab.router
            fill(router, 1000)
            scans = 0
            real = report.sorted_page

            async def counting(keys: Any, offset: int, limit: int) -> Any:
                nonlocal scans
                scans += 1
                return await real(keys, offset, limit)

            monkeypatch.setattr(report, "sorted_page", counting)
            first = await status_answer(router, {"vips_limit": 5})
            again = await status_answer(router, {"vips_limit": 5})
            assert scans == 1 and again["vips"] == first["vips"]
            await status_answer(router, {"vips_limit": 6})  # another page: scanned
            assert scans == 2
            # a VIP before every other appears: within PAGE_MAX_AGE the old page may be shown
            # (the total counts it), after it the page is scanned again
            smaller = Prefix.parse("198.17.255.255/32")
            peer = "192.0.2.10"
            attrs = PathAttributes(next_hop=ipaddress.IPv4Address(peer))
            monkeypatch.setattr(report, "PAGE_MAX_AGE", 60.0)
            router.rib.update(peer, [smaller], attrs, [], 1.0)
            stale = await status_answer(router, {"vips_limit": 6})
            assert scans == 2 and stale["vips_total"] == 1001
            assert stale["vips"][0]["vip"] == "198.18.0.0/32"
            monkeypatch.setattr(report, "PAGE_MAX_AGE", 0.0)
            fresh = await status_answer(router, {"vips_limit": 6})
            assert scans == 3 and fresh["vips"][0]["vip"] == "198.17.255.255/32"
            # a VIP gone from a reused page is skipped, and counted as omitted
            monkeypatch.setattr(report, "PAGE_MAX_AGE", 60.0)
            router.rib.update(peer, [], None, [smaller], 2.0)
            router.rib.update("192.0.2.11", [], None, [smaller], 2.0)
            gone = await status_answer(router, {"vips_limit": 6})
            assert scans == 3 and len(gone["vips"]) == 5 and gone["vips_total"] == 1000

    asyncio.run(main())
