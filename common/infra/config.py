"""The one configuration loader. Every setting comes from an environment variable with the
``CHRONOQ_`` prefix, the same name in every service (12-factor); :data:`OPTIONS` is the table the
CLI help and the README are written from."""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping

from common.infra.errors import ConfigError

PREFIX = "CHRONOQ_"


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected true/false, got {raw!r}")


def _list(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(raw: str) -> Any:
        value = kind(raw)
        if value <= 0:
            raise ValueError(f"must be > 0, got {raw!r}")
        return value

    return parse


def _port(raw: str) -> int:
    value = int(raw)
    if not 0 <= value <= 65535:
        raise ValueError(f"must be a port number 0-65535, got {raw!r}")
    return value


#: The value of a port setting that means "no endpoint".
PORT_OFF = -1


def _port_or_off(raw: str) -> int:
    """A port (0: any free one), or ``off`` (:data:`PORT_OFF`; also written back as ``-1``)."""
    if raw.strip().lower() in {"off", "-1"}:
        return PORT_OFF
    return _port(raw)


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}, got {raw!r}")
        return value

    return parse


def _name(raw: str) -> str:
    """A Kafka group-name part: letters, digits, '.', '_' and '-'."""
    value = raw.strip()
    if not value or not all((c.isascii() and c.isalnum()) or c in "._-" for c in value):
        raise ValueError(f"use letters, digits, '.', '_' or '-', got {raw!r}")
    return value


#: How people write a PostgreSQL URL. SQLAlchemy 2.1 gives a bare ``postgresql://`` to psycopg 3
#: and refuses ``postgres://`` (Heroku's and libpq's spelling); chronoq ships psycopg2.
_POSTGRES_SCHEMES = {"postgresql", "postgres"}
POSTGRES_DRIVER_SCHEME = "postgresql+psycopg2"


def normalize_database_url(url: str) -> str:
    """``url`` with ``postgresql://`` or ``postgres://`` spelled ``postgresql+psycopg2://``, the
    driver chronoq installs. An explicit driver (``postgresql+asyncpg://``) and every other
    database are left as they are."""
    url = url.strip()
    scheme, sep, rest = url.partition("://")
    if sep and scheme.lower() in _POSTGRES_SCHEMES:
        return f"{POSTGRES_DRIVER_SCHEME}://{rest}"
    return url


def _opt(env: str, default: Any, parse: Callable[[str], Any], help: str) -> Any:
    return field(default=default, metadata={"env": PREFIX + env, "parse": parse, "help": help})


