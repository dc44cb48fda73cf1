"""Settings of the job path, shared by the gateway and the sidecars.

Read once in each process's entry point. Every process of one deployment must
see the same broker and store settings (``make run`` passes the same
environment to the gateway and to every sidecar).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.config import CommaSeparated


class JobsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore")

    amqp_url: str | None = Field(
        None, description="RabbitMQ URL (amqp://user:pass@host:5672/); unset: the embedded broker."
    )
    job_publish_timeout_s: float = Field(
        5.0, gt=0, description="Longest wait for the broker to take a job (connect, publish, confirm); beyond it "
        "POST /jobs answers 503 with Retry-After, e.g. while RabbitMQ blocks publishers on a resource alarm.",
    )
    job_publish_concurrency: int = Field(
        256, ge=1, description="Publishes one gateway process has in flight (a POST /jobs/batch publishes all its "
        "jobs at once); JOB_PUBLISH_TIMEOUT_S counts from a publish's start, not its wait for a turn.",
    )
    job_queue: str = Field(
        "jobs", min_length=1, max_length=128,
        description="Prefix of the job queues: one per model name, '<prefix>.<model name>', dead letters in "
        "'<prefix>.<model name>.dead'.",
    )
    s3_endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint (MinIO, moto); unset with S3_BUCKET set: AWS S3."
    )
    s3_bucket: str | None = Field(None, description="Bucket of inputs, results and models; unset: local folder.")
    aws_access_key_id: str | None = Field(None, description="S3 access key id.")
    aws_secret_access_key: str | None = Field(None, description="S3 secret access key.")
    aws_region: str = Field("us-east-1", description="S3 region.")
    jobs_dir: Path = Field(
        Path(".run/jobs"),
        description="Folder of the embedded broker's SQLite file and, without S3, of the local store.",
    )
    database_url: str | None = Field(
        None, description="PostgreSQL URL of the job records (postgresql://user@host:5432/db); "
        "unset: SQLite in JOBS_DIR (one machine only).",
    )
    database_pool_size: int = Field(10, ge=1, description="PostgreSQL connections per process.")
    database_batch_rows: int = Field(
        64, ge=1, description="Most jobs one database statement reads or writes: reads and writes of jobs arriving "
        "while earlier statements are in flight go together in the next one.",
    )
    database_batch_calls: int = Field(
        1, ge=1, description="Statements of one kind (job inserts, status writes, reads) one process has in flight: "
        "with one, those arriving meanwhile wait for it and go together in the next, in fewer, larger statements.",
    )
    job_inline_input_bytes: int = Field(
        256 * 1024, ge=0, description="Inline rows up to this size live in the job's database record; "
        "larger ones go to the store.",
    )
    job_inline_result_bytes: int = Field(
        256 * 1024, ge=0, description="Results up to this size live in the job's database record; "
        "larger ones go to the store.",
    )
    job_list_max_limit: int = Field(200, ge=1, description="Most jobs one GET /jobs page may ask for (limit=).")
    job_priority_levels: int = Field(
        2, ge=1, description="Priority levels of jobs (priority 0 to this minus 1); a higher one overtakes queued "
        "lower ones.",
    )
    job_result_max_wait_s: float = Field(
        60.0, ge=0, description="Longest wait= a GET /jobs/<id>/result may ask for (the job finishing meanwhile).",
    )
    job_result_poll_s: float = Field(
        0.1, gt=0, description="How often the gateway looks for finished jobs while result requests wait "
        "(one read for all of them).",
    )
    job_chunk_rows: int = Field(256, ge=1, description="Rows per /batch_predict call a job makes to its worker.")
    job_max_rows: int = Field(100_000, ge=1, description="Rows one job may carry, inline or by input_uri.")
    job_max_inline_bytes: int = Field(
        4 * 1024 * 1024, ge=1, description="Largest POST /jobs body (413 beyond: upload and use input_uri)."
    )
    job_max_input_bytes: int = Field(
        256 * 1024 * 1024, ge=1, description="Largest object an input_uri may name (422 beyond)."
    )
    job_result_redirect_bytes: int = Field(
        8 * 1024 * 1024, ge=0,
        description="Results larger than this are answered with a redirect to a presigned URL (S3 only).",
    )
    job_max_deliveries: int = Field(
        3, ge=1, description="Deliveries of one job before it is dead-lettered and marked failed."
    )
    job_retry_delay_s: float = Field(
        1.0, ge=0, description="Wait before a failed attempt goes back to the queue (times the attempt number)."
    )
    sidecar_prefetch: int = Field(
        64, ge=1, description="Jobs one sidecar holds from the broker (running or about to run)."
    )
    sidecar_concurrency: int = Field(32, ge=1, description="Jobs one sidecar runs at once (at most the prefetch).")
    sidecar_worker_calls: int = Field(
        2, ge=1, description="/batch_predict calls one sidecar has in flight to its worker; small jobs' rows "
        "waiting meanwhile go together in the next call.",
    )
    sidecar_spread_url: str | None = Field(
        None, description="A gateway of this deployment (http://): a job of more than JOB_CHUNK_ROWS rows sends "
        "its chunks to its /batch_predict, which spreads them over every worker (a chunk it does not answer goes "
        "to WORKER_URL); unset or empty: every chunk goes to WORKER_URL.",
    )
    sidecar_spread_calls: int = Field(
        4, ge=1, description="Chunks one sidecar has in flight to SIDECAR_SPREAD_URL (about 2 per worker).",
    )
    sidecar_shutdown_grace_s: float = Field(
        20.0, ge=0, description="On SIGTERM, time to finish running jobs before they are requeued."
    )
    sidecar_store_retry_s: float = Field(
        60.0, gt=0, description="How long a sidecar tries a store call again while the store does not answer (or "
        "answers 5xx), with backoff, before the call fails; a time, not a count of tries (the gateway answers 503 "
        "at once).",
    )
    sidecar_database_retry_s: float = Field(
        300.0, gt=0, description="How long a sidecar waits out a job database outage (retrying with backoff, the "
        "job's delivery held) before it hands the job back; the gateway answers 503 at once.",
    )
    sidecar_spool_dir: Path | None = Field(
        None, description="Folder where a sidecar keeps results it computed but could not write to the store "
        "(written when the store is back, not computed again); shared by the sidecars of one machine; "
        "unset: JOBS_DIR/spool.",
    )
    sidecar_spool_max_bytes: int = Field(
        512 * 1024 * 1024, ge=0, description="Most bytes of results kept in SIDECAR_SPOOL_DIR; a result beyond it "
        "is not kept (its job is computed again); 0: none kept.",
    )
    sidecar_metrics_port: int = Field(0, ge=0, description="Port of the sidecar's /metrics; 0: none.")
    sidecar_metrics_host: str = Field(
        "127.0.0.1", description="Interface of the sidecar's /metrics (0.0.0.0 in containers, for Prometheus)."
    )
    sidecar_model_check_s: float = Field(
        2.0, gt=0, description="How often a sidecar reads its worker's /health to notice it now serves another "
        "model (it then hands its jobs back and consumes the new model's queue).",
    )
    worker_url: str = Field(
        "http://127.0.0.1:8000", description="The worker this sidecar runs jobs on (http://, not over TLS)."
    )
    worker_api_key: str | None = Field(
        None, description="API key sent to WORKER_URL and SIDECAR_SPREAD_URL (Authorization: Bearer), for a "
        "gateway with API keys.",
    )
    worker_timeout_s: float = Field(60.0, gt=0, description="Timeout of one call from a sidecar to its worker.")
    worker_ready_timeout_s: float = Field(
        600.0, gt=0, description="How long a sidecar waits for its worker's /health before giving up."
    )
    embedded_visibility_timeout_s: float = Field(
        30.0, gt=0,
        description="Embedded broker: a job held this long without a heartbeat (its sidecar died) is redelivered.",
    )
    embedded_poll_interval_s: float = Field(
        0.05, gt=0, description="Embedded broker: how often an idle consumer looks for new messages."
    )
    promotion_timeout_s: float = Field(
        120.0, gt=0, description="How long a train job with \"promote\": true waits for a gateway to activate its "
        "version; past it the job succeeds with \"promoted\": false and why.",
    )
    promotion_poll_s: float = Field(
        0.5, gt=0, description="How often a train job waiting for its promotion reads its outcome.",
    )
    registry_claim_stale_s: float = Field(
        600.0, gt=0, description="A model's first version claimed this long ago and still not registered (its "
        "process died) may be registered by another process.",
    )
    job_batch_max: int = Field(
        1000, ge=1, le=1024, description="Most jobs one POST /jobs/batch may carry (422 beyond); at most 1024, "
        "since their records are one INSERT and its parameters are bounded.",
    )
    job_batch_max_bytes: int = Field(
        32 * 1024 * 1024, ge=1, description="Largest POST /jobs/batch body (413 beyond).",
    )
    job_retention_s: float = Field(
        7 * 24 * 3600.0, gt=0, description="Finished jobs older than this (since they finished) are deleted, "
        "record and store objects; GET of one is 404 after.",
    )
    job_retention_batch: int = Field(
        500, ge=1, description="Most finished jobs the janitor deletes per round (one statement each way).",
    )
    job_housekeeping_s: float = Field(
        5.0, gt=0, description="How often one process of the deployment (holding the database lease) expires "
        "queued jobs past their deadline and deletes jobs past JOB_RETENTION_S.",
    )
    webhook_secret: str | None = Field(
        None, description="Signing secret of webhooks, 'whsec_' + base64 of 24 to 64 random bytes (Standard "
        "Webhooks); unset: a job with callback_url is refused (422).",
    )
    webhook_retry_s: float = Field(
        24 * 3600.0, gt=0, description="How long a webhook is tried again (exponential backoff with jitter, from "
        "WEBHOOK_MIN_BACKOFF_S to WEBHOOK_MAX_BACKOFF_S) before it is marked failed.",
    )
    webhook_min_backoff_s: float = Field(
        1.0, gt=0, description="Wait before the second try of a webhook; it doubles with each try after.",
    )
    webhook_max_backoff_s: float = Field(600.0, gt=0, description="Longest wait between two tries of a webhook.")
    webhook_timeout_s: float = Field(
        10.0, gt=0, description="Timeout of one webhook request (connect, send, answer).",
    )
    webhook_concurrency: int = Field(
        16, ge=1, description="Webhook requests one process has in flight: a slow receiver holds one of these, "
        "never the others' deliveries.",
    )
    webhook_host_concurrency: int = Field(
        4, ge=1, description="Webhook requests one process has in flight to one receiving host.",
    )
    webhook_poll_s: float = Field(0.5, gt=0, description="How often a process looks for webhooks due.")
    webhook_lease_s: float = Field(
        60.0, gt=0, description="A webhook a process claimed and did not settle in this long (it died) is "
        "claimed by another; more than WEBHOOK_TIMEOUT_S.",
    )
    webhook_allow_private_networks: bool = Field(
        False, description="Allow callback URLs on loopback, private, link-local and metadata addresses (tests, "
        "local use); off, they are refused at submit (422) and again at delivery.",
    )
    webhook_resolve_timeout_s: float = Field(
        2.0, gt=0, description="Longest wait for a callback URL's host to resolve, at submit and at each delivery: "
        "past it the host does not resolve (422 at submit; the delivery is tried again later).",
    )
    webhook_check_deadline_s: float = Field(
        5.0, gt=0, description="Longest a submit waits for all its callback URLs' hosts to resolve (a bulk submit "
        "can name many): past it the submit is 422.",
    )
    job_task_modules: CommaSeparated = Field(
        default_factory=list,
        description="Extra modules imported at start-up to register task types, comma separated.",
    )

    @model_validator(mode="after")
    def _urls_are_plain_http(self) -> JobsSettings:
        if not self.worker_url.startswith("http://"):
            raise ValueError("WORKER_URL must be an http:// URL (the sidecar's own worker, or a gateway of this "
                             "deployment, not over TLS)")
        if self.sidecar_spread_url and not self.sidecar_spread_url.startswith("http://"):
            raise ValueError("SIDECAR_SPREAD_URL must be an http:// URL (a gateway of this deployment, not over TLS)")
        return self

    @field_validator("webhook_secret", mode="before")
    @classmethod
    def _empty_secret_is_unset(cls, value: object) -> object:
        """Compose passes ``WEBHOOK_SECRET=`` when .env leaves it empty: that means no webhooks, not a bad secret."""
        return None if value == "" else value

    @model_validator(mode="after")
    def _webhooks_are_consistent(self) -> JobsSettings:
        if self.webhook_secret is not None:
            from jobs.webhook_signing import secret_key

            secret_key(self.webhook_secret)  # ValueError naming the format
        if self.webhook_lease_s <= self.webhook_timeout_s:
            raise ValueError("WEBHOOK_LEASE_S must be more than WEBHOOK_TIMEOUT_S")
        return self

    @model_validator(mode="after")
    def _s3_is_complete(self) -> JobsSettings:
        if self.s3_endpoint_url and not self.s3_bucket:
            raise ValueError("S3_ENDPOINT_URL is set but S3_BUCKET is not")
        return self
