"""Fixtures for the interop tests: a two-namespace link and real BGP daemons that are always
stopped (by PID) when the test ends, whatever it did.

`two_hosts` links namespaces "left" (192.0.2.1, 2001:db8::1) and "right" (192.0.2.2,
2001:db8::2). `daemons` is a factory: `daemons(Bird, ns, asn=…, router_id=…)` checks the binary
with `require_binary` (skip locally, FAIL with CI=true) and gives each daemon its own workdir.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import pytest

import prerequisites
from bgplb.lab.netns import Namespace, Topology
from bgplb.lab.peers import Daemon
from prerequisites import require_binary

BINARIES: dict[str, tuple[str, ...]] = {
    "bird": ("bird", "birdc"),
    "frr": ("/usr/lib/frr/zebra", "/usr/lib/frr/bgpd", "vtysh"),
    "gobgp": ("gobgpd", "gobgp"),
    "exabgp": ("/usr/sbin/exabgp", "/usr/bin/python3"),
}

D = TypeVar("D", bound=Daemon)


@dataclass
class Host:
    ns: Namespace
    ipv4: str
    ipv6: str
    ifname: str


@pytest.fixture
def two_hosts(topo: Topology) -> tuple[Host, Host]:
    left = topo.add("left")
    right = topo.add("right")
    lif, rif = topo.link(
        left,
        right,
        ["192.0.2.1/24", "2001:db8::1/64"],
        ["192.0.2.2/24", "2001:db8::2/64"],
        "eth-right",
        "eth-left",
    )
    return Host(left, "192.0.2.1", "2001:db8::1", lif), Host(right, "192.0.2.2", "2001:db8::2", rif)


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    made: list[Daemon] = []

    def make(cls: type[D], ns: Namespace, asn: int, router_id: str, **kw: Any) -> D:
        for binary in BINARIES[cls.name]:
            require_binary(binary)
        d = cls(ns, tmp_path / f"{cls.name}-{len(made)}", asn, router_id, **kw)
        made.append(d)
        return d

    try:
        yield make
    finally:
        for d in reversed(made):
            d.stop()


def _load_root_conftest() -> ModuleType:
    """Compatibility for tests written when tests/conftest.py held `unavailable()`: the module
    that holds it now. New tests import from `prerequisites` directly."""
    return prerequisites
