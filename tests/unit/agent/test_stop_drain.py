"""Stop drain: a ``systemd`` check whose unit enters ``deactivating`` drains the service
(GRACEFUL_SHUTDOWN, not persisted) and withdraws when the unit is inactive or failed.

The pure state on a fake clock; the glue (HealthChecks) on probe results; the whole daemon with
the real ``systemd`` probe against a fake systemd on a private dbus-daemon and the fake clock."""

from __future__ import annotations

import asyncio
import ipaddress
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from agent_fakes import FakeClock, FakeProbe, StateWorld, config, fake_peers, settle
from fake_systemd import close, private_bus, serve
from hypothesis import given, settings
from hypothesis import strategies as st

from bgplb.agent.checks import HealthChecks
from bgplb.agent.daemon import AgentDaemon
from bgplb.agent.metrics import AgentMetrics
from bgplb.agent.reload import specs
from bgplb.agent.state import (
    AddVip,
    AgentState,
    Announce,
    RemoveVip,
    ServiceChanged,
    ServiceSpec,
    ServiceStatus,
    Withdraw,
)
from bgplb.agent.vip import MemoryLoopback
from bgplb.bgp.attributes import GRACEFUL_SHUTDOWN
from bgplb.control.metrics import MetricsServer
from bgplb.health.checks import DEACTIVATING, CheckEvent, ProbeResult, make_probe
from bgplb.health.state import Health

V4 = ipaddress.ip_network("198.51.100.10/32")


def web(**kw: object) -> ServiceSpec:
    args: dict[str, object] = {"name": "web", "vips": (V4,), "drain_time": 10.0}
    args.update(kw)
    return ServiceSpec(**args)  # type: ignore[arg-type]


def steps(state: AgentState) -> list[object]:
    return [a for a in state.actions() if not isinstance(a, ServiceChanged)]


def announced(spec: ServiceSpec | None = None) -> AgentState:
    s = AgentState()
    s.configure([spec or web()], 0.0)
    s.set_health("web", True, 0.0)
    for a in steps(s):
        if isinstance(a, AddVip):
            s.vip_added(a.vip, 0.0)
    s.actions()
    return s


# -- the pure state ----------------------------------------------------------------------------


def test_stop_drains_then_unit_inactive_withdraws_at_once() -> None:
    s = announced()
    s.set_stopping("web", True, 1.0, "unit deactivating")
    assert steps(s) == [Announce(V4, web(), graceful_shutdown=True)]
    assert s.status("web") is ServiceStatus.DRAINING
    assert s.get_timer() == 11.0
    assert s.drained() == []  # not the operator's drain: nothing to persist
    s.set_health("web", False, 3.0, "inactive")  # the glue: health first...
    s.set_stopping("web", False, 3.0, "inactive")  # ...then the end of the stop
    assert steps(s) == [Withdraw(V4, "web")]  # not announced again in between
    s.withdrawn([V4], 3.1)
    assert steps(s) == [RemoveVip(V4, "web")]  # a failure: no linger
    assert s.status("web") is ServiceStatus.WITHDRAWN


def test_stop_drain_time_over_withdraws_and_lingers_like_a_drain() -> None:
    s = announced(web(drain_vip_linger=5.0))
    s.set_stopping("web", True, 1.0)
    s.actions()
    s.handle_timer(11.0)
    assert steps(s) == [Withdraw(V4, "web")]
    s.withdrawn([V4], 11.1)
    assert steps(s) == []  # still on lo: connections may be finishing
    assert s.lingering("web") == {str(V4): 16.1}
    assert s.status("web") is ServiceStatus.WITHDRAWN  # not DRAINED: not the operator's
    s.set_health("web", False, 12.0)
    s.set_stopping("web", False, 12.0)
    s.handle_timer(16.1)
    assert steps(s) == [RemoveVip(V4, "web")]


def test_stop_over_while_healthy_announces_again_without_graceful_shutdown() -> None:
    s = announced()
    s.set_stopping("web", True, 1.0)
    s.actions()
    s.set_stopping("web", False, 2.0, "active again")
    assert steps(s) == [Announce(V4, web())]
    assert s.status("web") is ServiceStatus.ANNOUNCED


def test_restart_comes_back_after_rise() -> None:
    s = announced()
    s.set_stopping("web", True, 1.0)
    s.set_health("web", False, 2.0)
    s.set_stopping("web", False, 2.0)
    s.withdrawn([V4], 2.1)
    assert [type(a) for a in steps(s)] == [Announce, Withdraw, RemoveVip]
    s.set_health("web", True, 5.0)  # the check rose again
    assert steps(s) == [AddVip(V4, "web")]


def test_stop_drain_and_operator_drain_are_independent() -> None:
    s = announced()
    s.drain("web", 1.0)
    s.set_stopping("web", True, 1.5)
    s.undrain("web", 2.0)
    assert steps(s) == [Announce(V4, web(), graceful_shutdown=True)]  # still stopping
    s.drain("web", 3.0)
    s.set_stopping("web", False, 4.0)
    assert steps(s) == []  # still drained by the operator
    assert s.drained() == ["web"]


