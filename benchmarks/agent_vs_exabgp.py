"""bgplb agent vs ExaBGP 4.2 + `python3 -m exabgp healthcheck`: failover time and idle cost,
in network namespaces, with BIRD 2 as the router (kernel protocol, `merge paths on`).

Failover (median of --runs per speaker setup): two servers announce 198.51.100.10/32; the
checked HTTP server of s1 is SIGKILLed (t0) and we time

* wire: the withdrawal UPDATE from s1 arriving on the router's interface (tcpdump frame time);
* fib:  the router's kernel route losing s1's nexthop (`ip -ts monitor route` in the router).

Each kill happens at a random phase of the check interval (uniform in one interval), so the
figures include the wait for the next check, as a real failure would.

Setups (all check the same local HTTP server; the ExaBGP ones run
`curl -sf --max-time 1 http://127.0.0.1:8080/` as the healthcheck command, as its docs do):

* bgplb:          http check, interval 100 ms, timeout 50 ms, fall 2, rise 2;
* exabgp-fast:    --interval 0.1 --fast-interval 0.1 --fall 2 --rise 2 --timeout 1 (the same
                  detection budget; its timeout is whole seconds);
* exabgp-default: healthcheck defaults (interval 5 s, fast-interval 1 s, fall 3, rise 3,
                  timeout 5 s).

Both ExaBGP setups add --withdraw-on-down: by default the healthcheck never withdraws, it
re-announces with MED 1000 (docs/dev/interop.md).

Idle cost: s1 runs 10 services (10 VIPs, checks of the local HTTP server) with 2 BGP peers (the
router's IPv4 and IPv6 addresses); after --idle-seconds we report RSS, PSS and CPU of the whole
process tree (bgplb: one process; ExaBGP: exabgp + one healthcheck process per service + the
curl processes they spawn, counted through cutime/cstime). Setups: bgplb checks at 1 s;
ExaBGP healthcheck at 1 s (--interval 1 --fast-interval 1) and at its defaults (5 s).

Detection under client load (``--detection``, instead of the two above): a client namespace
behind the router sends fresh HTTP requests to the VIP at --rate per second (--requests of
them, 1 s timeout each; L4 multipath hashing spreads them over both servers); s1's web server
(one process, ``bgplb.lab.webserver`` on port 80, the VIP on lo) is SIGKILLed at a random phase
of 100 ms; we time the router's kernel route losing s1 (and the withdrawal on the wire) and count
the failed requests. In one run, interleaved run by run, s1 runs in turn:

* bgplb-listen:  the agent, ``listen`` check of port 80 (socket destroy notifications);
* bgplb-process: the agent, ``process`` check of the web server's pidfile (pidfd);
* bgplb-http:    the agent, ``http`` check every 100 ms, timeout 50 ms, fall 2;
* exabgp-fast:   ExaBGP + healthcheck --interval 0.1 --fast-interval 0.1 --fall 2 (curl).

s2 runs the agent with a listen check throughout. Medians over --runs, and ratios to
exabgp-fast.

ExaBGP is Debian's /usr/sbin/exabgp run with a system-only PATH (a pip ExaBGP 5 may shadow it).

Usage (root): .venv/bin/python benchmarks/agent_vs_exabgp.py [--runs 5] [--idle-seconds 30]
       [--only bgplb,exabgp-fast,exabgp-default] [--skip-failover] [--skip-idle]
       .venv/bin/python benchmarks/agent_vs_exabgp.py --detection [--runs 7] [--rate 500]
       [--requests 1500] [--only bgplb-listen,bgplb-process,bgplb-http,exabgp-fast]
"""

from __future__ import annotations

import argparse
import datetime
import os
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "interop"))

from agent_lab import ROUTER_AS, SERVER_AS, VIP4, AgentLab, Server, build_lab  # noqa: E402

from _agentbench import (  # noqa: E402
    add_client,
    daemons_factory,
    kill_under_load,
    start_web,
    time_http_kill,
)
from bgplb.lab.netns import Topology  # noqa: E402
from bgplb.lab.peers import Bird  # noqa: E402
from bgplb.lab.wait import wait_until  # noqa: E402

