"""`bgplb demo` end to end, as a user runs it (the CLI in a subprocess, `--json` parsed), with
the embedded router and with BIRD 2. Assertions on outcomes only, never on timings: both
servers answered; the route shrinks and grows in every scenario; every request outside the
measured windows was answered; no long-lived connection broke in the drain (nor, with the
embedded router's connection pinning, in the 2 s they stay open after the drained server's
withdrawal); nothing is left behind (namespace, process, veth, state file, work directory).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from prerequisites import require_binary, unavailable

pytestmark = [pytest.mark.netns, pytest.mark.serial]  # measured windows, BFD detection


def _prerequisites() -> None:
    from bgplb.lab.netns import can_use_netns

    reason = can_use_netns()
    if reason:
        unavailable(reason)
    for binary in ("nft", "curl"):
        require_binary(binary)


def run_cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bgplb.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def assert_nothing_left(cleanup: dict[str, Any], servers: int) -> None:
    assert cleanup["left_behind"] == []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for name in cleanup["namespaces"]:
        assert name not in netns
    assert cleanup["pids"], "the demo recorded no process"
    assert not [pid for pid in cleanup["pids"] if _alive(pid)]
    host_links = json.loads(
        subprocess.run(
            ["ip", "-j", "link", "show", "type", "veth"], capture_output=True, text=True
        ).stdout
        or "[]"
    )
    ours = {"client", "uplink", *(f"srv{i}" for i in range(1, servers + 1))}
    assert not [link["ifname"] for link in host_links if link["ifname"] in ours]
    assert not Path(cleanup["state_file"]).exists()
    assert not Path(cleanup["workdir"]).exists()


def check_outcomes(figures: dict[str, Any], pinning: bool) -> None:
    """`pinning`: the router pins connections (bgplb router), so none breaks after the drained
    server's withdrawal either; without it (BIRD) only the drain itself must break none."""
    fresh = figures["fresh_requests"]
    assert fresh["failed"] == 0
    assert fresh["answers"]["srv1"] > 0 and fresh["answers"]["srv2"] > 0, fresh

    for key in ("web_stop", "host_down"):
        s = figures[key]
        assert s["route_after_drop"] == ["srv2"], (key, s)
        assert s["route_restored"] == ["srv1", "srv2"], (key, s)
        assert s["errors_outside_window"] == 0, (key, s)
        assert s["requests"] > 0
    assert figures["host_down"]["detection"] == (
        "bfd" if figures["bfd"]["active"] else "hold_timer"
    )

    d = figures["drain"]
    assert d["server"] == "srv2"
    assert d["broken_before_withdrawal"] == 0, d["broken_reasons"]
    # the connections were still open at the withdrawal: what comes after is measured
    assert d["open_at_withdrawal"] == d["connections"], d
    assert d["long_lived_closed_after_withdrawal_ms"] > 0, d
    if pinning:
        assert d["broken_after_withdrawal"] == 0, d["broken_reasons"]
        assert d["broken"] == 0, d["broken_reasons"]
        # srv2 kept serving its pinned connections after it was withdrawn
        assert d["answered_by_drained_after_withdrawal"] > 0, d
    assert d["route_after_withdrawal"] == ["srv1"], d
    assert d["route_restored"] == ["srv1", "srv2"], d
    assert sum(d["new_after_withdrawal"].values()) > 0
    assert d["new_after_withdrawal"]["srv2"] == 0, d


def test_demo_embedded_router() -> None:
    _prerequisites()
    proc = run_cli("demo", "--json")
    assert proc.returncode == 0, proc.stderr[-4000:]
    figures = json.loads(proc.stdout)
    check_outcomes(figures, pinning=True)
    # the progress output went to stderr and tells the story
    for text in ("Welcome to nginx 1 !", "Welcome to nginx 2 !", "Scenario 3", "Summary"):
        assert text in proc.stderr
    assert_nothing_left(figures["cleanup"], 2)


@pytest.mark.interop
def test_demo_bird_router_builtin_web() -> None:
    _prerequisites()
    for binary in ("bird", "birdc"):
        require_binary(binary)
    proc = run_cli("demo", "--json", "--router", "bird", "--web", "builtin")
    assert proc.returncode == 0, proc.stderr[-4000:]
    figures = json.loads(proc.stdout)
    check_outcomes(figures, pinning=False)
    assert_nothing_left(figures["cleanup"], 2)


def test_demo_plot(tmp_path: Path) -> None:
    """--plot writes a PNG; without matplotlib the message says how to get it."""
    _prerequisites()
    out = tmp_path / "timeline.png"
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        proc = run_cli("demo", "--plot", str(out))
        assert proc.returncode == 2 and "matplotlib" in proc.stderr
        return
    proc = run_cli("demo", "--plot", str(out), "--json", "--servers", "3", "--requests", "30")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    figures = json.loads(proc.stdout)
    assert set(figures["fresh_requests"]["answers"]) == {"srv1", "srv2", "srv3"}
    assert_nothing_left(figures["cleanup"], 3)


def test_demo_not_root_says_what_is_needed() -> None:
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        unavailable("needs root and setpriv to run the command as another user")
    proc = subprocess.run(
        [
            setpriv,
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            sys.executable,
            "-m",
            "bgplb.cli",
            "demo",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HOME": "/tmp"},
    )
    assert proc.returncode == 2, proc.stderr
    assert "needs root" in proc.stderr and "Traceback" not in proc.stderr
