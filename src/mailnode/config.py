"""Configuration: one TOML file, validated into frozen dataclasses before anything starts.

The dataclasses below are the schema. `load_config` walks them against the parsed TOML and
refuses unknown keys, wrong types and bad values with `key.path: reason`, every problem of the
file at once. Secrets (SECRETS) may instead come from a `<key>_file` or the environment
(`MAILNODE_ADMIN_TOKEN`), so the file itself can be world-readable. With no file,
`Config()` is the embedded developer default: SQLite under ./mailnode-data, HTTP on
127.0.0.1:8025 and delivery to the local capture store, so nothing leaves the machine.
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
from typing import Any, Literal
from urllib.parse import urlsplit

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from mailnode.core.retry import RetryPolicy
from mailnode.errors import ConfigError

DEFAULT_DB_URL = "sqlite+aiosqlite:///./mailnode-data/mailnode.db"


@dataclass(frozen=True, slots=True)
class HostPort:
    """A `host:port` listen or connect address (IPv6 as `[::1]:25`)."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> HostPort:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"expected host:port, got {text!r}")
        host = host.removeprefix("[").removesuffix("]")
        try:
            port = int(port_text)
        except ValueError:
            raise ValueError(f"port must be a number, got {port_text!r}") from None
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} is out of range 0-65535")
        return cls(host, port)

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _non_negative(value: float) -> str | None:
    return None if value >= 0 else "must be 0 or more"


def _at_least_one(value: float) -> str | None:
    return None if value >= 1 else "must be at least 1"


def _networks(value: tuple[str, ...]) -> str | None:
    for text in value:
        try:
            ipaddress.ip_network(text, strict=False)
        except ValueError:
            return f"{text!r} is not an IP address or network (e.g. 127.0.0.1 or 10.0.0.0/8)"
    return None


def _check(fn: typing.Callable[[Any], str | None]) -> dict[str, Any]:
    return {"check": fn}


@dataclass(frozen=True, slots=True)
class StorageConfig:
    url: str = DEFAULT_DB_URL
    # Finished transactions (and their blobs) are deleted this long after they finished.
    gc_ttl_seconds: float = field(default=7 * 86400.0, metadata=_check(_positive))
    gc_interval_seconds: float = field(default=300.0, metadata=_check(_positive))
    # A transaction whose body never arrives ends as "downstream timeout" after this long.
    body_timeout_seconds: float = field(default=3600.0, metadata=_check(_positive))
    # "full" survives power loss; "normal" (WAL) survives a crash of the process only.
    sqlite_synchronous: Literal["full", "normal"] = "full"


@dataclass(frozen=True, slots=True)
class HttpConfig:
    listen: HostPort = HostPort("127.0.0.1", 8025)
    # The largest request body accepted (a message, an upload chunk).
    max_body_bytes: int = field(default=64 * 1024 * 1024, metadata=_check(_positive))
    # Reverse proxies (addresses or networks) whose X-Forwarded-For and X-Forwarded-Proto are
    # believed: tracking in "full" mode, login throttling and logs then see the real client.
    trusted_proxies: tuple[str, ...] = field(default=(), metadata=_check(_networks))


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    mode: Literal["mx", "smarthost", "capture"] = "capture"
    smarthost: HostPort | None = None
    smarthost_username: str | None = None
    # A secret: or smarthost_password_file, or $MAILNODE_DELIVERY_SMARTHOST_PASSWORD.
    smarthost_password: str | None = None
    smarthost_password_file: str = ""
    # The SMTP port of MX hosts: 25 on the Internet; tests point it at a loopback sink.
    port: int = field(default=25, metadata=_check(lambda p: None if 0 < p < 65536 else "1-65535"))
    concurrency: int = field(default=64, metadata=_check(_at_least_one))
    per_destination_concurrency: int = field(default=8, metadata=_check(_at_least_one))
    connect_timeout_seconds: float = field(default=30.0, metadata=_check(_positive))
    # RFC 5321 §4.5.3.2 suggests 5 min per command and 10 min for the end-of-data reply.
    command_timeout_seconds: float = field(default=300.0, metadata=_check(_positive))
    starttls: Literal["opportunistic", "required", "off"] = "opportunistic"
    # A claimed delivery belongs to its process for this long; renewed while it runs.
    lease_seconds: float = field(default=60.0, metadata=_check(_positive))
    poll_interval_seconds: float = field(default=1.0, metadata=_check(_positive))
    max_message_bytes: int = field(default=50 * 1024 * 1024, metadata=_check(_positive))


