"""BFD against forged packets, in namespaces, with real sockets and the kernel's TTL handling.

"left" (192.0.2.1) and "right" (192.0.2.2) each run a BfdService in a child process (the
_SERVICE script below) that writes its sessions and drop counters to a JSON file every 50 ms.
The forger runs inside "right", so its packets come from the real peer's address:

* a Down with Your Discriminator 0 sent to an Up single-hop session is discarded (RFC 5880
  §6.3): the session stays Up;
* a multihop (RFC 5883, port 4784) packet that arrives with TTL 1 is dropped (minimum 254 by
  default); the same packet with TTL 255 is accepted, so the path itself works.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bgplb.lab.netns import Namespace

pytestmark = [pytest.mark.interop, pytest.mark.serial]  # "stays Up" under real BFD timers

_SERVICE = r"""
import asyncio, json, os, sys
from bgplb.io.bfd import BfdService

async def main():
    out, requests = sys.argv[1], json.loads(sys.argv[2])
    svc = BfdService()
    downs = {}
    for r in requests:
        mh = r["multihop"]
        downs[mh] = 0
        def note(state, diag, mh=mh):
            if state.name == "DOWN":
                downs[mh] += 1
        svc.request(r["peer"], r["local"], mh, 100, 3, note)
    deadline = asyncio.get_running_loop().time() + 60
    while asyncio.get_running_loop().time() < deadline:
        status = {
            "sessions": [
                {"peer": i.peer, "multihop": i.multihop, "state": i.state.name,
                 "remote_state": i.remote_state.name, "discr": i.local_discriminator,
                 "received": i.packets_received, "downs": downs[i.multihop]}
                for i in svc.sessions()
            ],
            "dropped": dict(svc.dropped),
        }
        with open(out + ".tmp", "w") as f:
            json.dump(status, f)
        os.replace(out + ".tmp", out)
        await asyncio.sleep(0.05)
    svc.close()

asyncio.run(main())
"""

_FORGE = r"""
import socket, sys
from bgplb.bfd import ControlPacket, State, encode_packet
dst, state = sys.argv[1], sys.argv[4]
port, ttl, your = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[5])
pkt = ControlPacket(state=State[state], my_discriminator=0x5EED, your_discriminator=your,
                    detect_mult=3, desired_min_tx_interval=1_000_000,
                    required_min_rx_interval=100_000)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("192.0.2.2", 0))
s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
for _ in range(3):
    s.sendto(encode_packet(pkt), (dst, port))
"""


class _Service:
    def __init__(self, ns: Namespace, out: Path, requests: list[dict[str, Any]]) -> None:
        self.out = out
        self.proc = ns.popen(
            sys.executable,
            "-c",
            _SERVICE,
            str(out),
            json.dumps(requests),
            stderr=subprocess.PIPE,
        )

    def status(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.out.read_text()))
        except (OSError, ValueError):
            return {"sessions": [], "dropped": {}}

    def session(self, multihop: bool) -> dict[str, Any]:
        return next((s for s in self.status()["sessions"] if s["multihop"] == multihop), {})

    def wait(self, what: str, pred: Any, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise AssertionError(f"BFD service exited: {err}")
            if time.monotonic() > deadline:
                status = self.status()
                self.proc.kill()  # its stderr tells why (a traceback of the BFD thread?)
                err = self.proc.communicate(timeout=10)[1] if self.proc.stderr else b""
                raise AssertionError(
                    f"timed out waiting for {what}: {status}; stderr: {err.decode()[-2000:]}"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


def _forge(ns: Namespace, port: int, ttl: int, state: str, your: int) -> None:
    ns.exec(sys.executable, "-c", _FORGE, "192.0.2.1", str(port), str(ttl), state, str(your))


def test_forged_packets_from_the_peer_address(topo: Any, tmp_path: Path) -> None:
    left, right = topo.add("left"), topo.add("right")
    topo.link(left, right, ["192.0.2.1/24"], ["192.0.2.2/24"], "eth-right", "eth-left")
    ours = _Service(
        left,
        tmp_path / "left.json",
        [
            {"peer": "192.0.2.2", "local": "192.0.2.1", "multihop": False},
            {"peer": "192.0.2.2", "local": "192.0.2.1", "multihop": True},
        ],
    )
    peer = _Service(
        right,
        tmp_path / "right.json",
        [{"peer": "192.0.2.1", "local": "192.0.2.2", "multihop": False}],
    )
    try:
        ours.wait("single hop Up", lambda: ours.session(False).get("state") == "UP")
        ours.wait("multihop session", lambda: bool(ours.session(True)))
        # 1. A forged Down with Your Discriminator 0, TTL 255, from the peer's address.
        _forge(right, 3784, 255, "DOWN", 0)
        time.sleep(0.5)  # > detection time (3 x 100 ms): a flap would have happened by now
        assert ours.session(False)["state"] == "UP", ours.status()
        assert ours.session(False)["downs"] == 0, ours.status()
        assert peer.session(False)["downs"] == 0, peer.status()
        assert ours.status()["dropped"].get("session_discard", 0) >= 3, ours.status()
        # 2. Multihop: TTL 1 dropped (default minimum 254), session stays Down ...
        assert ours.session(True)["state"] == "DOWN"
        _forge(right, 4784, 1, "DOWN", 0)
        ours.wait("TTL 1 dropped", lambda: ours.status()["dropped"].get("ttl", 0) >= 3)
        assert ours.session(True)["state"] == "DOWN" and ours.session(True)["received"] == 0
        # ... while TTL 255 on the same path is accepted (Down -> Init).
        _forge(right, 4784, 255, "DOWN", 0)
        ours.wait("TTL 255 accepted", lambda: ours.session(True).get("received", 0) >= 1)
    finally:
        ours.stop()
        peer.stop()
