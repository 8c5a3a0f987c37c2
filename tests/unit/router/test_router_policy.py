"""Prefix lists and source ranges (bgplb.router.policy)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bgplb.bgp.prefix import Prefix
from bgplb.router.policy import PrefixList, PrefixListEntry, match_range

P = Prefix.parse


@pytest.mark.parametrize(
    ("entry", "prefix", "expected"),
    [
        ("198.51.100.0/24 le 32", "198.51.100.10/32", True),
        ("198.51.100.0/24 le 32", "198.51.100.0/24", True),
        ("198.51.100.0/24 le 32", "198.51.0.0/16", False),
        ("198.51.100.0/24 le 32", "203.0.113.10/32", False),
        ("198.51.100.0/24", "198.51.100.0/24", True),
        ("198.51.100.0/24", "198.51.100.10/32", False),
        ("198.51.100.0/24 ge 28", "198.51.100.0/27", False),
        ("198.51.100.0/24 ge 28", "198.51.100.16/28", True),
        ("198.51.100.0/24 ge 28", "198.51.100.10/32", True),
        ("198.51.100.0/24 ge 28 le 30", "198.51.100.10/32", False),
        ("0.0.0.0/0 ge 32", "203.0.113.1/32", True),
        ("0.0.0.0/0 ge 32", "2001:db8::1/128", False),
        ("::/0 ge 128", "2001:db8::10/128", True),
        ("2001:db8::/32 le 128", "2001:db9::/128", False),
    ],
)
def test_entry_matches(entry: str, prefix: str, expected: bool) -> None:
    assert PrefixListEntry.parse(entry).matches(P(prefix)) is expected


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "198.51.100.0/24 le",
        "198.51.100.0/24 le 33",
        "198.51.100.0/24 ge 30 le 28",
        "198.51.100.0/24 lt 30",
        "198.51.100.1/24",
        "198.51.100.0/24 le 32 le 32",
        "198.51.100.0/24 ge 16",
    ],
)
def test_bad_entries_raise_valueerror(bad: str) -> None:
    with pytest.raises(ValueError):
        PrefixListEntry.parse(bad)


def test_str_round_trips() -> None:
    for text in [
        "198.51.100.0/24 le 32",
        "198.51.100.0/24",
        "0.0.0.0/0 ge 32",
        "198.51.100.0/24 ge 28 le 30",
    ]:
        assert str(PrefixListEntry.parse(text)) == text


def test_list_split_keeps_order() -> None:
    pl = PrefixList.parse(["198.51.100.0/24 le 32", "2001:db8::/32 le 128"])
    ok, bad = pl.split([P("203.0.113.1/32"), P("198.51.100.10/32"), P("2001:db8::10/128")])
    assert ok == [P("198.51.100.10/32"), P("2001:db8::10/128")]
    assert bad == [P("203.0.113.1/32")]
    assert not PrefixList(()).matches(P("198.51.100.10/32"))


def test_from_config_filters() -> None:
    from bgplb.config.types import parse_prefix_filter

    pl = PrefixList.from_filters([parse_prefix_filter("198.51.100.0/24 le 32"), "::/0 ge 128"])
    assert pl.matches(P("198.51.100.10/32"))
    assert pl.matches(P("2001:db8::10/128"))
    assert not pl.matches(P("203.0.113.0/24"))


@given(
    net=st.integers(0, 2**32 - 1),
    netlen=st.integers(0, 32),
    addr=st.integers(0, 2**32 - 1),
    plen=st.integers(0, 32),
    ge=st.integers(0, 32),
    le=st.integers(0, 32),
)
def test_matches_agrees_with_ipaddress(net, netlen, addr, plen, ge, le) -> None:
    network = ipaddress.IPv4Network((net, netlen), strict=False)
    ge, le = sorted((max(ge, netlen), max(le, netlen)))
    entry = PrefixListEntry(Prefix.from_network(network), ge, le)
    candidate = ipaddress.IPv4Network((addr, plen), strict=False)
    expected = candidate.subnet_of(network) and ge <= plen <= le
    assert entry.matches(Prefix.from_network(candidate)) is expected


def test_match_range_longest_wins_and_outside_is_none() -> None:
    n = ipaddress.ip_network
    ranges = [
        (n("192.0.2.0/24"), "wide"),
        (n("192.0.2.128/25"), "narrow"),
        (n("2001:db8::/64"), "v6"),
    ]
    a = ipaddress.ip_address
    assert match_range(ranges, a("192.0.2.10")) == (n("192.0.2.0/24"), "wide")
    assert match_range(ranges, a("192.0.2.200")) == (n("192.0.2.128/25"), "narrow")
    assert match_range(ranges, a("::ffff:192.0.2.10")) == (n("192.0.2.0/24"), "wide")
    assert match_range(ranges, a("2001:db8::5")) == (n("2001:db8::/64"), "v6")
    assert match_range(ranges, a("203.0.113.1")) is None
    assert match_range(ranges, a("2001:db8:1::5")) is None
