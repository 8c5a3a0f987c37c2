"""Reloader and the control endpoints on fakes: only the difference is applied (services,
checks, peers, BFD only, [bgp], [control], logging); a bad file changes nothing."""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path

import pytest
from agent_fakes import FakeClock, FakeProbe, config, fake_peers

from bgplb.agent import reload as reload_module
from bgplb.agent.checks import HealthChecks
from bgplb.agent.commands import ControlCommands, ControlEndpoints
from bgplb.agent.metrics import AgentMetrics
from bgplb.agent.reload import Reloader, specs
from bgplb.agent.runtime import CurrentConfig, LoopClock, Tasks
from bgplb.agent.sessions import PeerSessions
from bgplb.agent.state import AgentState
from bgplb.config import AgentConfig, ConfigError, ControlConfig
from bgplb.control.metrics import MetricsServer
from bgplb.control.socket import ControlError

pytestmark = pytest.mark.anyio


class Rig:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.path, self.cfg = config(tmp)
        self.current = CurrentConfig(self.path, self.cfg)
        self.clock = FakeClock()
        metrics = AgentMetrics(MetricsServer())
        self.state = AgentState()
        self.state.configure(specs(self.cfg), self.clock.now())
        self.pumps = 0
        self.checks = HealthChecks(
            self.state, metrics, self.clock, self.pump, probe_factory=lambda c: FakeProbe()
        )
        self.peers, factory = fake_peers()
        self.sessions = PeerSessions(self.current, metrics, self.clock, peer_factory=factory)  # type: ignore[arg-type]
        self.sessions.router_id = self.cfg.bgp.router_id
        self.controls: list[ControlConfig] = []
        self.notes: list[str] = []
        self.next: AgentConfig | Exception = self.cfg
        self.reload = Reloader(
            self.current,
            self.state,
            self.checks,
            self.sessions,
            self.clock,
            self.pump,
            self.restart_control,
            self.notes.append,
            loader=self.load,
        )

    def pump(self) -> None:
        self.pumps += 1
        self.state.actions()

    async def restart_control(self, cfg: ControlConfig) -> None:
        self.controls.append(cfg)

    def load(self, path: Path) -> AgentConfig:
        if isinstance(self.next, Exception):
            raise self.next
        return self.next

    def edit(self, **edits: str) -> AgentConfig:
        self.next = config(self.tmp, **edits)[1]
        return self.next

    async def start(self) -> None:
        await self.checks.sync(self.cfg)
        self.checks.rebuild(self.cfg, "starting")
        for peer_cfg in self.cfg.peers:
            self.sessions.add(peer_cfg, start=False)


PEER = '[[peers]]\naddress = "192.0.2.1"\nasn = 65000\n'


async def test_bad_file_changes_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rig = Rig(tmp_path)
    await rig.start()
    rig.next = ConfigError([f"{rig.path}: bgp.hold_time: too short"])
    ok, errors = await rig.reload()
    assert not ok and "bgp.hold_time" in errors
    assert "reload refused, keeping the running config" in caplog.text
    assert rig.current.value is rig.cfg and rig.notes == []


