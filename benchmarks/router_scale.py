"""Receive-and-install time and memory of the router for P peers x N prefixes each —
`bgplb router` vs BIRD 2 (kernel protocol, merge paths) vs GoBGP (receive only, no kernel),
fed by the same sender, same run.

Topology: receiver namespace `rcv` (192.0.2.1/24) and sender namespace `snd` holding P source
addresses 192.0.2.2 … on one veth. The sender is P bgplb speakers (`python -m bgplb.lab.speaker`,
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

"present" = all N prefixes installed (any number of paths), "complete" = all paths too. RSS is the
receiver's VmRSS (BIRD, gobgpd, bgplb router: one process each) when complete; CPU = user+system
seconds the receiver used from t0 to complete. A case not complete after --timeout s is reported
with what was there. Times include the sender's encoding and the polling granularity (--poll).

Usage (root): .venv/bin/python benchmarks/router_scale.py [--cases 10x1000,2x100000,100x1000]
       [--receivers bgplb,bird,gobgp] [--timeout 150] [--buckets 512] [--group resilient]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from _routerlab import (
    BenchRouter,
    established,
    kernel_info,
    now_utc,
    router_toml,
    rss_kib,
    speaker,
    stop_all,
    workdir,
)
from bgplb.lab.netns import Namespace, Topology
from bgplb.lab.peers import Bird, GoBgp, PeerError
from bgplb.lab.speaker import SpeakerProcess

RECEIVER_AS = 65530
TICK = os.sysconf("SC_CLK_TCK")


class ScaleBird(Bird):
    """BIRD with `merge paths on limit 128` (its default limit is 16 paths)."""

    def config_text(self) -> str:
        return super().config_text().replace("merge paths on;", "merge paths on limit 128;")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


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
        try:
            if kind == "bgplb":
                ranges = (
                    '[[peer_ranges]]\nprefix = "192.0.2.0/24"\nasn = "any"\n'
                    'accept = ["198.18.0.0/15 le 32"]\nmax_prefixes = 10000000\n'
                )
                router = BenchRouter(
                    rcv,
                    wd,
                    router_toml(a.group, buckets=a.buckets, idle_timer="10s", ranges=ranges),
                )
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
            c0 = cpu_s(pid)
            t0 = time.monotonic()
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
                if res["present"] is None and present >= count:
                    res["present"] = elapsed
                if full >= count:
                    res["complete"] = elapsed
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
            # (no `bgplb status` here: with many VIPs it blocks the router, see docs/benchmarks.md)
        finally:
            stop_all(sps)
            if router is not None and router.proc is not None:
                t = time.monotonic()
                router.stop(timeout=120)
                res["stop_s"] = time.monotonic() - t
            if daemon is not None:
                daemon.stop(timeout=20)
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", default="10x1000,2x100000,100x1000")
    p.add_argument("--receivers", default="bgplb,bird,gobgp")
    p.add_argument("--timeout", type=float, default=150.0)
    p.add_argument("--poll", type=float, default=0.25)
    p.add_argument("--buckets", type=int, default=512)
    p.add_argument("--group", default="resilient")
    p.add_argument("--json", help="also write the results to this file")
    a = p.parse_args()
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
        f"receive + install, peers x prefixes (same prefixes from every peer), {now_utc()}, "
        f"kernel {kernel_info()}, poll {a.poll} s"
    )
    print(
        f"{'case':<10} {'receiver':<34} {'present s':>9} {'complete s':>10} {'CPU s':>7} "
        f"{'RSS idle MiB':>12} {'RSS MiB':>8}"
    )

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    for key, r in results.items():
        case, kind = key.split("/")
        print(
            f"{case:<10} {label[kind]:<34} {fmt(r['present']):>9} {fmt(r['complete']):>10} "
            f"{r.get('cpu', 0):>7.1f} {r.get('rss_idle', 0) / 1024:>12.1f} "
            f"{r.get('rss', 0) / 1024:>8.1f}"
        )
        if r["complete"] is None:
            print(f"{'':<10} not complete after {a.timeout:.0f} s: {r.get('progress')}")
    for case in a.cases.split(","):
        bg, bird = results.get(f"{case}/bgplb"), results.get(f"{case}/bird")
        if bg and bird and bg["complete"] and bird["complete"]:
            print(f"{case}: complete time bgplb / BIRD = {bg['complete'] / bird['complete']:.1f}x")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    sys.exit(main())
