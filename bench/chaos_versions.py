"""The ``promote`` scenario of ``make chaos``: model versions changed under closed-loop load.

Its own stack with sidecars (the launcher's default model, whatever it is). Under ``--promote-clients`` (64) closed-loop
clients sending the served model's /metadata example, the served version is changed three times, and a
worker is killed between:

1. a ``train`` job with ``"promote": true`` and ``--train-options`` (by default none: the model's defaults,
   which made the files it ships, so the new version has their parameter shapes and swaps in with no
   compilation; options that set a shape, as a sample count does, make the workers compile the new shapes
   before the switch, which this scenario counts as a miss); a model without ``fit()`` gets its start files
   (a worker's ``/admin/artifacts``) uploaded again as a new version and activated instead;
2. ``kill -9`` one worker: it must come back serving the promoted version (its own /health);
3. a rollback; 4. a canary at 10 %.

Counted per step: failed requests (any answer but a 200), wrong answers (a 200 whose body differs from the
first answer of the version its ``X-Model-Version`` names; version 1's from the answer before any change),
XLA compilations in every worker (``worker_jit_compilations_total``), the versions of the answers to requests
sent after the change was complete (the call returned; for the promotion, the job read as done), the canary's
measured share, and the time until every worker serves the change: the call's own ``took_ms`` and this
scenario's poll of each worker's /health (for the promotion: from its commit in the registry's history,
since no call of ours made it). Unlike bench/hammer.py's clients, these keep each answer's send time and
version, which the checks need.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import secrets
import signal
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson

from bench.chaos_stack import Row, Stack, start_stack, whole_again
from bench.hammer import comparable, same_answer
from bench.stack import terminate
from common.model_headers import MODEL_VERSION_HEADER
from jobs.schema import TERMINAL_STATES

#: The rows this scenario writes, in order.
PROMOTE_ROWS = ["promote: train job, promote true (versions)", "worker kill -9 after the promote (versions)",
                "rollback (versions)", "canary 10 % (versions)"]
CANARY_TRAFFIC = 10

#: The stack's workers take this run's token on /admin (the scenario reads a worker's start files there).
WORKER_ADMIN_TOKEN = secrets.token_hex(16)


@dataclass
class Answer:
    sent: float
    version: str | None  # None: failed
    wrong: bool = False


@dataclass
class VersionedLoad:
    """Closed-loop /predict clients keeping each answer's send time and version (keep-alive, no retries)."""

    url: str
    row: dict
    answers: list[Answer] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    #: The first answer of each version: every later answer of that version must equal it.
    reference: dict[str, dict] = field(default_factory=dict)

    async def run(self, clients: int, stop: asyncio.Event) -> None:
        body = orjson.dumps(self.row)
        connector = aiohttp.TCPConnector(limit=clients)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
            await asyncio.gather(*(self._client(session, body, stop) for _ in range(clients)))

    async def _client(self, session: aiohttp.ClientSession, body: bytes, stop: asyncio.Event) -> None:
        while not stop.is_set():
            sent = time.monotonic()
            try:
                async with session.post(f"{self.url}/predict", data=body,
                                        headers={"Content-Type": "application/json"}) as response:
                    payload = await response.read()
                    status, version = response.status, response.headers.get(MODEL_VERSION_HEADER)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                self._failed(sent, f"{type(exc).__name__}: {exc}")
                continue
            if status != 200 or version is None:
                self._failed(sent, f"{status} {payload[:200]!r}")
                continue
            answer = comparable(orjson.loads(payload))
            expected = self.reference.setdefault(version, answer)
            self.answers.append(Answer(sent, version, not same_answer(answer, expected)))

    def _failed(self, sent: float, reason: str) -> None:
        self.answers.append(Answer(sent, None))
        if len(self.failures) < 1000:
            self.failures.append(reason)

    def between(self, start: float, end: float) -> list[Answer]:
        return [answer for answer in self.answers if start <= answer.sent < end]

    def versions_after(self, moment: float, until: float = float("inf")) -> dict[str | None, int]:
        """How many answers each version gave to requests sent in [moment, until); None: failed."""
        counts: dict[str | None, int] = {}
        for answer in self.between(moment, until):
            counts[answer.version] = counts.get(answer.version, 0) + 1
        return counts


