"""Session hardening: no input raises out of a Session, NOTIFICATION data is truncated to fit,
bounded error recording per UPDATE, MP attributes of families not negotiated are discarded, the
OpenSent hold time for half-open connections, and the HoldTimer pause used for backpressure."""

from __future__ import annotations

import random
import struct
import tracemalloc
from ipaddress import IPv4Address

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_session import AGENT, NH, ROUTER, Pair, of

from bgplb.bgp import session as session_module
from bgplb.bgp.attrparse import MAX_RECORDED_ERRORS
from bgplb.bgp.errors import BGPError, CeaseSubcode, ErrorAction, ErrorCode
from bgplb.bgp.families import IPV4_UNICAST, IPV6_UNICAST
from bgplb.bgp.framing import MessageReader, frame
from bgplb.bgp.fsm import State
from bgplb.bgp.messages import Keepalive, Notification, Update, decode, encode
from bgplb.bgp.negotiated import Negotiated
from bgplb.bgp.prefix import Prefix
from bgplb.bgp.session import (
    InternalSessionError,
    RoutesReceived,
    Session,
    SessionConfig,
    SessionDown,
)

NO_EXT_AGENT = SessionConfig(
    local_asn=65001, router_id=IPv4Address("192.0.2.11"), peer_asn=65530, extended_message=False
)
NO_EXT_ROUTER = SessionConfig(
    local_asn=65530,
    router_id=IPv4Address("192.0.2.1"),
    peer_asn=None,
    passive=True,
    extended_message=False,
)


def notifications(data: bytes, extended: bool = True) -> list[Notification]:
    reader = MessageReader()
    reader.extended = extended
    reader.feed(data)
    out = []
    while (m := reader.next_message()) is not None:
        if m[0] == 3:
            msg = decode(*m)
            assert isinstance(msg, Notification)
            out.append(msg)
    return out


# -- NOTIFICATION that echoes a maximum-size message ---------------------------------------------


@pytest.mark.parametrize(
    ("cfgs", "length"),
    [
        ((NO_EXT_AGENT, NO_EXT_ROUTER), 4076),
        ((NO_EXT_AGENT, NO_EXT_ROUTER), 4096),
        ((AGENT, ROUTER), 65515),
        ((AGENT, ROUTER), 65535),
    ],
)
def test_oversized_route_refresh_gets_a_truncated_notification(cfgs, length) -> None:
    p = Pair(*cfgs)
    p.up()
    p.drain("b")
    # RFC 7313 §5: a BoRR of the wrong length -> ROUTE-REFRESH Message Error whose data is the
    # whole message; that would not fit in a NOTIFICATION of the same maximum size.
    body = struct.pack("!HBB", 1, 1, 1) + b"\x00" * (length - 23)
    p.b.receive_data(frame(5, body), 1.0)
    limit = 65535 if length > 4096 else 4096
    wire = p.b.data_to_send(1.0)
    sent = notifications(wire, limit > 4096)
    assert len(sent) == 1 and len(wire) == min(limit, 21 + length)
    assert (sent[0].code, sent[0].subcode) == (ErrorCode.ROUTE_REFRESH, 1)
    assert sent[0].data == frame(5, body)[: limit - 21]
    down = of(p.drain("b"), SessionDown)
    assert len(down) == 1 and down[0].was_established and not down[0].connection_lost
    assert down[0].notification == sent[0]
    assert p.b.state is State.IDLE


def test_encode_truncates_notification_data() -> None:
    big = Notification(ErrorCode.CEASE, 0, b"x" * 70000)
    assert len(encode(big)) == 4096
    assert len(encode(big, Negotiated(extended_message=True))) == 65535
    assert decode(3, encode(big)[19:]) == Notification(ErrorCode.CEASE, 0, b"x" * 4075)


# -- internal errors -----------------------------------------------------------------------------


def _boom(*_args: object) -> None:
    raise RuntimeError("boom")


def test_internal_error_on_update_becomes_cease_and_idle(monkeypatch) -> None:
    p = Pair()
    p.up()
    p.drain("b")
    monkeypatch.setattr(Session, "_on_update_received", _boom)
    p.b.receive_data(encode(Update.end_of_rib(IPV4_UNICAST), p.b.negotiated), 2.0)
    sent = notifications(p.b.data_to_send(2.0))
    assert sent == [Notification(ErrorCode.CEASE, CeaseSubcode.UNSPECIFIC)]
    events = p.drain("b")
    down = of(events, InternalSessionError)
    assert len(down) == 1
    assert isinstance(down[0], SessionDown)
    assert down[0].was_established and not down[0].connection_lost and not down[0].hold_expired
    assert down[0].reason.startswith("internal error: RuntimeError: boom")
    assert "RuntimeError: boom" in down[0].traceback and "_boom" in down[0].traceback
    assert p.b.state is State.IDLE
    assert p.b.get_timer() == 3.0  # only the IdleHoldTimer (automatic restart) runs
    # The session is usable again afterwards.
    monkeypatch.undo()
    p.b.start(10.0)
    p.b.connection_made(10.0, NH)
    assert p.b.state is State.OPEN_SENT


