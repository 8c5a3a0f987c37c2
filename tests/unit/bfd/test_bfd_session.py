"""State machine tests for bgplb.bfd.session on a fake clock (RFC 5880 §6.2, §6.5, §6.8)."""

from __future__ import annotations

import itertools
import random
import struct
from dataclasses import dataclass, field

import pytest

from bgplb.bfd import (
    TRANSITIONS,
    BfdError,
    ControlPacket,
    Diag,
    PollSequenceCompleted,
    Session,
    SessionDown,
    SessionEvent,
    SessionUp,
    State,
    StateChanged,
    decode_packet,
    encode_packet,
)

MS = 1000  # µs


def make(
    discr: int, tx: int = 100 * MS, rx: int = 100 * MS, mult: int = 3, seed: int = 1
) -> Session:
    return Session(
        discr,
        desired_min_tx_interval=tx,
        required_min_rx_interval=rx,
        detect_mult=mult,
        rng=random.Random(seed),
        now=0.0,
    )


def drain(s: Session) -> list[SessionEvent]:
    out = []
    while (ev := s.next_event()) is not None:
        out.append(ev)
    return out


@dataclass
class Pair:
    """Two sessions back to back in memory with a fake clock; `link_up` False drops everything."""

    a: Session = field(default_factory=lambda: make(0x11, seed=1))
    b: Session = field(default_factory=lambda: make(0x22, seed=2))
    now: float = 0.0
    link_up: bool = True
    drop_from: set[str] = field(default_factory=set)
    events: dict[str, list[SessionEvent]] = field(default_factory=lambda: {"a": [], "b": []})
    discarded: dict[str, int] = field(default_factory=lambda: {"a": 0, "b": 0})
    sent: dict[str, list[tuple[float, ControlPacket]]] = field(
        default_factory=lambda: {"a": [], "b": []}
    )

    def step(self) -> None:
        timers = [t for t in (self.a.get_timer(), self.b.get_timer()) if t is not None]
        self.now = max(self.now, min(timers))
        for name, src, dst in (("a", self.a, self.b), ("b", self.b, self.a)):
            src.handle_timer(self.now)
            for raw in src.packets_to_send(self.now):
                self.sent[name].append((self.now, decode_packet(raw)))
                if self.link_up and name not in self.drop_from:
                    try:
                        dst.receive_packet(raw, self.now)
                    except BfdError:
                        self.discarded[name] += 1  # as the transport does: drop, go on
        self.events["a"] += drain(self.a)
        self.events["b"] += drain(self.b)

    def run_until(self, t: float) -> None:
        for _ in range(100_000):
            if self.now >= t:
                return
            self.step()
        raise AssertionError("simulation did not advance")


def test_transition_table_is_complete() -> None:
    live = (State.DOWN, State.INIT, State.UP)
    assert set(TRANSITIONS) == {(mine, theirs) for mine in live for theirs in State}


def test_first_packet_is_down_slow_with_zero_your_discriminator() -> None:
    s = make(7)
    assert s.get_timer() == 0.0
    [raw] = s.packets_to_send(0.0)
    pkt = decode_packet(raw)
    assert pkt.state == State.DOWN and pkt.your_discriminator == 0 and pkt.my_discriminator == 7
    assert pkt.desired_min_tx_interval == 1_000_000  # §6.8.3: >= 1 s while not Up
    assert pkt.required_min_rx_interval == 100 * MS
    # The next one comes 0.75-1.0 s later (jitter, §6.8.7), not before.
    t = s.get_timer()
    assert t is not None and 0.75 <= t <= 1.0
    assert s.packets_to_send(t - 0.001) == []
    assert len(s.packets_to_send(t)) == 1


