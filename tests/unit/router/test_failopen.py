"""Fail open (bgplb.router.failopen + its hooks in bgplb.router.rib): paths that all fail at once
by BFD / hold timer are kept; one failure among others fails over at once; withdrawals, drains
and Cease are never kept. Pure: a fake clock is a float."""

from __future__ import annotations

from ipaddress import ip_address, ip_network
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bgplb.bgp.attributes import (
    GRACEFUL_SHUTDOWN,
    AsPathSegment,
    AsPathSegmentType,
    Origin,
    PathAttributes,
)
from bgplb.bgp.errors import CeaseSubcode, ErrorCode
from bgplb.bgp.events import SessionDown
from bgplb.bgp.messages import Notification
from bgplb.bgp.prefix import Prefix
from bgplb.config import ConfigError, RouterConfig, load_router_config
from bgplb.router.failopen import (
    BFD_DOWN,
    HOLD_EXPIRED,
    PEER_BFD_DOWN,
    PEER_HOLD_EXPIRED,
    RETURN_GRACE,
    FailOpen,
    default_window,
    failure_kind,
    from_config,
)
from bgplb.router.rib import Connected, Rib

VIP = Prefix.parse("198.51.100.10/32")
VIP2 = Prefix.parse("198.51.100.11/32")
CONNECTED = [Connected(ip_network("192.0.2.0/24"), 3, ip_address("192.0.2.1"))]
SERVERS = ("192.0.2.11", "192.0.2.12", "192.0.2.13")
HOLD = 9.0
WINDOW = 0.5


def attrs(next_hop: str, *, communities: tuple[int, ...] = ()) -> PathAttributes:
    return PathAttributes(
        origin=Origin.IGP,
        as_path=(AsPathSegment(AsPathSegmentType.AS_SEQUENCE, (65000,)),),
        next_hop=ip_address(next_hop),
        communities=communities,
    )


def make_rib(*servers: str, fail_open: bool = True, vips: tuple[Prefix, ...] = (VIP,)) -> Rib:
    rib = Rib(CONNECTED, fail_open=FailOpen(HOLD, WINDOW) if fail_open else None)
    for peer in servers:
        rib.peer_up(peer, 0.0, asn=65000, source=ip_address(peer))
        rib.update(peer, list(vips), attrs(peer), [], 0.0)
    rib.take_dirty()
    return rib


def members(rib: Rib, vip: Prefix = VIP) -> list[str]:
    return [str(n.address) for n in rib.fib_entry(vip)]


# -- what is a failure -----------------------------------------------------------------------


def down(**kw: object) -> SessionDown:
    return SessionDown("x", True, **kw)  # type: ignore[arg-type]


def test_failure_kinds() -> None:
    assert failure_kind(down(), bfd_down=True) == BFD_DOWN
    assert failure_kind(down(hold_expired=True), bfd_down=False) == HOLD_EXPIRED
    received_hold = Notification(ErrorCode.HOLD_TIMER_EXPIRED, 0)
    assert failure_kind(down(notification=received_hold, local=False), False) == PEER_HOLD_EXPIRED
    bfd_cease = Notification(ErrorCode.CEASE, CeaseSubcode.BFD_DOWN)
    assert failure_kind(down(notification=bfd_cease, local=False), False) == PEER_BFD_DOWN


@pytest.mark.parametrize(
    "event",
    [
        down(connection_lost=True),  # FIN/RST without NOTIFICATION: the host answered
        down(
            notification=Notification(ErrorCode.CEASE, CeaseSubcode.ADMINISTRATIVE_SHUTDOWN),
            local=False,
        ),
        down(
            notification=Notification(ErrorCode.CEASE, CeaseSubcode.ADMINISTRATIVE_RESET),
            local=False,
        ),
        down(notification=Notification(ErrorCode.CEASE, CeaseSubcode.MAX_PREFIXES), local=True),
        down(notification=Notification(ErrorCode.UPDATE_MESSAGE, 1), local=True),
        # a Cease/BFD Down we sent is only a failure through our own BFD state (bfd_down)
        down(notification=Notification(ErrorCode.CEASE, CeaseSubcode.BFD_DOWN), local=True),
    ],
)
def test_not_failures(event: SessionDown) -> None:
    assert failure_kind(event, bfd_down=False) is None


