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

:class:`PgServer` is a PostgreSQL cluster of our own (the installed binaries,
``initdb`` into a temp folder, its own port and socket folder), so a database
can be stopped, killed or wiped without touching the machine's shared one.

All are context managers that always stop what they started.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
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


def postgres_bin() -> Path | None:
    """The folder holding initdb, pg_ctl and postgres, None when the PostgreSQL server is not installed."""
    candidates: list[Path] = []
    if shutil.which("pg_config"):
        found = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        if found.returncode == 0:
            candidates.append(Path(found.stdout.strip()))
    candidates += [Path(path) for path in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    if shutil.which("initdb"):
        candidates.append(Path(shutil.which("initdb") or "").parent)
    return next((folder for folder in candidates if (folder / "initdb").exists() and (folder / "postgres").exists()),
                None)


_template: Path | None = None


class PgServer:
    """A PostgreSQL cluster of our own on a free loopback port, the same port across restarts and wipes.

    ``folder`` keeps the server's log (a temp folder when None). initdb and postgres refuse to run as root,
    so under root they run as the ``postgres`` user, and the cluster lives in a folder of the system's temp
    dir that this user owns (a test's tmp_path is private to root); :meth:`close` removes it. Trust auth,
    fsync off: a server for tests, never for data.
    """

    USER = "postgres"

    def __init__(self, folder: Path | None = None, start_timeout_s: float = 30.0) -> None:
        bin_dir = postgres_bin()
        if bin_dir is None:
            raise RuntimeError("the PostgreSQL server (initdb, postgres) is not installed")
        self._bin = bin_dir
        self._own_folder = folder is None
        self.folder = Path(tempfile.mkdtemp(prefix="pgserver-log-")) if folder is None else folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.start_timeout_s = start_timeout_s
        self._root = Path(tempfile.mkdtemp(prefix="pgserver-"))
        self.data_dir = self._root / "data"
        self._sockets = self._root / "sockets"
        self._sockets.mkdir()
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            account = pwd.getpwnam(self.USER)
            self._as_user = ["setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--init-groups",
                             "--"]
            for path in (self._root, self._sockets):
                os.chown(path, account.pw_uid, account.pw_gid)
        self.port = free_port()
        self._process: subprocess.Popen | None = None
        self._started = False  # once it has started, the port is the clients' and never changes

    @property
    def url(self) -> str:
        return f"postgresql://{self.USER}@127.0.0.1:{self.port}/postgres"

    @property
    def log_path(self) -> Path:
        return self.folder / "postgres.log"

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""

    def _run(self, *command: str) -> None:
        with open(self.log_path, "ab") as log:
            result = subprocess.run([*self._as_user, *command], stdout=log, stderr=subprocess.STDOUT,
                                    timeout=self.start_timeout_s)
        if result.returncode != 0:
            raise RuntimeError(f"{Path(command[0]).name} failed (exit {result.returncode}):\n{self.log_tail()}")

    def _template(self) -> Path:
        """An empty cluster made once per process: a copy of it starts in a tenth of initdb's time."""
        global _template
        if _template is None or not (_template / "PG_VERSION").exists():
            folder = Path(tempfile.mkdtemp(prefix="pgserver-template-"))
            atexit.register(shutil.rmtree, folder, True)
            if self._as_user:
                account = pwd.getpwnam(self.USER)
                os.chown(folder, account.pw_uid, account.pw_gid)
            self._run(str(self._bin / "initdb"), "-D", str(folder / "data"), "-U", self.USER, "--auth=trust",
                      "--no-sync", "--encoding=UTF8", "--locale=C")
            _template = folder / "data"
        return _template

    def start(self, tries: int = 3) -> PgServer:
        """initdb when there is no cluster yet, then start and wait until it accepts connections.

        A port taken between picking it and the first start gets a new one, ``tries`` times; a restart keeps it.
        """
        if self._process is not None:
            return self
        if not (self.data_dir / "PG_VERSION").exists():
            self._run("cp", "-a", str(self._template()), str(self.data_dir))
        for attempt in range(1, tries + 1):
            try:
                self._start_once()
                self._started = True
                return self
            except RuntimeError:
                if self._started or attempt == tries or "could not bind" not in self.log_tail()[-1000:]:
                    raise
                self.port = free_port()
        return self

    def _start_once(self) -> None:
        with open(self.log_path, "ab") as log:  # the server keeps its own descriptor
            self._process = subprocess.Popen(
                [*self._as_user, str(self._bin / "postgres"), "-D", str(self.data_dir), "-p", str(self.port),
                 "-k", str(self._sockets), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
                 "-c", "synchronous_commit=off", "-c", "full_page_writes=off"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            if self._process.poll() is not None:
                self._process = None
                raise RuntimeError(f"postgres exited at start-up:\n{self.log_tail()}")
            ready = subprocess.run([str(self._bin / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port),
                                    "-U", self.USER, "-d", "postgres", "-t", "1"])
            if ready.returncode == 0:
                return
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"postgres did not accept connections on port {self.port}:\n{self.log_tail()}")
            time.sleep(0.1)

    def stop(self) -> None:
        """Fast shutdown (open sessions are ended, the port refuses); the data stays for the next start."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGINT)  # postgres: SIGINT is the fast shutdown
            try:
                self._process.wait(self.start_timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
                return
        self._process = None

    def kill(self) -> None:
        """SIGKILL to the server and its backends, as a crash would; the next start recovers from the WAL."""
        if self._process is None:
            return
        if self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()
        self._process = None

    def wipe(self) -> None:
        """Stop and delete the cluster: the next :meth:`start` is an empty one, on the same port."""
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def close(self) -> None:
        """Stop and remove the cluster (and the log folder when it was our own)."""
        self.stop()
        shutil.rmtree(self._root, ignore_errors=True)
        if self._own_folder:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> PgServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()
