"""Helpers for tests/interop/test_router_chaos.py: the lab topology with a non-pinning router,
a bounded HTTP client in the client namespace, a seeded chaos schedule, and the comparison of
the router's status with the kernel.

    client 203.0.113.10 — router (bgplb router, resilient groups, pinning off) — srv1..srv3
    (each: the lab's web server on :80 answering "Welcome to nginx <i> !" and `bgplb agent`
    announcing 198.51.100.10/32 with BFD 100 ms x 3)

Everything is started through `bgplb.lab.topology.Lab` (own session, PID + start time
recorded; `teardown()` kills exactly those and removes the namespaces). Times are
CLOCK_MONOTONIC, which every namespace shares, so the client's records and the chaos events
line up.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bgplb.lab.labstate import Proc
from bgplb.lab.netns import NetnsError
from bgplb.lab.topology import VIP4, Lab, server_addrs

VIP = VIP4
ADDR = VIP.split("/")[0]
PROTO = "200"

#: One request every PERIOD seconds, each on a fresh connection, each bounded by TIMEOUT.
PERIOD = 0.02
TIMEOUT = 1.0

# The client: one coroutine per request (so a slow one never delays the schedule), at most
# DURATION/PERIOD requests, every one bounded; one JSON line per request:
# [start, end, answer index or null, error or null]. Stops at DURATION or on SIGTERM.
CLIENT = r"""
import asyncio, json, signal, sys, time
addr, out = sys.argv[1], sys.argv[5]
period, timeout, duration = (float(x) for x in sys.argv[2:5])
REQ = f"GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n".encode()
records = []
async def one(start):
    answer = error = None
    try:
        async def go():
            r, w = await asyncio.open_connection(addr, 80)
            try:
                w.write(REQ)
                await w.drain()
                return await r.read(-1)  # Connection: close: until EOF
            finally:
                w.close()
        data = await asyncio.wait_for(go(), timeout)
        text = data.decode(errors="replace")
        if "Welcome to nginx" in text:
            answer = int(text.split("Welcome to nginx", 1)[1].split()[0])
        else:
            error = "bad answer: " + text[:60]
    except asyncio.TimeoutError:
        error = "timeout"
    except OSError as exc:
        error = type(exc).__name__ + ": " + (exc.strerror or str(exc))
    records.append([start, time.monotonic(), answer, error])
