"""A stalled router: failed client requests with and without fail-open, side by side.

Namespaces: a client `cl` (198.18.0.2/30) behind the router `rt` (`bgplb router`, BFD
100 ms x 3 in its peer range) and three servers s1..s3, each running `bgplb agent` (BFD
100 ms x 3, hold time 3 s) that announces the VIP 198.51.100.10/32 and puts it on its loopback,
and a web server on the VIP (python http.server on port 80; the agent checks another one on
127.0.0.1:8080). The client sends HTTP GETs to the VIP at a fixed rate (--rate per second,
--seconds long, each on a new connection, 1 s timeout; bounded in count and time). At 1.5 s the
router is stopped (SIGSTOP) for --stall seconds (default three BFD detection times), then
continued: every BFD session fails together (the agents see the silence and tear their
sessions down; the router, running again, sees its own BFD Down and their Cease/BFD Down).
Failures before the stall (``failed_before_stall``: noise of a loaded machine) are counted
apart. The kernel forwards all the while; what matters is what the router does with its routes when
it runs again. Each mode (`[fib] fail_open` true / false; with --bird also BIRD 2 as the
router: `bfd on` at 100 ms x 3, kernel protocol with `merge paths on`, the BIRD process
stopped instead) runs --runs times in fresh namespaces, alternating, and the failed requests
are reported per run and as a median.

Usage (root): .venv/bin/python benchmarks/router_stall.py [--runs 3] [--rate 200]
    [--seconds 6] [--stall 0.9] [--bird]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "interop"))

from agent_lab import ROUTER_AS, SERVER_AS, VIP4, add_servers, wait_for  # noqa: E402
from test_router_interop import RouterProc, hops, router_config  # noqa: E402

from bgplb.lab.netns import Topology  # noqa: E402
from bgplb.lab.peers import Bird  # noqa: E402

MODES = ("bgplb fail_open = true", "bgplb fail_open = false", "BIRD 2, bfd on")

BFD = "bfd = { interval_ms = 100, multiplier = 3 }"
RANGES = f"""
[[peer_ranges]]
prefix = "192.0.2.0/24"
asn = "any"
accept = ["198.51.100.0/24 le 32"]
{BFD}
"""
VIP = VIP4.split("/")[0]
STALL_AT = 1.5

# The client, run inside `cl`: one GET per 1/rate s on a new connection, 1 s timeout each.
CLIENT = textwrap.dedent(
    """
    import asyncio, json, sys, time
    vip, rate, seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])

    async def one(t0, out):
        start = time.monotonic() - t0
        try:
            async with asyncio.timeout(1.0):
                r, w = await asyncio.open_connection(vip, 80)
                w.write(b"GET / HTTP/1.0\\r\\nHost: vip\\r\\n\\r\\n")
                data = await r.read()
                w.close()
            ok = data.startswith(b"HTTP/1.0 200") or data.startswith(b"HTTP/1.1 200")
            out.append((start, ok, None if ok else "bad answer"))
        except Exception as exc:
            out.append((start, False, type(exc).__name__))

    async def main():
        out, tasks = [], []
        t0 = time.monotonic()
        print("go", flush=True)
        n = int(rate * seconds)
        for i in range(n):
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(t0, out)))
        await asyncio.gather(*tasks)
        failed = sorted((t, why) for t, ok, why in out if not ok)
        stall_at = float(sys.argv[4])
        print(json.dumps({"sent": n, "failed": len(failed),
                          "failed_before_stall": sum(1 for t, _ in failed if t < stall_at),
                          "first_failure": failed[0][0] if failed else None,
                          "last_failure": failed[-1][0] if failed else None,
                          "why": sorted({w for _, w in failed})}))

    asyncio.run(main())
    """
)


def route_absent(lines: list[str], end: float) -> tuple[float, int, bool]:
    """From `ip -ts -o monitor route` lines: seconds the VIP had no route (a deletion until the
    next addition, or until `end`), how many times it went, and whether it was back at the
    end."""
    gone_at: float | None = None
    absent, losses = 0.0, 0
    for line in lines:
        if not line.startswith("[") or f" {VIP} " not in f" {line} ":
            continue
        t = datetime.datetime.fromisoformat(line[1 : line.index("]")]).timestamp()
        deleted = line[line.index("]") + 1 :].lstrip().startswith("Deleted")
        if deleted and gone_at is None:
            gone_at, losses = t, losses + 1
        elif not deleted and gone_at is not None:
            absent, gone_at = absent + t - gone_at, None
    if gone_at is not None:
        absent += max(0.0, end - gone_at)
    return absent, losses, gone_at is None


def one_run(mode: str, args: argparse.Namespace) -> dict[str, object]:
    topo = Topology(prefix="b")
    workdir = Path(tempfile.mkdtemp(prefix="bgplb-stall-"))
    servers = []
    router = None
    bird = None
    procs: list[subprocess.Popen[bytes]] = []
    try:
        rt = topo.add("rt")
        rt.sysctl("net.ipv4.ip_forward", 1)
        rt.sysctl("net.ipv4.fib_multipath_hash_policy", 1)
        cl = topo.add("cl")
        topo.link(rt, cl, ["198.18.0.1/30"], ["198.18.0.2/30"], "eth-cl", "eth-rt")
        cl.exec("ip", "route", "add", "default", "via", "198.18.0.1")
        servers = add_servers(topo, rt, count=3)
        if mode == MODES[2]:
            bird = Bird(rt, workdir / "bird", ROUTER_AS, "192.0.2.1")
            for s in servers:
                bird.add_neighbor(s.address, SERVER_AS, passive=True, hold_time=9, bfd=True)
            bird.start()
        else:
            fib = "" if mode == MODES[0] else "fail_open = false"
            router = RouterProc(rt, workdir, router_config(RANGES, fib, listen=("0.0.0.0",)))
            router.start()
        for s in servers:
            s.peer_extra = BFD
            s.ns.exec("ip", "route", "add", "default", "via", s.router)
            s.write_config(s.service())
            s.start_http()
            web = s.workdir / "vip-www"
            web.mkdir()
            (web / "index.html").write_text(f"Welcome to {s.name}\n")
            procs.append(
                s.ns.popen(
                    sys.executable,
                    "-m",
                    "http.server",
                    "--bind",
                    "0.0.0.0",
                    "--directory",
                    str(web),
                    "80",
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            s.start_agent()
        want = [s.address for s in servers]
        for s in servers:
            (bird or router).wait_established(s.address, timeout=25)  # type: ignore[union-attr]
        wait_for(lambda: hops(rt, VIP4) == want, 20, "three nexthops")
        for s in servers:  # the agents' side of BFD
            wait_for(
                lambda s=s: (s.status()["peers"][0].get("bfd") or {}).get("state") == "up",
                15,
                "BFD Up",
            )
        time.sleep(1.0)
        monitor = rt.popen(
            "ip", "-ts", "-o", "monitor", "route", stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        procs.append(monitor)
        client = cl.popen(
            sys.executable,
            "-c",
            CLIENT,
            VIP,
            str(args.rate),
            str(args.seconds),
            str(STALL_AT),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        procs.append(client)
        assert client.stdout is not None
        assert client.stdout.readline().strip() == b"go"  # the client's t0
        time.sleep(STALL_AT)
        # `ip netns exec` execs: the PIDs are the daemons' own
        proc = bird._procs[0] if bird is not None else router.proc  # type: ignore[union-attr]
        assert proc is not None
        proc.send_signal(signal.SIGSTOP)
        try:
            time.sleep(args.stall)
        finally:
            proc.send_signal(signal.SIGCONT)
        out, _err = client.communicate(timeout=args.seconds + 30)
        result = json.loads(out.decode().strip().splitlines()[-1])
        end = time.time()
        monitor.terminate()
        events, _ = monitor.communicate(timeout=10)
        absent, losses, back = route_absent(events.decode(errors="replace").splitlines(), end)
        result["route_lost"] = losses
        result["route_absent_ms"] = round(absent * 1000)
        result["route_back_at_end"] = back
        if router is not None:
            result["fail_open_logged"] = "fail-open: " in router.log_text()
        result["loadavg_1min"] = round(os.getloadavg()[0], 1)
        result["bfd_downs_seen_by_agents"] = sum(
            (s.status()["peers"][0].get("bfd") or {}).get("downs", 0) for s in servers
        )
        return result
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)
        for s in servers:
            s.stop()
        if router is not None and router.proc is not None:
            router.proc.send_signal(signal.SIGCONT)
            router.stop()
        if bird is not None:
            for p in bird._procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGCONT)
            bird.stop()
        for s in servers:
            shutil.rmtree(s.workdir, ignore_errors=True)
        topo.close()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=6.0, help="client load duration")
    parser.add_argument("--stall", type=float, default=0.9, help="SIGSTOP duration (s)")
    parser.add_argument("--bird", action="store_true", help="also BIRD 2 as the router")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("router_stall.py: needs root (network namespaces)")
    if not 1 <= args.rate * args.seconds <= 20_000:
        sys.exit("router_stall.py: rate x seconds must be 1..20000 requests")
    modes = MODES if args.bird else MODES[:2]
    results: dict[str, list[dict[str, object]]] = {m: [] for m in modes}
    for run in range(args.runs):
        for mode in modes:
            r = one_run(mode, args)
            results[mode].append(r)
            print(f"run {run + 1} {mode}: {json.dumps(r)}", flush=True)
    print()
    print(
        f"{args.rate:g} req/s for {args.seconds:g} s, router stopped {args.stall:g} s at "
        f"{STALL_AT:g} s, BFD 100 ms x 3, {args.runs} runs each"
    )
    print("| router | failed requests per run | median | VIP route absent per run (ms) | sent |")
    print("|---|---|---|---|---|")
    for mode in modes:
        failed = [int(r["failed"]) for r in results[mode]]  # type: ignore[call-overload]
        absent = [
            f"{r['route_absent_ms']}{'' if r['route_back_at_end'] else ' (not back)'}"
            for r in results[mode]
        ]
        sent = results[mode][0]["sent"] if results[mode] else 0
        print(
            f"| {mode} | {', '.join(map(str, failed))} | "
            f"{statistics.median(failed) if failed else '-'} | {', '.join(absent)} | {sent} |"
        )


if __name__ == "__main__":
    main()
