"""The artifact store: which input_uri values name an object inside it; how it lives through an outage."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from bench.outage_servers import S3Server
from jobs.dependencies import Dependencies
from jobs.errors import InvalidJob, JobsUnavailable
from jobs.settings import JobsSettings
from jobs.store import ArtifactStore
from tests.support import free_port


def local(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore.from_settings(JobsSettings(jobs_dir=tmp_path, s3_bucket=None, s3_endpoint_url=None))


def s3() -> ArtifactStore:
    return ArtifactStore.from_settings(JobsSettings(
        s3_bucket="data", s3_endpoint_url="http://127.0.0.1:9", aws_access_key_id="k", aws_secret_access_key="s",
    ))


def test_keys_inside_the_store_are_accepted(tmp_path: Path) -> None:
    store = local(tmp_path)
    assert store.key_for_uri(store.uri_for_key("inputs/a b.json")) == "inputs/a b.json"
    assert s3().key_for_uri("s3://data/inputs/rows.json") == "inputs/rows.json"


@pytest.mark.parametrize("uri", [
    "s3://other/inputs/rows.json", "s3://data/../other/rows.json", "s3://data/inputs/%2E%2E/x", "s3://data/",
    "s3://data//rows.json", "s3://data/a?versionId=1", "https://data.s3.amazonaws.com/rows.json", "rows.json",
])
def test_s3_uris_outside_the_bucket_are_refused(uri: str) -> None:
    with pytest.raises(InvalidJob):
        s3().key_for_uri(uri)


def test_file_uris_outside_the_folder_are_refused(tmp_path: Path) -> None:
    store = local(tmp_path)
    (tmp_path / "store" / "link").symlink_to("/etc")
    for uri in ("file:///etc/passwd", store.uri_prefix + "../broker.sqlite3", store.uri_prefix + "link/passwd",
                f"file://{tmp_path}/store-other/x", "s3://data/x"):
        with pytest.raises(InvalidJob):
            store.key_for_uri(uri)


async def test_create_only_writes_once(tmp_path: Path) -> None:
    store = local(tmp_path)
    assert await store.put("jobs/a/request.json", b"1", create=True)
    assert not await store.put("jobs/a/request.json", b"2", create=True)
    assert await store.get("jobs/a/request.json") == b"1"
    assert await store.get("jobs/b/request.json") is None and await store.size("jobs/b/x") is None


# Outages: a patient store (a sidecar's) waits one out for retry_s, in seconds; the gateway's fails fast.


def s3_at(url: str, bucket: str = "jobs", retry_s: float | None = None) -> ArtifactStore:
    return ArtifactStore.from_settings(JobsSettings(
        s3_bucket=bucket, s3_endpoint_url=url, aws_access_key_id=S3Server.ACCESS_KEY,
        aws_secret_access_key=S3Server.ACCESS_KEY,
    ), retry_s=retry_s)


async def test_a_patient_store_waits_an_outage_out(s3_server: S3Server) -> None:
    dependencies = Dependencies(CollectorRegistry())  # the sidecar's health
    store = s3_at(s3_server.url, s3_server.bucket, retry_s=8.0)
    store.outages = dependencies  # as the sidecar wires it
    assert await store.put("jobs/a/input.json", b"rows")
    await asyncio.to_thread(s3_server.stop)
    # Many calls at once, as a sidecar's jobs make them: obstore's old count of retries (retry_s + 10, with
    # jittered waits) gave up on some of them within this outage, about 3.7-8.6 s into it for retry_s = 8.
    gets = [asyncio.create_task(store.get("jobs/a/input.json")) for _ in range(12)]
    puts = [asyncio.create_task(store.put(f"jobs/{n}/result.json", b"result")) for n in range(12)]
    await asyncio.sleep(4.5)  # the outage
    assert not dependencies.is_up("store")
    await asyncio.to_thread(s3_server.start)
    assert await asyncio.wait_for(asyncio.gather(*gets, *puts), 30) == [b"rows"] * 12 + [True] * 12
    assert [await store.get(f"jobs/{n}/result.json") for n in range(12)] == [b"result"] * 12
    assert dependencies.is_up("store")


async def test_a_patient_store_gives_up_after_its_window_with_a_short_error(
    caplog: pytest.LogCaptureFixture
) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens: a store that stays down
    store = s3_at(url, retry_s=3.0)
    began = time.monotonic()
    calls = (store.get("jobs/a/input.json"), store.put("jobs/a/result.json", b"1"), store.size("jobs/a/x"))
    failed = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 30)
    assert time.monotonic() - began >= 3.0  # tried again for the whole window
    short = (JobsUnavailable, "the artifact store is unavailable")
    assert [(type(error), str(error)) for error in failed] == [short] * 3
    # The operator's log has the store's error, once per while, not once per try.
    warnings = [record for record in caplog.records if record.name == "jobs.store"]
    assert 1 <= len(warnings) <= 3 and url in warnings[0].getMessage()


async def test_the_gateways_store_fails_fast_with_a_short_error() -> None:
    store = s3_at(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(JobsUnavailable) as failed:
        await asyncio.wait_for(store.get("jobs/a/input.json"), 15)
    assert failed.value.message == "the artifact store is unavailable"


async def test_a_store_that_refuses_is_not_tried_again(forbidding_s3: tuple[str, list[bytes]]) -> None:
    url, seen = forbidding_s3
    store = s3_at(url, retry_s=60.0)
    with pytest.raises(JobsUnavailable) as failed:
        await asyncio.wait_for(store.put("jobs/a/result.json", b"1"), 15)
    assert failed.value.message == "the artifact store refused the request (PermissionDeniedError)"
    assert len(seen) == 1