@dataclass(frozen=True)
class Settings:
    """chronoq's settings; build one with :func:`load_settings`."""

    home: str = _opt("HOME", ".chronoq", str, "Directory for local state: SQLite file, broker port, logs.")
    database_url: str = _opt(
        "DATABASE_URL", "", str,
        "SQLAlchemy URL of the database (`postgresql://user:password@host:5432/db`; `postgres://` "
        "works too); default: a SQLite file in CHRONOQ_HOME.",
    )
    db_pool_size: int = _opt("DB_POOL_SIZE", 10, _positive(int), "Connections per process (PostgreSQL).")
    kafka_bootstrap: str = _opt("KAFKA_BOOTSTRAP", "127.0.0.1:9092", str, "Kafka bootstrap servers, comma separated.")
    topic_jobs: str = _opt("TOPIC_JOBS", "scheduled-jobs-topic", str, "Topic the scanner publishes due jobs to.")
    topic_updates: str = _opt(
        "TOPIC_UPDATES", "scheduled-updated-jobs-topic", str, "Topic executors publish transitions to."
    )
    topic_dlq: str = _opt("TOPIC_DLQ", "scheduled-jobs-dlq", str, "Dead-letter topic.")
    topic_partitions: int = _opt("TOPIC_PARTITIONS", 6, _positive(int), "Partitions when chronoq creates its topics.")
    group_prefix: str = _opt(
        "GROUP_PREFIX", "chronoq", _name,
        "Prefix of the consumer groups: `<prefix>-executors` and `<prefix>-results`. Give every "
        "deployment that shares a Kafka cluster its own (and its own topics).",
    )
    group_join_timeout_seconds: float = _opt(
        "GROUP_JOIN_TIMEOUT_SECONDS", 40.0, _positive(float),
        "A consumer that has not completed its group join for this long (keep it a few session "
        "timeouts) logs an error, reports itself unhealthy and rejoins as a fresh member.",
    )
    kafka_connect_timeout_ms: int = _opt(
        "KAFKA_CONNECT_TIMEOUT_MS", 3000, _positive(int),
        "How long reaching Kafka may take before it counts as down: the API and scanner then leave "
        "jobs in the database for the next pass rather than hold a request.",
    )
    kafka_session_timeout_ms: int = _opt(
        "KAFKA_SESSION_TIMEOUT_MS", 10000, _positive(int), "Consumer-group session timeout."
    )
    kafka_max_poll_interval_ms: int = _opt(
        "KAFKA_MAX_POLL_INTERVAL_MS", 30000, _positive(int), "Longest pause between polls before a member is evicted."
    )
    max_message_bytes: int = _opt(
        "MAX_MESSAGE_BYTES", 1_000_000, _positive(int), "Messages larger than this go to the dead-letter topic."
    )
    scan_interval_seconds: float = _opt(
        "SCAN_INTERVAL_SECONDS", 60.0, _positive(float), "Scanner window length; it wakes at every window boundary."
    )
    sweep_interval_seconds: float = _opt(
        "SWEEP_INTERVAL_SECONDS", 5.0, _positive(float),
        "Between window boundaries the scanner also looks this often for overdue jobs and "
        "expired leases, so a lost dispatch is recovered within about one lease.",
    )
    scan_batch_size: int = _opt("SCAN_BATCH_SIZE", 500, _positive(int), "Jobs claimed per scanner transaction.")
    lease_seconds: float = _opt(
        "LEASE_SECONDS", 30.0, _positive(float),
        "How long a dispatched job may stay silent (past its due time; or, once running, since its "
        "executor's last heartbeat) before the scanner dispatches it again.",
    )
    executor_id: str = _opt("EXECUTOR_ID", "", str, "Name of this executor in the history; default host:pid.")
    executor_workers: int = _opt(
        "EXECUTOR_WORKERS", 32, _positive(int),
        "Threads for job handlers written as plain functions (user handlers); the built-in types "
        "run on the executor's event loop and do not take one.",
    )
    claim_ahead_seconds: float = _opt(
        "CLAIM_AHEAD_SECONDS", 0.5, _positive(float),
        "An executor claims each attempt's start this long before it is due, many in one "
        "statement; a cancel after the claim answers 409.",
    )
    http_pool_size: int = _opt(
        "HTTP_POOL_SIZE", 100, _positive(int),
        "Keep-alive connections one executor holds open for http jobs, across all hosts.",
    )
    default_max_retries: int = _opt("DEFAULT_MAX_RETRIES", 3, int, "Retries of a job that does not say (0-10).")
    default_timeout_seconds: float = _opt(
        "DEFAULT_TIMEOUT_SECONDS", 300.0, _positive(float), "Timeout of a job that does not say."
    )
    retry_backoff_seconds: float = _opt(
        "RETRY_BACKOFF_SECONDS", 2.0, _positive(float), "First retry delay; doubles each retry."
    )
    retry_backoff_max_seconds: float = _opt(
        "RETRY_BACKOFF_MAX_SECONDS", 300.0, _positive(float), "Longest retry delay."
    )
    retry_jitter: float = _opt("RETRY_JITTER", 0.1, float, "Random share (0-1) added to each retry delay.")
    shell_enabled: bool = _opt("SHELL_ENABLED", False, _bool, "Allow the `shell` job type (admins only).")
    shell_allowed_commands: tuple[str, ...] = _opt(
        "SHELL_ALLOWED_COMMANDS", (), _list,
        "Executables `shell` jobs may run (`argv[0]` exactly as given, comma separated); empty: any.",
    )
    http_allowed_hosts: tuple[str, ...] = _opt(
        "HTTP_ALLOWED_HOSTS", (), _list,
        "Hosts `http` jobs may call (comma separated, `*.example.com` allowed); empty: any public host.",
    )
    http_allow_private: tuple[str, ...] = _opt(
        "HTTP_ALLOW_PRIVATE", (), _list,
        "Networks (CIDR, comma separated, e.g. `127.0.0.1/32,10.1.0.0/16`) that `http` jobs may reach "
        "although they are loopback, private, link-local, multicast or reserved; empty: none.",
    )
    http_detailed_errors: bool = _opt(
        "HTTP_DETAILED_ERRORS", False, _bool,
        "Say why an `http` call could not connect (refused, timed out, DNS) in the job's error; "
        "off: one text for all, so that jobs cannot map internal ports.",
    )
    http_max_redirects: int = _opt(
        "HTTP_MAX_REDIRECTS", 5, int, "Redirects an `http` job follows, each target checked again; 0: none."
    )
    http_output_bytes: int = _opt(
        "HTTP_OUTPUT_BYTES", 4096, _positive(int), "Bytes of an `http` response body kept as the job's output."
    )
    auth_enabled: bool = _opt(
        "AUTH", True, _bool,
        "Require a credential (API key or JWT) on every API request but /healthz and /readyz; `off` "
        "opens the API to anyone who can reach it.",
    )
    key_cache_seconds: float = _opt(
        "KEY_CACHE_SECONDS", 2.0, float,
        "How long an API process reuses an API key it verified; a revoked key stops working within "
        "this long (at once on the process that revoked it). 0: every request reads the key.",
    )
    jwt_issuer: str = _opt("JWT_ISSUER", "", str, "Accept JWT bearer tokens from this issuer (`iss`); empty: no JWTs.")
    jwt_audience: str = _opt("JWT_AUDIENCE", "chronoq", str, "Audience (`aud`) a JWT must name.")
    jwt_jwks_url: str = _opt("JWT_JWKS_URL", "", str, "URL of the issuer's JWKS (RS256/ES256 tokens).")
    jwt_secret: str = _opt("JWT_SECRET", "", str, "Shared secret of HS256 tokens (instead of a JWKS URL).")
    jwt_tenant_claim: str = _opt("JWT_TENANT_CLAIM", "tenant", str, "Claim that names the tenant.")
    jwt_role_claim: str = _opt(
        "JWT_ROLE_CLAIM", "role", str, "Claim that names the role (a string or a list; the highest known role counts)."
    )
    jwt_leeway_seconds: float = _opt("JWT_LEEWAY_SECONDS", 30.0, float, "Clock skew allowed on `exp`/`nbf`.")
    metrics_auth: bool = _opt(
        "METRICS_AUTH", True, _bool, "The API's /metrics needs a credential (any role); off: open like /healthz."
    )
    proxy_hops: int = _opt(
        "PROXY_HOPS", 0, int,
        "Reverse proxies in front of the API whose X-Forwarded-For/-Proto/-Host it believes (the client "
        "address of rate limits and the audit log); 0: none, the peer is the client.",
    )
    trusted_hosts: tuple[str, ...] = _opt(
        "TRUSTED_HOSTS", ("localhost", "127.0.0.1"), _list,
        "Host header values the API answers (comma separated, `.example.com` for subdomains); others get 400. "
        "Keeps a web page from driving a local chronoq through DNS rebinding. (werkzeug cannot match "
        "an IPv6 literal such as [::1]: name the host instead.)",
    )
    auth_failures_per_minute: int = _opt(
        "AUTH_FAILURES_PER_MINUTE", 20, _positive(int),
        "Failed authentications one client address may make per minute before it gets 429.",
    )
    rate_limit_storage: str = _opt(
        "RATE_LIMIT_STORAGE", "memory://", str,
        "Where rate-limit counters live: `memory://` (per API process) or `redis://host:6379` (shared).",
    )
    tenant_max_pending_jobs: int = _opt(
        "TENANT_MAX_PENDING_JOBS", 1_000_000, _positive(int),
        "Jobs one tenant may have not yet finished; per-tenant overrides through /api/tenants.",
    )
    tenant_creates_per_second: float = _opt(
        "TENANT_CREATES_PER_SECOND", 2000.0, _positive(float),
        "Jobs one tenant may create per second (a batch counts each job); over it: 429 with Retry-After.",
    )
    tenant_max_batch_jobs: int = _opt(
        "TENANT_MAX_BATCH_JOBS", 10_000, _positive(int), "Jobs in one batch request (at most 10,000)."
    )
    max_metadata_bytes: int = _opt(
        "MAX_METADATA_BYTES", 16384, _positive(int), "Largest accepted job `metadata` (JSON-encoded)."
    )
    local_tenant: str = _opt(
        "LOCAL_TENANT", "default", _name, "Tenant of requests when CHRONOQ_AUTH is off, and of `chronoq up`'s admin key."
    )
    retention_days: float = _opt(
        "RETENTION_DAYS", 30.0, _positive(float),
        "Finished jobs (SUCCESS, FAILED, CANCELLED, SKIPPED) and their history are deleted this long after they "
        "finished, in small batches by the scanner's maintenance thread.",
    )
    audit_retention_days: float = _opt(
        "AUDIT_RETENTION_DAYS", 90.0, _positive(float), "Audit records older than this are deleted by the scanner."
    )
    workflow_max_tasks: int = _opt(
        "WORKFLOW_MAX_TASKS", 100, _positive(int),
        "Most tasks one workflow may have (POST /api/workflows answers 422 beyond it).",
    )
    events_retention_hours: float = _opt(
        "EVENTS_RETENTION_HOURS", 24.0, _positive(float),
        "Job state changes are kept this long for `GET /api/events` clients that resume with Last-Event-ID; "
        "older ones are deleted by the scanner's maintenance thread.",
    )
    events_stream_seconds: float = _opt(
        "EVENTS_STREAM_SECONDS", 300.0, _positive(float),
        "A `GET /api/events` stream ends after this long (clients reconnect with Last-Event-ID), so that "
        "no API thread is held for ever.",
    )
    events_max_streams: int = _opt(
        "EVENTS_MAX_STREAMS", 4, _positive(int),
        "Open `GET /api/events` streams per API worker process (each holds one of its 8 threads); "
        "beyond it: 503 with Retry-After.",
    )
    events_keepalive_seconds: float = _opt(
        "EVENTS_KEEPALIVE_SECONDS", 5.0, _positive(float),
        "A `GET /api/events` stream sends a `: keep-alive` comment after this long without an event; "
        "a client that left is noticed at the next write, which frees its stream's place.",
    )
    events_poll_seconds: float = _opt(
        "EVENTS_POLL_SECONDS", 0.2, _positive(float),
        "How often an API process with open event streams reads new job state changes (one query "
        "for all its streams).",
    )
    secret_key: str = _opt(
        "SECRET_KEY", "", str,
        "Fernet key(s) that encrypt secret header and env values and signing secrets at rest, comma "
        "separated: the first encrypts, all decrypt (rotation). Without one, secret values are refused.",
    )
    kafka_security_protocol: str = _opt(
        "KAFKA_SECURITY_PROTOCOL", "PLAINTEXT", str, "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."
    )
    kafka_sasl_mechanism: str = _opt(
        "KAFKA_SASL_MECHANISM", "", str, "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (with a SASL protocol)."
    )
    kafka_sasl_username: str = _opt("KAFKA_SASL_USERNAME", "", str, "SASL user name.")
    kafka_sasl_password: str = _opt("KAFKA_SASL_PASSWORD", "", str, "SASL password.")
    kafka_ssl_cafile: str = _opt("KAFKA_SSL_CAFILE", "", str, "CA bundle that signs the brokers' certificates.")
    kafka_ssl_certfile: str = _opt("KAFKA_SSL_CERTFILE", "", str, "Client certificate (mutual TLS).")
    kafka_ssl_keyfile: str = _opt("KAFKA_SSL_KEYFILE", "", str, "Client certificate's key (mutual TLS).")
    handlers: tuple[str, ...] = _opt(
        "HANDLERS", (), _list, "Extra job types as `type=package.module:function`, comma separated."
    )
    api_host: str = _opt("API_HOST", "127.0.0.1", str, "Address the API binds to.")
    api_port: int = _opt("API_PORT", 8080, _positive(int), "Port the API listens on.")
    api_workers: int = _opt("API_WORKERS", 2, _positive(int), "gunicorn worker processes.")
    max_payload_bytes: int = _opt(
        "MAX_PAYLOAD_BYTES", 65536, _positive(int), "Largest accepted job payload (JSON-encoded)."
    )
    max_request_bytes: int = _opt(
        "MAX_REQUEST_BYTES", 4 * 1024 * 1024, _positive(int), "Largest accepted request body."
    )
    past_tolerance_seconds: float = _opt(
        "PAST_TOLERANCE_SECONDS", 5.0, float, "How far in the past an `execute_at` may be and still be accepted."
    )
    health_port: int = _opt(
        "HEALTH_PORT", 0, _port,
        "One port for the health and metrics endpoint (`/healthz`, `/metrics`) of whichever service "
        "runs (a container each); 0: each service its own port below.",
    )
    health_host: str = _opt(
        "HEALTH_HOST", "127.0.0.1", str,
        "Address the metrics (and health) endpoints of the API, scanner, executors and result writer bind to.",
    )
    scanner_metrics_port: int = _opt(
        "SCANNER_METRICS_PORT", 9101, _port_or_off,
        "The scanner's `/metrics` and `/healthz` port; 0: any free port (logged); `off`: none.",
    )
    results_metrics_port: int = _opt(
        "RESULTS_METRICS_PORT", 9102, _port_or_off,
        "The result writer's `/metrics` and `/healthz` port; 0: any free port (logged); `off`: none.",
    )
    api_metrics_port: int = _opt(
        "API_METRICS_PORT", 9103, _port_or_off,
        "Port where the API's gunicorn master serves the `/metrics` of all its workers, without a "
        "credential (on CHRONOQ_HEALTH_HOST); 0: any free port (logged); `off`: none.",
    )
    executor_metrics_port: int = _opt(
        "EXECUTOR_METRICS_PORT", 9110, _port_or_off,
        "An executor's `/metrics` and `/healthz` port (`chronoq up` gives its executors 9110, 9111, …); "
        "taken: any free port, logged; 0: any free port; `off`: none.",
    )
    log_format: str = _opt(
        "LOG_FORMAT", "text", _choice("text", "json"),
        "`text`: one readable line per event; `json`: one JSON object per line, with `job_id`, "
        "`attempt` and `token` as fields where a line is about a job.",
    )
    log_level: str = _opt("LOG_LEVEL", "INFO", str, "Log level of every service.")
    tracing: bool = _opt(
        "TRACING", False, _bool,
        "`on`: export OpenTelemetry traces over OTLP/HTTP, configured by the standard `OTEL_*` variables "
        "(needs the `otel` extra; docs/tracing.md).",
    )

    @property
    def resolved_database_url(self) -> str:
        """The database URL, defaulting to a SQLite file in :attr:`home`; a PostgreSQL URL
        without a driver gets psycopg2 (:func:`normalize_database_url`)."""
        if self.database_url:
            return normalize_database_url(self.database_url)
        return f"sqlite:///{Path(self.home).resolve() / 'chronoq.db'}"

    @property
    def resolved_executor_id(self) -> str:
        return self.executor_id or f"{socket.gethostname()}:{os.getpid()}"

    @property
    def topics(self) -> tuple[str, str, str]:
        return (self.topic_jobs, self.topic_updates, self.topic_dlq)

    @property
    def executor_group(self) -> str:
        """The consumer group of the executors on the jobs topic."""
        return f"{self.group_prefix}-executors"

    @property
    def results_group(self) -> str:
        """The consumer group of the result writers on the updates topic."""
        return f"{self.group_prefix}-results"


