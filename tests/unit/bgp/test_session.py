"""Session state machine: event sequences on a fake clock, two sessions back to back in memory."""

from __future__ import annotations

import random
from ipaddress import IPv4Address, IPv6Address

import pytest

from bgplb.bgp import attributes as at
from bgplb.bgp.errors import CeaseSubcode, ErrorCode, FsmSubcode, HeaderSubcode, OpenSubcode
from bgplb.bgp.families import AFI, IPV4_UNICAST, IPV6_UNICAST
from bgplb.bgp.fsm import State
from bgplb.bgp.messages import Keepalive, Notification, Open, Update, encode
from bgplb.bgp.negotiated import Negotiated
from bgplb.bgp.prefix import Prefix
from bgplb.bgp.session import (
    CloseRequested,
    ConnectRequested,
    EndOfRibReceived,
    RoutesReceived,
    Session,
    SessionConfig,
    SessionDown,
    SessionEstablished,
)

AGENT = SessionConfig(local_asn=65001, router_id=IPv4Address("192.0.2.11"), peer_asn=65530)
ROUTER = SessionConfig(
    local_asn=65530, router_id=IPv4Address("192.0.2.1"), peer_asn=None, passive=True
)
NH = {AFI.IPV4: (IPv4Address("192.0.2.11"),), AFI.IPV6: (IPv6Address("2001:db8::11"),)}
NH_R = {AFI.IPV4: (IPv4Address("192.0.2.1"),), AFI.IPV6: (IPv6Address("2001:db8::1"),)}


class Pair:
    """Two sessions wired back to back; `pump` moves bytes until nothing is left to move."""

    def __init__(self, a_cfg: SessionConfig = AGENT, b_cfg: SessionConfig = ROUTER) -> None:
        self.a = Session(a_cfg, rng=random.Random(1))
        self.b = Session(b_cfg, rng=random.Random(2))
        self.events: dict[str, list] = {"a": [], "b": []}
        self.connected = False

    def drain(self, name: str) -> list:
        s = getattr(self, name)
        evs = s.events()
        self.events[name].extend(evs)
        return evs

    def pump(self, now: float) -> None:
        for _ in range(100):
            moved = False
            for src, dst in (("a", "b"), ("b", "a")):
                s, d = getattr(self, src), getattr(self, dst)
                for ev in self.drain(src):
                    if isinstance(ev, ConnectRequested) and not self.connected:
                        self.connected = True
                        s.connection_made(now, NH)
                        d.connection_made(now, NH_R)
                        moved = True
                    if isinstance(ev, CloseRequested) and self.connected:
                        data = s.data_to_send(now)
                        if data:
                            d.receive_data(data, now)
                        self.connected = False
                        d.connection_lost(now)
                        moved = True
                data = s.data_to_send(now)
                if data and self.connected:
                    d.receive_data(data, now)
                    moved = True
            if not moved:
                return
        raise AssertionError("pump did not settle")

    def up(self, now: float = 0.0) -> None:
        self.b.start(now)
        self.a.start(now)
        self.pump(now)
        assert self.a.state is State.ESTABLISHED
        assert self.b.state is State.ESTABLISHED


def of(events, kind):
    return [e for e in events if isinstance(e, kind)]


def test_establishes_and_negotiates():
    p = Pair()
    p.up()
    est = of(p.events["a"], SessionEstablished)[0]
    assert est.negotiated.hold_time == 9
    assert est.negotiated.keepalive_time == 3
    assert est.negotiated.four_octet_as
    assert est.negotiated.families == {IPV4_UNICAST, IPV6_UNICAST}
    assert p.b.remote_open is not None and p.b.remote_open.asn == 65001
    # End-of-RIB for both families, both ways (RFC 4724 §2).
    assert {e.family for e in of(p.events["b"], EndOfRibReceived)} == {IPV4_UNICAST, IPV6_UNICAST}


