"""``python -m bench`` (``make bench``): measure the stack end to end.

For each model (the heavy MLP and the default model) it starts, on loopback:
(a) one worker with batching off, (b) one worker with batching on, driven with
/predict, with Open Inference Protocol infer requests (one row, JSON) and with
/batch_predict of ``--rows`` rows; (c) a gateway in front of (b)'s worker, driven
the same three ways; (d) a gateway in front of two workers; (e) the same with
``--gateway-processes`` gateway processes on one socket (GATEWAY_PROCESSES); (f)
HAProxy in front of (d)'s workers at 1 and 64 clients, the anchor of the proxy hop
(``bench.haproxy``; skipped where haproxy is not installed); (g) (d) with an API key
sent on every request and usage counted, and (g') the same with usage not counted,
at 1 and 64 clients: their gateway CPU per request, against each other and (d), is
what counting usage and checking a key cost; and drives each with closed-loop load
at several concurrencies. It also measures the in-process
limit (``bench.inprocess``) and, through the gateway, the proxy client (the
gateway's own, production, against httpx). Results: ``bench/results/latest.json``,
the generated block of ``docs/benchmarks.md`` and ``docs/benchmarks.png``.

``--quick`` is a short run (heavy MLP, c=1 and 64, written under .cache/bench/);
``--url`` measures any running endpoint instead of starting a stack;
``--tune`` sweeps BATCH_TIMEOUT_MS and XLA_CPU_THREADS; ``--profile`` samples
the gateway and a worker with py-spy under load.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import secrets
import shlex
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench import haproxy, report
from bench.inprocess_runner import run_inprocess
from bench.loadgen import binary_rows_body, find_wrk, infer_url, request_body, run_load
from bench.machine import describe
from bench.stack import COMPILATIONS, Gateway, Process, Worker
from common import binary_rows

REPO = Path(__file__).resolve().parent.parent
MODELS = {"heavy": "worker.examples.mlp:HeavyMLP", "default": "worker.model"}
#: *_v2: one row per Open Inference Protocol infer (JSON) instead of /predict; *_batch_predict: --rows rows per
#: /batch_predict (*_binary: as binary rows, common/binary_rows.py); gateway_2_procs: (d) with
#: --gateway-processes gateway processes; haproxy_2: HAProxy in front of (d)'s two workers (bench/haproxy.py);
#: gateway_2_keys*: (d) with an API key sent on every request, usage counted or not (USAGE_COUNTING).
CONFIGS = ("direct_nobatch", "direct_batch", "direct_v2", "direct_batch_predict", "direct_batch_predict_binary",
           "gateway_1", "gateway_1_v2", "gateway_1_batch_predict", "gateway_2", "gateway_2_procs", "haproxy_2",
           "gateway_2_keys", "gateway_2_keys_uncounted")
ONE_WORKER = set(CONFIGS) - {"direct_nobatch"}
#: The keyed configurations and their USAGE_COUNTING; measured at these client counts (among those asked for),
#: enough to compare the gateway's CPU per request with (d)'s at the same points without lengthening the run much.
KEYED = {"gateway_2_keys": "1", "gateway_2_keys_uncounted": "0"}
KEYED_CONCURRENCY = (1, 64)
TWO_WORKERS = {"gateway_2", "gateway_2_procs", "haproxy_2", *KEYED}
#: Between two runs: how long the stack may take to finish the requests the last one abandoned, and how often
#: it is asked (a worker's batch count unchanged over one interval: it has nothing left).
SETTLE_TIMEOUT_S, SETTLE_POLL_S = 15.0, 0.1


def _env_pairs(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"expected KEY=VALUE, got {pair!r}")
        env[key] = value
    return env


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short run: heavy MLP, c=1,64, 2 s points")
    parser.add_argument("--url", help="measure this running endpoint (e.g. http://127.0.0.1:8080/predict)")
    parser.add_argument("--tune", action="store_true", help="sweep BATCH_TIMEOUT_MS x XLA_CPU_THREADS")
    parser.add_argument("--profile", action="store_true", help="py-spy the gateway and a worker under load")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), help="models to run")
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, help="configurations to run")
    parser.add_argument("--concurrency", nargs="+", type=int, help="connections per point")
    parser.add_argument("--rows", type=int, default=64, help="rows per /batch_predict request")
    parser.add_argument("--rows-concurrency", nargs="+", type=int, default=[1, 16],
                        help="connections per /batch_predict point (each holds --rows rows in the worker's queue)")
    parser.add_argument("--gateway-processes", type=int, default=2, help="gateway processes of gateway_2_procs")
    parser.add_argument("--duration", type=float, help="measured seconds per point")
    parser.add_argument("--warmup", type=float, help="discarded seconds before each point")
    parser.add_argument("--repeat", type=int, help="measured runs per point; the median one is kept")
    parser.add_argument("--inprocess-duration", type=float, help="seconds of the in-process loop")
    parser.add_argument("--no-clients", action="store_true", help="skip the proxy-client comparison (own vs httpx)")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--worker-env", nargs="*", default=[], metavar="KEY=VALUE", help="extra worker settings")
    parser.add_argument("--gateway-env", nargs="*", default=[], metavar="KEY=VALUE", help="extra gateway settings")
    parser.add_argument("--rounds", type=int, help="--tune: rounds over the sweep (default 2)")
    parser.add_argument("--out", type=Path, help="results JSON (default bench/results/latest.json)")
    parser.add_argument("--doc", type=Path, help="Markdown file whose generated block is replaced")
    parser.add_argument("--plot", type=Path, help="PNG plot")
    parser.add_argument("--no-docs", action="store_true", help="write only the JSON")
    args = parser.parse_args(argv)
    if args.rows < 1 or args.gateway_processes < 1:
        parser.error("--rows and --gateway-processes must be at least 1")
    quick = args.quick or args.url
    args.models = args.models or (["heavy"] if args.quick else list(MODELS))
    args.configs = args.configs or list(CONFIGS)
    args.concurrency = args.concurrency or ([1, 64] if args.quick else [1, 16, 64, 256])
    args.duration = args.duration or (2.0 if quick else 4.0)
    args.repeat = args.repeat or (1 if quick or args.tune or args.profile else 3)
    args.warmup = args.warmup if args.warmup is not None else 1.0
    args.inprocess_duration = args.inprocess_duration or (1.0 if quick else 3.0)
    if args.quick or args.url:
        args.no_clients = True
    cache = REPO / ".cache" / "bench"
    if args.quick:
        args.out = args.out or cache / "quick.json"
        args.doc, args.plot = args.doc or cache / "quick.md", args.plot or cache / "quick.png"
    elif args.tune:
        args.out = args.out or REPO / "bench" / "results" / "tuning.json"
        args.doc = args.doc or REPO / "docs" / "benchmarks-tuning.md"
    elif args.url or args.profile:
        args.out = args.out or cache / ("url.json" if args.url else "profile.json")
        args.no_docs = True
    else:
        args.out = args.out or REPO / "bench" / "results" / "latest.json"
        args.doc = args.doc or REPO / "docs" / "benchmarks.md"
        args.plot = args.plot or REPO / "docs" / "benchmarks.png"
    args.worker_env = _env_pairs(args.worker_env)
    args.gateway_env = _env_pairs(args.gateway_env)
    return args


class Runner:
    """Runs points and collects them; prints one line per point as it goes."""

    def __init__(self, args: argparse.Namespace, log_dir: Path) -> None:
        self.args = args
        self.log_dir = log_dir
        self.runs: list[dict] = []
        self.workers: list[Worker] = []

    def measure(self, url: str, concurrency: int, workers: list[Worker] = (), gateway: Process | None = None,
                rows: int = 1, binary: bool = False, headers: dict[str, str] | None = None,
                body: bytes | None = None) -> dict:
        """One point: a warm-up, then ``--repeat`` measured runs; the run of median req/s stands
        for the point (a neighbour's burst on a shared machine spoils one run, not the point),
        and every run's req/s and p99 are kept under ``repeats``. ``binary``: /batch_predict's
        rows as binary rows instead of JSON; ``headers``: sent with every request (an API key); ``body``:
        the request's body where ``url``'s service cannot be asked for it without a key."""
        args = self.args
        if body is None:
            body = binary_rows_body(url, rows) if binary else request_body(url, rows)
        content_type = binary_rows.CONTENT_TYPE if binary else "application/json"
        if args.warmup > 0:
            run_load(url, body, concurrency, args.warmup, generator=args.loadgen, content_type=content_type,
                     headers=headers)
        runs = []
        for _ in range(args.repeat):
            self.settle(workers, gateway)
            runs.append(self._measure_once(url, body, content_type, rows, concurrency, workers, gateway, headers))
        chosen = sorted(runs, key=lambda r: r["rps"])[len(runs) // 2]
        if len(runs) > 1:
            chosen["repeats"] = [{"rps": r["rps"], "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"],
                                  "errors": r["errors"]} for r in runs]
            chosen["errors"] = sum(r["errors"] for r in runs)  # an error in any run counts
        return chosen

    @staticmethod
    def settle(workers: list[Worker], gateway: Process | None, timeout_s: float = SETTLE_TIMEOUT_S) -> None:
        """Wait until the stack has done what the last run left: a load generator that stops abandons the
        requests it has in flight, and the next run would queue behind them or, through a gateway at its
        in-flight bound, be shed with 503. Done when a gateway proxies nothing and the workers' batch
        counts stop moving (at most ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        counts = None
        while time.monotonic() < deadline:
            now = [worker.metric_sums().get("worker_batch_size_count", 0.0) for worker in workers]
            proxying = gateway.in_flight() if isinstance(gateway, Gateway) else 0.0
            if proxying == 0 and now == counts:
                return
            counts = now
            time.sleep(SETTLE_POLL_S)  # between runs only

    def _measure_once(self, url: str, body: bytes, content_type: str, rows: int, concurrency: int, workers,
                      gateway: Process | None, headers: dict[str, str] | None) -> dict:
        args = self.args
        processes = ([gateway] if gateway else []) + list(workers)
        before = [w.metric_sums() for w in workers]
        cpu_before = [p.cpu_seconds() for p in processes]
        gateway_before = gateway.cpu_seconds_each() if gateway else []
        result = run_load(url, body, concurrency, args.duration, generator=args.loadgen,
                          content_type=content_type, headers=headers).to_dict()
        gateway_after = gateway.cpu_seconds_each() if gateway else []
        cpu_after = [p.cpu_seconds() for p in processes]
        after = [w.metric_sums() for w in workers]
        result["rows_per_request"] = rows
        result["rows_per_s"] = round(result["rps"] * rows, 1)
        if processes and result["requests"]:
            # CPU per request is far steadier than req/s on a shared machine: other
            # processes steal time, but not the work a request needs.
            result["cpu_ms_per_request"] = {
                ("gateway" if p is gateway else f"worker{i - (1 if gateway else 0)}"):
                round((a - b) * 1000 / result["requests"], 4)
                for i, (p, a, b) in enumerate(zip(processes, cpu_after, cpu_before, strict=True))
            }
        if len(gateway_before) > 1:
            # How evenly the processes on the shared socket split the work (the kernel picks who accepts).
            used = [a - b for a, b in zip(gateway_after, gateway_before, strict=True)]
            result["gateway_cpu_share"] = [round(u / sum(used), 3) if sum(used) else None for u in used]
        if workers:
            rows = sum(a.get("worker_batch_size_sum", 0) - b.get("worker_batch_size_sum", 0)
                       for a, b in zip(after, before, strict=True))
            batches = sum(a.get("worker_batch_size_count", 0) - b.get("worker_batch_size_count", 0)
                          for a, b in zip(after, before, strict=True))
            result["mean_batch_size"] = round(rows / batches, 2) if batches else None
            # Any compilation while serving is a bug: record it.
            result["compilations_during_run"] = sum(
                a.get(COMPILATIONS, 0) - b.get(COMPILATIONS, 0)
                for a, b in zip(after, before, strict=True))
        return result

    def sweep(
        self, model: str, config: str, url: str, workers: list[Worker], gateway: Process | None = None,
        rows: int = 1, binary: bool = False, concurrencies: list[int] | None = None,
        headers: dict[str, str] | None = None, body: bytes | None = None,
    ) -> None:
        """``concurrencies``: the client counts of this sweep, where not the run's (``--concurrency``,
        or ``--rows-concurrency`` for rows > 1)."""
        default = self.args.rows_concurrency if rows > 1 else self.args.concurrency
        for concurrency in concurrencies or default:
            result = {"model": model, "config": config,
                      **self.measure(url, concurrency, workers, gateway, rows, binary, headers, body)}
            self.runs.append(result)
            print(f"  {model:8s} {config:24s} c={concurrency:<4d} {result['rps']:8.0f} req/s  "
                  f"{result['rows_per_s']:8.0f} rows/s  "
                  f"p50 {result['p50_ms']:7.2f}  p95 {result['p95_ms']:7.2f}  p99 {result['p99_ms']:7.2f} ms  "
                  f"errors {result['errors']}  batch {result.get('mean_batch_size')}  "
                  f"loadgen cpu {result['loadgen_cpu']}  cpu ms/req {result.get('cpu_ms_per_request')}", flush=True)

    def worker(self, name: str, model: str, worker_id: str = "0", **env: str) -> Worker:
        worker = Worker(name, MODELS[model], self.log_dir, worker_id=worker_id,
                        env={**self.args.worker_env, **env})
        self.workers.append(worker)
        return worker

    def gateway(self, name: str, workers: list[Worker], module: str = "gateway", processes: int = 1,
                env: dict[str, str] | None = None) -> Gateway:
        """``env``: this configuration's own settings, over ``--gateway-env``."""
        return Gateway(name, [w.address for w in workers], self.log_dir, module=module,
                       env={**self.args.gateway_env, **(env or {})}, processes=processes)

    def compilations_after_ready(self) -> dict[str, int | None]:
        """Per worker started: XLA compilations between its readiness and its stop (none expected)."""
        return {w.name: w.compilations_after_ready for w in self.workers}


def run_model(runner: Runner, model: str, clients: list[dict]) -> None:
    configs, args = runner.args.configs, runner.args
    if "direct_nobatch" in configs:
        with runner.worker(f"{model}-nobatch", model, MAX_BATCH_SIZE="1") as worker:
            runner.sweep(model, "direct_nobatch", worker.url + "/predict", [worker])
    if not ONE_WORKER & set(configs) and args.no_clients:
        return
    with runner.worker(f"{model}-w0", model) as w0:
        if "direct_batch" in configs:
            runner.sweep(model, "direct_batch", w0.url + "/predict", [w0])
        if "direct_v2" in configs:
            runner.sweep(model, "direct_v2", infer_url(w0.url), [w0])
        if "direct_batch_predict" in configs:
            runner.sweep(model, "direct_batch_predict", w0.url + "/batch_predict", [w0], rows=args.rows)
        if "direct_batch_predict_binary" in configs:
            runner.sweep(model, "direct_batch_predict_binary", w0.url + "/batch_predict", [w0], rows=args.rows,
                         binary=True)
        if {"gateway_1", "gateway_1_v2", "gateway_1_batch_predict"} & set(configs):
            with runner.gateway(f"{model}-gw1", [w0]) as gw:
                if "gateway_1" in configs:
                    runner.sweep(model, "gateway_1", gw.url + "/predict", [w0], gw)
                if "gateway_1_v2" in configs:
                    runner.sweep(model, "gateway_1_v2", infer_url(gw.url), [w0], gw)
                if "gateway_1_batch_predict" in configs:
                    runner.sweep(model, "gateway_1_batch_predict", gw.url + "/batch_predict", [w0], gw,
                                 rows=args.rows)
        if not args.no_clients:
            for client, module in (("own", "gateway"), ("httpx", "bench.httpx_gateway")):
                with runner.gateway(f"{model}-gw1-{client}", [w0], module=module) as gw:
                    result = runner.measure(gw.url + "/predict", 64, [w0], gw)
                clients.append({"model": model, "client": client, **result})
                print(f"  {model:8s} client {client:8s} c=64   {result['rps']:8.0f} req/s  "
                      f"p50 {result['p50_ms']:7.2f}  p99 {result['p99_ms']:7.2f} ms  errors {result['errors']}  "
                      f"cpu ms/req {result.get('cpu_ms_per_request')}", flush=True)
        if TWO_WORKERS & set(configs):
            with runner.worker(f"{model}-w1", model, worker_id="1") as w1:
                if "gateway_2" in configs:
                    with runner.gateway(f"{model}-gw2", [w0, w1]) as gw:
                        runner.sweep(model, "gateway_2", gw.url + "/predict", [w0, w1], gw)
                if "gateway_2_procs" in configs:
                    with runner.gateway(f"{model}-gw2-procs", [w0, w1], processes=args.gateway_processes) as gw:
                        runner.sweep(model, "gateway_2_procs", gw.url + "/predict", [w0, w1], gw)
                if "haproxy_2" in configs and haproxy.find_haproxy():
                    with haproxy.HAProxy(f"{model}-haproxy", [w0.address, w1.address], runner.log_dir) as proxy:
                        runner.sweep(model, "haproxy_2", proxy.url + "/predict", [w0, w1], proxy,
                                     concurrencies=haproxy.concurrencies(args.concurrency))
                for config in (c for c in KEYED if c in configs):
                    key = "bench-" + secrets.token_urlsafe(16)
                    env = keyed_env(key, KEYED[config], runner.log_dir / f"{model}-{config}-jobs")
                    with runner.gateway(f"{model}-{config}", [w0, w1], env=env) as gw:
                        runner.sweep(model, config, gw.url + "/predict", [w0, w1], gw,
                                     concurrencies=[c for c in args.concurrency if c in KEYED_CONCURRENCY]
                                     or args.concurrency, headers={"Authorization": f"Bearer {key}"},
                                     body=request_body(w0.url + "/predict"))


def keyed_env(key: str, usage_counting: str, jobs_dir: Path) -> dict[str, str]:
    """A gateway with access control on (one key) and usage counted or not. The rate limit is off, so the
    figures are the key's check and the counting, not a limit refusing the load; the job database the counts
    are written to lives in the run's own folder."""
    return {"API_KEYS": key, "RATE_LIMIT_PER_S": "0", "USAGE_COUNTING": usage_counting,
            "JOBS_DIR": str(jobs_dir)}


@contextlib.contextmanager
def log_folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="bench-logs-") as tmp:
        yield Path(tmp)


def meta(args: argparse.Namespace, started: float, started_at: str) -> dict:
    return {
        "started": started_at,
        "elapsed_s": round(time.monotonic() - started, 1),
        "command": "python -m bench " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "python -m bench",
        "machine": describe(),
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "repeat": args.repeat,
        "concurrency": args.concurrency,
        "loadgen": "wrk" if args.loadgen == "wrk" or (args.loadgen == "auto" and find_wrk()) else "python",
        "worker_env": args.worker_env,
        "gateway_env": args.gateway_env,
        "rows_per_batch_request": args.rows,
        "gateway_processes": args.gateway_processes,
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.loadgen == "auto" and not find_wrk():
        print("wrk not found (scripts/install-load-generator.sh): using the slower Python load generator",
              file=sys.stderr)
    if args.tune:
        from bench.tune import tune

        return tune(args)
    if args.profile:
        from bench.profile import profile

        return profile(args)
    if "haproxy_2" in args.configs and not args.url and not haproxy.find_haproxy():
        print("haproxy not found (scripts/install-system-deps.sh): no HAProxy anchor in this run", file=sys.stderr)
    started, started_at = time.monotonic(), dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    results: dict = {"runs": [], "inprocess": {}, "client_comparison": []}
    with log_folder() as logs:
        runner = Runner(args, logs)
        if args.url:
            runner.sweep("target", "target", args.url, [])
        else:
            for model in args.models:
                print(f"{model}: in-process limit", flush=True)
                limit = run_inprocess(MODELS[model], 64, args.inprocess_duration, args.worker_env)
                results["inprocess"][model] = limit
                print(f"  {limit['jit']['rows_per_s']:.0f} rows/s at batch 64 (jit), "
                      f"{limit['runtime']['rows_per_s']:.0f} via ModelRuntime.infer", flush=True)
                print(f"{model}: HTTP", flush=True)
                run_model(runner, model, results["client_comparison"])
        results["runs"] = runner.runs
        results["compilations_after_ready"] = runner.compilations_after_ready()
    results["meta"] = meta(args, started, started_at)
    results["targets"] = report.targets(results) if not args.url else []
    results["protocol"] = report.protocol_ratios(results)
    results["gateway_capacity"] = report.gateway_capacity(results)
    results["usage_counting"] = report.usage_counting(results)
    results["haproxy_anchor"] = haproxy.anchor(results)
    report.write_json(results, args.out)
    print(f"wrote {args.out}")
    if not args.no_docs:
        report.update_doc(args.doc, report.markdown(results) + haproxy.markdown(results["haproxy_anchor"]))
        report.plot(results, args.plot)
        print(f"wrote {args.doc} and {args.plot}")
    for r in results["protocol"]:
        print(f"  {r['model']} c={r['concurrency']}: /v2 infer / /predict, {r['where']}: {r['ratio']} "
              f"({r['infer_rps']:.0f} / {r['predict_rps']:.0f} req/s)")
    for line in (report.capacity_lines(results) + haproxy.lines(results["haproxy_anchor"])
                 + report.usage_counting_lines(results)):
        print(f"  {line}")
    for t in results["targets"]:
        verdict = {True: "pass", False: "FAIL", None: "n/a"}[t["pass"]]
        print(f"  [{verdict}] {t['target']}: {t['value']} ({t['detail']}) wanted {t['op']} {t['threshold']}")
    return results


if __name__ == "__main__":
    main()
