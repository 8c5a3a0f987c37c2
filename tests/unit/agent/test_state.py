"""The agent's pure announcement logic on a fake clock: order of steps, drain, shutdown, reload."""

from __future__ import annotations

import ipaddress

from agent_fakes import StateWorld
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bgplb.agent.state import (
    SHUTDOWN_VIP_LINGER,
    AddVip,
    AgentState,
    Announce,
    Phase,
    RemoveVip,
    ServiceChanged,
    ServiceSpec,
    ServiceStatus,
    Withdraw,
)

V4 = ipaddress.ip_network("198.51.100.10/32")
V6 = ipaddress.ip_network("2001:db8::10/128")
V4B = ipaddress.ip_network("198.51.100.11/32")


def web(**kw: object) -> ServiceSpec:
    args: dict[str, object] = {"name": "web", "vips": (V4, V6), "drain_time": 10.0}
    args.update(kw)
    return ServiceSpec(**args)  # type: ignore[arg-type]


def steps(state: AgentState) -> list[object]:
    return [a for a in state.actions() if not isinstance(a, ServiceChanged)]


def up(state: AgentState, now: float = 0.0, spec: ServiceSpec | None = None) -> None:
    """Configure `spec`, make it healthy and confirm the VIP additions."""
    state.configure([spec or web()], now)
    state.set_health("web", True, now)
    for a in steps(state):
        if isinstance(a, AddVip):
            state.vip_added(a.vip, now)
    state.actions()


def test_nothing_announced_before_healthy() -> None:
    s = AgentState()
    s.configure([web()], 0.0)
    assert steps(s) == []
    assert s.status("web") is ServiceStatus.WITHDRAWN


def test_vip_is_added_before_it_is_announced() -> None:
    s = AgentState()
    s.configure([web()], 0.0)
    s.set_health("web", True, 1.0, "2 consecutive successes")
    assert steps(s) == [AddVip(V4, "web"), AddVip(V6, "web")]  # no Announce yet
    s.vip_added(V4, 1.0)
    assert s.actions() == [
        Announce(V4, web()),
        ServiceChanged(
            "web", ServiceStatus.WITHDRAWN, ServiceStatus.ANNOUNCED, "2 consecutive successes"
        ),
    ]
    s.vip_added(V6, 1.0)
    assert s.actions() == [Announce(V6, web())]


def test_unhealthy_withdraws_at_once_and_removes_vip_only_after_withdrawn() -> None:
    s = AgentState()
    up(s)
    s.set_health("web", False, 5.0, "check http://127.0.0.1/ failed: refused")
    actions = s.actions()
    assert [a for a in actions if not isinstance(a, ServiceChanged)] == [
        Withdraw(V4, "web"),
        Withdraw(V6, "web"),
    ]
    assert s.get_timer() is None  # no waiting: a failing service goes at once
    s.withdrawn([V4], 5.1)
    assert steps(s) == [RemoveVip(V4, "web")]
    assert s.phases("web")[str(V6)] is Phase.WITHDRAWING
    s.withdrawn([V6], 5.2)
    assert steps(s) == [RemoveVip(V6, "web")]
    assert s.idle


def test_healthy_again_before_withdrawal_confirmed_keeps_vip() -> None:
    s = AgentState()
    up(s)
    s.set_health("web", False, 5.0)
    s.actions()
    s.set_health("web", True, 6.0)
    assert steps(s) == []  # waits for the confirmation
    s.withdrawn([V4, V6], 6.1)
    assert steps(s) == [Announce(V4, web()), Announce(V6, web())]  # no RemoveVip / AddVip


