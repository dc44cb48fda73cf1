"""Turn a run's results into the JSON file, the Markdown block, the targets and the plot.

``python -m bench.report`` redraws the block of docs/benchmarks.md and its PNG from saved results,
without running anything again.
"""

from __future__ import annotations

import json
import operator
import re
from pathlib import Path

CONFIG_LABELS = {
    "direct_nobatch": "(a) worker direct, batching off",
    "direct_batch": "(b) worker direct, batching on",
    "direct_v2": "(b') worker direct, /v2 infer",
    "direct_batch_predict": "(b'') worker direct, /batch_predict",
    "direct_batch_predict_binary": "(b''') worker direct, /batch_predict, binary rows",
    "gateway_1": "(c) gateway + 1 worker",
    "gateway_1_v2": "(c') gateway + 1 worker, /v2 infer",
    "gateway_1_batch_predict": "(c'') gateway + 1 worker, /batch_predict",
    "gateway_2": "(d) gateway + 2 workers",
    "gateway_2_procs": "(e) gateway processes + 2 workers",
    "haproxy_2": "(f) HAProxy + 2 workers (anchor; its CPU in the gateway column)",
    "gateway_2_keys": "(g) gateway + 2 workers, an API key, usage counted",
    "gateway_2_keys_uncounted": "(g') gateway + 2 workers, an API key, usage not counted",
    "target": "target URL",
}
#: The stack's performance targets for the heavy MLP, each a figure of one run against a fixed threshold.
SERVED_SHARE_MIN, P99_MAX_MS = 0.12, 100
MODEL_LABELS = {"heavy": "heavy MLP (4-1024-1024-1024-3)", "default": "default (the model of worker/model.py)"}
_OPS = {">=": operator.ge, "<=": operator.le, "<": operator.lt}
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def _point(results: dict, model: str, config: str, concurrency: int) -> dict | None:
    for run in results["runs"]:
        if (run["model"], run["config"], run["concurrency"]) == (model, config, concurrency):
            return run
    return None


def _cpu(run: dict | None, part: str) -> float | None:
    """CPU ms per request of the gateway (``part="gateway"``) or of all workers together (``"workers"``)."""
    cpu = (run or {}).get("cpu_ms_per_request") or {}
    if part == "gateway":
        return cpu.get("gateway")
    workers = [v for k, v in cpu.items() if k.startswith("worker")]
    return sum(workers) if workers else None


def targets(results: dict) -> list[dict]:
    """The performance targets for the heavy MLP, batching's included: each a ratio, a difference or a
    cost within this run, so a slow day of a shared machine moves them less than raw req/s."""
    out: list[dict] = []

    def add(name: str, value: float | None, op: str, threshold: float, detail: str) -> None:
        passed = None if value is None else _OPS[op](value, threshold)
        out.append({"target": name, "value": None if value is None else round(value, 4), "op": op,
                    "threshold": threshold, "pass": passed, "detail": detail})

    heavy_jit = results.get("inprocess", {}).get("heavy", {}).get("jit", {})
    limit = heavy_jit.get("rows_per_s")
    d64 = _point(results, "heavy", "gateway_2", 64)
    a64, b64 = _point(results, "heavy", "direct_nobatch", 64), _point(results, "heavy", "direct_batch", 64)
    c64 = _point(results, "heavy", "gateway_1", 64)
    a1, b1 = _point(results, "heavy", "direct_nobatch", 1), _point(results, "heavy", "direct_batch", 1)
    c1 = _point(results, "heavy", "gateway_1", 1)
    if (gateway_cpu := _cpu(d64, "gateway")) is not None:
        add("gateway CPU per proxied single-row request, gateway + 2 workers, c=64 (ms)", gateway_cpu, "<=", 0.16,
            f"{gateway_cpu:.3f} ms")
    if (workers_cpu := _cpu(d64, "workers")) is not None:
        model_cpu = heavy_jit.get("cpu_ms_per_row")
        model_share = "" if model_cpu is None else f"; the model alone, in-process at batch 64: {model_cpu:.3f} ms"
        add("worker CPU per served row, gateway + 2 workers, c=64 (ms, both workers)", workers_cpu, "<=", 0.08,
            f"{workers_cpu:.3f} ms, mean batch {_fmt(d64.get('mean_batch_size'))}{model_share}")
    if d64 and limit:
        add("gateway + 2 workers, c=64: served rows/s / in-process limit at batch 64",
            d64.get("rows_per_s", d64["rps"]) / limit, ">=", SERVED_SHARE_MIN,
            f"{d64.get('rows_per_s', d64['rps']):.0f} / {limit:.0f} rows/s = "
            f"{d64.get('rows_per_s', d64['rps']) / limit:.1%}")
    if d64:
        add("gateway + 2 workers, c=64: p99 (ms)", d64["p99_ms"], "<", P99_MAX_MS, f"{d64['p99_ms']:.1f} ms")
    if b64 and c64:
        add("c=64: gateway + 1 worker / that worker direct throughput", c64["rps"] / b64["rps"], ">=", 0.7,
            f"{c64['rps']:.0f} / {b64['rps']:.0f} req/s = {c64['rps'] / b64['rps']:.2f}")
    if b1 and c1:
        add("c=1: p50 added by the gateway (ms)", c1["p50_ms"] - b1["p50_ms"], "<=", 0.5,
            f"{c1['p50_ms']:.3f} - {b1['p50_ms']:.3f} = {c1['p50_ms'] - b1['p50_ms']:.3f} ms")
    errors = sum(run["errors"] for run in results["runs"])
    add("errors over all runs (non-2xx + socket)", errors, "<=", 0, f"{errors} errors")
    after_ready = results.get("compilations_after_ready") or {}
    if after_ready:
        known = [n for n in after_ready.values() if n is not None]
        compiled = sum(known) if len(known) == len(after_ready) else None
        add("XLA compilations after ready, every worker started", compiled, "<=", 0,
            f"{'-' if compiled is None else compiled} in {len(after_ready)} workers"
            + ("" if compiled is not None else ", some not read"))
    if a64 and b64:
        add("worker direct, c=64: batching on / batching off throughput", b64["rps"] / a64["rps"], ">=",
            1.5, f"{b64['rps']:.0f} / {a64['rps']:.0f} req/s = {b64['rps'] / a64['rps']:.2f}x")
    if a1 and b1:
        add("worker direct, c=1: p50 cost of batching (ms)", b1["p50_ms"] - a1["p50_ms"], "<=", 0.5,
            f"{b1['p50_ms']:.3f} - {a1['p50_ms']:.3f} = {b1['p50_ms'] - a1['p50_ms']:.3f} ms")
    return out


