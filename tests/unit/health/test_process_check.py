"""``type = "process"`` (bgplb.health.process): a pidfd tells of the exit at once."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from bgplb.config import ProcessCheck
from bgplb.health import CheckEvent, CheckRunner
from bgplb.health.process import ProcessProbe, parse_pid

WAIT = 5.0  # bounded wait for an event (seconds); the event itself comes in milliseconds


def check(pidfile: Path, **extra: Any) -> ProcessCheck:
    return ProcessCheck.model_validate(
        {"type": "process", "pidfile": str(pidfile), "damping": False, **extra}
    )


def spawn(pidfile: Path | None = None) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(["sleep", "60"])
    if pidfile is not None:
        tmp = pidfile.with_suffix(".tmp")
        tmp.write_text(f"{proc.pid}\n")
        tmp.rename(pidfile)  # as daemons do: a new file, atomically
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=WAIT)


def test_parse_pid() -> None:
    assert parse_pid(b"1234\n") == 1234
    assert parse_pid(b"  42 ") == 42
    for bad in (b"", b"abc", b"-1", b"0", b"12 34", b"99999999999"):
        with pytest.raises(ValueError, match="does not hold a pid"):
            parse_pid(bad)


def test_probe_states(tmp_path: Path) -> None:
    pidfile = tmp_path / "d.pid"

    async def main() -> None:
        probe = ProcessProbe(check(pidfile))
        result = await probe()
        assert not result.ok and "does not exist" in result.detail
        pidfile.write_text("garbage\n")
        result = await probe()
        assert not result.ok and "does not hold a pid: 'garbage'" in result.detail
        proc = spawn(pidfile)
        try:
            result = await probe()
            assert result.ok and result.detail == f"pid {proc.pid} running"
            assert probe.pid == proc.pid
        finally:
            stop(proc)  # reaped: the pid no longer exists
        result = await probe()
        assert not result.ok and result.detail == f"pid {proc.pid} exited"
        result = await probe()  # the same pidfile is never trusted again
        assert not result.ok and "stale" in result.detail
        await probe.aclose()

    asyncio.run(main())


def test_stale_pidfile_is_down(tmp_path: Path) -> None:
    pidfile = tmp_path / "d.pid"
    proc = spawn(pidfile)
    stop(proc)

    async def main() -> None:
        probe = ProcessProbe(check(pidfile))
        result = await probe()
        assert not result.ok and "not running (stale pidfile)" in result.detail
        await probe.aclose()

    asyncio.run(main())


def test_zombie_is_down(tmp_path: Path) -> None:
    pidfile = tmp_path / "d.pid"
    proc = spawn(pidfile)
    proc.kill()
    # not reaped: a zombie, its pid still exists
    deadline = time.monotonic() + WAIT
    while Path(f"/proc/{proc.pid}/stat").read_text().split(")")[1].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)

    async def main() -> None:
        probe = ProcessProbe(check(pidfile))
        result = await probe()
        assert not result.ok and "has exited (stale pidfile)" in result.detail, result
        await probe.aclose()

    try:
        asyncio.run(main())
    finally:
        stop(proc)


async def _next(queue: asyncio.Queue[CheckEvent]) -> CheckEvent:
    return await asyncio.wait_for(queue.get(), WAIT)


def test_exit_is_down_at_once_and_restart_comes_back(tmp_path: Path) -> None:
    """Killing the process gives the down event without waiting for a poll (the interval is
    an hour); a re-created pidfile (restart) brings the check back after `rise` polls."""
    pidfile = tmp_path / "d.pid"
    proc = spawn(pidfile)
    procs = [proc]

    async def main() -> None:
        queue: asyncio.Queue[CheckEvent] = asyncio.Queue()
        runner = CheckRunner(queue.put_nowait)
        status = runner.add("p", check(pidfile, interval="1h", rise=1))
        async with runner:
            up = await _next(queue)
            assert up.transition.up and up.result.detail == f"pid {proc.pid} running"
            probes = status.probes
            loop = asyncio.get_running_loop()
            killed = loop.time()
            proc.kill()
            down = await _next(queue)
            assert not down.transition.up
            assert down.result.detail == f"pid {proc.pid} exited"
            assert status.probes == probes + 1  # woken by the pidfd, not by a poll
            assert down.transition.at - killed < WAIT
        # Restart: a new pidfile; with a short interval and rise 2 it comes back.
        runner2 = CheckRunner(queue.put_nowait)
        status2 = runner2.add("p", check(pidfile, interval="20ms", rise=2))
        async with runner2:
            await asyncio.sleep(0.1)
            assert not status2.machine.up  # stale pidfile
            new = spawn(pidfile)
            procs.append(new)
            up = await _next(queue)
            assert up.transition.up and up.result.detail == f"pid {new.pid} running"
            assert up.transition.reason == "2 consecutive success(es)"

    try:
        asyncio.run(main())
    finally:
        for p in procs:
            stop(p)


def test_pidfile_removed_is_down(tmp_path: Path) -> None:
    pidfile = tmp_path / "d.pid"
    proc = spawn(pidfile)

    async def main() -> None:
        queue: asyncio.Queue[CheckEvent] = asyncio.Queue()
        runner = CheckRunner(queue.put_nowait)
        runner.add("p", check(pidfile, interval="20ms", rise=1))
        async with runner:
            assert (await _next(queue)).transition.up
            pidfile.unlink()
            down = await _next(queue)
            assert not down.transition.up and "does not exist" in down.result.detail

    try:
        asyncio.run(main())
    finally:
        stop(proc)


def test_pidfile_replaced_by_another_process_follows_it(tmp_path: Path) -> None:
    """A restart that rewrites the pidfile while the old process still runs (nginx binary
    upgrade): the probe follows the new pid, and the old one's exit is not a failure."""
    pidfile = tmp_path / "d.pid"
    old = spawn(pidfile)
    procs = [old]

    async def main() -> None:
        probe = ProcessProbe(check(pidfile))
        assert (await probe()).ok and probe.pid == old.pid
        new = spawn(pidfile)
        procs.append(new)
        result = await probe()
        assert result.ok and probe.pid == new.pid
        stop(old)
        await asyncio.sleep(0.05)
        assert not probe.changed.is_set()
        assert (await probe()).ok
        await probe.aclose()

    try:
        asyncio.run(main())
    finally:
        for p in procs:
            stop(p)


def test_aclose_releases_the_pidfd(tmp_path: Path) -> None:
    pidfile = tmp_path / "d.pid"
    proc = spawn(pidfile)

    async def main() -> None:
        before = len(os.listdir("/proc/self/fd"))
        probe = ProcessProbe(check(pidfile))
        assert (await probe()).ok
        assert len(os.listdir("/proc/self/fd")) == before + 1
        await probe.aclose()
        assert len(os.listdir("/proc/self/fd")) == before

    try:
        asyncio.run(main())
    finally:
        stop(proc)
