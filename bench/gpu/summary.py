"""The GPU kit's verdicts and its Markdown table, from the results of one run.

Two targets, both ratios within the run: served rows/s through the gateway
against the in-process limit at the batch size the batcher reached, and the
GPU's busy share at the most clients. On a CPU run the second is n/a.
"""

from __future__ import annotations

import math

#: Served rows/s through the gateway at least this share of the in-process limit at the batch reached.
SERVED_SHARE_MIN = 0.5
#: The GPU busy at least this share of the time (nvidia-smi utilization.gpu) at the most clients.
GPU_BUSY_MIN_PCT = 70.0
CONFIG_LABELS = {
    "direct": "worker direct (the first worker)",
    "gateway_per_gpu": "gateway + one worker per GPU",
    "gateway_shared": "gateway + two workers sharing GPU 0",
}


def limit_at(inprocess: dict, batch: float | None) -> dict | None:
    """The in-process measurement at the measured batch size nearest ``batch`` (on a log scale)."""
    measured = inprocess.get("batches") or []
    if not measured or not batch:
        return None
    return min(measured, key=lambda m: abs(math.log(m["batch"]) - math.log(max(batch, 1.0))))


def gpu_busy(point: dict) -> float | None:
    """Mean utilisation over the GPUs sampled during the point, in %."""
    gpus = point.get("gpu") or {}
    return round(sum(g["util_mean_pct"] for g in gpus.values()) / len(gpus), 1) if gpus else None


def annotate(results: dict) -> None:
    """Add to every point the in-process limit it is compared with and its share of it."""
    for point in results["points"]:
        limit = limit_at(results["inprocess"], point.get("mean_batch_size"))
        if limit:
            point["limit_batch"] = limit["batch"]
            point["served_share"] = round(point["rows_per_s"] / limit["jit"]["rows_per_s"], 4)
        point["gpu_busy_pct"] = gpu_busy(point)


def targets(results: dict) -> list[dict]:
    """The verdicts at the highest concurrency of ``gateway_per_gpu``; ``pass`` is None where not measured."""
    points = [p for p in results["points"] if p["config"] == "gateway_per_gpu"]
    if not points:
        return []
    top = max(points, key=lambda p: p["concurrency"])
    share, busy = top.get("served_share"), top.get("gpu_busy_pct")
    return [
        {"target": f"gateway + one worker per GPU, c={top['concurrency']}: served rows/s / in-process limit at "
                   f"the batch reached", "value": share, "op": ">=", "threshold": SERVED_SHARE_MIN,
         "pass": None if share is None else share >= SERVED_SHARE_MIN,
         "detail": f"{top['rows_per_s']:.0f} rows/s, mean batch {top.get('mean_batch_size')}, limit taken at batch "
                   f"{top.get('limit_batch', '-')}"},
        {"target": f"gateway + one worker per GPU, c={top['concurrency']}: GPU busy (%)", "value": busy,
         "op": ">=", "threshold": GPU_BUSY_MIN_PCT, "pass": None if busy is None else busy >= GPU_BUSY_MIN_PCT,
         "detail": "utilization.gpu (NVML), mean over the point" if busy is not None else "no GPU read"},
    ]


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _cpu(point: dict, part: str) -> float | None:
    cpu = point.get("cpu_ms_per_request") or {}
    if part == "gateway":
        return cpu.get("gateway")
    workers = [v for k, v in cpu.items() if k.startswith("worker")]
    return sum(workers) if workers else None


def profile_lines(profile: dict, top: int = 5) -> list[str]:
    """The py-spy profile in Markdown: per process, the parts of the stack and the functions that hold it."""
    lines = [f"Profile (py-spy, gateway + one worker per GPU, c={profile['concurrency']}, "
             f"{profile['rps']:,.0f} req/s while sampled):", ""]
    for process in ("gateway", "worker"):
        found = profile.get(process) or {}
        if "error" in found:
            lines.append(f"- {process}: no profile ({found['error'].strip().splitlines()[-1]})")
            continue
        parts = ", ".join(f"{name} {share:.0%}" for name, share in list(found["inclusive_share"].items())[:top])
        functions = ", ".join(f"`{f['function']}` {f['share']:.0%}" for f in found["self_top"][:top])
        lines.append(f"- {process}, {found['samples']} samples: by part (inclusive) {parts or '-'}; "
                     f"by function (self) {functions or '-'}")
    return lines


def markdown(results: dict) -> str:
    meta, inprocess = results["meta"], results["inprocess"]
    lines = [
        f"Run of {meta['started']} on {inprocess['device']} ({inprocess['platform']}), {meta['gpus']} GPU(s), "
        f"{meta['machine']['nproc']} CPUs, commit {meta['machine']['commit']}; model `{meta['model']}`; "
        f"{meta['duration_s']:g} s per point after {meta['warmup_s']:g} s warm-up; load generator "
        f"{meta['loadgen']}; worker settings: {', '.join(f'{k}={v}' for k, v in meta['worker_env'].items())}.",
        "",
        "In-process limit (jitted `predict_batch` on a device array; `ModelRuntime.infer` adds padding and host "
        "copies):",
        "",
        "| batch | jit rows/s | ms/call | via ModelRuntime.infer rows/s |",
        "|--:|--:|--:|--:|",
    ]
    lines += [f"| {m['batch']} | {_fmt(m['jit']['rows_per_s'])} | {m['jit']['ms_per_call']:.3f} "
              f"| {_fmt(m['runtime']['rows_per_s'])} |" for m in inprocess["batches"]]
    lines += ["", "| configuration | c | req/s | rows/s | p50 ms | p99 ms | mean batch | share of limit "
              "| GPU busy % | model call ms/batch | in model call % | queue wait ms | CPU ms/req gateway "
              "| CPU ms/req workers | load generator CPU | errors |",
              "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for p in results["points"]:
        share, timing = p.get("served_share"), p.get("worker_time") or {}
        in_call = timing.get("in_model_call_share")
        lines.append(
            f"| {CONFIG_LABELS.get(p['config'], p['config'])} | {p['concurrency']} | {_fmt(p['rps'])} "
            f"| {_fmt(p['rows_per_s'])} | {p['p50_ms']:.2f} | {p['p99_ms']:.2f} | {_fmt(p.get('mean_batch_size'), 1)} "
            f"| {'-' if share is None else f'{share:.0%}'} | {_fmt(p.get('gpu_busy_pct'), 1)} "
            f"| {_fmt(timing.get('model_call_ms_per_batch'), 3)} | {_fmt(None if in_call is None else in_call * 100)} "
            f"| {_fmt(timing.get('queue_wait_ms_mean'), 3)} "
            f"| {_fmt(_cpu(p, 'gateway'), 3)} | {_fmt(_cpu(p, 'workers'), 3)} | {_fmt(p.get('loadgen_cpu'), 2)} "
            f"| {p['errors']} |")
    if results.get("profile"):
        lines += ["", *profile_lines(results["profile"])]
    if results.get("targets"):
        lines += ["", "| target | measured | wanted | |", "|---|--:|--:|---|"]
        for t in results["targets"]:
            verdict = {True: "pass", False: "FAIL", None: "n/a"}[t["pass"]]
            value = "-" if t["value"] is None else t["value"]
            lines.append(f"| {t['target']} | {value} ({t['detail']}) | {t['op']} {t['threshold']} | {verdict} |")
    return "\n".join(lines) + "\n"
