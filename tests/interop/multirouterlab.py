"""Two load-balancer routers behind an upstream's ECMP, for tests/interop/test_router_multi.py
and benchmarks/multi_router.py.

    client 203.0.113.2/29 -- 203.0.113.1 upstream 198.18.0.1/30 -- 198.18.0.2 router A
                                                  198.18.0.5/30 -- 198.18.0.6 router B
    router A 192.0.2.1/24, router B 192.0.2.2/24, server i 192.0.2.(10+i)/24: one segment
    (bridge `br0` in its own namespace `sw`)

* The upstream has one route to the VIP (198.51.100.10/32): plain multipath via A and B
  (`fib_multipath_hash_policy = 1`, L4). `upstream("a" | "b" | "both")` replaces it: this is how
  an upstream moves flows from one load balancer to the other.
* Every server is on the shared segment, so each has ONE address that both routers see as the
  next hop of its path (the consistent group keys servers by next-hop address). It runs a real
  `bgplb agent` with two peers (A and B) announcing the VIP (on `lo`, put there by the lab:
  `manage_vip = false`, so a withdrawn server still answers what reaches it), with an `exec`
  check on a file (`leave(i)` / `rejoin(i)`: the agent withdraws / announces on both routers),
  and an echo server for long-lived connections (tests/interop/multiclient.py).
* Return traffic: the servers' default route is multipath via A and B (L4 hash), independent of
  the router a flow came in through, as a server behind two routers usually has it. Each router
  then sees one direction of some connections only; with pinning, conntrack must accept that:
  `nf_conntrack_tcp_be_liberal = 1` (set here for the resilient group with pinning; the
  consistent group with pinning is expected to set it itself, the test checks it).
* Each router gets its own `fib_multipath_hash_seed` (random, distinct): all namespaces of one
  host share the kernel's boot-time seed unless set, which would make two routers hash alike —
  separate machines never do.

Router kinds (`KINDS`): BIRD 2 (kernel ECMP, `merge paths on`), `bgplb router` with the
resilient group, with and without pinning, and with the consistent group, with and without.

Every process is started here and stopped by PID in `close()`; namespaces come from the
caller's Topology (unique names, always removed); every wait is bounded.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from test_router_interop import RouterProc, router_config, wait_for

from bgplb.lab.netns import Namespace, NetnsError, Topology
from bgplb.lab.peers import Bird, kernel_routes

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
AGENT = [str(ROOT / ".venv" / "bin" / "python"), "-m", "bgplb.cli_agent"]
VIP = "198.51.100.10/32"
VIP_ADDR = "198.51.100.10"
ROUTER_AS = 65530
ROUTERS = {"a": ("192.0.2.1", "198.18.0.1", "198.18.0.2"),
           "b": ("192.0.2.2", "198.18.0.5", "198.18.0.6")}  # fmt: skip
CLIENT_NET = "203.0.113.0/29"
HASHES = ("per-router", "shared")
#: fib_multipath_hash_fields: source and destination address, IP protocol, source and
#: destination port (kernel docs, ip-sysctl: 0x0001 | 0x0002 | 0x0004 | 0x0010 | 0x0020)
L4_FIELDS = 0x0037

ECHO = """
import asyncio, sys
name = sys.argv[1].encode()
async def handle(reader, writer):
    writer.write(name + b"\\n")
    try:
        while data := await reader.read(4096):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    writer.close()
async def main():
    s = await asyncio.start_server(handle, "198.51.100.10", 8080, backlog=1024)
    print("ready", flush=True)
    await s.serve_forever()