@dataclass(frozen=True, slots=True)
class DnsConfig:
    # Empty: the system resolver. Entries are "ip" or "ip:port" (tests use a loopback server).
    nameservers: tuple[HostPort, ...] = ()
    timeout_seconds: float = field(default=5.0, metadata=_check(_positive))


@dataclass(frozen=True, slots=True)
class RetryConfig:
    initial_delay_seconds: float = field(default=60.0, metadata=_check(_non_negative))
    backoff_factor: float = field(default=2.0, metadata=_check(_at_least_one))
    max_delay_seconds: float = field(default=3600.0, metadata=_check(_non_negative))
    max_attempts: int = field(default=30, metadata=_check(_at_least_one))
    deadline_seconds: float = field(default=5 * 86400.0, metadata=_check(_non_negative))

    def policy(self) -> RetryPolicy:
        return RetryPolicy(
            initial_delay=self.initial_delay_seconds,
            backoff_factor=self.backoff_factor,
            max_delay=self.max_delay_seconds,
            max_attempts=self.max_attempts,
            deadline=self.deadline_seconds,
        )


@dataclass(frozen=True, slots=True)
class SubmissionConfig:
    """Port 587: authenticated clients that expect mailnode to retry for them."""

    enabled: bool = True
    listen: HostPort = HostPort("127.0.0.1", 2587)
    # How long to wait for the receiving server's RCPT / end-of-data answer before
    # answering 250 and storing the message to retry (DESIGN.md, the exploder's table).
    rcpt_timeout_seconds: float = field(default=5.0, metadata=_check(_non_negative))
    data_timeout_seconds: float = field(default=30.0, metadata=_check(_non_negative))
    # Allow AUTH without TLS when both ends are loopback (development only).
    allow_plaintext_auth_on_loopback: bool = False


@dataclass(frozen=True, slots=True)
class IngressListenerConfig:
    """Port 25: other MTAs delivering to the domains mailnode routes; they retry themselves."""

    enabled: bool = True
    listen: HostPort = HostPort("127.0.0.1", 2525)
    rcpt_timeout_seconds: float = field(default=30.0, metadata=_check(_non_negative))
    data_timeout_seconds: float = field(default=300.0, metadata=_check(_non_negative))
    # Refuse clients whose address has no forward-confirmed reverse DNS name (550 5.7.25), or
    # whose HELO/EHLO name does not resolve to their address (550 5.7.1). Checked at MAIL.
    require_fcrdns: bool = False
    require_helo_match: bool = False


@dataclass(frozen=True, slots=True)
class ImplicitTlsConfig:
    """Port 465: submission with TLS from the first byte (RFC 8314)."""

    enabled: bool = False
    listen: HostPort = HostPort("127.0.0.1", 2465)


@dataclass(frozen=True, slots=True)
class AuthThrottleConfig:
    """How failed AUTH attempts from one client IP are slowed down and then refused."""

    # The n-th failure in a row is answered after first_delay * 2**(n-1) seconds, at most max_delay.
    first_delay_seconds: float = field(default=1.0, metadata=_check(_non_negative))
    max_delay_seconds: float = field(default=8.0, metadata=_check(_non_negative))
    # After this many failures in a row the IP is refused (421) for ban_seconds.
    ban_after_failures: int = field(default=10, metadata=_check(_at_least_one))
    ban_seconds: float = field(default=900.0, metadata=_check(_non_negative))
    # A client with no failure for this long starts again from zero.
    forget_after_seconds: float = field(default=900.0, metadata=_check(_positive))
    # The table is bounded: past this many IPs the one idle longest is forgotten.
    max_clients: int = field(default=10_000, metadata=_check(_at_least_one))