def test_internal_error_in_timer_and_in_data_to_send(monkeypatch) -> None:
    p = Pair()
    p.up()
    p.drain("a")
    monkeypatch.setattr(Session, "_on_send_keepalive", _boom)
    deadline = p.a.get_timer()
    assert deadline is not None
    p.a.handle_timer(deadline)
    assert of(p.drain("a"), InternalSessionError)
    assert p.a.state is State.IDLE
    monkeypatch.undo()

    q = Pair()
    q.up()
    q.drain("a")
    monkeypatch.setattr(session_module, "pack_updates", _boom)
    q.a.announce(Prefix.parse("198.51.100.1/32"), session_module.PathAttributes())
    wire = q.a.data_to_send(1.0)
    assert notifications(wire) == [Notification(ErrorCode.CEASE, 0)]
    assert of(q.drain("a"), InternalSessionError) and q.a.state is State.IDLE


# -- property: nothing ever raises out of a Session ----------------------------------------------

_EXCEPTIONS = (
    ValueError("codec"),
    IndexError("codec"),
    struct.error("codec"),
    KeyError("codec"),
    BGPError(ErrorCode.UPDATE_MESSAGE, 1, b"", reason="codec"),
    BGPError(ErrorCode.UPDATE_MESSAGE, 1, b"\x00" * 70000, ErrorAction.SESSION_RESET, "big"),
)

_OPEN = encode(Session(AGENT).local_open())
_KEEPALIVE = encode(Keepalive())
_CHUNKS = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([_OPEN, _KEEPALIVE, b"\xff" * 16, frame(5, b"\x00\x01\x01\x01")]),
    st.builds(
        lambda n, t: b"\xff" * 16 + struct.pack("!HB", n, t),
        st.integers(0, 65535),
        st.integers(0, 7),
    ),
)
_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("data"), _CHUNKS),
        st.tuples(st.just("timer"), st.floats(0, 300)),
        st.tuples(st.just("made"), st.none()),
        st.tuples(st.just("lost"), st.none()),
        st.tuples(st.just("start"), st.none()),
        st.tuples(st.just("stop"), st.none()),
        st.tuples(st.just("send"), st.none()),
        st.tuples(st.just("pause"), st.booleans()),
        st.tuples(st.just("codec_fails"), st.integers(0, len(_EXCEPTIONS) - 1)),
    ),
    max_size=40,
)


@settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_OPS, passive=st.booleans(), extended=st.booleans())
def test_no_input_ever_raises(ops, passive, extended) -> None:
    cfg = SessionConfig(
        local_asn=65530,
        router_id=IPv4Address("192.0.2.1"),
        peer_asn=None,
        passive=passive,
        extended_message=extended,
        open_hold_time=5.0,
    )
    s = Session(cfg, rng=random.Random(3))
    failing: list[BaseException] = []
    real_decode = session_module.decode

    def decode(msg_type, body, neg):  # the codec's errors, including ones it must not raise
        if failing:
            raise failing.pop()
        return real_decode(msg_type, body, neg)

    now = 0.0
    original = session_module.decode
    session_module.decode = decode
    try:
        s.start(now)
        for op, arg in ops:
            now += 0.5
            if op == "data":
                s.receive_data(arg, now)
            elif op == "timer":
                now += arg
                s.handle_timer(now)
            elif op == "made":
                s.connection_made(now, NH)
            elif op == "lost":
                s.connection_lost(now)
            elif op == "start":
                s.start(now)
            elif op == "stop":
                s.stop(now, CeaseSubcode.ADMINISTRATIVE_SHUTDOWN, "bye")
            elif op == "send":
                s.data_to_send(now)
            elif op == "pause":
                if arg:
                    s.pause_hold_timer()
                else:
                    s.resume_hold_timer(now)
            else:
                failing.append(_EXCEPTIONS[arg])
            for event in s.events():
                if isinstance(event, InternalSessionError):
                    assert s.state is State.IDLE
            assert len(s.data_to_send(now)) <= (65535 if extended else 4096) * 4
    finally:
        session_module.decode = original


