"""Agent failover time and idle cost, in network namespaces against BIRD 2 as the router.

Failover (median of --runs): two servers announce one VIP; the checked HTTP server of s1 is
killed (SIGKILL, t0) and we time

* t_wire: the withdrawal UPDATE arriving on the router's interface (tcpdump, frame time);
* t_fib:  the router's kernel route losing s1's nexthop (`ip -ts monitor route` in the router).

with check interval --interval-ms and fall --fall (defaults 100 ms / 2). Expect roughly
fall x interval (+ the probe that sees the failure) for the detection, then ~1 ms to the wire.

Idle cost: s1 runs 10 services (10 VIPs, 10 http checks at 1 s) and 2 peers (the router's IPv4
and IPv6 addresses); after --idle-seconds we report its RSS and CPU%.

Usage (root): .venv/bin/python benchmarks/agent_failover.py [--runs 5] [--interval-ms 100]
       [--fall 2] [--idle-seconds 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "interop"))

from agent_lab import build_lab, wait_for  # noqa: E402

from _agentbench import daemons_factory, time_http_kill  # noqa: E402
from bgplb.lab.netns import Topology  # noqa: E402
from bgplb.lab.peers import Bird  # noqa: E402


def failover(args: argparse.Namespace) -> None:
    wire, fib = [], []
    workdir = Path(tempfile.mkdtemp(prefix="bgplb-bench-"))
    made: list[Bird] = []
    with Topology(prefix="bench") as topo:
        lab = build_lab(topo, daemons_factory(workdir, made))
        try:
            lab.bird.start()
            for s in lab.servers:
                s.write_config(
                    s.service(
                        interval=f"{args.interval_ms}ms",
                        timeout=f"{args.interval_ms // 2}ms",
                        fall=args.fall,
                        rise=2,
                    )
                )
                s.start_http()
                s.start_agent()
            s1, s2 = lab.servers
            for run in range(args.runs):
                lab.wait_nexthops([s1.address, s2.address], timeout=30)
                time.sleep(0.5)
                pcap = workdir / f"run{run}.pcap"
                w, f = time_http_kill(lab, s1, s2, pcap, wait=10)
                if w is not None:
                    wire.append(w)
                if f is not None:
                    fib.append(f)
                s1.start_http()
        finally:
            lab.close()
            for d in made:
                d.stop()
    print(f"failover, check interval {args.interval_ms} ms, fall {args.fall}, {args.runs} runs")
    for name, values in (
        ("check fails -> withdrawal at router", wire),
        ("-> kernel nexthop gone", fib),
    ):
        if values:
            print(
                f"  {name}: median {statistics.median(values):.1f} ms "
                f"(min {min(values):.1f}, max {max(values):.1f}, n={len(values)})"
            )


def idle(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="bgplb-bench-"))
    made: list[Bird] = []
    with Topology(prefix="bench") as topo:
        lab = build_lab(topo, daemons_factory(workdir, made))
        try:
            s1 = lab.servers[0]
            lab.bird.add_neighbor(s1.address6, 65000, passive=True)
            lab.bird.start()
            services = "".join(
                s1.service(f"svc{i}", (f"198.51.100.{100 + i}/32",), interval="1s")
                for i in range(10)
            )
            s1.peer_extra = f'\n[[peers]]\naddress = "{s1.router6}"\nasn = 65530\n'
            s1.write_config(services)
            s1.start_http()
            s1.start_agent()
            wait_for(
                lambda: (
                    all(p["state"] == "Established" for p in s1.status()["peers"])
                    and all(s["status"] == "announced" for s in s1.status()["services"])
                ),
                30,
                "2 peers up, 10 services announced",
            )
            assert s1.agent is not None
            pid = s1.agent.pid
            tick = os.sysconf("SC_CLK_TCK")

            def cpu() -> float:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                return (int(fields[11]) + int(fields[12])) / tick

            c0, t0 = cpu(), time.monotonic()
            time.sleep(args.idle_seconds)
            c1, t1 = cpu(), time.monotonic()
            rss = next(
                line.split()[1]
                for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                if line.startswith("VmRSS")
            )
            print(
                f"idle agent, 2 peers, 10 services (10 http checks at 1 s), {args.idle_seconds} s:"
            )
            print(
                f"  RSS {int(rss) / 1024:.1f} MiB, "
                f"CPU {100 * (c1 - c0) / (t1 - t0):.2f} % of a core"
            )
        finally:
            lab.close()
            for d in made:
                d.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--interval-ms", type=int, default=100)
    parser.add_argument("--fall", type=int, default=2)
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument("--skip-idle", action="store_true")
    args = parser.parse_args()
    failover(args)
    if not args.skip_idle:
        idle(args)


if __name__ == "__main__":
    main()