def test_routes_both_families_and_withdrawal():
    p = Pair()
    p.up()
    v4, v6 = Prefix.parse("198.51.100.10/32"), Prefix.parse("2001:db8:100::10/128")
    attrs = at.PathAttributes(communities=(0xFDE80064,), med=5)
    p.a.announce(v4, attrs)
    p.a.announce(v6, attrs)
    p.pump(1.0)
    got = of(p.events["b"], RoutesReceived)
    announced = {x for r in got for x in r.announced}
    assert announced == {v4, v6}
    for r in got:
        assert r.update.attributes.as_path_list() == [65001]  # eBGP: our AS prepended
        assert r.update.attributes.med == 5
    v4_update = next(r for r in got if v4 in r.announced).update
    assert v4_update.attributes.next_hop == IPv4Address("192.0.2.11")
    v6_update = next(r for r in got if v6 in r.announced).update
    assert v6_update.attributes.mp_reach is not None
    assert v6_update.attributes.mp_reach.next_hop[0] == IPv6Address("2001:db8::11")
    p.a.withdraw(v4)
    p.pump(2.0)
    last = of(p.events["b"], RoutesReceived)[-1]
    assert last.withdrawn == (v4,)


def test_unchanged_announce_is_not_resent():
    p = Pair()
    p.up()
    v4 = Prefix.parse("198.51.100.10/32")
    p.a.announce(v4, at.PathAttributes())
    p.pump(1.0)
    before = p.a.updates_sent
    p.a.announce(v4, at.PathAttributes())
    p.pump(1.5)
    assert p.a.updates_sent == before


def test_keepalives_keep_the_session_up_on_a_fake_clock():
    p = Pair()
    p.up()
    now = 0.0
    while now < 60:
        deadlines = [t for t in (p.a.get_timer(), p.b.get_timer()) if t is not None]
        now = min(deadlines)
        p.a.handle_timer(now)
        p.b.handle_timer(now)
        p.pump(now)
    assert p.a.state is State.ESTABLISHED and p.b.state is State.ESTABLISHED


def test_silent_peer_is_detected_by_the_hold_timer():
    p = Pair()
    p.up()
    # b stops talking: only a's timers run and nothing reaches a.
    now = 0.0
    for _ in range(20):
        now = p.a.get_timer() or now
        p.a.handle_timer(now)
        p.a.data_to_send(now)
        if p.a.state is not State.ESTABLISHED:
            break
    down = of(p.a.events(), SessionDown)
    assert down and down[0].hold_expired and down[0].was_established
    assert down[0].notification == Notification(ErrorCode.HOLD_TIMER_EXPIRED, 0)
    assert 9.0 <= now <= 9.0 + 1e-9
    # Automatic restart after the IdleHoldTimer.
    assert p.a.state is State.IDLE
    now = p.a.get_timer()
    assert now is not None
    p.a.handle_timer(now)
    assert p.a.state is State.CONNECT


def test_wrong_peer_as_gets_bad_peer_as():
    cfg = SessionConfig(local_asn=65530, router_id=IPv4Address("192.0.2.1"), peer_asn=65999)
    p = Pair(AGENT, cfg)
    p.b.start(0)
    p.a.start(0)
    p.pump(0)
    down = of(p.events["b"], SessionDown)[0]
    assert down.notification is not None
    assert (down.notification.code, down.notification.subcode) == (
        ErrorCode.OPEN_MESSAGE,
        OpenSubcode.BAD_PEER_AS,
    )
    received = of(p.events["a"], SessionDown)[0]
    assert not received.local


def test_stop_sends_cease_with_shutdown_message():
    p = Pair()
    p.up()
    p.a.stop(5.0, message="maintenance")
    p.pump(5.0)
    down = of(p.events["b"], SessionDown)[-1]
    assert down.notification is not None
    assert down.notification.code == ErrorCode.CEASE
    assert down.notification.subcode == CeaseSubcode.ADMINISTRATIVE_SHUTDOWN
    assert down.notification.shutdown_message == "maintenance"
    assert p.a.state is State.IDLE and p.a.get_timer() is None  # no automatic restart


def test_update_in_opensent_is_an_fsm_error():
    s = Session(AGENT, rng=random.Random(0))
    s.start(0)
    s.connection_made(0, NH)
    s.data_to_send(0)
    s.receive_data(encode(Update()), 0.1)
    out = s.data_to_send(0.1)
    assert out[18] == 3  # NOTIFICATION
    assert (out[19], out[20]) == (ErrorCode.FSM, FsmSubcode.UNEXPECTED_IN_OPENSENT)
    assert s.state is State.IDLE


