"""Dependencies: compatible ranges in pyproject.toml, the tested exact set in constraints.txt.

The package must not pin (`==` fights every other package of an environment); constraints.txt
must pin every package bgplb and its test extra pull in, inside the declared ranges, and the
environment the tests run in must be that set (scripts/setup installs with -c constraints.txt).
"""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def declared() -> dict[str, list[Requirement]]:
    """{"runtime": [...], "<extra>": [...], "build-system": [...]}"""
    project = PROJECT["project"]
    out = {"runtime": [Requirement(r) for r in project["dependencies"]]}
    for extra, reqs in project["optional-dependencies"].items():
        out[extra] = [Requirement(r) for r in reqs]
    out["build-system"] = [Requirement(r) for r in PROJECT["build-system"]["requires"]]
    return out


def constraints() -> dict[str, str]:
    pins: dict[str, str] = {}
    for number, line in enumerate((ROOT / "constraints.txt").read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep and version and not Requirement(line).marker, f"line {number}: {line!r}"
        key = canonicalize_name(name)
        assert key not in pins, f"line {number}: {name} pinned twice"
        pins[key] = version
    return pins


@pytest.mark.parametrize("group", ["runtime", "test", "plot"])
def test_dependencies_are_ranges_not_pins(group: str) -> None:
    for req in declared()[group]:
        ops = {spec.operator for spec in req.specifier}
        assert not ops & {"==", "==="}, f"{req}: a pin; pins belong in constraints.txt"
        assert ">=" in ops and "<" in ops, f"{req}: needs a lower and an upper bound"


@pytest.mark.parametrize("group", ["runtime", "test", "plot", "build-system"])
def test_constraints_pin_every_declared_dependency_inside_its_range(group: str) -> None:
    pins = constraints()
    for req in declared()[group]:
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt has {req.name}=={pins[name]}, outside {req.specifier}"
        )


def _closure(roots: list[Requirement]) -> dict[str, str]:
    """{name: installed version} of the roots and everything they require, as installed."""
    seen: dict[str, str] = {}
    todo = [(r, "") for r in roots]
    while todo:
        req, extra = todo.pop()
        if req.marker and not req.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        seen[name] = metadata.version(req.name)
        for text in metadata.requires(req.name) or []:
            child = Requirement(text)
            for wanted in req.extras or {""}:
                todo.append((child, wanted))
    return seen


def test_the_test_environment_is_the_constrained_set() -> None:
    """Everything bgplb and its test extra pull in is pinned, and installed at that pin."""
    pins = constraints()
    installed = _closure(declared()["runtime"] + declared()["test"])
    assert len(installed) > 20
    missing = sorted(n for n in installed if n not in pins)
    assert not missing, f"not in constraints.txt: {missing}"
    drift = {n: (v, pins[n]) for n, v in installed.items() if v != pins[n]}
    assert not drift, f"installed != constraints.txt (run scripts/setup): {drift}"


def test_setup_installs_with_the_constraints() -> None:
    setup = (ROOT / "scripts" / "setup").read_text()
    assert "-c constraints.txt" in setup
