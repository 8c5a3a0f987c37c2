"""Planned restart of a web server under client load: failed requests, per way of restarting.

The lab equivalent of ``systemctl restart nginx`` on one of two servers (demo topology: client
— router — srv1, srv2; nginx, ``bgplb agent`` with an HTTP check every 100 ms, the router
``bgplb router`` or BIRD 2). Fresh HTTP requests (one connection each, 1 s timeout) go from the
client namespace to the VIP at a fixed rate, a bounded count; 1 s into the load srv1's nginx
is restarted (tests/interop/restart_lab.py):

* drain:   ``bgplb drain web --wait``, nginx SIGQUIT (graceful), down --down-time, started,
           ``bgplb undrain web``;
* systemd: a ``systemd`` check on a fake systemd (private D-Bus) sees the unit
           ``deactivating`` (stop drain), ``ExecStop=/bin/sleep`` --stop-delay, nginx SIGQUIT,
           ``inactive``, down --down-time, started, ``activating`` → ``active``;
* naive:   nginx SIGQUIT, down --down-time, started; the agent is told nothing.

Usage (root): .venv/bin/python benchmarks/planned_restart.py [--runs 3] [--requests 1500]
       [--rate 250] [--routers bird,bgplb] [--modes drain,systemd,naive] [--down-time 0.3]
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "interop")]

from restart_lab import MODES, Result, planned_restart  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--rate", type=float, default=250.0, help="requests per second")
    parser.add_argument("--routers", default="bird,bgplb")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--drain-time", type=float, default=2.0)
    parser.add_argument("--stop-delay", type=float, default=2.5, help="systemd: ExecStop sleep")
    parser.add_argument("--down-time", type=float, default=0.3, help="nginx stopped this long")
    args = parser.parse_args()
    if args.requests > 10_000 or args.rate > 1000:
        parser.error("keep it bounded: at most 10,000 requests at 1,000/s")
    routers = [r for r in args.routers.split(",") if r]
    modes = [m for m in args.modes.split(",") if m]
    print(
        f"{datetime.datetime.now():%Y-%m-%d %H:%M}, {os.uname().release}: {args.requests} "
        f"requests at {args.rate:g}/s, drain_time {args.drain_time:g} s, nginx down "
        f"{args.down_time:g} s, {args.runs} run(s) each",
        flush=True,
    )
    results: dict[tuple[str, str], list[Result]] = {}
    for run in range(args.runs):  # interleaved: every setup sees the same machine load
        for router in routers:
            for mode in modes:
                r = planned_restart(
                    mode,
                    router,
                    requests=args.requests,
                    rate=args.rate,
                    drain_time=args.drain_time,
                    stop_delay=args.stop_delay,
                    down_time=args.down_time,
                )
                results.setdefault((mode, router), []).append(r)
                print(f"  run {run}: {r.line()}", flush=True)
    print("failed requests per restart (median, min-max, total failed / total sent)")
    for (mode, router), rs in results.items():
        failed = [len(r.failed) for r in rs]
        sent = sum(len(r.answers) for r in rs)
        print(
            f"  {mode:8s} {router:5s}: median {statistics.median(failed):g} "
            f"({min(failed)}-{max(failed)}), {sum(failed)} / {sent}"
        )


if __name__ == "__main__":
    main()