asyncio.run(main())
"""


@dataclass(frozen=True)
class Kind:
    """One way of running the two routers."""

    name: str
    daemon: str  # "bgplb" or "bird"
    group: str = "resilient"
    pinning: bool = False

    @property
    def consistent(self) -> bool:
        return self.group == "consistent"


KINDS = {
    k.name: k
    for k in (
        Kind("bird", "bird"),
        Kind("resilient", "bgplb", "resilient"),
        Kind("resilient+pinning", "bgplb", "resilient", True),
        Kind("consistent", "bgplb", "consistent"),
        Kind("consistent+pinning", "bgplb", "consistent", True),
    )
}


def server_addr(i: int) -> str:
    return f"192.0.2.{10 + i}"


def consistent_available() -> bool:
    """True when this bgplb accepts `[fib] group = "consistent"`."""
    from typing import get_args

    from bgplb.config.router import FibConfig

    ann = FibConfig.model_fields["group"].annotation
    return "consistent" in get_args(ann)


def bgplb_router_toml(kind: Kind, router_id: str, seed: int = 7) -> str:
    fib = [f"pinning = {'true' if kind.pinning else 'false'}", 'drain_linger = "4s"']
    if kind.consistent:
        fib += [f"consistent_seed = {seed}"]
    ranges = (
        '[[peer_ranges]]\nprefix = "192.0.2.0/24"\nasn = "any"\n'
        'accept = ["198.51.100.0/24 le 32"]\n'
    )
    text = router_config(ranges, "\n".join(fib), group=kind.group, buckets=512, listen=("0.0.0.0",))
    return text.replace('router_id = "192.0.2.1"', f'router_id = "{router_id}"')


class Router:
    """Router A or B: `bgplb router` (RouterProc) or BIRD 2, restartable after a kill -9."""

    def __init__(self, name: str, ns: Namespace, kind: Kind, workdir: Path, n: int) -> None:
        self.name = name
        self.ns = ns
        self.kind = kind
        self.addr = ROUTERS[name][0]
        workdir.mkdir(parents=True, exist_ok=True)
        self.bgplb: RouterProc | None = None
        self.bird: Bird | None = None
        if kind.daemon == "bird":
            self.bird = Bird(ns, workdir / "bird", ROUTER_AS, self.addr, kernel=True)
            for i in range(1, n + 1):
                self.bird.add_neighbor(server_addr(i), 65000 + i, passive=True, hold_time=3)
        else:
            self.bgplb = RouterProc(ns, workdir, bgplb_router_toml(kind, self.addr))

    def start(self) -> None:
        if self.bird is not None:
            self.bird.start()
        else:
            assert self.bgplb is not None
            self.bgplb.start()

    def kill9(self) -> None:
        if self.bird is not None:
            for pid in self.bird.pids:
                os.kill(pid, signal.SIGKILL)
            self.bird.stop()  # reaps the dead process, forgets it, removes its run directory
        else:
            assert self.bgplb is not None
            self.bgplb.kill9()

    def stop(self) -> None:
        if self.bird is not None:
            self.bird.stop()
        elif self.bgplb is not None and self.bgplb.proc is not None:
            self.bgplb.stop()

    def members(self) -> list[str] | None:
        try:
            return kernel_routes(self.ns, VIP)
        except NetnsError:
            return None

    def log_tail(self, chars: int = 4000) -> str:
        if self.bird is not None:
            return self.bird.log_tail(40)
        assert self.bgplb is not None
        text = "\n".join(
            line for line in self.bgplb.log_text().splitlines() if "pyroute2" not in line
        )
        return text[-chars:]


class MultiRouterLab:
    """`MultiRouterLab(topo, workdir, kind)`, then `start()`; `close()` (or `with`)."""

    def __init__(
        self, topo: Topology, workdir: Path, kind: Kind | str, n: int = 3, hash: str = "per-router"
    ) -> None:
        if hash not in HASHES:
            raise ValueError(f"hash must be one of {HASHES}, not {hash!r}")
        self.hash = hash
        self.topo = topo
        self.workdir = workdir
        self.kind = KINDS[kind] if isinstance(kind, str) else kind
        self.n = n
        self.procs: list[subprocess.Popen[bytes]] = []
        self.agents: dict[int, subprocess.Popen[bytes]] = {}
        self.client: subprocess.Popen[bytes] | None = None
        rng = random.Random()
        seeds = rng.sample(range(1, 2**31), 2)
        self.seeds = {"a": seeds[0], "b": seeds[1]}

        cl = self.cl = topo.add("cl")
        up = self.up = topo.add("up")
        sw = self.sw = topo.add("sw")
        sw.exec("ip", "link", "add", "br0", "type", "bridge")
        sw.exec("ip", "link", "set", "br0", "up")
        topo.link(cl, up, ["203.0.113.2/29"], ["203.0.113.1/29"], "uplink", "cl")
        cl.exec("ip", "route", "add", "default", "via", "203.0.113.1")
        up.sysctl("net.ipv4.ip_forward", 1)
        up.sysctl("net.ipv4.fib_multipath_hash_policy", 1)
        self.rns: dict[str, Namespace] = {}
        for name, (seg, up_addr, r_addr) in ROUTERS.items():
            r = topo.add(f"r{name}")
            r.sysctl("net.ipv4.ip_forward", 1)
            if hash == "per-router":
                r.sysctl("net.ipv4.fib_multipath_hash_policy", 3)
                r.sysctl("net.ipv4.fib_multipath_hash_fields", L4_FIELDS)
                r.sysctl("net.ipv4.fib_multipath_hash_seed", self.seeds[name])
            else:
                r.sysctl("net.ipv4.fib_multipath_hash_policy", 1)
            if self.kind.pinning and not self.kind.consistent:
                r.sysctl("net.netfilter.nf_conntrack_tcp_be_liberal", 1)
            topo.link(up, r, [f"{up_addr}/30"], [f"{r_addr}/30"], f"r{name}", "upstream")
            r.exec("ip", "route", "add", CLIENT_NET, "via", up_addr)
            topo.link(sw, r, [], [f"{seg}/24"], f"p-r{name}", "seg")
            sw.exec("ip", "link", "set", f"p-r{name}", "master", "br0")
            self.rns[name] = r
        self.servers: dict[int, Namespace] = {}
        for i in range(1, n + 1):
            s = topo.add(f"s{i}")
            topo.link(sw, s, [], [f"{server_addr(i)}/24"], f"p-s{i}", "seg")
            sw.exec("ip", "link", "set", f"p-s{i}", "master", "br0")
            s.sysctl("net.ipv4.fib_multipath_hash_policy", 1)
            a, b = ROUTERS["a"][0], ROUTERS["b"][0]
            s.exec("ip", "route", "add", "default", "nexthop", "via", a, "nexthop", "via", b)
            s.exec("ip", "addr", "add", f"{VIP_ADDR}/32", "dev", "lo")
            self.servers[i] = s
        self.upstream("both")
        self.routers = {
            name: Router(name, self.rns[name], self.kind, workdir / f"router-{name}", n)
            for name in ROUTERS
        }

    # -- upstream ---------------------------------------------------------------------------------
    def upstream(self, via: str) -> None:
        """The upstream's route to the VIP: via router "a", "b", or "both" (multipath)."""
        hops = [ROUTERS[r][2] for r in (("a", "b") if via == "both" else (via,))]
        args: list[str] = []
        for h in hops:
            args += ["nexthop", "via", h] if len(hops) > 1 else ["via", h]
        self.up.exec("ip", "route", "replace", VIP, *args)

    # -- start ------------------------------------------------------------------------------------
    def start(self) -> None:
        """Routers, echo servers and agents; return when both routers route to every server."""
        for r in self.routers.values():
            r.start()
        script = self.workdir / "echo.py"
        script.write_text(ECHO)
        for i, s in self.servers.items():
            p = s.popen(sys.executable, str(script), f"s{i}", stdout=subprocess.PIPE)
            self.procs.append(p)
            assert p.stdout is not None and p.stdout.readline().strip() == b"ready"
            self.start_agent(i)
        self.wait_members(list(self.servers), timeout=40)

    def agent_dir(self, i: int) -> Path:
        d = self.workdir / f"agent{i}"
        d.mkdir(exist_ok=True)
        return d

    def start_agent(self, i: int) -> None:
        d = self.agent_dir(i)
        peers = "".join(
            f'[[peers]]\naddress = "{seg}"\nasn = {ROUTER_AS}\n'
            f'local_address = "{server_addr(i)}"\n\n'
            for seg, _, _ in ROUTERS.values()
        )
        (d / "agent.toml").write_text(
            f"""[bgp]
asn = {65000 + i}
router_id = "{server_addr(i)}"
hold_time = 3
shutdown_drain_time = "1s"

{peers}
[[services]]
name = "echo"
vips = ["{VIP}"]
manage_vip = false
drain_time = "2s"

[[services.checks]]
type = "exec"
command = ["test", "!", "-e", "{d / "down"}"]
interval = "200ms"
timeout = "2s"
rise = 1
fall = 1
damping = false

[control]
socket = "{d / "agent.sock"}"
metrics = "off"
"""
        )
        with (d / "agent.log").open("ab") as log:
            p = self.servers[i].popen(
                *AGENT, "agent", "-c", str(d / "agent.toml"), "--state-file",
                str(d / "state.json"), "--log-level", "info",
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
            )  # fmt: skip
        self.agents[i] = p
        self.procs.append(p)

    def members(self, router: str) -> list[str] | None:
        return self.routers[router].members()

    def wait_members(self, servers: list[int], timeout: float = 30) -> None:
        want = [server_addr(i) for i in sorted(servers)]
        for name, r in self.routers.items():
            try:
                wait_for(f"router {name}: VIP via {want}", lambda r=r: r.members() == want, timeout)
            except AssertionError as exc:
                raise AssertionError(
                    f"{exc}; router {name} has {r.members()}\n{r.log_tail()}\n{self.agent_logs()}"
                ) from None

    def agent_logs(self) -> str:
        out = []
        for i in self.servers:
            p = self.agent_dir(i) / "agent.log"
            text = p.read_text(errors="replace") if p.exists() else ""
            out.append(f"--- agent {i} ---\n" + "\n".join(text.splitlines()[-15:]))
        return "\n".join(out)

    # -- events -----------------------------------------------------------------------------------
    def leave(self, i: int) -> None:
        """Server i's check fails: its agent withdraws the VIP from both routers."""
        (self.agent_dir(i) / "down").touch()
        self.wait_members([j for j in self.servers if j != i])

    def rejoin(self, i: int) -> None:
        (self.agent_dir(i) / "down").unlink(missing_ok=True)
        self.wait_members(list(self.servers))

    def kill_router(self, name: str) -> None:
        """kill -9 the router's daemon (its kernel routes and nftables table stay)."""
        self.routers[name].kill9()

    def start_router(self, name: str) -> None:
        self.routers[name].start()

    # -- client -----------------------------------------------------------------------------------
    def start_client(self, period: float = 0.5, timeout: float = 10.0) -> None:
        self.client = self.cl.popen(
            sys.executable, str(HERE / "multiclient.py"), VIP_ADDR, "8080",
            "--period", str(period), "--timeout", str(timeout), "--lifetime", "1500",
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )  # fmt: skip
        self.procs.append(self.client)

    def ask(self, **cmd: Any) -> dict[str, Any]:
        assert self.client is not None and self.client.stdin and self.client.stdout
        self.client.stdin.write(json.dumps(cmd).encode() + b"\n")
        self.client.stdin.flush()
        line = self.client.stdout.readline()
        if not line:
            raise AssertionError("the client exited")
        out: dict[str, Any] = json.loads(line)
        return out

    def open(self, n: int) -> dict[str, int]:
        return self.ask(open=n)["opened"]  # type: ignore[no-any-return]

    def check(self) -> dict[str, Any]:
        return self.ask(check=True)

    # -- end --------------------------------------------------------------------------------------
    def __enter__(self) -> MultiRouterLab:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if exc_type is not None:
                for name, r in self.routers.items():
                    print(f"--- router {name} ---\n{r.log_tail()}")
                print(self.agent_logs())
        finally:
            self.close()

    def close(self) -> None:
        if self.client is not None and self.client.poll() is None:
            # "quit" has no answer: the client stops its connections and exits. Wait for that,
            # bounded (its shutdown has been seen to hang); it is killed below otherwise.
            try:
                assert self.client.stdin is not None
                self.client.stdin.write(b'{"quit": true}\n')
                self.client.stdin.flush()
                self.client.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                pass
        for p in self.agents.values():
            if p.poll() is None:
                p.terminate()
        for r in getattr(self, "routers", {}).values():
            try:
                r.stop()
            except Exception:  # close() never raises
                pass
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                pass
            for pipe in (p.stdin, p.stdout):
                if pipe is not None:
                    pipe.close()


