"""The model versions a worker holds, and which of them serve.

A worker starts serving the parameters of its start artifacts, labelled with the
contract's ``version`` (origin "start"). A gateway then sends it versions
(:meth:`Versions.load`: unpacked into a folder of the worker's own, loaded,
traced, compiled on a thread while the current version keeps serving, the
example row run through ``predict_batch`` and ``postprocess``) and says which
serve (:meth:`Versions.serve`: an active version, an optional canary with its
share of the requests, or none at all once unloaded). Each request picks its
version once (:meth:`Versions.choose`) and is computed by it whatever changes
meanwhile: the batcher takes the parameters per batch, so a switch lands between
two batches and no request fails or mixes versions.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from common import artifact_archive
from worker.batcher import Batcher, InferFn, Target
from worker.contract import ContractError, Model, TensorSpec
from worker.errors import InvalidVersion, ModelUnloaded, NotReady, VersionConflict, VersionNotServed, VersionRefused
from worker.predictor import Predictor

if TYPE_CHECKING:  # the app and its tests run without JAX
    from worker.runtime import LoadedParams

log = logging.getLogger(__name__)
_LABEL = re.compile(r"[A-Za-z0-9._-]{1,64}")


class VersionRuntime(Protocol):
    """What loading versions needs of the runtime (worker/runtime.py's ModelRuntime)."""

    model: Model

    def load_version(self, folder: Path) -> LoadedParams: ...
    def infer_with(self, params: Any) -> InferFn: ...
    def release_start_params(self) -> None: ...


@dataclass(eq=False)
class LoadedVersion:
    """One version on the device: what computes its batches, and where its files are."""

    label: str
    target: Target
    #: Its own unpacked folder; None for the start artifacts, which are the worker's, never removed.
    folder: Path | None
    #: Its files' digest (common/artifact_archive.py); for the start artifacts, read when first asked.
    files: list[dict] | None


def check_label(label: str) -> str:
    if not _LABEL.fullmatch(label):
        raise InvalidVersion(f"version {label!r}: 1 to 64 letters, digits, '.', '_' or '-'")
    return label


def read_folder(folder: Path) -> dict[str, bytes]:
    """The regular files at the top of ``folder`` (a version's files); empty when it has none."""
    if not folder.is_dir():
        return {}
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


def _write_files(folder: Path, files: dict[str, bytes]) -> None:
    for name, content in files.items():
        (folder / name).write_bytes(content)


def _describe(outputs: tuple[TensorSpec, ...]) -> str:
    return ", ".join(f"{spec.name} {spec.shape} {spec.dtype}" for spec in outputs)


class Versions:
    """The loaded versions and the serving state: active, canary and its traffic, loaded, origin."""

    def __init__(self, runtime: VersionRuntime, batcher: Batcher, start_label: str, start_folder: Path,
                 versions_dir: Path | None, rng: random.Random | None = None) -> None:
        self._runtime = runtime
        self._batcher = batcher
        self._releasing: set[asyncio.Task[None]] = set()
        self._model = runtime.model
        self._start_folder = start_folder
        self._parent_dir = versions_dir
        self._dir: Path | None = None
        self._random = (rng or random.Random()).random
        self._versions: dict[str, LoadedVersion] = {}
        self._loading: dict[str, asyncio.Task[dict[str, Any]]] = {}
        self._load_lock = asyncio.Lock()
        self._predictor: Predictor | None = None
        self.active = start_label
        self.canary: str | None = None
        self.canary_traffic = 0
        self.loaded = True
        self.origin = "start"
        #: The registry's generation of the state last taken (None: none said): an older one is refused.
        self.generation: int | None = None

    def started(self, predictor: Predictor, target: Target) -> None:
        """The start artifacts are loaded and checked: they serve as the active version."""
        self._predictor = predictor
        self._versions[self.active] = LoadedVersion(self.active, target, None, None)

    def state(self) -> dict[str, Any]:
        """What /health reports as "serving" and PUT /admin/serving answers."""
        return {"active": self.active, "canary": self.canary, "canary_traffic": self.canary_traffic,
                "loaded": self.loaded, "origin": self.origin, "generation": self.generation}

    @property
    def serving(self) -> list[str]:
        return [self.active] if self.canary is None else [self.active, self.canary]

    def choose(self) -> LoadedVersion:
        """The version that computes one request: the canary with its traffic share, else the active one."""
        if not self.loaded:
            raise ModelUnloaded(f"model {self._model.name!r} is unloaded: it serves no predictions until loaded again")
        if self.canary is not None and self._random() * 100 < self.canary_traffic:
            return self._versions[self.canary]
        return self._versions[self.active]

    def named(self, label: str) -> LoadedVersion:
        """A version asked for by label: served while it is loaded as the active version or the canary."""
        if not self.loaded:
            raise ModelUnloaded(f"model {self._model.name!r} is unloaded: it serves no predictions until loaded again")
        if label not in self.serving:
            raise VersionNotServed(f"unknown model {self._model.name} version {label}; this server serves "
                                   f"{self._model.name} version {' and '.join(self.serving)}")
        return self._versions[label]

    async def start_files(self) -> dict[str, bytes]:
        """The files the worker was started with (its artifacts folder's regular files)."""
        return await asyncio.to_thread(read_folder, self._start_folder)

    async def load(self, label: str, files: dict[str, bytes]) -> dict[str, Any]:
        """Load, check and compile a version beside the serving ones; its compilations and time.

        Idempotent: a version already loaded with the same files answers at once; loads of the same
        version at once share one. Raises :class:`VersionRefused` (nothing changed) when a check fails.
        """
        check_label(label)
        if self._predictor is None:
            raise NotReady("the model is still loading or compiling")
        running = self._loading.get(label)
        if running is not None:
            return await asyncio.shield(running)
        existing = self._versions.get(label)
        digest = artifact_archive.digest(files)
        if existing is not None:
            if existing.files is None:  # the start artifacts
                existing.files = artifact_archive.digest(await self.start_files())
            if existing.files == digest:
                return {"version": label, "compilations": 0, "load_ms": 0.0}
            if existing.folder is not None and label in self.serving:
                raise VersionConflict("version_in_use", f"version {label} of model {self._model.name!r} serves "
                                      "other files: a version's files never change")
        task = asyncio.create_task(self._load(label, files, digest))
        self._loading[label] = task
        task.add_done_callback(lambda _: self._loading.pop(label, None))
        return await asyncio.shield(task)

    async def _load(self, label: str, files: dict[str, bytes], digest: list[dict]) -> dict[str, Any]:
        assert self._predictor is not None
        async with self._load_lock:  # one load at a time: its compilations are its own
            started = time.perf_counter()
            folder = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=self._versions_dir()))
            try:
                await asyncio.to_thread(_write_files, folder, files)
                loaded = await asyncio.to_thread(self._runtime.load_version, folder)
                if loaded.outputs != self._predictor.outputs:
                    raise ContractError(self._model, "predict_batch", f"outputs ({_describe(loaded.outputs)}) "
                                        f"differ from the served version's ({_describe(self._predictor.outputs)})")
                target = Target(self._runtime.infer_with(loaded.params), label)
                await self._predictor.check_example(target)
            except Exception as exc:
                shutil.rmtree(folder, ignore_errors=True)
                reason = str(exc) if isinstance(exc, ContractError) else (
                    f"model {self._model.name!r}: load: {type(exc).__name__}: {exc}")
                log.warning("version %s refused: %s", label, reason)
                raise VersionRefused(f"version {label} refused: {reason}") from None
        load_ms = round((time.perf_counter() - started) * 1000, 3)  # unpacked, loaded, compiled and checked
        replaced = self._versions.get(label)
        self._versions[label] = LoadedVersion(label, target, folder, digest)
        if replaced is not None:
            self._discard(replaced)
        log.info("version %s of model %s loaded in %.0f ms, %d compilations", label, self._model.name,
                 load_ms, loaded.compilations)
        return {"version": label, "compilations": loaded.compilations, "load_ms": load_ms}

    def serve(self, active: str, canary: str | None, canary_traffic: int, loaded: bool,
              generation: int | None = None) -> dict[str, Any]:
        """Switch what serves (from the next batch on); versions not named are unloaded.

        Unloaded (``loaded`` false), the named versions need not be loaded (those that are stay, so that
        loading the model again is instant); loaded, they must be. ``generation``: the registry's, refused when
        older than the last one taken: two gateways' pushes can cross, and the older state must not land last.
        """
        if generation is not None and self.generation is not None and generation < self.generation:
            raise VersionConflict("stale_generation", f"model {self._model.name!r}: serving state generation "
                                  f"{generation} is older than the {self.generation} this worker serves")
        named = [label for label in (active, canary) if label is not None]
        missing = [label for label in named if label not in self._versions] if loaded else []
        if missing:
            raise VersionConflict("version_not_loaded", f"model {self._model.name!r}: version "
                                  f"{' and '.join(missing)} not loaded on this worker (PUT /admin/versions first)")
        self.active, self.canary, self.loaded, self.origin = active, canary, loaded, "registry"
        self.generation = generation if generation is not None else self.generation
        self.canary_traffic = canary_traffic if canary is not None else 0
        for label in [label for label in self._versions if label not in named]:
            self._discard(self._versions.pop(label))
        log.info("model %s serving %s", self._model.name, self.state())
        return self.state()

    def unload(self, label: str) -> bool:
        """Drop a version that does not serve; False when it was not loaded."""
        check_label(label)
        if label in self.serving:
            raise VersionConflict("version_in_use", f"version {label} of model {self._model.name!r} serves "
                                  "(active or canary): change what serves first")
        entry = self._versions.pop(label, None)
        if entry is not None:
            self._discard(entry)
        return entry is not None

    def close(self) -> None:
        """Remove the folders this worker unpacked versions into."""
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)

    def _versions_dir(self) -> Path:
        """This process's own folder under the configured one (or a temporary one), made when first needed."""
        if self._dir is None:
            if self._parent_dir is not None:
                self._parent_dir.mkdir(parents=True, exist_ok=True)
            self._dir = Path(tempfile.mkdtemp(prefix="worker-versions-", dir=self._parent_dir))
        return self._dir

    async def _release_start_params(self, target: Target) -> None:
        """The runtime holds the start parameters itself: free them once no request still needs them."""
        while self._batcher.holds(target):
            await asyncio.sleep(0.05)
        self._runtime.release_start_params()

    def _discard(self, entry: LoadedVersion) -> None:
        """Forget a version: its parameters are freed once the batches still queued for it are done."""
        if entry.folder is None:
            release = asyncio.get_running_loop().create_task(self._release_start_params(entry.target))
            self._releasing.add(release)
            release.add_done_callback(self._releasing.discard)
        else:
            shutil.rmtree(entry.folder, ignore_errors=True)
        log.info("version %s of model %s unloaded", entry.label, self._model.name)
