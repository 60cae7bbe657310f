"""Configuration from environment variables.

Each field's `description` is its documentation: the manual's configuration reference
(docs/reference/configuration.md) is generated from this class when the site is built, so it cannot drift.
"""

import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from keel.provider_limits import RouteLimit, parse_limits
from keel.routes import parse_chain
from keel.webhooks import endpoint_problem, secret_key, split_list


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    temporal_address: str = Field(
        "127.0.0.1:7233",
        validation_alias="TEMPORAL_ADDRESS",
        description="The Temporal frontend, `host:port`. When set, `make dev` uses it instead of starting its "
        "embedded dev server.",
    )
    temporal_namespace: str = Field(
        "default", validation_alias="TEMPORAL_NAMESPACE", description="The Temporal namespace."
    )
    # TLS and authentication towards Temporal (a secured cluster, Temporal Cloud), under the names Temporal's
    # own environment configuration uses, so the `temporal` CLI reads the same environment. keel/temporal.py
    # turns them into connect options and refuses half-configured combinations at startup.
    # None: TLS is on exactly when one of the settings below asks for it.
    temporal_tls: bool | None = Field(
        None,
        validation_alias="TEMPORAL_TLS",
        description="`true` connects to Temporal over TLS (the system's trusted roots unless "
        "`TEMPORAL_TLS_SERVER_CA_CERT_PATH`). Unset: on exactly when one of the next five is set. `false` with "
        "any of them is refused at startup: they only work over TLS. The `TEMPORAL_TLS*` and "
        "`TEMPORAL_API_KEY` names are Temporal's own environment configuration, so the `temporal` CLI reads "
        "the same environment (see [Temporal Cloud](../how-to/temporal-cloud.md)).",
    )
    temporal_tls_client_cert_path: Path | None = Field(
        None,
        validation_alias="TEMPORAL_TLS_CLIENT_CERT_PATH",
        description="PEM file of the client certificate for mTLS (a secured cluster, Temporal Cloud with "
        "certificates), with `TEMPORAL_TLS_CLIENT_KEY_PATH`. One without the other is refused at startup, "
        "as are unreadable files and files that are not PEM.",
    )
    temporal_tls_client_key_path: Path | None = Field(
        None,
        validation_alias="TEMPORAL_TLS_CLIENT_KEY_PATH",
        description="PEM file of that client certificate's private key.",
    )
    temporal_tls_server_ca_cert_path: Path | None = Field(
        None,
        validation_alias="TEMPORAL_TLS_SERVER_CA_CERT_PATH",
        description="PEM file of the CA that signed the server's certificate (a self-hosted cluster with "
        "its own CA). Unset: the system's trusted roots.",
    )
    temporal_tls_server_name: str | None = Field(
        None,
        validation_alias="TEMPORAL_TLS_SERVER_NAME",
        description="The name to expect in the server's certificate (and send as SNI), when it differs from "
        "the host in `TEMPORAL_ADDRESS`. Unset: that host.",
    )
    temporal_api_key: SecretStr | None = Field(
        None,
        validation_alias="TEMPORAL_API_KEY",
        description="Temporal Cloud API key, sent as `authorization: Bearer …` on every call; turns TLS on. "
        "Never logged.",
    )
    temporal_api_key_file: Path | None = Field(
        None,
        validation_alias="TEMPORAL_API_KEY_FILE",
        description="A file holding the API key instead (wins over `TEMPORAL_API_KEY`).",
    )
    # None: not known (an external Temporal whose UI nobody named), so no link is shown rather than one to a
    # port where nothing listens.
    temporal_ui_url: str | None = Field(
        None,
        validation_alias="KEEL_TEMPORAL_UI_URL",
        description="Where the Temporal Web UI is: the run links of the chat page, the run viewer and "
        "`temporal_url`, and the one browser origin the codec endpoint admits (CORS). Unset: no links "
        "(`temporal_url` is null) and no origin admitted. `make dev` with its embedded Temporal sets "
        "`http://127.0.0.1:8233`.",
    )
    database_url: str | None = Field(
        None,
        validation_alias="DATABASE_URL",
        description="Keel's PostgreSQL, as a URL; the worker and the gateway need it. Unset: `make dev` "
        "starts an embedded PostgreSQL and gives its URL to the processes it starts.",
    )
    data_dir: Path = Field(
        Path(".keel"),
        validation_alias="KEEL_DATA_DIR",
        description="Where `make dev` keeps Temporal's and PostgreSQL's data, where tools write files "
        "(`ToolContext.data_dir`) and where workers spool run records while PostgreSQL is away. Keep it on "
        "persistent storage in production.",
    )
    host: str = Field(
        "127.0.0.1", validation_alias="KEEL_HOST", description="Address the gateway listens on."
    )
    port: int = Field(8000, validation_alias="KEEL_PORT", description="Port the gateway listens on.")
    task_queue: str = Field(
        "agent-runs",
        validation_alias="KEEL_TASK_QUEUE",
        description="Task queue of `AgentRun` workflows, their LLM calls and inline tools "
        "(`python worker.py`).",
    )
    heavy_task_queue: str = Field(
        "agent-heavy",
        validation_alias="KEEL_HEAVY_TASK_QUEUE",
        description="Task queue of heavy tools (`python worker.py --queue heavy`). The gateway puts it into "
        "each run it starts.",
    )
    heavy_concurrency: int = Field(
        20,
        ge=1,
        validation_alias="KEEL_HEAVY_CONCURRENCY",
        description="Heavy tools one heavy worker runs at once.",
    )
    # A deploy lets a model finish its answer instead of starting it over elsewhere.
    worker_shutdown_grace_s: float = Field(
        10.0,
        ge=0,
        validation_alias="KEEL_WORKER_SHUTDOWN_GRACE_SECONDS",
        description="On SIGTERM a worker stops taking work and gives the activities in hand this long to "
        "finish (a model its answer, a tool its job) before cancelling them; Temporal then runs what was "
        "cancelled on another worker.",
    )
    app: str | None = Field(
        None,
        validation_alias="KEEL_APP",
        description="Your app: `package.module` (its module-level `keel.Agent`s) or `package.module:AGENTS` "
        "(a list). The gateway and both kinds of worker load it and refuse a bad one at startup (see "
        "[the Python API](python-api.md)); `keel dev|worker|api|check --app` set it. Unset: Keel serves its "
        "example agents.",
    )
    model: str = Field(
        "scripted",
        validation_alias="KEEL_MODEL",
        description="Default model route, or fallback chain, for agents that don't set their own (see "
        "[Models and providers](../how-to/models.md)). A mistyped route stops the worker and the gateway at "
        "startup.",
    )
    log_level: str = Field(
        "INFO",
        validation_alias="KEEL_LOG_LEVEL",
        description="Log level of the worker and gateway (their logs are JSON lines on stderr).",
    )
    worker_metrics_host: str = Field(
        "127.0.0.1",
        validation_alias="KEEL_WORKER_METRICS_HOST",
        description="Address the worker's metrics endpoint listens on (`0.0.0.0` for a scraper on another "
        "host).",
    )
    worker_metrics_port: int = Field(
        9464,
        ge=0,
        le=65535,
        validation_alias="KEEL_WORKER_METRICS_PORT",
        description="Port of the worker's Prometheus endpoint (`/metrics`); `0` turns it off. `make dev` "
        "checks it is free; the tests give each worker a free port.",
    )
    heavy_worker_metrics_port: int = Field(
        9465,
        ge=0,
        le=65535,
        validation_alias="KEEL_HEAVY_WORKER_METRICS_PORT",
        description="The same for a heavy-tool worker.",
    )
    codec_key_file: Path | None = Field(
        None,
        validation_alias="KEEL_CODEC_KEY_FILE",
        description="Encrypts every Temporal payload with the AES-256-GCM keys in this file (see "
        "[Encryption](../how-to/encryption.md)). Unset: payloads are plain JSON. `make dev` generates "
        "`.keel/codec-keys.json` and sets it.",
    )
    double_texting: Literal["reject", "enqueue", "interrupt"] = Field(
        "reject",
        validation_alias="KEEL_DOUBLE_TEXTING",
        description="A new message on a chat whose run is still active: `reject` it (409), `enqueue` it or "
        "`interrupt` the run (see [Double texting](../how-to/double-texting.md)).",
    )
    # Model providers. API keys are not settings: each SDK reads its own from the worker's environment, so
    # they never sit in an object that could be logged or passed around.
    openai_base_url: str | None = Field(
        None,
        validation_alias="OPENAI_BASE_URL",
        description="Where `openai:` routes send requests (any OpenAI-compatible endpoint). Unset: OpenAI's.",
    )
    anthropic_base_url: str | None = Field(
        None,
        validation_alias="ANTHROPIC_BASE_URL",
        description="Where `anthropic:` routes send requests. Unset: Anthropic's.",
    )
    local_base_url: str = Field(
        "http://127.0.0.1:11434/v1",
        validation_alias="KEEL_LOCAL_BASE_URL",
        description="The OpenAI-compatible server of `local:` routes (the default is Ollama's).",
    )
    model_timeout: float = Field(
        120.0,
        gt=0,
        validation_alias="KEEL_MODEL_TIMEOUT",
        description="Seconds a provider may stay silent (connecting, or between streamed chunks) before the "
        "attempt fails and Temporal retries it.",
    )
    anthropic_max_tokens: int = Field(
        4096,
        ge=1,
        validation_alias="KEEL_ANTHROPIC_MAX_TOKENS",
        description="The longest answer asked of `anthropic:` routes (their API requires a cap).",
    )
    model_prices: dict[str, tuple[float, float]] = Field(
        default_factory=dict,
        validation_alias="KEEL_MODEL_PRICES",
        description='JSON: extra or overriding prices, `{"route-pattern": [input, output]}` in USD per '
        'million tokens, e.g. `{"openai:gpt-4o-mini*": [0.15, 0.60]}` (see '
        "[Prices](../how-to/models.md#prices)).",
    )
    sse_ping_seconds: float = Field(
        15.0,
        gt=0,
        validation_alias="KEEL_SSE_PING_SECONDS",
        description="Seconds between keep-alive comments on an idle stream (gateway).",
    )
    stream_batch_ms: float = Field(
        0.0,
        ge=0,
        le=1000,
        validation_alias="KEEL_STREAM_BATCH_MS",
        description="Milliseconds the LLM activity gathers token deltas before publishing a batch (worker). "
        "`0` publishes each at once and batches only what arrives during a publish; raise it to trade a "
        "little latency for fewer PostgreSQL writes under heavy load.",
    )
    idempotency_ttl_hours: float = Field(
        24.0,
        gt=0,
        le=24 * 30,
        validation_alias="KEEL_IDEMPOTENCY_TTL_HOURS",
        description="How long an `Idempotency-Key` of `POST /api/runs` names its run: the same key and body "
        "within this get the same run; after it, the key is forgotten (the agent workers delete expired "
        "keys hourly) and starts a new run.",
    )
    delta_retention_hours: float = Field(
        24.0,
        ge=0,
        validation_alias="KEEL_DELTA_RETENTION_HOURS",
        description="Token deltas (`run_deltas`, the log stream replays are made from) of runs finished "
        "longer ago than this are deleted by the agent workers, hourly; `0` keeps them forever.",
    )
    # keel/storage/reconciler.py: a run terminated or timed out outside its loop is recorded as ended, and its queue
    # goes on, within this.
    reconcile_seconds: float = Field(
        30.0,
        ge=0,
        le=3600,
        validation_alias="KEEL_RECONCILE_SECONDS",
        description="How often the agent workers make run records and chat queues agree with Temporal (runs "
        "closed outside their loop, records whose workflow never started; see "
        "[Double texting](../how-to/double-texting.md)); `0` turns it off.",
    )
    # Authentication (api/auth.py). Secrets are SecretStr, so they never print.
    auth: str = Field(
        "none",
        validation_alias="KEEL_AUTH",
        description="How callers prove who they are: `none`, `jwt`, `api-key` or `jwt,api-key` (see "
        "[Security](../operations/security.md)). `none` is refused unless `KEEL_HOST` is a loopback address.",
    )
    jwt_secret: SecretStr | None = Field(
        None,
        validation_alias="KEEL_JWT_SECRET",
        description="HS256 secret for JWTs (at least 32 bytes). Gateway only.",
    )
    jwt_secret_file: Path | None = Field(
        None,
        validation_alias="KEEL_JWT_SECRET_FILE",
        description="A file holding the HS256 secret instead (wins over `KEEL_JWT_SECRET`).",
    )
    jwks: str | None = Field(
        None,
        validation_alias="KEEL_JWKS",
        description="RS256 keys for JWTs: a JWKS file path, or an `https://` URL (cached five minutes).",
    )
    jwt_role_claim: str = Field(
        "role",
        validation_alias="KEEL_JWT_ROLE_CLAIM",
        description="The JWT claim whose value `admin` (or a list holding it) makes an admin.",
    )
    jwt_audience: str | None = Field(
        None, validation_alias="KEEL_JWT_AUDIENCE", description="When set, a JWT's `aud` must match it."
    )
    jwt_issuer: str | None = Field(
        None, validation_alias="KEEL_JWT_ISSUER", description="When set, a JWT's `iss` must match it."
    )
    max_body_bytes: int = Field(
        2_000_000,
        ge=1024,
        validation_alias="KEEL_MAX_BODY_BYTES",
        description="Largest request body; larger ones are answered 413 before anything parses them.",
    )
    rate_limit: float = Field(
        60.0,
        ge=0,
        validation_alias="KEEL_RATE_LIMIT",
        description="Runs a user may start per minute, per gateway process (429 with `Retry-After` past it); "
        "`0` turns it off.",
    )
    telemetry_rate_limit: float = Field(
        120.0,
        ge=0,
        validation_alias="KEEL_TELEMETRY_RATE_LIMIT",
        description="`POST /api/telemetry` requests (each a batch of at most 50 events) a user may send per "
        "minute, per gateway process (429 with `Retry-After` past it); `0` turns it off.",
    )
    telemetry_retention_days: float = Field(
        30.0,
        ge=0,
        validation_alias="KEEL_TELEMETRY_RETENTION_DAYS",
        description="Frontend telemetry events (`frontend_events`) older than this are deleted by the agent "
        "workers, hourly; `0` keeps them forever.",
    )
    # Slow clients (api/connections.py): uvicorn bounds no part of reading a request.
    request_read_timeout_s: float = Field(
        20.0,
        gt=0,
        le=300,
        validation_alias="KEEL_REQUEST_READ_TIMEOUT_SECONDS",
        description="A request, headers and body, must arrive whole within this many seconds of its first "
        "byte (of the connection opening, for its first request); otherwise it is answered 408 and the "
        "connection closed (gateway). A response may take as long as it needs.",
    )
    keep_alive_s: float = Field(
        5.0,
        gt=0,
        le=3600,
        validation_alias="KEEL_KEEP_ALIVE_SECONDS",
        description="An idle connection between two requests is closed after this many seconds (gateway; "
        "uvicorn's keep-alive timeout). Behind a load balancer, set it above the balancer's idle timeout.",
    )
    # Webhooks (keel/webhooks.py, docs/how-to/webhooks.md): where run events go, how they are signed, and
    # whether they may reach private addresses.
    webhook_urls: str = Field(
        "",
        validation_alias="KEEL_WEBHOOK_URLS",
        description="The app's webhook endpoints, comma-separated: every run's events (`run.completed`, "
        "`run.waiting_for_approval`, ...) are POSTed to each, after the run's own `webhook_url`. Fixed for a "
        "run when it starts. Setting it without `KEEL_WEBHOOK_SECRET` is refused at startup.",
    )
    webhook_secret: SecretStr | None = Field(
        None,
        validation_alias="KEEL_WEBHOOK_SECRET",
        description="The secret deliveries are signed with (Standard Webhooks): `whsec_` + base64 of 24 to "
        "64 random bytes. While rotating, several, comma-separated: each delivery carries one signature per "
        "secret, so receivers knowing the old or the new one both verify it. Unset: no delivery is sent "
        "(they are never unsigned) and `webhook_url` is refused. Never logged.",
    )
    webhook_allow_private: bool = Field(
        False,
        validation_alias="KEEL_WEBHOOK_ALLOW_PRIVATE",
        description="`true` lets deliveries reach loopback, private, link-local and other non-public "
        "addresses (a receiver on your own network, tests). Off, such a delivery is refused for good, names "
        "that resolve to such an address included.",
    )
    webhook_retry_s: float = Field(
        5.0,
        gt=0,
        le=3600,
        validation_alias="KEEL_WEBHOOK_RETRY_SECONDS",
        description="Seconds before a failed delivery's first retry (worker); each retry waits twice as long "
        "as the one before, at most an hour, until it is delivered or 24 hours have passed.",
    )

    # Provider limits (keel/provider_limits.py, docs/how-to/provider-limits.md): shared by every worker through
    # PostgreSQL; the gateway snapshots which patterns exist into each run it starts.
    provider_limits: Annotated[dict[str, RouteLimit], NoDecode] = Field(
        default_factory=dict,
        validation_alias="KEEL_PROVIDER_LIMITS",
        description="Rate limits per model route, shared by every worker: JSON keyed by route pattern "
        "(`openai:*`, `openai:gpt-4o`, `local:llama*`, `*`; the most specific pattern matching a route "
        'applies), each `{"rpm"?, "tpm"?, "concurrency"?}`, e.g. `{"openai:*": {"rpm": 500, "tpm": 200000, '
        '"concurrency": 20}}`. A step asks for capacity before its LLM call and waits, holding no worker '
        "slot, until it gets it; a 429 pauses every caller of the route. Set it alike on the gateway and "
        "every worker: a run knows which routes are limited from the gateway that started it. A bad value "
        "stops the process at startup. See [Provider limits](../how-to/provider-limits.md).",
    )
    provider_batch_share: float = Field(
        1.0,
        gt=0,
        le=1,
        validation_alias="KEEL_PROVIDER_BATCH_SHARE",
        description="The share of each provider limit that batch runs (no chat: `POST /api/runs`, "
        "schedules, their sub-agents) may fill; the rest stays free for chat runs. Whatever the share, a "
        "batch run is not granted a route while a chat run waits for it.",
    )
    provider_window_s: float = Field(
        60.0,
        gt=0,
        validation_alias="KEEL_PROVIDER_WINDOW_SECONDS",
        description="The rolling window `rpm` and `tpm` count over. Providers state their limits per minute, "
        "so leave it at 60; tests set it shorter so that a limit fills and frees within seconds.",
    )
    provider_lease_s: float = Field(
        360.0,
        gt=0,
        validation_alias="KEEL_PROVIDER_LEASE_SECONDS",
        description="How long a granted LLM call holds a concurrency slot at most: a worker that dies "
        "mid-call frees its slots after this. Longer than call_llm's 5-minute timeout, so no live call "
        "outlasts its lease.",
    )

    @field_validator(
        "temporal_tls",
        "temporal_tls_client_cert_path",
        "temporal_tls_client_key_path",
        "temporal_tls_server_ca_cert_path",
        "temporal_tls_server_name",
        "temporal_api_key",
        "temporal_api_key_file",
        "temporal_ui_url",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # Compose files pass `${VAR:-}` through as an empty string; as a path that would mean ".".
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("auth")
    @classmethod
    def _valid_auth(cls, value: str) -> str:
        modes = {m.strip() for m in value.split(",") if m.strip()}
        if not modes or (modes - {"none", "jwt", "api-key"}) or ("none" in modes and len(modes) > 1):
            raise ValueError("KEEL_AUTH must be `none`, `jwt`, `api-key` or `jwt,api-key`")
        return ",".join(sorted(modes))

    @property
    def auth_modes(self) -> frozenset[str]:
        return frozenset(self.auth.split(",")) - {"none"}

    @field_validator("model")
    @classmethod
    def _valid_route(cls, value: str) -> str:
        parse_chain(value)  # a mistyped KEEL_MODEL stops the worker and gateway at startup, not mid-run
        return value

    @field_validator("model_prices", mode="before")
    @classmethod
    def _prices_from_json(cls, value: object) -> object:
        # From the environment pydantic-settings decodes the JSON itself; as a keyword it arrives as text.
        if isinstance(value, str):
            return json.loads(value) if value.strip() else {}
        return value

    @field_validator("provider_limits", mode="before")
    @classmethod
    def _limits_from_json(cls, value: object) -> object:
        # One line naming the bad entry, whichever process reads it.
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else {}
            except json.JSONDecodeError as err:
                raise ValueError(f"KEEL_PROVIDER_LIMITS is not JSON: {err}") from None
        if not isinstance(value, dict):
            raise ValueError("KEEL_PROVIDER_LIMITS must be a JSON object keyed by route pattern")
        try:
            return parse_limits(value)
        except ValueError as err:
            raise ValueError(f"KEEL_PROVIDER_LIMITS {err}") from None

    @model_validator(mode="after")
    def _webhooks_deliverable(self) -> "Settings":
        """A mistyped secret or endpoint, or endpoints nothing could sign for, stop every process at startup."""
        for secret in self.webhook_secrets:
            try:
                secret_key(secret)
            except ValueError as err:
                raise ValueError(f"KEEL_WEBHOOK_SECRET: {err}") from None
        for url in self.webhook_endpoints:
            if problem := endpoint_problem(url, allow_private=self.webhook_allow_private):
                raise ValueError(f"KEEL_WEBHOOK_URLS: {problem}")
        if self.webhook_endpoints and not self.webhook_secrets:
            raise ValueError(
                "KEEL_WEBHOOK_URLS is set but KEEL_WEBHOOK_SECRET is not: deliveries are always signed"
            )
        return self

    @property
    def webhook_endpoints(self) -> list[str]:
        return split_list(self.webhook_urls)

    @property
    def webhook_secrets(self) -> list[str]:
        return split_list(self.webhook_secret.get_secret_value()) if self.webhook_secret else []

    def require_database_url(self) -> str:
        if not self.database_url:
            raise SystemExit(
                "DATABASE_URL is not set. Run `make dev` (which starts an embedded PostgreSQL) "
                "or point DATABASE_URL at a PostgreSQL server."
            )
        return self.database_url


@lru_cache
def get_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as err:
        # A process with a bad setting stops with one line per problem, naming the variable, not a traceback.
        raise SystemExit("\n".join(_problem(e) for e in err.errors())) from None


def _problem(error: "ErrorDetails") -> str:
    where = ".".join(map(str, error["loc"]))
    message = str(error["msg"]).removeprefix("Value error, ")
    return message if message.startswith(where) else f"{where}: {message}"
