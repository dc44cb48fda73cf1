"""``python -m inference_client``: the client's calls from a shell; answers are printed as JSON.

Exit status: 0 on success, 1 when the gateway answered an error (its message on stderr) or could
not be reached, or when ``health`` is unhealthy; 2 for a bad command line or unreadable input.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from inference_client import _keys
from inference_client._base import API_KEY_ENV, DEFAULT_URL, URL_ENV
from inference_client._calls import prediction_inputs
from inference_client._client import InferenceClient
from inference_client._exceptions import InferenceError


class UsageError(Exception):
    pass


def _json_argument(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{what} is not JSON: {exc}") from None


def _read_rows(path: str) -> list[Any]:
    """A JSON array from a file or stdin (``-``), or JSON Lines: one item a line."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    try:
        items = json.loads(text)
    except ValueError:
        items = [_json_argument(line, f"{path} line {i}") for i, line in enumerate(text.splitlines(), 1)
                 if line.strip()]
    if not isinstance(items, list):
        raise UsageError(f"{path} holds no JSON array of rows")
    return items


def _job_inputs(args: argparse.Namespace) -> list[Any] | None:
    if args.inputs is None:
        return None
    items = _read_rows(args.inputs)
    if args.task != "batch_predict":
        return items
    # Bare rows become /batch_predict items; objects are sent as they are.
    return [item if isinstance(item, dict) else prediction_inputs([item], args.probabilities)[0] for item in items]


def _submit_split(client: InferenceClient, args: argparse.Namespace, options: Any) -> dict[str, list[str]]:
    """``submit --split N``: one job per N rows, sent with POST /jobs/batch; the jobs' ids in row order.

    With --idempotency-key K, job i is keyed K-i: the same command run again returns the same jobs.
    """
    if args.split < 1:
        raise UsageError("--split: at least 1 row per job")
    inputs = _job_inputs(args)
    if inputs is None:
        raise UsageError("--split needs --inputs")
    jobs: list[dict[str, Any]] = []
    for start in range(0, len(inputs), args.split):
        job: dict[str, Any] = {"inputs": inputs[start:start + args.split], "options": options or {}}
        if args.idempotency_key:
            job["idempotency_key"] = f"{args.idempotency_key}-{len(jobs)}"
        jobs.append(job)
    return {"job_ids": client.submit_jobs(jobs, task=args.task, model=args.model)}


def _run(client: InferenceClient, args: argparse.Namespace) -> Any:
    match args.command:
        case "predict":
            return client.predict(_json_argument(args.row, "the row"), return_probabilities=args.probabilities,
                                  model=args.model)
        case "batch-predict":
            return client.batch_predict(_read_rows(args.file), return_probabilities=args.probabilities,
                                        model=args.model)
        case "submit":
            options = _json_argument(args.options, "--options") if args.options else None
            if args.split is not None:
                return _submit_split(client, args, options)
            return client.submit_job(args.task, _job_inputs(args), options=options,
                                     idempotency_key=args.idempotency_key, promote=args.promote, model=args.model)
        case "jobs":
            return client.list_jobs(status=args.status, task=args.task, model=args.model, limit=args.limit)
        case "status":
            return client.job_status(args.job_id)
        case "wait":
            return client.wait(args.job_id, timeout=args.wait_timeout, progress=not args.no_progress)
        case "result":
            return client.result(args.job_id)
        case "cancel":
            return client.cancel(args.job_id)
        case "retry":
            return client.retry_job(args.job_id)
        case "models":
            return client.models()
        case "versions":
            return client.versions(args.model)
        case "upload":
            missing = [path for path in args.files if not Path(path).is_file()]
            if missing:
                raise UsageError(f"not a file: {missing[0]}")
            return client.upload(args.model, args.files)
        case "activate":
            return client.activate(args.model, args.version, args.traffic)
        case "rollback":
            return client.rollback(args.model)
        case "health":
            return client.health()
        case "info":
            return client.info()
        case "keys":
            return _keys_command(client, args)
        case "usage":
            return client._call(_keys.usage(args.by, args.every_key))
    raise AssertionError(args.command)


def _keys_command(client: InferenceClient, args: argparse.Namespace) -> Any:
    match args.action:
        case "create":
            models = args.models.split(",") if args.models else None
            return client._call(_keys.create_key(
                args.name, admin=args.admin or None, models=models, rate_limit_per_s=args.rate_limit_per_s,
                rows_per_day=args.rows_per_day, rows_per_month=args.rows_per_month,
                job_rows_per_day=args.job_rows_per_day))
        case "list":
            return client._call(_keys.list_keys())
        case "revoke":
            return client._call(_keys.revoke_key(args.key_id))
    raise AssertionError(args.action)


