"""The agent's pure announcement logic on a fake clock: order of steps, drain, shutdown, reload."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from bgplb.agent.state import (
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
        assert isinstance(a, AddVip)
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
    s = AgentState()
    up(s)
    s.drain("web", 10.0)
    assert steps(s) == [Announce(V4, web(), True), Announce(V6, web(), True)]
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
    up(s)
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


@settings(max_examples=200, deadline=None)
@given(EVENTS)
def test_invariants_under_any_sequence(events: list[tuple[str, float]]) -> None:
    """Announce only what is on lo; RemoveVip only after a confirmed withdrawal; never announce
    an unhealthy service; shutdown always ends idle."""
    s = AgentState()
    s.configure([web(drain_time=2.0)], 0.0)
    on_lo: set[object] = set()
    announced: set[object] = set()
    pending_withdraw: set[object] = set()
    healthy = False
    now = 0.0

    def run() -> None:
        for a in s.actions():
            if isinstance(a, AddVip):
                on_lo.add(a.vip)
                s.vip_added(a.vip, now)
                run()
            elif isinstance(a, Announce):
                assert a.vip in on_lo, "announced before the VIP was on lo"
                assert healthy, "announced an unhealthy service"
                announced.add(a.vip)
            elif isinstance(a, Withdraw):
                announced.discard(a.vip)
                pending_withdraw.add(a.vip)
            elif isinstance(a, RemoveVip):
                assert a.vip not in announced and a.vip not in pending_withdraw
                on_lo.discard(a.vip)

    for kind, dt in events:
        now += dt
        if kind == "up":
            healthy = True
            s.set_health("web", True, now)
        elif kind == "down":
            healthy = False
            s.set_health("web", False, now)
        elif kind == "drain":
            s.drain("web", now)
        elif kind == "undrain":
            s.undrain("web", now)
        elif kind == "tick":
            s.handle_timer(now)
        elif kind == "reload":
            s.configure([web(drain_time=2.0, med=int(now))], now)
        run()
        if kind == "confirm" and pending_withdraw:
            done = set(pending_withdraw)
            pending_withdraw.clear()
            s.withdrawn(done, now)  # type: ignore[arg-type]
            run()
    s.shutdown(now, drain_time=1.0)
    run()
    for _ in range(4):
        now += 1.0
        s.handle_timer(now)
        run()
        done = set(pending_withdraw)
        pending_withdraw.clear()
        s.withdrawn(done, now)  # type: ignore[arg-type]
        run()
    assert s.idle and not announced and not on_lo
