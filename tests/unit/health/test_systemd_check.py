"""``type = "systemd"`` (bgplb.health.systemd): ActiveState from PropertiesChanged signals.

Each test starts a private ``dbus-daemon --session`` (killed by its PID at the end) and the fake
``org.freedesktop.systemd1`` of tests/interop/fake_systemd.py on it: a Manager with
LoadUnit/GetUnit/Subscribe and one Unit object with ActiveState that emits PropertiesChanged as
systemd does.
"""

import asyncio
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from dbus_fast.aio import MessageBus
from fake_systemd import UNIT_PATH, FakeManager, FakeUnit, serve

from bgplb.config import SystemdCheck
from bgplb.health import DEACTIVATING, CheckEvent, CheckRunner
from bgplb.health.systemd import SystemdProbe

WAIT = 5.0

pytestmark = pytest.mark.skipif(
    shutil.which("dbus-daemon") is None, reason="dbus-daemon is not installed"
)


@pytest.fixture
def daemon() -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        ["dbus-daemon", "--session", "--nofork", "--print-address=1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # "Failed to set fd limit" when not allowed to raise it
        text=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=WAIT)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.fixture
def bus_address(daemon: subprocess.Popen[str]) -> str:
    assert daemon.stdout is not None
    address = daemon.stdout.readline().strip()
    assert address.startswith("unix:"), address
    return address


def check(address: str, **extra: Any) -> SystemdCheck:
    return SystemdCheck.model_validate(
        {"type": "systemd", "unit": "nginx.service", "bus": address, "damping": False, **extra}
    )


async def _next(queue: asyncio.Queue[CheckEvent]) -> CheckEvent:
    return await asyncio.wait_for(queue.get(), WAIT)


def test_states_and_deactivating_by_signal(bus_address: str) -> None:
    """The interval is an hour: only the signals can wake the check."""

    async def main() -> None:
        service, unit = await serve(bus_address)
        queue: asyncio.Queue[CheckEvent] = asyncio.Queue()
        runner = CheckRunner(queue.put_nowait)
        status = runner.add("s", check(bus_address, interval="1h", rise=1))
        async with runner:
            up = await _next(queue)
            assert up.transition.up and up.result.detail == "active"
            probe = status.probe
            assert isinstance(probe, SystemdProbe) and probe.unit_path == UNIT_PATH
            unit.set("reloading")  # still serving: no transition
            await asyncio.wait_for(_until(lambda: status.last.detail == "reloading"), WAIT)
            assert queue.empty()
            unit.set(DEACTIVATING)
            down = await _next(queue)
            assert not down.transition.up and down.result.detail == DEACTIVATING
            unit.set("inactive")
            unit.set("activating")
            unit.set("active")
            back = await _next(queue)
            assert back.transition.up and back.result.detail == "active"
            unit.set("failed")
            failed = await _next(queue)
            assert not failed.transition.up and failed.result.detail == "failed"
            assert probe.signals >= 6
            # A quick stop: both signals may arrive in one read; each state is reported.
            unit.set("active")
            assert (await _next(queue)).transition.up
            unit.set(DEACTIVATING)
            unit.set("inactive")
            quick = await _next(queue)
            assert not quick.transition.up and quick.result.detail == DEACTIVATING
            await asyncio.wait_for(_until(lambda: status.last.detail == "inactive"), WAIT)
        service.disconnect()

    asyncio.run(main())


async def _until(condition: Any) -> None:
    while not condition():
        await asyncio.sleep(0.005)


