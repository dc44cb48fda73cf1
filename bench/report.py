"""Turn a run's results into the JSON file, the Markdown table, the targets and the plot."""

from __future__ import annotations

import json
import operator
import re
from pathlib import Path

CONFIG_LABELS = {
    "direct_nobatch": "(a) worker direct, batching off",
    "direct_batch": "(b) worker direct, batching on",
    "batch_json": "(b64) worker direct, /batch_predict of 64 rows, JSON",
    "batch_binary": "(b64') worker direct, /batch_predict of 64 rows, binary",
    "gateway_1": "(c) gateway + 1 worker",
    "gateway_1_v2": "(c') gateway + 1 worker, /v2 infer",
    "gateway_2": "(d) gateway + 2 workers",
    "target": "target URL",
}
MODEL_LABELS = {"heavy": "heavy MLP (4-1024-1024-1024-3)", "default": "default (the model of worker/model.py)"}
_OPS = {">=": operator.ge, "<=": operator.le, "<": operator.lt}
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def _point(results: dict, model: str, config: str, concurrency: int) -> dict | None:
    for run in results["runs"]:
        if (run["model"], run["config"], run["concurrency"]) == (model, config, concurrency):
            return run
    return None


def targets(results: dict) -> list[dict]:
    """Issue 3's targets for the heavy MLP, each as a ratio or a difference within this run."""
    out: list[dict] = []

    def add(name: str, value: float | None, op: str, threshold: float, detail: str) -> None:
        passed = None if value is None else _OPS[op](value, threshold)
        out.append({"target": name, "value": None if value is None else round(value, 4), "op": op,
                    "threshold": threshold, "pass": passed, "detail": detail})

    limit = results.get("inprocess", {}).get("heavy", {}).get("jit", {}).get("rows_per_s")
    d64 = _point(results, "heavy", "gateway_2", 64)
    a64, b64 = _point(results, "heavy", "direct_nobatch", 64), _point(results, "heavy", "direct_batch", 64)
    c64 = _point(results, "heavy", "gateway_1", 64)
    a1, b1 = _point(results, "heavy", "direct_nobatch", 1), _point(results, "heavy", "direct_batch", 1)
    c1 = _point(results, "heavy", "gateway_1", 1)
    if d64 and limit:
        add("gateway + 2 workers, c=64: served rows/s / in-process limit at batch 64",
            d64["rps"] / limit, ">=", 0.08, f"{d64['rps']:.0f} / {limit:.0f} rows/s")
    if d64:
        add("gateway + 2 workers, c=64: p99 (ms)", d64["p99_ms"], "<", 150, f"{d64['p99_ms']:.1f} ms")
    if a64 and b64:
        add("worker direct, c=64: batching on / batching off throughput", b64["rps"] / a64["rps"], ">=", 1.5,
            f"{b64['rps']:.0f} / {a64['rps']:.0f} req/s")
    if a1 and b1:
        add("worker direct, c=1: p50 cost of batching (ms)", b1["p50_ms"] - a1["p50_ms"], "<=", 0.5,
            f"{b1['p50_ms']:.3f} - {a1['p50_ms']:.3f} ms")
    if b64 and c64:
        add("c=64: gateway + 1 worker / that worker direct throughput", c64["rps"] / b64["rps"], ">=", 0.5,
            f"{c64['rps']:.0f} / {b64['rps']:.0f} req/s")
    if b1 and c1:
        add("c=1: p50 added by the gateway (ms)", c1["p50_ms"] - b1["p50_ms"], "<=", 1.0,
            f"{c1['p50_ms']:.3f} - {b1['p50_ms']:.3f} ms")
    errors = sum(run["errors"] for run in results["runs"])
    add("errors over all runs (non-2xx + socket)", errors, "<=", 0, f"{errors} errors")
    return out


def protocol_ratios(results: dict) -> list[dict]:
    """Open Inference Protocol infer against /predict, same gateway and worker, per model and concurrency."""
    out = []
    for run in results["runs"]:
        if run["config"] == "gateway_1_v2":
            predict = _point(results, run["model"], "gateway_1", run["concurrency"])
            if predict and predict["rps"]:
                out.append({"model": run["model"], "concurrency": run["concurrency"], "infer_rps": run["rps"],
                            "predict_rps": predict["rps"], "ratio": round(run["rps"] / predict["rps"], 3)})
    return out


