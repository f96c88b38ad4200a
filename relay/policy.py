"""policy: the operator's rules in `policies/*.toml`, validated, reloadable with SIGHUP.

`access.toml` says who may relay: clients in `trusted_networks` without AUTH, and SMTP AUTH
users (only over TLS) restricted to their `allowed_senders`. A missing file means the
defaults (loopback is trusted, no users). `domains.toml` shapes delivery per destination
domain (connections, rate, TLS), with "*" as the default. `dkim.toml` lists the signing
keys; each key file is read and checked when the policies load, so a missing or unreadable
key is an error at start or reload, never a silently unsigned message. A broken file is a
ConfigError naming the key; on reload the previous policies stay in force.
"""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_validator,
)

from relay.config import describe_validation_error
from relay.core.addresses import dkim_key_name_problem
from relay.core.errors import ConfigError
from relay.core.units import Rate, parse_rate
from relay.passwords import is_valid_hash

_M = TypeVar("_M", bound=BaseModel)
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _check_rate(value: str) -> str:
    parse_rate(value)
    return value


def _check_hash(value: str) -> str:
    if not is_valid_hash(value):
        raise ValueError("not a password hash; create one with `relayctl hash-password`")
    return value


def _check_sender_pattern(value: str) -> str:
    if "@" not in value:
        raise ValueError(f"{value!r}: use a full address or \"@domain\"")
    return value.lower()


