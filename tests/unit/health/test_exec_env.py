"""Exec checks run with a minimal environment, never the agent's own (bgplb.health.ExecProbe)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from bgplb.config import ExecCheck
from bgplb.health import ExecProbe
from bgplb.health.checks import EXEC_BASE_ENV


def _run_env(tmp_path: Path, **extra: Any) -> dict[str, str]:
    out = tmp_path / "env.txt"
    check = ExecCheck.model_validate(
        {"type": "exec", "command": ["/bin/sh", "-c", f"env > {out}"], **extra}
    )
    result = asyncio.run(ExecProbe(check)())
    assert result.ok, result
    lines = out.read_text().splitlines()
    env = dict(line.split("=", 1) for line in lines if "=" in line)
    env.pop("PWD", None)  # set by the shell itself
    env.pop("SHLVL", None)
    env.pop("_", None)
    return env


def test_exec_check_does_not_inherit_the_agent_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "leak-me")
    monkeypatch.setenv("LD_PRELOAD", "/nonexistent.so")
    monkeypatch.setenv("PATH", "/opt/evil/bin:/usr/bin:/bin")
    env = _run_env(tmp_path)
    assert env == EXEC_BASE_ENV
    assert env["PATH"] == "/usr/sbin:/usr/bin:/sbin:/bin" and env["LANG"] == "C.UTF-8"


def test_exec_check_env_table_is_added_and_may_override(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", "/root-of-agent")
    env = _run_env(tmp_path, env={"BACKEND": "http://127.0.0.1:8080", "LANG": "C"})
    assert env == {"PATH": EXEC_BASE_ENV["PATH"], "LANG": "C", "BACKEND": "http://127.0.0.1:8080"}
