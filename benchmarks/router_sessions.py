"""Many agent sessions with BFD: `bgplb router` vs BIRD 2 (dynamic BGP, `neighbor range`), the
same load generator, same run.

Topology: router namespace `rtr` (198.18.0.1/22 on veth `gen`) and load-generator namespace
`gen` holding --peers source addresses 198.18.0.2 … on its one veth. The load generator
(`benchmarks/_loadgen.py`: one process, one asyncio loop, bgplb's own BGP and BFD cores) opens
one eBGP session per source address (AS 65100), each announcing one VIP (198.19.0.0 + i /32),
each with a single-hop BFD session, --bfd-interval ms x --bfd-mult.

Measured per router:

* up: seconds from starting the load generator until every session is Established and its BFD
  Up (the generator's view), and until the router's kernel holds all --peers routes (polled
  every 0.1 s with `ip -n rtr route show proto 200|bird`);
* soak: for --soak seconds, BGP sessions that went down and BFD Up -> Down transitions, seen by
  the generator (every session; with the reason: a BFD Down tears BGP down too, so it counts in
  both), and by the router (bgplb: sessions whose `status` uptime is shorter than the soak at
  its end, and the router's event-loop worst stall from `status.loop`; BIRD: sessions not
  Established / BFD sessions not Up at the end); UDP receive errors (full socket buffers) in
  both namespaces over the soak, from /proc/net/snmp;
  the router's CPU (% of one core) over the soak, its RSS; the generator's worst loop stall
  (if the generator stalls, flaps are its fault: it is printed so that can be told);
* withdraw: half the sessions withdraw their VIP in the same loop step; seconds from writing
  that command until the kernel holds the other half only (polled every 20 ms).

BIRD 2.0.12: `protocol bgp gen { neighbor range 198.18.0.0/22 external; dynamic name "gen";
bfd on; … }` spawns one protocol per accepted session; `protocol bfd` with the same timers.

Both sides' BFD runs in the BFD thread (bgplb.io.bfd_timing); their send lateness and GC
pauses are reported (the router's from its "BFD timing" log lines, one a minute; the
generator's in its stats), so a flap can be blamed on the side that was late. The generator
stands for 1,000 machines: as root its BFD thread runs SCHED_FIFO (--gen-bfd-realtime,
default 50) so that it is not the late side; the router runs as configured (normal priority),
or with its BFD thread SCHED_FIFO (--router-bfd-realtime N: what its `[bfd] realtime_priority`
option does, applied from outside by the thread's kernel name "bgplb-bfd").

Usage (root): .venv/bin/python benchmarks/router_sessions.py [--peers 1000] [--soak 600]
       [--routers bgplb,bird] [--bfd-interval 300] [--bfd-mult 3] [--json FILE]
       (--duration is --soak, --bfd 300x3 sets both BFD timers)
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from _loadgen import LoadGen, begin, ip_lines, kernel_free_time
from _routerlab import BenchRouter, router_toml, rss_kib, workdir
from bgplb.lab.netns import Namespace, Topology, run
from bgplb.lab.peers import Bird

ROUTER_AS = 65530
GEN_AS = 65100
RTR_ADDR = "198.18.0.1"
SRC_START = "198.18.0.2"
VIP_START = "198.19.0.0"
TICK = 100  # SC_CLK_TCK on Linux


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


class RangeBird(Bird):
    """BIRD 2 as the router: one dynamic BGP protocol for the whole source range, BFD on."""

    def __init__(self, ns: Namespace, wd: Path, interval_ms: int, mult: int) -> None:
        super().__init__(ns, wd, ROUTER_AS, "192.0.2.1", kernel=True)
        self.interval_ms, self.mult = interval_ms, mult

    def config_text(self) -> str:
        return f"""log stderr {{ warning, error, fatal }};
router id 192.0.2.1;
protocol device {{ scan time 10; }}
protocol kernel k4 {{ ipv4 {{ import none; export where source = RTS_BGP; }};
  merge paths on; learn off; }}
