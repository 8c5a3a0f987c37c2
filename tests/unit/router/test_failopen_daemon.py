"""Fail open wired into the router daemon (in-process Router on loopback, hand-driven BGP
clients, see test_daemon_supervision.Lab): two servers whose sessions end with Cease / BFD Down
(RFC 9384: their BFD did not hear from us) at once keep their paths, shown in status and
metrics and logged; two servers shut down on purpose (Cease / Administrative Shutdown) do not."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from test_daemon_supervision import VIP, Lab, until

from bgplb.bgp.errors import CeaseSubcode
from bgplb.bgp.prefix import Prefix
from bgplb.control.router_status import metric_families


def test_servers_failing_together_are_kept_and_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bgplb.router")

    async def main() -> None:
        async with Lab(tmp_path, monkeypatch) as lab:
            a, b = await lab.client(2), await lab.client(3)
            for c in (a, b):
                c.announce(VIP)
            await until(lambda: lab.hops() == ["192.0.2.2", "192.0.2.3"], "two paths")
            await asyncio.gather(
                a.peer.stop("BFD down", CeaseSubcode.BFD_DOWN),
                b.peer.stop("BFD down", CeaseSubcode.BFD_DOWN),
            )
            await until(lambda: not lab.router.peers, "both sessions over")
            await until(lambda: lab.router.rib.fail_open_vips == 1, "fail-open counted")
            assert lab.hops() == ["192.0.2.2", "192.0.2.3"]
            st = await lab.status()
            (row,) = st["vips"]
            assert 0 < row["fail_open_until"] <= 30
            assert [n["fail_open"] for n in row["nexthops"]] == [True, True]
            assert {p["state"] for p in st["peers"]} == {"fail-open"}
            families = {f[1]: f for f in metric_families(lab.router)}
            assert families["router_fail_open_vips"][4] == [((), 1.0)]
            assert ("fail-open",) in {k for k, _ in families["router_peers"][4]}
            text = caplog.text
            assert "fail-open: 1 VIP lost every path to failures within" in text, text
            assert "peer's BFD Down: 127.0.0.2, 127.0.0.3" in text
            assert "keeping them for 30 s" in text
            # the first one back: its fresh route replaces its kept one, the other stays kept
            vip = Prefix.parse(VIP)
            a2 = await lab.client(2)
            a2.announce(VIP)
            stale = lambda: [n.stale for n in lab.router.rib.fib_entry(vip)]  # noqa: E731
            await until(lambda: stale() == [False, True], "a fresh again, b still kept")
            b2 = await lab.client(3)
            b2.announce(VIP)
            await until(lambda: stale() == [False, False], "b fresh again")
            await until(lambda: "fail-open over after" in caplog.text, "the end logged")
            assert "came back: 127.0.0.2, 127.0.0.3" in caplog.text
            assert lab.router.rib.fail_open_vips == 0

    asyncio.run(main())


def test_servers_shut_down_on_purpose_are_not_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        async with Lab(tmp_path, monkeypatch) as lab:
            a, b = await lab.client(2), await lab.client(3)
            for c in (a, b):
                c.announce(VIP)
            await until(lambda: lab.hops() == ["192.0.2.2", "192.0.2.3"], "two paths")
            await asyncio.gather(a.stop(), b.stop())  # Cease / Administrative Shutdown
            await until(lambda: lab.hops() == [], "VIP gone")
            assert lab.router.rib.fail_open_vips == 0
            assert lab.router.rib.fail_open is not None and lab.router.rib.fail_open.event is None

    asyncio.run(main())
