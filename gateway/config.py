"""Typed settings: built-in defaults <- TOML file <- ``GATEWAY_<SECTION>_<KEY>`` env.

The one place that knows every setting. ``config/gateway.toml`` mirrors the
defaults below and ``config/example.toml`` documents each key; a test keeps all
three in step. Loading never raises anything but :class:`ConfigError`, whose
message names the offending key, so the CLI can print one line and exit 2.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin
from urllib.parse import urlsplit

ENV_PREFIX = "GATEWAY_"
DEFAULT_CONFIG_PATH = Path("config/gateway.toml")


class ConfigError(Exception):
    """A setting is missing, unknown or invalid; the message names its key."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


@dataclass(frozen=True, slots=True)
class HttpSettings:
    host: str = "0.0.0.0"  # noqa: S104 - a server; operators narrow it per deployment
    port: int = 8080
    public_base_url: str = "http://127.0.0.1:8080"
    max_body_bytes: int = 1_048_576
    max_import_bytes: int = 67_108_864
    trusted_proxies: str = ""


@dataclass(frozen=True, slots=True)
class SipSettings:
    host: str = "0.0.0.0"  # noqa: S104
    port: int = 5060
    realm: str = "gateway"
    advertised_host: str = ""
    trunk_cidrs: str = "127.0.0.1/32"
    outbound_trunk: str = ""
    outbound_ring_timeout_s: float = 60.0
    max_call_s: float = 7200.0
    session_expires_s: int = 1800
    max_message_bytes: int = 65535
    udp_receive_buffer_bytes: int = 4_194_304
    max_text_bytes: int = 4096
    per_number_metrics: int = 50
    nonce_secret: str = ""
    digest_algorithms: str = "MD5,SHA-256"


@dataclass(frozen=True, slots=True)
class LimitsSettings:
    failures_per_s: float = 1.0
    failure_burst: int = 30


@dataclass(frozen=True, slots=True)
class TextsSettings:
    """Group commit of inbound texts (issue 13)."""

    batch_max: int = 256
    max_pending: int = 2000
    writers: int = 2
    shed_at_loop_lag_s: float = 0.5


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """Several gateways on one database (issue 14)."""

    slots: Literal["local", "postgres"] = "local"
    instance_id: str = ""
    lease_s: float = 5.0
    heartbeat_s: float = 1.0
    admit_timeout_s: float = 0.5


@dataclass(frozen=True, slots=True)
class OutboxSettings:
    dir: str = "var/outbox"


@dataclass(frozen=True, slots=True)
class DatabaseSettings:
    url: str = ""
    embedded_dir: str = "var/pg"
    embedded_user: str = "postgres"
    pool_min_size: int = 2
    pool_max_size: int = 10
    connect_timeout_s: float = 5.0
    command_timeout_s: float = 10.0


@dataclass(frozen=True, slots=True)
class IndexSettings:
    reload_interval_s: float = 600.0
    reconnect_max_backoff_s: float = 5.0


@dataclass(frozen=True, slots=True)
class ShutdownSettings:
    grace_period_s: float = 10.0


@dataclass(frozen=True, slots=True)
class TwilioSettings:
    auth_token: str = ""
    account_sid: str = ""
    api_base_url: str = "https://api.twilio.com"


@dataclass(frozen=True, slots=True)
class TelnyxSettings:
    public_key: str = ""
    api_key: str = ""
    api_base_url: str = "https://api.telnyx.com"


@dataclass(frozen=True, slots=True)
class OutboundSettings:
    timeout_s: float = 10.0
    max_attempts: int = 3
    max_retry_after_s: float = 30.0


@dataclass(frozen=True, slots=True)
class LogSettings:
    level: Literal["debug", "info", "warning", "error"] = "info"


