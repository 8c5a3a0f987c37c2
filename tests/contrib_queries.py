"""The PromQL of contrib/: every query of the Grafana dashboard and of the Prometheus alert
rules, the metrics and labels each one uses, and the check that a set of exposed series has
them all.

Shared by tests/unit/test_contrib.py (series from the daemons' registries built in-process)
and tests/interop/test_metrics_live.py (series scraped from running daemons).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

GRAFANA = ROOT / "contrib" / "grafana" / "bgplb.json"
ALERTS = ROOT / "contrib" / "prometheus" / "bgplb-alerts.yml"
#: labels Prometheus adds to every scraped series, and its own series
TARGET_LABELS = {"job", "instance"}
PROMETHEUS_SERIES = {"up": TARGET_LABELS}
#: Grafana's interval variables, replaced by a duration before parsing
GRAFANA_INTERVALS = re.compile(r"\$__(rate_interval|interval|range)\b")


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(where, PromQL, legend) of every panel target and every query variable."""
    board = json.loads(GRAFANA.read_text())
    out: list[tuple[str, str, str]] = []

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for item in items:
            yield item
            yield from panels(item.get("panels", []))

    for p in panels(board["panels"]):
        for t in p.get("targets", []):
            out.append((f"panel {p['title']!r} {t['refId']}", t["expr"], t.get("legendFormat", "")))
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            inner = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
            assert inner, f"variable {var['name']}: {query}"
            out.append((f"variable {var['name']}", inner[1], "{{" + inner[2] + "}}"))
    return out


def alert_queries() -> list[tuple[str, str, str]]:
    rules = yaml.safe_load(ALERTS.read_text())
    out = []
    for group in rules["groups"]:
        for rule in group["rules"]:
            text = " ".join(str(v) for v in rule.get("annotations", {}).values())
            labels = " ".join(re.findall(r"\$labels\.(\w+)", text))
            out.append((f"alert {rule['alert']}", rule["expr"], labels))
    return out


def selectors(expr: str) -> tuple[list[tuple[str, set[str]]], set[str]]:
    """The (metric, matcher labels) of every vector selector of a PromQL expression, and the
    labels of its `by (...)` clauses; a syntax error fails with the parser's message."""
    try:
        ast = promql_parser.parse(GRAFANA_INTERVALS.sub("5m", expr))
    except Exception as exc:  # the parser raises its own error types
        pytest.fail(f"{expr!r}: {exc}")
    found: list[tuple[str, set[str]]] = []
    grouping: set[str] = set()

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            found.append((node.name, {m.name for m in node.matchers.matchers}))
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            grouping.update(node.modifier.labels)
        return True

    promql_parser.walk(ast, visit)
    return found, grouping


def usage_problems(
    series: dict[str, set[str]], queries: list[tuple[str, str, str]], *, alerts: bool
) -> list[str]:
    """What `queries` use that `series` ({sample name: its labels}) lacks: a metric, a label in
    a matcher, a `by (...)` label, a label of the legend (dashboard: `{{label}}`; alerts: the
    `$labels.x` of the annotations)."""
    problems = []
    for where, expr, legend in queries:
        used, grouping = selectors(expr)
        if not used:
            problems.append(f"{where}: no metric in {expr!r}")
        known: set[str] = set()
        for name, labels in used:
            if name not in series:
                problems.append(f"{where}: {name} is not a metric of bgplb")
                continue
            known |= series[name]
            if labels - series[name] - {"__name__"}:
                problems.append(f"{where}: {name} has no label {labels - series[name]}")
        for label in (
            grouping
            | set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend))
            | set(legend.split() if alerts else ())
        ):
            if known and label not in known:
                problems.append(f"{where}: label {label!r} is on none of {[n for n, _ in used]}")
    return problems


def used_metrics() -> set[str]:
    """Every metric name the dashboard and the alerts select."""
    return {
        name
        for _, expr, _ in dashboard_queries() + alert_queries()
        for name, _ in selectors(expr)[0]
    }
