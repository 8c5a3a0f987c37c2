"""A fake ``org.freedesktop.systemd1`` on a private ``dbus-daemon --session``: a Manager with
LoadUnit/GetUnit/Subscribe and Unit objects whose ActiveState emits PropertiesChanged as systemd
does. For tests and benchmarks of the ``systemd`` check (no systemd as PID 1 needed).

:func:`private_bus` starts the bus daemon (killed by its PID at the end) and yields its address;
:func:`serve` exports the fake systemd on it from the running event loop; :class:`ThreadedSystemd`
does it from a thread of its own, for callers that block.
"""

import asyncio
import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

from dbus_fast import DBusError
from dbus_fast.aio import MessageBus
from dbus_fast.service import PropertyAccess, ServiceInterface, dbus_property, method

UNIT_PATH = "/org/freedesktop/systemd1/unit/nginx_2eservice"


class FakeUnit(ServiceInterface):
    def __init__(self, state: str) -> None:
        super().__init__("org.freedesktop.systemd1.Unit")
        self.state = state

    @dbus_property(access=PropertyAccess.READ)
    def ActiveState(self) -> "s":  # noqa: F821
        return self.state

    def set(self, state: str, *, signal: bool = True) -> None:
        self.state = state
        if signal:
            self.emit_properties_changed({"ActiveState": state})


class FakeManager(ServiceInterface):
    """`load_unit=False`: an old systemd without LoadUnit; `subscribed` counts Subscribe calls."""

    def __init__(self, units: dict[str, str], *, load_unit: bool = True) -> None:
        super().__init__("org.freedesktop.systemd1.Manager")
        self.units = units
        self.load_unit = load_unit
        self.subscribed = 0

    def _path(self, name: str) -> str:
        if name not in self.units:
            raise DBusError("org.freedesktop.systemd1.NoSuchUnit", f"Unit {name} not loaded.")
        return self.units[name]

    @method()
    def LoadUnit(self, name: "s") -> "o":  # noqa: F821
        if not self.load_unit:
            raise DBusError("org.freedesktop.DBus.Error.UnknownMethod", "no LoadUnit here")
        return self._path(name)

    @method()
    def GetUnit(self, name: "s") -> "o":  # noqa: F821
        return self._path(name)

    @method()
    def Subscribe(self) -> None:
        self.subscribed += 1


@contextlib.contextmanager
def private_bus(netns: str | None = None) -> Iterator[str]:
    """A private session bus (in network namespace ``netns`` if given); yields its address."""
    argv = ["dbus-daemon", "--session", "--nofork", "--print-address=1"]
    if netns is not None:
        argv = ["ip", "netns", "exec", netns, *argv]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        address = proc.stdout.readline().strip()
        if not address.startswith("unix:"):
            raise RuntimeError(f"dbus-daemon printed no address: {address!r}")
        yield address
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()


async def serve(
    address: str, state: str = "active", unit: str = "nginx.service", **manager: Any
) -> tuple[MessageBus, FakeUnit]:
    """Export the fake systemd (one unit, in ``state``; `manager`: FakeManager's options) on the
    bus at ``address``."""
    bus = await MessageBus(bus_address=address).connect()
    fake = FakeUnit(state)
    bus.export("/org/freedesktop/systemd1", FakeManager({unit: UNIT_PATH}, **manager))
    bus.export(UNIT_PATH, fake)
    await bus.request_name("org.freedesktop.systemd1")
    return bus, fake


async def close(bus: MessageBus) -> None:
    """Disconnect and wait until the socket is closed (no unclosed-socket warning later)."""
    bus.disconnect()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(bus.wait_for_disconnect(), 5)  # type: ignore[no-untyped-call]


class ThreadedSystemd:
    """The fake systemd served from its own thread and event loop, for callers that block
    (namespace tests, benchmarks): ``set(state)`` changes the unit's ActiveState."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.bus, self.unit = self._run(serve(address))

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def set(self, state: str) -> None:
        async def go(unit: FakeUnit) -> None:
            unit.set(state)

        self._run(go(self.unit))

    def close(self) -> None:
        try:
            self._run(close(self.bus))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()
