"""Mass failover: one of three servers carrying the same V VIPs leaves and comes back —
`bgplb router` vs BIRD 2 (kernel protocol, `merge paths on`), same load, same run.

Topology (`_routerlab.build`): router namespace `rtr`, servers s1..s3 on /29 links
(192.0.2.10, .18, .26). Each server runs the load generator (`benchmarks/_loadgen.py`, one BGP
session, no BFD) announcing the same V /32s (198.18.0.0 upwards), so the router ends with V
routes of 3 paths. Then, --runs times:

  (a) withdraw: s1 withdraws all V in one burst (its session packs the withdrawals, ~1000 /32s
      per 4 KiB UPDATE) -> until no route of ours in the kernel has s1's nexthop;
  (b) announce: s1 announces all V again -> until every route has it again;
  (c) abort: s1's generator is SIGKILLed (its kernel closes the TCP connection: no NOTIFICATION,
      no Graceful Restart negotiated) -> until no route has s1's nexthop;
  (d) return: a new generator on s1 connects and announces V -> until every route has it
      (timed from its start; "after Established" from its Established event).

t0 is the wall-clock time right after the command was written to s1's generator (or the
SIGKILL): it includes the generator's own encoding of the V withdrawals (same for both
routers). Kernel convergence is measured two ways, both printed:

* poll: `ip -n rtr -o -4 route show proto P` (and for bgplb `ip -n rtr nexthop show`, to map
  each route's `nhid` to its group's members' gateway addresses) every --poll s, counting the
  routes that have s1's gateway; "poll" = when the first poll that saw all V converged returned
  (an upper bound, late by up to one poll period plus the dump, ~0.1 s at 10k routes);
* last change: `ip -ts monitor route nexthop` runs in the router namespace for the whole run;
  "event" = the timestamp of the last notification *that is a change* printed before that
  poll returned (give or take ip's own wake-up; a dump is not atomic, so the confirming poll
  may overlap the end of the burst of changes). A change is one that can alter forwarding:
  a group whose members differ from its previous notification, a deleted group, a single
  nexthop added, replaced or deleted while a group has it as a member, a deleted route, or a
  route whose entry differs from its previous notification. For a route pointing to a group
  (`nhid`) only its first line counts (its group): when a group is replaced in place the
  kernel re-sends every route using it with the group's new members (~10,000 echoes, printed
  by ip over ~50-150 ms here) although the forwarding changed at once, with the group; and a
  nexthop no group uses any more is deleted after its groups were replaced (no forwarding
  change). BIRD changes routes one by one: each of its notifications is a change.
  "notify" = the last notification of any kind (the previous version's "event").

Usage (root): .venv/bin/python benchmarks/router_mass_failover.py [--vips 10000] [--runs 3]
       [--routers bgplb,bird] [--poll 0.05] [--timeout 120] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _loadgen import LoadGen, begin, ip_lines, kernel_free_time
from _routerlab import (
    BenchRouter,
    Capture,
    _tshark,
    build,
    iso_ts,
    router_toml,
    rss_kib,
    server_addrs,
    start_bird_router,
    workdir,
)
from bgplb.lab.netns import Namespace, Topology

STEPS = ("withdraw", "announce", "abort", "return")
VIP_START = "198.18.0.0"


def with_gateway(rtr: Namespace, proto: str, gw: str) -> tuple[int, int]:
    """(routes of `proto`, routes having `gw` among their nexthops) in the main table."""
    lines = ip_lines(rtr, "-o", "-4", "route", "show", "proto", proto)
    if proto == "bird":
        needle = f"via {gw} "
        return len(lines), sum(1 for ln in lines if needle in ln)
    via: dict[str, str] = {}
    groups: dict[str, list[str]] = {}
    for ln in ip_lines(rtr, "nexthop", "show"):
        f = ln.split()
        if len(f) > 3 and f[0] == "id":
            if f[2] == "via":
                via[f[1]] = f[3]
            elif f[2] == "group":
                groups[f[1]] = [m.split(",")[0] for m in f[3].split("/")]
    has = 0
    for ln in lines:
        f = ln.split()
        if "nhid" not in f:
            continue
        nhid = f[f.index("nhid") + 1]
        members = groups.get(nhid, [nhid])
        if any(via.get(m) == gw for m in members):
            has += 1
    return len(lines), has


def wait_count(
    rtr: Namespace, proto: str, gw: str, want: int, a: argparse.Namespace
) -> tuple[float | None, float | None]:
    """Poll until exactly `want` routes have `gw`: (wall time the confirming poll returned,
    wall time it started), or (None, None) after --timeout."""
    deadline = time.monotonic() + a.timeout
    while time.monotonic() < deadline:
        start = time.time()
        _, n = with_gateway(rtr, proto, gw)
        if n == want:
            return time.time(), start
        time.sleep(a.poll)
    return None, None


def last_event(mon_log: Path, t0: float, until: float) -> float | None:
    """Timestamp of the last `ip -ts monitor` line in [t0, until]."""
    last = None
    for line in mon_log.read_text(errors="replace").splitlines():
        t = iso_ts(line)
        if t is not None and t0 <= t <= until:
            last = t
    return last


def route_sig(lines: list[str]) -> str:
    """What forwarding a route's entry says, as both `ip route show` and `ip monitor` print it
    (their formats differ): its group (`nhid N`), else its gateways with their weights."""
    words = lines[0].split()
    if "nhid" in words:
        return "nhid " + words[words.index("nhid") + 1]
    hops = []
    for line in lines:
        w = line.split()
        if "via" in w:
            weight = w[w.index("weight") + 1] if "weight" in w else "1"
            hops.append(f"{w[w.index('via') + 1]}/{weight}")
    return " ".join(sorted(hops))


def route_entries(text: str) -> dict[str, str]:
    """{destination: entry as `last_change` compares it} of an `ip route show` output: the
    state the monitor log starts from (a route's first notification in the log is compared with
    it, not counted as a change by default)."""
    out: dict[str, str] = {}
    entries: list[list[str]] = []
    for line in text.splitlines():
        if line.startswith((" ", "\t")) and entries:
            entries[-1].append(line.strip())
        elif line.strip():
            entries.append([line.strip()])
    for lines in entries:
        words = lines[0].split()
        out[words[0]] = route_sig(lines)
    return out


def last_change(
    mon_log: Path, t0: float, until: float, start: dict[str, str] | None = None
) -> float | None:
    """Timestamp of the last notification in [t0, until] that is a change (module docstring):
    the whole log is replayed so that each route is compared with its previous entry (or its
    entry in `start`, the routes before the log began)."""
    seen: dict[str, str] = dict(start or {})
    groups: dict[str, frozenset[str]] = {}  # group id -> member ids
    last = None
    entries: list[tuple[float, list[str]]] = []
    for line in mon_log.read_text(errors="replace").splitlines():
        t = iso_ts(line)
        if t is not None:
            entries.append((t, [line.split("] ", 1)[1].strip() if "] " in line else line]))
        elif entries and line.startswith((" ", "\t")):
            entries[-1][1].append(line.strip())
    for t, lines in entries:
        head = lines[0]
        words = head.split()
        if not words:
            continue
        if words[0] == "id" or words[:2] == ["Deleted", "id"]:
            deleted = words[0] == "Deleted"
            nh_id = words[2] if deleted else words[1]
            if nh_id in groups or (not deleted and "group" in words):
                members = (
                    frozenset(m.split(",")[0] for m in words[words.index("group") + 1].split("/"))
                    if not deleted and "group" in words
                    else frozenset()
                )
                changed = deleted or groups.get(nh_id) != members
                if deleted:
                    groups.pop(nh_id, None)
                else:
                    groups[nh_id] = members
            else:  # a single nexthop: a change only while a group uses it
                changed = any(nh_id in m for m in groups.values())
        elif words[0] == "Deleted":
            if len(words) > 1:
                seen.pop(words[1], None)
            changed = True
        else:
            sig = route_sig(lines)
            changed = seen.get(words[0]) != sig
            seen[words[0]] = sig
        if changed and t0 <= t <= until:
            last = t
    return last


def wire_times(pcap: Path, gw: str, runs: list[dict[str, Any]]) -> None:
    """Add to each step that sent UPDATEs the time from its last UPDATE on the router's wire
    (the last TCP segment from s1 longer than a KEEPALIVE, captured on the router's end of
    s1's link) to the kernel's last change (`wire_s`), and from its first one
    (`wire_first_s`)."""
    frames = sorted(
        float(x)
        for x in _tshark(
            pcap, (179,), "-Y", f"ip.src == {gw} && tcp.len > 19",
            "-T", "fields", "-e", "frame.time_epoch",
        ).split()
    )  # fmt: skip
    for row in runs:
        for step in ("withdraw", "announce", "return"):
            r = row.get(step, {})
            t0, t_ev, until = r.get("t0"), r.get("event_s"), r.get("poll_started_s")
            if t0 is None or t_ev is None or until is None:
                continue
            mine = [t for t in frames if t0 <= t <= t0 + until]
            if mine:
                r["wire_s"] = round(t0 + t_ev - mine[-1], 4)
                r["wire_first_s"] = round(t0 + t_ev - mine[0], 4)
                r["updates"] = len(mine)


def start_gen(ns: Namespace, i: int, wd: Path, vips: int) -> LoadGen:
    r4, s4, _, _ = server_addrs(i)
    return LoadGen(
        ns, wd / f"gen{i}.log",
        "--peer", r4, "--source-start", s4, "--asn", str(65000 + i), "--sessions", "1",
        "--vip-start", VIP_START, "--vip-count", str(vips), "--vip-stride", "0",
    )  # fmt: skip


def run_one(kind: str, a: argparse.Namespace) -> dict[str, Any]:
    wd = workdir(f"mass-{kind}")
    proto = "200" if kind == "bgplb" else "bird"
    v = a.vips
    res: dict[str, Any] = {"router": kind, "runs": []}
    with Topology(prefix="bmf") as topo:
        rtr, servers = build(topo, 3)
        router: Any = None
        gens: list[LoadGen] = []
        monitor: subprocess.Popen[bytes] | None = None
        capture: Capture | None = None
        gw1 = server_addrs(1)[1]
        try:
            if kind == "bgplb":
                ranges = (
                    '[[peer_ranges]]\nprefix = "192.0.2.0/24"\nasn = "any"\n'
                    'accept = ["198.18.0.0/15 le 32"]\nmax_prefixes = 10000000\n'
                )
                router = BenchRouter(
                    rtr, wd, router_toml("resilient", buckets=512, idle_timer="10s", ranges=ranges)
                )
                router.start()
                assert router.proc is not None
                pid = router.proc.pid
            else:
                router = start_bird_router(rtr, wd)
                pid = router.pids[0]
            t_load = time.monotonic()
            gens = [start_gen(ns, i, wd, v) for i, ns in enumerate(servers, start=1)]
            for g in gens:
                g.wait(lambda e: e.get("event") == "all_established", 60)
            for i in (1, 2, 3):
                gw = server_addrs(i)[1]
                t, _ = wait_count(rtr, proto, gw, v, a)
                if t is None:
                    raise RuntimeError(f"{kind}: {v} routes via {gw} not there in {a.timeout} s")
            res["load_s"] = round(time.monotonic() - t_load, 2)
            res["rss_kib"] = rss_kib(pid)
            print(f"  {kind}: {v} VIPs x 3 paths in {res['load_s']} s", flush=True)
            mon_log = wd / "monitor.txt"
            start = route_entries("\n".join(ip_lines(rtr, "route", "show", "proto", proto)))
            with mon_log.open("wb") as out:
                monitor = rtr.popen(
                    "ip", "-ts", "monitor", "route", "nexthop", stdout=out,
                    stderr=subprocess.STDOUT,
                )  # fmt: skip
            time.sleep(0.5)
            pcap = wd / "srv1.pcap"
            capture = Capture(rtr, "srv1", pcap, f"tcp port 179 and src host {gw1}")
            capture.start()
            for run in range(a.runs):
                row: dict[str, Any] = {}
                for step in STEPS:
                    extra: dict[str, Any] = {}
                    if step == "withdraw":
                        t0 = gens[0].send(withdraw="all")
                        want = 0
                    elif step == "announce":
                        t0 = gens[0].send(announce="all")
                        want = v
                    elif step == "abort":
                        t0 = gens[0].kill9()
                        gens[0].stop()
                        want = 0
                    else:
                        t0 = time.time()
                        gens[0] = start_gen(servers[0], 1, wd, v)
                        ev = gens[0].wait(lambda e: e.get("event") == "established", 60)
                        extra["established_s"] = round(ev["t"] - t0, 3)
                        want = v
                    t_poll, t_poll_start = wait_count(rtr, proto, gw1, want, a)
                    if t_poll is None or t_poll_start is None:
                        row[step] = {"poll_s": None, "event_s": None}
                        print(f"  {kind} run {run + 1} {step}: not converged", flush=True)
                        continue
                    time.sleep(0.3)  # let ip monitor print what it read
                    t_ev = last_change(mon_log, t0, t_poll, start)
                    t_notify = last_event(mon_log, t0, t_poll)
                    row[step] = {
                        "t0": round(t0, 6),
                        "poll_s": round(t_poll - t0, 3),
                        "poll_started_s": round(t_poll_start - t0, 3),
                        "event_s": None if t_ev is None else round(t_ev - t0, 4),
                        "notify_s": None if t_notify is None else round(t_notify - t0, 3),
                        **extra,
                    }
                    if "established_s" in extra and t_ev is not None:
                        row[step]["after_established_s"] = round(
                            t_ev - t0 - extra["established_s"], 3
                        )
                    print(f"  {kind} run {run + 1} {step}: {json.dumps(row[step])}", flush=True)
                    time.sleep(a.gap)
                res["runs"].append(row)
            time.sleep(0.2)
            capture.stop()
            wire_times(pcap, gw1, res["runs"])
            res["rss_end_kib"] = rss_kib(pid)
        finally:
            if capture is not None:
                capture.stop()
            if monitor is not None and monitor.poll() is None:
                monitor.kill()
                monitor.wait(5)
            for g in gens:
                g.stop()
            if router is not None:
                t = time.monotonic()
                if kind == "bgplb":
                    if router.proc is not None:
                        router.stop(timeout=120)
                else:
                    router.stop(timeout=20)
                res["stop_s"] = round(time.monotonic() - t, 2)
                res["free"] = kernel_free_time(rtr, proto)
    return res


def median_of(res: dict[str, Any], step: str, key: str) -> float | None:
    vals = [r[step][key] for r in res["runs"] if r.get(step, {}).get(key) is not None]
    return statistics.median(vals) if vals else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vips", type=int, default=10000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--routers", default="bgplb,bird")
    p.add_argument("--poll", type=float, default=0.05)
    p.add_argument("--gap", type=float, default=1.0, help="seconds between steps")
    p.add_argument("--timeout", type=float, default=120.0, help="per step")
    p.add_argument("--json", help="also write the results to this file")
    a = p.parse_args()
    if not 1 <= a.vips <= 100_000 or not 1 <= a.runs <= 50:
        p.error("--vips 1..100000, --runs 1..50")
    cmd, started = begin()
    results = {kind: run_one(kind, a) for kind in a.routers.split(",")}
    print(
        f"\n3 servers x the same {a.vips} VIPs, s1 leaves and returns; median of {a.runs} run(s); "
        f"seconds from the command (or SIGKILL) to the kernel's last change (event) / to the "
        f"poll that confirmed it (poll); {started}"
    )
    print("(notify: the last notification of any kind, echoes of a group replace included)")
    label = {"bgplb": "bgplb router (resilient)", "bird": "BIRD 2 (merge paths)"}
    print(f"{'router':<26} " + " ".join(f"{s + ' event/poll':>22}" for s in STEPS))

    def f(x: float | None) -> str:
        return "-" if x is None else f"{x:.4f}" if x < 0.1 else f"{x:.3f}"

    for kind, r in results.items():
        cells = [f"{f(median_of(r, s, 'event_s'))} / {f(median_of(r, s, 'poll_s'))}" for s in STEPS]
        print(f"{label[kind]:<26} " + " ".join(f"{c:>22}" for c in cells))
        cells = [f"notify {f(median_of(r, s, 'notify_s'))}" for s in STEPS]
        print(f"{'':<26} " + " ".join(f"{c:>22}" for c in cells))
    print("from s1's last UPDATE on the router's wire to the last kernel change (wire):")
    for kind, r in results.items():
        cells = [f"wire {f(median_of(r, s, 'wire_s'))}" for s in STEPS]
        print(f"{label[kind]:<26} " + " ".join(f"{c:>22}" for c in cells))
    bg, bd = results.get("bgplb"), results.get("bird")
    if bg and bd:
        for s in STEPS:
            x, y = median_of(bg, s, "event_s"), median_of(bd, s, "event_s")
            if x and y:
                print(f"  {s}: bgplb / BIRD = {x / y:.2f}x (last kernel change)")
            x, y = median_of(bg, s, "wire_s"), median_of(bd, s, "wire_s")
            if x and y:
                print(f"  {s}: bgplb / BIRD = {x / y:.2f}x (from the wire)")
    for kind, r in results.items():
        print(
            f"  {kind}: RSS {r.get('rss_kib', 0) / 1024:.1f} MiB loaded; exit {r.get('stop_s')} s; "
            f"kernel free after exit {json.dumps(r.get('free'))}"
        )
    if a.json:
        Path(a.json).write_text(
            json.dumps({"command": cmd, "date": started, "results": results}, indent=1)
        )


if __name__ == "__main__":
    sys.exit(main())