@dataclass(frozen=True, slots=True)
class SmtpConfig:
    # The name in the greeting and EHLO answer; empty: the top-level hostname.
    hostname: str = ""
    max_message_bytes: int = field(default=50 * 1024 * 1024, metadata=_check(_positive))
    # RFC 5321 §4.5.3.1.8: a server must accept at least 100 recipients.
    max_recipients: int = field(default=100, metadata=_check(_at_least_one))
    max_connections: int = field(default=200, metadata=_check(_at_least_one))
    # RFC 5321 §4.5.3.2.7: a server should wait at least 5 minutes for the next command.
    command_timeout_seconds: float = field(default=300.0, metadata=_check(_positive))
    submission: SubmissionConfig = SubmissionConfig()
    ingress: IngressListenerConfig = IngressListenerConfig()
    submission_tls: ImplicitTlsConfig = ImplicitTlsConfig()
    auth_throttle: AuthThrottleConfig = AuthThrottleConfig()


@dataclass(frozen=True, slots=True)
class TlsConfig:
    # PEM files. Without them mailnode makes a self-signed certificate for development in
    # its data directory (clients will not trust it).
    cert_file: str = ""
    key_file: str = ""


def _endpoint_spec(value: str) -> str | None:
    if value == "capture":
        return None
    if value.startswith(("http://", "https://")):
        return None if urlsplit(value).hostname else "an HTTP receiver URL needs a host"
    kind, _, target = value.partition(":")
    if kind not in ("smtp", "lmtp"):
        return 'expected "capture", "smtp:host:port", "lmtp:host:port" or an http(s):// URL'
    try:
        HostPort.parse(target)
    except ValueError as exc:
        return f"{exc} (expected {kind}:host:port; unix sockets are not supported yet)"
    return None


def _route_domain(value: str) -> str | None:
    name = value.removeprefix("*.")
    if value == "*" or (name and "." in name and " " not in name and "@" not in name):
        return None
    return 'expected a domain ("example.com"), a wildcard ("*.example.com"), or "*"'


@dataclass(frozen=True, slots=True)
class IngressRoute:
    """Mail on port 25 for `domain` goes to `endpoint`."""

    domain: str = field(metadata=_check(_route_domain))
    endpoint: str = field(default="capture", metadata=_check(_endpoint_spec))
    # A second endpoint that gets a copy of every message (an archive); it never changes the
    # answer to the client, and is retried on its own. Empty: no copy.
    copy_to: str = field(default="", metadata=_check(lambda v: None if not v else _endpoint_spec(v)))
    # Refuse mail whose SPF check fails (550 5.7.23), or that fails DMARC (550 5.7.26).
    # Otherwise failures are only recorded in the Authentication-Results header.
    reject_spf_fail: bool = False
    reject_dmarc_fail: bool = False


@dataclass(frozen=True, slots=True)
class IngressConfig:
    # Recipient domains accepted on port 25, first match wins. Everything else is refused
    # (550 5.7.1 relaying denied). "*" is allowed only with the capture endpoint, which
    # never relays.
    routes: tuple[IngressRoute, ...] = (IngressRoute("*", "capture"),)
    # Check SPF, DKIM, ARC and DMARC of mail arriving on port 25 and record the results in an
    # Authentication-Results header (RFC 8601). Uses the [dns] resolvers.
    check_authentication: bool = True


FILTERS = ("received_header", "validation", "dkim", "router")
# Validation first: headers it adds (Message-ID, Date) then sit below this hop's Received
# header, which stays on top as trace headers must (RFC 5322 §3.6.7).
DEFAULT_CHAIN = ("validation", "received_header", "dkim", "router")


def _known_filters(value: tuple[str, ...]) -> str | None:
    unknown = [name for name in value if name not in FILTERS]
    if unknown:
        return f"unknown filter {unknown[0]!r}; known filters: {', '.join(FILTERS)}"
    if "router" in value and value[-1] != "router":
        return "'router' must be the last filter"
    return None


@dataclass(frozen=True, slots=True)
class SenderConfig:
    """A sender profile: the filter chain, whether to retry and whether to bounce."""

    filters: tuple[str, ...] = field(default=DEFAULT_CHAIN, metadata=_check(_known_filters))
    retry: bool = True
    bounce: bool = True
    # Add Message-ID and Date when the message lacks them (validation filter).
    add_missing_headers: bool = True
    # Overrides [retry] for this profile.
    retry_policy: RetryConfig | None = None


