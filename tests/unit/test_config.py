from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from relay import config as config_module
from relay.config import parse_duration, parse_size, split_hostport
from relay.core.errors import ConfigError


@pytest.mark.parametrize("text, seconds", [
    ("30s", 30), ("5m", 300), ("1h", 3600), ("5d", 432000), ("1h30m", 5400),
    ("250ms", 0.25), ("90", 90), (15, 15), ("2w", 1209600),
])
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5 minutes", "m5", "5x", "-5m", True])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize("text, size", [
    ("25MB", 25_000_000), ("512KB", 512_000), ("1GiB", 1 << 30), ("100", 100), (7, 7),
    ("1.5MB", 1_500_000),
])
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["25 parsecs", "MB", "", "-1MB"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_hostport() -> None:
    assert split_hostport("127.0.0.1:2525") == ("127.0.0.1", 2525)
    assert split_hostport("[::1]:25") == ("::1", 25)
    assert split_hostport("mx.example.com", 25) == ("mx.example.com", 25)
    with pytest.raises(ValueError):
        split_hostport("host:99999")
    with pytest.raises(ValueError):
        split_hostport("host")  # no port and no default


def test_file_values_env_overrides_and_relative_paths(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "relay.toml"
    path.write_text('[delivery]\nport = 2526\nnameservers = ["127.0.0.1:5353"]\n'
                    '[queue]\npath = "myspool"\n[retry]\nmax_age = "2d"\n')
    monkeypatch.setenv("RELAY_DELIVERY__PORT", "2727")
    monkeypatch.setenv("RELAY_SMTP__LISTEN", '["127.0.0.1:2600"]')
    config = config_module.load(path)
    assert config.delivery.port == 2727
    assert config.delivery.nameservers == ["127.0.0.1:5353"]
    assert config.smtp.listen == ["127.0.0.1:2600"]
    assert config.retry.max_age == 2 * 86400
    assert config.retry.min_backoff == 300
    assert config.queue.path == tmp_path.resolve() / "myspool"
    assert config.policies.path == tmp_path.resolve() / "policies"
    assert config.admin_token_path == tmp_path.resolve() / "myspool" / "admin.token"


def test_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "relay.toml").write_text('[delivery]\nport = 1\n')
    (tmp_path / "other.toml").write_text('[delivery]\nport = 2\n')
    (tmp_path / "third.toml").write_text('[delivery]\nport = 3\n')
    monkeypatch.delenv("RELAY_CONFIG", raising=False)
    assert config_module.load().delivery.port == 1
    monkeypatch.setenv("RELAY_CONFIG", str(tmp_path / "other.toml"))
    assert config_module.load().delivery.port == 2
    assert config_module.load(tmp_path / "third.toml").delivery.port == 3


@pytest.mark.parametrize("body, message", [
    ('[delivery]\nport = "x"\n', "delivery.port: Input should be a valid integer"),
    ('[delivery]\nport = 0\n', "delivery.port: Input should be greater than or equal to 1"),
    ('[retry]\nmax_age = "soon"\n', "retry.max_age: invalid duration 'soon'"),
    ('[smtp]\nmax_message_size = "big"\n', "smtp.max_message_size: invalid size 'big'"),
    ('[smtp]\nlisten = ["nonsense:port"]\n', "smtp.listen.0: invalid address"),
    ('[smtp]\nlisen = []\n', "smtp.lisen: unknown key"),
    ('[queue]\nbackend = "mysql"\n', "queue.backend: Input should be 'local' or 'postgres'"),
    ('[queue]\nbackend = "postgres"\n', "queue: the postgres backend needs dsn or dsn_file"),
    ('[queue]\ndsn = "postgresql://x"\ndsn_file = "f"\n', "queue: give dsn or dsn_file, not both"),
    ('[queue]\nlease = "0s"\n', "queue.lease: Input should be greater than or equal to 1"),
    ('[smtp]\nauth_failure_limit = "lots"\n', "smtp.auth_failure_limit: invalid rate 'lots'"),
    ('[delivery\n', "relay.toml: "),
    ('[bounces]\ndomain = "not a domain"\n', "bounces.domain: 'not a domain' is not a domain name"),
    ('[public]\nlisten = "127.0.0.1:8080"\nurl = "https://r.test"\n',
     "public: one-click unsubscribe needs [bounces] domain"),
    ('[bounces]\ndomain = "b.test"\n[public]\nlisten = "127.0.0.1:8080"\n',
     "public.url: how recipients reach [public] listen is needed"),
    ('[public]\nurl = "ftp://r.test"\n', "public.url: String should match pattern"),
    ('[queue]\nbackend = "postgres"\ndsn = "postgresql://x"\n[bounces]\ndomain = "b.test"\n',
     "bounces.secret_file: nodes that share a queue need one key"),
])
def test_errors_name_the_key_in_one_line(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "relay.toml"
    path.write_text(body)
    with pytest.raises(ConfigError) as error:
        config_module.load(path)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such configuration file"):
        config_module.load(tmp_path / "absent.toml")


def test_the_repository_relay_toml_is_valid() -> None:
    config = config_module.load(Path(__file__).parents[2] / "relay.toml")
    assert config.smtp.listen == ["127.0.0.1:2525"]
    assert config.admin.listen == "127.0.0.1:8025"


def test_a_bad_environment_override_is_blamed_on_its_variable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "relay.toml"
    path.write_text('[delivery]\nport = "twenty-five"\n')
    monkeypatch.setenv("RELAY_SMTP__MAX_RECIPIENTS", "abc")
    with pytest.raises(ConfigError) as error:
        config_module.load(path)
    from_env, from_file = str(error.value).split("; ")
    assert from_file.startswith(f"{path}: delivery.port: ")
    assert from_env.startswith("environment variable RELAY_SMTP__MAX_RECIPIENTS: "
                               "smtp.max_recipients: Input should be a valid integer")
    assert "abc" not in str(error.value)  # a value from the environment may be a secret


def test_webhooks_are_configured_and_shown_as_an_array_of_tables(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from relay.cli import main

    (tmp_path / "relay.toml").write_text(
        '[[webhooks]]\nurl = "http://127.0.0.1:9/a"\nsecret_file = "a.secret"\n'
        'events = ["delivered", "bounced"]\nmin_backoff = "2s"\n'
        '[[webhooks]]\nurl = "https://hooks.example/b"\nsecret_file = "/etc/b.secret"\n')
    loaded = config_module.load(tmp_path / "relay.toml")
    assert [hook.url for hook in loaded.webhooks] == ["http://127.0.0.1:9/a",
                                                      "https://hooks.example/b"]
    assert loaded.webhooks[0].secret_file == str(tmp_path / "a.secret")  # resolved
    shown = CliRunner().invoke(main, ["-c", str(tmp_path / "relay.toml"), "config", "show",
                                      "-n"])
    assert shown.exit_code == 0, shown.output
    parsed = tomllib.loads(shown.output)
    assert [hook["url"] for hook in parsed["webhooks"]] == [h.url for h in loaded.webhooks]
    assert parsed["webhooks"][0]["min_backoff"] == "2s"
    (tmp_path / "bad.toml").write_text('[[webhooks]]\nurl = "http://127.0.0.1:9/a"\n')
    with pytest.raises(ConfigError, match="secret_file"):
        config_module.load(tmp_path / "bad.toml")
