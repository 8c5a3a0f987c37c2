"""Packet captures in a namespace and a second opinion on them from Wireshark's dissectors.

    with Capture(ns, "eth0", workdir / "bgp.pcap"):
        ...                                   # run the BGP session
    assert tshark_check(workdir / "bgp.pcap") == []
    print(tshark_bgp_messages(workdir / "bgp.pcap"))   # {"OPEN": 2, "KEEPALIVE": 6, ...}

`tshark_check` lists every frame that Wireshark marks malformed or with an expert-info item of
severity "error" (RFC violations its BGP dissector knows about). BGP on a port other than 179 is
decoded when `ports` names it.
"""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

from bgplb.lab.netns import Namespace

__all__ = ["BGP_TYPES", "Capture", "CaptureError", "tshark_bgp_messages", "tshark_check"]

#: BGP message type codes (RFC 4271 §4.1, RFC 2918 §3).
BGP_TYPES = {1: "OPEN", 2: "UPDATE", 3: "NOTIFICATION", 4: "KEEPALIVE", 5: "ROUTE-REFRESH"}


class CaptureError(RuntimeError):
    """tcpdump or tshark failed; the message carries the command and its output."""


class Capture:
    """tcpdump writing `path` inside `ns` while the context is open (packets flushed on exit)."""

    def __init__(
        self,
        ns: Namespace,
        iface: str,
        path: Path,
        filter: str = "tcp port 179",
        *,
        timeout: float = 5.0,
    ) -> None:
        self.ns = ns
        self.iface = iface
        self.path = Path(path)
        self.filter = filter
        self.timeout = timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = self.path.with_suffix(self.path.suffix + ".log")

    def start(self) -> None:
        """Start tcpdump and return once it listens on the interface (bounded)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        argv = [
            "tcpdump",
            "-i",
            self.iface,
            "--immediate-mode",
            "-U",
            "-n",
            "-s",
            "0",
            "-w",
            str(self.path),
        ]
        argv += shlex.split(self.filter)
        with self._log.open("wb") as log:
            self._proc = self.ns.popen(*argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.timeout
        while "listening on" not in self._log.read_text(errors="replace"):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                text = self._log.read_text(errors="replace").strip()
                self.stop()
                raise CaptureError(f"{shlex.join(argv)} in {self.ns.name} did not start: {text}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop tcpdump (SIGINT so it flushes, SIGKILL after the timeout). Never raises."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(self.timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(self.timeout)

    def __enter__(self) -> Capture:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _tshark(path: Path, ports: Iterable[int], *args: str) -> str:
    argv = ["tshark", "-n", "-r", str(path), "-o", "tcp.desegment_tcp_streams:TRUE"]
    for port in ports:
        if port != 179:
            argv += ["-d", f"tcp.port=={port},bgp"]
    argv += list(args)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise CaptureError(f"{shlex.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def tshark_check(path: Path, ports: Iterable[int] = (179,)) -> list[str]:
    """Frames Wireshark finds malformed or flags with an expert-info error, one line each
    ("frame N: <expert messages> | <summary>"); an empty list means the capture is clean."""
    out = _tshark(
        path, ports, "-Y", "_ws.malformed || _ws.expert.severity >= 8388608",
        "-T", "fields", "-E", "separator=|", "-e", "frame.number", "-e", "_ws.expert.message",
        "-e", "_ws.col.Info",
    )  # fmt: skip
    problems = []
    for line in out.splitlines():
        if line.strip():
            number, _, rest = line.partition("|")
            problems.append(f"frame {number}: {rest.replace('|', ' | ')}")
    return problems


def tshark_bgp_messages(path: Path, ports: Iterable[int] = (179,)) -> Counter[str]:
    """How many BGP messages of each type the capture holds, as Wireshark decodes them."""
    out = _tshark(path, ports, "-Y", "bgp", "-T", "json", "-e", "bgp.type")
    counts: Counter[str] = Counter()
    for packet in json.loads(out or "[]"):
        for code in packet.get("_source", {}).get("layers", {}).get("bgp.type", []):
            counts[BGP_TYPES.get(int(code), f"type-{code}")] += 1
    return counts