protocol bfd {{ interface "*" {{ interval {self.interval_ms} ms; multiplier {self.mult}; }}; }}
protocol bgp gen {{
  local {RTR_ADDR} as {ROUTER_AS};
  neighbor range 198.18.0.0/22 external;
  dynamic name "gen";
  hold time 9; keepalive time 3;
  error wait time 1, 5;
  bfd on;
  ipv4 {{ import all; export none; }};
}}
"""

    def counts(self) -> dict[str, int]:
        """Dynamic sessions Established, and BFD sessions Up (from birdc)."""
        est = sum(
            1
            for ln in self.control("show", "protocols", timeout=30).splitlines()
            if ln.startswith("gen") and "Established" in ln
        )
        up = sum(
            1
            for ln in self.control("show", "bfd", "sessions", timeout=30).splitlines()
            if " Up " in f" {ln} "
        )
        return {"established": est, "bfd_up": up}


def routes(ns: Namespace, proto: str) -> int:
    return len(ip_lines(ns, "-4", "route", "show", "proto", proto))


def wait_routes(ns: Namespace, proto: str, want: int, timeout: float, step: float) -> float | None:
    """Seconds (monotonic) when the kernel first showed exactly `want` routes, or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if routes(ns, proto) == want:
            return time.monotonic()
        time.sleep(step)
    return None


def udp_errors(ns: Namespace) -> dict[str, int]:
    """UDP InErrors and RcvbufErrors of the namespace (/proc/net/snmp read inside it): BFD
    packets the kernel dropped because a socket's receive buffer was full."""
    lines = [ln.split() for ln in ns.exec("cat", "/proc/net/snmp").splitlines()]
    udp = [ln[1:] for ln in lines if ln and ln[0] == "Udp:"]
    if len(udp) < 2:
        return {}
    row = dict(zip(udp[0], udp[1], strict=False))
    return {k: int(row.get(k, 0)) for k in ("InDatagrams", "InErrors", "RcvbufErrors")}


def router_view(kind: str, router: Any, soak: float | None = None) -> dict[str, Any]:
    """Sessions Established and BFD Up as the router sees them; for bgplb also how many
    sessions have been up for less than `soak` seconds (they went down during the soak: the
    router's own BFD counters start again with each session) and its event-loop figures."""
    if kind == "bird":
        return router.counts()
    st = router.status()
    peers = st["peers"]
    out: dict[str, Any] = {
        "established": sum(1 for p in peers if p.get("established")),
        "bfd_up": sum(1 for p in peers if (p.get("bfd") or {}).get("state") == "up"),
        "loop": st.get("loop"),
    }
    if soak is not None:
        out["younger_than_soak"] = sum(
            1 for p in peers if p.get("uptime") is None or p["uptime"] < soak
        )
    return out


_TIMING = re.compile(
    r"BFD timing, last \d+ s: (\d+) packets, send lateness p50 ([\d.]+) p99 ([\d.]+) "
    r"(?:\(last 100,000\) )?max "
    r"([\d.]+) ms; (\d+) GC pauses, longest ([\d.]+) ms"
)


def router_bfd_timing(log: Path, since: int) -> dict[str, Any]:
    """The bgplb router's own BFD send lateness and GC pauses, from its "BFD timing" log lines
    (one a minute) written after byte offset `since`: worst p99 and max over the lines."""
    try:
        text = log.read_bytes()[since:].decode(errors="replace")
    except OSError:
        return {}
    rows = [m.groups() for m in _TIMING.finditer(text)]
    if not rows:
        return {"lines": 0}
    return {
        "lines": len(rows),
        "packets": sum(int(r[0]) for r in rows),
        "late_p99_ms_worst": max(float(r[2]) for r in rows),
        "late_max_ms": max(float(r[3]) for r in rows),
        "gc_longest_ms": max(float(r[5]) for r in rows),
    }


