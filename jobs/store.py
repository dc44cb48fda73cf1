"""The artifact store: job inputs, status, results and model versions.

One library, obstore, sits under both adapters: ``S3Store`` when ``S3_BUCKET``
is set (AWS, MinIO or any S3-compatible endpoint), ``LocalStore`` on
``JOBS_DIR/store`` otherwise. obstore was chosen because it gives the same
async put/get/head, atomic create-if-absent (``mode="create"``, S3's
``If-None-Match``) and presigned URLs for both, with retries built in, in one
small wheel; tried against moto's server and a local folder.

Outages. Every call first gets obstore's own few quick retries (a dropped
connection, one 5xx). Past those, the gateway's store (``retry_s=None``) fails
at once, for a quick 503. A sidecar's store (``retry_s`` = SIDECAR_STORE_RETRY_S)
tries the call again, with capped and jittered exponential backoff, until
``retry_s`` have passed since the call began: the window is a time, as
documented, not a count of tries (obstore's ``max_retries`` ran out 17-48 s
into an outage, with jitter deciding when). Only transient failures are tried
again: a missing object, an existing one, a failed precondition, refused
credentials or a bad configuration answer the same way every time.

Either way the caller gets :class:`JobsUnavailable` with a short message
("the artifact store is unavailable"), never the store's URL or obstore's
debug dump, which go to the log instead (a warning at most every
``_LOG_EVERY_S`` per store, so an outage under load does not flood it).

Keys are built here from gateway-generated job ids only. A client may name an
existing object by ``input_uri``; :meth:`ArtifactStore.key_for_uri` accepts it
only inside the configured bucket or folder.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path, PurePosixPath
from typing import TypeVar
from urllib.parse import unquote, urlsplit

import obstore
from obstore.exceptions import (
    AlreadyExistsError,
    BaseError,
    InvalidPathError,
    NotModifiedError,
    NotSupportedError,
    PermissionDeniedError,
    PreconditionError,
    UnauthenticatedError,
    UnknownConfigurationKeyError,
)
from obstore.store import LocalStore, S3Store

from jobs.dependencies import Outages, patiently
from jobs.errors import DependencyRefused, InvalidJob, JobsUnavailable
from jobs.settings import JobsSettings

log = logging.getLogger("jobs.store")
T = TypeVar("T")

#: obstore's own retries of one call: few and quick, so the gateway answers 503 within a second or so,
#: and a sidecar's window is kept by :meth:`ArtifactStore._call`, in seconds.
_PER_CALL = {"max_retries": 3, "retry_timeout": timedelta(seconds=10)}
#: At most one warning with the store's full error this often (per store).
_LOG_EVERY_S = 10.0
#: Failures that a retry answers the same way: the request, the object or the credentials are wrong, not the store.
_PERMANENT = (AlreadyExistsError, PreconditionError, NotModifiedError, PermissionDeniedError,
              UnauthenticatedError, UnknownConfigurationKeyError, InvalidPathError, NotSupportedError)
UNAVAILABLE = "the artifact store is unavailable"


def job_key(job_id: str, name: str) -> str:
    """``jobs/<id>/<name>``: every per-job object lives under its id."""
    return f"jobs/{job_id}/{name}"


def model_key(model_name: str, version: str, name: str) -> str:
    return f"models/{model_name}/{version}/{name}"


class ArtifactStore:
    def __init__(self, store: LocalStore | S3Store, uri_prefix: str, root: Path | None = None, *,
                 retry_s: float | None = None) -> None:
        self._store = store
        self.uri_prefix = uri_prefix
        self._root = root  # the local folder, None for S3
        self._retry_s = retry_s
        #: Told of each outage as ``"store"``: the sidecar sets its jobs.dependencies.Dependencies here.
        self.outages: Outages | None = None
        self._logged_at = -_LOG_EVERY_S

    @classmethod
    def from_settings(cls, settings: JobsSettings, *, retry_s: float | None = None) -> ArtifactStore:
        """``retry_s``: retry a failing store this long per call (a sidecar); None: fail fast (the gateway)."""
        if settings.s3_bucket:
            store = S3Store(
                settings.s3_bucket,
                endpoint=settings.s3_endpoint_url,
                access_key_id=settings.aws_access_key_id,
                secret_access_key=settings.aws_secret_access_key,
                region=settings.aws_region,
                client_options={"allow_http": True},
                retry_config=_PER_CALL,
            )
            return cls(store, f"s3://{settings.s3_bucket}/", retry_s=retry_s)
        root = (settings.jobs_dir / "store").resolve()
        return cls(LocalStore(root, mkdir=True), f"file://{root}/", root, retry_s=retry_s)

    @property
    def presigns(self) -> bool:
        """Whether results can be handed out as presigned URLs (a local folder cannot)."""
        return self._root is None

    def uri_for_key(self, key: str) -> str:
        return self.uri_prefix + key

    def key_for_uri(self, uri: str) -> str:
        """The key of ``uri`` if it names an object inside this store, else :class:`InvalidJob`."""
        parts = urlsplit(uri)
        prefix = urlsplit(self.uri_prefix)
        if parts.scheme != prefix.scheme or parts.query or parts.fragment:
            raise InvalidJob(f"input_uri: must start with {self.uri_prefix}")
        if parts.netloc != prefix.netloc:
            raise InvalidJob(f"input_uri: only objects in {self.uri_prefix} can be read")
        path = unquote(parts.path)
        root_path = unquote(prefix.path)
        if not path.startswith(root_path):
            raise InvalidJob(f"input_uri: only objects in {self.uri_prefix} can be read")
        key = path[len(root_path):]
        segments = key.split("/")
        if not key or any(s in ("", ".", "..") or "\\" in s or "\x00" in s for s in segments):
            raise InvalidJob("input_uri: the path must be a plain key, without '.', '..' or empty segments")
        if self._root is not None and not (self._root / key).resolve().is_relative_to(self._root):
            raise InvalidJob(f"input_uri: only objects in {self.uri_prefix} can be read")
        return str(PurePosixPath(key))

    async def put(self, key: str, data: bytes, *, create: bool = False) -> bool:
        """Write ``data`` atomically; with ``create``, only if absent (False if it existed).

        A ``create`` retried after an outage may find the object its own lost try wrote: False, as for any.
        """
        async def put() -> bool:
            await obstore.put_async(self._store, key, data, mode="create" if create else "overwrite")
            return True

        try:
            return await self._call(put)
        except AlreadyExistsError:
            return False

    async def get(self, key: str) -> bytes | None:
        async def get() -> bytes:
            result = await obstore.get_async(self._store, key)
            return bytes(await result.bytes_async())

        try:
            return await self._call(get)
        except FileNotFoundError:
            return None

    async def size(self, key: str) -> int | None:
        """The object's size in bytes, None if there is none."""
        async def size() -> int:
            return int((await obstore.head_async(self._store, key))["size"])

        try:
            return await self._call(size)
        except FileNotFoundError:
            return None

    async def delete_under(self, prefix: str) -> int:
        """Delete every object whose key starts with ``prefix`` (a job's ``jobs/<id>/``); how many there were."""
        async def delete() -> int:
            keys = [meta["path"] async for batch in obstore.list(self._store, prefix) for meta in batch]
            if keys:
                await obstore.delete_async(self._store, keys)
            return len(keys)

        try:
            return await self._call(delete)
        except FileNotFoundError:  # a local folder that was never made: nothing to delete
            return 0

    async def _call(self, call: Callable[[], Awaitable[T]]) -> T:
        """``call()``; in a sidecar tried again in a transient failure until ``retry_s`` have passed since the
        first try (jobs.dependencies.patiently, which also keeps the sidecar's database window).

        Raises :class:`JobsUnavailable` with a short message past that; a missing object (obstore raises the
        built-in ``FileNotFoundError``) and ``AlreadyExistsError`` pass through for the caller.
        """
        if self._retry_s is None:
            return await self._once(call)
        return await patiently("store", self._retry_s, lambda: self._once(call), self.outages)

    async def _once(self, call: Callable[[], Awaitable[T]]) -> T:
        """One try of ``call()``, its failure told as :class:`JobsUnavailable` (a refusal: DependencyRefused)."""
        try:
            return await call()
        except AlreadyExistsError:
            raise
        except BaseError as exc:
            self._log(exc)
            if isinstance(exc, _PERMANENT):
                raise DependencyRefused(f"the artifact store refused the request ({type(exc).__name__})") from exc
            raise JobsUnavailable(UNAVAILABLE) from exc

    def _log(self, error: BaseError) -> None:
        """The store's full error, for the operator: a warning at most every ``_LOG_EVERY_S``."""
        now = time.monotonic()
        if now - self._logged_at >= _LOG_EVERY_S:
            self._logged_at = now
            log.warning("the artifact store failed (more failures in the next %.0f s are not logged): %s",
                        _LOG_EVERY_S, error)

    async def presign(self, key: str, expires_s: int = 3600) -> str:
        return await obstore.sign_async(self._store, "GET", key, timedelta(seconds=expires_s))
