"""The artifact store: which input_uri values name an object inside it."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.errors import InvalidJob
from jobs.settings import JobsSettings
from jobs.store import ArtifactStore


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
