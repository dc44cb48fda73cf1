"""``python -m bench.gpu`` (``make bench-gpu``): measure the stack on a GPU in one command.

It first installs the carried wheels (``make gpu-wheels``) where the stack's
packages are missing, then measures the in-process limit at each ``--batches``,
the first worker direct, a gateway in front of one worker per GPU, and a gateway
in front of two workers sharing GPU 0, at each ``--concurrency``, with GPU
utilisation, the CPU per request of every process and the workers' own timings,
then profiles the gateway and a worker with py-spy under the heaviest load
(where py-spy is found; ``--no-profile`` to skip). It writes one JSON
(``--out``) and one Markdown table (``--markdown``). With ``JAX_PLATFORMS=cpu``
it runs the same on a machine without a GPU (the suite does, with a tiny model).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.gpu import carry

REPO = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = "worker.examples.encoder:TransformerEncoder"


def _env_pairs(pairs: list[str], parser: argparse.ArgumentParser) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            parser.error(f"expected KEY=VALUE, got {pair!r}")
        env[key] = value
    return env


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="the served model (module:Class)")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 64, 256, 1024],
                        help="batch sizes of the in-process limit")
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 64, 256], help="connections per point")
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per point")
    parser.add_argument("--warmup", type=float, default=1.0, help="discarded seconds before each point")
    parser.add_argument("--inprocess-duration", type=float, default=2.0, help="seconds per in-process measurement")
    parser.add_argument("--max-batch-size", type=int, default=256, help="the workers' MAX_BATCH_SIZE")
    parser.add_argument("--shared-mem-fraction", type=float, default=0.4,
                        help="XLA_PYTHON_CLIENT_MEM_FRACTION of each of two workers sharing a GPU")
    parser.add_argument("--no-profile", dest="profile", action="store_false",
                        help="skip the py-spy profile of the gateway and a worker under the heaviest load")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--worker-env", nargs="*", default=[], metavar="KEY=VALUE", help="extra worker settings")
    parser.add_argument("--gateway-env", nargs="*", default=[], metavar="KEY=VALUE", help="extra gateway settings")
    parser.add_argument("--wheels", type=Path, default=carry.WHEELS_DIR, help="carried wheels (make gpu-wheels)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "gpu.json")
    parser.add_argument("--markdown", type=Path, help="Markdown table (default: --out with .md)")
    args = parser.parse_args(argv)
    if min(args.batches + args.concurrency + [args.max_batch_size]) < 1:
        parser.error("--batches, --concurrency and --max-batch-size must be at least 1")
    if not 0 < args.shared_mem_fraction <= 0.5:
        parser.error("--shared-mem-fraction must be in (0, 0.5]: two workers share the GPU")
    if args.duration <= 0 or args.inprocess_duration <= 0 or args.warmup < 0:
        parser.error("--duration and --inprocess-duration must be positive, --warmup not negative")
    args.markdown = args.markdown or args.out.with_suffix(".md")
    args.worker_env = {"MAX_BATCH_SIZE": str(args.max_batch_size), **_env_pairs(args.worker_env, parser)}
    args.gateway_env = _env_pairs(args.gateway_env, parser)
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    carried = carry.activate(args.wheels, carry.SITE_DIR)
    for line in carried:
        print(line, flush=True)
    from bench.gpu.run import run  # imports the stack's packages: only once they are installed

    return run(args, carried)


if __name__ == "__main__":
    main()
