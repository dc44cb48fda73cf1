"""Two models under load through one gateway, each against the same model served alone (same run).

    python -m bench.several_models [--duration 5] [--repeat 3] [--concurrency 32] [--models A B]

The gateway gathers /predict rows into worker calls per model (GATEWAY_BATCHING): a row of one model must
never wait in, or be sent with, another model's batch. This measures what that costs. One worker per model
and three gateways start once: one per model that knows only its worker, and one that knows both (WORKERS
lists both workers; each model on its own route, ``/models/<name>/predict``). Each round loads each model
alone through its own gateway, then both at once through the shared one; the median round is kept. Each
model's rows/s together is set against its rows/s alone: on a machine with cores to spare, both stay near
1.0; on a small one the two models share the CPU and each gets about half. Every answer's X-Model-Name is
checked over a sample of requests sent beside the load: an answer from the other model counts as wrong.

Results go to bench/results/several-models.json and a Markdown table to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import orjson

from bench.loadgen import LoadResult, run_load
from bench.machine import describe as describe_machine
from bench.stack import REPO, Gateway, Worker

DEFAULT_MODELS = ["worker.examples.iris:IrisBayesianLogReg", "worker.examples.regression:BayesianLinearRegression"]
DEFAULT_OUT = REPO / "bench" / "results" / "several-models.json"
#: Requests per model sent beside the load to check which model answered.
CHECKED_REQUESTS = 50


@dataclass
class Served:
    """A worker of one model, and what a /predict request for it is."""

    worker: Worker
    name: str
    body: bytes

    def route(self, gateway: Gateway) -> str:
        return f"{gateway.url}/models/{quote(self.name, safe='')}/predict"

    def batch_counts(self) -> tuple[float, float]:
        """(rows, calls) the worker's batcher has run so far."""
        sums = self.worker.metric_sums()
        return sums.get("worker_batch_size_sum", 0.0), sums.get("worker_batch_size_count", 0.0)


@dataclass
class ModelFigures:
    model: str
    alone_rows_s: float
    together_rows_s: float
    ratio: float
    alone_errors: int
    together_errors: int
    wrong_model: int
    checked: int
    alone_p50_ms: float
    together_p50_ms: float
    #: Rows per batch the model's worker ran: the gateway's gathering of /predict rows, with the worker's own.
    alone_rows_per_batch: float
    together_rows_per_batch: float


def start_worker(model: str, log_dir: Path, index: int) -> Served:
    worker = Worker(f"worker-{index}", model, log_dir, worker_id=str(index)).start()
    metadata = httpx.get(f"{worker.url}/metadata", timeout=10).raise_for_status().json()
    body = orjson.dumps({"input_data": metadata["example"]["input_data"]})
    return Served(worker, str(metadata["name"]), body)


def gateway_for(workers: list[Served], log_dir: Path, name: str, env: dict[str, str]) -> Gateway:
    base = {"LOG_LEVEL": "warning", "ACCESS_LOG": "false", "GATEWAY_BATCHING": "true"}
    return Gateway(name, [served.worker.address for served in workers], log_dir, env={**base, **env})


async def _check_models(gateway: Gateway, models: list[Served], duration_s: float) -> dict[str, tuple[int, int]]:
    """Per model: (answers from another model, answers checked), requests spread over ``duration_s``."""
    counts = {served.name: [0, 0] for served in models}
    pause_s = duration_s / (CHECKED_REQUESTS + 1)
    async with httpx.AsyncClient(timeout=30) as client:
        for _ in range(CHECKED_REQUESTS):
            await asyncio.sleep(pause_s)
            answers = await asyncio.gather(*(client.post(served.route(gateway), content=served.body,
                                                         headers={"Content-Type": "application/json"})
                                              for served in models))
            for served, answer in zip(models, answers, strict=True):
                if answer.status_code == 200:
                    counts[served.name][1] += 1
                    counts[served.name][0] += answer.headers.get("x-model-name") != served.name
    return {name: (wrong, checked) for name, (wrong, checked) in counts.items()}


@dataclass
class Measured:
    runs: list[LoadResult]
    #: Per model: (answers from another model, answers checked).
    checks: dict[str, tuple[int, int]]
    rows_per_batch: list[float]


def load(gateway: Gateway, models: list[Served], concurrency: int, duration_s: float, generator: str) -> Measured:
    """Every model's load at once (a thread each), with the model check beside it."""
    before = [served.batch_counts() for served in models]
    with concurrent.futures.ThreadPoolExecutor(len(models) + 1) as pool:
        runs = [pool.submit(run_load, served.route(gateway), served.body, concurrency, duration_s,
                            generator=generator) for served in models]
        checked = pool.submit(asyncio.run, _check_models(gateway, models, duration_s))
        results, checks = [run.result() for run in runs], checked.result()
    per_batch = []
    for served, (rows_before, calls_before) in zip(models, before, strict=True):
        rows, calls = served.batch_counts()
        per_batch.append(round((rows - rows_before) / (calls - calls_before), 2) if calls > calls_before else 0.0)
    return Measured(results, checks, per_batch)


