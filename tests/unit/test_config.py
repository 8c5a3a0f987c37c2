"""Config loading: valid examples, every bad-config case named by file and key path."""

from __future__ import annotations

import ipaddress
import os
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bgplb.config import (
    AgentConfig,
    ConfigError,
    ExecCheck,
    HttpCheck,
    ListenCheck,
    ProcessCheck,
    RouterConfig,
    SystemdCheck,
    config_check,
    detect_role,
    load_agent_config,
    load_config,
    load_router_config,
    parse_community,
    parse_duration,
    parse_large_community,
)
from bgplb.config.types import parse_prefix_filter

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

MINIMAL_AGENT = """
[bgp]
asn = 65000

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

MINIMAL_ROUTER = """
[bgp]
asn = 65530

[[peer_ranges]]
prefix = "192.0.2.0/24"
asn = "any"
accept = ["198.51.100.0/24 le 32"]
"""


def write(tmp_path: Path, text: str, name: str = "agent.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def errors_of(path: Path, role: str = "agent") -> list[str]:
    loader = load_agent_config if role == "agent" else load_router_config
    with pytest.raises(ConfigError) as info:
        loader(path)
    lines = str(info.value).splitlines()
    assert len(lines) == len(info.value.issues)
    for line in lines:
        assert line.startswith(f"{path}: "), line
    return lines


# -- valid configs -----------------------------------------------------------------------------


def test_example_agent_config_loads():
    config = load_agent_config(EXAMPLES / "agent.toml")
    assert isinstance(config, AgentConfig)
    assert config.bgp.asn == 65000
    assert config.bgp.router_id == ipaddress.IPv4Address("192.0.2.11")
    assert config.peers[0].bfd is not None and config.peers[0].bfd.interval_ms == 100
    web = config.services[0]
    assert web.vips == [
        ipaddress.ip_network("198.51.100.10/32"),
        ipaddress.ip_network("2001:db8:100::10/128"),
    ]
    assert web.communities == [65000 << 16 | 100, 0xFFFFFF01]
    assert web.large_communities == [(65000, 1, 2)]
    assert web.drain_time == 10.0
    http = web.checks[0]
    assert isinstance(http, HttpCheck)
    assert (http.interval, http.timeout, http.rise, http.fall) == (1.0, 0.5, 2, 2)
    assert http.verify_tls is True
    exec_check = web.checks[1]
    assert isinstance(exec_check, ExecCheck)
    assert exec_check.command == ["/usr/bin/pgrep", "-x", "nginx"]
    assert config.services[1].checks[1].timeout == 0.25  # half the 500ms interval


def test_example_router_config_loads():
    config = load_router_config(EXAMPLES / "router.toml")
    assert isinstance(config, RouterConfig)
    assert [str(a) for a in config.bgp.listen] == ["0.0.0.0:179", "[::]:179"]
    first, second = config.peer_ranges
    assert first.asn == 65000 and second.asn == "any"
    assert first.accept[0].matches(ipaddress.ip_network("198.51.100.10/32"))
    assert not first.accept[0].matches(ipaddress.ip_network("203.0.113.10/32"))
    assert config.fib.group == "resilient" and config.fib.idle_timer == 10.0


def test_defaults(tmp_path):
    config = load_agent_config(write(tmp_path, MINIMAL_AGENT))
    assert config.bgp.hold_time == 9
    assert config.bgp.graceful_restart_time == 15
    peer = config.peers[0]
    assert (peer.port, peer.passive, peer.local_address, peer.bfd) == (179, False, None, None)
    check = config.services[0].checks[0]
    assert (check.interval, check.timeout, check.rise, check.fall) == (1.0, 0.5, 2, 2)
    assert config.services[0].manage_vip is True
    assert config.services[0].drain_vip_linger == 60.0  # bgplb router's drain_linger
    router = load_router_config(write(tmp_path, MINIMAL_ROUTER, "router.toml"))
    r = router.peer_ranges[0]
    assert any(f.matches(ipaddress.ip_network("198.51.100.7/32")) for f in r.accept)
    assert not any(f.matches(ipaddress.ip_network("203.0.113.7/32")) for f in r.accept)
    assert (r.max_prefixes, r.max_sessions, r.ttl_security) == (1000, 1024, False)
    assert (r.allow_third_party_next_hop, r.allow_default) == (False, False)
    assert (router.bgp.max_stale_time, router.bgp.open_timeout) == (120.0, 5.0)
    assert router.fib.startup_defer == 60.0


def test_router_range_without_accept_is_refused(tmp_path):
    text = MINIMAL_ROUTER.replace('accept = ["198.51.100.0/24 le 32"]\n', "")
    path = write(tmp_path, text, "router.toml")
    (line,) = errors_of(path, "router")
    assert line.startswith(f"{path}: peer_ranges[0].accept: ")
    assert "missing required key" in line


def test_exec_command_string_runs_in_sh(tmp_path):
    text = MINIMAL_AGENT.replace('type = "tcp"\nport = 80', 'type = "exec"\ncommand = "exit 0"')
    check = load_agent_config(write(tmp_path, text)).services[0].checks[0]
    assert isinstance(check, ExecCheck)
    assert check.command == ["/bin/sh", "-c", "exit 0"]


# -- every kind of bad config ---------------------------------------------------------------


def test_unknown_keys_at_every_level(tmp_path):
    text = MINIMAL_AGENT + "\n[colour]\nx = 1\n"
    text = text.replace("asn = 65000", "asn = 65000\nhold_tme = 9")
    text = text.replace("port = 80", "port = 80\nintervall = '1s'")
    lines = errors_of(write(tmp_path, text))
    assert any(": bgp.hold_tme: unknown key (did you mean 'hold_time'?)" in x for x in lines)
    assert any(
        ": services[0].checks[0].intervall: unknown key (did you mean 'interval'?)" in x
        for x in lines
    )
    assert any(": colour: unknown key" in x for x in lines)


def test_vip_in_two_services(tmp_path):
    text = MINIMAL_AGENT + '\n[[services]]\nname = "api"\nvips = ["198.51.100.10"]\n'
    (line,) = errors_of(write(tmp_path, text))
    assert ": services[1].vips[0]: duplicate VIP 198.51.100.10/32" in line
    assert "services[0].vips[0]" in line


@pytest.mark.parametrize("hold", [1, 2])
def test_hold_time_1_or_2(tmp_path, hold):
    text = MINIMAL_AGENT.replace("asn = 65000", f"asn = 65000\nhold_time = {hold}")
    (line,) = errors_of(write(tmp_path, text))
    assert f": bgp.hold_time: hold_time {hold} is not allowed" in line


@pytest.mark.parametrize("hold", [0, 3, 65535])
def test_hold_time_valid(tmp_path, hold):
    text = MINIMAL_AGENT.replace("asn = 65000", f"asn = 65000\nhold_time = {hold}")
    assert load_agent_config(write(tmp_path, text)).bgp.hold_time == hold


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ('address = "192.0.2.1"', 'address = "192.0.2.256"', "peers[0].address"),
        ('address = "192.0.2.1"', 'address = "fe80::zz"', "peers[0].address"),
        ('"198.51.100.10/32"', '"198.51.100.0/24"', "services[0].vips[0]"),
        ('"198.51.100.10/32"', '"198.51.100.10/33"', "services[0].vips[0]"),
        ('"198.51.100.10/32"', '"web.example"', "services[0].vips[0]"),
        ("asn = 65000", 'asn = 65000\nrouter_id = "2001:db8::1"', "bgp.router_id"),
        ("asn = 65000", 'asn = 65000\nrouter_id = "0.0.0.0"', "bgp.router_id"),
        ("asn = 65000", "asn = 0", "bgp.asn"),
        ("asn = 65000", "asn = 4294967296", "bgp.asn"),
        ("asn = 65530", 'asn = "x"', "peers[0].asn"),
        ("port = 80", "port = 70000", "services[0].checks[0].port"),
        ("port = 80", 'port = "80"', "services[0].checks[0].port"),
        ("port = 80", "port = 80\ninterval = 'fast'", "services[0].checks[0].interval"),
        ("port = 80", "port = 80\ntimeout = '-1s'", "services[0].checks[0].timeout"),
        ("port = 80", "port = 80\nrise = 0", "services[0].checks[0].rise"),
        ('type = "tcp"', 'type = "ping"', "services[0].checks[0].type"),
        ('name = "web"', 'name = "web"\ncommunities = ["65536:1"]', "services[0].communities[0]"),
        ('name = "web"', 'name = "web"\nmanage_vip = "yes"', "services[0].manage_vip"),
        ('name = "web"', 'name = "web"\ndrain_vip_linger = "-1s"', "services[0].drain_vip_linger"),
        (
            'name = "web"',
            'name = "web"\nlarge_communities = ["1:2"]',
            "services[0].large_communities[0]",
        ),
        ('name = "web"', 'name = "we b"', "services[0].name"),
        ("asn = 65530", 'asn = 65530\nlocal_address = "2001:db8::1"', "peers[0].local_address"),
        ("asn = 65530", "asn = 65530\nbfd = { interval_ms = 1 }", "peers[0].bfd.interval_ms"),
    ],
)
def test_bad_value_names_key(tmp_path, old, new, key):
    assert old in MINIMAL_AGENT
    path = write(tmp_path, MINIMAL_AGENT.replace(old, new, 1))
    lines = errors_of(path)
    assert any(line.startswith(f"{path}: {key}: ") for line in lines), lines


def test_timeout_longer_than_interval_is_accepted(tmp_path):
    """As Kubernetes probes, Envoy and HAProxy: probes of one check never overlap (the runner
    starts the next one at the later of its interval and the previous one's end)."""
    text = MINIMAL_AGENT.replace("port = 80", "port = 80\ninterval = '100ms'\ntimeout = '500ms'")
    check = load_agent_config(write(tmp_path, text)).services[0].checks[0]
    assert (check.interval, check.timeout) == (0.1, 0.5)


def _with_check(tmp_path: Path, body: str) -> Path:
    text = MINIMAL_AGENT.replace('type = "tcp"\nport = 80\n', textwrap.dedent(body))
    return write(tmp_path, text)


def test_event_checks_load_with_their_defaults(tmp_path):
    path = _with_check(
        tmp_path,
        """\
        type = "process"
        pidfile = "/run/nginx.pid"

        [[services.checks]]
        type = "listen"
        port = 80

        [[services.checks]]
        type = "listen"
        port = 53
        protocol = "UDP"
        address = "2001:db8::53"

        [[services.checks]]
        type = "systemd"
        unit = "nginx.service"
        """,
    )
    process, listen, udp, systemd = load_agent_config(path).services[0].checks
    assert isinstance(process, ProcessCheck)
    assert process.pidfile == Path("/run/nginx.pid")
    assert (process.interval, process.timeout, process.rise, process.fall) == (0.1, 0.05, 2, 1)
    assert process.describe() == "process /run/nginx.pid"
    assert isinstance(listen, ListenCheck)
    assert (listen.port, listen.address, listen.protocol, listen.interval) == (
        80,
        None,
        "tcp",
        0.1,
    )
    assert listen.describe() == "listen tcp port 80"
    assert isinstance(udp, ListenCheck) and udp.protocol == "udp"
    assert udp.describe() == "listen udp [2001:db8::53]:53"
    assert isinstance(systemd, SystemdCheck)
    assert (systemd.unit, systemd.bus, systemd.interval, systemd.fall) == (
        "nginx.service",
        "system",
        1.0,
        1,
    )
    assert systemd.describe() == "systemd nginx.service"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('type = "process"\n', "pidfile: missing required key"),
        (
            'type = "process"\npidfile = "nginx.pid"\n',
            "pidfile: pidfile must be an absolute path, got 'nginx.pid'",
        ),
        (
            'type = "process"\npidfile = "/run/x.pid"\nfall = 3\n',
            "fall: fall must be 1 for type process: a failure event is down at once",
        ),
        ('type = "listen"\n', "port: missing required key"),
        ('type = "listen"\nport = 70000\n', "port: 70000 is out of range 1..65535"),
        (
            'type = "listen"\nport = 80\nprotocol = "sctp"\n',
            "protocol: 'sctp' is not one of 'tcp' or 'udp'",
        ),
        ('type = "listen"\nport = 80\naddress = "nope"\n', "address: invalid IP address"),
        ('type = "listen"\nport = 80\npidfile = "/x"\n', "pidfile: unknown key"),
        ('type = "systemd"\n', "unit: missing required key"),
        ('type = "systemd"\nunit = "nginx"\n', "unit: invalid unit name 'nginx'"),
        (
            'type = "systemd"\nunit = "nginx.service"\nbus = "nope"\n',
            "bus: invalid bus 'nope'",
        ),
        (
            'type = "systemd"\nunit = "nginx.service"\nfall = 2\n',
            "fall: fall must be 1 for type systemd",
        ),
        (
            'type = "pidfd"\n',
            "type: unknown check type 'pidfd' (use http, https, tcp, exec, dns, process, "
            "listen, systemd)",
        ),
    ],
)
def test_event_check_errors_name_the_file_and_key(tmp_path, body, expected):
    path = _with_check(tmp_path, body)
    lines = errors_of(path)
    assert any(
        line.startswith(f"{path}: services[0].checks[0].") and expected in line for line in lines
    ), lines


