"""Engines that only the scale-out tests start: a one-node Slurm cluster, and Debian packages.

:func:`start_slurm` runs munged, slurmctld and slurmd in a folder (munge key, ``slurm.conf`` for
this host's real CPUs and memory, state and spool directories), ready when ``sinfo`` shows the
node idle; it needs root (slurmd launches jobs as the submitting user). :func:`ensure_packages`
installs missing Debian packages (as root, via apt-get: CI) or says exactly what it would
install. :func:`postgres_user` finds or creates the system user PostgreSQL runs as under root.

Processes are started and stopped with :mod:`benchmark.pipeline.services` (its markers, sweeps
and parent-death signal), which keeps only what a user runs: the tracking server.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import secrets
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmark.pipeline.services import (
    LOOPBACK,
    POSTGRES_PROGRAMS,
    Daemon,
    ServiceError,
    ServiceUnavailable,
    free_port,
    new_marker,
    postgres_bindir,
    run_command,
    spawn,
    starting,
    sweep,
    wait_until,
)

log = logging.getLogger(__name__)

# Debian packages per engine, and the programs that show they are installed.
APT_PACKAGES: dict[str, tuple[str, ...]] = {
    # --no-install-recommends: 8 packages instead of the 43 of the `slurm-wlm` metapackage.
    "slurm": ("slurmctld", "slurmd", "slurm-client", "munge"),
    "postgres": ("postgresql",),
}
SLURM_PROGRAMS = tuple("munged slurmctld slurmd sinfo sbatch squeue scontrol scancel".split())

# ---------------------------------------------------------------------------------------------
# Packages
# ---------------------------------------------------------------------------------------------


def missing_programs(engine: str) -> list[str]:
    """Programs of ``engine`` ("slurm" or "postgres") that this machine lacks."""
    if engine == "postgres":
        return [] if postgres_bindir() else list(POSTGRES_PROGRAMS)
    return [p for p in SLURM_PROGRAMS if shutil.which(p) is None and not _in_sbin(p)]


def _in_sbin(program: str) -> bool:
    return any(Path(d, program).is_file() for d in ("/usr/sbin", "/sbin"))


def _program(name: str) -> str:
    """Absolute path of a program, also from /usr/sbin (not on a non-root PATH)."""
    found = shutil.which(name) or next(
        (str(Path(d, name)) for d in ("/usr/sbin", "/sbin") if Path(d, name).is_file()), None
    )
    if found is None:
        raise ServiceUnavailable(f"program {name!r} not found")
    return found


def install_command(packages: Iterable[str]) -> list[str]:
    return ["apt-get", "install", "-y", "--no-install-recommends", *packages]


def ensure_packages(
    engines: Sequence[str] = ("slurm", "postgres"), install: bool = True, timeout: float = 900
) -> list[str]:
    """Make sure the programs of ``engines`` are installed; returns the packages installed.

    Installs with apt-get only when ``install`` is true, we are root and apt-get exists (running
    ``apt-get update`` first if the install fails for want of package lists). Otherwise raises
    :class:`ServiceUnavailable` naming the missing programs and the command that would install
    them, e.g. ``apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge``.
    """
    packages = [p for e in engines if missing_programs(e) for p in APT_PACKAGES[e]]
    if not packages:
        return []
    missing = sorted({p for e in engines for p in missing_programs(e)})
    command = install_command(packages)
    if not install or os.geteuid() != 0 or shutil.which("apt-get") is None:
        why = (
            "not asked to install"
            if not install
            else ("not root" if os.geteuid() != 0 else "no apt-get")
        )
        raise ServiceUnavailable(
            f"missing {', '.join(missing)} ({why}); would install: {' '.join(command)}"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    t0 = time.monotonic()
    log.warning("installing %s", " ".join(packages))
    if run_command(command, timeout=timeout, env=env, check=False).returncode != 0:
        run_command(["apt-get", "update"], timeout=timeout, env=env)
        run_command(command, timeout=timeout, env=env)
    log.warning("installed %s in %.1f s", " ".join(packages), time.monotonic() - t0)
    still = sorted({p for e in engines for p in missing_programs(e)})
    if still:
        raise ServiceError(f"installed {' '.join(packages)} but still missing {', '.join(still)}")
    return packages


# ---------------------------------------------------------------------------------------------
# Slurm
# ---------------------------------------------------------------------------------------------


def node_hardware() -> dict[str, str]:
    """This host as slurmd sees it (``slurmd -C``): NodeName, CPUs, sockets, cores, RealMemory.

    Configuring exactly what slurmd detects keeps the node from being drained for "low
    RealMemory" or a CPU mismatch.
    """
    out = run_command([_program("slurmd"), "-C"], timeout=30).stdout
    first = next(line for line in out.splitlines() if line.startswith("NodeName="))
    return dict(item.split("=", 1) for item in first.split())


@dataclass
class SlurmCluster:
    """A running one-node Slurm cluster; ``env`` (``SLURM_CONF``) points clients at it."""

    folder: Path
    conf: Path
    node: str
    cpus: int
    memory_mb: int
    partition: str
    daemons: list[Daemon] = field(default_factory=list)
    marker: str = ""
    munge_dir: Path | None = None
    started_s: float = 0.0

    @property
    def env(self) -> dict[str, str]:
        """Environment variables for clients (sbatch, squeue, submitit) of this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    def command(self, *argv: str, timeout: float = 30, check: bool = True):
        """Run a Slurm client command (``sinfo``, ``scontrol`` ...) against this cluster."""
        return run_command(argv, timeout=timeout, env={**os.environ, **self.env}, check=check)

    def node_state(self) -> str:
        done = self.command("sinfo", "-h", "-n", self.node, "-o", "%T", check=False, timeout=10)
        return done.stdout.strip() if done.returncode == 0 else ""

    def job_state(self, job_id: str) -> str:
        """State of a job or array task from slurmctld (``squeue``), e.g. "CANCELLED"."""
        done = self.command(
            "squeue", "-h", "--states=all", "-o", "%T", "-j", job_id, check=False, timeout=10
        )
        return done.stdout.strip().splitlines()[0] if done.stdout.strip() else ""

    def died(self) -> str | None:
        return next((msg for d in self.daemons if (msg := d.died())), None)

    def stop(self, timeout: float = 30) -> None:
        """Cancel every job, stop slurmd, slurmctld and munged, end leftovers; idempotent."""
        if any(d.running() for d in self.daemons[1:]):
            jobs = self.command("squeue", "-h", "-o", "%A", check=False, timeout=10).stdout.split()
            if jobs:
                self.command("scancel", "--quiet", *jobs, check=False, timeout=10)
                with contextlib.suppress(ServiceError):
                    wait_until(
                        lambda: (
                            not self.command(
                                "squeue", "-h", "-t", "R,CG", "-o", "%A", check=False, timeout=10
                            ).stdout.strip()
                        ),
                        timeout,
                        "cancelled jobs to end",
                    )
        for daemon in reversed(self.daemons):  # slurmd, slurmctld, munged
            daemon.stop(timeout)
        sweep(self.marker)
        if self.munge_dir is not None:
            shutil.rmtree(self.munge_dir, ignore_errors=True)


