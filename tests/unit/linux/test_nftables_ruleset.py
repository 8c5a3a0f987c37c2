"""Pure nftables JSON builder and parser (bgplb.linux.nftables)."""

from __future__ import annotations

from ipaddress import ip_address, ip_network

import pytest

from bgplb.linux.nftables import PinMark, parse_marks, pin_ruleset


def test_ruleset_shape_and_roundtrip_of_marks():
    marks = [
        PinMark(ip_address("2001:db8:1::2"), 5, 0x20000, 2),
        PinMark(ip_address("192.0.2.10"), 4, 0x10000, 1),
    ]
    cmds = pin_ruleset("bgplb", 0xFF0000, marks, [ip_network("198.51.100.10/32")])
    # one transaction: (re)create our table only
    assert cmds[:3] == [
        {"add": {"table": {"family": "inet", "name": "bgplb"}}},
        {"delete": {"table": {"family": "inet", "name": "bgplb"}}},
        {"add": {"table": {"family": "inet", "name": "bgplb"}}},
    ]
    for c in cmds[3:]:
        (obj,) = c["add"].values()
        assert obj["table"] == "bgplb" and obj["family"] == "inet"
    rules = [c["add"]["rule"] for c in cmds if "rule" in c.get("add", {})]
    pre = [r for r in rules if r["chain"] == "prerouting"]
    fwd = [r for r in rules if r["chain"] == "forward"]
    assert len(pre) == 3 and len(fwd) == 2
    assert pre[0]["expr"][1] == {"return": None}
    # slot order; IPv4 rule uses rt ip nexthop, IPv6 rt ip6 nexthop
    assert fwd[0]["expr"][3]["match"]["left"] == {"rt": {"key": "nexthop", "family": "ip"}}
    assert fwd[1]["expr"][3]["match"]["left"] == {"rt": {"key": "nexthop", "family": "ip6"}}
    listing = [{"rule": r} for r in rules]
    assert sorted(parse_marks(listing), key=lambda m: m.slot) == sorted(marks, key=lambda m: m.slot)
    sets = {c["add"]["set"]["name"]: c["add"]["set"] for c in cmds if "set" in c.get("add", {})}
    assert sets["vip4"]["elem"] == ["198.51.100.10"]
    assert "elem" not in sets["vip6"]


def test_prerouting_keeps_the_other_mark_bits():
    cmds = pin_ruleset("t", 0x0000FF00, [PinMark(ip_address("192.0.2.10"), 4, 0x100, 1)], [])
    pre = [c["add"]["rule"] for c in cmds if "rule" in c.get("add", {})][1]
    value = pre["expr"][1]["mangle"]["value"]
    assert value == {"|": [{"&": [{"meta": {"key": "mark"}}, 0xFFFF00FF]}, 0x100]}


def test_mark_outside_mask_is_refused():
    with pytest.raises(ValueError, match="not inside mask"):
        pin_ruleset("t", 0xFF00, [PinMark(ip_address("192.0.2.10"), 4, 0x10000, 1)], [])


def test_unreadable_comment_is_skipped():
    listing = [{"rule": {"chain": "forward", "comment": "bgplb-pin slot=x", "expr": []}}]
    assert parse_marks(listing) == []