def protocol_ratios(results: dict) -> list[dict]:
    """Open Inference Protocol infer against /predict on the same processes, per model and concurrency."""
    out = []
    pairs = {"direct_v2": ("direct_batch", "worker direct"), "gateway_1_v2": ("gateway_1", "gateway + 1 worker")}
    for run in results["runs"]:
        if run["config"] in pairs:
            config, where = pairs[run["config"]]
            predict = _point(results, run["model"], config, run["concurrency"])
            if predict and predict["rps"]:
                out.append({"model": run["model"], "where": where, "concurrency": run["concurrency"],
                            "infer_rps": run["rps"], "predict_rps": predict["rps"],
                            "ratio": round(run["rps"] / predict["rps"], 3)})
    return out


#: The configurations behind a gateway, and the concurrency their capacity is read at (their highest up to 64).
_GATEWAYED = ("gateway_1", "gateway_1_v2", "gateway_1_batch_predict", "gateway_2", "gateway_2_procs",
              "gateway_2_keys", "gateway_2_keys_uncounted")


def gateway_capacity(results: dict) -> list[dict]:
    """Per gateway configuration: the gateway tier's CPU per request and per row, and what one core of it
    proxies at that cost (1000 / CPU ms), at the highest concurrency measured up to 64."""
    out = []
    for model in dict.fromkeys(run["model"] for run in results["runs"]):
        for config in _GATEWAYED:
            points = [r for r in results["runs"] if (r["model"], r["config"]) == (model, config)
                      and r["concurrency"] <= 64 and _cpu(r, "gateway")]
            if not points:
                continue
            run = max(points, key=lambda r: r["concurrency"])
            ms, rows = _cpu(run, "gateway"), run.get("rows_per_request", 1)
            out.append({
                "model": model, "config": config, "concurrency": run["concurrency"], "rows_per_request": rows,
                "rps": run["rps"], "gateway_cpu_ms_per_request": ms, "gateway_cpu_ms_per_row": round(ms / rows, 4),
                "requests_per_core_s": round(1000 / ms), "rows_per_core_s": round(1000 * rows / ms),
                "gateway_cores_used": round(run["rps"] * ms / 1000, 2),
                "cpu_share": run.get("gateway_cpu_share"),
            })
    return out


