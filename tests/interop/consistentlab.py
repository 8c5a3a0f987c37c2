"""A lab for `[fib] group = "consistent"` (tests/interop/test_router_consistent.py and
benchmarks/consistent.py).

Two routers (namespaces `ra`, `rb`) and N servers share one LAN (a bridge in namespace `sw`):
routers 192.0.2.1 and .2, server i at 192.0.2.(10+i) — every router sees the same next-hop
address for a server. Each server has the VIP on lo, a UDP receiver on VIP:9000 that logs every
datagram's payload, and one bgplb speaker per router announcing the VIP. The client namespace
`cl` (source address 203.0.113.100 on lo) is linked to both routers and sends its flows through
one or the other by changing its route to the VIP.

Every process is started here and stopped by PID in close(); every wait is bounded.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from ipaddress import ip_address
from pathlib import Path
from typing import Any

from bgpspeaker import SpeakerProcess
from test_router_interop import OPEN_RANGES, VIP, RouterProc, router_config, wait_for

from bgplb.router.maglev import Backend, build_table

HERE = Path(__file__).resolve().parent
VIP_ADDR = VIP.split("/")[0]
CLIENT = "203.0.113.100"
PORT = 9000
EQUAL_WEIGHT = 64  # bgplb.router.rib.EQUAL_WEIGHT

RECEIVER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
out = open(sys.argv[3], "a", buffering=1)
print("ready", flush=True)
while True:
    data, _ = s.recvfrom(256)
    out.write(data.decode(errors="replace") + "\\n")
"""

SENDER = """
import socket, sys, time
src, dst, port, tag, first, count = sys.argv[1:7]
socks = []
for i in range(int(count)):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((src, int(first) + i))
    socks.append(s)
for rep in range(2):  # twice: a lost datagram is unlikely twice
    for i, s in enumerate(socks):
        s.sendto(f"{tag}:{i}".encode(), (dst, int(port)))
    time.sleep(0.05)
"""


def server_addr(i: int) -> str:
    return f"192.0.2.{10 + i}"


def router_addr(name: str) -> str:
    return {"ra": "192.0.2.1", "rb": "192.0.2.2"}[name]


def expected_fingerprint(servers: list[int], seed: int | None = None, size: int = 0) -> str:
    kw: dict[str, int] = {}
    if seed is not None:
        kw["seed"] = seed
    if size:
        kw["size"] = size
    backends = [Backend(ip_address(server_addr(i)), EQUAL_WEIGHT) for i in servers]
    return build_table(backends, **kw).fingerprint()


