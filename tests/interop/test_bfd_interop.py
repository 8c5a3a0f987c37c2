"""bgplb's BFD service against BIRD 2 and FRR bfdd in network namespaces (RFC 5880, 5881).

Topology: namespace "us" (bgplb, 192.0.2.1/30, 2001:db8::1/64) -- veth -- namespace "peer"
(the daemon, 192.0.2.2/30, 2001:db8::2/64). bgplb runs in a child process inside "us" (the
`_RUNNER` below) and prints every state change as a JSON line.

For each daemon, IPv4 and IPv6 sessions at 100 ms x 3: both sides Up; then all of "us"'s
traffic is dropped with nftables (input and output hooks, early priority) -> both sides go Down
with diag Control Detection Time Expired (the daemon's diag is read from its own packets in a
capture for BIRD, whose CLI does not show it, and from `show bfd peers json` for FRR); the drop
is removed -> both sides Up again. Waits are polls bounded in time; nothing asserts on speed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bgplb.lab.netns import Namespace, Topology
from bgplb.lab.wait import wait_until
from prerequisites import require_binary

pytestmark = [pytest.mark.interop, pytest.mark.serial]  # BFD detection at 100 ms x 3

US4, PEER4 = "192.0.2.1", "192.0.2.2"
US6, PEER6 = "2001:db8::1", "2001:db8::2"

_RUNNER = r"""
import asyncio, json, signal, sys
from bgplb.io.bfd import BfdService

async def main():
    svc = BfdService()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    handles = []
    for peer, local in json.loads(sys.argv[1]):
        def note(state, diag, peer=peer):
            print(json.dumps({"peer": peer, "state": state.name, "diag": diag.name}), flush=True)
        handles.append(svc.request(peer, local, False, 100, 3, note))
    print(json.dumps({"ready": True}), flush=True)
    await stop.wait()
    svc.close()