def test_unix_bus_address_is_accepted(tmp_path):
    path = _with_check(
        tmp_path, 'type = "systemd"\nunit = "a@b.service"\nbus = "unix:path=/run/x/bus"\n'
    )
    check = load_agent_config(path).services[0].checks[0]
    assert isinstance(check, SystemdCheck)
    assert check.describe() == "systemd a@b.service on unix:path=/run/x/bus"


def test_duplicate_peer_address(tmp_path):
    text = MINIMAL_AGENT + '\n[[peers]]\naddress = "192.0.2.1"\nasn = 65531\n'
    (line,) = errors_of(write(tmp_path, text))
    assert ": peers[1].address: duplicate peer address 192.0.2.1" in line


def test_every_error_is_listed(tmp_path):
    text = """
        [bgp]
        asn = 65000
        hold_time = 1

        [[peers]]
        address = "192.0.2.999"
        asn = 65530

        [[services]]
        name = "web"
        vips = ["198.51.100.10/32"]

        [[services.checks]]
        type = "tcp"
        port = 80

        [[services.checks]]
        type = "http"
        url = "http://127.0.0.1/"
        interval = "fast"

        [[services]]
        name = "api"
        vips = ["198.51.100.10/32"]
    """
    path = write(tmp_path, text, "many.toml")
    lines = errors_of(path)
    keys = sorted(line.split(": ")[1] for line in lines)
    assert keys == [
        "bgp.hold_time",
        "peers[0].address",
        "services[0].checks[1].interval",
        "services[1].vips[0]",
    ]
    assert (
        f"{path}: services[0].checks[1].interval: invalid duration 'fast' "
        "(use e.g. 500ms, 1s, 2m)" in lines
    )


