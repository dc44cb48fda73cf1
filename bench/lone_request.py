"""``python -m bench.lone_request``: what one proxy hop adds to a lone request, in alternated rounds on one stack.

Two workers of the model, and in front of them, side by side: the gateway (as ``make bench`` runs it),
HAProxy (bench/haproxy.py, where installed) and the least Python proxy in its two forms
(bench/reference_proxy.py: ``python_raw``, an asyncio protocol and a task per request; ``python_uvicorn``,
the same forwarding as an ASGI app under uvicorn with the gateway's HTTP protocol). Each round drives
the first worker direct and every proxy in turn, at ``--concurrency`` clients (1: the lone request),
the order reversed every other round so that no one always runs after the same neighbour. Per round, a
proxy's added p50 is its p50 less the direct p50 of that round; the summary is the median over rounds
of the added p50 and of each proxy's CPU per request (user + system, /proc).

One stack and alternation are what make the difference between proxies measurable on a shared, noisy
machine: the worker's own p50 moves by more between runs than the hops differ. The python_* rows split
the gateway's gap to HAProxy: what any Python proxy pays, what uvicorn's ASGI cycle adds, what the
gateway's own layers add. Results: ``--out`` (JSON) and a table on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path

from bench import haproxy
from bench.__main__ import MODELS, log_folder
from bench.loadgen import predict_body, run_load
from bench.machine import describe
from bench.stack import Gateway, Process, Worker, free_port

DIRECT = "direct"


def reference_proxy(name: str, server: str, workers: list[str], log_dir: Path) -> Process:
    port = free_port()
    env = {"SERVER": server, "PORT": str(port), "WORKERS": ",".join(workers)}
    return Process(name, [sys.executable, "-m", "bench.reference_proxy"], env, log_dir, port)


@contextlib.contextmanager
def stack(model: str, log_dir: Path) -> Iterator[tuple[Worker, dict[str, Process]]]:
    """The first worker and every proxy in front of both workers, by name; all stopped on exit."""
    with contextlib.ExitStack() as running:
        workers = [running.enter_context(Worker(f"w{i}", model, log_dir, worker_id=str(i))) for i in range(2)]
        addresses = [worker.address for worker in workers]
        proxies: dict[str, Process] = {
            "gateway": Gateway("gateway", addresses, log_dir, env={"LOG_LEVEL": "warning"}),
            "python_raw": reference_proxy("python_raw", "raw", addresses, log_dir),
            "python_uvicorn": reference_proxy("python_uvicorn", "uvicorn", addresses, log_dir),
        }
        if haproxy.find_haproxy():
            proxies["haproxy"] = haproxy.HAProxy("haproxy", addresses, log_dir)
        for proxy in proxies.values():
            running.enter_context(proxy)
        yield workers[0], proxies


def rounds(first: Worker, proxies: dict[str, Process], args: argparse.Namespace) -> dict[str, list[dict]]:
    """Every round's point per target: p50, p99, req/s, errors, and a proxy's CPU per request."""
    targets: dict[str, tuple[str, Process | None]] = {DIRECT: (first.url, None)}
    targets |= {name: (proxy.url, proxy) for name, proxy in proxies.items()}
    body = predict_body(first.url + "/predict")
    for url, _ in targets.values():  # warm every path: connections, the workers' compiled sizes
        run_load(url + "/predict", body, args.concurrency, args.warmup)
    points: dict[str, list[dict]] = {name: [] for name in targets}
    for number in range(args.rounds):
        order = list(targets) if number % 2 == 0 else list(reversed(targets))
        for name in order:
            url, process = targets[name]
            cpu_before = process.cpu_seconds() if process else 0.0
            result = run_load(url + "/predict", body, args.concurrency, args.duration)
            point = {"p50_ms": result.p50_ms, "p99_ms": result.p99_ms, "rps": result.rps, "errors": result.errors}
            if process is not None and result.requests:
                point["cpu_us_per_request"] = round((process.cpu_seconds() - cpu_before) / result.requests * 1e6, 1)
            points[name].append(point)
        print(f"round {number + 1}/{args.rounds}: " + ", ".join(
            f"{name} p50 {points[name][-1]['p50_ms']:.3f} ms" for name in targets), flush=True)
    return points


def summary(points: dict[str, list[dict]]) -> list[dict]:
    """Per target, medians over the rounds; a proxy's added p50 is against the direct p50 of the same round."""
    direct = [point["p50_ms"] for point in points[DIRECT]]
    rows = []
    for name, runs in points.items():
        row = {"target": name, "p50_ms": round(statistics.median(r["p50_ms"] for r in runs), 3),
               "p99_ms": round(statistics.median(r["p99_ms"] for r in runs), 3),
               "rps": round(statistics.median(r["rps"] for r in runs), 1),
               "errors": sum(r["errors"] for r in runs)}
        if name != DIRECT:
            added = [r["p50_ms"] - d for r, d in zip(runs, direct, strict=True)]
            row["added_p50_ms"] = round(statistics.median(added), 3)
            cpu = [r["cpu_us_per_request"] for r in runs if "cpu_us_per_request" in r]
            row["cpu_us_per_request"] = round(statistics.median(cpu), 1) if cpu else None
        rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| target | p50 ms | added p50 ms | CPU µs / request | req/s | p99 ms | errors |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        added = f"{r['added_p50_ms']:+.3f}" if "added_p50_ms" in r else "-"
        cpu = f"{r['cpu_us_per_request']:.0f}" if r.get("cpu_us_per_request") is not None else "-"
        lines.append(f"| {r['target']} | {r['p50_ms']:.3f} | {added} | {cpu} | {r['rps']:,.0f} | {r['p99_ms']:.2f} "
                     f"| {r['errors']} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.lone_request", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="heavy")
    parser.add_argument("--rounds", type=int, default=8, help="rounds over every target")
    parser.add_argument("--duration", type=float, default=3.0, help="measured seconds per point")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load on each target before round 1")
    parser.add_argument("--concurrency", type=int, default=1, help="clients per point")
    parser.add_argument("--out", type=Path, default=Path("bench/results/lone_request.json"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if not haproxy.find_haproxy():
        print("haproxy is not installed (scripts/install-system-deps.sh): measuring without it", flush=True)
    with log_folder() as log_dir, stack(MODELS[args.model], log_dir) as (first, proxies):
        points = rounds(first, proxies, args)
    rows = summary(points)
    results = {"model": args.model, "concurrency": args.concurrency, "rounds": args.rounds,
               "duration_s": args.duration, "machine": describe(), "summary": rows, "points": points}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(markdown(rows))
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