asyncio.run(main())
"""


class Bgplb:
    """The bgplb BFD service in a child process inside a namespace; records state changes."""

    def __init__(self, ns: Namespace, sessions: list[tuple[str, str]]) -> None:
        self.lines: list[dict[str, str]] = []
        self.proc = ns.popen(
            sys.executable,
            "-c",
            _RUNNER,
            json.dumps(sessions),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.append(json.loads(raw))

    def state(self, peer: str) -> tuple[str, str] | None:
        for line in reversed(self.lines):
            if line.get("peer") == peer:
                return line["state"], line["diag"]
        return None

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        assert self.proc.stderr is not None and self.proc.stdout is not None
        err = self.proc.stderr.read().decode(errors="replace")
        self._reader.join(timeout=5)
        self.proc.stderr.close()
        self.proc.stdout.close()
        return err


def wait_for(what: str, pred: Callable[[], bool], timeout: float = 30.0) -> None:
    wait_until(pred, timeout, what, step=0.2)


def block(ns: Namespace) -> None:
    """Drop everything in and out of the namespace, before any other hook sees it."""
    ns.exec("nft", "add", "table", "inet", "bfdblock")
    for chain, hook in (("in", "input"), ("out", "output")):
        spec = f"{{ type filter hook {hook} priority -400; policy drop; }}"
        ns.exec("nft", "add", "chain", "inet", "bfdblock", chain, spec)


def unblock(ns: Namespace) -> None:
    ns.exec("nft", "delete", "table", "inet", "bfdblock")


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def pair(topo: Topology) -> tuple[Namespace, Namespace]:
    require_binary("nft")
    us, peer = topo.add("us"), topo.add("peer")
    topo.link(us, peer, [f"{US4}/30", f"{US6}/64"], [f"{PEER4}/30", f"{PEER6}/64"])
    return us, peer


def check_cycle(
    us: Namespace,
    bgplb: Bgplb,
    peer_state: Callable[[str], str | None],
    peer_down_diag: Callable[[str], str | None],
    expected_peer_diag: str,
) -> None:
    """Up on both sides; block -> Down with detection expiry on both; unblock -> Up again."""
    peers = {US4: PEER4, US6: PEER6}  # daemon's view of us -> our view of the daemon
    for mine, theirs in peers.items():
        wait_for(f"daemon sees {mine} Up", lambda m=mine: peer_state(m) == "up")
        wait_for(
            f"bgplb sees {theirs} Up", lambda t=theirs: bgplb.state(t) == ("UP", "NO_DIAGNOSTIC")
        )
    block(us)
    try:
        for mine, theirs in peers.items():
            wait_for(f"daemon sees {mine} Down", lambda m=mine: peer_state(m) == "down")
            wait_for(
                f"bgplb sees {theirs} Down (detection time expired)",
                lambda t=theirs: bgplb.state(t) == ("DOWN", "CONTROL_DETECTION_TIME_EXPIRED"),
            )
            wait_for(
                f"daemon's diag for {mine} is {expected_peer_diag}",
                lambda m=mine: peer_down_diag(m) == expected_peer_diag,
            )
    finally:
        unblock(us)
    for mine, theirs in peers.items():
        wait_for(f"daemon sees {mine} Up again", lambda m=mine: peer_state(m) == "up")
        wait_for(
            f"bgplb sees {theirs} Up again",
            lambda t=theirs: bgplb.state(t) == ("UP", "NO_DIAGNOSTIC"),
        )


# --------------------------------------------------------------------------- BIRD 2

BIRD_CONF = """
router id 192.0.2.2;
protocol device {{ scan time 1; }}
protocol bfd bfd1 {{
  interface "*" {{ min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }};
  neighbor {us4};
  neighbor {us6};
}}
"""


@pytest.fixture
def bird(pair: tuple[Namespace, Namespace]) -> Iterator[tuple[Namespace, str]]:
    require_binary("/usr/sbin/bird")
    require_binary("birdc")
    _, peer = pair
    workdir = tempfile.mkdtemp(prefix="bgplb-bird-")
    conf, sock = Path(workdir, "bird.conf"), str(Path(workdir, "bird.ctl"))
    conf.write_text(BIRD_CONF.format(us4=US4, us6=US6))
    proc = peer.popen(
        "/usr/sbin/bird", "-f", "-c", str(conf), "-s", sock, stderr=subprocess.DEVNULL
    )
    try:
        yield peer, sock
    finally:
        stop_process(proc)
        shutil.rmtree(workdir, ignore_errors=True)


class Capture:
    """tcpdump in the daemon's namespace; `down_diags(src)` lists diag of its Down packets."""

    def __init__(self, ns: Namespace, iface: str) -> None:
        self.ns = ns
        self.dir = tempfile.mkdtemp(prefix="bgplb-pcap-")
        self.path = str(Path(self.dir, "bfd.pcap"))
        self.proc = ns.popen(
            "tcpdump", "-U", "-n", "-i", iface, "-w", self.path, "udp port 3784",
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(1.0)  # let tcpdump open the interface

    def down_diag(self, src: str) -> str | None:
        field = "ipv6.src" if ":" in src else "ip.src"
        out = subprocess.run(
            ["tshark", "-r", self.path, "-Y", f"{field} == {src} && bfd.sta == 1",
             "-T", "fields", "-e", "bfd.diag"],
            capture_output=True, text=True, timeout=30,
        ).stdout.split()  # fmt: skip
        return {"0x01": "control detection time expired"}.get(out[-1], out[-1]) if out else None

    def close(self) -> None:
        stop_process(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


def test_bird_bfd_up_detection_and_recovery(
    pair: tuple[Namespace, Namespace], bird: tuple[Namespace, str]
) -> None:
    require_binary("tcpdump")
    require_binary("tshark")
    us, _ = pair
    peer, sock = bird

    def bird_state(addr: str) -> str | None:
        out = peer.exec("birdc", "-s", sock, "show", "bfd", "sessions", check=False)
        for line in out.splitlines():
            cols = line.split()
            if cols and cols[0] == addr and len(cols) >= 3:
                return cols[2].lower()
        return None

    capture = Capture(peer, "to-us")
    bgplb = Bgplb(us, [(PEER4, US4), (PEER6, US6)])
    try:
        # BIRD's "show bfd sessions" has no diag column: read it from BIRD's Down packets.
        check_cycle(
            us,
            bgplb,
            bird_state,
            lambda mine: capture.down_diag(PEER6 if ":" in mine else PEER4),
            "control detection time expired",
        )
    finally:
        err = bgplb.stop()
        capture.close()
    assert "Traceback" not in err, err


# --------------------------------------------------------------------------- FRR bfdd


@pytest.fixture
def frr(pair: tuple[Namespace, Namespace]) -> Iterator[tuple[Namespace, str]]:
    bfdd = require_binary("/usr/lib/frr/bfdd")
    require_binary("vtysh")
    _, peer = pair
    workdir = tempfile.mkdtemp(prefix="bgplb-frr-")
    shutil.chown(workdir, "frr", "frr")
    os.chmod(workdir, 0o755)
    proc = peer.popen(
        bfdd, "-u", "frr", "-g", "frr", "--vty_socket", workdir, "-i", f"{workdir}/bfdd.pid",
        "--bfdctl", f"{workdir}/bfdd.sock", "-z", f"{workdir}/zserv.api", "--log", "stdout",
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield peer, workdir
    finally:
        stop_process(proc)
        shutil.rmtree(workdir, ignore_errors=True)


def test_frr_bfdd_up_detection_and_recovery(
    pair: tuple[Namespace, Namespace], frr: tuple[Namespace, str]
) -> None:
    us, _ = pair
    peer, vty = frr

    def vtysh(*cmds: str) -> str:
        args = ["vtysh", "--vty_socket", vty]
        for c in cmds:
            args += ["-c", c]
        return peer.exec(*args, check=False)

    def peers_json() -> list[dict[str, object]]:
        try:
            data = json.loads(vtysh("show bfd peers json") or "[]")
        except json.JSONDecodeError:
            return []
        return data if isinstance(data, list) else []

    def frr_peer(addr: str) -> dict[str, object] | None:
        return next((p for p in peers_json() if p.get("peer") == addr), None)

    wait_for("bfdd answers on its vty", lambda: "frr version" in vtysh("show running-config"))
    for mine, local in ((US4, PEER4), (US6, PEER6)):
        vtysh(
            "configure terminal", "bfd", f"peer {mine} local-address {local}",
            "receive-interval 100", "transmit-interval 100", "detect-multiplier 3", "no shutdown",
        )  # fmt: skip
    bgplb = Bgplb(us, [(PEER4, US4), (PEER6, US6)])
    try:
        check_cycle(
            us,
            bgplb,
            lambda mine: str((frr_peer(mine) or {}).get("status")),
            lambda mine: str((frr_peer(mine) or {}).get("diagnostic")),
            "control detection time expired",
        )
    finally:
        err = bgplb.stop()
    assert "Traceback" not in err, err
