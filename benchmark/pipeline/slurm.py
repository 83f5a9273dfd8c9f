"""Slurm job states, asked of slurmctld (``squeue``) and, where it exists, the accounting
database (``sacct``).

submitit reads states with ``sacct`` only; without accounting (small clusters, the test
cluster) that fails and every state stays UNKNOWN (docs/SCALEOUT_PHASE1.md). slurmctld knows
every job until ``MinJobAge`` seconds after it ended, accounting for much longer: this module
asks ``squeue --states=all`` first and ``sacct`` for the jobs squeue no longer knows. It never
changes submitit's own watcher (a class attribute shared by the whole process).
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess

log = logging.getLogger(__name__)

# Slurm job states (squeue --format=%T, sacct State), grouped as the plan shows them.
QUEUED = frozenset(
    {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED"}
)
RUNNING = frozenset({"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING", "RESIZING"})
IN_FLIGHT = QUEUED | RUNNING
# Ended without success; PREEMPTED is final where PreemptMode=CANCEL (with REQUEUE the job is
# PENDING again right away).
FAILED = frozenset(
    {
        "FAILED",
        "TIMEOUT",
        "OUT_OF_MEMORY",
        "NODE_FAIL",
        "BOOT_FAIL",
        "DEADLINE",
        "PREEMPTED",
        "REVOKED",
        "SPECIAL_EXIT",
    }
)

_ARRAY = re.compile(r"^(?P<job>\d+)_\[(?P<ranges>[\d,\-]+)(%\d+)?\]$")


def available() -> bool:
    """Whether this machine can talk to a Slurm cluster (squeue on the PATH)."""
    return shutil.which("squeue") is not None


def parse_states(text: str) -> dict[str, str]:
    """``JobID|State`` lines (squeue or sacct ``--parsable2``) -> job id -> state.

    Array elements are ``<job>_<task>``; a pending range ``123_[4-6,9%2]`` gives one entry per
    element; ``CANCELLED by 0`` becomes ``CANCELLED``; job steps (``123.batch``) are skipped.
    """
    states: dict[str, str] = {}
    for line in text.splitlines():
        job, _, state = line.strip().partition("|")
        state = state.split("|")[0].split(" ")[0].strip()
        if not job or not state or "." in job:
            continue
        match = _ARRAY.match(job)
        if match is None:
            states[job] = state
            continue
        for part in match["ranges"].split(","):
            first, _, last = part.partition("-")
            for task in range(int(first), int(last or first) + 1):
                states[f"{match['job']}_{task}"] = state
    return states


def _run(argv: list[str]) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("%s: %s", argv[0], exc)
        return None
    if done.returncode != 0:
        log.debug("%s failed: %s", " ".join(argv), done.stderr.strip())
        return None
    return done.stdout


def job_states(job_ids: list[str]) -> dict[str, str]:
    """State of each job (``"123"`` or an array element ``"123_4"``) that Slurm still knows.

    Jobs neither slurmctld nor the accounting database knows (purged, or another cluster's)
    are absent from the result.
    """
    wanted = sorted({j for j in job_ids if j})
    if not wanted or not available():
        return {}
    base = sorted({j.split("_")[0] for j in wanted})
    states: dict[str, str] = {}
    # squeue fails as a whole when one id is unknown to it (purged): then ask job by job.
    for group in [base] if len(base) == 1 else [base, *([b] for b in base)]:
        out = _run(
            ["squeue", "--noheader", "--states=all", "--format=%i|%T", f"--jobs={','.join(group)}"]
        )
        if out is not None:
            states.update(parse_states(out))
            if group is base:
                break
    known = {k.split("_")[0] for k in states}
    missing = [b for b in base if b not in known]
    if missing and shutil.which("sacct"):
        out = _run(
            [
                "sacct",
                "--noheader",
                "--parsable2",
                "-X",
                "-o",
                "JobID,State",
                "-j",
                ",".join(missing),
            ]
        )
        if out is not None:
            states.update({k: v for k, v in parse_states(out).items() if k not in states})
    return {j: states[j] for j in wanted if j in states}


def cancel(job_ids: list[str]) -> None:
    """``scancel`` the jobs (e.g. a report job that a newer submission replaces)."""
    if job_ids:
        _run(["scancel", *job_ids])