EXABGP = "/usr/sbin/exabgp"
SYSTEM_PYTHON = "/usr/bin/python3"
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
CURL = "curl -sf -o /dev/null --max-time 1 http://127.0.0.1:{port}/"

HEALTHCHECK_FAST = ["--interval", "0.1", "--fast-interval", "0.1", "--fall", "2", "--rise", "2",
                    "--timeout", "1"]  # fmt: skip
HEALTHCHECK_1S = ["--interval", "1", "--fast-interval", "1"]


@dataclass
class Setup:
    name: str
    describe: str
    #: start the speaker on `server` (its process goes to `server.agent`) for `services`
    #: [(name, vip)] towards `peers` [(router address, our address)]
    start: Callable[[Server, list[tuple[str, str]], list[tuple[str, str]]], None]
    wait: float  # seconds to wait for a failover
    period: float  # check interval: the kill happens at a random phase within it


# -- speakers ------------------------------------------------------------------------------------


def start_bgplb(
    interval: str, fall: int = 2, rise: int = 2, extra: str = ""
) -> Callable[..., None]:
    def start(
        server: Server, services: list[tuple[str, str]], peers: list[tuple[str, str]]
    ) -> None:
        timeout = "50ms" if interval == "100ms" else "500ms"
        server.peer_extra = "".join(
            f'\n[[peers]]\naddress = "{router}"\nasn = {ROUTER_AS}\n' for router, _ in peers[1:]
        )
        server.write_config(
            "".join(
                server.service(
                    name, (vip,), extra, interval=interval, timeout=timeout, fall=fall, rise=rise
                )
                for name, vip in services
            )
        )
        server.start_agent()

    return start


def start_exabgp(hc_args: list[str], port: int = 8080) -> Callable[..., None]:
    def start(
        server: Server, services: list[tuple[str, str]], peers: list[tuple[str, str]]
    ) -> None:
        conf = []
        names = []
        for name, vip in services:
            script = server.workdir / f"hc-{name}.sh"
            curl = CURL.format(port=port)
            argv = [SYSTEM_PYTHON, "-m", "exabgp", "healthcheck", "--no-syslog", "--name", name,
                    "--cmd", curl, "--ip", vip, "--withdraw-on-down", *hc_args]  # fmt: skip
            script.write_text(f"#!/bin/sh\nexec {shlex.join(argv)}\n")
            script.chmod(0o755)
            conf.append(f"process hc-{name} {{\n  run {script};\n  encoder text;\n}}\n")
            names.append(f"hc-{name}")
        for router, local in peers:
            family = "ipv6 unicast;" if ":" in router else "ipv4 unicast;"
            conf.append(
                f"neighbor {router} {{\n  router-id {server.address};\n  local-address {local};\n"
                f"  local-as {SERVER_AS};\n  peer-as {ROUTER_AS};\n  hold-time 9;\n"
                f"  family {{ {family} }}\n  api {{ processes [ {' '.join(names)} ]; }}\n}}\n"
            )
        path = server.workdir / "exabgp.conf"
        path.write_text("".join(conf))
        env = {
            "PATH": SYSTEM_PATH,
            "exabgp.daemon.user": "root",
            "exabgp.daemon.drop": "false",
            "exabgp.daemon.daemonize": "false",
            "exabgp.api.cli": "false",
            "exabgp.log.destination": "stdout",
            "exabgp.tcp.bind": "",
        }
        with server.log_path.open("ab") as log:
            server.agent = server.ns.popen(
                EXABGP, str(path), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env,
            )  # fmt: skip
        server.procs.append(server.agent)

    return start


SETUPS = {
    "bgplb": Setup(
        "bgplb", "bgplb agent, http check 100 ms, fall 2", start_bgplb("100ms"), 10, 0.1
    ),
    "exabgp-fast": Setup(
        "exabgp-fast",
        "ExaBGP healthcheck --interval 0.1 --fast-interval 0.1 --fall 2",
        start_exabgp(HEALTHCHECK_FAST),
        10,
        0.1,
    ),
    "exabgp-default": Setup(
        "exabgp-default",
        "ExaBGP healthcheck defaults (interval 5 s, fast 1 s, fall 3)",
        start_exabgp([]),
        30,
        5.0,
    ),
}


