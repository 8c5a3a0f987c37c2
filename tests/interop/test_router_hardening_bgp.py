"""`bgplb router` against hostile and broken BGP input, in network namespaces.

Raw TCP clients (a small script run with the namespace's python, building messages with bgplb's
codec) and the lab speaker (`tests/interop/bgpspeaker.py`) talk to the running router:

* a ROUTE-REFRESH of the maximum size gets its NOTIFICATION on the wire (data truncated) and the
  peer's routes are purged, not kept as Graceful Restart stale routes;
* a bare connect, a connect sending garbage, and one sending only an OPEN with the wrong AS, all
  from an Established neighbor's address, leave its session and its kernel route untouched; a
  real restart (a new connection with a valid OPEN) replaces the session and the route stays
  (Graceful Restart);
* a half-open connection is closed after ``[bgp] open_timeout``;
* ``max_sessions`` refuses a connection beyond it;
* ``ttl_security`` accepts TTL 255 and refuses TTL 64 in one range while another range of the
  same router accepts a TTL 64 peer.

Layout as in test_router_interop: router namespace `rtr`, server i linked by a veth pair,
192.0.2.(8i+1)/29 on the router side, .(8i+2) on the server.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bgpspeaker import SpeakerProcess
from test_router_interop import (
    ROUTER_AS,
    VIP,
    RouterProc,
    build,
    hops,
    router_config,
    server_addrs,
    wait_for,
)

pytestmark = [pytest.mark.interop]

OPEN_TIMEOUT = 2  # [bgp] open_timeout in these tests

# A raw BGP client. argv: mode router [source [asn [ttl [extra]]]]; prints one JSON line with
# what it received. Modes: bare (connect, send nothing), garbage, open (only an OPEN), session
# (OPEN, KEEPALIVE, the VIP, End-of-RIB, then on a stdin line a BoRR of `extra` octets).
CLIENT = r"""
import json, socket, struct, sys, time
from ipaddress import IPv4Address
from bgplb.bgp.capabilities import FourOctetAS, Multiprotocol
from bgplb.bgp.capabilities import ExtendedMessage, GracefulRestart, GracefulRestartFamily
from bgplb.bgp.framing import MessageReader, frame
from bgplb.bgp.messages import Keepalive, Notification, Open, Update, decode, encode
from bgplb.bgp.attributes import Origin, PathAttributes
from bgplb.bgp.negotiated import Negotiated
from bgplb.bgp.prefix import Prefix

mode, router = sys.argv[1], sys.argv[2]
source = sys.argv[3] if len(sys.argv) > 3 and sys.argv[3] != "-" else None
asn = int(sys.argv[4]) if len(sys.argv) > 4 else 65001
ttl = int(sys.argv[5]) if len(sys.argv) > 5 and sys.argv[5] != "-" else None
extra = int(sys.argv[6]) if len(sys.argv) > 6 else 0
sock = socket.socket()
if ttl is not None:
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
if source:
    sock.bind((source, 0))
start = time.monotonic()
sock.settimeout(5)
sock.connect((router, 179))
src = sock.getsockname()[0]
caps = (Multiprotocol(1, 1), GracefulRestart(120, False, (GracefulRestartFamily(1, 1, True),)),
        FourOctetAS(asn)) + ((ExtendedMessage(),) if extra > 4096 else ())
opn = Open(asn=asn, hold_time=30, router_id=IPv4Address(src), capabilities=caps)
reader = MessageReader()
reader.extended = extra > 4096
got = []
neg = Negotiated(four_octet_as=True, extended_message=extra > 4096)

def read_until_closed(limit):
    sock.settimeout(0.2)
    end = time.monotonic() + limit
    while time.monotonic() < end:
        try:
            data = sock.recv(70000)
        except socket.timeout:
            continue
        except ConnectionResetError:
            return "reset"
        if not data:
            return "closed"
        reader.feed(data)
        while (m := reader.next_message()) is not None:
            got.append(m)
    return "open"

if mode == "garbage":
    sock.sendall(b"GET / HTTP/1.0\r\n\r\n" * 4)
elif mode in ("open", "session"):
    sock.sendall(encode(opn))
if mode == "session":
    while not any(t == 4 for t, _ in got):
        if read_until_closed(0.3) != "open":
            break
    attrs = PathAttributes(origin=Origin.IGP, as_path=(), next_hop=IPv4Address(src))
    sock.sendall(encode(Keepalive()) + encode(Update(nlri=(Prefix.parse(sys.argv[7]),),
                 attributes=attrs), neg) + encode(Update(), neg))
    print(json.dumps({"established": True}), flush=True)
    sys.stdin.readline()
    got.clear()
    sock.sendall(frame(5, struct.pack("!HBB", 1, 1, 1) + b"\0" * (extra - 23)))
