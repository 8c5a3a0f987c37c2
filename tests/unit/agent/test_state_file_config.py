"""`[control] state_file`: parsed from the config, and the precedence `--state-file` >
`$BGPLB_STATE_FILE` > `[control] state_file` > the default."""

from __future__ import annotations

from pathlib import Path

import pytest

from bgplb.cli_agent import DEFAULT_STATE, state_file
from bgplb.config import ConfigError, load_agent_config

BASE = """
[bgp]
asn = 65000
router_id = "192.0.2.11"
[[peers]]
address = "192.0.2.1"
asn = 65530
[control]
socket = "/tmp/agent.sock"
"""


def test_state_file_key_is_read(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text(BASE + 'state_file = "/srv/bgplb/state.json"\n')
    assert load_agent_config(path).control.state_file == Path("/srv/bgplb/state.json")
    path.write_text(BASE)
    assert load_agent_config(path).control.state_file is None


def test_state_file_must_be_a_path_string(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text(BASE + "state_file = 3\n")
    with pytest.raises(ConfigError) as err:
        load_agent_config(path)
    assert f"{path}: control.state_file" in str(err.value)


def test_precedence(monkeypatch):
    configured = Path("/from/config.json")
    monkeypatch.delenv("BGPLB_STATE_FILE", raising=False)
    assert state_file(None, None) == DEFAULT_STATE
    assert state_file(None, configured) == configured
    monkeypatch.setenv("BGPLB_STATE_FILE", "/from/env.json")
    assert state_file(None, configured) == Path("/from/env.json")
    assert state_file("/from/option.json", configured) == Path("/from/option.json")
