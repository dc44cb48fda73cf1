"""A py-spy profile of the gateway and the first worker under the kit's heaviest load.

It runs after the measured points, as a load run of its own (py-spy slows what
it samples a little, so no published figure comes from it), and reuses
``bench.profile``'s recording and summary: the functions that hold the CPU and
the share of samples under each part of the stack. A profile that fails (py-spy
refused by the machine, say) is recorded as an error: it never costs the run.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from bench.loadgen import request_body, run_load
from bench.profile import record, summarize


def find_py_spy() -> str | None:
    """py-spy on PATH (the carried one is put there), or beside this interpreter (a virtual environment)."""
    beside = Path(sys.executable).parent / "py-spy"
    return shutil.which("py-spy") or (str(beside) if beside.is_file() else None)


def profile_under_load(url: str, concurrency: int, duration_s: float, loadgen: str, pids: dict[str, int],
                       out_dir: Path) -> dict:
    """Sample each of ``pids`` (by name) while ``url`` is under load; a summary (or an error) per name."""
    seconds = max(1, int(duration_s))
    raw = {name: out_dir / f"profile-{name}.txt" for name in pids}
    spies = {name: record(pid, seconds, raw[name]) for name, pid in pids.items()}
    load = run_load(url, request_body(url), concurrency, seconds + 1, generator=loadgen)
    result: dict = {"concurrency": concurrency, "rps": load.rps, "p50_ms": load.p50_ms}
    for name, spy in spies.items():
        try:
            _, err = spy.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            spy.kill()
            _, err = spy.communicate()
        if spy.returncode == 0 and raw[name].is_file():
            result[name] = summarize(raw[name], top=8)
        else:
            result[name] = {"error": err.decode(errors="replace")[-500:] or f"py-spy exited {spy.returncode}"}
    return result
