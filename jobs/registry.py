"""The registry of model versions: which versions each model has, which one serves, and who changed it.

A version is immutable. Its files live in the artifact store under
``models/<model name>/<version>/`` beside a ``manifest.json``; its row in the
job database (``model_versions``) is the commit point. :meth:`Registry.register`
claims the next number (one atomic upsert on ``model_version_numbers``, so two
registrations at once get two numbers, never one), writes the files and the
manifest, and only then inserts the row: a process that dies in between leaves
files nobody lists, and its number is never handed out again (a gap, never a
clash). Every read goes through the rows, and :meth:`Registry.files` checks
each file's size and sha256 against the manifest before anyone loads it.

The serving state is the newest row of the activation history
(``model_activations``, one per change, keyed by model and generation): a
change inserts generation ``expected + 1`` only while ``expected`` is still the
newest, so two changes at once cannot both land (the loser gets
:class:`ActivationConflict`), and the history cannot miss a change that took
effect. A rollback goes back to the version that was active before the current
one, skipping versions that were themselves rolled back from, as an undo does.

Promotions (a ``train`` job with ``"promote": true``) are rows a gateway claims
with a conditional update, so exactly one gateway runs each; the job waits for
the outcome the gateway records.

Timestamps are microseconds since 1970 in the database (as the job records)
and unix seconds (floats) in what this module returns. Outages of the database
or the store raise :class:`jobs.errors.JobsUnavailable`, as elsewhere.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import Mapping
from typing import Any, Literal

import orjson
from pydantic import BaseModel, Field

from jobs.database import Database, create_database
from jobs.errors import ActivationConflict, CorruptVersion, InvalidVersion, VersionNotFound
from jobs.settings import JobsSettings
from jobs.store import ArtifactStore, model_key

Source = Literal["shipped", "upload", "train"]
MANIFEST = "manifest.json"
#: The history action of a rollback: the one :meth:`Registry.rollback_target` undoes activations by.
ROLLBACK = "rollback"
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_MAX_FILE_NAME = 255


class ManifestFile(BaseModel):
    name: str
    size: int
    sha256: str


class Manifest(BaseModel):
    """What a version is: written beside its files as manifest.json, and kept in its row."""

    model_name: str
    version: str = Field(description="A positive integer, as a string (the wire form everywhere).")
    created_at: float = Field(description="Unix seconds.")
    source: Source
    job_id: str | None = None
    trained_from: str | None = Field(None, description="The version the worker served when the job trained it.")
    files: list[ManifestFile]
    inputs: list[dict[str, Any]] | None = Field(None, description="The input specs it was checked with.")
    outputs: list[dict[str, Any]] | None = Field(None, description="The output specs it was checked with.")
    metrics: dict[str, Any] = Field(default_factory=dict, description="What fit reported, if anything.")


class VersionInfo(BaseModel):
    version: str
    created_at: float
    source: Source
    job_id: str | None
    trained_from: str | None
    manifest: Manifest


class ServingState(BaseModel):
    active: str
    canary: str | None = None
    canary_traffic: int = Field(0, description="Percent of requests the canary gets (1..99), 0 without one.")
    loaded: bool = Field(True, description="False after an OIP unload: the model answers nothing.")
    generation: int = Field(description="Bumped by every change; the compare-and-set token of set_serving.")


class Activation(ServingState):
    """One change of the serving state, as the history keeps it."""

    at: float = Field(description="Unix seconds.")
    action: str = Field(description="What the change was: 'first start', 'activate', 'canary', 'rollback', ...")
    previous_active: str | None = Field(None, description="The version active before this change.")
    by_key: str | None = Field(None, description="The id of the API key that made it (never the key), if any.")


class Promotion(BaseModel):
    job_id: str
    model_name: str
    version: str
    requested_at: float


def _micros() -> int:
    return time.time_ns() // 1000


def _seconds(micros: int) -> float:
    return micros / 1_000_000


def check_model_name(model_name: str) -> str:
    """``model_name`` if it can name a folder of the store (letters, digits, '.', '_', '-'), else InvalidVersion."""
    if not _MODEL_NAME.fullmatch(model_name):
        raise InvalidVersion(f"model name {model_name!r}: 1 to 128 letters, digits, '.', '_' or '-', "
                             "starting with a letter or digit")
    return model_name


def parse_version(version: str | int) -> int:
    """A version's number; VersionNotFound for anything but a positive integer (no version has such a name)."""
    text = str(version)
    if not text.isascii() or not text.isdigit() or int(text) < 1 or len(text) > 18:
        raise VersionNotFound(f"version {text!r}: versions are positive integers")
    return int(text)


