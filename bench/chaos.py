"""``python -m bench.chaos`` (``make chaos``): break a local stack under load and count what clients see.

One ``python -m launcher`` stack (gateway + 2 workers) on free loopback ports;
each scenario runs closed-loop clients (bench/hammer.py) against it, does one
bad thing to one process, keeps the load on, and counts requests, failed
(any answer but the right one, shed answers included, except under
overload), wrong (a 200 with another answer than the model's) and the
seconds until the stack is whole again. Rows come from the served model's
/metadata example. The table goes to stdout and to docs/reliability.md; the
exit status is 1 when a scenario misses its target. ``--quick`` runs a
subset with short load (the test suite's version).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.chaos_jobs import outage, sidecar_kill_9
from bench.hammer import Tally, comparable, hammer
from bench.outage_servers import RabbitNode, S3Server, rabbitmq_bin, s3rver_bin
from bench.stack import REPO, children_running, terminate

DOC = REPO / "docs" / "reliability.md"


@dataclass
class Row:
    scenario: str
    requests: int
    failed: int
    wrong: int
    recovery_s: float | None
    note: str
    passed: bool
    lost: int | None = None


@dataclass
class Stack:
    url: str
    worker_urls: list[str]
    launcher: subprocess.Popen
    row: dict
    expected: dict

    def gateway_pid(self) -> int:
        return self.child_pid(b"gateway")

    def child_pid(self, module: bytes) -> int:
        """The first child of the launcher running ``python -m <module>``."""
        for pid in children_running(self.launcher.pid, module):
            return pid
        raise RuntimeError(f"no {module.decode()} process under the launcher")

    def worker_pid(self, index: int) -> int:
        return httpx.get(f"{self.worker_urls[index]}/health", timeout=5).json()["pid"]


def free_port_run(length: int) -> int:
    """A port p such that p .. p+length-1 are free on loopback now."""
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            start = sock.getsockname()[1]
        if start + length < 65536 and all(_free(start + i) for i in range(length)):
            return start
    raise RuntimeError("no run of free ports")


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def start_stack(log_dir: Path, env: dict[str, str], sidecars: bool = False, log_name: str = "") -> Stack:
    port = free_port_run(3)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / (log_name or ("launcher-jobs.log" if sidecars else "launcher.log"))
    with open(log_path, "wb") as log:
        launcher = subprocess.Popen(
            [sys.executable, "-m", "launcher", "--workers", "2", "--port", str(port),
             *([] if sidecars else ["--no-sidecars"])],
            env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    try:
        while "ready in" not in log_path.read_text():
            if launcher.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the stack did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        workers = [f"http://127.0.0.1:{port + 1}", f"http://127.0.0.1:{port + 2}"]
        example = httpx.get(f"{workers[0]}/metadata", timeout=10).raise_for_status().json()["example"]
        row = {"input_data": example["input_data"]}
        expected = comparable(httpx.post(f"{workers[0]}/predict", json=row, timeout=10).raise_for_status().json())
    except BaseException:
        terminate(launcher, timeout_s=30)
        raise
    return Stack(url, workers, launcher, row, expected)


async def whole_again(stack: Stack, since: float, timeout_s: float = 120.0,
                      condition: Callable[[dict], bool] | None = None) -> float | None:
    """Seconds from ``since`` until /gateway/health reports every worker healthy (and ``condition``)."""
    async with httpx.AsyncClient(timeout=2) as client:
        while time.monotonic() - since < timeout_s:
            try:
                health = (await client.get(f"{stack.url}/gateway/health")).json()
                if health["status"] == "healthy" and (condition is None or condition(health)):
                    return time.monotonic() - since
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            await asyncio.sleep(0.1)
    return None


async def under_load(stack: Stack, clients: int, load_s: float, action: Callable[[], Awaitable[float | None]],
                     url: str | None = None) -> tuple[Tally, float | None]:
    """Load for ``load_s`` with ``action`` 1 s in; the action returns the recovery seconds."""
    stop = asyncio.Event()
    load = asyncio.create_task(hammer(url or stack.url, stack.row, stack.expected, clients, stop))
    await asyncio.sleep(1.0)
    recovery = await action()
    await asyncio.sleep(max(0.0, load_s - 1.0))
    stop.set()
    return await load, recovery


def failure_note(tally: Tally) -> str:
    if not tally.failures:
        return ""
    kinds: dict[str, int] = {}
    for failure in tally.failures:
        kinds[failure[:80]] = kinds.get(failure[:80], 0) + 1
    return "; ".join(f"{count}x {kind}" for kind, count in sorted(kinds.items(), key=lambda kv: -kv[1])[:3])


def request_row(name: str, tally: Tally, recovery: float | None, note: str = "") -> Row:
    failed = tally.failed(shed_is_failure=True)
    p99 = Tally.percentile_ms(tally.ok_seconds, 99)
    detail = [f"p99 {p99:.0f} ms" if p99 is not None else "", note, failure_note(tally)]
    return Row(name, tally.requests, failed, tally.wrong, recovery, "; ".join(d for d in detail if d),
               failed == 0 and tally.wrong == 0 and tally.ok > 0)


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


async def sidecar_kill(args: argparse.Namespace, env: dict[str, str], jobs: int) -> Row:
    """Its own stack with sidecars (embedded broker, local store): kill -9 one sidecar mid-submission."""
    log_dir = Path(args.log_dir)
    env = {**env, "JOBS_DIR": str(log_dir / f"jobs-{time.time_ns()}"), "EMBEDDED_VISIBILITY_TIMEOUT_S": "3"}
    stack = await asyncio.to_thread(start_stack, log_dir, env, True)
    try:
        counts, recovery = await sidecar_kill_9(stack.url, stack.child_pid(b"jobs.sidecar"), jobs, timeout_s=120)
    finally:
        terminate(stack.launcher, timeout_s=30)
    bad = counts["failed"] + counts["lost"] + counts["wrong"] + counts["duplicated"]
    note = (f"embedded broker, local store, lease 3 s; {counts['duplicated']} duplicated; recovery: kill to last "
            f"job done" + (f"; e.g. {', '.join(map(str, counts['examples']))}" if counts["examples"] else ""))
    return Row("sidecar kill -9 (jobs)", jobs, counts["failed"], counts["wrong"], recovery, note, bad == 0,
               lost=counts["lost"])


BROKER_ROW, STORE_ROW = "broker restart (jobs)", "store restart (jobs)"
#: Rows of each job in the outage scenarios: enough that a backlog is queued and running when the outage begins.
ROWS_PER_JOB = 200


def outage_row(name: str, counts: dict, jobs: int, detail: str) -> Row:
    """A job outage's row: recovery is from the restart to the last job done; 503s are expected, bad ones not."""
    bad = counts["failed"] + counts["lost"] + counts["wrong"] + counts["duplicated"] + counts["bad_503"]
    note = "; ".join([
        f"{detail} (stopping took {counts['stop_s']:.1f} s, starting {counts['start_s']:.1f} s)",
        f"{counts['backlog']} jobs queued or running as it went down",
        f"{counts['duplicated']} duplicated",
        f"{counts['post_503']} POST /jobs and {counts['get_503']} GET answered 503 "
        f"({counts['bad_503']} without Retry-After or the error body)",
        f"{counts['redelivered']} jobs started twice",
        f"first job accepted {counts['first_s']:.1f} s after the restart began",
        "recovery: restart to last job done",
        *([f"e.g. {', '.join(map(str, counts['examples']))}"] if counts["examples"] else []),
    ])
    return Row(name, jobs, counts["failed"], counts["wrong"], counts["last_s"], note, bad == 0, lost=counts["lost"])


