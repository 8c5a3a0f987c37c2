"""Polling with a deadline, shared by the interop tests and the benchmarks.

`wait_until` calls a probe until it returns something truthy (and returns that) or the
timeout runs out; every wait is bounded in time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """The probe was still falsy at the deadline (an AssertionError, so a test fails on it)."""


def wait_until(probe: Callable[[], T], timeout: float, what: str, *, step: float = 0.05) -> T:
    """Poll `probe()` every `step` seconds; return its first truthy result, or raise
    `WaitTimeout` after `timeout` seconds naming `what` and the last result."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(step)
    raise WaitTimeout(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