def test_missing_required_keys(tmp_path):
    lines = errors_of(write(tmp_path, "[bgp]\n"))
    assert any(": bgp.asn: missing required key" in x for x in lines)
    assert any(": peers: missing required key" in x for x in lines)


def test_unreadable_file(tmp_path):
    path = tmp_path / "nope.toml"
    (line,) = errors_of(path)
    assert line == f"{path}: cannot read: No such file or directory"
    if os.geteuid() != 0:  # root reads anything
        path.write_text(MINIMAL_AGENT)
        path.chmod(0)
        (line,) = errors_of(path)
        assert line == f"{path}: cannot read: Permission denied"


def test_directory_and_binary(tmp_path):
    (line,) = errors_of(tmp_path)
    assert line.startswith(f"{tmp_path}: cannot read: ")
    path = tmp_path / "bin.toml"
    path.write_bytes(b"\xff\xfe[bgp]")
    (line,) = errors_of(path)
    assert "not UTF-8" in line


def test_toml_syntax_error_has_line_and_column(tmp_path):
    path = write(tmp_path, "[bgp]\nasn = 65000\nhold_time = = 3\n")
    (line,) = errors_of(path)
    assert line.startswith(f"{path}: TOML syntax error: ")
    assert "line 3, column" in line


def test_router_bad_values(tmp_path):
    text = MINIMAL_ROUTER + textwrap.dedent(
        """
        [[peer_ranges]]
        prefix = "192.0.2.1/24"
        asn = "some"
        accept = ["198.51.100.0/24 le 16", "198.51.100.0/24 foo 3"]
        max_prefixes = 0

        [[peer_ranges]]
        prefix = "192.0.2.0/24"
        asn = 65000

        [fib]
        group = "ecmp"
        buckets = 0
        idle_timer = "soon"
        """
    )
    path = write(tmp_path, text, "router.toml")
    lines = errors_of(path, "router")
    keys = sorted(line.split(": ")[1] for line in lines)
    assert keys == [
        "fib.buckets",
        "fib.group",
        "fib.idle_timer",
        "peer_ranges[1].accept[0]",
        "peer_ranges[1].accept[1]",
        "peer_ranges[1].asn",
        "peer_ranges[1].max_prefixes",
        "peer_ranges[1].prefix",
        "peer_ranges[2].accept",
        "peer_ranges[2].prefix",
    ]
    assert any("has host bits set (did you mean 192.0.2.0/24?)" in x for x in lines)