def test_drain_announces_graceful_shutdown_then_withdraws_after_drain_time() -> None:
    """drain_vip_linger = 0: the VIP leaves lo right after the withdrawal (the old behaviour)."""
    s = AgentState()
    spec = web(drain_vip_linger=0.0)
    up(s, spec=spec)
    s.drain("web", 10.0)
    assert steps(s) == [Announce(V4, spec, True), Announce(V6, spec, True)]
    assert s.status("web") is ServiceStatus.DRAINING
    assert s.get_timer() == 20.0
    s.handle_timer(19.9)
    assert steps(s) == []
    s.handle_timer(20.0)
    assert steps(s) == [Withdraw(V4, "web"), Withdraw(V6, "web")]
    s.withdrawn([V4, V6], 20.1)
    assert steps(s) == [RemoveVip(V4, "web"), RemoveVip(V6, "web")]
    assert s.status("web") is ServiceStatus.DRAINED
    assert s.drained() == ["web"]


def test_undrain_during_drain_restores_plain_announcement() -> None:
    s = AgentState()
    up(s)
    s.drain("web", 10.0)
    s.actions()
    s.undrain("web", 12.0)
    assert steps(s) == [Announce(V4, web()), Announce(V6, web())]
    assert s.get_timer() is None
    assert s.status("web") is ServiceStatus.ANNOUNCED


def test_undrain_after_drain_readds_and_announces() -> None:
    s = AgentState()
    up(s, spec=web(drain_vip_linger=0.0))
    s.drain("web", 0.0)
    s.handle_timer(10.0)
    s.withdrawn([V4, V6], 10.0)
    s.actions()
    s.undrain("web", 11.0)
    assert steps(s) == [AddVip(V4, "web"), AddVip(V6, "web")]


def test_check_failing_during_drain_withdraws_at_once() -> None:
    s = AgentState()
    up(s)
    s.drain("web", 0.0)
    s.actions()
    s.set_health("web", False, 1.0)
    assert steps(s) == [Withdraw(V4, "web"), Withdraw(V6, "web")]
    s.withdrawn([V4, V6], 1.1)  # a health failure, not a drain: no linger
    assert steps(s) == [RemoveVip(V4, "web"), RemoveVip(V6, "web")]
    assert s.lingering("web") == {}


# -- drain_vip_linger: the VIP stays on lo after a drain's withdrawal ---------------------------


def drained_out(s: AgentState, spec: ServiceSpec | None = None) -> None:
    """Up at 0, drained at 10, withdrawn at 20 (drain_time 10), withdrawal confirmed at 20.5."""
    up(s, spec=spec)
    s.drain("web", 10.0)
    s.actions()
    s.handle_timer(20.0)
    assert steps(s) == [Withdraw(V4, "web"), Withdraw(V6, "web")]
    s.withdrawn([V4, V6], 20.5)


def test_drain_keeps_vip_on_lo_for_drain_vip_linger_then_removes_it() -> None:
    s = AgentState()
    drained_out(s, web(drain_vip_linger=60.0))
    assert steps(s) == []  # withdrawn, but still on lo
    assert s.status("web") is ServiceStatus.DRAINED
    assert s.phases("web") == {str(V4): Phase.IDLE, str(V6): Phase.IDLE}
    assert s.lingering("web") == {str(V4): 80.5, str(V6): 80.5}
    assert s.get_timer() == 80.5
    assert not s.idle
    s.handle_timer(80.4)
    assert steps(s) == []
    s.handle_timer(80.5)
    assert steps(s) == [RemoveVip(V4, "web"), RemoveVip(V6, "web")]
    assert s.lingering("web") == {}
    assert s.get_timer() is None
    assert s.idle


def test_undrain_during_linger_announces_without_adding() -> None:
    s = AgentState()
    drained_out(s)
    s.actions()
    s.undrain("web", 30.0)
    assert steps(s) == [Announce(V4, web()), Announce(V6, web())]  # no AddVip
    assert s.status("web") is ServiceStatus.ANNOUNCED
    assert s.lingering("web") == {} and s.get_timer() is None
    s.handle_timer(100.0)  # the old linger deadline: nothing
    assert steps(s) == []