def test_stopping_an_unknown_or_unhealthy_service_does_nothing() -> None:
    s = AgentState()
    s.configure([web()], 0.0)
    s.set_stopping("nope", True, 1.0)
    s.set_stopping("web", True, 1.0)
    assert steps(s) == []
    s.set_health("web", True, 2.0)  # healthy while stopping: not announced
    assert steps(s) == []


STOP_EVENTS = st.lists(
    st.tuples(
        st.sampled_from(["up", "down", "stop", "stopped", "drain", "undrain", "tick", "confirm"]),
        st.floats(min_value=0.0, max_value=3.0),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(STOP_EVENTS)
def test_stop_drain_invariants_under_any_sequence(events: list[tuple[str, float]]) -> None:
    """Never a plain announcement while stopping or drained (65535:0 only); announce only what
    is on lo and healthy; RemoveVip only after a confirmed withdrawal; the stop is never in the
    persisted drain state; a stop drain withdraws by drain_time; shutdown ends idle."""
    st_ = AgentState()
    st_.configure([web(drain_time=2.0, drain_vip_linger=1.0)], 0.0)
    stopping = drained = False
    stop_since: float | None = None

    def only_graceful_while_stopping(action: object) -> None:
        if isinstance(action, Announce):
            assert action.graceful_shutdown or not (stopping or drained)

    world = StateWorld(st_, only_graceful_while_stopping)
    for kind, dt in events:
        world.now += dt
        now = world.now
        if kind in ("up", "down"):
            world.healthy = kind == "up"
            st_.set_health("web", world.healthy, now)
        elif kind in ("stop", "stopped"):
            stopping = kind == "stop"
            if stopping and stop_since is None:
                stop_since = now
            elif not stopping:
                stop_since = None
            st_.set_stopping("web", stopping, now)
        elif kind in ("drain", "undrain"):
            drained = kind == "drain"
            (st_.drain if drained else st_.undrain)("web", now)
        elif kind == "tick":
            st_.handle_timer(now)
        world.run()
        if kind == "confirm" and world.pending:
            world.confirm()
        assert st_.drained() == (["web"] if drained else [])
        if kind == "tick" and stop_since is not None and now >= stop_since + 2.0:
            assert not world.announced, "still announced drain_time after the stop began"
    world.shut_down()


# -- the glue on probe results -----------------------------------------------------------------

SYSTEMD = """
[[services.checks]]
type = "systemd"
unit = "nginx.service"
bus = "{bus}"
interval = "200ms"
rise = {rise}
fall = 1
damping = false
"""


def _with_systemd(tmp: Path, bus: str, rise: int = 1) -> dict[str, str]:
    text = SYSTEMD.replace("{bus}", bus).replace("{rise}", str(rise))
    return {'[[services]]\nname = "dns"': text.strip() + '\n[[services]]\nname = "dns"'}


class Rig:
    """HealthChecks fed by hand: results go through the runner's own machine."""

    def __init__(self, tmp: Path, rise: int = 1) -> None:
        _, self.cfg = config(tmp, **_with_systemd(tmp, "unix:path=/nonexistent", rise))
        self.state = AgentState()
        self.state.configure(specs(self.cfg), 0.0)
        self.checks = HealthChecks(
            self.state,
            AgentMetrics(MetricsServer()),
            FakeClock(0.0),
            lambda: None,
            probe_factory=lambda check: FakeProbe(),
            jitter=0.0,
        )

    async def up(self) -> None:
        await self.checks.sync(self.cfg)
        self.checks.rebuild(self.cfg, "starting")
        self.result(0, True, "fine")
        self.result(1, True, "active")
        for a in self.state.actions():
            if isinstance(a, AddVip):
                self.state.vip_added(a.vip, 0.0)
        assert self.state.status("web") is ServiceStatus.ANNOUNCED
        self.state.actions()

    def result(self, index: int, ok: bool, detail: str) -> None:
        """What the runner does with a probe result: machine, on_result, on_transition."""
        status = self.checks.runner.status(("web", index))
        result = ProbeResult(ok, 0.001, detail)
        transition = status.machine.record(ok, 0.0, detail)
        self.checks._on_result(("web", index), result)
        if transition is not None:
            self.checks._on_check(CheckEvent(("web", index), transition, result))

    def gs(self) -> set[bool]:
        """GRACEFUL_SHUTDOWN of the announcements since the last call (both VIPs alike)."""
        return {a.graceful_shutdown for a in self.state.actions() if isinstance(a, Announce)}


@pytest.mark.anyio
async def test_glue_deactivating_drains_then_inactive_withdraws(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    await rig.up()
    rig.result(1, False, DEACTIVATING)
    assert rig.gs() == {True}
    assert rig.state.services["web"].healthy and rig.state.services["web"].stopping
    rig.result(1, False, "inactive")
    out = rig.state.actions()
    assert [type(a) for a in out if not isinstance(a, ServiceChanged)] == [Withdraw, Withdraw]
    assert not rig.state.services["web"].healthy and not rig.state.services["web"].stopping
    assert rig.checks.runner.status(("web", 1)).machine.state is Health.DOWN


@pytest.mark.anyio
async def test_glue_active_again_ends_the_drain_after_rise(tmp_path: Path) -> None:
    rig = Rig(tmp_path, rise=2)
    await rig.checks.sync(rig.cfg)
    rig.checks.rebuild(rig.cfg, "starting")
    for _ in range(2):
        rig.result(0, True, "fine")
        rig.result(1, True, "active")
    for a in rig.state.actions():
        if isinstance(a, AddVip):
            rig.state.vip_added(a.vip, 0.0)
    rig.state.actions()
    rig.result(1, False, DEACTIVATING)
    assert rig.gs() == {True}
    rig.result(1, True, "active")  # stop cancelled: DOWN until rise, still draining
    assert rig.gs() == set() and rig.state.services["web"].stopping
    rig.result(1, True, "active")  # UP: the stop drain ends, announced as before
    assert rig.gs() == {False}
    assert not rig.state.services["web"].stopping and rig.checks.stopping == set()


@pytest.mark.anyio
async def test_glue_other_checks_still_withdraw_and_exec_detail_is_not_a_stop(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path)
    await rig.up()
    rig.result(0, False, DEACTIVATING)  # a tcp check's detail: not a systemd check
    out = [type(a) for a in rig.state.actions() if not isinstance(a, ServiceChanged)]
    assert out == [Withdraw, Withdraw]
    assert not rig.state.services["web"].stopping


# -- the whole daemon, real systemd probe, fake systemd on a private bus ------------------------


async def until(condition: Callable[[], object], task: asyncio.Task[int]) -> None:
    for _ in range(1000):
        if condition():
            return
        if task.done():
            raise AssertionError(f"daemon exited early with {task.result()}")
        await asyncio.sleep(0.005)
    raise AssertionError("condition not met in time")


@pytest.mark.skipif(shutil.which("dbus-daemon") is None, reason="dbus-daemon is not installed")
def test_daemon_systemctl_stop_drains_then_withdraws(tmp_path: Path) -> None:
    async def main(bus: str) -> None:
        service, unit = await serve(bus)
        path, cfg = config(tmp_path, **_with_systemd(tmp_path, bus))
        clock, lo = FakeClock(), MemoryLoopback()
        peers, factory = fake_peers()
        notes: list[str] = []
        tcp = FakeProbe(ok=True)
        daemon = AgentDaemon(
            path,
            state_path=tmp_path / "state.json",
            config=cfg,
            clock=clock,
            loopback=lo,
            peer_factory=factory,  # type: ignore[arg-type]
            probe_factory=lambda c: make_probe(c) if c.type == "systemd" else tcp,
            find_router_id=lambda: None,
            notify=notes.append,
            signals=False,
        )
        task = asyncio.get_running_loop().create_task(daemon.run())
        await until(
            lambda: (
                "web" in daemon.state.services
                and daemon.state.status("web") is ServiceStatus.ANNOUNCED
            ),
            task,
        )
        routes = peers[0].session.rib_out

        def gs() -> bool | None:
            """Whether web's IPv4 VIP is wanted with 65535:0 at the peer (None: withdrawn)."""
            attrs = {str(p): a for p, a in routes.desired.items()}.get("198.51.100.10/32")
            return None if attrs is None else GRACEFUL_SHUTDOWN in attrs.communities

        assert gs() is False
        unit.set(DEACTIVATING)  # systemctl stop nginx: before ExecStop= runs
        await until(lambda: daemon.state.status("web") is ServiceStatus.DRAINING, task)
        assert gs() is True
        assert lo.present >= {"198.51.100.10/32"}
        assert daemon.state.drained() == [] and "web" not in str(daemon.store.path.read_text())
        unit.set("inactive")
        await until(lambda: gs() is None, task)  # withdrawn at once, not after drain_time
        await settle()
        await until(lambda: "198.51.100.10/32" not in lo.present, task)
        assert daemon.state.status("web") is ServiceStatus.WITHDRAWN
        unit.set("activating")
        unit.set("active")  # the restart is over: rise 1, announced again without 65535:0
        await until(lambda: gs() is False, task)
        daemon.request_stop()
        for _ in range(2000):
            if task.done():
                break
            await asyncio.sleep(0.005)
        assert await asyncio.wait_for(task, 10) == 0
        await close(service)

    with private_bus() as bus:
        asyncio.run(main(bus))


@pytest.mark.anyio
async def test_glue_reload_keeps_the_stop_and_removing_the_check_ends_it(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    await rig.up()
    rig.result(1, False, DEACTIVATING)
    assert rig.gs() == {True}
    await rig.checks.sync(rig.cfg)  # SIGHUP, same config: the stop goes on
    rig.checks.rebuild(rig.cfg, "reload")
    assert rig.gs() == set() and rig.state.services["web"].stopping
    _, without = config(tmp_path)  # the systemd check removed from the config
    await rig.checks.sync(without)
    rig.checks.rebuild(without, "reload")
    assert rig.gs() == {False}  # the remaining check is up: announced again as before
    assert rig.checks.stopping == set()
    assert rig.state.services["web"].reason == "reload: no stop under way"
