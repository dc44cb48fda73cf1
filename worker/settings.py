"""Worker settings, read once from the environment in the entry point."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ARTIFACTS_DIR = Path(__file__).parent / "artifacts"


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore")

    worker_id: str = Field("0", description="Identity reported in every response and in /health.")
    host: str = Field("127.0.0.1", description="Interface to listen on.")
    port: int = Field(8000, description="Port to listen on.")
    model: str = Field(
        "worker.model",
        description="The model to serve: 'module:Class', or a module holding one Model subclass.",
    )
    model_artifacts: Path = Field(ARTIFACTS_DIR, description="Folder the model's load() reads.")
    max_batch_size: int = Field(64, ge=1, description="Rows per batch; 1 turns batching off.")
    batch_timeout_ms: float = Field(
        1.0, ge=0, description="Longest wait for more rows once a batch has started, under load."
    )
    max_queue_rows: int = Field(4096, ge=1, description="Rows waiting in the batcher before 503.")
    max_rows_per_request: int = Field(
        1024, ge=1, description="Rows one /batch_predict may carry before 413."
    )
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1, description="Largest request body, else 413.")
    worker_versions_dir: Path | None = Field(
        None, description="Folder the worker unpacks the model versions it is sent into (one sub-folder each, "
        "removed when the version is unloaded); unset: a temporary folder of its own.",
    )
    worker_max_artifact_bytes: int = Field(
        1024**3, ge=1, description="Largest model version (its files in all) the worker accepts, else 413.",
    )
    jax_cache_dir: str = Field(".cache/jax", description="Persistent XLA compilation cache folder; empty disables it.")
    xla_cpu_threads: int | None = Field(
        None, ge=1, le=1, description="1: XLA's CPU kernels run on one thread each (unset: XLA decides)."
    )
    failed_exit_delay_s: float = Field(
        3.0, ge=0, description="After the model fails to start, /health reports why this long, then the worker exits "
        "(78 when the model itself cannot start: the launcher does not restart it; else 1)."
    )
    drain_s: float = Field(
        2.0, ge=0,
        description="On SIGTERM: seconds of /health 503 'draining' (balancers stop sending) and Connection: "
        "close before it stops accepting and finishes what it holds; at least the gateway's HEALTH_INTERVAL_S.",
    )
    worker_admin_token: str | None = Field(
        None, description="Bearer token the worker's /admin routes (load, serve, drop versions) require, else 401; "
        "the gateway's WORKER_ADMIN_TOKEN must match. Unset: they are open (workers on loopback only).",
    )
    log_level: str = Field("info", description="Python log level.")

    @field_validator("worker_admin_token", mode="before")
    @classmethod
    def _empty_token_is_unset(cls, value: object) -> object:
        """Compose passes ``WORKER_ADMIN_TOKEN=`` when .env leaves it empty: no token, not an empty one."""
        return None if value == "" else value

    @model_validator(mode="after")
    def _rows_fit_queue(self) -> WorkerSettings:
        if self.max_rows_per_request > self.max_queue_rows:
            raise ValueError("MAX_ROWS_PER_REQUEST must not exceed MAX_QUEUE_ROWS")
        return self

    @property
    def bucket_sizes(self) -> tuple[int, ...]:
        """Padded batch shapes XLA compiles: powers of two up to, and including, the max."""
        sizes, size = [], 1
        while size < self.max_batch_size:
            sizes.append(size)
            size *= 2
        sizes.append(self.max_batch_size)
        return tuple(sizes)
