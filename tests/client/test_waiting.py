"""``wait``: polls with a capped backoff until the job is done; a progress bar only on a terminal."""

from __future__ import annotations

import io

import httpx
import pytest

from inference_client import InferenceTimeoutError, JobCancelledError, JobFailedError
from inference_client._models import JobStatus
from inference_client._waiting import JobWaiter
from tests.client.fakes import Gateway, job_status


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def statuses(*states: tuple[str, int]) -> Gateway:
    return Gateway(*(httpx.Response(200, json=job_status(state, done)) for state, done in states))


def test_wait_polls_until_the_job_succeeded_with_a_capped_backoff(client, sleeps, capsys) -> None:
    gateway = statuses(*[("queued", 0)] * 3, *[("running", 2)] * 8, ("succeeded", 4))
    status = client(gateway).wait("j1", max_poll_interval=0.5)
    assert status.status == "succeeded" and status.progress.done == 4
    assert len(gateway.requests) == 12 and len(sleeps) == 11
    assert sleeps == sorted(sleeps) and sleeps[-1] == 0.5  # grows, then stays at the cap
    assert capsys.readouterr().err == ""  # stderr is no terminal here: no progress bar


def test_wait_raises_with_the_jobs_error_when_it_failed(client) -> None:
    error = {"code": "invalid_input", "message": "rows 0..1: input_data: expected shape (4,), got (3,)"}
    gateway = Gateway(httpx.Response(200, json=job_status("failed", 0, error=error)))
    with pytest.raises(JobFailedError) as caught:
        client(gateway).wait("j1")
    assert caught.value.code == "invalid_input" and caught.value.message == error["message"]
    assert caught.value.job.status == "failed"


def test_wait_raises_when_the_job_was_cancelled(client) -> None:
    with pytest.raises(JobCancelledError) as caught:
        client(statuses(("running", 1), ("cancelled", 1))).wait("j1")
    assert caught.value.code == "job_cancelled" and caught.value.job.progress.done == 1


def test_wait_gives_up_at_its_timeout(client) -> None:
    with pytest.raises(InferenceTimeoutError) as caught:
        client(statuses(("running", 1))).wait("j1", timeout=0)
    assert caught.value.code == "wait_timeout" and "still running" in caught.value.message


def test_the_progress_bar_is_drawn_on_a_terminal_only() -> None:
    terminal = Terminal()
    with JobWaiter("j1", None, True, 1.0, terminal) as waiter:
        waiter.next_poll(JobStatus.model_validate(job_status("queued", 0, total=None)))
        waiter.next_poll(JobStatus.model_validate(job_status("running", 2)))
        assert waiter.next_poll(JobStatus.model_validate(job_status("succeeded", 4))) is None
    lines = terminal.getvalue().split("\r")
    assert lines[1].startswith("job j1 0 done, queued")
    assert lines[2].startswith("job j1 [" + "#" * 15 + "-" * 15 + "] 2/4 running")
    assert lines[3] == "job j1 [" + "#" * 30 + "] 4/4 succeeded\n"
    for stream, progress in ((io.StringIO(), True), (Terminal(), False)):
        with JobWaiter("j1", None, progress, 1.0, stream) as waiter:
            waiter.next_poll(JobStatus.model_validate(job_status("running", 2)))
        assert stream.getvalue() == ""