def test_bad_marker_gets_connection_not_synchronized():
    s = Session(AGENT, rng=random.Random(0))
    s.start(0)
    s.connection_made(0, NH)
    s.data_to_send(0)
    bad = bytearray(encode(Keepalive()))
    bad[0] = 0
    s.receive_data(bytes(bad), 0.1)
    out = s.data_to_send(0.1)
    assert (out[19], out[20]) == (
        ErrorCode.MESSAGE_HEADER,
        HeaderSubcode.CONNECTION_NOT_SYNCHRONIZED,
    )


def test_byte_at_a_time_delivery():
    s = Session(ROUTER, rng=random.Random(0))
    s.start(0)
    s.connection_made(0, NH_R)
    s.data_to_send(0)
    peer_open = Open(asn=65001, hold_time=9, router_id=IPv4Address("192.0.2.11"))
    for byte in encode(peer_open) + encode(Keepalive()):
        s.receive_data(bytes([byte]), 0.1)
    assert s.state is State.ESTABLISHED
    assert s.negotiated == s.negotiated and isinstance(s.negotiated, Negotiated)


def test_connect_retry_backoff_grows_and_is_bounded():
    cfg = SessionConfig(
        local_asn=65001,
        router_id=IPv4Address("192.0.2.11"),
        peer_asn=65530,
        connect_retry_time=1.0,
        connect_retry_max=8.0,
    )
    s = Session(cfg, rng=random.Random(0))
    s.start(0)
    now, gaps = 0.0, []
    for _ in range(8):
        s.connection_lost(now, "connection refused")
        deadline = s.get_timer()
        assert deadline is not None
        gaps.append(deadline - now)
        now = deadline
        s.handle_timer(now)
        assert s.state is State.CONNECT
        assert isinstance(s.events()[-1], ConnectRequested)
    assert gaps[1] > gaps[0]
    assert max(gaps) <= 8.0


@pytest.mark.parametrize("hold", [0, 3, 240])
def test_hold_time_zero_means_no_keepalives(hold):
    a = SessionConfig(
        local_asn=65001, router_id=IPv4Address("192.0.2.11"), peer_asn=65530, hold_time=hold
    )
    p = Pair(a, ROUTER)
    p.up()
    neg = p.a.negotiated
    assert neg is not None
    assert neg.hold_time == min(hold, 9) if hold else neg.hold_time == 0
    if hold == 0:
        assert p.a.get_timer() is None


def test_prefix_without_next_hop_of_its_family_is_held_back_not_raised():
    from bgplb.bgp.session import RoutesHeldBack

    p = Pair()
    p.b.start(0)
    p.a.start(0)
    # Connect manually with IPv4 next hops only (a session between IPv4 addresses).
    p.drain("a")
    p.drain("b")
    p.connected = True
    p.a.connection_made(0, {AFI.IPV4: (IPv4Address("192.0.2.11"),)})
    p.b.connection_made(0, NH_R)
    p.pump(0)
    assert p.a.state is State.ESTABLISHED
    v4, v6 = Prefix.parse("198.51.100.10/32"), Prefix.parse("2001:db8:100::10/128")
    p.a.announce(v4, at.PathAttributes())
    p.a.announce(v6, at.PathAttributes())
    p.pump(1)
    held = of(p.events["a"], RoutesHeldBack)
    assert held and dict(held[-1].held).keys() == {v6}
    assert "no IPV6 next hop" in dict(held[-1].held)[v6]
    got = {x for r in of(p.events["b"], RoutesReceived) for x in r.announced}
    assert got == {v4}
    # An explicit next hop in the attributes makes it sendable.
    mp = at.MPReachNLRI(AFI.IPV6, 1, (IPv6Address("2001:db8::11"),), ())
    p.a.announce(v6, at.PathAttributes(mp_reach=mp))
    p.pump(2)
    got = {x for r in of(p.events["b"], RoutesReceived) for x in r.announced}
    assert got == {v4, v6}
    assert of(p.events["a"], RoutesHeldBack)[-1].held == ()