how = read_until_closed(15)
notes = [decode(t, b) for t, b in got if t == 3]
print(json.dumps({
    "how": how,
    "after": round(time.monotonic() - start, 2),
    "types": [t for t, _ in got],
    "notifications": [[n.code, n.subcode, len(n.data)] for n in notes],
}), flush=True)
"""


def client(ns, mode: str, router: str, *args: str) -> subprocess.Popen[bytes]:
    return ns.popen(
        sys.executable,
        "-c",
        CLIENT,
        mode,
        router,
        *args,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def result(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> dict:
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    lines = [ln for ln in out.decode().splitlines() if ln.strip()]
    assert lines, err.decode()
    return json.loads(lines[-1])


def speaker(ns, i: int, tmp_path: Path, *extra: str, name: str = "") -> SpeakerProcess:
    r4, s4, _, _ = server_addrs(i)
    return SpeakerProcess(
        ns,
        "--asn", "65001",
        "--router-id", s4,
        "--peer", r4,
        "--peer-as", str(ROUTER_AS),
        "--hold", "9",
        "--families", "ipv4",
        "--graceful-restart", "60",
        *extra,
        log_path=str(tmp_path / f"speaker{i}{name}.log"),
    )  # fmt: skip


def established(sp: SpeakerProcess, after: int = 0, timeout: float = 20.0) -> None:
    sp.wait_for(lambda e: e.get("event") == "established", timeout, after)


def stale(router: RouterProc) -> bool:
    return any(nh.get("stale") for v in router.status()["vips"] for nh in v["nexthops"])


def ranges(body: str) -> str:
    # keys before the first [[peer_ranges]] still belong to [bgp]
    return f"open_timeout = {OPEN_TIMEOUT}\n" + body


def stop_router(router: RouterProc) -> None:
    if router.proc is not None and router.proc.poll() is None:
        router.stop()


GR_RANGES = """
[[peer_ranges]]
prefix = "192.0.2.8/29"
asn = 65001
accept = ["198.51.100.0/24 le 32"]

[[peer_ranges]]
prefix = "192.0.2.0/24"
asn = "any"
accept = ["198.51.100.0/24 le 32"]
"""


@pytest.mark.parametrize("length", [4096, 65535])
def test_max_size_route_refresh_gets_notification_and_routes_purged(
    topo, tmp_path, length: int
) -> None:
    rtr, (s1,) = build(topo, 1)
    router = RouterProc(rtr, tmp_path, router_config(ranges(GR_RANGES)))
    router.start()
    r4, s4, _, _ = server_addrs(1)
    try:
        proc = client(s1, "session", r4, "-", "65001", "-", str(length), VIP)
        assert proc.stdout is not None and proc.stdin is not None
        assert json.loads(proc.stdout.readline()) == {"established": True}
        wait_for("the VIP installed", lambda: hops(rtr, VIP) == [s4])
        assert router.peer(s4)["graceful_restart"] == 120
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        got = result(proc)
        # ROUTE-REFRESH Message Error / Invalid Message Length (RFC 7313 §5), data cut to fit
        assert got["notifications"] == [[7, 1, length - 21]], got
        assert got["how"] in ("closed", "reset"), got
        # not a transport loss: the routes are purged at once, not kept for Graceful Restart
        wait_for("the VIP purged", lambda: hops(rtr, VIP) == [], 10)
        assert "Fatal error" not in router.log_text()
        assert "keeping 1 stale route" not in router.log_text()
        assert router.try_status() is not None
    finally:
        stop_router(router)


def test_hostile_connects_leave_established_session_alone(topo, tmp_path) -> None:
    rtr, (s1,) = build(topo, 1)
    router = RouterProc(rtr, tmp_path, router_config(ranges(GR_RANGES)))
    router.start()
    r4, s4, _, _ = server_addrs(1)
    sp = speaker(s1, 1, tmp_path)
    old: SpeakerProcess | None = sp
    new: SpeakerProcess | None = None
    try:
        sp.send(announce=VIP)
        established(sp)
        wait_for("the VIP installed", lambda: hops(rtr, VIP) == [s4])
        t0, uptime0 = time.monotonic(), router.peer(s4)["uptime"]

        def same_session() -> bool:  # the uptime kept growing since t0
            peer = router.peer(s4)
            assert peer is not None
            return (
                bool(peer["established"])
                and peer["uptime"] >= uptime0 + (time.monotonic() - t0) - 1.5
            )

        before = len(sp.events)

        # 1. bare connect: no OPEN, closed by open_timeout (Hold Timer Expired)
        bare = result(client(s1, "bare", r4))
        assert bare["notifications"] == [[4, 0, 0]], bare
        assert OPEN_TIMEOUT - 0.5 <= bare["after"] <= OPEN_TIMEOUT + 5, bare
        # 2. garbage: Message Header Error / Connection Not Synchronized on that connection only
        garbage = result(client(s1, "garbage", r4))
        assert garbage["notifications"] == [[1, 1, 0]], garbage
        # 3. only an OPEN with the wrong AS: Bad Peer AS on that connection only
        wrong = result(client(s1, "open", r4, "-", "65099"))
        assert [n[:2] for n in wrong["notifications"]] == [[2, 2]], wrong
        # the neighbor's session and route were never touched
        assert hops(rtr, VIP) == [s4]
        assert not [e for e in sp.events[before:] if e.get("event") in ("down", "state")]
        assert same_session(), router.peer(s4)
        assert "extra connection closed before a valid OPEN" in router.log_text()

        # 4. a real restart: the old process frozen (its connection stays up), a new one
        # connects with a valid OPEN: it replaces the session; the route never goes away.
        os.kill(sp.proc.pid, signal.SIGSTOP)
        new = speaker(s1, 1, tmp_path, name="-restarted")
        new.send(announce=VIP)
        deadline = time.monotonic() + 20
        while not [e for e in new.events if e.get("event") == "established"]:
            assert hops(rtr, VIP) == [s4], "the route went away during the restart"
            assert time.monotonic() < deadline, "the restarted speaker never got Established"
            new._drain(0.05)
        assert "replaces the Established session" in router.log_text()
        wait_for("End-of-RIB from the new session", lambda: not stale(router), 15)
        assert hops(rtr, VIP) == [s4]
        assert not same_session()
    finally:
        for p in (old, new):
            if p is not None:
                if p.proc.poll() is None:
                    p.proc.kill()  # works on a stopped process too
                    p.proc.wait(5)
                p.stop()  # closes its pipes and log
        stop_router(router)


LIMIT_RANGES = """
[[peer_ranges]]
prefix = "192.0.2.8/29"
asn = 65001
max_sessions = 1
accept = ["198.51.100.0/24 le 32"]