def test_default_window() -> None:
    assert default_window([]) == 0.5
    assert default_window([0.3, 0.9]) == 0.9


def test_bad_policy_refused() -> None:
    with pytest.raises(ValueError):
        FailOpen(0, 1)
    with pytest.raises(ValueError):
        FailOpen(1, -1)


# -- the RIB ---------------------------------------------------------------------------------


def test_one_failure_among_others_fails_over_at_once() -> None:
    rib = make_rib(*SERVERS)
    rib.peer_down(SERVERS[0], 1.0, graceful=False, failure=BFD_DOWN)
    assert members(rib) == list(SERVERS[1:])
    assert rib.fail_open_check(1.0) == []
    assert rib.fail_open.event is None  # type: ignore[union-attr]
    assert SERVERS[0] not in rib.peers


def test_all_fail_in_one_batch_are_kept_until_hold() -> None:
    rib = make_rib(*SERVERS, vips=(VIP, VIP2))
    for i, peer in enumerate(SERVERS):
        rib.peer_down(peer, 1.0 + i * 0.01, graceful=False, failure=BFD_DOWN)
    assert members(rib) == list(SERVERS)
    assert members(rib, VIP2) == list(SERVERS)
    assert all(n.stale for n in rib.fib_entry(VIP))
    assert rib.fail_open_until(VIP) == pytest.approx(1.02 + HOLD, abs=0.03)
    logs = rib.fail_open_check(1.03)
    assert len(logs) == 1 and logs[0][0] == "warning"
    assert "fail-open: 2 VIPs lost every path to failures within 0.02 s" in logs[0][1]
    assert "BFD Down: 192.0.2.11, 192.0.2.12, 192.0.2.13" in logs[0][1]
    assert "keeping them for 9 s" in logs[0][1]
    assert rib.fail_open_vips == 2
    # nothing before the hold
    assert rib.expire(1.0 + HOLD - 0.1) == []
    assert members(rib) == list(SERVERS)
    deadline = rib.next_deadline()
    assert deadline is not None and deadline <= 1.02 + HOLD + 1e-9
    assert rib.expire(1.03 + HOLD) == []  # not reported as graceful restart
    assert members(rib) == [] and VIP not in rib.vips
    logs = rib.fail_open_check(1.03 + HOLD)
    assert len(logs) == 1 and "fail-open over after" in logs[0][1]
    assert "fail_open_hold ran out" in logs[0][1]
    assert rib.fail_open.event is None  # type: ignore[union-attr]
    assert rib.fail_open_vips == 0 and rib.peers == {}


def test_failures_in_separate_batches_within_the_window() -> None:
    rib = make_rib(*SERVERS)
    rib.peer_down(SERVERS[0], 1.0, graceful=False, failure=BFD_DOWN)
    rib.fail_open_check(1.0)
    assert members(rib) == list(SERVERS[1:])  # went at once: nothing said yet
    rib.peer_down(SERVERS[1], 1.2, graceful=False, failure=HOLD_EXPIRED)
    rib.peer_down(SERVERS[2], 1.3, graceful=False, failure=PEER_BFD_DOWN)
    assert members(rib) == list(SERVERS)  # the first one is back, kept
    (_level, message), *_ = rib.fail_open_check(1.3)
    assert "within 0.30 s" in message and "hold timer expired: 192.0.2.12" in message


def test_failure_older_than_the_window_is_not_brought_back() -> None:
    rib = make_rib(*SERVERS)
    rib.peer_down(SERVERS[0], 1.0, graceful=False, failure=BFD_DOWN)
    rib.peer_down(SERVERS[1], 1.0 + WINDOW + 0.1, graceful=False, failure=BFD_DOWN)
    rib.peer_down(SERVERS[2], 1.0 + WINDOW + 0.2, graceful=False, failure=BFD_DOWN)
    assert members(rib) == list(SERVERS[1:])


