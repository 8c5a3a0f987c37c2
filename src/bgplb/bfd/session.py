"""BFD session state machine, asynchronous mode (RFC 5880 §6.2, §6.5, §6.8).

Theory of operation
-------------------
A `Session` is one end of one BFD session. It owns the state variables of §6.8.1 and is driven
by three inputs, each taking `now` (monotonic seconds) as a parameter, never reading a clock:

* `receive_packet(data, now)` / `handle_packet(pkt, now)` — a Control packet from the peer;
* `handle_timer(now)` — call when `get_timer()` is reached (detection time expiry);
* API calls: `admin_down()`, `admin_up()`, `set_intervals()`.

Output is pulled: `packets_to_send(now)` returns the encoded packets due now, `get_timer()` the
next deadline (or None), `next_event()` the next event (`StateChanged`, `SessionUp`,
`SessionDown`, `PollSequenceCompleted`) or None.

State changes caused by received packets come from the table `TRANSITIONS` (§6.8.6): the key is
(our state, the state the peer reports) and the value the new state and the diagnostic to
record, or None to stay. Leaving Up or Init when the Detection Time expires gives
Control Detection Time Expired (§6.8.4); `admin_down()` gives Administratively Down (§6.8.16).

Timers (§6.8.3, §6.8.4, §6.8.7): while not Up the advertised Desired Min TX is at least 1 s.
A change of Desired Min TX or Required Min RX — including the change to the configured values
when the session comes Up — starts a Poll Sequence (§6.5): every periodic packet carries P until
a packet with F arrives. An increase of our TX interval, or a decrease of our RX interval, only
takes effect when the Poll Sequence ends. The transmit interval is
max(used Desired Min TX, bfd.RemoteMinRxInterval), reduced by a random 0-25 % (10-25 % when
bfd.DetectMult is 1). The detection time is the peer's Detect Mult * max(used Required Min RX,
peer's Desired Min TX). A packet with P set is answered at once with F set. A packet is also sent
at once when our state changes (as BIRD and FRR do), so the three-way handshake and a teardown
do not wait for a 1 s slow interval.

Demand mode and the Echo function are not implemented: we never set D, and we advertise a
Required Min Echo RX of 0. If the peer sets D while both are Up we stop periodic transmission
(§6.8.7). Authentication is not implemented: packets with the A bit set are discarded.

Demultiplexing (§6.3, §6.8.6): a packet whose Your Discriminator is neither zero nor ours is
discarded. Your Discriminator zero is accepted only while we are Down (or AdminDown): in Init
and Up the peer knows our discriminator, so such a packet is discarded (as FRR does) and a
forged Down from the peer's address cannot take the session down. A change of the peer's My
Discriminator in a packet that carries ours is accepted (§6.3 allows it) and counted in
`remote_discriminator_changes`.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass

from .packet import BfdError, ControlPacket, Diag, State, decode_packet, encode_packet

__all__ = [
    "PollSequenceCompleted",
    "Session",
    "SessionDown",
    "SessionEvent",
    "SessionUp",
    "StateChanged",
    "TRANSITIONS",
    "SLOW_TX_INTERVAL",
]

SLOW_TX_INTERVAL = 1_000_000  # µs, §6.8.3: Desired Min TX while not Up is at least one second
_MICRO = 1e-6


@dataclass(frozen=True, slots=True)
class StateChanged:
    """bfd.SessionState changed from `old` to `new`; `diag` is our bfd.LocalDiag after it."""

    old: State
    new: State
    diag: Diag


@dataclass(frozen=True, slots=True)
class SessionUp:
    """The session reached Up."""


@dataclass(frozen=True, slots=True)
class SessionDown:
    """The session left Up. `remote_admin_down` is True when the peer signalled AdminDown, which
    RFC 5882 §3.2 says must not be treated as a forwarding failure."""

    diag: Diag
    remote_admin_down: bool = False


@dataclass(frozen=True, slots=True)
class PollSequenceCompleted:
    """A packet with F set ended our Poll Sequence: the new intervals are in use."""

    desired_min_tx_interval: int
    required_min_rx_interval: int


SessionEvent = StateChanged | SessionUp | SessionDown | PollSequenceCompleted

# §6.8.6, the state machine of §6.2 as data: (our state, peer's state) -> (new state, diag) or
# None for "no change". AdminDown locally never reaches this table (such packets are ignored).
TRANSITIONS: dict[tuple[State, State], tuple[State, Diag | None] | None] = {
    (State.DOWN, State.ADMIN_DOWN): None,
    (State.DOWN, State.DOWN): (State.INIT, None),
    (State.DOWN, State.INIT): (State.UP, None),
    (State.DOWN, State.UP): None,
    (State.INIT, State.ADMIN_DOWN): (State.DOWN, Diag.NEIGHBOR_SIGNALED_SESSION_DOWN),
    (State.INIT, State.DOWN): None,
    (State.INIT, State.INIT): (State.UP, None),
    (State.INIT, State.UP): (State.UP, None),
    (State.UP, State.ADMIN_DOWN): (State.DOWN, Diag.NEIGHBOR_SIGNALED_SESSION_DOWN),
    (State.UP, State.DOWN): (State.DOWN, Diag.NEIGHBOR_SIGNALED_SESSION_DOWN),
    (State.UP, State.INIT): None,
    (State.UP, State.UP): None,
}


def _check_interval(value: int, name: str, minimum: int) -> None:
    if not isinstance(value, int) or not minimum <= value <= 0xFFFFFFFF:
        raise BfdError(f"{name} must be an integer of microseconds >= {minimum}: {value!r}")


class Session:
    """One BFD session in asynchronous mode (active role). Intervals are in microseconds.

    `local_discriminator` is chosen by the caller: non-zero and unique on this system (§6.3).
    `rng` is the random source used for transmit jitter; pass a seeded one in tests.
    """

    def __init__(
        self,
        local_discriminator: int,
        *,
        desired_min_tx_interval: int,
        required_min_rx_interval: int,
        detect_mult: int,
        rng: random.Random,
        now: float,
    ) -> None:
        if not isinstance(local_discriminator, int) or not 0 < local_discriminator <= 0xFFFFFFFF:
            raise BfdError(f"local discriminator must be in 1..2^32-1: {local_discriminator!r}")
        self._check_params(desired_min_tx_interval, required_min_rx_interval, detect_mult)
        self.local_discriminator = local_discriminator
        self._rng = rng
        # §6.8.1 state variables.
        self.state = State.DOWN
        self.remote_state = State.DOWN
        self.remote_discriminator = 0
        self.local_diag = Diag.NO_DIAGNOSTIC
        self.remote_diag = 0
        self.desired_min_tx_interval = desired_min_tx_interval  # configured
        self.required_min_rx_interval = required_min_rx_interval
        self.remote_min_rx_interval = 1
        self.remote_desired_min_tx_interval = 0
        self.remote_demand_mode = False
        self.detect_mult = detect_mult
        self.remote_detect_mult = 0
        # Values in use for the transmit interval and the detection time (§6.8.3).
        self._tx_used = self._advertised_tx()
        self._rx_used = required_min_rx_interval
        # Poll Sequence: the (tx, rx) being polled for, or None.
        self._poll: tuple[int, int] | None = None
        self._send_final = False
        self._send_now = True
        self._last_tx: float | None = None
        self._next_tx = now
        self._detect_deadline: float | None = None
        self._events: deque[SessionEvent] = deque()
        self.packets_received = 0
        self.packets_sent = 0
        self.remote_discriminator_changes = 0

    @staticmethod
    def _check_params(tx: int, rx: int, mult: int) -> None:
        _check_interval(tx, "desired_min_tx_interval", 1)
        _check_interval(rx, "required_min_rx_interval", 0)
        if not isinstance(mult, int) or not 1 <= mult <= 255:
            raise BfdError(f"detect_mult must be in 1..255: {mult!r}")

    # ----------------------------------------------------------------- derived values

    def _advertised_tx(self) -> int:
        if self.state == State.UP:
            return self.desired_min_tx_interval
        return max(self.desired_min_tx_interval, SLOW_TX_INTERVAL)

    @property
    def poll_active(self) -> bool:
        return self._poll is not None

    @property
    def transmit_interval(self) -> int:
        """Negotiated transmit interval before jitter, µs (§6.8.7)."""
        return max(self._tx_used, self.remote_min_rx_interval)

    @property
    def detection_time(self) -> int:
        """Detection time for the peer, µs (§6.8.4); 0 before the first packet."""
        return self.remote_detect_mult * max(self._rx_used, self.remote_desired_min_tx_interval)

    def _jittered(self, interval_us: int) -> float:
        # §6.8.7: reduce by 0-25 %, or by 10-25 % when our Detect Mult is 1.
        low = 0.75
        high = 0.90 if self.detect_mult == 1 else 1.0
        return interval_us * _MICRO * self._rng.uniform(low, high)

    def _reschedule(self) -> None:
        """After an interval change: bring the next periodic packet forward if now due sooner."""
        if self._last_tx is not None:
            self._next_tx = min(
                self._next_tx, self._last_tx + self._jittered(self.transmit_interval)
            )

    # ----------------------------------------------------------------- state changes

    def _set_state(self, new: State, diag: Diag | None, *, remote_admin_down: bool = False) -> None:
        old = self.state
        if diag is not None:
            self.local_diag = diag
        if new == State.UP:
            self.local_diag = Diag.NO_DIAGNOSTIC
        self.state = new
        self._send_now = True
        self._events.append(StateChanged(old, new, self.local_diag))
        if new == State.UP:
            self._events.append(SessionUp())
        elif old == State.UP:
            self._events.append(SessionDown(self.local_diag, remote_admin_down))
        if new != State.UP:
            # Slow rate again; a Poll Sequence in progress is abandoned (§6.8.3).
            self._poll = None
            self._tx_used = self._advertised_tx()
            self._rx_used = self.required_min_rx_interval
        self._parameters_changed()

    def _parameters_changed(self) -> None:
        """Start a Poll Sequence if what we advertise differs from what is in use (§6.8.3)."""
        advertised = (self._advertised_tx(), self.required_min_rx_interval)
        if self.state != State.UP:
            self._tx_used, self._rx_used = advertised
            self._reschedule()
            return
        if self._poll is None and advertised != (self._tx_used, self._rx_used):
            self._poll = advertised
            self._send_now = True
            # Changes that are safe at once: sending faster, expecting packets more slowly.
            self._tx_used = min(self._tx_used, advertised[0])
            self._rx_used = max(self._rx_used, advertised[1])
            self._reschedule()

    # ----------------------------------------------------------------- inputs

    def receive_packet(self, data: bytes, now: float) -> None:
        """Decode and process one Control packet; raise BfdError if it is discarded."""
        self.handle_packet(decode_packet(data), now)

    def handle_packet(self, pkt: ControlPacket, now: float) -> None:
        """Process one decoded Control packet (§6.8.6); raise BfdError if it is discarded."""
        if pkt.your_discriminator not in (0, self.local_discriminator):
            raise BfdError(f"Your Discriminator {pkt.your_discriminator} is not ours")
        if pkt.your_discriminator == 0 and self.state in (State.INIT, State.UP):
            # §6.3: "Once the remote end echoes back the local discriminator, all further
            # received packets are demultiplexed based on the Your Discriminator field only";
            # selecting a session for Your Discriminator zero is application specific and an
            # unmatched packet "MAY be discarded" (§6.8.6). In Init or Up the peer has our
            # discriminator, so such a packet cannot belong to this session: anyone who can
            # spoof the peer's address could otherwise take it down with one Down packet.
            # FRR's bfdd does the same ("'remote discriminator' is zero, not overridden").
            # A peer that really restarted is noticed when the Detection Time expires.
            raise BfdError(f"Your Discriminator is zero while {self.state.name}: not ours")
        if pkt.auth is not None:
            raise BfdError("A bit set but authentication is not in use on this session")
        self.packets_received += 1
        if self.remote_discriminator not in (0, pkt.my_discriminator):
            # §6.3: a system may change its discriminator during a session "without affecting
            # the session state"; §6.8.6: bfd.RemoteDiscr takes My Discriminator of every
            # accepted packet (one that carries our discriminator).
            self.remote_discriminator_changes += 1
        self.remote_discriminator = pkt.my_discriminator
        self.remote_state = pkt.state
        self.remote_diag = pkt.diag
        self.remote_demand_mode = pkt.demand
        self.remote_detect_mult = pkt.detect_mult
        self.remote_desired_min_tx_interval = pkt.desired_min_tx_interval
        old_remote_rx = self.remote_min_rx_interval
        self.remote_min_rx_interval = pkt.required_min_rx_interval
        if pkt.final and self._poll is not None:
            self._tx_used, self._rx_used = self._poll
            self._poll = None
            self._events.append(PollSequenceCompleted(self._tx_used, self._rx_used))
            self._parameters_changed()  # a change made during the sequence gets its own poll
            self._reschedule()
        elif old_remote_rx != self.remote_min_rx_interval:
            self._reschedule()
        if pkt.poll:
            self._send_final = True
        if self.state == State.ADMIN_DOWN:
            return  # §6.8.6: discard (after recording the peer's variables)
        step = TRANSITIONS[(self.state, pkt.state)]
        if step is not None:
            new, diag = step
            self._set_state(new, diag, remote_admin_down=pkt.state == State.ADMIN_DOWN)
        # A packet from the peer restarts detection (§6.8.4).
        self._detect_deadline = now + self.detection_time * _MICRO

    def handle_timer(self, now: float) -> None:
        """Handle the expiry of the Detection Time; transmission is done by packets_to_send."""
        if self._detect_deadline is None or now < self._detect_deadline:
            return
        self._detect_deadline = None
        # §6.8.1: bfd.RemoteDiscr is zeroed when the Detection Time expires.
        self.remote_discriminator = 0
        self.remote_state = State.DOWN
        self.remote_demand_mode = False
        if self.state in (State.INIT, State.UP):
            self._set_state(State.DOWN, Diag.CONTROL_DETECTION_TIME_EXPIRED)

    def admin_down(self, diag: Diag = Diag.ADMINISTRATIVELY_DOWN) -> None:
        """Take the session AdminDown (§6.8.16); the peer is told at once."""
        if self.state != State.ADMIN_DOWN:
            self._detect_deadline = None
            self._set_state(State.ADMIN_DOWN, diag)

    def admin_up(self) -> None:
        """Leave AdminDown for Down (§6.8.16); no-op in any other state."""
        if self.state == State.ADMIN_DOWN:
            self._set_state(State.DOWN, None)

    def set_intervals(
        self,
        desired_min_tx_interval: int | None = None,
        required_min_rx_interval: int | None = None,
        detect_mult: int | None = None,
    ) -> None:
        """Change the configured timers; while Up this starts a Poll Sequence (§6.8.3)."""
        tx = desired_min_tx_interval
        rx = required_min_rx_interval
        tx = self.desired_min_tx_interval if tx is None else tx
        rx = self.required_min_rx_interval if rx is None else rx
        mult = self.detect_mult if detect_mult is None else detect_mult
        self._check_params(tx, rx, mult)
        self.desired_min_tx_interval, self.required_min_rx_interval = tx, rx
        self.detect_mult = mult  # carried in the next packet; needs no Poll Sequence
        self._parameters_changed()

    # ----------------------------------------------------------------- outputs

    def _build(self, *, final: bool) -> bytes:
        # During a Poll Sequence we advertise the values polled for; a later change waits.
        tx, rx = self._poll or (self._advertised_tx(), self.required_min_rx_interval)
        pkt = ControlPacket(
            state=self.state,
            diag=self.local_diag,
            my_discriminator=self.local_discriminator,
            your_discriminator=self.remote_discriminator,
            detect_mult=self.detect_mult,
            desired_min_tx_interval=tx,
            required_min_rx_interval=rx,
            poll=self._poll is not None and not final,
            final=final,
        )
        self.packets_sent += 1
        return encode_packet(pkt)

    def _periodic_allowed(self) -> bool:
        if self.remote_min_rx_interval == 0:
            return False  # §6.8.3: the peer asked for no periodic packets
        return (
            not (
                self.remote_demand_mode and self.state == State.UP and self.remote_state == State.UP
            )
            or self._poll is not None
        )

    def packets_to_send(self, now: float) -> list[bytes]:
        """Return the Control packets due at `now` (a Final first, then a periodic one)."""
        out: list[bytes] = []
        if self._send_final:
            self._send_final = False
            out.append(self._build(final=True))
        if (self._send_now or now >= self._next_tx) and self._periodic_allowed():
            self._send_now = False
            out.append(self._build(final=False))
            self._last_tx = now
            self._next_tx = now + self._jittered(self.transmit_interval)
        elif self._send_now:
            self._send_now = False
        return out

    def get_timer(self) -> float | None:
        """The next time (monotonic seconds) at which handle_timer/packets_to_send must run.

        A time in the past means "now" (a packet is due at once)."""
        if self._send_final or self._send_now:
            return self._last_tx if self._last_tx is not None else self._next_tx
        deadlines = [] if self._detect_deadline is None else [self._detect_deadline]
        if self._periodic_allowed():
            deadlines.append(self._next_tx)
        return min(deadlines) if deadlines else None

    def next_event(self) -> SessionEvent | None:
        """Pop the next event, oldest first, or None."""
        return self._events.popleft() if self._events else None