def test_health_failure_during_linger_keeps_it_until_undrained_and_healthy() -> None:
    s = AgentState()
    drained_out(s)
    s.set_health("web", False, 30.0)
    s.undrain("web", 31.0)
    assert steps(s) == []  # still lingering: the router may still send pinned connections
    s.set_health("web", True, 32.0)
    assert steps(s) == [Announce(V4, web()), Announce(V6, web())]


def test_health_failure_before_withdrawal_confirmed_removes_at_once() -> None:
    s = AgentState()
    up(s)
    s.drain("web", 10.0)
    s.handle_timer(20.0)
    s.actions()
    s.set_health("web", False, 20.1)
    s.withdrawn([V4, V6], 20.2)
    assert steps(s) == [RemoveVip(V4, "web"), RemoveVip(V6, "web")]


def test_shutdown_drain_lingers_briefly_not_for_drain_vip_linger() -> None:
    """A stop's withdrawal keeps the VIP on lo for shutdown_vip_linger (packets already on
    their way, a router that has not processed the withdrawal yet), never for the long
    drain_vip_linger: the stop stays short and bounded."""
    s = AgentState()
    up(s, spec=web(drain_vip_linger=60.0))
    s.shutdown(0.0, drain_time=1.0)
    s.handle_timer(1.0)
    s.actions()
    s.withdrawn([V4, V6], 1.0)
    assert steps(s) == []  # not removed right after the withdrawal was written
    assert s.lingering("web") == {str(V4): 2.5, str(V6): 2.5}
    assert s.get_timer() == 2.5 and not s.idle
    s.handle_timer(2.4)
    assert steps(s) == []
    s.handle_timer(2.5)
    assert steps(s) == [RemoveVip(V4, "web"), RemoveVip(V6, "web")]
    assert s.idle and s.get_timer() is None


def test_shutdown_linger_is_configurable_and_zero_removes_at_once() -> None:
    s = AgentState(shutdown_vip_linger=0.0)
    up(s)
    s.shutdown(0.0, drain_time=0.0)
    s.actions()
    s.withdrawn([V4, V6], 0.1)
    assert steps(s) == [RemoveVip(V4, "web"), RemoveVip(V6, "web")]
    assert s.idle


def test_shutdown_of_unhealthy_service_does_not_linger() -> None:
    s = AgentState()
    up(s)
    s.shutdown(0.0, drain_time=5.0)
    s.actions()  # GRACEFUL_SHUTDOWN
    s.set_health("web", False, 1.0)  # withdrawn at once, as any health failure
    assert steps(s) == [Withdraw(V4, "web"), Withdraw(V6, "web")]
    s.withdrawn([V4, V6], 1.1)
    assert steps(s) == [RemoveVip(V4, "web"), RemoveVip(V6, "web")]
    assert s.idle


def test_shutdown_long_after_drain_withdrawal_removes_at_once() -> None:
    s = AgentState()
    drained_out(s)  # withdrawal confirmed at 20.5, drain_vip_linger 60 s
    s.shutdown(30.0)
    assert steps(s) == [RemoveVip(V4, "web"), RemoveVip(V6, "web")]
    assert s.idle and s.get_timer() is None


def test_shutdown_right_after_drain_withdrawal_shortens_linger() -> None:
    s = AgentState()
    drained_out(s)  # withdrawal confirmed at 20.5
    s.shutdown(21.0)
    assert steps(s) == []
    assert s.lingering("web") == {str(V4): 22.0, str(V6): 22.0}  # 20.5 + 1.5, not 80.5
    s.handle_timer(22.0)
    assert steps(s) == [RemoveVip(V4, "web"), RemoveVip(V6, "web")]
    assert s.idle


def test_shutdown_removes_unconfigured_lingering_vip_at_once() -> None:
    s = AgentState()
    up(s)
    s.shutdown(0.0, drain_time=0.0)
    s.actions()
    s.withdrawn([V4, V6], 0.0)
    s.configure([web(vips=(V4,))], 0.5)
    assert steps(s) == [RemoveVip(V6, "web")]
    assert s.lingering("web") == {str(V4): 1.5}


