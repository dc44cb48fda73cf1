"""Gateway settings, read once from the environment in the entry point."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.config import CommaSeparated
from gateway.auth import hash_key
from gateway.keys import parse_key_models


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore")

    host: str = Field("127.0.0.1", description="Interface to listen on.")
    port: int = Field(8080, description="Port to listen on.")
    workers: CommaSeparated = Field(
        default_factory=lambda: ["127.0.0.1:8000"],
        description="Worker addresses, comma separated host:port; a name resolving to several "
        "addresses becomes one backend per address.",
    )
    default_model: str | None = Field(
        None,
        description="The model /predict and /batch_predict answer with (a model name its workers report); unset: "
        "the model of the first worker, in WORKERS order, that reported one.",
    )
    workers_resolve_interval_s: float = Field(10.0, gt=0, description="How often worker names are re-resolved.")
    health_interval_s: float = Field(2.0, gt=0, description="Seconds between active health probes.")
    health_timeout_s: float = Field(1.0, gt=0, description="Timeout of one health probe.")
    health_misses_to_eject: int = Field(
        3, ge=1, description="Probes in a row without an answer in time before a worker leaves rotation."
    )
    request_timeout_s: float = Field(30.0, gt=0, description="Deadline of a proxied request, retries included.")
    try_timeout_s: float = Field(
        5.0, gt=0,
        description="Longest wait for one worker's answer; past it the request is tried on another worker "
        "(within REQUEST_TIMEOUT_S). Bounds what a hung worker costs.",
    )
    outlier_failures_to_eject: int = Field(
        5, ge=1,
        description="Failed requests in a row to one worker (500/502/504, try timeout, dropped connection) "
        "before it leaves rotation until a health probe passes.",
    )
    balancer: Literal["round_robin", "least_outstanding"] = Field(
        "round_robin",
        description="How a worker is chosen: round_robin, or least_outstanding (fewest requests in flight).",
    )
    connect_timeout_s: float = Field(1.0, gt=0, description="Timeout to open a connection to a worker.")
    max_attempts: int = Field(3, ge=1, description="Tries of one request over different workers.")
    max_body_bytes: int = Field(1024 * 1024, ge=1, description="Largest request body, else 413.")
    max_in_flight_per_worker: int = Field(
        256, ge=1, description="Requests in flight to one worker before the gateway sheds with 503."
    )
    max_connections_per_worker: int = Field(
        256, ge=1,
        description="Pooled keep-alive connections to one worker; at least MAX_IN_FLIGHT_PER_WORKER, so no "
        "request waits for a connection (the in-flight bound sheds first).",
    )
    gateway_batching: bool = Field(
        True,
        description="Gather concurrent single-row POST /predict requests into one worker /batch_predict call "
        "(a lone request goes at once, as it is).",
    )
    gateway_max_batch_rows: int = Field(
        64, ge=2, description="Most rows in one gathered call; at most the workers' MAX_ROWS_PER_REQUEST."
    )
    gateway_batch_calls_per_worker: int = Field(
        1, ge=1,
        description="Gathered calls in flight per healthy worker; past them rows wait and leave together "
        "in the next call.",
    )
    gateway_batch_min_rows: int = Field(
        48, ge=1,
        description="While a gathered call is in flight, a call to another worker opens only once this many rows "
        "wait (or the oldest waited GATEWAY_BATCH_HOLD_MS); 1: at once. A lone request always goes at once.",
    )
    gateway_batch_hold_ms: float = Field(
        5.0, ge=0, description="Longest a row waits for an in-flight call while another worker is free."
    )
    retry_after_s: int = Field(1, ge=0, description="Retry-After sent with 503 answers.")
    header_timeout_s: float = Field(
        10.0, gt=0,
        description="Time a client has to send a request's headers, from connecting or from its previous answer, "
        "before the connection is closed.",
    )
    body_timeout_s: float = Field(
        60.0, gt=0,
        description="Time a request's body has to arrive once its headers have, else 408 and the connection is "
        "closed.",
    )
    max_header_bytes: int = Field(
        32 * 1024, ge=1024, description="Largest request head (request line and headers), else 431 and close."
    )
    backlog: int = Field(
        4096, ge=1,
        description="Listen backlog: connections the kernel holds until the gateway accepts them (capped by "
        "net.core.somaxconn). When it is full the kernel drops new SYNs and clients retry after 1, 3, 7 s.",
    )
    request_id_max_length: int = Field(
        128, ge=1, le=1024, description="Longest X-Request-ID taken from a client; a longer one is replaced."
    )
    request_id_chars: str = Field(
        "A-Za-z0-9._:-",
        description="Characters an X-Request-ID from a client may use, as a regular-expression character class "
        "(ASCII only); an id with any other character is replaced by a generated one.",
    )
    api_keys: CommaSeparated = Field(
        default_factory=list,
        description="API keys, comma separated: sha256:<hex> digests, or plain keys (hashed when read, never kept). "
        "Empty: access control is off.",
    )
    admin_api_keys: CommaSeparated = Field(
        default_factory=list,
        description="Admin API keys, in the form of API_KEYS: only they may upload, activate, roll back, load or "
        "unload model versions (403 for other keys); valid for every other route too. Setting them turns access "
        "control on.",
    )
    metrics_api_key: str | None = Field(
        None, description="The one key /metrics takes (sha256:<hex> or plain); unset: /metrics is open."
    )
    rate_limit_per_s: float = Field(
        100.0, ge=0, description="Requests a second each API key may make, sustained; 0: no limit."
    )
    rate_limit_burst: int = Field(200, ge=1, description="Requests an API key may make at once (its bucket size).")
    api_key_models: CommaSeparated = Field(
        default_factory=list,
        description="Models some keys may use, comma separated <key id or key>=<model>|<model>: such a key gets 403 "
        "on other models' routes and jobs. Keys not named use every model.",
    )
    keys_refresh_s: float = Field(
        1.0, gt=0, le=5,
        description="How often each gateway process reads the keys made with POST /admin/keys again: a revoked key "
        "stops working everywhere within it.",
    )
    redis_url: str | None = Field(
        None,
        description="Redis for rate limits and quotas shared by every gateway (redis://host:6379/0). Unset: shared "
        "by one machine's gateway processes through limits.sqlite3 in JOBS_DIR.",
    )
    redis_timeout_s: float = Field(0.25, gt=0, description="Longest wait for one Redis call before it is an outage.")
    limits_fail_open_s: float = Field(
        30.0, ge=0,
        description="While the rate limit and quota store is down, seconds of judging by the counts this process "
        "knows (fail open) before refusing keyed requests with 503 (fail closed) until it is back.",
    )
    usage_counting: bool = Field(True, description="Count every key's requests, rows and model time (GET /usage).")
    usage_flush_s: float = Field(
        5.0, gt=0, description="Seconds between two writes of a process's counted usage to the job database."
    )
    usage_metrics_max_keys: int = Field(
        50, ge=0, description="Key ids that get their own label in the per-key metrics; the rest are 'other'."
    )
    key_body_max_bytes: int = Field(
        64 * 1024, ge=1, description="Largest POST /admin/keys body, else 413."
    )
    usage_metrics_max_models: int = Field(
        100, ge=0, description="Model names that get their own label in the per-key metrics; the rest are 'other'."
    )
    cors_allow_origins: CommaSeparated = Field(
        default_factory=list, description="Origins browsers may call the gateway from, comma separated; empty: no CORS."
    )
    drain_s: float = Field(
        1.0, ge=0,
        description="On SIGTERM: seconds of answering with Connection: close and /gateway/health 503 "
        "'draining' before it stops accepting and finishes what is in flight.",
    )
    listen_fd: int | None = Field(
        None, ge=0,
        description="An inherited listening socket to serve on instead of binding HOST:PORT: the launcher "
        "holds it, so connections wait in its queue across a gateway restart instead of being refused.",
    )
    launcher_status_file: Path | None = Field(
        None,
        description="The JSON file where the launcher (make run) writes the state of the processes it supervises "
        "(restarts, last exit, backoff), shown in /gateway/info and /metrics; set by the launcher. Unset: not shown.",
    )
    activation_timeout_s: float = Field(
        60.0, gt=0,
        description="Deadline of a model version change: every worker loads and checks the version (and compiles "
        "what new shapes need) within it, else nothing changes anywhere.",
    )
    worker_admin_token: str = Field(
        "", description="Bearer token sent on every call to the workers' /admin routes (their WORKER_ADMIN_TOKEN); "
        "empty: none sent. The launcher makes one for its workers unless set.",
    )
    model_reconcile_s: float = Field(
        2.0, gt=0,
        description="Seconds between two rounds of the reconciler: a worker whose versions differ from the "
        "registry's is pushed the registry's state; pending promotions of train jobs are run.",
    )
    model_max_artifact_bytes: int = Field(
        1024 * 1024 * 1024, ge=1,
        description="Largest model version (its files together) the gateway takes in an upload or from a worker.",
    )
    log_level: str = Field("info", description="Python log level.")
    access_log: bool = Field(True, description="One JSON line per request.")
    access_log_flush_s: float = Field(
        0.2, gt=0, le=10,
        description="Access lines are written in batches: at most this long after a request (and at exit).",
    )
    access_log_max_lines: int = Field(
        1000, ge=1, description="Access lines held in memory before they are written, whatever the time.",
    )

    @model_validator(mode="after")
    def _pool_covers_in_flight(self) -> GatewaySettings:
        if self.max_connections_per_worker < self.max_in_flight_per_worker:
            raise ValueError(
                "MAX_CONNECTIONS_PER_WORKER must be at least MAX_IN_FLIGHT_PER_WORKER: requests past the pool "
                "would queue for a connection instead of being shed with 503"
            )
        return self

    @field_validator("request_id_chars")
    @classmethod
    def _check_request_id_chars(cls, value: str) -> str:
        if not value.isascii() or value.startswith("^") or "]" in value.replace("\\]", ""):
            raise ValueError("REQUEST_ID_CHARS must be the ASCII inside of a [...] character class, not negated")
        try:
            re.compile(f"[{value}]".encode())
        except re.error as exc:
            raise ValueError(f"REQUEST_ID_CHARS is not a character class: {exc}") from None
        return value

    @field_validator("api_keys", "admin_api_keys")
    @classmethod
    def _hash_api_keys(cls, value: list[str]) -> list[str]:
        return [hash_key(entry) for entry in value]

    @field_validator("api_key_models")
    @classmethod
    def _check_key_models(cls, value: list[str]) -> list[str]:
        parse_key_models(value)
        return value

    @field_validator("metrics_api_key")
    @classmethod
    def _hash_metrics_key(cls, value: str | None) -> str | None:
        return hash_key(value) if value else None

    @field_validator("default_model")
    @classmethod
    def _empty_default_model_is_unset(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None

    @field_validator("workers")
    @classmethod
    def _check_addresses(cls, value: list[str]) -> list[str]:
        for address in value:
            host, _, port = address.removeprefix("http://").rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"worker address {address!r} must look like host:port")
        return value
