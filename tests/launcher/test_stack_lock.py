"""One stack per job folder: a folder of its own by default, and a lock that refuses a second stack on one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from launcher.stack_lock import FolderInUse, jobs_dir, lock_jobs_dir
from tests.support import REPO, free_port


def test_each_gateway_port_has_its_own_folder_unless_jobs_dir_is_set() -> None:
    assert jobs_dir({}, 8080) == Path(".run/8080/jobs") != jobs_dir({}, 8090)
    assert jobs_dir({"JOBS_DIR": "/data/jobs"}, 8080) == Path("/data/jobs")


def test_a_held_folder_is_refused_naming_its_holder_and_free_again_once_released(tmp_path: Path) -> None:
    held = lock_jobs_dir(tmp_path / "jobs")
    with pytest.raises(FolderInUse, match=f"another stack \\(launcher pid {os.getpid()}\\) uses the job folder"):
        lock_jobs_dir(tmp_path / "jobs")
    held.close()
    lock_jobs_dir(tmp_path / "jobs").close()


def test_a_second_launcher_on_the_same_folder_stops_at_once_with_one_sentence(tmp_path: Path) -> None:
    folder = tmp_path / "jobs"
    held = lock_jobs_dir(folder)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "launcher", "--workers", "1", "--port", str(free_port())],
            env={**os.environ, "JOBS_DIR": str(folder), "PYTHONPATH": str(REPO)}, cwd=REPO,
            capture_output=True, text=True, timeout=60,
        )
    finally:
        held.close()
    assert done.returncode == 1
    assert done.stdout.strip() == (f"launcher | another stack (launcher pid {os.getpid()}) uses the job folder "
                                   f"{folder}: stop it, or give this one its own JOBS_DIR")