def test_router_listen_forms(tmp_path):
    text = MINIMAL_ROUTER.replace(
        "asn = 65530", 'asn = 65530\nlisten = ["192.0.2.1:1179", "[2001:db8::1]:179", "::"]'
    )
    config = load_router_config(write(tmp_path, text, "router.toml"))
    assert [(a.host, a.port) for a in config.bgp.listen] == [
        ("192.0.2.1", 1179),
        ("2001:db8::1", 179),
        ("::", 179),
    ]
    bad = MINIMAL_ROUTER.replace("asn = 65530", 'asn = 65530\nlisten = ["192.0.2.1:0", "x:y:z"]')
    lines = errors_of(write(tmp_path, bad, "bad.toml"), "router")
    assert sorted(line.split(": ")[1] for line in lines) == ["bgp.listen[0]", "bgp.listen[1]"]


# -- role detection and config check -----------------------------------------------------------


def test_role_detection(tmp_path):
    agent = write(tmp_path, MINIMAL_AGENT)
    router = write(tmp_path, MINIMAL_ROUTER, "router.toml")
    assert isinstance(load_config(agent), AgentConfig)
    assert isinstance(load_config(router), RouterConfig)
    assert detect_role({"bgp": {"listen": []}}) == "router"
    assert detect_role({"fib": {}}) == "router"
    assert detect_role({"services": []}) == "agent"
    assert detect_role({"bgp": {}}) is None
    assert detect_role({"peers": [], "peer_ranges": []}) is None


