from __future__ import annotations

from pathlib import Path

import pytest

from relay.core.errors import ConfigError
from relay.core.ratelimit import SlidingWindow
from relay.passwords import hash_password, verify_password
from relay.policy import Rate, load_policies, parse_rate


def test_password_hashes_are_salted_and_verify() -> None:
    first, second = hash_password("pw"), hash_password("pw")
    assert first != second and first.startswith("$scrypt$ln=14,r=8,p=1$")
    assert verify_password("pw", first) and not verify_password("pW", first)
    assert not verify_password("pw", "plaintext")


def test_defaults_trust_only_loopback(tmp_path: Path) -> None:
    access = load_policies(tmp_path).access
    assert access.is_trusted("127.0.0.1") and access.is_trusted("::1")
    assert not access.is_trusted("127.0.0.2") and not access.is_trusted("192.0.2.1")
    assert access.is_trusted("::ffff:127.0.0.1")
    assert access.users == []


def test_users_and_allowed_senders(tmp_path: Path) -> None:
    (tmp_path / "access.toml").write_text(
        'trusted_networks = ["10.0.0.0/8"]\n[[users]]\nname = "app"\n'
        f'password_hash = "{hash_password("x")}"\n'
        'allowed_senders = ["@Example.com", "alerts@example.org"]\nrate_limit = "10/m"\n')
    access = load_policies(tmp_path).access
    assert access.is_trusted("10.1.2.3") and not access.is_trusted("127.0.0.1")
    user = access.user("app")
    assert user is not None and user.rate == Rate(10, 60)
    assert user.may_send_as("a@example.com") and user.may_send_as("ALERTS@example.org")
    assert not user.may_send_as("a@example.com.evil") and not user.may_send_as("b@example.org")
    assert access.user("nobody") is None


VALID_USER = '[[users]]\nname = "a"\npassword_hash = "$scrypt$ln=14,r=8,p=1$AA==$AA=="\n'


@pytest.mark.parametrize("body, message", [
    ('trusted_networks = ["not-a-net"]', "trusted_networks.0"),
    ('[[users]]\nname = "a"\npassword_hash = "plain"', "users.0.password_hash: not a password"),
    (VALID_USER + 'allowed_senders = ["example.com"]', "users.0.allowed_senders.0"),
    (VALID_USER + 'rate_limit = "lots"', "users.0.rate_limit: invalid rate"),
    ("trusted_networks = [", "access.toml"),
])
def test_broken_policies_name_the_key(tmp_path: Path, body: str, message: str) -> None:
    (tmp_path / "access.toml").write_text(body)
    with pytest.raises(ConfigError) as error:
        load_policies(tmp_path)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_rates() -> None:
    assert parse_rate("1000/h") == Rate(1000, 3600)
    assert parse_rate("5/30s") == Rate(5, 30)
    assert parse_rate("") is None
    for bad in ("0/h", "ten/h", "5"):
        with pytest.raises(ValueError):
            parse_rate(bad)


def test_sliding_window() -> None:
    now = [0.0]
    window = SlidingWindow(clock=lambda: now[0])
    rate = Rate(2, 10)
    assert window.allows("u", rate)
    window.hit("u", rate)
    window.hit("u", rate)
    assert not window.allows("u", rate) and window.allows("other", rate)
    now[0] = 10.5
    assert window.allows("u", rate)


def test_the_shipped_example_policies_load() -> None:
    load_policies(Path(__file__).parents[2] / "policies")


def test_a_dkim_key_must_name_a_dns_record(tmp_path: Path) -> None:
    (tmp_path / "k.pem").write_text("not read: the names are refused first")
    (tmp_path / "dkim.toml").write_text(
        '[[keys]]\ndomain = "example.com"\nselector = "s 1"\nprivate_key = "k.pem"\n')
    with pytest.raises(ConfigError, match=r"dkim.toml: keys\.0: selector 's 1': letters"):
        load_policies(tmp_path)