# ExaBGP's healthcheck announces MED 100: the agents' routes carry the same, or BIRD would
# prefer the lower MED instead of load-balancing (both servers are in AS 65000).
MED = "med = 100"


def start_bgplb_event(kind: str) -> Callable[..., None]:
    """The agent with an event-driven check of the web server: ``listen`` or ``process``."""

    def start(
        server: Server, services: list[tuple[str, str]], peers: list[tuple[str, str]]
    ) -> None:
        if kind == "listen":
            check = f'type = "listen"\nport = {server.http_port}\n'
        else:
            check = f'type = "process"\npidfile = "{server.workdir / "http.pid"}"\n'
        server.write_config(
            "".join(
                f'\n[[services]]\nname = "{name}"\nvips = ["{vip}"]\ndrain_time = "2s"\n{MED}\n'
                f"[[services.checks]]\n{check}rise = 1\ndamping = false\n"
                for name, vip in services
            )
        )
        server.start_agent()

    return start


DETECTION_SETUPS = {
    "bgplb-listen": Setup(
        "bgplb-listen", "bgplb agent, listen check", start_bgplb_event("listen"), 10, 0.1
    ),
    "bgplb-process": Setup(
        "bgplb-process", "bgplb agent, process check", start_bgplb_event("process"), 10, 0.1
    ),
    "bgplb-http": Setup(
        "bgplb-http",
        "bgplb agent, http check 100 ms, fall 2",
        start_bgplb("100ms", extra=MED),
        10,
        0.1,
    ),
    "exabgp-fast": Setup(
        "exabgp-fast",
        "ExaBGP healthcheck --interval 0.1 --fall 2",
        start_exabgp(HEALTHCHECK_FAST, port=80),
        10,
        0.1,
    ),
}
IDLE_SETUPS = {
    "bgplb": ("bgplb agent, 10 http checks at 1 s", start_bgplb("1s")),
    "exabgp-1s": ("ExaBGP + 10 healthchecks at 1 s (curl)", start_exabgp(HEALTHCHECK_1S)),
    "exabgp-default": ("ExaBGP + 10 healthchecks at defaults (5 s)", start_exabgp([])),
}


# -- lab -----------------------------------------------------------------------------------------


def summary(values: list[float]) -> str:
    if not values:
        return "n/a"
    return (
        f"median {statistics.median(values):7.1f} ms  (min {min(values):.1f}, "
        f"max {max(values):.1f}, n={len(values)})"
    )


def failover(setup: Setup, runs: int) -> tuple[list[float], list[float]]:
    wire: list[float] = []
    fib: list[float] = []
    workdir = Path(tempfile.mkdtemp(prefix="bgplb-vs-exabgp-"))
    made: list[Bird] = []
    with Topology(prefix="bench") as topo:
        lab: AgentLab = build_lab(topo, daemons_factory(workdir, made))
        try:
            lab.bird.start()
            for s in lab.servers:
                s.start_http()
                setup.start(s, [("web", VIP4)], [(s.router, s.address)])
            s1, s2 = lab.servers
            for run in range(runs):
                lab.wait_nexthops([s1.address, s2.address], timeout=60)
                # a random phase against the check loop (ExaBGP's loop would otherwise lock to
                # our run cadence and give the same delay every run)
                time.sleep(1.0 + random.uniform(0, setup.period))
                pcap = workdir / f"{setup.name}-{run}.pcap"
                w, f = time_http_kill(lab, s1, s2, pcap, wait=setup.wait)
                if w is not None:
                    wire.append(w)
                if f is not None:
                    fib.append(f)
                print(
                    f"  {setup.name} run {run}: wire "
                    f"{w if w is not None else float('nan'):.1f} ms, fib "
                    f"{f if f is not None else float('nan'):.1f} ms",
                    flush=True,
                )
                s1.start_http()
        finally:
            lab.close()
            for d in made:
                d.stop()
            shutil.rmtree(workdir, ignore_errors=True)
    return wire, fib


