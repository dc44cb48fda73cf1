"""The result spool: kept whole or not at all, within its bound, found again by a restarted sidecar."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from jobs.errors import JobNotFound
from jobs.settings import JobsSettings
from jobs.spool import ResultSpool, Spooled

A, B, C = "a" * 32, "b" * 32, "c" * 32


async def test_a_kept_result_is_read_until_dropped(tmp_path: Path) -> None:
    spool = ResultSpool(tmp_path / "spool", max_bytes=1024)
    assert await spool.take(A) is None and spool.job_ids() == [] and spool.used_bytes() == 0
    assert await spool.keep(A, b'{"output": [1]}\n', "iris", "3")
    assert await spool.keep(B, b"")
    assert await spool.take(A) == Spooled(b'{"output": [1]}\n', "iris", "3")
    assert await spool.take(A) == Spooled(b'{"output": [1]}\n', "iris", "3")  # reading keeps it
    assert await spool.take(B) == Spooled(b"", None, None)
    assert spool.job_ids() == [A, B]
    await spool.drop(A)
    await spool.drop(A)
    assert await spool.take(A) is None and spool.job_ids() == [B]


async def test_a_result_past_the_bound_is_not_kept(tmp_path: Path) -> None:
    spool = ResultSpool(tmp_path, max_bytes=300)
    assert await spool.keep(A, b"x" * 100)
    used = spool.used_bytes()
    assert 100 < used < 300
    assert not await spool.keep(B, b"x" * (300 - used))  # its header does not fit
    assert await spool.take(B) is None and spool.used_bytes() == used
    assert await spool.keep(A, b"y" * 200)  # replacing a kept result counts only the new one
    await spool.drop(A)
    assert await spool.keep(B, b"z" * 250) and spool.used_bytes() <= 300
    assert not await ResultSpool(tmp_path / "none", max_bytes=0).keep(C, b"")


async def test_the_bound_holds_across_the_sidecars_of_a_machine(tmp_path: Path) -> None:
    first, second = ResultSpool(tmp_path, max_bytes=1000), ResultSpool(tmp_path, max_bytes=1000)
    ids = [f"{n:032x}" for n in range(20)]
    kept = await asyncio.gather(*[(first if n % 2 else second).keep(job_id, b"x" * 100)
                                  for n, job_id in enumerate(ids)])
    assert 0 < sum(kept) < len(ids)
    assert first.used_bytes() <= 1000
    assert first.job_ids() == sorted(job_id for job_id, ok in zip(ids, kept, strict=True) if ok)


async def test_a_restarted_sidecar_finds_what_was_kept(tmp_path: Path) -> None:
    settings = JobsSettings(jobs_dir=tmp_path)
    assert await ResultSpool.from_settings(settings).keep(A, b"result", "iris", "1")
    again = ResultSpool.from_settings(settings)
    assert again.folder == tmp_path / "spool"
    assert again.job_ids() == [A] and await again.take(A) == Spooled(b"result", "iris", "1")
    elsewhere = ResultSpool.from_settings(JobsSettings(jobs_dir=tmp_path, sidecar_spool_dir=tmp_path / "other"))
    assert elsewhere.job_ids() == []


async def test_no_partial_result_is_ever_visible(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = ResultSpool(tmp_path, max_bytes=10_000)
    assert await spool.keep(A, b"old" * 100, "m", "1")
    seen: list[Spooled | None] = []
    fsync = os.fsync

    def look_while_writing(fd: int) -> None:  # the new result is written, not yet in place: another sidecar reads
        seen.append(asyncio.run(ResultSpool(tmp_path, max_bytes=0).take(A)))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", look_while_writing)
    assert await spool.keep(A, b"new" * 1000, "m", "2")
    assert seen == [Spooled(b"old" * 100, "m", "1")]
    assert await spool.take(A) == Spooled(b"new" * 1000, "m", "2")


async def test_a_write_cut_off_by_a_crash_is_not_a_result(tmp_path: Path) -> None:
    (tmp_path / f"{A}.tmp").write_bytes(b'{"model_name": nu')  # a sidecar died mid-write
    spool = ResultSpool(tmp_path, max_bytes=100)
    assert await spool.take(A) is None and spool.job_ids() == [] and spool.used_bytes() == 0
    assert await spool.keep(B, b"x" * 50)  # the leftover neither counts nor stays
    assert not (tmp_path / f"{A}.tmp").exists()


@pytest.mark.parametrize("job_id", ["", "../" + A, A.upper(), A + "/x", A[:-1], "spool"])
async def test_bad_job_ids_are_refused(tmp_path: Path, job_id: str) -> None:
    spool = ResultSpool(tmp_path, max_bytes=100)
    with pytest.raises(JobNotFound):
        await spool.keep(job_id, b"x")
    with pytest.raises(JobNotFound):
        await spool.take(job_id)
    with pytest.raises(JobNotFound):
        await spool.drop(job_id)
    assert list(tmp_path.iterdir()) == []
