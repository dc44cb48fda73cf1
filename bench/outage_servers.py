"""Servers of our own to break: a RabbitMQ node and an S3 server, on free loopback ports, in a temp folder.

The machine's RabbitMQ (127.0.0.1:5672) is shared with every other test and
session, so the broker outage never touches it: :class:`RabbitNode` starts a
second node of the installed ``rabbitmq-server`` with its own node name,
ports, Erlang cookie, data and log folders, no plugins and an empty config
(the system's would name the shared node's port). ``stop_app`` / ``start_app``
stop and start the broker inside the node, as an operator's restart does: its
durable quorum queues and their messages stay on disk.

:class:`S3Server` runs s3rver (npm, installed by scripts/install-system-deps.sh),
which keeps buckets and objects as files: stopping the process is a real
outage (the port refuses) and a restart serves the same objects. It ignores
``If-None-Match`` (a create-if-absent put overwrites); the job path does not
rely on that.

Both are context managers that always stop what they started.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType

import httpx

from bench.stack import free_port, terminate

#: Debian's /usr/sbin scripts switch to the rabbitmq user (losing our HOME and cookie); these do not.
_DEBIAN_RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")


def rabbitmq_bin() -> Path | None:
    """The folder holding rabbitmq-server and rabbitmqctl, None when RabbitMQ is not installed."""
    if (_DEBIAN_RABBITMQ_BIN / "rabbitmq-server").exists():
        return _DEBIAN_RABBITMQ_BIN
    found = shutil.which("rabbitmq-server")
    return Path(found).parent if found else None


def s3rver_bin() -> str | None:
    return shutil.which("s3rver")


class RabbitNode:
    """A RabbitMQ node of our own; ``url`` is its AMQP URL (guest, loopback)."""

    def __init__(self, folder: Path, start_timeout_s: float = 90.0) -> None:
        bin_dir = rabbitmq_bin()
        if bin_dir is None:
            raise RuntimeError("rabbitmq-server is not installed")
        self._server = bin_dir / "rabbitmq-server"
        self._ctl = bin_dir / "rabbitmqctl"
        self.folder = folder
        self.node = f"chaos-{os.getpid()}-{secrets.token_hex(3)}@localhost"
        self.port = free_port()
        self.start_timeout_s = start_timeout_s
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/"
        self._process: subprocess.Popen | None = None
        self._env = self._environment()

    def _environment(self) -> dict[str, str]:
        home = self.folder / "home"
        home.mkdir(parents=True, exist_ok=True)
        cookie = home / ".erlang.cookie"  # rabbitmqctl and the node find it in HOME
        if not cookie.exists():
            cookie.write_text(secrets.token_hex(16))
            cookie.chmod(0o400)
        for empty in ("rabbitmq.conf", "rabbitmq-env.conf", "enabled_plugins"):
            (self.folder / empty).write_text("")
        return {
            **os.environ,
            "HOME": str(home),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(free_port()),  # the default, port + 20000, may be taken
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_MNESIA_BASE": str(self.folder / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.folder / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.folder / "rabbitmq"),  # rabbitmq.conf, empty
            "RABBITMQ_CONF_ENV_FILE": str(self.folder / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.folder / "enabled_plugins"),
        }

    def ctl(self, *args: str, timeout_s: float = 60.0) -> str:
        """``rabbitmqctl -n <this node> ...``; its output, or RuntimeError with it."""
        result = subprocess.run([str(self._ctl), "-n", self.node, *args], env=self._env, capture_output=True,
                                text=True, timeout=timeout_s)
        if result.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {result.stdout[-1000:]}{result.stderr[-1000:]}")
        return result.stdout

    def start(self, tries: int = 3) -> RabbitNode:
        """Start the node; a port taken between picking it and the node's bind gets new ports, ``tries`` times."""
        for _ in range(tries - 1):
            try:
                return self._start_once()
            except RuntimeError:
                if "eaddrinuse" not in self.log_tail():
                    raise
                self.port = free_port()
                self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/"
                self._env = self._environment()
        return self._start_once()

    def _start_once(self) -> RabbitNode:
        with open(self.folder / "server.out", "wb") as log:  # the child keeps its own descriptor
            self._process = subprocess.Popen([str(self._server)], env=self._env, stdout=log,
                                             stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"the RabbitMQ node {self.node} exited at start-up:\n{self.log_tail()}")
            try:
                self.ctl("await_startup", "--timeout", "10", timeout_s=30)
                return self
            except (RuntimeError, subprocess.TimeoutExpired):
                if time.monotonic() > deadline:
                    self.close()
                    raise RuntimeError(f"the RabbitMQ node {self.node} did not start:\n{self.log_tail()}") from None
                time.sleep(0.5)  # not registered with epmd yet: rabbitmqctl fails at once

    def log_tail(self) -> str:
        path = self.folder / "server.out"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop_app(self) -> None:
        """The broker stops (every connection is closed, the port refuses); the node stays up."""
        self.ctl("stop_app")

    def start_app(self) -> None:
        self.ctl("start_app")
        self.ctl("await_startup", "--timeout", "60", timeout_s=90)

    def close(self) -> None:
        if self._process is None:
            return
        if self._process.poll() is None:
            try:
                self.ctl("stop", timeout_s=60)  # halts the Erlang VM
                self._process.wait(30)
            except (RuntimeError, subprocess.TimeoutExpired):
                terminate(self._process, timeout_s=10)
        self._process = None

    def __enter__(self) -> RabbitNode:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()


class S3Server:
    """s3rver on a free port with one bucket, its data kept in ``folder`` across :meth:`stop` and :meth:`start`."""

    #: s3rver's fixed credentials.
    ACCESS_KEY = "S3RVER"

    def __init__(self, folder: Path, bucket: str = "jobs", start_timeout_s: float = 30.0) -> None:
        binary = s3rver_bin()
        if binary is None:
            raise RuntimeError("s3rver is not installed (scripts/install-system-deps.sh installs it)")
        self._binary = binary
        self.folder = folder
        self.bucket = bucket
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.start_timeout_s = start_timeout_s
        self._process: subprocess.Popen | None = None

    @property
    def env(self) -> dict[str, str]:
        """The job path's settings for this server."""
        return {"S3_ENDPOINT_URL": self.url, "S3_BUCKET": self.bucket, "AWS_ACCESS_KEY_ID": self.ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": self.ACCESS_KEY}

    def start(self) -> S3Server:
        (self.folder / "data").mkdir(parents=True, exist_ok=True)
        with open(self.folder / "s3rver.log", "ab") as log:
            self._process = subprocess.Popen(
                [self._binary, "-d", str(self.folder / "data"), "-a", "127.0.0.1", "-p", str(self.port),
                 "--configure-bucket", self.bucket, "--silent"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"s3rver exited at start-up: {(self.folder / 's3rver.log').read_text()[-2000:]}")
            try:
                httpx.get(f"{self.url}/{self.bucket}", timeout=1)
                return self
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"s3rver did not answer on {self.url}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        """The process ends: connections are refused until :meth:`start`."""
        if self._process is not None:
            terminate(self._process, timeout_s=10)
            self._process = None

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()
