"""CheckRunner scheduling (no overlap, timeout > interval, event wake-ups), make_probe's
dispatch and the light import of bgplb.health.state."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
from collections.abc import Hashable
from typing import Any

import pytest

from bgplb.config import TcpCheck
from bgplb.health import CheckEvent, CheckRunner, ProbeResult, make_probe


class SlowProbe:
    """Takes ``duration`` per call (on the event loop's clock) and records overlaps."""

    def __init__(self, duration: float) -> None:
        self.duration = duration
        self.running = 0
        self.max_running = 0
        self.spans: list[tuple[float, float]] = []

    async def __call__(self) -> ProbeResult:
        loop = asyncio.get_running_loop()
        start = loop.time()
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            await asyncio.sleep(self.duration)
        finally:
            self.running -= 1
            self.spans.append((start, loop.time()))
        return ProbeResult(True, self.duration, "slow ok")

    async def aclose(self) -> None:
        pass


def test_slow_probes_never_overlap_and_next_starts_at_the_later_time() -> None:
    """interval 20 ms, timeout 500 ms, each probe takes 60 ms: probes run back to back, the
    next one starting when the previous one ended (never two at once)."""
    check = TcpCheck.model_validate(
        {"type": "tcp", "port": 80, "interval": "20ms", "timeout": "500ms", "damping": False}
    )
    probe = SlowProbe(0.06)

    async def main() -> None:
        runner = CheckRunner(lambda e: None, probe_factory=lambda c: probe)
        runner.add("slow", check)
        async with runner:
            while len(probe.spans) < 4:
                await asyncio.sleep(0.01)

    asyncio.run(asyncio.wait_for(main(), 10))
    assert probe.max_running == 1
    for (_, end), (start, _) in itertools.pairwise(probe.spans):
        assert start >= end  # after the previous one's end...
        assert start - end < 0.05  # ...not a further interval later (loose: shared CPU)


def test_fast_probes_keep_their_interval() -> None:
    check = TcpCheck.model_validate(
        {"type": "tcp", "port": 80, "interval": "50ms", "timeout": "500ms", "damping": False}
    )
    probe = SlowProbe(0.0)

    async def main() -> None:
        runner = CheckRunner(lambda e: None, probe_factory=lambda c: probe)
        runner.add("fast", check)
        async with runner:
            while len(probe.spans) < 4:
                await asyncio.sleep(0.01)

    asyncio.run(asyncio.wait_for(main(), 10))
    starts = [start for start, _ in probe.spans]
    assert all(b - a >= 0.049 for a, b in itertools.pairwise(starts))


class EventfulProbe:
    """An event probe whose verdict the test sets, then wakes the runner with ``changed``."""

    def __init__(self) -> None:
        self.changed = asyncio.Event()
        self.ok = True
        self.calls = 0

    async def __call__(self) -> ProbeResult:
        self.calls += 1
        return ProbeResult(self.ok, 0.0, "fine" if self.ok else "gone")

    async def aclose(self) -> None:
        pass


def test_event_probe_is_probed_at_once_when_changed() -> None:
    check = TcpCheck.model_validate(
        {"type": "tcp", "port": 80, "interval": "1h", "rise": 1, "fall": 1, "damping": False}
    )
    probe = EventfulProbe()
    events: list[CheckEvent] = []

    async def main() -> None:
        runner = CheckRunner(events.append, probe_factory=lambda c: probe)
        runner.add("e", check)
        async with runner:
            while not events:
                await asyncio.sleep(0.005)
            assert probe.calls == 1 and events[0].transition.up
            probe.ok = False
            probe.changed.set()
            async with asyncio.timeout(5):
                while len(events) < 2:
                    await asyncio.sleep(0)
            assert probe.calls == 2 and not events[1].transition.up
            assert events[1].result.detail == "gone"

    asyncio.run(main())


def test_make_probe_refuses_an_unknown_type() -> None:
    class Strange:
        type = "strange"

    bogus: Any = Strange()
    with pytest.raises(AssertionError):
        make_probe(bogus)


def test_make_probe_covers_every_check_type() -> None:
    from bgplb.config import CHECK_TYPES

    required: dict[str, dict[str, Any]] = {
        "http": {"url": "http://127.0.0.1/"},
        "https": {"url": "https://127.0.0.1/"},
        "tcp": {"port": 80},
        "exec": {"command": "true"},
        "dns": {"name": "example.com"},
        "process": {"pidfile": "/run/none.pid"},
        "listen": {"port": 80},
        "systemd": {"unit": "none.service"},
    }
    from pydantic import TypeAdapter

    from bgplb.config import CheckConfig

    adapter: TypeAdapter[Any] = TypeAdapter(CheckConfig)

    async def main() -> None:
        for kind in CHECK_TYPES:
            probe = make_probe(adapter.validate_python({"type": kind, **required[kind]}))
            assert type(probe).__name__.lower().startswith(kind[:4]), (kind, probe)
            await probe.aclose()

    asyncio.run(main())


def test_health_state_import_is_light() -> None:
    code = (
        "import sys, bgplb.health.state, bgplb.health; "
        "heavy = [m for m in ('asyncio', 'httpx', 'dns', 'pydantic', 'dbus_fast', 'socket') "
        "if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_health_package_names_still_resolve() -> None:
    import bgplb.health as health

    assert set(health.__all__) == set(health._WHERE)
    names: dict[str, Hashable] = {name: getattr(health, name) for name in health.__all__}
    assert names["CheckRunner"] is CheckRunner
    with pytest.raises(AttributeError):
        getattr(health, "NoSuchThing")  # noqa: B009
