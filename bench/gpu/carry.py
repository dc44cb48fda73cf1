"""What the GPU kit carries to a machine with no network, and how it unpacks it there.

A borrowed GPU machine has JAX with CUDA, numpy, httpx, aiohttp, uvloop and
prometheus-client, but none of the gateway's web stack. ``make gpu-wheels``
(``python -m bench.gpu.carry``) downloads, on a machine with network, the wheels
for the target's Python into one folder (``build/gpu-wheels``), pinned to the
versions installed here so the GPU runs the code the suite tested; and, where
apt is at hand, wrk and the LuaJIT library it links, so the load generator
there is the one ``make bench`` uses. ``activate`` installs them there before
anything imports them. Standard library only: it runs before the stack's
packages exist.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WHEELS_DIR = REPO / "build" / "gpu-wheels"
#: Where the wheels are unpacked on the GPU machine (ignored, like the wheels).
SITE_DIR = REPO / "build" / "gpu-site"
#: The carried folder's size limit: what travels with the working tree.
MAX_BYTES = 64 * 1024 * 1024
#: Distributions the gateway and worker import that the GPU machine lacks, with their own needs that it
#: lacks too; and py-spy, which profiles them there. gunicorn and the job path's clients (aio-pika,
#: asyncpg, aiosqlite) stay behind: the kit runs ``python -m gateway`` and ``python -m worker`` with no
#: job store or broker.
DISTRIBUTIONS = (
    "starlette", "uvicorn", "httptools", "orjson", "pydantic", "pydantic-core", "pydantic-settings",
    "python-dotenv", "typing-inspection", "annotated-types", "typing-extensions", "python-multipart",
    "fastapi-standalone-docs", "jsonschema", "jsonschema-specifications", "referencing", "rpds-py", "obstore",
    "py-spy",
)
#: Import names whose absence means the wheels must be installed.
MODULES = ("starlette", "uvicorn", "httptools", "orjson", "pydantic", "pydantic_settings", "jsonschema", "obstore")
#: Debian packages whose files give a wrk that runs without installing anything (unpacked, not installed).
WRK_DEBS = ("wrk", "libluajit-5.1-2")
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64", "manylinux1_x86_64")


def missing_modules() -> list[str]:
    return [name for name in MODULES if importlib.util.find_spec(name) is None]


def pinned(distributions: tuple[str, ...] = DISTRIBUTIONS) -> list[str]:
    """``name==version`` of each distribution as installed in this interpreter."""
    return [f"{name}=={metadata.version(name)}" for name in distributions]


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def download_wheels(dest: Path, python_version: str) -> None:
    """Wheels of ``pinned()`` for ``python_version`` on x86-64 Linux, without their dependencies (listed)."""
    argv = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
            "--python-version", python_version, "--implementation", "cp", "--dest", str(dest)]
    for platform in PLATFORMS:
        argv += ["--platform", platform]
    subprocess.run(argv + pinned(), check=True)


def download_wrk(dest: Path) -> bool:
    """wrk and libluajit unpacked from their Debian packages into ``dest/bin`` and ``dest/lib``;
    False where apt-get is missing (the kit then uses the Python load generator)."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        return False
    with tempfile.TemporaryDirectory(prefix="gpu-wrk-") as tmp:
        os.chmod(tmp, 0o777)  # apt downloads as its own user where it can
        subprocess.run(["apt-get", "download", "-qq", *WRK_DEBS], cwd=tmp, check=True)
        root = Path(tmp) / "root"
        for deb in Path(tmp).glob("*.deb"):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
        (dest / "bin").mkdir(parents=True, exist_ok=True)
        (dest / "lib").mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / "usr" / "bin" / "wrk", dest / "bin" / "wrk")
        for library in root.glob("usr/lib/*/libluajit-5.1.so.2*"):
            shutil.copy2(library, dest / "lib" / "libluajit-5.1.so.2")
    return True


def download(dest: Path = WHEELS_DIR, python_version: str = "3.12") -> int:
    """Fill ``dest`` afresh; its size in bytes, refused past :data:`MAX_BYTES`."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    download_wheels(dest, python_version)
    has_wrk = download_wrk(dest)
    size = folder_bytes(dest)
    if size > MAX_BYTES:
        raise SystemExit(f"{dest} holds {size / 2**20:.1f} MiB, over the {MAX_BYTES / 2**20:.0f} MiB carried")
    print(f"{dest}: {len(list(dest.glob('*.whl')))} wheels{', wrk' if has_wrk else ''}, {size / 2**20:.1f} MiB")
    return size


def install(wheels: Path, target: Path) -> None:
    """Unpack every wheel of ``wheels`` into ``target`` (no index, no dependency resolution: the folder
    holds exactly what is needed)."""
    found = sorted(str(path) for path in wheels.glob("*.whl"))
    if not found:
        raise SystemExit(f"{wheels} holds no wheels: run make gpu-wheels on a machine with network")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
                    "--disable-pip-version-check", "--upgrade", "--target", str(target), *found], check=True)


def _prepend(variable: str, value: str) -> None:
    os.environ[variable] = os.pathsep.join(filter(None, (value, os.environ.get(variable))))


def activate(wheels: Path = WHEELS_DIR, target: Path = SITE_DIR) -> list[str]:
    """Make the carried packages and wrk usable by this process and every child it starts; what it did.

    Wheels are installed only where the stack's packages are missing (a development machine has them);
    a carried wrk is put on PATH only where none is installed and it runs here.
    """
    done = []
    if missing_modules() and wheels.is_dir():
        install(wheels, target)
        sys.path.insert(0, str(target))
        _prepend("PYTHONPATH", str(target))
        _prepend("PATH", str(target / "bin"))  # the carried py-spy
        importlib.invalidate_caches()
        done.append(f"installed {len(list(wheels.glob('*.whl')))} wheels into {target.name}")
    carried_wrk = wheels / "bin" / "wrk"
    if shutil.which("wrk") is None and carried_wrk.is_file():
        env = {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join(
            filter(None, (str(wheels / "lib"), os.environ.get("LD_LIBRARY_PATH"))))}
        try:  # wrk --version prints its banner and exits 1
            probe = subprocess.run([str(carried_wrk), "--version"], capture_output=True, env=env, timeout=10)
            runs = probe.stdout.startswith(b"wrk ")
        except (OSError, subprocess.SubprocessError):
            runs = False
        if runs:
            _prepend("PATH", str(wheels / "bin"))
            _prepend("LD_LIBRARY_PATH", str(wheels / "lib"))
            done.append("carried wrk on PATH")
    return done


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu.carry", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", type=Path, default=WHEELS_DIR, help="folder to fill (emptied first)")
    parser.add_argument("--python-version", default="3.12", help="the GPU machine's Python")
    args = parser.parse_args(argv)
    download(args.dest, args.python_version)


if __name__ == "__main__":
    main()
