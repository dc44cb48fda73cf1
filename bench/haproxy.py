"""HAProxy in front of the same workers: the anchor ``make bench`` holds the gateway's hop against.

HAProxy (Debian's package, ``scripts/install-system-deps.sh``) is a best-in-class
C proxy: what it adds to a lone request's latency is about the least a proxy hop
can cost, and its throughput under load shows what batching in our gateway buys.
It runs as a proxy for this comparison would be tuned: one thread (the gateway
is one process), round-robin over the workers, idle connections to them reused
by any client (``http-reuse always``), no health checks or logs on the path.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from bench.stack import Process, free_port

#: Client counts the anchor is measured at: the lone request and the loaded stack.
ANCHOR_CONCURRENCY = (1, 64)
TIMEOUT_S = 60


def find_haproxy() -> str | None:
    return shutil.which("haproxy")


def config(port: int, workers: list[str], maxconn: int = 4096) -> str:
    """The configuration text: ``workers`` are ``host:port`` addresses; ``maxconn`` bounds client connections
    (HAProxy needs two descriptors for each, under the open-file limit)."""
    servers = "\n".join(f"    server w{i} {address}" for i, address in enumerate(workers))
    return f"""global
    nbthread 1
    maxconn {maxconn}

defaults
    mode http
    timeout connect 5s
    timeout client {TIMEOUT_S}s
    timeout server {TIMEOUT_S}s
    timeout http-keep-alive {TIMEOUT_S}s

frontend bench
    bind 127.0.0.1:{port}
    default_backend workers

backend workers
    balance roundrobin
    http-reuse always
{servers}
"""


class HAProxy(Process):
    """HAProxy in the foreground (``-db``) on a free loopback port; ready once a worker's /health answers
    through it."""

    def __init__(self, name: str, workers: list[str], log_dir: Path) -> None:
        binary = find_haproxy()
        if binary is None:
            raise RuntimeError("haproxy is not installed: run scripts/install-system-deps.sh")
        port = free_port()
        path = log_dir / f"{name}.cfg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(config(port, workers))
        super().__init__(name, [binary, "-db", "-f", str(path)], {}, log_dir, port)


def concurrencies(asked: list[int]) -> list[int]:
    """The anchor's client counts among those asked for; all of them where none is an anchor count."""
    return [c for c in asked if c in ANCHOR_CONCURRENCY] or list(asked)


def _point(runs: list[dict], model: str, config: str, concurrency: int) -> dict | None:
    return next((r for r in runs if (r["model"], r["config"], r["concurrency"]) == (model, config, concurrency)),
                None)


def anchor(results: dict) -> list[dict]:
    """Per model and client count where both ran: our gateway against HAProxy, in front of the same two
    workers; at one client, the p50 each adds over a worker direct (batching on), where that ran (under
    load the workers' queue, not the hop, sets the p50)."""
    out = []
    runs = results["runs"]
    for run in runs:
        if run["config"] != "haproxy_2":
            continue
        model, c = run["model"], run["concurrency"]
        ours, direct = _point(runs, model, "gateway_2", c), _point(runs, model, "direct_batch", c)
        if ours is None:
            continue
        row = {"model": model, "concurrency": c,
               "gateway_rps": ours["rps"], "haproxy_rps": run["rps"],
               "gateway_p50_ms": ours["p50_ms"], "haproxy_p50_ms": run["p50_ms"],
               "gateway_p99_ms": ours["p99_ms"], "haproxy_p99_ms": run["p99_ms"],
               "rps_ratio": round(ours["rps"] / run["rps"], 3) if run["rps"] else None}
        if direct is not None and c == 1:
            row["direct_p50_ms"] = direct["p50_ms"]
            row["gateway_added_p50_ms"] = round(ours["p50_ms"] - direct["p50_ms"], 3)
            row["haproxy_added_p50_ms"] = round(run["p50_ms"] - direct["p50_ms"], 3)
        out.append(row)
    return out


def lines(rows: list[dict]) -> list[str]:
    """One sentence per row of :func:`anchor`."""
    out = []
    for r in rows:
        added = ""
        if "direct_p50_ms" in r:
            added = (f"; p50 added over the worker direct ({r['direct_p50_ms']:.2f} ms): gateway "
                     f"{r['gateway_added_p50_ms']:.3f} ms, HAProxy {r['haproxy_added_p50_ms']:.3f} ms")
        out.append(f"{r['model']} c={r['concurrency']}: gateway {r['gateway_rps']:,.0f} req/s, p50 "
                   f"{r['gateway_p50_ms']:.2f}, p99 {r['gateway_p99_ms']:.2f} ms; HAProxy {r['haproxy_rps']:,.0f} "
                   f"req/s, p50 {r['haproxy_p50_ms']:.2f}, p99 {r['haproxy_p99_ms']:.2f} ms; throughput ratio "
                   f"{r['rps_ratio']}{added}")
    return out


def markdown(rows: list[dict]) -> str:
    """The anchor's section of the generated block (empty without rows)."""
    if not rows:
        return ""
    return "\n".join(["HAProxy anchor (HAProxy, one thread, round-robin, `http-reuse always`, in front of the same "
                      "two workers as (d)):", "", *(f"- {line}" for line in lines(rows)), ""])
