"""``type = "listen"``: up while a socket listens on the port, in the agent's network namespace.

No connection is made. Each probe asks the kernel for the listening sockets with a sock_diag
netlink dump (``inet_diag``, as ss(8); messages in :mod:`bgplb.health.sockdiag`), every
``interval`` (default 100 ms). On top of that, when the agent may (CAP_NET_ADMIN), a second
netlink socket joins the destroy-notification groups (``SKNLGRP_INET{,6}_{TCP,UDP}_DESTROY``)
with a socket filter that keeps only sockets of our port with no peer: when a listener is
closed (its process exits or closes it), the kernel announces it within milliseconds and the
probe dumps again at once. The dump is what decides (another process may still listen on the
port, e.g. with SO_REUSEPORT); the notification only says "look now". Without CAP_NET_ADMIN
(``EPERM`` when joining the groups) the check relies on the dump every ``interval``;
``notifications`` tells which mode is used and it is logged once.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import socket

from bgplb.config import ListenCheck
from bgplb.health.probe import ProbeResult
from bgplb.health.sockdiag import (
    AF_INET,
    AF_INET6,
    NETLINK_SOCK_DIAG,
    PROTOCOLS,
    DiagSocket,
    destroy_filter,
    destroy_groups,
    dump_request,
    is_listener,
    listen_states,
    parse,
    serves,
)
from bgplb.linux.sockfilter import attach_filter

log = logging.getLogger("bgplb.health")

_RECV = 1 << 16
_seq = itertools.count(1)


def netlink_socket(nonblocking: bool = False) -> socket.socket:
    """A NETLINK_SOCK_DIAG socket."""
    kind = socket.SOCK_RAW | (socket.SOCK_NONBLOCK if nonblocking else 0)
    return socket.socket(socket.AF_NETLINK, kind, NETLINK_SOCK_DIAG)


def dump(sock: socket.socket, family: int, protocol: int) -> list[DiagSocket]:
    """The listening sockets of family/protocol (a blocking netlink dump: the kernel answers
    at once; ``sock`` has a timeout)."""
    seq = next(_seq) & 0xFFFFFFFF
    sock.send(dump_request(family, protocol, listen_states(protocol), seq))
    found: list[DiagSocket] = []
    while True:
        batch = parse(sock.recv(_RECV), seq)
        if batch.error:
            raise OSError(batch.error, f"sock_diag dump: {errno.errorcode.get(batch.error, '')}")
        found += batch.sockets
        if batch.done:
            return found


class ListenProbe:
    """The probe of a ``listen`` check (see the module docstring). An :class:`EventProbe`."""

    def __init__(self, check: ListenCheck) -> None:
        self.check = check
        self.changed = asyncio.Event()
        self.protocol = PROTOCOLS[check.protocol]
        if check.address is None:
            self.families: tuple[int, ...] = (AF_INET, AF_INET6)
        elif check.address.version == 4:
            self.families = (AF_INET, AF_INET6)  # a dual-stack [::] listener takes IPv4 too
        else:
            self.families = (AF_INET6,)
        self.notifications: bool | None = None  # None: not started yet
        self.wakeups = 0  # destroy notifications received (after the kernel's filter)
        self._dump: socket.socket | None = None
        self._events: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def __call__(self) -> ProbeResult:
        loop = asyncio.get_running_loop()
        start = loop.time()
        check = self.check
        try:
            if self._dump is None:
                self._open(loop)
            assert self._dump is not None
            sockets = [
                s
                for family in self.families
                for s in dump(self._dump, family, self.protocol)
                if is_listener(s, self.protocol) and serves(s, check.port, check.address)
            ]
        except (OSError, ValueError) as e:
            self._close()  # a fresh socket next time
            return ProbeResult(False, loop.time() - start, f"sock_diag dump failed: {e}")
        latency = loop.time() - start
        where = (
            f"port {check.port}"
            if check.address is None
            else (
                f"{check.address}:{check.port}"
                if check.address.version == 4
                else f"[{check.address}]:{check.port}"
            )
        )
        if not sockets:
            return ProbeResult(False, latency, f"nothing listens on {check.protocol} {where}")
        first = sockets[0]
        src = f"[{first.src}]" if first.family == AF_INET6 else str(first.src)
        more = f" (+{len(sockets) - 1})" if len(sockets) > 1 else ""
        return ProbeResult(True, latency, f"{check.protocol} {src}:{first.sport} listening{more}")

    async def aclose(self) -> None:
        self._close()

    def _open(self, loop: asyncio.AbstractEventLoop) -> None:
        dump = netlink_socket()
        try:
            dump.settimeout(max(self.check.timeout, 0.1))
            dump.bind((0, 0))
        except OSError:
            dump.close()
            raise
        self._dump = dump
        if self._events is None:
            self._subscribe(loop)

    def _subscribe(self, loop: asyncio.AbstractEventLoop) -> None:
        sock = netlink_socket(nonblocking=True)
        try:
            attach_filter(sock, *destroy_filter(self.check.port))
            sock.bind((0, destroy_groups(self.protocol, self.families)))
        except OSError as e:
            sock.close()
            if self.notifications is None:
                log.warning(
                    "%s: no socket destroy notifications (%s; needs CAP_NET_ADMIN): "
                    "a closed listener is seen at the next dump, every %s s",
                    self.check.describe(),
                    e.strerror or e,
                    f"{self.check.interval:g}",
                )
            self.notifications = False
            return
        self._events, self._loop, self.notifications = sock, loop, True
        loop.add_reader(sock.fileno(), self._on_notification)

    def _on_notification(self) -> None:
        assert self._events is not None
        wake = False
        while True:
            try:
                data = self._events.recv(_RECV)
            except BlockingIOError:
                break
            except OSError:  # ENOBUFS: notifications were lost; the dump will tell
                wake = True
                continue
            try:
                batch = parse(data)
            except ValueError:
                wake = True
                continue
            wake = wake or any(s.sport == self.check.port for s in batch.sockets)
        if wake:
            self.wakeups += 1
            self.changed.set()

    def _close(self) -> None:
        if self._events is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._events.fileno())
            self._events.close()
            self._events = None
        if self._dump is not None:
            self._dump.close()
            self._dump = None
