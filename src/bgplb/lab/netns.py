"""Network namespaces for the lab, the demo and the tests.

Everything here shells out to iproute2 (`ip netns`, `ip link`), which is what an operator would
type; the namespaces made are tracked and removed by `Topology.close()`, also on errors.
Callers use only documentation and benchmarking address ranges (192.0.2.0/24,
198.51.100.0/24, 203.0.113.0/24, 198.18.0.0/15, 2001:db8::/32).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field


class NetnsError(RuntimeError):
    """A namespace command failed; the message carries the command and its stderr."""


def run(
    cmd: Sequence[str], *, check: bool = True, timeout: float = 30.0, input_text: str | None = None
) -> str:
    """Run a command on the host and return its stdout; raise NetnsError with stderr on failure."""
    proc = subprocess.run(
        list(cmd), capture_output=True, text=True, timeout=timeout, input=input_text
    )
    if check and proc.returncode != 0:
        raise NetnsError(f"{shlex.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def can_use_netns() -> str | None:
    """Return None when namespaces can be made here, otherwise the reason they cannot."""
    if os.geteuid() != 0:
        return "network namespaces need root (run as root, e.g. with sudo)"
    name = f"bgplbprobe{uuid.uuid4().hex[:6]}"
    try:
        run(["ip", "netns", "add", name])
    except (NetnsError, FileNotFoundError) as exc:
        return f"cannot create a network namespace: {exc}"
    run(["ip", "netns", "del", name], check=False)
    return None


@dataclass
class Namespace:
    """One network namespace; `exec`/`popen` run commands inside it."""

    name: str

    def cmd(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]

    def exec(self, *args: str, check: bool = True, timeout: float = 30.0) -> str:
        return run(self.cmd(*args), check=check, timeout=timeout)

    def popen(self, *args: str, **kwargs: object) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.cmd(*args), **kwargs)  # type: ignore[call-overload, no-any-return]

    def sysctl(self, key: str, value: str | int) -> None:
        self.exec("sysctl", "-qw", f"{key}={value}")

    @property
    def path(self) -> str:
        return f"/var/run/netns/{self.name}"

    def drop_all_traffic(self) -> None:
        """Simulate a dead host: drop every packet in and out of this namespace (nftables,
        input and output hooks at raw priority), loopback excepted. `allow_all_traffic` undoes
        it. tc matchall/gact are missing from this kernel, so nftables is the tool."""
        rules = (
            "table inet bgplb_dead {\n"
            " chain in { type filter hook input priority -300; policy drop;"
            ' iifname "lo" accept; }\n'
            " chain out { type filter hook output priority -300; policy drop;"
            ' oifname "lo" accept; }\n'
            "}\n"
        )
        run(["ip", "netns", "exec", self.name, "nft", "-f", "-"], input_text=rules)

    def allow_all_traffic(self) -> None:
        self.exec("nft", "delete", "table", "inet", "bgplb_dead", check=False)


@dataclass
class Topology:
    """A set of namespaces and the veth links between them, removed together by close().

    Names get a random suffix so parallel runs and leftovers of a crashed run never collide.
    """

    prefix: str = "bgplb"
    suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    namespaces: dict[str, Namespace] = field(default_factory=dict)

    def add(self, short: str) -> Namespace:
        ns = Namespace(f"{self.prefix}-{short}-{self.suffix}")
        run(["ip", "netns", "add", ns.name])
        self.namespaces[short] = ns
        ns.exec("ip", "link", "set", "lo", "up")
        return ns

    def link(
        self,
        left: Namespace,
        right: Namespace,
        left_addrs: Sequence[str] = (),
        right_addrs: Sequence[str] = (),
        left_if: str = "",
        right_if: str = "",
    ) -> tuple[str, str]:
        """Connect two namespaces with a veth pair and configure addresses; returns if-names."""
        left_if = left_if or f"to-{right.name.split('-')[1]}"[:15]
        right_if = right_if or f"to-{left.name.split('-')[1]}"[:15]
        tmp_l = f"v{uuid.uuid4().hex[:10]}"
        tmp_r = f"v{uuid.uuid4().hex[:10]}"
        run(["ip", "link", "add", tmp_l, "type", "veth", "peer", "name", tmp_r])
        run(["ip", "link", "set", tmp_l, "netns", left.name])
        run(["ip", "link", "set", tmp_r, "netns", right.name])
        for ns, tmp, name, addrs in (
            (left, tmp_l, left_if, left_addrs),
            (right, tmp_r, right_if, right_addrs),
        ):
            ns.exec("ip", "link", "set", tmp, "name", name)
            ns.sysctl(f"net.ipv6.conf.{name}.accept_dad", 0)
            ns.sysctl(f"net.ipv6.conf.{name}.keep_addr_on_down", 1)
            for addr in addrs:
                ns.exec("ip", "addr", "add", addr, "dev", name, *(["nodad"] if ":" in addr else []))
            ns.exec("ip", "link", "set", name, "up")
        return left_if, right_if

    def close(self) -> None:
        """Delete every namespace made (this also deletes their veth ends). Never raises."""
        for ns in list(self.namespaces.values()):
            subprocess.run(["ip", "netns", "pids", ns.name], capture_output=True)
            run(["ip", "netns", "del", ns.name], check=False)
        self.namespaces.clear()

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
