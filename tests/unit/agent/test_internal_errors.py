"""Unexpected exceptions in the agent (bugs) are logged with their traceback at once and counted
in ``bgplb_agent_internal_errors_total{task}``; the agent's other work goes on."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from agent_fakes import FakeProbe
from test_daemon import DNS, WEB4, WEB6, Run, until

from bgplb.agent.metrics import INTERNAL_TASKS
from bgplb.agent.runtime import Tasks
from bgplb.config.agent import TcpCheck
from bgplb.health import CheckEvent, CheckRunner

pytestmark = pytest.mark.anyio

METRIC = "bgplb_agent_internal_errors_total"


async def test_a_failing_background_task_is_logged_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    errors: list[None] = []
    tasks = Tasks(on_error=lambda: errors.append(None))

    async def broken() -> None:
        raise RuntimeError("boom")

    async def forever() -> None:
        await asyncio.Event().wait()

    with caplog.at_level(logging.ERROR, "bgplb.agent"):
        failed = tasks.spawn(broken())
        await asyncio.gather(failed, return_exceptions=True)
        await asyncio.sleep(0)  # done callbacks run on the next turn of the loop
        cancelled = tasks.spawn(forever())
        await asyncio.sleep(0)
        await tasks.cancel_all()
    assert cancelled.cancelled()
    assert errors == [None]  # the cancelled task is not an error
    assert len(tasks) == 0
    (record,) = [r for r in caplog.records if "internal error" in r.getMessage()]
    assert "broken" in record.getMessage() and "RuntimeError: boom" in record.getMessage()
    assert record.exc_info is not None


async def test_a_check_callback_that_raises_is_counted_and_the_check_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    events: list[CheckEvent] = []
    errors: list[None] = []

    def on_transition(event: CheckEvent) -> None:
        events.append(event)
        if len(events) == 1:
            raise ValueError("bug in the callback")

    probe = FakeProbe(ok=True)
    check = TcpCheck.model_validate(
        {"type": "tcp", "port": 80, "interval": "10ms", "rise": 1, "fall": 1}
    )
    runner = CheckRunner(
        on_transition, probe_factory=lambda _: probe, on_error=lambda: errors.append(None)
    )
    runner.add("web", check)
    with caplog.at_level(logging.ERROR, "bgplb.health"):
        async with runner:
            await until(lambda: len(events) == 1)
            probe.ok = False
            await until(lambda: len(events) == 2)  # the check kept running
    assert errors == [None]
    assert any("internal error" in r.getMessage() for r in caplog.records)


async def test_the_daemon_counts_a_failing_vip_step_and_adds_the_other_vips(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = Run(tmp_path)
    real_add = run.lo.add

    async def add(vip: str) -> bool:
        if vip == str(WEB6):
            raise RuntimeError("bug while adding")
        return await real_add(vip)

    run.lo.add = add  # type: ignore[method-assign]
    registry = run.daemon.metrics_server.registry
    for task in INTERNAL_TASKS:  # exported at 0 from the start
        assert registry.get_sample_value(METRIC, {"task": task}) == 0.0, task
    with caplog.at_level(logging.ERROR, "bgplb.agent"):
        await run.start()
        await until(lambda: {WEB4, DNS} <= run.lo.present)
        await until(lambda: registry.get_sample_value(METRIC, {"task": "vip-step"}) == 1.0)
    assert WEB6 not in run.lo.present
    assert any("internal error: VIP step" in r.getMessage() for r in caplog.records)
    assert registry.get_sample_value(METRIC, {"task": "background"}) == 0.0
    assert await run.stop() == 0
