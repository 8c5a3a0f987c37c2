"""The local control API: one JSON request per line over a unix socket, one JSON answer.

Request:  {"command": "status"} or {"command": "drain", "service": "web"} ...
Answer:   {"ok": true, "result": ...} or {"ok": false, "error": "message"}

The socket file is created with mode 0600 (only root, or the daemon's user, may drain
services). At start an existing path is removed only if it is a stale socket (nothing answers
a connect); a live socket (another daemon) or anything that is not a socket (a regular file, a
directory, a symlink) is refused with `ControlError`: the daemon never deletes a file it did not
create. A request line longer than `MAX_REQUEST` bytes is answered with a JSON error and the
connection closed. Handlers are plain async functions registered by the daemon; the CLI side is
`request()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("bgplb.control")

Handler = Callable[[dict[str, Any]], Awaitable[Any]]
MAX_REQUEST = 64 * 1024


class ControlError(Exception):
    """The daemon answered with an error, or could not be reached (message says which)."""


class ControlServer:
    """Serves registered commands on a unix socket."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.handlers: dict[str, Handler] = {}
        self._server: asyncio.AbstractServer | None = None

    def register(self, command: str, handler: Handler) -> None:
        self.handlers[command] = handler

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            mode = self.path.lstat().st_mode
        except FileNotFoundError:
            mode = None
        if mode is not None:
            if not stat.S_ISSOCK(mode):
                raise ControlError(
                    f"{self.path}: exists and is not a socket ({_kind(mode)}); not removing it:"
                    " move it away, or set [control].socket to another path"
                )
            if _socket_alive(self.path):
                raise ControlError(
                    f"{self.path}: another daemon is already listening there (stop it, or set"
                    " [control].socket to another path)"
                )
            log.info("removing stale control socket %s", self.path)
            self.path.unlink()
        old_umask = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(
                self._client, path=str(self.path), limit=MAX_REQUEST + 1
            )
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                line = await asyncio.wait_for(reader.readline(), 10)
            except ValueError:  # asyncio.LimitOverrunError: no newline within the limit
                log.warning("control request over %d bytes refused", MAX_REQUEST)
                answer = {"ok": False, "error": f"request too large (over {MAX_REQUEST} bytes)"}
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
                await _discard_input(reader)
                return
            answer = await self._answer(line)
            writer.write(json.dumps(answer, default=str).encode() + b"\n")
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _answer(self, line: bytes) -> dict[str, Any]:
        if len(line) > MAX_REQUEST:
            return {"ok": False, "error": f"request too large (over {MAX_REQUEST} bytes)"}
        try:
            request = json.loads(line)
            command = request["command"]
        except (ValueError, KeyError, TypeError):
            return {"ok": False, "error": "bad request: expected a JSON object with 'command'"}
        handler = self.handlers.get(command)
        if handler is None:
            known = ", ".join(sorted(self.handlers))
            return {"ok": False, "error": f"unknown command {command!r} (known: {known})"}
        try:
            return {"ok": True, "result": await handler(request)}
        except ControlError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:
            log.exception("control command %s failed", command)
            return {"ok": False, "error": f"{command} failed: {exc}"}


async def _discard_input(reader: asyncio.StreamReader) -> None:
    """Read and drop what a client is still sending (bounded: 1 MiB, 2 s), so that it is not
    reset in the middle of its write and can read the error answer."""
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(2):
            for _ in range(16):
                if not await reader.read(65536):
                    return


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISREG(mode):
        return "a regular file"
    return "not a socket"


def _socket_alive(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


def request(path: str | os.PathLike[str], command: str, timeout: float = 10.0, **args: Any) -> Any:
    """Send one command to a running daemon and return its result (raises ControlError)."""
    payload = json.dumps({"command": command, **args}).encode() + b"\n"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except FileNotFoundError:
            raise ControlError(f"{path}: no such socket (is the daemon running?)") from None
        except PermissionError:
            raise ControlError(f"{path}: permission denied (run as root)") from None
        except OSError as exc:
            raise ControlError(f"{path}: cannot connect: {exc.strerror or exc}") from None
        try:
            sock.sendall(payload)
        except OSError:  # the daemon closed early (e.g. request too large): read its answer
            pass
        chunks: list[bytes] = []
        while True:
            try:
                chunk = sock.recv(65536)
            except OSError as exc:
                if chunks:
                    break
                raise ControlError(f"{path}: connection lost: {exc.strerror or exc}") from None
            if not chunk:
                break
            chunks.append(chunk)
            if chunk.endswith(b"\n"):  # the answer is one line
                break
    try:
        answer = json.loads(b"".join(chunks))
    except ValueError:
        raise ControlError(f"{path}: the daemon sent an unreadable answer") from None
    if not answer.get("ok"):
        raise ControlError(answer.get("error", "unknown error"))
    return answer.get("result")
