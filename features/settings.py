"""Tailor's settings, read from the environment by entrypoints only (CLI commands, ``create_app``).

Nothing here runs at import time: build :class:`Settings` in an entrypoint and pass it down.
Every field is listed in the README's configuration table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """All configuration. Env vars are ``TAILOR_<FIELD>`` except the conventional ``REDIS_URL``
    and ``MLFLOW_TRACKING_URI``."""

    model_config = SettingsConfigDict(env_prefix="TAILOR_", extra="ignore", populate_by_name=True)

    home: Path = Field(Path(".tailor"), description="folder holding all local state")
    redis_url: str | None = Field(
        None,
        validation_alias=AliasChoices("REDIS_URL", "redis_url"),
        description="Redis server; unset = embedded redis-server under the home folder",
    )
    mlflow_tracking_uri: str | None = Field(
        None,
        validation_alias=AliasChoices("MLFLOW_TRACKING_URI", "mlflow_tracking_uri"),
        description="MLflow tracking server; unset = sqlite file in the home folder",
    )
    model_name: str = Field("tailor", description="registered model name in the MLflow registry")
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["tailor-dev-key"],
        description="comma-separated API keys accepted in the X-API-Key header",
    )
    host: str = Field("127.0.0.1", description="address `tailor serve` binds")
    port: int = Field(8000, description="port `tailor serve` binds")
    workers: int = Field(1, ge=1, description="ASGI worker processes for `tailor serve`")
    redis_port: int = Field(6390, ge=1, le=65535, description="embedded redis-server port (REDIS_URL unset)")
    redis_timeout_s: float = Field(0.25, gt=0, description="Redis socket/connect timeout in seconds")
    redis_max_connections: int = Field(64, ge=1, description="Redis connection-pool size per worker")
    publish_top_n: int = Field(100, ge=1, le=1000, description="recommendations stored per user/item at publish")
    publish_grace_s: int = Field(3600, ge=0, description="seconds an old published version is kept after a switch")

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @property
    def tracking_uri(self) -> str:
        """The MLflow tracking URI in force: the env override or the local sqlite store."""
        return self.mlflow_tracking_uri or f"sqlite:///{(self.home / 'mlflow.db').resolve()}"

    @property
    def artifact_root(self) -> Path:
        return (self.home / "mlartifacts").resolve()

    @property
    def redis_dir(self) -> Path:
        return (self.home / "redis").resolve()

    @property
    def data_dir(self) -> Path:
        return (self.home / "data").resolve()