#: Settings whose values are credentials: shown masked by ``chronoq config`` and never logged.
SECRET_SETTINGS = frozenset({"jwt_secret", "secret_key", "kafka_sasl_password"})
#: Settings that are URLs and may carry a password (``scheme://user:password@host``).
URL_SETTINGS = frozenset({"database_url", "rate_limit_storage", "jwt_jwks_url"})


def mask_url(url: str) -> str:
    """``url`` with the password of its user part (``scheme://user:password@host``) as ``***``."""
    return re.sub(r":[^:/@\s]+@", ":***@", url)


def shown_value(settings: Settings, name: str) -> Any:
    """The value of setting ``name`` as it may be printed: credentials masked."""
    value = getattr(settings, name)
    if name in SECRET_SETTINGS:
        return "***" if value else ""
    if name in URL_SETTINGS and isinstance(value, str):
        return mask_url(value)
    return value


def shown_settings(settings: Settings) -> list[tuple[str, Any]]:
    """(variable, value as it may be printed) of every setting, credentials masked."""
    return [(f.metadata["env"], shown_value(settings, f.name)) for f in fields(Settings)]


def options() -> list[tuple[str, str, Any]]:
    """(variable, help, default) of every setting, for CLI help and docs."""
    return [(f.metadata["env"], f.metadata["help"], f.default) for f in fields(Settings)]