# -- detection under client load ---------------------------------------------------------------


def _stop_speaker(server: Server) -> None:
    """SIGKILL s1's speaker with its whole process tree (ExaBGP's healthcheck processes and
    their curls too) and its web server: only processes this benchmark started."""
    if server.agent is not None and server.agent.poll() is None:
        for pid in tree(server.agent.pid):
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
    server.stop()
    server.agent = None
    server.http = None


def detection(
    names: list[str], runs: int, rate: float, count: int
) -> dict[str, dict[str, list[float]]]:
    """Per setup: {"wire": [...ms], "fib": [...ms], "failed": [...], "sent": [...]}."""
    from bgplb.lab.probes import NsLoop

    out = {n: {"wire": [], "fib": [], "failed": [], "sent": []} for n in names}
    workdir = Path(tempfile.mkdtemp(prefix="bgplb-detect-"))
    made: list[Bird] = []
    loop = None
    with Topology(prefix="bench") as topo:
        lab: AgentLab = build_lab(topo, daemons_factory(workdir, made))
        try:
            client = add_client(lab)
            lab.bird.start()
            s1, s2 = lab.servers
            start_web(s2, 2, VIP4)
            DETECTION_SETUPS["bgplb-listen"].start(s2, [("web", VIP4)], [(s2.router, s2.address)])
            loop = NsLoop(client.name)
            for run in range(runs):
                for name in names:  # interleaved: every setup sees the same machine load
                    setup = DETECTION_SETUPS[name]
                    _stop_speaker(s1)
                    start_web(s1, 1, VIP4)
                    setup.start(s1, [("web", VIP4)], [(s1.router, s1.address)])
                    lab.wait_nexthops([s1.address, s2.address], timeout=60)
                    time.sleep(1.0)  # past the start-up
                    w, f, failed, sent = kill_under_load(
                        lab, s1, s2, loop, workdir / f"{name}-{run}.pcap", wait=setup.wait,
                        phase=random.uniform(0, setup.period), rate=rate, count=count, vip=VIP4,
                    )  # fmt: skip
                    for key, value in (("wire", w), ("fib", f)):
                        if value is not None:
                            out[name][key].append(value)
                    out[name]["failed"].append(failed)
                    out[name]["sent"].append(sent)
                    print(
                        f"  run {run} {name:14s}: fib "
                        f"{f if f is not None else float('nan'):6.1f} ms, wire "
                        f"{w if w is not None else float('nan'):6.1f} ms, "
                        f"{failed} failed of {sent}",
                        flush=True,
                    )
        finally:
            if loop is not None:
                loop.close()
            _stop_speaker(lab.servers[0])
            lab.close()
            for d in made:
                d.stop()
            shutil.rmtree(workdir, ignore_errors=True)
    return out


def detection_report(out: dict[str, dict[str, list[float]]], rate: float) -> None:
    base = out.get("exabgp-fast")
    med = statistics.median
    print(
        f"web server killed under load ({rate:g} req/s) -> router kernel nexthop gone; "
        "failed requests (medians; ratio = exabgp-fast / setup)"
    )
    for name, r in out.items():
        fib = med(r["fib"]) if r["fib"] else float("nan")
        wire = med(r["wire"]) if r["wire"] else float("nan")
        failed = med(r["failed"]) if r["failed"] else float("nan")
        ratio = ""
        if base and base["fib"] and r["fib"] and name != "exabgp-fast":
            ratio = f"  x{med(base['fib']) / fib:.1f} faster"
            if failed > 0:
                ratio += f", x{med(base['failed']) / failed:.1f} fewer failed"
            else:
                ratio += f", exabgp-fast {med(base['failed']):g} failed"
        print(
            f"  {DETECTION_SETUPS[name].describe:45s} fib {fib:6.1f} ms "
            f"({min(r['fib'], default=float('nan')):.1f}-{max(r['fib'], default=float('nan')):.1f})"
            f"  wire {wire:6.1f} ms  failed {failed:g} "
            f"({min(r['failed'], default=0):g}-{max(r['failed'], default=0):g}) of "
            f"{med(r['sent']) if r['sent'] else 0:g}{ratio}"
        )