def test_initial_state_and_rise_on_the_way_back(bus_address: str) -> None:
    async def main() -> None:
        service, unit = await serve(bus_address, state="inactive")
        queue: asyncio.Queue[CheckEvent] = asyncio.Queue()
        runner = CheckRunner(queue.put_nowait)
        status = runner.add("s", check(bus_address, interval="30ms", rise=3))
        async with runner:
            await asyncio.wait_for(_until(lambda: status.probes >= 2), WAIT)
            assert not status.machine.up and status.last is not None
            assert status.last.detail == "inactive"
            unit.set("active")
            up = await _next(queue)
            assert up.transition.up and up.transition.reason == "3 consecutive success(es)"
            unit.set("failed", signal=False)  # a missed signal: the next read sees it
            down = await _next(queue)
            assert not down.transition.up and down.result.detail == "failed"
        service.disconnect()

    asyncio.run(main())


def test_get_unit_fallback_and_unknown_unit(bus_address: str) -> None:
    async def main() -> None:
        service, _ = await serve(bus_address, load_unit=False)
        probe = SystemdProbe(check(bus_address))
        result = await probe()
        assert result.ok and result.detail == "active"
        await probe.aclose()
        missing = SystemdProbe(
            SystemdCheck.model_validate(
                {"type": "systemd", "unit": "nope.service", "bus": bus_address}
            )
        )
        result = await missing()
        assert not result.ok
        assert result.detail == (
            "D-Bus: org.freedesktop.systemd1.NoSuchUnit: Unit nope.service not loaded."
        )
        await missing.aclose()
        service.disconnect()

    asyncio.run(main())


def test_systemd_off_the_bus_keeps_the_last_state_bus_gone_is_down(
    daemon: subprocess.Popen[str], bus_address: str
) -> None:
    async def main() -> None:
        service, _ = await serve(bus_address)
        queue: asyncio.Queue[CheckEvent] = asyncio.Queue()
        runner = CheckRunner(queue.put_nowait)
        status = runner.add("s", check(bus_address, interval="20ms", rise=1))
        async with runner:
            assert (await _next(queue)).transition.up
            service.disconnect()  # systemd leaves the bus (daemon-reexec): the unit still runs
            await asyncio.wait_for(_until(lambda: "last known" in status.last.detail), WAIT)
            assert status.machine.up and queue.empty()
            assert status.last.detail == (
                "active (last known; org.freedesktop.DBus.Error.NameHasNoOwner)"
            )
            again, unit = await serve(bus_address, state="inactive")  # systemd is back
            down = await _next(queue)
            assert not down.transition.up and down.result.detail == "inactive"
            unit.set("active")  # its signals reach the probe (the match rule names the name)
            assert (await _next(queue)).transition.up
            again.disconnect()
            os.kill(daemon.pid, signal.SIGTERM)  # the bus itself goes away
            down = await _next(queue)
            assert not down.transition.up and down.result.detail.startswith("D-Bus: ")
        probe = SystemdProbe(check("unix:path=/nonexistent/bus"))
        result = await probe()
        assert not result.ok and result.detail.startswith("D-Bus: ")
        await probe.aclose()

    asyncio.run(main())


def test_systemd_not_there_at_first_then_there(bus_address: str) -> None:
    async def main() -> None:
        probe = SystemdProbe(check(bus_address))
        result = await probe()
        assert not result.ok
        assert result.detail == (
            "D-Bus: org.freedesktop.DBus.Error.NameHasNoOwner: "
            'Name "org.freedesktop.systemd1" does not exist'
        )
        service, _ = await serve(bus_address)
        result = await probe()
        assert result.ok and result.detail == "active"
        await probe.aclose()
        service.disconnect()

    asyncio.run(main())


def test_subscribe_is_called(bus_address: str) -> None:
    async def main() -> None:
        bus = await MessageBus(bus_address=bus_address).connect()
        manager = FakeManager({"nginx.service": UNIT_PATH})
        bus.export("/org/freedesktop/systemd1", manager)
        bus.export(UNIT_PATH, FakeUnit("active"))
        await bus.request_name("org.freedesktop.systemd1")
        probe = SystemdProbe(check(bus_address))
        assert (await probe()).ok
        assert manager.subscribed == 1
        await probe.aclose()
        bus.disconnect()

    asyncio.run(main())
