"""bgplb's BGP on the wire: a second opinion from Wireshark's dissector, GTSM and IPv6
transport, in network namespaces with the real kernel."""

from __future__ import annotations

import time

import pytest
from bgpspeaker import SpeakerProcess
from wirecapture import Capture, tshark_bgp_messages, tshark_check

from bgplb.lab import peers

pytestmark = pytest.mark.interop

ROUTES = [
    dict(announce="198.51.100.10/32", communities=["65000:100", "no-export"],
         large_communities=["4200000002:1:2"], med=10),
    dict(announce="198.51.100.11/32", communities=["graceful-shutdown"]),
    dict(announce="203.0.113.0/24"),
]  # fmt: skip


def established(event):
    return event.get("event") == "established"


def spk(host, tmp_path, name, *args):
    return SpeakerProcess(host.ns, *args, log_path=str(tmp_path / f"{name}.log"))


@pytest.mark.parametrize("name", ["Bird", "GoBgp"])
def test_capture_of_bgplb_session_decodes_cleanly_in_wireshark(two_hosts, daemons, tmp_path, name):
    left, right = two_hosts
    d = daemons(getattr(peers, name), left.ns, 65010, left.ipv4)
    d.add_neighbor(right.ipv4, 4200000002, families=["ipv4"], hold_time=3)
    d.add_neighbor(right.ipv6, 4200000002, families=["ipv6"], hold_time=3)
    d.announce("203.0.113.128/25", left.ipv4, ["65010:1"], ["65010:2:3"], med=5)
    d.announce("2001:db8:203::/48", left.ipv6, ["65010:6"])
    pcap = tmp_path / "bgp.pcap"
    with Capture(right.ns, right.ifname, pcap):
        d.start()
        s4 = spk(right, tmp_path, "s4", "--asn", "4200000002", "--router-id", "192.0.2.2",
                 "--peer", left.ipv4, "--hold", "3", "--families", "ipv4")  # fmt: skip
        s6 = spk(right, tmp_path, "s6", "--asn", "4200000002", "--router-id", "192.0.2.2",
                 "--peer", left.ipv6, "--hold", "3", "--families", "ipv6")  # fmt: skip
        try:
            s4.wait_for(established, 30)
            s6.wait_for(established, 30)
            for route in ROUTES:
                s4.send(**route)
            s6.send(announce="2001:db8:100::10/128", communities=["65000:600"], med=3)
            want = {r["announce"] for r in ROUTES} | {"2001:db8:100::10/128"}
            d.wait_routes(lambda rs: want <= {r.prefix for r in rs}, 20, "bgplb routes")
            s4.send(withdraw="198.51.100.11/32")
            d.wait_routes(lambda rs: "198.51.100.11/32" not in {r.prefix for r in rs}, 20)
            mark = len(s4.events)
            s4.send(refresh="ipv4")  # ROUTE-REFRESH (RFC 2918): the peer re-sends its routes
            s4.wait_for(lambda e: e.get("event") == "routes" and e["announced"], 20, after=mark)
            time.sleep(4)  # let a few KEEPALIVEs cross (hold 3 s: every second)
        finally:
            s4.stop("capture done")
            s6.stop("capture done")
        time.sleep(0.5)
    assert tshark_check(pcap) == []
    counts = tshark_bgp_messages(pcap)
    assert counts["OPEN"] >= 4
    assert counts["UPDATE"] >= 6
    assert counts["KEEPALIVE"] >= 4
    assert counts["NOTIFICATION"] >= 2  # our Cease with a shutdown message, on both sessions
    assert counts["ROUTE-REFRESH"] >= 1


def test_gtsm_accepts_ttl_255_and_refuses_a_farther_sender(two_hosts, tmp_path):
    left, right = two_hosts
    server = spk(left, tmp_path, "listener", "--asn", "65010", "--router-id", "192.0.2.1",
                 "--peer", right.ipv4, "--listen", left.ipv4, "--ttl-security",
                 "--hold", "3")  # fmt: skip
    try:
        bad = spk(right, tmp_path, "no-gtsm", "--asn", "65020", "--router-id", "192.0.2.2",
                  "--peer", left.ipv4, "--hold", "3", "--connect-retry", "1")  # fmt: skip
        try:
            time.sleep(4)  # bounded: a few connect attempts with TTL 64 < 255
            bad._drain(0.1)
            assert not any(established(e) for e in bad.events)
        finally:
            bad.stop()
        good = spk(right, tmp_path, "gtsm", "--asn", "65020", "--router-id", "192.0.2.2",
                   "--peer", left.ipv4, "--hold", "3", "--ttl-security")  # fmt: skip
        try:
            good.wait_for(established, 20)
            server.wait_for(established, 5)
        finally:
            good.stop()
    finally:
        server.stop()


def test_passive_ipv6_session_with_md5_between_two_bgplb_speakers(two_hosts, tmp_path):
    left, right = two_hosts
    server = spk(left, tmp_path, "listener6", "--asn", "65010", "--router-id", "192.0.2.1",
                 "--peer", right.ipv6, "--listen", left.ipv6, "--password", "k6",
                 "--families", "ipv6", "--hold", "3")  # fmt: skip
    client = spk(right, tmp_path, "client6", "--asn", "65020", "--router-id", "192.0.2.2",
                 "--peer", left.ipv6, "--password", "k6", "--families", "ipv6",
                 "--hold", "3")  # fmt: skip
    try:
        client.wait_for(established, 20)
        server.wait_for(established, 5)
        client.send(announce="2001:db8:100::20/128", large_communities=["65020:9:9"])
        got = server.wait_for(lambda e: e.get("event") == "routes" and e["announced"], 10)
        assert got["announced"] == ["2001:db8:100::20/128"]
        assert got["attributes"]["mp_next_hop"][0] == right.ipv6
        assert got["attributes"]["as_path"] == [65020]
        assert got["attributes"]["large_communities"] == ["65020:9:9"]
    finally:
        client.stop()
        server.stop()
