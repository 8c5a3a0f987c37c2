"""LoopWatch records event-loop stalls: a callback that blocks the loop shows up as a stall."""

from __future__ import annotations

import asyncio
import time

import pytest

from bgplb.io.loopwatch import LoopFigures, LoopWatch

pytestmark = pytest.mark.serial  # asserts on event-loop lateness (50 ms)


def block(seconds: float) -> None:
    time.sleep(seconds)  # deliberately blocks the event loop


async def watch_around_a_block() -> tuple[LoopFigures, LoopFigures]:
    watch = LoopWatch(period=0.01, stall=0.05)
    watch.start()
    await asyncio.sleep(0.1)  # some normal wake-ups first
    asyncio.get_running_loop().call_soon(block, 0.2)
    await asyncio.sleep(0.1)
    first = watch.read(reset=True)
    await asyncio.sleep(0.05)
    second = watch.read()
    await watch.stop()
    assert not watch.running
    return first, second


def test_a_blocking_callback_is_recorded_as_a_stall() -> None:
    first, second = asyncio.run(watch_around_a_block())
    assert first["stalls"] >= 1
    assert first["max_ms"] > 50
    assert first["samples"] > 0
    # the reset starts a new interval: max and stall count are gone, the watch keeps counting
    assert second["stalls"] == 0
    assert second["max_ms"] < first["max_ms"]
    assert second["samples"] > 0


def test_no_stall_without_a_block() -> None:
    async def run() -> LoopFigures:
        watch = LoopWatch(period=0.01, stall=10.0)  # threshold far above any scheduler noise
        watch.start()
        watch.start()  # idempotent
        await asyncio.sleep(0.1)
        await watch.stop()
        return watch.read()

    figures = asyncio.run(run())
    assert figures["stalls"] == 0
    assert figures["samples"] > 0


def test_record_and_read_without_a_loop() -> None:
    watch = LoopWatch(period=0.01, stall=0.05, window=100)
    for late in [0.001] * 99 + [0.3]:
        watch.record(late)
    watch.record(-0.001)  # early wake-ups count as 0
    fig = watch.read()
    assert fig["stalls"] == 1
    assert fig["max_ms"] == 300.0
    assert fig["samples"] == 101
    assert fig["p99_ms"] in (1.0, 300.0)
    assert watch.read(reset=True)["stalls"] == 1
    assert watch.read()["stalls"] == 0


@pytest.mark.parametrize(
    "kw", [{"period": 0}, {"period": float("nan")}, {"stall": -1}, {"window": 0}]
)
def test_bad_settings_are_clear_errors(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="loop watch"):
        LoopWatch(**kw)


def test_garbage_collections_are_timed_while_watching() -> None:
    import gc

    async def run() -> tuple[LoopFigures, LoopFigures, int]:
        watch = LoopWatch(period=0.01)
        watch.start()
        watch.start()  # one callback, not two
        callbacks = sum(1 for c in gc.callbacks if c == watch._on_gc)
        garbage = [[i] for i in range(200_000)]  # something for the collector to walk
        gc.collect()
        first = watch.read(reset=True)
        del garbage
        second = watch.read()
        await watch.stop()
        assert watch._on_gc not in gc.callbacks
        return first, second, callbacks

    first, second, callbacks = asyncio.run(run())
    assert callbacks == 1
    assert first["gc_full"] >= 1 and first["gc_full_ms"] > 0 and first["gc_max_ms"] > 0
    assert second["gc_full"] == 0 and second["gc_max_ms"] == 0
