"""Real brokers for the end-to-end tests: redis-server and rabbitmq-server on loopback.

Each server runs as a child of the test process, in its own process group and its own temporary
directory, on free ports picked at start. Nothing goes through systemd or the machine's service
configuration, and nothing outlives ``close()``: RabbitMQ even gets its own epmd on a private port
(``ERL_EPMD_PORT``), started and killed by us, so a system epmd is neither used nor touched.

``stop()``/``start()``/``restart()`` keep the ports, so clients can reconnect to the same URL;
``stop(kill=True)`` is the abrupt crash (SIGKILL) that tests use to cut a broker mid-stream.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Self

from tests import sample_app
from tests.certs import Certificates

INSTALL_HINT = "apt-get install redis-server rabbitmq-server"
RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
LOOPBACK = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parent.parent


class ServiceError(RuntimeError):
    """A service binary is missing or a server did not come up; the message says which."""


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((LOOPBACK, port)) == 0


def local_ports(pid: int) -> set[int]:
    """The local TCP ports of ``pid``'s sockets (IPv4 loopback connections)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = str(fd.readlink())
        except FileNotFoundError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[9] in inodes:
            ports.add(int(fields[1].split(":")[1], 16))
    return ports


def wait_ports_closed(ports: list[int], timeout: float) -> None:
    """Until none of ``ports`` accepts connections (a stopped server really let go of them)."""
    deadline = time.monotonic() + timeout
    while any(port_open(port) for port in ports):
        if time.monotonic() > deadline:
            raise ServiceError(f"ports {ports} still open {timeout:.0f} s after stop")
        time.sleep(0.05)


def find_binary(name: str, *prefer: Path) -> str:
    """The path of ``name`` (``prefer`` dirs, then PATH), or ServiceError with the install hint."""
    for directory in prefer:
        candidate = directory / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    raise ServiceError(f"{name} is not installed; install it with: {INSTALL_HINT}")


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


_LIVE: set[_Process] = set()


@atexit.register
def _kill_leftovers() -> None:
    """Safety net for an interrupted session: no server or worker outlives the test process."""
    for process in list(_LIVE):
        process.stop(kill=True)