def realtime_bfd_thread(pid: int, prio: int, stop: threading.Event, note: dict[str, Any]) -> None:
    """Put the router's BFD thread (kernel name "bgplb-bfd", made at its first BFD session)
    in SCHED_FIFO `prio` as soon as it exists: what the router's `[bfd] realtime_priority`
    option does, for a router whose configuration schema lacks it. Bounded: 600 tries."""
    for _ in range(600):
        if stop.is_set():
            return
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                if (task / "comm").read_text().strip() == "bgplb-bfd":
                    os.sched_setscheduler(int(task.name), os.SCHED_FIFO, os.sched_param(prio))
                    note["router_bfd_realtime"] = prio
                    return
            except OSError:
                continue
        stop.wait(0.1)


def run_one(kind: str, a: argparse.Namespace) -> dict[str, Any]:
    wd = workdir(f"sessions-{kind}")
    res: dict[str, Any] = {"router": kind}
    n = a.peers
    with Topology(prefix="bss") as topo:
        rtr = topo.add("rtr")
        gen = topo.add("gen")
        topo.link(rtr, gen, [f"{RTR_ADDR}/22"], [f"{SRC_START}/22"], "gen", "rtr")
        first = int(ipaddress.IPv4Address(SRC_START))
        batch = "".join(
            f"addr add {ipaddress.IPv4Address(first + i)}/22 dev rtr\n" for i in range(1, n)
        )
        run(["ip", "-n", gen.name, "-batch", "-"], input_text=batch, timeout=120)
        router: Any = None
        gen_proc: LoadGen | None = None
        rt_stop = threading.Event()
        proto = "200" if kind == "bgplb" else "bird"
        try:
            if kind == "bgplb":
                ranges = (
                    '[[peer_ranges]]\nprefix = "198.18.0.0/22"\nasn = "any"\n'
                    'accept = ["198.19.0.0/16 le 32"]\nmax_prefixes = 100\n'
                    f"bfd = {{ interval_ms = {a.bfd_interval}, multiplier = {a.bfd_mult} }}\n"
                )
                router = BenchRouter(rtr, wd, router_toml("resilient", buckets=512, ranges=ranges))
                router.start()
                assert router.proc is not None
                pid = router.proc.pid
            else:
                router = RangeBird(rtr, wd, a.bfd_interval, a.bfd_mult)
                router.start()
                pid = router.pids[0]
            res["rss_idle_kib"] = rss_kib(pid)
            if kind == "bgplb" and a.router_bfd_realtime:
                threading.Thread(
                    target=realtime_bfd_thread,
                    args=(pid, a.router_bfd_realtime, rt_stop, res),
                    daemon=True,
                ).start()
            c0 = cpu_s(pid)
            t0, t0_wall = time.monotonic(), time.time()
            gen_proc = LoadGen(
                gen, wd / "loadgen.log",
                "--peer", RTR_ADDR, "--sessions", str(n), "--source-start", SRC_START,
                "--asn", str(GEN_AS), "--vip-start", VIP_START, "--vip-count", "1",
                "--vip-stride", "1", "--bfd-interval-ms", str(a.bfd_interval),
                "--bfd-mult", str(a.bfd_mult), "--max-seconds", str(a.soak + 900),
                "--bfd-realtime", str(a.gen_bfd_realtime),
            )  # fmt: skip
            try:
                ev = gen_proc.wait(lambda e: e.get("event") == "all_established", a.up_timeout)
                res["up_s"] = round(ev["t"] - t0_wall, 2)  # when the generator saw it
            except TimeoutError:
                res["up_s"] = None
                gen_proc.drain()
                res["up_progress"] = gen_proc.stats()
            t_inst = wait_routes(rtr, proto, n, a.up_timeout, 0.1)
            res["installed_s"] = None if t_inst is None else round(t_inst - t0, 2)
            res["cpu_up_s"] = round(cpu_s(pid) - c0, 2)
            res["rss_up_kib"] = rss_kib(pid)
            print(f"  {kind}: up {res['up_s']} s, installed {res['installed_s']} s", flush=True)
            # soak
            gen_proc.stats(reset=True)
            before = router_view(kind, router)
            udp0 = {"rtr": udp_errors(rtr), "gen": udp_errors(gen)}
            c1, t1 = cpu_s(pid), time.monotonic()
            log_at = router.log.stat().st_size if kind == "bgplb" else 0
            n_ev = len(gen_proc.events)
            end = t1 + a.soak
            while time.monotonic() < end:
                time.sleep(min(5.0, max(0.0, end - time.monotonic())))
                gen_proc.drain()
                if router.proc.poll() is not None if kind == "bgplb" else not router.running:
                    res["error"] = "router exited during the soak"
                    break
            soak_s = time.monotonic() - t1
            res["soak_s"] = round(soak_s, 1)
            res["cpu_soak_pct"] = round(100 * (cpu_s(pid) - c1) / soak_s, 1)
            res["rss_soak_kib"] = rss_kib(pid)
            st = gen_proc.stats()
            after = router_view(kind, router, soak_s)
            udp1 = {"rtr": udp_errors(rtr), "gen": udp_errors(gen)}
            udp = {
                side: {k: udp1[side].get(k, 0) - udp0[side].get(k, 0) for k in udp1[side]}
                for side in udp1
            }
            downs = [e for e in gen_proc.events[n_ev:] if e.get("event") == "down"]
            reasons = Counter(str(e.get("reason"))[:60] for e in downs)
            res["soak"] = {
                "gen_bgp_downs": sum(1 for e in downs if not e["bfd"]),
                "gen_bfd_downs": sum(1 for e in downs if e["bfd"]),
                "gen_established_end": st["established"],
                "gen_bfd_up_end": st["bfd_up"],
                "gen_cpu_s": st["cpu_s"],
                "gen_loop_max_ms": st["loop_max_ms"],
                "gen_down_reasons": dict(reasons.most_common(6)),
                "gen_sessions_flapped": len({e["i"] for e in downs}),
                "udp_during_soak": udp,
                "router_before": before,
                "router_after": after,
                "gen_bfd_timing": st.get("bfd_timing"),
                "router_bfd_timing": router_bfd_timing(router.log, log_at)
                if kind == "bgplb"
                else None,
            }
            print(f"  {kind}: soak {json.dumps(res['soak'])}", flush=True)
            # half withdraw
            half = n // 2
            t_w = time.monotonic()
            gen_proc.send(withdraw=list(range(half)))
            t_conv = wait_routes(rtr, proto, n - half, 120, 0.02)
            res["withdraw_half"] = half
            res["withdraw_s"] = None if t_conv is None else round(t_conv - t_w, 3)
            res["rss_end_kib"] = rss_kib(pid)
        finally:
            rt_stop.set()
            if gen_proc is not None:
                gen_proc.stop()
            if router is not None:
                if kind == "bgplb":
                    if router.proc is not None:
                        t = time.monotonic()
                        router.stop(timeout=120)
                        res["stop_s"] = round(time.monotonic() - t, 2)
                        res["free"] = kernel_free_time(rtr, proto)
                else:
                    t = time.monotonic()
                    router.stop(timeout=20)
                    res["stop_s"] = round(time.monotonic() - t, 2)
                    res["free"] = kernel_free_time(rtr, proto)
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--peers", type=int, default=1000)
    p.add_argument("--soak", "--duration", type=float, default=600.0, help="soak seconds")
    p.add_argument("--routers", default="bgplb,bird")
    p.add_argument("--bfd-interval", type=int, default=300, help="ms")
    p.add_argument("--bfd-mult", type=int, default=3)
    p.add_argument(
        "--gen-bfd-realtime",
        type=int,
        default=50 if os.geteuid() == 0 else 0,
        help="SCHED_FIFO priority of the generator's BFD thread (0: none; default 50 as root)",
    )
    p.add_argument(
        "--router-bfd-realtime",
        type=int,
        default=0,
        help="SCHED_FIFO priority for the bgplb router's BFD thread (0: none)",
    )
    p.add_argument("--bfd", help="INTERVALxMULT, e.g. 300x3 (sets --bfd-interval/--bfd-mult)")
    p.add_argument("--up-timeout", type=float, default=300.0)
    p.add_argument("--json", help="also write the results to this file")
    a = p.parse_args()
    if a.bfd:
        m = re.fullmatch(r"(\d+)x(\d+)", a.bfd)
        if not m:
            p.error("--bfd: INTERVALxMULT in ms, e.g. 300x3")
        a.bfd_interval, a.bfd_mult = int(m[1]), int(m[2])
    if not 2 <= a.peers <= 1020:
        p.error("--peers must be 2..1020 (one /22 of sources)")
    cmd, started = begin()
    results = {kind: run_one(kind, a) for kind in a.routers.split(",")}
    print(
        f"\n{a.peers} sessions from one load generator, one VIP each, BFD {a.bfd_interval} ms x "
        f"{a.bfd_mult}, soak {a.soak:.0f} s; {started}"
    )
    hdr = (
        f"{'router':<24} {'up s':>6} {'inst s':>7} {'gen downs BGP/BFD':>18} "
        f"{'rtr sessions':>13} {'CPU %':>6} {'RSS MiB':>8} {'wdraw s':>8} {'gen stall ms':>12}"
    )
    print(hdr)
    label = {"bgplb": "bgplb router", "bird": "BIRD 2 (neighbor range)"}

    def f(v: Any, fmt: str = "{:.2f}") -> str:
        return "-" if v is None else fmt.format(v)

    for kind, r in results.items():
        s = r.get("soak", {})
        ra = s.get("router_after", {})
        gen_downs = f"{s.get('gen_bgp_downs', '-')}/{s.get('gen_bfd_downs', '-')}"
        if kind == "bgplb" and s:
            rtr_downs = f"{ra.get('younger_than_soak', '-')} reset"
        elif s:  # BIRD keeps no count: sessions not Up at the end
            rtr_downs = f"{a.peers - ra.get('bfd_up', 0)} not Up"
        else:
            rtr_downs = "-"
        rss = r.get("rss_soak_kib")
        print(
            f"{label[kind]:<24} {f(r.get('up_s')):>6} {f(r.get('installed_s')):>7} "
            f"{gen_downs:>18} {rtr_downs:>13} {f(r.get('cpu_soak_pct'), '{:.1f}'):>6} "
            f"{f(rss / 1024 if rss else None, '{:.1f}'):>8} "
            f"{f(r.get('withdraw_s'), '{:.3f}'):>8} {f(s.get('gen_loop_max_ms'), '{:.0f}'):>12}"
        )
        loop = (ra.get("loop") or {}) if isinstance(ra, dict) else {}
        print(
            f"{'':<24} sessions the generator saw go down: {s.get('gen_sessions_flapped', '-')}; "
            f"why: {json.dumps(s.get('gen_down_reasons', {}))}"
        )
        print(f"{'':<24} UDP during the soak: {json.dumps(s.get('udp_during_soak', {}))}")
        print(
            f"{'':<24} BFD send lateness, router: {json.dumps(s.get('router_bfd_timing'))}; "
            f"generator: {json.dumps(s.get('gen_bfd_timing'))}"
        )
        print(
            f"{'':<24} router loop worst stall {loop.get('max_ms', 'n/a')} ms "
            f"({loop.get('stalls', 'n/a')} > {loop.get('stall_ms', 50)} ms); "
            f"stop {r.get('stop_s')} s; kernel free after exit {json.dumps(r.get('free'))}"
        )
    bg, bd = results.get("bgplb"), results.get("bird")
    if bg and bd:
        for key in ("up_s", "installed_s", "withdraw_s", "cpu_soak_pct", "rss_soak_kib"):
            if bg.get(key) and bd.get(key):
                print(f"  {key}: bgplb / BIRD = {bg[key] / bd[key]:.1f}x")
    if a.json:
        Path(a.json).write_text(
            json.dumps({"command": cmd, "date": started, "results": results}, indent=1)
        )


if __name__ == "__main__":
    sys.exit(main())
