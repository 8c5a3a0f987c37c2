"""A pinning lab for tests/interop/test_router_pinning.py and benchmarks/pinning.py.

client namespace -> router namespace (`bgplb router`) -> 3 server namespaces. Each server has
the VIPs (198.51.100.10, 2001:db8:100::10) on lo, an asyncio echo server on them (it greets with
its name), and a bgplb speaker (`tests/interop/bgpspeaker.py`) announcing the VIPs to the router.
The client (tests/interop/pinclient.py) holds long-lived, mostly idle connections.

Every process is started here, stopped by PID in `close()`; every wait is bounded.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from bgpspeaker import SpeakerProcess
from test_router_interop import (
    OPEN_RANGES,
    ROUTER_AS,
    VIP,
    VIP6,
    router_config,
    server_addrs,
    wait_for,
)

HERE = Path(__file__).resolve().parent
__all__ = ["ROUTER_AS", "VIP", "VIP6", "PinLab", "server_addrs", "wait_for"]

ECHO = """
import asyncio, sys
name = sys.argv[1].encode()
async def handle(reader, writer):
    writer.write(name + b"\\n")
    try:
        while data := await reader.readline():
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    writer.close()
async def main():
    s4 = await asyncio.start_server(handle, "198.51.100.10", 8080, backlog=1024)
    s6 = await asyncio.start_server(handle, "2001:db8:100::10", 8080, backlog=1024)
    print("ready", flush=True)
    await asyncio.gather(s4.serve_forever(), s6.serve_forever())
