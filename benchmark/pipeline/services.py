"""Local engines for a user's tracking server: PostgreSQL and an MLflow server on it.

Plans whose steps run in several processes or Slurm jobs need stores that many writers share
(README, "Running on a cluster"). ``python -m benchmark tracking-server start|status|stop``
(:func:`start_tracking_server` ...) runs both on this machine with nothing but PostgreSQL's
programs and this project's Python dependencies, outliving the command:

- :func:`start_postgres`: ``initdb`` + ``postgres`` as an unprivileged system user (PostgreSQL
  refuses root) on a free port, with one database; gives SQLAlchemy URLs.
- :func:`start_mlflow_server`: ``mlflow server`` on a database backend store with a served
  artifact store (clients log over HTTP and never open the database).

Every wait has a timeout, and every process started is tracked: ``stop()`` ends it (SIGTERM,
then SIGKILL), together with anything it spawned (found by a marker in the environment,
``MSCOL_SERVICE``, which every daemon started here inherits), and is idempotent. Processes
started with ``bound=True`` (the default) receive SIGTERM when the process that started them
dies; nothing is registered to run at interpreter exit (a library does not change process-wide
state: the caller stops what it started, the tests in their fixtures).

:class:`ServiceUnavailable` means "this machine lacks the engine" (tests skip on a laptop, fail
in CI); :class:`ServiceError` means the engine is there but misbehaved. The scale-out tests add
a one-node Slurm cluster and package installs (``tests/scaleout/engines.py``).

Only the standard library is imported: this module must not depend on the rest of the project.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import ipaddress
import json
import logging
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
MARKER_ENV = "MSCOL_SERVICE"  # set in every daemon started here; its value names the service

POSTGRES_PROGRAMS = ("initdb", "postgres", "pg_isready", "createdb")


class ServiceError(RuntimeError):
    """An engine is installed but failed to start, answer or stop."""


class ServiceUnavailable(ServiceError):
    """An engine cannot run on this machine (programs missing, not root, not Linux)."""


# ---------------------------------------------------------------------------------------------
# Programs
# ---------------------------------------------------------------------------------------------


def postgres_bindir() -> Path | None:
    """The folder holding ``initdb``, ``postgres``, ``pg_isready`` and ``createdb``, or None.

    Debian puts them in ``/usr/lib/postgresql/<major>/bin`` (only wrappers on the PATH); other
    systems put them on the PATH. The newest major version wins.
    """
    candidates: list[Path] = []
    on_path = shutil.which("postgres")
    if on_path:
        candidates.append(Path(os.path.realpath(on_path)).parent)
    versioned = glob.glob("/usr/lib/postgresql/*/bin")
    versioned.sort(key=lambda p: int(re.sub(r"\D", "", Path(p).parent.name) or 0), reverse=True)
    candidates += [Path(p) for p in versioned]
    for folder in candidates:
        if all((folder / name).is_file() for name in POSTGRES_PROGRAMS):
            return folder
    return None


# ---------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that is free on ``host`` right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def starting(service, what: str, t0: float):
    """The block starts ``service`` (a daemon holder with ``stop()`` and ``started_s``): if
    it fails, the service is stopped (nothing is left running) and the error goes on; if it
    succeeds, ``started_s`` is the time since ``t0`` and is logged."""
    try:
        yield service
    except BaseException:
        service.stop()
        raise
    service.started_s = time.monotonic() - t0
    log.info("%s up in %.1f s", what, service.started_s)


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    interval: float = 0.2,
    alive: Callable[[], str | None] | None = None,
) -> None:
    """Poll ``predicate`` until it is true; :class:`ServiceError` after ``timeout`` seconds.

    ``alive`` (optional) returns an error message as soon as waiting is pointless (a daemon died).
    """
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if alive is not None and (problem := alive()):
            raise ServiceError(f"{what}: {problem}")
        if time.monotonic() > deadline:
            raise ServiceError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def run_command(
    argv: Sequence[str],
    timeout: float = 30,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    **kwargs,
) -> subprocess.CompletedProcess:
    """subprocess.run with a timeout, captured text output and a readable error."""
    try:
        done = subprocess.run(
            list(argv), env=env, capture_output=True, text=True, timeout=timeout, **kwargs
        )
    except subprocess.TimeoutExpired as exc:
        raise ServiceError(f"{' '.join(argv)} did not finish within {timeout} s") from exc
    if check and done.returncode != 0:
        raise ServiceError(
            f"{' '.join(argv)} failed ({done.returncode}): {(done.stderr or done.stdout).strip()}"
        )
    return done


def _set_parent_death_signal() -> None:  # runs in the child, after the uid change
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Daemon:
    """A process started by this module in its own session, with its output in ``log_path``."""

    name: str
    popen: subprocess.Popen
    log_path: Path

    def running(self) -> bool:
        return self.popen.poll() is None

    def died(self) -> str | None:
        """None while running, else a message with the end of its log."""
        if self.running():
            return None
        return f"{self.name} exited with {self.popen.returncode}; log:\n{self.tail()}"

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 20, sig: int = signal.SIGTERM) -> None:
        """``sig`` to its process group, SIGKILL after ``timeout`` s; idempotent."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s ignored signal %d for %.0f s: killing it", self.name, sig, timeout)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(10)


