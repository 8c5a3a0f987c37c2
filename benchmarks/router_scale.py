"""Receive-and-install time and memory of the router for P peers x N prefixes each —
`bgplb router` vs BIRD 2 (kernel protocol, merge paths) vs GoBGP (receive only, no kernel),
fed by the same sender, same run.

Topology: receiver namespace `rcv` (192.0.2.1/24) and sender namespace `snd` holding P source
addresses 192.0.2.2 … on one veth. The sender is P bgplb speakers (`tests/interop/bgpspeaker.py`,
one process and one session per source address). Every peer announces the *same* N /32s
(198.18.0.0 upwards: servers announcing the same VIPs), so the receiver ends with N routes of P
paths each.

Timing: sessions are established first; t0 is when the `bulk` command is written to every
speaker (each then encodes and sends its N prefixes: ~800 /32s per 4 KiB UPDATE). The receiver is
polled every --poll s:

* bgplb router: `ip -o -4 route show proto 200` (N routes) and `ip nexthop show protocol 200`
  (every route's group has P members);
* BIRD: `ip -o -4 route show proto bird` (N routes, each with min(P, 128) paths: the kernel
  protocol runs `merge paths on limit 128`);
* GoBGP: `gobgp global rib summary` (N destinations, N*P paths); it gets a global export
  policy `reject-route` so that, like the others, it sends nothing back.

"present" = all N prefixes installed (any number of paths), "complete" = all paths too.
"after last UPDATE" = complete minus the kernel timestamp of the last UPDATE-carrying segment from
a sender (tcpdump on the receiver's veth, segments to port 179 with more than 19 bytes of
payload): the receiver's own share of the time, without the senders' encoding. RSS is the
receiver's VmRSS (BIRD, gobgpd, bgplb router: one process each) when complete; CPU = user+system
seconds the receiver used from t0 to complete; "peak RSS" = the largest VmRSS seen by the polls
(and VmHWM, the kernel's own high-water mark, for one-process receivers). A case not complete
after --timeout s is reported with what was there. Times include the sender's encoding and the
polling granularity (--poll).

Control-plane responsiveness during the load: a thread asks the receiver for its status every
--status-period s from t0 until complete, each request bounded by 10 s: bgplb — the control
socket's `status` request (exactly what `bgplb status --json` sends; the CLI itself adds its
Python start-up, measured once before the load and printed as "CLI"); BIRD — `birdc show
protocols`; GoBGP — `gobgp neighbor`. Printed: answers / requests, how many within 100 ms, the
slowest answer. "loop stall" = the `loop.max_ms` figure of the router's status answer after the
load, asked with `vips_limit=0` (the summary, no VIP rows): bgplb.io.loopwatch's worst lateness
of the router's event loop since it started, followed by "gc N": its longest garbage
collection (a collection stops the loop too); `n/a` when the status has no `loop` key, as in
routers older than the watch.

Exit: the receiver is stopped (SIGTERM; bgplb removes its routes, groups and nexthops, BIRD its
routes); "stop s" = SIGTERM to exit, "free s" = from the exit until `ip -n rcv route show proto
P` lists none of ours AND a fresh `ip netns add` on the host has completed (namespace teardown
and nexthop-group freeing run in the kernel's workqueues and hold the locks a new namespace
needs; the probe namespace is deleted right after).

Profiling (``--profile DIR``): the router runs under cProfile — the event loop's thread in
``DIR/<case>-router.prof``, the worker threads (FIB sync) merged in ``DIR/<case>-threads.prof``
— the full garbage collections over 10 ms in ``DIR/<case>-gc.txt``,
and with ``--tracemalloc`` also under tracemalloc (slower: times are then meaningless): when the
case is complete the benchmark sends SIGUSR2 and the router writes ``DIR/<case>-heap.txt``, the
top allocation sites of its heap. Read a profile with ``python -m pstats FILE``.

Usage (root): .venv/bin/python benchmarks/router_scale.py [--cases 10x1000,2x100000,100x1000]
       [--receivers bgplb,bird,gobgp] [--timeout 150] [--buckets 512] [--group resilient]
       [--status-period 0.25] [--json FILE] [--profile DIR [--tracemalloc]]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from _loadgen import (
    begin,
    kernel_free_time,
    status_sampler,
    summarize_samples,
)
from _routerlab import (
    BGPLB,
    BenchRouter,
    Capture,
    SpeakerProcess,
    established,
    kernel_info,
    router_toml,
    rss_kib,
    speaker,
    stop_all,
    workdir,
)
from bgplb.control.socket import ControlError, request
from bgplb.lab.netns import Namespace, Topology
from bgplb.lab.peers import Bird, GoBgp, PeerError

RECEIVER_AS = 65530
TICK = os.sysconf("SC_CLK_TCK")


# Runs `bgplb router ...` (argv[1:]) under cProfile, worker threads included; with
# BGPLB_TRACEMALLOC set, SIGUSR2 writes the heap's top allocation sites.
PROFILE_MAIN = """
import concurrent.futures.thread as cft, cProfile, os, pstats, signal, sys, threading
out = os.environ["BGPLB_PROFILE"]
if os.environ.get("BGPLB_TRACEMALLOC"):
    import tracemalloc
    tracemalloc.start(int(os.environ["BGPLB_TRACEMALLOC"]))
    def heap(signum, frame):
        snap = tracemalloc.take_snapshot()
        with open(out + "-heap.txt", "w") as f:
            cur, peak = tracemalloc.get_traced_memory()
            print(f"traced {cur / 2**20:.1f} MiB, peak {peak / 2**20:.1f} MiB", file=f)
            for stat in snap.statistics("traceback")[:40]:
                print(stat, file=f)
                for line in stat.traceback.format()[-12:]:
                    print("   ", line, file=f)
    signal.signal(signal.SIGUSR2, heap)
