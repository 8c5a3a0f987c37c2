"""RiseFall and ServiceHealth on a fake clock: rise/fall counting, damping, service health."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bgplb.health.state import Damping, Health, RiseFall, ServiceHealth, Transition


def feed(rf: RiseFall, results: str, start: float = 0.0, step: float = 1.0) -> list[Transition]:
    """Feed 'y'/'n' results one `step` apart; return the transitions."""
    out = []
    for i, c in enumerate(results):
        t = rf.record(c == "y", start + i * step, f"probe {i}")
        if t:
            out.append(t)
    return out


def test_starts_down_and_rises_after_rise_successes():
    rf = RiseFall(rise=2, fall=3)
    assert rf.state is Health.DOWN
    assert rf.record(True, 0.0, "ok") is None
    t = rf.record(True, 1.0, "ok 2")
    assert t == Transition(Health.DOWN, Health.UP, 1.0, "ok 2", "2 consecutive success(es)")
    assert rf.up and t.up


def test_falls_at_the_fall_th_failure():
    rf = RiseFall(rise=1, fall=3)
    feed(rf, "y")
    assert rf.up
    assert rf.record(False, 1.0, "e1") is None
    assert rf.record(False, 2.0, "e2") is None
    t = rf.record(False, 3.0, "connection refused")
    assert t is not None and not t.up
    assert (t.old, t.new, t.at, t.detail) == (Health.UP, Health.DOWN, 3.0, "connection refused")


def test_interleaved_results_reset_the_counters():
    rf = RiseFall(rise=3, fall=2)
    assert feed(rf, "yynyynyy") == []  # never 3 in a row
    assert not rf.up
    [t] = feed(rf, "y", start=10)
    assert t.up
    assert feed(rf, "nynyny", start=20) == []  # never 2 failures in a row
    assert rf.up


def test_initial_up():
    rf = RiseFall(rise=2, fall=1, initial=Health.UP)
    [t] = feed(rf, "n")
    assert not t.up


def test_invalid_parameters():
    with pytest.raises(ValueError):
        RiseFall(rise=0, fall=1)
    with pytest.raises(ValueError):
        Damping(reuse=3000, suppress=3000)


@given(
    st.integers(1, 5),
    st.integers(1, 5),
    st.lists(st.booleans(), max_size=60),
)
def test_state_is_determined_by_recent_results(rise, fall, results):
    """Without damping: transitions alternate, and the state follows the last run of results."""
    rf = RiseFall(rise, fall)
    transitions = [t for i, ok in enumerate(results) if (t := rf.record(ok, float(i), ""))]
    expected = Health.DOWN
    for t in transitions:
        assert t.old is expected
        expected = t.new
    assert rf.state is expected
    if len(results) >= rise and all(results[-rise:]):
        assert rf.up
    if len(results) >= fall and not any(results[-fall:]):
        assert not rf.up
    # Never UP before `rise` successes in a row have been seen.
    if rf.up:
        assert any(all(results[i : i + rise]) for i in range(len(results) - rise + 1))


# -- damping -----------------------------------------------------------------------------------


def flap(rf: RiseFall, t: float) -> tuple[Transition | None, Transition | None]:
    """Bring an UP check down then (try to) up again at t, t+1, t+2 (rise=1, fall=1)."""
    down = rf.record(False, t, "down")
    up = rf.record(True, t + 1, "up")
    return down, up


def test_few_flaps_are_not_damped():
    rf = RiseFall(1, 1, damping=Damping())
    feed(rf, "y")
    for i in range(3):
        down, up = flap(rf, 10.0 + 2 * i)
        assert down is not None and up is not None and up.up
    assert not rf.suppressed


def test_fourth_quick_flap_suppresses_until_reuse():
    damping = Damping(half_life=30, suppress=3000, reuse=750, max_suppress=120)
    rf = RiseFall(1, 1, damping=damping)
    feed(rf, "y")
    for i in range(3):
        flap(rf, 10.0 + 2 * i)
    down, up = flap(rf, 16.0)
    assert down is not None and not down.up  # going down is never delayed
    assert up is None and rf.suppressed and not rf.up
    figure = rf.penalty(16.0)
    assert 3000 <= figure <= damping.ceiling
    release = rf.reuse_at(17.0)
    assert release is not None
    # Successes every second: held down until the figure decays to reuse, then up at once.
    t = 18.0
    while t < release:
        assert rf.record(True, t, "ok") is None, t
        t += 1.0
    transition = rf.record(True, t, "ok")
    assert transition is not None and transition.up
    assert "flap damping released" in transition.reason
    assert rf.penalty(t) <= 750


def test_damping_never_holds_longer_than_max_suppress():
    damping = Damping(half_life=10, max_suppress=60)
    rf = RiseFall(1, 1, damping=damping)
    feed(rf, "y")
    t = 0.0
    for _ in range(50):  # flap hard: the figure hits the ceiling
        flap(rf, t)
        t += 0.1
    assert rf.suppressed
    assert rf.penalty(t) <= damping.ceiling + 1e-6
    last_down = t - 0.1
    while rf.record(True, t, "ok") is None:
        t += 0.5
        assert t < 1000
    assert t - last_down <= damping.max_suppress + 1.0


def test_failure_while_suppressed_needs_rise_again():
    rf = RiseFall(2, 1, damping=Damping(half_life=10, suppress=1500, reuse=500))
    feed(rf, "yy")
    feed(rf, "nyyn", start=1)  # two flaps: 1000 + ~900 -> suppressed
    assert rf.suppressed
    release = rf.reuse_at(5.0)
    assert release is not None
    # After the release time, a single success (after a failure) is not enough: rise is 2.
    assert rf.record(False, release + 1, "") is None
    assert rf.record(True, release + 2, "") is None
    transition = rf.record(True, release + 3, "")
    assert transition is not None and transition.up


@given(st.lists(st.tuples(st.booleans(), st.floats(0.01, 30.0)), max_size=80))
def test_damping_invariants(steps):
    damping = Damping(half_life=15, max_suppress=60)
    rf = RiseFall(2, 2, damping=damping)
    now = 0.0
    for ok, dt in steps:
        now += dt
        before = rf.state
        t = rf.record(ok, now, "")
        assert rf.penalty(now) <= damping.ceiling + 1e-6
        if t is not None:
            assert t.old is before
        if rf.suppressed:
            assert not rf.up
            reuse = rf.reuse_at(now)
            assert reuse is not None and reuse - now <= damping.max_suppress + 1e-6
        # Damping never delays DOWN: two failures in a row always end DOWN.
    if len(steps) >= 2 and not steps[-1][0] and not steps[-2][0]:
        assert not rf.up


# -- service health ----------------------------------------------------------------------------


def test_service_health_is_all_checks_up():
    service = ServiceHealth(["http", "tcp"])
    assert not service.healthy
    assert service.update("http", True) is None
    assert service.update("tcp", True) is True
    assert service.healthy
    assert service.update("http", False) is False
    assert service.down_checks() == ["http"]
    assert service.update("tcp", False) is None
    with pytest.raises(KeyError):
        service.update("dns", True)


def test_service_without_checks_is_healthy():
    assert ServiceHealth([]).healthy
