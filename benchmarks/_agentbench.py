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
from wirecapture import Capture, _tshark  # noqa: E402

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
    lab: AgentLab,
    s1: Server,
    s2: Server,
    pcap: Path,
    wait: float,
    fail: Callable[[], None] | None = None,
) -> tuple[float | None, float | None]:
    """Kill s1's HTTP server (SIGKILL, t0) — or call ``fail()`` instead (t0 just before) — and
    wait until only s2 is a nexthop; return (ms to s1's withdrawal UPDATE on the router's
    interface, ms to the router's kernel route change), each None when it was not seen."""
    monitor = lab.router.popen(
        "ip", "-ts", "monitor", "route", stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    time.sleep(0.2)
    with Capture(lab.router, "eth-s1", pcap):
        t0 = time.time()
        if fail is not None:
            fail()
        else:
            assert s1.http is not None
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


# -- client load (agent_vs_exabgp.py --detection) ---------------------------------------------

CLIENT4 = ("203.0.113.1/30", "203.0.113.2/30")  # router, client
WEB_PORT = 80  # bgplb.lab.probes.fetch asks port 80


def add_client(lab: AgentLab) -> Any:
    """A client namespace behind the router (203.0.113.2), L4 multipath hashing on the router,
    default routes on the servers (their answers to the client); returns the client Namespace."""
    client = lab.topo.add("cl")
    lab.topo.link(lab.router, client, [CLIENT4[0]], [CLIENT4[1]], "eth-cl", "eth-rt")
    client.exec("ip", "route", "add", "default", "via", CLIENT4[0].split("/")[0])
    lab.router.sysctl("net.ipv4.fib_multipath_hash_policy", 1)
    for s in lab.servers:
        s.ns.exec("ip", "route", "add", "default", "via", s.router)
    return client


def start_web(server: Server, index: int, vip: str) -> None:
    """`bgplb.lab.webserver` (one process; "Welcome to nginx <index> !") on port 80 of every
    address, its pid in workdir/http.pid; the VIP put on lo by hand (an ExaBGP speaker does not
    manage it; the agent finds it there and leaves it)."""
    server.http_port = WEB_PORT
    if "inet " + vip.split("/")[0] not in server.ns.exec("ip", "-4", "addr", "show", "dev", "lo"):
        server.ns.exec("ip", "addr", "add", vip, "dev", "lo")
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    server.http = server.ns.popen(
        sys.executable, "-m", "bgplb.lab.webserver", "--index", str(index),
        "--port", str(WEB_PORT), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    server.procs.append(server.http)
    (server.workdir / "http.pid").write_text(f"{server.http.pid}\n")
    for _ in range(200):  # bounded: 10 s
        if f":{WEB_PORT} " in server.ns.exec("ss", "-Htln"):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{server.name}: web server not listening")


def kill_under_load(
    lab: AgentLab,
    s1: Server,
    s2: Server,
    client_loop: Any,
    pcap: Path,
    *,
    wait: float,
    phase: float,
    rate: float,
    count: int,
    vip: str,
) -> tuple[float | None, float | None, int, int]:
    """Fresh requests from the client at `rate`/s (`count` of them, 1 s timeout each); 0.5 s +
    `phase` in, s1's web server is SIGKILLed (time_http_kill). Returns (wire ms, fib ms, failed
    requests, requests sent)."""
    from bgplb.lab.probes import Stream

    duration = count / rate
    t0 = time.monotonic()
    stream = Stream(client_loop, vip.split("/")[0], interval=1.0 / rate, timeout=1.0,
                    max_time=duration)  # fmt: skip
    time.sleep(0.5 + phase)
    wire, fib = time_http_kill(lab, s1, s2, pcap, wait)
    left = t0 + duration - time.monotonic()
    if left > 0:
        time.sleep(left)
    answers = stream.stop()
    return wire, fib, sum(1 for a in answers if a.server is None), len(answers)