def _default_senders() -> dict[str, SenderConfig]:
    return {
        "api": SenderConfig(),
        "submission": SenderConfig(),
        "ingress": SenderConfig(filters=("received_header", "router"), bounce=True),
        # DSNs: retried, never bounced (RFC 3464 §2: no DSN about a DSN).
        "bounce": SenderConfig(filters=("router",), bounce=False, add_missing_headers=False),
        # Copies for an ingress route's copy_to endpoint: retried, never bounced to the sender.
        "copy": SenderConfig(filters=("received_header", "router"), bounce=False, add_missing_headers=False),
        # /v1 sends: rendered per recipient, then signed with the domain's key. No DSN to the
        # sender: the VERP return path brings bounces back to mailnode, and the batch shows
        # each delivery's outcome.
        "platform": SenderConfig(filters=("dkim", "router"), bounce=False, add_missing_headers=False),
    }


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """The operator token that admin routes (/v1/domains and their keys) require."""

    # Empty: admin routes refuse everyone. `mailnode init` writes a random one; the developer
    # default keeps one in its data directory. A secret: or token_file (read the token from
    # this file), or $MAILNODE_ADMIN_TOKEN.
    token: str = ""
    token_file: str = ""


def _ip_address(value: tuple[str, ...]) -> str | None:
    for text in value:
        try:
            ipaddress.ip_address(text)
        except ValueError:
            return f"{text!r} is not an IPv4 or IPv6 address"
    return None


@dataclass(frozen=True, slots=True)
class PlatformConfig:
    """The sending platform (/v1): domains, DKIM, batch sends."""

    # Envelope senders (VERP return paths) are addresses on this domain, and bounces come back
    # to it on port 25. Empty: "bounces." + hostname.
    bounce_domain: str = ""
    # The addresses mail leaves from, for the SPF records GET /v1/domains/{d}/dns proposes.
    sending_ips: tuple[str, ...] = field(default=(), metadata=_check(_ip_address))
    dkim_selector: str = "mailnode"
    dkim_algorithm: Literal["rsa", "ed25519"] = "rsa"
    max_recipients_per_send: int = field(default=50_000, metadata=_check(_at_least_one))
    # The largest rendered content of one send (bodies and decoded attachments).
    max_send_bytes: int = field(default=25 * 1024 * 1024, metadata=_check(_positive))
    # A repeated Idempotency-Key gets the first answer for this long.
    idempotency_ttl_seconds: float = field(default=86400.0, metadata=_check(_positive))


@dataclass(frozen=True, slots=True)
class TrackingConfig:
    # Where open pixels and rewritten links point; empty: the HTTP listen address.
    base_url: str = ""
    # How long a tracking or unsubscribe link in a sent message keeps working.
    token_lifetime_days: float = field(default=365.0, metadata=_check(_positive))


@dataclass(frozen=True, slots=True)
class EventsConfig:
    # Raw events older than this are deleted; the hourly counts are kept.
    retention_days: float = field(default=90.0, metadata=_check(_positive))


@dataclass(frozen=True, slots=True)
class WebhooksConfig:
    # Allow webhook URLs whose host is (or resolves to) a loopback, private or link-local
    # address. Off by default: a sending domain's key must not reach the operator's network.
    allow_private: bool = False
    # How long one POST may take.
    timeout_seconds: float = field(default=10.0, metadata=_check(_positive))
    # An event is retried with backoff for this long, then given up.
    retry_hours: float = field(default=24.0, metadata=_check(_positive))
    # The first retry's delay; later ones are 3, 6, 30, 90, 180 and then 360 times it.
    retry_base_seconds: float = field(default=10.0, metadata=_check(_positive))
    # A webhook that has failed without a success for this long is disabled.
    disable_after_days: float = field(default=3.0, metadata=_check(_positive))
    # POSTs in flight at once, over all webhooks.
    concurrency: int = field(default=8, metadata=_check(_at_least_one))


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    # GET /metrics without credentials, for a Prometheus on the same host; off: it takes the
    # admin token as Bearer. Its labels hold no addresses, domains, ids or secrets either way.
    public: bool = False


@dataclass(frozen=True, slots=True)
class DkimConfig:
    selector: str
    key_file: str