def compilations(stack: Stack) -> list[float]:
    """Each worker's ``worker_jit_compilations_total`` (summed over its labels)."""
    totals = []
    for url in stack.worker_urls:
        text = httpx.get(f"{url}/metrics", timeout=10).text
        totals.append(sum(float(line.split()[-1]) for line in text.splitlines()
                          if line.startswith("worker_jit_compilations_total")))
    return totals


async def registered_active(client: httpx.AsyncClient, model: str, timeout_s: float = 60.0) -> str:
    """The registry's active version, once the gateway registered the start files (just after the stack is up)."""
    deadline = time.monotonic() + timeout_s
    while (active := (await client.get(f"/models/{model}/versions")).raise_for_status().json()["active"]) is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no active version of {model} registered within {timeout_s:g} s")
        await asyncio.sleep(0.2)
    return str(active)


def _grown(before: list[float], after: list[float]) -> list[float]:
    return [b - a for a, b in zip(before, after, strict=True)]


async def serving(client: httpx.AsyncClient, stack: Stack) -> list[dict]:
    """What each worker's /health says it serves ({} while it does not answer)."""
    states = []
    for url in stack.worker_urls:
        try:
            states.append((await client.get(f"{url}/health")).json().get("serving") or {})
        except (httpx.HTTPError, ValueError):
            states.append({})
    return states


async def every_worker_serving(stack: Stack, active: str, canary: str | None = None,
                               timeout_s: float = 120.0) -> float | None:
    """Wall-clock time (unix seconds) when every worker's /health first served ``active`` (and ``canary``)
    from the registry, polled every 20 ms; None past ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=2) as client:
        while time.monotonic() < deadline:
            states = await serving(client, stack)
            if all(s.get("active") == active and s.get("canary") == canary and s.get("origin") == "registry"
                   for s in states):
                return time.time()
            await asyncio.sleep(0.02)
    return None


@dataclass
class Change:
    """One change of the served version: when it was complete for clients, what it reported."""

    version: str
    done: float  # monotonic: the call returned, or the train job read as finished
    to_every_worker_ms: float | None  # this scenario's poll of the workers' /health
    took_ms: float | None  # the gateway's own figure (from its answer), when a call of ours made the change
    detail: str


async def promote(client: httpx.AsyncClient, stack: Stack, model: str, metadata: dict,
                  args: argparse.Namespace) -> Change:
    """A train job with promote: true, or for a model without fit(), its start files uploaded and activated."""
    newest = (await client.get(f"/models/{model}/versions")).raise_for_status().json()["versions"][-1]["version"]
    expected = str(int(newest) + 1)
    watch = asyncio.create_task(every_worker_serving(stack, expected, timeout_s=args.promote_timeout_s))
    if metadata.get("training") is None:
        version = await uploaded_start_files(client, stack, model)
        answer = (await client.post(f"/models/{model}/versions/{version}/activate")).raise_for_status().json()
        done = time.monotonic()
        return Change(version, done, _ms_since(await watch, answer), answer["took_ms"],
                      f"no fit(): its start files uploaded as version {version} and activated")
    options = orjson.loads(args.train_options)
    submitted = time.monotonic()
    job = (await client.post("/jobs", json={"task": "train", "promote": True, "options": options})
           ).raise_for_status().json()["job_id"]
    deadline = submitted + args.promote_timeout_s
    while (status := (await client.get(f"/jobs/{job}")).raise_for_status().json())["status"] not in TERMINAL_STATES:
        if time.monotonic() > deadline:
            raise RuntimeError(f"train job {job} not done within {args.promote_timeout_s:g} s")
        await asyncio.sleep(0.1)
    done = time.monotonic()
    if status["status"] != "succeeded":
        raise RuntimeError(f"train job {job} {status['status']}: {status.get('error')}")
    result = (await client.get(f"/jobs/{job}/result", follow_redirects=True)).raise_for_status().json()["output"]
    if not result.get("promoted") or result["version"] != expected:
        raise RuntimeError(f"train job {job}: {result}")
    history = (await client.get(f"/models/{model}/versions")).raise_for_status().json()["history"]
    committed = next(change["at"] for change in history if change["active"] == expected)
    all_serving = await watch
    to_every = None if all_serving is None else (all_serving - committed) * 1000
    return Change(expected, done, to_every, None,
                  f"options {orjson.dumps(options).decode()}, job {done - submitted:.1f} s; "
                  f"version {expected} from {result['trained_from_version']}")


async def uploaded_start_files(client: httpx.AsyncClient, stack: Stack, model: str) -> str:
    """Worker 0's start files (its admin API's tar of them) uploaded as a new version: its number."""
    admin = {"Authorization": f"Bearer {WORKER_ADMIN_TOKEN}"}
    archive = (await client.get(f"{stack.worker_urls[0]}/admin/artifacts", headers=admin)).raise_for_status().content
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        files = [("files", (member.name, tar.extractfile(member).read()))  # type: ignore[union-attr]
                 for member in tar.getmembers() if member.isfile()]
    answer = await client.post(f"/models/{model}/versions", files=files)
    return str(answer.raise_for_status().json()["version"])


def _ms_since(all_serving: float | None, answer: dict) -> float | None:
    """From the call's start (its answer's end less its took_ms) to every worker serving, polled."""
    if all_serving is None:
        return None
    return (all_serving - (time.time() - answer["took_ms"] / 1000)) * 1000


async def activate_call(client: httpx.AsyncClient, stack: Stack, path: str, body: dict | None, active: str,
                        canary: str | None) -> Change:
    """An activate or a rollback call; every worker's /health polled from its start."""
    called = time.time()
    watch = asyncio.create_task(every_worker_serving(stack, active, canary))
    answer = (await client.post(path, json=body)).raise_for_status().json()
    done = time.monotonic()
    all_serving = await watch
    return Change(canary or active, done, None if all_serving is None else (all_serving - called) * 1000,
                  answer["took_ms"], "")


