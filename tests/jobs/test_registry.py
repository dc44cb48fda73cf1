"""The registry of model versions (jobs.registry) on each database and store: SQLite with the local folder,
PostgreSQL with the local folder, and PostgreSQL with a real S3-compatible server on loopback."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench.outage_servers import S3Server
from jobs.database import Database, create_database
from jobs.errors import ActivationConflict, CorruptVersion, InvalidVersion, VersionNotFound
from jobs.registry import ROLLBACK, Registry
from jobs.settings import JobsSettings
from jobs.store import model_key

FILES = {"weights.npz": b"\x93NUMPY" + bytes(range(256)) * 4, "config.json": b'{"layers": 2}'}


@pytest.fixture(params=["sqlite-folder", "postgres-folder", "postgres-s3"])
def registry_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JobsSettings]:
    values: dict[str, Any] = {"jobs_dir": tmp_path / "jobs", "amqp_url": None, "s3_bucket": None,
                              "s3_endpoint_url": None, "database_url": None}
    if request.param != "sqlite-folder":
        values["database_url"] = request.getfixturevalue("database_url")
    if request.param == "postgres-s3":
        server: S3Server = request.getfixturevalue("s3_server")
        values |= {"s3_endpoint_url": server.url, "s3_bucket": server.bucket,
                   "aws_access_key_id": S3Server.ACCESS_KEY, "aws_secret_access_key": S3Server.ACCESS_KEY}
    yield JobsSettings(**values)


@pytest.fixture
async def registry(registry_settings: JobsSettings) -> AsyncIterator[Registry]:
    opened = Registry.from_settings(registry_settings)
    yield opened
    await opened.close()


@pytest.fixture
async def other_registry(registry_settings: JobsSettings) -> AsyncIterator[Registry]:
    """A second process's registry: its own database connections (pool) and store client."""
    opened = Registry.from_settings(registry_settings)
    yield opened
    await opened.close()