# -- the scenario (test_router_multi.py, benchmarks/multi_router.py) ------------------------------
STEPS = (
    ("to-b", "upstream moves every flow to router B"),
    ("both", "upstream back to A and B"),
    ("leave", "server s3 leaves (withdrawn on both routers)"),
    ("rejoin", "server s3 returns"),
    ("kill-a", "router A: kill -9, started again"),
    ("to-a", "upstream moves every flow to router A"),
)
CHANGED = 3  # the server that leaves and returns


def wait_sessions(lab: MultiRouterLab, name: str, timeout: float = 40) -> None:
    """Every server's session with router `name` Established again (after its restart)."""
    r = lab.routers[name]
    for i in lab.servers:
        if r.bird is not None:
            r.bird.wait_established(server_addr(i), timeout)
        else:
            assert r.bgplb is not None
            r.bgplb.wait_established(server_addr(i), timeout)


def do_step(lab: MultiRouterLab, step: str, outage: float = 1.0, settle: float = 2.0) -> None:
    import time

    if step == "to-b":
        lab.upstream("b")
    elif step == "both":
        lab.upstream("both")
    elif step == "leave":
        lab.leave(CHANGED)
    elif step == "rejoin":
        lab.rejoin(CHANGED)
    elif step == "kill-a":
        lab.kill_router("a")
        time.sleep(outage)  # the agents notice the closed sessions meanwhile
        lab.start_router("a")
        wait_sessions(lab, "a")
        lab.wait_members(list(lab.servers))
    elif step == "to-a":
        lab.upstream("a")
    else:
        raise ValueError(f"unknown step {step!r}")
    time.sleep(settle)