import gc, time
gc_pauses = []  # seconds, of the full collections over 10 ms
def gc_timer(phase, info, started=[0.0]):
    if phase == "start":
        started[0] = time.perf_counter()
    elif info["generation"] == 2 and time.perf_counter() - started[0] > 0.01:
        gc_pauses.append(time.perf_counter() - started[0])
gc.callbacks.append(gc_timer)
profiles = {}
run = cft._WorkItem.run
def profiled_run(self):
    p = profiles.setdefault(threading.get_ident(), cProfile.Profile())
    p.enable()
    try:
        run(self)
    finally:
        p.disable()
cft._WorkItem.run = profiled_run
from bgplb.cli import main
sys.argv = ["bgplb", *sys.argv[1:]]
prof = cProfile.Profile()
try:
    prof.runcall(main)
except SystemExit:
    pass
finally:
    prof.dump_stats(out + "-router.prof")
    with open(out + "-gc.txt", "w") as f:
        for took in gc_pauses:
            print(f"full collection {took * 1000:.0f} ms", file=f)
    if profiles:
        pstats.Stats(*profiles.values()).dump_stats(out + "-threads.prof")
"""


class ProfiledRouter(BenchRouter):
    """The router under cProfile (and tracemalloc): see PROFILE_MAIN."""

    def __init__(self, *args: Any, out: str, trace: bool) -> None:
        super().__init__(*args)
        self.out = out
        self.trace = trace

    def start(self) -> None:
        env = {**os.environ, "BGPLB_PROFILE": self.out}
        if self.trace:
            env["BGPLB_TRACEMALLOC"] = "5"
        with self.log.open("ab") as out:
            self.proc = self.ns.popen(
                sys.executable, "-c", PROFILE_MAIN, "router", "-c", str(self.conf),
                "--log-level", "info", stdout=out, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while self.try_status() is None and time.monotonic() < deadline:
            time.sleep(0.1)


class ScaleBird(Bird):
    """BIRD with `merge paths on limit 128` (its default limit is 16 paths)."""

    def config_text(self) -> str:
        return super().config_text().replace("merge paths on;", "merge paths on limit 128;")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1])
    return 0


# BGP segments from the senders carrying more than a KEEPALIVE (19 bytes): the UPDATEs.
UPDATES_FILTER = (
    "tcp dst port 179 and (ip[2:2] - ((ip[0] & 0xf) << 2) - ((tcp[12] & 0xf0) >> 2)) > 19"
)


def last_frame_time(pcap: Path) -> float | None:
    """Kernel timestamp (epoch s) of the last frame in `pcap`, or None."""
    try:
        out = subprocess.run(
            ["tcpdump", "-tt", "-n", "-r", str(pcap)], capture_output=True, text=True, timeout=120
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = [ln for ln in out.splitlines() if ln[:1].isdigit()]
    return float(lines[-1].split()[0]) if lines else None


def timed_cli(argv: list[str], timeout: float = 10.0) -> None:
    """Run a control command; raise if it fails or takes longer than `timeout`."""
    subprocess.run(argv, check=True, capture_output=True, timeout=timeout)


def kernel_progress(ns: Namespace, proto: str, paths: int) -> tuple[int, int]:
    """(routes of `proto`, routes with `paths` paths) in the main table."""
    out = ns.exec("ip", "-o", "-4", "route", "show", "proto", proto, timeout=60)
    lines = out.splitlines()
    if proto == "bird":
        full = sum(
            1
            for ln in lines
            if (ln.count("nexthop via") if "nexthop via" in ln else 1) == min(paths, 128)
        )
        return len(lines), full
    sizes = {}
    for ln in ns.exec("ip", "nexthop", "show", "protocol", proto, timeout=60).splitlines():
        f = ln.split()
        if len(f) > 3 and f[2] == "group":
            sizes[f[1]] = f[3].count("/") + 1
    full = 0
    for ln in lines:
        f = ln.split()
        if "nhid" in f and sizes.get(f[f.index("nhid") + 1]) == paths:
            full += 1
    return len(lines), full


class QuietGoBgp(GoBgp):
    """GoBGP that advertises nothing (global default export policy: reject), like the other
    receivers here; by default it would send every best path back to the other 99 peers."""

    def config_text(self) -> str:
        return (
            super().config_text()
            + '\n[global.apply-policy.config]\n  default-export-policy = "reject-route"\n'
        )


def gobgp_progress(gobgp: GoBgp) -> tuple[int, int]:
    try:
        out = gobgp.control("global", "rib", "summary", "-a", "ipv4", timeout=30)
    except PeerError:  # busy: no answer in time
        return 0, 0
    dest = paths = 0
    # "Table ipv4-unicast\nDestination: 1000, Path: 10000"
    for part in out.replace("\n", ",").split(","):
        k, _, v = part.partition(":")
        if k.strip() == "Destination":
            dest = int(v)
        elif k.strip() == "Path":
            paths = int(v)
    return dest, paths


def run_case(kind: str, peers: int, count: int, a: argparse.Namespace) -> dict[str, Any]:
    wd = workdir(f"scale-{kind}-{peers}x{count}")
    res: dict[str, Any] = {"present": None, "complete": None}
    with Topology(prefix="bsc") as topo:
        rcv = topo.add("rcv")
        snd = topo.add("snd")
        sources = [f"192.0.2.{2 + i}" for i in range(peers)]
        topo.link(rcv, snd, ["192.0.2.1/24"], [f"{s}/24" for s in sources], "snd", "rcv")
        sps: list[SpeakerProcess] = []
        router = None
        daemon: Any = None
        capture: Capture | None = None
        try:
            if kind == "bgplb":
                ranges = (
                    '[[peer_ranges]]\nprefix = "192.0.2.0/24"\nasn = "any"\n'
                    'accept = ["198.18.0.0/15 le 32"]\nmax_prefixes = 10000000\n'
                )
                conf = router_toml(a.group, buckets=a.buckets, idle_timer="10s", ranges=ranges)
                if a.profile:
                    Path(a.profile).mkdir(parents=True, exist_ok=True)
                    out = str(Path(a.profile).resolve() / f"{peers}x{count}")
                    router = ProfiledRouter(rcv, wd, conf, out=out, trace=a.tracemalloc)
                else:
                    router = BenchRouter(rcv, wd, conf)
                router.start()
                assert router.proc is not None
                pid = router.proc.pid
            else:
                cls = ScaleBird if kind == "bird" else QuietGoBgp
                kw = {"kernel": True} if kind == "bird" else {}
                daemon = cls(rcv, wd / kind, RECEIVER_AS, "192.0.2.1", **kw)
                for i, s in enumerate(sources):
                    daemon.add_neighbor(
                        s, 64512 + i, passive=True, hold_time=30, families=("ipv4",)
                    )
                daemon.start()
                pid = daemon.pids[0]
            for i, s in enumerate(sources):
                sps.append(
                    speaker(snd, 64512 + i, s, "192.0.2.1", wd / f"sp{i}.log", "--hold", "30")
                )
            for sp in sps:
                established(sp, 60)
            time.sleep(0.5)
            res["rss_idle"] = rss_kib(pid)
            if router is not None:
                sock = str(router.sock)
                t = time.monotonic()
                timed_cli([str(BGPLB), "status", "--json", "--role", "router", "--socket", sock])
                res["cli_idle_s"] = round(time.monotonic() - t, 3)

                def probe() -> Any:
                    return request(sock, "status", timeout=10)
            elif kind == "bird":

                def probe() -> Any:
                    timed_cli(["birdc", "-s", str(daemon.socket), "show", "protocols"])
            else:

                def probe() -> Any:
                    return daemon.control("neighbor", timeout=10)

            stop_sampling = threading.Event()
            peak = res["rss_idle"]
            c0 = cpu_s(pid)
            pcap = wd / "updates.pcap"
            capture = Capture(rcv, "snd", pcap, UPDATES_FILTER)
            capture.start()
            t0, t0_wall = time.monotonic(), time.time()
            sampler, samples = status_sampler(probe, stop_sampling, a.status_period)
            for sp in sps:
                sp.send(bulk={"count": count, "start": "198.18.0.0", "length": 32})
            while True:
                if kind == "gobgp":
                    dest, paths = gobgp_progress(daemon)
                    present, full = dest, (count if paths >= count * peers else 0)
                    res["progress"] = f"{dest} destinations, {paths} paths"
                else:
                    present, full = kernel_progress(
                        rcv, "200" if kind == "bgplb" else "bird", peers
                    )
                    res["progress"] = f"{present} routes, {full} with all paths"
                elapsed = time.monotonic() - t0  # when the poll's answer was in
                peak = max(peak, rss_kib(pid))
                if res["present"] is None and present >= count:
                    res["present"] = elapsed
                if full >= count:
                    res["complete"] = elapsed
                    complete_wall = time.time()
                    break
                if elapsed > a.timeout:
                    break
                if (
                    router is not None
                    and router.proc is not None
                    and router.proc.poll() is not None
                ):
                    res["progress"] += f"; router exited {router.proc.returncode}"
                    break
                time.sleep(a.poll)
            res["cpu"] = cpu_s(pid) - c0
            res["rss"] = rss_kib(pid)
            if router is not None and a.profile and a.tracemalloc:
                os.kill(pid, signal.SIGUSR2)  # the heap's allocation sites, now
                time.sleep(20)
            capture.stop()
            last = last_frame_time(pcap)
            res["last_update_s"] = None if last is None else round(last - t0_wall, 3)
            if res["complete"] is not None and last is not None:
                res["after_last_update"] = round(complete_wall - last, 3)
            stop_sampling.set()
            sampler.join(15)
            res["status"] = summarize_samples(samples)
            res["rss_peak"] = max(peak, res["rss"])
            res["rss_hwm"] = hwm_kib(pid)
            res["loop"] = None
            if router is not None:
                try:  # the summary only (no VIP rows): a page of 100k VIPs can take > 30 s
                    try:
                        st = request(router.sock, "status", timeout=30, vips_limit=0)
                    except ControlError as exc:
                        if "timed out" in str(exc):
                            raise
                        st = request(router.sock, "status", timeout=30)  # no paging yet
                    loop = st.get("loop") if isinstance(st, dict) else None
                    res["loop"] = loop if isinstance(loop, dict) else None
                except Exception as exc:
                    res["loop_error"] = str(exc)
        finally:
            if capture is not None:
                capture.stop()
            stop_all(sps)
            if router is not None and router.proc is not None:
                t = time.monotonic()
                router.stop(timeout=300)
                res["stop_s"] = time.monotonic() - t
                res["free"] = kernel_free_time(rcv, "200")
            if daemon is not None:
                t = time.monotonic()
                daemon.stop(timeout=20)
                res["stop_s"] = time.monotonic() - t
                if kind == "bird":
                    res["free"] = kernel_free_time(rcv, "bird")
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", default="10x1000,2x100000,100x1000")
    p.add_argument("--receivers", default="bgplb,bird,gobgp")
    p.add_argument("--timeout", type=float, default=150.0)
    p.add_argument("--poll", type=float, default=0.25)
    p.add_argument("--buckets", type=int, default=512)
    p.add_argument("--group", default="resilient")
    p.add_argument("--status-period", type=float, default=0.25, help="seconds between requests")
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--profile", metavar="DIR", help="run the router under cProfile, into DIR")
    p.add_argument("--tracemalloc", action="store_true", help="with --profile: heap sites too")
    a = p.parse_args()
    cmd, started = begin()
    label = {
        "bgplb": f"bgplb router ({a.group}"
        + (f", {a.buckets} buckets)" if a.group == "resilient" else ")"),
        "bird": "BIRD 2 (kernel, merge paths)",
        "gobgp": "GoBGP (RIB only, no kernel)",
    }
    results: dict[str, dict[str, Any]] = {}
    for case in a.cases.split(","):
        peers, count = (int(x) for x in case.split("x"))
        for kind in a.receivers.split(","):
            r = run_case(kind, peers, count, a)
            results[f"{case}/{kind}"] = r
            print(f"{case} {kind}: {json.dumps(r)}", file=sys.stderr, flush=True)
    print(
        f"\nreceive + install, peers x prefixes (same prefixes from every peer), {started}, "
        f"kernel {kernel_info()}, poll {a.poll} s, status every {a.status_period} s"
    )
    print(
        f"{'case':<10} {'receiver':<34} {'present s':>9} {'complete s':>10} {'after UPD':>9} "
        f"{'CPU s':>6} "
        f"{'RSS peak MiB':>12} {'status ok/n <100ms':>18} {'slowest s':>9} "
        f"{'loop stall ms':>13} {'stop s':>7} {'free s':>7}"
    )

    def fmt(v: float | None, spec: str = ".2f") -> str:
        return "-" if v is None else format(v, spec)

    for key, r in results.items():
        case, kind = key.split("/")
        st = r.get("status") or {}
        answers = f"{st.get('answered', 0)}/{st.get('samples', 0)} {st.get('within_100ms', 0)}"
        slowest = st.get("max_ms")
        if st.get("answered", 0) < st.get("samples", 0):
            slowest_txt = ">10 (timeout)"
        else:
            slowest_txt = fmt(slowest / 1000 if slowest is not None else None, ".3f")
        loop = r.get("loop")
        stall = fmt(loop.get("max_ms"), ".0f") if loop else "n/a"
        if loop and loop.get("gc_max_ms") is not None:  # the longest garbage collection
            stall += f" gc {loop['gc_max_ms']:.0f}"
        free = (r.get("free") or {}).get("free_s")
        print(
            f"{case:<10} {label[kind]:<34} {fmt(r['present']):>9} {fmt(r['complete']):>10} "
            f"{fmt(r.get('after_last_update')):>9} {r.get('cpu', 0):>6.1f} "
            f"{r.get('rss_peak', 0) / 1024:>12.1f} {answers:>18} "
            f"{slowest_txt:>9} {stall if kind == 'bgplb' else 'n/a':>13} "
            f"{fmt(r.get('stop_s')):>7} {fmt(free):>7}"
        )
        if r["complete"] is None:
            print(f"{'':<10} not complete after {a.timeout:.0f} s: {r.get('progress')}")
    cli = [r["cli_idle_s"] for r in results.values() if r.get("cli_idle_s") is not None]
    if cli:
        print(f"`bgplb status --json` on the idle router (CLI start-up included): {max(cli):.2f} s")
    ratios = (
        ("complete", "complete time"),
        ("after_last_update", "after the last UPDATE"),
        ("cpu", "CPU"),
        ("rss_peak", "peak RSS"),
        ("stop_s", "stop"),
    )
    for case in a.cases.split(","):
        bg, bird = results.get(f"{case}/bgplb"), results.get(f"{case}/bird")
        if not (bg and bird):
            continue
        parts = [
            f"{what} {bg[k] / bird[k]:.1f}x" for k, what in ratios if bg.get(k) and bird.get(k)
        ]
        fb, fd = (bg.get("free") or {}).get("free_s"), (bird.get("free") or {}).get("free_s")
        if fb and fd:
            parts.append(f"free {fb / fd:.1f}x")
        print(f"{case}: bgplb / BIRD: " + ", ".join(parts))
    if a.json:
        Path(a.json).write_text(
            json.dumps({"command": cmd, "date": started, "results": results}, indent=1)
        )


if __name__ == "__main__":
    sys.exit(main())
