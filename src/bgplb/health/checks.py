"""Health probes (http, https, tcp, exec, dns) and the CheckRunner that schedules them.

Probes of one check never overlap: the next one starts at the later of ``interval`` after the
start of the previous one and its end, so a ``timeout`` longer than the ``interval`` is fine.
An *event probe* (:class:`EventProbe`: process, listen, systemd) also has a ``changed`` event
it sets the moment the kernel or systemd announces a change; the runner then probes at once
instead of waiting for the interval.

A probe is a thin async callable returning a :class:`ProbeResult`; it does not enforce its own
timeout: the runner wraps every call in ``asyncio.timeout(check.timeout)``, so a hanging probe
is cancelled and counted as a failure. Each check runs in its own task on its own interval, so
a hanging check never delays another. Results go through the pure :class:`RiseFall` machine
(bgplb.health.state) and a transition is reported the moment it happens, through the
``on_transition`` callback (pass ``queue.put_nowait`` to get a queue). The clock is the event
loop's (``loop.time()``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import assert_never

import dns.asyncquery
import dns.exception
import dns.message
import dns.rcode
import dns.rdatatype
import httpx

from bgplb.config import (
    CheckConfig,
    DnsCheck,
    ExecCheck,
    HttpCheck,
    ListenCheck,
    ProcessCheck,
    SystemdCheck,
    TcpCheck,
    format_duration,
)

# re-exported: the probe types were defined here before bgplb.health.probe existed
from bgplb.health.probe import DEACTIVATING as DEACTIVATING
from bgplb.health.probe import EventProbe as EventProbe
from bgplb.health.probe import Probe as Probe
from bgplb.health.probe import ProbeResult as ProbeResult
from bgplb.health.state import Damping, RiseFall, Transition

log = logging.getLogger("bgplb.health")

BODY_LIMIT = 64 * 1024  # bytes of an HTTP body searched for expect_body
OUTPUT_LIMIT = 4096  # bytes of an exec check's output kept (its tail)
# The whole environment of an exec check, plus the check's own `env` table: nothing of the
# agent's environment (credentials, proxies, LD_PRELOAD...) leaks into a check command.
EXEC_BASE_ENV: dict[str, str] = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def _error(e: BaseException) -> str:
    text = str(e) or (str(e.__cause__) if e.__cause__ else "")
    if isinstance(e, OSError) and e.strerror:
        text = e.strerror
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


class HttpProbe:
    """GET (or ``method``) ``url``; up when the status is ``expect_status`` and the body
    contains ``expect_body`` (when given). A new connection each time (no keep-alive), no
    proxy from the environment, TLS verified unless ``verify_tls = false``."""

    def __init__(self, check: HttpCheck) -> None:
        self.check = check
        self._headers = {"Host": check.host} if check.host else {}
        self._client = httpx.AsyncClient(
            verify=check.verify_tls,
            timeout=check.timeout,
            trust_env=False,
            follow_redirects=False,
            limits=httpx.Limits(max_keepalive_connections=0),
        )

    async def __call__(self) -> ProbeResult:
        check, loop = self.check, asyncio.get_running_loop()
        start = loop.time()
        try:
            async with self._client.stream(check.method, check.url, headers=self._headers) as r:
                body = b""
                if check.expect_body is not None:
                    async for chunk in r.aiter_bytes():
                        body += chunk
                        if len(body) >= BODY_LIMIT:
                            break
        except httpx.HTTPError as e:
            return ProbeResult(False, loop.time() - start, _error(e))
        latency = loop.time() - start
        if r.status_code != check.expect_status:
            detail = f"HTTP {r.status_code}, expected {check.expect_status}"
            return ProbeResult(False, latency, detail)
        if check.expect_body is not None and check.expect_body.encode() not in body:
            detail = f"HTTP {r.status_code} but the body does not contain {check.expect_body!r}"
            return ProbeResult(False, latency, detail)
        return ProbeResult(True, latency, f"HTTP {r.status_code} in {_ms(latency)}")

    async def aclose(self) -> None:
        await self._client.aclose()


class TcpProbe:
    """Up when a TCP connection to ``host:port`` is accepted."""

    def __init__(self, check: TcpCheck) -> None:
        self.check = check

    async def __call__(self) -> ProbeResult:
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            _, writer = await asyncio.open_connection(self.check.host, self.check.port)
        except OSError as e:
            return ProbeResult(False, loop.time() - start, _error(e))
        latency = loop.time() - start
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass
        return ProbeResult(True, latency, f"connected in {_ms(latency)}")

    async def aclose(self) -> None:
        pass


async def _read_tail(stream: asyncio.StreamReader, tail: bytearray) -> None:
    while chunk := await stream.read(OUTPUT_LIMIT):
        tail += chunk
        del tail[:-OUTPUT_LIMIT]


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class ExecProbe:
    """Up when the command exits 0. It runs in its own session (process group); when it exits
    or is cancelled (timeout), the whole group is killed with SIGKILL, so no child it started
    survives (a background child does not keep the check waiting). ``detail`` is the exit
    status and the last line of its output (stdout and stderr). Its environment is
    ``EXEC_BASE_ENV`` plus the check's ``env`` table (which may override PATH and LANG), never
    the agent's own."""

    def __init__(self, check: ExecCheck) -> None:
        self.check = check
        extra: dict[str, str] | None = getattr(check, "env", None)
        self._env = {**EXEC_BASE_ENV, **(extra or {})}
        self.last_pid: int | None = None  # for tests and status

    async def __call__(self) -> ProbeResult:
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.check.command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                env=self._env,
            )
        except OSError as e:
            return ProbeResult(False, loop.time() - start, f"cannot run: {_error(e)}")
        self.last_pid = proc.pid
        assert proc.stdout is not None
        tail = bytearray()
        reader = asyncio.create_task(_read_tail(proc.stdout, tail))
        try:
            # The output reaches EOF when the command and every child holding its stdout have
            # exited. A background child may keep it open: notice the command's own exit too
            # (Process.wait() would also wait for the pipe on Python 3.11).
            while proc.returncode is None:
                done, _ = await asyncio.wait([reader], timeout=0.05)
                if done:
                    await proc.wait()
            code = proc.returncode
        finally:
            # Kill whatever the command left in its group (setsid: group id == its pid), also
            # when we are cancelled by the timeout; then its output pipe reaches EOF.
            _kill_group(proc.pid)
            if proc.returncode is None:
                await proc.wait()
            # A process that escaped the group may still hold the pipe: do not wait for it.
            await asyncio.wait([reader], timeout=0.2)
            reader.cancel()
        latency = loop.time() - start
        lines = [x.strip() for x in tail.decode(errors="replace").splitlines() if x.strip()]
        last = f": {lines[-1][:200]}" if lines else ""
        if code < 0:
            return ProbeResult(False, latency, f"killed by signal {-code}{last}")
        return ProbeResult(code == 0, latency, f"exit {code}{last}")

    async def aclose(self) -> None:
        pass