# -- idle ----------------------------------------------------------------------------------------


def tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime + cutime + cstime of `pids` (reaped children are in the parents' c*time)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in f[11:15])
    return total / tick


def memory_kib(pids: list[int]) -> tuple[int, int]:
    """(sum of RSS, sum of PSS) in KiB."""
    rss = pss = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except OSError:
            continue
    return rss, pss


def idle(name: str, start: Callable[..., None], seconds: float) -> str:
    workdir = Path(tempfile.mkdtemp(prefix="bgplb-vs-exabgp-"))
    made: list[Bird] = []
    with Topology(prefix="bench") as topo:
        lab = build_lab(topo, daemons_factory(workdir, made))
        try:
            s1 = lab.servers[0]
            lab.bird.add_neighbor(s1.address6, SERVER_AS, passive=True)
            lab.bird.start()
            services = [(f"svc{i}", f"198.51.100.{100 + i}/32") for i in range(10)]
            s1.start_http()
            start(s1, services, [(s1.router, s1.address), (s1.router6, s1.address6)])
            wait_until(
                lambda: (
                    lab.bird.neighbor_state(s1.address) == "established"
                    and lab.bird.neighbor_state(s1.address6) == "established"
                    and len({r.prefix for r in lab.bird.received_routes()}) >= 10
                ),
                60,
                "2 sessions up and 10 VIPs received",
            )
            time.sleep(3.0)  # past start-up
            assert s1.agent is not None
            root = s1.agent.pid
            c0, t0 = cpu_seconds(tree(root)), time.monotonic()
            time.sleep(seconds)
            pids = tree(root)
            c1, t1 = cpu_seconds(pids), time.monotonic()
            rss, pss = memory_kib(pids)
            return (
                f"  {name:15s} {len(pids):3d} processes  RSS {rss / 1024:6.1f} MiB  "
                f"PSS {pss / 1024:6.1f} MiB  CPU {100 * (c1 - c0) / (t1 - t0):5.2f} % of a core"
            )
        finally:
            lab.close()
            for d in made:
                d.stop()
            shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    parser.add_argument("--only", default="", help="comma-separated setup names")
    parser.add_argument("--skip-failover", action="store_true")
    parser.add_argument("--skip-idle", action="store_true")
    parser.add_argument("--detection", action="store_true", help="detection under client load")
    parser.add_argument("--rate", type=float, default=500.0, help="--detection: requests/s")
    parser.add_argument("--requests", type=int, default=1500, help="--detection: per kill")
    args = parser.parse_args()
    only = set(filter(None, args.only.split(",")))
    print(f"{datetime.datetime.now():%Y-%m-%d %H:%M}, {os.uname().release}")
    if args.detection:
        if args.rate > 1000 or args.requests > 5000:
            parser.error("keep the load bounded: at most 5,000 requests at 1,000/s")
        names = [n for n in DETECTION_SETUPS if not only or n in only]
        detection_report(detection(names, args.runs, args.rate, args.requests), args.rate)
        return
    results = []
    if not args.skip_failover:
        for setup in SETUPS.values():
            if only and setup.name not in only:
                continue
            wire, fib = failover(setup, args.runs)
            results.append((setup.describe, wire, fib))
        print(
            "check fails (HTTP server killed) -> withdrawal at router / router kernel nexthop gone"
        )
        for describe, wire, fib in results:
            print(f"  {describe}\n    wire: {summary(wire)}\n    fib:  {summary(fib)}")
    if not args.skip_idle:
        print(f"idle, 2 peers, 10 services, {args.idle_seconds:g} s")
        for name, (describe, start) in IDLE_SETUPS.items():
            if only and name not in only:
                continue
            print(idle(name, start, args.idle_seconds) + f"   ({describe})", flush=True)


if __name__ == "__main__":
    main()