def _switch(change: Change, target_s: float) -> tuple[str, bool]:
    """The note's words for the time to every worker, and whether it met the target."""
    figures = [f"{change.took_ms:.0f} ms by the call's took_ms"] if change.took_ms is not None else []
    if change.to_every_worker_ms is not None:
        since = "from the commit" if change.took_ms is None else "from the call"
        figures.append(f"{change.to_every_worker_ms:.0f} ms {since} by /health polls")
    slowest = max([change.took_ms or 0.0, change.to_every_worker_ms or 0.0])
    met = change.to_every_worker_ms is not None and slowest < target_s * 1000
    return f"every worker serving it: {', '.join(figures) or 'never seen'} (target {target_s:g} s)", met


def _row(name: str, load: VersionedLoad, start: float, end: float, grown: list[float] | None, note: str,
         passed: bool, recovery_s: float | None) -> Row:
    """The requests sent in [start, end); ``grown``: each worker's compilations meanwhile (None: not counted)."""
    answers = load.between(start, end)
    failed = sum(answer.version is None for answer in answers)
    wrong = sum(answer.wrong for answer in answers)
    compiled = [] if grown is None else ["compilations " + ", ".join(f"{delta:g}" for delta in grown) + " per worker"]
    failures = sorted({f[:80] for f in load.failures})[:2] if failed else []
    text = "; ".join([note, *compiled, *failures])
    ok = passed and failed == 0 and wrong == 0 and not any(grown or []) and len(answers) > 0
    return Row(name, len(answers), failed, wrong, recovery_s, text, ok)


def _after(load: VersionedLoad, moment: float, until: float, wanted: str) -> tuple[str, bool]:
    counts = load.versions_after(moment, until)
    seen = ", ".join(f"{n} from {v if v is not None else 'failed'}" for v, n in sorted(counts.items(), key=str))
    return f"answers to requests sent after it: {seen or 'none'}", set(counts) == {wanted}


async def promote_under_load(args: argparse.Namespace, env: dict[str, str]) -> list[Row]:
    """The scenario on a stack of its own; its rows in PROMOTE_ROWS' order."""
    log_dir = Path(args.log_dir)
    env = {**env, "JOBS_DIR": str(log_dir / f"jobs-{time.time_ns()}"), "WORKER_ADMIN_TOKEN": WORKER_ADMIN_TOKEN}
    stack = await asyncio.to_thread(start_stack, log_dir, env, True, "launcher-versions.log")
    try:
        return await _changes(stack, args)
    finally:
        terminate(stack.launcher, timeout_s=30)


