"""``MODELS``: several models on one launcher, one pool of workers per entry.

An entry is ``module:Class`` (or a module holding one model, as MODEL takes it), then optionally
``@folder`` (the pool's MODEL_ARTIFACTS; without it the workers read the model's default folder)
and ``=N`` (its workers, default 1)::

    MODELS="my_models.fraud:FraudModel=2,my_models.churn:ChurnModel"

The entries' model names are read before anything starts, in a child Python (the launcher itself
never imports JAX): an entry naming no model, or two entries naming the same model (the gateway
groups workers by name, so they would be one pool), stop the launcher with a sentence naming the entry.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

#: The launcher's setting: the entries, comma-separated.
MODELS_ENV = "MODELS"
_ENTRY = re.compile(r"^(?P<model>[^@=\s]+)(?:@(?P<artifacts>[^=]+))?(?:=(?P<workers>\d+))?$")
#: Longest wait for the child Python that reads the entries' model names (it imports each model's module).
NAMES_TIMEOUT_S = 120.0


class ModelsError(ValueError):
    """MODELS cannot be served as written; the message names the entry."""


@dataclass(frozen=True)
class Pool:
    """One MODELS entry: the workers serving one model."""

    #: What the worker's MODEL takes: ``module:Class`` or a module.
    model: str
    workers: int = 1
    #: The pool's MODEL_ARTIFACTS; None: the worker's own default.
    artifacts: Path | None = None
    #: The model's name, as its workers report it and the gateway routes by it.
    name: str = ""
    #: Which entry it is, for messages: ``MODELS entry 2 (worker.examples.regression:BayesianLinearRegression)``.
    entry: str = ""


def parse_models(text: str) -> list[Pool]:
    """The pools MODELS asks for, names not yet read; a malformed entry raises ModelsError naming it."""
    pools = []
    for number, raw in enumerate((part.strip() for part in text.split(",")), start=1):
        match = _ENTRY.match(raw)
        if not match:
            raise ModelsError(f"MODELS entry {number} ({raw!r}): write module:Class, then @folder and =N if needed")
        workers = int(match["workers"] or 1)
        if workers < 1:
            raise ModelsError(f"MODELS entry {number} ({raw}): =N must be at least 1")
        artifacts = Path(match["artifacts"]) if match["artifacts"] else None
        pools.append(Pool(match["model"], workers, artifacts, entry=f"MODELS entry {number} ({raw})"))
    return pools


def named(pools: list[Pool], names: list[str]) -> list[Pool]:
    """The pools with their models' names; two entries of the same name raise ModelsError."""
    seen: dict[str, Pool] = {}
    result = []
    for pool, name in zip(pools, names, strict=True):
        if name in seen:
            raise ModelsError(f"{pool.entry} serves {name!r}, as {seen[name].entry} does: the gateway groups "
                              "workers by model name, so one model needs one entry (=N for more workers)")
        seen[name] = pool
        result.append(Pool(pool.model, pool.workers, pool.artifacts, name, pool.entry))
    return result


def read_names(pools: list[Pool], python: str = sys.executable, timeout_s: float = NAMES_TIMEOUT_S) -> list[Pool]:
    """The pools with their model names, read by a child Python with the worker's own loader."""
    done = subprocess.run(
        [python, "-m", "launcher.model_names", *(pool.model for pool in pools)],
        capture_output=True, text=True, timeout=timeout_s, check=False,
    )
    if done.returncode != 0:
        lines = done.stdout.strip().splitlines() or done.stderr.strip().splitlines() or ["no output"]
        answer = json.loads(lines[-1]) if lines[-1].startswith("{") else {"index": None, "error": lines[-1]}
        index = answer.get("index")
        where = pools[index].entry if isinstance(index, int) and 0 <= index < len(pools) else "MODELS"
        raise ModelsError(f"{where}: {answer.get('error')}")
    return named(pools, json.loads(done.stdout.strip().splitlines()[-1])["names"])
