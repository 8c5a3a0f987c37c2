import pytest

from bgplb.lab.netns import can_use_netns, run


def test_topology_link_and_ping(topo):
    left = topo.add("left")
    right = topo.add("right")
    topo.link(left, right, ["192.0.2.1/30"], ["192.0.2.2/30"])
    left.exec("ping", "-c", "1", "-W", "2", "192.0.2.2")
    names = {ns.name for ns in topo.namespaces.values()}
    topo.close()
    listed = run(["ip", "netns", "list"])
    assert not any(n in listed for n in names)


def test_probe_reports_reason_or_none():
    reason = can_use_netns()
    assert reason is None or "namespace" in reason or "root" in reason
    if reason:
        pytest.skip(reason)


def test_drop_all_traffic_blocks_and_allow_restores(topo):
    from bgplb.lab.netns import NetnsError

    left = topo.add("left")
    right = topo.add("right")
    topo.link(left, right, ["192.0.2.1/30"], ["192.0.2.2/30"])
    right.drop_all_traffic()
    with pytest.raises(NetnsError):
        left.exec("ping", "-c", "1", "-W", "1", "192.0.2.2")
    right.allow_all_traffic()
    left.exec("ping", "-c", "1", "-W", "2", "192.0.2.2")
