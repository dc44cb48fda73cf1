"""``python -m launcher`` (``make run``): gateway + N workers (+ one job sidecar each) on this machine.

With MODELS (``--models``), one pool of workers per model instead (launcher/models.py):
NUM_WORKERS (``--workers``) and MODEL are then ignored, as the launcher says in its first lines,
and the gateway gets DEFAULT_MODEL (the first entry's model) unless it is set.

Workers listen on PORT+1 .. PORT+N, each pinned to its own GPU where
``nvidia-smi -L`` lists GPUs, else on the CPU. Ctrl-C or SIGTERM stops all.
A process that exits is restarted with capped backoff for as long as it takes;
only a start failure every worker (or every gateway process) hits the same way
stops all, with exit status 1 (launcher/supervisor.py). Each process's state is
written to ``processes.json`` in the job folder, which the gateway shows
(LAUNCHER_STATUS_FILE: /gateway/info, /metrics).
The sidecars get SIDECAR_SPREAD_URL (this gateway) unless it is set: a large
job's chunks are spread over every worker (jobs/spread.py).
The launcher opens the gateway's listening socket itself and hands it down
(LISTEN_FD): when the gateway restarts, new connections wait in the socket's
queue for the next gateway instead of being refused. ``GATEWAY_PROCESSES``
(``--gateway-processes``) gateway processes share that socket (launcher/gateways.py).
Each stack has its own job folder (JOBS_DIR, by default ``.run/<port>/jobs``), locked
for the launcher's lifetime: a second stack on the same folder is refused
(launcher/stack_lock.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import sys
import time
from collections.abc import Mapping
from functools import partial
from pathlib import Path

import httpx

from launcher.gateways import MULTIPROC_ENV, forget_process, gateway_names, listen_socket, metrics_folder
from launcher.gpus import device_env, list_gpus
from launcher.models import MODELS_ENV, ModelsError, Pool, parse_models, read_names
from launcher.stack_lock import FolderInUse, jobs_dir, lock_jobs_dir
from launcher.status import STATUS_ENV, StatusFile, status_path
from launcher.supervisor import Child, Supervisor

#: The shared secret of the workers' /admin routes (worker and gateway setting of the same name).
ADMIN_TOKEN_ENV = "WORKER_ADMIN_TOKEN"

def _default_gateway_processes() -> int:
    value = os.environ.get("GATEWAY_PROCESSES", "1")
    try:
        return int(value)
    except ValueError:
        raise SystemExit(f"GATEWAY_PROCESSES must be a whole number, got {value!r}") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m launcher", description=__doc__)
    parser.add_argument("--workers", type=int, default=2, help="number of worker processes")
    parser.add_argument("--port", type=int, default=8080, help="gateway port; workers take the next ports")
    parser.add_argument("--host", default="127.0.0.1", help="gateway interface")
    parser.add_argument("--gateway-processes", type=int, default=_default_gateway_processes(),
                        help="gateway processes sharing the gateway's port (default: GATEWAY_PROCESSES, else 1)")
    parser.add_argument("--models", default=os.environ.get(MODELS_ENV) or None,
                        help="several models, one pool each: 'module:Class=N,module2:Other' (default: MODELS); "
                        "--workers and MODEL are then ignored")
    parser.add_argument("--no-sidecars", action="store_true", help="do not start job sidecars")
    parser.add_argument("--max-fast-failures", type=int, default=3,
                        help="give up (exit 1) when every worker, or every gateway process, exits this many times "
                        "in a row soon after starting")
    parser.add_argument("--fast-exit-s", type=float, default=30.0,
                        help="an exit sooner than this after starting counts as a fast failure")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.gateway_processes < 1:
        parser.error("--gateway-processes (GATEWAY_PROCESSES) must be at least 1")
    if args.max_fast_failures < 1:
        parser.error("--max-fast-failures must be at least 1")
    return args


def gateway_url(args: argparse.Namespace) -> str:
    """The gateway's URL from this machine (its loopback address when it listens on every interface)."""
    host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    return f"http://{f'[{host}]' if ':' in host else host}:{args.port}"


def worker_children(args: argparse.Namespace, gpus: list[str], pools: list[Pool] | None) -> list[Child]:
    """The workers, on ports PORT+1 ..: ``args.workers`` of the MODEL setting's model, or each pool's in turn
    (its MODEL, its MODEL_ARTIFACTS if the entry names one, a group of its own: a pool whose every worker
    fails at start stops all, as the one pool does)."""
    python = sys.executable
    serving = pools or [Pool("", args.workers)]
    children: list[Child] = []
    for pool in serving:
        pool_env = {"MODEL": pool.model} if pool.model else {}
        if pool.artifacts is not None:
            pool_env["MODEL_ARTIFACTS"] = str(pool.artifacts)
        for _ in range(pool.workers):
            i = len(children)
            env = {"WORKER_ID": str(i), "HOST": "127.0.0.1", "PORT": str(args.port + 1 + i), **pool_env,
                   **device_env(i, gpus)}
            children.append(Child(f"worker-{i}", [python, "-m", "worker"], env, stop_rank=2,
                                  group=f"worker {pool.name}" if pools else "worker",
                                  model=pool.name or None, entry=pool.entry))
    return children