def test_three_way_handshake_then_poll_to_fast_rate() -> None:
    p = Pair()
    p.run_until(0.5)
    for name in "ab":
        changes = [(e.old, e.new) for e in p.events[name] if isinstance(e, StateChanged)]
        assert changes[-1][1] == State.UP
        assert any(isinstance(e, SessionUp) for e in p.events[name])
        assert any(isinstance(e, PollSequenceCompleted) for e in p.events[name])
    assert p.a.remote_discriminator == 0x22 and p.b.remote_discriminator == 0x11
    assert p.a.transmit_interval == 100 * MS
    assert p.a.detection_time == 300 * MS
    # Once Up, gaps are within 75-100 ms.
    p.run_until(3.0)
    times = [t for t, pkt in p.sent["a"] if t > 1.0 and not pkt.final]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps and all(0.075 - 1e-9 <= g <= 0.100 + 1e-9 for g in gaps)
    # Poll Sequence: some packet had P, answered with F, never both.
    assert any(pkt.poll for _, pkt in p.sent["a"]) and any(pkt.final for _, pkt in p.sent["b"])
    assert not any(pkt.poll and pkt.final for _, pkt in p.sent["a"] + p.sent["b"])


def test_jitter_with_detect_mult_one_is_10_to_25_percent() -> None:
    s = make(1, mult=1, seed=5)
    s.packets_to_send(0.0)
    last = 0.0
    for _ in range(200):
        t = s.get_timer()
        assert t is not None
        assert 0.75 - 1e-9 <= t - last <= 0.90 + 1e-9
        s.packets_to_send(t)
        last = t


def test_detection_time_expiry_takes_both_sides_down() -> None:
    p = Pair()
    p.run_until(1.0)
    assert p.a.state == p.b.state == State.UP
    p.link_up = False
    cut = p.now
    p.run_until(cut + 0.5)
    for s in (p.a, p.b):
        assert s.state == State.DOWN
        assert s.local_diag == Diag.CONTROL_DETECTION_TIME_EXPIRED
        assert s.remote_discriminator == 0  # §6.8.1
    downs = [e for e in p.events["a"] if isinstance(e, SessionDown)]
    assert downs == [SessionDown(Diag.CONTROL_DETECTION_TIME_EXPIRED)]
    # Down again happens within the detection time (300 ms) plus one tx interval.
    down_at = max(t for t, pkt in p.sent["a"] if pkt.state == State.UP)
    assert down_at - cut <= 0.3 + 0.1
    # Back at the slow rate while Down, then Up again once the link returns.
    assert decode_packet(p.a.packets_to_send(p.now + 2)[0]).desired_min_tx_interval == 1_000_000
    p.link_up = True
    p.run_until(p.now + 4.0)
    assert p.a.state == p.b.state == State.UP


def test_admin_down_signals_neighbor_and_recovers() -> None:
    p = Pair()
    p.run_until(1.0)
    p.a.admin_down()
    p.run_until(p.now + 0.01)
    assert p.a.state == State.ADMIN_DOWN and p.a.local_diag == Diag.ADMINISTRATIVELY_DOWN
    assert p.b.state == State.DOWN and p.b.local_diag == Diag.NEIGHBOR_SIGNALED_SESSION_DOWN
    assert SessionDown(Diag.NEIGHBOR_SIGNALED_SESSION_DOWN, remote_admin_down=True) in p.events["b"]
    assert SessionDown(Diag.ADMINISTRATIVELY_DOWN) in p.events["a"]
    # b stays Down (not Init) while a is AdminDown; a ignores b's packets.
    p.run_until(p.now + 5.0)
    assert p.a.state == State.ADMIN_DOWN and p.b.state == State.DOWN
    p.a.admin_up()
    p.run_until(p.now + 4.0)
    assert p.a.state == p.b.state == State.UP
    assert p.a.local_diag == Diag.NO_DIAGNOSTIC


