"""What the plan knows about each step, on the shared filesystem: records, submissions, locks.

Every executor runs a step through :func:`benchmark.pipeline.plan.run_step`, which holds the
step's lock while it works and leaves a *record* when it ends, so that whichever process (a
pool worker, a Slurm job on another node) ran it, the command that reports, resubmits or shows
progress finds out what happened:

- ``<profile_dir>/plan/<results_hash>/steps/<step>.json``: the record of the step's last run
  under this configuration (``status`` ran | done | checked | failed, ``run_id``, ``error``,
  ``wall_s``, ``compute_s`` summed over its runs, ``host``, ``job``), written atomically;
- ``<profile_dir>/plan/<results_hash>/jobs.json``: the Slurm job of each submitted step, and
  ``plan.json``: the last plan submitted (for ``report`` by hand);
- ``<cache_dir>/locks/<kind>-<key>.lock``: the lock of the artefact a step writes
  (:mod:`benchmark.pipeline.locks`), named by its kind and exactly the content key the stage
  keys it by (an MLflow run's ``bench.key``, a store's folder), so that two plans whose
  configurations differ in anything else (another probe setting, more pre-training seeds)
  never build the same store or train the same run at once, and plans that would write
  different artefacts never wait for each other.
"""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

from benchmark.config import Config
from benchmark.io import atomic_write_json, read_json
from benchmark.pipeline.locks import Owner, StepLock, read_owner, slurm_job


def safe_name(step: str) -> str:
    """A file name for a step name (``probe:cola:s0:fma:p1`` -> ``probe.cola.s0.fma.p1``)."""
    return re.sub(r"[^A-Za-z0-9_.-]", ".", step)


def plan_dir(cfg: Config) -> Path:
    """Where the records and submissions of this configuration's plans live."""
    return cfg.profile_dir / "plan" / cfg.results_hash()


def artefact_lock(cfg: Config, kind: str, key: str, what: str) -> StepLock:
    """The lock of the artefact of ``kind`` with content key ``key`` (see the module
    docstring), held for ``what`` (a step name) by a plan of ``cfg``, with the executor's lock
    timing."""
    return _lock(cfg, cfg.cache_dir / "locks" / f"{kind}-{safe_name(key)}.lock", what)


def _lock(cfg: Config, path: Path, what: str) -> StepLock:
    e = cfg.executor
    return StepLock(
        path,
        what=what,
        plan=cfg.results_hash(),
        heartbeat_s=e.lock_heartbeat_s,
        stale_s=e.lock_stale_s,
    )


def held_steps(cfg: Config) -> dict[str, tuple[StepLock, Owner]]:
    """Step name -> the lock and its holder, for the steps of this configuration's plans that
    hold a lock now (read from the lock files: writes nothing)."""
    held = {}
    for path in sorted((cfg.cache_dir / "locks").glob("*.lock")):
        owner = read_owner(path)
        if owner is not None and owner.plan == cfg.results_hash():
            held[owner.what] = (_lock(cfg, path, owner.what), owner)
    return held


def record_path(cfg: Config, step: str) -> Path:
    return plan_dir(cfg) / "steps" / f"{safe_name(step)}.json"


def write_record(
    cfg: Config,
    step: str,
    stage: str,
    status: str,
    run_id: str = "",
    error: str = "",
    wall_s=0.0,
    compute_s=None,
) -> dict:
    """Record how ``step`` ended (``status`` ran | done | checked | failed); returns the
    record. ``compute_s``: its wall time summed over its runs that ran, checked or failed it
    (default: this one's ``wall_s``)."""
    job, restart = slurm_job()
    record = {
        "step": step,
        "stage": stage,
        "status": status,
        "run_id": run_id or "",
        "error": error,
        "wall_s": round(float(wall_s), 2),
        "compute_s": round(float(wall_s if compute_s is None else compute_s), 2),
        "host": socket.gethostname(),
        "job": job,
        "restart": restart,
        "finished": time.time(),
    }
    atomic_write_json(record_path(cfg, step), record)
    return record


def read_record(cfg: Config, step: str) -> dict | None:
    """The record of ``step`` under this configuration, or None if it never ended."""
    path = record_path(cfg, step)
    return read_json(path) if path.is_file() else None


def jobs_path(cfg: Config) -> Path:
    return plan_dir(cfg) / "jobs.json"


def read_jobs(cfg: Config) -> dict[str, dict]:
    """Step name (or ``"report"``) -> ``{"job": Slurm job id, "submitted": time}``."""
    path = jobs_path(cfg)
    return read_json(path) if path.is_file() else {}


def write_submitted_plan(cfg: Config, plan: list[tuple[str, str, list[str]]]) -> None:
    """Keep the last submitted plan (step, stage, dependencies), for ``report`` by hand."""
    atomic_write_json(plan_dir(cfg) / "plan.json", [list(p) for p in plan])


def submitted_plan(cfg: Config) -> list[tuple[str, str, list[str]]] | None:
    """The last plan of this configuration submitted to Slurm, or None."""
    path = plan_dir(cfg) / "plan.json"
    return [(n, s, list(d)) for n, s, d in read_json(path)] if path.is_file() else None


def submit_lock(cfg: Config) -> StepLock:
    """Held while a plan of this configuration is being submitted to Slurm (seconds), so that
    two submissions at once see each other's jobs."""
    e = cfg.executor
    return StepLock(
        plan_dir(cfg) / "submit.lock",
        what="submit",
        heartbeat_s=e.lock_heartbeat_s,
        stale_s=e.lock_stale_s,
    )


def add_jobs(cfg: Config, jobs: dict[str, str]) -> None:
    """Record newly submitted jobs (call with :func:`submit_lock` held)."""
    now = time.time()
    merged = {**read_jobs(cfg), **{k: {"job": v, "submitted": now} for k, v in jobs.items()}}
    atomic_write_json(jobs_path(cfg), merged)


def report_lock(cfg: Config) -> StepLock:
    """Held while ``plan_status.json`` and the report of this profile are being written."""
    e = cfg.executor
    return StepLock(
        cfg.profile_dir / "report.lock",
        what="report",
        heartbeat_s=e.lock_heartbeat_s,
        stale_s=e.lock_stale_s,
    )


def stage_compute(status: dict) -> dict[str, float]:
    """Per stage, the summed ``compute_s`` of its steps in ``plan_status.json``."""
    total: dict[str, float] = {}
    for entry in status.get("steps", {}).values():
        stage = entry.get("stage", "?")
        total[stage] = total.get(stage, 0.0) + float(entry.get("compute_s", entry.get("wall_s", 0)))
    return {k: round(v, 1) for k, v in total.items()}
