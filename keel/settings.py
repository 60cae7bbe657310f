"""Configuration from environment variables. Every variable is listed in the README's table."""

import json
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from keel.routes import parse_chain


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    temporal_address: str = Field("127.0.0.1:7233", validation_alias="TEMPORAL_ADDRESS")
    temporal_namespace: str = Field("default", validation_alias="TEMPORAL_NAMESPACE")
    # TLS and authentication towards Temporal (a secured cluster, Temporal Cloud), under the names Temporal's
    # own environment configuration uses, so the `temporal` CLI reads the same environment. keel/temporal.py
    # turns them into connect options and refuses half-configured combinations at startup.
    # None: TLS is on exactly when one of the settings below asks for it.
    temporal_tls: bool | None = Field(None, validation_alias="TEMPORAL_TLS")
    temporal_tls_client_cert_path: Path | None = Field(None, validation_alias="TEMPORAL_TLS_CLIENT_CERT_PATH")
    temporal_tls_client_key_path: Path | None = Field(None, validation_alias="TEMPORAL_TLS_CLIENT_KEY_PATH")
    temporal_tls_server_ca_cert_path: Path | None = Field(
        None, validation_alias="TEMPORAL_TLS_SERVER_CA_CERT_PATH"
    )
    temporal_tls_server_name: str | None = Field(None, validation_alias="TEMPORAL_TLS_SERVER_NAME")
    temporal_api_key: SecretStr | None = Field(None, validation_alias="TEMPORAL_API_KEY")
    temporal_api_key_file: Path | None = Field(None, validation_alias="TEMPORAL_API_KEY_FILE")
    # Where people open the Temporal Web UI, for links and the codec endpoint's CORS origin. None: not
    # known (an external Temporal whose UI nobody named), so no link is shown rather than one to a port
    # where nothing listens. `make dev` sets it to its embedded server's UI.
    temporal_ui_url: str | None = Field(None, validation_alias="KEEL_TEMPORAL_UI_URL")
    database_url: str | None = Field(None, validation_alias="DATABASE_URL")
    data_dir: Path = Field(Path(".keel"), validation_alias="KEEL_DATA_DIR")
    host: str = Field("127.0.0.1", validation_alias="KEEL_HOST")
    port: int = Field(8000, validation_alias="KEEL_PORT")
    task_queue: str = Field("agent-runs", validation_alias="KEEL_TASK_QUEUE")
    # Heavy tools run on their own worker pool: `python worker.py --queue heavy` serves this queue.
    heavy_task_queue: str = Field("agent-heavy", validation_alias="KEEL_HEAVY_TASK_QUEUE")
    # How many heavy tools one heavy worker runs at once.
    heavy_concurrency: int = Field(20, ge=1, validation_alias="KEEL_HEAVY_CONCURRENCY")
    # On SIGTERM a worker stops polling and lets the activities in hand run this long before cancelling
    # them, so a deploy lets a model finish its answer instead of starting it over elsewhere.
    worker_shutdown_grace_s: float = Field(10.0, ge=0, validation_alias="KEEL_WORKER_SHUTDOWN_GRACE_SECONDS")
    # Your app: `package.module` (every module-level keel.Agent in it) or `package.module:AGENTS` (a list of
    # them). The gateway and both workers load it; unset, Keel serves its example agents (keel/app.py).
    app: str | None = Field(None, validation_alias="KEEL_APP")
    model: str = Field("scripted", validation_alias="KEEL_MODEL")
    log_level: str = Field("INFO", validation_alias="KEEL_LOG_LEVEL")
    # The worker's Prometheus endpoint (http://host:port/metrics); port 0 turns it off.
    worker_metrics_host: str = Field("127.0.0.1", validation_alias="KEEL_WORKER_METRICS_HOST")
    worker_metrics_port: int = Field(9464, ge=0, le=65535, validation_alias="KEEL_WORKER_METRICS_PORT")
    heavy_worker_metrics_port: int = Field(
        9465, ge=0, le=65535, validation_alias="KEEL_HEAVY_WORKER_METRICS_PORT"
    )
    # Encryption at rest: with a key file, every Temporal payload is AES-GCM ciphertext (keel/codec.py).
    codec_key_file: Path | None = Field(None, validation_alias="KEEL_CODEC_KEY_FILE")
    # A new message on a chat whose run is still active: reject it (409), queue it, or cancel the run.
    double_texting: Literal["reject", "enqueue", "interrupt"] = Field(
        "reject", validation_alias="KEEL_DOUBLE_TEXTING"
    )
    # Model providers. API keys are not settings: each SDK reads its own from the worker's environment, so
    # they never sit in an object that could be logged or passed around.
    openai_base_url: str | None = Field(None, validation_alias="OPENAI_BASE_URL")
    anthropic_base_url: str | None = Field(None, validation_alias="ANTHROPIC_BASE_URL")
    local_base_url: str = Field("http://127.0.0.1:11434/v1", validation_alias="KEEL_LOCAL_BASE_URL")
    # Seconds a provider may stay silent (connecting, or between two streamed chunks) before the call
    # counts as failed and Temporal retries it.
    model_timeout: float = Field(120.0, gt=0, validation_alias="KEEL_MODEL_TIMEOUT")
    # Anthropic's Messages API requires a cap on the answer's length.
    anthropic_max_tokens: int = Field(4096, ge=1, validation_alias="KEEL_ANTHROPIC_MAX_TOKENS")
    # Extra or overriding prices, USD per million tokens: {"openai:gpt-4o-mini*": [0.15, 0.60], ...}.
    model_prices: dict[str, tuple[float, float]] = Field(
        default_factory=dict, validation_alias="KEEL_MODEL_PRICES"
    )
    # Live streams: a keep-alive comment after this many idle seconds, and how long the LLM activity
    # gathers token deltas before publishing a batch (0: publish at once, batching only under load).
    sse_ping_seconds: float = Field(15.0, gt=0, validation_alias="KEEL_SSE_PING_SECONDS")
    stream_batch_ms: float = Field(0.0, ge=0, le=1000, validation_alias="KEEL_STREAM_BATCH_MS")
    # Token deltas of runs finished longer ago than this are deleted by the agent workers (0: kept forever).
    delta_retention_hours: float = Field(24.0, ge=0, validation_alias="KEEL_DELTA_RETENTION_HOURS")
    # How often the agent workers make run records and queues agree with Temporal (keel/reconciler.py):
    # a run terminated or timed out outside its loop is recorded as ended, and its queue goes on, within
    # this (0: never).
    reconcile_seconds: float = Field(30.0, ge=0, le=3600, validation_alias="KEEL_RECONCILE_SECONDS")
    # Authentication (api/auth.py): `none`, or `jwt` and/or `api-key`, comma-separated. `none` is refused
    # unless the gateway listens on loopback. Secrets are SecretStr, so they never print.
    auth: str = Field("none", validation_alias="KEEL_AUTH")
    jwt_secret: SecretStr | None = Field(None, validation_alias="KEEL_JWT_SECRET")
    jwt_secret_file: Path | None = Field(None, validation_alias="KEEL_JWT_SECRET_FILE")
    jwks: str | None = Field(None, validation_alias="KEEL_JWKS")
    jwt_role_claim: str = Field("role", validation_alias="KEEL_JWT_ROLE_CLAIM")
    jwt_audience: str | None = Field(None, validation_alias="KEEL_JWT_AUDIENCE")
    jwt_issuer: str | None = Field(None, validation_alias="KEEL_JWT_ISSUER")
    # Input limits and run starts per user per minute (0: no limit), per gateway process.
    max_body_bytes: int = Field(2_000_000, ge=1024, validation_alias="KEEL_MAX_BODY_BYTES")
    rate_limit: float = Field(60.0, ge=0, validation_alias="KEEL_RATE_LIMIT")
    # Slow clients (api/connections.py): a request, headers and body, must arrive whole this many seconds
    # after its first byte, or it is answered 408 and its connection closed; an idle connection between two
    # requests is closed after the keep-alive seconds (uvicorn's own; behind a load balancer, set it above
    # the balancer's idle timeout).
    request_read_timeout_s: float = Field(
        20.0, gt=0, le=300, validation_alias="KEEL_REQUEST_READ_TIMEOUT_SECONDS"
    )
    keep_alive_s: float = Field(5.0, gt=0, le=3600, validation_alias="KEEL_KEEP_ALIVE_SECONDS")

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

    def require_database_url(self) -> str:
        if not self.database_url:
            raise SystemExit(
                "DATABASE_URL is not set. Run `make dev` (which starts an embedded PostgreSQL) "
                "or point DATABASE_URL at a PostgreSQL server."
            )
        return self.database_url


@lru_cache
def get_settings() -> Settings:
    return Settings()