def test_peer_restart_is_noticed_by_detection_time_then_comes_up_again() -> None:
    """A restarted peer sends Your Discriminator 0: ignored while Up (§6.3), so the session goes
    Down only when the Detection Time expires, then comes Up with the new discriminator."""
    p = Pair()
    p.run_until(1.0)
    p.b = make(0x33, seed=9)  # b restarts with a new discriminator
    p.events["a"].clear()
    p.run_until(p.now + 5.0)
    downs = [e for e in p.events["a"] if isinstance(e, SessionDown)]
    assert downs == [SessionDown(Diag.CONTROL_DETECTION_TIME_EXPIRED)]
    assert p.a.state == p.b.state == State.UP
    assert p.a.remote_discriminator == 0x33 and p.discarded["b"] >= 1


def _forged(state: State, your: int, my: int = 0x22) -> bytes:
    return encode_packet(
        ControlPacket(
            state=state,
            my_discriminator=my,
            your_discriminator=your,
            detect_mult=3,
            desired_min_tx_interval=MS,
            required_min_rx_interval=MS,
        )
    )


@pytest.mark.parametrize("state", [State.DOWN, State.ADMIN_DOWN])
def test_zero_your_discriminator_cannot_take_an_up_session_down(state: State) -> None:
    p = Pair()
    p.run_until(1.0)
    assert p.a.state == State.UP
    received = p.a.packets_received
    drain(p.a)
    with pytest.raises(BfdError, match="Your Discriminator is zero while UP"):
        p.a.receive_packet(_forged(state, 0), p.now)
    assert p.a.state == State.UP and drain(p.a) == []
    assert p.a.packets_received == received and p.a.remote_state == State.UP
    p.run_until(p.now + 2.0)  # the real peer keeps it Up
    assert p.a.state == State.UP and not any(isinstance(e, SessionDown) for e in p.events["a"])


def test_zero_your_discriminator_discarded_in_init_accepted_in_down() -> None:
    s = make(5)
    s.receive_packet(_forged(State.DOWN, 0), 0.0)  # Down: selected by address, accepted
    assert s.state == State.INIT and s.remote_discriminator == 0x22
    with pytest.raises(BfdError, match="zero while INIT"):
        s.receive_packet(_forged(State.DOWN, 0, my=0x99), 0.0)
    assert s.state == State.INIT and s.remote_discriminator == 0x22


def test_wrong_your_discriminator_is_discarded_while_up() -> None:
    p = Pair()
    p.run_until(1.0)
    with pytest.raises(BfdError, match="not ours"):
        p.a.receive_packet(_forged(State.DOWN, 0x12), p.now)
    assert p.a.state == State.UP


def test_my_discriminator_change_while_up_is_followed() -> None:
    """§6.3: the peer may change its discriminator without affecting the session state; we
    echo the new value (§6.8.6 sets bfd.RemoteDiscr from every accepted packet)."""
    p = Pair()
    p.run_until(1.0)
    drain(p.a)
    p.a.receive_packet(_forged(State.UP, 0x11, my=0x44), p.now)
    assert p.a.state == State.UP and drain(p.a) == []
    assert p.a.remote_discriminator == 0x44 and p.a.remote_discriminator_changes == 1
    p.a._send_now = True
    [raw] = p.a.packets_to_send(p.now)
    assert decode_packet(raw).your_discriminator == 0x44


def test_set_intervals_poll_final_and_deferred_tx_increase() -> None:
    p = Pair()
    p.run_until(1.0)
    drain(p.a)
    p.events["a"].clear()
    p.a.set_intervals(desired_min_tx_interval=300 * MS, required_min_rx_interval=50 * MS)
    assert p.a.poll_active
    # Until the Final: TX increase deferred (§6.8.3), RX decrease deferred for detection.
    assert p.a.transmit_interval == 100 * MS
    [raw] = p.a.packets_to_send(p.now)
    pkt = decode_packet(raw)
    assert pkt.poll and pkt.desired_min_tx_interval == 300 * MS
    assert pkt.required_min_rx_interval == 50 * MS
    p.b.receive_packet(raw, p.now)
    [final] = p.b.packets_to_send(p.now)
    assert decode_packet(final).final
    p.a.receive_packet(final, p.now)
    assert not p.a.poll_active
    assert PollSequenceCompleted(300 * MS, 50 * MS) in drain(p.a)
    assert p.a.transmit_interval == 300 * MS
    p.run_until(p.now + 2.0)
    # b now detects a with 3 x 300 ms and sends to a every <= max(100, 50) ms.
    assert p.b.detection_time == 900 * MS
    assert p.b.transmit_interval == 100 * MS
    assert p.a.state == p.b.state == State.UP


