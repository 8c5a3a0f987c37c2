"""StateSteps and VipWorker on fakes: an in-memory lo, recorded BGP routes, a clock advanced by
hand. The order the design asks for (VIP on lo before the announcement, withdrawal on the wire
before the VIP leaves lo), the ownership of VIPs, retries, timers and the stop's linger."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from pathlib import Path

import pytest
from agent_fakes import FakeClock, FakeRoutes, config, settle

from bgplb.agent.metrics import AgentMetrics
from bgplb.agent.reload import specs
from bgplb.agent.runtime import CurrentConfig, Tasks
from bgplb.agent.state import SHUTDOWN_VIP_LINGER, AddVip, AgentState, RemoveVip
from bgplb.agent.statefile import StateStore
from bgplb.agent.steps import FLUSH_TIMEOUT, VIP_RETRY, StateSteps, VipWorker
from bgplb.agent.vip import MemoryLoopback
from bgplb.bgp.attributes import GRACEFUL_SHUTDOWN
from bgplb.control.metrics import MetricsServer

pytestmark = pytest.mark.anyio

WEB4, WEB6, DNS = "198.51.100.10/32", "2001:db8::10/128", "198.51.100.53/32"


class Rig:
    def __init__(self, tmp: Path, lo: MemoryLoopback | None = None) -> None:
        path, cfg = config(tmp)
        self.cfg = cfg
        self.clock = FakeClock()
        self.routes = FakeRoutes()
        self.lo = lo or MemoryLoopback()
        self.store = StateStore(tmp / "state.json")
        self.state = AgentState()
        self.tasks = Tasks()
        self.server = MetricsServer()
        self.steps = StateSteps(
            self.state,
            self.routes,
            self.lo,
            self.store,
            AgentMetrics(self.server),
            self.clock,
            CurrentConfig(path, cfg),
            self.tasks,
        )
        self.worker = asyncio.get_running_loop().create_task(self.steps.vips.run())
        self.state.configure(specs(cfg), self.clock.now())

    def health(self, service: str, up: bool) -> None:
        self.state.set_health(service, up, self.clock.now(), "test")
        self.steps.pump()

    def metric(self, name: str, **labels: str) -> float | None:
        return self.server.registry.get_sample_value(name, labels)

    async def close(self) -> None:
        self.steps.close()
        self.worker.cancel()
        await asyncio.gather(self.worker, return_exceptions=True)
        await self.tasks.cancel_all()


@pytest.fixture
async def rig(tmp_path: Path):
    r = Rig(tmp_path)
    yield r
    await r.close()


def saved(rig: Rig) -> dict[str, object]:
    return json.loads(rig.store.path.read_text())


async def test_vip_on_lo_before_announcement_and_owned(rig: Rig) -> None:
    rig.health("dns", True)
    assert rig.routes.log == []  # not before the VIP is on lo
    await settle()
    assert rig.lo.history == [("add", DNS)]
    assert rig.routes.log == [("announce", DNS)]
    assert rig.routes.kicks >= 1
    assert rig.routes.attrs[DNS].communities == ()
    assert saved(rig)["owned_vips"] == [DNS]
    assert rig.metric("bgplb_agent_announcements_total", service="dns") == 1
    assert rig.metric("bgplb_agent_service_announced", service="dns") == 1
    assert not rig.steps.idle


async def test_withdrawal_on_the_wire_before_vip_leaves_lo(rig: Rig) -> None:
    rig.health("dns", True)
    await settle()
    rig.routes.gate = asyncio.Event()  # the withdrawal is not flushed yet
    rig.health("dns", False)
    await settle()
    assert rig.routes.log[-1] == ("withdraw", DNS)
    assert DNS in rig.lo.present  # still waiting for the flush
    assert rig.routes.flush_timeouts == [FLUSH_TIMEOUT]
    rig.routes.gate.set()
    await settle()
    assert rig.lo.history == [("add", DNS), ("remove", DNS)]
    assert saved(rig)["owned_vips"] == []
    assert rig.metric("bgplb_agent_withdrawals_total", service="dns") == 1
    assert rig.steps.idle


async def test_vip_found_on_lo_is_announced_but_never_removed(tmp_path: Path) -> None:
    rig = Rig(tmp_path, MemoryLoopback({DNS}))
    try:
        rig.health("dns", True)
        await settle()
        assert rig.routes.log == [("announce", DNS)]
        assert (
            "owned_vips" not in rig.store.saved.to_json() or DNS not in rig.store.saved.owned_vips
        )
        rig.health("dns", False)
        await settle()
        assert rig.lo.present == {DNS}  # not ours: left on lo
        assert rig.steps.idle
    finally:
        await rig.close()


async def test_refused_vip_is_retried_later(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    rig.lo.refuse.add(DNS)
    rig.health("dns", True)
    await settle()
    assert rig.routes.log == [] and "cannot add VIP" in caplog.text
    assert rig.clock.pending == [rig.clock.now() + VIP_RETRY]
    rig.lo.refuse.clear()
    rig.clock.advance(VIP_RETRY)
    await settle()
    assert rig.routes.log == [("announce", DNS)]


async def test_pending_retry_is_cancelled_with_the_worker(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.lo.refuse.add(DNS)
    rig.health("dns", True)
    await settle()
    await rig.close()
    rig.lo.refuse.clear()
    rig.clock.advance(VIP_RETRY)
    await settle()
    assert rig.lo.present == set()


async def test_failing_vip_step_is_logged_and_the_worker_goes_on(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    rig.health("dns", True)
    await settle()
    rig.lo.refuse.add(DNS)  # removal fails
    with caplog.at_level(logging.ERROR, "bgplb.agent"):
        rig.health("dns", False)
        await settle()
    assert "VIP step RemoveVip" in caplog.text
    assert rig.steps.vips.idle
    rig.lo.refuse.clear()
    rig.health("web", False)  # nothing to do; the worker still runs
    rig.steps.vips.submit(RemoveVip(ipaddress.ip_network(DNS), "dns"))
    await settle()
    assert rig.lo.present == set()


async def test_drain_timer_and_drained_state_saved(rig: Rig) -> None:
    rig.health("dns", True)
    await settle()
    rig.state.drain("dns", rig.clock.now())
    rig.steps.pump()
    assert rig.routes.log[-1] == ("announce", DNS)
    assert GRACEFUL_SHUTDOWN in rig.routes.attrs[DNS].communities
    assert saved(rig)["drained"] == ["dns"]
    assert rig.metric("bgplb_agent_service_drained", service="dns") == 1
    drain_time = rig.state.services["dns"].spec.drain_time
    assert rig.clock.pending == [rig.clock.now() + drain_time]
    rig.steps.pump()  # same deadline: the timer is kept
    assert len(rig.clock.pending) == 1
    rig.clock.advance(drain_time)
    await settle()
    assert rig.routes.log[-1] == ("withdraw", DNS)
    # drain_vip_linger (default 60 s): still on lo, timer armed for the linger
    assert rig.lo.present == {DNS}
    rig.clock.advance(60.0)
    await settle()
    assert rig.lo.present == set()
    rig.state.undrain("dns", rig.clock.now())
    rig.steps.pump()
    assert saved(rig)["drained"] == []


async def test_close_cancels_the_timer(rig: Rig) -> None:
    rig.health("dns", True)
    await settle()
    rig.state.drain("dns", rig.clock.now())
    rig.steps.pump()
    rig.steps.close()
    assert rig.clock.pending == []
    rig.steps.close()  # twice is fine


async def test_stop_keeps_vips_on_lo_for_the_linger_then_removes_them(rig: Rig) -> None:
    """The SIGTERM fix, through the glue: the withdrawal is written, the VIP stays on lo
    SHUTDOWN_VIP_LINGER longer, then leaves; the stop is complete (idle) only then."""
    rig.health("web", True)
    rig.health("dns", True)
    await settle()
    assert rig.lo.present == {WEB4, WEB6, DNS}
    rig.state.shutdown(rig.clock.now(), 0.0)
    rig.steps.pump()
    await settle()
    assert {what for what, _ in rig.routes.log[-3:]} == {"withdraw"}
    assert rig.lo.present == {WEB4, WEB6, DNS}  # withdrawn, still on lo
    assert not rig.steps.idle
    rig.clock.advance(SHUTDOWN_VIP_LINGER - 0.1)
    await settle()
    assert rig.lo.present == {WEB4, WEB6, DNS}
    rig.clock.advance(0.1)
    await settle()
    assert rig.lo.present == set()
    assert rig.steps.idle


async def test_forget_removes_stale_and_drained_vips(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    old, drained, kept, broken = "203.0.113.9/32", DNS, WEB4, "203.0.113.10/32"
    rig.lo.present |= {old, drained, kept, broken}
    rig.store.saved.owned_vips |= {old, drained, kept, broken}
    rig.lo.refuse.add(broken)
    with caplog.at_level(logging.INFO, "bgplb.agent"):
        await rig.steps.vips.forget({kept}, {drained})
    assert rig.lo.present == {kept, broken}
    assert rig.store.saved.owned_vips == {kept}
    assert saved(rig)["owned_vips"] == [kept]
    assert f"VIP {drained} (added by a previous run, its service is drained)" in caplog.text
    assert f"VIP {old} (added by a previous run, no longer configured)" in caplog.text
    assert f"VIP {broken} (added by a previous run): cannot remove it" in caplog.text


async def test_vip_worker_join_and_order(tmp_path: Path) -> None:
    lo = MemoryLoopback()
    done: list[tuple[str, float]] = []
    clock = FakeClock()
    worker = VipWorker(
        lo, StateStore(tmp_path / "s.json"), clock, lambda a, now: done.append((str(a.vip), now))
    )
    task = asyncio.get_running_loop().create_task(worker.run())
    a, b = ipaddress.ip_network(WEB4), ipaddress.ip_network(WEB6)
    worker.submit(AddVip(a, "web"))
    worker.submit(AddVip(b, "web"))
    worker.submit(RemoveVip(a, "web"))
    assert not worker.idle
    await asyncio.wait_for(worker.join(), 5)
    assert worker.idle
    assert lo.history == [("add", WEB4), ("add", WEB6), ("remove", WEB4)]
    assert [v for v, _ in done] == [WEB4, WEB6, WEB4]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
