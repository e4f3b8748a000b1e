"""Typed settings: built-in defaults <- TOML file <- ``GATEWAY_<SECTION>_<KEY>`` env.

The one place that knows every setting, read with pydantic-settings (its TOML
and environment sources, ``extra="forbid"`` so a typo is an error). Values
arrive parsed: networks as networks, secrets as ``SecretStr`` (never printed
by accident). ``config/gateway.toml`` mirrors the defaults below and
``config/example.toml`` documents each key; a test keeps all three in step.
Loading never raises anything but :class:`ConfigError`, whose message names
the offending key, so the CLI can print one line and exit 2.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

ENV_PREFIX = "GATEWAY_"
DEFAULT_CONFIG_PATH = Path("config/gateway.toml")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
M = TypeVar("M", bound=BaseModel)


class ConfigError(Exception):
    """A setting is missing, unknown or invalid; the message names its key."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


def trunk_networks(value: str) -> list[Network]:
    """Comma-separated networks (``sip.trunk_cidrs``, ``http.trusted_proxies``)."""
    return [ipaddress.ip_network(part.strip(), strict=False) for part in value.split(",") if part.strip()]


def _networks(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return tuple(trunk_networks(value))
        except ValueError as exc:
            raise ValueError(f"must be comma-separated networks like 10.0.0.0/24 ({exc})") from None
    return value


Networks = Annotated[tuple[Network, ...], BeforeValidator(_networks)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HttpSettings(_Section):
    host: str = "0.0.0.0"  # noqa: S104 - a server; operators narrow it per deployment
    port: int = 8080
    public_base_url: str = "http://127.0.0.1:8080"
    max_body_bytes: int = 1_048_576
    max_import_bytes: int = 67_108_864
    trusted_proxies: Networks = ()


class SipSettings(_Section):
    host: str = "0.0.0.0"  # noqa: S104
    port: int = 5060
    realm: str = "gateway"
    advertised_host: str = ""
    trunk_cidrs: Networks = (ipaddress.ip_network("127.0.0.1/32"),)
    outbound_trunk: str = ""
    outbound_ring_timeout_s: float = 60.0
    max_call_s: float = 7200.0
    session_expires_s: int = 1800
    max_message_bytes: int = 65535
    udp_receive_buffer_bytes: int = 4_194_304
    max_text_bytes: int = 4096
    per_number_metrics: int = 50
    nonce_secret: SecretStr = SecretStr("")
    digest_algorithms: str = "MD5,SHA-256"


class LimitsSettings(_Section):
    failures_per_s: float = 1.0
    failure_burst: int = 30


class TextsSettings(_Section):
    """Group commit of inbound texts (issue 13)."""

    batch_max: int = 1024
    max_pending: int = 2000
    writers: int = 2
    shed_at_loop_lag_s: float = 0.5


class ClusterSettings(_Section):
    """Several gateways on one database (issue 14)."""

    slots: Literal["local", "postgres"] = "local"
    instance_id: str = ""
    lease_s: float = 5.0
    heartbeat_s: float = 1.0
    admit_timeout_s: float = 0.5


class OutboxSettings(_Section):
    dir: str = "var/outbox"


class DatabaseSettings(_Section):
    url: str = ""
    embedded_dir: str = "var/pg"
    embedded_user: str = "postgres"
    pool_min_size: int = 2
    pool_max_size: int = 10
    connect_timeout_s: float = 5.0
    command_timeout_s: float = 10.0


class IndexSettings(_Section):
    reload_interval_s: float = 600.0
    reconnect_max_backoff_s: float = 5.0


class ShutdownSettings(_Section):
    grace_period_s: float = 10.0


class TwilioSettings(_Section):
    auth_token: SecretStr = SecretStr("")
    account_sid: str = ""
    api_base_url: str = "https://api.twilio.com"


class TelnyxSettings(_Section):
    public_key: str = ""
    api_key: SecretStr = SecretStr("")
    api_base_url: str = "https://api.telnyx.com"


class OutboundSettings(_Section):
    timeout_s: float = 10.0
    max_attempts: int = 3
    max_retry_after_s: float = 30.0


class WebhooksSettings(_Section):
    """Event webhooks to the CRM (issue 16, item 1)."""

    allow_private_targets: bool = False  # SSRF: loopback and private ranges only when set
    timeout_s: float = Field(10.0, gt=0)
    per_endpoint: int = Field(4, ge=1, le=64)  # deliveries in flight to one endpoint
    poll_interval_s: float = Field(1.0, gt=0)


class LogSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"


class Settings(BaseSettings):
    """All settings. ``Settings()`` is the built-in defaults alone (no file, no
    environment); :func:`load_settings` reads both."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="_",
        env_nested_max_split=1,
        extra="forbid",
        frozen=True,
    )

    http: HttpSettings = HttpSettings()
    sip: SipSettings = SipSettings()
    database: DatabaseSettings = DatabaseSettings()
    outbox: OutboxSettings = OutboxSettings()
    texts: TextsSettings = TextsSettings()
    cluster: ClusterSettings = ClusterSettings()
    limits: LimitsSettings = LimitsSettings()
    index: IndexSettings = IndexSettings()
    shutdown: ShutdownSettings = ShutdownSettings()
    twilio: TwilioSettings = TwilioSettings()
    telnyx: TelnyxSettings = TelnyxSettings()
    outbound: OutboundSettings = OutboundSettings()
    webhooks: WebhooksSettings = WebhooksSettings()
    log: LogSettings = LogSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return cls.sources(settings_cls, init_settings)

    @classmethod
    def sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The built-in defaults alone; :func:`load_settings` adds the file and
        the environment."""
        return (init_settings,)


def replace(model: M, **changes: Any) -> M:
    """A copy of a settings object (or section) with ``changes``, validated
    like a loaded one (strings become networks and secrets)."""
    return type(model).model_validate({**dict(model), **changes})


def load_settings(path: Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Defaults, then the TOML file (``path``, else ``$GATEWAY_CONFIG``, else
    ``config/gateway.toml`` when present), then ``GATEWAY_<SECTION>_<KEY>``
    variables of ``env`` (the process environment by default)."""
    env = os.environ if env is None else env
    given = env
    chosen = path or (Path(env["GATEWAY_CONFIG"]) if env.get("GATEWAY_CONFIG") else None)
    if chosen is None and DEFAULT_CONFIG_PATH.is_file():
        chosen = DEFAULT_CONFIG_PATH
    if chosen is not None:
        _check_toml(chosen)
    for name in env:
        if name.startswith(ENV_PREFIX) and name != "GATEWAY_CONFIG":
            _env_section(name)

    class FromFileAndEnvironment(Settings):
        @classmethod
        def sources(
            cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            found: list[PydanticBaseSettingsSource] = [_Environment(settings_cls, given)]
            if chosen is not None:
                found.append(TomlConfigSettingsSource(settings_cls, toml_file=chosen))
            return tuple(found)

    try:
        loaded = FromFileAndEnvironment()
    except ValidationError as exc:
        raise _config_error(exc) from None
    settings = Settings.model_construct(**{name: getattr(loaded, name) for name in Settings.model_fields})
    _validate(settings)
    return settings


class _Environment(PydanticBaseSettingsSource):
    """``GATEWAY_<SECTION>_<KEY>`` variables of a given mapping (the process
    environment, or a test's): section and key split at the first underscore
    after the prefix, as pydantic-settings' nested delimiter would."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self._env = env

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # everything comes from __call__

    def __call__(self) -> dict[str, Any]:
        out: dict[str, dict[str, str]] = {}
        for name, value in self._env.items():
            if name.startswith(ENV_PREFIX) and name != "GATEWAY_CONFIG":
                section, key = _env_section(name)
                out.setdefault(section, {})[key] = value
        return out


def schema() -> dict[str, dict[str, object]]:
    """Every section and key with its default as the TOML file spells it, for
    docs and drift tests."""
    defaults = Settings()
    out: dict[str, dict[str, object]] = {}
    for name in Settings.model_fields:
        section = getattr(defaults, name)
        out[name] = {key: _as_toml(getattr(section, key)) for key in type(section).model_fields}
    return out


def _as_toml(value: object) -> object:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, tuple):
        return ",".join(str(item) for item in value)
    return value


def _check_toml(path: Path) -> None:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read config file ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"not valid TOML ({exc})") from None
    for section, body in data.items():
        if not isinstance(body, dict):
            raise ConfigError(section, "must be a [section] table")


def _env_section(name: str) -> tuple[str, str]:
    rest = name[len(ENV_PREFIX) :].lower()
    for section in Settings.model_fields:
        if rest.startswith(section + "_"):
            return section, rest[len(section) + 1 :]
    raise ConfigError(name, "environment variable names no known section")


def _config_error(exc: ValidationError) -> ConfigError:
    """pydantic's first complaint as ``section.key: problem``."""
    error = exc.errors()[0]
    key = ".".join(str(part) for part in error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        if len(error["loc"]) == 1:
            return ConfigError(key, f"unknown section (known: {', '.join(sorted(Settings.model_fields))})")
        return ConfigError(key, "unknown key")
    if kind == "literal_error":
        return ConfigError(key, f"must be one of {error['ctx']['expected']}, got {error['input']!r}")
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return ConfigError(key, f"must be an integer, got {error['input']!r}")
    if kind in ("float_parsing", "float_type"):
        return ConfigError(key, f"must be a number, got {error['input']!r}")
    if kind == "value_error":
        return ConfigError(key, str(error["ctx"]["error"]))
    return ConfigError(key, error["msg"])


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
    if s.cluster.slots == "postgres" and not s.sip.nonce_secret.get_secret_value():
        raise ConfigError(
            "sip.nonce_secret", "must be set, the same on every gateway, when cluster.slots = postgres"
        )
    if s.shutdown.grace_period_s < 0:
        raise ConfigError("shutdown.grace_period_s", "must be 0 or more")
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


def host_port(value: str, default_port: int = 5060) -> tuple[str, int]:
    """``"host[:port]"`` (the outbound trunk) as a pair."""
    host, _, port = value.strip().rpartition(":") if ":" in value else (value.strip(), "", "")
    return host, int(port) if port else default_port


def _check_sip(sip: SipSettings) -> None:
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
