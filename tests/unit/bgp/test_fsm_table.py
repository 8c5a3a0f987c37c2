"""The transition table is total and every handler exists (h11-style: errors by construction)."""

from ipaddress import IPv4Address

from bgplb.bgp.fsm import TRANSITIONS, Input, State, collision_keeps_existing
from bgplb.bgp.session import Session


def test_every_state_input_pair_has_a_handler():
    for state in State:
        for inp in Input:
            handler = TRANSITIONS[state, inp]
            assert hasattr(Session, f"_on_{handler}"), (state, inp, handler)


def test_messages_before_connection_are_not_fsm_errors_on_the_wire():
    assert TRANSITIONS[State.ACTIVE, Input.UPDATE_MSG] == "fsm_error_no_connection"


def test_unexpected_messages_in_connected_states_are_fsm_errors():
    assert TRANSITIONS[State.OPEN_SENT, Input.UPDATE_MSG] == "fsm_error"
    assert TRANSITIONS[State.OPEN_CONFIRM, Input.BGP_OPEN] == "fsm_error"
    assert TRANSITIONS[State.ESTABLISHED, Input.BGP_OPEN] == "fsm_error"


def test_collision_higher_identifier_keeps_its_own_connection():
    hi, lo = IPv4Address("192.0.2.20"), IPv4Address("192.0.2.10")
    # We have the higher id: our outgoing connection survives, an incoming one is closed.
    assert collision_keeps_existing(hi, lo, existing_is_outgoing=True) is True
    assert collision_keeps_existing(hi, lo, existing_is_outgoing=False) is False
    # We have the lower id: the peer's connection (incoming to us) survives.
    assert collision_keeps_existing(lo, hi, existing_is_outgoing=False) is True
    assert collision_keeps_existing(lo, hi, existing_is_outgoing=True) is False
