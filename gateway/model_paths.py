"""Which model a request path is for: the one name every part of the gateway reads it by.

    /models/{name}/...       that model (its predictions, its versions)
    /v2/models/{name}/...    that model (the Open Inference Protocol)
    anything else            None: the default model (``/predict``, ``/batch_predict``), or no model at all

The proxy routes by it, and access control (a key limited to some models) checks it.
"""

from __future__ import annotations

_PREFIXES = ("/models/", "/v2/models/")
#: ``/models/{name}/...`` paths the gateway answers itself: no model is called ``ui``.
_NOT_NAMES = frozenset({"ui"})
#: What ``/models/{name}/<route>`` proxies to on that model's workers.
PREDICTION_ROUTES = {"predict": "/predict", "batch_predict": "/batch_predict"}


def model_of(path: str) -> str | None:
    """The model name a path names (``/models/{name}/...`` or ``/v2/models/{name}/...``), else None."""
    for prefix in _PREFIXES:
        if path.startswith(prefix):
            name = path[len(prefix):].split("/", 1)[0]
            return name if name and name not in _NOT_NAMES else None
    return None


def prediction_route(path: str) -> tuple[str, str] | None:
    """``(model name, worker path)`` for ``/models/{name}/predict`` and ``/models/{name}/batch_predict``
    (a trailing slash too), else None."""
    if not path.startswith("/models/"):
        return None
    parts = path[len("/models/"):].rstrip("/").split("/")
    if len(parts) != 2 or not parts[0] or parts[1] not in PREDICTION_ROUTES:
        return None
    return parts[0], PREDICTION_ROUTES[parts[1]]