@pytest.mark.parametrize("how", ["withdraw", "cease", "internal", "drain"])
def test_not_a_failure_is_never_kept(how: str) -> None:
    rib = make_rib(*SERVERS[:2])
    rib.peer_down(SERVERS[0], 1.0, graceful=False, failure=BFD_DOWN)
    if how == "withdraw":
        rib.update(SERVERS[1], [], None, [VIP], 1.1)
    elif how == "drain":
        rib.update(SERVERS[1], [VIP], attrs(SERVERS[1], communities=(GRACEFUL_SHUTDOWN,)), [], 1.05)
        rib.peer_down(SERVERS[1], 1.1, graceful=False, failure=BFD_DOWN)
    else:  # Cease from the peer, our own reset: failure None
        rib.peer_down(SERVERS[1], 1.1, graceful=False, failure=None)
    if how == "drain":
        # the draining path is not kept; the other one, lost to failure just before, is
        assert members(rib) == [SERVERS[0]]
    else:
        assert members(rib) == []
        assert VIP not in rib.vips


def test_off_purges_as_before() -> None:
    rib = make_rib(*SERVERS, fail_open=False)
    for peer in SERVERS:
        rib.peer_down(peer, 1.0, graceful=False, failure=BFD_DOWN)
    assert members(rib) == [] and rib.peers == {}
    assert rib.fail_open_check(1.0) == []


def test_peers_come_back_fresh_routes_replace_kept_ones() -> None:
    rib = make_rib(*SERVERS)
    for peer in SERVERS:
        rib.peer_down(peer, 1.0, graceful=False, failure=BFD_DOWN)
    rib.fail_open_check(1.0)
    for i, peer in enumerate(SERVERS):
        now = 2.0 + i * 0.1
        rib.peer_up(peer, now, asn=65000, source=ip_address(peer))
        assert members(rib) == list(SERVERS)  # kept while it sends its routes
        rib.update(peer, [VIP], attrs(peer), [], now)
        assert not rib.fib_entry(VIP)[i].stale
    assert not any(n.stale for n in rib.fib_entry(VIP))
    logs = rib.fail_open_check(2.3)
    assert len(logs) == 1 and "fail-open over" in logs[0][1] and "came back" in logs[0][1]
    assert rib.next_deadline() is None


def test_one_back_others_get_the_grace() -> None:
    rib = make_rib(*SERVERS)
    for peer in SERVERS:
        rib.peer_down(peer, 1.0, graceful=False, failure=BFD_DOWN)
    rib.peer_up(SERVERS[0], 2.0, asn=65000, source=ip_address(SERVERS[0]))
    rib.update(SERVERS[0], [VIP], attrs(SERVERS[0]), [], 2.0)
    assert members(rib) == list(SERVERS)
    assert rib.next_deadline() == pytest.approx(2.0 + RETURN_GRACE)
    rib.expire(2.0 + RETURN_GRACE)
    assert members(rib) == [SERVERS[0]]
    logs = rib.fail_open_check(2.0 + RETURN_GRACE)
    assert "not back within 5 s" in logs[-1][1]


def test_end_of_rib_purges_kept_paths_not_announced_again() -> None:
    rib = make_rib(SERVERS[0], vips=(VIP, VIP2))
    rib.peer_down(SERVERS[0], 1.0, graceful=False, failure=BFD_DOWN)
    assert members(rib, VIP2) == [SERVERS[0]]
    rib.peer_up(SERVERS[0], 2.0, asn=65000, source=ip_address(SERVERS[0]))
    rib.update(SERVERS[0], [VIP], attrs(SERVERS[0]), [], 2.0)
    rib.end_of_rib(SERVERS[0], (VIP.afi, 1), 2.1)  # type: ignore[arg-type]
    assert members(rib) == [SERVERS[0]] and members(rib, VIP2) == []
    assert "came back" in rib.fail_open_check(2.1)[-1][1]


