"""`bgplb router` logs one JSON object per line with ``[logging] json = true`` (the agent's
formatter), and a start that fails exits non-zero with its reason in the log."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_daemon_supervision import router_toml

from bgplb.cli import main


@pytest.fixture
def root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


# BgpListener.start leaks the socket whose bind failed (io/bgp.py): not what is tested here
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_router_json_logs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], root_logging: None
) -> None:
    with socket.socket() as taken:  # the BGP port is taken: the router cannot listen
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        conf = tmp_path / "router.toml"
        conf.write_text(router_toml(tmp_path / "router.sock", port) + "\n[logging]\njson = true\n")
        assert main(["router", "-c", str(conf)]) == 1
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line]
    assert lines, "nothing logged"
    assert all({"ts", "level", "logger", "msg"} <= set(r) for r in lines)
    assert any(r["level"] == "error" and "cannot listen" in r["msg"] for r in lines), lines
