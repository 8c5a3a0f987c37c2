"""BFD send lateness and CPU at a given interval (default 50 ms x 3), bgplb's asyncio service.

Runs N pairs of `BfdService` instances back to back over loopback in this process (service A
on 127.0.0.1 with one session per peer, peers on 127.0.1.k, one `BfdService` each), waits for
every session to come Up, then measures for `--seconds`:

* send lateness: for every periodic packet, loop.time() when it was sent minus the deadline the
  session asked for (`Session.get_timer()`), over all sessions of all services;
* the process CPU (user+sys) as a percentage of one core, over the same wall time;
* session flaps (any Up session going Down is a failure of the timers).

Usage: .venv/bin/python benchmarks/bfd_lateness.py [--interval-ms 50] [--multiplier 3]
       [--seconds 30] [--pairs 1] [--port 13784]
No root needed (loopback, unprivileged UDP port). Prints one summary block.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time

from bgplb.bfd import Diag, State
from bgplb.io.bfd import BfdService


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    hub = BfdService(rng=rng, single_hop_port=args.port, listen_v4="127.0.0.1")
    peers = [
        BfdService(rng=rng, single_hop_port=args.port, listen_v4=f"127.0.1.{k + 1}")
        for k in range(args.pairs)
    ]
    flaps: list[tuple[str, State, Diag]] = []
    handles = []
    for k, svc in enumerate(peers):
        addr = f"127.0.1.{k + 1}"

        def note(state: State, diag: Diag, who: str = addr) -> None:
            if state == State.DOWN:
                flaps.append((who, state, diag))

        handles.append(
            hub.request(addr, "127.0.0.1", False, args.interval_ms, args.multiplier, note)
        )
        handles.append(
            svc.request("127.0.0.1", addr, False, args.interval_ms, args.multiplier, note)
        )
    deadline = time.monotonic() + 10
    while any(h.state != State.UP for h in handles):
        if time.monotonic() > deadline:
            print("sessions did not come Up within 10 s", file=sys.stderr)
            return 1
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # Poll Sequence to the fast rate done
    flaps.clear()
    services = [hub, *peers]
    for svc in services:
        svc.tx_lateness.clear()
    cpu0, wall0 = time.process_time(), time.monotonic()
    await asyncio.sleep(args.seconds)
    cpu1, wall1 = time.process_time(), time.monotonic()
    late = [x * 1000 for svc in services for x in svc.tx_lateness]
    sent = sum(i.packets_sent for svc in services for i in svc.sessions())
    for svc in services:
        svc.close()
    print(
        f"interval {args.interval_ms} ms x {args.multiplier}, {args.pairs} pair(s) "
        f"({2 * args.pairs} sessions), {args.seconds:.0f} s, python {sys.version.split()[0]}, "
        f"{os.cpu_count()} CPUs"
    )
    print(f"periodic packets measured: {len(late)} (total sent {sent})")
    if late:
        print(
            f"send lateness ms: p50 {_pct(late, 0.50):.3f}  p90 {_pct(late, 0.90):.3f}  "
            f"p99 {_pct(late, 0.99):.3f}  max {max(late):.3f}  mean {statistics.mean(late):.3f}"
        )
    print(f"process CPU: {100 * (cpu1 - cpu0) / (wall1 - wall0):.1f} % of one core")
    print(f"session flaps during measurement: {len(flaps)}")
    return 0 if late and not flaps else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--interval-ms", type=int, default=50)
    p.add_argument("--multiplier", type=int, default=3)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--pairs", type=int, default=1)
    p.add_argument("--port", type=int, default=13784)
    p.add_argument("--seed", type=int, default=1)
    return asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
