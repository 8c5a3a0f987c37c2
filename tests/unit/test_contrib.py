"""contrib/: the systemd units, the sysctl file, the Grafana dashboard and the alert rules
stay in step with the code.

Every ExecStart/ExecStartPre of the units must parse with the real `bgplb` argument parser and
reach the handler it is meant for, the directories the units create must be the ones the config
defaults use, the capabilities must cover the ports the defaults bind, and the sysctl file must
name keys the kernel has. `systemd-analyze verify` (when installed) rejects unknown directives.
Every metric and label the dashboard and the alerts use must be one the daemons' registries
expose (built in-process, as the daemons build them), and docs/metrics.md must list them all.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml

from bgplb.agent.metrics import AgentMetrics
from bgplb.cli import build_parser
from bgplb.cli_agent import DEFAULT_STATE, cmd_agent, cmd_config_check
from bgplb.cli_router import run_router_command
from bgplb.config import load_router_config
from bgplb.config.agent import ControlConfig
from bgplb.config.router import RouterBgp, RouterControlConfig
from bgplb.control.metrics import BfdCollector, Family, MetricsServer, SnapshotCollector
from bgplb.control.router_status import metric_families
from bgplb.io.loopwatch import LoopWatch
from bgplb.linux.memfib import MemoryFib, MemoryKernel
from bgplb.router.daemon import Router
from contrib_queries import (
    ALERTS,
    GRAFANA,
    PROMETHEUS_SERIES,
    TARGET_LABELS,
    alert_queries,
    dashboard_queries,
    selectors,
    usage_problems,
)
from prerequisites import require_binary

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "contrib" / "systemd"
SYSCTL = ROOT / "contrib" / "sysctl.d" / "90-bgplb-router.conf"
UNITS = {"agent": SYSTEMD / "bgplb-agent.service", "router": SYSTEMD / "bgplb-router.service"}
HANDLER = {"agent": cmd_agent, "router": run_router_command}


def parse_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """A systemd unit as {section: [(key, value), ...]}: keys may repeat (ExecStartPre=, an
    empty assignment resets a list), a trailing backslash continues the line (systemd.syntax)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    pending = ""
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = pending + raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"{path.name}:{number}: assignment outside a section"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}:{number}: not KEY=VALUE: {line!r}"
        current.append((key.strip(), value.strip()))
    return sections


