"""KernelFib's cached installed state and the raw bucket counter, no kernel needed.

The cache (`bgplb.linux.diff.FibModel`) replaces a full kernel dump before every apply: it must
end up equal to what a dump would show after the operations `diff` gives. Checked against the
strict kernel model of test_fib_diff.py (it refuses every operation on which Linux would delete
something silently, so a cache that ignores those side effects is exact).
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from test_fib_diff import KernelModel, desired_states, foreign_ids, params_st
from test_nexthop_codec import BUCKET_REPLY, GROUP_REPLY

from bgplb.linux.diff import FibModel, diff
from bgplb.linux.nexthop import _bucket_nh_id


@settings(max_examples=300, deadline=None)
@given(
    debris=desired_states,
    debris_params=params_st,
    steps=st.lists(st.tuples(desired_states, params_st), min_size=1, max_size=6),
    foreign=foreign_ids,
)
def test_cache_tracks_the_kernel_through_our_own_operations(debris, debris_params, steps, foreign):
    kernel = KernelModel(foreign=foreign)
    for op in diff(debris, kernel.installed(), debris_params):  # state left by an earlier run
        kernel.apply(op)
    cache = FibModel(kernel.installed())  # the one dump, at reconcile
    for desired, params in steps:
        ops = diff(desired, cache.state(), params)
        for op in ops:
            kernel.apply(op)
            cache.note(op)
        assert cache.state() == kernel.installed()
        assert diff(desired, cache.state(), params) == []  # idempotent without a dump


def test_cache_state_shares_its_dicts():
    """No copy per apply: the InstalledState handed to diff is a view of the cache."""
    kernel = KernelModel()
    cache = FibModel(kernel.installed())
    state = cache.state()
    assert state.routes is cache.routes and state.groups is cache.groups


def _messages(data):
    offset = 0
    while offset < len(data):
        length = int.from_bytes(data[offset : offset + 4], "little")
        yield offset, length
        offset += (length + 3) & ~3


def test_bucket_counter_reads_the_member_of_kernel_bucket_messages():
    # two RTM_NEWNEXTHOPBUCKET messages captured from Linux 6.18 (test_nexthop_codec.py)
    found = [_bucket_nh_id(BUCKET_REPLY, o, n) for o, n in _messages(BUCKET_REPLY)]
    assert found == [1002, 1002]


def test_bucket_counter_finds_nothing_in_other_messages():
    (offset, length), *_ = _messages(GROUP_REPLY)
    assert _bucket_nh_id(GROUP_REPLY, offset, length) is None


@given(st.binary(max_size=80))
def test_bucket_counter_never_raises_on_garbage(payload):
    data = (16 + 8 + len(payload)).to_bytes(4, "little") + bytes(12 + 8) + payload
    _bucket_nh_id(data, 0, len(data))
