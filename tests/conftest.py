"""Shared test fixtures.

Interop and kernel tests need root, network namespaces and real daemons. Outside CI a missing
prerequisite skips them with the reason; with CI=true it fails them (never a silent skip):
`unavailable()` and `require_binary()` live in tests/prerequisites.py (re-exported here).

Parallel runs (pytest-xdist, as scripts/test does): every test makes its own namespaces
(random suffix), work directories (`tmp_path`, `tempfile.mkdtemp`) and ports (bound to port 0),
so tests can run side by side; a test that cannot (timing-sensitive, or a resource of the whole
host) is marked `serial` and scripts/test runs it alone afterwards.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bgplb.lab.netns import Topology, can_use_netns
from prerequisites import IN_CI, require_binary, unavailable

__all__ = ["IN_CI", "require_binary", "topo", "unavailable"]

# The longest test modules (`--durations`): in a parallel run they start first, so that the run
# does not end with one worker busy with one of them while the others are idle.
LONG_FIRST = (
    "tests/interop/test_router_restart.py",
    "tests/interop/test_routers_doc.py",
    "tests/interop/test_router_interop.py",
    "tests/interop/test_router_pinning.py",
    "tests/interop/test_router_fastpath.py",
    "tests/interop/test_router_hardening.py",
    "tests/interop/test_router_hardening_bgp.py",
    "tests/interop/test_router_speakers.py",
)


def _neighbour_tables() -> list[str]:
    """The host's neighbour tables that are more than half full. They are shared by every
    namespace (gc_thresh3 counts all entries): once one is full, a new neighbour in any
    namespace fails and `ping`/`connect` get ENOBUFS ("No buffer space available")."""
    out = []
    for stat, family in (("arp_cache", "ipv4"), ("ndisc_cache", "ipv6")):
        try:
            entries = int(Path(f"/proc/net/stat/{stat}").read_text().split()[13], 16)
            limit = int(Path(f"/proc/sys/net/{family}/neigh/default/gc_thresh3").read_text())
        except (OSError, ValueError, IndexError):
            continue
        if entries > limit // 2:
            out.append(f"{stat} {entries} of {limit} (net.{family}.neigh.default.gc_thresh3)")
    return out


def pytest_report_header(config: pytest.Config) -> list[str]:
    full = _neighbour_tables()
    if not full:
        return []
    return [
        "WARNING: the host's neighbour table is nearly full: " + ", ".join(full),
        "  (shared by all namespaces: something else on this host holds that many neighbours;",
        "  namespace tests will fail with 'No buffer space available' while it lasts)",
    ]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not hasattr(config, "workerinput"):  # not an xdist worker: keep the file order
        return
    rank = {path: i for i, path in enumerate(LONG_FIRST)}
    # stable: the same order in every worker, as xdist requires
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))


@pytest.fixture
def topo():
    """A fresh Topology that is always removed, whatever the test did."""
    reason = can_use_netns()
    if reason:
        unavailable(reason)
    t = Topology(prefix="t")
    try:
        yield t
    finally:
        t.close()
