"""Config: defaults file, documented keys, env overrides, one-line errors (issue 2)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from gateway.config import ConfigError, Settings, load_settings, schema

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_file_matches_the_built_in_defaults() -> None:
    from_file = tomllib.loads((ROOT / "config/gateway.toml").read_text())
    assert from_file == schema()


def test_example_documents_every_key_and_nothing_else() -> None:
    text = (ROOT / "config/example.toml").read_text()
    example = tomllib.loads(text)
    assert {s: set(keys) for s, keys in example.items()} == {s: set(keys) for s, keys in schema().items()}
    lines = text.splitlines()
    for section, keys in schema().items():
        for key in keys:
            at = next(i for i, line in enumerate(lines) if line.startswith(f"{key} ="))
            assert lines[at - 1].startswith("#"), f"{section}.{key} has no comment above it"


def test_no_file_and_no_env_gives_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_settings(env={}) == Settings()


def test_env_overrides_file(tmp_path: Path) -> None:
    file = tmp_path / "g.toml"
    file.write_text('[http]\nport = 9000\n[database]\nurl = "postgresql://a@h/db"\n')
    s = load_settings(file, env={"GATEWAY_HTTP_PORT": "9100", "GATEWAY_INDEX_RELOAD_INTERVAL_S": "30"})
    assert s.http.port == 9100
    assert s.database.url == "postgresql://a@h/db"
    assert s.index.reload_interval_s == 30.0


def test_config_file_from_environment(tmp_path: Path) -> None:
    file = tmp_path / "g.toml"
    file.write_text("[sip]\nport = 5070\n")
    assert load_settings(env={"GATEWAY_CONFIG": str(file)}).sip.port == 5070


@pytest.mark.parametrize(
    ("env", "key", "words"),
    [
        ({"GATEWAY_HTTP_PORT": "70000"}, "http.port", "port"),
        ({"GATEWAY_HTTP_PORT": "eighty"}, "http.port", "integer"),
        ({"GATEWAY_SIP_PORT": "-1"}, "sip.port", "port"),
        ({"GATEWAY_HTTP_COLOUR": "blue"}, "http.colour", "unknown key"),
        ({"GATEWAY_NOPE_X": "1"}, "GATEWAY_NOPE_X", "no known section"),
        ({"GATEWAY_DATABASE_URL": "mysql://h/db"}, "database.url", "postgresql://"),
        ({"GATEWAY_DATABASE_URL": "postgresql://h:port/db"}, "database.url", "invalid port"),
        ({"GATEWAY_DATABASE_URL": "postgresql://h:5432"}, "database.url", "no database"),
        ({"GATEWAY_LOG_LEVEL": "loud"}, "log.level", "one of"),
        ({"GATEWAY_DATABASE_POOL_MIN_SIZE": "20"}, "database.pool_min_size", "exceed"),
        ({"GATEWAY_INDEX_RELOAD_INTERVAL_S": "0"}, "index.reload_interval_s", "greater than 0"),
        ({"GATEWAY_HTTP_PUBLIC_BASE_URL": "example.com"}, "http.public_base_url", "absolute"),
    ],
)
def test_bad_settings_name_their_key(
    env: dict[str, str], key: str, words: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as caught:
        load_settings(env=env)
    assert caught.value.key == key
    assert words in str(caught.value)


def test_unknown_section_and_bad_toml(tmp_path: Path) -> None:
    file = tmp_path / "g.toml"
    file.write_text("[smtp]\nhost = 'x'\n")
    with pytest.raises(ConfigError, match="smtp: unknown section"):
        load_settings(file, env={})
    file.write_text("[http\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(file, env={})


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"GATEWAY_HTTP_PORT": "99999"}, "gateway: config error: http.port: must be a TCP/UDP port"),
        ({"GATEWAY_DATABASE_URL": "not a url"}, "gateway: config error: database.url:"),
        ({"GATEWAY_HTTP_WHATEVER": "1"}, "gateway: config error: http.whatever: unknown key"),
    ],
)
def test_cli_prints_one_line_and_exits_2(env: dict[str, str], expected: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve"],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.startswith(expected)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