class User(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    password_hash: Annotated[str, AfterValidator(_check_hash)]
    allowed_senders: list[Annotated[str, AfterValidator(_check_sender_pattern)]] = []
    rate_limit: Annotated[str, AfterValidator(_check_rate)] = ""

    def may_send_as(self, address: str) -> bool:
        address = address.lower()
        return any(address == p or (p.startswith("@") and address.endswith(p))
                   for p in self.allowed_senders)

    @property
    def rate(self) -> Rate | None:
        return parse_rate(self.rate_limit)


class AccessPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    trusted_networks: list[IpNetwork] = [ipaddress.ip_network("127.0.0.1/32"),
                                          ipaddress.ip_network("::1/128")]
    users: list[User] = []
    _trusted_cache: dict[str, bool] = PrivateAttr(default_factory=dict)

    def is_trusted(self, address: str) -> bool:
        """Whether a client address is in trusted_networks (answers are remembered: the
        policy is immutable, and a reload builds a new one)."""
        known = self._trusted_cache.get(address)
        if known is None:
            known = self._trusted_cache[address] = self._in_trusted_networks(address)
            if len(self._trusted_cache) > 4096:
                self._trusted_cache.clear()
        return known

    def _in_trusted_networks(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.split("%")[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.trusted_networks)

    def user(self, name: str) -> User | None:
        return next((u for u in self.users if u.name == name), None)


class DomainRule(BaseModel):
    """How mail to one destination domain is sent (policies/domains.toml)."""

    model_config = ConfigDict(extra="forbid")

    max_connections: int | None = Field(default=None, ge=1)  # default: [delivery]'s
    rate: Annotated[str, AfterValidator(_check_rate)] = ""  # "3600/h": smoothed, not bursts
    tls: Literal["opportunistic", "required", "none"] | None = None  # default: [delivery]'s

    @property
    def pace(self) -> Rate | None:
        return parse_rate(self.rate)


class DomainsPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    domains: dict[str, DomainRule] = {}

    def rule_for(self, domain: str) -> DomainRule:
        """The rule for `domain`, else for its nearest parent listed, else "*"."""
        labels = domain.lower().rstrip(".").split(".")
        for start in range(len(labels)):
            rule = self.domains.get(".".join(labels[start:]))
            if rule is not None:
                return rule
        return self.domains.get("*", DomainRule())


class PgpRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    recipients: list[Annotated[str, AfterValidator(_check_sender_pattern)]] = Field(
        min_length=1)  # full addresses or "@domain"
    mode: Literal["required", "if-available"] = "if-available"

    def matches(self, address: str) -> bool:
        address = address.lower()
        return any(address == p or (p.startswith("@") and address.endswith(p))
                   for p in self.recipients)


class PgpPolicy(BaseModel):
    """policies/pgp.toml: which recipients get PGP/MIME (RFC 3156) and from which keyring."""

    model_config = ConfigDict(extra="forbid")

    keyring: Path | None = None  # a GnuPG home directory; relative to the policies dir
    rules: list[PgpRule] = []

    def rule_for(self, address: str) -> PgpRule | None:
        return next((rule for rule in self.rules if rule.matches(address)), None)


class DkimKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    domain: str = Field(min_length=1)
    selector: str = Field(min_length=1)  # checked with the domain: _names_a_record
    private_key: Path  # relative to the policies directory
    algorithm: Literal["rsa-sha256", "ed25519-sha256"] = "rsa-sha256"
    _key: bytes = PrivateAttr(b"")  # the file's contents, read when the policy loads

    @property
    def key(self) -> bytes:
        return self._key

    @model_validator(mode="after")
    def _names_a_record(self) -> DkimKey:
        problem = dkim_key_name_problem(self.domain, self.selector)
        if problem:
            raise ValueError(problem)
        return self

    def covers(self, domain: str) -> bool:
        """Whether mail From: `domain` is signed with this key (its domain or a parent)."""
        mine, domain = self.domain.lower().rstrip("."), domain.lower().rstrip(".")
        return domain == mine or domain.endswith("." + mine)


class DkimPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: list[DkimKey] = []

    def keys_for(self, domain: str) -> list[DkimKey]:
        return [key for key in self.keys if key.covers(domain)]


@dataclass(frozen=True)
class Policies:
    access: AccessPolicy
    dkim: DkimPolicy = field(default_factory=DkimPolicy)
    domains: DomainsPolicy = field(default_factory=DomainsPolicy)
    pgp: PgpPolicy = field(default_factory=PgpPolicy)


def load_policies(directory: Path) -> Policies:
    """Load every policy file in `directory`; raise ConfigError with one line."""
    dkim = _load(directory / "dkim.toml", DkimPolicy)
    for index, key in enumerate(dkim.keys):
        path = dkim_key_path(key, directory)
        try:
            key._key = path.read_bytes()
            check_dkim_key(key.key, key.algorithm)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{directory / 'dkim.toml'}: keys[{index}].private_key: "
                              f"cannot use {path}: {getattr(exc, 'strerror', None) or exc}"
                              ) from exc
    pgp = _load(directory / "pgp.toml", PgpPolicy)
    if pgp.keyring is not None and not pgp.keyring.is_absolute():
        pgp.keyring = directory / pgp.keyring
    if pgp.rules and pgp.keyring is None:
        raise ConfigError(f"{directory / 'pgp.toml'}: keyring: needed for the rules")
    return Policies(access=_load(directory / "access.toml", AccessPolicy), dkim=dkim,
                    domains=_load(directory / "domains.toml", DomainsPolicy), pgp=pgp)


def dkim_key_path(key: DkimKey, directory: Path) -> Path:
    """Where a key of dkim.toml in `directory` is (a relative path is relative to it)."""
    return key.private_key if key.private_key.is_absolute() else directory / key.private_key


def check_dkim_key(key: bytes, algorithm: str) -> None:
    """ValueError unless `key` is a private key dkimpy can sign with."""
    from dkim.crypto import parse_pem_private_key

    if algorithm == "ed25519-sha256":
        import base64

        import nacl.signing

        try:
            nacl.signing.SigningKey(base64.b64decode(key.strip(), validate=True))
        except Exception as exc:
            raise ValueError(f"not an ed25519 key (base64 of 32 bytes): {exc}") from None
        return
    try:
        parse_pem_private_key(key)
    except Exception as exc:
        raise ValueError(f"not an RSA private key in PEM: {exc}") from None


def _load(path: Path, model: type[_M]) -> _M:
    data: dict[str, Any] = {}
    if path.exists():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: {exc}") from exc
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {describe_validation_error(exc)}") from exc
