"""Configuration from environment variables. Every variable is listed in the README's table."""

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    temporal_address: str = Field("127.0.0.1:7233", validation_alias="TEMPORAL_ADDRESS")
    temporal_namespace: str = Field("default", validation_alias="TEMPORAL_NAMESPACE")
    temporal_ui_url: str = Field("http://127.0.0.1:8233", validation_alias="KEEL_TEMPORAL_UI_URL")
    database_url: str | None = Field(None, validation_alias="DATABASE_URL")
    data_dir: Path = Field(Path(".keel"), validation_alias="KEEL_DATA_DIR")
    host: str = Field("127.0.0.1", validation_alias="KEEL_HOST")
    port: int = Field(8000, validation_alias="KEEL_PORT")
    task_queue: str = Field("agent-runs", validation_alias="KEEL_TASK_QUEUE")
    model: str = Field("scripted", validation_alias="KEEL_MODEL")
    log_level: str = Field("INFO", validation_alias="KEEL_LOG_LEVEL")

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
