"""BFD send lateness and false Downs with a busy event loop and busy cores: asyncio timers
(`timing="loop"`, before) vs the BFD timing thread (`timing="thread"`, after).

One run = one timing mode x one session count. The measured process (this one) runs one
`BfdService` (the hub, 127.0.0.1) with N single-hop sessions; the N peers (127.0.1.1 ...) run
in a child process (N `BfdService`s, one per address, on an idle loop), so their own timing
is not disturbed by the hub's load. After every session is Up at the fast rate, for --seconds:

* the cores are loaded: one busy-looping child process per CPU (bounded by --seconds, killed by
  PID at the end), plain `nice 0` like the rest of the machine's work;
* the hub's event loop is loaded like a daemon's doing BGP/RIB work: it allocates and keeps
  small objects (so the garbage collector runs) in chunks of U(0, --loop-stall-ms) ms, with a
  5 ms pause between chunks (~85 % of the loop's time busy);

and we record, in the hub: the send lateness of every periodic packet (time sent minus the
deadline the session asked for, `Session.get_timer()`), session Downs (any Up -> Down: a false
Down, nobody died), the event loop's worst stall (LoopWatch), GC pauses (gc.callbacks), the
hub's CPU; and in the peers' process: its Downs (it sees the hub as dead if the hub's packets
are late by a detection time) and its lateness. As root the peers' process runs SCHED_FIFO
(--peer-realtime, default 50): it stands for other machines, so its Downs are the hub's fault
(the hub's packets were late), not the result of the peers being starved by the load.

Usage: .venv/bin/python benchmarks/bfd_lateness.py [--interval-ms 20] [--multiplier 3]
       [--seconds 20] [--sessions 2,50] [--timings loop,thread] [--loop-stall-ms 30]
       [--keep 20000] [--hogs N] [--realtime PRIO]
No root needed (loopback, unprivileged UDP ports) except for --realtime. Prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import socket
import subprocess
import sys
import time
from typing import Any

from bgplb.bfd import Diag, State
from bgplb.io.bfd import BfdService, Timing
from bgplb.io.bfd_timing import gc_pauses
from bgplb.io.loopwatch import LoopWatch

HOG = "import time\nend = time.monotonic() + {s}\nwhile time.monotonic() < end:\n    pass\n"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pcts(late: list[float]) -> dict[str, float]:
    if not late:
        return {"n": 0, "p50": 0.0, "p99": 0.0, "max": 0.0}
    o = sorted(late)
    n = len(o)
    return {
        "n": n,
        "p50": round(o[n // 2] * 1000, 3),
        "p99": round(o[min(n - 1, int(0.99 * n))] * 1000, 3),
        "max": round(o[-1] * 1000, 3),
    }


# ------------------------------------------------------------------------------- peers side


async def peer_side(a: argparse.Namespace) -> None:
    """N peer services; stdin: "reset" (start counting), "stop" (print the figures, exit)."""
    if a.peer_realtime:  # the whole (idle) process: the peers stand for other machines
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(a.peer_realtime))
    rng = random.Random(a.seed + 1)
    services: list[BfdService] = []
    downs: list[str] = []
    seen_up: set[str] = set()
    for k in range(a.peer_side):
        addr = f"127.0.1.{k + 1}"
        svc = BfdService(
            rng=rng, single_hop_port=a.port, listen_v4=addr, timing=a.peer_timing, freeze_gc=False
        )

        def note(state: State, diag: Diag, who: str = addr) -> None:
            if state == State.UP:
                seen_up.add(who)
            elif state == State.DOWN and who in seen_up:
                downs.append(f"{who} {diag.name}")

        svc.request("127.0.0.1", addr, False, a.interval_ms, a.multiplier, note)
        services.append(svc)
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    deadline = time.monotonic() + a.max_seconds
    while time.monotonic() < deadline:
        try:
            line = await asyncio.wait_for(reader.readline(), deadline - time.monotonic())
        except TimeoutError:
            break
        cmd = line.decode().strip()
        if cmd == "reset":
            downs.clear()
            for svc in services:
                svc.take_lateness()
        elif cmd in ("stop", ""):
            late = [x for svc in services for x in svc.take_lateness()]
            out = {"downs": len(downs), "sessions_down": len({d.split()[0] for d in downs})}
            print(json.dumps({**out, "late": _pcts(late)}), flush=True)
            break
    for svc in services:
        svc.close()


# ------------------------------------------------------------------------------- hub side


async def loop_load(stall_ms: float, keep: int, stop: asyncio.Event, rng: random.Random) -> None:
    """Busy chunks of U(0, stall_ms) ms that allocate objects and keep the last `keep` (a
    RIB's churn: the garbage collector runs, its full collections scan what is kept)."""
    kept: collections.deque[dict[str, Any]] = collections.deque(maxlen=max(1, keep))
    i = 0
    while not stop.is_set():
        end = time.perf_counter() + rng.uniform(0, stall_ms) / 1000
        while time.perf_counter() < end:
            for _ in range(50):
                i += 1
                kept.append({"prefix": i, "path": [i, i + 1], "attrs": (i, "x")})
        await asyncio.sleep(0.005)


async def run_case(a: argparse.Namespace, timing: Timing, n: int, realtime: int | None) -> Any:
    port = _free_port()
    child = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--peer-side", str(n), "--port", str(port),
        "--interval-ms", str(a.interval_ms), "--multiplier", str(a.multiplier),
        "--peer-timing", a.peer_timing, "--max-seconds", str(a.seconds + 120),
        "--peer-realtime", str(a.peer_realtime),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    assert child.stdin is not None and child.stdout is not None
    hogs: list[subprocess.Popen[bytes]] = []
    hub: BfdService | None = None
    stop = asyncio.Event()
    res: dict[str, Any] = {"timing": timing + (f"+FIFO{realtime}" if realtime else ""), "n": n}
    try:
        line = await asyncio.wait_for(child.stdout.readline(), 120)
        if line.strip() != b"ready":
            raise RuntimeError(f"peer process: {line!r}")
        hub = BfdService(
            rng=random.Random(a.seed),
            single_hop_port=port,
            listen_v4="127.0.0.1",
            timing=timing,
            realtime_priority=realtime,
        )
        downs: list[str] = []
        handles = []
        up: set[str] = set()
        for k in range(n):
            addr = f"127.0.1.{k + 1}"

            def note(state: State, diag: Diag, who: str = addr) -> None:
                if state == State.UP:
                    up.add(who)
                elif state == State.DOWN and who in up:
                    downs.append(f"{who} {diag.name}")

            handles.append(hub.request(addr, "127.0.0.1", False, a.interval_ms, a.multiplier, note))
        deadline = time.monotonic() + 30
        fast = a.interval_ms
        while not all(i.state == State.UP and i.tx_interval_ms == fast for i in hub.sessions()):
            if time.monotonic() > deadline:
                raise RuntimeError("sessions did not come Up at the fast rate within 30 s")
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        # -- measurement: load on, counters reset
        hogs = [
            subprocess.Popen([sys.executable, "-c", HOG.format(s=a.seconds + 5)])
            for _ in range(a.hogs)
        ]
        load = asyncio.get_running_loop().create_task(
            loop_load(a.loop_stall_ms, a.keep, stop, random.Random(a.seed))
        )
        watch = LoopWatch(0.01)
        watch.start()
        child.stdin.write(b"reset\n")
        await child.stdin.drain()
        downs.clear()
        hub.take_lateness()
        gc_pauses().read(reset=True)
        cpu0, t0 = time.process_time(), time.monotonic()
        await asyncio.sleep(a.seconds)
        cpu = 100 * (time.process_time() - cpu0) / (time.monotonic() - t0)
        late = hub.take_lateness()
        res.update(
            hub=_pcts(late),
            hub_downs=len(downs),
            hub_sessions_down=len({d.split()[0] for d in downs}),
            loop_max_ms=watch.read()["max_ms"],
            gc=gc_pauses().read(),
            cpu_pct=round(cpu, 1),
        )
        stop.set()
        await load
        await watch.stop()
        child.stdin.write(b"stop\n")
        await child.stdin.drain()
        line = await asyncio.wait_for(child.stdout.readline(), 30)
        peer = json.loads(line)
        res.update(peer=peer["late"], peer_downs=peer["downs"])
        res["peer_sessions_down"] = peer["sessions_down"]
    finally:
        stop.set()
        for h in hogs:
            h.kill()
            h.wait()
        if hub is not None:
            hub.close()
        if child.returncode is None:
            try:
                await asyncio.wait_for(child.wait(), 10)
            except TimeoutError:
                child.kill()
                await child.wait()
    return res


async def hub_side(a: argparse.Namespace) -> int:
    results = []
    for n in [int(x) for x in a.sessions.split(",")]:
        for timing in a.timings.split(","):
            rt = None
            if timing == "thread+rt":
                timing, rt = "thread", a.realtime or 10
            assert timing in ("thread", "loop")
            r = await run_case(a, timing, n, rt)  # type: ignore[arg-type]
            print(json.dumps(r), flush=True)
            results.append(r)
    one, five, _ = os.getloadavg()
    print(
        f"\nBFD {a.interval_ms} ms x {a.multiplier}, {a.seconds:.0f} s per run; hub loop busy "
        f"~85 % in chunks of U(0, {a.loop_stall_ms:.0f}) ms keeping {a.keep} dicts; "
        f"{a.hogs} busy process(es); "
        f"{os.cpu_count()} CPUs, load average {one:.2f} {five:.2f} at the end; python "
        f"{sys.version.split()[0]}"
    )
    print(
        "| sessions | timing | packets | lateness p50 | p99 | max | false Downs (hub/peers) "
        "| loop worst stall | longest GC pause | hub CPU |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    bad = 0
    for r in results:
        h = r["hub"]
        nd = r["hub_downs"] + r["peer_downs"]
        bad += nd
        print(
            f"| {r['n']} | {r['timing']} | {h['n']} | {h['p50']:.2f} ms | {h['p99']:.2f} ms | "
            f"{h['max']:.1f} ms | {r['hub_downs']}/{r['peer_downs']} | "
            f"{r['loop_max_ms']:.0f} ms | {r['gc']['max_ms']:.1f} ms (gen "
            f"{r['gc']['max_generation']}) | {r['cpu_pct']:.0f} % |"
        )
    print("peers' own send lateness (idle process): " + "; ".join(
        f"{r['n']}/{r['timing']}: p99 {r['peer']['p99']:.2f} max {r['peer']['max']:.1f} ms"
        for r in results
    ))  # fmt: skip
    return 0 if bad == 0 else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--interval-ms", type=int, default=20)
    p.add_argument("--multiplier", type=int, default=3)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--sessions", default="2,50", help="comma-separated session counts")
    p.add_argument("--timings", default="loop,thread", help="loop, thread, thread+rt")
    p.add_argument("--loop-stall-ms", type=float, default=30.0)
    p.add_argument("--keep", type=int, default=20_000, help="objects the loop load keeps")
    p.add_argument("--hogs", type=int, default=os.cpu_count() or 1)
    p.add_argument("--realtime", type=int, default=None, help="SCHED_FIFO priority (thread+rt)")
    p.add_argument("--peer-timing", default="loop", choices=["loop", "thread"])
    p.add_argument(
        "--peer-realtime",
        type=int,
        default=50 if os.geteuid() == 0 else 0,
        help="SCHED_FIFO priority of the peers' process (0: none; default 50 as root)",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--peer-side", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--max-seconds", type=float, default=600.0, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.peer_side:
        asyncio.run(peer_side(a))
        return 0
    if not 1 <= max(int(x) for x in a.sessions.split(",")) <= 250:
        p.error("--sessions: 1..250 (peers on 127.0.1.1-250)")
    if a.seconds <= 0 or a.seconds > 3600:
        p.error("--seconds: (0, 3600]")
    return asyncio.run(hub_side(a))


if __name__ == "__main__":
    sys.exit(main())