SLURM_CONF_TEMPLATE = """\
# Throwaway one-node cluster written by tests/scaleout/engines.py; every daemon on 127.0.0.1.
ClusterName=mscol
SlurmctldHost={host}({addr})
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire: also the time a requeued job waits before it may start again (default 120 s).
AuthInfo=socket={munge_socket},cred_expire={requeue_delay}
# Bind every daemon and srun to the address the node resolves to (127.0.0.1), not 0.0.0.0.
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/run/slurmctld.pid
SlurmdPidFile={folder}/run/slurmd.pid
SlurmctldLogFile={folder}/log/slurmctld.log
SlurmdLogFile={folder}/log/slurmd.log
PlugStackConfig={folder}/plugstack.conf
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU={mem_per_cpu}
SchedulerType=sched/backfill
# Schedule every second (defaults: 60 s main loop, 30 s backfill), e.g. a requeued job whose
# delay ended; a one-node cluster makes this cheap.
SchedulerParameters=sched_interval=1,bf_interval=1
ReturnToService=2
# No accounting database: sacct answers "Slurm accounting storage is disabled". Job states come
# from slurmctld (squeue, scontrol), which keeps finished jobs for MinJobAge seconds.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge={min_job_age}
# A cancelled or requeued job gets SIGKILL KillWait s after SIGTERM (default 30).
KillWait={kill_wait}
NodeName={node} NodeHostname={host} NodeAddr={addr} {hardware} State=UNKNOWN
PartitionName={partition} Nodes={node} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
"""


