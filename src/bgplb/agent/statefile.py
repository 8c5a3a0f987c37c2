"""The agent's persisted state: drained services, the VIPs it added to lo, how it last exited.

A small JSON document written atomically (temp file + rename) on every change, so that

- a drain survives a restart (``bgplb drain web`` then a reboot keeps ``web`` drained);
- VIPs the agent added are known after a restart, so they are removed when no longer announced,
  while addresses someone else put on lo are never touched;
- a start after a restart that kept the routes (SIGUSR1, a crash, kill -9) is recognised and
  advertised as a Graceful Restart (RFC 4724 §4.1: Restart State and Forwarding State bits).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
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


def load(path: Path) -> SavedState:
    """The saved state; a missing or unreadable file is an empty state (logged)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return SavedState()
    except (OSError, ValueError) as exc:
        log.warning("state file %s unreadable (%s): starting without it", path, exc)
        return SavedState()
    if not isinstance(data, dict):
        return SavedState()

    def strings(key: str) -> set[str]:
        value = data.get(key, [])
        return {x for x in value if isinstance(x, str)} if isinstance(value, list) else set()

    restart_at = data.get("restart_at")
    return SavedState(
        drained=strings("drained"),
        owned_vips=strings("owned_vips"),
        clean_exit=bool(data.get("clean_exit", True)),
        restart_at=float(restart_at) if isinstance(restart_at, int | float) else None,
    )


def save(path: Path, state: SavedState) -> None:
    """Write atomically; failures are logged, never raised (the agent keeps running)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(state.to_json())
        os.replace(tmp, path)
    except OSError as exc:
        log.error("cannot write state file %s: %s", path, exc)
        with contextlib.suppress(OSError):
            tmp.unlink()
