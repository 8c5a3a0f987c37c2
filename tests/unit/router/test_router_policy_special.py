"""Special-purpose prefixes and gateway refusals (bgplb.router.policy), RFC 6890 registries."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bgplb.bgp.families import AFI
from bgplb.bgp.prefix import Prefix
from bgplb.router.policy import _SPECIAL, gateway_refusal, special_purpose

P = Prefix.parse


@pytest.mark.parametrize(
    "prefix",
    [
        # documentation and benchmarking: the tests and the lab live there
        "192.0.2.10/32", "198.51.100.0/24", "203.0.113.7/32", "198.18.0.0/15", "198.19.255.1/32",
        "2001:db8::10/128", "2001:db8::/32", "3fff::1/128",
        # private and shared ranges: legitimate internal VIPs
        "10.1.2.3/32", "172.16.0.1/32", "192.168.1.1/32", "100.64.0.1/32", "fd00::1/128",
        # global unicast, anycast services carved out of IETF ranges, NAT64
        "8.8.8.8/32", "1.1.1.0/24", "192.0.0.9/32", "2001:2::1/128", "64:ff9b::808:808/128",
        "2606:4700::1111/128",
        # the default route is allow_default's business
        "0.0.0.0/0", "::/0",
    ],
)  # fmt: skip
def test_allowed(prefix: str) -> None:
    assert special_purpose(P(prefix)) is None


@pytest.mark.parametrize(
    ("prefix", "reason"),
    [
        ("0.0.0.0/8", "this network"),
        ("0.1.2.3/32", "this network"),
        ("127.0.0.1/32", "loopback"),
        ("169.254.169.254/32", "link-local"),
        ("192.0.0.1/32", "IETF protocol assignments"),
        ("192.88.99.1/32", "6to4"),
        ("224.0.0.5/32", "multicast"),
        ("239.255.255.250/32", "multicast"),
        ("240.0.0.1/32", "reserved"),
        ("255.255.255.255/32", "limited broadcast"),
        ("0.0.0.0/1", "covers 0.0.0.0/8"),
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("::ffff:192.0.2.1/128", "IPv4-mapped"),
        ("::192.0.2.1/128", "IPv4-compatible"),
        ("100::1/128", "discard-only"),
        ("2001::1/128", "IETF protocol assignments"),
        ("2002:c000:201::1/128", "6to4"),
        ("5f00::1/128", "SRv6"),
        ("fe80::1/128", "link-local"),
        ("fec0::1/128", "site-local"),
        ("ff02::1/128", "multicast"),
        ("f000::/4", "covers fe80::/10 link-local"),  # fc00::/7 inside it is fine, fe80 is not
    ],
)
def test_refused(prefix: str, reason: str) -> None:
    got = special_purpose(P(prefix))
    assert got is not None and reason in got, got


def reference(prefix: Prefix) -> str | None:
    """The rule, written the slow and obvious way with ipaddress."""
    if prefix.length == 0:
        return None
    net = prefix.network
    rows = [(ipaddress.ip_network(t), r) for t, r in _SPECIAL]
    inside = [(row, r) for row, r in rows if row.version == net.version and net.subnet_of(row)]  # type: ignore[arg-type]
    if inside:
        row, r = max(inside, key=lambda x: x[0].prefixlen)
        return None if r is None else f"{row} {r}"
    for row, r in sorted(rows, key=lambda x: -x[0].prefixlen):
        if r is not None and row.version == net.version and row.subnet_of(net):  # type: ignore[arg-type]
            return f"covers {row} {r}"
    return None


@given(st.integers(0, 2**32 - 1), st.integers(0, 32))
def test_ipv4_matches_the_slow_reference(address: int, length: int) -> None:
    prefix = Prefix(AFI.IPV4, address & ((0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF), length)
    assert special_purpose(prefix) == reference(prefix)


ROW6 = st.sampled_from([ipaddress.ip_network(t) for t, _ in _SPECIAL if ":" in t])


@given(ROW6, st.integers(0, 2**128 - 1), st.integers(0, 128))
def test_ipv6_matches_the_slow_reference(row, noise: int, length: int) -> None:
    # addresses near the table's rows, else almost every sample is plain global unicast
    address = int(row.network_address) ^ (noise >> min(128, row.prefixlen + length % 8))
    mask = ((1 << 128) - 1) ^ ((1 << (128 - length)) - 1)
    prefix = Prefix(AFI.IPV6, address & mask, length)
    assert special_purpose(prefix) == reference(prefix)


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("0.0.0.0", "unspecified"),
        ("0.1.2.3", "this network"),
        ("127.0.0.1", "loopback"),
        ("224.0.0.1", "multicast"),
        ("169.254.1.1", "link-local"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "limited broadcast"),
        ("::", "unspecified"),
        ("::1", "loopback"),
        ("ff02::2", "multicast"),
        ("fe80::1", "link-local"),
        ("::ffff:192.0.2.1", "IPv4-mapped"),
        ("192.0.2.11", None),
        ("10.0.0.1", None),
        ("2001:db8::11", None),
    ],
)
def test_gateway_refusal(address: str, reason: str | None) -> None:
    got = gateway_refusal(ipaddress.ip_address(address))
    assert got == reason if reason is None else (got is not None and reason in got)