def _median(runs: list[tuple[LoadResult, float]]) -> tuple[LoadResult, float]:
    """The run of median rows/s (of an even count, the lower middle one), with its rows per batch."""
    return sorted(runs, key=lambda run: run[0].rps)[(len(runs) - 1) // 2]


def measure(args: argparse.Namespace, log_dir: Path) -> dict:
    """Each round loads every model alone, then all together (the same gateways and workers throughout), so
    a neighbour's burst on a shared machine spoils one round, not one side; the median round is kept."""
    started = time.time()
    env = dict(item.split("=", 1) for item in args.gateway_env)
    with ExitStack() as stack:
        models = [start_worker(model, log_dir, index) for index, model in enumerate(args.models)]
        for served in models:
            stack.callback(served.worker.stop)
        if len({served.name for served in models}) != len(models):
            raise SystemExit(f"--models: two entries serve the same model name ({[s.name for s in models]})")
        alone_gateways = [stack.enter_context(gateway_for([served], log_dir, f"gateway-alone-{index}", env))
                          for index, served in enumerate(models)]
        together_gateway = stack.enter_context(gateway_for(models, log_dir, "gateway-together", env))
        if args.warmup > 0:
            for served, gateway in zip(models, alone_gateways, strict=True):
                load(gateway, [served], args.concurrency, args.warmup, args.loadgen)
            load(together_gateway, models, args.concurrency, args.warmup, args.loadgen)
        alone: dict[str, list[tuple[LoadResult, float]]] = {served.name: [] for served in models}
        together: dict[str, list[tuple[LoadResult, float]]] = {served.name: [] for served in models}
        checks = {served.name: [0, 0] for served in models}
        for _ in range(args.repeat):
            for served, gateway in zip(models, alone_gateways, strict=True):
                measured = load(gateway, [served], args.concurrency, args.duration, args.loadgen)
                alone[served.name].append((measured.runs[0], measured.rows_per_batch[0]))
            measured = load(together_gateway, models, args.concurrency, args.duration, args.loadgen)
            for index, served in enumerate(models):
                together[served.name].append((measured.runs[index], measured.rows_per_batch[index]))
                checks[served.name][0] += measured.checks[served.name][0]
                checks[served.name][1] += measured.checks[served.name][1]
    figures = []
    for served in models:
        (solo, solo_per_batch), (run, per_batch) = _median(alone[served.name]), _median(together[served.name])
        figures.append(ModelFigures(
            model=served.name, alone_rows_s=solo.rps, together_rows_s=run.rps,
            ratio=round(run.rps / solo.rps, 3) if solo.rps else 0.0,
            alone_errors=sum(one.errors for one, _ in alone[served.name]),
            together_errors=sum(one.errors for one, _ in together[served.name]),
            wrong_model=checks[served.name][0], checked=checks[served.name][1], alone_p50_ms=solo.p50_ms,
            together_p50_ms=run.p50_ms, alone_rows_per_batch=solo_per_batch, together_rows_per_batch=per_batch))
    return {
        "meta": {"machine": describe_machine(), "started": started, "seconds": round(time.time() - started, 1),
                 "duration_s": args.duration, "repeat": args.repeat, "concurrency": args.concurrency,
                 "loadgen": together[models[0].name][0][0].loadgen, "models": args.models},
        "models": [asdict(one) for one in figures],
    }


def markdown(results: dict) -> str:
    meta = results["meta"]
    lines = [f"{meta['concurrency']} connections per model, median of {meta['repeat']} rounds of "
             f"{meta['duration_s']:g} s, load generator "
             f"{meta['loadgen']}, {meta['machine'].get('nproc', '?')} cores:", "",
             "| model | rows/s alone | rows/s together | together / alone | errors (alone, together) | "
             "wrong model | p50 ms alone, together | rows per worker batch alone, together |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for one in results["models"]:
        lines.append(f"| {one['model']} | {one['alone_rows_s']:.0f} | {one['together_rows_s']:.0f} | "
                     f"{one['ratio']:.2f} | {one['alone_errors']}, {one['together_errors']} | "
                     f"{one['wrong_model']} of {one['checked']} | {one['alone_p50_ms']:.1f}, "
                     f"{one['together_p50_ms']:.1f} | {one['alone_rows_per_batch']:.1f}, "
                     f"{one['together_rows_per_batch']:.1f} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.several_models", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, metavar="MODULE:CLASS",
                        help="the models, one worker each (default: the iris and regression examples)")
    parser.add_argument("--concurrency", type=int, default=32, help="connections per model (default: 32)")
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per run (default: 5)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (alone, then together); the median is kept "
                        "(default: 3)")
    parser.add_argument("--warmup", type=float, default=2.0, help="discarded seconds per gateway first (default: 2)")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--gateway-env", nargs="*", default=[], metavar="KEY=VALUE", help="extra gateway settings")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results JSON")
    parser.add_argument("--log-dir", type=Path, default=REPO / "build" / "bench-several-models",
                        help="the processes' logs")
    args = parser.parse_args(argv)
    if len(args.models) < 2:
        parser.error("--models: at least two")
    if args.repeat < 1 or args.duration <= 0:
        parser.error("--repeat: at least 1; --duration: more than 0")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    results = measure(args, args.log_dir)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
