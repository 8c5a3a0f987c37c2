"""Withdrawal latency of the router: from the withdrawal UPDATE arriving on the router's wire to
the kernel's forwarding state changing — `bgplb router` (nexthop group replaced in place) vs
BIRD 2 (kernel protocol, `merge paths on`: the multipath route replaced), same run.

Three server namespaces (bgplb speakers, one session each) announce one VIP to the router; s3
then withdraws and re-announces it --count times (each step waits until the kernel shows the
change, then --gap seconds). Per withdrawal:

* t_wire: the kernel timestamp of the frame carrying the withdrawal, captured by tcpdump on the
  router's own veth end (`srv3`, inside the router namespace): the time the UPDATE reached the
  router's interface, before TCP delivered it to the daemon;
* t_fib: the first `ip -ts monitor route nexthop` event in the router namespace after t_wire
  (the time `ip` read the netlink notification: includes its own wake-up, tens of µs).

Both clocks are the host's CLOCK_REALTIME. Prints median, p90, p99, max per router.

With --keep every server also announces a second VIP and keeps it, so that s3's withdrawal
leaves it a path: the router's normal per-VIP path is measured, not the fast path of a server
that withdrew everything.

Usage (root): .venv/bin/python benchmarks/router_withdraw_latency.py [--count 50] [--gap 0.1]
       [--keep]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from _routerlab import (
    VIP,
    BenchRouter,
    Capture,
    GshutBird,
    _tshark,
    build,
    established,
    hops,
    iso_ts,
    kernel_info,
    now_utc,
    percentile,
    router_toml,
    server_addrs,
    speaker,
    start_bird_router,
    stop_all,
    wait_for,
    workdir,
)
from bgplb.lab.netns import Topology

KEEP_VIP = "198.51.100.11/32"  # --keep: a second VIP every server keeps announcing


def run_one(kind: str, count: int, gap: float, keep: bool = False) -> list[float]:
    wd = workdir(f"wl-{kind}")
    with Topology(prefix="bwl") as topo:
        rtr, servers = build(topo, 3)
        router: BenchRouter | None = None
        bird: GshutBird | None = None
        sps = []
        monitor: subprocess.Popen[bytes] | None = None
        try:
            if kind == "bgplb":
                router = BenchRouter(rtr, wd, router_toml("resilient", buckets=512))
                router.start()
            else:
                bird = start_bird_router(rtr, wd)
            for i, ns in enumerate(servers, start=1):
                r4, s4, _, _ = server_addrs(i)
                sp = speaker(ns, 65000 + i, s4, r4, wd / f"s{i}.log")
                sps.append(sp)
            for sp in sps:
                established(sp)
                sp.send(announce=VIP)
                if keep:
                    sp.send(announce=KEEP_VIP)
            v = [server_addrs(i)[1] for i in (1, 2, 3)]
            wait_for("3 nexthops", lambda: hops(rtr, VIP) == v, 30)
            time.sleep(0.5)
            mon_log = wd / "monitor.txt"
            with mon_log.open("wb") as out:
                monitor = rtr.popen(
                    "ip", "-ts", "monitor", "route", "nexthop", stdout=out,
                    stderr=subprocess.STDOUT,
                )  # fmt: skip
            time.sleep(0.3)
            pcap = wd / "srv3.pcap"
            with Capture(rtr, "srv3", pcap):
                for _ in range(count):
                    sps[2].send(withdraw=VIP)
                    wait_for("2 nexthops", lambda: hops(rtr, VIP) == v[:2], 10, 0.03)
                    time.sleep(gap)
                    sps[2].send(announce=VIP)
                    wait_for("3 nexthops", lambda: hops(rtr, VIP) == v, 10, 0.03)
                    time.sleep(gap)
                time.sleep(0.2)
            monitor.terminate()
            monitor.wait(5)
            frames = [
                float(x)
                for x in _tshark(
                    pcap, (179,), "-Y",
                    f"ip.src == {v[2]} && bgp.type == 2 && bgp.withdrawn_prefix",
                    "-T", "fields", "-e", "frame.time_epoch",
                ).split()
            ]  # fmt: skip
            events = [
                t for line in mon_log.read_text().splitlines() if (t := iso_ts(line)) is not None
            ]
            lat = []
            for w in frames:
                after = [t for t in events if t >= w]
                if after:
                    lat.append((after[0] - w) * 1000)
            if len(frames) != count:
                print(f"  {kind}: {len(frames)} withdrawal frames captured of {count}")
            return lat
        finally:
            if monitor is not None and monitor.poll() is None:
                monitor.kill()
                monitor.wait(5)
            stop_all(sps)
            if router is not None and router.proc is not None:
                router.stop()
            if bird is not None:
                bird.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--count", type=int, default=50)
    p.add_argument("--gap", type=float, default=0.1, help="seconds between steps")
    p.add_argument("--routers", default="bgplb,bird")
    p.add_argument(
        "--keep",
        action="store_true",
        help=f"every server also announces {KEEP_VIP} and keeps it: s3's withdrawal leaves it "
        "a path (the router's normal path, not its withdrew-everything fast path)",
    )
    a = p.parse_args()
    results = {}
    for kind in a.routers.split(","):
        results[kind] = run_one(kind, a.count, a.gap, a.keep)
    print(
        f"withdrawal on the wire -> kernel change, {a.count} withdrawals, 3 paths -> 2, "
        f"{now_utc()}, kernel {kernel_info()}"
    )
    print(f"{'router':<28} {'n':>4} {'median ms':>10} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    label = {
        "bgplb": "bgplb router (resilient)",
        "bird": "BIRD 2 (merge paths)",
    }
    for kind, lat in results.items():
        if not lat:
            print(f"{label[kind]:<28} no data")
            continue
        print(
            f"{label[kind]:<28} {len(lat):>4} {statistics.median(lat):>10.3f} "
            f"{percentile(lat, 90):>8.3f} {percentile(lat, 99):>8.3f} {max(lat):>8.3f}"
        )
    if all(results.get(k) for k in ("bgplb", "bird")):
        ratio = statistics.median(results["bgplb"]) / statistics.median(results["bird"])
        print(f"median ratio bgplb / BIRD: {ratio:.1f}x")


if __name__ == "__main__":
    sys.exit(main())
