"""What the numbers were measured on: CPU, memory, versions, commit, load."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from bench.loadgen import find_wrk

PACKAGES = ("jax", "jaxlib", "numpy", "starlette", "uvicorn", "uvloop", "httptools", "aiohttp", "httpx", "orjson")
REPO = Path(__file__).resolve().parent.parent


def _first(path: str, key: str) -> str | None:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _run(argv: list[str]) -> str | None:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10, cwd=REPO).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def describe() -> dict:
    mem_kb = _first("/proc/meminfo", "MemTotal")
    wrk = find_wrk()
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    wrk_version = None
    if wrk:
        banner = subprocess.run([wrk, "--version"], capture_output=True, text=True).stdout.splitlines()
        wrk_version = banner[0].split(" [")[0] if banner else None
    dirty = _run(["git", "status", "--porcelain", "--untracked-files=no"])
    return {
        "nproc": os.cpu_count(),
        "cpu": _first("/proc/cpuinfo", "model name") or platform.processor(),
        "memory_gib": round(int(mem_kb.split()[0]) / 1024**2, 1) if mem_kb else None,
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "packages": versions,
        "wrk": wrk_version,
        "commit": _run(["git", "rev-parse", "--short", "HEAD"]),
        "tree_dirty": bool(dirty),
        "loadavg_at_start": list(os.getloadavg()),
    }