def test_config_check(tmp_path):
    ok, text = config_check(EXAMPLES / "agent.toml")
    assert ok and text.endswith("OK (agent config, 2 peer(s), 2 service(s), 4 check(s))")
    ok, text = config_check(EXAMPLES / "router.toml")
    assert ok and "router config" in text
    # An agent file checked as a router: every router error is listed.
    ok, text = config_check(EXAMPLES / "agent.toml", role="router")
    assert not ok and "peer_ranges: missing required key" in text
    ok, text = config_check(write(tmp_path, "[bgp]\nasn = 1\n"))
    assert not ok and "cannot tell whether this is an agent or a router" in text
    bad = write(tmp_path, MINIMAL_AGENT.replace("asn = 65000", "asn = 65000\nhold_time = 2"))
    ok, text = config_check(bad)
    assert not ok
    assert text.splitlines()[-1] == f"1 error in {bad}"


# -- value parsers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("1s", 1.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1m30s", 90.0),
        ("1.5s", 1.5),
        (3, 3.0),
        (0.25, 0.25),
        ("2", 2.0),
    ],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["fast", "", "1x", "s", "-1s", True, None, "1s2", [1]])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@given(st.integers(min_value=0, max_value=10**6))
def test_duration_units_agree(n):
    assert parse_duration(f"{n}ms") == pytest.approx(n / 1000)
    assert parse_duration(f"{n}s") == parse_duration(n) == n
    assert parse_duration(f"{n}m") == n * 60


def test_communities():
    assert parse_community("65000:100") == 0xFDE80064
    assert parse_community("graceful-shutdown") == 0xFFFF0000  # RFC 8326
    assert parse_community("no-export") == 0xFFFFFF01  # RFC 1997
    assert parse_community("blackhole") == 0xFFFF029A  # RFC 7999
    for bad in ["65536:1", "1:65536", "1", "a:b", "1:2:3", 5]:
        with pytest.raises(ValueError, match="invalid community"):
            parse_community(bad)
    assert parse_large_community("65000:1:2") == (65000, 1, 2)
    assert parse_large_community("4294967295:0:0") == (0xFFFFFFFF, 0, 0)
    with pytest.raises(ValueError):
        parse_large_community("4294967296:0:0")


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
def test_community_round_trip(high, low):
    assert parse_community(f"{high}:{low}") == high << 16 | low


