"""``type = "process"``: up while the process named by a pidfile runs; its exit is seen at once.

The probe reads the pid from ``pidfile``, opens a pidfd for it (``pidfd_open(2)``, Linux 5.3)
and registers the pidfd with the event loop: a pidfd becomes readable when the process exits
(``poll(2)`` POLLIN), so the exit wakes the check in the same event-loop turn: one event, down
at once. Between events, every ``interval`` (default 100 ms), it ``stat``s the pidfile: a
restart writes a new pidfile (another inode, mtime or size) that is read again; a missing file
is down. The pidfile is watched by this short poll of its (device, inode, mtime, size), not
with inotify (no dependency, and a poll also sees a file replaced by ``rename``).

Which process: the pid is trusted only if, after the pidfd is open, the process has not
exited and the pidfile still is the same file with the same content (a daemon that restarted
between our read and ``pidfd_open`` rewrote it; then we read it again). Once the process a
pidfile named has exited, that same pidfile (same device, inode, mtime, size) is never trusted
again: its pid may be reused by an unrelated process; the daemon's next start writes a new one.
A pidfile whose pid does not run (or runs as a zombie) is stale: down.
"""

from __future__ import annotations

import asyncio
import os
import select
from pathlib import Path

from bgplb.config import ProcessCheck
from bgplb.health.probe import ProbeResult

PIDFILE_LIMIT = 64  # bytes read from a pidfile
_ATTEMPTS = 3  # reads of a pidfile that changes under us before giving up for this probe

Signature = tuple[int, int, int, int]  # st_dev, st_ino, st_mtime_ns, st_size


def has_exited(pidfd: int) -> bool:
    """True if the process of ``pidfd`` has exited (a zombie has, too)."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(0))


def parse_pid(text: bytes) -> int:
    """The pid in a pidfile's content (one decimal number, whitespace around it allowed)."""
    word = text.strip()
    if not word.isdigit() or not 0 < int(word) < 2**22 + 1:
        shown = word[:20].decode(errors="replace")
        raise ValueError(f"does not hold a pid: {shown!r}")
    return int(word)


def _signature(st: os.stat_result) -> Signature:
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


class ProcessProbe:
    """The probe of a ``process`` check (see the module docstring). An :class:`EventProbe`."""

    def __init__(self, check: ProcessCheck) -> None:
        self.check = check
        self.changed = asyncio.Event()
        self.pid: int | None = None  # the process we hold a pidfd for
        self._pidfd: int | None = None
        self._signature: Signature | None = None  # of the pidfile that named it
        self._dead: Signature | None = None  # a pidfile whose process we saw exit
        self._exited = False
        self._loop: asyncio.AbstractEventLoop | None = None

    async def __call__(self) -> ProbeResult:
        loop = asyncio.get_running_loop()
        start = loop.time()
        ok, detail = self._verify(loop)
        return ProbeResult(ok, loop.time() - start, detail)

    async def aclose(self) -> None:
        self._release()

    def _verify(self, loop: asyncio.AbstractEventLoop) -> tuple[bool, str]:
        path = self.check.pidfile
        for _ in range(_ATTEMPTS):
            try:
                signature = _signature(os.stat(path))
            except FileNotFoundError:
                self._release()
                return False, f"{path} does not exist"
            except OSError as e:
                self._release()
                return False, f"cannot read {path}: {e.strerror or e}"
            if self._pidfd is not None and signature == self._signature:
                if self._exited or has_exited(self._pidfd):
                    pid = self.pid
                    self._dead = signature
                    self._release()
                    return False, f"pid {pid} exited"
                return True, f"pid {self.pid} running"
            self._release()
            if signature == self._dead:
                return False, f"{path} is stale (its process exited)"
            verdict = self._attach(loop, path, signature)
            if verdict is not None:
                return verdict
        return False, f"{path} keeps changing"

    def _attach(
        self, loop: asyncio.AbstractEventLoop, path: Path, signature: Signature
    ) -> tuple[bool, str] | None:
        """Read the pidfile and hold a pidfd for its process; None if the file changed."""
        try:
            content = _read(path)
            pid = parse_pid(content)
        except FileNotFoundError:
            return None  # removed since stat: stat again
        except OSError as e:
            return False, f"cannot read {path}: {e.strerror or e}"
        except ValueError as e:
            return False, f"{path} {e}"
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return False, f"pid {pid} from {path} is not running (stale pidfile)"
        except OSError as e:
            return False, f"cannot watch pid {pid}: {e.strerror or e}"
        try:
            # The pidfd holds *a* process with that pid; it is the one the pidfile names if
            # the pidfile is still the same file with the same content now that we hold it.
            same = _signature(os.stat(path)) == signature and _read(path) == content
        except OSError:
            same = False
        if not same:
            os.close(pidfd)
            return None
        if has_exited(pidfd):
            os.close(pidfd)
            self._dead = signature
            return False, f"pid {pid} from {path} has exited (stale pidfile)"
        self._pidfd, self.pid, self._signature, self._exited = pidfd, pid, signature, False
        self._loop = loop
        loop.add_reader(pidfd, self._on_exit)
        return True, f"pid {pid} running"

    def _on_exit(self) -> None:
        # The pidfd is readable for good once the process has exited: stop watching it.
        self._exited = True
        if self._loop is not None and self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
        self.changed.set()

    def _release(self) -> None:
        if self._pidfd is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
        self._pidfd, self.pid, self._signature, self._exited = None, None, None, False


def _read(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(PIDFILE_LIMIT)