class DnsProbe:
    """Up when ``server:port`` answers a query for ``name``/``rtype`` with at least one
    record of that type (UDP, retried over TCP when truncated)."""

    def __init__(self, check: DnsCheck) -> None:
        self.check = check
        self._rdtype = dns.rdatatype.from_text(check.rtype)

    async def __call__(self) -> ProbeResult:
        check, loop = self.check, asyncio.get_running_loop()
        start = loop.time()
        query = dns.message.make_query(check.name, self._rdtype)
        try:
            response, _ = await dns.asyncquery.udp_with_fallback(
                query, str(check.server), timeout=check.timeout, port=check.port
            )
        except (dns.exception.DNSException, OSError) as e:
            return ProbeResult(False, loop.time() - start, _error(e))
        latency = loop.time() - start
        rcode = response.rcode()
        if rcode != dns.rcode.NOERROR:
            return ProbeResult(False, latency, f"rcode {dns.rcode.to_text(rcode)}")
        answers = [
            rr.to_text()
            for rrset in response.answer
            if rrset.rdtype == self._rdtype
            for rr in rrset
        ]
        if not answers:
            return ProbeResult(False, latency, f"no {check.rtype} record for {check.name}")
        return ProbeResult(
            True, latency, f"{check.rtype} {' '.join(answers[:3])} in {_ms(latency)}"
        )

    async def aclose(self) -> None:
        pass


def make_probe(check: CheckConfig) -> Probe:
    """The probe for a check's config; an unknown config type is an error (never a default)."""
    if isinstance(check, HttpCheck):
        return HttpProbe(check)
    if isinstance(check, TcpCheck):
        return TcpProbe(check)
    if isinstance(check, ExecCheck):
        return ExecProbe(check)
    if isinstance(check, DnsCheck):
        return DnsProbe(check)
    # The event probes are imported when used (systemd loads dbus-fast).
    if isinstance(check, ProcessCheck):
        from bgplb.health.process import ProcessProbe

        return ProcessProbe(check)
    if isinstance(check, ListenCheck):
        from bgplb.health.listen import ListenProbe

        return ListenProbe(check)
    if isinstance(check, SystemdCheck):
        from bgplb.health.systemd import SystemdProbe

        return SystemdProbe(check)
    assert_never(check)


