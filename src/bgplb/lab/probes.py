"""Client traffic and router observations for the demo: what the client sees, and when.

- `NsLoop`: a thread running an asyncio loop *inside* a network namespace (setns(2) on that
  thread only), so every socket it opens is the client's, while the demo itself stays on the host.
- `fetch`: one HTTP GET on a fresh connection → `Answer` (which server, source port, error).
- `Stream`: fresh requests every `interval` (each its own task and timeout) until stopped.
- `LongLived`: N keep-alive connections each sending a request every `period`; a connection
  breaks if a request fails or a different server answers on it (with the time it was seen).
- `RouteWatcher`: polls the router's kernel route for the VIP and timestamps every change.

All times are `time.monotonic()` (CLOCK_MONOTONIC, one clock for every thread). Every loop is
bounded in count and in time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import os
import re
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")
_CLONE_NEWNET = 0x40000000
_WELCOME = re.compile(rb"Welcome to nginx (\d+) !")


def enter_netns(name: str) -> None:
    """Move the calling thread (only) into network namespace `name`."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
    finally:
        os.close(fd)


class NsLoop:
    """An asyncio loop on its own thread inside a network namespace."""

    def __init__(self, netns: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._error: BaseException | None = None
        ready = threading.Event()

        def main() -> None:
            try:
                enter_netns(netns)
            except OSError as exc:
                self._error = exc
                ready.set()
                return
            asyncio.set_event_loop(self.loop)
            ready.set()
            self.loop.run_forever()
            self.loop.close()

        self.thread = threading.Thread(target=main, name=f"netns-{netns}", daemon=True)
        self.thread.start()
        ready.wait(10)
        if self._error is not None:
            raise self._error

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return self.submit(coro).result(timeout)

    def close(self) -> None:
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)


@dataclass(slots=True)
class Answer:
    """One request: when it started, which server answered (None: failed), how long it took."""

    t: float
    server: int | None
    ms: float
    sport: int | None = None
    error: str | None = None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, asyncio.IncompleteReadError):
        return "connection closed"
    return f"{type(exc).__name__}: {exc}"


def _request(host: str, keep_alive: bool) -> bytes:
    conn = "keep-alive" if keep_alive else "close"
    return f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: {conn}\r\n\r\n".encode()


