"""Host death -> the router's kernel route loses the nexthop: BGP hold timer vs BFD, with
`bgplb router` and with BIRD 2 as the router, in the same run (network namespaces).

Two labs side by side (their own namespaces): router + two servers s1, s2, each running
`bgplb agent` announcing the same VIP. One "run": both paths installed (and, with BFD, the
router's BFD session with s1 Up for 1 s), then s1 dies: all its traffic dropped with nftables
(input and output hooks) and its agent SIGKILLed (t0) — no FIN, no NOTIFICATION can leave, as
for a crashed machine. We poll the router's kernel route (`ip route` / `ip nexthop`, about every
5 ms) until s1's nexthop is gone (t1). Reported: median, min, max of t1 - t0 over --runs runs.

Cases: BGP hold 3 s without BFD (keepalive 1 s), then BFD 300x3, 100x3, 50x3, 20x3 ms with
hold 9 s (so only BFD can be what fires). The bgplb router and agents run their BFD timers in
the BFD thread (bgplb.io.bfd_timing). Also reported ("s2 lost"): runs in which s2's nexthop,
whose host never dies, was missing from one of the polls — a false Down of s2's session.
BIRD's own BFD timers are set to the same interval/multiplier.
Also reported: the CPU of s1's agent over --cpu-seconds while BFD runs at 50 ms x 3 (the agent
has one peer, one service with an HTTP check every 1 s).

Usage (root): .venv/bin/python benchmarks/bfd_failover.py [--runs 5] [--cpu-seconds 10]
       [--routers bgplb,bird] [--cases hold3,300,100,50,20]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "interop"))

from agent_lab import ROUTER_AS, SERVER_AS, VIP4, Server, wait_for  # noqa: E402
from test_router_interop import RouterProc, router_config  # noqa: E402

from bgplb.lab.netns import NetnsError, Topology  # noqa: E402
from bgplb.lab.peers import Bird, kernel_routes  # noqa: E402


@dataclass(frozen=True)
class Case:
    name: str
    hold: int
    bfd: tuple[int, int] | None  # (interval_ms, multiplier)


CASES = {
    "hold3": Case("BGP hold 3 s, no BFD", 3, None),
    "300": Case("BFD 300 ms x 3 (hold 9 s)", 9, (300, 3)),
    "100": Case("BFD 100 ms x 3 (hold 9 s)", 9, (100, 3)),
    "50": Case("BFD 50 ms x 3 (hold 9 s)", 9, (50, 3)),
    "20": Case("BFD 20 ms x 3 (hold 9 s)", 9, (20, 3)),
}


class TunedBird(Bird):
    """BIRD whose `protocol bfd` uses the benchmark's timers instead of the lab's 100 ms x 3."""

    bfd_timers = (100, 3)

    def config_text(self) -> str:
        i, m = self.bfd_timers
        return self._fix(super().config_text(), i, m)

    @staticmethod
    def _fix(text: str, interval: int, mult: int) -> str:
        return re.sub(
            r"interval \d+ ms; multiplier \d+;", f"interval {interval} ms; multiplier {mult};", text
        )


class Lab:
    """Router namespace + s1, s2 (192.0.2.0/29 and 192.0.2.8/29 links)."""

    def __init__(self, kind: str, topo: Topology, workdir: Path) -> None:
        self.kind = kind
        self.workdir = workdir
        self.rt = topo.add("rt")
        self.rt.sysctl("net.ipv4.ip_forward", 1)
        self.servers: list[Server] = []
        for i in (1, 2):
            ns = topo.add(f"s{i}")
            base = 8 * (i - 1)
            topo.link(
                self.rt,
                ns,
                [f"192.0.2.{base + 1}/29"],
                [f"192.0.2.{base + 2}/29"],
                f"eth-s{i}",
                "eth-rt",
            )
            wd = workdir / f"s{i}"
            wd.mkdir(parents=True, exist_ok=True)
            self.servers.append(
                Server(
                    f"s{i}",
                    ns,
                    f"192.0.2.{base + 2}",
                    "2001:db8::2",
                    f"192.0.2.{base + 1}",
                    "2001:db8::1",
                    wd,
                    extra_config="graceful_restart = false",
                )
            )
        self.bird: TunedBird | None = None
        self.router: RouterProc | None = None

    # -- router -----------------------------------------------------------------------------

    def start_router(self, case: Case) -> None:
        self.stop_router()
        if self.kind == "bird":
            self.bird = TunedBird(self.rt, self.workdir / "bird", ROUTER_AS, "192.0.2.1")
            if case.bfd:
                self.bird.bfd_timers = case.bfd
            for s in self.servers:
                self.bird.add_neighbor(
                    s.address,
                    SERVER_AS,
                    passive=True,
                    hold_time=case.hold,
                    bfd=case.bfd is not None,
                    families=("ipv4",),
                )
            self.bird.start()
        else:
            bfd = (
                f"bfd = {{ interval_ms = {case.bfd[0]}, multiplier = {case.bfd[1]} }}"
                if case.bfd
                else ""
            )
            ranges = (
                f'[[peer_ranges]]\nprefix = "192.0.2.0/24"\nasn = {SERVER_AS}\n'
                f'accept = ["198.51.100.0/24 le 32"]\n{bfd}\n'
            )
            config = router_config(ranges, hold_time=case.hold, listen=("0.0.0.0",))
            wd = self.workdir / "router"
            wd.mkdir(exist_ok=True)
            self.router = RouterProc(self.rt, wd, config)
            self.router.start()

    def stop_router(self) -> None:
        if self.bird is not None:
            self.bird.stop()
            self.bird = None
        if self.router is not None and self.router.proc is not None:
            self.router.stop()
        self.router = None

    def router_bfd_up(self, address: str) -> bool:
        if self.bird is not None:
            out = self.bird.control("show", "bfd", "sessions")
            return any(address in line and " Up " in f" {line} " for line in out.splitlines())
        assert self.router is not None
        peer = self.router.peer(address) or {}
        return (peer.get("bfd") or {}).get("state") == "up"

    # -- servers ----------------------------------------------------------------------------

    def start_agent(self, s: Server, case: Case) -> None:
        bfd = (
            f"bfd = {{ interval_ms = {case.bfd[0]}, multiplier = {case.bfd[1]} }}"
            if case.bfd
            else ""
        )
        s.peer_extra = f"hold_time = {case.hold}\n{bfd}\n"
        s.write_config(s.service(interval="1s", timeout="500ms", rise=1, fall=2))
        if s.http is None:
            s.start_http()
        if s.socket.exists():
            s.socket.unlink()
        s.start_agent()

    def nexthops(self) -> list[str] | None:
        try:
            return kernel_routes(self.rt, VIP4)
        except NetnsError:  # changed between two reads
            return None

    def close(self) -> None:
        for s in self.servers:
            s.stop()
        self.stop_router()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_case(lab: Lab, case: Case, runs: int, cpu_window: float) -> dict[str, Any]:
    s1, s2 = lab.servers
    for s in lab.servers:
        s.stop()
        s.http = None
    lab.start_router(case)
    lab.start_agent(s2, case)
    times: list[float] = []
    false_downs = 0
    cpu: float | None = None
    for _ in range(runs):
        s1.ns.allow_all_traffic()
        lab.start_agent(s1, case)
        wait_for(lambda: lab.nexthops() == [s1.address, s2.address], 40, "both nexthops")
        if case.bfd:
            wait_for(lambda: lab.router_bfd_up(s1.address), 20, "router's BFD with s1 Up")
            time.sleep(1.0)  # the Poll Sequence to the fast rate is over
            if cpu is None and cpu_window > 0 and case.bfd[0] == 50:
                assert s1.agent is not None
                c0, w0 = cpu_seconds(s1.agent.pid), time.monotonic()
                time.sleep(cpu_window)
                cpu = 100 * (cpu_seconds(s1.agent.pid) - c0) / (time.monotonic() - w0)
        else:
            time.sleep(1.0)
        assert s1.agent is not None
        t0 = time.monotonic()
        s1.ns.drop_all_traffic()
        s1.agent.kill()  # `ip netns exec` execs: this PID is the agent itself
        deadline = t0 + case.hold + 10
        s2_lost = False
        while time.monotonic() < deadline:
            hops = lab.nexthops()
            if hops is not None and s2.address not in hops:
                s2_lost = True
            if hops is not None and s1.address not in hops:
                times.append((time.monotonic() - t0) * 1000)
                break
            time.sleep(0.005)
        else:
            print(f"  ({lab.kind}: nexthop still there after {case.hold + 10} s)", flush=True)
        false_downs += s2_lost
        s1.agent.wait(5)
        s1.agent = None
    s1.ns.allow_all_traffic()
    return {"times": times, "cpu": cpu, "s2_lost": false_downs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cpu-seconds", type=float, default=10.0)
    parser.add_argument("--routers", default="bgplb,bird")
    parser.add_argument("--cases", default=",".join(CASES))
    args = parser.parse_args()
    kinds = args.routers.split(",")
    cases = [CASES[c] for c in args.cases.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="bgplb-bfd-bench-"))
    results: dict[tuple[str, str], dict[str, Any]] = {}
    topos = {k: Topology(prefix=f"bfd{k[:2]}") for k in kinds}
    labs: dict[str, Lab] = {}
    try:
        for k in kinds:
            labs[k] = Lab(k, topos[k], workdir / k)
        for case in cases:
            for k in kinds:
                print(f"{case.name}, {k} router ...", flush=True)
                results[(case.name, k)] = run_case(labs[k], case, args.runs, args.cpu_seconds)
    finally:
        for lab in labs.values():
            lab.close()
        for topo in topos.values():
            topo.close()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nhost death -> kernel nexthop gone, {args.runs} runs (ms: median [min-max])")
    print(f"| case | {' | '.join(f'{k} router' for k in kinds)} |")
    print(f"|---|{'---|' * len(kinds)}")
    for case in cases:
        cells = []
        for k in kinds:
            t = results[(case.name, k)]["times"]
            lost = results[(case.name, k)]["s2_lost"]
            cells.append(
                f"{statistics.median(t):.0f} [{min(t):.0f}-{max(t):.0f}] (n={len(t)}, s2 lost "
                f"{lost})"
                if t
                else "-"
            )
        print(f"| {case.name} | {' | '.join(cells)} |")
    for k in kinds:
        for case in cases:
            c = results[(case.name, k)]["cpu"]
            if c is not None:
                print(f"agent CPU at BFD 50 ms x 3 ({k} router): {c:.2f} % of a core")


if __name__ == "__main__":
    main()
