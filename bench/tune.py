"""``python -m bench --tune``: which worker defaults serve the heavy MLP best on this machine.

Sweeps ``XLA_CPU_THREADS`` (unset: XLA's own pool over every core, or 1) and
``BATCH_TIMEOUT_MS`` (0, 1, 2, 5) and measures, for each pair: one worker direct
(c=1, 64), gateway + 1 worker (c=1, 64) and gateway + 2 workers (c=64). Every
pair runs ``--rounds`` times (default 2), in reverse order on odd rounds, so a
noisy neighbour on a shared machine does not favour one end of the sweep; the
table shows the median. Results go to ``bench/results/tuning.json`` and a
generated block of ``docs/benchmarks-tuning.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import statistics
import time

from bench import report
from bench.inprocess_runner import run_inprocess

THREADS = (None, "1")
TIMEOUTS_MS = ("0", "1", "2", "5")
BEGIN, END = "<!-- tune:begin -->", "<!-- tune:end -->"
POINTS = (("direct_batch", 1), ("direct_batch", 64), ("gateway_1", 1), ("gateway_1", 64), ("gateway_2", 64))


def _measure_pair(runner, env: dict[str, str]) -> list[dict]:
    out = []

    def point(config: str, concurrency: int, url: str, workers, gateway=None) -> None:
        result = runner.measure(url, concurrency, workers, gateway)
        out.append({"config": config, **result})
        print(f"    {config:13s} c={concurrency:<3d} {result['rps']:7.0f} req/s  p50 {result['p50_ms']:6.2f}  "
              f"p99 {result['p99_ms']:7.2f} ms  errors {result['errors']}  batch {result.get('mean_batch_size')}  "
              f"cpu ms/req {result.get('cpu_ms_per_request')}", flush=True)

    with runner.worker("tune-w0", "heavy", **env) as w0:
        point("direct_batch", 1, w0.url + "/predict", [w0])
        point("direct_batch", 64, w0.url + "/predict", [w0])
        with runner.gateway("tune-gw1", [w0]) as gw:
            point("gateway_1", 1, gw.url + "/predict", [w0], gw)
            point("gateway_1", 64, gw.url + "/predict", [w0], gw)
        with runner.worker("tune-w1", "heavy", worker_id="1", **env) as w1, \
                runner.gateway("tune-gw2", [w0, w1]) as gw:
            point("gateway_2", 64, gw.url + "/predict", [w0, w1], gw)
    return out


def summary_table(results: dict) -> str:
    head = "| XLA_CPU_THREADS | BATCH_TIMEOUT_MS | " + " | ".join(
        f"{report.CONFIG_LABELS[c].split(' ')[0]} c={n} req/s (p50/p99 ms)" for c, n in POINTS) + " |"
    head += " (d) c=64 CPU ms/req gateway / workers |"
    lines = [head, "|---|--:|" + "--:|" * (len(POINTS) + 1)]
    for threads, timeout in itertools.product(THREADS, TIMEOUTS_MS):
        cells = []
        for config, concurrency in POINTS:
            runs = [r for r in results["runs"] if (r["xla_cpu_threads"], r["batch_timeout_ms"], r["config"],
                                                   r["concurrency"]) == (threads, timeout, config, concurrency)]
            if not runs:
                cells.append("-")
                continue
            rps = statistics.median(r["rps"] for r in runs)
            p50 = statistics.median(r["p50_ms"] for r in runs)
            p99 = statistics.median(r["p99_ms"] for r in runs)
            cells.append(f"{rps:,.0f} ({p50:.2f}/{p99:.0f})")
        cpu = [r["cpu_ms_per_request"] for r in results["runs"]
               if (r["xla_cpu_threads"], r["batch_timeout_ms"], r["config"], r["concurrency"])
               == (threads, timeout, "gateway_2", 64) and r.get("cpu_ms_per_request")]
        if cpu:
            gateway = statistics.median(c["gateway"] for c in cpu)
            workers = statistics.median(sum(v for k, v in c.items() if k.startswith("worker")) for c in cpu)
            cells.append(f"{gateway:.3f} / {workers:.3f}")
        else:
            cells.append("-")
        lines.append(f"| {threads or 'unset'} | {timeout} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(results: dict) -> str:
    meta = results["meta"]
    limits = ", ".join(f"XLA_CPU_THREADS={k}: {v['jit']['rows_per_s']:,.0f} rows/s"
                       for k, v in results["inprocess"].items())
    return (f"Sweep of {meta['started']}, commit {meta['machine']['commit']}, `{meta['command']}`, "
            f"{meta['rounds']} round(s) of {meta['duration_s']:g} s points, median shown; heavy MLP. "
            f"In-process limit at batch 64: {limits}.\n\n{summary_table(results)}")


def tune(args: argparse.Namespace) -> dict:
    from bench.__main__ import Runner, log_folder, meta

    rounds = getattr(args, "rounds", None) or (1 if args.quick else 2)
    started, started_at = time.monotonic(), dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    results: dict = {"runs": [], "inprocess": {}}
    for threads in THREADS:
        env = {"XLA_CPU_THREADS": threads} if threads else {}
        limit = run_inprocess("worker.examples.mlp:HeavyMLP", 64, args.inprocess_duration, env)
        results["inprocess"][threads or "unset"] = limit
        print(f"in-process, XLA_CPU_THREADS={threads or 'unset'}: {limit['jit']['rows_per_s']:.0f} rows/s", flush=True)
    pairs = list(itertools.product(THREADS, TIMEOUTS_MS))
    with log_folder() as logs:
        runner = Runner(args, logs)
        for round_ in range(rounds):
            for threads, timeout in pairs if round_ % 2 == 0 else pairs[::-1]:
                print(f"round {round_ + 1}: XLA_CPU_THREADS={threads or 'unset'} BATCH_TIMEOUT_MS={timeout}",
                      flush=True)
                env = {"BATCH_TIMEOUT_MS": timeout, **({"XLA_CPU_THREADS": threads} if threads else {})}
                for run in _measure_pair(runner, env):
                    results["runs"].append({"xla_cpu_threads": threads, "batch_timeout_ms": timeout,
                                            "round": round_, "model": "heavy", **run})
    results["meta"] = meta(args, started, started_at)
    results["meta"]["rounds"] = rounds
    report.write_json(results, args.out)
    if not args.no_docs:
        report.update_doc(args.doc, markdown(results), BEGIN, END)
    print(summary_table(results))
    print(f"wrote {args.out}")
    return results