async def test_unchanged_file_touches_no_session(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    await rig.start()
    assert await rig.reload() == (True, "")
    assert rig.notes == ["RELOADING=1", "READY=1"]
    assert rig.peers[0].calls == [] and len(rig.peers) == 1
    assert rig.controls == []


async def test_service_removed_and_added(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rig = Rig(tmp_path)
    await rig.start()
    rig.edit(**{'name = "dns"': 'name = "mail"'})
    with caplog.at_level(logging.INFO, "bgplb.agent"):
        assert (await rig.reload())[0]
    assert sorted(rig.state.services) == ["mail", "web"]
    assert "services added: mail; removed: dns" in caplog.text


async def test_changed_peer_is_restarted_new_one_started(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    await rig.start()
    rig.edit(**{PEER: PEER.replace("65000", "65002") + PEER.replace("192.0.2.1", "192.0.2.5")})
    assert (await rig.reload())[0]
    old, changed, new = rig.peers
    assert old.calls == ["stop 3 bgplb agent: peer configuration changed"]
    assert changed.calls == ["start"] and new.calls == ["start"]
    assert sorted(rig.sessions.peers) == ["192.0.2.1", "192.0.2.5"]
    rig.edit()  # the second peer removed again, the first back to 65000
    assert (await rig.reload())[0]
    assert new.calls[-1] == "stop 3 bgplb agent: peer removed from the configuration"


async def test_bfd_only_change_keeps_the_bgp_session(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.sessions.bfd.factory = lambda: _NoBfd()  # type: ignore[assignment,return-value]
    await rig.start()
    rig.edit(**{PEER: PEER + "bfd = { interval_ms = 100 }\n"})
    assert (await rig.reload())[0]
    assert rig.peers[0].calls == [] and len(rig.peers) == 1
    assert rig.sessions.peer_configs["192.0.2.1"].bfd is not None


async def test_bgp_change_restarts_every_session_and_router_id(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    await rig.start()
    rig.edit(**{'router_id = "192.0.2.11"': 'router_id = "192.0.2.12"'})
    assert (await rig.reload())[0]
    assert str(rig.sessions.router_id) == "192.0.2.12"
    assert rig.peers[0].calls == ["stop 3 bgplb agent: peer configuration changed"]
    assert str(rig.peers[1].session.config.router_id) == "192.0.2.12"
    rig.edit(**{'shutdown_drain_time = "0s"': 'shutdown_drain_time = "7s"'})
    rig.next = rig.next.model_copy(
        update={"bgp": rig.next.bgp.model_copy(update={"router_id": rig.sessions.router_id})}
    )
    assert (await rig.reload())[0]
    assert rig.state.shutdown_drain_time == 7.0
    assert len(rig.peers) == 2  # shutdown_drain_time alone restarts nothing


async def test_control_and_logging_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rig = Rig(tmp_path)
    await rig.start()
    calls: list[tuple[str, bool]] = []
    monkeypatch.setattr(reload_module, "setup_logging", lambda level, js: calls.append((level, js)))
    rig.edit(**{'metrics = "off"': 'metrics = "off"\n[logging]\nlevel = "debug"'})
    rig.next = rig.next.model_copy(
        update={"control": rig.next.control.model_copy(update={"socket": tmp_path / "new.sock"})}
    )
    assert (await rig.reload())[0]
    assert calls == [("debug", False)]
    assert [c.socket for c in rig.controls] == [tmp_path / "new.sock"]


class _NoBfd:
    def request(self, *args: object) -> object:
        raise OSError("no BFD here")


# -- control commands and endpoints --------------------------------------------------------


def commands(state: AgentState, tmp_path: Path) -> ControlCommands:
    async def reload() -> tuple[bool, str]:
        return False, "bad"

    return ControlCommands(state, FakeClock(), lambda: None, lambda: None, reload, tmp_path)  # type: ignore[arg-type,return-value]


async def test_commands_reject_a_service_that_is_not_a_name(tmp_path: Path) -> None:
    state = AgentState()
    cmds = commands(state, tmp_path)
    with pytest.raises(ControlError, match="configured: none"):
        await cmds.cmd_drain({"service": 3})
    with pytest.raises(ControlError, match="reload refused:\nbad"):
        await cmds.cmd_reload({})


async def test_endpoints_metrics_port_taken_closes_the_socket(tmp_path: Path) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        control = ControlConfig(socket=str(tmp_path / "c.sock"), metrics=f"127.0.0.1:{port}")
        endpoints = ControlEndpoints(commands(AgentState(), tmp_path), MetricsServer())
        with pytest.raises(OSError):
            await endpoints.start(control)
        assert endpoints.server is None and not (tmp_path / "c.sock").exists()
        free = ControlConfig(socket=str(tmp_path / "c.sock"), metrics="off")
        await endpoints.start(free)
        assert (tmp_path / "c.sock").exists()
        await endpoints.restart(free)
        assert (tmp_path / "c.sock").exists()
        await endpoints.close()
        assert not (tmp_path / "c.sock").exists()
    finally:
        busy.close()


async def test_loop_clock_and_tasks() -> None:
    clock = LoopClock()
    fired: list[float] = []
    start = clock.now()
    clock.call_at(start, lambda: fired.append(clock.now()))
    await clock.sleep(0.01)
    assert fired and fired[0] >= start and clock.wall() > 1e9
    tasks = Tasks()
    tasks.spawn(asyncio.sleep(10))
    assert len(tasks) == 1
    await tasks.cancel_all()
    await asyncio.sleep(0)
    assert len(tasks) == 0