class ConsistentLab:
    def __init__(
        self,
        topo: Any,
        workdir: Path,
        n: int = 3,
        routers: tuple[str, ...] = ("ra", "rb"),
        fib: str = "",
    ) -> None:
        self.topo = topo
        self.workdir = workdir
        self.fib = fib
        self.procs: list[subprocess.Popen[bytes]] = []
        self.speakers: dict[tuple[str, int], SpeakerProcess] = {}
        self.routers: dict[str, RouterProc] = {}
        self.rns: dict[str, Any] = {}
        sw = self.sw = topo.add("sw")
        sw.exec("ip", "link", "add", "br0", "type", "bridge")
        sw.exec("ip", "link", "set", "br0", "up")
        cl = self.cl = topo.add("cl")
        cl.exec("ip", "addr", "add", f"{CLIENT}/32", "dev", "lo")
        for k, name in enumerate(routers):
            ns = self.rns[name] = topo.add(name)
            ns.sysctl("net.ipv4.ip_forward", 1)
            ns.sysctl("net.ipv4.fib_multipath_hash_policy", 1)
            topo.link(sw, ns, [], [f"{router_addr(name)}/24"], f"p{name}", "lan")
            sw.exec("ip", "link", "set", f"p{name}", "master", "br0")
            # client link k: 203.0.113.(4k+1) on the router, .(4k+2) on the client
            topo.link(
                ns, cl, [f"203.0.113.{4 * k + 1}/30"], [f"203.0.113.{4 * k + 2}/30"], "cl", name
            )
            # every client address (either link's, the loopback one) through this link
            ns.exec("ip", "route", "add", "203.0.113.0/24", "via", f"203.0.113.{4 * k + 2}")
        self.servers = []
        self.recv_files: list[Path] = []
        (workdir / "recv.py").write_text(RECEIVER)
        (workdir / "send.py").write_text(SENDER)
        for i in range(1, n + 1):
            s = topo.add(f"s{i}")
            topo.link(sw, s, [], [f"{server_addr(i)}/24"], f"ps{i}", "lan")
            sw.exec("ip", "link", "set", f"ps{i}", "master", "br0")
            s.exec("ip", "addr", "add", f"{VIP_ADDR}/32", "dev", "lo")
            f = workdir / f"recv{i}.log"
            f.write_text("")
            p = s.popen(
                sys.executable, str(workdir / "recv.py"), VIP_ADDR, str(PORT), str(f),
                stdout=subprocess.PIPE,
            )  # fmt: skip
            self.procs.append(p)
            assert p.stdout is not None and p.stdout.readline().strip() == b"ready"
            self.servers.append(s)
            self.recv_files.append(f)
        self.names = list(routers)
        self.client: subprocess.Popen[bytes] | None = None

    # -- routers --------------------------------------------------------------------------------
    def start_router(self, name: str) -> RouterProc:
        wd = self.workdir / name
        wd.mkdir(exist_ok=True)
        conf = router_config(OPEN_RANGES, self.fib, group="consistent")
        r = RouterProc(self.rns[name], wd, conf)
        r.start()
        self.routers[name] = r
        return r

    def kill9(self, name: str) -> None:
        self.routers[name].kill9()

    # -- servers --------------------------------------------------------------------------------
    def speaker(self, name: str, i: int) -> SpeakerProcess:
        key = (name, i)
        if key not in self.speakers:
            sp = SpeakerProcess(
                self.servers[i - 1], "--asn", str(65000 + i), "--router-id", server_addr(i),
                "--local", server_addr(i), "--peer", router_addr(name), "--families", "ipv4",
                "--hold", "9", "--connect-retry", "1",
                log_path=str(self.workdir / f"speaker-{name}-{i}.log"),
            )  # fmt: skip
            self.speakers[key] = sp
            sp.wait_for(lambda e: e.get("event") == "established", 30)
        return self.speakers[key]

    def drop_speaker(self, name: str, i: int) -> None:
        """Stop server i's speaker towards router `name` (its next one is a new process)."""
        self.speakers.pop((name, i)).stop()

    def announce(self, name: str, i: int) -> None:
        self.speaker(name, i).send(announce=VIP)

    def withdraw(self, name: str, i: int) -> None:
        self.speaker(name, i).send(withdraw=VIP)

    # -- kernel ---------------------------------------------------------------------------------
    def vmap_target(self, name: str) -> str | None:
        """The chain the router's prerouting vmap sends the VIP to (None: no such rule)."""
        out = self.rns[name].exec("nft", "-j", "list", "table", "inet", "bgplb", check=False)
        try:
            items = json.loads(out).get("nftables", [])
        except ValueError:
            return None
        for item in items:
            rule = item.get("rule")
            if not rule or rule.get("chain") != "prerouting":
                continue
            for e in rule.get("expr", []):
                vmap = e.get("vmap")
                if vmap:
                    for key, verdict in vmap["data"]["set"]:
                        if key == VIP_ADDR:
                            return str(verdict["jump"]["target"])
        return None

    def wait_table(self, name: str, servers: list[int], timeout: float = 30.0) -> str:
        """Wait until router `name`'s kernel uses the table of `servers`; its fingerprint."""
        fp = expected_fingerprint(servers)
        wait_for(
            f"{name}: VIP -> table of servers {servers}",
            lambda: self.vmap_target(name) == f"cset_{fp[:16]}",
            timeout,
        )
        return fp

    def vip_status(self, name: str) -> dict[str, Any] | None:
        for v in self.routers[name].status()["vips"]:
            if v["vip"] == VIP:
                return dict(v)
        return None

    def status_fingerprint(self, name: str, want: str | None = None) -> str | None:
        """The VIP's fingerprint in `bgplb status` (waits, bounded, until it is `want`: the
        status pages are cached for a moment)."""

        def read() -> str | None:
            v = self.vip_status(name)
            c = v.get("consistent") if v else None
            return str(c["fingerprint"]) if c else None

        if want is not None:
            try:
                wait_for(f"{name}: status fingerprint {want}", lambda: read() == want, 10)
            except Exception:
                pass
        return read()

    # -- TCP: echo servers and a client of long-lived connections (tests/interop/pinclient.py) --
    def start_tcp(self) -> None:
        """An echo server on VIP:8080 in every server (it greets with its name, "s1"...), the
        servers' replies routed through the first router (return path asymmetric when the
        client sends through the second), and the client process."""
        from pinlab import ECHO

        script = self.workdir / "echo.py"
        script.write_text(ECHO)
        for i, s in enumerate(self.servers, start=1):
            s.exec("ip", "addr", "add", "2001:db8:100::10/128", "dev", "lo", "nodad")
            s.exec("ip", "route", "replace", "default", "via", router_addr(self.names[0]))
            p = s.popen(sys.executable, str(script), f"s{i}", stdout=subprocess.PIPE)
            self.procs.append(p)
            assert p.stdout is not None and p.stdout.readline().strip() == b"ready"
        self.via(self.names[0])
        self.client = self.cl.popen(
            sys.executable, str(HERE / "pinclient.py"), VIP_ADDR, "8080", "--lifetime", "600",
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )  # fmt: skip
        self.procs.append(self.client)

    def ask(self, **cmd: Any) -> dict[str, Any]:
        c = self.client
        assert c is not None and c.stdin is not None and c.stdout is not None
        c.stdin.write(json.dumps(cmd).encode() + b"\n")
        c.stdin.flush()
        line = c.stdout.readline()
        if not line:
            raise AssertionError("the client exited")
        out: dict[str, Any] = json.loads(line)
        return out

    # -- traffic --------------------------------------------------------------------------------
    def via(self, name: str) -> None:
        k = self.names.index(name)
        self.cl.exec("ip", "route", "replace", VIP, "via", f"203.0.113.{4 * k + 1}")

    def flows(self, name: str, tag: str, count: int = 200, first: int = 40000) -> dict[int, int]:
        """Send `count` UDP flows (source ports first..) through router `name`: {flow: server}.
        A flow seen by two servers is an error; a flow seen by none is absent."""
        self.via(name)
        self.cl.exec(
            sys.executable, str(self.workdir / "send.py"), CLIENT, VIP_ADDR, str(PORT), tag,
            str(first), str(count), timeout=30,
        )  # fmt: skip
        deadline = time.monotonic() + 5
        while True:
            got: dict[int, set[int]] = {}
            for i, f in enumerate(self.recv_files, start=1):
                for line in f.read_text().splitlines():
                    t, _, idx = line.partition(":")
                    if t == tag:
                        got.setdefault(int(idx), set()).add(i)
            if len(got) >= count or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        twice = {k: v for k, v in got.items() if len(v) > 1}
        assert not twice, f"flows seen by two servers: {twice}"
        return {k: next(iter(v)) for k, v in got.items()}

    def __enter__(self) -> ConsistentLab:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if exc_type is not None:
                for name, r in self.routers.items():
                    print(f"--- {name} log tail ---")
                    print(r.log_text()[-4000:])
        finally:
            self.close()

    def close(self) -> None:
        if self.client is not None and self.client.poll() is None:
            try:
                self.ask(quit=True)
            except (AssertionError, OSError, ValueError):
                pass
        if self.client is not None and self.client.stdin is not None:
            self.client.stdin.close()
        for sp in self.speakers.values():
            try:
                sp.stop()
            except Exception:
                pass
        for r in self.routers.values():
            try:
                r.stop()
            except Exception:
                pass
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)
            if p.stdout is not None:
                p.stdout.close()