@dataclass(frozen=True, slots=True)
class Settings:
    http: HttpSettings = field(default_factory=HttpSettings)
    sip: SipSettings = field(default_factory=SipSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    outbox: OutboxSettings = field(default_factory=OutboxSettings)
    texts: TextsSettings = field(default_factory=TextsSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    index: IndexSettings = field(default_factory=IndexSettings)
    shutdown: ShutdownSettings = field(default_factory=ShutdownSettings)
    twilio: TwilioSettings = field(default_factory=TwilioSettings)
    telnyx: TelnyxSettings = field(default_factory=TelnyxSettings)
    outbound: OutboundSettings = field(default_factory=OutboundSettings)
    log: LogSettings = field(default_factory=LogSettings)


def load_settings(path: Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Defaults, then the TOML file (``path``, else ``$GATEWAY_CONFIG``, else
    ``config/gateway.toml`` when present), then environment overrides."""
    env = os.environ if env is None else env
    raw: dict[str, dict[str, Any]] = {}
    chosen = path or (Path(env["GATEWAY_CONFIG"]) if env.get("GATEWAY_CONFIG") else None)
    if chosen is None and DEFAULT_CONFIG_PATH.is_file():
        chosen = DEFAULT_CONFIG_PATH
    if chosen is not None:
        raw = _read_toml(chosen)
    for name, value in env.items():
        if name.startswith(ENV_PREFIX) and name != "GATEWAY_CONFIG":
            section, key = _env_key(name)
            raw.setdefault(section, {})[key] = value
    return _build(raw)


def schema() -> dict[str, dict[str, object]]:
    """Every section and key with its default, for docs and drift tests."""
    out: dict[str, dict[str, object]] = {}
    for section in dataclasses.fields(Settings):
        defaults = _section_type(section.name)()
        out[section.name] = {f.name: getattr(defaults, f.name) for f in dataclasses.fields(defaults)}
    return out


def _read_toml(path: Path) -> dict[str, dict[str, Any]]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read config file ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"not valid TOML ({exc})") from None
    for section, body in data.items():
        if not isinstance(body, dict):
            raise ConfigError(section, "must be a [section] table")
    return data


def _env_key(name: str) -> tuple[str, str]:
    rest = name[len(ENV_PREFIX) :].lower()
    for section in (f.name for f in dataclasses.fields(Settings)):
        if rest.startswith(section + "_"):
            return section, rest[len(section) + 1 :]
    raise ConfigError(name, "environment variable names no known section")


def _section_type(name: str) -> type[Any]:
    hints = typing.get_type_hints(Settings)
    section_type: type[Any] = hints[name]
    return section_type


def _build(raw: dict[str, dict[str, Any]]) -> Settings:
    sections: dict[str, Any] = {}
    known = {f.name for f in dataclasses.fields(Settings)}
    for section in raw:
        if section not in known:
            raise ConfigError(section, f"unknown section (known: {', '.join(sorted(known))})")
    for name in known:
        cls = _section_type(name)
        hints = typing.get_type_hints(cls)
        values = raw.get(name, {})
        for key in values:
            if key not in hints:
                raise ConfigError(f"{name}.{key}", "unknown key")
        kwargs = {key: _coerce(f"{name}.{key}", hints[key], value) for key, value in values.items()}
        sections[name] = cls(**kwargs)
    settings = Settings(**sections)
    _validate(settings)
    return settings


def _coerce(key: str, hint: Any, value: Any) -> Any:
    origin = get_origin(hint)
    if origin is Literal:
        choices = get_args(hint)
        if value not in choices:
            raise ConfigError(key, f"must be one of {', '.join(map(str, choices))}, got {value!r}")
        return value
    if origin in (types.UnionType, typing.Union):
        raise ConfigError(key, "optional settings are not supported")  # pragma: no cover
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise ConfigError(key, f"must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool):
            raise ConfigError(key, f"must be an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(key, f"must be an integer, got {value!r}") from None
    if hint is float:
        if isinstance(value, bool):
            raise ConfigError(key, f"must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(key, f"must be a number, got {value!r}") from None
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"must be a string, got {value!r}")
        return value
    raise ConfigError(key, f"unsupported setting type {hint!r}")  # pragma: no cover


def _validate(s: Settings) -> None:
    for key, port in (("http.port", s.http.port), ("sip.port", s.sip.port)):
        if not 0 <= port <= 65535:
            raise ConfigError(key, f"must be a TCP/UDP port 0-65535, got {port}")
    for key, host in (("http.host", s.http.host), ("sip.host", s.sip.host)):
        _check_host(key, host)
    if s.database.url:
        check_dsn("database.url", s.database.url)
    for key, base in (
        ("twilio.api_base_url", s.twilio.api_base_url),
        ("telnyx.api_base_url", s.telnyx.api_base_url),
    ):
        parts = urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(key, "must be an absolute http(s) URL")
    url = urlsplit(s.http.public_base_url)
    if url.scheme not in ("http", "https") or not url.netloc:
        raise ConfigError("http.public_base_url", "must be an absolute http(s) URL")
    positive = {
        "http.max_body_bytes": s.http.max_body_bytes,
        "http.max_import_bytes": s.http.max_import_bytes,
        "database.pool_min_size": s.database.pool_min_size,
        "database.pool_max_size": s.database.pool_max_size,
        "database.connect_timeout_s": s.database.connect_timeout_s,
        "database.command_timeout_s": s.database.command_timeout_s,
        "index.reload_interval_s": s.index.reload_interval_s,
        "outbound.timeout_s": s.outbound.timeout_s,
        "outbound.max_attempts": s.outbound.max_attempts,
        "index.reconnect_max_backoff_s": s.index.reconnect_max_backoff_s,
        "limits.failures_per_s": s.limits.failures_per_s,
        "limits.failure_burst": s.limits.failure_burst,
        "texts.batch_max": s.texts.batch_max,
        "texts.max_pending": s.texts.max_pending,
        "texts.writers": s.texts.writers,
        "texts.shed_at_loop_lag_s": s.texts.shed_at_loop_lag_s,
        "cluster.lease_s": s.cluster.lease_s,
        "cluster.heartbeat_s": s.cluster.heartbeat_s,
        "cluster.admit_timeout_s": s.cluster.admit_timeout_s,
    }
    for key, number in positive.items():
        if number <= 0:
            raise ConfigError(key, f"must be greater than 0, got {number}")
    if s.database.pool_min_size > s.database.pool_max_size:
        raise ConfigError("database.pool_min_size", "must not exceed database.pool_max_size")
    if s.texts.writers >= s.database.pool_max_size:
        raise ConfigError("texts.writers", "must leave database.pool_max_size connections for the API")
    if s.cluster.heartbeat_s * 2 > s.cluster.lease_s:
        raise ConfigError("cluster.heartbeat_s", "must be at most half of cluster.lease_s")
    if len(s.cluster.instance_id) > 100:
        raise ConfigError("cluster.instance_id", "must be at most 100 characters")
    if s.cluster.slots == "postgres" and not s.sip.nonce_secret:
        raise ConfigError(
            "sip.nonce_secret", "must be set, the same on every gateway, when cluster.slots = postgres"
        )
    if s.shutdown.grace_period_s < 0:
        raise ConfigError("shutdown.grace_period_s", "must be 0 or more")
    try:
        trunk_networks(s.http.trusted_proxies)
    except ValueError as exc:
        raise ConfigError(
            "http.trusted_proxies", f"must be comma-separated networks like 10.0.0.0/24 ({exc})"
        ) from None
    _check_sip(s.sip)
    if not s.sip.realm or any(c.isspace() or c in '"\\' for c in s.sip.realm):
        raise ConfigError("sip.realm", "must be a non-empty token without spaces or quotes")
    if not s.database.embedded_dir:
        raise ConfigError("database.embedded_dir", "must not be empty")


def _check_host(key: str, host: str) -> None:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not host or any(c.isspace() for c in host) or "/" in host:
            raise ConfigError(key, f"must be an IP address or host name, got {host!r}") from None


def check_dsn(key: str, dsn: str) -> None:
    """Reject a database URL asyncpg could not use, naming ``key``."""
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ConfigError(key, "must be a postgresql:// URL")
    try:
        parts.port  # noqa: B018 - property access validates the port
    except ValueError:
        raise ConfigError(key, "has an invalid port") from None
    if not parts.hostname and "host=" not in parts.query:
        raise ConfigError(key, "names no host (use host=/socket/dir for a Unix socket)")
    if not parts.path.strip("/"):
        raise ConfigError(key, "names no database")


def trunk_networks(value: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """``sip.trunk_cidrs``: comma-separated networks carriers' trunks send from."""
    return [ipaddress.ip_network(part.strip(), strict=False) for part in value.split(",") if part.strip()]


def host_port(value: str, default_port: int = 5060) -> tuple[str, int]:
    """``"host[:port]"`` (the outbound trunk) as a pair."""
    host, _, port = value.strip().rpartition(":") if ":" in value else (value.strip(), "", "")
    return host, int(port) if port else default_port


def _check_sip(sip: SipSettings) -> None:
    try:
        trunk_networks(sip.trunk_cidrs)
    except ValueError as exc:
        raise ConfigError(
            "sip.trunk_cidrs", f"must be comma-separated networks like 10.0.0.0/24 ({exc})"
        ) from None
    if sip.outbound_trunk:
        try:
            host, port = host_port(sip.outbound_trunk)
        except ValueError:
            raise ConfigError("sip.outbound_trunk", "must be host:port") from None
        if not host or not 0 < port <= 65535:
            raise ConfigError("sip.outbound_trunk", "must be host:port")
    names = [name.strip().upper() for name in sip.digest_algorithms.split(",")]
    if not names or any(name not in ("MD5", "SHA-256") for name in names):
        raise ConfigError("sip.digest_algorithms", "must list MD5 and/or SHA-256, comma-separated")
    if sip.session_expires_s < 90:
        raise ConfigError("sip.session_expires_s", "must be at least 90 (RFC 4028 Min-SE)")
    for key, value in (
        ("sip.outbound_ring_timeout_s", sip.outbound_ring_timeout_s),
        ("sip.max_call_s", sip.max_call_s),
        ("sip.session_expires_s", sip.session_expires_s),
        ("sip.max_message_bytes", sip.max_message_bytes),
        ("sip.udp_receive_buffer_bytes", sip.udp_receive_buffer_bytes),
        ("sip.max_text_bytes", sip.max_text_bytes),
        ("sip.per_number_metrics", sip.per_number_metrics),
    ):
        if value <= 0:
            raise ConfigError(key, f"must be greater than 0, got {value}")
