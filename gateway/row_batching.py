"""Gateway-side batching: concurrent single-row ``POST /predict`` requests share one worker call.

As in the Clipper serving system: rows that arrive together leave together, as one
``/batch_predict``, and the worker's answer is split back into each request's own
``/predict`` answer (same status, body and headers). The worker's HTTP cost and the
gateway's upstream client cost are then paid once per batch instead of once per row.

When a row goes. With no call in flight a row leaves at once, alone, as the very ``/predict``
it is: a lone request is never delayed and never re-encoded. While calls are in flight, rows
wait, and as soon as a call comes back every waiting row (up to GATEWAY_MAX_BATCH_ROWS, and
MAX_BODY_BYTES of body) leaves in the next one: a batch is as large as the load, as in the
worker's own batcher. At most GATEWAY_BATCH_CALLS_PER_WORKER x (healthy workers) calls are in
flight, and a call beside one already in flight opens only once GATEWAY_BATCH_MIN_ROWS rows
wait, or the oldest has waited GATEWAY_BATCH_HOLD_MS (the only timer, armed only while rows
are held with a call free; it also keeps a hung worker's call from holding rows back). So at
moderate load the calls are few and full instead of one per worker and small (a worker pays
a fixed cost per call: its HTTP, the thread hand-off, XLA's dispatch, the padding to a
bucket), and they spread over the workers as the load rises. Waiting rows are bounded like
requests in flight (MAX_IN_FLIGHT_PER_WORKER per healthy worker), past that 503.

Per model. Each served model has its own batcher (gateway/proxy.py): its rows are gathered only
with rows of the same model and go to that model's workers, and its bounds count that model's
healthy workers, so one model's load never delays or overloads another's.

Which rows are gathered. Only a body that is exactly a plain row of the batcher's model
(gateway/health.py fetches its metadata; re-read from the pool every 0.25 s): ``{"input_data":
..., "return_probabilities": bool?}``, of the model's input shape, every number finite and
within the input dtype. Every other request (wrong shape, a boolean, an unknown field,
unreadable JSON, no metadata yet) goes to a worker alone and unchanged, so its 4xx is the
worker's own, written in one place. Options ride along per row (``/batch_predict`` takes them per row).
A batch the worker still refuses (e.g. one row's non-finite output is 422 for the whole
batch) is sent again row by row, so a bad row fails only its own request; a 503 (busy,
loading) is every row's answer, with its own request id, rather than a retry storm.

Retries, deadlines, outlier ejection and in-flight accounting are the proxy's: every call
here goes through its ``forward`` (a gathered call is one request in flight to its worker; its
deadline is that of its oldest row); it carries the first row's X-Request-ID. Its calls go to the
worker with the fewest in flight, whatever BALANCER says: the call budget above assumes they spread,
and round robin would queue a call behind a busy (or hung) worker while another one idles. The encoding
of the worker call is :func:`encode_rows` / :func:`decode_answers`, and nothing else knows it.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections import deque
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from common.forwarder import UpstreamResponse
from common.rows import is_plain_row_envelope
from gateway.backends import BackendPool
from gateway.errors import GatewayError, Overloaded
from gateway.metrics import GatewayMetrics
from gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

#: The largest finite magnitude of each float input datatype; a number past it is inf in the worker.
_FLOAT_LIMITS = {"FP16": 65504.0, "FP32": 3.4028234663852886e38, "FP64": sys.float_info.max}
_INT_BITS = {"INT8": 8, "INT16": 16, "INT32": 32, "INT64": 64, "UINT8": 8, "UINT16": 16, "UINT32": 32, "UINT64": 64}
#: How often the served model's metadata and the healthy workers are re-read from the pool.
POOL_READ_INTERVAL_S = 0.25


class Forward(Protocol):
    """The proxy's forward: one call to a worker, with retries, within ``deadline`` (None: from now),
    carrying ``requests`` client requests (each a failure for outlier ejection when the call fails),
    to the least loaded worker when ``least_outstanding``."""

    def __call__(
        self, method: str, path: str, headers: dict[str, str], body: bytes, state: dict,
        deadline: float | None = None, requests: int = 1, least_outstanding: bool = False,
    ) -> Awaitable[UpstreamResponse]: ...


@dataclass(slots=True)
class GatheredRow:
    """One waiting ``/predict`` request: its body as sent, parsed, and the future of its answer."""

    body: bytes
    item: dict[str, Any]
    headers: dict[str, str]
    state: dict
    deadline: float
    future: asyncio.Future[UpstreamResponse] = field(repr=False)


def encode_rows(rows: Sequence[GatheredRow]) -> tuple[bytes, str]:
    """The ``/batch_predict`` body and its content type: the rows' own JSON bodies as one array."""
    return b"[" + b",".join(row.body for row in rows) + b"]", "application/json"