@dataclass(frozen=True, slots=True)
class Config:
    # The name this server gives itself in Received headers, DSNs and EHLO.
    hostname: str = "localhost"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # "text": key=value lines; "json": one object per line, the ids as fields (mailnode.logs).
    log_format: Literal["text", "json"] = "text"
    # On SIGTERM: how long open HTTP requests, SMTP sessions and running deliveries may take,
    # all together, before what is left is handed back to the queue. Seconds.
    stop_grace_seconds: float = field(default=10.0, metadata=_check(_non_negative))
    storage: StorageConfig = StorageConfig()
    http: HttpConfig = HttpConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    dns: DnsConfig = DnsConfig()
    retry: RetryConfig = RetryConfig()
    senders: Mapping[str, SenderConfig] = field(default_factory=_default_senders)
    dkim: Mapping[str, DkimConfig] = field(default_factory=dict)
    smtp: SmtpConfig = SmtpConfig()
    tls: TlsConfig = TlsConfig()
    ingress: IngressConfig = IngressConfig()
    admin: AdminConfig = AdminConfig()
    platform: PlatformConfig = PlatformConfig()
    tracking: TrackingConfig = TrackingConfig()
    events: EventsConfig = EventsConfig()
    webhooks: WebhooksConfig = WebhooksConfig()
    metrics: MetricsConfig = MetricsConfig()

    @property
    def smtp_hostname(self) -> str:
        return self.smtp.hostname or self.hostname

    @property
    def bounce_domain(self) -> str:
        return self.platform.bounce_domain or f"bounces.{self.hostname}"

    @property
    def tracking_base_url(self) -> str:
        return self.tracking.base_url or f"http://{self.http.listen}"

    def admin_token(self) -> str:
        """The operator token ("" = none): loading resolved token_file and the environment."""
        return self.admin.token

    def sender(self, name: str) -> SenderConfig | None:
        return self.senders.get(name)

    def retry_policy(self, sender: str) -> RetryPolicy | None:
        """The retry policy for a sender profile, or None when it does not retry."""
        profile = self.senders.get(sender)
        if profile is None or not profile.retry:
            return None
        return (profile.retry_policy or self.retry).policy()


# The keys whose value is a secret: (table, key). Each may be given in the file, in the file
# that `<key>_file` names (one line; surrounding whitespace dropped), or in the environment as
# MAILNODE_<TABLE>_<KEY>; more than one of them is an error rather than a silent precedence.
SECRETS: tuple[tuple[str, str], ...] = (("admin", "token"), ("delivery", "smarthost_password"))


def secret_env_var(table: str, key: str) -> str:
    return f"MAILNODE_{table}_{key}".upper()