def batch_rows(results: dict) -> list[dict]:
    """The /batch_predict points: rows/s and the worker's CPU per row, JSON and binary bodies side by side."""
    out = []
    for run in results["runs"]:
        rows = run.get("rows_per_request", 1)
        if rows > 1:
            cpu = run.get("cpu_ms_per_request") or {}
            worker = sum(v for k, v in cpu.items() if k.startswith("worker")) if cpu else None
            out.append({"model": run["model"], "config": run["config"], "concurrency": run["concurrency"],
                        "rows_per_request": rows, "rows_per_s": run["rps"] * rows, "p50_ms": run["p50_ms"],
                        "p99_ms": run["p99_ms"], "cpu_ms_per_row": None if worker is None else round(worker / rows, 4)})
    return out


def write_json(results: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n")


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def results_table(results: dict) -> str:
    lines = [
        "| model | configuration | c | req/s | p50 ms | p95 ms | p99 ms | errors | mean batch "
        "| CPU ms/req gateway | CPU ms/req workers | wrk CPU |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for run in results["runs"]:
        cpu = run.get("cpu_ms_per_request") or {}
        workers_cpu = sum(v for k, v in cpu.items() if k.startswith("worker")) if cpu else None
        lines.append(
            f"| {run['model']} | {CONFIG_LABELS.get(run['config'], run['config'])} | {run['concurrency']} "
            f"| {_fmt(run['rps'], 0)} | {_fmt(run['p50_ms'], 2)} | {_fmt(run['p95_ms'], 2)} "
            f"| {_fmt(run['p99_ms'], 2)} | {run['errors']} | {_fmt(run.get('mean_batch_size'), 1)} "
            f"| {_fmt(cpu.get('gateway'), 3)} | {_fmt(workers_cpu, 3)} | {_fmt(run.get('loadgen_cpu'), 2)} |"
        )
    return "\n".join(lines)


def markdown(results: dict) -> str:
    meta, machine = results["meta"], results["meta"]["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in machine["packages"].items() if v)
    parts = [
        f"Run of {meta['started']} (commit {machine['commit']}"
        f"{', uncommitted changes' if machine['tree_dirty'] else ''}), "
        f"{meta['elapsed_s']:.0f} s in all.",
        "",
        f"- command: `{meta['command']}`",
        f"- machine: {machine['nproc']} CPUs ({machine['cpu']}), {machine['memory_gib']} GiB, {machine['os']}, "
        f"load average at start {', '.join(f'{x:.2f}' for x in machine['loadavg_at_start'])}",
        f"- versions: Python {machine['python']}, {versions}; load generator: {machine['wrk'] or meta['loadgen']}",
        f"- each point: {meta['warmup_s']:g} s warm-up (discarded), then {meta.get('repeat', 1)} x "
        f"{meta['duration_s']:g} s measured (the run of median req/s is shown), "
        f"closed loop, one request = one row (`POST /predict`); worker settings: "
        f"{', '.join(f'{k}={v}' for k, v in meta['worker_env'].items()) or 'defaults'}",
        "",
    ]
    if results.get("inprocess"):
        parts += ["In-process limit (jitted `predict_batch`, one process, no HTTP):", "",
                  "| model | batch | jit rows/s | ms/call | via ModelRuntime.infer rows/s |", "|---|--:|--:|--:|--:|"]
        for model, r in results["inprocess"].items():
            parts.append(f"| {model} | {r['batch']} | {_fmt(r['jit']['rows_per_s'], 0)} | "
                         f"{r['jit']['ms_per_call']:.3f} | {_fmt(r['runtime']['rows_per_s'], 0)} |")
        parts.append("")
    if results.get("targets"):
        parts += ["Targets (heavy MLP, all from this run):", "",
                  "| target | measured | wanted | |", "|---|--:|--:|---|"]
        for t in results["targets"]:
            verdict = {True: "pass", False: "FAIL", None: "n/a"}[t["pass"]]
            parts.append(f"| {t['target']} | {t['value']} ({t['detail']}) | {t['op']} {t['threshold']} | {verdict} |")
        parts.append("")
    parts += ["All points:", "", results_table(results), ""]
    if batches := batch_rows(results):
        parts += ["`/batch_predict` with several rows per request (worker direct): CPU per row", "",
                  "| model | configuration | c | rows/req | rows/s | p50 ms | p99 ms | CPU ms/row worker |",
                  "|---|---|--:|--:|--:|--:|--:|--:|"]
        parts += [f"| {r['model']} | {CONFIG_LABELS.get(r['config'], r['config'])} | {r['concurrency']} "
                  f"| {r['rows_per_request']} | {_fmt(r['rows_per_s'], 0)} | {_fmt(r['p50_ms'], 2)} "
                  f"| {_fmt(r['p99_ms'], 2)} | {_fmt(r['cpu_ms_per_row'], 4)} |" for r in batches]
        parts.append("")
    if results.get("protocol"):
        parts += ["Open Inference Protocol (`POST /v2/models/{name}/infer`, one row, JSON) against `/predict`, "
                  "gateway + 1 worker:", "", "| model | c | /v2 infer req/s | /predict req/s | ratio |",
                  "|---|--:|--:|--:|--:|"]
        parts += [f"| {r['model']} | {r['concurrency']} | {_fmt(r['infer_rps'], 0)} | {_fmt(r['predict_rps'], 0)} "
                  f"| {r['ratio']} |" for r in results["protocol"]]
        parts.append("")
    if results.get("client_comparison"):
        parts += ["Proxy client of the gateway (gateway + 1 worker, same worker, back to back):", "",
                  "| model | client | c | req/s | p50 ms | p99 ms | errors | CPU ms/req gateway |",
                  "|---|---|--:|--:|--:|--:|--:|--:|"]
        for r in results["client_comparison"]:
            gateway_cpu = (r.get("cpu_ms_per_request") or {}).get("gateway")
            parts.append(f"| {r['model']} | {r['client']} | {r['concurrency']} | {_fmt(r['rps'], 0)} "
                         f"| {_fmt(r['p50_ms'], 2)} | {_fmt(r['p99_ms'], 2)} | {r['errors']} "
                         f"| {_fmt(gateway_cpu, 3)} |")
        parts.append("")
    return "\n".join(parts)


def update_doc(doc: Path, generated: str, begin: str = BEGIN, end: str = END) -> None:
    """Replace the generated block of ``doc`` (between the markers), keeping the prose around it."""
    block = f"{begin}\n{generated}\n{end}"
    text = doc.read_text() if doc.exists() else f"# Benchmarks\n\n{block}\n"
    if begin in text and end in text:
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + f"\n\n{block}\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(run["model"] for run in results["runs"]))
    fig, axes = plt.subplots(len(models), 2, figsize=(11, 4 * len(models)), squeeze=False)
    for row, model in zip(axes, models, strict=True):
        configs = list(dict.fromkeys(r["config"] for r in results["runs"]
                                     if r["model"] == model and r.get("rows_per_request", 1) == 1))
        for config in configs:
            points = sorted((r for r in results["runs"] if (r["model"], r["config"]) == (model, config)),
                            key=lambda r: r["concurrency"])
            xs = [p["concurrency"] for p in points]
            label = CONFIG_LABELS.get(config, config)
            row[0].plot(xs, [p["rps"] for p in points], marker="o", label=label)
            row[1].plot(xs, [p["p99_ms"] for p in points], marker="o", label=label)
        limit = results.get("inprocess", {}).get(model, {}).get("jit", {}).get("rows_per_s")
        if limit and model == "heavy":
            row[0].axhline(0.08 * limit, color="grey", ls="--", lw=1, label="8% of in-process limit")
        if model == "heavy":
            row[1].axhline(150, color="grey", ls=":", lw=1, label="150 ms")
        row[0].set_title(f"{MODEL_LABELS.get(model, model)}: throughput")
        row[0].set_ylabel("requests (rows) / s")
        row[1].set_title(f"{MODEL_LABELS.get(model, model)}: p99 latency")
        row[1].set_ylabel("p99 ms")
        row[1].set_yscale("log")
        for ax in row:
            ax.set_xscale("log", base=2)
            ax.set_xlabel("concurrent connections")
            ax.grid(True, which="both", alpha=0.3)
        row[0].legend(fontsize=8)
    machine = results["meta"]["machine"]
    fig.suptitle(f"{machine['nproc']} x {machine['cpu']}, commit {machine['commit']}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
