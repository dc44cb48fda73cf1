"""The model contract: the only thing a user implements to serve a model.

A model knows nothing of HTTP, queues, devices or timing. The runtime
(``worker/runtime.py``) holds an instance and does the rest: it calls ``load``
once, derives the outputs' shapes by tracing ``predict_batch``, jit-compiles it
for every batch bucket, pads and splits batches, and calls ``postprocess`` per
row outside jit. What the class declares is published as the model's metadata
(``GET /metadata``), from which the gateway builds its API documentation.

The smallest model declares ``name``, ``input_shape``, ``load`` and
``predict_batch``; everything else has a default derived from those.

This module imports no JAX so that the batcher, the app and their tests can
use it anywhere.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel

#: Parameters are any pytree of arrays (dicts of arrays in practice).
Params = Any
#: The outputs of ``predict_batch`` for one row, already on the host.
RowOutputs = Mapping[str, np.ndarray]
#: ``progress(done, total)``, called by ``fit`` between units of work.
Progress = Callable[[int, int], None]


class ContractError(Exception):
    """A model class breaks the contract; the message names the model and the method."""

    def __init__(self, model: type[Model] | Model, method: str, problem: str) -> None:
        cls = model if isinstance(model, type) else type(model)
        name = getattr(cls, "name", cls.__name__)
        super().__init__(f"model {name!r} ({cls.__module__}:{cls.__qualname__}): {method}: {problem}")


class ModelNotFound(LookupError):
    """``MODEL`` names no model class."""


@dataclass(frozen=True)
class TensorSpec:
    """One named array of a row: its per-row shape (no batch axis) and dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    description: str = ""


