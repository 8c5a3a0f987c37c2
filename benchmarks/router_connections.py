"""Established connections broken when a server leaves, comes back, or drains — `bgplb router`
with a resilient nexthop group vs `bgplb router` with a multipath group vs BIRD 2's ECMP route
(kernel protocol, `merge paths on`), same traffic, same run.

Topology: client namespace -> router namespace -> 3 server namespaces. Each server runs an echo
server on the VIP (198.51.100.10:8080, on its lo) and a bgplb speaker announcing the VIP to the
router. The router forwards with `fib_multipath_hash_policy=1` (L4 hash).

Per phase, a fresh client opens --conns TCP connections to the VIP (each learns its server from
the greeting) and keeps every one of them active: one 8-byte echo every --period seconds (a
connection is *broken* when a write fails or an echo does not come back within 3 s). Bounded:
the client exits after 120 s whatever happens.

* leave:  3 servers up; s3 withdraws the VIP; wait --settle s; count broken.
* return: s3 withdrawn while the client connects (2 servers); s3 announces again; wait; count.
* drain:  3 servers up; s3 re-announces with GRACEFUL_SHUTDOWN (65535:0); wait; count broken and
          the share of --probe new connections that still land on s3; then s3 withdraws (the end
          of the drain); wait; count again.

"others" are the connections to s1+s2 (they should never break), "s3" those to the server that
changed. BIRD gets the RFC 8326 import policy (GRACEFUL_SHUTDOWN -> LOCAL_PREF 0): its drain
takes s3 out of the ECMP route at once; stock BIRD would ignore the community.

Usage (root): .venv/bin/python benchmarks/router_connections.py [--conns 240] [--period 0.2]
       [--settle 3] [--buckets 512] [--idle-timer 1s] [--routers resilient,multipath,bird]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _routerlab import (
    ECHO_CONN,
    ECHO_SERVER,
    VIP,
    BenchRouter,
    SpeakerProcess,
    build,
    established,
    hops,
    kernel_info,
    now_utc,
    router_toml,
    server_addrs,
    speaker,
    start_bird_router,
    stop_all,
    wait_for,
    workdir,
)
from bgplb.lab.netns import Topology

# Commands on stdin: "report" -> {"results": [...]}, "probe N" -> {"probe": {server: count}},
# "stop" -> exit. Exits by itself after 120 s.
CLIENT = (
    """
import asyncio, json, sys, time
N, PERIOD = int(sys.argv[1]), float(sys.argv[2])
"""
    + ECHO_CONN
    + """async def probe(k):
    got = {}
    for _ in range(k):
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection("198.51.100.10", 8080), 3)
            s = (await asyncio.wait_for(r.readline(), 3)).decode().strip()
            w.close()
        except (OSError, asyncio.TimeoutError) as e:
            s = "failed"
        got[s] = got.get(s, 0) + 1
    return got
async def main():
    stop = asyncio.Event()
    results = {}
    tasks = []
    for i in range(N):
        tasks.append(asyncio.create_task(conn(i, results, stop)))
        if i % 20 == 19:
            await asyncio.sleep(0.01)
    await asyncio.sleep(1.5)
    print(json.dumps({"connected": [results.get(i, {}).get("server") for i in range(N)]}),
          flush=True)
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        cmd = line.split()
        if not cmd or cmd[0] == "stop":
            break
        if cmd[0] == "report":
            print(json.dumps({"results": [results.get(i) for i in range(N)]}), flush=True)
        elif cmd[0] == "probe":
            print(json.dumps({"probe": await probe(int(cmd[1]))}), flush=True)
    stop.set()
    await asyncio.wait(tasks, timeout=5)
