"""The report stage: read every result back from MLflow and render the leaderboard."""

from __future__ import annotations

import importlib.metadata
import logging
import shutil
from pathlib import Path

from benchmark.config import Config
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
    from reports.build import build_report
    from tasks import TASKS

    out_dir = Path(out_dir or cfg.profile_dir / "report")
    work = cfg.profile_dir / "tmp" / "report-artifacts"
    shutil.rmtree(work, ignore_errors=True)
    status_file = cfg.profile_dir / "plan_status.json"
    plan_status = plan_status or (read_json(status_file) if status_file.is_file() else {})
    data = collect(tracker, work, plan_run_ids(plan_status) if select_by_plan else None)
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
        "seeds": "seed = 1000 x pre-training seed + probe seed",
    }
    extras = {
        k: data[k]
        for k in ("loss_curves", "source_activity", "separation_quality")
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
        baseline=cfg.benchmark.baseline,
        expected_methods=list(cfg.benchmark.methods),
        expected_tasks=list(cfg.benchmark.tasks),
        bootstrap_resamples=cfg.benchmark.bootstrap_resamples,
        alpha=cfg.benchmark.alpha,
        # Item-level intervals for the primary metrics only: BCa's jackknife costs one metric
        # evaluation per test clip, which PR-AUC over 50 tags makes expensive.
        item_metrics=sorted({task.primary for task in TASKS.values()}),
    )
    shutil.rmtree(work, ignore_errors=True)
    log.info("report written to %s", out_dir)
    return paths
