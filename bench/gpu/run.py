"""One run of the GPU kit: the in-process limit, then the stack in three configurations.

Configurations, each driven by closed-loop load at every ``--concurrency``:
``direct`` (the first worker alone), ``gateway_per_gpu`` (a gateway in front of
one worker per GPU; one worker on a machine without GPUs) and ``gateway_shared``
(a gateway in front of two workers on GPU 0, each with a share of its memory).
Points are measured by ``bench.__main__.Runner`` (CPU per request of each
process, mean batch, compilations), with the GPU utilisation sampled over the measured
seconds only, and the workers' own timings of their model calls and queue
(``bench.gpu.worker_time``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

from bench.__main__ import Runner
from bench.gpu import inprocess, summary, worker_time
from bench.gpu.profiling import find_py_spy, profile_under_load
from bench.gpu.utilisation import Sampler
from bench.loadgen import find_wrk, request_body, run_load
from bench.machine import describe
from bench.report import write_json
from bench.stack import Gateway, Worker
from launcher.gpus import device_env, list_gpus


def device_envs(count: int, gpus: list[str], mem_fraction: float | None = None) -> list[dict[str, str]]:
    """The environment of each of ``count`` workers: GPUs round-robin (the CPU where there is none);
    ``mem_fraction`` caps each one's share of its GPU's memory, for workers that share one."""
    envs = [device_env(i, gpus) for i in range(count)]
    if gpus and mem_fraction is not None:
        for env in envs:
            env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{mem_fraction:g}"
    return envs


class Kit:
    """Starts the processes of each configuration and measures its points."""

    def __init__(self, args: argparse.Namespace, log_dir: Path, gpus: list[str]) -> None:
        self.args = args
        self.log_dir = log_dir
        self.gpus = gpus
        # Warm-up is done here, outside the sampled seconds, so the Runner measures only.
        runner_args = argparse.Namespace(duration=args.duration, warmup=0.0, repeat=1, loadgen=args.loadgen,
                                         worker_env=args.worker_env, gateway_env=args.gateway_env)
        self.runner = Runner(runner_args, log_dir)
        self.points: list[dict] = []
        self.compilations_after_ready: dict[str, int | None] = {}
        self.profile: dict | None = None

    def workers(self, prefix: str, envs: list[dict[str, str]]) -> list[Worker]:
        return [Worker(f"{prefix}{i}", self.args.model, self.log_dir, worker_id=str(i),
                       env={**self.args.worker_env, **env}) for i, env in enumerate(envs)]

    def sweep(self, config: str, url: str, workers: list[Worker], gateway: Gateway | None = None) -> None:
        body = request_body(url)
        for concurrency in self.args.concurrency:
            if self.args.warmup > 0:
                run_load(url, body, concurrency, self.args.warmup, generator=self.args.loadgen)
            before = [worker_time.read(w.url) for w in workers]
            with Sampler() as sampler:
                result = self.runner.measure(url, concurrency, workers, gateway)
            after = [worker_time.read(w.url) for w in workers]
            point = {"config": config, **result, "gpu": sampler.result,
                     "worker_time": worker_time.breakdown(before, after, result["duration_s"])}
            self.points.append(point)
            print(f"  {config:16s} c={concurrency:<4d} {point['rps']:8.0f} req/s  p50 {point['p50_ms']:7.2f}  "
                  f"p99 {point['p99_ms']:7.2f} ms  batch {point.get('mean_batch_size')}  "
                  f"gpu {summary.gpu_busy(point)}  cpu ms/req {point.get('cpu_ms_per_request')}  "
                  f"errors {point['errors']}", flush=True)

    def run_configs(self) -> None:
        per_gpu = self.workers("w", device_envs(max(1, len(self.gpus)), self.gpus))
        self._run_workers(per_gpu, direct=True, config="gateway_per_gpu")
        shared_gpus = self.gpus[:1]
        shared = self.workers("shared", device_envs(2, shared_gpus * 2 if shared_gpus else [],
                                                    self.args.shared_mem_fraction))
        self._run_workers(shared, direct=False, config="gateway_shared")

    def _run_workers(self, workers: list[Worker], *, direct: bool, config: str) -> None:
        started: list[Worker] = []
        try:
            for worker in workers:
                started.append(worker.start())
            if direct:
                self.sweep("direct", workers[0].url + "/predict", workers[:1])
            with Gateway(f"gw-{config}", [w.address for w in workers], self.log_dir,
                         env=self.args.gateway_env) as gateway:
                self.sweep(config, gateway.url + "/predict", workers, gateway)
                if config == "gateway_per_gpu" and self.args.profile:
                    self._profile(gateway, workers[0])
        finally:
            for worker in started:
                worker.stop()
                self.compilations_after_ready[worker.name] = worker.compilations_after_ready


    def _profile(self, gateway: Gateway, worker: Worker) -> None:
        concurrency = max(self.args.concurrency)
        print(f"  py-spy on the gateway and {worker.name} at c={concurrency} (not a measured point)", flush=True)
        self.profile = profile_under_load(gateway.url + "/predict", concurrency, self.args.duration,
                                          self.args.loadgen, {"gateway": gateway.pid, "worker": worker.pid},
                                          self.log_dir)


def _meta(args: argparse.Namespace, gpus: list[str], started: float, started_at: str, carried: list[str]) -> dict:
    return {
        "started": started_at,
        "elapsed_s": round(time.monotonic() - started, 1),
        "command": "python -m bench.gpu " + shlex.join(sys.argv[1:]),
        "machine": describe(),
        "gpus": len(gpus),
        "model": args.model,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "concurrency": args.concurrency,
        "batches": args.batches,
        "loadgen": "wrk" if args.loadgen == "wrk" or (args.loadgen == "auto" and find_wrk()) else "python",
        "worker_env": args.worker_env,
        "gateway_env": args.gateway_env,
        "carried": carried,
    }


def run(args: argparse.Namespace, carried: list[str]) -> dict:
    """Measure everything, write the JSON and the Markdown; the results."""
    started, started_at = time.monotonic(), dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    gpus = [] if os.environ.get("JAX_PLATFORMS") == "cpu" else list_gpus()
    print(f"{len(gpus)} GPU(s); model {args.model}; in-process limit at batch {args.batches}", flush=True)
    limit_env = {**os.environ, **args.worker_env, **device_envs(1, gpus)[0]}
    results: dict = {"inprocess": inprocess.run(args.model, args.batches, args.inprocess_duration, limit_env,
                                                timeout_s=300 + 8 * args.inprocess_duration * len(args.batches))}
    for m in results["inprocess"]["batches"]:
        print(f"  batch {m['batch']:5d}: {m['jit']['rows_per_s']:10.0f} rows/s jit, "
              f"{m['runtime']['rows_per_s']:10.0f} via ModelRuntime.infer "
              f"({results['inprocess']['device']})", flush=True)
    if args.profile and find_py_spy() is None:
        print("py-spy not found: no profile in this run", flush=True)
        args.profile = False
    with tempfile.TemporaryDirectory(prefix="bench-gpu-logs-") as logs:
        kit = Kit(args, Path(logs), gpus)
        kit.run_configs()
    results["points"] = kit.points
    results["profile"] = kit.profile
    results["compilations_after_ready"] = kit.compilations_after_ready
    results["meta"] = _meta(args, gpus, started, started_at, carried)
    summary.annotate(results)
    results["targets"] = summary.targets(results)
    write_json(results, args.out)
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    args.markdown.write_text(summary.markdown(results))
    print(f"wrote {args.out} and {args.markdown}")
    for t in results["targets"]:
        verdict = {True: "pass", False: "FAIL", None: "n/a"}[t["pass"]]
        print(f"  [{verdict}] {t['target']}: {t['value']} ({t['detail']}) wanted {t['op']} {t['threshold']}")
    return results
