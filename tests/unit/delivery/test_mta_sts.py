"""MTA-STS records, policies and MX patterns (RFC 8461 sections 3.1, 3.2 and 4.1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.core.errors import ConfigError
from relay.delivery.mta_sts import (
    PolicyError,
    mx_matches,
    parse_policy,
    trust_store,
    txt_policy_id,
)


@pytest.mark.parametrize(("records", "expected"), [
    (["v=STSv1; id=20160831085700Z;"], "20160831085700Z"),
    (["v=STSv1;id=abc"], "abc"),
    (["v=STSv1; id=abc; ext=1"], "abc"),
    (["v=spf1 -all", "v=STSv1; id=abc"], "abc"),  # other records are ignored
    (["v=STSv1; id=a", "v=STSv1; id=b"], None),  # two policies: none
    (["v=STSv1"], None),  # no id
    (["v=STSv1; id=not-alphanumeric"], None),
    (["v=STSv1; id=" + "a" * 33], None),  # longer than 32
    (["id=abc; v=STSv1"], None),  # the version comes first
    (["v=STSv10; id=abc"], None),
    ([], None),
])
def test_txt_record(records: list[str], expected: str | None) -> None:
    assert txt_policy_id(records) == expected


def test_policy_with_crlf_and_extra_fields() -> None:
    text = ("version: STSv1\r\nmode: enforce\r\nmx: MX1.Example.com.\r\nmx: *.example.net\r\n"
            "max_age: 604800\r\nfuture_field: ignored\r\n")
    policy = parse_policy(text, "id1")
    assert (policy.id, policy.mode, policy.mx, policy.max_age) == (
        "id1", "enforce", ("mx1.example.com", "*.example.net"), 604800)
    assert policy.allows("mx1.example.com") and policy.allows("a.example.net")
    assert not policy.allows("example.net")


def test_mode_none_needs_no_mx() -> None:
    assert parse_policy("version: STSv1\nmode: none\nmax_age: 0\n", "x").mx == ()


@pytest.mark.parametrize(("text", "problem"), [
    ("mode: enforce\nmx: a.test\nmax_age: 1\n", "version"),
    ("version: STSv2\nmode: enforce\nmx: a.test\nmax_age: 1\n", "version"),
    ("version: STSv1\nmode: strict\nmx: a.test\nmax_age: 1\n", "mode"),
    ("version: STSv1\nmode: enforce\nmx: a.test\n", "max_age"),
    ("version: STSv1\nmode: enforce\nmx: a.test\nmax_age: -5\n", "max_age"),
    ("version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 31557601\n", "max_age"),
    ("version: STSv1\nmode: enforce\nmax_age: 86400\n", "mx"),
])
def test_invalid_policies(text: str, problem: str) -> None:
    with pytest.raises(PolicyError, match=problem):
        parse_policy(text, "x")


@pytest.mark.parametrize(("pattern", "host", "expected"), [
    ("mail.example.com", "mail.example.com", True),
    ("mail.example.com", "MAIL.example.com.", True),
    ("mail.example.com", "mail2.example.com", False),
    ("*.example.com", "mx.example.com", True),
    ("*.example.com", "example.com", False),
    ("*.example.com", "a.b.example.com", False),  # one label only
    ("*.example.com", ".example.com", False),
    ("mx.xn--bcher-kva.test", "mx.b\u00fccher.test", True),  # compared in A-labels
])
def test_mx_patterns(pattern: str, host: str, expected: bool) -> None:
    assert mx_matches(pattern, host) is expected


def test_unreadable_trust_store_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    for path in (tmp_path / "missing.pem", tmp_path / "ca.pem"):
        with pytest.raises(ConfigError, match=f"delivery.ca_file: {path}"):
            trust_store(str(path))
