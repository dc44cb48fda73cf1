"""A large job's chunks over every worker: sent to a gateway (SIDECAR_SPREAD_URL), which balances them.

A job runs on one sidecar. Through that sidecar's own worker alone, a
100,000-row job got about half the rows/s that ``/batch_predict`` gets through
the gateway with 2 workers; sent to the gateway, its chunks go to whichever
workers are healthy and least busy, as live traffic's do.

The job must not come to depend on the gateway, nor take another model's
answers for its own:

- no answer from the gateway (a connection error, a timeout, 502 / 503 / 504:
  no worker could answer; 401 / 403 / 429: it refuses this sidecar's key or
  rate-limits it) sends that chunk to the sidecar's own worker instead, through
  the coalescer, exactly as without spreading;
- a 4xx a retry would repeat is the rows' fault: :class:`WorkerRefused`, as
  from the own worker; another 5xx fails the attempt (retried);
- each answer names the model that computed it (common.model_headers). Another
  model's name fails the attempt (:class:`ChunkOfAnotherModel`, retried: the
  gateway balances over workers this job's rows are not for). Another version
  of the job's model is its answer all the same (workers half upgraded, or a
  canary): the version is passed on with the answer, and the job's record
  names every version that computed some of its rows. An answer naming no
  model says nothing of whose it is: it is computed again on the own worker.

An answer is passed on as the bytes the gateway sent (a JSON array, one item
per row, as the worker's contract says; the own worker's answers are sliced by
position without counting either): the task splices them into its result
without parsing them, which saved a fifth of the sidecar's CPU.

The client is jobs.batch_client's (the gateway's own, plain HTTP, so the URL
is http://), as the coalescer's. It has no hook of the own worker's client
(``Sidecar._check_answering_model``): an answer of another worker says
nothing of the model the own worker serves.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from common.forwarder import BadResponse, DeadlineExceeded, TransportError, UpstreamResponse
from common.model_headers import answering_model
from jobs.batch_client import BatchPredictClient
from jobs.coalesce import Versioned, WorkerRefused, refused
from jobs.settings import JobsSettings

log = logging.getLogger("jobs.spread")
#: Answers of a gateway that could not, or would not, have a worker answer: the own worker answers instead.
GATEWAY_UNAVAILABLE = frozenset({401, 403, 429, 502, 503, 504})
#: One warning per reason this often at most: a 100,000-row job falling back would log 400 lines otherwise.
WARN_EVERY_S = 60.0

Predict = Callable[[list[dict[str, Any]], str], Awaitable[Versioned]]


class ChunkOfAnotherModel(Exception):
    """The gateway's answer to a chunk came from a worker of another model than the job's."""


class GatewayFailed(Exception):
    """The gateway answered a 5xx that says a worker failed on the rows (not that none could answer)."""


class Spreader:
    def __init__(self, settings: JobsSettings, fallback: Predict) -> None:
        """``fallback(rows, request_id)``: the own worker's answers and their version (the sidecar's coalescer)."""
        assert settings.sidecar_spread_url
        self.url = settings.sidecar_spread_url
        # No connection within CONNECT_TIMEOUT_S (jobs.batch_client): the own worker answers the chunk.
        self.gateway = BatchPredictClient(self.url, settings.worker_api_key, settings.worker_timeout_s,
                                          settings.sidecar_spread_calls)
        self._slots = asyncio.Semaphore(settings.sidecar_spread_calls)
        self._fallback = fallback
        self._warned: dict[str, float] = {}

    async def predict(self, rows: list[dict[str, Any]], request_id: str,
                      model_name: str) -> tuple[bytes, str | None]:
        """The answers of model ``model_name`` to ``rows``, a JSON array's bytes, and the version that computed
        them: of any worker behind the gateway, else of the own one."""
        async with self._slots:
            answered = await self._through_gateway(rows, request_id, model_name)
        if answered is not None:
            return answered
        answers, version = await self._fallback(rows, request_id)
        return orjson.dumps(answers), version

    async def close(self) -> None:
        await self.gateway.aclose()

    async def _through_gateway(self, rows: list[dict[str, Any]], request_id: str,
                               model_name: str) -> tuple[bytes, str] | None:
        """The gateway's answers as it sent them and their version, if they are of model ``model_name``; None
        when the own worker is to answer instead."""
        try:
            answer = await self.gateway.send(orjson.dumps(rows), request_id)
        except (TransportError, DeadlineExceeded, BadResponse) as exc:
            self._warn(f"the gateway at {self.url} did not answer ({type(exc).__name__}): "
                       "chunks go to the own worker meanwhile")
            return None
        if answer.status in GATEWAY_UNAVAILABLE:
            self._warn(f"the gateway at {self.url} answered {answer.status}: chunks go to the own worker meanwhile")
            return None
        if answer.status != 200:
            _refuse(answer)
        answering = answering_model(answer.headers)
        if answering is None:
            self._warn(f"the gateway's answers name no model, not {model_name!r}: computed again on the own worker")
            return None
        if answering[0] != model_name:
            raise ChunkOfAnotherModel(f"the gateway at {self.url} answered with model {answering[0]!r}, not "
                                      f"{model_name!r}: its workers serve another model")
        body = answer.body.strip()
        if not (body.startswith(b"[") and body.endswith(b"]")):  # its items are the worker's to get right
            raise ValueError(f"the gateway's answer to /batch_predict is not a JSON array: {body[:100]!r}")
        return body, answering[1]

    def _warn(self, reason: str) -> None:
        """Log ``reason``, unless it was logged less than WARN_EVERY_S ago."""
        now = time.monotonic()
        if now - self._warned.get(reason, -WARN_EVERY_S) >= WARN_EVERY_S:
            self._warned[reason] = now
            log.warning("%s", reason)


def _refuse(answer: UpstreamResponse) -> None:
    """Raise what an answer other than 200 means: WorkerRefused for a 4xx a retry would repeat, as the own
    worker's (the task fails, naming the rows), else GatewayFailed (the attempt is retried)."""
    if refused(answer.status):
        raise WorkerRefused(answer)
    raise GatewayFailed(f"the gateway answered {answer.status} to /batch_predict: {answer.body[:200]!r}")