def check_file_name(name: str) -> str:
    """A version's file: a plain name at the top level of its folder."""
    if (not name or name in (".", "..", MANIFEST) or len(name) > _MAX_FILE_NAME
            or any(char in name for char in "/\\\x00") or not name.isprintable()):
        raise InvalidVersion(f"file name {name!r}: a plain file name (no folders), not {MANIFEST!r}, "
                             f"at most {_MAX_FILE_NAME} characters")
    return name


def _digest(files: Mapping[str, bytes]) -> list[ManifestFile]:
    return [ManifestFile(name=name, size=len(data), sha256=hashlib.sha256(data).hexdigest())
            for name, data in sorted(files.items())]


class Registry:
    def __init__(self, database: Database, store: ArtifactStore, *, claim_stale_s: float = 600.0,
                 owns_database: bool = False) -> None:
        """``claim_stale_s``: a first-start registration claimed this long ago without a version row is taken
        to have died, and another process may register the first version instead."""
        self.database = database
        self.store = store
        self.claim_stale_s = claim_stale_s
        self._owns_database = owns_database

    @classmethod
    def from_settings(cls, settings: JobsSettings, store: ArtifactStore | None = None) -> Registry:
        """A registry on the deployment's job database (a connection of its own) and store."""
        return cls(create_database(settings), store or ArtifactStore.from_settings(settings),
                   claim_stale_s=settings.registry_claim_stale_s, owns_database=True)

    async def close(self) -> None:
        if self._owns_database:
            await self.database.close()

    # --- versions -------------------------------------------------------------------------------------------

    async def register(self, model_name: str, files: Mapping[str, bytes], *, source: Source,
                       job_id: str | None = None, trained_from: str | None = None,
                       inputs: list[dict[str, Any]] | None = None, outputs: list[dict[str, Any]] | None = None,
                       metrics: dict[str, Any] | None = None, only_if_empty: bool = False) -> Manifest | None:
        """Store ``files`` as the model's next version and commit it; its manifest.

        ``only_if_empty``: only as the model's first version (the first-start path of several gateways at once);
        None when the model has a version, or another process is registering its first.
        Raises InvalidVersion for a model or file name a store key cannot hold.
        """
        check_model_name(model_name)
        if not files:
            raise InvalidVersion("a version needs at least one file")
        for name in files:
            check_file_name(name)
        number = await (self._claim_first(model_name) if only_if_empty else self._claim_next(model_name))
        if number is None:
            return None
        manifest = Manifest(
            model_name=model_name, version=str(number), created_at=time.time(), source=source, job_id=job_id,
            trained_from=trained_from, files=_digest(files), inputs=inputs, outputs=outputs, metrics=metrics or {},
        )
        await asyncio.gather(*(self.store.put(model_key(model_name, manifest.version, name), data)
                               for name, data in files.items()))
        body = _manifest_bytes(manifest)
        await self.store.put(model_key(model_name, manifest.version, MANIFEST), body)
        first_only = "AND NOT EXISTS (SELECT 1 FROM model_versions WHERE model_name = $1)" if only_if_empty else ""
        inserted = await self.database.execute(
            "INSERT INTO model_versions (model_name, version, created_at, source, job_id, trained_from, manifest) "
            "SELECT CAST($1 AS TEXT), CAST($2 AS INTEGER), CAST($3 AS BIGINT), CAST($4 AS TEXT), CAST($5 AS TEXT), "
            f"CAST($6 AS TEXT), CAST($7 AS TEXT) WHERE 1 = 1 {first_only} ON CONFLICT DO NOTHING",
            model_name, number, int(manifest.created_at * 1_000_000), source, job_id, trained_from, body.decode(),
        )
        if inserted:
            return manifest
        # Nothing inserted: another process's first version got there first (only_if_empty), or this insert
        # landed once already and its answer was lost (a sidecar's database retries a statement).
        row = await self.database.fetchrow(
            "SELECT manifest FROM model_versions WHERE model_name = $1 AND version = $2", model_name, number,
        )
        return manifest if row is not None and row["manifest"] == body.decode() else None

    async def _claim_next(self, model_name: str) -> int:
        row = await self.database.fetchrow(
            "INSERT INTO model_version_numbers (model_name, last, claimed_at) VALUES ($1, 1, $2) "
            "ON CONFLICT (model_name) DO UPDATE SET last = model_version_numbers.last + 1, claimed_at = $2 "
            "RETURNING last", model_name, _micros(),
        )
        assert row is not None  # an upsert with RETURNING always answers its row
        return int(row["last"])

    async def _claim_first(self, model_name: str) -> int | None:
        """Number 1 if nobody claimed a number of this model; a fresh number if the only claims are stale and
        no version was committed (their process died); else None."""
        now = _micros()
        row = await self.database.fetchrow(
            "INSERT INTO model_version_numbers (model_name, last, claimed_at) VALUES ($1, 1, $2) "
            "ON CONFLICT (model_name) DO UPDATE SET last = model_version_numbers.last + 1, claimed_at = $2 "
            "WHERE model_version_numbers.claimed_at < $3 "
            "AND NOT EXISTS (SELECT 1 FROM model_versions WHERE model_name = $1) RETURNING last",
            model_name, now, now - int(self.claim_stale_s * 1_000_000),
        )
        return None if row is None else int(row["last"])

    async def versions(self, model_name: str) -> list[VersionInfo]:
        """The model's committed versions, oldest first ([] for a model without any)."""
        rows = await self.database.fetch(
            "SELECT manifest FROM model_versions WHERE model_name = $1 ORDER BY version", model_name,
        )
        return [_info(Manifest.model_validate_json(row["manifest"])) for row in rows]

    async def models(self) -> list[str]:
        """Every model with a version, by name."""
        rows = await self.database.fetch("SELECT DISTINCT model_name FROM model_versions ORDER BY model_name")
        return [row["model_name"] for row in rows]

    async def manifest(self, model_name: str, version: str) -> Manifest:
        row = await self.database.fetchrow(
            "SELECT manifest FROM model_versions WHERE model_name = $1 AND version = $2",
            model_name, parse_version(version),
        )
        if row is None:
            raise VersionNotFound(f"model {model_name!r} has no version {version}")
        return Manifest.model_validate_json(row["manifest"])

    async def files(self, model_name: str, version: str) -> dict[str, bytes]:
        """The version's files, each checked against its manifest (size and sha256): CorruptVersion if one is
        missing, truncated or changed in the store."""
        manifest = await self.manifest(model_name, version)
        contents = await asyncio.gather(*(self.store.get(model_key(model_name, manifest.version, entry.name))
                                          for entry in manifest.files))
        files: dict[str, bytes] = {}
        for entry, data in zip(manifest.files, contents, strict=True):
            where = f"model {model_name!r} version {manifest.version} file {entry.name!r}"
            if data is None:
                raise CorruptVersion(f"{where} is missing from the artifact store")
            if len(data) != entry.size:
                raise CorruptVersion(f"{where} has {len(data)} bytes in the artifact store; its manifest says "
                                     f"{entry.size}")
            if hashlib.sha256(data).hexdigest() != entry.sha256:
                raise CorruptVersion(f"{where} does not match the sha256 of its manifest")
            files[entry.name] = data
        return files

    # --- serving state and history --------------------------------------------------------------------------

    async def serving(self, model_name: str) -> ServingState | None:
        """What the model should serve now; None before its first activation."""
        row = await self.database.fetchrow(
            f"SELECT {_ACTIVATION_COLUMNS} FROM model_activations WHERE model_name = $1 "
            "ORDER BY generation DESC LIMIT 1", model_name,
        )
        return None if row is None else ServingState.model_validate(_activation(row).model_dump())

    async def set_serving(self, model_name: str, *, active: str, canary: str | None, canary_traffic: int,
                          loaded: bool, expected_generation: int | None, by_key: str | None,
                          action: str) -> ServingState:
        """Change what the model serves if its generation is still ``expected_generation`` (None: it has no
        serving state yet); ActivationConflict if another change got there first. Recorded in the history."""
        active = str(parse_version(active))
        canary = None if canary is None else str(parse_version(canary))
        if canary is None and canary_traffic != 0:
            raise InvalidVersion("canary_traffic: 0 without a canary")
        if canary is not None and not 1 <= canary_traffic <= 99:
            raise InvalidVersion("canary_traffic: 1 to 99 percent with a canary")
        if canary == active:
            raise InvalidVersion(f"version {active} cannot be both the active version and the canary")
        for version in (active, canary):
            if version is not None:
                await self.manifest(model_name, version)  # VersionNotFound for a version never committed
        expected = expected_generation or 0
        previous = await self.serving(model_name)
        if (previous.generation if previous else 0) != expected:
            raise ActivationConflict(f"model {model_name!r} changed meanwhile (generation "
                                     f"{previous.generation if previous else 0}, expected {expected}); try again")
        generation = expected + 1
        inserted = await self.database.execute(
            f"INSERT INTO model_activations ({_ACTIVATION_COLUMNS}) "
            "SELECT CAST($1 AS TEXT), CAST($2 AS BIGINT), CAST($3 AS BIGINT), CAST($4 AS TEXT), CAST($5 AS INTEGER), "
            "CAST($6 AS INTEGER), CAST($7 AS INTEGER), CAST($8 AS INTEGER), CAST($9 AS INTEGER), CAST($10 AS TEXT) "
            "WHERE (SELECT COALESCE(MAX(generation), 0) FROM model_activations WHERE model_name = $1) = $11 "
            "ON CONFLICT DO NOTHING",
            model_name, generation, _micros(), action, parse_version(active),
            None if canary is None else parse_version(canary), canary_traffic, int(loaded),
            None if previous is None else parse_version(previous.active), by_key, expected,
        )
        if not inserted:
            raise ActivationConflict(f"model {model_name!r} changed meanwhile (another change took generation "
                                     f"{generation}); try again")
        return ServingState(active=active, canary=canary, canary_traffic=canary_traffic, loaded=loaded,
                            generation=generation)

    async def history(self, model_name: str) -> list[Activation]:
        """Every change of the model's serving state, newest first."""
        rows = await self.database.fetch(
            f"SELECT {_ACTIVATION_COLUMNS} FROM model_activations WHERE model_name = $1 ORDER BY generation DESC",
            model_name,
        )
        return [_activation(row) for row in rows]

    async def rollback_target(self, model_name: str) -> str | None:
        """The version active before the current one (None if there was none): activations replayed as a
        stack, each rollback popping one, so a second rollback goes further back instead of forth again."""
        stack: list[str] = []
        for change in reversed(await self.history(model_name)):
            if change.action == ROLLBACK and stack:
                stack.pop()
            if not stack or stack[-1] != change.active:
                stack.append(change.active)
        return stack[-2] if len(stack) > 1 else None

    # --- train -> promote -----------------------------------------------------------------------------------

    async def request_promotion(self, model_name: str, version: str, job_id: str) -> None:
        """Ask a gateway to activate ``version`` for ``job_id`` (once: asking again for the same job changes
        nothing, so a retried job waits for the same outcome)."""
        await self.manifest(model_name, version)
        await self.database.execute(
            "INSERT INTO model_promotions (job_id, model_name, version, state, requested_at) "
            "VALUES ($1, $2, $3, 'pending', $4) ON CONFLICT (job_id) DO NOTHING",
            job_id, model_name, parse_version(version), _micros(),
        )

    async def take_promotion(self) -> Promotion | None:
        """Claim the oldest pending promotion; among processes asking at once, exactly one gets each."""
        while True:
            row = await self.database.fetchrow(
                "SELECT job_id, model_name, version, requested_at FROM model_promotions WHERE state = 'pending' "
                "ORDER BY requested_at, job_id LIMIT 1",
            )
            if row is None:
                return None
            taken = await self.database.execute(
                "UPDATE model_promotions SET state = 'taken', taken_at = $2 WHERE job_id = $1 AND state = 'pending'",
                row["job_id"], _micros(),
            )
            if taken:
                return Promotion(job_id=row["job_id"], model_name=row["model_name"], version=str(row["version"]),
                                 requested_at=_seconds(row["requested_at"]))

    async def finish_promotion(self, job_id: str, error: str | None) -> None:
        """Record the outcome: None if the version is active now, else why not."""
        await self.database.execute(
            "UPDATE model_promotions SET state = 'done', error = $2, finished_at = $3 WHERE job_id = $1 "
            "AND state <> 'done'", job_id, error, _micros(),
        )

    async def withdraw_promotion(self, job_id: str, reason: str) -> bool:
        """Give up a promotion no gateway has taken yet (its job stops waiting): whether it was still pending."""
        return bool(await self.database.execute(
            "UPDATE model_promotions SET state = 'done', error = $2, finished_at = $3 WHERE job_id = $1 "
            "AND state = 'pending'", job_id, reason, _micros(),
        ))

    async def promotion_outcome(self, job_id: str) -> tuple[bool, str | None]:
        """(done, error): done once a gateway finished it; error None when the version was activated."""
        row = await self.database.fetchrow("SELECT state, error FROM model_promotions WHERE job_id = $1", job_id)
        if row is None:
            return True, f"no promotion was requested for job {job_id}"
        return row["state"] == "done", row["error"]


_ACTIVATION_COLUMNS = ("model_name, generation, at, action, active, canary, canary_traffic, loaded, "
                       "previous_active, by_key")


def _activation(row: dict[str, Any]) -> Activation:
    return Activation(
        active=str(row["active"]), canary=None if row["canary"] is None else str(row["canary"]),
        canary_traffic=row["canary_traffic"], loaded=bool(row["loaded"]), generation=row["generation"],
        at=_seconds(row["at"]), action=row["action"],
        previous_active=None if row["previous_active"] is None else str(row["previous_active"]),
        by_key=row["by_key"],
    )


def _info(manifest: Manifest) -> VersionInfo:
    return VersionInfo(version=manifest.version, created_at=manifest.created_at, source=manifest.source,
                       job_id=manifest.job_id, trained_from=manifest.trained_from, manifest=manifest)


def _manifest_bytes(manifest: Manifest) -> bytes:
    """The manifest as the store keeps it (sorted keys: two writes of one manifest are the same bytes)."""
    return orjson.dumps(manifest.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