[[peer_ranges]]
prefix = "192.0.2.16/29"
asn = 65001
ttl_security = true
accept = ["198.51.100.0/24 le 32"]

[[peer_ranges]]
prefix = "192.0.2.24/29"
asn = 65001
accept = ["198.51.100.0/24 le 32"]
"""


def test_half_open_max_sessions_and_ttl_security(topo, tmp_path) -> None:
    rtr, (s1, s2, s3) = build(topo, 3)
    s1.exec("ip", "addr", "add", "192.0.2.11/29", "dev", "uplink")
    router = RouterProc(rtr, tmp_path, router_config(ranges(LIMIT_RANGES)))
    router.start()
    r1, a1, _, _ = server_addrs(1)
    r2, a2, _, _ = server_addrs(2)
    r3, a3, _, _ = server_addrs(3)
    procs: list[SpeakerProcess] = []
    try:
        # half-open: a connection without OPEN from a new address is closed after open_timeout
        half = result(client(s3, "bare", r3))
        assert half["notifications"] == [[4, 0, 0]] and half["how"] in ("closed", "reset"), half
        assert OPEN_TIMEOUT - 0.5 <= half["after"] <= OPEN_TIMEOUT + 5, half

        # max_sessions = 1: a second neighbor in the range is refused at once (no OPEN sent)
        first = speaker(s1, 1, tmp_path)
        procs.append(first)
        established(first)
        second = result(client(s1, "open", r1, "192.0.2.11"))
        assert second["types"] == [] and second["how"] in ("closed", "reset"), second
        assert second["after"] < OPEN_TIMEOUT, second
        wait_for("the max_sessions log line", lambda: "max_sessions=1" in router.log_text())
        assert router.peer("192.0.2.11") is None

        # ttl_security: TTL 255 accepted (and we send 255), TTL 64 refused in the same range
        gtsm = speaker(s2, 2, tmp_path, "--ttl-security")
        procs.append(gtsm)
        established(gtsm)
        low = result(client(s2, "open", r2, "-", "65001", "64"))
        assert low["types"] == [] and low["how"] in ("closed", "reset"), low
        wait_for("the GTSM log line", lambda: "arrived with TTL 64" in router.log_text())
        # ... while the range without ttl_security accepts a TTL 64 peer
        plain = speaker(s3, 3, tmp_path)
        procs.append(plain)
        established(plain)
        assert router.peer(a2)["established"] and router.peer(a3)["established"]
        assert router.peer(a1)["established"]
    finally:
        for p in procs:
            p.stop()
        stop_router(router)