def start_slurm(
    folder: Path,
    timeout: float = 60,
    partition: str = "debug",
    min_job_age: int = 3600,
    kill_wait: int = 2,
    requeue_delay: int = 5,
    bound: bool = True,
) -> SlurmCluster:
    """Start munged, slurmctld and slurmd with their state in ``folder``; wait for an idle node.

    The munge key, ``slurm.conf`` (this host's CPUs and memory from ``slurmd -C``), state,
    spool and logs (``folder/log/{munged,slurmctld,slurmd}.log``) all live in ``folder``; the
    munge socket lives in a short folder under the temp dir (a socket path has <= 107 bytes).
    Ports are free ports of 127.0.0.1. Clients need ``SLURM_CONF`` (:attr:`SlurmCluster.env`).

    Raises:
        ServiceUnavailable: not Linux, not root, or programs missing (see :func:`ensure_packages`).
        ServiceError: a daemon died or the node did not become idle within ``timeout`` s.
    """
    if sys.platform != "linux":
        raise ServiceUnavailable("a local Slurm cluster needs Linux")
    if os.geteuid() != 0:
        raise ServiceUnavailable("a local Slurm cluster needs root (slurmd runs jobs as users)")
    if missing := missing_programs("slurm"):
        raise ServiceUnavailable(
            f"Slurm programs missing ({', '.join(missing)}); "
            f"install: {' '.join(install_command(APT_PACKAGES['slurm']))}"
        )
    t0 = time.monotonic()
    folder = Path(folder).resolve()
    for sub in ("state", "spool", "run", "log", "munge"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    (folder / "plugstack.conf").write_text("")
    # munged wants its key private to its user, and its socket folder world-searchable up to /;
    # --force below turns the "parent folder not searchable" check (pytest's 0700 temp
    # folders) into a warning. Jobs run as root here, so nobody else needs the socket.
    key = folder / "munge" / "munge.key"
    if not key.exists():
        key.write_bytes(secrets.token_bytes(1024))
    key.chmod(0o600)
    (folder / "munge").chmod(0o700)
    socket_dir = Path(tempfile.mkdtemp(prefix="mscol-munge-"))
    socket_dir.chmod(0o755)
    munge_socket = socket_dir / "munge.socket"

    hw = node_hardware()
    host = socket.gethostname().split(".")[0]
    cpus, memory = int(hw["CPUs"]), int(hw["RealMemory"])
    hardware = " ".join(
        f"{k}={hw[k]}"
        for k in ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore")
        if k in hw
    )
    conf = folder / "slurm.conf"
    conf.write_text(
        SLURM_CONF_TEMPLATE.format(
            host=host,
            addr=LOOPBACK,
            node=host,
            ctld_port=free_port(),
            slurmd_port=free_port(),
            munge_socket=munge_socket,
            folder=folder,
            mem_per_cpu=max(1, memory // cpus),
            min_job_age=min_job_age,
            kill_wait=kill_wait,
            requeue_delay=requeue_delay,
            hardware=f"{hardware} RealMemory={memory}",
            partition=partition,
        )
    )
    cluster = SlurmCluster(
        folder,
        conf,
        host,
        cpus,
        memory,
        partition,
        marker=new_marker("slurm"),
        munge_dir=socket_dir,
    )
    env = {**os.environ, "SLURM_CONF": str(conf)}
    logs = folder / "log"
    with starting(cluster, f"slurm ({conf})", t0):
        munged = [
            _program("munged"),
            "--foreground",
            "--force",
            f"--key-file={key}",
            f"--socket={munge_socket}",
            f"--pid-file={socket_dir / 'munged.pid'}",
            f"--seed-file={folder / 'munge' / 'munged.seed'}",
            f"--log-file={logs / 'munged.log'}",
        ]
        cluster.daemons.append(
            spawn("munged", munged, logs / "munged.out", cluster.marker, env, bound=bound)
        )
        wait_until(munge_socket.exists, 15, "munged's socket", alive=cluster.died)
        # -D: foreground (we track the process); -i: ignore any saved state of an earlier run.
        for name, argv in (
            ("slurmctld", [_program("slurmctld"), "-D", "-i"]),
            ("slurmd", [_program("slurmd"), "-D", "-N", host]),
        ):
            cluster.daemons.append(
                spawn(name, argv, logs / f"{name}.out", cluster.marker, env, bound=bound)
            )
        wait_until(
            lambda: cluster.node_state() == "idle",
            timeout,
            f"node {host} to be idle (sinfo says {cluster.node_state()!r})",
            interval=0.5,
            alive=cluster.died,
        )
    return cluster


# ---------------------------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------------------------


def postgres_user(create: bool = True) -> str:
    """The system user that runs the tests' PostgreSQL: ourselves, or (as root) ``postgres`` or
    ``mscol-pg``, which is created (no home, no login) when neither exists.

    PostgreSQL refuses to run as root; a user's tracking server never creates a system user
    (:func:`benchmark.pipeline.services.postgres_os_user`), a CI machine may.
    """
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid()).pw_name
    for name in ("postgres", "mscol-pg"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    if not create or shutil.which("useradd") is None:
        raise ServiceUnavailable("running as root and no unprivileged user for PostgreSQL")
    run_command(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "mscol-pg"],
        timeout=30,
    )
    return "mscol-pg"