def spawn(
    name: str,
    argv: Sequence[str],
    log_path: Path,
    marker: str,
    env: Mapping[str, str] | None = None,
    user: str | None = None,
    cwd: Path | None = None,
    bound: bool = True,
) -> Daemon:
    """Start ``argv`` in a new session with ``MSCOL_SERVICE=marker`` in its environment.

    Args:
        user: run as this user (needs root).
        bound: the process gets SIGTERM when this thread's process dies (PR_SET_PDEATHSIG), so a
            killed test run leaves no daemon behind. False for servers meant to outlive us.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    full_env = {**(env if env is not None else os.environ), MARKER_ENV: marker}
    kwargs: dict = {}
    if user is not None and user != pwd.getpwuid(os.geteuid()).pw_name:
        entry = pwd.getpwnam(user)
        kwargs.update(user=entry.pw_uid, group=entry.pw_gid, extra_groups=[])
        full_env.update(HOME=entry.pw_dir, USER=user, LOGNAME=user)
    # The log is its owner's alone (0600): PostgreSQL logs a failed statement in full.
    with os.fdopen(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as out:
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_set_parent_death_signal if bound and sys.platform == "linux" else None,
            **kwargs,
        )
    log.debug("started %s (pid %d): %s", name, popen.pid, " ".join(argv))
    return Daemon(name, popen, log_path)


def _process_table() -> dict[int, tuple[int, bytes]]:
    """pid -> (parent pid, environment) of every process we may read."""
    table: dict[int, tuple[int, bytes]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
            ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
            with open(f"/proc/{entry}/environ", "rb") as fh:
                environ = fh.read()
        except (OSError, ValueError):
            continue
        table[int(entry)] = (ppid, environ)
    return table


def marked_processes(marker: str) -> list[int]:
    """Processes carrying ``MSCOL_SERVICE=marker`` and all their descendants (not us)."""
    table = _process_table()
    needle = f"{MARKER_ENV}={marker}".encode()
    found = {pid for pid, (_, env) in table.items() if needle in env.split(b"\0")}
    grew = True
    while grew:
        children = {pid for pid, (ppid, _) in table.items() if ppid in found} - found
        found |= children
        grew = bool(children)
    found.discard(os.getpid())
    return sorted(found)


def sweep(marker: str, timeout: float = 10) -> list[int]:
    """End every process left over from service ``marker``: SIGTERM, then SIGKILL. Returns them."""
    victims = marked_processes(marker)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in victims:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        with contextlib.suppress(ServiceError):
            wait_until(lambda: not marked_processes(marker), timeout, f"{marker} to end")
        if not marked_processes(marker):
            break
    if victims:
        log.info("swept %d leftover processes of %s", len(victims), marker)
    return victims


def new_marker(kind: str) -> str:
    return f"{kind}-{os.getpid()}-{secrets.token_hex(4)}"


# ---------------------------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------------------------


def postgres_os_user() -> str:
    """The system user that runs PostgreSQL: ourselves, or (as root) ``postgres``.

    PostgreSQL refuses to run as root; as root, the PostgreSQL package's ``postgres`` user runs
    it (a user command never creates system users: :class:`ServiceUnavailable` without one).
    """
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid()).pw_name
    try:
        return pwd.getpwnam("postgres").pw_name
    except KeyError:
        raise ServiceUnavailable(
            "PostgreSQL refuses to run as root and there is no 'postgres' user: "
            "run this as an ordinary user"
        ) from None


@dataclass
class PostgresServer:
    """A running PostgreSQL server on ``host``:``port`` that admits two users only.

    The superuser is the system user that runs the server (:attr:`os_user`), over the unix
    socket in the 0700 data folder (``peer``: only that user and root reach it); the databases
    are owned by :attr:`db_user`, a role without superuser, database or role creation rights,
    which logs in over TCP with a random password (SCRAM). The password lives in the libpq
    password file :attr:`passfile` (0600, the starting user's): clients find it through
    ``PGPASSFILE`` (:attr:`env`), so it is in no URL, configuration, log or process listing.
    (A superuser could run programs as the server's user: ``COPY ... TO PROGRAM``.)
    """

    folder: Path
    port: int
    host: str  # the address it listens on
    db_user: str
    os_user: str
    bindir: Path
    daemon: Daemon | None = None
    marker: str = ""
    owns_folder: bool = False
    started_s: float = 0.0

    @property
    def data(self) -> Path:
        """The cluster's data folder, which also holds its unix socket."""
        return self.folder / "pgdata"

    @property
    def passfile(self) -> Path:
        return self.folder / "pgpass"

    @property
    def env(self) -> dict[str, str]:
        """Environment variables for clients (Optuna, the MLflow server) of this server."""
        return {"PGPASSFILE": str(self.passfile)}

    def url(self, database: str = "mscol", driver: str = "postgresql+psycopg2") -> str:
        """SQLAlchemy URL without the password, e.g.
        ``postgresql+psycopg2://mscol@127.0.0.1:5433/mscol``."""
        return f"{driver}://{self.db_user}@{client_address(self.host)}:{self.port}/{database}"

    def create_database(self, name: str, exist_ok: bool = False) -> str:
        """Create database ``name`` (owned by :attr:`db_user`); returns its SQLAlchemy URL.

        ``exist_ok``: a database of that name is fine (a restarted server keeps its data)."""
        if not re.fullmatch(SQL_NAME, name):
            raise ValueError(f"database name {name!r}: letters, digits and _ only")
        done = self._as_superuser("createdb", "-O", self.db_user, name, check=False)
        if done.returncode != 0 and not (exist_ok and "already exists" in done.stderr):
            raise ServiceError(f"createdb {name} failed ({done.returncode}): {done.stderr.strip()}")
        return self.url(name)

    def ready(self) -> bool:
        done = run_command(
            [str(self.bindir / "pg_isready"), "-q", "-h", str(self.data), "-p", str(self.port)],
            timeout=10,
            check=False,
        )
        return done.returncode == 0

    def set_role(self, password: str) -> None:
        """Create :attr:`db_user` if missing, as a role with no rights beyond logging in and
        owning its databases, with ``password`` (given on standard input, never in argv)."""
        role = self.db_user
        sql = (
            f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') "
            f"THEN CREATE ROLE {role}; END IF; END $$;\n"
            f"ALTER ROLE {role} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "
            f"NOBYPASSRLS PASSWORD '{password}';\n"
        )
        psql = ("psql", "-d", "postgres", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-")
        self._as_superuser(*psql, input=sql)

    def _as_superuser(self, program: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
        """A client program of ``bindir`` as :attr:`os_user`, over the unix socket."""
        argv = [str(self.bindir / program), "-h", str(self.data), "-p", str(self.port), *args]
        entry = pwd.getpwnam(self.os_user)
        env = {**os.environ, "HOME": entry.pw_dir, "USER": self.os_user, "LOGNAME": self.os_user}
        if entry.pw_uid != os.geteuid():
            kwargs.update(user=entry.pw_uid, group=entry.pw_gid, extra_groups=[])
        return run_command(argv, timeout=30, env=env, cwd=self.data, **kwargs)

    def stop(self, timeout: float = 30) -> None:
        """Fast shutdown (SIGINT: disconnect clients, checkpoint); idempotent."""
        t0 = time.monotonic()
        if self.daemon is not None:
            self.daemon.stop(timeout, sig=signal.SIGINT)
        t1 = time.monotonic()
        sweep(self.marker)
        t2 = time.monotonic()
        if self.owns_folder:
            shutil.rmtree(self.folder, ignore_errors=True)
        log.debug(
            "postgres stopped in %.1f s, swept in %.1f s, folder removed in %.1f s",
            t1 - t0,
            t2 - t1,
            time.monotonic() - t2,
        )


SQL_NAME = r"[A-Za-z_][A-Za-z0-9_]{0,62}"  # a database or role name we may put into SQL

# pg_hba.conf, rewritten at every start: only these two ways in.
PG_HBA = """\
# Written by benchmark/pipeline/services.py at every start; edits are lost.
# The superuser: the server's own system user, over the unix socket in this 0700 folder.
local   all   {os_user}   peer
# The databases' owner, no superuser: by password (SCRAM), from any address the server
# listens on.
host    all   {db_user}   all   scram-sha-256
"""


def start_postgres(
    folder: Path | None = None,
    port: int | None = None,
    database: str = "mscol",
    db_user: str = "mscol",
    durable: bool = False,
    timeout: float = 60,
    bound: bool = True,
    os_user: str | None = None,
    host: str = LOOPBACK,
) -> PostgresServer:
    """``initdb`` a cluster in ``folder/pgdata`` and run ``postgres`` on ``host``:``port``.

    Args:
        folder: where the cluster lives; the PostgreSQL system user (:func:`postgres_os_user`)
            must be able to reach it. None: a fresh folder under the temp dir, removed by
            ``stop()`` (as root, pytest's 0700 temp folders are out of the ``postgres`` user's
            reach, so the fixtures use this).
        port: None picks a free port.
        database: created and owned by ``db_user``, a role that is no superuser and logs in
            with the password of ``folder/pgpass`` (see :class:`PostgresServer`; the password
            of an earlier start is kept).
        durable: False turns off fsync and synchronous commit (a throwaway test server); a
            server whose data matters (a user's tracking server) needs True.
        os_user: the system user that runs it; None: :func:`postgres_os_user`.
        host: the IPv4 address it listens on (127.0.0.1: this machine only; 0.0.0.0: every
            interface, for clients on other machines).

    The server runs in the foreground of a tracked process (``postgres -D``, not ``pg_ctl
    start``, which detaches it from us); ``stop()`` sends SIGINT, PostgreSQL's fast shutdown.
    Returns a :class:`PostgresServer`; ``server.url(database)`` is the SQLAlchemy URL, and its
    clients need ``server.env`` (``PGPASSFILE``).
    """
    if sys.platform != "linux":
        raise ServiceUnavailable("the local PostgreSQL helper needs Linux")
    bindir = postgres_bindir()
    if bindir is None:
        raise ServiceUnavailable(
            f"PostgreSQL programs ({', '.join(POSTGRES_PROGRAMS)}) not found: install PostgreSQL "
            "(Debian: apt-get install postgresql)"
        )
    check_host(host)
    t0 = time.monotonic()
    os_user = os_user or postgres_os_user()
    if not re.fullmatch(SQL_NAME, db_user) or db_user == os_user:
        raise ServiceError(f"db_user {db_user!r}: letters, digits and _, not {os_user!r}")
    entry = pwd.getpwnam(os_user)
    owns = folder is None
    folder = Path(tempfile.mkdtemp(prefix="mscol-pg-") if owns else folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    if owns:
        folder.chmod(0o711)  # the PostgreSQL user may pass through, not list
    if entry.pw_uid != os.geteuid() and not _reachable(folder):
        raise ServiceError(
            f"{folder} is not reachable by user {os_user}; pass folder=None or a folder it can open"
        )
    port = port or free_port(host)
    server = PostgresServer(
        folder,
        port,
        host,
        db_user,
        os_user,
        bindir,
        marker=new_marker("postgres"),
        owns_folder=owns,
    )
    data = server.data
    user = os_user if entry.pw_uid != os.geteuid() else None
    with starting(server, f"postgres at {server.url(database)}", t0):
        if not (data / "PG_VERSION").exists():
            data.mkdir(mode=0o700, exist_ok=True)
            os.chown(data, entry.pw_uid, entry.pw_gid)
            init = spawn(
                "initdb",
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    os_user,
                    "--auth-local=peer",
                    "--auth-host=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-instructions",
                    *([] if durable else ["--no-sync"]),
                ],
                folder / "initdb.log",
                server.marker,
                user=user,
                cwd=folder,
            )
            try:
                code = init.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                init.stop()
                raise ServiceError(f"initdb did not finish in {timeout} s") from None
            if code != 0:
                raise ServiceError(f"initdb failed ({code}):\n{init.tail()}")
        hba = data / "pg_hba.conf"
        hba.write_text(PG_HBA.format(os_user=os_user, db_user=db_user))
        os.chown(hba, entry.pw_uid, entry.pw_gid)
        settings = {
            "listen_addresses": host,
            "port": str(port),
            # The socket (superuser access) only in the data folder, for its owner alone.
            "unix_socket_directories": str(data),
            "unix_socket_permissions": "0700",
            "password_encryption": "scram-sha-256",
            "max_connections": "200",  # MLflow server + Optuna workers each keep a pool
        }
        if not durable:
            settings.update(fsync="off", synchronous_commit="off", full_page_writes="off")
        argv = [str(bindir / "postgres"), "-D", str(data)]
        for k, v in settings.items():
            argv += ["-c", f"{k}={v}"]
        server.daemon = spawn(
            "postgres",
            argv,
            folder / "postgres.log",
            server.marker,
            user=user,
            cwd=folder,
            bound=bound,
        )
        wait_until(server.ready, timeout, f"PostgreSQL on port {port}", 0.3, server.daemon.died)
        password = _stored_password(server.passfile, db_user) or secrets.token_urlsafe(24)
        server.set_role(password)
        _write_passfile(server, password)
        if database:
            server.create_database(database)
    return server


def _stored_password(passfile: Path, user: str) -> str | None:
    """The password of ``user`` in a libpq password file (``host:port:db:user:password``)."""
    if not passfile.is_file():
        return None
    for line in passfile.read_text().splitlines():
        fields = line.split(":")
        if len(fields) == 5 and fields[3] == user:
            return fields[4]
    return None


def _write_passfile(server: PostgresServer, password: str) -> None:
    """The libpq password file of ``server``'s role, readable by its owner alone (0600: libpq
    ignores a file others may read), for the addresses its URLs and this machine use."""
    if server.host == WILDCARD:
        hosts = list(dict.fromkeys([client_address(server.host), LOOPBACK, "localhost"]))
    else:
        hosts = [server.host]
    text = "".join(f"{h}:{server.port}:*:{server.db_user}:{password}\n" for h in hosts)
    tmp = server.passfile.with_name(f".{server.passfile.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        os.fchmod(fh.fileno(), 0o600)
        fh.write(text)
    os.replace(tmp, server.passfile)


WILDCARD = "0.0.0.0"


def check_host(host: str) -> None:
    """:class:`ServiceError` unless ``host`` is an IPv4 address (one of this machine's, or
    0.0.0.0 for all of them)."""
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        raise ServiceError(
            f"host {host!r}: an IPv4 address of this machine (0.0.0.0: every interface)"
        ) from None


def client_address(host: str) -> str:
    """How clients name a server listening on ``host``: the address itself, or for 0.0.0.0
    this machine's host name (what other machines of a cluster usually resolve)."""
    return socket.gethostname() if host == WILDCARD else host


def _reachable(folder: Path) -> bool:
    """Whether every folder from / to ``folder`` is searchable by "others"."""
    for part in [folder, *folder.parents]:
        if not part.stat().st_mode & 0o001:
            return False
    return True


# ---------------------------------------------------------------------------------------------
# MLflow tracking server
# ---------------------------------------------------------------------------------------------


def http_ok(url: str, timeout: float = 2) -> bool:
    """Whether GET ``url`` answers 200, bypassing any HTTP proxy of the environment."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@dataclass
class MlflowServer:
    """A running ``mlflow server``; ``uri`` is the tracking URI for clients."""

    uri: str
    port: int
    backend_store_uri: str
    artifacts_dir: Path
    daemon: Daemon | None = None
    marker: str = ""
    started_s: float = 0.0

    def stop(self, timeout: float = 20) -> None:
        if self.daemon is not None:
            self.daemon.stop(timeout)
        sweep(self.marker)


def start_mlflow_server(
    backend_store_uri: str,
    artifacts_dir: Path,
    port: int | None = None,
    workers: int = 1,
    timeout: float = 180,
    log_path: Path | None = None,
    bound: bool = True,
    job_execution: bool = False,
    host: str = LOOPBACK,
    env: Mapping[str, str] | None = None,
) -> MlflowServer:
    """Run ``mlflow server`` on ``host``:``port`` and wait until ``/health`` answers.

    ``--serve-artifacts --artifacts-destination artifacts_dir``: new experiments get the
    artifact root ``mlflow-artifacts:/``, so clients upload and download artifacts through the
    server over HTTP and need no access to ``artifacts_dir``, nor to the backend store (e.g.
    ``postgresql+psycopg2://...``, whose schema the server creates or migrates on start).
    The server runs with this interpreter (``python -m mlflow``), i.e. this environment's MLflow.

    ``workers``: uvicorn worker processes (each imports MLflow: ~10 s of CPU here); one serves
    concurrent clients through its thread pool. ``job_execution``: MLflow 3's background job
    runner (GenAI features: prompt optimisation, trace roll-ups), 7 more Python processes that
    this project does not use; off unless asked for. ``env``: added to the server's environment
    (e.g. :attr:`PostgresServer.env`, the backend store's password file).

    ``host``: the IPv4 address it listens on. MLflow's server has no authentication: whoever
    reaches it may read, change and delete every run and artifact, so anything beyond
    127.0.0.1 must be a network that only trusted machines reach. Clients must name it as
    :attr:`MlflowServer.uri` does (MLflow checks the ``Host`` header against
    ``--allowed-hosts``, by default loopback and private addresses only).
    """
    check_host(host)
    artifacts_dir = Path(artifacts_dir).resolve()
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port(host)
    address = client_address(host)
    uri = f"http://{address}:{port}"
    server = MlflowServer(uri, port, backend_store_uri, artifacts_dir, marker=new_marker("mlflow"))
    argv = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        backend_store_uri,
        "--serve-artifacts",
        "--artifacts-destination",
        str(artifacts_dir),
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    if host != LOOPBACK:
        names = dict.fromkeys([address, LOOPBACK, "localhost"])
        argv += ["--allowed-hosts", ",".join(f"{name}:{port}" for name in names)]
    with starting(server, f"mlflow server at {uri}", time.monotonic()):
        server.daemon = spawn(
            "mlflow server",
            argv,
            log_path or artifacts_dir.parent / f"mlflow-server-{port}.log",
            server.marker,
            env={
                **os.environ,
                **(env or {}),
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": str(job_execution).lower(),
            },
            cwd=artifacts_dir.parent,
            bound=bound,
        )
        wait_until(
            lambda: http_ok(f"{uri}/health"),
            timeout,
            f"mlflow server at {uri}",
            interval=0.5,
            alive=server.daemon.died,
        )
    return server


# ---------------------------------------------------------------------------------------------
# A user's tracking server: PostgreSQL + ``mlflow server`` that outlive the command
# ---------------------------------------------------------------------------------------------

TRACKING_STATE = "server.json"  # in the server's folder: pids, markers, ports, URIs


def _tracking_state(folder: Path) -> dict:
    path = folder / TRACKING_STATE
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_tracking_state(folder: Path, info: dict) -> None:
    tmp = folder / f".{TRACKING_STATE}.tmp"
    tmp.write_text(json.dumps(info, indent=2, sort_keys=True))
    os.replace(tmp, folder / TRACKING_STATE)


def _tracking_lines(info: dict, state: str) -> list[str]:
    lines = [
        f"tracking server {state} (folder {info['folder']})",
        f"  paths.tracking_uri={info['tracking_uri']}",
        f"  paths.optuna_storage={info['optuna_storage']}",
    ]
    if "pgpassfile" in info:  # a state file of the password-less servers before has none
        lines.append(
            f"  export PGPASSFILE={info['pgpassfile']}   # the database's password; jobs inherit it"
        )
    if not ipaddress.IPv4Address(info.get("host", LOOPBACK)).is_loopback:
        lines.append(
            f"  warning: MLflow's server has no authentication: anyone who reaches "
            f"{info['host']}:{info['mlflow']['port']} can read, change and delete the runs"
        )
    return lines


def _running(info: dict) -> bool:
    return bool(info.get("running")) and all(
        info[k]["pid"] in marked_processes(info[k]["marker"]) for k in ("postgres", "mlflow")
    )


def port_free(host: str, port: int) -> bool:
    """Whether ``port`` of ``host`` can be listened on now (nothing else listens there)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def start_tracking_server(folder: Path, host: str | None = None, timeout: float = 180) -> list[str]:
    """Start PostgreSQL (durable, databases ``mlflow`` and ``optuna``) and an ``mlflow server``
    on it (artifacts served from ``folder/artifacts``), both listening on ``host``, both
    outliving this process; the state file ``folder/server.json`` lets
    :func:`stop_tracking_server` stop them.

    ``host``: the IPv4 address to listen on; None: the previous start's, at first 127.0.0.1
    (this machine only). ``0.0.0.0`` serves the compute nodes of a cluster: PostgreSQL admits
    them with the password of ``folder/postgres/pgpass`` (:class:`PostgresServer`), but
    MLflow's server has no authentication (the lines returned say so). ``folder`` is made
    private (0700; as root 0711, so that the ``postgres`` user reaches its cluster).

    Idempotent: a server already running is left as it is. A restart reuses the ports of the
    previous start (when free), so the URIs a configuration holds stay valid. Returns the lines
    to print: the two URIs to set as ``paths.tracking_uri`` and ``paths.optuna_storage``, and
    the ``PGPASSFILE`` to export. Raises :class:`ServiceUnavailable` without PostgreSQL,
    :class:`ServiceError` when a server fails to start (the log file is named).
    """
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o711 if os.geteuid() == 0 else 0o700)
    info = _tracking_state(folder)
    if info and _running(info):
        return _tracking_lines(info, "already running")
    host = host or info.get("host", LOOPBACK)
    check_host(host)

    def port(kind: str) -> int | None:
        previous = info.get(kind, {}).get("port")
        return previous if previous is not None and port_free(host, previous) else None

    for kind in ("mlflow", "postgres"):  # leftovers of a server that died half-way
        if info.get(kind, {}).get("marker"):
            sweep(info[kind]["marker"])
    if os.geteuid() == 0 and not _reachable(folder):
        raise ServiceError(
            f"{folder} is not reachable by the PostgreSQL user (running as root): choose a "
            "folder whose parents all allow others to enter (chmod o+x), e.g. under runs/"
        )
    pg = start_postgres(
        folder / "postgres",
        port=port("postgres"),
        database="",
        durable=True,
        bound=False,
        host=host,
    )
    try:
        backend = pg.create_database("mlflow", exist_ok=True)
        optuna_url = pg.create_database("optuna", exist_ok=True)
        server = start_mlflow_server(
            backend,
            folder / "artifacts",
            port=port("mlflow"),
            timeout=timeout,
            log_path=folder / "mlflow.log",
            bound=False,
            host=host,
            env=pg.env,
        )
    except BaseException:
        pg.stop()
        raise
    assert pg.daemon is not None and server.daemon is not None
    info = {
        "folder": str(folder),
        "running": True,
        "started": time.time(),
        "host": host,
        "postgres": {"pid": pg.daemon.popen.pid, "marker": pg.marker, "port": pg.port},
        "mlflow": {"pid": server.daemon.popen.pid, "marker": server.marker, "port": server.port},
        "tracking_uri": server.uri,
        "optuna_storage": optuna_url,
        "pgpassfile": str(pg.passfile),
    }
    _write_tracking_state(folder, info)
    return _tracking_lines(info, "started")


def stop_tracking_server(folder: Path, timeout: float = 60) -> list[str]:
    """Stop the tracking server of ``folder`` (MLflow first, then PostgreSQL's fast shutdown);
    only processes carrying the markers of its state file are signalled. Idempotent."""
    folder = Path(folder).resolve()
    info = _tracking_state(folder)
    if not info:
        return [f"no tracking server in {folder}"]
    sweep(info["mlflow"]["marker"], timeout)
    pg_pid, pg_marker = info["postgres"]["pid"], info["postgres"]["marker"]
    if pg_pid in marked_processes(pg_marker):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pg_pid, signal.SIGINT)  # fast shutdown: disconnect clients, checkpoint
        with contextlib.suppress(ServiceError):
            wait_until(lambda: pg_pid not in marked_processes(pg_marker), timeout, "PostgreSQL")
    sweep(pg_marker, timeout)
    info["running"] = False
    _write_tracking_state(folder, info)
    return _tracking_lines(info, "stopped")


def tracking_server_status(folder: Path) -> list[str]:
    """Whether the tracking server of ``folder`` runs and answers, and its URIs."""
    folder = Path(folder).resolve()
    info = _tracking_state(folder)
    if not info:
        return [f"no tracking server in {folder}"]
    if not _running(info):
        return _tracking_lines(info, "stopped")
    healthy = http_ok(f"{info['tracking_uri']}/health")
    return _tracking_lines(info, "running" if healthy else "running but not answering")