async def _outage_of(args: argparse.Namespace, env: dict[str, str], log_name: str, jobs: int, spread_s: float,
                     down_s: float, stop: Callable[[], None], start: Callable[[], None]) -> dict:
    """A stack of its own with ``env``, under job load, while ``stop`` ... ``down_s`` ... ``start`` break a server."""
    env = {**env, "JOBS_DIR": str(Path(args.log_dir) / f"jobs-{time.time_ns()}")}
    stack = await asyncio.to_thread(start_stack, Path(args.log_dir), env, True, log_name)
    try:
        return await outage(stack.url, jobs, spread_s, down_s, stop, start, timeout_s=120, rows_per_job=ROWS_PER_JOB)
    finally:
        terminate(stack.launcher, timeout_s=30)


async def broker_restart(args: argparse.Namespace, env: dict[str, str], jobs: int, spread_s: float,
                         down_s: float) -> Row:
    """A stack on a RabbitMQ node of its own (never the shared one): ``stop_app``, ``down_s``, ``start_app``."""
    with tempfile.TemporaryDirectory(prefix="chaos-rabbitmq-") as folder:
        node = RabbitNode(Path(folder))
        await asyncio.to_thread(node.start)
        try:
            env = {**env, "AMQP_URL": f"{node.url}?reconnect_interval=1", "JOB_QUEUE": f"chaos-{time.time_ns()}"}
            counts = await _outage_of(args, env, "launcher-broker.log", jobs, spread_s, down_s,
                                      node.stop_app, node.start_app)
        finally:
            await asyncio.to_thread(node.close)
    return outage_row(BROKER_ROW, counts, jobs,
                      f"own RabbitMQ node; {ROWS_PER_JOB}-row jobs, {jobs // 2} at once and {jobs - jobs // 2} over "
                      f"{spread_s:g} s; stop_app, {down_s:g} s, start_app")