def test_a_real_path_from_another_server_ends_it_for_that_vip() -> None:
    rib = make_rib(*SERVERS[:2], vips=(VIP, VIP2))
    for peer in SERVERS[:2]:
        rib.peer_down(peer, 1.0, graceful=False, failure=BFD_DOWN)
    rib.fail_open_check(1.0)
    new = SERVERS[2]
    rib.peer_up(new, 2.0, asn=65000, source=ip_address(new))
    rib.update(new, [VIP], attrs(new), [], 2.0)
    assert members(rib) == [new]
    assert members(rib, VIP2) == list(SERVERS[:2])  # still kept
    rib.fail_open_check(2.0)
    assert rib.fail_open_vips == 1
    rib.update(new, [VIP2], attrs(new), [], 2.1)
    assert members(rib, VIP2) == [new]
    logs = rib.fail_open_check(2.1)
    assert "usable path from outside the episode" in logs[-1][1]
    assert set(rib.peers) == {new}


def test_graceful_restart_still_applies_to_a_closed_connection() -> None:
    rib = Rib(CONNECTED, max_stale_time=120, fail_open=FailOpen(HOLD, WINDOW))
    rib.peer_up(
        "192.0.2.11",
        0.0,
        source=ip_address("192.0.2.11"),
        restart_time=30,
        gr_families=[(VIP.afi, 1)],
    )  # type: ignore[list-item]
    rib.update("192.0.2.11", [VIP], attrs("192.0.2.11"), [], 0.0)
    assert rib.peer_down("192.0.2.11", 1.0, graceful=True, failure=None) == 1
    assert rib.fail_open.event is None  # type: ignore[union-attr]
    assert rib.next_deadline() == 31.0


def test_kept_peer_failing_again_after_return() -> None:
    rib = make_rib(*SERVERS[:2])
    for peer in SERVERS[:2]:
        rib.peer_down(peer, 1.0, graceful=False, failure=BFD_DOWN)
    rib.peer_up(SERVERS[0], 2.0, asn=65000, source=ip_address(SERVERS[0]))
    rib.update(SERVERS[0], [VIP], attrs(SERVERS[0]), [], 2.0)
    rib.peer_down(SERVERS[0], 2.1, graceful=False, failure=BFD_DOWN)
    # its fresh path is the only real one: kept again, with the other kept one
    assert members(rib) == list(SERVERS[:2])
    rib.fail_open_check(2.1)


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(1, 5),
    fail=st.lists(st.tuples(st.integers(0, 4), st.floats(0, 2), st.booleans()), max_size=8),
)
def test_property_never_keeps_what_was_not_lost_to_failure(
    n: int, fail: list[tuple[int, float, bool]]
) -> None:
    """Whatever the order: a VIP with a real path left is exactly the real paths; kept paths
    belong to peers lost by failure; a VIP with no kept path is what fail-open off gives."""
    servers = [f"192.0.2.{20 + i}" for i in range(n)]
    on, off = make_rib(*servers), make_rib(*servers, fail_open=False)
    now = 1.0
    failed: set[str] = set()
    for index, gap, is_failure in fail:
        peer = servers[index % n]
        if peer not in on.peers or not on.peers[peer].established:
            continue
        now += gap
        kind = BFD_DOWN if is_failure else None
        on.peer_down(peer, now, graceful=False, failure=kind)
        off.peer_down(peer, now, graceful=False, failure=kind)
        if is_failure:
            failed.add(peer)
        on.fail_open_check(now)
    live = members(off)
    if live:
        assert members(on) == live
    else:
        assert set(members(on)) <= failed
        assert all(n.stale for n in on.fib_entry(VIP))
    on.expire(now + HOLD + 1)
    assert members(on) == live


# -- configuration ---------------------------------------------------------------------------

ROUTER_TOML = """
[bgp]
asn = 65530
hold_time = {hold}

[[peer_ranges]]
prefix = "192.0.2.0/24"
asn = "any"
accept = ["198.51.100.0/24 le 32"]
{bfd}

[fib]
{fib}
"""


def load(tmp_path: Path, fib: str = "", hold: int = 9, bfd: str = "") -> RouterConfig:
    path = tmp_path / "router.toml"
    path.write_text(ROUTER_TOML.format(fib=fib, hold=hold, bfd=bfd))
    return load_router_config(path)


