"""GPU utilisation while a point runs: ``nvidia-smi`` sampled in the background.

``utilization.gpu`` is the share of the last sample period in which a kernel
ran on the GPU: the "GPU busy" of the targets. A sampler started where there is
no nvidia-smi records nothing and reports None, so the kit runs on a CPU too.
"""

from __future__ import annotations

import shutil
import subprocess
from statistics import mean

QUERY = "index,utilization.gpu,memory.used"


def parse(lines: str) -> dict[str, list[tuple[float, float]]]:
    """``nvidia-smi --format=csv,noheader,nounits`` lines to samples (utilisation %, memory MiB) per GPU."""
    samples: dict[str, list[tuple[float, float]]] = {}
    for line in lines.splitlines():
        fields = [field.strip() for field in line.split(",")]
        if len(fields) != 3:
            continue
        try:
            samples.setdefault(fields[0], []).append((float(fields[1]), float(fields[2])))
        except ValueError:  # "[N/A]" on a GPU that does not report it
            continue
    return samples


def summarise(samples: dict[str, list[tuple[float, float]]]) -> dict[str, dict] | None:
    """Per GPU: mean and peak utilisation (%), peak memory used (MiB), sample count."""
    if not samples:
        return None
    return {gpu: {"util_mean_pct": round(mean(u for u, _ in rows), 1), "util_max_pct": max(u for u, _ in rows),
                  "memory_max_mib": max(m for _, m in rows), "samples": len(rows)}
            for gpu, rows in samples.items()}


class Sampler:
    """Context manager: samples every ``interval_ms`` while open; ``result`` once closed."""

    def __init__(self, interval_ms: int = 100) -> None:
        self.interval_ms = interval_ms
        self.result: dict[str, dict] | None = None
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> Sampler:
        smi = shutil.which("nvidia-smi")
        if smi is not None:
            self._process = subprocess.Popen(
                [smi, f"--query-gpu={QUERY}", "--format=csv,noheader,nounits", f"--loop-ms={self.interval_ms}"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            out, _ = self._process.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            out, _ = self._process.communicate()
        self.result = summarise(parse(out))