async def store_restart(args: argparse.Namespace, env: dict[str, str], jobs: int, spread_s: float,
                        down_s: float) -> Row:
    """A stack whose every job input and result is an S3 object (s3rver, on disk): the server stopped, restarted."""
    with tempfile.TemporaryDirectory(prefix="chaos-s3-") as folder:
        server = S3Server(Path(folder))
        await asyncio.to_thread(server.start)
        try:
            env = {**env, **server.env, "JOB_INLINE_INPUT_BYTES": "0", "JOB_INLINE_RESULT_BYTES": "0"}
            counts = await _outage_of(args, env, "launcher-store.log", jobs, spread_s, down_s,
                                      server.stop, server.start)
        finally:
            await asyncio.to_thread(server.stop)
    return outage_row(STORE_ROW, counts, jobs,
                      f"s3rver (objects on disk), every input and result in it, embedded broker; {ROWS_PER_JOB}-row "
                      f"jobs, {jobs // 2} at once and {jobs - jobs // 2} over {spread_s:g} s; s3rver stopped, "
                      f"{down_s:g} s, started")


def render(rows: list[Row]) -> str:
    lines = ["| scenario | requests / jobs | failed | lost | wrong | recovery s | notes |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        recovery = "-" if row.recovery_s is None else f"{row.recovery_s:.1f}"
        lost = "-" if row.lost is None else str(row.lost)
        lines.append(f"| {row.scenario} | {row.requests} | {row.failed} | {lost} | {row.wrong} | {recovery} | "
                     f"{row.note.replace('|', '/')} |")
    return "\n".join(lines)


def write_doc(table: str, args: argparse.Namespace) -> None:
    DOC.write_text(DOC_HEAD + f"\nThe last run (`python -m bench.chaos{' --quick' if args.quick else ''}`, "
                   f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, "
                   f"{args.clients} clients per scenario):\n\n{table}\n" + DOC_TAIL)


QUICK = ["kill", "sigterm", "hang", "gateway"]
SCENARIOS = [*QUICK, "overload", "balancers", "sidecar", "broker", "store"]
#: Scenarios that start stacks of their own.
JOB_SCENARIOS = ("sidecar", "broker", "store")


async def one(row: Awaitable[Row]) -> list[Row]:
    return [await row]


async def run(args: argparse.Namespace) -> list[Row]:
    log_dir = Path(args.log_dir)
    env = {"HEALTH_INTERVAL_S": "0.5", "TRY_TIMEOUT_S": "1", "ACCESS_LOG": "false",
           "MAX_IN_FLIGHT_PER_WORKER": str(args.in_flight), "MAX_CONNECTIONS_PER_WORKER": str(args.in_flight)}
    if args.jax_cache_dir:
        env["JAX_CACHE_DIR"] = args.jax_cache_dir
    chosen = args.scenarios or (QUICK if args.quick else SCENARIOS)
    rows: list[Row] = []
    load_s = 3.0 if args.quick else 8.0
    on_requests = [name for name in chosen if name not in JOB_SCENARIOS]
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
            }
            for name in on_requests:
                for row in await scenarios[name]():
                    print(render([row]).splitlines()[-1], flush=True)
                    rows.append(row)
                await whole_again(stack, time.monotonic())
        finally:
            terminate(stack.launcher, timeout_s=30)
    jobs, spread_s, down_s = (60, 6.0, 3.0) if args.quick else (300, 20.0, 8.0)
    job_scenarios: dict[str, Callable[[], Awaitable[Row]]] = {
        "sidecar": lambda: sidecar_kill(args, env, jobs),
        "broker": lambda: broker_restart(args, env, jobs, spread_s, down_s),
        "store": lambda: store_restart(args, env, jobs, spread_s, down_s),
    }
    missing = {"broker": (BROKER_ROW, "rabbitmq-server") if rabbitmq_bin() is None else None,
               "store": (STORE_ROW, "s3rver (scripts/install-system-deps.sh)") if s3rver_bin() is None else None}
    for name in (name for name in chosen if name in JOB_SCENARIOS):
        if missing.get(name):
            scenario, program = missing[name]
            rows.append(Row(scenario, 0, 0, 0, None, f"not run: {program} is not installed", False))
        else:
            rows.append(await job_scenarios[name]())
        print(render(rows[-1:]).splitlines()[-1], flush=True)
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a subset with short load, for the test suite")
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, help="run only these (default: all)")
    parser.add_argument("--clients", type=int, default=100, help="concurrent clients in the failure scenarios")
    parser.add_argument("--in-flight", type=int, default=100, help="MAX_IN_FLIGHT_PER_WORKER of the stack")
    parser.add_argument("--overload-clients", type=int, default=2000, help="clients of the overload scenario")
    parser.add_argument("--overload-s", type=float, default=60.0, help="seconds of the overload scenario")
    parser.add_argument("--log-dir", default=str(REPO / "bench" / "results" / "chaos"), help="process logs")
    parser.add_argument("--jax-cache-dir", default="", help="JAX_CACHE_DIR of the workers (default: theirs)")
    parser.add_argument("--no-doc", action="store_true", help=f"do not write {DOC.relative_to(REPO)}")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = asyncio.run(run(args))
    table = render(rows)
    print("\n" + table)
    if not args.no_doc:
        write_doc(table, args)
        print(f"\nwrote {DOC.relative_to(REPO)}")
    missed = [row.scenario for row in rows if not row.passed]
    if missed:
        print(f"missed the target: {', '.join(missed)}")
    return 1 if missed else 0