def decode_answers(upstream: UpstreamResponse, count: int) -> list[bytes] | None:
    """Each row's ``/predict`` body from a 200 ``/batch_predict`` answer; None if it is not ``count`` answers."""
    try:
        answers = orjson.loads(upstream.body)
    except orjson.JSONDecodeError:
        return None
    if type(answers) is not list or len(answers) != count:
        return None
    return [orjson.dumps(answer) for answer in answers]


class RowSpec:
    """What a plain row of the served model looks like, from its metadata's ``inputs[0]``.

    orjson refuses NaN, the infinities and numbers past a double, so a parsed number is finite;
    what is left to check is the input dtype's range (a float32 input is inf past ~3.4e38).
    """

    def __init__(self, shape: tuple[int, ...], types: frozenset[type], low: float, high: float) -> None:
        self.shape = shape
        self._types = types
        self._low, self._high = low, high

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> RowSpec | None:
        """None when the input is of a kind the gateway does not check (then nothing is gathered)."""
        spec = metadata["inputs"][0]
        shape, datatype = spec.get("shape"), spec.get("datatype")
        if not (isinstance(shape, list) and shape[:1] == [-1]
                and all(type(size) is int and size > 0 for size in shape[1:])):
            return None
        if datatype in _FLOAT_LIMITS:
            return cls(tuple(shape[1:]), frozenset({int, float}), -_FLOAT_LIMITS[datatype], _FLOAT_LIMITS[datatype])
        if datatype in _INT_BITS:
            bits = _INT_BITS[datatype]
            low, high = (0, 2**bits - 1) if datatype.startswith("U") else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
            return cls(tuple(shape[1:]), frozenset({int}), low, high)
        return None

    def fits(self, value: Any, shape: tuple[int, ...] | None = None) -> bool:
        shape = self.shape if shape is None else shape
        if not shape:
            return type(value) in self._types and self._low <= value <= self._high
        if type(value) is not list or len(value) != shape[0]:
            return False
        if len(shape) == 1:  # the innermost axis, in C: the types present, then the extremes
            return self._types.issuperset(map(type, value)) and self._low <= min(value) and max(value) <= self._high
        rest = shape[1:]
        return all(self.fits(item, rest) for item in value)

    def plain_row(self, body: bytes) -> dict[str, Any] | None:
        """The parsed body when it is a plain row of this shape, else None (it then goes alone)."""
        try:
            item = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        return item if is_plain_row_envelope(item) and self.fits(item["input_data"]) else None