async def test_a_version_is_its_files_and_manifest_in_the_store_and_its_row(registry: Registry) -> None:
    manifest = await registry.register("demo", FILES, source="train", job_id="job1", trained_from="4",
                                       inputs=[{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
                                       metrics={"loss": 0.5})
    assert manifest is not None and manifest.version == "1"
    assert [(f.name, f.size, f.sha256) for f in manifest.files] == [
        (name, len(FILES[name]), hashlib.sha256(FILES[name]).hexdigest()) for name in sorted(FILES)]
    for name, data in FILES.items():
        assert await registry.store.get(model_key("demo", "1", name)) == data
    stored = orjson.loads(await registry.store.get(model_key("demo", "1", "manifest.json")) or b"null")
    assert stored == manifest.model_dump(mode="json")
    assert stored["source"] == "train" and stored["trained_from"] == "4" and stored["metrics"] == {"loss": 0.5}
    assert await registry.manifest("demo", "1") == manifest
    assert await registry.files("demo", "1") == FILES
    [info] = await registry.versions("demo")
    assert (info.version, info.source, info.job_id, info.trained_from) == ("1", "train", "job1", "4")
    assert await registry.models() == ["demo"]
    assert await registry.versions("unknown") == []


async def test_versions_are_monotonic_with_registrations_at_once(registry: Registry,
                                                                 other_registry: Registry) -> None:
    """Two processes registering at once get two numbers, never one; later ones go on from there."""
    first = await asyncio.gather(
        registry.register("demo", {"a": b"1"}, source="upload"),
        other_registry.register("demo", {"a": b"2"}, source="upload"),
    )
    assert sorted(m.version for m in first if m is not None) == ["1", "2"]
    many = await asyncio.gather(*(
        (registry if n % 2 else other_registry).register("demo", {"a": str(n).encode()}, source="upload")
        for n in range(6)))
    assert sorted(int(m.version) for m in many if m is not None) == [3, 4, 5, 6, 7, 8]
    assert [v.version for v in await registry.versions("demo")] == [str(n) for n in range(1, 9)]
    for manifest in [*first, *many]:  # each number holds the files of the registration it was given to
        assert manifest is not None
        files = await registry.files("demo", manifest.version)
        assert hashlib.sha256(files["a"]).hexdigest() == manifest.files[0].sha256


class _DiesBeforeTheRow:
    """A database whose process dies after the files are stored and before the version's row is written."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def execute(self, sql: str, *args: Any) -> int:
        if sql.startswith("INSERT INTO model_versions"):
            raise SystemExit("killed")
        return await self._database.execute(sql, *args)

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        return await self._database.fetch(sql, *args)

    async def fetchrow(self, sql: str, *args: Any) -> dict[str, Any] | None:
        return await self._database.fetchrow(sql, *args)

    async def close(self) -> None:
        await self._database.close()


async def test_a_registration_that_dies_before_its_row_leaves_no_version(registry: Registry,
                                                                         registry_settings: JobsSettings) -> None:
    dying = Registry(_DiesBeforeTheRow(create_database(registry_settings)), registry.store, owns_database=True)
    try:
        with pytest.raises(SystemExit):
            await dying.register("demo", FILES, source="upload")
    finally:
        await dying.close()
    assert await registry.store.get(model_key("demo", "1", "weights.npz")) == FILES["weights.npz"]  # files, no row
    assert await registry.versions("demo") == [] and await registry.models() == []
    with pytest.raises(VersionNotFound):
        await registry.manifest("demo", "1")
    manifest = await registry.register("demo", {"other": b"x"}, source="upload")
    assert manifest is not None and manifest.version == "2"  # its number is never handed out again
    assert [v.version for v in await registry.versions("demo")] == ["2"]


async def test_the_first_version_is_registered_once_by_processes_starting_together(
        registry: Registry, other_registry: Registry) -> None:
    answers = await asyncio.gather(*(
        (registry if n % 2 else other_registry).register("demo", FILES, source="shipped", only_if_empty=True)
        for n in range(4)))
    registered = [manifest for manifest in answers if manifest is not None]
    assert [m.version for m in registered] == ["1"] and registered[0].source == "shipped"
    assert [v.version for v in await registry.versions("demo")] == ["1"]
    assert await registry.register("demo", FILES, source="shipped", only_if_empty=True) is None


async def test_a_first_registration_that_died_is_taken_over_once_its_claim_is_stale(
        registry: Registry, registry_settings: JobsSettings) -> None:
    dying = Registry(_DiesBeforeTheRow(create_database(registry_settings)), registry.store, owns_database=True)
    try:
        with pytest.raises(SystemExit):
            await dying.register("demo", FILES, source="shipped", only_if_empty=True)
    finally:
        await dying.close()
    assert await registry.register("demo", FILES, source="shipped", only_if_empty=True) is None  # may be running
    patient = Registry(registry.database, registry.store, claim_stale_s=0.05)
    await asyncio.sleep(0.1)
    manifest = await patient.register("demo", FILES, source="shipped", only_if_empty=True)
    assert manifest is not None and manifest.version == "2"
    assert [v.version for v in await registry.versions("demo")] == ["2"]


async def test_a_file_changed_truncated_or_lost_in_the_store_is_refused_by_name(registry: Registry) -> None:
    manifest = await registry.register("demo", FILES, source="upload")
    assert manifest is not None
    key = model_key("demo", "1", "weights.npz")
    await registry.store.put(key, FILES["weights.npz"][:-10])
    with pytest.raises(CorruptVersion, match="version 1 file 'weights.npz' has 1020 bytes in the artifact store; "
                                             "its manifest says 1030"):
        await registry.files("demo", "1")
    await registry.store.put(key, FILES["weights.npz"][:-1] + b"\x00")
    with pytest.raises(CorruptVersion, match="file 'weights.npz' does not match the sha256 of its manifest"):
        await registry.files("demo", "1")
    await registry.store.put(key, FILES["weights.npz"])
    assert await registry.files("demo", "1") == FILES


async def test_a_file_missing_from_a_local_store_is_refused_by_name(tmp_path: Path) -> None:
    settings = JobsSettings(jobs_dir=tmp_path / "jobs", database_url=None, s3_bucket=None, s3_endpoint_url=None)
    registry = Registry.from_settings(settings)
    try:
        await registry.register("demo", FILES, source="upload")
        (tmp_path / "jobs" / "store" / model_key("demo", "1", "config.json")).unlink()
        with pytest.raises(CorruptVersion, match="version 1 file 'config.json' is missing from the artifact store"):
            await registry.files("demo", "1")
    finally:
        await registry.close()


async def test_names_a_store_key_cannot_hold_are_refused(registry: Registry) -> None:
    for model_name, files in [("../up", FILES), ("a/b", FILES), ("", FILES), ("demo", {"sub/file": b"x"}),
                              ("demo", {"..": b"x"}), ("demo", {"manifest.json": b"{}"}), ("demo", {})]:
        with pytest.raises(InvalidVersion):
            await registry.register(model_name, files, source="upload")
    for version in ("0", "-1", "x", "1.0", ""):
        with pytest.raises(VersionNotFound):
            await registry.manifest("demo", version)
    assert await registry.models() == []


async def _versions(registry: Registry, count: int) -> None:
    for n in range(count):
        await registry.register("demo", {"a": bytes([n])}, source="upload")


async def test_the_serving_state_changes_by_compare_and_set_and_every_change_is_history(registry: Registry) -> None:
    await _versions(registry, 3)
    assert await registry.serving("demo") is None
    state = await registry.set_serving("demo", active="1", canary=None, canary_traffic=0, loaded=True,
                                       expected_generation=None, by_key=None, action="first start")
    assert (state.active, state.generation) == ("1", 1)
    state = await registry.set_serving("demo", active="1", canary="2", canary_traffic=10, loaded=True,
                                       expected_generation=1, by_key="3f2a9c1b7d4e", action="canary")
    assert await registry.serving("demo") == state
    assert (state.canary, state.canary_traffic, state.generation) == ("2", 10, 2)
    with pytest.raises(ActivationConflict):  # a change that read generation 1 comes too late
        await registry.set_serving("demo", active="3", canary=None, canary_traffic=0, loaded=True,
                                   expected_generation=1, by_key=None, action="activate")
    await registry.set_serving("demo", active="2", canary=None, canary_traffic=0, loaded=False,
                               expected_generation=2, by_key="3f2a9c1b7d4e", action="unload")
    history = await registry.history("demo")
    assert [(h.generation, h.action, h.active, h.canary, h.canary_traffic, h.loaded, h.previous_active, h.by_key)
            for h in history] == [
        (3, "unload", "2", None, 0, False, "1", "3f2a9c1b7d4e"),
        (2, "canary", "1", "2", 10, True, "1", "3f2a9c1b7d4e"),
        (1, "first start", "1", None, 0, True, None, None),
    ]
    assert history[0].at >= history[1].at >= history[2].at > 0


async def test_a_serving_state_naming_a_missing_version_or_a_bad_canary_is_refused(registry: Registry) -> None:
    await _versions(registry, 2)
    with pytest.raises(VersionNotFound):
        await registry.set_serving("demo", active="7", canary=None, canary_traffic=0, loaded=True,
                                   expected_generation=None, by_key=None, action="activate")
    for canary, traffic in [("2", 0), ("2", 100), (None, 10), ("1", 10)]:
        with pytest.raises(InvalidVersion):
            await registry.set_serving("demo", active="1", canary=canary, canary_traffic=traffic, loaded=True,
                                       expected_generation=None, by_key=None, action="canary")
    assert await registry.serving("demo") is None and await registry.history("demo") == []


async def test_two_activations_at_once_one_wins_the_other_conflicts(registry: Registry,
                                                                    other_registry: Registry) -> None:
    await _versions(registry, 3)
    await registry.set_serving("demo", active="1", canary=None, canary_traffic=0, loaded=True,
                               expected_generation=None, by_key=None, action="first start")
    answers = await asyncio.gather(*(
        each.set_serving("demo", active=version, canary=None, canary_traffic=0, loaded=True,
                         expected_generation=1, by_key=None, action="activate")
        for each, version in ((registry, "2"), (other_registry, "3"))), return_exceptions=True)
    won = [answer for answer in answers if not isinstance(answer, BaseException)]
    lost = [answer for answer in answers if isinstance(answer, BaseException)]
    assert len(won) == 1 and len(lost) == 1 and isinstance(lost[0], ActivationConflict), answers
    assert await registry.serving("demo") == won[0]
    assert [h.generation for h in await registry.history("demo")] == [2, 1]


async def test_rollback_goes_back_one_activation_at_a_time(registry: Registry) -> None:
    await _versions(registry, 4)
    generation: int | None = None

    async def change(active: str, action: str, canary: str | None = None) -> None:
        nonlocal generation
        state = await registry.set_serving("demo", active=active, canary=canary, canary_traffic=10 if canary else 0,
                                           loaded=True, expected_generation=generation, by_key=None, action=action)
        generation = state.generation

    assert await registry.rollback_target("demo") is None
    await change("1", "first start")
    assert await registry.rollback_target("demo") is None
    await change("2", "activate")
    await change("2", "canary", canary="3")  # a canary is not an activation of its own
    await change("3", "activate")
    assert await registry.rollback_target("demo") == "2"
    await change("2", ROLLBACK)
    assert await registry.rollback_target("demo") == "1"  # further back, not forth to 3 again
    await change("4", "activate")
    assert await registry.rollback_target("demo") == "2"


async def test_a_promotion_is_taken_by_exactly_one_taker_and_its_outcome_recorded(
        registry: Registry, other_registry: Registry) -> None:
    await _versions(registry, 2)
    assert await registry.take_promotion() is None
    await registry.request_promotion("demo", "2", "job-a")
    await registry.request_promotion("demo", "2", "job-a")  # a retried job asks again: still one
    await registry.request_promotion("demo", "1", "job-b")
    assert await registry.promotion_outcome("job-a") == (False, None)
    taken = await asyncio.gather(*((registry, other_registry)[n % 2].take_promotion() for n in range(6)))
    claimed = sorted((p.job_id, p.model_name, p.version) for p in taken if p is not None)
    assert claimed == [("job-a", "demo", "2"), ("job-b", "demo", "1")]
    await registry.finish_promotion("job-a", None)
    await other_registry.finish_promotion("job-b", "worker w1 refused version 1: NaN outputs")
    assert await registry.promotion_outcome("job-a") == (True, None)
    assert await registry.promotion_outcome("job-b") == (True, "worker w1 refused version 1: NaN outputs")
    with pytest.raises(VersionNotFound):
        await registry.request_promotion("demo", "9", "job-c")


async def test_a_promotion_nobody_took_can_be_withdrawn_and_is_then_never_taken(registry: Registry) -> None:
    await _versions(registry, 1)
    await registry.request_promotion("demo", "1", "job-a")
    assert await registry.withdraw_promotion("job-a", "nobody took it in 1 s") is True
    assert await registry.take_promotion() is None
    assert await registry.promotion_outcome("job-a") == (True, "nobody took it in 1 s")
    await registry.request_promotion("demo", "1", "job-b")
    assert await registry.take_promotion() is not None
    assert await registry.withdraw_promotion("job-b", "too late") is False  # a gateway is running it
