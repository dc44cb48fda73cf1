"""GPU utilisation while a point runs, sampled on a thread of the kit.

``utilization.gpu`` is the share of the last sample period in which a kernel
ran on the GPU: the "GPU busy" of the targets. Each sample asks NVML through
pynvml where it imports (cheap), else runs ``nvidia-smi`` once: a one-shot
query, since a looping nvidia-smi writing to a pipe may hold its output in a
buffer that is lost when it is stopped. Where neither exists the sampler
records nothing and reports None, so the kit runs on a CPU too.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Callable
from statistics import mean

QUERY = "index,utilization.gpu,memory.used"
#: One reading: (GPU index, utilisation %, memory used MiB) per GPU.
Reading = list[tuple[str, float, float]]


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


def _nvml_reader() -> Callable[[], str] | None:
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    except pynvml.NVMLError:
        return None

    def read() -> str:
        rows = []
        try:
            for i, handle in enumerate(handles):
                util = pynvml.nvmlDeviceGetUtilizationRates(handle).gpu
                used = pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20
                rows.append(f"{i}, {util}, {used:.0f}")
        except pynvml.NVMLError as error:
            raise OSError(f"NVML: {error}") from error
        return "\n".join(rows)

    return read


def _nvidia_smi_reader() -> Callable[[], str] | None:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    argv = [smi, f"--query-gpu={QUERY}", "--format=csv,noheader,nounits"]
    return lambda: subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout


def find_reader() -> Callable[[], str] | None:
    """A function returning one reading as nvidia-smi's CSV lines; None where no GPU can be read."""
    if shutil.which("nvidia-smi") is None:
        return None
    return _nvml_reader() or _nvidia_smi_reader()


class Sampler:
    """Context manager: reads every ``interval_s`` on a thread while open; ``result`` once closed."""

    def __init__(self, interval_s: float = 0.1, reader: Callable[[], str] | None = None) -> None:
        self.interval_s = interval_s
        self.result: dict[str, dict] | None = None
        self._reader = reader if reader is not None else find_reader()
        self._lines: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._lines.append(self._reader())
            except (OSError, subprocess.SubprocessError):
                pass  # one lost sample
            self._stop.wait(self.interval_s)

    def __enter__(self) -> Sampler:
        if self._reader is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._reader is None:
            return
        self._stop.set()
        self._thread.join(timeout=15)
        self.result = summarise(parse("\n".join(self._lines)))