def load_config(path: Path | None, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate a TOML file; None gives the embedded developer default.

    Secrets are resolved from `environ` (the process environment unless given).
    """
    environ = os.environ if environ is None else environ
    if path is None:
        return _finish(Config(), environ)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return config_from_dict(data, environ)


def config_from_dict(data: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Config:
    """Validate already-parsed TOML (also used by tests to build configs).

    Secrets come from the file and `*_file` keys only, unless an `environ` is given.
    """
    config: Config = _build(Config, data, "")
    return _finish(config, environ or {})


def _finish(config: Config, environ: Mapping[str, str]) -> Config:
    problems: list[str] = []
    config = _resolve_secrets(config, environ, problems)
    problems.extend(_cross_field_problems(config))
    if problems:
        raise ConfigError(*problems)
    return config


def _resolve_secrets(config: Config, environ: Mapping[str, str], problems: list[str]) -> Config:
    """Each secret's value from the one place it was given; `problems` says what went wrong."""
    for table_name, key in SECRETS:
        table = getattr(config, table_name)
        path = f"{table_name}.{key}"
        var = secret_env_var(table_name, key)
        file_name = getattr(table, f"{key}_file")
        given = {
            path: getattr(table, key) or None,
            f"{path}_file": file_name or None,
            f"${var}": environ.get(var) or None,
        }
        sources = [where for where, value in given.items() if value is not None]
        if len(sources) > 1:
            problems.append(f"{path}: given in {' and '.join(sources)}; keep one")
            continue
        value = given[path] or given[f"${var}"]
        if file_name:
            try:
                value = Path(file_name).read_text(encoding="utf-8").strip()
            except OSError as exc:
                problems.append(f"{path}_file: cannot read {file_name}: {exc.strerror}")
                continue
            except UnicodeDecodeError:
                problems.append(f"{path}_file: {file_name} is not UTF-8 text")
                continue
            if not value:
                problems.append(f"{path}_file: {file_name} is empty")
                continue
        table = dataclasses.replace(table, **{key: value if value is not None else getattr(table, key)})
        config = dataclasses.replace(config, **{table_name: table})
    return config


def _cross_field_problems(config: Config) -> list[str]:
    problems = []
    delivery = config.delivery
    if delivery.mode == "smarthost" and delivery.smarthost is None:
        problems.append('delivery.smarthost: required when delivery.mode = "smarthost"')
    for i, route in enumerate(config.ingress.routes):
        if route.domain == "*" and route.endpoint != "capture":
            problems.append(
                f'ingress.routes[{i}].domain: "*" would make mailnode an open relay; '
                'it is allowed only with endpoint = "capture"'
            )
    if config.admin_token() and len(config.admin_token()) < 24:
        problems.append("admin.token: too short to be secret; use at least 24 random characters")
    if bool(config.tls.cert_file) != bool(config.tls.key_file):
        problems.append("tls: set both cert_file and key_file, or neither")
    if "bounce" not in config.senders:
        problems.append("senders.bounce: the profile used for DSNs must exist")
    for domain, dkim in config.dkim.items():
        if not Path(dkim.key_file).is_file():
            problems.append(f"dkim.{domain}.key_file: no such file: {dkim.key_file}")
            continue
        problem = _dkim_key_problem(Path(dkim.key_file))
        if problem:
            problems.append(f"dkim.{domain}.key_file: {problem}")
    return problems


def _dkim_key_problem(path: Path) -> str | None:
    """Why the file cannot sign (found now, not as a 4xx on every message from the domain)."""
    try:
        key = load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror}"
    except (ValueError, TypeError, UnsupportedAlgorithm):  # TypeError: the key is encrypted
        return f"{path} is not an unencrypted PEM private key"
    if not isinstance(key, rsa.RSAPrivateKey):
        return f"{path} is not an RSA key (mailnode signs with rsa-sha256, RFC 8301)"
    return None


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _build(cls: type[Any], data: Any, path: str) -> Any:
    """The dataclass `cls` from a TOML table; ConfigError lists every problem found in it."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or '(top level)'}: expected a table, got {_kind(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    problems: list[str] = []
    known = ", ".join(sorted(fields))
    for name in sorted(set(data) - set(fields)):
        problems.append(f"{_join(path, name)}: unknown key (known keys: {known})")
    values = {}
    for name, value in data.items():
        if name not in fields:
            continue
        key_path = _join(path, name)
        try:
            values[name] = _convert(hints[name], value, key_path)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        problem = fields[name].metadata.get("check", lambda _: None)(values[name])
        if problem:
            problems.append(f"{key_path}: {problem}")
    if problems:
        raise ConfigError(*problems)
    if cls is Config and "senders" in values:
        values["senders"] = {**_default_senders(), **values["senders"]}
    try:
        return cls(**values)
    except TypeError as exc:  # a required key is missing
        raise ConfigError(f"{path or '(top level)'}: {exc}") from None


def _convert(hint: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):  # X | None: TOML has no null, so X
        return _convert(next(a for a in args if a is not type(None)), value, path)
    if origin is Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{path}: must be one of {choices}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {_kind(value)}")
        items = _convert_each(args[0], {f"{path}[{i}]": item for i, item in enumerate(value)})
        return tuple(items.values())
    if origin in (Mapping, dict):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a table, got {_kind(value)}")
        converted = _convert_each(args[1], {_join(path, key): item for key, item in value.items()})
        return dict(zip(value, converted.values(), strict=True))
    if hint is HostPort:
        try:
            return HostPort.parse(_expect(str, value, path))
        except ValueError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _build(hint, value, path)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return _expect(hint, value, path)


def _convert_each(
    hint: Any,
    items: Mapping[str, Any],
) -> dict[str, Any]:
    """Convert every item (keyed by its path), reporting the problems of all of them."""
    problems: list[str] = []
    converted = {}
    for path, item in items.items():
        try:
            converted[path] = _convert(hint, item, path)
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(*problems)
    return converted


def _expect(kind: type[Any], value: Any, path: str) -> Any:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{path}: expected {kind.__name__}, got {_kind(value)}")
    return value


def _kind(value: Any) -> str:
    names = {str: "a string", bool: "a boolean", int: "an integer", float: "a number"}
    names.update({list: "a list", dict: "a table"})
    return names.get(type(value), type(value).__name__)
