"""One `Settings` object, read from `GENQ_*` environment variables.

Nothing is read at import time: call `get_settings()` (cached per process) or build
`Settings(...)` explicitly in tests.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GENQ_", extra="ignore")

    data_dir: Path = Field(Path("var"), description="Where the embedded default keeps its database, results and logs.")
    database_url: str = Field("", description="SQLAlchemy URL; default a SQLite file in the data directory.")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Broker for wake-up messages.")
    storage_dir: Path | None = Field(None, description="Directory for image outputs; default <data_dir>/results.")
    models_file: Path = Field(Path("models.yaml"), description="The model registry (YAML).")

    # Who may call the API.
    auth: Literal["on", "off"] = Field("on", description="`off` (no API keys) is for loopback-only development.")
    rate_limit: str = Field("1200/minute", description="Requests per API key (Flask-Limiter syntax; counted in Redis).")
    auth_cache_seconds: float = Field(5.0, ge=0, description="How long a web process trusts an API key it has checked: a revoked key stops working within this time (0: check every request).")
    max_pending_items_per_tenant: int = Field(100_000, ge=1, description="Pending items a tenant may have queued (429 beyond).")
    cors_origins: list[str] = Field(default_factory=list, description="Origins allowed to call the API from a browser (JSON list; none by default).")

    # Limits checked at the door.
    max_items_per_job: int = Field(10_000, ge=1)
    max_prompt_chars: int = Field(4_000, ge=1)
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    max_page_size: int = Field(1_000, ge=1)
    default_page_size: int = Field(100, ge=1)

    # How workers take work.
    slice_max_items: int = Field(64, ge=1, description="Most items one claim takes.")
    slice_max_seconds: float = Field(60.0, gt=0, description="A slice starts no new micro-batch after this.")
    lease_seconds: float = Field(60.0, gt=0, description="A claimed slice is reclaimable this long after its last heartbeat.")
    slice_soft_time_limit: float = Field(900.0, gt=0, description="Seconds after which a slice's unfinished items fail with `timeout`.")
    slice_hard_time_limit: float | None = Field(None, gt=0, description="Seconds after which the worker process running a slice is killed; default soft + 60.")
    broker_visibility_timeout: float | None = Field(None, gt=0, description="Redis visibility timeout; default hard limit + 300, so no running slice is redelivered.")
    broker_transport_options: dict[str, Any] = Field(default_factory=dict, description="Extra kombu Redis transport options (JSON).")
    worker_max_memory_per_child_mb: int = Field(0, ge=0, description="Recycle a worker process above this resident memory (0: never).")
    max_attempts: int = Field(3, ge=1, description="Claims of one item before it fails for good.")
    cancel_check_seconds: float = Field(0.5, gt=0, description="How often a running model re-reads its job's cancel flag.")

    torch_threads: int = Field(0, ge=0, description="CPU threads torch may use in a worker process (0: torch's default).")
    worker_max_models: int = Field(2, ge=1, description="Models a worker process keeps loaded at once.")

    wakeup_mark_seconds: float = Field(
        30.0, gt=0, description="How long a sent wake-up counts as waiting, so that submits publish no other.")
    wakeup_busy_seconds: float = Field(1.0, ge=0, description="A worker that took a wake-up keeps claiming slices of that model while more is waiting, for this long (0: one slice per wake-up).")
    reconcile_interval_seconds: float = Field(5.0, gt=0, description="Time between reconciler passes.")

    # The embedded default (`genq up`).
    web_host: str = Field("127.0.0.1", description="Address `genq up` and `genq web` bind.")
    web_port: int = Field(8000, ge=0, le=65535)
    web_processes: int = Field(2, ge=1, description="gunicorn worker processes.")
    web_threads: int = Field(4, ge=1, description="Threads per gunicorn worker process (above 1, gunicorn's gthread worker, which keeps connections alive and serves a slow client without holding the process).")
    supervisor_state_file: Path | None = Field(None, description="Set by `genq up` for its children: the file where it keeps its services' states, which /readyz reports.")

    # Celery wake-up publishing: fail fast when Redis is down (the job is already committed).
    publish_max_retries: int = Field(2, ge=0)

    @model_validator(mode="after")
    def _fill_defaults(self) -> "Settings":
        if not self.database_url:
            self.database_url = f"sqlite:///{(self.data_dir / 'genq.db').resolve()}"
        if self.storage_dir is None:
            self.storage_dir = self.data_dir / "results"
        if self.slice_hard_time_limit is None:
            self.slice_hard_time_limit = self.slice_soft_time_limit + 60
        if self.broker_visibility_timeout is None:
            self.broker_visibility_timeout = self.slice_hard_time_limit + 300
        return self

    @property
    def heartbeat_seconds(self) -> float:
        """How often a running slice extends its lease: four times per lease."""
        return self.lease_seconds / 4


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read from the environment on first use."""
    return Settings()
