"""The app ``celery -A bench.celery_worker worker`` runs, configured by the benchmark through the environment."""

from __future__ import annotations

import os

from bench.celery_app import make_app

app = make_app(
    broker_url=os.environ["BENCH_CELERY_BROKER_URL"],
    queue=os.environ["BENCH_CELERY_QUEUE"],
    results=os.environ["BENCH_CELERY_RESULTS"],
    schema=os.environ.get("BENCH_CELERY_SCHEMA"),
)
