"""The artifact store: job inputs, status, results and model versions.

One library, obstore, sits under both adapters: ``S3Store`` when ``S3_BUCKET``
is set (AWS, MinIO or any S3-compatible endpoint), ``LocalStore`` on
``JOBS_DIR/store`` otherwise. obstore was chosen because it gives the same
async put/get/head, atomic create-if-absent (``mode="create"``, S3's
``If-None-Match``) and presigned URLs for both, with retries built in, in one
small wheel; tried against moto's server and a local folder.

Keys are built here from gateway-generated job ids only. A client may name an
existing object by ``input_uri``; :meth:`ArtifactStore.key_for_uri` accepts it
only inside the configured bucket or folder.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

import obstore
from obstore.exceptions import AlreadyExistsError, BaseError
from obstore.store import LocalStore, S3Store

from jobs.errors import InvalidJob, JobsUnavailable
from jobs.settings import JobsSettings

# The gateway's store calls fail fast enough for an HTTP request to answer 503 instead of hanging.
_FAIL_FAST = {"max_retries": 3, "retry_timeout": timedelta(seconds=10)}


def _patient(seconds: float) -> dict:
    """A sidecar's: a store that does not answer is retried, at least every second, for ``seconds``.

    An outage shorter than that costs the jobs time, not one of their JOB_MAX_DELIVERIES each.
    """
    backoff = {"init_backoff": timedelta(milliseconds=100), "max_backoff": timedelta(seconds=1), "base": 2}
    return {"max_retries": int(seconds) + 10, "retry_timeout": timedelta(seconds=seconds), "backoff": backoff}


def job_key(job_id: str, name: str) -> str:
    """``jobs/<id>/<name>``: every per-job object lives under its id."""
    return f"jobs/{job_id}/{name}"


def model_key(model_name: str, version: str, name: str) -> str:
    return f"models/{model_name}/{version}/{name}"


class ArtifactStore:
    def __init__(self, store: LocalStore | S3Store, uri_prefix: str, root: Path | None = None) -> None:
        self._store = store
        self.uri_prefix = uri_prefix
        self._root = root  # the local folder, None for S3

    @classmethod
    def from_settings(cls, settings: JobsSettings, *, retry_s: float | None = None) -> ArtifactStore:
        """``retry_s``: retry an unanswering S3 store this long (a sidecar); None: fail fast (the gateway)."""
        if settings.s3_bucket:
            store = S3Store(
                settings.s3_bucket,
                endpoint=settings.s3_endpoint_url,
                access_key_id=settings.aws_access_key_id,
                secret_access_key=settings.aws_secret_access_key,
                region=settings.aws_region,
                client_options={"allow_http": True},
                retry_config=_FAIL_FAST if retry_s is None else _patient(retry_s),
            )
            return cls(store, f"s3://{settings.s3_bucket}/")
        root = (settings.jobs_dir / "store").resolve()
        return cls(LocalStore(root, mkdir=True), f"file://{root}/", root)

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
        """Write ``data`` atomically; with ``create``, only if absent (False if it existed)."""
        try:
            await obstore.put_async(self._store, key, data, mode="create" if create else "overwrite")
        except AlreadyExistsError:
            return False
        except BaseError as exc:
            raise JobsUnavailable(f"the artifact store failed: {exc}") from exc
        return True

    async def get(self, key: str) -> bytes | None:
        try:
            result = await obstore.get_async(self._store, key)
            return bytes(await result.bytes_async())
        except FileNotFoundError:
            return None
        except BaseError as exc:
            raise JobsUnavailable(f"the artifact store failed: {exc}") from exc

    async def size(self, key: str) -> int | None:
        """The object's size in bytes, None if there is none."""
        try:
            return int((await obstore.head_async(self._store, key))["size"])
        except FileNotFoundError:
            return None
        except BaseError as exc:
            raise JobsUnavailable(f"the artifact store failed: {exc}") from exc

    async def presign(self, key: str, expires_s: int = 3600) -> str:
        return await obstore.sign_async(self._store, "GET", key, timedelta(seconds=expires_s))