def test_prefix_filters():
    exact = parse_prefix_filter("198.51.100.0/24")
    assert exact.matches(ipaddress.ip_network("198.51.100.0/24"))
    assert not exact.matches(ipaddress.ip_network("198.51.100.0/25"))
    le = parse_prefix_filter("198.51.100.0/24 le 32")
    assert le.matches(ipaddress.ip_network("198.51.100.7/32"))
    assert not le.matches(ipaddress.ip_network("198.51.0.0/16"))
    assert not le.matches(ipaddress.ip_network("2001:db8::/128"))
    ge = parse_prefix_filter("198.51.100.0/24 ge 28")
    assert (ge.ge, ge.le) == (28, 32)
    both = parse_prefix_filter("198.51.100.0/24 ge 26 le 28")
    assert str(both) == "198.51.100.0/24 ge 26 le 28"
    for bad in ["198.51.100.0/24 le 20", "198.51.100.0/24 ge 30 le 29", "x", "198.18.0.0/15 le"]:
        with pytest.raises(ValueError):
            parse_prefix_filter(bad)


def test_documented_forms(tmp_path):
    text = MINIMAL_AGENT.replace(
        "asn = 65000", 'asn = "1.10"\ngraceful_restart_time = "20s"'
    ).replace('"198.51.100.10/32"', '"198.51.100.10", "2001:db8::10"')
    text = text.replace("port = 80", "port = 80\ninterval = '200ms'\ndamping = false")
    text += '\n[control]\nmetrics = "[::1]:9180"\n[logging]\nlevel = "DEBUG"\njson = true\n'
    config = load_agent_config(write(tmp_path, text))
    assert config.bgp.asn == 65546 and config.bgp.graceful_restart_time == 20
    assert [str(v) for v in config.services[0].vips] == ["198.51.100.10/32", "2001:db8::10/128"]
    check = config.services[0].checks[0]
    assert check.damping is None and check.timeout == 0.1
    assert config.control.metrics is not None and config.control.metrics.port == 9180
    assert config.control.metrics.host == "::1"
    assert config.logging.level == "debug" and config.logging.json_ is True
    off = load_agent_config(write(tmp_path, MINIMAL_AGENT + '\n[control]\nmetrics = "off"\n'))
    assert off.control.metrics is None


_KEYS = st.sampled_from(
    ["bgp", "asn", "router_id", "hold_time", "peers", "address", "services", "name", "vips",
     "checks", "type", "url", "interval", "timeout", "command", "port", "peer_ranges", "prefix",
     "accept", "fib", "group", "listen", "bfd", "communities", "damping", "zz"]
)  # fmt: skip
_SCALARS = st.one_of(
    st.integers(-(2**40), 2**40),
    st.booleans(),
    st.floats(allow_nan=True),
    st.sampled_from(["", "1s", "fast", "192.0.2.1", "198.51.100.0/24", "http", "tcp", "any"]),
    st.text(max_size=8),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=4),
    max_leaves=10,
)


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None, max_examples=200)
@given(st.dictionaries(_KEYS, _VALUES, max_size=6), st.sampled_from(["agent", "router"]))
def test_arbitrary_input_gives_only_config_errors(data, role):
    from bgplb.config import validate

    try:
        validate(data, role, "fuzz.toml")
    except ConfigError as e:
        assert e.issues
        for line in str(e).splitlines():
            assert line.startswith("fuzz.toml: ")


# -- secrets never appear in error messages ----------------------------------------------------

_SECRET_VALUES = [
    ("123456789", "123456789"),
    ("12345.678", "12345.678"),
    ('["hunter2-list"]', "hunter2-list"),
    ('{ pw = "hunter2-table" }', "hunter2-table"),
    ('"' + "hunter2-long" * 10 + '"', "hunter2-long"),
    ("true", "True"),
]


