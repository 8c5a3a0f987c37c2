"""`bgplb config check` and `bgplb agent` on bad configs, status rendering, the state file and
sd_notify — no namespaces needed."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from bgplb.agent import statefile
from bgplb.agent.daemon import sd_notify
from bgplb.agent.peers import attributes
from bgplb.agent.state import ServiceSpec
from bgplb.bgp.attributes import GRACEFUL_SHUTDOWN, AsPathSegment, AsPathSegmentType
from bgplb.cli_agent import main
from bgplb.control.agent_status import render

GOOD = """
[bgp]
asn = 65000
router_id = "192.0.2.11"
[[peers]]
address = "192.0.2.1"
asn = 65530
[[services]]
name = "web"
vips = ["198.51.100.10/32"]
[[services.checks]]
type = "tcp"
port = 80
"""

BAD = {
    "unknown key": (
        GOOD.replace('name = "web"', 'name = "web"\ncolour = "red"'),
        "services[0].colour",
    ),
    "vip in two services": (
        GOOD + '[[services]]\nname = "api"\nvips = ["198.51.100.10/32"]\n',
        "services[1].vips[0]",
    ),
    "hold time 1": (GOOD.replace("asn = 65000", "asn = 65000\nhold_time = 1"), "bgp.hold_time"),
    "hold time 2": (GOOD.replace("asn = 65000", "asn = 65000\nhold_time = 2"), "bgp.hold_time"),
    "bad address": (GOOD.replace('"192.0.2.1"', '"192.0.2.300"'), "peers[0].address"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_config_check_names_file_and_key(case, tmp_path, capsys):
    text, key = BAD[case]
    path = tmp_path / "agent.toml"
    path.write_text(text)
    assert main(["config", "check", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}: {key}" in err, err
    assert "Traceback" not in err


def test_config_check_unreadable_file(tmp_path, capsys):
    path = tmp_path / "missing.toml"
    assert main(["config", "check", str(path)]) == 1
    assert str(path) in capsys.readouterr().err


def test_config_check_ok(tmp_path, capsys):
    path = tmp_path / "agent.toml"
    path.write_text(GOOD)
    assert main(["config", "check", str(path)]) == 0
    assert "OK" in capsys.readouterr().out


def test_agent_refuses_to_start_on_bad_config(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text(BAD["hold time 1"][0])
    proc = subprocess.run(
        [sys.executable, "-m", "bgplb.cli_agent", "agent", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert f"{path}: bgp.hold_time" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_status_without_daemon_is_a_clear_error(tmp_path, capsys):
    assert main(["status", "--socket", str(tmp_path / "none.sock")]) == 1
    assert "is the daemon running" in capsys.readouterr().err


def test_status_tables_render():
    status = {
        "role": "agent",
        "asn": 65000,
        "router_id": "192.0.2.11",
        "uptime": 75.0,
        "peers": [
            {
                "name": "192.0.2.1",
                "address": "192.0.2.1",
                "asn": 65530,
                "state": "Established",
                "uptime": 70.0,
                "routes_sent": 1,
                "updates_sent": 2,
                "last_error": None,
            }
        ],
        "services": [
            {
                "name": "web",
                "healthy": False,
                "status": "draining",
                "drained": True,
                "reason": "drain requested",
                "vips": [
                    {"vip": "198.51.100.10/32", "phase": "draining", "lingering": None},
                    {"vip": "198.51.100.11/32", "phase": "idle", "lingering": 42.3},
                ],
                "checks": [
                    {
                        "check": "tcp 127.0.0.1:80",
                        "state": "down",
                        "suppressed": True,
                        "last_ok": False,
                        "latency_ms": 0.4,
                        "output": "ConnectionRefusedError",
                        "probes": 9,
                    }
                ],
            }
        ],
    }
    console = Console(record=True, width=200)
    console.print(render(status))
    text = console.export_text()
    for expected in ("192.0.2.1", "Established", "198.51.100.10/32 (draining)", "(damped)",
                     "198.51.100.11/32 (withdrawn, lingering on lo 42s more)",
                     "ConnectionRefusedError", "75s"):  # fmt: skip
        assert expected in text


def test_status_fits_80_columns_without_cutting_addresses_or_states():
    peer = {
        "name": "p",
        "asn": 65530,
        "state": "OpenConfirm",
        "uptime": 70.0,
        "routes_sent": 1,
        "updates_sent": 2,
        "bfd": {"state": "Up"},
    }
    status = {
        "asn": 65000,
        "router_id": "192.0.2.11",
        "uptime": 75.0,
        "peers": [
            dict(
                peer,
                address="2001:db8:ffff:ffff::1",
                last_error="NOTIFICATION received: "
                'Cease / Administrative Shutdown: "maintenance window of the rack"',
            ),
            dict(
                peer,
                address="192.0.2.250",
                last_error=None,
                held_back=[{"prefix": "2001:db8::10/128", "reason": "no IPv6 next hop"}],
            ),
        ],
        "services": [],
    }
    console = Console(record=True, width=80)
    console.print(render(status))
    lines = console.export_text().splitlines()
    assert max(len(line) for line in lines) <= 80
    rows = [line for line in lines if "OpenConfirm" in line]
    assert len(rows) == 2
    assert "2001:db8:ffff:ffff::1" in rows[0] and "192.0.2.250" in rows[1]
    text = "\n".join(lines)
    assert "2001:db8:ffff:ffff::1: last error: NOTIFICATION received" in text
    assert "192.0.2.250: not announced: 2001:db8::10/128: no IPv6 next hop" in text


def test_attributes_prepend_communities_and_graceful_shutdown():
    spec = ServiceSpec(
        "web",
        (),
        communities=(65000 << 16 | 100,),
        large_communities=((65000, 1, 2),),
        med=10,
        as_path_prepend=2,
    )
    plain = attributes(spec, 65000, False)
    drained = attributes(spec, 65000, True)
    assert plain.as_path == (AsPathSegment(AsPathSegmentType.AS_SEQUENCE, (65000, 65000)),)
    assert plain.med == 10 and GRACEFUL_SHUTDOWN not in plain.communities
    assert drained.communities == (65000 << 16 | 100, GRACEFUL_SHUTDOWN)
    assert str(drained.large_communities[0]) == "65000:1:2"


def test_state_file_round_trip_and_junk(tmp_path):
    path = tmp_path / "state.json"
    assert statefile.load(path) == statefile.SavedState()
    saved = statefile.SavedState({"web"}, {"198.51.100.10/32"}, False, 1000.0)
    statefile.save(path, saved)
    assert statefile.load(path) == saved
    assert saved.keeps_routes(15, now=1010.0) and not saved.keeps_routes(15, now=1020.0)
    path.write_text("{not json")
    with pytest.raises(statefile.StateFileError):
        statefile.load(path)


def test_sd_notify_sends_a_datagram(tmp_path, monkeypatch):
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        sd_notify("READY=1")
        assert sock.recv(100) == b"READY=1"


def test_sd_notify_without_systemd_is_a_no_op(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    sd_notify("READY=1")


def test_unit_file_is_type_notify():
    unit = Path(__file__).resolve().parents[3] / "contrib" / "systemd" / "bgplb-agent.service"
    text = unit.read_text()
    assert "Type=notify" in text and "ExecReload=/bin/kill -HUP $MAINPID" in text
