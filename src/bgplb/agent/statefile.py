"""The agent's persisted state: drained services, the VIPs it added to lo, how it last exited.

A small JSON document written durably (temp file, fsync, rename, fsync of the directory) on
every change, so that

- a drain survives a restart (``bgplb drain web`` then a reboot keeps ``web`` drained);
- VIPs the agent added are known after a restart, so they are removed when no longer announced,
  while addresses someone else put on lo are never touched;
- a start after a restart that kept the routes (SIGUSR1, a crash, kill -9) is recognised and
  advertised as a Graceful Restart (RFC 4724 §4.1: Restart State and Forwarding State bits).

A file that exists but is unreadable or corrupt is an error (:class:`StateFileError`), never
"nothing drained": see :func:`load`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("bgplb.agent")

DEFAULT_PATH = Path("/var/lib/bgplb/agent-state.json")


@dataclass(slots=True)
class SavedState:
    drained: set[str] = field(default_factory=set)
    owned_vips: set[str] = field(default_factory=set)
    clean_exit: bool = True  # False while running; True after a stop that withdrew everything
    restart_at: float | None = None  # wall-clock time of a restart that kept the routes

    def to_json(self) -> str:
        return json.dumps(
            {
                "drained": sorted(self.drained),
                "owned_vips": sorted(self.owned_vips),
                "clean_exit": self.clean_exit,
                "restart_at": self.restart_at,
            },
            indent=1,
        )

    def keeps_routes(self, restart_time: float, now: float | None = None) -> bool:
        """Did the previous run leave routes at the routers (restart, crash) recently enough?"""
        if self.clean_exit:
            return False
        if self.restart_at is None:
            return True  # crashed or killed: it never said goodbye
        return (now if now is not None else time.time()) - self.restart_at < restart_time


class StateFileError(Exception):
    """The state file exists but cannot be trusted (unreadable, truncated, not our format)."""


def load(path: Path) -> SavedState:
    """The saved state; a missing file is an empty state (first start).

    A file that exists but cannot be read or parsed raises :class:`StateFileError` (after a
    loud log line) and is left untouched: the agent must not start. Starting as if nothing were
    drained would put a service an operator drained for maintenance back into traffic without
    anyone asking, and forgetting the VIPs we added would leave them on lo for ever. Not
    starting keeps this server out of traffic — the same safe side as "drained" — until an
    operator repairs or removes the file. Writes are fsynced (see :func:`save`), so only a disk
    fault or a hand edit gets here.
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        return SavedState()
    except (OSError, UnicodeDecodeError) as exc:
        raise _corrupt(path, f"cannot read it: {exc}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        what = "it is empty" if not text.strip() else f"not valid JSON ({exc})"
        raise _corrupt(path, what) from None
    if not isinstance(data, dict):
        raise _corrupt(path, "not a JSON object")
    drained = data.get("drained", [])
    owned = data.get("owned_vips", [])
    restart_at = data.get("restart_at")
    clean_exit = data.get("clean_exit", True)
    for key, value in (("drained", drained), ("owned_vips", owned)):
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            raise _corrupt(path, f"{key!r} is not a list of strings")
    if not isinstance(clean_exit, bool):
        raise _corrupt(path, "'clean_exit' is not true or false")
    if restart_at is not None and (
        isinstance(restart_at, bool) or not isinstance(restart_at, int | float)
    ):
        raise _corrupt(path, "'restart_at' is not a number")
    return SavedState(
        drained=set(drained),
        owned_vips=set(owned),
        clean_exit=clean_exit,
        restart_at=None if restart_at is None else float(restart_at),
    )


def _corrupt(path: Path, reason: str) -> StateFileError:
    message = (
        f"state file {path} is corrupt: {reason}. It records which services are drained and"
        " which VIPs the agent added, so the agent does not start without it (a drained service"
        " would otherwise come back into traffic). Repair it, or remove it to start with"
        " nothing drained (check `ip addr show dev lo` for VIPs left behind)."
    )
    log.critical("%s", message)
    return StateFileError(message)


def save(path: Path, state: SavedState) -> None:
    """Write durably: a temp file in the same directory, fsync, rename over the old file, fsync
    the directory; after a crash or power loss the file is the old or the new state, whole.
    Failures are logged, never raised (the agent keeps running)."""
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            f.write(state.to_json())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        log.error("cannot write state file %s: %s", path, exc)
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


class StateStore:
    """The state file of a running agent: ``saved`` in memory, :meth:`save` after each change."""

    def __init__(self, path: Path, saved: SavedState | None = None) -> None:
        self.path = path
        self.saved = saved if saved is not None else SavedState()

    def load(self) -> SavedState:
        """Read the file (:class:`StateFileError` if it cannot be trusted)."""
        self.saved = load(self.path)
        return self.saved

    def save(self) -> None:
        save(self.path, self.saved)
