"""Health probes against real servers on 127.0.0.1 started by the tests: HTTP, HTTPS with a
self-signed certificate (openssl CLI), TCP, exec (process-group kill), DNS (a UDP responder
written with dnspython), and the CheckRunner's concurrency (counts, never timings).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.server
import os
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from pydantic import TypeAdapter

from bgplb.config import CheckConfig
from bgplb.health import CheckEvent, CheckRunner, ExecProbe, ProbeResult, make_probe, run_probe
from prerequisites import require_binary

_ADAPTER: TypeAdapter[Any] = TypeAdapter(CheckConfig)


def run_async(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test function in a fresh event loop (no pytest asyncio plugin needed)."""

    @functools.wraps(test)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return wrapper


def check(**fields: Any) -> Any:
    """A check config exactly as the TOML loader builds it."""
    return _ADAPTER.validate_python(fields)


async def probe_once(**fields: Any) -> ProbeResult:
    config = check(**fields)
    probe = make_probe(config)
    try:
        return await run_probe(probe, config.timeout)
    finally:
        await probe.aclose()


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- HTTP / HTTPS server -----------------------------------------------------------------------


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status = {"/ok": 200, "/fail": 503}.get(self.path, 404)
        body = f"status={status} host={self.headers.get('Host')}\n".encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def http_server(tls: ssl.SSLContext | None = None) -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture(scope="module")
