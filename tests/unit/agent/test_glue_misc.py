"""The rest of the agent's glue without root: a stop that cannot finish is bounded, sd_notify
errors, the BGP helpers of bgplb.agent.peers on loopback sockets, the log formats."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import socket
from pathlib import Path

import pytest
from agent_fakes import FakeClock, FakeProbe, config, fake_peers
from test_daemon import Run, until

from bgplb import logs
from bgplb.agent import peers
from bgplb.agent.lifecycle import STOP_MARGIN, sd_notify
from bgplb.agent.runtime import Tasks
from bgplb.bgp.families import AFI
from bgplb.bgp.fsm import State as BgpState
from bgplb.bgp.session import Session

pytestmark = pytest.mark.anyio


async def test_a_stop_that_cannot_remove_its_vips_is_bounded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = Run(tmp_path)
    await run.start()
    await until(lambda: len(run.lo.present) == 3)
    never = asyncio.Event()

    async def stuck(vip: str) -> None:
        await never.wait()

    run.lo.remove = stuck  # type: ignore[method-assign]
    start = run.clock.now()
    assert await run.stop() == 0
    assert run.clock.now() - start >= STOP_MARGIN
    assert "not everything withdrawn" in caplog.text
    assert run.saved()["clean_exit"] is True


def test_sd_notify_to_a_missing_socket_is_only_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "none"))
    with caplog.at_level(logging.DEBUG, "bgplb"):
        sd_notify("READY=1")
    assert "sd_notify(READY=1) failed" in caplog.text
    monkeypatch.setenv("NOTIFY_SOCKET", "@bgplb-test-no-such-abstract-socket")
    sd_notify("READY=1")


# -- bgplb.agent.peers -------------------------------------------------------------------------


def test_session_config_and_transport(tmp_path: Path) -> None:
    _, cfg = config(
        tmp_path,
        **{"asn = 65000\n": 'asn = 65000\nhold_time = 30\npassive = true\npassword = "x"\n'},
    )
    peer = cfg.peers[0]
    rid = ipaddress.IPv4Address("192.0.2.11")
    sc = peers.session_config(cfg.bgp, peer, rid, restarting=True)
    assert (sc.hold_time, sc.passive, sc.peer_asn) == (30, True, 65000)
    assert sc.graceful_restart_time == cfg.bgp.graceful_restart_time
    assert sc.graceful_restart_restarting
    t = peers.transport(peer)
    assert (str(t.remote), t.password) == ("192.0.2.1", "x")
    _, plain = config(tmp_path)
    assert (
        peers.session_config(plain.bgp, plain.peers[0], rid, False).hold_time == plain.bgp.hold_time
    )


def test_next_hops_of_a_loopback_connection() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.create_connection(server.getsockname()) as client:
            hops = peers.next_hops(client)
    assert hops[AFI.IPV4] == (ipaddress.IPv4Address("127.0.0.1"),)
    # the other family: our address of that family on the same interface (lo: ::1, if any)
    assert hops.get(AFI.IPV6, (ipaddress.IPv6Address("::1"),)) == (ipaddress.IPv6Address("::1"),)


def test_next_hops_of_an_ipv6_loopback_connection() -> None:
    try:
        server = socket.socket(socket.AF_INET6)
        server.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with server:
        server.listen()
        with socket.create_connection(server.getsockname()[:2]) as client:
            hops = peers.next_hops(client)
    assert hops[AFI.IPV6] == (ipaddress.IPv6Address("::1"),)
    assert AFI.IPV4 in hops  # lo has 127.0.0.1


def test_interface_lookups() -> None:
    assert peers._interface_of(ipaddress.IPv4Address("127.0.0.1")) == "lo"
    assert peers._interface_of(ipaddress.IPv4Address("192.0.2.254")) is None
    assert peers._ipv4_address("no-such-if0") is None
    rid = peers.default_router_id()
    assert rid is None or not rid.is_loopback


async def test_flushed_gives_up_after_the_timeout(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, cfg = config(tmp_path)
    _made, factory = fake_peers()
    rid = ipaddress.IPv4Address("192.0.2.11")
    peer = factory(
        Session(peers.session_config(cfg.bgp, cfg.peers[0], rid, False)), cfg.peers[0], None
    )
    peer.session._state = BgpState.ESTABLISHED
    peer.kick = lambda: None  # type: ignore[method-assign]  # the buffer never drains
    peer.buffered = 10
    assert not await peers.flushed([peer], timeout=0.02)  # type: ignore[list-item]
    assert "withdrawal not flushed to 192.0.2.1" in caplog.text
    assert peers.write_buffer_size(peer) == 10  # type: ignore[arg-type]


# -- logs --------------------------------------------------------------------------------------


def test_log_formats(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logs.setup("info", json_output=True)
        log = logging.getLogger("bgplb.agent")
        log.warning("service %s: down", "web", extra={"service": "web"})
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
        lines = [json.loads(x) for x in capsys.readouterr().err.splitlines()]
        assert lines[0]["msg"] == "service web: down" and lines[0]["service"] == "web"
        assert lines[0]["level"] == "warning" and lines[0]["ts"].endswith("Z")
        assert "ValueError: boom" in lines[1]["exc"]
        logs.setup("debug")
        log.info("plain")
        assert "INFO bgplb.agent: plain" in capsys.readouterr().err
        assert logging.getLogger("httpx").level == logging.WARNING
    finally:
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])


async def test_fake_probe_and_tasks_helpers() -> None:
    probe = FakeProbe(ok=False)
    assert not (await probe()).ok
    await probe.aclose()
    tasks = Tasks()
    task = tasks.spawn(asyncio.sleep(0))
    await task
    assert len(tasks) == 0
    FakeClock().advance(1.0)
