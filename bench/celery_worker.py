"""``python -m bench.celery_worker [celery worker options]``: the Celery worker the job benchmark starts.

Its app is built here from what the benchmark puts in the environment (the broker URL may carry a password),
so the pool's processes, forked from this one, hold the same app and task.
"""

from __future__ import annotations

import os
import sys

from bench.celery_app import make_app


def main() -> None:
    app = make_app(
        broker_url=os.environ["BENCH_CELERY_BROKER_URL"],
        queue=os.environ["BENCH_CELERY_QUEUE"],
        results=os.environ["BENCH_CELERY_RESULTS"],
        schema=os.environ.get("BENCH_CELERY_SCHEMA"),
    )
    app.worker_main(["worker", *sys.argv[1:]])


if __name__ == "__main__":
    main()
