"""docs/status.md ("Agent") documents the JSON of `bgplb status` field by field; this test
compares those tables with the dataclasses of bgplb.agent.status and with the document a running
agent's parts produce, so a field added, removed or renamed on one side only fails here. The
tables of `bgplb status` are rendered from that same document."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
from agent_fakes import FakeClock, FakeProbe, config, fake_peers
from rich.console import Console

from bgplb.agent import status as status_module
from bgplb.agent.checks import HealthChecks
from bgplb.agent.metrics import AgentMetrics
from bgplb.agent.reload import specs
from bgplb.agent.report import StatusReport
from bgplb.agent.runtime import CurrentConfig
from bgplb.agent.sessions import PeerSessions
from bgplb.agent.state import AgentState
from bgplb.control.agent_status import render
from bgplb.control.metrics import MetricsServer

pytestmark = pytest.mark.anyio

DOC = Path(__file__).resolve().parents[3] / "docs" / "status.md"


def documented() -> dict[str, list[str]]:
    """Class name -> field names, from the '### `Name`' tables under '## Agent'."""
    text = DOC.read_text()
    match = re.search(r"^## Agent\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, "docs/status.md has no '## Agent' section"
    out: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in match.group(1).splitlines():
        if heading := re.match(r"^### `(\w+)`", line):
            current = out.setdefault(heading.group(1), [])
        elif line.startswith("### "):
            current = None
        elif current is not None and (row := re.match(r"^\| `(\w+)` \|", line)):
            current.append(row.group(1))
    return out


def classes() -> dict[str, list[str]]:
    """Every dataclass of bgplb.agent.status -> its fields in document order (role first)."""
    out = {}
    for name, value in vars(status_module).items():
        if dataclasses.is_dataclass(value) and isinstance(value, type):
            fields = [f.name for f in dataclasses.fields(value)]
            if "role" in fields:  # to_json() puts it first
                fields.remove("role")
                fields.insert(0, "role")
            out[name] = fields
    return out


def test_every_status_class_and_field_is_documented_in_order() -> None:
    docs, code = documented(), classes()
    assert sorted(docs) == sorted(code), "documented objects differ from bgplb.agent.status"
    for name, fields in code.items():
        assert docs[name] == fields, f"{name}: docs/status.md {docs[name]} != code {fields}"


async def test_a_real_status_document_has_exactly_the_documented_keys(tmp_path: Path) -> None:
    path, cfg = config(tmp_path)
    clock = FakeClock()
    current = CurrentConfig(path, cfg)
    metrics = AgentMetrics(MetricsServer())
    state = AgentState()
    state.configure(specs(cfg), clock.now())
    peers, factory = fake_peers()
    sessions = PeerSessions(current, metrics, clock, peer_factory=factory)  # type: ignore[arg-type]
    sessions.router_id = cfg.bgp.router_id
    sessions.add(cfg.peers[0], start=False)
    peers[0].session.held_back = {  # type: ignore[assignment]
        "2001:db8::10/128": "no IPV6 next hop on this session"
    }
    checks = HealthChecks(state, metrics, clock, lambda: None, probe_factory=lambda c: FakeProbe())
    await checks.sync(cfg)
    checks.rebuild(cfg, "starting")
    document = StatusReport(current, state, sessions, checks, clock)().to_json()
    json.dumps(document)  # plain JSON types only
    docs = documented()

    def keys(obj: object) -> list[str]:
        assert isinstance(obj, dict)
        return list(obj)

    assert keys(document) == docs["AgentStatus"]
    peer = document["peers"][0]  # type: ignore[index]
    assert keys(peer) == docs["PeerStatus"]
    assert keys(peer["held_back"][0]) == docs["HeldBack"]
    service = document["services"][0]  # type: ignore[index]
    assert keys(service) == docs["ServiceStatus"]
    assert keys(service["vips"][0]) == docs["VipStatus"]
    assert keys(service["checks"][0]) == docs["CheckStatus"]
    # and `bgplb status` renders it
    console = Console(record=True, width=200)
    console.print(render(document))
    text = console.export_text()
    assert "192.0.2.1" in text and "198.51.100.10/32 (idle)" in text
    assert "not announced: 2001:db8::10/128: no IPV6 next hop on this session" in text


def test_the_example_in_the_doc_has_the_documented_keys() -> None:
    text = DOC.read_text()
    example = json.loads(re.search(r"```json\n(.*?)```", text, re.S).group(1))  # type: ignore[union-attr]
    docs = documented()
    assert list(example) == docs["AgentStatus"]
    assert list(example["peers"][0]) == docs["PeerStatus"]
    assert list(example["services"][0]) == docs["ServiceStatus"]
    assert list(example["services"][0]["vips"][0]) == docs["VipStatus"]
    assert list(example["services"][0]["checks"][0]) == docs["CheckStatus"]
