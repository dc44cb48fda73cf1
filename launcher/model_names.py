"""``python -m launcher.model_names MODEL...``: print the model names of MODEL import paths, as one JSON line.

Run by the launcher (launcher/models.py) in a child process, so that the launcher, which runs as long
as the stack, never holds JAX. Prints ``{"names": [...]}`` and exits 0, or prints
``{"index": i, "error": "..."}`` for the first path that names no model and exits 1.
"""

from __future__ import annotations

import json
import sys


def main(paths: list[str]) -> int:
    from worker.contract import ContractError, ModelNotFound, load_model_class

    names = []
    for index, path in enumerate(paths):
        try:
            names.append(load_model_class(path).name)
        except ImportError as error:
            print(json.dumps({"index": index, "error": f"MODEL={path}: {error}"}))
            return 1
        except (ModelNotFound, ContractError) as error:  # their messages name the model
            print(json.dumps({"index": index, "error": str(error)}))
            return 1
    print(json.dumps({"names": names}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
