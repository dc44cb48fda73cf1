"""Which keys are valid, and each one's limits and models: the bootstrap lists and the keys in the database.

``API_KEYS`` and ``ADMIN_API_KEYS`` (and ``API_KEY_MODELS``) come from the settings and never change; the keys
made with ``POST /admin/keys`` live in the job database (jobs/usage.py) and every gateway process reads them
again every ``KEYS_REFRESH_S``: a new key works on every process within that time (at once on the one that
made it, and on any other as soon as it is presented: an unknown key makes the process read the keys again, and
waits for that read, which starts at most every ``MISS_REFRESH_S``: a wrong key costs the database at most four
reads a second however many are sent), a revoked one stops working within it. A database outage keeps the keys
last read.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from jobs.errors import JobsUnavailable
from jobs.usage import KeyStore, StoredKey

log = logging.getLogger(__name__)

#: Least time between two reads of the keys caused by unknown keys: bounds what guessing costs the database.
MISS_REFRESH_S = 0.25
_KEY_ID = re.compile(r"[0-9a-f]{12}")


@dataclass(frozen=True)
class KeyPolicy:
    """What one key may do. None: the gateway's default rate limit, no quota, every model."""

    key_id: str
    admin: bool = False
    models: frozenset[str] | None = None
    rate_limit_per_s: float | None = None
    rows_per_day: int | None = None
    rows_per_month: int | None = None
    job_rows_per_day: int | None = None

    def may_use(self, model: str | None) -> bool:
        """Whether the key may use ``model`` (None: a model that could not be named, refused when limited)."""
        return self.models is None or (model is not None and model in self.models)

    @property
    def has_quota(self) -> bool:
        return any(limit is not None for limit in (self.rows_per_day, self.rows_per_month, self.job_rows_per_day))


def digest_of(hashed: str) -> bytes:
    return bytes.fromhex(hashed.removeprefix("sha256:"))


def bootstrap_policies(api_keys: Iterable[str], admin_keys: Iterable[str],
                       key_models: Mapping[str, frozenset[str]]) -> dict[bytes, KeyPolicy]:
    """The settings' keys (``sha256:<hex>`` each); ``key_models``: key id -> the models it may use."""
    admins = set(admin_keys)
    return {digest_of(hashed): KeyPolicy(key_id(hashed), hashed in admins, key_models.get(key_id(hashed)))
            for hashed in (*api_keys, *admins)}


def key_id(hashed: str) -> str:
    """A key's name in logs and job records: a prefix of its digest, never the key."""
    return hashed.removeprefix("sha256:")[:12]


def stored_policy(key: StoredKey) -> KeyPolicy:
    return KeyPolicy(key.key_id, key.admin, frozenset(key.models) if key.models is not None else None,
                     key.rate_limit_per_s, key.rows_per_day, key.rows_per_month, key.job_rows_per_day)


class KeyRing:
    def __init__(self, bootstrap: dict[bytes, KeyPolicy], store: KeyStore | None, refresh_s: float) -> None:
        self._bootstrap = bootstrap
        self._store = store
        self.refresh_s = refresh_s
        self._keys = dict(bootstrap)
        self._missed_at = -MISS_REFRESH_S  # when an unknown key last made this process read the keys
        self._next_miss_read: asyncio.Future[None] | None = None
        self._reading: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        """Access control is on: some key was configured (the database's keys need an admin to make them)."""
        return bool(self._bootstrap)

    def configured(self) -> list[KeyPolicy]:
        """The settings' keys."""
        return list(self._bootstrap.values())

    def policy_of(self, key_id: str) -> KeyPolicy | None:
        """A valid key's policy by its id."""
        return next((policy for policy in self._keys.values() if policy.key_id == key_id), None)

    def lookup(self, presented: bytes) -> KeyPolicy | None:
        return self._keys.get(hashlib.sha256(presented).digest())

    async def lookup_or_read(self, presented: bytes) -> KeyPolicy | None:
        """``lookup``, and for an unknown key the database's keys read again first (if not read just now)."""
        policy = self.lookup(presented)
        if policy is None and self._store is not None:
            if self._next_miss_read is None:
                self._next_miss_read = asyncio.ensure_future(self._read_for_misses())
            with contextlib.suppress(JobsUnavailable):
                await asyncio.shield(self._next_miss_read)
            policy = self.lookup(presented)
        return policy

    async def _read_for_misses(self) -> None:
        """A read for the unknown keys seen until it starts, at most one every ``MISS_REFRESH_S``."""
        delay = self._missed_at + MISS_REFRESH_S - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        self._missed_at = time.monotonic()
        self._next_miss_read = None  # a key presented from now on waits for the read after this one
        await self._read()

    def add(self, key: StoredKey) -> None:
        """A key this process just made: valid here at once."""
        self._keys[bytes.fromhex(key.digest)] = stored_policy(key)

    async def read(self) -> None:
        """Read the database's keys again (one read at a time; callers meanwhile wait for that one)."""
        if self._reading is None or self._reading.done():
            self._reading = asyncio.ensure_future(self._read())
        with contextlib.suppress(JobsUnavailable):
            await asyncio.shield(self._reading)

    async def _read(self) -> None:
        assert self._store is not None
        stored = await self._store.all()
        keys = dict(self._bootstrap)
        for key in stored:
            if key.revoked_at is None:
                keys.setdefault(bytes.fromhex(key.digest), stored_policy(key))
        self._keys = keys

    async def run(self) -> None:
        """Read the keys every ``refresh_s`` until cancelled."""
        while True:
            try:
                await self.read()
            except Exception:  # a bug must not stop the refresh: the keys last read stay
                log.exception("reading the API keys failed")
            await asyncio.sleep(self.refresh_s)


def parse_key_models(entries: Iterable[str]) -> dict[str, frozenset[str]]:
    """``API_KEY_MODELS`` entries, ``<key id, or the key>=<model>|<model>``, as key id -> model names."""
    from gateway.auth import hash_key

    found: dict[str, frozenset[str]] = {}
    for entry in entries:
        key, sep, models = entry.partition("=")
        names = frozenset(name.strip() for name in models.split("|") if name.strip())
        if not sep or not key.strip() or not names:
            raise ValueError(f"API_KEY_MODELS entry {entry!r} must look like <key id or key>=<model>|<model>")
        key = key.strip()
        found[key if _KEY_ID.fullmatch(key) else key_id(hash_key(key))] = names
    return found
