"""`[fib] group = "consistent"` (Maglev table in nftables): disruption, imbalance, build and
nftables cost, and the per-packet forwarding cost against a resilient group.

Part 1 — pure (bgplb.router.maglev), no root needed. For table sizes M and N = 2..16 equal
backends (weight 64): the imbalance (largest share x N), and per change the fraction of slots
(= of flows) that move: removing one backend (every slot of it moves, by necessity: 1/N; the
"extra" column is the slots of *other* backends that moved too, worst over which one leaves),
adding one (ideal 1/(N+1)), and one backend draining to weight 1 (without pinning). Also the
time to build one table.

Part 2 — nftables (root): time of one `nft -j -f -` transaction replacing our table with K path
sets of M slots (K chains, one vmap), in a scratch namespace.

Part 3 — iperf3 (-P 4, --seconds each) client -> VIP with one server announced, `bgplb router`
restarted with group resilient, consistent, consistent + pinning; --reps alternating runs,
median receiver throughput and the ratios to resilient.

Usage: .venv/bin/python benchmarks/consistent.py [--sizes 1021,4093,16381] [--reps 3]
       [--seconds 5] [--skip-nft] [--skip-throughput]
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "interop"))

from bgplb.router.maglev import Backend, build_table, moved  # noqa: E402

WEIGHT = 64


def addr(i: int) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(f"192.0.2.{10 + i}")


def pure(sizes: list[int]) -> None:
    print("# part 1: pure Maglev table, N equal backends (weight 64)")
    print(
        f"{'M':>6} {'N':>3} {'imbalance':>9} {'remove: 1/N':>11} {'extra max':>9} "
        f"{'add: moved':>10} {'1/(N+1)':>8} {'drain->1':>8} {'build ms':>8}"
    )
    for m in sizes:
        for n in (2, 3, 4, 6, 8, 12, 16):
            bs = [Backend(addr(i), WEIGHT) for i in range(n)]
            t0 = time.perf_counter()
            t = build_table(bs, m)
            build = (time.perf_counter() - t0) * 1000
            imbalance = max(t.shares().values()) * n
            extra = 0.0
            for k in range(n):
                t2 = build_table(bs[:k] + bs[k + 1 :], m)
                gone = bs[k].address
                others = sum(
                    1
                    for x, y in zip(t.addresses(), t2.addresses(), strict=True)
                    if x != gone and x != y
                )
                extra = max(extra, others / m)
            add = moved(t, build_table([*bs, Backend(addr(99), WEIGHT)], m))
            drained = build_table([*bs[:-1], Backend(bs[-1].address, 1)], m)
            drain = moved(t, drained)
            print(
                f"{m:>6} {n:>3} {imbalance:>9.4f} {1 / n:>11.4f} {extra:>9.4f} "
                f"{add:>10.4f} {1 / (n + 1):>8.4f} {drain:>8.4f} {build:>8.1f}"
            )
    # weights: link bandwidth 1:2:4 over 3 backends
    for m in sizes:
        bs = [Backend(addr(0), 64), Backend(addr(1), 128), Backend(addr(2), 255)]
        sh = build_table(bs, m).shares()
        want = [w / 447 for w in (64, 128, 255)]
        got = [sh[b.address] for b in bs]
        print(
            f"  M={m} weights 64:128:255 -> shares "
            + ", ".join(f"{g:.4f} (want {w:.4f})" for g, w in zip(got, want, strict=True))
        )


def nft_cost(sizes: list[int]) -> None:
    from bgplb.linux.nft_consistent import ConsistentChain, consistent_ruleset
    from bgplb.linux.nftables import Nft

    ns = f"bgplb-bench-cons-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        print("# part 2: one nft -j -f - transaction replacing the table (K path sets of M slots)")
        nft = Nft("bgplb", ns)
        for m in sizes:
            for k in (1, 10, 50):
                chains = []
                for j in range(k):
                    marks = tuple(((s + j) % 3 + 1) << 16 for s in range(m))
                    vip = ipaddress.ip_network(f"198.51.100.{j + 1}/32")
                    chains.append(ConsistentChain(f"cset_{j:04d}", 4, 1, marks, (vip,)))
                cmds = consistent_ruleset("bgplb", 0xFF0000, [], [], chains, pinning=False)
                doc = len(json.dumps({"nftables": cmds}))
                runs = []
                for _ in range(3):
                    t0 = time.perf_counter()
                    nft.replace(cmds)
                    runs.append(time.perf_counter() - t0)
                print(
                    f"  M={m:>6} K={k:>3}: {statistics.median(runs) * 1000:8.1f} ms "
                    f"(JSON {doc / 1e6:.1f} MB)"
                )
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def iperf(lab: object, seconds: int) -> float:
    out = lab.client_ns.exec(  # type: ignore[attr-defined]
        "iperf3", "-c", "198.51.100.10", "-t", str(seconds), "-P", "4", "-J",
        timeout=seconds + 30,
    )  # fmt: skip
    return float(json.loads(out)["end"]["sum_received"]["bits_per_second"])


MODES = {
    "resilient": ("resilient", False),
    "consistent": ("consistent", False),
    "consistent+pinning": ("consistent", True),
}


def throughput(reps: int, seconds: int) -> dict[str, list[float]]:
    from pinlab import PinLab

    from bgplb.lab.netns import Topology

    wd = Path(tempfile.mkdtemp(prefix="bgplb-bench-consistent-"))
    res: dict[str, list[float]] = {k: [] for k in MODES}
    with Topology(prefix="bco") as topo:
        lab = PinLab(topo, wd)
        srv = None
        try:
            lab.start_router("resilient", pinning=False)
            lab.start_servers()
            lab.withdraw(2)
            lab.withdraw(3)
            lab.wait_members([1], timeout=40)
            lab.stop_router()
            srv = lab.servers[0].popen(
                "iperf3", "-s", "-B", "198.51.100.10", stdout=subprocess.DEVNULL
            )
            time.sleep(0.5)
            for _ in range(reps):
                for mode, (group, pinning) in MODES.items():
                    lab.start_router(group, pinning=pinning, linger="60s")
                    lab.wait_members([1], timeout=40)
                    if group == "consistent":
                        deadline = time.monotonic() + 20
                        while "cset_" not in lab.rtr.exec("nft", "list", "ruleset"):
                            if time.monotonic() > deadline:
                                raise RuntimeError("no consistent chain in the router")
                            time.sleep(0.1)
                    res[mode].append(iperf(lab, seconds))
                    lab.stop_router()
                    lab.router = None
        finally:
            if srv is not None:
                srv.kill()
                srv.wait(5)
            lab.close()
    return res


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="1021,4093,16381")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("--skip-nft", action="store_true")
    p.add_argument("--skip-throughput", action="store_true")
    a = p.parse_args()
    sizes = [int(s) for s in a.sizes.split(",") if s]
    pure(sizes)
    if os.geteuid() != 0:
        print("parts 2 and 3 need root (network namespaces)")
        return 0
    if not a.skip_nft:
        nft_cost(sizes)
    if not a.skip_throughput:
        t = throughput(a.reps, a.seconds)
        med = {k: statistics.median(v) for k, v in t.items()}
        base = med["resilient"]
        print(
            f"# part 3: iperf3 -P 4 -t {a.seconds}, one server, {a.reps} alternating runs each "
            f"(median), kernel {os.uname().release}"
        )
        for k, v in med.items():
            print(f"  {k:<20} {v / 1e9:6.2f} Gbit/s  ratio to resilient {v / base:.3f}")
        for k, runs in t.items():
            print(f"  runs {k}: {[round(x / 1e9, 2) for x in runs]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