async def run_probe(probe: Probe, timeout: float) -> ProbeResult:
    """One probe call under ``asyncio.timeout``; a timeout or an exception is a failure."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        async with asyncio.timeout(timeout):
            return await probe()
    except TimeoutError:
        return ProbeResult(
            False, loop.time() - start, f"timed out after {format_duration(timeout)}"
        )
    except Exception as e:  # a bug in a probe must not stop the check
        log.exception("health probe raised")
        return ProbeResult(False, loop.time() - start, f"probe error: {_error(e)}")


# -- the runner --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CheckEvent:
    """A check changed state: its key, the transition and the probe result that caused it."""

    key: Hashable
    transition: Transition
    result: ProbeResult


@dataclass(slots=True)
class CheckStatus:
    key: Hashable
    check: CheckConfig
    machine: RiseFall
    probe: Probe
    last: ProbeResult | None = None
    probes: int = 0
    task: asyncio.Task[None] | None = field(default=None, repr=False)


def damping_of(check: CheckConfig) -> Damping | None:
    d = check.damping
    if d is None:
        return None
    return Damping(
        half_life=d.half_life, suppress=d.suppress, reuse=d.reuse, max_suppress=d.max_suppress
    )


class CheckRunner:
    """Runs every added check concurrently, each in its own task on its own interval.

    ``on_transition`` is called (synchronously, from the check's task) at the probe result
    that changes the check's state; ``on_result`` (optional) after every probe. ``jitter``
    (0..1) spreads probes by up to that fraction of the interval.
    """

    def __init__(
        self,
        on_transition: Callable[[CheckEvent], object],
        *,
        on_result: Callable[[Hashable, ProbeResult], object] | None = None,
        jitter: float = 0.0,
        probe_factory: Callable[[CheckConfig], Probe] = make_probe,
        on_error: Callable[[], None] | None = None,
    ) -> None:
        self._on_transition = on_transition
        self._on_error = on_error
        self._on_result = on_result
        self._jitter = jitter
        self._factory = probe_factory
        self._checks: dict[Hashable, CheckStatus] = {}
        self._running = False

    def add(self, key: Hashable, check: CheckConfig) -> CheckStatus:
        if key in self._checks:
            raise KeyError(f"check {key!r} already added")
        machine = RiseFall(check.rise, check.fall, damping=damping_of(check))
        status = CheckStatus(key, check, machine, self._factory(check))
        self._checks[key] = status
        if self._running:
            status.task = asyncio.create_task(self._run(status), name=f"check {key}")
        return status

    async def remove(self, key: Hashable) -> None:
        status = self._checks.pop(key)
        await self._cancel(status)

    def status(self, key: Hashable) -> CheckStatus:
        return self._checks[key]

    def statuses(self) -> list[CheckStatus]:
        return list(self._checks.values())

    def start(self) -> None:
        """Start every check's task (call from a running event loop)."""
        self._running = True
        for status in self._checks.values():
            if status.task is None:
                status.task = asyncio.create_task(self._run(status), name=f"check {status.key}")

    async def stop(self) -> None:
        self._running = False
        for status in list(self._checks.values()):
            await self._cancel(status)

    async def __aenter__(self) -> CheckRunner:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _cancel(self, status: CheckStatus) -> None:
        if status.task is not None:
            status.task.cancel()
            try:
                await status.task
            except asyncio.CancelledError:
                pass
            status.task = None
        await status.probe.aclose()

    async def _run(self, status: CheckStatus) -> None:
        loop = asyncio.get_running_loop()
        check = status.check
        changed: asyncio.Event | None = getattr(status.probe, "changed", None)
        next_at = loop.time() + random.uniform(0, check.interval * self._jitter)
        while True:
            delay = next_at - loop.time()
            if changed is not None:
                # An event probe: probe at the interval, or at once when it says so.
                if delay > 0 and not changed.is_set():
                    try:
                        async with asyncio.timeout(delay):
                            await changed.wait()
                    except TimeoutError:
                        pass
                changed.clear()  # before the probe: an event during it means probe again
            elif delay > 0:
                await asyncio.sleep(delay)
            started = loop.time()
            result = await run_probe(status.probe, check.timeout)
            status.last = result
            status.probes += 1
            transition = status.machine.record(result.ok, loop.time(), result.detail)
            try:
                if self._on_result is not None:
                    self._on_result(status.key, result)
                if transition is not None:
                    self._on_transition(CheckEvent(status.key, transition, result))
            except Exception:
                log.exception("internal error: health check callback failed for %s", status.key)
                if self._on_error is not None:
                    self._on_error()
            jitter = random.uniform(0, check.interval * self._jitter) if self._jitter else 0.0
            # Never overlapping: the next probe starts at the later of its interval and now
            # (the end of this one, which may have taken up to `timeout` > `interval`).
            next_at = max(started + check.interval + jitter, loop.time())