@pytest.mark.parametrize(("toml_value", "secret"), _SECRET_VALUES)
def test_agent_password_value_never_in_error(tmp_path, toml_value, secret):
    text = MINIMAL_AGENT.replace("asn = 65530", f"asn = 65530\npassword = {toml_value}")
    with pytest.raises(ConfigError) as info:
        load_agent_config(write(tmp_path, text))
    message = str(info.value)
    assert "peers[0].password" in message
    assert secret not in message and secret.lower() not in message.lower()
    ok, report = config_check(write(tmp_path, text))
    assert not ok and secret not in report


@pytest.mark.parametrize(("toml_value", "secret"), _SECRET_VALUES)
def test_router_password_value_never_in_error(tmp_path, toml_value, secret):
    text = MINIMAL_ROUTER.replace('asn = "any"', f'asn = "any"\npassword = {toml_value}')
    path = write(tmp_path, text, "router.toml")
    with pytest.raises(ConfigError) as info:
        load_router_config(path)
    message = str(info.value)
    assert "peer_ranges[0].password" in message
    assert secret not in message and secret.lower() not in message.lower()


def test_password_type_error_says_what_was_given(tmp_path):
    text = MINIMAL_AGENT.replace("asn = 65530", "asn = 65530\npassword = 123456789")
    with pytest.raises(ConfigError, match=r"expected a string, got an integer"):
        load_agent_config(write(tmp_path, text))


def test_non_secret_values_still_shown(tmp_path):
    text = MINIMAL_AGENT.replace("port = 80", 'port = "eighty"')
    with pytest.raises(ConfigError, match="eighty"):
        load_agent_config(write(tmp_path, text))


def test_example_event_checks_are_valid_when_uncommented(tmp_path):
    """examples/agent.toml shows the event-driven checks commented out: they must load."""
    lines = (EXAMPLES / "agent.toml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# Event-driven checks"))
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("#"))
    block = [line[1:].strip() for line in lines[start + 2 : end]]
    out = lines[:start] + block + lines[end:]
    config = load_agent_config(write(tmp_path, "\n".join(out) + "\n"))
    kinds = [c.type for c in config.services[0].checks]
    assert kinds == ["http", "exec", "process", "listen", "systemd"]


def test_bfd_realtime_priority_is_a_checked_process_wide_key(tmp_path):
    from bgplb.config import load_agent_config

    base = (
        '[bgp]\nasn = 65000\nrouter_id = "192.0.2.2"\n'
        '[[peers]]\naddress = "192.0.2.1"\nasn = 65530\n'
    )
    path = tmp_path / "agent.toml"
    path.write_text(base)
    assert load_agent_config(path).bfd.realtime_priority is None
    path.write_text("[bfd]\nrealtime_priority = 10\n" + base)
    assert load_agent_config(path).bfd.realtime_priority == 10
    path.write_text("[bfd]\nrealtime_priority = 100\n" + base)
    with pytest.raises(Exception) as err:
        load_agent_config(path)
    assert "bfd.realtime_priority" in str(err.value) and str(path) in str(err.value)


def test_router_consistent_group_keys(tmp_path) -> None:
    from bgplb.config.load import ConfigError, load_router_config
    from bgplb.router.maglev import DEFAULT_SEED, DEFAULT_SIZE

    base = (
        '[bgp]\nasn = 65000\n[[peer_ranges]]\nprefix = "192.0.2.0/24"\nasn = "any"\n'
        'accept = ["198.51.100.0/24 le 32"]\n[fib]\ngroup = "consistent"\n'
    )
    p = tmp_path / "r.toml"
    p.write_text(base)
    fib = load_router_config(p).fib
    assert (fib.group, fib.consistent_seed, fib.consistent_table_size) == (
        "consistent",
        DEFAULT_SEED,
        DEFAULT_SIZE,
    )
    p.write_text(base + 'consistent_seed = "0x10"\nconsistent_table_size = 1021\n')
    fib = load_router_config(p).fib
    assert (fib.consistent_seed, fib.consistent_table_size) == (16, 1021)
    for bad, key in (
        ("consistent_table_size = 4000", "consistent_table_size"),
        ("consistent_table_size = 3", "consistent_table_size"),
        ("consistent_seed = -1", "consistent_seed"),
        ("consistent_seed = 4294967296", "consistent_seed"),
    ):
        p.write_text(base + bad + "\n")
        with pytest.raises(ConfigError, match=key) as err:
            load_router_config(p)
        assert str(p) in str(err.value)
