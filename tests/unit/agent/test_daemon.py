"""The whole AgentDaemon without root: an in-memory lo, fake BGP peers, fake probes, a fake clock;
the real control socket (in tmp_path), the real state file, real signals to this process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from agent_fakes import FakeClock, FakeProbe, config, fake_peers, settle

from bgplb.agent.daemon import AgentDaemon
from bgplb.agent.lifecycle import RESTART, STOP
from bgplb.agent.vip import MemoryLoopback
from bgplb.control.socket import ControlError, request

pytestmark = pytest.mark.anyio

WEB4, WEB6, DNS = "198.51.100.10/32", "2001:db8::10/128", "198.51.100.53/32"


class Run:
    def __init__(self, tmp: Path, *, signals: bool = False, **edits: str) -> None:
        self.tmp = tmp
        self.path, self.cfg = config(tmp, **edits)
        self.clock = FakeClock()
        self.lo = MemoryLoopback()
        self.peers, factory = fake_peers()
        self.notes: list[str] = []
        self.probe = FakeProbe(ok=True)
        self.state_path = tmp / "state.json"
        self.daemon = AgentDaemon(
            self.path,
            state_path=self.state_path,
            config=self.cfg,
            clock=self.clock,
            loopback=self.lo,
            peer_factory=factory,  # type: ignore[arg-type]
            probe_factory=lambda check: self.probe,
            find_router_id=lambda: None,
            notify=self.notes.append,
            signals=signals,
        )
        self.task: asyncio.Task[int] | None = None

    async def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.daemon.run())
        await until(lambda: any(n.startswith("READY=1\n") for n in self.notes), self.task)

    async def ask(self, command: str, **args: object) -> object:
        sock = self.cfg.control.socket
        return await asyncio.to_thread(request, sock, command, **args)

    async def stop(self, mode: str = STOP) -> int:
        assert self.task is not None
        self.daemon.request_stop(mode)
        for _ in range(2000):  # the fake clock moves as the stop sleeps; bounded
            if self.task.done():
                break
            await asyncio.sleep(0.005)
        return await asyncio.wait_for(self.task, 10)

    def saved(self) -> dict[str, object]:
        return json.loads(self.state_path.read_text())


async def until(condition: Callable[[], object], task: asyncio.Task[int] | None = None) -> None:
    for _ in range(1000):
        if condition():
            return
        if task is not None and task.done():
            raise AssertionError(f"daemon exited early with {task.result()}")
        await asyncio.sleep(0.005)
    raise AssertionError("condition not met in time")


async def test_start_status_drain_reload_and_stop(tmp_path: Path) -> None:
    run = Run(tmp_path)
    await run.start()
    await until(lambda: run.lo.present == {WEB4, WEB6, DNS})
    peer = run.peers[0]
    assert peer.calls[0] == "start"
    assert peer.session.rib_out.has_pending()
    status = await run.ask("status")
    assert isinstance(status, dict)
    assert list(status) == [
        "role", "asn", "router_id", "uptime", "graceful_restart", "peers", "services",
    ]  # fmt: skip
    assert status["router_id"] == "192.0.2.11" and status["graceful_restart"] is False
    web = status["services"][0]
    assert (web["name"], web["healthy"], web["status"]) == ("web", True, "announced")
    assert web["vips"][0] == {"vip": WEB4, "phase": "announced", "lingering": None}
    assert web["checks"][0]["state"] == "up"
    # drain: GRACEFUL_SHUTDOWN, then the withdrawal after drain_time, the VIP lingers 5 s
    assert await run.ask("drain", service="web") == {"drained": ["web"], "drain_time": {"web": 2.0}}
    with pytest.raises(ControlError, match="no service 'nope'"):
        await run.ask("drain", service="nope")
    run.clock.advance(2.0)
    await settle()
    status = await run.ask("status")
    web = status["services"][0]  # type: ignore[index]
    assert web["status"] == "drained"
    assert web["vips"][0]["lingering"] == 5.0
    assert run.saved()["drained"] == ["web"]
    assert await run.ask("undrain") == {"undrained": ["dns", "web"]}
    assert await run.ask("reload") == {"reloaded": str(run.path)}
    run.path.write_text("not toml [")
    with pytest.raises(ControlError, match="reload refused"):
        await run.ask("reload")
    assert await run.stop() == 0
    assert run.lo.present == set()
    assert run.saved()["clean_exit"] is True and run.saved()["owned_vips"] == []
    assert peer.calls[-1] == "stop 2 bgplb agent shutting down"
    assert "STOPPING=1\nSTATUS=draining" in run.notes
    assert not run.cfg.control.socket.exists()


async def test_stop_keeps_the_vips_on_lo_after_the_withdrawal(tmp_path: Path) -> None:
    """The SIGTERM linger through the whole daemon: the stop does not return before the VIPs
    lingered SHUTDOWN_VIP_LINGER on the fake clock after the withdrawal."""
    run = Run(tmp_path)
    await run.start()
    await until(lambda: run.lo.present == {WEB4, WEB6, DNS})
    removed_at: list[float] = []
    remove = run.lo.remove

    async def record(vip: str) -> None:
        removed_at.append(run.clock.now())
        await remove(vip)

    run.lo.remove = record  # type: ignore[method-assign]
    stop_at = run.clock.now()
    assert await run.stop() == 0
    assert len(removed_at) == 3
    assert min(removed_at) - stop_at >= 1.5  # shutdown_drain_time 0: withdrawn at once


async def test_signals_reload_and_stop(tmp_path: Path) -> None:
    run = Run(tmp_path, signals=True)
    await run.start()
    assert run.task is not None
    os.kill(os.getpid(), signal.SIGHUP)
    await until(lambda: "RELOADING=1" in run.notes)
    await until(lambda: run.notes[-1] == "READY=1")
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(2000):
        if run.task.done():
            break
        await asyncio.sleep(0.005)
    assert await asyncio.wait_for(run.task, 10) == 0
    assert run.saved()["clean_exit"] is True


async def test_restart_keeps_routes_then_starts_as_graceful_restart(tmp_path: Path) -> None:
    run = Run(tmp_path, **{"asn = 65001": "asn = 65001\ngraceful_restart_time = 4"})
    await run.start()
    await until(lambda: run.lo.present == {WEB4, WEB6, DNS})
    assert await run.stop(RESTART) == 0
    assert run.lo.present == {WEB4, WEB6, DNS}  # kept for the routers' GR helpers
    assert run.peers[0].calls[-1] == "close_silently"
    saved = run.saved()
    assert saved["clean_exit"] is False and saved["restart_at"] is not None
    again = Run(tmp_path, **{"asn = 65001": "asn = 65001\ngraceful_restart_time = 4"})
    again.lo.present = set(run.lo.present)
    again.probe.ok = False  # the check needs `fall` failures for a verdict
    await again.start()
    assert again.daemon.sessions.restarting
    assert again.peers[0].session.config.graceful_restart_restarting
    status = await again.ask("status")
    assert status["graceful_restart"] is True  # type: ignore[index]
    assert await again.stop() == 0
    assert again.lo.present == {WEB4, WEB6}  # web's VIPs were not ours in this run


async def test_settle_gives_up_after_its_timeout(tmp_path: Path) -> None:
    run = Run(tmp_path)
    run.daemon.checks.runner.add(("web", 0), run.cfg.services[0].checks[0])
    assert not await run.daemon.lifecycle.settle(1.0)


async def test_no_router_id_does_not_start(tmp_path: Path) -> None:
    run = Run(tmp_path, **{'router_id = "192.0.2.11"\n': ""})
    assert await run.daemon.run() == 1


async def test_corrupt_state_file_does_not_start(tmp_path: Path) -> None:
    run = Run(tmp_path)
    run.state_path.write_text("{broken")
    assert await run.daemon.run() == 1
    assert run.state_path.read_text() == "{broken"


async def test_unusable_control_socket_does_not_start(tmp_path: Path) -> None:
    run = Run(tmp_path)
    run.cfg.control.socket.write_text("a file, not a socket")
    assert await run.daemon.run() == 1
    assert run.cfg.control.socket.read_text() == "a file, not a socket"


async def test_drain_wait_returns_once_the_withdrawal_left(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`bgplb drain web --wait` (e.g. in a unit's ExecStop=) blocks through drain_time and
    returns only when the withdrawal is written to every peer; it gives up with exit 1 when it
    does not come within drain_time + --timeout."""
    from bgplb.cli import main

    run = Run(tmp_path)
    await run.start()
    await until(lambda: run.lo.present == {WEB4, WEB6, DNS})
    sock = str(run.cfg.control.socket)
    waiting = asyncio.ensure_future(
        asyncio.to_thread(main, ["drain", "web", "--wait", "--socket", sock])
    )
    await asyncio.sleep(0.3)  # several polls: still draining (the fake clock has not moved)
    assert not waiting.done()
    run.clock.advance(2.0)  # drain_time: the withdrawal goes out
    assert await asyncio.wait_for(waiting, 10) == 0
    out = capsys.readouterr().out
    assert "web: draining" in out and "web: withdrawn: the withdrawal left for every peer" in out
    status = await run.ask("status")
    assert status["services"][0]["status"] == "drained"  # type: ignore[index]

    # again, on a clock that never moves: --timeout 0 gives up after drain_time (2 s)
    await run.ask("undrain", service="web")
    await until(lambda: WEB4 in run.lo.present and not run.daemon.state.drained())
    await settle()
    code = await asyncio.to_thread(
        main, ["drain", "web", "--wait", "--timeout", "0", "--socket", sock]
    )
    assert code == 1
    assert "still announced after 2s: web" in capsys.readouterr().err
    assert await run.stop() == 0


async def test_counters_have_their_series_before_the_first_event(tmp_path: Path) -> None:
    """Prometheus' rate()/increase() miss a counter's first event when its series only appears
    with it: the agent exports every peer's and service's counters at 0 from the start."""
    run = Run(tmp_path)
    await run.start()
    await until(lambda: run.lo.present == {WEB4, WEB6, DNS})
    registry = run.daemon.metrics_server.registry
    peer = str(run.cfg.peers[0].address)
    for name, labels in (
        ("bgplb_agent_session_flaps_total", {"peer": peer}),
        ("bgplb_agent_bfd_teardowns_total", {"peer": peer}),
        ("bgplb_agent_withdrawals_total", {"service": "web"}),
        ("bgplb_agent_withdrawals_total", {"service": "dns"}),
    ):
        assert registry.get_sample_value(name, labels) == 0.0, (name, labels)
    assert await run.stop() == 0
