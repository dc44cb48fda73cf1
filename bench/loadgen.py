"""Closed-loop HTTP load: ``concurrency`` connections, each sending its next request
as soon as the previous answer arrives, for a fixed duration.

The load generator is wrk (C, epoll, one thread) when it is installed
(``scripts/install-load-generator.sh``); it needs a few percent of one core at
the rates measured here, which the result records (``loadgen_cpu``), so a
reader can check it was not the bottleneck. Without wrk an aiohttp fallback
does the same job, slower: fine for smoke tests, not for published numbers.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import os
import resource
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import numpy as np
import orjson

from common import binary_rows


def _base(url: str) -> str:
    """The root of the service that answers ``url`` (a /predict, /batch_predict or /v2 infer URL)."""
    for route in ("/v2/models/", "/batch_predict", "/predict"):
        if route in url:
            return url.rsplit(route, 1)[0]
    return url


@functools.cache
def _metadata(base: str) -> dict:
    return httpx.get(f"{base}/metadata", timeout=10).raise_for_status().json()


def predict_body(predict_url: str) -> bytes:
    """The served model's example row as a /predict body, from the /metadata beside ``predict_url``."""
    return orjson.dumps({"input_data": _metadata(_base(predict_url))["example"]["input_data"]})


def _flat(value: object) -> list:
    return [item for part in value for item in _flat(part)] if isinstance(value, list) else [value]


def infer_url(base: str) -> str:
    """The Open Inference Protocol infer URL of the model served behind ``base``."""
    return f"{base}/v2/models/{_metadata(base)['name']}/infer"


def request_body(url: str, rows: int = 1) -> bytes:
    """``rows`` copies of the example row as the body ``url`` takes: /predict's (one row), /batch_predict's
    (a list of rows), or an infer request's (one tensor, JSON data)."""
    metadata = _metadata(_base(url))
    row = metadata["example"]["input_data"]
    if "/v2/models/" in url:
        [tensor] = metadata["inputs"]
        return orjson.dumps({"inputs": [{"name": tensor["name"], "shape": [rows, *tensor["shape"][1:]],
                                         "datatype": tensor["datatype"], "data": _flat(row) * rows}]})
    if url.endswith("/batch_predict"):
        return orjson.dumps([{"input_data": row}] * rows)
    if rows != 1:
        raise ValueError(f"{url} takes one row per request")
    return predict_body(url)

def binary_rows_body(url: str, rows: int) -> bytes:
    """``rows`` copies of the example row as a binary /batch_predict body (common/binary_rows.py)."""
    metadata = _metadata(_base(url))
    [tensor] = metadata["inputs"]
    shape, datatype = tensor["shape"][1:], tensor["datatype"]
    row = binary_rows.pack_row(metadata["example"]["input_data"], datatype, len(shape))
    return binary_rows.encode([row] * rows, shape, datatype, [False] * rows)


# wrk calls done() once at the end: print everything we need as one JSON line.
_WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = os.getenv("BENCH_CONTENT_TYPE")
local f = assert(io.open(os.getenv("BENCH_BODY_FILE"), "rb"))
wrk.body = f:read("*a")
f:close()

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"p50_us":%d,"p95_us":%d,"p99_us":%d,"mean_us":%f,"max_us":%d,' ..
    '"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(95),
    latency:percentile(99), latency.mean, latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


@dataclass
class LoadResult:
    concurrency: int
    duration_s: float
    requests: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    #: Non-2xx answers and socket errors by kind; ``errors`` is their sum.
    error_kinds: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    #: The load generator's own CPU time over the run, in cores (1.0 = one full core).
    loadgen_cpu: float | None = None
    loadgen: str = "wrk"

    def to_dict(self) -> dict:
        return asdict(self)


def find_wrk() -> str | None:
    return shutil.which("wrk")


