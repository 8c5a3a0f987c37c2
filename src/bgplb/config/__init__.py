"""TOML → validated, typed configuration; every error names the file and the key.

    from bgplb.config import load_agent_config, ConfigError
    try:
        config = load_agent_config("/etc/bgplb/agent.toml")
    except ConfigError as e:
        print(e)        # one line per problem: FILE: key.path[i].key: message

Durations are float seconds, addresses ``ipaddress`` objects, VIPs and prefixes ``ipaddress``
networks, communities 32-bit ints. See docs/config.md for every key.
"""

from bgplb.config.agent import (
    CHECK_TYPES,
    AgentBgp,
    AgentConfig,
    BfdConfig,
    CheckConfig,
    ControlConfig,
    DampingConfig,
    DnsCheck,
    EventCheck,
    ExecCheck,
    HttpCheck,
    ListenCheck,
    LoggingConfig,
    PeerConfig,
    ProcessCheck,
    ServiceConfig,
    SystemdCheck,
    TcpCheck,
)
from bgplb.config.load import (
    ConfigError,
    ConfigIssue,
    Role,
    config_check,
    detect_role,
    load_agent_config,
    load_config,
    load_router_config,
    read_toml,
    validate,
)
from bgplb.config.router import FibConfig, PeerRange, RouterBgp, RouterConfig, RouterControlConfig
from bgplb.config.types import (
    WELL_KNOWN_COMMUNITIES,
    HostPort,
    PrefixFilter,
    format_community,
    format_duration,
    parse_community,
    parse_duration,
    parse_large_community,
)

__all__ = [
    "CHECK_TYPES",
    "WELL_KNOWN_COMMUNITIES",
    "AgentBgp",
    "AgentConfig",
    "BfdConfig",
    "CheckConfig",
    "ConfigError",
    "ConfigIssue",
    "ControlConfig",
    "DampingConfig",
    "DnsCheck",
    "EventCheck",
    "ExecCheck",
    "FibConfig",
    "HostPort",
    "HttpCheck",
    "ListenCheck",
    "LoggingConfig",
    "PeerConfig",
    "PeerRange",
    "PrefixFilter",
    "ProcessCheck",
    "Role",
    "RouterBgp",
    "RouterConfig",
    "RouterControlConfig",
    "ServiceConfig",
    "SystemdCheck",
    "TcpCheck",
    "config_check",
    "detect_role",
    "format_community",
    "format_duration",
    "parse_community",
    "parse_duration",
    "parse_large_community",
    "load_agent_config",
    "load_config",
    "load_router_config",
    "read_toml",
    "validate",
]
