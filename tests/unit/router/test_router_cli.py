"""`bgplb router` / `bgplb status` argument parsing and the router status rendering."""

from __future__ import annotations

import io

from rich.console import Console

from bgplb.cli import build_parser, main
from bgplb.cli_router import render_status

STATUS = {
    "role": "router",
    "asn": 65530,
    "router_id": "192.0.2.1",
    "uptime": 3.0,
    "fib": {"install": True, "group": "resilient", "buckets": 64, "table": 254},
    "peers": [
        {
            "address": "192.0.2.10",
            "asn": 65001,
            "state": "Established",
            "established": True,
            "prefixes": 1,
            "stale": 0,
            "filtered": 2,
            "uptime": 75.0,
            "last_error": None,
        },
        {
            "address": "192.0.2.18",
            "asn": 65002,
            "state": "restarting",
            "established": False,
            "prefixes": 1,
            "stale": 1,
            "filtered": 0,
            "uptime": None,
            "last_error": None,
        },
    ],
    "vips": [
        {
            "vip": "198.51.100.10/32",
            "nexthops": [
                {
                    "address": "192.0.2.10",
                    "weight": 64,
                    "draining": False,
                    "stale": False,
                    "buckets": 63,
                    "share": 0.984,
                },
                {
                    "address": "192.0.2.18",
                    "weight": 1,
                    "draining": True,
                    "stale": True,
                    "buckets": 1,
                    "share": 0.016,
                },
            ],
        },
    ],
}


def test_router_and_status_commands_parse() -> None:
    args = build_parser().parse_args(["router", "-c", "/etc/bgplb/router.toml"])
    assert args.config == "/etc/bgplb/router.toml" and callable(args.func)
    args = build_parser().parse_args(["status", "--json", "--role", "router"])
    assert args.json and args.role == "router"


def test_router_with_missing_config_is_one_line_error(tmp_path, capsys) -> None:
    assert main(["router", "-c", str(tmp_path / "missing.toml")]) == 2
    err = capsys.readouterr().err
    assert "missing.toml" in err and "Traceback" not in err


def test_status_without_daemon_fails_cleanly(tmp_path, capsys) -> None:
    assert main(["status", "--socket", str(tmp_path / "none.sock")]) == 1
    assert "no such socket" in capsys.readouterr().err


def test_render_status_shows_peers_and_nexthops() -> None:
    out = io.StringIO()
    render_status(STATUS, Console(file=out, width=120))
    text = out.getvalue()
    for needle in (
        "192.0.2.10",
        "65001",
        "restarting (1 stale)",
        "198.51.100.10/32",
        "draining",
        "98.4%",
        "1m15s",
    ):
        assert needle in text, needle


def test_render_status_shows_the_consistent_table_of_a_vip() -> None:
    import copy

    status = copy.deepcopy(STATUS)
    status["vips"][0]["consistent"] = {
        "size": 4093,
        "seed": 0x62676C62,
        "fingerprint": "bae986ae937c032b658027f94d0f39f7",
        "shares": {"192.0.2.10": 0.5, "192.0.2.11": 0.5},
    }
    out = io.StringIO()
    render_status(status, Console(file=out, width=200))
    text = out.getvalue()
    assert "table 4093 seed 0x62676c62 fingerprint bae986ae937c032b658027f94d0f39f7" in text
    assert "192.0.2.10 50.0%" in text