# -- bounded error recording ---------------------------------------------------------------------


def test_errors_recorded_per_update_are_capped() -> None:
    # 65 KB of duplicate ATOMIC_AGGREGATE attributes (3 octets each): RFC 7606 §3.g discards
    # every duplicate; only the first few errors are kept, the rest counted.
    count = (65535 - 23) // 3
    attrs = b"\x40\x01\x01\x00" + b"\x40\x06\x00" * (count - 2)
    body = struct.pack("!H", 0) + struct.pack("!H", len(attrs)) + attrs
    neg = Negotiated(extended_message=True)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        update = decode(2, body, neg)
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert isinstance(update, Update)
    assert len(update.errors) == MAX_RECORDED_ERRORS
    assert update.errors_not_recorded == count - 3 - MAX_RECORDED_ERRORS
    assert update.is_end_of_rib is None
    # Bounded by a small constant, not by the number of attributes (it was 175x the message).
    assert kept < 16_384, kept


# -- MP attributes for a family that was not negotiated ------------------------------------------

_ORIGIN_PATH = b"\x40\x01\x01\x00" + b"\x40\x02\x00"
_V4_NLRI = b"\x20\xc6\x33\x64\x0a"  # 198.51.100.10/32


def _v6_reach() -> bytes:
    nlri = b"\x40" + bytes.fromhex("20010db801000000")  # 2001:db8:100::/64
    value = struct.pack("!HBB", 2, 1, 16) + bytes.fromhex("20010db8" + "00" * 11 + "01")
    value += b"\x00" + nlri
    return bytes((0x80, 14, len(value))) + value


def _v6_unreach() -> bytes:
    value = struct.pack("!HB", 2, 1) + b"\x40" + bytes.fromhex("20010db801000000")
    return bytes((0x80, 15, len(value))) + value


def _update(attrs: bytes, nlri: bytes = b"") -> bytes:
    return struct.pack("!H", 0) + struct.pack("!H", len(attrs)) + attrs + nlri


def test_mp_reach_for_family_not_negotiated_is_discarded() -> None:
    v4_only = Negotiated(four_octet_as=True)
    hop = b"\x40\x03\x04\xc0\x00\x02\x0b"
    update = decode(2, _update(_ORIGIN_PATH + hop + _v6_reach(), _V4_NLRI), v4_only)
    assert isinstance(update, Update)
    assert update.attributes.mp_reach is None
    assert update.announced == (Prefix.parse("198.51.100.10/32"),)  # the rest is kept
    assert update.ignored_families == ((2, 1),)
    assert [e.action for e in update.errors] == [ErrorAction.ATTRIBUTE_DISCARD]
    withdrawal = decode(2, _update(_v6_unreach()), v4_only)
    assert isinstance(withdrawal, Update)
    assert withdrawal.all_withdrawn == () and withdrawal.ignored_families == ((2, 1),)
    assert withdrawal.is_end_of_rib is None
    # Negotiated: decoded as before.
    both = Negotiated(four_octet_as=True, families=frozenset({IPV4_UNICAST, IPV6_UNICAST}))
    ok = decode(2, _update(_ORIGIN_PATH + _v6_reach()), both)
    assert isinstance(ok, Update) and ok.announced == (Prefix.parse("2001:db8:100::/64"),)
    assert not ok.ignored_families


def test_session_counts_ignored_families() -> None:
    v4_router = SessionConfig(
        local_asn=65530,
        router_id=IPv4Address("192.0.2.1"),
        peer_asn=None,
        passive=True,
        families=(IPV4_UNICAST,),
    )
    p = Pair(AGENT, v4_router)
    p.up()
    p.drain("b")
    wire = frame(2, _update(_ORIGIN_PATH + _v6_reach())) * 3
    p.b.receive_data(wire, 1.0)
    assert p.b.state is State.ESTABLISHED
    got = of(p.drain("b"), RoutesReceived)
    assert len(got) == 3 and all(not r.announced for r in got)
    assert p.b.ignored_families == {(2, 1): 3}


# -- half-open connections and the HoldTimer pause -----------------------------------------------


def test_open_hold_time_closes_half_open_connection() -> None:
    cfg = SessionConfig(
        local_asn=65530,
        router_id=IPv4Address("192.0.2.1"),
        peer_asn=None,
        passive=True,
        automatic_restart=False,
        open_hold_time=5.0,
    )
    s = Session(cfg, rng=random.Random(1))
    s.start(0.0)
    s.connection_made(0.0, NH)
    assert s.get_timer() == 5.0
    s.handle_timer(5.0)
    down = of(s.events(), SessionDown)
    assert len(down) == 1 and down[0].hold_expired and not down[0].was_established
    assert Notification(ErrorCode.HOLD_TIMER_EXPIRED, 0) in notifications(s.data_to_send(5.0))
    assert s.state is State.IDLE


