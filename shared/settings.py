"""One `Settings` object, read from `GENQ_*` environment variables.

Nothing is read at import time: call `get_settings()` (cached per process) or build
`Settings(...)` explicitly in tests.
"""
from __future__ import annotations

import re
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.errors import ConfigError


def parse_duration(value: Any) -> timedelta | None:
    """`30d`, `12h`, `90m`, `45s`, a number of seconds or a timedelta; `never` (or 0) is None."""
    if value is None or isinstance(value, timedelta):
        return value if value else None
    if isinstance(value, (int, float)):
        return timedelta(seconds=value) if value > 0 else None
    text = str(value).strip().lower()
    if text in ("never", "0", ""):
        return None
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([dhms]?)", text)
    if not match:
        raise ValueError(f"{value!r} is not a duration: use 30d, 12h, 90m, 3600s, seconds, or never")
    amount, unit = float(match[1]), match[2] or "s"
    return timedelta(seconds=amount * {"d": 86400, "h": 3600, "m": 60, "s": 1}[unit]) if amount > 0 else None


Duration = Annotated[timedelta | None, BeforeValidator(parse_duration)]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GENQ_", extra="ignore")

    data_dir: Path = Field(Path("var"), description="Where the embedded default keeps its database, results and logs.")
    database_url: str = Field("", description="SQLAlchemy URL; default a SQLite file in the data directory.")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Broker for wake-up messages.")
    storage_dir: Path | None = Field(None, description="Directory for image outputs; default <data_dir>/results.")
    storage_url: str = Field("", description="Where outputs live: empty for GENQ_STORAGE_DIR, or s3://bucket/prefix for an S3-compatible bucket.")
    s3_endpoint_url: str = Field("", description="S3-compatible endpoint (MinIO, moto...); default AWS_ENDPOINT_URL, else AWS.")
    s3_region: str = Field("", description="Bucket region; default AWS_DEFAULT_REGION.")
    s3_access_key_id: str = Field("", description="Access key; default boto3's chain (AWS_ACCESS_KEY_ID, profile, role).")
    s3_secret_access_key: SecretStr | None = Field(None, description="Secret key; default boto3's chain.")
    s3_addressing_style: Literal["auto", "path", "virtual"] = Field("auto", description="`auto`: path-style with a custom endpoint, boto3's choice otherwise.")
    s3_timeout_seconds: float = Field(10.0, gt=0, description="Connect and read timeout of one S3 request.")
    s3_presign_seconds: int = Field(300, ge=1, le=604800, description="Lifetime of a presigned download URL (?redirect=1).")
    models_file: Path = Field(Path("models.yaml"), description="The model registry (YAML).")

    # Who may call the API.
    auth: Literal["on", "off"] = Field("on", description="`off` (no API keys) is for loopback-only development.")
    rate_limit: str = Field("1200/minute", description="Requests per API key, counted in Redis in a fixed window aligned to the clock (the `limits` library's syntax: 1200/minute, 20/second).")
    rate_limit_block: int = Field(16, ge=1, description="Requests of a key's window a web process takes from Redis at once and then admits without a round trip (never more than a sixteenth of what the window has left); 1 counts each request in Redis.")
    auth_cache_seconds: float = Field(5.0, ge=0, description="How long a web process trusts an API key it has checked: a revoked key stops working within this time (0: check every request).")
    max_pending_items_per_tenant: int = Field(100_000, ge=1, description="Pending items a tenant may have queued (429 beyond).")
    cors_origins: list[str] = Field(default_factory=list, description="Origins allowed to call the API from a browser (JSON list; none by default).")

    # Limits checked at the door.
    max_items_per_job: int = Field(10_000, ge=1)
    max_prompt_chars: int = Field(4_000, ge=1)
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    max_page_size: int = Field(1_000, ge=1)
    default_page_size: int = Field(100, ge=1)

    # The OpenAI-compatible Files and Batches API (/v1/files, /v1/batches).
    file_max_bytes: int = Field(200 * 1024 * 1024, ge=1024, description="Largest file POST /v1/files accepts (413 beyond); a batch's input file is held in memory while it is validated.")
    file_expiry_seconds: int = Field(30 * 24 * 3600, ge=60, description="Files expire this long after they are written unless `expires_after` says otherwise; the reconciler removes them.")
    batch_max_requests: int = Field(50_000, ge=1, description="Requests (lines) one batch input file may hold.")
    batch_poll_seconds: float = Field(0.25, gt=0, description="How often the reconciler looks for batches whose jobs have all finished (to write their files), batches past their window and expired files; a worker that finishes a batch's job wakes it sooner.")

    # Retention: how long a finished job and its outputs are kept.
    result_ttl: Duration = Field(timedelta(days=30), description="A finished job, its items and outputs are removed this long after it finished: `30d`, `12h`, `90m`, `3600s` or seconds; `never` keeps them.")
    result_ttl_tenants: dict[str, Duration] = Field(default_factory=dict, description="Per-tenant overrides of GENQ_RESULT_TTL (JSON object, e.g. {\"acme\": \"7d\", \"archive\": \"never\"}).")
    retention_interval_seconds: float = Field(60.0, gt=0, description="How often the reconciler removes expired jobs.")
    retention_batch_jobs: int = Field(50, ge=1, description="Jobs removed in one transaction; a sweep runs batches until none is left, pausing after each as long as it took so other writers go first.")

    # How workers take work.
    slice_max_items: int = Field(64, ge=1, description="Most items one claim takes, or one micro-batch of a model whose micro_batch_size is larger.")
    slice_max_seconds: float = Field(60.0, gt=0, description="A slice starts no new micro-batch after this.")
    lease_seconds: float = Field(60.0, gt=0, description="A claimed slice is reclaimable this long after its last heartbeat.")
    slice_soft_time_limit: float = Field(900.0, gt=0, description="Seconds after which a slice's unfinished items fail with `timeout`.")
    slice_hard_time_limit: float | None = Field(None, gt=0, description="Seconds after which the worker process running a slice is killed; default soft + 60.")
    broker_visibility_timeout: float | None = Field(None, gt=0, description="Redis visibility timeout; default hard limit + 300, so no running slice is redelivered.")
    broker_transport_options: dict[str, Any] = Field(default_factory=dict, description="Extra kombu Redis transport options (JSON).")
    worker_max_memory_per_child_mb: int = Field(0, ge=0, description="Recycle a worker process above this resident memory (0: never).")
    max_attempts: int = Field(3, ge=1, description="Claims of one item before it fails for good.")
    cancel_check_seconds: float = Field(0.5, gt=0, description="How often a running model re-reads its job's cancel flag.")

    torch_threads: int = Field(0, ge=0, description="CPU threads torch may use in a worker process; `genq worker` sets it to each worker's share of the host's cores (cores // workers, at least 1) unless given (0: torch's default, all cores).")
    worker_max_models: int = Field(2, ge=1, description="Models a worker process keeps loaded at once.")
    model_cache_bytes: int = Field(0, ge=0, description="Bytes of model weights a CPU worker keeps loaded (0: no byte limit); a GPU worker's budget is its device's free memory.")
    device_memory_reserve: float = Field(0.2, ge=0, lt=1, description="Share of a GPU's memory a worker keeps free for activations when deciding whether another model fits.")
    oom_probe_after: int = Field(20, ge=1, description="Micro-batches that ran at a size lowered by out-of-memory before a worker tries twice the size again.")

    wakeup_mark_seconds: float = Field(
        30.0, gt=0, description="How long a sent wake-up counts as waiting, so that submits publish no other.")
    wakeup_busy_seconds: float = Field(1.0, ge=0, description="A worker that took a wake-up keeps claiming slices of that model while more is waiting, for this long, and past it while none of the worker's other models has a wake-up queued, up to GENQ_SLICE_MAX_SECONDS (0: one slice per wake-up).")
    reconcile_interval_seconds: float = Field(5.0, gt=0, description="Time between reconciler passes.")
    worker_inspect_seconds: float = Field(1.0, gt=0, le=30, description="How long GET /v1/workers (the console's models page) waits for workers to say which models they serve.")

    # The embedded default (`genq up`).
    web_host: str = Field("127.0.0.1", description="Address `genq up` and `genq web` bind.")
    web_port: int = Field(8000, ge=0, le=65535)
    web_processes: int = Field(2, ge=1, description="gunicorn worker processes.")
    web_threads: int = Field(4, ge=1, description="Threads per gunicorn worker process (above 1, gunicorn's gthread worker, which keeps connections alive and serves a slow client without holding the process).")
    supervisor_state_file: Path | None = Field(None, description="Set by `genq up` for its children: the file where it keeps its services' states, which /readyz reports.")

    # Celery wake-up publishing: fail fast when Redis is down (the job is already committed).
    publish_max_retries: int = Field(2, ge=0)

    # Watching the work: queue position, ETA, progress inside the model, /metrics.
    progress_interval_seconds: float = Field(0.5, ge=0, description="A running model writes its step or token count to Redis at most this often.")
    throughput_window_seconds: float = Field(300.0, gt=0, description="ETAs divide by the items per second of the micro-batches that ended in this window.")
    queue_scan_jobs: int = Field(1000, ge=1, description="Most queued jobs a status poll reads to place a job in its queue; beyond, position and ETA are lower bounds.")
    outlook_cache_seconds: float = Field(1.0, ge=0, description="How long a web process reuses what a job's ETA rests on (its place in the queue, the items ahead of it, the model's throughput) between polls; the counts are read on every poll (0: read them all on every poll).")
    metrics_public: bool = Field(False, description="Serve GET /metrics without an API key (else an admin key is required).")

    # Live events (GET /v1/jobs/<id>/events, GET /v1/events) and webhooks.
    events_heartbeat_seconds: float = Field(15.0, gt=0, description="A stream sends a comment line this often when nothing happened (and re-reads the ledger, in case a notice was lost).")
    events_max_streams: int = Field(128, ge=1, description="Event streams one web process serves at once (each holds a parked thread, never a database connection); beyond, 503 with Retry-After.")
    events_commit_skew_seconds: float = Field(2.0, ge=0, description="How far a stream looks back for items committed late with an earlier finish time (several workers on one job).")
    webhook_secret: SecretStr | None = Field(None, description="Signing secret (whsec_...) for tenants that have none of their own (genq webhooks set).")
    webhook_allow_private: bool = Field(False, description="Let webhooks reach loopback, private, link-local and other internal addresses (development and tests).")
    webhook_allowed_hosts: list[str] = Field(default_factory=list, description="If set (JSON list), webhook URLs may name only these hosts.")
    webhook_retry_seconds: list[float] = Field(default_factory=lambda: [5, 300, 1800, 7200, 18000, 36000, 21600], description="Waits before each retry of a failed delivery (JSON list); after the last, the delivery fails for good.")
    webhook_timeout_seconds: float = Field(15.0, gt=0, description="Connect-and-answer time limit of one delivery attempt.")
    webhook_poll_seconds: float = Field(1.0, gt=0, description="How often the deliverer looks for deliveries that are due.")

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
    """The process's settings, read from the environment on first use. A value that does
    not parse is a `ConfigError` naming each variable, not a validation traceback."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = [f"GENQ_{'_'.join(map(str, error['loc'])).upper()}: "
                    f"{error['msg'].removeprefix('Value error, ')} (got {error.get('input')!r})"
                    for error in exc.errors()]
        raise ConfigError("invalid settings: " + "; ".join(problems)) from None
