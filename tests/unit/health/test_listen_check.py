"""``type = "listen"`` (bgplb.health.listen, bgplb.health.sockdiag): sock_diag dumps and
destroy notifications. The live tests open sockets in the test process (on 127.0.0.1/::1);
the notifications need CAP_NET_ADMIN (root), else those tests are skipped."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import struct
from collections.abc import Iterator
from typing import Any

import pytest

from bgplb.config import ListenCheck
from bgplb.health import CheckEvent, CheckRunner
from bgplb.health import listen as listen_mod
from bgplb.health.listen import ListenProbe
from bgplb.health.sockdiag import (
    AF_INET,
    AF_INET6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    TCP_LISTEN,
    DiagError,
    DiagSocket,
    destroy_filter,
    destroy_groups,
    dump_request,
    parse,
    serves,
)

WAIT = 5.0
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="destroy notifications need root")


def check(port: int, **extra: Any) -> ListenCheck:
    return ListenCheck.model_validate({"type": "listen", "port": port, "damping": False, **extra})


# -- pure encoding -----------------------------------------------------------------------------


def test_dump_request_layout() -> None:
    # linux/inet_diag.h: nlmsghdr (16) + inet_diag_req_v2 (8 + inet_diag_sockid 48) = 72 bytes
    req = dump_request(AF_INET6, IPPROTO_TCP, 1 << TCP_LISTEN, seq=7)
    assert len(req) == 72
    assert struct.unpack_from("=IHHII", req) == (72, 20, 0x301, 7, 0)
    assert struct.unpack_from("=BBBxI", req, 16) == (10, 6, 0, 0x400)
    assert req[24:] == bytes(48)


def _msg(
    family: int, state: int, sport: int, dport: int, src: str, *, v6only: int | None = None
) -> bytes:
    raw = ipaddress.ip_address(src).packed.ljust(16, b"\0")
    body = struct.pack("=BBBB", family, state, 0, 0) + struct.pack("!HH", sport, dport)
    body += raw + bytes(16) + struct.pack("=I", 0) + bytes(8)
    body += struct.pack("=IIIII", 0, 0, 0, 0, 4242)
    if v6only is not None:
        body += struct.pack("=HHB", 5, 11, v6only) + b"\0\0\0"  # rtattr, padded to 4
    return struct.pack("=IHHII", 16 + len(body), 20, 2, 9, 1) + body


def test_parse_messages_and_done() -> None:
    done = struct.pack("=IHHII", 20, 3, 2, 9, 1) + struct.pack("=i", 0)
    data = _msg(AF_INET, TCP_LISTEN, 80, 0, "0.0.0.0") + _msg(
        AF_INET6, TCP_LISTEN, 443, 0, "::", v6only=0
    )
    batch = parse(data + done, seq=9)
    assert batch.done and not batch.error
    v4, v6 = batch.sockets
    assert (v4.family, v4.state, v4.sport, v4.src, v4.inode, v4.v6only) == (
        AF_INET,
        TCP_LISTEN,
        80,
        ipaddress.ip_address("0.0.0.0"),
        4242,
        None,
    )
    assert v6.src == ipaddress.ip_address("::") and v6.v6only is False
    assert parse(data, seq=10).sockets == []  # another request's answer
    error = struct.pack("=IHHII", 20, 2, 0, 9, 1) + struct.pack("=i", -1)
    assert parse(error, seq=9).error == 1
    with pytest.raises(DiagError):
        parse(data[:40])  # truncated


def _sock(src: str, port: int = 80, v6only: bool | None = None) -> DiagSocket:
    address = ipaddress.ip_address(src)
    family = AF_INET if address.version == 4 else AF_INET6
    return DiagSocket(family, TCP_LISTEN, port, 0, address, 1, v6only)


@pytest.mark.parametrize(
    ("src", "v6only", "address", "expected"),
    [
        ("0.0.0.0", None, None, True),
        ("0.0.0.0", None, "192.0.2.10", True),
        ("192.0.2.10", None, "192.0.2.10", True),
        ("192.0.2.11", None, "192.0.2.10", False),
        ("::", False, "192.0.2.10", True),  # dual-stack wildcard
        ("::", True, "192.0.2.10", False),
        ("::ffff:192.0.2.10", None, "192.0.2.10", True),
        ("::", True, "2001:db8::10", True),
        ("2001:db8::10", True, "2001:db8::10", True),
        ("2001:db8::11", True, "2001:db8::10", False),
        ("0.0.0.0", None, "2001:db8::10", False),
    ],
)
def test_serves(src: str, v6only: bool | None, address: str | None, expected: bool) -> None:
    wanted = ipaddress.ip_address(address) if address else None
    assert serves(_sock(src, v6only=v6only), 80, wanted) is expected
    assert not serves(_sock(src, port=81, v6only=v6only), 80, wanted)


def test_destroy_groups_and_filter() -> None:
    assert destroy_groups(IPPROTO_TCP, (AF_INET, AF_INET6)) == 0b0101
    assert destroy_groups(IPPROTO_UDP, (AF_INET,)) == 0b0010
    count, code = destroy_filter(8080)
    assert count == 6 and len(code) == 6 * 8
    assert struct.unpack_from("=HBBI", code, 0) == (0x28, 0, 0, 20)  # ldh [sport]
    assert struct.unpack_from("=HBBI", code, 8) == (0x15, 0, 3, 8080)


# -- live: sockets of this process -------------------------------------------------------------


def _listener(family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> socket.socket:
    sock = socket.socket(family, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1" if family == socket.AF_INET else "::1", 0))
    if kind == socket.SOCK_STREAM:
        sock.listen()
    return sock


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


async def _next(queue: asyncio.Queue[CheckEvent]) -> CheckEvent:
    return await asyncio.wait_for(queue.get(), WAIT)


def test_probe_sees_listener_and_its_absence(sockets: list[socket.socket]) -> None:
    tcp = _listener()
    sockets.append(tcp)
    port = tcp.getsockname()[1]

    async def main() -> None:
        probe = ListenProbe(check(port))
        result = await probe()
        assert result.ok and result.detail == f"tcp 127.0.0.1:{port} listening", result
        other = ListenProbe(check(port, address="127.0.0.2"))
        result = await other()
        assert not result.ok
        assert result.detail == f"nothing listens on tcp 127.0.0.2:{port}"
        udp = ListenProbe(check(port, protocol="udp"))
        assert not (await udp()).ok  # a TCP listener is not a UDP one
        tcp.close()
        result = await probe()
        assert not result.ok and result.detail == f"nothing listens on tcp port {port}"
        for p in (probe, other, udp):
            await p.aclose()

    asyncio.run(main())


@needs_root
@pytest.mark.parametrize("kind", ["tcp4", "tcp6", "udp4", "udp6"])
def test_close_is_down_at_once_by_notification(kind: str, sockets: list[socket.socket]) -> None:
    """The interval is an hour: only the destroy notification can wake the check."""
    family = socket.AF_INET6 if kind.endswith("6") else socket.AF_INET
    stype = socket.SOCK_DGRAM if kind.startswith("udp") else socket.SOCK_STREAM
    sock = _listener(family, stype)
    sockets.append(sock)
    port = sock.getsockname()[1]

    async def main() -> None:
        queue: asyncio.Queue[CheckEvent] = asyncio.Queue()
        runner = CheckRunner(queue.put_nowait)
        status = runner.add("l", check(port, protocol=kind[:3], interval="1h", rise=1))
        async with runner:
            assert (await _next(queue)).transition.up
            assert isinstance(status.probe, ListenProbe) and status.probe.notifications
            sock.close()
            down = await _next(queue)
            assert not down.transition.up
            assert down.result.detail.startswith("nothing listens on")
            assert status.probe.wakeups >= 1

    asyncio.run(main())


@needs_root
def test_connections_closing_do_not_wake_the_check(sockets: list[socket.socket]) -> None:
    """Server-side connections share the listener's port: the kernel filter drops their
    destroy notifications (destination port != 0), so a busy server costs the agent nothing."""
    tcp = _listener()
    sockets.append(tcp)
    port = tcp.getsockname()[1]

    async def main() -> None:
        probe = ListenProbe(check(port))
        assert (await probe()).ok and probe.notifications
        for _ in range(20):
            client = socket.create_connection(("127.0.0.1", port))
            server, _ = tcp.accept()
            client.close()
            server.close()
        await asyncio.sleep(0.2)  # destroy notifications are sent from a kernel work queue
        assert probe.wakeups == 0 and not probe.changed.is_set()
        await probe.aclose()

    asyncio.run(main())


@needs_root
def test_reuseport_sibling_keeps_it_up(sockets: list[socket.socket]) -> None:
    first = _listener()
    port = first.getsockname()[1]
    second = socket.socket()
    second.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    second.bind(("127.0.0.1", port))
    second.listen()
    sockets += [first, second]

    async def main() -> None:
        probe = ListenProbe(check(port))
        result = await probe()
        assert result.ok and result.detail.endswith("listening (+1)")
        first.close()
        await asyncio.wait_for(probe.changed.wait(), WAIT)  # told, and looks again
        assert (await probe()).ok
        await probe.aclose()

    asyncio.run(main())


def test_without_notifications_the_dump_at_interval_decides(
    sockets: list[socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(listen_mod, "attach_filter", refuse)
    tcp = _listener()
    sockets.append(tcp)
    port = tcp.getsockname()[1]

    async def main() -> None:
        queue: asyncio.Queue[CheckEvent] = asyncio.Queue()
        runner = CheckRunner(queue.put_nowait)
        status = runner.add("l", check(port, interval="20ms", rise=1))
        async with runner:
            assert (await _next(queue)).transition.up
            assert isinstance(status.probe, ListenProbe)
            assert status.probe.notifications is False
            tcp.close()
            assert not (await _next(queue)).transition.up

    asyncio.run(main())


def test_no_sock_diag_is_a_clear_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel without NETLINK_SOCK_DIAG (or a sandbox refusing it): down, with the reason,
    and no exception out of the probe."""

    def refuse(nonblocking: bool = False) -> socket.socket:
        raise OSError(97, "Address family not supported by protocol")

    monkeypatch.setattr(listen_mod, "netlink_socket", refuse)

    async def main() -> None:
        probe = ListenProbe(check(80))
        result = await probe()
        assert not result.ok
        assert result.detail == (
            "sock_diag dump failed: [Errno 97] Address family not supported by protocol"
        )
        await probe.aclose()

    asyncio.run(main())