def _dump(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [_dump(item) for item in value]
    return value


def _connection_options(parser: argparse.ArgumentParser, defaults: dict[str, Any]) -> None:
    parser.add_argument("--url", help=f"gateway URL (default: ${URL_ENV}, else {DEFAULT_URL})")
    parser.add_argument("--api-key", help=f"API key, sent as a Bearer token (default: ${API_KEY_ENV})")
    parser.add_argument("--request-timeout", type=float, help="seconds per HTTP request (default: 30)")
    parser.add_argument("--retries", type=int, help="retries on 429, 503 and refused connections (default: 4)")
    parser.set_defaults(**defaults)


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(
        prog="python -m inference_client", description="Call the inference gateway; answers are printed as JSON.",
        epilog="exit status: 0 success; 1 an error answer (message on stderr), no connection, or unhealthy; "
        "2 a bad command line or unreadable input",
    )
    _connection_options(main, {"url": None, "api_key": None, "request_timeout": 30.0, "retries": 4})
    # The same options after the command too (`predict --url ... ROW`), without overriding those before it.
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    _connection_options(common, {})
    commands = main.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_parser = functools.partial(commands.add_parser, parents=[common])

    predict = add_parser("predict", help="predict one row, given as JSON")
    predict.add_argument("row", help="the row as JSON, of the served model's input shape (GET /metadata: its example)")
    batch = add_parser("batch-predict", help="predict the rows of a file or stdin in one request")
    batch.add_argument("file", nargs="?", default="-", help="a JSON array of rows, or one row a line (default: stdin)")
    for command in (predict, batch):
        command.add_argument("--probabilities", action="store_true", help="ask for return_probabilities")

    submit = add_parser("submit", help="queue a job; prints its status")
    submit.add_argument("--task", default="batch_predict", help="task type (default: batch_predict)")
    submit.add_argument("--inputs", metavar="FILE", help="the job's inputs as for batch-predict ('-': stdin); "
                        "for batch_predict, bare rows become /batch_predict items")
    submit.add_argument("--probabilities", action="store_true", help="batch_predict rows ask for probabilities")
    submit.add_argument("--options", help="the task's options as a JSON object")
    submit.add_argument("--idempotency-key", help="the same key and body return the same job")
    submit.add_argument("--promote", action="store_true",
                        help="train: activate the version the job registers once it succeeds")
    submit.add_argument("--split", type=int, metavar="N", help="one job per N rows of --inputs, all sent with "
                        "POST /jobs/batch; prints their ids (with --idempotency-key K, job i is keyed K-i)")
    for command in (predict, batch, submit):
        command.add_argument("--model", metavar="NAME", help="the served model to use (GET /models lists them; "
                             "default: the gateway's default model)")
    jobs = add_parser("jobs", help="the newest jobs first, filtered")
    jobs.add_argument("--status", help="only jobs in this state (queued, running, succeeded, ...)")
    jobs.add_argument("--task", help="only jobs of this task type")
    jobs.add_argument("--model", metavar="NAME", help="only jobs for this model")
    jobs.add_argument("--limit", type=int, default=50, help="at most this many jobs (default: 50)")

    for name, text in (("status", "a job's status"), ("wait", "wait for a job to succeed (progress on stderr)"),
                       ("result", "a succeeded job's result"), ("cancel", "cancel a job"),
                       ("retry", "run a failed job again under its id")):
        command = add_parser(name, help=text)
        command.add_argument("job_id")
        if name == "wait":
            command.add_argument("--timeout", type=float, dest="wait_timeout", help="give up after this many seconds")
            command.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_parser("models", help="every model: its active version, canary and number of versions")
    versions = add_parser("versions", help="a model's versions, what serves and the history of changes")
    versions.add_argument("model")
    upload = add_parser("upload", help="upload files (what the model's save() wrote) as a new version")
    upload.add_argument("model")
    upload.add_argument("files", nargs="+", metavar="FILE")
    activate = add_parser("activate", help="serve a version on every worker (hot), or as a canary with --traffic")
    activate.add_argument("model")
    activate.add_argument("version")
    activate.add_argument("--traffic", type=int, help="1-99: a canary with that percent of the requests")
    rollback = add_parser("rollback", help="serve the version that was active before the current one")
    rollback.add_argument("model")
    add_parser("health", help="the gateway's health (exit status 1 when unhealthy)")
    add_parser("info", help="the gateway and its workers")
    keys = add_parser("keys", help="API keys made at run time (an admin key): create, list, revoke")
    actions = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="make a key; prints it, shown this once")
    create.add_argument("name", help="what the key is for")
    create.add_argument("--admin", action="store_true", help="may manage keys and model versions")
    create.add_argument("--models", help="the only models it may use, comma separated (default: every model)")
    create.add_argument("--rate-limit-per-s", type=float, help="requests a second (default: the gateway's)")
    for quota in ("rows-per-day", "rows-per-month", "job-rows-per-day"):
        create.add_argument(f"--{quota}", type=int, help=f"quota: {quota.replace('-', ' ')} (default: none)")
    actions.add_parser("list", help="every key: the settings' and the made ones (never a key itself)")
    revoke = actions.add_parser("revoke", help="revoke a made key: refused by every gateway within seconds")
    revoke.add_argument("key_id")
    usage = add_parser("usage", help="this key's usage per period and model, and its quotas")
    usage.add_argument("--by", choices=["hour", "day", "month"], default="day", help="period (default: day)")
    usage.add_argument("--every-key", action="store_true", help="every key's usage (an admin key)")
    return main


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        with InferenceClient(args.url, api_key=args.api_key, timeout=args.request_timeout,
                             max_retries=args.retries) as client:
            answer = _run(client, args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except InferenceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    try:
        print(json.dumps(_dump(answer), indent=2 if sys.stdout.isatty() else None), flush=True)
    except BrokenPipeError:  # `... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 1 if args.command == "health" and answer.status == "unhealthy" else 0