async def _read_answer(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    m = re.search(rb"(?i)content-length:\s*(\d+)", head)
    if not head.startswith(b"HTTP/1.") or m is None:
        raise ValueError(f"unexpected answer {head[:60]!r}")
    body = await reader.readexactly(int(m.group(1)))
    found = _WELCOME.search(body)
    if found is None:
        raise ValueError(f"unexpected body {body[:60]!r}")
    return int(found.group(1))


async def fetch(host: str, port: int = 80, timeout: float = 0.5) -> Answer:
    """GET / on a fresh connection (new source port); never raises."""
    t0 = time.monotonic()
    writer: asyncio.StreamWriter | None = None
    sport = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            sport = writer.get_extra_info("sockname")[1]
            writer.write(_request(host, keep_alive=False))
            server = await _read_answer(reader)
        return Answer(t0, server, (time.monotonic() - t0) * 1000, sport)
    except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as exc:
        return Answer(t0, None, (time.monotonic() - t0) * 1000, sport, _describe(exc))
    finally:
        if writer is not None:
            writer.close()


async def fresh_requests(host: str, count: int, timeout: float = 1.0) -> list[Answer]:
    """`count` sequential requests, each on a fresh connection."""
    return [await fetch(host, timeout=timeout) for _ in range(count)]


class Stream:
    """Fresh requests every `interval` seconds on `loop` until `stop()` (or `max_time`)."""

    def __init__(
        self,
        loop: NsLoop,
        host: str,
        interval: float = 0.05,
        timeout: float = 0.5,
        max_time: float = 60.0,
    ) -> None:
        self.answers: list[Answer] = []
        self._loop = loop
        self._stop = threading.Event()
        self._future = loop.submit(self._run(host, interval, timeout, max_time))

    async def _run(self, host: str, interval: float, timeout: float, max_time: float) -> None:
        tasks: set[asyncio.Task[None]] = set()
        start = time.monotonic()
        n = 0

        async def one() -> None:
            self.answers.append(await fetch(host, timeout=timeout))

        while not self._stop.is_set() and time.monotonic() - start < max_time:
            task = asyncio.create_task(one())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            n += 1
            # fixed schedule: a slow or failed request never delays the next one
            await asyncio.sleep(max(0.0, start + n * interval - time.monotonic()))
        if tasks:
            await asyncio.gather(*tasks)

    def stop(self) -> list[Answer]:
        self._stop.set()
        self._future.result(30)
        return sorted(self.answers, key=lambda a: a.t)


@dataclass
class Connection:
    """One long-lived keep-alive connection of the drain scenario."""

    server: int | None = None
    requests: int = 0
    broken: str | None = None
    broken_at: float | None = None  # when the failure (or the other server's answer) was seen
    servers: set[int] = field(default_factory=set)
    answered: list[tuple[float, int]] = field(default_factory=list)  # (request sent, server)

    def fail(self, reason: str) -> None:
        self.broken, self.broken_at = reason, time.monotonic()


class LongLived:
    """`n` keep-alive connections, each sending GET every `period` until `stop()`; then each
    is closed by the client, as a finished download would be."""

    def __init__(
        self,
        loop: NsLoop,
        host: str,
        n: int = 20,
        period: float = 0.2,
        timeout: float = 1.0,
        max_time: float = 60.0,
    ) -> None:
        self.connections = [Connection() for _ in range(n)]
        self._stop = threading.Event()
        self._opened = threading.Event()
        self._future = loop.submit(self._run(host, period, timeout, max_time))

    async def _one(
        self, conn: Connection, host: str, period: float, timeout: float, deadline: float
    ) -> None:
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(host, 80)
        except (OSError, TimeoutError) as exc:
            conn.fail(f"connect: {_describe(exc)}")
            return
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                sent = time.monotonic()
                try:
                    async with asyncio.timeout(timeout):
                        writer.write(_request(host, keep_alive=True))
                        server = await _read_answer(reader)
                except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as exc:
                    conn.fail(_describe(exc))
                    return
                conn.requests += 1
                conn.servers.add(server)
                conn.answered.append((sent, server))
                if conn.server is None:
                    conn.server = server
                elif server != conn.server:
                    conn.fail(f"answered by srv{server} instead of srv{conn.server}")
                    return
                await asyncio.sleep(period)
        finally:
            writer.close()

    async def _run(self, host: str, period: float, timeout: float, max_time: float) -> None:
        deadline = time.monotonic() + max_time
        tasks = [
            asyncio.create_task(self._one(c, host, period, timeout, deadline))
            for c in self.connections
        ]
        while not all(c.requests or c.broken for c in self.connections):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.02)
        self._opened.set()
        await asyncio.gather(*tasks)

    def wait_open(self, timeout: float = 10.0) -> bool:
        return self._opened.wait(timeout)

    def stop(self) -> list[Connection]:
        self._stop.set()
        self._future.result(30)
        return self.connections


class RouteWatcher:
    """Polls `read()` (the router's next hops for the VIP) every `interval` seconds on a thread
    and records `(t, hops)` at every change; `wait_for` returns the time of the first poll that
    saw a wanted state."""

    def __init__(
        self, read: Callable[[], list[str] | None], interval: float = 0.02, max_time: float = 600
    ) -> None:
        self.changes: list[tuple[float, list[str]]] = []
        self.interval = interval
        self._read = read
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._max_time = max_time
        self._thread = threading.Thread(target=self._run, name="route-watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        end = time.monotonic() + self._max_time
        last: list[str] | None = None
        while not self._stop.is_set() and time.monotonic() < end:
            t = time.monotonic()
            try:
                hops = self._read()
            except Exception:
                hops = None
            if hops is not None and hops != last:
                with self._cond:
                    self.changes.append((t, hops))
                    self._cond.notify_all()
                last = hops
            self._stop.wait(self.interval)

    @property
    def current(self) -> list[str]:
        with self._cond:
            return list(self.changes[-1][1]) if self.changes else []

    def wait_for(
        self, wanted: Callable[[list[str]], bool], timeout: float, since: float = 0.0
    ) -> float | None:
        """Time of the first recorded state after `since` satisfying `wanted`, or None."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                before = [hops for t, hops in self.changes if t < since]
                if before and wanted(before[-1]):
                    return since
                for t, hops in self.changes:
                    if t >= since and wanted(hops):
                        return t
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(min(left, 0.1))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
