"""How soon a failure is noticed: event-driven checks (process, listen, systemd) against polling.

Part 1, in-process (no root needed for process and systemd; listen's notifications need
CAP_NET_ADMIN): a CheckRunner with one check at ``interval = "1h"`` (so only the event can wake
it) and we time, on the event loop's clock, the failure (t0: just before the kill / close /
state change) to the CheckEvent delivered to the callback:

* process: ``sleep`` spawned, its pid in a pidfile; SIGKILL;
* listen:  a TCP listener of this process closed;
* systemd: a private ``dbus-daemon --session`` with a fake org.freedesktop.systemd1 (the one of
  tests/unit/health/test_systemd_check.py); the unit's ActiveState set to ``deactivating``.

Part 2, on the wire (root, BIRD 2; ``--wire``): the agent lab of agent_failover.py (BIRD 2
router, two servers). s1's checked HTTP server is killed (SIGKILL, t0); we time its withdrawal
UPDATE on the router's interface and the router's kernel route losing the nexthop, for one check
per run, side by side in the same run: ``http`` at --interval-ms / fall 2 (the polled baseline),
``process`` (the HTTP server's pid in a pidfile) and ``listen`` (its port). For ``systemd`` the
failure is the unit's ActiveState turning ``failed`` (t0) on the fake systemd of the tests,
served on a private bus that the real agent in s1's namespace watches.

The same kill under client load, with failed requests counted and ExaBGP's healthcheck side
by side: ``benchmarks/agent_vs_exabgp.py --detection``.

Usage: .venv/bin/python benchmarks/check_latency.py [--runs 20] [--wire] [--wire-runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "interop"))
sys.path.insert(0, str(ROOT / "tests" / "unit" / "health"))

from pydantic import TypeAdapter  # noqa: E402

from bgplb.config import CheckConfig  # noqa: E402
from bgplb.health import CheckEvent, CheckRunner  # noqa: E402

_ADAPTER: TypeAdapter[Any] = TypeAdapter(CheckConfig)


def _check(**kw: Any) -> Any:
    return _ADAPTER.validate_python({"interval": "1h", "rise": 1, "damping": False, **kw})


async def _one(check: Any, fail: Callable[[], Awaitable[None] | None]) -> float:
    """ms from fail() to the down CheckEvent (bounded waits)."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[tuple[float, CheckEvent]] = asyncio.Queue()
    runner = CheckRunner(lambda e: events.put_nowait((loop.time(), e)))
    runner.add("c", check)
    async with runner:
        _, up = await asyncio.wait_for(events.get(), 5)
        assert up.transition.up, up
        t0 = loop.time()
        result = fail()
        if result is not None:
            await result
        at, down = await asyncio.wait_for(events.get(), 5)
        assert not down.transition.up, down
    return (at - t0) * 1000


async def bench_process(runs: int, workdir: Path) -> list[float]:
    out = []
    pidfile = workdir / "sleep.pid"
    for _ in range(runs):
        proc = subprocess.Popen(["sleep", "60"])
        pidfile.write_text(f"{proc.pid}\n")
        try:
            out.append(await _one(_check(type="process", pidfile=str(pidfile)), proc.kill))
        finally:
            proc.kill()
            proc.wait(5)
        pidfile.unlink()
    return out


