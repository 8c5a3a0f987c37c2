"""contrib/: the systemd units and the sysctl file stay in step with the code.

Every ExecStart/ExecStartPre of the units must parse with the real `bgplb` argument parser and
reach the handler it is meant for, the directories the units create must be the ones the config
defaults use, the capabilities must cover the ports the defaults bind, and the sysctl file must
name keys the kernel has. `systemd-analyze verify` (when installed) rejects unknown directives.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bgplb.cli import build_parser
from bgplb.cli_agent import DEFAULT_STATE, cmd_agent, cmd_config_check
from bgplb.cli_router import run_router_command
from bgplb.config.agent import ControlConfig
from bgplb.config.router import RouterBgp, RouterControlConfig

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


@pytest.mark.xfail(
    not _sends_ready("router"),
    reason="Type=notify needs sd_notify('READY=1') in bgplb.router.daemon.Router.run",
    strict=False,
)
def test_router_sends_ready_for_type_notify() -> None:
    assert _sends_ready("router")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify_knows_every_directive(role: str, tmp_path: Path) -> None:
    # verify also wants the executables to exist: point them at this interpreter's bgplb
    bgplb = Path(sys.executable).parent / "bgplb"
    if not bgplb.exists():
        pytest.skip(f"{bgplb} not installed")
    unit = tmp_path / UNITS[role].name
    unit.write_text(UNITS[role].read_text().replace("/usr/local/bin/bgplb", str(bgplb)))
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
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