def capacity_lines(results: dict) -> list[str]:
    """The rule for sizing the gateway tier, in words, from this run (heavy MLP if it ran, else the first model)."""
    capacity = results.get("gateway_capacity") or []
    if not capacity:
        return []
    model = "heavy" if any(r["model"] == "heavy" for r in capacity) else capacity[0]["model"]
    found = {r["config"]: r for r in capacity if r["model"] == model}
    lines = []
    if d := found.get("gateway_2"):
        ms = d["gateway_cpu_ms_per_request"]
        lines.append(f"{model}, (d) c={d['concurrency']}: {ms:.3f} ms of gateway CPU per single-row request, so one "
                     f"gateway core proxies ~{d['requests_per_core_s']:,} requests/s; workers serving W single-row "
                     f"requests/s need W x {ms:.3f} / 1000 gateway cores, plus headroom")
    if e := found.get("gateway_2_procs"):
        split = " / ".join(f"{x:.0%}" for x in e["cpu_share"] or [] if x is not None)
        lines.append(f"{model}, (e) c={e['concurrency']}, {len(e['cpu_share'] or [1])} processes: "
                     f"{e['gateway_cpu_ms_per_request']:.3f} ms per request (~{e['requests_per_core_s']:,} requests/s "
                     f"per core); {e['rps']:,.0f} requests/s used {e['gateway_cores_used']} gateway cores"
                     + (f", split {split}" if split else ""))
    if b := found.get("gateway_1_batch_predict"):
        lines.append(f"{model}, (c'') c={b['concurrency']}: {b['gateway_cpu_ms_per_request']:.3f} ms per "
                     f"{b['rows_per_request']}-row /batch_predict, so one gateway core carries "
                     f"~{b['rows_per_core_s']:,} rows/s that way")
    return lines


def usage_counting(results: dict) -> list[dict]:
    """Per model and concurrency of (g): the gateway's CPU per request with a key and usage counted (g), with
    the key and counting off (g'), and with no key at all (d), the same two workers behind each. (g) - (g') is
    what counting usage costs a request; (g') - (d) is what checking the key costs."""
    out = []
    for run in results["runs"]:
        if run["config"] != "gateway_2_keys":
            continue
        model, concurrency = run["model"], run["concurrency"]
        uncounted = _point(results, model, "gateway_2_keys_uncounted", concurrency)
        keyless = _point(results, model, "gateway_2", concurrency)
        cpu = {"counted": _cpu(run, "gateway"), "uncounted": _cpu(uncounted, "gateway"),
               "keyless": _cpu(keyless, "gateway")}
        counting_ms = _difference(cpu["counted"], cpu["uncounted"])
        out.append({
            "model": model, "concurrency": concurrency,
            "rps": {"counted": run["rps"], "uncounted": (uncounted or {}).get("rps"),
                    "keyless": (keyless or {}).get("rps")},
            "gateway_cpu_ms_per_request": cpu,
            "counting_ms": counting_ms,
            "counting_share": round(counting_ms / cpu["uncounted"], 3) if counting_ms is not None and cpu["uncounted"]
            else None,
            "key_check_ms": _difference(cpu["uncounted"], cpu["keyless"]),
        })
    return out


def _difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 4)


def usage_counting_lines(results: dict) -> list[str]:
    """What counting usage cost the gateway per request, in words, at each point where (g) and (g') both ran."""
    lines = []
    for r in results.get("usage_counting") or []:
        cpu = r["gateway_cpu_ms_per_request"]
        if r["counting_share"] is None:
            continue
        keyless = (f"; with no key, (d): {cpu['keyless']:.3f} ms, so the key's check costs {r['key_check_ms']:+.3f} ms"
                   if r["key_check_ms"] is not None else "")
        lines.append(f"{r['model']}, c={r['concurrency']}: counting usage costs {r['counting_ms']:+.3f} ms of gateway "
                     f"CPU per request ({cpu['counted']:.3f} ms counted, {cpu['uncounted']:.3f} ms not, "
                     f"{r['counting_share']:+.0%}){keyless}")
    return lines


