"""Shared parts of the router benchmarks (router_connections, router_scale,
router_withdraw_latency): namespaces, `bgplb router` and BIRD as the router, bgplb speakers as the
servers. Reuses tests/interop/test_router_interop.py (RouterProc, build, server_addrs).

Every process started here is stopped by PID; every wait is bounded.
"""

from __future__ import annotations

import datetime
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "interop"))

from bgpspeaker import SpeakerProcess  # noqa: E402
from test_router_interop import (  # noqa: E402
    BGPLB,
    ECHO_CONN,
    ECHO_SERVER,
    RouterProc,
    build,
    hops,
    router_config,
    server_addrs,
)
from wirecapture import Capture, _tshark  # noqa: E402, F401  (re-exported to the benchmarks)

from bgplb.lab.netns import Namespace  # noqa: E402
from bgplb.lab.peers import Bird  # noqa: E402
from bgplb.lab.wait import wait_until  # noqa: E402

__all__ = [
    "ROUTER_AS",
    "VIP",
    "ECHO_CONN",
    "ECHO_SERVER",
    "GshutBird",
    "BenchRouter",
    "RouterProc",
    "build",
    "hops",
    "iso_ts",
    "rss_kib",
    "server_addrs",
    "speaker",
    "start_bird_router",
    "stop_all",
    "wait_for",
    "workdir",
]

VIP = "198.51.100.10/32"
ROUTER_AS = 65530


def wait_for(what: str, probe: Callable[[], Any], timeout: float = 20.0, step: float = 0.05) -> Any:
    return wait_until(probe, timeout, what, step=step)


def workdir(name: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"bgplb-bench-{name}-"))


class BenchRouter(RouterProc):
    """RouterProc with `--log-level info` (the tests run it at debug)."""

    def start(self) -> None:
        import subprocess

        with self.log.open("ab") as out:
            self.proc = self.ns.popen(
                str(BGPLB), "router", "-c", str(self.conf), "--log-level", "info",
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        wait_for("the router's control socket", lambda: self.try_status() is not None, 15)


def router_toml(
    group: str = "resilient",
    *,
    buckets: int = 64,
    idle_timer: str = "1s",
    ranges: str = "",
    hold_time: int = 9,
) -> str:
    """Router config (control socket left as @SOCK@ for RouterProc)."""
    ranges = ranges or (
        '[[peer_ranges]]\nprefix = "192.0.2.0/24"\nasn = "any"\n'
        'accept = ["198.51.100.0/24 le 32"]\n'
    )
    return router_config(
        ranges,
        group=group,
        buckets=buckets,
        idle_timer=idle_timer,
        hold_time=hold_time,
        listen=("0.0.0.0",),
    )


class GshutBird(Bird):
    """BIRD as the router, with the import policy RFC 8326 §4 recommends: a path carrying
    GRACEFUL_SHUTDOWN gets LOCAL_PREF 0 (so it loses best-path selection and leaves the ECMP
    set while another path exists). Stock BIRD ignores the community."""

    def config_text(self) -> str:
        text = super().config_text()
        return text.replace(
            "import all;",
            "import filter { if (65535,0) ~ bgp_community then bgp_local_pref = 0; accept; };",
        )


def speaker(
    ns: Namespace, asn: int, local: str, peer: str, log: Path, *extra: str
) -> SpeakerProcess:
    """A bgplb speaker (tests/interop/bgpspeaker.py) dialing `peer` from `local`, IPv4 only."""
    return SpeakerProcess(
        ns,
        "--asn", str(asn), "--router-id", local, "--local", local, "--peer", peer,
        "--families", "ipv4", "--hold", "9", "--connect-retry", "1", *extra,
        log_path=str(log),
    )  # fmt: skip


def established(sp: SpeakerProcess, timeout: float = 30.0) -> None:
    sp.wait_for(lambda e: e.get("event") == "established", timeout)


def stop_all(sps: list[SpeakerProcess], timeout: float = 5.0) -> None:
    """Stop speakers together: the stop command, then EOF on stdin (the speaker's stdin reader
    thread would otherwise keep asyncio.run() from returning), then SIGKILL after `timeout`."""
    for sp in sps:
        if sp.proc.poll() is None:
            try:
                sp.send(stop="benchmark done")
                assert sp.proc.stdin is not None
                sp.proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass
    deadline = time.monotonic() + timeout
    for sp in sps:
        while sp.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        if sp.proc.poll() is None:
            sp.proc.kill()
        sp.proc.wait(5)
        sp.stop(timeout=1)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1])
    return 0


def child_pids(pid: int) -> list[int]:
    """`pid` and its descendants (for daemons that fork)."""
    out = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def start_bird_router(rtr: Namespace, wd: Path, n: int = 3) -> GshutBird:
    """BIRD 2 as the router (kernel ECMP, RFC 8326 import policy), passive towards the speakers
    of servers 1..n (AS 65000 + i, hold time 9 s), started."""
    bird = GshutBird(rtr, wd / "bird", ROUTER_AS, "192.0.2.1", kernel=True)
    try:
        for i in range(1, n + 1):
            bird.add_neighbor(server_addrs(i)[1], 65000 + i, passive=True, hold_time=9)
        bird.start()
    except BaseException:
        bird.stop()
        raise
    return bird


_TS = re.compile(r"^\[([^\]]+)\]")


def iso_ts(line: str) -> float | None:
    """Seconds since the epoch of an `ip -ts monitor` line ("[2025-01-01T12:00:00.123456] …")."""
    m = _TS.match(line)
    if not m:
        return None
    return datetime.datetime.fromisoformat(m.group(1)).timestamp()


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    k = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[k]


def now_utc() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def kernel_info() -> str:
    return os.uname().release