def test_reload_removing_lingering_vip_removes_it_and_shorter_linger_applies() -> None:
    s = AgentState()
    drained_out(s)
    s.configure([web(vips=(V4,), drain_vip_linger=5.0)], 21.0)
    assert steps(s) == [RemoveVip(V6, "web")]
    assert s.lingering("web") == {str(V4): 26.0}  # min(80.5, 21 + 5)
    s.configure([web(vips=(V4,), drain_vip_linger=0.0)], 22.0)
    assert steps(s) == [RemoveVip(V4, "web")]


def test_manage_vip_false_never_lingers() -> None:
    s = AgentState()
    drained_out(s, web(manage_vip=False))
    assert steps(s) == []
    assert s.lingering("web") == {} and s.idle


def test_drained_service_stays_withdrawn_when_healthy() -> None:
    s = AgentState()
    s.configure([web()], 0.0, drained=["web"])
    s.set_health("web", True, 1.0)
    assert steps(s) == []
    assert s.status("web") is ServiceStatus.DRAINED


def test_shutdown_drains_bounded_by_shutdown_drain_time() -> None:
    s = AgentState()
    up(s, spec=web(drain_time=60.0))
    s.shutdown(100.0, drain_time=5.0)
    assert steps(s) == [
        Announce(V4, web(drain_time=60.0), True),
        Announce(V6, web(drain_time=60.0), True),
    ]
    assert s.get_timer() == 105.0
    s.handle_timer(105.0)
    assert steps(s) == [Withdraw(V4, "web"), Withdraw(V6, "web")]
    s.withdrawn([V4, V6], 105.0)
    assert steps(s) == []  # the stop's short linger
    s.handle_timer(105.0 + SHUTDOWN_VIP_LINGER)
    assert steps(s) == [RemoveVip(V4, "web"), RemoveVip(V6, "web")]
    assert s.idle


def test_shutdown_with_zero_drain_time_withdraws_at_once() -> None:
    s = AgentState()
    up(s)
    s.shutdown(0.0, drain_time=0.0)
    assert steps(s) == [Withdraw(V4, "web"), Withdraw(V6, "web")]


def test_shutdown_never_announces_again() -> None:
    s = AgentState()
    s.configure([web()], 0.0)
    s.shutdown(0.0)
    s.set_health("web", True, 1.0)
    assert steps(s) == []
    assert s.idle


def test_reload_changed_attributes_reannounces_only_that_service() -> None:
    s = AgentState()
    up(s)
    other = ServiceSpec("dns", (V4B,))
    s.configure([web(med=50), other], 1.0)
    assert steps(s) == [Announce(V4, web(med=50)), Announce(V6, web(med=50))]


def test_reload_unchanged_does_nothing() -> None:
    s = AgentState()
    up(s)
    s.configure([web()], 1.0)
    assert s.actions() == []


def test_reload_removed_vip_and_service_withdraws_without_drain() -> None:
    s = AgentState()
    up(s)
    s.configure([web(vips=(V4,))], 1.0)
    assert steps(s) == [Withdraw(V6, "web")]
    s.withdrawn([V6], 1.1)
    assert steps(s) == [RemoveVip(V6, "web")]
    assert str(V6) not in s.phases("web")
    s.configure([], 2.0)
    assert steps(s) == [Withdraw(V4, "web")]
    s.withdrawn([V4], 2.1)
    assert steps(s) == [RemoveVip(V4, "web")]
    assert s.vips == {}


def test_reload_added_vip_of_healthy_service_is_added_then_announced() -> None:
    s = AgentState()
    up(s)
    s.configure([web(vips=(V4, V6, V4B))], 1.0)
    assert steps(s) == [AddVip(V4B, "web")]


