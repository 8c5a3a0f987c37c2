"""The router's whole receive path under hostile input: bytes -> framing -> Session -> policy ->
Rib -> FIB (MemoryFib with kernel faults), driven by benchmarks/fuzz_router.py's `run_one`.

Hypothesis runs the structure-aware generator (valid OPEN, UPDATEs from the codec then mutated,
ROUTE-REFRESH, NOTIFICATION, KEEPALIVE, garbage, timers on a fake clock, kernel faults and
deletions behind the router's back) and raw bytes; the explicit inputs below are regressions.
The invariants are `run_one`'s (see its module docstring): no exception escapes, the session ends
in a sane state, after the final sync the kernel holds exactly what `rib.fib_entry` says, and
nothing the router must refuse reaches the kernel.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import random
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bgplb.bgp.framing import frame
from bgplb.bgp.messages import MessageType, RouteRefresh, encode


def _load() -> ModuleType:
    path = Path(__file__).resolve().parents[3] / "benchmarks" / "fuzz_router.py"
    spec = importlib.util.spec_from_file_location("fuzz_router", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_router"] = module
    spec.loader.exec_module(module)
    return module


fz = _load()

#: header bits: Extended Message, IPv6 negotiated, Graceful Restart, hold time 9 s
BASE = fz.H_EXTENDED | fz.H_IPV6 | fz.H_GR | (2 << 5)
DATA, TIMER, FAULTS, LOST, DELETE, STOP = (
    fz.REC_DATA,
    fz.REC_TIMER,
    fz.REC_FAULTS,
    fz.REC_LOST,
    fz.REC_DELETE,
    fz.REC_STOP,
)
VIP = "198.51.100.10/32"


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    """The router logs every refused prefix: thousands of lines under fuzzing."""
    logger = logging.getLogger("bgplb")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)


def findings(out: object) -> list[tuple[str, str]]:
    return list(out.findings)  # type: ignore[attr-defined]


def run(*recs: tuple[int, bytes], header: int = BASE) -> object:
    return fz.run_one(fz.script(header, *recs))


# -- properties ------------------------------------------------------------------------------------
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(min_value=0, max_value=2**64))
def test_generated_inputs_keep_every_invariant(seed: int) -> None:
    data = fz.fuzz_input(random.Random(seed))
    out = fz.run_one(data)
    assert not out.findings, f"input {data.hex()}: {out.findings}"


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=600))
def test_raw_bytes_keep_every_invariant(data: bytes) -> None:
    out = fz.run_one(data)
    assert not out.findings, f"input {data.hex()}: {out.findings}"


# -- regressions -----------------------------------------------------------------------------------
def test_plain_announcement_reaches_the_fib() -> None:
    """The harness sees a route at all (so the 'never reaches the FIB' tests can fail)."""
    out = run((DATA, fz.update_message([VIP, "198.51.100.11/32"], bandwidth=1e6)))
    assert findings(out) == []
    assert out.state == "ESTABLISHED"
    assert out.vips_in_fib == 2


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, -0.0, 3.4e38, 1e-45])
def test_extreme_link_bandwidth(value: float) -> None:
    """An UPDATE whose link bandwidth is +inf (and other extremes): installed with a weight,
    no exception anywhere, session up."""
    out = run((DATA, fz.update_message([VIP], bandwidth=value)))
    assert findings(out) == []
    assert out.state == "ESTABLISHED"
    assert out.vips_in_fib == 1


def test_extreme_link_bandwidth_next_to_a_normal_one() -> None:
    """Two paths of one VIP, +inf next to 1 Gb/s: the weight arithmetic takes both."""
    out = run(
        (DATA, fz.update_message([VIP], bandwidth=math.inf)),
        (DATA, fz.update_message(["198.51.100.11/32"], bandwidth=125e6)),
    )
    assert findings(out) == []


@pytest.mark.parametrize("total", [4076, 4080, 4095, 4096])
@pytest.mark.parametrize("extended", [True, False])
@pytest.mark.parametrize(("subtype", "notification"), [(0, (1, 2)), (1, (7, 1)), (2, (7, 1))])
def test_route_refresh_of_4076_to_4096_octets(
    total: int, extended: bool, subtype: int, notification: tuple[int, int]
) -> None:
    """A ROUTE-REFRESH whose length is not 23: Bad Message Length (RFC 4271 §6.1) for a plain
    one, ROUTE-REFRESH Invalid Message Length echoing the message cut to fit (RFC 7313 §5) for
    BoRR/EoRR; no exception, the NOTIFICATION is on the wire."""
    body = struct.pack("!HBB", 1, subtype, 1) + bytes(total - 23)
    header = BASE if extended else BASE & ~fz.H_EXTENDED
    out = run((DATA, frame(MessageType.ROUTE_REFRESH, body)), header=header)
    assert findings(out) == []
    assert out.state == "IDLE"
    assert notification in out.sent_notifications


def test_valid_route_refresh_keeps_the_session() -> None:
    out = run((DATA, encode(RouteRefresh(1, 1))), (DATA, fz.update_message([VIP])))
    assert findings(out) == []
    assert out.state == "ESTABLISHED" and out.vips_in_fib == 1


def test_mp_reach_for_a_family_not_negotiated() -> None:
    """RFC 4760 §8: MP_REACH_NLRI of a family the session did not negotiate is ignored; the
    session stays up, nothing of it reaches the FIB."""
    no_v6 = BASE & ~fz.H_IPV6
    out = run((DATA, fz.update_message(["2001:db8:100::10/128"], "2001:db8::2")), header=no_v6)
    assert findings(out) == []
    assert out.state == "ESTABLISHED"
    assert out.vips_in_fib == 0


def test_mp_reach_of_an_unknown_family() -> None:
    """L2VPN EVPN (25/70) in MP_REACH_NLRI next to a classic IPv4 NLRI."""
    msg = bytearray(fz.update_message([VIP]))
    attr = fz.encode_attribute(0x80, 14, struct.pack("!HBB", 25, 70, 4) + bytes(4) + b"\x00")
    attrs_len = struct.unpack_from("!H", msg, 21)[0]
    msg[23:23] = attr
    struct.pack_into("!H", msg, 21, attrs_len + len(attr))
    struct.pack_into("!H", msg, 16, len(msg))
    out = run((DATA, bytes(msg)))
    assert findings(out) == []
    assert out.state == "ESTABLISHED" and out.vips_in_fib == 1


def test_65k_update_of_duplicate_attributes() -> None:
    """One link bandwidth attribute repeated to 65,000 octets (Extended Message)."""
    out = run((DATA, fz.dup_flood(65000)))
    assert findings(out) == []
    assert out.state in ("ESTABLISHED", "IDLE")


def test_65k_update_without_extended_message() -> None:
    """The same without Extended Message negotiated: Bad Message Length (1/2), nothing more."""
    out = run((DATA, fz.dup_flood(65000)), header=BASE & ~fz.H_EXTENDED)
    assert findings(out) == []
    assert out.state == "IDLE" and (1, 2) in out.sent_notifications


@pytest.mark.parametrize("wide", [False, True], ids=["narrow-accept", "accept-everything"])
@pytest.mark.parametrize(
    "prefix", ["8.8.8.8/32", "127.0.0.1/32", "0.0.0.0/0", "192.0.2.1/32", "192.0.2.0/24"]
)
def test_hostile_prefixes_never_reach_the_fib(prefix: str, wide: bool) -> None:
    header = BASE | (fz.H_WIDE if wide else 0)
    out = run((DATA, fz.update_message([prefix])), header=header)
    assert findings(out) == []
    if not wide or prefix != "8.8.8.8/32":
        assert out.vips_in_fib == 0
    else:
        assert out.vips_in_fib == 1  # accept says so, and it is an ordinary unicast prefix


@pytest.mark.parametrize("prefix", ["::1/128", "::/0", "fe80::1/128", "2001:db8::1/128"])
def test_hostile_ipv6_prefixes_never_reach_the_fib(prefix: str) -> None:
    out = run((DATA, fz.update_message([prefix], "2001:db8::2")), header=BASE | fz.H_WIDE)
    assert findings(out) == []
    assert out.vips_in_fib == 0


@pytest.mark.parametrize(
    "next_hop",
    ["192.0.2.1", "192.0.2.0", "192.0.2.255", "0.0.0.0", "127.0.0.1", "203.0.113.1"],
)
def test_unusable_next_hops_never_reach_the_fib(next_hop: str) -> None:
    out = run((DATA, fz.update_message([VIP], next_hop)))
    assert findings(out) == []
    assert out.vips_in_fib == 0


def test_third_party_next_hop_never_reaches_the_fib() -> None:
    """allow_third_party_next_hop is off by default: 192.0.2.3 (connected, not the session's
    source 192.0.2.2) must not be installed."""
    out = run((DATA, fz.update_message([VIP], "192.0.2.3")))
    assert findings(out) == []
    assert out.vips_in_fib == 0


def test_max_prefixes_resets_the_session_and_purges() -> None:
    """max_prefixes 8 (H_SMALL_MAX): the ninth prefix sends Cease/1 and removes the peer's
    routes from the FIB."""
    vips = [f"198.51.100.{i}/32" for i in range(1, 10)]
    out = run((DATA, fz.update_message(vips)), header=BASE | fz.H_SMALL_MAX)
    assert findings(out) == []
    assert out.state == "IDLE" and (6, 1) in out.sent_notifications
    assert out.vips_in_fib == 0


@pytest.mark.parametrize("errno_choice", range(4))
@pytest.mark.parametrize("op_choice", range(9))
def test_kernel_fault_on_the_last_change_is_retried(op_choice: int, errno_choice: int) -> None:
    """A kernel fault (EEXIST, ENOENT, EINVAL, ENOSPC; every operation kind, on every matching
    operation of that sync) on the last change, then nothing more from the peer: the router's
    retries must still bring the kernel to what the RIB says."""
    out = run(
        (DATA, fz.update_message([VIP])),
        (FAULTS, bytes([0x80 | op_choice, errno_choice])),
        (DATA, fz.update_message(["198.51.100.11/32"])),
    )
    assert findings(out) == []
    assert out.vips_in_fib == 2


def test_objects_deleted_behind_the_routers_back_are_reinstalled() -> None:
    out = run(
        (DATA, fz.update_message([VIP, "198.51.100.11/32"])),
        (DELETE, b"\x00\x00"),  # ip route del
        (DELETE, b"\x01\x00"),  # ip nexthop del (a group or a member)
    )
    assert findings(out) == []
    assert out.vips_in_fib == 2


def test_connection_loss_keeps_routes_stale_then_expires_them() -> None:
    """Graceful Restart helper: the transport closes, the paths stay until the restart time
    (30 s in the peer's OPEN) runs out on the fake clock."""
    out = run((DATA, fz.update_message([VIP])), (LOST, b""))
    assert findings(out) == []
    assert out.vips_in_fib == 0  # the final settle ran the restart timer out


def test_hold_timer_expiry_on_the_fake_clock() -> None:
    out = run((DATA, fz.update_message([VIP])), (TIMER, (200).to_bytes(2, "big")))
    assert findings(out) == []
    assert out.state == "IDLE" and (4, 0) in out.sent_notifications
    assert out.vips_in_fib == 0


def test_stop_sends_cease() -> None:
    out = run((DATA, fz.update_message([VIP])), (STOP, b""))
    assert findings(out) == []
    assert out.state == "IDLE" and (6, 2) in out.sent_notifications


def test_open_with_hold_time_zero_and_no_keepalive_does_not_stall() -> None:
    """A peer whose OPEN offers hold time 0 and that never sends the KEEPALIVE must not keep
    the passive session in OpenConfirm for ever (RFC 4271 §8.2.2 arms no timer for hold time
    0; the session bounds OpenConfirm by its open hold time)."""
    header = fz.H_RAW | fz.H_EXTENDED  # hold time index 0: the OPEN offers 0
    out = run(
        (DATA, encode(fz._open_for(header))),
        (TIMER, (36000).to_bytes(2, "big")),  # one hour later (0.1 s units)
        header=header,
    )
    assert findings(out) == []
    assert out.state == "IDLE"


def test_refused_cleanup_after_a_failed_add_route_is_retried_away() -> None:
    """Found by the fuzz target: a refused DeleteGroup left a group in the FIB's model after
    the kernel had deleted it with its last member; every retry then added the route to the
    vanished group (EINVAL) and the VIP was never installed. A route's EINVAL now makes the
    FIB read the kernel again."""
    # fault pairs (selector % 9 = operation class, errno choice): AddRoute ENOSPC once, then
    # DeleteGroup EINVAL once (the clean-up of the group the failed route left unused)
    faults = bytes([4, 3, 7, 2])
    out = run((FAULTS, faults), (DATA, fz.update_message([VIP])))
    assert findings(out) == []
    assert out.vips_in_fib == 1
