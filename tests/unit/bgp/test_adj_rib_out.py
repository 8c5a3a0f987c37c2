from hypothesis import given
from hypothesis import strategies as st

from bgplb.bgp.adj_rib_out import AdjRibOut
from bgplb.bgp.attributes import PathAttributes
from bgplb.bgp.prefix import Prefix

A = PathAttributes(med=1)
B = PathAttributes(med=2)
P1 = Prefix.parse("198.51.100.1/32")
P2 = Prefix.parse("198.51.100.2/32")


def test_nothing_resent_that_the_peer_has():
    rib = AdjRibOut()
    rib.set(P1, A)
    assert rib.pending() == ({A: [P1]}, [])
    rib.commit()
    rib.set(P1, A)
    assert not rib.has_pending()
    assert rib.pending() == ({}, [])


def test_withdraw_only_what_was_sent():
    rib = AdjRibOut()
    rib.set(P1, A)
    rib.remove(P1)
    assert rib.pending() == ({}, [])
    rib.set(P1, A)
    rib.commit()
    rib.remove(P1)
    assert rib.pending() == ({}, [P1])
    rib.commit()
    assert rib.sent == {}


def test_grouping_by_attributes_and_reset():
    rib = AdjRibOut()
    rib.set(P1, A)
    rib.set(P2, A)
    rib.commit()
    rib.set(P2, B)
    assert rib.pending() == ({B: [P2]}, [])
    rib.commit()
    rib.reset()
    assert rib.pending() == ({A: [P1], B: [P2]}, [])


def test_resend_all_after_route_refresh():
    rib = AdjRibOut()
    rib.set(P1, A)
    rib.commit()
    rib.resend_all()
    assert rib.pending() == ({A: [P1]}, [])


ops = st.lists(
    st.tuples(
        st.sampled_from(["set", "remove", "commit"]),
        st.integers(0, 5),
        st.sampled_from([A, B]),
    ),
    max_size=40,
)


@given(ops)
def test_after_commit_sent_equals_desired(sequence):
    rib = AdjRibOut()
    model_sent: dict = {}
    for op, i, attrs in sequence:
        prefix = Prefix.parse(f"198.51.100.{i}/32")
        if op == "set":
            rib.set(prefix, attrs)
        elif op == "remove":
            rib.remove(prefix)
        else:
            announce, withdraw = rib.pending()
            for a, prefixes in announce.items():
                for p in prefixes:
                    assert model_sent.get(p) != a  # never re-sent unchanged
                    model_sent[p] = a
            for p in withdraw:
                assert p in model_sent  # never withdraw what the peer does not have
                del model_sent[p]
            rib.commit()
            assert model_sent == dict(rib.desired)
