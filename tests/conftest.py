"""Shared test fixtures.

Interop and kernel tests need root, network namespaces and real daemons. Outside CI a missing
prerequisite skips them with the reason; with CI=true it fails them (never a silent skip).
"""

from __future__ import annotations

import os
import shutil

import pytest

from bgplb.lab.netns import Topology, can_use_netns

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str) -> None:
    """Skip outside CI, fail in CI."""
    if IN_CI:
        pytest.fail(f"CI=true and a prerequisite is missing: {reason}", pytrace=False)
    pytest.skip(reason)


def require_binary(path_or_name: str) -> str:
    found = shutil.which(path_or_name) if "/" not in path_or_name else path_or_name
    if not found or not os.access(found, os.X_OK):
        unavailable(f"{path_or_name} is not installed")
    assert found is not None
    return found


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
