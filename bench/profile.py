"""``python -m bench --profile``: where the CPU goes per request, gateway and worker.

Starts gateway + 2 workers (heavy MLP unless ``--models`` says otherwise), puts
them under closed-loop load at c=64 (or ``--concurrency``), and samples the
gateway and worker 0 with py-spy for the measured part. The summary names the
functions that hold the CPU (self time) and the share of samples spent under
each part of the stack (HTTP parsing, the HTTP client, logging, ...).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

from bench.loadgen import predict_body, run_load

#: Parts of the stack, matched against the (shortened) file paths of a sampled stack.
CATEGORIES = {
    "HTTP server (uvicorn/httptools)": r"uvicorn/protocols/",
    "uvicorn proxy-headers middleware": r"uvicorn/middleware/",
    "Starlette routing/requests": r"starlette/",
    "request middleware (gateway/request_context.py)": r"gateway/request_context\.py",
    "access logging": r"logging/__init__\.py",
    "proxied routes (gateway/proxied_routes.py)": r"gateway/proxied_routes\.py",
    "proxy (gateway/proxy.py)": r"gateway/proxy\.py",
    "HTTP client (common/forwarder.py)": r"common/forwarder\.py",
    "row batching (gateway/row_batching.py)": r"gateway/row_batching\.py",
    "HTTP client (aiohttp)": r"aiohttp/",
    "HTTP client (httpx)": r"httpx/|httpcore/",
    "metrics (prometheus_client)": r"prometheus_client/",
    "request id (uuid)": r"uuid\.py",
    "worker handler (worker/app.py)": r"worker/app\.py",
    "validation (pydantic)": r"pydantic/",
    "batcher (worker/batcher.py)": r"worker/batcher\.py",
    "model call (jax)": r"jax/|jaxlib/",
    "event loop (asyncio)": r"asyncio/",
}
#: A thread pool thread waiting for work, which py-spy does not always see as idle.
_IDLE_LEAF = "_worker (concurrent/futures/thread.py"
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.*?)(?::\d+)?\)$")


def summarize(collapsed: Path, top: int = 15) -> dict:
    """Top self-time functions and the inclusive share of each category, from py-spy's raw output."""
    leaves: Counter[str] = Counter()
    categories: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        if frames[-1].startswith(_IDLE_LEAF):
            continue
        total += count
        match = _FRAME.match(frames[-1])
        leaf = f"{match['func']} ({_short(match['file'])})" if match else frames[-1]
        leaves[leaf] += count
        for name, pattern in CATEGORIES.items():
            if re.search(pattern, stack):
                categories[name] += count
    share = {k: round(v / total, 3) for k, v in categories.most_common()} if total else {}
    return {
        "samples": total,
        "self_top": [{"function": f, "share": round(c / total, 3)} for f, c in leaves.most_common(top)],
        "inclusive_share": share,
    }


def _short(path: str) -> str:
    for marker in ("site-packages/", "python3.11/", "/work/main/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def record(pid: int, duration_s: float, out: Path) -> subprocess.Popen:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return subprocess.Popen(
        [py_spy, "record", "--pid", str(pid), "--duration", str(int(duration_s)), "--rate", "200",
         "--format", "raw", "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def profile(args: argparse.Namespace) -> dict:
    from bench.__main__ import Runner, log_folder

    model = args.models[0] if args.models and args.models != ["heavy", "default"] else "heavy"
    concurrency = args.concurrency[0] if args.concurrency != [1, 16, 64, 256] else 64
    duration = max(args.duration, 8.0)
    out_dir = args.out.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    with log_folder() as logs:
        runner = Runner(args, logs)
        with runner.worker(f"{model}-w0", model) as w0, runner.worker(f"{model}-w1", model, worker_id="1") as w1, \
                runner.gateway(f"{model}-gw2", [w0, w1]) as gw:
            url = gw.url + "/predict"
            run_load(url, predict_body(url), concurrency, 2, generator=args.loadgen)
            raw = {"gateway": out_dir / "profile-gateway.txt", "worker": out_dir / "profile-worker.txt"}
            spies = [record(gw.pid, duration - 1, raw["gateway"]), record(w0.pid, duration - 1, raw["worker"])]
            load: dict = {}
            thread = threading.Thread(
                target=lambda: load.update(run_load(url, predict_body(url), concurrency, duration,
                                                    generator=args.loadgen).to_dict()))
            thread.start()
            thread.join()
            for spy in spies:
                _, err = spy.communicate(timeout=60)
                if spy.returncode != 0:
                    raise RuntimeError(f"py-spy failed: {err.decode(errors='replace')[-500:]}")
    result = {"model": model, "concurrency": concurrency, "load": load,
              "gateway": summarize(raw["gateway"]), "worker": summarize(raw["worker"])}
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"under load: {load['rps']:.0f} req/s, p50 {load['p50_ms']:.2f} ms, p99 {load['p99_ms']:.2f} ms "
          "(py-spy slows the sampled processes a little)")
    for process in ("gateway", "worker"):
        summary = result[process]
        print(f"\n{process}: {summary['samples']} samples")
        print("  inclusive share by part:")
        for name, share in summary["inclusive_share"].items():
            print(f"    {share:6.1%}  {name}")
        print("  top functions by self time:")
        for item in summary["self_top"]:
            print(f"    {item['share']:6.1%}  {item['function']}")
    print(f"\nwrote {args.out} (raw stacks: {raw['gateway']}, {raw['worker']})")
    return result
