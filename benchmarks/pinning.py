"""Connection pinning: broken connections per step, and forwarding throughput with and without.

Part 1 — same traffic for every router: `bgplb router` with pinning (resilient group, and
multipath group), without pinning (resilient, multipath), and BIRD 2's ECMP route (kernel
protocol, merge paths, the RFC 8326 import policy: GRACEFUL_SHUTDOWN -> LOCAL_PREF 0). The client
(tests/interop/pinclient.py) opens --conns connections to the VIP over 3 servers; they are idle
between probes (one echo each), and every wait is longer than idle_timer (1 s), so a resilient
group's buckets may migrate. Steps:

  drain    s3 announces with GRACEFUL_SHUTDOWN; then 60 new connections (how many reach s3?)
  re-add   s3 announces without it
  scale    --conns more connections (spread over the three?)
  withdraw s3 withdraws for good (only its connections may break)

Each cell: connections broken in that step, to s1+s2 ("others") / to s3.

Part 2 — iperf3 (-P 4, --seconds each) client -> VIP with one server announced, router with
pinning on vs off (off: no nftables table, no conntrack in the router namespace), --reps
alternating runs, median receiver throughput, and the ratio.

Usage (root): .venv/bin/python benchmarks/pinning.py [--conns 300] [--routers
       pin-resilient,pin-multipath,resilient,multipath,bird] [--reps 3] [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "interop"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from pinlab import PinLab  # noqa: E402

from bgplb.lab.netns import Topology  # noqa: E402

IDLE = 2.0
SETTLE = 2.0
LABEL = {
    "pin-resilient": "bgplb, pinning, resilient",
    "pin-multipath": "bgplb, pinning, multipath",
    "resilient": "bgplb, resilient (no pinning)",
    "multipath": "bgplb, multipath (no pinning)",
    "bird": "BIRD 2 ECMP (merge paths)",
}


def start(lab: PinLab, kind: str, wd: Path) -> Any:
    if kind == "bird":
        from _routerlab import start_bird_router

        return start_bird_router(lab.rtr, wd)
    group = kind.removeprefix("pin-")
    lab.start_router(group, pinning=kind.startswith("pin-"), linger="60s")
    return None


def delta(before: dict[str, Any], after: dict[str, Any]) -> tuple[int, int]:
    b, a = before["broken"], after["broken"]
    others = sum(a.get(s, 0) - b.get(s, 0) for s in ("s1", "s2"))
    return others, a.get("s3", 0) - b.get("s3", 0)


def run_steps(kind: str, conns: int) -> dict[str, Any]:
    wd = Path(tempfile.mkdtemp(prefix=f"bgplb-bench-pin-{kind}-"))
    out: dict[str, Any] = {}
    with Topology(prefix="bpn") as topo:
        lab = PinLab(topo, wd)
        bird = None
        try:
            bird = start(lab, kind, wd)
            lab.start_servers()
            lab.wait_members([1, 2, 3], timeout=40)
            lab.start_client()
            out["spread"] = lab.open(conns)
            time.sleep(IDLE)
            p0 = lab.probe()
            out["baseline"] = delta({"broken": {}}, p0)
            # drain
            lab.announce(3, drain=True)
            time.sleep(SETTLE)
            out["new_on_s3_during_drain"] = lab.open(60).get("s3", 0)
            time.sleep(IDLE)
            p1 = lab.probe()
            out["drain"] = delta(p0, p1)
            # re-add
            lab.announce(3)
            time.sleep(SETTLE + IDLE)
            p2 = lab.probe()
            out["re-add"] = delta(p1, p2)
            # scale
            out["scale_spread"] = lab.open(conns)
            time.sleep(IDLE)
            p3 = lab.probe()
            out["scale"] = delta(p2, p3)
            # withdraw for good
            lab.withdraw(3)
            time.sleep(SETTLE + IDLE)
            p4 = lab.probe()
            out["withdraw"] = delta(p3, p4)
            out["s3_total"] = p4["ok"].get("s3", 0) + p4["broken"].get("s3", 0)
        finally:
            lab.close()
            if bird is not None:
                bird.stop()
    return out


def iperf(lab: PinLab, seconds: int) -> float:
    out = lab.client_ns.exec(
        "iperf3", "-c", "198.51.100.10", "-t", str(seconds), "-P", "4", "-J",
        timeout=seconds + 30,
    )  # fmt: skip
    return float(json.loads(out)["end"]["sum_received"]["bits_per_second"])


def run_throughput(reps: int, seconds: int) -> dict[str, list[float]]:
    wd = Path(tempfile.mkdtemp(prefix="bgplb-bench-pin-iperf-"))
    res: dict[str, list[float]] = {"on": [], "off": [], "off+ct": []}
    with Topology(prefix="bpi") as topo:
        lab = PinLab(topo, wd)
        iperf_srv = None
        try:
            lab.start_router("resilient", pinning=True)
            lab.start_servers()
            lab.withdraw(2)
            lab.withdraw(3)
            lab.wait_members([1], timeout=40)
            lab.stop_router()
            iperf_srv = lab.servers[0].popen(
                "iperf3", "-s", "-B", "198.51.100.10", stdout=subprocess.DEVNULL
            )
            time.sleep(0.5)
            for _ in range(reps):
                for mode in ("on", "off", "off+ct"):
                    lab.start_router("resilient", pinning=mode == "on")
                    lab.wait_members([1], timeout=40)
                    if mode == "on":
                        assert "bgplb" in lab.rtr.exec("nft", "list", "tables")
                    if mode == "off+ct":  # conntrack on (as on a NAT/firewall box), no pinning
                        lab.rtr.exec("nft", "add", "table", "inet", "ctonly")
                        lab.rtr.exec(
                            "nft", "add", "chain", "inet", "ctonly", "ctfw",
                            "{ type filter hook forward priority 0; }",
                        )  # fmt: skip
                        lab.rtr.exec("nft", "add", "rule", "inet", "ctonly", "ctfw", "ct", "state",
                                     "established", "counter")  # fmt: skip
                    res[mode].append(iperf(lab, seconds))
                    if mode == "off+ct":
                        lab.rtr.exec("nft", "delete", "table", "inet", "ctonly")
                    lab.stop_router()
                    lab.router = None
        finally:
            if iperf_srv is not None:
                iperf_srv.kill()
                iperf_srv.wait(5)
            lab.close()
    return res


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--conns", type=int, default=300)
    p.add_argument("--routers", default="pin-resilient,pin-multipath,resilient,multipath,bird")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("--skip-throughput", action="store_true")
    a = p.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)")
        return 1
    results = {k: run_steps(k, a.conns) for k in a.routers.split(",") if k}  # "" skips part 1
    print(
        f"# broken connections per step: {a.conns} idle connections over 3 servers, idle {IDLE} s"
        f" between probes (> idle_timer 1 s), resilient: 64 buckets, unbalanced_timer 0;"
        f" kernel {os.uname().release}"
    )
    print("# cells: others (s1+s2) broken / s3 broken, in that step")
    cols = ("drain", "re-add", "scale", "withdraw")
    print(f"{'router':<32}" + "".join(f"{c:>12}" for c in cols) + f"{'new->s3 in drain':>18}")
    for k, r in results.items():
        cells = "".join(f"{f'{r[c][0]}/{r[c][1]}':>12}" for c in cols)
        print(f"{LABEL[k]:<32}{cells}{r['new_on_s3_during_drain']:>18}")
    for k, r in results.items():
        print(f"  {k}: spread {r['spread']}, scale spread {r['scale_spread']}, s3 total "
              f"{r['s3_total']}")  # fmt: skip
    if not a.skip_throughput:
        t = run_throughput(a.reps, a.seconds)
        on, off = statistics.median(t["on"]), statistics.median(t["off"])
        ct = statistics.median(t["off+ct"])
        print(
            f"# iperf3 -P 4 -t {a.seconds}, one server, {a.reps} alternating runs each (median): "
            f"pinning on {on / 1e9:.2f} Gbit/s, off {off / 1e9:.2f} Gbit/s, ratio {on / off:.3f}; "
            f"off but conntrack on {ct / 1e9:.2f} Gbit/s, pinning vs that {on / ct:.3f}"
        )
        for mode, runs in t.items():
            print(f"  runs {mode}: {[round(x / 1e9, 2) for x in runs]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
