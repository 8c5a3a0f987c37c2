"""bgplb's BGP speaker against real BIRD 2, FRR, GoBGP and ExaBGP in network namespaces.

Left namespace: the daemon (192.0.2.1, 2001:db8::1). Right namespace: bgplb's speaker
(`tests/interop/bgpspeaker.py`, 192.0.2.2, 2001:db8::2), one session per address family, as
operators usually run them. Each test checks one feature of the interop matrix.
"""

from __future__ import annotations

import time

import pytest
from bgpspeaker import SpeakerProcess

from bgplb.lab import peers

pytestmark = pytest.mark.interop

DAEMON_AS = 65010
SPEAKER_AS = 4200000002  # 4-octet: exercises RFC 6793 on every peer
DAEMONS = ["Bird", "Frr", "GoBgp", "ExaBgp"]

SPK_V4 = "198.51.100.10/32"
SPK_V6 = "2001:db8:100::10/128"
DMN_V4 = "203.0.113.0/24"
DMN_V6 = "2001:db8:203::/48"


def daemon_class(name: str) -> type[peers.Daemon]:
    cls = getattr(peers, name, None)
    if cls is None:
        pytest.fail(f"bgplb.lab.peers has no {name} class")
    return cls  # type: ignore[no-any-return]


def speaker(host, peer_addr: str, tmp_path, *extra: str, families: str) -> SpeakerProcess:
    return SpeakerProcess(
        host.ns,
        "--asn", str(SPEAKER_AS),
        "--router-id", "192.0.2.2",
        "--peer", peer_addr,
        "--peer-as", str(DAEMON_AS),
        "--hold", "3",
        "--families", families,
        *extra,
        log_path=str(tmp_path / f"speaker-{families}.log"),
    )  # fmt: skip


def setup(two_hosts, daemons, name, *, password=None, hold_time=3, v6=True):
    left, right = two_hosts
    d = daemons(daemon_class(name), left.ns, DAEMON_AS, left.ipv4)
    # bgplb's speaker connects; ExaBGP listens only for passive neighbors.
    opts = dict(password=password, hold_time=hold_time, passive=name == "ExaBgp")
    d.add_neighbor(right.ipv4, SPEAKER_AS, families=["ipv4"], **opts)
    if v6:
        d.add_neighbor(right.ipv6, SPEAKER_AS, families=["ipv6"], **opts)
    return left, right, d


def established(event):
    return event.get("event") == "established"


@pytest.mark.parametrize("name", DAEMONS)
def test_routes_both_ways_with_attributes_and_withdrawal(two_hosts, daemons, tmp_path, name):
    left, right, d = setup(two_hosts, daemons, name)
    d.announce(DMN_V4, left.ipv4, ["65010:7"], ["65010:8:9"], med=70)
    d.announce(DMN_V6, left.ipv6, ["65010:6"], [], med=60)
    d.start()
    s4 = speaker(right, left.ipv4, tmp_path, families="ipv4")
    s6 = speaker(right, left.ipv6, tmp_path, families="ipv6")
    try:
        for s in (s4, s6):
            s.wait_for(established, 30)
        s4.send(announce=SPK_V4, communities=["65000:100", "graceful-shutdown"],
                large_communities=["4200000002:1:2"], med=10)  # fmt: skip
        s6.send(announce=SPK_V6, communities=["65000:600"], large_communities=[], med=20)
        got = {r.prefix: r for r in d.wait_routes(
            lambda rs: {SPK_V4, SPK_V6} <= {r.prefix for r in rs}, 20, "bgplb routes")}  # fmt: skip
        r4, r6 = got[SPK_V4], got[SPK_V6]
        assert r4.next_hop == right.ipv4
        assert r4.as_path == [SPEAKER_AS]
        assert sorted(r4.communities) == ["65000:100", "65535:0"]
        assert r4.large_communities == ["4200000002:1:2"]
        assert r4.med == 10
        assert r6.next_hop == right.ipv6
        assert r6.communities == ["65000:600"]
        assert r6.med == 20
        # What the daemon sent us, as bgplb decoded it.
        s4.wait_for(lambda e: e.get("event") == "routes" and DMN_V4 in e["announced"], 20)
        s6.wait_for(lambda e: e.get("event") == "routes" and DMN_V6 in e["announced"], 20)
        a4 = s4.routes()[DMN_V4]
        assert a4["as_path"] == [DAEMON_AS]
        assert a4["communities"] == ["65010:7"]
        assert a4["large_communities"] == ["65010:8:9"]
        assert a4["med"] == 70
        a6 = s6.routes()[DMN_V6]
        assert a6["mp_next_hop"][0] == left.ipv6
        assert a6["med"] == 60
        # A withdrawal reaches the peer.
        s4.send(withdraw=SPK_V4)
        d.wait_routes(lambda rs: SPK_V4 not in {r.prefix for r in rs}, 20, "withdrawal")
        assert SPK_V6 in {r.prefix for r in d.received_routes()}
    finally:
        s4.stop()
        s6.stop()