def run_wrk(
    url: str, body: bytes, concurrency: int, duration_s: float, *, timeout_s: float = 10.0,
    content_type: str = "application/json", headers: dict[str, str] | None = None,
) -> LoadResult:
    """One wrk run; wrk counts durations in whole seconds, so ``duration_s`` is rounded up. ``headers``: sent
    with every request (e.g. an API key)."""
    wrk = find_wrk()
    if wrk is None:
        raise RuntimeError("wrk is not installed: run scripts/install-load-generator.sh")
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        script, body_file = Path(tmp) / "post.lua", Path(tmp) / "body.json"
        script.write_text(_WRK_SCRIPT)
        body_file.write_bytes(body)
        # The generator's CPU time shows whether it could have been the bottleneck.
        argv = [wrk, "-t1", f"-c{concurrency}", f"-d{math.ceil(duration_s)}s",
                f"--timeout={timeout_s:g}s", "-s", str(script), url]
        argv += [arg for name, value in (headers or {}).items() for arg in ("-H", f"{name}: {value}")]
        cpu_before = _children_cpu_seconds()
        process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**os.environ, "BENCH_BODY_FILE": str(body_file), "BENCH_CONTENT_TYPE": content_type},
        )
        deadline_s = duration_s + timeout_s + 30
        try:
            out, err = process.communicate(timeout=deadline_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise RuntimeError(f"wrk did not finish within {deadline_s:.0f}s") from None
        usage = _children_cpu_seconds() - cpu_before
    if process.returncode != 0:
        raise RuntimeError(f"wrk failed ({process.returncode}): {err.decode(errors='replace')}")
    line = out.decode().strip().splitlines()[-1]
    raw = json.loads(line)
    elapsed = raw["duration_us"] / 1e6
    kinds = {
        "non_2xx": raw["status"], "connect": raw["connect"], "read": raw["read"],
        "write": raw["write"], "timeout": raw["timeout"],
    }
    return LoadResult(
        concurrency=concurrency,
        duration_s=round(elapsed, 3),
        requests=raw["requests"],
        rps=round(raw["requests"] / elapsed, 1),
        p50_ms=raw["p50_us"] / 1000,
        p95_ms=raw["p95_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        mean_ms=round(raw["mean_us"] / 1000, 3),
        max_ms=raw["max_us"] / 1000,
        error_kinds=kinds,
        errors=sum(kinds.values()),
        loadgen_cpu=round(usage / elapsed, 3),
        loadgen="wrk",
    )


def _children_cpu_seconds() -> float:
    """CPU time of every reaped child so far; nothing else is reaped during a wrk run."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def _python_load(url: str, body: bytes, concurrency: int, duration_s: float, timeout_s: float,
                       headers: dict[str, str]):
    import aiohttp

    latencies: list[float] = []
    errors = {"non_2xx": 0, "connect": 0, "read": 0, "write": 0, "timeout": 0}
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.perf_counter()
        deadline = started + duration_s

        async def loop() -> None:
            while time.perf_counter() < deadline:
                sent = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=headers) as response:
                        await response.read()
                        if not 200 <= response.status < 300:
                            errors["non_2xx"] += 1
                except aiohttp.ClientConnectorError:
                    errors["connect"] += 1
                    continue
                except asyncio.TimeoutError:
                    errors["timeout"] += 1
                    continue
                except aiohttp.ClientError:
                    errors["read"] += 1
                    continue
                latencies.append(time.perf_counter() - sent)

        await asyncio.gather(*(loop() for _ in range(concurrency)))
        return latencies, errors, time.perf_counter() - started


def run_python(
    url: str, body: bytes, concurrency: int, duration_s: float, *, timeout_s: float = 10.0,
    content_type: str = "application/json", headers: dict[str, str] | None = None,
) -> LoadResult:
    """The same measurement with aiohttp in this process (when wrk is missing)."""
    cpu_before = time.process_time()
    latencies, kinds, elapsed = asyncio.run(_python_load(url, body, concurrency, duration_s, timeout_s,
                                                          {"Content-Type": content_type, **(headers or {})}))
    cpu = time.process_time() - cpu_before
    ms = np.asarray(latencies) * 1000 if latencies else np.asarray([float("nan")])
    requests = len(latencies) + kinds["non_2xx"]
    return LoadResult(
        concurrency=concurrency,
        duration_s=round(elapsed, 3),
        requests=requests,
        rps=round(requests / elapsed, 1),
        p50_ms=round(float(np.percentile(ms, 50)), 3),
        p95_ms=round(float(np.percentile(ms, 95)), 3),
        p99_ms=round(float(np.percentile(ms, 99)), 3),
        mean_ms=round(float(ms.mean()), 3),
        max_ms=round(float(ms.max()), 3),
        error_kinds=kinds,
        errors=sum(kinds.values()),
        loadgen_cpu=round(cpu / elapsed, 3),
        loadgen="python",
    )


def run_load(
    url: str, body: bytes, concurrency: int, duration_s: float, *, generator: str = "auto",
    content_type: str = "application/json", headers: dict[str, str] | None = None,
) -> LoadResult:
    """``generator``: "wrk", "python", or "auto" (wrk when installed); ``headers``: sent with every request."""
    if generator == "auto":
        generator = "wrk" if find_wrk() else "python"
    if generator == "wrk":
        return run_wrk(url, body, concurrency, duration_s, content_type=content_type, headers=headers)
    return run_python(url, body, concurrency, duration_s, content_type=content_type, headers=headers)