def build_children(
    args: argparse.Namespace, gpus: list[str], listen_fd: int | None = None,
    metrics_dir: Path | None = None, jobs_folder: Path | None = None, environ: Mapping[str, str] = os.environ,
    pools: list[Pool] | None = None,
) -> list[Child]:
    """The stack's processes; ``jobs_folder`` becomes every child's JOBS_DIR and holds the status file the
    gateway processes read. ``environ``: the environment
    they inherit, whose SIDECAR_SPREAD_URL and WORKER_ADMIN_TOKEN, if any, are left as the user set them (else
    the gateway and its workers share a random WORKER_ADMIN_TOKEN). ``pools``: MODELS, named
    (launcher/models.py); None: one model, the MODEL setting's."""
    python = sys.executable
    children = worker_children(args, gpus, pools)
    workers = list(children)
    gateway_env = {"HOST": args.host, "PORT": str(args.port),
                   "WORKERS": ",".join(f"127.0.0.1:{child.env['PORT']}" for child in workers)}
    if not environ.get(ADMIN_TOKEN_ENV):  # else they all inherit the user's
        gateway_env[ADMIN_TOKEN_ENV] = secrets.token_urlsafe(24)
        for worker in workers:
            worker.env[ADMIN_TOKEN_ENV] = gateway_env[ADMIN_TOKEN_ENV]
    if pools and "DEFAULT_MODEL" not in environ:
        gateway_env["DEFAULT_MODEL"] = pools[0].name
    if not args.no_sidecars:
        spread = _spread_env(args, environ, gateway_env)
        children += [
            Child(f"sidecar-{i}", [python, "-m", "jobs.sidecar"],
                  {"WORKER_URL": f"http://127.0.0.1:{worker.env['PORT']}", **spread},
                  stop_rank=1, group="sidecar", essential=False, model=worker.model)
            for i, worker in enumerate(workers)
        ]
    if listen_fd is not None:
        gateway_env["LISTEN_FD"] = str(listen_fd)
    if metrics_dir is not None:
        gateway_env[MULTIPROC_ENV] = str(metrics_dir)
    if jobs_folder is not None:  # the launcher writes its processes' state there (launcher/status.py)
        gateway_env[STATUS_ENV] = str(status_path(jobs_folder))
    children += [
        Child(name, [python, "-m", "gateway"], gateway_env, stop_rank=0, group="gateway",
              pass_fds=() if listen_fd is None else (listen_fd,),
              on_exit=None if metrics_dir is None else partial(forget_process, metrics_dir))
        for name in gateway_names(args.gateway_processes)
    ]
    if jobs_folder is not None:
        for child in children:
            child.env["JOBS_DIR"] = str(jobs_folder)
    return children


def _spread_env(args: argparse.Namespace, environ: Mapping[str, str], gateway_env: dict[str, str]) -> dict[str, str]:
    """The sidecars' SIDECAR_SPREAD_URL: this gateway, which spreads a large job's chunks over every worker,
    unless the user set it. With API_KEYS and no WORKER_API_KEY, the sidecars get a key of their own, added to
    the gateway's (``gateway_env``); without one the gateway would refuse them and their own worker answer."""
    if "SIDECAR_SPREAD_URL" in environ:
        return {}
    spread = {"SIDECAR_SPREAD_URL": gateway_url(args)}
    if api_keys(environ) and not environ.get("WORKER_API_KEY"):
        spread["WORKER_API_KEY"] = secrets.token_urlsafe(24)
        gateway_env["API_KEYS"] = ",".join(filter(None, [environ.get("API_KEYS", ""), spread["WORKER_API_KEY"]]))
    return spread


async def announce_when_ready(supervisor: Supervisor, url: str, workers: int, examples_from: dict[str, str],
                              keyed: bool = False) -> None:
    """Once every worker is healthy, print the URLs and a curl of each served model's own example.

    ``examples_from``: a route (``/predict`` for the default model, ``/models/{name}/predict`` for another)
    -> the URL of a worker serving that model. The example comes from the worker directly: with API keys
    the gateway's /metadata needs one the launcher may not know (API_KEYS can hold only digests).
    """
    started = time.monotonic()
    examples: dict[str, object] = {}
    async with httpx.AsyncClient(timeout=1.0) as client:
        while True:
            try:
                health = (await client.get(f"{url}/gateway/health")).json()
                if health.get("alive_backends") == workers:
                    for route, worker_url in examples_from.items():
                        answer = (await client.get(f"{worker_url}/metadata")).raise_for_status()
                        examples[route] = answer.json()["example"]
                    break
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            await asyncio.sleep(0.5)
    key = ' -H "Authorization: Bearer $MY_KEY"' if keyed else ""
    tries = "".join(
        f"  try:     curl -s -X POST {url}{route} -H 'Content-Type: application/json'{key} "
        f"-d '{json.dumps(example, separators=(', ', ': '))}'\n"
        for route, example in examples.items()
    )
    supervisor.say(
        f"ready in {time.monotonic() - started:.1f}s: {workers} worker(s) behind {url}\n"
        f"  docs:    {url}/docs\n"
        f"  health:  {url}/gateway/health\n"
        f"{tries}"
        "  stop:    Ctrl-C"
    )