class _Process:
    """One process in its own process group, its output in a log file."""

    def __init__(self, name: str, log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """SIGSTOP the process for the duration, SIGCONT after."""
        assert self.proc is not None, f"{self.name} is not running"
        os.kill(self.proc.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self.proc.pid, signal.SIGCONT)

    def spawn(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        assert self.proc is None, f"{self.name} is already running"
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # own process group: killpg reaches every descendant
        )
        _LIVE.add(self)

    def wait_port(self, port: int, timeout: float) -> None:
        """Until ``port`` accepts connections; ServiceError if the process dies or time runs out."""
        deadline = time.monotonic() + timeout
        while not port_open(port):
            if self.proc is None or self.proc.poll() is not None:
                raise ServiceError(
                    f"{self.name} exited before port {port} opened; log:\n{log_tail(self.log_path)}"
                )
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"{self.name}: port {port} not open after {timeout:.0f} s; log:\n"
                    f"{log_tail(self.log_path)}"
                )
            time.sleep(0.05)

    def serve(self, argv: list[str], port: int, timeout: float) -> None:
        """Spawn a server and wait until it listens on ``port``; killed again if it does not."""
        self.spawn(argv)
        try:
            self.wait_port(port, timeout)
        except ServiceError:
            self.stop(kill=True)
            raise

    def stop(self, *, kill: bool = False, timeout: float = 15.0) -> None:
        """SIGTERM (or SIGKILL) the process, then SIGKILL its whole group; always reaps it."""
        proc, self.proc = self.proc, None
        _LIVE.discard(self)
        if proc is not None:
            if proc.poll() is None:
                if kill:
                    self._killpg(proc.pid, signal.SIGKILL)
                else:
                    proc.terminate()
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self._killpg(proc.pid, signal.SIGKILL)
                    proc.wait(5)
            # Stragglers of the group (erl_child_setup, inet_gethost, ...) go too.
            self._killpg(proc.pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()
            self._log = None

    @staticmethod
    def _killpg(pgid: int, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signum)


def rediss_url(port: int, ca: Path) -> str:
    """A Redis-over-TLS URL on loopback whose server must have a certificate ``ca`` signed;
    kombu hands the ``ssl_*`` query parameters to redis-py's SSL connection."""
    query = urllib.parse.urlencode({"ssl_cert_reqs": "required", "ssl_ca_certs": str(ca)})
    return f"rediss://{LOOPBACK}:{port}/0?{query}"


def amqps_transport_options(ca: Path) -> dict[str, Any]:
    """kombu transport options for AMQP over TLS whose server must have a certificate ``ca``
    signed, for 127.0.0.1: py-amqp takes them as its connection's own arguments, and its TLS
    context (PROTOCOL_TLS_CLIENT) verifies the chain, and the name given, by default."""
    return {"ssl": {"ca_certs": str(ca), "server_hostname": LOOPBACK}}


class RedisServer:
    """redis-server on a free loopback port, no persistence: a restart starts empty.

    With ``tls`` it speaks TLS only (``--port 0``), with that server certificate, and does not
    ask clients for certificates of their own.
    """

    def __init__(
        self, workdir: Path, port: int | None = None, *, tls: Certificates | None = None
    ) -> None:
        self.binary = find_binary("redis-server")
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.tls = tls
        self._process = _Process("redis-server", workdir / "redis.log")

    @property
    def url(self) -> str:
        if self.tls is None:
            return f"redis://{LOOPBACK}:{self.port}/0"
        return rediss_url(self.port, self.tls.ca)

    @property
    def running(self) -> bool:
        return self._process.running

    def start(self, timeout: float = 10.0) -> None:
        argv = [
            self.binary,
            "--bind", LOOPBACK,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.workdir),
            "--daemonize", "no",
        ]  # fmt: skip
        if self.tls is None:
            argv += ["--port", str(self.port)]
        else:
            argv += [
                "--port", "0",
                "--tls-port", str(self.port),
                "--tls-cert-file", str(self.tls.cert),
                "--tls-key-file", str(self.tls.key),
                "--tls-ca-cert-file", str(self.tls.ca),
                "--tls-auth-clients", "no",
            ]  # fmt: skip
        self._process.serve(argv, self.port, timeout)

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server; ``kill`` makes it a crash (SIGKILL) rather than a shutdown."""
        self._process.stop(kill=kill)
        wait_ports_closed([self.port], 10)

    def restart(self, *, kill: bool = False) -> None:
        self.stop(kill=kill)
        self.start()

    def close(self) -> None:
        self.stop()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RedisSentinel:
    """redis-server in sentinel mode (``--sentinel``: the same binary, whether or not
    redis-sentinel is installed) on a free loopback port, watching one master."""

    MASTER_NAME = "e2e-master"

    def __init__(self, workdir: Path, master: RedisServer) -> None:
        self.binary = find_binary("redis-server")
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.master = master
        self.port = free_port()
        self._process = _Process("redis-sentinel", workdir / "sentinel.log")

    @property
    def url(self) -> str:
        """kombu's sentinel transport URL; the master's name goes in the transport options."""
        return f"sentinel://{LOOPBACK}:{self.port}"

    @property
    def transport_options(self) -> dict[str, str]:
        return {"master_name": self.MASTER_NAME}

    def start(self, timeout: float = 10.0) -> None:
        # Sentinel rewrites its configuration file as it learns (its id, the epoch), so each
        # start gets a fresh one in the work directory.
        config = self.workdir / "sentinel.conf"
        config.write_text(
            f"bind {LOOPBACK}\n"
            f"port {self.port}\n"
            f"dir {self.workdir}\n"
            f"sentinel monitor {self.MASTER_NAME} {LOOPBACK} {self.master.port} 1\n"
        )
        self._process.serve([self.binary, str(config), "--sentinel"], self.port, timeout)

    def close(self) -> None:
        self._process.stop()
        wait_ports_closed([self.port], 10)


class RabbitMQServer:
    """rabbitmq-server (node rabbit@localhost) with the management plugin, run as root.

    Runs ``/usr/lib/rabbitmq/bin/rabbitmq-server`` directly (the ``/usr/sbin`` wrapper would
    switch to the rabbitmq user) with HOME, MNESIA and LOG directories of its own. Ports (AMQP,
    Erlang distribution, management, epmd) are picked free at construction and kept across
    restarts. With ``tls`` it also listens for AMQP over TLS (``tls_url``), with that server
    certificate, and does not ask clients for certificates of their own.
    """

    NODENAME = "rabbit@localhost"

    def __init__(
        self,
        workdir: Path,
        *,
        amqp_port: int | None = None,
        dist_port: int | None = None,
        management_port: int | None = None,
        epmd_port: int | None = None,
        tls: Certificates | None = None,
    ) -> None:
        self.server_binary = find_binary("rabbitmq-server", RABBITMQ_BIN)
        self.epmd_binary = find_binary("epmd")
        self.workdir = workdir
        self.amqp_port = amqp_port or free_port()
        self.dist_port = dist_port or free_port()
        self.management_port = management_port or free_port()
        self.epmd_port = epmd_port or free_port()
        self.tls = tls
        self.tls_port = free_port() if tls else None
        for sub in ("home", "mnesia", "log"):
            (workdir / sub).mkdir(parents=True, exist_ok=True)
        self._server = _Process("rabbitmq-server", workdir / "server.log")
        self._epmd = _Process("epmd", workdir / "epmd.log")
        self._write_config()

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{LOOPBACK}:{self.amqp_port}//"

    @property
    def tls_url(self) -> str:
        assert self.tls_port is not None, "this server has no TLS listener"
        return f"amqps://guest:guest@{LOOPBACK}:{self.tls_port}//"

    @property
    def tls_transport_options(self) -> dict[str, Any]:
        """What a client of ``tls_url`` needs to trust the server."""
        assert self.tls is not None, "this server has no TLS listener"
        return amqps_transport_options(self.tls.ca)

    @property
    def ports(self) -> list[int]:
        """Every port the node itself listens on (epmd's aside)."""
        ports = [self.amqp_port, self.management_port, self.dist_port]
        return ports if self.tls_port is None else [*ports, self.tls_port]

    @property
    def management_url(self) -> str:
        return f"http://{LOOPBACK}:{self.management_port}"

    @property
    def running(self) -> bool:
        return self._server.running

    def paused(self) -> contextlib.AbstractContextManager[None]:
        """SIGSTOP the node (beam.smp): connections stay open but nothing answers."""
        return self._server.paused()

    def env(self) -> dict[str, str]:
        """The environment the server and its CLI tools (rabbitmqctl) must share."""
        base = self.workdir
        return {
            **os.environ,
            "HOME": str(base / "home"),  # .erlang.cookie lives here
            "RABBITMQ_NODENAME": self.NODENAME,
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_PID_FILE": str(base / "rabbit.pid"),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "ERL_EPMD_ADDRESS": LOOPBACK,
            "ERL_EPMD_PORT": str(self.epmd_port),
        }

    def _write_config(self) -> None:
        config = (
            f"listeners.tcp.default = {LOOPBACK}:{self.amqp_port}\n"
            f"management.tcp.ip = {LOOPBACK}\n"
            f"management.tcp.port = {self.management_port}\n"
            "loopback_users = none\n"
            "collect_statistics_interval = 1000\n"
        )
        if self.tls is not None:
            config += (
                f"listeners.ssl.default = {LOOPBACK}:{self.tls_port}\n"
                f"ssl_options.cacertfile = {self.tls.ca}\n"
                f"ssl_options.certfile = {self.tls.cert}\n"
                f"ssl_options.keyfile = {self.tls.key}\n"
                "ssl_options.verify = verify_none\n"
                "ssl_options.fail_if_no_peer_cert = false\n"
            )
        (self.workdir / "rabbitmq.conf").write_text(config)
        # What `rabbitmq-plugins enable --offline rabbitmq_management` writes, without
        # spending a second and a half booting the CLI's Erlang VM to write it.
        (self.workdir / "enabled_plugins").write_text("[rabbitmq_management].\n")

    def start(self, timeout: float = 60.0) -> None:
        if not self._epmd.running:
            self._epmd.spawn(
                [self.epmd_binary, "-port", str(self.epmd_port), "-address", LOOPBACK],
                env=self.env(),
            )
            self._epmd.wait_port(self.epmd_port, 10)
        # RABBITMQ_ALLOW_INPUT makes the script exec the VM instead of waiting on it in a shell,
        # so our child is beam.smp itself and is reaped by us; -noinput keeps the shell off.
        self._server.spawn(
            [self.server_binary, "-noinput"], env={**self.env(), "RABBITMQ_ALLOW_INPUT": "1"}
        )
        try:
            self._server.wait_port(self.amqp_port, timeout)
            self._server.wait_port(self.management_port, 30)
            if self.tls_port is not None:
                self._server.wait_port(self.tls_port, 30)
        except ServiceError:
            self._server.stop(kill=True)
            raise

    def stop(self, *, kill: bool = False) -> None:
        """Stop the node (graceful unless ``kill``); epmd stays for a restart."""
        self._server.stop(kill=kill, timeout=30)
        wait_ports_closed(self.ports, 10)

    def restart(self, *, kill: bool = False) -> None:
        self.stop(kill=kill)
        self.start()

    def close(self) -> None:
        """Kill the node and our epmd: the data dir is thrown away, a clean stop takes 6 s."""
        self.stop(kill=True)
        self._epmd.stop()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ExporterProcess:
    """``python -m exporter`` as a real process on a free loopback port; stderr kept in a file."""

    def __init__(self, broker_url: str, workdir: Path, *extra_args: str) -> None:
        self.broker_url = broker_url
        self.port = free_port()
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.argv = [
            sys.executable, "-m", "exporter",
            "--broker-url", broker_url,
            "--host", LOOPBACK,
            "--port", str(self.port),
            "--inspect-interval-seconds", "2",
            "--reconnect-max-delay-seconds", "1",
            *extra_args,
        ]  # fmt: skip
        self.stderr_path = workdir / f"exporter-{self.port}.stderr"
        self._process = _Process("exporter", self.stderr_path)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        assert self._process.proc is not None, "the exporter is not running"
        return self._process.proc

    def start(self) -> None:
        self._process.spawn(self.argv, env=_child_env())
        self._process.wait_port(self.port, 15)

    def paused(self) -> contextlib.AbstractContextManager[None]:
        """SIGSTOP the exporter for the duration, as a long GC pause or CPU starvation would:
        it reads nothing while the broker keeps sending."""
        return self._process.paused()

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def terminate(self, timeout: float) -> int:
        """SIGTERM; the exit code, or TimeoutExpired (after which the process is killed)."""
        proc = self.proc
        proc.terminate()
        try:
            return proc.wait(timeout)
        finally:
            self._process.stop(kill=True)

    def close(self) -> None:
        self._process.stop(kill=False, timeout=5)


def worker_args(
    app: str, nodename: str, queues: Sequence[str], pool: str, concurrency: int
) -> list[str]:
    """``celery`` arguments for a worker sending events, with a 1 s heartbeat, no gossip and
    no mingle (both slow a start by seconds and add nothing here)."""
    return [
        "-A", app, "worker",
        "-E",
        "-n", nodename,
        "-Q", ",".join(queues),
        "-P", pool,
        "-c", str(concurrency),
        "--heartbeat-interval", "1",
        "--without-gossip",
        "--without-mingle",
        "--loglevel", "INFO",
    ]  # fmt: skip


class CeleryWorker:
    """``celery -A tests.sample_app worker -E`` as a real process, on the given queues."""

    def __init__(
        self,
        broker_url: str,
        workdir: Path,
        *,
        name: str,
        queues: Sequence[str],
        pool: str = "prefork",
        concurrency: int = 2,
        send_sent_event: bool = True,
    ) -> None:
        from celery.utils.nodenames import host_format

        self.nodename: str = host_format(f"{name}@%h")
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.env = {
            **_child_env(),
            sample_app.BROKER_ENV: broker_url,
            sample_app.SEND_SENT_EVENT_ENV: "1" if send_sent_event else "0",
        }
        self.argv = [
            sys.executable, "-m", "celery",
            *worker_args("tests.sample_app", f"{name}@%h", queues, pool, concurrency),
        ]  # fmt: skip
        self.log_path = workdir / f"worker-{name}.log"
        self._process = _Process(f"worker {name}", self.log_path)

    @property
    def running(self) -> bool:
        return self._process.running

    def start(self) -> None:
        self._process.spawn(self.argv, env=self.env)

    def log(self) -> str:
        return log_tail(self.log_path, 60)

    def stop(self) -> None:
        """Warm shutdown (SIGTERM), which sends worker-offline; killed if it hangs."""
        self._process.stop(kill=False, timeout=20)


def _child_env() -> dict[str, str]:
    """Our environment, with the repository importable and no inherited exporter settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERY_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


# What the conftest fixtures hand to tests: start a process or server, get its handle.
ExporterFactory = Callable[..., ExporterProcess]
WorkerFactory = Callable[..., CeleryWorker]
ProducerFactory = Callable[..., Any]  # -> a Celery app (celery is untyped)
RedisFactory = Callable[[], RedisServer]
