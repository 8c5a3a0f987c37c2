"""Kernel side of connection pinning in a namespace: ip rules, per-server tables, our nftables
table (nft -j), idempotence, adoption of slots, cleanup that touches nothing of anyone else's,
and the mechanism itself with a static ECMP route (a pinned connection survives its server
leaving the route; a new one does not go there)."""

from __future__ import annotations

import json
from ipaddress import ip_address, ip_network

import pytest

from bgplb.linux.pinroutes import KernelPins, PinSpec, conntrack_counts
from prerequisites import require_binary

pytestmark = [pytest.mark.interop]

VIP = ip_network("198.51.100.10/32")
VIP6 = ip_network("2001:db8:100::10/128")


def rules(ns) -> list[dict]:
    return [r for r in json.loads(ns.exec("ip", "-j", "rule", "show")) if r.get("priority") == 1000]


def test_kernel_pins_apply_idempotent_adopt_cleanup(topo) -> None:
    require_binary("nft")
    rtr = topo.add("rtr")
    srv = topo.add("s1")
    topo.link(
        rtr,
        srv,
        ["192.0.2.9/29", "2001:db8:1::1/64"],
        ["192.0.2.10/29", "2001:db8:1::2/64"],
        "srv1",
        "uplink",
    )
    ifindex = int(json.loads(rtr.exec("ip", "-j", "link", "show", "srv1"))[0]["ifindex"])
    # someone else's rule, route and nftables table: never touched
    rtr.exec("ip", "rule", "add", "fwmark", "0x1", "lookup", "100", "pref", "1000")
    rtr.exec("ip", "route", "add", "198.51.100.99/32", "via", "192.0.2.10", "table", "20001")
    rtr.exec("nft", "add", "table", "inet", "other")
    pins = KernelPins(0xFF0000, (20000, 20254), 1000, "bgplb", netns=rtr.name)
    try:
        specs = [
            PinSpec(ip_address("192.0.2.10"), ifindex, 0x10000, 1, 20000, (VIP,)),
            PinSpec(ip_address("2001:db8:1::2"), ifindex, 0x20000, 2, 20001, (VIP6,)),
        ]
        assert pins.apply(specs) == 4 + 2 + 1
        assert pins.apply(specs) == 0
        got = {(r["fwmark"], r["table"]) for r in rules(rtr) if r.get("fwmask") == "0xff0000"}
        assert got == {("0x10000", "20000"), ("0x20000", "20001")}, rules(rtr)
        assert "198.51.100.10 via 192.0.2.10 dev srv1" in rtr.exec(
            "ip", "route", "show", "table", "20000"
        )
        assert "2001:db8:100::10 via 2001:db8:1::2 dev srv1" in rtr.exec(
            "ip", "-6", "route", "show", "table", "20001"
        )
        listing = rtr.exec("nft", "list", "table", "inet", "bgplb")
        assert "rt ip nexthop 192.0.2.10" in listing and "rt ip6 nexthop 2001:db8:1::2" in listing
        # a new instance (restart) reads the slots back
        again = KernelPins(0xFF0000, (20000, 20254), 1000, "bgplb", netns=rtr.name)
        assert {(m.gateway, m.slot) for m in again.installed_marks()} == {
            (ip_address("192.0.2.10"), 1),
            (ip_address("2001:db8:1::2"), 2),
        }
        # dropping one server: its rules and route go, the other's stay
        assert pins.apply(specs[:1]) > 0
        assert {r["table"] for r in rules(rtr) if r.get("fwmask")} == {"20000"}
        assert "2001:db8:100::10" not in rtr.exec("ip", "-6", "route", "show", "table", "20001")
        assert again.cleanup() > 0
        assert pins.rules() == set() and pins.routes() == set()
        assert "bgplb" not in rtr.exec("nft", "list", "tables")
        again.close()
    finally:
        pins.close()
    assert "other" in rtr.exec("nft", "list", "tables")
    assert "fwmark 0x1 lookup 100" in rtr.exec("ip", "rule", "show")
    assert "198.51.100.99" in rtr.exec("ip", "route", "show", "table", "20001")  # not ours


def test_conntrack_counts_reads_marks(topo) -> None:
    ns = topo.add("ct")
    ns.exec("nft", "add", "table", "inet", "t")
    ns.exec("nft", "add", "chain", "inet", "t", "out", "{ type filter hook output priority 0; }")
    ns.exec("nft", "add", "rule", "inet", "t", "out", "ct", "mark", "set", "0x30001")
    ns.exec("ping", "-c", "1", "-W", "1", "127.0.0.1")
    out = conntrack_counts(0xFF0000, ns.name)
    assert out == {0x30000: 1}, out


def test_src_valid_mark_is_restored_at_cleanup_even_after_kill(topo, tmp_path) -> None:
    """The value found is saved before src_valid_mark is set; a later instance (a restart after
    kill -9: the first one never cleans up) restores it; a value someone else set is kept."""
    rtr = topo.add("rtr")

    def svm() -> str:
        return rtr.exec("sysctl", "-n", "net.ipv4.conf.all.src_valid_mark").strip()

    rtr.sysctl("net.ipv4.conf.all.src_valid_mark", 0)
    first = KernelPins(0xFF0000, (20000, 20254), 1000, "bgplb", netns=rtr.name, state_dir=tmp_path)
    assert first.ensure_src_valid_mark() is False  # rp_filter off: nothing to do
    assert svm() == "0" and list(tmp_path.iterdir()) == []
    rtr.sysctl("net.ipv4.conf.all.rp_filter", 1)
    assert first.ensure_src_valid_mark() is True
    assert svm() == "1"
    state = first.src_valid_mark_state
    assert json.loads(state.read_text())["src_valid_mark"] == "0"
    assert first.ensure_src_valid_mark() is False  # idempotent, the saved value is kept
    # "kill -9": `first` never cleans up; the next run finds src_valid_mark already 1
    again = KernelPins(0xFF0000, (20000, 20254), 1000, "bgplb", netns=rtr.name, state_dir=tmp_path)
    assert again.ensure_src_valid_mark() is False
    assert json.loads(state.read_text())["src_valid_mark"] == "0"
    again.cleanup()
    assert svm() == "0" and not state.exists()
    # someone else's src_valid_mark=1 (no saved value): never changed by our cleanup
    rtr.sysctl("net.ipv4.conf.all.src_valid_mark", 1)
    assert again.ensure_src_valid_mark() is False
    again.cleanup()
    assert svm() == "1"
    # changed by someone after we set it: their value wins
    rtr.sysctl("net.ipv4.conf.all.src_valid_mark", 0)
    assert again.ensure_src_valid_mark() is True
    rtr.sysctl("net.ipv4.conf.all.src_valid_mark", 2)
    again.cleanup()
    assert svm() == "2" and not state.exists()
    first.close()
    again.close()