def test_change_during_poll_gets_its_own_poll() -> None:
    p = Pair()
    p.run_until(1.0)
    p.a.set_intervals(desired_min_tx_interval=200 * MS)
    p.a.set_intervals(desired_min_tx_interval=400 * MS)
    p.run_until(p.now + 2.0)
    assert not p.a.poll_active
    assert p.a.transmit_interval == 400 * MS
    assert p.b.detection_time == 1200 * MS


def test_lost_final_keeps_polling() -> None:
    p = Pair()
    p.run_until(1.0)
    p.a.set_intervals(required_min_rx_interval=200 * MS)
    p.drop_from = {"a"}  # a's polls are lost; b keeps a up, but a never sees a Final
    before = len(p.sent["a"])
    p.run_until(p.now + 0.15)  # < b's detection time: no state change
    polls = [pkt for _, pkt in p.sent["a"][before:]]
    assert len(polls) >= 2 and all(pkt.poll for pkt in polls)
    assert p.a.poll_active and p.a.state == State.UP
    p.drop_from = set()
    p.run_until(p.now + 0.5)
    assert not p.a.poll_active and p.a.state == State.UP


def test_session_level_discards() -> None:
    s = make(5)
    other = ControlPacket(
        state=State.INIT,
        my_discriminator=9,
        your_discriminator=6,
        detect_mult=3,
        desired_min_tx_interval=MS,
        required_min_rx_interval=MS,
    )
    with pytest.raises(BfdError, match="not ours"):
        s.receive_packet(encode_packet(other), 0.0)
    auth = ControlPacket(
        state=State.DOWN,
        my_discriminator=9,
        detect_mult=3,
        desired_min_tx_interval=MS,
        required_min_rx_interval=MS,
        auth=bytes([1, 4, 1]) + b"x",
    )
    with pytest.raises(BfdError, match="authentication"):
        s.receive_packet(encode_packet(auth), 0.0)
    with pytest.raises(BfdError):
        s.receive_packet(b"\x20", 0.0)
    assert s.state == State.DOWN and s.packets_received == 0


def test_remote_min_rx_zero_stops_periodic_transmission() -> None:
    s = make(5)
    s.packets_to_send(0.0)
    raw = struct.pack("!BBBBIIIII", 0x20, State.DOWN << 6, 3, 24, 9, 0, 1_000_000, 0, 0)
    s.receive_packet(raw, 0.1)
    assert s.state == State.INIT
    assert s.packets_to_send(0.1) == []
    assert s.packets_to_send(10.0) == []
    t = s.get_timer()
    assert t is not None and t == pytest.approx(0.1 + 3.0)  # only detection remains


def test_poll_from_peer_is_answered_at_once_with_final() -> None:
    s = make(5)
    s.packets_to_send(0.0)
    pkt = ControlPacket(
        state=State.DOWN,
        my_discriminator=9,
        detect_mult=3,
        desired_min_tx_interval=1_000_000,
        required_min_rx_interval=MS,
        poll=True,
    )
    s.receive_packet(encode_packet(pkt), 0.2)
    t = s.get_timer()
    assert t is not None and t <= 0.2
    out = [decode_packet(r) for r in s.packets_to_send(0.2)]
    assert out[0].final and not out[0].poll


def test_bad_parameters_are_refused() -> None:
    for kwargs in ({"tx": 0}, {"mult": 0}, {"mult": 256}, {"rx": -1}):
        with pytest.raises(BfdError):
            make(1, **kwargs)
    with pytest.raises(BfdError):
        make(0)
    with pytest.raises(BfdError):
        make(1).set_intervals(detect_mult=0)