asyncio.run(main())
"""


def router_toml(group: str, pinning: bool, sock: str, *, linger: str = "4s") -> str:
    fib = f'pinning = {"true" if pinning else "false"}\ndrain_linger = "{linger}"'
    return router_config(OPEN_RANGES, fib, group=group).replace("@SOCK@", sock)


class PinLab:
    """Build with `PinLab(topo, workdir)`, then `start_router(...)`, `start_servers()`."""

    def __init__(self, topo: Any, workdir: Path, n: int = 3, rp_filter: int = 0) -> None:
        self.topo = topo
        self.workdir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.speakers: list[SpeakerProcess] = []
        rtr = self.rtr = topo.add("rtr")
        rtr.sysctl("net.ipv4.ip_forward", 1)
        rtr.sysctl("net.ipv6.conf.all.forwarding", 1)
        rtr.sysctl("net.ipv4.fib_multipath_hash_policy", 1)
        rtr.sysctl("net.ipv6.fib_multipath_hash_policy", 1)
        if rp_filter:
            rtr.sysctl("net.ipv4.conf.all.rp_filter", rp_filter)
            rtr.sysctl("net.ipv4.conf.default.rp_filter", rp_filter)
        self.servers = []
        for i in range(1, n + 1):
            s = topo.add(f"s{i}")
            r4, s4, r6, s6 = server_addrs(i)
            topo.link(
                rtr, s, [f"{r4}/29", f"{r6}/64"], [f"{s4}/29", f"{s6}/64"], f"srv{i}", "uplink"
            )
            s.exec("ip", "route", "add", "default", "via", r4)
            s.exec("ip", "-6", "route", "add", "default", "via", r6)
            self.servers.append(s)
        cl = self.client_ns = topo.add("cl")
        topo.link(rtr, cl, ["203.0.113.1/29", "2001:db8:ff::1/64"],
                  ["203.0.113.2/29", "2001:db8:ff::2/64"], "cl", "uplink")  # fmt: skip
        cl.exec("ip", "route", "add", "default", "via", "203.0.113.1")
        cl.exec("ip", "-6", "route", "add", "default", "via", "2001:db8:ff::1")
        if rp_filter:
            for i in range(1, n + 1):
                rtr.sysctl(f"net.ipv4.conf.srv{i}.rp_filter", rp_filter)
            rtr.sysctl("net.ipv4.conf.cl.rp_filter", rp_filter)
        self.router: subprocess.Popen[bytes] | None = None
        self.sock = workdir / "router.sock"
        self.client: subprocess.Popen[bytes] | None = None

    # -- router ---------------------------------------------------------------------------------
    def start_router(self, group: str = "resilient", pinning: bool = True, **kw: Any) -> None:
        from bgplb.control.socket import ControlError, request

        conf = self.workdir / "router.toml"
        conf.write_text(router_toml(group, pinning, str(self.sock), **kw))
        log = (self.workdir / "router.log").open("ab")
        bgplb = HERE.parents[1] / ".venv" / "bin" / "bgplb"
        self.router = self.rtr.popen(
            str(bgplb), "router", "-c", str(conf), "--log-level", "debug",
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()

        def up() -> bool:
            assert self.router is not None
            if self.router.poll() is not None:
                raise AssertionError(f"router exited:\n{self.router_log()}")
            try:
                request(self.sock, "status", timeout=5)
                return True
            except ControlError:
                return False

        wait_for("the router's control socket", up, 15)

    def status(self) -> dict[str, Any]:
        from bgplb.control.socket import request

        return request(self.sock, "status", timeout=10)

    def router_log(self) -> str:
        p = self.workdir / "router.log"
        text = p.read_text(errors="replace") if p.exists() else ""
        return "\n".join(line for line in text.splitlines() if "pyroute2" not in line)

    def stop_router(self) -> int:
        assert self.router is not None
        self.router.terminate()
        try:
            return self.router.wait(15)
        finally:
            if self.router.poll() is None:
                self.router.kill()
                self.router.wait(5)

    # -- servers --------------------------------------------------------------------------------
    def start_servers(self, ipv6: bool = False) -> None:
        script = self.workdir / "echo.py"
        script.write_text(ECHO)
        for i, s in enumerate(self.servers, start=1):
            s.exec("ip", "addr", "add", "198.51.100.10/32", "dev", "lo")
            s.exec("ip", "addr", "add", "2001:db8:100::10/128", "dev", "lo", "nodad")
            p = s.popen(sys.executable, str(script), f"s{i}", stdout=subprocess.PIPE)
            self.procs.append(p)
            assert p.stdout is not None and p.stdout.readline().strip() == b"ready"
            r4, s4, r6, s6 = server_addrs(i)
            sp = SpeakerProcess(
                s, "--asn", str(65000 + i), "--router-id", s4, "--local", s4, "--peer", r4,
                "--families", "ipv4", "--hold", "9", "--connect-retry", "1",
                log_path=str(self.workdir / f"speaker{i}.log"),
            )  # fmt: skip
            self.speakers.append(sp)
            if ipv6:
                sp6 = SpeakerProcess(
                    s, "--asn", str(65000 + i), "--router-id", s4, "--local", s6, "--peer", r6,
                    "--families", "ipv6", "--hold", "9", "--connect-retry", "1",
                    log_path=str(self.workdir / f"speaker{i}-6.log"),
                )  # fmt: skip
                self.speakers.append(sp6)
        for sp in self.speakers:
            sp.wait_for(lambda e: e.get("event") == "established", 30)
        for i in range(1, len(self.servers) + 1):
            self.announce(i)

    def speaker(self, i: int, v6: bool = False) -> SpeakerProcess:
        per = len(self.speakers) // len(self.servers)
        return self.speakers[(i - 1) * per + (1 if v6 else 0)]

    def announce(self, i: int, drain: bool = False, v6: bool = False) -> None:
        cmd: dict[str, Any] = {"announce": VIP6 if v6 else VIP}
        if drain:
            cmd["communities"] = ["graceful-shutdown"]
        self.speaker(i, v6).send(**cmd)

    def withdraw(self, i: int, v6: bool = False) -> None:
        self.speaker(i, v6).send(withdraw=VIP6 if v6 else VIP)

    def members(self, prefix: str = VIP) -> list[str] | None:
        """Gateways of the VIP's group in the router's kernel (None between two reads)."""
        from bgplb.lab.netns import NetnsError
        from bgplb.lab.peers import kernel_routes

        try:
            return kernel_routes(self.rtr, prefix)
        except NetnsError:
            return None

    def wait_members(self, servers: list[int], prefix: str = VIP, timeout: float = 20) -> None:
        idx = 1 if prefix == VIP else 3
        want = [server_addrs(i)[idx] for i in servers]
        wait_for(f"group {want}", lambda: self.members(prefix) == want, timeout)

    # -- client ---------------------------------------------------------------------------------
    def start_client(self, host: str = "198.51.100.10") -> None:
        self.client = self.client_ns.popen(
            sys.executable, str(HERE / "pinclient.py"), host, "8080", "--lifetime", "900",
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
        opened = self.ask(open=n)["opened"]
        out: dict[str, int] = {}
        for s in opened:
            out[s or "failed"] = out.get(s or "failed", 0) + 1
        return out

    def probe(self) -> dict[str, Any]:
        return self.ask(probe=True)

    def __enter__(self) -> PinLab:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        """close(); on an error, print the router's log tail first (pytest shows it)."""
        try:
            if exc_type is not None:
                print(self.router_log()[-5000:])
        finally:
            self.close()

    def close(self) -> None:
        if self.client is not None and self.client.poll() is None:
            try:
                self.ask(quit=True)
            except (AssertionError, OSError, ValueError):
                pass
        for sp in self.speakers:
            try:
                sp.stop()
            except Exception:
                if sp.proc.poll() is None:
                    sp.proc.kill()
        if self.router is not None and self.router.poll() is None:
            self.stop_router()
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(5)
            for pipe in (p.stdin, p.stdout):
                if pipe is not None:
                    pipe.close()