def test_manage_vip_false_skips_vip_steps() -> None:
    s = AgentState()
    s.configure([web(manage_vip=False)], 0.0)
    s.set_health("web", True, 0.0)
    assert steps(s) == [Announce(V4, web(manage_vip=False)), Announce(V6, web(manage_vip=False))]
    s.set_health("web", False, 1.0)
    s.actions()
    s.withdrawn([V4, V6], 1.0)
    assert steps(s) == []


def test_vip_added_after_health_lost_removes_it_without_announcing() -> None:
    s = AgentState()
    s.configure([web()], 0.0)
    s.set_health("web", True, 0.0)
    s.actions()
    s.set_health("web", False, 0.1)
    s.vip_added(V4, 0.2)
    assert steps(s) == [RemoveVip(V4, "web")]


# -- properties --------------------------------------------------------------------------------

EVENTS = st.lists(
    st.tuples(
        st.sampled_from(["up", "down", "drain", "undrain", "tick", "confirm", "reload"]),
        st.floats(min_value=0.0, max_value=5.0),
    ),
    max_size=40,
)


DRAINED_OUT = [("up", 0.0), ("drain", 1.0), ("tick", 2.5), ("confirm", 0.0)]
LINGER_THEN_END = [*DRAINED_OUT, ("tick", 1.0), ("tick", 1.0), ("tick", 1.0), ("tick", 1.0)]
LINGER_THEN_UNDRAIN = [
    *DRAINED_OUT,
    ("undrain", 1.0),
    ("down", 0.5),
    ("drain", 0.5),
    ("up", 0.5),
    ("tick", 2.5),
    ("confirm", 0.0),
    ("down", 1.0),
    ("tick", 3.0),
]


@settings(max_examples=300, deadline=None)
@example(LINGER_THEN_END)
@example(LINGER_THEN_UNDRAIN)
@given(EVENTS)
def test_invariants_under_any_sequence(events: list[tuple[str, float]]) -> None:
    """Announce only what is on lo; RemoveVip only after a confirmed withdrawal; never announce
    an unhealthy service; a VIP is on lo unannounced (and not being withdrawn) only while it
    lingers after an operator drain, never longer than drain_vip_linger after the confirmed
    withdrawal; shutdown always ends idle."""
    s = AgentState()
    spec = web(drain_time=2.0, drain_vip_linger=3.0)
    s.configure([spec], 0.0)
    confirmed: dict[object, float] = {}
    drained_at_confirm: dict[object, bool] = {}

    def forget_removed(action: object) -> None:
        if isinstance(action, RemoveVip):
            confirmed.pop(action.vip, None)

    world = StateWorld(s, forget_removed)

    def check_lo() -> None:
        lingering = s.lingering("web")
        for vip in world.on_lo - set(world.announced) - world.pending:
            assert str(vip) in lingering, f"{vip} on lo, not announced, not lingering"
            assert drained_at_confirm[vip], "lingering after a withdrawal that was not a drain"
            assert lingering[str(vip)] <= confirmed[vip] + 3.0
            if kind == "tick":  # the timer fired: every linger that is over has ended
                assert lingering[str(vip)] > world.now

    for kind, dt in events:
        world.now += dt
        now = world.now
        if kind in ("up", "down"):
            world.healthy = kind == "up"
            s.set_health("web", world.healthy, now)
        elif kind == "drain":
            s.drain("web", now)
        elif kind == "undrain":
            s.undrain("web", now)
        elif kind == "tick":
            s.handle_timer(now)
        elif kind == "reload":
            s.configure([web(drain_time=2.0, drain_vip_linger=3.0, med=int(now))], now)
        world.run()
        if kind == "confirm" and world.pending:
            for vip in world.pending:
                confirmed[vip] = now
                drained_at_confirm[vip] = s.services["web"].drained
            world.confirm()
        check_lo()
    world.shut_down()