def run_scenario(
    lab: MultiRouterLab, conns: int = 240, steps: tuple[str, ...] = tuple(s for s, _ in STEPS)
) -> dict[str, Any]:
    """Open `conns` connections, then make each step and count the connections it broke:
    `others` (to servers that did not change) and `changed` (to s3, which left in "leave").
    Returns {"opened": {server: n}, "before": {server: n broken before any step}, "steps":
    [{"step", "others", "others_alive", "changed", "changed_alive", "new", "reasons",
    "stalled"}], "alive": n}; `*_alive` count the live connections just before the step."""
    opened = lab.open(conns)
    first = lab.check()
    out: dict[str, Any] = {"opened": opened, "before": first["new"], "steps": []}
    alive = first["ok"]
    for step in steps:
        do_step(lab, step)
        r = lab.check()
        new = r["new"]
        changed = new.get(f"s{CHANGED}", 0)
        was = alive.get(f"s{CHANGED}", 0)
        out["steps"].append(
            {
                "step": step,
                "others": sum(new.values()) - changed,
                "others_alive": sum(alive.values()) - was,
                "changed": changed,
                "changed_alive": was,
                "new": new,
                "reasons": r["reasons"],
                "stalled": r["stalled"],
            }
        )
        alive = r["ok"]
    out["alive"] = sum(r["ok"].values())
    return out
