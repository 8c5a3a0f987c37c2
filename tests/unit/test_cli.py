import asyncio
import io
import os
import pty
import select
import signal
import subprocess
import sys
import threading
import time

import pytest
from rich.console import Console

from bgplb import __version__
from bgplb.cli import build_parser, main, watch_status
from bgplb.control.socket import ControlServer


def test_version_command(capsys):
    assert main(["version"]) == 0
    assert capsys.readouterr().out.strip() == f"bgplb {__version__}"


def test_help_lists_commands():
    out = subprocess.run(
        [sys.executable, "-m", "bgplb.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "version" in out


# -- --version, and bgplb status --watch ---------------------------------------------------------


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"bgplb {__version__}"


class _Daemon:
    """A control socket whose `status` answers an agent document whose AS number counts the
    requests (so each redraw differs), on its own loop thread."""

    def __init__(self, path):
        self.path = path
        self.requests = 0
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()))

    async def _main(self):
        server = ControlServer(self.path)

        async def status(req):
            self.requests += 1
            return {
                "role": "agent",
                "asn": 65000 + self.requests,
                "router_id": "192.0.2.2",
                "uptime": 60.0,
                "peers": [],
                "services": [],
            }

        server.register("status", status)
        await server.start()
        self.ready.set()
        while not self.stop.is_set():
            await asyncio.sleep(0.01)
        await server.close()

    def __enter__(self):
        self.thread.start()
        assert self.ready.wait(5)
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(5)


def _ticks(n):
    """A sleep that lets the watch draw `n` frames, then presses Ctrl-C."""
    slept = []

    def sleep(seconds):
        slept.append(seconds)
        if len(slept) >= n:
            raise KeyboardInterrupt

    return sleep, slept


def _run_watch(argv, sleep, terminal):
    console = Console(file=io.StringIO(), force_terminal=terminal, width=100, color_system=None)
    args = build_parser().parse_args(["status", *argv])
    once = next(c.cell_contents for c in args.func.__closure__ if callable(c.cell_contents))
    code = watch_status(args, once, console=console, sleep=sleep)
    return code, console.file.getvalue()


@pytest.mark.parametrize("terminal", [True, False])
def test_status_watch_redraws_until_ctrl_c(tmp_path, terminal):
    sock = tmp_path / "agent.sock"
    sleep, slept = _ticks(3)
    with _Daemon(sock) as daemon:
        code, out = _run_watch(
            ["--watch", "--interval", "0.5", "--socket", str(sock)], sleep, terminal
        )
    assert code == 0  # Ctrl-C is a normal way out
    assert slept == [0.5, 0.5, 0.5]
    assert daemon.requests == 3
    # one frame per request, each the agent's own rendering (AS 65001, 65002, 65003)
    # (in a terminal, Live draws the last frame once more when it stops)
    for n in (1, 2, 3):
        assert out.count(f"bgplb agent  AS 6500{n} ") == (2 if terminal and n == 3 else 1), out
    assert "every 0.5 s" in out and "Ctrl-C" in out
    if terminal:  # drawn in place: the cursor goes up over the previous frame, then shown again
        assert "\x1b[1A" in out and out.endswith("\x1b[?25h")


def test_status_watch_shows_errors_and_goes_on(tmp_path):
    sleep, slept = _ticks(2)
    code, out = _run_watch(["-w", "--socket", str(tmp_path / "nothing.sock")], sleep, True)
    assert code == 0 and slept == [1.0, 1.0]
    assert out.count("is the daemon running?") >= 2


def test_status_without_watch_prints_once(tmp_path, capsys):
    sock = tmp_path / "agent.sock"
    with _Daemon(sock) as daemon:
        assert main(["status", "--socket", str(sock)]) == 0
    assert daemon.requests == 1
    assert "bgplb agent  AS 65001" in capsys.readouterr().out


@pytest.mark.parametrize("bad", ["0", "0.01", "-1", "nan", "soon"])
def test_status_interval_is_checked(bad, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["status", "--interval", bad])
    assert exc.value.code == 2
    assert "--interval" in capsys.readouterr().err


def test_status_watch_in_a_terminal_exits_cleanly_on_sigint(tmp_path):
    """The real command on a pseudo-terminal: Ctrl-C (SIGINT) ends it with status 0, no
    traceback, the cursor shown again."""
    sock = tmp_path / "agent.sock"
    argv = ["status", "--watch", "--interval", "0.2", "--socket", str(sock)]
    master, slave = pty.openpty()
    output = b""
    with _Daemon(sock) as daemon:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bgplb.cli", *argv],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env={**os.environ, "TERM": "xterm", "COLUMNS": "100"},
        )
        os.close(slave)
        try:
            deadline = time.monotonic() + 30
            while daemon.requests < 3 and time.monotonic() < deadline:
                if select.select([master], [], [], 0.2)[0]:
                    output += os.read(master, 65536)
            proc.send_signal(signal.SIGINT)
            status = proc.wait(timeout=30)
            while select.select([master], [], [], 0.5)[0]:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: nothing left on the pty
                    break
                if not chunk:
                    break
                output += chunk
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            os.close(master)
    text = output.decode(errors="replace")
    assert daemon.requests >= 3, text
    assert status == 0, text
    assert "Traceback" not in text
    assert "\x1b[?25h" in text  # cursor shown again