async def bench_listen(runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        try:
            out.append(await _one(_check(type="listen", port=port), sock.close))
        finally:
            sock.close()
    return out


async def bench_systemd(runs: int) -> list[float]:
    from test_systemd_check import serve  # the fake systemd of the unit tests

    daemon = subprocess.Popen(
        ["dbus-daemon", "--session", "--nofork", "--print-address=1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    out = []
    try:
        assert daemon.stdout is not None
        address = daemon.stdout.readline().strip()
        for _ in range(runs):
            service, unit = await serve(address)
            check = _check(type="systemd", unit="nginx.service", bus=address)
            try:
                out.append(await _one(check, lambda u=unit: u.set("deactivating")))
            finally:
                service.disconnect()
    finally:
        daemon.kill()  # by PID
        daemon.wait(5)
        if daemon.stdout is not None:
            daemon.stdout.close()
    return out


def summary(name: str, values: list[float]) -> str:
    if not values:
        return f"  {name}: no sample"
    return (
        f"  {name}: median {statistics.median(values):.2f} ms, min {min(values):.2f}, "
        f"max {max(values):.2f} ({len(values)} runs)"
    )


def in_process(runs: int) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="bgplb-checklat-"))
    print("failure -> CheckEvent in the same process (interval 1h: only the event wakes)")
    print(summary("process (SIGKILL, pidfd)", asyncio.run(bench_process(runs, workdir))))
    if os.geteuid() == 0:
        print(summary("listen (close, destroy notification)", asyncio.run(bench_listen(runs))))
    else:
        print("  listen: skipped (the destroy notifications need CAP_NET_ADMIN)")
    print(summary("systemd (ActiveState deactivating)", asyncio.run(bench_systemd(runs))))


# -- on the wire, with the real agent -----------------------------------------------------------


def _services(kind: str, s: Any, interval_ms: int, bus: str = "") -> str:
    head = """
[[services]]
name = "web"
vips = ["198.51.100.10/32"]
drain_time = "2s"
drain_vip_linger = "0s"

[[services.checks]]
rise = 1
damping = false
"""
    if kind == "http":
        return head + (
            f'type = "http"\nurl = "http://127.0.0.1:{s.http_port}/"\n'
            f'interval = "{interval_ms}ms"\ntimeout = "{interval_ms // 2}ms"\nfall = 2\n'
        )
    if kind == "process":
        return head + f'type = "process"\npidfile = "{s.workdir / "http.pid"}"\n'
    if kind == "systemd":
        return head + f'type = "systemd"\nunit = "nginx.service"\nbus = "{bus}"\n'
    return head + f'type = "listen"\nport = {s.http_port}\n'


def on_the_wire(runs: int, interval_ms: int) -> None:
    from agent_lab import build_lab
    from fake_systemd import ThreadedSystemd, private_bus

    from _agentbench import daemons_factory, time_http_kill
    from bgplb.lab.netns import Topology
    from bgplb.lab.peers import Bird

    kinds = ("http", "process", "listen", "systemd")
    wire: dict[str, list[float]] = {k: [] for k in kinds}
    fib: dict[str, list[float]] = {k: [] for k in kinds}
    workdir = Path(tempfile.mkdtemp(prefix="bgplb-checklat-"))
    made: list[Bird] = []
    with Topology(prefix="chk") as topo, private_bus() as bus:
        lab = build_lab(topo, daemons_factory(workdir, made))
        systemd = ThreadedSystemd(bus)
        try:
            lab.bird.start()
            s1, s2 = lab.servers
            for s in lab.servers:
                s.start_http()
                (s.workdir / "http.pid").write_text(f"{s.http.pid}\n")  # type: ignore[union-attr]
            s2.write_config(_services("listen", s2, interval_ms))
            s2.start_agent()
            for run in range(runs):
                for kind in kinds:  # interleaved: the same load for every kind
                    if s1.agent is not None:
                        s1.stop()
                        s1.agent = None
                        s1.start_http()
                    (s1.workdir / "http.pid").write_text(f"{s1.http.pid}\n")  # type: ignore[union-attr]
                    systemd.set("active")
                    s1.write_config(_services(kind, s1, interval_ms, bus))
                    s1.start_agent()
                    lab.wait_nexthops([s1.address, s2.address], timeout=30)
                    time.sleep(0.3)
                    fail = (lambda: systemd.set("failed")) if kind == "systemd" else None
                    pcap = workdir / f"{kind}{run}.pcap"
                    w, f = time_http_kill(lab, s1, s2, pcap, wait=10, fail=fail)
                    if w is not None:
                        wire[kind].append(w)
                    if f is not None:
                        fib[kind].append(f)
        finally:
            systemd.close()
            lab.close()
            for d in made:
                d.stop()
    print(
        "HTTP server killed (systemd: unit failed) -> on the wire, real agent, BIRD 2 router"
        f" ({runs} runs each)"
    )
    for kind in kinds:
        label = f"http {interval_ms} ms fall 2" if kind == "http" else kind
        print(summary(f"{label}: withdrawal at the router", wire[kind]))
        print(summary(f"{label}: router kernel nexthop gone", fib[kind]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--wire", action="store_true", help="also on the wire (root, BIRD 2)")
    parser.add_argument("--wire-runs", type=int, default=5)
    parser.add_argument("--interval-ms", type=int, default=100, help="the http baseline")
    args = parser.parse_args()
    in_process(args.runs)
    if args.wire:
        on_the_wire(args.wire_runs, args.interval_ms)


if __name__ == "__main__":
    main()
