"""Which queue a job travels on: one per model name, so a job reaches only sidecars of its model.

A queue is ``<JOB_QUEUE>.<model name>``, its dead letters ``<that>.dead``. Model names
are the model's own (any text), queue names are not: RabbitMQ takes at most 255 bytes
and the ``.`` separates the suffixes. So a name is percent-encoded to
``[A-Za-z0-9_-]`` and ``%XX`` (injective: two names never share a queue, and a
plain name such as ``my-model`` stays ``jobs.my-model``); an encoding too long to fit with ``.dead`` is cut and ends in
``~`` and a hash of the name (``~`` is never part of an encoding, so a cut name cannot
equal a whole one).

A sidecar learns its worker's model from the worker's ``/health`` (``model_name``,
``model_version``, ``input_shape``); the gateway from the ``/metadata`` its workers
publish. Both become a :class:`ModelIdentity`.
"""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass
from typing import Any

#: RabbitMQ's limit on a queue name, in bytes.
MAX_QUEUE_BYTES = 255
DEAD_SUFFIX = ".dead"
#: Room for the dead-letter queue's suffix.
MAX_MODEL_QUEUE_BYTES = MAX_QUEUE_BYTES - len(DEAD_SUFFIX)
_SAFE = frozenset(string.ascii_letters + string.digits + "_-")
_HASH_CHARS = 16


def model_queue(base: str, model_name: str) -> str:
    """The queue of jobs for ``model_name``: ``<base>.<encoded name>``, at most 250 bytes."""
    encoded = "".join(chr(byte) if chr(byte) in _SAFE else f"%{byte:02X}" for byte in model_name.encode())
    queue = f"{base}.{encoded}"
    if len(queue) <= MAX_MODEL_QUEUE_BYTES:  # ASCII only: characters are bytes
        return queue
    digest = hashlib.sha256(model_name.encode()).hexdigest()[:_HASH_CHARS]
    return f"{queue[:MAX_MODEL_QUEUE_BYTES - _HASH_CHARS - 1]}~{digest}"


def dead_queue(queue: str) -> str:
    return queue + DEAD_SUFFIX


@dataclass(frozen=True)
class ModelIdentity:
    """What a job is bound to: the model's name, its version, and the per-row input shape it takes."""

    name: str
    version: str
    input_shape: tuple[int, ...]

    @classmethod
    def from_health(cls, health: dict[str, Any]) -> ModelIdentity:
        """From a worker's ``/health`` answer (``KeyError`` / ``TypeError`` when it lacks the fields)."""
        return cls(str(health["model_name"]), str(health["model_version"]),
                   tuple(int(size) for size in health["input_shape"]))

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> ModelIdentity:
        """From a worker's ``/metadata`` document (the shape without its -1 batch axis)."""
        return cls(str(metadata["name"]), str(metadata["version"]),
                   tuple(int(size) for size in metadata["inputs"][0]["shape"][1:]))

    def describe(self) -> str:
        return f"{self.name!r} version {self.version!r} (input shape {list(self.input_shape)})"