def example_routes(args: argparse.Namespace, pools: list[Pool] | None,
                   environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """Where each model's example is read from, by the route its curl goes to: ``/predict`` for the
    default model (DEFAULT_MODEL, else the first pool's), ``/models/{name}/predict`` for the others."""
    if not pools:
        return {"/predict": f"http://127.0.0.1:{args.port + 1}"}
    default = environ.get("DEFAULT_MODEL") or pools[0].name
    routes, first_port = {}, args.port + 1
    for pool in pools:
        route = "/predict" if pool.name == default else f"/models/{pool.name}/predict"
        routes[route] = f"http://127.0.0.1:{first_port}"
        first_port += pool.workers
    return dict(sorted(routes.items(), key=lambda item: item[0] != "/predict"))


def api_keys(environ: Mapping[str, str]) -> list[str]:
    """The entries of API_KEYS and ADMIN_API_KEYS, split as the gateway splits them (common.config): none means
    access control is off (either turns it on)."""
    return [entry.strip() for name in ("API_KEYS", "ADMIN_API_KEYS")
            for entry in environ.get(name, "").split(",") if entry.strip()]


def access_line(environ: Mapping[str, str]) -> str:
    """One line on access control, which is off unless API_KEYS or ADMIN_API_KEYS is set (as for the gateway)."""
    keys = api_keys(environ)
    if not keys:
        return "access control: off (API_KEYS unset): every route is open to whoever reaches the port"
    return f"access control: on, {len(keys)} API key(s); send Authorization: Bearer <key> or X-API-Key"


def read_pools(args: argparse.Namespace) -> list[Pool] | None:
    """MODELS as named pools, None without it; a MODELS that cannot be served raises ModelsError."""
    if not args.models:
        return None
    return read_names(parse_models(args.models))


async def main_async(args: argparse.Namespace) -> int:
    """Run the stack until Ctrl-C / SIGTERM (0) or until a child keeps failing (1)."""
    if args.models:
        print("launcher | MODELS is set: one pool per entry; NUM_WORKERS (--workers) and MODEL are ignored",
              flush=True)
    try:
        pools = read_pools(args)
    except ModelsError as exc:
        print(f"launcher | {exc}; nothing started", flush=True)
        return 1
    gpus = list_gpus()
    folder = jobs_dir(os.environ, args.port).absolute()
    try:
        lock = lock_jobs_dir(folder)
    except FolderInUse as exc:
        print(f"launcher | {exc}", flush=True)
        return 1
    except OSError as exc:
        print(f"launcher | cannot use the job folder {folder}: {exc.strerror}", flush=True)
        return 1
    try:
        gateway_socket = listen_socket(args.host, args.port)
    except OSError as exc:
        print(f"launcher | cannot listen on {args.host}:{args.port}: {exc.strerror}", flush=True)
        lock.close()
        return 1
    with lock, gateway_socket, metrics_folder(args.gateway_processes) as metrics_dir:
        return await _supervise(args, gpus, gateway_socket.fileno(), metrics_dir, folder, pools)


async def _supervise(
    args: argparse.Namespace, gpus: list[str], listen_fd: int, metrics_dir: Path | None, folder: Path,
    pools: list[Pool] | None,
) -> int:
    workers = sum(pool.workers for pool in pools) if pools else args.workers
    supervisor = Supervisor(
        build_children(args, gpus, listen_fd, metrics_dir, folder, pools=pools),
        fast_exit_s=args.fast_exit_s, max_fast_failures=args.max_fast_failures,
        status_file=StatusFile(status_path(folder)),
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, supervisor.stop)
    gateways = "gateway" if args.gateway_processes == 1 else f"{args.gateway_processes} gateway processes"
    supervisor.say(f"starting {gateways} on :{args.port} and {workers} worker(s) on "
                   f"{'GPUs ' + ','.join(gpus) if gpus else 'the CPU'}")
    for pool in pools or ():
        folder_note = f", artifacts {pool.artifacts}" if pool.artifacts else ""
        supervisor.say(f"  {pool.name}: {pool.workers} worker(s) of {pool.model}{folder_note}")
    supervisor.say(access_line(os.environ))
    supervisor.say(f"job folder: {folder}")
    announcer = asyncio.create_task(announce_when_ready(
        supervisor, gateway_url(args), workers, example_routes(args, pools), bool(api_keys(os.environ)),
    ))
    code = await supervisor.run()
    announcer.cancel()
    supervisor.say("stopped" if code == 0 else f"stopped: {supervisor.failure}")
    return code


def main() -> None:
    sys.exit(asyncio.run(main_async(parse_args())))


if __name__ == "__main__":
    main()