def test_open_confirm_with_hold_time_zero_is_bounded() -> None:
    """Hold time 0 arms no HoldTimer (RFC 4271 §8.2.2); a peer that offers it and never sends
    the KEEPALIVE must not keep the connection in OpenConfirm for ever."""
    router = Session(
        SessionConfig(
            local_asn=65530,
            router_id=IPv4Address("192.0.2.1"),
            peer_asn=None,
            passive=True,
            automatic_restart=False,
            open_hold_time=5.0,
        ),
        rng=random.Random(1),
    )
    agent = Session(
        SessionConfig(
            local_asn=65001, router_id=IPv4Address("192.0.2.11"), peer_asn=65530, hold_time=0
        ),
        rng=random.Random(2),
    )
    router.start(0.0)
    router.connection_made(0.0, NH)
    agent.start(0.0)
    agent.connection_made(0.0, NH)
    router.receive_data(agent.data_to_send(0.0), 1.0)  # the OPEN only, never its KEEPALIVE
    assert router.state is State.OPEN_CONFIRM
    assert router.get_timer() == 6.0
    router.handle_timer(6.0)
    assert router.state is State.IDLE
    down = of(router.events(), SessionDown)
    assert len(down) == 1 and not down[0].was_established


def test_paused_hold_timer_keeps_session_and_keepalives() -> None:
    p = Pair()
    p.up()
    p.drain("b")
    p.b.pause_hold_timer()
    assert p.b.hold_timer_paused
    now = 0.0
    sent_keepalives = 0
    while now < 60.0:  # 60 s without reading anything from the peer (hold time 9 s)
        deadline = p.b.get_timer()
        assert deadline is not None
        now = deadline
        p.b.handle_timer(now)
        sent_keepalives += p.b.data_to_send(now).count(_KEEPALIVE)
    assert p.b.state is State.ESTABLISHED
    assert sent_keepalives >= 60 // 3
    p.b.resume_hold_timer(now)
    assert not p.b.hold_timer_paused
    while p.b.state is State.ESTABLISHED:
        deadline = p.b.get_timer()
        assert deadline is not None and deadline <= now + 9.0
        p.b.handle_timer(deadline)
    down = of(p.drain("b"), SessionDown)
    assert down and down[-1].hold_expired


def test_logged_data_is_bounded() -> None:
    err = BGPError(ErrorCode.ROUTE_REFRESH, 1, b"\xff" * 65535, reason="ROUTE-REFRESH length")
    assert len(str(err)) < 200 and "(65535 octets)" in str(err)
    assert len(str(Notification(7, 1, b"\xff" * 65535))) < 200
    assert str(Notification(3, 11, b"\x01")).endswith("(data 01)")


def test_receive_data_limit_leaves_the_rest_buffered() -> None:
    """`limit` caps the messages handled per call; the rest wait for `receive_data(b"")`."""
    p = Pair()
    p.up()
    for i in range(10):  # a MED each: ten UPDATEs
        prefix = Prefix(1, int(IPv4Address("198.51.100.0")) + i, 32)
        p.a.announce(prefix, session_module.PathAttributes(med=i))
    data = p.a.data_to_send(1.0)
    reader = MessageReader()
    reader.feed(data)
    updates = 0
    while (framed := reader.next_message()) is not None:
        updates += framed[0] == 2
    assert updates >= 10
    p.b.events()
    p.b.receive_data(data, 1.0, limit=1)
    assert p.b.input_pending
    got = len(of(p.b.events(), RoutesReceived))
    assert got == 1
    while p.b.input_pending:
        p.b.receive_data(b"", 1.0, limit=1)
        got += len(of(p.b.events(), RoutesReceived))
    assert got == updates and p.b.state is State.ESTABLISHED


def test_connection_lost_in_open_sent_says_so() -> None:
    """A SessionDown for a transport lost in OpenSent says `connection_lost`, not `local`."""
    router = Session(
        SessionConfig(
            local_asn=65530, router_id=IPv4Address("192.0.2.1"), peer_asn=None, passive=True
        ),
        rng=random.Random(1),
    )
    router.start(0.0)
    router.connection_made(0.0, NH)
    assert router.state is State.OPEN_SENT
    router.connection_lost(1.0, "reset by peer")
    (down,) = of(router.events(), SessionDown)
    assert down.connection_lost and not down.local and not down.was_established