def values(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    out: list[str] = []
    for k, v in unit.get(section, []):
        if k == key:
            out = [] if v == "" else [*out, v]
    return out


def one(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> str:
    found = values(unit, section, key)
    assert len(found) == 1, f"[{section}] {key}: {found}"
    return found[0]


def command_line(value: str) -> list[str]:
    """The argv of an Exec*= value, without systemd's prefixes (-, @, +, !, :)."""
    return shlex.split(value.lstrip("-@+!:"))


def parse_bgplb(argv: list[str], capsys: pytest.CaptureFixture[str]) -> object:
    """argv[1:] through the real parser: an unknown subcommand or option fails the test with
    argparse's own message."""
    assert Path(argv[0]).name == "bgplb", argv
    try:
        return build_parser().parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"`{shlex.join(argv)}` is refused by bgplb: {capsys.readouterr().err}")


@pytest.fixture(params=sorted(UNITS))
def role(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_units_have_the_sections_and_notify(role: str) -> None:
    unit = parse_unit(UNITS[role])
    assert {"Unit", "Service", "Install"} <= set(unit)
    assert one(unit, "Service", "Type") == "notify"
    assert one(unit, "Service", "NotifyAccess") == "main"
    assert one(unit, "Install", "WantedBy") == "multi-user.target"
    # both daemons reload their config on SIGHUP
    assert command_line(one(unit, "Service", "ExecReload")) == ["/bin/kill", "-HUP", "$MAINPID"]


def test_exec_start_is_a_real_command(role: str, capsys: pytest.CaptureFixture[str]) -> None:
    unit = parse_unit(UNITS[role])
    argv = command_line(one(unit, "Service", "ExecStart"))
    args = parse_bgplb(argv, capsys)
    assert getattr(args, "func", None) is HANDLER[role], argv
    assert args.command == role
    # the config file checked before the start is the one started with
    pre = [command_line(v) for v in values(unit, "Service", "ExecStartPre")]
    checks = [p for p in pre if getattr(parse_bgplb(p, capsys), "func", None) is cmd_config_check]
    assert [p[-1] for p in checks] == [args.config], pre
    assert args.config == f"/etc/bgplb/{role}.toml"


def test_exec_start_options_are_in_the_help(role: str) -> None:
    """The same through the installed entry point, as systemd would run it."""
    argv = command_line(one(parse_unit(UNITS[role]), "Service", "ExecStart"))
    shown = subprocess.run(
        [sys.executable, "-m", "bgplb.cli", argv[1], "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    for word in argv[2:]:
        if word.startswith("-"):
            assert word in shown, f"{word} not in `bgplb {argv[1]} --help`"


def test_directories_match_the_config_defaults(role: str) -> None:
    unit = parse_unit(UNITS[role])
    socket = (ControlConfig() if role == "agent" else RouterControlConfig()).socket
    assert socket.parent == Path("/run") / one(unit, "Service", "RuntimeDirectory")
    # kept across restarts: the agent's VIP bookkeeping, the router's rp_filter state
    assert one(unit, "Service", "RuntimeDirectoryPreserve") == "yes"
    if role == "agent":
        args = build_parser().parse_args(command_line(one(unit, "Service", "ExecStart"))[1:])
        assert Path(args.state_file) == DEFAULT_STATE
        assert DEFAULT_STATE.parent == Path("/var/lib") / one(unit, "Service", "StateDirectory")


def test_capabilities_cover_what_the_daemon_binds(role: str) -> None:
    unit = parse_unit(UNITS[role])
    ambient = set(one(unit, "Service", "AmbientCapabilities").split())
    bounding = set(one(unit, "Service", "CapabilityBoundingSet").split())
    assert ambient == bounding
    assert "CAP_NET_ADMIN" in ambient  # routes, VIPs on lo, nftables, SO_RCVBUFFORCE
    if role == "router":
        ports = {address.port for address in RouterBgp(asn=65530).listen}
        assert min(ports) < 1024 and "CAP_NET_BIND_SERVICE" in ambient
    # a root service without a bounding set would keep every capability
    assert "CAP_SYS_ADMIN" not in bounding
    assert one(unit, "Service", "NoNewPrivileges") == "yes"
    assert one(unit, "Service", "ProtectSystem") == "strict"


def _sends_ready(package: str) -> bool:
    return any("READY=1" in p.read_text() for p in (ROOT / "src/bgplb" / package).rglob("*.py"))


def test_agent_sends_ready_for_type_notify() -> None:
    assert _sends_ready("agent")


def test_router_sends_ready_for_type_notify() -> None:
    assert _sends_ready("router")


def test_systemd_analyze_verify_knows_every_directive(role: str, tmp_path: Path) -> None:
    analyze = require_binary("systemd-analyze")
    # verify also wants the executables to exist: point them at this interpreter's bgplb
    bgplb = require_binary(str(Path(sys.executable).parent / "bgplb"))
    unit = tmp_path / UNITS[role].name
    unit.write_text(UNITS[role].read_text().replace("/usr/local/bin/bgplb", bgplb))
    proc = subprocess.run(
        [analyze, "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    complaints = [
        line
        for line in (proc.stdout + proc.stderr).splitlines()
        if unit.name in line and "network-online.target" not in line
    ]
    assert proc.returncode == 0 and not complaints, proc.stdout + proc.stderr


def sysctls(path: Path) -> dict[str, str]:
    """Active assignments of a sysctl.d file (a leading "-" only hides errors)."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and line[0] not in "#;":
            key, sep, value = line.partition("=")
            assert sep, line
            out[key.strip().lstrip("-")] = value.strip()
    return out


def test_router_sysctls_forward_and_hash_on_ports() -> None:
    found = sysctls(SYSCTL)
    assert found == {
        "net.ipv4.ip_forward": "1",
        "net.ipv6.conf.all.forwarding": "1",
        "net.ipv4.fib_multipath_hash_policy": "1",
        "net.ipv6.fib_multipath_hash_policy": "1",
    }
    proc = Path("/proc/sys")
    if not (proc / "net/ipv4").is_dir():
        pytest.skip("no /proc/sys/net here")
    for key in found:
        assert (proc / key.replace(".", "/")).exists(), f"{key}: no such sysctl"


def test_the_router_unit_points_at_the_sysctl_file() -> None:
    assert SYSCTL.name in UNITS["router"].read_text()


# -- dashboards and alerts: every metric they use is one the daemons register ----------------


def _filled(families: list[Family]) -> list[Family]:
    """The families with one sample each, so that collect() shows every sample name and label."""
    return [
        (kind, name, doc, labels, samples or [(("x",) * len(labels), 0.0)])
        for kind, name, doc, labels, samples in families
    ]


def _bfd_row() -> list[tuple[str, dict[str, Any]]]:
    status = {"state_code": 3, "downs": 0, "tx_interval_ms": 100, "detection_time_ms": 300}
    return [("192.0.2.1", {**status, "local_diag_code": 0})]


def registered_series() -> dict[str, set[str]]:
    """{sample name: its labels} as the daemons' registries expose them: the agent's
    AgentMetrics and BFD collector, the router's metric families and BFD collector."""
    agent = MetricsServer()
    metrics = AgentMetrics(agent)
    for metric in vars(metrics).values():  # a child per metric: labelled families show samples
        metric.labels(*["x"] * len(metric._labelnames))
    BfdCollector(agent, "agent", _bfd_row)

    router = Router(load_router_config(ROOT / "examples" / "router.toml"))
    router.loop_watch = LoopWatch(period=0.05)
    router.fib = MemoryFib(MemoryKernel())  # the FIB's counters are exported when it is open
    server = MetricsServer()
    BfdCollector(server, "router", _bfd_row)
    SnapshotCollector(server).set(_filled(metric_families(router)))

    series: dict[str, set[str]] = dict(PROMETHEUS_SERIES)
    for registry in (agent.registry, server.registry):
        for family in registry.collect():
            for sample in family.samples:
                series.setdefault(sample.name, set()).update(sample.labels, TARGET_LABELS)
    return series


def test_registered_series_cover_both_daemons() -> None:
    """The helper above sees the metrics at all (guards the tests below against vacuity)."""
    series = registered_series()
    assert "bgplb_agent_announcements_total" in series
    assert "bgplb_agent_check_duration_seconds_bucket" in series
    assert {"service", "check", "le"} <= series["bgplb_agent_check_duration_seconds_bucket"]
    assert "bgplb_router_fib_errors_total" in series
    assert "task" in series["bgplb_router_internal_errors_total"]
    assert "bgplb_router_bfd_state" in series and "bgplb_agent_bfd_downs_total" in series
    assert "bgplb_router_loop_lateness_seconds" in series
    assert (
        "bgplb_router_fib_retries_total" in series and "bgplb_router_gc_pause_max_seconds" in series
    )


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_every_metric_and_label_used_exists(source: str) -> None:
    series = registered_series()
    queries = dashboard_queries() if source == "dashboard" else alert_queries()
    assert len(queries) > 10
    problems = usage_problems(series, queries, alerts=source == "alerts")
    assert not problems, "\n".join(problems)


def test_dashboard_and_alerts_cover_the_essentials() -> None:
    used = {name for _, expr, _ in dashboard_queries() for name, _ in selectors(expr)[0]}
    for name in (
        "bgplb_agent_peer_up",
        "bgplb_agent_service_announced",
        "bgplb_agent_announcements_total",
        "bgplb_agent_check_duration_seconds_bucket",
        "bgplb_agent_bfd_state",
        "bgplb_router_peer_established",
        "bgplb_router_vips_installed",
        "bgplb_router_paths",
        "bgplb_router_fib_errors_total",
        "bgplb_router_internal_errors_total",
        "bgplb_router_loop_lateness_seconds",
    ):
        assert name in used, f"the dashboard does not show {name}"
    alerts = {where.split()[1] for where, _, _ in alert_queries()}
    assert {
        "BgplbAgentSessionDown",
        "BgplbServiceWithdrawn",
        "BgplbRouterFibErrors",
        "BgplbRouterInternalErrors",
        "BgplbAgentBfdFlapping",
        "BgplbRouterMaxPrefixHit",
    } <= alerts


def test_dashboard_is_a_grafana_dashboard() -> None:
    board = json.loads(GRAFANA.read_text())
    assert board["uid"] == "bgplb" and board["schemaVersion"] >= 36
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for p in board["panels"]:
        assert {"h", "w", "x", "y"} <= set(p["gridPos"]) and p["gridPos"]["x"] + p["gridPos"][
            "w"
        ] <= 24
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
            assert [t["refId"] for t in p["targets"]] == [
                chr(65 + i) for i in range(len(p["targets"]))
            ]


def test_alert_rules_are_complete() -> None:
    rules = yaml.safe_load(ALERTS.read_text())
    names = [r["alert"] for g in rules["groups"] for r in g["rules"]]
    assert len(names) == len(set(names))
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
            assert rule["labels"]["severity"] in {"critical", "warning", "info"}
            assert rule["annotations"]["summary"]
            if "for" in rule:
                promql_parser.parse_duration(rule["for"])


def test_metrics_doc_lists_every_metric() -> None:
    doc = (ROOT / "docs" / "metrics.md").read_text()
    families = {
        re.sub(r"_(total|bucket|sum|count|created)$", "", name)
        for name in registered_series()
        if name.startswith("bgplb_")
    }
    missing = sorted(f for f in families if f"`{f}" not in doc)
    assert not missing, f"not in docs/metrics.md: {missing}"


def test_alert_rules_pass_promtool() -> None:
    """`promtool check rules` and the unit tests of bgplb-alerts.test.yml (each alert fires
    when it should, not before, with its labels and annotations). promtool: $PROMTOOL, else
    the one scripts/setup --test puts next to this interpreter, else PATH."""
    beside = Path(sys.executable).parent / "promtool"
    promtool = require_binary(
        os.environ.get("PROMTOOL") or (str(beside) if beside.exists() else "promtool")
    )
    for command in (["check", "rules", ALERTS.name], ["test", "rules", f"{ALERTS.stem}.test.yml"]):
        proc = subprocess.run(
            [promtool, *command], cwd=ALERTS.parent, capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_router_exports_refusal_reasons_before_the_first_refusal() -> None:
    """rate() misses a counter's first event when its series appears with it: the fixed
    reasons of bgplb_router_refused_connections_total are there at 0 from the start."""
    router = Router(load_router_config(ROOT / "examples" / "router.toml"))
    router.loop_watch = LoopWatch(period=0.05)
    router.fib = MemoryFib(MemoryKernel())
    families = {f[1]: f for f in metric_families(router)}
    samples = dict(families["router_refused_connections"][4])
    assert samples == {("gtsm",): 0.0, ("outside",): 0.0, ("rate",): 0.0}
