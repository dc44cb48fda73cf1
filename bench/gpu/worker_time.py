"""Where a worker's time goes during a point, from its own histograms (``/metrics``).

``worker_batch_compute_seconds`` times each model call (the host-to-device copy,
the compiled function, the copy back); ``worker_queue_wait_seconds`` times each
request's wait in the batcher. Their change over a point gives the model call
per batch, the share of the point each worker spent in model calls, and the
mean queue wait: with the GPU's utilisation, enough to say whether the GPU, the
copies or the HTTP path held a run back, at no cost to the run.
"""

from __future__ import annotations

import httpx

WANTED = ("worker_batch_compute_seconds_sum", "worker_batch_compute_seconds_count",
          "worker_queue_wait_seconds_sum", "worker_queue_wait_seconds_count")


def parse(text: str) -> dict[str, float]:
    """The :data:`WANTED` series of a Prometheus text page, each summed over its labels (one per version)."""
    values = dict.fromkeys(WANTED, 0.0)
    for line in text.splitlines():
        series, _, value = line.rpartition(" ")
        name = series.partition("{")[0]
        if name in values:
            values[name] += float(value)
    return values


def read(worker_url: str) -> dict[str, float]:
    return parse(httpx.get(worker_url + "/metrics", timeout=5.0).text)


def breakdown(before: list[dict[str, float]], after: list[dict[str, float]], elapsed_s: float) -> dict:
    """Over every worker: model call ms per batch, the mean share of ``elapsed_s`` a worker spent in model
    calls, and the mean queue wait per request in ms (None where nothing was counted)."""
    change = {name: sum(a[name] - b[name] for a, b in zip(after, before, strict=True)) for name in WANTED}
    batches, waits = change["worker_batch_compute_seconds_count"], change["worker_queue_wait_seconds_count"]
    compute_s = change["worker_batch_compute_seconds_sum"]
    return {
        "model_call_ms_per_batch": round(compute_s * 1000 / batches, 3) if batches else None,
        "in_model_call_share": round(compute_s / elapsed_s / len(after), 3) if elapsed_s > 0 and after else None,
        "queue_wait_ms_mean": round(change["worker_queue_wait_seconds_sum"] * 1000 / waits, 3) if waits else None,
    }
