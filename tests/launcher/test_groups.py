"""The stack's groups: the workers and the gateway processes may give up together, the sidecars never; the
gateway processes, and only they, learn where the launcher writes its processes' state."""

from __future__ import annotations

import argparse
from pathlib import Path

from launcher.__main__ import build_children


def test_each_role_is_a_group_and_only_the_sidecars_never_give_up(tmp_path: Path) -> None:
    args = argparse.Namespace(workers=2, port=9090, host="127.0.0.1", no_sidecars=False, gateway_processes=2)
    children = {child.name: child for child in build_children(args, [], jobs_folder=tmp_path, environ={})}
    assert {name: (child.group, child.essential) for name, child in children.items()} == {
        "worker-0": ("worker", True), "worker-1": ("worker", True),
        "sidecar-0": ("sidecar", False), "sidecar-1": ("sidecar", False),
        "gateway-0": ("gateway", True), "gateway-1": ("gateway", True),
    }
    for name, child in children.items():
        expected = str(tmp_path / "processes.json") if name.startswith("gateway") else None
        assert child.env.get("LAUNCHER_STATUS_FILE") == expected


def test_without_a_job_folder_no_status_file_is_named() -> None:
    args = argparse.Namespace(workers=1, port=9090, host="127.0.0.1", no_sidecars=True, gateway_processes=1)
    assert all("LAUNCHER_STATUS_FILE" not in child.env for child in build_children(args, []))
