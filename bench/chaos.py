"""``python -m bench.chaos`` (``make chaos``): break a local stack under load and count what clients see.

One ``python -m launcher`` stack (gateway + 2 workers) on free loopback ports;
each scenario runs closed-loop clients (bench/hammer.py) against it, does one
bad thing to one process, keeps the load on, and counts requests, failed
(any answer but the right one, shed answers included, except under
overload), wrong (a 200 with another answer than the model's) and the
seconds until the stack is whole again. Rows come from the served model's
/metadata example. The job scenarios (bench/chaos_outages.py) and the
database ones (bench/chaos_database.py) start stacks of their own, and so does
the model-version one (bench/chaos_versions.py: promote, rollback, canary under load). Each group
row replaces the one of its scenario in docs/reliability.md (bench/chaos_doc.py);
the table goes to stdout too, and the exit status is 1
when a scenario misses its target. ``--quick`` runs a subset with short load
(the test suite's version); ``--scenarios`` picks scenarios.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import orjson

from bench.chaos_database import DATABASE_ROWS, WIPE_ROW, database_scenarios
from bench.chaos_doc import DOC, render, write_doc
from bench.chaos_outages import (
    BROKER_ROW,
    SIDECAR_BROKER_ROW,
    STORE_ROW,
    broker_restart,
    long_store_row,
    sidecar_in_broker_outage,
    sidecar_kill,
    store_outages,
    store_restart,
)
from bench.chaos_stack import (
    Row,
    Stack,
    failure_note,
    free_port_run,
    request_row,
    start_stack,
    still_running,
    under_load,
    whole_again,
)
from bench.chaos_versions import PROMOTE_ROWS, promote_under_load
from bench.hammer import Tally, hammer
from bench.outage_servers import postgres_bin, rabbitmq_bin, s3rver_bin
from bench.stack import REPO, terminate

__all__ = ["BROKER_ROW", "SIDECAR_BROKER_ROW", "STORE_ROW", "main"]


async def worker_signalled(stack: Stack, clients: int, load_s: float, sig: signal.Signals, name: str,
                           note: str) -> Row:
    """Send ``sig`` to worker 0 under load; recovery is until every worker is healthy again."""
    victim = stack.worker_pid(0)

    async def action() -> float | None:
        since = time.monotonic()
        os.kill(victim, sig)
        await asyncio.sleep(0.5)
        return await whole_again(stack, since)

    tally, recovery = await under_load(stack, clients, load_s, action)
    return request_row(name, tally, recovery, note)


async def hung_worker(stack: Stack, clients: int, load_s: float, stopped_s: float) -> Row:
    victim = stack.worker_pid(1)

    async def action() -> float | None:
        os.kill(victim, signal.SIGSTOP)
        try:
            await asyncio.sleep(stopped_s)
        finally:
            os.kill(victim, signal.SIGCONT)
        since = time.monotonic()
        return await whole_again(stack, since)

    tally, recovery = await under_load(stack, clients, load_s + stopped_s, action)
    p100 = max(tally.ok_seconds, default=0.0)
    return request_row(f"hung worker (SIGSTOP {stopped_s:g} s)", tally, recovery,
                       f"slowest {p100 * 1000:.0f} ms; recovery: after SIGCONT")


async def gateway_restart(stack: Stack, clients: int, load_s: float) -> Row:
    victim = stack.gateway_pid()

    async def action() -> float | None:
        since = time.monotonic()
        os.kill(victim, signal.SIGTERM)
        await asyncio.sleep(0.5)

        def new_gateway(health: dict) -> bool:
            try:
                return stack.gateway_pid() != victim
            except RuntimeError:
                return False

        return await whole_again(stack, since, condition=new_gateway)

    tally, recovery = await under_load(stack, clients, load_s, action)
    return request_row("gateway restart (SIGTERM)", tally, recovery, "recovery: new gateway answers")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def overload(stack: Stack, clients: int, load_s: float) -> Row:
    """Far past capacity: the excess is shed fast with 503 + Retry-After, /gateway/health keeps answering."""
    gateway = stack.gateway_pid()
    rss_before = rss_mib(gateway)
    stop = asyncio.Event()
    health_seconds: list[float] = []
    health_failures = 0
    rss: list[tuple[float, float]] = []  # (seconds into the load, MiB)
    started = time.monotonic()

    async def watch_health() -> None:
        nonlocal health_failures
        async with httpx.AsyncClient(timeout=5) as client:
            while not stop.is_set():
                polled = time.monotonic()
                try:
                    ok = (await client.get(f"{stack.url}/gateway/health")).status_code == 200
                except httpx.HTTPError:
                    ok = False
                health_seconds.append(time.monotonic() - polled)
                health_failures += not ok
                rss.append((time.monotonic() - started, rss_mib(gateway)))
                await asyncio.sleep(0.2)

    load = asyncio.create_task(hammer(stack.url, stack.row, stack.expected, clients, stop, honour_retry_after=True))
    watcher = asyncio.create_task(watch_health())
    await asyncio.sleep(load_s)
    stop.set()
    tally = await load
    await watcher
    warm = [mib for at, mib in rss if at >= min(10.0, load_s / 2)]  # past the connection burst
    shed_p99 = Tally.percentile_ms(tally.shed_seconds, 99)
    ok_p99 = Tally.percentile_ms(tally.ok_seconds, 99)
    health_max = max(health_seconds, default=0.0) * 1000
    note = (f"{clients} clients honouring Retry-After; {tally.ok} admitted (p99 {_ms(ok_p99)}), "
            f"{tally.shed} shed with 503 + Retry-After (p99 {_ms(shed_p99)}); /gateway/health "
            f"{len(health_seconds)} polls, {health_failures} failed, slowest {health_max:.0f} ms; "
            f"gateway RSS {rss_before:.0f} MiB idle, {min(warm, default=0):.0f}-{max(warm, default=0):.0f} MiB "
            f"from {min(10.0, load_s / 2):.0f} s to the end")
    failed = tally.failed(shed_is_failure=False)
    if tally.failures:
        note += "; " + failure_note(tally)
    passed = failed == 0 and tally.wrong == 0 and tally.shed > 0 and tally.ok > 0 and health_failures == 0
    return Row("overload", tally.requests, failed, tally.wrong, None, note, passed)


async def balancers(stack: Stack, clients: int, load_s: float, log_dir: Path, slow_s: float = 0.2) -> list[Row]:
    """Both workers and one deliberately slow one behind a gateway per balancer: latency and shares."""
    rows = []
    slow_port, gateway_port = free_port_run(1), None
    slow = subprocess.Popen([sys.executable, "-m", "bench.slow_worker", str(slow_port), str(slow_s)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        for balancer in ("round_robin", "least_outstanding"):
            gateway_port = free_port_run(1)
            workers = ",".join(u.removeprefix("http://") for u in stack.worker_urls) + f",127.0.0.1:{slow_port}"
            env = {**os.environ, "PORT": str(gateway_port), "WORKERS": workers, "BALANCER": balancer,
                   "HEALTH_INTERVAL_S": "0.5", "ACCESS_LOG": "false"}
            with open(log_dir / f"gateway-{balancer}.log", "ab") as log:
                gateway = subprocess.Popen([sys.executable, "-m", "gateway"], env=env, cwd=REPO, stdout=log,
                                           stderr=subprocess.STDOUT, start_new_session=True)
            url = f"http://127.0.0.1:{gateway_port}"
            try:
                deadline = time.monotonic() + 30
                while True:
                    try:
                        if httpx.get(f"{url}/gateway/health", timeout=1).json().get("alive_backends") == 3:
                            break
                    except (httpx.HTTPError, ValueError):
                        pass
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the {balancer} gateway did not see its 3 workers")
                    await asyncio.sleep(0.1)
                stop = asyncio.Event()
                load = asyncio.create_task(hammer(url, stack.row, None, clients, stop))  # the slow one answers [1]
                await asyncio.sleep(load_s)
                stop.set()
                tally = await load
            finally:
                terminate(gateway)
            total = max(tally.ok, 1)
            share = 100 * tally.by_worker.get("slow", 0) / total
            p50, p99 = Tally.percentile_ms(tally.ok_seconds, 50), Tally.percentile_ms(tally.ok_seconds, 99)
            note = (f"2 workers + 1 answering in {slow_s * 1000:.0f} ms, {clients} clients: p50 {p50:.0f} ms, "
                    f"p99 {p99:.0f} ms, {tally.ok / load_s:.0f} req/s, {share:.1f} % to the slow one")
            failed = tally.failed(shed_is_failure=True)
            rows.append(Row(f"slow worker, {balancer}", tally.requests, failed, 0, None, note, failed == 0))
    finally:
        terminate(slow)
    return rows


async def worker_crash_loop(stack: Stack, clients: int, kills: int, load_s: float) -> Row:
    """kill -9 worker 0 each time it is back (its own /health 200, a new pid), ``kills`` times, as an
    out-of-memory killer would: the other worker and the gateway must keep serving, the launcher must keep
    restarting it. Recovery: from the last kill until every worker is healthy again."""
    survivor, gateway = stack.worker_pid(1), stack.gateway_pid()
    done: list[str] = []

    async def action() -> float | None:
        killed = stack.worker_pid(0)
        os.kill(killed, signal.SIGKILL)
        last = time.monotonic()
        for _ in range(kills - 1):
            back = await worker_back(stack, 0, killed)
            if back is None:
                done.append("worker 0 not back within 120 s")
                return None
            os.kill(back, signal.SIGKILL)
            killed, last = back, time.monotonic()
        return await whole_again(stack, last, timeout_s=180)

    tally, recovery = await under_load(stack, clients, load_s, action)
    missing = await still_running(stack)
    if not missing:
        if stack.worker_pid(1) != survivor:
            missing = "worker 1 was restarted"
        elif stack.gateway_pid() != gateway:
            missing = "the gateway was restarted"
    note = (f"{kills} kills, each as soon as worker 0 was back; recovery: last kill to worker 0 back and warm; "
            + ("worker 1 and the gateway ran throughout, stack running at the end" if not missing
               else f"stack NOT whole at the end: {missing}") + "".join(f"; {text}" for text in done))
    row = request_row(f"worker crash loop (kill -9 x{kills})", tally, recovery, note)
    row.passed = row.passed and not missing and recovery is not None and not done
    return row


async def worker_back(stack: Stack, index: int, killed: int, timeout_s: float = 120.0) -> int | None:
    """The pid of worker ``index`` once it answers /health 200 with another pid than ``killed``."""
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=1) as client:
        while time.monotonic() < deadline:
            try:
                answer = await client.get(f"{stack.worker_urls[index]}/health")
                if answer.status_code == 200 and answer.json()["pid"] != killed:
                    return answer.json()["pid"]
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            await asyncio.sleep(0.1)
    return None


#: The scenarios on the shared request stack; the crash loop comes last (a launcher that gives up on it would
#: leave the others nothing to run on).
REQUEST_SCENARIOS = ["kill", "sigterm", "hang", "gateway", "overload", "balancers", "crashloop"]
QUICK = ["kill", "sigterm", "hang", "gateway", "crashloop"]
#: Scenarios that start job stacks of their own.
JOB_SCENARIOS = ["sidecar", "broker", "store", "store-long", "sidecar-broker"]
DATABASE_SCENARIOS = ["database", "database-wipe"]
#: Model versions changed under load (bench/chaos_versions.py), on a stack of its own.
VERSION_SCENARIOS = ["promote"]
SCENARIOS = [*REQUEST_SCENARIOS, *JOB_SCENARIOS, *DATABASE_SCENARIOS, *VERSION_SCENARIOS]


async def one(row: Awaitable[Row]) -> list[Row]:
    return [await row]


async def run(args: argparse.Namespace) -> dict[str, list[Row]]:
    """The rows of the chosen scenarios by group (requests, jobs, database), each printed as it is measured."""
    log_dir = Path(args.log_dir)
    env = {"HEALTH_INTERVAL_S": "0.5", "TRY_TIMEOUT_S": "1", "ACCESS_LOG": "false",
           "MAX_IN_FLIGHT_PER_WORKER": str(args.in_flight), "MAX_CONNECTIONS_PER_WORKER": str(args.in_flight)}
    if args.jax_cache_dir:
        env["JAX_CACHE_DIR"] = args.jax_cache_dir
    chosen = args.scenarios or (QUICK if args.quick else SCENARIOS)
    groups: dict[str, list[Row]] = {"requests": [], "jobs": [], "database": [], "versions": []}

    def add(group: str, row: Row) -> None:
        print(render([row]).splitlines()[-1], flush=True)
        groups[group].append(row)

    load_s = 3.0 if args.quick else 8.0
    on_requests = [name for name in REQUEST_SCENARIOS if name in chosen]
    if on_requests:
        stack = await asyncio.to_thread(start_stack, log_dir, env)
        try:
            scenarios: dict[str, Callable[[], Awaitable[list[Row]]]] = {
                "kill": lambda: one(worker_signalled(stack, args.clients, load_s, signal.SIGKILL,
                                                     "worker kill -9", "recovery: restarted and warm")),
                "sigterm": lambda: one(worker_signalled(stack, args.clients, load_s, signal.SIGTERM, "worker SIGTERM",
                                                        "recovery: drained, restarted and warm")),
                "hang": lambda: one(hung_worker(stack, args.clients, load_s, 2.0 if args.quick else 5.0)),
                "gateway": lambda: one(gateway_restart(stack, args.clients, load_s)),
                "overload": lambda: one(overload(stack, args.overload_clients, args.overload_s)),
                "balancers": lambda: balancers(stack, 64, load_s, log_dir),
                "crashloop": lambda: one(worker_crash_loop(stack, args.clients, args.crash_kills, load_s)),
            }
            for name in on_requests:
                for row in await scenarios[name]():
                    add("requests", row)
                await whole_again(stack, time.monotonic())
        finally:
            terminate(stack.launcher, timeout_s=30)
    jobs, spread_s, down_s = (60, 6.0, 3.0) if args.quick else (300, 20.0, 8.0)
    job_scenarios: dict[str, Callable[[], Awaitable[list[Row]]]] = {
        "sidecar": lambda: one(sidecar_kill(args, env, jobs)),
        "broker": lambda: one(broker_restart(args, env, jobs, spread_s, down_s)),
        "store": lambda: one(store_restart(args, env, jobs, spread_s, down_s)),
        "store-long": lambda: store_outages(args, env, spread_s),
        "sidecar-broker": lambda: one(sidecar_in_broker_outage(args, env, args.db_backlog_jobs, args.db_backlog_rows,
                                                               spread_s, args.sidecar_broker_down_s, (4.0, 12.0))),
    }
    no_rabbitmq = "rabbitmq-server" if rabbitmq_bin() is None else None
    no_s3rver = "s3rver (scripts/install-system-deps.sh)" if s3rver_bin() is None else None
    missing = {"broker": ([BROKER_ROW], no_rabbitmq), "sidecar-broker": ([SIDECAR_BROKER_ROW], no_rabbitmq),
               "store": ([STORE_ROW], no_s3rver),
               "store-long": ([long_store_row(down) for down in args.store_down], no_s3rver)}
    for name in (name for name in JOB_SCENARIOS if name in chosen):
        scenarios_of, program = missing.get(name, ([], None))
        if program:
            for scenario in scenarios_of:
                add("jobs", Row(scenario, 0, 0, 0, None, f"not run: {program} is not installed", False))
        else:
            for row in await job_scenarios[name]():
                add("jobs", row)
    outages, wipe = "database" in chosen, "database-wipe" in chosen
    if outages or wipe:
        if postgres_bin() is None:
            for scenario in ([*DATABASE_ROWS] if outages else []) + ([WIPE_ROW] if wipe else []):
                add("database", Row(scenario, 0, 0, 0, None, "not run: the PostgreSQL server is not installed",
                                    False))
        else:
            await database_scenarios(args, env, outages, wipe, lambda row: add("database", row))
    if "promote" in chosen:
        try:
            rows = await promote_under_load(args, env)
        except (RuntimeError, TimeoutError, httpx.HTTPError) as exc:  # a step never completed: the rows say why
            rows = [Row(name, 0, 0, 0, None, f"not completed: {exc}", False) for name in PROMOTE_ROWS]
        for row in rows:
            add("versions", row)
    return groups


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a subset with short load, for the test suite")
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, help="run only these (default: all)")
    parser.add_argument("--clients", type=int, default=100, help="concurrent clients in the failure scenarios")
    parser.add_argument("--in-flight", type=int, default=100, help="MAX_IN_FLIGHT_PER_WORKER of the stack")
    parser.add_argument("--overload-clients", type=int, default=2000, help="clients of the overload scenario")
    parser.add_argument("--overload-s", type=float, default=60.0, help="seconds of the overload scenario")
    parser.add_argument("--crash-kills", type=int, help="kills of the worker crash loop (default 5, --quick 3)")
    parser.add_argument("--store-down", type=float, nargs="+", metavar="S", default=[45.0, 90.0],
                        help="seconds of each store outage of the store-long scenario, under a backlog of "
                        "--db-backlog-jobs jobs of --db-backlog-rows rows (default: 45 90)")
    parser.add_argument("--sidecar-broker-down-s", type=float, default=20.0,
                        help="seconds the broker is down while sidecars are killed (kills 4 s and 12 s in)")
    parser.add_argument("--db-down", type=float, nargs="+", metavar="S",
                        help="seconds of each database outage (default 10 60, --quick 10)")
    parser.add_argument("--db-brokers", nargs="+", choices=("embedded", "rabbitmq"), default=["embedded", "rabbitmq"],
                        help="brokers the database outages run on (the wipe runs on the first)")
    parser.add_argument("--db-backlog", nargs="+", choices=("without", "with"),
                        help="database outages without a backlog, with one, or both (default both, --quick without)")
    parser.add_argument("--db-backlog-jobs", type=int, default=60,
                        help="large jobs of a backlog (database and long store outages, the sidecar killed in a "
                        "broker outage)")
    parser.add_argument("--db-backlog-rows", type=int, default=2000, help="rows of each large job")
    parser.add_argument("--db-wipe-down-s", type=float, default=5.0,
                        help="seconds between the wipe and the restart on the empty data folder")
    parser.add_argument("--promote-clients", type=int, default=64, help="closed-loop clients of the promote scenario")
    parser.add_argument("--train-options", default="{}",
                        help="promote: the train job's options as JSON (default: the model's own defaults)")
    parser.add_argument("--promote-timeout-s", type=float, default=300.0,
                        help="promote: longest wait for the train job and its promotion")
    parser.add_argument("--switch-target-s", type=float, default=2.0,
                        help="promote: most seconds from a change to every worker serving it")
    parser.add_argument("--canary-answers", type=int,
                        help="promote: answers the canary's share is measured on (default 20000, --quick 4000)")
    parser.add_argument("--canary-tolerance", type=float, default=3.0,
                        help="promote: points the canary's measured share may be off its 10 %%")
    parser.add_argument("--settle-s", type=float, default=1.0,
                        help="promote: seconds of load after each change before the next")
    parser.add_argument("--log-dir", default=str(REPO / "bench" / "results" / "chaos"), help="process logs")
    parser.add_argument("--jax-cache-dir", default="", help="JAX_CACHE_DIR of the workers (default: theirs)")
    parser.add_argument("--no-doc", action="store_true", help=f"do not write {DOC.relative_to(REPO)}")
    args = parser.parse_args(argv)
    args.crash_kills = args.crash_kills or (3 if args.quick else 5)
    args.canary_answers = args.canary_answers or (4000 if args.quick else 20000)
    try:
        if not isinstance(orjson.loads(args.train_options), dict):
            raise ValueError
    except ValueError:
        parser.error(f"--train-options must be a JSON object, got {args.train_options!r}")
    args.db_down = args.db_down or ([10.0] if args.quick else [10.0, 60.0])
    args.db_backlog = args.db_backlog or (["without"] if args.quick else ["without", "with"])
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    groups = asyncio.run(run(args))
    rows = [row for group in groups.values() for row in group]
    print("\n" + render(rows))
    if not args.no_doc:
        write_doc(groups, argv)
        print(f"\nwrote {DOC.relative_to(REPO)}")
    missed = [row.scenario for row in rows if not row.passed]
    if missed:
        print(f"missed the target: {', '.join(missed)}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
