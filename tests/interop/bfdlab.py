"""Helpers for the BFD tests on loopback (test_bfd_link.py, test_bfd_service.py): a free UDP
port and a bounded asyncio wait."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable


def free_port() -> int:
    """An unprivileged UDP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def until(what: str, pred: Callable[[], bool], timeout: float = 10.0) -> None:
    """Yield to the event loop until `pred()` holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
