"""``type = "systemd"``: up while a systemd unit is active, told by D-Bus signals.

systemd publishes every unit on the bus as an object (``org.freedesktop.systemd1.Unit``) whose
``ActiveState`` property changes are announced with ``org.freedesktop.DBus.Properties.
PropertiesChanged`` signals (systemd's D-Bus API, org.freedesktop.systemd1(5); the signals are
sent while at least one client has called ``Manager.Subscribe``). The probe connects to the
bus (``bus``: the system bus by default), asks ``Manager.LoadUnit`` (``GetUnit`` as a fallback)
for the unit's object path, adds a match rule for that object's PropertiesChanged, calls
``Subscribe`` and reads ``ActiveState`` once. From then on a signal carrying a new
ActiveState wakes the check at once: ``systemctl stop nginx`` is seen when systemd starts the
stop (``deactivating``), before nginx has even received its signal. ActiveState is also read
again every ``interval`` (default 1 s) in case a signal was missed.

``active``, ``reloading`` and ``refreshing`` are up (a reload keeps serving); everything else
(``activating``, ``deactivating``, ``inactive``, ``failed``, ``maintenance``) is down. The
probe's ``detail`` is the ActiveState itself, so a stop starting reads ``deactivating``
(:data:`DEACTIVATING`): the agent may tell it apart from a failure. A lost bus connection is
down (``D-Bus: ...``); the next probe connects again. While the bus is up but systemd does not
answer (``ServiceUnknown``, ``NoReply``...: ``systemctl daemon-reexec`` gives up and takes back
its bus name), the last known ActiveState stands.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from typing import Any

from dbus_fast import BusType, Message, MessageFlag, MessageType
from dbus_fast.aio import MessageBus

from bgplb.config import SystemdCheck
from bgplb.health.probe import DEACTIVATING, ProbeResult

__all__ = ["DEACTIVATING", "NOT_ON_BUS", "UP_STATES", "BusCallError", "SystemdProbe"]

log = logging.getLogger("bgplb.health")

SYSTEMD = "org.freedesktop.systemd1"
MANAGER_PATH = "/org/freedesktop/systemd1"
MANAGER = "org.freedesktop.systemd1.Manager"
UNIT = "org.freedesktop.systemd1.Unit"
PROPERTIES = "org.freedesktop.DBus.Properties"

UP_STATES = frozenset({"active", "reloading", "refreshing"})
# Errors meaning "systemd is not on the bus right now" (daemon-reexec drops and takes back its
# name): the unit keeps running, so the last known state stands until systemd answers again.
NOT_ON_BUS = frozenset(
    {
        "org.freedesktop.DBus.Error.ServiceUnknown",
        "org.freedesktop.DBus.Error.NameHasNoOwner",
        "org.freedesktop.DBus.Error.NoReply",
        "org.freedesktop.DBus.Error.Timeout",
    }
)


class BusCallError(Exception):
    """A D-Bus method call answered with an error."""

    def __init__(self, name: str, text: str) -> None:
        self.name = name
        super().__init__(f"{name}: {text}" if text else name)


class SystemdProbe:
    """The probe of a ``systemd`` check (see the module docstring). An :class:`EventProbe`."""

    def __init__(self, check: SystemdCheck) -> None:
        self.check = check
        self.changed = asyncio.Event()
        self.state: str | None = None  # the last ActiveState known
        self.unit_path: str | None = None
        self.signals = 0  # ActiveState changes received by signal
        # States received by signal and not reported yet, oldest first: each is reported in
        # turn, so a quick active -> deactivating -> inactive still reports "deactivating".
        self._pending: collections.deque[str] = collections.deque(maxlen=16)
        self._bus: MessageBus | None = None
        self._ready = False  # connected, unit found, match rule added
        self._watch: asyncio.Future[Any] | None = None

    async def __call__(self) -> ProbeResult:
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            if self._bus is None or not self._bus.connected or not self._ready:
                await self._connect()
            elif self._pending:
                state = self._pending.popleft()
                if self._pending:
                    self.changed.set()  # the next one at once
                return ProbeResult(state in UP_STATES, loop.time() - start, state)
            else:
                self.state = await self._active_state()
        except asyncio.CancelledError:
            self._drop()  # a timeout in the middle of a call: start over next time
            raise
        except BusCallError as e:
            if e.name in NOT_ON_BUS and self._ready and self.state is not None:
                state = self.state
                return ProbeResult(
                    state in UP_STATES, loop.time() - start, f"{state} (last known; {e.name})"
                )
            self._drop()
            return ProbeResult(False, loop.time() - start, f"D-Bus: {e}")
        except Exception as e:  # connection refused, auth, a call answered with an error...
            self._drop()
            return ProbeResult(False, loop.time() - start, f"D-Bus: {e}")
        state = self.state or "unknown"
        return ProbeResult(state in UP_STATES, loop.time() - start, state)

    async def aclose(self) -> None:
        self._drop()

    # -- the bus -----------------------------------------------------------------------------

    def _new_bus(self) -> MessageBus:
        bus = self.check.bus
        if bus == "system":
            return MessageBus(bus_type=BusType.SYSTEM)
        if bus == "session":
            return MessageBus(bus_type=BusType.SESSION)
        return MessageBus(bus_address=bus)

    async def _connect(self) -> None:
        self._drop()
        bus = self._new_bus()
        self._bus = bus
        await bus.connect()
        self._watch = asyncio.ensure_future(bus.wait_for_disconnect())  # type: ignore[no-untyped-call]
        self._watch.add_done_callback(self._on_disconnect)
        try:
            path = await self._call(MANAGER_PATH, MANAGER, "LoadUnit", "s", [self.check.unit])
        except BusCallError as e:
            log.debug("LoadUnit %s: %s; trying GetUnit", self.check.unit, e)
            path = await self._call(MANAGER_PATH, MANAGER, "GetUnit", "s", [self.check.unit])
        self.unit_path = str(path)
        bus.add_message_handler(self._on_message)
        rule = (
            f"type='signal',sender='{SYSTEMD}',path='{self.unit_path}',"
            f"interface='{PROPERTIES}',member='PropertiesChanged'"
        )
        await self._call(
            "/org/freedesktop/DBus", "org.freedesktop.DBus", "AddMatch", "s", [rule],
            destination="org.freedesktop.DBus",
        )  # fmt: skip
        try:  # without a subscriber systemd sends no unit signals
            await self._call(MANAGER_PATH, MANAGER, "Subscribe", "", [])
        except BusCallError as e:
            if e.name != "org.freedesktop.systemd1.AlreadySubscribed":
                log.warning("%s: Subscribe failed (%s)", self.check.describe(), e)
        # Read after the match rule is in place: no change can fall in between.
        self.state = await self._active_state()
        self._ready = True

    async def _active_state(self) -> str:
        assert self.unit_path is not None
        value = await self._call(self.unit_path, PROPERTIES, "Get", "ss", [UNIT, "ActiveState"])
        state = getattr(value, "value", value)
        if not isinstance(state, str):
            raise ValueError(f"ActiveState is not a string: {state!r}")
        return state

    async def _call(
        self,
        path: str,
        interface: str,
        member: str,
        signature: str,
        body: list[Any],
        destination: str = SYSTEMD,
    ) -> Any:
        assert self._bus is not None
        reply = await self._bus.call(
            Message(
                destination=destination,
                path=path,
                interface=interface,
                member=member,
                signature=signature,
                body=body,
                flags=MessageFlag.NO_AUTOSTART,  # never have the bus start a "systemd"
            )
        )
        if reply.message_type is MessageType.ERROR:
            text = reply.body[0] if reply.body and isinstance(reply.body[0], str) else ""
            raise BusCallError(reply.error_name or "error", text)
        return reply.body[0] if reply.body else None

    def _on_message(self, message: Message) -> None:
        if (
            message.message_type is not MessageType.SIGNAL
            or message.member != "PropertiesChanged"
            or message.interface != PROPERTIES
            or message.path != self.unit_path
            or len(message.body) < 3
            or message.body[0] != UNIT
        ):
            return
        changed, invalidated = message.body[1], message.body[2]
        if "ActiveState" in changed:
            self.state = str(changed["ActiveState"].value)
            self._pending.append(self.state)
            self.signals += 1
            self.changed.set()
        elif "ActiveState" in invalidated:
            self.changed.set()  # nothing pending: the probe reads it

    def _on_disconnect(self, future: asyncio.Future[Any]) -> None:
        if not future.cancelled():
            future.exception()  # retrieved: the next probe reports and reconnects
        self._pending.clear()
        self.changed.set()

    def _drop(self) -> None:
        if self._watch is not None:
            self._watch.remove_done_callback(self._on_disconnect)
            if not self._watch.done():
                self._watch.cancel()
            self._watch = None
        if self._bus is not None:
            with contextlib.suppress(Exception):
                self._bus.disconnect()
            self._bus = None
        self.unit_path = None
        self._ready = False
        self._pending.clear()