async def _changes(stack: Stack, args: argparse.Namespace) -> list[Row]:
    metadata = httpx.get(f"{stack.worker_urls[0]}/metadata", timeout=10).raise_for_status().json()
    model, target_s, settle_s = metadata["name"], args.switch_target_s, args.settle_s
    async with httpx.AsyncClient(base_url=stack.url, timeout=args.promote_timeout_s) as client:
        first = await registered_active(client, model)
        if await every_worker_serving(stack, first, timeout_s=60) is None:
            raise RuntimeError("the workers never served the registry's first version")
        load = VersionedLoad(stack.url, stack.row, reference={first: stack.expected})
        stop = asyncio.Event()
        running = asyncio.create_task(load.run(args.promote_clients, stop))
        rows: list[Row] = []
        try:
            await asyncio.sleep(1.0)
            before, started = compilations(stack), time.monotonic()
            promoted = await promote(client, stack, model, metadata, args)
            await asyncio.sleep(settle_s)
            after_promote = compilations(stack)
            words, met = _switch(promoted, target_s)
            seen, only_new = _after(load, promoted.done, float("inf"), promoted.version)
            killed_at = time.monotonic()
            rows.append(_row(PROMOTE_ROWS[0], load, started, killed_at,
                             _grown(before, after_promote),
                             f"{promoted.detail}; {words}; {seen}", met and only_new, None))

            victim = stack.worker_pid(0)
            os.kill(victim, signal.SIGKILL)
            back_s = await _back_serving(stack, victim, promoted.version)
            await whole_again(stack, time.monotonic())
            await asyncio.sleep(settle_s)
            rolled_at = time.monotonic()
            seen, only_new = _after(load, killed_at, rolled_at, promoted.version)
            rows.append(_row(PROMOTE_ROWS[1], load, killed_at, rolled_at, None,
                             f"worker 0 back serving version {promoted.version} from the registry"
                             f"{'' if back_s is not None else ' NEVER'}; recovery: kill to that; {seen}",
                             back_s is not None and only_new, back_s))

            baseline = compilations(stack)  # worker 0 is a new process: its count starts again
            rolled = await activate_call(client, stack, f"/models/{model}/rollback", None, first, None)
            await asyncio.sleep(settle_s)
            canary_at = time.monotonic()
            words, met = _switch(rolled, target_s)
            seen, only_old = _after(load, rolled.done, canary_at, first)
            after_rollback = compilations(stack)
            rows.append(_row(PROMOTE_ROWS[2], load, rolled_at, canary_at,
                             _grown(baseline, after_rollback),
                             f"back to version {first}; {words}; {seen}", met and only_old, None))

            canary = await activate_call(client, stack, f"/models/{model}/versions/{promoted.version}/activate",
                                         {"traffic": CANARY_TRAFFIC}, first, promoted.version)
            async with asyncio.timeout(300):
                while len(load.between(canary.done, float("inf"))) < args.canary_answers:
                    await asyncio.sleep(0.2)
            ended = time.monotonic()
            counts = load.versions_after(canary.done, ended)
            answered = sum(n for v, n in counts.items() if v is not None)
            share = 100 * counts.get(promoted.version, 0) / max(answered, 1)
            words, met = _switch(canary, target_s)
            in_range = abs(share - CANARY_TRAFFIC) <= args.canary_tolerance and set(counts) == {first, promoted.version}
            rows.append(_row(PROMOTE_ROWS[3], load, canary_at, ended,
                             _grown(after_rollback, compilations(stack)),
                             f"version {promoted.version} at {CANARY_TRAFFIC} % beside {first}: measured "
                             f"{share:.1f} % of {answered} answers sent after the call (target within "
                             f"{args.canary_tolerance:g} points); {words}", met and in_range, None))
        finally:
            stop.set()
            with contextlib.suppress(asyncio.CancelledError):
                await running
    return rows


async def _back_serving(stack: Stack, killed: int, version: str, timeout_s: float = 120.0) -> float | None:
    """Seconds until worker 0 answers /health with another pid, serving ``version`` from the registry."""
    since = time.monotonic()
    async with httpx.AsyncClient(timeout=1) as client:
        while time.monotonic() - since < timeout_s:
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                health = (await client.get(f"{stack.worker_urls[0]}/health")).json()
                serving_now: dict[str, Any] = health.get("serving") or {}
                if (health["pid"] != killed and serving_now.get("active") == version
                        and serving_now.get("origin") == "registry"):
                    return time.monotonic() - since
            await asyncio.sleep(0.05)
    return None
