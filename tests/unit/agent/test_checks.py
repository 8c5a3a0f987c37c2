"""HealthChecks on fake probes: the runner follows the config, a transition reaches the state in
the same step (and ``on_change``), the status rows."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from agent_fakes import FakeClock, FakeProbe, config

from bgplb.agent.checks import HealthChecks, _key
from bgplb.agent.metrics import AgentMetrics
from bgplb.agent.reload import specs
from bgplb.agent.state import AgentState
from bgplb.control.metrics import MetricsServer
from bgplb.health.checks import CheckEvent, ProbeResult
from bgplb.health.state import Health, Transition

pytestmark = pytest.mark.anyio


class Rig:
    def __init__(self, tmp: Path) -> None:
        self.path, self.cfg = config(tmp)
        self.state = AgentState()
        self.state.configure(specs(self.cfg), 0.0)
        self.changes = 0
        self.probes: list[FakeProbe] = []
        self.server = MetricsServer()
        self.checks = HealthChecks(
            self.state,
            AgentMetrics(self.server),
            FakeClock(),
            self.on_change,
            probe_factory=self.probe,
            jitter=0.0,
        )

    def on_change(self) -> None:
        self.changes += 1

    def probe(self, check: object) -> FakeProbe:
        p = FakeProbe()
        self.probes.append(p)
        return p

    def event(self, service: str, index: int, up: bool) -> CheckEvent:
        old, new = (Health.DOWN, Health.UP) if up else (Health.UP, Health.DOWN)
        detail = "fine" if up else "refused"
        return CheckEvent(
            (service, index),
            Transition(old, new, 0.0, detail, "rise 1" if up else "fall 1"),
            ProbeResult(up, 0.002, detail),
        )


def test_keys_are_service_and_index() -> None:
    assert _key(("web", 0)) == ("web", 0)
    with pytest.raises(TypeError):
        _key("web")


async def test_sync_rebuild_and_transitions(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    checks = rig.checks
    await checks.sync(rig.cfg)
    assert [s.key for s in checks.runner.statuses()] == [("web", 0)]
    checks.rebuild(rig.cfg, "starting")
    assert rig.state.services["dns"].healthy  # no checks: healthy
    web = rig.state.services["web"]
    assert not web.healthy
    assert web.reason == "starting"  # unhealthy already: no change, no new reason
    assert not checks.have_verdicts()
    checks._on_check(rig.event("web", 0, True))
    assert web.healthy and rig.changes == 1
    assert web.reason == "check 0 (tcp 127.0.0.1:80) up: fine"
    checks._on_check(rig.event("web", 0, True))  # no change of the service
    assert rig.changes == 1
    checks._on_check(rig.event("gone", 0, False))  # not a configured service
    assert rig.changes == 1
    checks._on_result(("web", 0), ProbeResult(True, 0.002, "fine"))
    labels = {"service": "web", "check": "0"}
    count = rig.server.registry.get_sample_value("bgplb_agent_check_duration_seconds_count", labels)
    assert count == 1
    assert checks.describe(("web", 7)) == "check 7"


async def test_changed_check_is_replaced_unchanged_kept(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    await rig.checks.sync(rig.cfg)
    first = rig.checks.runner.status(("web", 0))
    await rig.checks.sync(rig.cfg)
    assert rig.checks.runner.status(("web", 0)) is first
    _, changed = config(tmp_path, **{"port = 80": "port = 81"})
    await rig.checks.sync(changed)
    assert rig.checks.runner.status(("web", 0)) is not first


async def test_runner_probes_and_statuses(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    checks = rig.checks
    await checks.sync(rig.cfg)
    checks.rebuild(rig.cfg, "starting")
    web = rig.cfg.services[0]
    (row,) = checks.statuses(web)
    assert (row.state, row.last_ok, row.latency_ms, row.output, row.probes) == (
        "down",
        None,
        None,
        None,
        0,
    )
    checks.start()
    try:
        for _ in range(200):  # the first probe runs at once (jitter 0)
            if rig.state.services["web"].healthy:
                break
            await asyncio.sleep(0.01)
        assert rig.state.services["web"].healthy and checks.have_verdicts()
    finally:
        await checks.stop()
    (row,) = checks.statuses(web)
    assert (row.check, row.state, row.suppressed, row.last_ok, row.output) == (
        "tcp 127.0.0.1:80",
        "up",
        False,
        True,
        "fine",
    )
    assert row.latency_ms == 1.0 and row.probes >= 1
    await checks.runner.remove(("web", 0))
    assert checks.statuses(web) == []
