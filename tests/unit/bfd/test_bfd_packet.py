"""Codec tests for bgplb.bfd.packet (RFC 5880 §4.1, §6.8.6)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bgplb.bfd import BfdError, ControlPacket, Diag, State, decode_packet, encode_packet

# Provenance: captured with `tcpdump -i any udp port 3784` in a network namespace between two
# BIRD 2.0.12 daemons (Debian 12 bird2), `protocol bfd { interface "*" { min rx interval 100 ms;
# min tx interval 100 ms; multiplier 3; }; neighbor ...; }`, 192.0.2.1 <-> 192.0.2.2 on a veth;
# UDP payloads extracted with `tshark -T fields -e udp.payload`. IP TTL was 255.
BIRD_INIT = bytes.fromhex("20800318feaafc2ebfd1e25c000f4240000186a000000000")
BIRD_UP_POLL = bytes.fromhex("20e00318bfd1e25cfeaafc2e000186a0000186a000000000")
BIRD_UP_FINAL = bytes.fromhex("20d00318feaafc2ebfd1e25c000186a0000186a000000000")
BIRD_UP = bytes.fromhex("20c00318feaafc2ebfd1e25c000186a0000186a000000000")


def test_bird_init_vector() -> None:
    pkt = decode_packet(BIRD_INIT)
    assert pkt == ControlPacket(
        state=State.INIT,
        my_discriminator=0xFEAAFC2E,
        your_discriminator=0xBFD1E25C,
        detect_mult=3,
        desired_min_tx_interval=1_000_000,  # slow rate while not Up (§6.8.3)
        required_min_rx_interval=100_000,
    )
    assert encode_packet(pkt) == BIRD_INIT


def test_bird_poll_and_final_vectors() -> None:
    poll = decode_packet(BIRD_UP_POLL)
    assert poll.state == State.UP and poll.poll and not poll.final
    assert poll.desired_min_tx_interval == 100_000
    final = decode_packet(BIRD_UP_FINAL)
    assert final.state == State.UP and final.final and not final.poll
    plain = decode_packet(BIRD_UP)
    assert not plain.poll and not plain.final and plain.diag == Diag.NO_DIAGNOSTIC
    for raw in (BIRD_UP_POLL, BIRD_UP_FINAL, BIRD_UP):
        assert encode_packet(decode_packet(raw)) == raw


def _mutate(raw: bytes, offset: int, value: int) -> bytes:
    b = bytearray(raw)
    b[offset] = value
    return bytes(b)


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (BIRD_UP[:23], "shorter than 24"),
        (b"", "shorter than 24"),
        (_mutate(BIRD_UP, 0, 0x40), "version"),  # version 2
        (_mutate(BIRD_UP, 0, 0x00), "version"),  # version 0
        (_mutate(BIRD_UP, 2, 0), "Detect Mult is zero"),
        (_mutate(BIRD_UP, 1, 0xC1), "Multipoint"),
        (_mutate(BIRD_UP, 1, 0xF0), "Poll and Final"),
        (_mutate(BIRD_UP, 3, 23), "Length 23"),
        (_mutate(BIRD_UP, 3, 25), "exceeds payload"),
        (_mutate(BIRD_UP, 3, 25) + b"\x00", "A bit clear"),
        (BIRD_UP[:4] + b"\x00" * 4 + BIRD_UP[8:], "My Discriminator is zero"),
        (BIRD_UP[:8] + b"\x00" * 4 + BIRD_UP[12:], "Your Discriminator is zero in state UP"),
        # A bit set, Length 24: no room for the auth section.
        (_mutate(BIRD_UP, 1, 0xC4), "Length 24 short"),
        # A bit set, Simple Password with Auth Len 3 (minimum 4).
        (_mutate(_mutate(BIRD_UP, 1, 0xC4), 3, 27) + bytes([1, 3, 1]), "Auth Len 3 invalid"),
        # A bit set, unknown Auth Type 9.
        (_mutate(_mutate(BIRD_UP, 1, 0xC4), 3, 28) + bytes([9, 4, 1, 0x41]), "unknown Auth Type"),
        # Auth Len disagrees with Length.
        (_mutate(_mutate(BIRD_UP, 1, 0xC4), 3, 28) + bytes([1, 5, 1, 0x41]), "does not match"),
    ],
)
def test_reception_checks(raw: bytes, why: str) -> None:
    with pytest.raises(BfdError, match=why):
        decode_packet(raw)


def test_your_discriminator_zero_allowed_in_down_and_admin_down() -> None:
    for state in (State.DOWN, State.ADMIN_DOWN):
        raw = struct.pack("!BBBBIIIII", 0x20, state << 6, 3, 24, 7, 0, 1_000_000, 1_000_000, 0)
        assert decode_packet(raw).state == state


def test_padding_after_length_is_ignored() -> None:
    assert decode_packet(BIRD_UP + b"\xff" * 8) == decode_packet(BIRD_UP)


def test_simple_password_section_parses() -> None:
    auth = bytes([1, 7, 1]) + b"pass"
    raw = _mutate(_mutate(BIRD_UP, 1, 0xC4), 3, 24 + len(auth)) + auth
    pkt = decode_packet(raw)
    assert pkt.auth == auth and pkt.auth_present
    assert encode_packet(pkt) == raw


def test_encode_refuses_invalid_fields() -> None:
    good = decode_packet(BIRD_UP)
    for changes in (
        {"my_discriminator": 0},
        {"detect_mult": 0},
        {"detect_mult": 256},
        {"diag": 32},
        {"poll": True, "final": True},
        {"desired_min_tx_interval": 2**32},
        {"required_min_rx_interval": -1},
        {"auth": b"\x01"},
    ):
        fields = {f: getattr(good, f) for f in good.__dataclass_fields__} | changes
        with pytest.raises(BfdError):
            encode_packet(ControlPacket(**fields))  # type: ignore[arg-type]


u32 = st.integers(0, 2**32 - 1)


@st.composite
def packets(draw: st.DrawFn) -> ControlPacket:
    state = draw(st.sampled_from(State))
    your = draw(u32) if state in (State.DOWN, State.ADMIN_DOWN) else draw(st.integers(1, 2**32 - 1))
    poll = draw(st.booleans())
    auth_kind = draw(st.sampled_from(["none", "simple", "md5", "sha1"]))
    auth = None
    if auth_kind == "simple":
        pw = draw(st.binary(min_size=1, max_size=16))
        auth = bytes([1, 3 + len(pw), draw(st.integers(0, 255))]) + pw
    elif auth_kind == "md5":
        auth = bytes([2, 24]) + draw(st.binary(min_size=22, max_size=22))
    elif auth_kind == "sha1":
        auth = bytes([5, 28]) + draw(st.binary(min_size=26, max_size=26))
    return ControlPacket(
        state=state,
        diag=draw(st.integers(0, 31)),
        my_discriminator=draw(st.integers(1, 2**32 - 1)),
        your_discriminator=your,
        detect_mult=draw(st.integers(1, 255)),
        desired_min_tx_interval=draw(u32),
        required_min_rx_interval=draw(u32),
        required_min_echo_rx_interval=draw(u32),
        poll=poll,
        final=not poll and draw(st.booleans()),
        control_plane_independent=draw(st.booleans()),
        demand=draw(st.booleans()),
        auth=auth,
    )


@given(packets())
def test_round_trip(pkt: ControlPacket) -> None:
    raw = encode_packet(pkt)
    assert len(raw) == raw[3]
    assert decode_packet(raw) == pkt


@given(st.binary(max_size=80))
def test_arbitrary_bytes_only_raise_bfd_error(data: bytes) -> None:
    try:
        pkt = decode_packet(data)
    except BfdError:
        return
    assert encode_packet(pkt) == data[: data[3]]


@given(packets(), st.integers(0, 23), st.integers(0, 255))
def test_mutated_packets_only_raise_bfd_error(pkt: ControlPacket, offset: int, value: int) -> None:
    raw = bytearray(encode_packet(pkt))
    raw[offset] = value
    try:
        decode_packet(bytes(raw))
    except BfdError:
        pass