def test_config_defaults(tmp_path: Path) -> None:
    policy = from_config(load(tmp_path))
    assert policy is not None and (policy.hold, policy.window) == (9.0, 0.5)
    bfd = "bfd = { interval_ms = 300, multiplier = 4 }"
    policy = from_config(load(tmp_path, hold=30, bfd=bfd))
    assert policy is not None and (policy.hold, policy.window) == (30.0, 1.2)
    assert from_config(load(tmp_path, hold=0)).hold == 9.0  # type: ignore[union-attr]
    assert from_config(load(tmp_path, fib="fail_open = false")) is None
    policy = from_config(load(tmp_path, fib='fail_open_hold = "90s"\nfail_open_window = "2s"'))
    assert policy is not None and (policy.hold, policy.window) == (90.0, 2.0)


@pytest.mark.parametrize(
    ("fib", "message"),
    [
        ('fail_open_hold = "0s"', "fib.fail_open_hold"),
        ('fail_open_window = "0"', "fib.fail_open_window"),
        ('fail_open_window = "2m"', "at most 60s"),
        ('fail_open = "maybe"', "fib.fail_open"),
        ('fail_open_holdd = "9s"', "fail_open_holdd"),
    ],
)
def test_config_errors_name_the_key_and_file(tmp_path: Path, fib: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, fib=fib)
    assert message in str(info.value) and "router.toml" in str(info.value)


def consistent(rib: Rib) -> None:
    """The RIB's tables agree: every path of a VIP is its peer's, stale counts are right,
    only peers marked kept hold stale paths while down."""
    for vip, paths in rib.vips.items():
        assert paths, vip
        for p in paths:
            assert rib.peers[p.peer].paths[vip] is p
    for peer, state in rib.peers.items():
        for vip, p in state.paths.items():
            assert p in rib.vips[vip]
        assert state.stale_count == sum(p.stale for p in state.paths.values()), peer
        if not state.established:
            assert state.paths and state.stale_deadline is not None, peer
            assert all(p.stale for p in state.paths.values())


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["fail", "cease", "back", "new", "withdraw", "expire", "eor"]),
            st.integers(0, 3),
            st.floats(0, 3),
        ),
        max_size=14,
    )
)
def test_property_tables_stay_consistent_and_everything_kept_ends(
    steps: list[tuple[str, int, float]],
) -> None:
    servers = [f"192.0.2.{30 + i}" for i in range(4)]
    rib = make_rib(*servers[:3], vips=(VIP, VIP2))
    now = 1.0
    for action, index, gap in steps:
        now += gap
        peer = servers[index]
        state = rib.peers.get(peer)
        up = state is not None and state.established
        if action in ("fail", "cease") and up:
            failure = BFD_DOWN if action == "fail" else None
            rib.peer_down(peer, now, graceful=False, failure=failure)
        elif action in ("back", "new") and not up:
            rib.peer_up(peer, now, asn=65000, source=ip_address(peer))
            vips = [VIP] if action == "new" else [VIP, VIP2]
            rib.update(peer, vips, attrs(peer), [], now)
        elif action == "withdraw" and up:
            rib.update(peer, [], None, [VIP2], now)
        elif action == "eor" and up:
            rib.end_of_rib(peer, (VIP.afi, 1), now)  # type: ignore[arg-type]
        elif action == "expire":
            rib.expire(now)
        rib.fail_open_check(now)
        consistent(rib)
        for vip in (VIP, VIP2):
            entry = rib.fib_entry(vip)
            real = [n for n in entry if not n.stale]
            if real and any(n.stale for n in entry):
                # kept next to a real path only while episode peers are coming back
                assert rib.fail_open is not None and rib.fail_open.event is not None
    now += HOLD + 1
    rib.expire(now)
    rib.fail_open_check(now)
    consistent(rib)
    assert not any(p.stale for paths in rib.vips.values() for p in paths)
    assert rib.fail_open is not None and rib.fail_open.event is None
    assert rib.fail_open_vips == 0


def test_failopen_module_is_pure() -> None:
    import subprocess
    import sys

    code = (
        "import sys, bgplb.router.rib; "
        "bad = [m for m in ('asyncio', 'socket', 'subprocess', 'pyroute2', 'pydantic', "
        "'bgplb.config') if m in sys.modules]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
