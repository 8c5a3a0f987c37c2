"""Shared pieces of the agent benchmarks (agent_failover.py, agent_vs_exabgp.py): the lab's
daemon factory and one timed failover (s1's checked HTTP server killed, withdrawal on the wire
and in the router's kernel).

The lab is tests/interop/agent_lab.py (BIRD 2 as the router, two servers).
"""

from __future__ import annotations

import datetime
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "interop"))

from agent_lab import AgentLab, Server  # noqa: E402

from bgplb.lab.capture import Capture, _tshark  # noqa: E402
from bgplb.lab.peers import Bird  # noqa: E402


def daemons_factory(workdir: Path, made: list[Bird]) -> Callable[..., Any]:
    """The `daemons` argument of build_lab: each daemon in its own directory, kept in `made`."""

    def make(cls: type[Bird], ns: Any, asn: int, router_id: str, **kw: Any) -> Bird:
        d = cls(ns, workdir / f"{cls.name}-{len(made)}", asn, router_id, **kw)
        made.append(d)
        return d

    return make


def ts(line: str) -> float:
    """Seconds since the epoch of an `ip -ts monitor` line ("[2025-01-01T12:00:00.123456] …")."""
    return datetime.datetime.fromisoformat(line[1 : line.index("]")]).timestamp()


def time_http_kill(
    lab: AgentLab, s1: Server, s2: Server, pcap: Path, wait: float
) -> tuple[float | None, float | None]:
    """Kill s1's HTTP server (SIGKILL, t0) and wait until only s2 is a nexthop; return
    (ms to s1's withdrawal UPDATE on the router's interface, ms to the router's kernel route
    change), each None when it was not seen."""
    monitor = lab.router.popen(
        "ip", "-ts", "monitor", "route", stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    time.sleep(0.2)
    with Capture(lab.router, "eth-s1", pcap):
        assert s1.http is not None
        t0 = time.time()
        s1.http.send_signal(signal.SIGKILL)
        s1.http.wait(5)
        s1.http = None
        lab.wait_nexthops([s2.address], timeout=wait)
        time.sleep(0.2)
    monitor.terminate()
    out = monitor.communicate(timeout=5)[0].decode()
    frames = _tshark(
        pcap, (179,), "-Y", f"ip.src == {s1.address} && bgp.withdrawn_prefix",
        "-T", "fields", "-e", "frame.time_epoch",
    ).split()  # fmt: skip
    changes = [ts(x) for x in out.splitlines() if x.startswith("[") and "198.51.100.10" in x]
    wire = (float(frames[0]) - t0) * 1000 if frames else None
    fib = (changes[0] - t0) * 1000 if changes else None
    return wire, fib