DOC_HEAD = """# Reliability: what clients see when things break

`make chaos` (`python -m bench.chaos`) starts a local stack (`python -m launcher`: gateway and two
workers, loopback only), runs closed-loop clients against it (`bench/hammer.py`: keep-alive, no
retries, every answer checked against the model's answer for the same row, which comes from the
served model's `/metadata` example), breaks one thing per scenario under that load, and counts.
*failed* is every request that did not get the right answer (a shed 503 counts as failed except
in the overload scenario, where shedding is the point); *wrong* is a 200 with another answer;
*recovery* is the seconds until `/gateway/health` reports every worker healthy again (a killed
worker: restarted by the launcher and warm). The job scenarios (bench/chaos_jobs.py) submit jobs with
Idempotency-Keys, submit again after `Retry-After` when answered 503 (as `inference_client` does),
and check each result: *failed* is a job that ended failed (or a submission answered anything but
202 or 503), *lost* one accepted and never finished, *wrong* a result that is not the model's
answer, *duplicated* two submissions given one job id. The outage rows also count the 503s (each
must carry `Retry-After` and the JSON error body) and their *recovery* runs from the restart's
start to the last job done.
The stack runs with `HEALTH_INTERVAL_S=0.5`, `TRY_TIMEOUT_S=1` and `MAX_IN_FLIGHT_PER_WORKER=100`.
"""