def settings_env(settings: Settings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """An environment that gives a child process exactly ``settings``: ``base`` (default this
    process's environment) without its ``CHRONOQ_*`` variables, plus one per setting."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if not k.startswith(PREFIX)}
    for f in fields(Settings):
        value = getattr(settings, f.name)
        env[f.metadata["env"]] = ",".join(value) if isinstance(value, tuple) else str(value)
    return env


def options_help(title: str = "settings (environment variables):") -> str:
    """The settings as help text, for ``--help`` epilogs."""
    lines = [title]
    for env, help_text, default in options():
        shown = ",".join(default) if isinstance(default, tuple) else default
        lines.append(f"  {env:<36} {help_text} [default: {shown!r}]")
    return "\n".join(lines)


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Read every ``CHRONOQ_*`` variable; a bad value raises :class:`ConfigError` naming it."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in fields(Settings):
        name = f.metadata["env"]
        raw = env.get(name)
        if raw is None or raw == "" and f.default != "":
            continue
        try:
            values[f.name] = f.metadata["parse"](raw)
        except ValueError as exc:
            raise ConfigError(f"{name}: {exc}") from None
    values.update(overrides)
    settings = Settings(**values)
    if not 0 <= settings.default_max_retries <= 10:
        raise ConfigError(f"{PREFIX}DEFAULT_MAX_RETRIES: must be 0-10, got {settings.default_max_retries}")
    if settings.jwt_issuer and not (settings.jwt_jwks_url or settings.jwt_secret):
        raise ConfigError(f"{PREFIX}JWT_ISSUER is set: give {PREFIX}JWT_JWKS_URL or {PREFIX}JWT_SECRET too")
    if not 1 <= settings.tenant_max_batch_jobs <= 10_000:
        raise ConfigError(f"{PREFIX}TENANT_MAX_BATCH_JOBS: must be 1-10000, got {settings.tenant_max_batch_jobs}")
    if not 0 <= settings.retry_jitter <= 1:
        raise ConfigError(f"{PREFIX}RETRY_JITTER: must be 0-1, got {settings.retry_jitter}")
    return settings