class RowBatcher:
    """Gathers plain ``/predict`` rows of one model into ``/batch_predict`` calls made through ``forward``
    (which goes to that model's workers); its bounds count that model's healthy workers."""

    def __init__(
        self, forward: Forward, pool: BackendPool, metrics: GatewayMetrics, settings: GatewaySettings,
        model_name: str | None = None,
    ) -> None:
        self._forward = forward
        self._pool = pool
        self._model_name = model_name
        self._metrics = metrics
        self._max_rows = settings.gateway_max_batch_rows
        self._max_bytes = settings.max_body_bytes
        self._calls_per_worker = settings.gateway_batch_calls_per_worker
        self._max_waiting_per_worker = settings.max_in_flight_per_worker
        self._timeout_s = settings.request_timeout_s
        self._min_rows = settings.gateway_batch_min_rows
        self._hold_s = settings.gateway_batch_hold_ms / 1000
        self._hold_timer: asyncio.TimerHandle | None = None
        self._waiting: deque[GatheredRow] = deque()
        self._calls = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._metadata: dict[str, Any] | None = None
        self._spec: RowSpec | None = None
        self._healthy = 1
        self._read_at = float("-inf")

    def _refresh(self) -> None:
        """Re-read the served model and the healthy workers, at most every POOL_READ_INTERVAL_S.

        They change with health probes (every HEALTH_INTERVAL_S); reading them per request cost
        ~10 us. A stale spec is safe: a worker that refuses a batch gets its rows one by one.
        """
        now = time.monotonic()
        if now - self._read_at < POOL_READ_INTERVAL_S:
            return
        self._read_at = now
        metadata = self._pool.served_model(self._model_name)
        if metadata is not self._metadata:
            self._metadata = metadata
            self._spec = RowSpec.from_metadata(metadata) if metadata is not None else None
        # None healthy: one call goes, and the proxy answers 503.
        self._healthy = max(1, self._pool.summary(self._model_name)[0])

    async def predict(self, headers: dict[str, str], body: bytes, state: dict) -> UpstreamResponse:
        """The answer to one ``POST /predict``, as the worker's ``/predict`` would give it."""
        self._refresh()
        spec = self._spec
        if spec is not None and not self._waiting and self._may_open(1):
            # Alone, it goes as sent, so it need not be parsed: a body that is not a plain row gets the worker's
            # own answer either way.
            self._calls += 1
            try:
                return await self._forward("POST", "/predict", headers, body, state, least_outstanding=True)
            finally:
                self._calls -= 1
                self._flush()
        item = spec.plain_row(body) if spec is not None else None
        if item is None:
            return await self._forward("POST", "/predict", headers, body, state)
        healthy = self._healthy
        limit = self._max_waiting_per_worker * healthy
        if len(self._waiting) >= limit:
            raise Overloaded(f"{len(self._waiting)} rows wait for a worker call (the limit is {limit})")
        row = GatheredRow(body, item, headers, state, time.monotonic() + self._timeout_s,
                          asyncio.get_running_loop().create_future())
        self._waiting.append(row)
        self._metrics.batch_waiting_rows.inc()
        self._flush()
        return await row.future

    def _may_open(self, rows: int) -> bool:
        """Whether a call may go now with ``rows`` rows: a free call, and either none in flight or enough rows."""
        if not self._call_free():
            return False
        held_long = bool(self._waiting) and time.monotonic() >= self._hold_ends()
        return self._calls == 0 or rows >= self._min_rows or held_long

    def _call_free(self) -> bool:
        """Fewer than GATEWAY_BATCH_CALLS_PER_WORKER x (healthy workers) gathered calls are in flight."""
        return self._calls < self._calls_per_worker * self._healthy

    def _hold_ends(self) -> float:
        """When the oldest waiting row has waited GATEWAY_BATCH_HOLD_MS (its deadline is its arrival + the timeout)."""
        return self._waiting[0].deadline - self._timeout_s + self._hold_s

    def _flush(self) -> None:
        """Send what waits, a batch per free call."""
        while self._waiting and self._may_open(len(self._waiting)):
            batch = self._take()
            if not batch:
                return
            self._calls += 1
            task = asyncio.get_running_loop().create_task(self._send(batch), name="row-batch")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if self._waiting and self._hold_timer is None and self._call_free():
            # Held for an in-flight call although a worker is free: go after all once the oldest waited long enough.
            wait = self._hold_ends() - time.monotonic()
            self._hold_timer = asyncio.get_running_loop().call_later(max(wait, 0.0), self._hold_over)

    def _hold_over(self) -> None:
        self._hold_timer = None
        self._flush()

    def _take(self) -> list[GatheredRow]:
        batch: list[GatheredRow] = []
        size = 1  # the array's brackets and commas
        while self._waiting and len(batch) < self._max_rows:
            row = self._waiting[0]
            if batch and size + len(row.body) + 1 > self._max_bytes:
                break
            self._waiting.popleft()
            self._metrics.batch_waiting_rows.dec()
            if row.future.done():  # its request was cancelled while it waited
                continue
            batch.append(row)
            size += len(row.body) + 1
        return batch

    async def _send(self, batch: list[GatheredRow]) -> None:
        try:
            self._metrics.batch_rows.observe(len(batch))
            if len(batch) == 1:
                await self._send_alone(batch[0])
            else:
                await self._send_batch(batch)
        except Exception as exc:  # a bug: each request gets it, as an unbatched one would
            log.exception("a batch of %d rows failed in the gateway", len(batch))
            for row in batch:
                if not row.future.done():
                    row.future.set_exception(exc)
        finally:
            for row in batch:  # only when this task itself was cancelled (shutdown)
                if not row.future.done():
                    row.future.cancel()
            self._calls -= 1
            self._flush()

    async def _send_alone(self, row: GatheredRow) -> None:
        try:
            answer = await self._forward("POST", "/predict", row.headers, row.body, row.state, row.deadline,
                                         least_outstanding=True)
        except GatewayError as exc:
            _settle(row, exc)
        else:
            _settle(row, answer)

    async def _send_batch(self, batch: list[GatheredRow]) -> None:
        body, content_type = encode_rows(batch)
        # The first row's id: the worker puts it on its answer and in its error bodies.
        headers = {"content-type": content_type, "x-request-id": batch[0].headers["x-request-id"]}
        state: dict = {}
        self._metrics.batched_calls.inc()
        try:
            upstream = await self._forward(
                "POST", "/batch_predict", headers, body, state, min(row.deadline for row in batch), len(batch),
                least_outstanding=True,
            )
        except GatewayError as exc:  # no worker, overloaded, timed out: every row's answer, as unbatched
            for row in batch:
                row.state.update(state)
                _settle(row, exc)
            return
        for row in batch:
            row.state.update(state)
        if upstream.status == 503:  # busy or not ready: the same for every row; no second wave of calls
            for row in batch:
                _settle(row, _with_request_id(upstream, row.headers["x-request-id"]))
            return
        answers = decode_answers(upstream, len(batch)) if upstream.status == 200 else None
        if answers is None:
            self._metrics.batch_fallbacks.labels(str(upstream.status)).inc()
            log.info("a batch of %d rows was answered %d; sending its rows one by one", len(batch), upstream.status)
            await asyncio.gather(*(self._send_alone(row) for row in batch))
            return
        for row, answer in zip(batch, answers, strict=True):
            _settle(row, UpstreamResponse(200, dict(upstream.headers), answer))


def _settle(row: GatheredRow, outcome: UpstreamResponse | GatewayError) -> None:
    if row.future.done():
        return
    if isinstance(outcome, GatewayError):
        row.future.set_exception(outcome)
    else:
        row.future.set_result(outcome)


def _with_request_id(upstream: UpstreamResponse, request_id: str) -> UpstreamResponse:
    """The worker's error answer for one row: the envelope's ``request_id`` set to that row's."""
    try:
        body = orjson.loads(upstream.body)
    except orjson.JSONDecodeError:
        return upstream
    if isinstance(body, dict) and "request_id" in body:
        body["request_id"] = request_id
        return UpstreamResponse(upstream.status, dict(upstream.headers), orjson.dumps(body))
    return upstream
