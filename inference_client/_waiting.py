"""What ``wait`` does between two polls of a job, shared by the sync and the async client."""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import TextIO

from inference_client._exceptions import InferenceTimeoutError, JobCancelledError, JobFailedError
from inference_client._models import JobStatus
from inference_client._progress import ProgressBar

FIRST_POLL_S = 0.05
POLL_GROWTH = 1.5


class JobWaiter:
    """Decides after each status whether to stop (done, failed, past the deadline) or how long to sleep.

    Polls start fast and back off to ``max_interval``; a progress bar is drawn only on a terminal.
    """

    def __init__(
        self, job_id: str, timeout: float | None, progress: bool, max_interval: float, stream: TextIO | None = None,
    ) -> None:
        self.job_id = job_id
        self.timeout = timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.max_interval = max_interval
        self.interval = min(FIRST_POLL_S, max_interval)
        stream = sys.stderr if stream is None else stream
        self.bar = ProgressBar(stream, f"job {job_id}") if progress and stream.isatty() else None

    def __enter__(self) -> JobWaiter:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        if self.bar:
            self.bar.close()

    def next_poll(self, status: JobStatus) -> float | None:
        """Seconds until the next poll; None once the job succeeded. Raises when it failed or time is up."""
        if self.bar:
            self.bar.draw(status.progress.done, status.progress.total, status.status)
        if status.status == "succeeded":
            return None
        if status.status == "cancelled":
            raise JobCancelledError(status)
        if status.status in ("failed", "expired"):  # expired: not started by its deadline (code "expired")
            raise JobFailedError(status)
        remaining = float("inf") if self.deadline is None else self.deadline - time.monotonic()
        if remaining <= 0:
            raise InferenceTimeoutError(f"job {self.job_id} is still {status.status} after {self.timeout}s",
                                        code="wait_timeout")
        delay = min(self.interval, remaining)
        self.interval = min(self.interval * POLL_GROWTH, self.max_interval)
        return delay