DOC_TAIL = """
## How each failure is absorbed

- **Worker kill -9**: the gateway's connection to it drops or is refused; the request is retried on
  another worker (`MAX_ATTEMPTS`), the refused connect ejects the worker at once, and the launcher
  restarts it; health checks bring it back once warm.
- **Worker SIGTERM** (`DRAIN_S`, common/draining.py): the worker answers `/health` 503 `draining` at
  once and every answer carries `Connection: close`, while it still serves; the gateway's next probe
  takes it out of rotation. Then it stops accepting, finishes what it holds and exits; the launcher
  restarts it. A request that still meets the closing worker is retried elsewhere.
- **Hung worker** (SIGSTOP): its connections accept but nothing answers. Each request waits at most
  `TRY_TIMEOUT_S` before it is tried on another worker (the overall `REQUEST_TIMEOUT_S` is separate);
  after `OUTLIER_FAILURES_TO_EJECT` failures in a row the worker leaves rotation
  (`gateway_outlier_ejections_total`) until a probe passes, which a stopped process cannot.
- **Gathered rows** (`GATEWAY_BATCHING`, gateway/row_batching.py): a `/batch_predict` call carrying
  concurrent `/predict` rows is retried, timed out and shed like one request, within the deadline of
  its oldest row; when it fails it counts once per row toward `OUTLIER_FAILURES_TO_EJECT`, so a hung
  worker leaves rotation as fast as with the rows sent one by one. The batcher's calls go to the
  worker with the fewest in flight whatever `BALANCER` says: round robin queued the next batch behind
  a hung worker while the other idled (hung-worker p99 about twice that of batching off); with it,
  `python -m bench.chaos --scenarios hang`, twice each way, gave p99 186-271 ms on against 477-515 ms
  off, no failures either way. A worker's 503 is every row's answer (with its own request id); any
  other refusal sends the rows again one by one.
- **Gateway restart** behind the launcher: the launcher owns the listening socket and hands it to
  each gateway (`LISTEN_FD`), so while one gateway stops and the next starts, new connections wait in
  the socket's queue instead of being refused. On SIGTERM the gateway first drains for `DRAIN_S`
  (answers carry `Connection: close`, so clients reconnect and land in that queue), then stops
  accepting and finishes in-flight requests. The next gateway probes its workers before it accepts.
  Clients see a pause of about the restart time, not an error.
- **Overload**: past `MAX_IN_FLIGHT_PER_WORKER` per worker the gateway answers 503 with
  `Retry-After` at once, without queueing; `/gateway/health` is answered by the gateway itself.
  Every connection is accepted and answered (no socket errors, `/gateway/health` never failed), and
  the gateway's memory settles (about 75 MiB idle, about 100 MiB holding 2,000 connections). The
  issue's latency target is **not met here**: shed answers' p99 is around a second, not tens of
  milliseconds. On this machine the 2,000 Python clients, the one gateway process and the two
  workers share 2 cores (with other stacks running), so every answer, shed or not, waits for the
  CPU; the shed answer's own work is small. Measuring that target needs a load generator on other
  cores (or wrk) and more than one gateway process (`GATEWAY_PROCESSES` in containers).
- **Balancers**: `BALANCER=least_outstanding` sends fewer requests to a slow worker than round robin,
  which gives it an equal share, and its throughput is higher; its p50 can be higher, since what
  the slow worker does not take queues on the fast ones. Over runs on this shared 2-core machine
  the gain in throughput varied (from none to about 1.5x); the share to the slow worker was always
  far lower (7-13 % against 33 %).
  With `GATEWAY_BATCHING` on (the default) single-row `/predict` load goes through the batcher,
  which always picks the worker with the fewest in flight, so both rows above send the slow
  worker almost nothing; `BALANCER` decides for requests that go alone (other routes, rows that
  are not plain, batching off), which is where those shares were measured.

- **Sidecar kill -9** (embedded broker): the jobs the sidecar held stay leased until their lease
  expires without its heartbeat (`EMBEDDED_VISIBILITY_TIMEOUT_S`, 3 s here), then another sidecar
  gets them; the launcher restarts the killed one. A job may run twice (at-least-once delivery); its
  result is the same, and the job record is one.

- **Broker restart** (`rabbitmqctl stop_app`, a pause, `start_app`) on a RabbitMQ node of the
  scenario's own (bench/outage_servers.py: the installed `rabbitmq-server` with its own node name,
  ports, Erlang cookie and data folder, no plugins; the machine's shared broker on 5672 is never
  touched). While it is down, a publish fails at once on the closed channel: `POST /jobs` answers
  503 with `Retry-After` and the job is recorded `not_queued`, so the client's retry with the same
  `Idempotency-Key` queues it once the broker is back. aio-pika's robust connection reconnects the
  gateway and the sidecars (`AMQP_URL=...?reconnect_interval=1` here; 5 s by default) and their
  consumers resume. Jobs running as it went down finish on their workers and their results are
  written; their acks fail, so the broker delivers them again and the sidecar skips them as
  finished. Queued messages are durable (quorum queue) and outlive the restart.
  `stop_app` and `start_app` themselves take seconds on this loaded machine (the notes say how long).
- **Store restart**: s3rver (npm, installed by scripts/install-system-deps.sh), an S3 server that
  keeps buckets and objects as files, is stopped (its port refuses) and started again on the same
  folder, with every job's input and result kept in the store (`JOB_INLINE_*_BYTES=0`). It is a
  real restart with the data kept, which moto's in-memory server could not give. While it is down,
  a submission that must write its rows answers 503 with `Retry-After` (nothing is recorded, the
  retry writes them), and so does reading a result kept there. A sidecar's store calls retry at
  least every second for `SIDECAR_STORE_RETRY_S` (60 s), so a shorter outage only delays jobs and
  spends none of their deliveries; a longer one fails attempts, which are retried up to
  `JOB_MAX_DELIVERIES` and then fail the job with `delivery_limit` and the store's error (never
  silently). The gateway's own store calls fail within a second or so, for a quick 503. s3rver
  ignores `If-None-Match`, which the job path does not use.
"""


if __name__ == "__main__":
    sys.exit(main())
