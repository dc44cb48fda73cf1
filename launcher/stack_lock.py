"""One local stack per job folder: the folder of the embedded broker, the SQLite records and the local store.

Two stacks on one folder would share one queue and run each other's jobs.
By default each stack gets its own folder, ``.run/<gateway port>/jobs``; a
``JOBS_DIR`` given twice is refused by a lock (``flock``) the launcher holds
for its lifetime. The kernel drops the lock when the launcher exits, however
it exits, so a crashed stack never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Mapping
from pathlib import Path
from typing import IO

LOCK_FILE = "stack.lock"


def jobs_dir(environ: Mapping[str, str], port: int) -> Path:
    """JOBS_DIR when it is set, else this stack's own folder, named after its gateway port."""
    given = environ.get("JOBS_DIR", "").strip()
    return Path(given) if given else Path(".run") / str(port) / "jobs"


class FolderInUse(Exception):
    """Another stack holds the folder's lock."""


def lock_jobs_dir(folder: Path) -> IO[str]:
    """Hold the folder's lock (until the returned file is closed, or the process ends), or raise FolderInUse."""
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / LOCK_FILE, "a+")  # noqa: SIM115 - held open for the stack's lifetime
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip()
        handle.close()
        by = f" (launcher pid {holder})" if holder.isdigit() else ""
        raise FolderInUse(
            f"another stack{by} uses the job folder {folder}: stop it, or give this one its own JOBS_DIR"
        ) from None
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle
