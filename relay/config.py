"""config: `relay.toml` plus `RELAY_<SECTION>__<KEY>` environment overrides.

This is the only module that reads the environment. The configuration is validated once
at start (and again by `relayctl config check`) and then passed explicitly to every stage.
Durations are strings like "30s", "5m", "5d"; sizes like "25MB". Relative paths are taken
relative to the directory of the configuration file, so a checkout runs from anywhere.
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from relay.core.errors import ConfigError
from relay.core.mailstates import EventType
from relay.core.units import (
    Rate,
    parse_duration,
    parse_rate,
    parse_size,
)

DEFAULT_LOCATIONS = (Path("relay.toml"), Path("/etc/relay/relay.toml"))
NO_FILE = "(defaults)"  # Config.source when no configuration file was found

def split_hostport(value: str, default_port: int = 0) -> tuple[str, int]:
    """"host:port", "[::1]:25" or "host" into (host, port); ValueError when malformed."""
    match = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?|([^:\[\]]+)(?::(\d+))?", value.strip())
    if not match:
        raise ValueError(f"invalid address {value!r}; use host:port or [v6addr]:port")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4) or default_port)
    if not 0 < port < 65536:
        raise ValueError(f"invalid address {value!r}: a port from 1 to 65535 is needed")
    return host, port


def _check_listen(value: object) -> object:
    if isinstance(value, str):
        split_hostport(value)
    return value


def _check_hostport(value: object) -> object:
    if isinstance(value, str) and value:
        split_hostport(value, default_port=25)
    return value


Duration = Annotated[float, BeforeValidator(parse_duration)]


def _required_rate(value: object) -> Rate:
    if isinstance(value, Rate):
        return value
    rate = parse_rate(value) if isinstance(value, str) else None
    if rate is None:
        raise ValueError("expected a rate such as \"10/10m\"")
    return rate


RateLimit = Annotated[Rate, BeforeValidator(_required_rate)]


def _optional_rate(value: object) -> Rate | None:
    if value is None or isinstance(value, Rate):
        return value
    if not isinstance(value, str):
        raise ValueError("expected a rate such as \"60/m\", or \"\" for no limit")
    return parse_rate(value)


OptionalRate = Annotated[Rate | None, BeforeValidator(_optional_rate)]
Size = Annotated[int, BeforeValidator(parse_size)]
ListenAddress = Annotated[str, BeforeValidator(_check_listen)]
HostPort = Annotated[str, BeforeValidator(_check_hostport)]
TlsMode = Literal["opportunistic", "required", "none"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerSection(_Section):
    hostname: str = Field(default_factory=socket.getfqdn)


class SmtpSection(_Section):
    listen: list[ListenAddress] = ["127.0.0.1:2525"]
    tls_listen: list[ListenAddress] = []
    tls_cert: str = ""
    tls_key: str = ""
    max_message_size: Size = parse_size("25MB")
    max_recipients: int = Field(1000, ge=1)
    # Refuse new mail with 452 4.3.1 when the spool's file system has less free space.
    min_free_space: Size = parse_size("100MB")
    timeout: Duration = parse_duration("5m")
    # Processes that accept SMTP (they share the listening sockets); 0: in the main process.
    workers: int = Field(default_factory=lambda: min(os.cpu_count() or 1, 8), ge=0, le=64)
    # Failed AUTH: each one in a session is answered after auth_failure_delay, doubled for
    # every further one; the max_auth_failures-th ends the session (421 4.7.0); a client
    # address with auth_failure_limit failures gets 454 4.7.0 for the rest of the window.
    auth_failure_delay: Duration = parse_duration("1s")
    max_auth_failures: int = Field(3, ge=1)
    auth_failure_limit: RateLimit = Rate(10, 600.0)
    # Clients outside trusted_networks (relay.smtp.anvil): connections per window (beyond:
    # 421 4.7.0) and mail transactions without AUTH (beyond: 450 4.7.1); "" for none.
    client_connection_rate: OptionalRate = Rate(60, 60.0)
    client_message_rate: OptionalRate = Rate(300, 60.0)

    @model_validator(mode="after")
    def _tls_listen_needs_a_certificate(self) -> SmtpSection:
        if self.tls_listen and not (self.tls_cert and self.tls_key):
            raise ValueError("tls_listen needs tls_cert and tls_key")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key go together")
        return self


class QueueSection(_Section):
    backend: Literal["local", "postgres"] = "local"
    path: Path = Path("spool")  # local backend: message files and index; always: the token
    # postgres backend: the database, as a DSN or (better: a password stays out of the
    # configuration and the environment) a file holding it, e.g. a mounted secret.
    dsn: str = ""
    dsn_file: str = ""
    # New work wakes every node (LISTEN/NOTIFY); false: nodes poll (a pooler in
    # transaction mode cannot hold a LISTEN).
    notify: bool = True
    # How long a claimed recipient stays leased without a renewal; the scheduler renews
    # its leases every quarter of this.
    lease: Duration = Field(parse_duration("2m"), ge=1.0)
    # postgres backend: this node's name, stable across restarts, one per node (a restart
    # takes back what the node's earlier run leased); empty: the host name (on
    # Kubernetes, the pod's name).
    node: str = Field("", pattern=r"^([A-Za-z0-9][A-Za-z0-9._-]{0,62})?$")

    @property
    def node_name(self) -> str:
        return self.node or socket.gethostname()

    @model_validator(mode="after")
    def _postgres_needs_a_database(self) -> QueueSection:
        if self.backend == "postgres" and not (self.dsn or self.dsn_file):
            raise ValueError("the postgres backend needs dsn or dsn_file")
        if self.dsn and self.dsn_file:
            raise ValueError("give dsn or dsn_file, not both")
        return self


class DeliverySection(_Section):
    port: int = Field(25, ge=1, le=65535)
    nameservers: list[HostPort] = []
    relayhost: HostPort = ""
    relayhost_username: str = ""
    relayhost_password_file: str = ""
    tls: TlsMode = "opportunistic"
    max_connections: int = Field(100, ge=1)
    max_connections_per_domain: int = Field(10, ge=1)
    # Recipients claimed from the queue at once (the active set, Postfix's
    # qmgr_message_recipient_limit): what this node works on and holds leases for.
    max_active: int = Field(10_000, ge=1)
    connect_timeout: Duration = parse_duration("30s")
    command_timeout: Duration = parse_duration("5m")
    # A destination none of whose hosts takes a connection or greets is left alone this
    # long (its mail deferred at once, with the reason), then probed with one connection.
    dead_destination_backoff: Duration = Field(parse_duration("1m"), ge=0.1)
    # How long one DNS lookup (MX, A/AAAA, MTA-STS's TXT) may take, retries included;
    # the answer is then cached for its TTL (relay.delivery.mx).
    dns_timeout: Duration = parse_duration("10s")
    # RFC 8461: honour the policies recipient domains publish (enforce: validated TLS only).
    mta_sts: bool = True
    mta_sts_port: int = Field(443, ge=1, le=65535)  # where policies are fetched; for tests
    # PEM CA certificates trusted for MTA-STS policy and MX hosts; empty: the system's.
    ca_file: str = ""


class RetrySection(_Section):
    min_backoff: Duration = parse_duration("5m")
    max_backoff: Duration = parse_duration("1h")
    max_age: Duration = parse_duration("5d")


class AdminSection(_Section):
    listen: ListenAddress = "127.0.0.1:8025"
    token_file: str = ""


class HistorySection(_Section):
    retention: Duration = parse_duration("7d")  # message histories and events, after delivery


class WebhookSection(_Section):
    """One [[webhooks]] endpoint: every event of the listed types is POSTed to `url`,
    signed with the secret in `secret_file` (Standard Webhooks)."""

    url: str = Field(pattern=r"^https?://[^\s/]+")
    events: list[EventType] = []  # empty: every type
    secret_file: str = ""
    max_in_flight: int = Field(4, ge=1, le=100)  # requests at once to this endpoint
    min_backoff: Duration = parse_duration("10s")  # after the first failure, doubling
    max_backoff: Duration = parse_duration("1h")
    give_up_after: Duration = parse_duration("1d")  # an event failing this long is dropped
    disable_after: Duration = parse_duration("3d")  # an endpoint failing this long stops

    @model_validator(mode="after")
    def _secret_needed(self) -> WebhookSection:
        if not self.secret_file:
            raise ValueError("a webhook needs secret_file (its signing secret)")
        return self


class BouncesSection(_Section):
    # VERP return paths b-<token>@domain, and mail that comes back there (relay.feedback);
    # empty: mail keeps the application's envelope sender.
    domain: str = ""
    notify_sender: bool = False  # the application's envelope sender gets DSNs as well
    listen: list[ListenAddress] = []  # more SMTP listeners, e.g. ["0.0.0.0:25"]
    secret_file: str = ""  # the key of its tokens; empty: <queue path>/feedback.key

    @field_validator("domain")
    @classmethod
    def _domain_is_a_name(cls, domain: str) -> str:
        if domain and not re.fullmatch(r"(?i)[a-z0-9-]+(\.[a-z0-9-]+)+", domain):
            raise ValueError(f"{domain!r} is not a domain name")
        return domain.lower()


class PublicSection(_Section):
    # One-click unsubscribe (RFC 8058), nothing else; empty: broadcasts carry only the
    # mailto form (with [bounces] domain).
    listen: ListenAddress | Literal[""] = ""
    url: str = Field("", pattern=r"^(https?://[^\s/]+(/\S*)?)?$")  # how recipients reach it


class PoliciesSection(_Section):
    path: Path = Path("policies")


class LogSection(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"  # json: one object per line, for log shippers


class Config(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RELAY_", env_nested_delimiter="__", extra="forbid", case_sensitive=False
    )

    server: ServerSection = ServerSection()
    smtp: SmtpSection = SmtpSection()
    queue: QueueSection = QueueSection()
    delivery: DeliverySection = DeliverySection()
    retry: RetrySection = RetrySection()
    admin: AdminSection = AdminSection()
    history: HistorySection = HistorySection()
    webhooks: list[WebhookSection] = []
    bounces: BouncesSection = BouncesSection()
    public: PublicSection = PublicSection()
    policies: PoliciesSection = PoliciesSection()
    log: LogSection = LogSection()

    # Where the file came from; relative paths were resolved against its directory.
    source: str = Field(NO_FILE, exclude=True)

    @model_validator(mode="after")
    def _public_needs_bounces(self) -> Config:
        if (self.public.listen or self.public.url) and not self.bounces.domain:
            raise ValueError("public: one-click unsubscribe needs [bounces] domain (its "
                             "tokens, and the mailto form of the link)")
        if (self.bounces.domain and self.queue.backend == "postgres"
                and not self.bounces.secret_file):
            raise ValueError("bounces.secret_file: nodes that share a queue need one key for "
                             "their tokens: name a file that every node has")
        if self.public.listen and not self.public.url:
            raise ValueError("public.url: how recipients reach [public] listen is needed")
        return self

    @property
    def admin_token_path(self) -> Path:
        if self.admin.token_file:
            return Path(self.admin.token_file)
        return self.queue.path / "admin.token"

    @property
    def feedback_key_path(self) -> Path:
        if self.bounces.secret_file:
            return Path(self.bounces.secret_file)
        return self.queue.path / "feedback.key"


def locate(explicit: str | Path | None) -> Path | None:
    """`-c FILE`, else `$RELAY_CONFIG`, else ./relay.toml, else /etc/relay/relay.toml."""
    chosen = explicit or os.environ.get("RELAY_CONFIG")
    if chosen:
        path = Path(chosen)
        if not path.is_file():
            raise ConfigError(f"{path}: no such configuration file")
        return path
    return next((p for p in DEFAULT_LOCATIONS if p.is_file()), None)


def load(explicit: str | Path | None = None) -> Config:
    """Read, merge with the environment and validate; raise ConfigError with one line."""
    path = locate(explicit)
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
    source = str(path) if path else NO_FILE
    try:
        config = _with_file(data)()
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, lambda loc: _origin(loc, source))
                          ) from exc
    except SettingsError as exc:  # a section given whole as JSON that is not JSON
        field = re.search(r'field "([^"]+)"', str(exc))
        name = f"RELAY_{field.group(1).upper()}" if field else "a RELAY_* variable"
        raise ConfigError(f"environment variable {name}: not valid JSON") from exc
    base = path.parent if path else Path.cwd()
    return resolve_paths(config, base.resolve(), source)


def describe_validation_error(exc: ValidationError,
                              origin: Callable[[tuple[Any, ...]], str] | None = None) -> str:
    """One line: `section.key: what is wrong` for every error, each after where the value
    came from when `origin` says."""
    parts = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        message = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        parts.append(f"{origin(tuple(err['loc']))}: " if origin else "")
        parts[-1] += f"{key}: {message}"
    return "; ".join(parts)


def _origin(loc: tuple[Any, ...], source: str) -> str:
    """Where the value of the key at `loc` came from: its environment override (named,
    its value never shown: it may be a secret), else the file."""
    for depth in (2, 1):  # RELAY_SMTP__MAX_RECIPIENTS, or a whole section as JSON
        name = "RELAY_" + "__".join(str(part) for part in loc[:depth]).upper()
        if len(loc) >= depth and any(key.upper() == name for key in os.environ):
            return f"environment variable {name}"
    return source


def _with_file(data: dict[str, Any]) -> type[Config]:
    """A Config class whose lowest-priority source is the parsed file (env beats file)."""

    class FileConfig(Config):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return init_settings, _Environment(settings_cls), InitSettingsSource(settings_cls, data)

    return FileConfig


class _Environment(EnvSettingsSource):
    """RELAY_* variables; a list key also takes plain text, as one item or several
    separated by commas (RELAY_SMTP__LISTEN=127.0.0.1:2525), besides a JSON list."""

    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        try:
            return super().decode_complex_value(field_name, field, value)
        except ValueError:
            if isinstance(value, str) and _is_list(field):
                return [item.strip() for item in value.split(",") if item.strip()]
            raise


def _is_list(field: FieldInfo | None) -> bool:
    return field is not None and getattr(field.annotation, "__origin__", None) is list


def resolve_paths(config: Config, base: Path, source: str) -> Config:
    def resolve(p: str | Path) -> Path:
        return Path(p) if Path(p).is_absolute() else base / p

    queue: dict[str, Any] = {"path": resolve(config.queue.path)}
    if config.queue.dsn_file:
        queue["dsn_file"] = str(resolve(config.queue.dsn_file))
    update: dict[str, Any] = {
        "queue": config.queue.model_copy(update=queue),
        "policies": config.policies.model_copy(update={"path": resolve(config.policies.path)}),
        "source": source,
    }
    smtp = {k: str(resolve(getattr(config.smtp, k)))
            for k in ("tls_cert", "tls_key") if getattr(config.smtp, k)}
    if smtp:
        update["smtp"] = config.smtp.model_copy(update=smtp)
    delivery = {k: str(resolve(getattr(config.delivery, k)))
                for k in ("relayhost_password_file", "ca_file") if getattr(config.delivery, k)}
    if delivery:
        update["delivery"] = config.delivery.model_copy(update=delivery)
    if config.bounces.secret_file:
        update["bounces"] = config.bounces.model_copy(
            update={"secret_file": str(resolve(config.bounces.secret_file))})
    if config.admin.token_file:
        update["admin"] = config.admin.model_copy(
            update={"token_file": str(resolve(config.admin.token_file))})
    if config.webhooks:
        update["webhooks"] = [hook.model_copy(
            update={"secret_file": str(resolve(hook.secret_file))}) for hook in config.webhooks]
    return config.model_copy(update=update)