class Model:
    """Base class of a servable model. Subclass it in ``worker/model.py``.

    Class attributes describe the model; the methods hold its logic.
    ``predict_batch`` must be pure and jittable: parameters are an argument,
    not closed over, so a new version with the same shapes needs no
    recompilation.
    """

    name: ClassVar[str] = "model"
    version: ClassVar[str] = "1"
    #: Shape of one input row, without the batch axis: ``(4,)``, ``(8, 8)``, ``()`` for a scalar.
    input_shape: ClassVar[tuple[int, ...] | None] = None
    input_dtype: ClassVar[str] = "float32"
    #: The input's name in the Open Inference Protocol; the JSON routes call it ``input_data``.
    input_name: ClassVar[str] = "input_data"
    input_description: ClassVar[str] = "One input row."
    #: One example row (nested lists); the default is a row of zeros. Shown in the docs.
    example: ClassVar[Any] = None
    #: One-line description of each output of ``predict_batch``, by name. Their shapes and
    #: dtypes are derived by tracing; names not listed here are still served.
    outputs: ClassVar[Mapping[str, str]] = {}
    #: Class names, when the first output is a score per class: the default ``postprocess``
    #: then answers the best class's index and label.
    labels: ClassVar[tuple[str, ...] | None] = None
    #: The pydantic model of what ``postprocess`` returns; default: derived from the outputs.
    response_model: ClassVar[type[BaseModel] | None] = None

    def load(self, artifacts: Path) -> Params:
        """Read parameters from an artifact folder (safetensors or npz, never pickle)."""
        raise NotImplementedError

    def predict_batch(self, params: Params, x: Any) -> dict[str, Any]:
        """Map a batch ``x`` of shape ``(n, *input_shape)`` to arrays with leading axis ``n``."""
        raise NotImplementedError

    def postprocess(self, row: RowOutputs, options: Mapping[str, Any]) -> dict[str, Any]:
        """Turn one row of outputs into JSON-ready values; runs outside jit.

        ``options`` holds the request's flags (``return_probabilities``). The
        result must contain ``prediction``. The default: with ``labels``, the
        best class's index and label, and the first output's scores when asked
        for; without, the first output as ``prediction`` and every other output
        by its name.
        """
        names = list(row)
        first = np.asarray(row[names[0]])
        if self.labels is not None:
            best = int(first.argmax())
            scores = first.tolist() if options.get("return_probabilities") else None
            return {"prediction": [best], "label": self.labels[best], names[0]: scores}
        answer = {"prediction": np.atleast_1d(first).tolist()}
        answer.update({name: np.asarray(row[name]).tolist() for name in names[1:]})
        return answer

    # Training is optional: a model with ``fit`` can be retrained by a ``train`` job.

    #: Per-row shape and dtype of the training target (``()`` int32: a class index).
    target_shape: ClassVar[tuple[int, ...]] = ()
    target_dtype: ClassVar[str] = "float32"
    #: The pydantic model of a ``train`` job's options, checked before the job is queued.
    fit_options: ClassVar[type[BaseModel] | None] = None

    def fit(self, x: np.ndarray, y: np.ndarray, options: Mapping[str, Any], progress: Progress) -> Params:
        """Train new parameters on rows ``x`` and targets ``y``; call ``progress`` as it goes.

        Raise ``ValueError`` for data or options a retry would not fix.
        """
        raise NotImplementedError

    def training_data(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Data a ``train`` job without inputs fits on; None: such a job must send rows."""
        return None

    def save(self, params: Params, folder: Path) -> None:
        """Write ``params`` where ``load(folder)`` reads them; default: a flat dict as ``<name>.npz``."""
        save_npz(params, self.params_file(folder))

    def params_file(self, folder: Path) -> Path:
        """Where the default ``save`` writes: one file per model name, so models can share a folder."""
        return Path(folder) / f"{self.name}.npz"


def implements(model: type[Model] | Model, method: str) -> bool:
    """Whether the class overrides a method of :class:`Model` (``fit``, ``training_data``...)."""
    cls = model if isinstance(model, type) else type(model)
    return getattr(cls, method) is not getattr(Model, method)


def save_npz(params: Mapping[str, Any], path: Path) -> None:
    """Write a flat ``{name: array}`` mapping as an uncompressed ``.npz`` (loads without pickle)."""
    if not isinstance(params, Mapping):
        raise TypeError(f"the default save writes a flat dict of arrays, not {type(params).__name__}: override save")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:  # a file object, so numpy does not append ".npz"
        np.savez(f, **{name: np.asarray(value) for name, value in params.items()})


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """Read what :func:`save_npz` wrote, refusing pickled objects."""
    with np.load(path, allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


def check_declarations(cls: type[Model]) -> None:
    """Check what a model class declares, before anything is loaded or traced."""
    if not isinstance(cls.name, str) or not cls.name.strip():
        raise ContractError(cls, "name", "must be a non-empty string")
    if cls.input_shape is None:
        raise ContractError(cls, "input_shape", "not declared: set the per-row shape, e.g. input_shape = (4,)")
    shape = cls.input_shape
    if not (isinstance(shape, tuple) and all(isinstance(d, int) and d > 0 for d in shape)):
        raise ContractError(cls, "input_shape", f"must be a tuple of positive ints, not {shape!r}")
    for attr in ("input_dtype", "target_dtype"):
        try:
            np.dtype(getattr(cls, attr))
        except TypeError:
            raise ContractError(cls, attr, f"{getattr(cls, attr)!r} is not a dtype") from None
    for method in ("load", "predict_batch"):
        if not implements(cls, method):
            raise ContractError(cls, method, "not implemented")
    if cls.example is not None and np.shape(cls.example) != shape:
        raise ContractError(cls, "example", f"has shape {np.shape(cls.example)}, input_shape is {shape}")
    if cls.labels is not None and not (cls.labels and all(isinstance(label, str) for label in cls.labels)):
        raise ContractError(cls, "labels", "must be a non-empty tuple of strings")
    for attr in ("response_model", "fit_options"):
        value = getattr(cls, attr)
        if value is not None and not (isinstance(value, type) and issubclass(value, BaseModel)):
            raise ContractError(cls, attr, "must be a pydantic BaseModel subclass")


def example_row(cls: type[Model]) -> Any:
    """The declared example row, or zeros of the input shape."""
    if cls.example is not None:
        return np.asarray(cls.example).tolist()
    return np.zeros(cls.input_shape or (), dtype=cls.input_dtype).tolist()


def load_model_class(import_path: str) -> type[Model]:
    """Resolve ``"package.module:ClassName"``, or ``"package.module"`` holding one model, to a Model class.

    A module alone names the one :class:`Model` subclass defined in it (or, if
    it defines none, the one it imports; or, if it defines a base model and
    variants of it, the base): ``worker.model`` serves whatever class that
    file holds, whatever it is called.
    """
    module_name, _, class_name = import_path.partition(":")
    module = importlib.import_module(module_name)
    if class_name:
        model_class = getattr(module, class_name, None)
        if not (isinstance(model_class, type) and issubclass(model_class, Model)):
            raise ModelNotFound(f"MODEL={import_path}: not a subclass of worker.contract.Model")
    else:
        found = [obj for obj in vars(module).values()
                 if isinstance(obj, type) and issubclass(obj, Model) and obj is not Model]
        defined = [cls for cls in found if cls.__module__ == module_name]
        candidates = defined or found
        # A base model and its variants (mlp.py's MLP, SmallMLP, HeavyMLP): the base is the module's model.
        bases = [cls for cls in candidates if all(issubclass(other, cls) for other in candidates)]
        candidates = bases or candidates
        if len(candidates) != 1:
            names = ", ".join(sorted(cls.__name__ for cls in candidates)) or "none"
            raise ModelNotFound(
                f"MODEL={import_path}: the module must hold exactly one Model subclass (found: {names}); "
                "name one as 'module:Class'"
            )
        model_class = candidates[0]
    check_declarations(model_class)
    return model_class


def model_import_path(cls: type[Model]) -> str:
    """``module:Class`` of a model class: what a sidecar imports to train the served model."""
    if inspect.getmodule(cls) is None:
        raise ContractError(cls, "import", "the class is not importable by path")
    return f"{cls.__module__}:{cls.__qualname__}"