asyncio.run(main())
"""
)


class Client:
    def __init__(self, ns: Any, wd: Path, conns: int, period: float) -> None:
        self.proc = ns.popen(
            sys.executable, str(wd / "client.py"), str(conns), str(period),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )  # fmt: skip
        first = self._read()
        self.servers: list[str | None] = first["connected"]

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("client exited")
        return json.loads(line)  # type: ignore[no-any-return]

    def ask(self, cmd: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd.encode() + b"\n")
        self.proc.stdin.flush()
        return self._read()

    def broken(self) -> tuple[int, int, int, int]:
        """(broken to s1+s2, connections to s1+s2, broken to s3, connections to s3)."""
        res = self.ask("report")["results"]
        others = [r for r in res if r and r["server"] in ("s1", "s2")]
        s3 = [r for r in res if r and r["server"] == "s3"]
        return (
            sum(1 for r in others if r["broken"]),
            len(others),
            sum(1 for r in s3 if r["broken"]),
            len(s3),
        )

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(b"stop\n")
                self.proc.stdin.flush()
                self.proc.wait(10)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(5)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


def run_one(kind: str, a: argparse.Namespace) -> dict[str, Any]:
    wd = workdir(f"conn-{kind}")
    (wd / "echo.py").write_text(ECHO_SERVER)
    (wd / "client.py").write_text(CLIENT)
    out: dict[str, Any] = {}
    with Topology(prefix="bcn") as topo:
        rtr, servers = build(topo, 3)
        rtr.sysctl("net.ipv4.fib_multipath_hash_policy", 1)
        client_ns = topo.add("cl")
        topo.link(rtr, client_ns, ["203.0.113.1/29"], ["203.0.113.2/29"], "cl", "uplink")
        client_ns.exec("ip", "route", "add", "default", "via", "203.0.113.1")
        procs: list[subprocess.Popen[bytes]] = []
        sps: list[SpeakerProcess] = []
        router = None
        bird = None
        client: Client | None = None
        try:
            if kind in ("resilient", "multipath"):
                router = BenchRouter(
                    rtr, wd, router_toml(kind, buckets=a.buckets, idle_timer=a.idle_timer)
                )
                router.start()
            else:
                bird = start_bird_router(rtr, wd)
            for i, s in enumerate(servers, start=1):
                r4, s4, _, _ = server_addrs(i)
                s.exec("ip", "addr", "add", "198.51.100.10/32", "dev", "lo")
                s.exec("ip", "route", "add", "default", "via", r4)
                p = s.popen(sys.executable, str(wd / "echo.py"), f"s{i}", stdout=subprocess.PIPE)
                procs.append(p)
                assert p.stdout is not None and p.stdout.readline().strip() == b"ready"
                sps.append(speaker(s, 65000 + i, s4, r4, wd / f"sp{i}.log"))
            for sp in sps:
                established(sp)
                sp.send(announce=VIP)
            v = [server_addrs(i)[1] for i in (1, 2, 3)]
            s3 = sps[2]

            def expect(want: list[str]) -> None:
                wait_for(f"nexthops {want}", lambda: hops(rtr, VIP) == want, 20, 0.1)

            expect(v)
            # leave
            client = Client(client_ns, wd, a.conns, a.period)
            s3.send(withdraw=VIP)
            expect(v[:2])
            time.sleep(a.settle)
            out["leave"] = client.broken()
            client.close()
            # return
            client = Client(client_ns, wd, a.conns, a.period)
            s3.send(announce=VIP)
            expect(v)
            time.sleep(a.settle)
            out["return"] = client.broken()
            out["return_probe"] = client.ask(f"probe {a.probe}")["probe"]
            client.close()
            # drain
            client = Client(client_ns, wd, a.conns, a.period)
            out["drain_before"] = {f"s{i}": client.servers.count(f"s{i}") for i in (1, 2, 3)}
            s3.send(announce=VIP, communities=["65535:0"])
            time.sleep(a.settle)
            out["drain"] = client.broken()
            out["drain_probe"] = client.ask(f"probe {a.probe}")["probe"]
            s3.send(withdraw=VIP)
            expect(v[:2])
            time.sleep(a.settle)
            out["drain_end"] = client.broken()
            client.close()
            client = None
        finally:
            if client is not None:
                client.close()
            stop_all(sps)
            for p in procs:
                if p.poll() is None:
                    p.kill()
                p.wait(5)
                if p.stdout is not None:
                    p.stdout.close()
            if router is not None and router.proc is not None:
                router.stop()
            if bird is not None:
                bird.stop()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--conns", type=int, default=240)
    p.add_argument("--period", type=float, default=0.2)
    p.add_argument("--settle", type=float, default=3.0)
    p.add_argument("--probe", type=int, default=60)
    p.add_argument("--buckets", type=int, default=512)
    p.add_argument("--idle-timer", default="1s")
    p.add_argument("--routers", default="resilient,multipath,bird")
    a = p.parse_args()
    label = {
        "resilient": "bgplb router, resilient",
        "multipath": "bgplb router, multipath",
        "bird": "BIRD 2 ECMP (merge paths)",
    }
    results = {k: run_one(k, a) for k in a.routers.split(",")}
    print(
        f"broken established connections, {a.conns} connections over 3 servers, one echo every "
        f"{a.period} s, {a.settle} s after each change; resilient: {a.buckets} buckets, "
        f"idle_timer {a.idle_timer}, unbalanced_timer 0; {now_utc()}, kernel {kernel_info()}"
    )
    print("cells: broken others (s1+s2) / their count | broken s3 / its count")

    def cell(t: tuple[int, int, int, int]) -> str:
        return f"{t[0]:>3}/{t[1]:<3} | {t[2]:>3}/{t[3]:<3}"

    print(f"{'router':<28} {'leave':>15} {'return':>15} {'drain':>15} {'drain end':>15}")
    for k, r in results.items():
        print(
            f"{label[k]:<28} {cell(r['leave']):>15} {cell(r['return']):>15} "
            f"{cell(r['drain']):>15} {cell(r['drain_end']):>15}"
        )
    print(f"new connections ({a.probe}) landing on s3: after return | during drain")
    for k, r in results.items():
        print(
            f"{label[k]:<28} {r['return_probe'].get('s3', 0):>3} | "
            f"{r['drain_probe'].get('s3', 0):>3}   (drain started with {r['drain_before']})"
        )
    if "resilient" in results:
        base = sum(results["resilient"][ph][0] for ph in ("leave", "return", "drain", "drain_end"))
        for k, r in results.items():
            total = sum(r[ph][0] for ph in ("leave", "return", "drain", "drain_end"))
            print(f"{label[k]:<28} others broken, all phases: {total}  (resilient: {base})")


if __name__ == "__main__":
    sys.exit(main())