@pytest.mark.parametrize("name", DAEMONS)
def test_md5_right_key_establishes_wrong_key_does_not(two_hosts, daemons, tmp_path, name):
    left, right, d = setup(two_hosts, daemons, name, password="s3cret-key", v6=False)
    d.start()
    good = speaker(right, left.ipv4, tmp_path, "--password", "s3cret-key", families="ipv4")
    try:
        good.wait_for(established, 30)
    finally:
        good.stop()
    d.wait_routes(lambda rs: True, 1)
    bad = speaker(right, left.ipv4, tmp_path, "--password", "wrong-key", families="ipv4")
    try:
        time.sleep(6)  # bounded: several connect attempts
        bad._drain(0.1)
        assert not any(established(e) for e in bad.events)
    finally:
        bad.stop()
    log = (tmp_path / "speaker-ipv4.log").read_text()
    assert "TCP-MD5" in log  # the log says why a timeout can mean a wrong key


@pytest.mark.parametrize("name", DAEMONS)
def test_silent_peer_detected_by_hold_timer(two_hosts, daemons, tmp_path, name):
    left, right, d = setup(two_hosts, daemons, name, v6=False)
    d.start()
    s = speaker(right, left.ipv4, tmp_path, families="ipv4")
    try:
        s.wait_for(established, 30)
        mark = len(s.events)
        left.ns.drop_all_traffic()
        down = s.wait_for(lambda e: e.get("event") == "down", 20, after=mark)
        assert down["hold_expired"] is True
        assert down["notification"] == [4, 0]
    finally:
        left.ns.allow_all_traffic()
        s.stop()


@pytest.mark.parametrize("name", DAEMONS)
def test_restarted_peer_is_reconnected(two_hosts, daemons, tmp_path, name):
    left, right, d = setup(two_hosts, daemons, name, v6=False)
    d.start()
    s = speaker(right, left.ipv4, tmp_path, families="ipv4")
    try:
        s.wait_for(established, 30)
        s.send(announce=SPK_V4)
        d.wait_routes(lambda rs: SPK_V4 in {r.prefix for r in rs}, 20, "first announce")
        mark = len(s.events)
        d.restart()
        s.wait_for(lambda e: e.get("event") == "down", 20, after=mark)
        s.wait_for(established, 40, after=mark)
        # Our Adj-RIB-Out is re-sent after the new session comes up.
        d.wait_routes(lambda rs: SPK_V4 in {r.prefix for r in rs}, 20, "re-announce")
    finally:
        s.stop()


def test_shutdown_message_reaches_peer_and_cease(two_hosts, daemons, tmp_path):
    """RFC 8203: BIRD logs the shutdown communication it received."""
    left, right, d = setup(two_hosts, daemons, "Bird", v6=False)
    d.start()
    s = speaker(right, left.ipv4, tmp_path, families="ipv4")
    s.wait_for(established, 30)
    s.stop("maintenance window 42")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "maintenance window 42" not in d.log_tail(200):
        time.sleep(0.1)
    assert "maintenance window 42" in d.log_tail(200)
