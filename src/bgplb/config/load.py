"""Reading a TOML file into AgentConfig / RouterConfig, with every error named.

Every problem becomes one line ``FILE: key.path[index].key: message``; all of them are
collected (pydantic's validation errors plus the cross-field checks below, which run on the
raw TOML so that they are reported even when other keys are wrong) and raised together as one
:class:`ConfigError`. Nothing here prints or exits: the CLI does that.
"""

from __future__ import annotations

import difflib
import tomllib
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from bgplb.config.agent import CHECK_TYPES, AgentConfig
from bgplb.config.router import RouterConfig
from bgplb.config.types import parse_host_port, parse_ip, parse_prefix, parse_vip

Role = Literal["agent", "router"]
Loc = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One error: the file, the key path (``""`` for the whole file) and the message."""

    source: str
    key: str
    message: str

    def __str__(self) -> str:
        return (
            f"{self.source}: {self.key}: {self.message}"
            if self.key
            else (f"{self.source}: {self.message}")
        )


class ConfigError(Exception):
    """A config that cannot be used; ``str()`` lists every error, one per line."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(issue) for issue in issues))


def format_loc(loc: Iterable[str | int]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# -- pydantic errors → messages ----------------------------------------------------------------

_TYPE_NAMES = {
    "string_type": "a string",
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "list_type": "a list",
    "dict_type": "a table",
    "model_type": "a table",
    "dataclass_type": "a table",
}


def _model_classes(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        found += _model_classes(arg)
    return found


def _allowed_keys(root: type[BaseModel], loc: Loc) -> list[str]:
    """The keys valid in the table at ``loc`` (``loc`` is pydantic's, tags included)."""
    models: list[type[BaseModel]] = [root]
    for part in loc:
        if isinstance(part, int):
            continue
        tagged = [m for m in models if _tags(m) and part in _tags(m)]
        if tagged:
            models = tagged
            continue
        fields = [m.model_fields[part] for m in models if part in m.model_fields]
        if not fields:
            fields = [f for m in models for f in m.model_fields.values() if f.alias == part]
        models = [c for f in fields for c in _model_classes(f.annotation)]
        if not models:
            return []
    return sorted({f.alias or name for m in models for name, f in m.model_fields.items()})


def _tags(model: type[BaseModel]) -> tuple[Any, ...]:
    field = model.model_fields.get("type")
    return typing.get_args(field.annotation) if field else ()


def _clean_loc(loc: Loc) -> Loc:
    """Drop pydantic's discriminator tags (``checks[1].http.url`` → ``checks[1].url``)."""
    out: list[str | int] = []
    for i, part in enumerate(loc):
        if (
            part in CHECK_TYPES
            and i >= 2
            and isinstance(loc[i - 1], int)
            and loc[i - 2] == "checks"
        ):
            continue
        out.append(part)
    return tuple(out)


# Keys whose values are secrets (TCP-MD5 ``password``...): no message may contain their value,
# whatever its type or the check that failed (config errors end up in logs and terminals).
_SECRET_WORDS = ("password", "secret", "token")
HIDDEN = "<hidden>"


def is_secret_key(loc: Iterable[str | int]) -> bool:
    """True if any key on the path names a secret (``peers[0].password``...)."""
    return any(isinstance(p, str) and any(w in p.lower() for w in _SECRET_WORDS) for p in loc)


def describe_type(value: Any) -> str:
    """What a value is, without showing it: ``an integer``, ``a string``..."""
    if isinstance(value, bool):
        return "a boolean"
    for kind, name in ((int, "an integer"), (float, "a number"), (str, "a string")):
        if isinstance(value, kind):
            return name
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "a table"
    return "a value of another type"


def _redact(message: str, value: Any) -> str:
    """Remove every rendering of ``value`` (and of the strings inside it) from ``message``."""
    pieces: list[str] = []

    def collect(v: Any) -> None:
        if isinstance(v, Mapping):
            for k, item in v.items():
                collect(k)
                collect(item)
        elif isinstance(v, (list, tuple)):
            for item in v:
                collect(item)
        elif v is not None and not isinstance(v, bool):
            pieces.extend({repr(v), str(v)})

    collect(value)
    for piece in sorted((p for p in pieces if p), key=len, reverse=True):
        message = message.replace(piece, HIDDEN)
    return message


def _message(error: Mapping[str, Any], root: type[BaseModel]) -> tuple[Loc, str]:
    loc, message = _plain_message(error, root)
    if is_secret_key(error["loc"]):
        value = error.get("input")
        if error["type"] in _TYPE_NAMES:
            message = f"expected {_TYPE_NAMES[error['type']]}, got {describe_type(value)}"
        message = _redact(message, value)
    return loc, message


def _plain_message(error: Mapping[str, Any], root: type[BaseModel]) -> tuple[Loc, str]:
    kind, loc, value = error["type"], tuple(error["loc"]), error.get("input")
    ctx = error.get("ctx") or {}
    if kind == "extra_forbidden":
        allowed = _allowed_keys(root, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = (
            f" (did you mean '{close[0]}'?)"
            if close
            else (f" (allowed: {', '.join(allowed)})" if allowed else "")
        )
        return _clean_loc(loc), f"unknown key{hint}"
    if kind == "missing":
        return _clean_loc(loc), "missing required key"
    if kind == "union_tag_invalid":
        return (*_clean_loc(loc), "type"), (
            f"unknown check type {ctx.get('tag')!r} (use {', '.join(CHECK_TYPES)})"
        )
    if kind == "union_tag_not_found":
        return (*_clean_loc(loc), "type"), (
            f"missing required key (the check type: {', '.join(CHECK_TYPES)})"
        )
    if kind == "value_error":
        return _clean_loc(loc), str(ctx.get("error", error["msg"]))
    if kind == "literal_error":
        return _clean_loc(loc), f"{value!r} is not one of {ctx.get('expected')}"
    if kind == "too_short":
        return _clean_loc(loc), f"needs at least {ctx.get('min_length')} entry"
    if kind in _TYPE_NAMES:
        return _clean_loc(loc), f"expected {_TYPE_NAMES[kind]}, got {value!r}"
    return _clean_loc(loc), str(error["msg"])


# -- cross-field checks on the raw TOML --------------------------------------------------------

Problem = tuple[Loc, str]


def _items(data: Mapping[str, Any], key: str) -> list[tuple[int, Mapping[str, Any]]]:
    value = data.get(key)
    if not isinstance(value, list):
        return []
    return [(i, item) for i, item in enumerate(value) if isinstance(item, Mapping)]


def _duplicates(
    entries: Iterable[tuple[Loc, Any, Callable[[Any], Any]]], what: str, hint: str = ""
) -> list[Problem]:
    """Report each value (after ``parse``) seen before, naming where it was first."""
    seen: dict[Any, Loc] = {}
    problems: list[Problem] = []
    for loc, raw, parse in entries:
        try:
            value = parse(raw)
        except (ValueError, TypeError):
            continue  # reported by validation
        if value in seen:
            first = format_loc(seen[value])
            problems.append((loc, f"duplicate {what} {value!s} (also at {first}){hint}"))
        else:
            seen[value] = loc
    return problems


def _agent_cross_checks(data: Mapping[str, Any]) -> list[Problem]:
    problems = _duplicates(
        ((("peers", i, "address"), p.get("address"), parse_ip) for i, p in _items(data, "peers")),
        "peer address",
    )
    services = _items(data, "services")
    problems += _duplicates(
        ((("services", i, "name"), s.get("name"), repr) for i, s in services if "name" in s),
        "service name",
    )
    vips = []
    for i, service in services:
        if isinstance(service.get("vips"), list):
            vips += [
                (("services", i, "vips", j), v, parse_vip) for j, v in enumerate(service["vips"])
            ]
    problems += _duplicates(vips, "VIP", ": a VIP belongs to exactly one service")
    return problems


def _router_cross_checks(data: Mapping[str, Any]) -> list[Problem]:
    problems = _duplicates(
        (
            (("peer_ranges", i, "prefix"), r.get("prefix"), parse_prefix)
            for i, r in _items(data, "peer_ranges")
        ),
        "peer range",
    )
    bgp = data.get("bgp")
    if isinstance(bgp, Mapping) and isinstance(bgp.get("listen"), list):
        problems += _duplicates(
            (
                (("bgp", "listen", j), v, lambda v: parse_host_port(v, 179, ip_only=True))
                for j, v in enumerate(bgp["listen"])
            ),
            "listen address",
        )
    return problems


# -- entry points ------------------------------------------------------------------------------


def read_toml(path: str | Path) -> dict[str, Any]:
    """Read and parse a TOML file; unreadable files and syntax errors raise ConfigError."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError([ConfigIssue(source, "", f"cannot read: {e.strerror or e}")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError([ConfigIssue(source, "", f"not UTF-8 text (byte {e.start})")]) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([ConfigIssue(source, "", f"TOML syntax error: {e}")]) from None


def detect_role(data: Mapping[str, Any]) -> Role | None:
    """``router`` if the file has router-only keys, ``agent`` if agent-only keys, else None."""
    bgp = data.get("bgp")
    router = (
        "peer_ranges" in data or "fib" in data or (isinstance(bgp, Mapping) and "listen" in bgp)
    )
    agent = "peers" in data or "services" in data
    if router == agent:
        return None
    return "router" if router else "agent"


_MODELS: dict[Role, tuple[type[BaseModel], Callable[[Mapping[str, Any]], list[Problem]]]] = {
    "agent": (AgentConfig, _agent_cross_checks),
    "router": (RouterConfig, _router_cross_checks),
}


def validate(data: Mapping[str, Any], role: Role, source: str = "<config>") -> Any:
    """Validate parsed TOML as ``role``; returns the model or raises ConfigError."""
    model, cross_checks = _MODELS[role]
    problems: list[Problem] = []
    result = None
    try:
        result = model.model_validate(data)
    except ValidationError as e:
        problems += [_message(error, model) for error in e.errors(include_url=False)]
    problems += cross_checks(data)
    if problems:
        issues = [ConfigIssue(source, format_loc(loc), message) for loc, message in problems]
        unique = list(dict.fromkeys(issues))
        raise ConfigError(unique)
    return result


def load_agent_config(path: str | Path) -> AgentConfig:
    """Read an agent config file; raises ConfigError listing every problem."""
    config: AgentConfig = validate(read_toml(path), "agent", str(path))
    return config


def load_router_config(path: str | Path) -> RouterConfig:
    """Read a router config file; raises ConfigError listing every problem."""
    config: RouterConfig = validate(read_toml(path), "router", str(path))
    return config


def load_config(path: str | Path, role: Role | None = None) -> AgentConfig | RouterConfig:
    """Read a config of either role; the role is detected from the content when not given."""
    data = read_toml(path)
    if role is None:
        role = detect_role(data)
        if role is None:
            raise ConfigError(
                [
                    ConfigIssue(
                        str(path),
                        "",
                        "cannot tell whether this is an agent or a router config: an agent "
                        "has [[peers]]/[[services]], a router [[peer_ranges]]/[fib]",
                    )
                ]
            )
    config: AgentConfig | RouterConfig = validate(data, role, str(path))
    return config


def config_check(path: str | Path, role: Role | None = None) -> tuple[bool, str]:
    """For ``bgplb config check FILE``: (True, summary) or (False, every error, one a line)."""
    try:
        config = load_config(path, role)
    except ConfigError as e:
        count = len(e.issues)
        return False, f"{e}\n{count} error{'s' if count != 1 else ''} in {path}"
    if isinstance(config, AgentConfig):
        checks = sum(len(s.checks) for s in config.services)
        summary = (
            f"agent config, {len(config.peers)} peer(s), {len(config.services)} service(s), "
            f"{checks} check(s)"
        )
    else:
        summary = f"router config, {len(config.peer_ranges)} peer range(s)"
    return True, f"{path}: OK ({summary})"