def tls_context(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    openssl = require_binary("openssl")
    d = tmp_path_factory.mktemp("tls")
    key, cert = d / "key.pem", d / "cert.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


@run_async
async def test_http_up_and_down():
    with http_server() as port:
        base = f"http://127.0.0.1:{port}"
        up = await probe_once(type="http", url=f"{base}/ok")
        assert up.ok and up.detail.startswith("HTTP 200 in "), up
        assert up.latency > 0
        down = await probe_once(type="http", url=f"{base}/fail")
        assert not down.ok and down.detail == "HTTP 503, expected 200"
        assert (await probe_once(type="http", url=f"{base}/fail", expect_status=503)).ok
        body = await probe_once(type="http", url=f"{base}/ok", expect_body="status=200")
        assert body.ok
        wrong = await probe_once(type="http", url=f"{base}/ok", expect_body="healthy")
        assert not wrong.ok and "does not contain 'healthy'" in wrong.detail
        host = await probe_once(
            type="http", url=f"{base}/ok", host="web.example", expect_body="host=web.example"
        )
        assert host.ok, host
    refused = await probe_once(type="http", url=f"http://127.0.0.1:{free_port()}/ok")
    assert not refused.ok and refused.detail.startswith("ConnectError"), refused


@run_async
async def test_https_verifies_by_default(tls_context):
    with http_server(tls_context) as port:
        url = f"https://127.0.0.1:{port}/ok"
        verified = await probe_once(type="https", url=url)
        assert not verified.ok and "CERTIFICATE_VERIFY_FAILED" in verified.detail, verified
        unverified = await probe_once(type="https", url=url, verify_tls=False)
        assert unverified.ok and unverified.detail.startswith("HTTP 200"), unverified
        failing = await probe_once(
            type="https", url=f"https://127.0.0.1:{port}/fail", verify_tls=False
        )
        assert not failing.ok and failing.detail == "HTTP 503, expected 200"


# -- TCP ---------------------------------------------------------------------------------------


@run_async
async def test_tcp_up_and_down():
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        up = await probe_once(type="tcp", host="127.0.0.1", port=port)
        assert up.ok and up.detail.startswith("connected in "), up
    down = await probe_once(type="tcp", host="127.0.0.1", port=free_port())
    assert not down.ok and "ConnectionRefusedError" in down.detail, down


# -- exec --------------------------------------------------------------------------------------


@run_async
async def test_exec_exit_code_and_output():
    up = await probe_once(type="exec", command="echo fine")
    assert up.ok and up.detail == "exit 0: fine"
    down = await probe_once(type="exec", command="echo first; echo >&2 'no upstream'; exit 3")
    assert not down.ok and down.detail == "exit 3: no upstream"
    env = await probe_once(type="exec", command='test "$BGPLB_T" = yes', env={"BGPLB_T": "yes"})
    assert env.ok
    listed = await probe_once(type="exec", command=["/bin/false"])
    assert not listed.ok and listed.detail == "exit 1"
    missing = await probe_once(type="exec", command=["/nonexistent/check"])
    assert not missing.ok and missing.detail.startswith("cannot run: FileNotFoundError")


def gone(pid: int) -> bool:
    """True when the process no longer runs (reaped, or a zombie nobody reaped yet)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


async def wait_gone(pid: int) -> bool:
    for _ in range(100):  # bounded: at most ~5 s
        if gone(pid):
            return True
        await asyncio.sleep(0.05)
    return False


@run_async
async def test_exec_timeout_kills_the_whole_process_group(tmp_path):
    pidfile = tmp_path / "grandchild.pid"
    config = check(
        type="exec",
        command=f"sleep 60 & echo $! > {pidfile}; sleep 60",
        interval="2s",
        timeout="500ms",
    )
    probe = make_probe(config)
    assert isinstance(probe, ExecProbe)
    result = await run_probe(probe, config.timeout)
    assert not result.ok and result.detail == "timed out after 500ms"
    child = probe.last_pid
    grandchild = int(pidfile.read_text())
    assert child is not None and grandchild != child
    try:
        assert await wait_gone(child)
        assert await wait_gone(grandchild), "the grandchild survived the timeout"
    finally:
        for pid in (child, grandchild):
            with contextlib.suppress(ProcessLookupError):
                if not gone(pid):
                    os.kill(pid, 9)


@run_async
async def test_exec_background_child_does_not_hold_the_check(tmp_path):
    pidfile = tmp_path / "bg.pid"
    result = await probe_once(
        type="exec",
        command=f"sleep 60 & echo $! > {pidfile}; echo done",
        timeout="5s",
        interval="10s",
    )
    background = int(pidfile.read_text())
    try:
        assert result.ok and result.detail == "exit 0: done"  # not a timeout
        assert await wait_gone(background)
    finally:
        if not gone(background):
            os.kill(background, 9)


# -- DNS ---------------------------------------------------------------------------------------


class DnsResponder(asyncio.DatagramProtocol):
    """health.example. A 192.0.2.53 / AAAA 2001:db8::53; empty.example. has no records."""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        question = query.question[0]
        name = question.name.to_text()
        if name == "health.example." and question.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            address = "192.0.2.53" if question.rdtype == dns.rdatatype.A else "2001:db8::53"
            rdtype = dns.rdatatype.to_text(question.rdtype)
            response.answer.append(dns.rrset.from_text(name, 30, "IN", rdtype, address))
        elif name != "empty.example.":
            response.set_rcode(dns.rcode.NXDOMAIN)
        self.transport.sendto(response.to_wire(), addr)


@run_async
async def test_dns_up_and_down():
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(DnsResponder, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    try:
        common = {"type": "dns", "server": "127.0.0.1", "port": port}
        a = await probe_once(**common, name="health.example.")
        assert a.ok and a.detail.startswith("A 192.0.2.53 in "), a
        aaaa = await probe_once(**common, name="health.example.", rtype="AAAA")
        assert aaaa.ok and aaaa.detail.startswith("AAAA 2001:db8::53"), aaaa
        nx = await probe_once(**common, name="missing.example.")
        assert not nx.ok and nx.detail == "rcode NXDOMAIN"
        empty = await probe_once(**common, name="empty.example.")
        assert not empty.ok and empty.detail == "no A record for empty.example."
    finally:
        transport.close()
    silent = await probe_once(type="dns", server="127.0.0.1", port=free_port(socket.SOCK_DGRAM),
                              name="health.example.", interval="1s", timeout="300ms")  # fmt: skip
    assert not silent.ok


# -- the runner --------------------------------------------------------------------------------


@run_async
async def test_hanging_check_does_not_delay_another():
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    events: asyncio.Queue[CheckEvent] = asyncio.Queue()
    async with server:
        runner = CheckRunner(events.put_nowait)
        slow = runner.add("hang", check(type="exec", command=["sleep", "60"], interval="1s",
                                        timeout="900ms"))  # fmt: skip
        fast = runner.add("tcp", check(type="tcp", port=port, interval="50ms", rise=1))
        async with runner:
            for _ in range(200):  # bounded wait (~10 s) for two timed-out hanging probes
                if slow.probes >= 2:
                    break
                await asyncio.sleep(0.05)
            counts = (slow.probes, fast.probes)
    # Stopping the runner cancels the probe in flight and kills its process.
    assert isinstance(slow.probe, ExecProbe) and slow.probe.last_pid is not None
    assert await wait_gone(slow.probe.last_pid)
    assert counts[0] >= 2
    assert slow.last is not None and slow.last.detail == "timed out after 900ms"
    # Serialised behind the hanging check, the fast one would have run at most ~3 times.
    assert counts[1] >= 10, counts
    event = events.get_nowait()
    assert event.key == "tcp" and event.transition.up
    assert not slow.machine.up


@run_async
async def test_transition_reported_at_the_fall_th_failure():
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    seen: list[tuple[CheckEvent, int]] = []
    runner = CheckRunner(lambda e: seen.append((e, status.probes)))
    status = runner.add("web", check(type="tcp", port=port, interval="50ms", rise=2, fall=3))
    async with runner:
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.05)
        assert seen and seen[0][0].transition.up and seen[0][1] == 2  # the rise-th success
        server.close()
        await server.wait_closed()
        for _ in range(100):
            if len(seen) == 2:
                break
            await asyncio.sleep(0.05)
    up_event, down_event = seen[0][0], seen[1][0]
    assert not down_event.transition.up
    assert not down_event.result.ok and "ConnectionRefusedError" in down_event.result.detail
    # Reported at the probe that was the fall-th failure in a row, not later.
    assert status.machine.failures >= 3
    assert down_event.transition.reason == "3 consecutive failure(s)"
    assert up_event.transition.at < down_event.transition.at


@run_async
async def test_runner_remove_and_add_while_running():
    runner = CheckRunner(lambda e: None)
    async with runner:
        status = runner.add("x", check(type="exec", command="true", interval="50ms"))
        for _ in range(100):
            if status.probes >= 2:
                break
            await asyncio.sleep(0.02)
        await runner.remove("x")
        count = status.probes
        await asyncio.sleep(0.2)
        assert status.probes == count >= 2
        assert status.task is None
