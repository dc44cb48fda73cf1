"""Garbage-collector settings for the long-lived servers (gateway, sidecar).

CPython's cyclic collector runs a young collection every 700 net container
allocations, and every 100th of those is a full collection that walks every
tracked object: the imported modules, pydantic's and Starlette's classes, the
connection pools. A burst of requests allocates fast (each request builds a
few hundred short-lived dicts, tuples and coroutines), so full collections
come often, and each walks the whole start-up heap again: a py-spy profile of
the gateway under the jobs bench (1,000 ``POST /jobs`` at once) had 9% of its
samples in collections, about 0.45 ms of CPU per job. Almost nothing of a
request outlives it in a cycle (its objects are freed by reference counting),
so the collector finds little there.

After start-up, ``gc.freeze()`` moves everything alive into the permanent
generation, which collections skip, and a larger young threshold makes the
collections, hence the full ones, rarer. Cycles are still collected, later.
"""

from __future__ import annotations

import gc

#: Net container allocations between young collections (CPython's default: 700).
YOUNG_THRESHOLD = 20_000


def frozen_startup_heap() -> None:
    """Collect once, freeze what survives (the start-up heap) and collect the young generation less often.

    Call at the end of a process's start-up, once its modules, settings and clients exist.
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