async def main():
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    t0 = time.monotonic()
    tasks = []
    n = 0
    while not stop.is_set() and n < int(duration / period) + 1:
        start = time.monotonic()
        if start - t0 >= duration:
            break
        tasks.append(asyncio.create_task(one(start)))
        n += 1
        next_at = t0 + n * period
        try:
            await asyncio.wait_for(stop.wait(), max(0.0, next_at - time.monotonic()))
        except asyncio.TimeoutError:
            pass
    await asyncio.gather(*tasks)
    with open(out, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
asyncio.run(main())
"""


@dataclass
class Window:
    """A period of the run when something was done to the system, and why."""

    cause: str  # "host-crash:srv2", "router-restart", "kernel-delete:route", ...
    start: float
    end: float | None = None  # None: what closes it never happened
    detail: str = ""
    complete: bool = True  # False: the system did not recover within the wait's bound

    def holds(self, t: float, slack: float = 0.0) -> bool:
        end = self.end if self.end is not None else float("inf")
        return self.start <= t <= end + slack


@dataclass
class Request:
    start: float
    end: float
    answer: int | None
    error: str | None


@dataclass
class Classified:
    requests: int = 0
    answered: Counter[int] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)  # cause -> count
    unexplained: list[Request] = field(default_factory=list)  # failures no window explains


class ChaosLab(Lab):
    """`bgplb.lab.topology.Lab` with the router this test needs: pinning off (plain resilient
    groups), BFD, short hold and startup deferral; and the chaos actions."""

    def __init__(self, workdir: Path, *, servers: int = 3, startup_defer: int = 20) -> None:
        super().__init__(
            name="chaos",
            servers=servers,
            router="bgplb",
            bfd=True,
            web="builtin",
            workdir=workdir,
            hold_time=3,
            check_interval_ms=200,
            drain_time=1.0,
        )
        self.startup_defer = startup_defer
        self.router_proc: Proc | None = None
        self.windows: list[Window] = []
        self.t0 = time.monotonic()

    def router_config(self) -> str:
        text = super().router_config()
        text = text.replace("pinning = true", "pinning = false")
        text = text.replace('drain_linger = "60s"', f'startup_defer = "{self.startup_defer}s"')
        assert "pinning = false" in text and "startup_defer" in text, text
        return text

    def start_router(self) -> None:
        self.state.router_socket.unlink(missing_ok=True)  # a kill -9 leaves it behind
        before = {p.pid for p in self.state.procs}
        super().start_router()
        new = [p for p in self.state.procs if p.pid not in before and p.role == "bgplb-router"]
        self.router_proc = new[-1]

    def logs(self, lines: int = 30) -> str:
        """The last lines of the router's and the agents' logs (for a failing test)."""
        out = []
        for log in sorted(self.workdir.glob("*/*.log")):
            text = log.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {log} ---\n" + "\n".join(text))
        return "\n".join(out)

    def keep_logs(self, dest: Path) -> None:
        """Copy every log to `dest` (the lab's directory goes with its teardown)."""
        for log in self.workdir.glob("*/*.log"):
            target = dest / log.parent.name / log.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(log.read_bytes())

    # -- status and kernel -----------------------------------------------------------------------
    def router_status(self) -> dict[str, Any] | None:
        """`bgplb status --role router --json` (None if the router does not answer)."""
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "bgplb.cli",
                "status",
                "--role",
                "router",
                "--json",
                "--socket",
                str(self.state.router_socket),
            ],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if proc.returncode != 0:
            return None
        try:
            doc: dict[str, Any] = json.loads(proc.stdout)
        except json.JSONDecodeError:
            return None
        return doc

    def established(self) -> set[str]:
        st = self.router_status()
        if st is None:
            return set()
        return {p["address"] for p in st.get("peers", []) if p.get("established")}

    def kernel(self) -> dict[str, dict[str, int]]:
        """Our routes (proto 200) in the router namespace: {dst: {gateway: weight}}, from
        `ip -j route` and `ip -j nexthop` (raises NetnsError/KeyError if they changed between
        the two reads)."""
        rt = self.router_ns
        nhs = {int(n["id"]): n for n in json.loads(rt.exec("ip", "-j", "nexthop", "show") or "[]")}
        out: dict[str, dict[str, int]] = {}
        for fam in ("-4", "-6"):
            routes = json.loads(rt.exec("ip", "-j", fam, "route", "show", "proto", PROTO) or "[]")
            for r in routes:
                dst = r["dst"] if "/" in r["dst"] else r["dst"] + ("/32" if fam == "-4" else "/128")
                group = nhs[int(r["nhid"])]
                members = group.get("group") or [{"id": group["id"], "weight": 1}]
                out[dst] = {nhs[int(m["id"])]["gateway"]: int(m.get("weight", 1)) for m in members}
        return out

    def rib_view(self, status: dict[str, Any]) -> dict[str, dict[str, int]]:
        """The status' VIPs with nexthops: {vip: {gateway: weight}}."""
        return {
            v["vip"]: {n["address"]: int(n["weight"]) for n in v["nexthops"]}
            for v in status.get("vips", [])
            if v.get("nexthops")
        }

    def gateways(self) -> list[str] | None:
        """The kernel's next hops for the VIP now (None: changing under us)."""
        return self.nexthops(VIP)

    # -- chaos actions ---------------------------------------------------------------------------
    def now(self) -> float:
        return time.monotonic()

    def open(self, cause: str, detail: str = "") -> Window:
        w = Window(cause, self.now(), None, detail)
        self.windows.append(w)
        return w

    def wait_gone(self, i: int, timeout: float = 10.0) -> float | None:
        """Until srv<i> is no longer a next hop of the VIP; the time, or None."""
        gw = server_addrs(i)[1]
        deadline = self.now() + timeout
        while self.now() < deadline:
            hops = self.gateways()
            if hops is not None and gw not in hops:
                return self.now()
            time.sleep(0.01)
        return None

    def wait_present(self, i: int, timeout: float = 20.0) -> float | None:
        gw = server_addrs(i)[1]
        deadline = self.now() + timeout
        while self.now() < deadline:
            hops = self.gateways()
            if hops is not None and gw in hops:
                return self.now()
            time.sleep(0.02)
        return None

    def wait_route(self, timeout: float = 10.0) -> float | None:
        deadline = self.now() + timeout
        while self.now() < deadline:
            hops = self.gateways()
            if hops:
                return self.now()
            time.sleep(0.002)
        return None

    def crash_host(self, i: int) -> Window:
        """srv<i> dies: all its traffic dropped (nftables), then its agent SIGKILLed. The window
        lasts until the router no longer has it as a next hop."""
        w = self.open(f"host-crash:srv{i}")
        self.ns[f"srv{i}"].drop_all_traffic()
        self.kill_agent(i)
        gone = self.wait_gone(i)
        w.end, w.complete = gone, gone is not None
        w.detail = f"removed from the group after {(gone or self.now()) - w.start:.3f} s"
        return w

    def revive_host(self, i: int) -> None:
        self.ns[f"srv{i}"].allow_all_traffic()
        self.start_agent(i)
        self.wait_present(i)

    def kill_agent_only(self, i: int) -> Window:
        """SIGKILL srv<i>'s agent; the host (web server, VIP on lo) keeps serving."""
        w = self.open(f"agent-kill:srv{i}")
        self.kill_agent(i)
        gone = self.wait_gone(i)
        w.end, w.complete = self.now(), gone is not None
        w.detail = f"removed from the group after {(gone or self.now()) - w.start:.3f} s"
        return w

    def flap_agent(self, i: int) -> Window:
        """SIGTERM srv<i>'s agent (graceful: GRACEFUL_SHUTDOWN, withdrawal, VIP off lo), then
        start it again at once."""
        w = self.open(f"agent-flap:srv{i}")
        proc = self.agent_procs.pop(i)
        proc.signal(signal.SIGTERM)
        self._reap(proc, 15)
        self.state.agent_socket(i).unlink(missing_ok=True)
        self.start_agent(i)
        back = self.wait_present(i)
        w.end, w.complete = self.now(), back is not None
        w.detail = f"back in the group after {(back or self.now()) - w.start:.3f} s"
        return w

    def delete_route(self) -> Window:
        w = self.open("kernel-delete:route")
        self.router_ns.exec("ip", "route", "del", VIP, "proto", PROTO, check=False)
        back = self.wait_route()
        w.end, w.complete = back, back is not None
        w.detail = f"re-installed after {(back or self.now()) - w.start:.4f} s"
        return w

    def delete_group(self) -> Window:
        w = self.open("kernel-delete:group")
        out = self.router_ns.exec("ip", "-j", "route", "show", "exact", VIP, check=False)
        try:
            nhid = json.loads(out or "[]")[0]["nhid"]
        except (ValueError, IndexError, KeyError):
            w.end = self.now()
            w.detail = "no route to delete"
            return w
        self.router_ns.exec("ip", "nexthop", "del", "id", str(nhid), check=False)
        back = self.wait_route()
        w.end, w.complete = back, back is not None
        w.detail = f"group {nhid} deleted; route back after {(back or self.now()) - w.start:.4f} s"
        return w

    def restart_router(self) -> Window:
        """kill -9 the router and start it again with the same config; the window lasts until
        every running agent's session is Established again."""
        w = self.open("router-restart")
        assert self.router_proc is not None
        self.router_proc.signal(signal.SIGKILL)
        self._reap(self.router_proc, 10)
        killed = self.now()
        self.start_router()
        up = self.now()
        want = {server_addrs(i)[1] for i in self.agent_procs}
        deadline = self.now() + 30
        while self.now() < deadline and not want <= self.established():
            time.sleep(0.05)
        w.end, w.complete = self.now(), want <= self.established()
        w.detail = (
            f"control socket back {up - killed:.2f} s after the kill, sessions "
            f"{'Established' if want <= self.established() else 'NOT all back'} "
            f"{w.end - killed:.2f} s after it"
        )
        return w


def schedule(seed: int, servers: int, duration: float) -> list[tuple[float, str, int]]:
    """A seeded list of (offset s, action, server index): one action every 3-6 s, each kind
    at least once, the router restart in the middle."""
    rng = random.Random(seed)
    kinds = ["crash", "agent-kill", "flap", "delete-route", "delete-group"]
    kinds += [rng.choice(kinds) for _ in range(int(duration / 4.5))]
    rng.shuffle(kinds)
    out: list[tuple[float, str, int]] = []
    t = 3.0
    for k in kinds:
        if t > duration - 6:
            break
        out.append((t, k, rng.randint(1, servers)))
        t += rng.uniform(3.0, 6.0)
    mid = len(out) // 2
    out.insert(mid, (0.0, "router-restart", 0))
    return out


def classify(records: list[Request], windows: list[Window], slack: float) -> Classified:
    """Every failure gets the cause of the window its start (or end) falls in, `slack` seconds
    (the request timeout) after a window still counting; the others are unexplained."""
    c = Classified(requests=len(records))
    for r in records:
        if r.error is None and r.answer is not None:
            c.answered[r.answer] += 1
            continue
        causes = [w.cause for w in windows if w.holds(r.start, slack) or w.holds(r.end)]
        if causes:
            c.failures[causes[0]] += 1
        else:
            c.failures["unexplained"] += 1
            c.unexplained.append(r)
    return c


def read_records(path: Path) -> list[Request]:
    return [Request(*json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def kernel_or_none(lab: ChaosLab) -> dict[str, dict[str, int]] | None:
    try:
        return lab.kernel()
    except (NetnsError, KeyError, ValueError):
        return None
