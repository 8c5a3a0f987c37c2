"""Several routers: established connections broken when flows move between two load-balancer
routers — BIRD 2 ECMP vs `bgplb router` (resilient, resilient + pinning, consistent, consistent
+ pinning), same topology, same steps, one run.

Topology (tests/interop/multirouterlab.py): client -> upstream (one route to the VIP, multipath
via routers A and B, L4 hash) -> routers A and B -> 3 servers on one bridged segment, each with a
real `bgplb agent` peering with both routers and an echo server. Each router hashes with its own
seed (`fib_multipath_hash_policy` 3, L4 fields, a random `fib_multipath_hash_seed` per router),
as two machines do; `--hash shared` instead leaves policy 1, under which every namespace of one
host reuses the client socket's hash, so the routers hash alike (a lab artefact, for
comparison).

Per run and router kind: --conns connections, each sending one echo every --period s (broken =
reset, closed, wrong answer, or no answer within 10 s); then the steps of
tests/interop/test_router_multi.py, each followed by a count of what it broke: upstream moves
every flow to B; back to both; s3 leaves (its agent withdraws on both routers); s3 returns;
router A kill -9 and started again; upstream moves every flow to A.

Usage (root): .venv/bin/python benchmarks/multi_router.py [--runs 1] [--conns 240]
       [--period 0.5] [--kinds bird,resilient,resilient+pinning,consistent,consistent+pinning]
       [--hash per-router|shared] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "interop"))

from multirouterlab import (
    CHANGED,
    HASHES,
    KINDS,
    STEPS,
    MultiRouterLab,
    consistent_available,
    run_scenario,
)

from _routerlab import kernel_info, now_utc
from bgplb.lab.netns import Topology

LABEL = {
    "bird": "BIRD 2 ECMP (merge paths)",
    "resilient": "bgplb, resilient",
    "resilient+pinning": "bgplb, resilient + pinning",
    "consistent": "bgplb, consistent",
    "consistent+pinning": "bgplb, consistent + pinning",
}
SHORT = {
    "to-b": "all to B",
    "both": "back to A+B",
    "leave": "s3 leaves",
    "rejoin": "s3 returns",
    "kill-a": "A kill -9",
    "to-a": "all to A",
}


def run_one(kind: str, a: argparse.Namespace) -> dict[str, Any]:
    wd = Path(tempfile.mkdtemp(prefix="bgplb-bench-multi-"))
    try:
        with Topology(prefix="bmr") as topo, MultiRouterLab(topo, wd, kind, hash=a.hash) as lab:
            lab.start()
            lab.start_client(period=a.period)
            result = run_scenario(lab, a.conns)
            result["seeds"] = lab.seeds
            return result
    finally:
        shutil.rmtree(wd, ignore_errors=True)


def cell(steps: list[dict[str, Any]], step: str) -> str:
    rows = [s for s in steps if s["step"] == step]
    o = sum(s["others"] for s in rows)
    oa = sum(s["others_alive"] for s in rows)
    c = sum(s["changed"] for s in rows)
    ca = sum(s["changed_alive"] for s in rows)
    return f"{o}/{oa} · {c}/{ca}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--conns", type=int, default=240)
    p.add_argument("--period", type=float, default=0.5)
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--hash", choices=HASHES, default="per-router")
    p.add_argument("--json", metavar="FILE")
    a = p.parse_args()
    kinds = a.kinds.split(",")
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        p.error(f"unknown kind(s) {', '.join(unknown)}; known: {', '.join(KINDS)}")
    if not consistent_available():
        skipped = [k for k in kinds if KINDS[k].consistent]
        if skipped:
            print(f"skipping {', '.join(skipped)}: this bgplb has no consistent group")
        kinds = [k for k in kinds if not KINDS[k].consistent]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # finally blocks clean up
    command = shlex.join(["benchmarks/multi_router.py", *sys.argv[1:]])
    results: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    for run in range(a.runs):
        for k in kinds:
            print(f"run {run + 1}/{a.runs}: {k}", file=sys.stderr, flush=True)
            results[k].append(run_one(k, a))
    print(f"{command}  ({now_utc()}, kernel {kernel_info()})")
    print(
        f"{a.runs} run(s) x {a.conns} connections over 3 servers, one echo every {a.period} s; "
        f"hash: {a.hash}. Cells: broken connections to the other servers / alive before the "
        f"step · to s{CHANGED} / alive before (sums over runs)"
    )
    steps = [s for s, _ in STEPS]
    head = f"| router | failed to open | {' | '.join(SHORT[s] for s in steps)} | others, all |"
    print(head)
    print("|---" * (len(steps) + 3) + "|")
    for k in kinds:
        all_steps = [s for r in results[k] for s in r["steps"]]
        total = sum(s["others"] for s in all_steps)
        failed = sum(r["opened"].get("failed", 0) for r in results[k])
        cells = " | ".join(cell(all_steps, s) for s in steps)
        print(f"| {LABEL[k]} | {failed}/{a.runs * a.conns} | {cells} | **{total}** |")
    if a.json:
        Path(a.json).write_text(json.dumps({"command": command, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
