"""The report stage: read every result back from MLflow and render the leaderboard."""

from __future__ import annotations

import importlib.metadata
import logging
import shutil
from pathlib import Path

from benchmark.config import Config
from benchmark.errors import UserError
from benchmark.io import read_json
from benchmark.pipeline.plan import stage_compute
from benchmark.pipeline.tracking import Tracker, collect, git_commit, machine

log = logging.getLogger(__name__)

VERSIONED = (
    "torch",
    "torchaudio",
    "openunmix",
    "efficientnet_pytorch",
    "mlflow",
    "optuna",
    "scikit-learn",
    "scipy",
    "statsmodels",
    "numpy",
    "pandas",
    "soundfile",
)


def package_versions() -> dict[str, str]:
    out = {}
    for name in VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def comparison_families(cfg: Config) -> dict[str, tuple[str, tuple[str, ...]]]:
    """The declared families (``methods.FAMILIES``) with the methods that
    ``benchmark.family_members`` (``method:family``) adds; only methods of this config.

    Raises :class:`UserError` for a malformed entry, an unknown family, or a method put in two.
    """
    from methods import FAMILIES

    members = {name: list(family.members) for name, family in FAMILIES.items()}
    for entry in cfg.benchmark.family_members:
        method, _, family = entry.partition(":")
        if not method or family not in FAMILIES:
            raise UserError(
                f"benchmark.family_members: {entry!r} is not method:family with a family of "
                f"{', '.join(FAMILIES)}"
            )
        members[family].append(method)
    seen: dict[str, str] = {}
    for family, names in members.items():
        for method in names:
            if method in seen and seen[method] != family:
                raise UserError(f"{method} is in two comparison families: {seen[method]}, {family}")
            seen[method] = family
    return {
        name: (FAMILIES[name].baseline, tuple(m for m in names if m in cfg.benchmark.methods))
        for name, names in members.items()
    }


def plan_run_ids(plan_status: dict) -> set[str] | None:
    """The MLflow runs of the last plan's tracked steps, or None when no plan recorded them
    (a store filled elsewhere: the report then reads the newest run of each result)."""
    ids = {info.get("run_id") for info in plan_status.get("steps", {}).values()}
    ids.discard(None)
    ids.discard("")
    return ids or None


def skipped_lines(plan_status: dict) -> list[str]:
    """One line per failed or blocked step of the plan, saying whether the report still
    shows the result of its last good run (kept by :func:`benchmark.pipeline.plan.merge_status`)
    or has none for it."""
    return [
        f"{name}: {info['status']} ({info['error']})"
        + (
            f"; the result of its last good run {info['run_id']} is shown"
            if info.get("run_id")
            else ""
        )
        for name, info in plan_status.get("steps", {}).items()
        if info["status"] in ("failed", "blocked")
    ]


def _gather(cfg: Config, tracker: Tracker, work: Path, plan_status: dict | None, select_by_plan):
    """The plan's status and everything the report reads from MLflow."""
    status_file = cfg.profile_dir / "plan_status.json"
    plan_status = plan_status or (read_json(status_file) if status_file.is_file() else {})
    data = collect(tracker, work, plan_run_ids(plan_status) if select_by_plan else None)
    return plan_status, data


def calibrate_runs(cfg: Config, tracker: Tracker, select_by_plan: bool = True) -> list[dict]:
    """``python -m benchmark calibrate``: the report's calibration table
    (:func:`reports.build.calibration_table`) from the runs in MLflow."""
    from reports.build import calibration_table
    from reports.compare import run_sets
    from tasks import TASKS

    work = cfg.profile_dir / "tmp" / "calibrate-artifacts"
    shutil.rmtree(work, ignore_errors=True)
    _status, data = _gather(cfg, tracker, work, None, select_by_plan)
    shutil.rmtree(work, ignore_errors=True)
    if data["scores"].empty:
        raise UserError(
            f"no probe results in {tracker.uri} ({tracker.experiment}): run the plan first"
        )
    sets, clusters, _notes = run_sets(data["scores"], data["predictions"])
    primary = {name: task.primary for name, task in TASKS.items()}
    b = cfg.benchmark
    return calibration_table(sets, clusters, primary, b.baseline, b.alpha, b.calibration_reps)


def make_report(
    cfg: Config,
    tracker: Tracker,
    out_dir: Path | None = None,
    plan_status: dict | None = None,
    select_by_plan: bool = True,
) -> dict:
    """Build ``leaderboard.{md,csv,html}`` + figures from the MLflow store alone.

    ``select_by_plan``: read the pretrain/probe runs the profile's last plan recorded in
    ``plan_status.json`` (when there is one); otherwise the newest run of each result.
    """
    from methods import CONTROLS
    from reports.build import build_report
    from tasks import TASKS

    out_dir = Path(out_dir or cfg.profile_dir / "report")
    work = cfg.profile_dir / "tmp" / "report-artifacts"
    shutil.rmtree(work, ignore_errors=True)
    plan_status, data = _gather(cfg, tracker, work, plan_status, select_by_plan)
    skipped = skipped_lines(plan_status)
    provenance = {
        "profile": cfg.profile,
        "config_hash": cfg.hash(),
        "git_commit": git_commit(),
        "versions": package_versions(),
        "machine": machine(),
        "stage_compute_s": stage_compute(plan_status),
        "stage_wall_s": plan_status.get("stage_wall_s", {}),
        "skipped": skipped,
        "tracking_uri": tracker.uri,
        "experiment": tracker.experiment,
    }
    extras = {
        k: data[k]
        for k in (
            "pretrain_curves",
            "pretrain_runs",
            "embedding_health",
            "source_activity",
            "separation_quality",
        )
        if data[k] is not None
    }
    primary = {name: task.primary for name, task in TASKS.items()}
    paths = build_report(
        out_dir,
        data["scores"],
        data["predictions"],
        data["per_tag"],
        provenance,
        extras,
        primary=primary,
        families=comparison_families(cfg),
        baseline=cfg.benchmark.baseline,
        controls=CONTROLS,
        expected_methods=list(cfg.benchmark.methods),
        expected_tasks=list(cfg.benchmark.tasks),
        alpha=cfg.benchmark.alpha,
        calibration_reps=cfg.benchmark.calibration_reps,
    )
    shutil.rmtree(work, ignore_errors=True)
    log.info("report written to %s", out_dir)
    return paths