def usage_counting_table(results: dict) -> str:
    lines = ["| model | c | req/s (d) no key | req/s (g') key | req/s (g) key, counted | gateway CPU ms/req (d) "
             "| (g') | (g) | counting (g) - (g') | key check (g') - (d) |",
             "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in results.get("usage_counting") or []:
        rps, cpu = r["rps"], r["gateway_cpu_ms_per_request"]
        lines.append(f"| {r['model']} | {r['concurrency']} | {_fmt(rps['keyless'], 0)} | {_fmt(rps['uncounted'], 0)} "
                     f"| {_fmt(rps['counted'], 0)} | {_fmt(cpu['keyless'], 3)} | {_fmt(cpu['uncounted'], 3)} "
                     f"| {_fmt(cpu['counted'], 3)} | {_signed(r['counting_ms'])} | {_signed(r['key_check_ms'])} |")
    return "\n".join(lines)


def write_json(results: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n")


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _signed(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:+.{digits}f}"


def results_table(results: dict) -> str:
    lines = [
        "| model | configuration | c | rows/req | req/s | rows/s | p50 ms | p95 ms | p99 ms | errors | mean batch "
        "| CPU ms/req gateway | CPU ms/req workers | CPU ms/row workers | wrk CPU |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for run in results["runs"]:
        rows = run.get("rows_per_request", 1)
        workers_cpu = _cpu(run, "workers")
        lines.append(
            f"| {run['model']} | {CONFIG_LABELS.get(run['config'], run['config'])} | {run['concurrency']} | {rows} "
            f"| {_fmt(run['rps'], 0)} | {_fmt(run.get('rows_per_s', run['rps'] * rows), 0)} "
            f"| {_fmt(run['p50_ms'], 2)} | {_fmt(run['p95_ms'], 2)} "
            f"| {_fmt(run['p99_ms'], 2)} | {run['errors']} | {_fmt(run.get('mean_batch_size'), 1)} "
            f"| {_fmt(_cpu(run, 'gateway'), 3)} | {_fmt(workers_cpu, 3)} "
            f"| {_fmt(None if workers_cpu is None else workers_cpu / rows, 4)} | {_fmt(run.get('loadgen_cpu'), 2)} |"
        )
    return "\n".join(lines)


def capacity_table(results: dict) -> str:
    lines = ["| model | configuration | c | rows/req | req/s | gateway CPU ms/req | ms/row | req/s per gateway core "
             "| rows/s per gateway core | gateway cores in use | CPU split over processes |",
             "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|---|"]
    for r in results.get("gateway_capacity") or []:
        split = " / ".join(f"{x:.0%}" for x in r["cpu_share"] if x is not None) if r["cpu_share"] else "-"
        lines.append(f"| {r['model']} | {CONFIG_LABELS.get(r['config'], r['config'])} | {r['concurrency']} "
                     f"| {r['rows_per_request']} | {_fmt(r['rps'], 0)} | {r['gateway_cpu_ms_per_request']:.3f} "
                     f"| {r['gateway_cpu_ms_per_row']:.4f} | {r['requests_per_core_s']:,} | {r['rows_per_core_s']:,} "
                     f"| {r['gateway_cores_used']} | {split} |")
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
        f"closed loop, one request = one row (`POST /predict`) except for /batch_predict "
        f"({meta.get('rows_per_batch_request', 64)} rows per request); (e) runs "
        f"{meta.get('gateway_processes', 2)} gateway processes on one socket (`GATEWAY_PROCESSES`); worker settings: "
        f"{', '.join(f'{k}={v}' for k, v in meta['worker_env'].items()) or 'defaults'}; gateway settings: "
        f"{', '.join(f'{k}={v}' for k, v in meta.get('gateway_env', {}).items()) or 'defaults'}",
        "",
    ]
    if results.get("inprocess"):
        parts += ["In-process limit (jitted `predict_batch`, one process, no HTTP):", "",
                  "| model | batch | jit rows/s | ms/call | CPU ms/row (all threads) | via ModelRuntime.infer rows/s |",
                  "|---|--:|--:|--:|--:|--:|"]
        for model, r in results["inprocess"].items():
            parts.append(f"| {model} | {r['batch']} | {_fmt(r['jit']['rows_per_s'], 0)} | "
                         f"{r['jit']['ms_per_call']:.3f} | {_fmt(r['jit'].get('cpu_ms_per_row'), 3)} | "
                         f"{_fmt(r['runtime']['rows_per_s'], 0)} |")
        parts.append("")
    if results.get("targets"):
        parts += ["Targets (heavy MLP, all from this run):", "",
                  "| target | measured | wanted | |", "|---|--:|--:|---|"]
        for t in results["targets"]:
            verdict = {True: "pass", False: "FAIL", None: "n/a"}[t["pass"]]
            parts.append(f"| {t['target']} | {t['detail']} | {t['op']} {t['threshold']} | {verdict} |")
        parts.append("")
    parts += ["All points:", "", results_table(results), ""]
    if results.get("gateway_capacity"):
        parts += ["Gateway capacity (CPU of the gateway tier per request; one core proxies 1000 / that many "
                  "requests a second):", "", capacity_table(results), ""]
        parts += [f"- {line}" for line in capacity_lines(results)] + [""]
    if results.get("usage_counting"):
        parts += ["Usage counting (gateway + 2 workers; (g) and (g') send an API key with every request, the rate "
                  "limit off, `USAGE_COUNTING` on and off; (d) has no key):", "", usage_counting_table(results), ""]
        parts += [f"- {line}" for line in usage_counting_lines(results)] + [""]
    if results.get("protocol"):
        parts += ["Open Inference Protocol (`POST /v2/models/{name}/infer`, one row, JSON) against `/predict`, "
                  "same processes:", "", "| model | where | c | /v2 infer req/s | /predict req/s | ratio |",
                  "|---|---|--:|--:|--:|--:|"]
        parts += [f"| {r['model']} | {r.get('where', 'gateway + 1 worker')} | {r['concurrency']} "
                  f"| {_fmt(r['infer_rps'], 0)} | {_fmt(r['predict_rps'], 0)} | {r['ratio']} |"
                  for r in results["protocol"]]
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
    """Rows/s and p99 against concurrency, a row of two axes per model. Each row's legend sits to the right
    of its axes, outside them, so it never covers a line whatever the figures are."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(run["model"] for run in results["runs"]))
    fig, axes = plt.subplots(len(models), 2, figsize=(15, 4 * len(models)), squeeze=False)
    for row, model in zip(axes, models, strict=True):
        configs = list(dict.fromkeys(r["config"] for r in results["runs"] if r["model"] == model))
        for config in configs:
            points = sorted((r for r in results["runs"] if (r["model"], r["config"]) == (model, config)),
                            key=lambda r: r["concurrency"])
            xs = [p["concurrency"] for p in points]
            label = CONFIG_LABELS.get(config, config)
            row[0].plot(xs, [p.get("rows_per_s", p["rps"]) for p in points], marker="o", label=label)
            row[1].plot(xs, [p["p99_ms"] for p in points], marker="o", label=label)
        limit = results.get("inprocess", {}).get(model, {}).get("jit", {}).get("rows_per_s")
        if limit and model == "heavy":
            row[0].axhline(SERVED_SHARE_MIN * limit, color="grey", ls="--", lw=1,
                           label=f"throughput target: {SERVED_SHARE_MIN:.0%} of the in-process limit")
        if model == "heavy":
            row[1].axhline(P99_MAX_MS, color="grey", ls=":", lw=1, label=f"p99 target: {P99_MAX_MS} ms")
        row[0].set_title(f"{MODEL_LABELS.get(model, model)}: throughput")
        row[0].set_ylabel("rows / s")
        row[1].set_title(f"{MODEL_LABELS.get(model, model)}: p99 latency")
        row[1].set_ylabel("p99 ms")
        row[1].set_yscale("log")
        ticks = sorted({r["concurrency"] for r in results["runs"] if r["model"] == model})
        for ax in row:
            ax.set_xscale("log", base=2)
            ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.set_xlabel("concurrent connections")
            ax.grid(True, which="both", alpha=0.3)
        handles, labels = row[0].get_legend_handles_labels()
        for handle, label in zip(*row[1].get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
        row[1].legend(handles, labels, fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    machine = results["meta"]["machine"]
    fig.suptitle(f"{machine['nproc']} x {machine['cpu']}, commit {machine['commit']}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)


def redraw(results_path: Path, doc: Path, plot_path: Path) -> None:
    """Rewrite the generated block of ``doc`` and the plot from saved results; the targets, protocol ratios
    and capacity are derived again, so a change to how they are worded or drawn needs no new run."""
    results = json.loads(results_path.read_text())
    results["targets"] = targets(results)
    results["protocol"] = protocol_ratios(results)
    results["gateway_capacity"] = gateway_capacity(results)
    results["usage_counting"] = usage_counting(results)
    from bench import haproxy  # it imports bench.stack, which the report's other users need not load

    update_doc(doc, markdown(results) + haproxy.markdown(haproxy.anchor(results)))
    plot(results, plot_path)


def main(argv: list[str] | None = None) -> None:
    import argparse

    repo = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__)
    parser.add_argument("--results", type=Path, default=repo / "bench" / "results" / "latest.json")
    parser.add_argument("--doc", type=Path, default=repo / "docs" / "benchmarks.md")
    parser.add_argument("--plot", type=Path, default=repo / "docs" / "benchmarks.png")
    args = parser.parse_args(argv)
    redraw(args.results, args.doc, args.plot)
    print(f"wrote {args.doc} and {args.plot} from {args.results}")


if __name__ == "__main__":
    main()
