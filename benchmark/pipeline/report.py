"""The report stage: read every result back from MLflow and render the leaderboard."""

from __future__ import annotations

import importlib.metadata
import logging
import shutil
from pathlib import Path

import numpy as np

from benchmark.config import Config
from benchmark.errors import StageError, UserError
from benchmark.io import read_json
from benchmark.pipeline.state import stage_compute
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


def study_inputs(cfg: Config, data: dict) -> dict:
    """What the report's study sections read (:mod:`reports.study_sections`): the collected
    snapshot probes and separator records, and the declarations they are read against."""
    from benchmark.data.tag_sources import MTAT_TAG_SOURCES, synthetic_tag_sources
    from benchmark.pretrain.loop import num_updates
    from methods import ABLATIONS, METHODS, SEPARATOR_STUDY

    synthetic = cfg.data.source == "synthetic"
    source_models = {
        name: m.sources[0]
        for name, m in METHODS.items()
        if len(m.sources) == 1 and m.separator == "config" and name in cfg.benchmark.methods
    }
    return {
        "snapshot_scores": data.get("snapshot_scores"),
        "snapshot_predictions": data.get("snapshot_predictions"),
        "final_step": num_updates(cfg.pretrain),
        "convergence_methods": list(cfg.benchmark.convergence_methods),
        "convergence_pair": ("msa_multi", "cola_mws"),
        "separator_runs": data.get("separator_runs"),
        "separator_arms": list(SEPARATOR_STUDY),
        "ablations": list(ABLATIONS),
        "tag_sources": synthetic_tag_sources() if synthetic else MTAT_TAG_SOURCES,
        "tag_mapping": (
            "derived from the synthetic corpus's generator (benchmark/data/tag_sources.py)"
            if synthetic
            else "the README's MTAT mapping (benchmark/data/tag_sources.py)"
        ),
        "source_models": source_models,
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


def mark_strata(predictions: dict | None, tasks: dict) -> None:
    """Give the test predictions of every task declared ``test_strata = "class"`` their
    strata (each clip's class), in place: the report's test-set variance then follows the
    stratified design (:class:`reports.variance.SamplingDesign`)."""
    for key, item in (predictions or {}).items():
        task = tasks.get(key[1])
        if task is not None and task.test_strata == "class":
            item["strata"] = np.asarray(item["targets"])


def _gather(cfg: Config, tracker: Tracker, work: Path, plan_status: dict | None, select_by_plan):
    """The plan's status and everything the report reads from MLflow."""
    from tasks import all_tasks

    status_file = cfg.profile_dir / "plan_status.json"
    plan_status = plan_status or (read_json(status_file) if status_file.is_file() else {})
    data = collect(tracker, work, plan_run_ids(plan_status) if select_by_plan else None)
    tasks = all_tasks(cfg.benchmark.task_files)
    mark_strata(data["predictions"], tasks)
    mark_strata(data.get("snapshot_predictions"), tasks)
    return plan_status, data


def calibrate_runs(cfg: Config, tracker: Tracker, select_by_plan: bool = True) -> list[dict]:
    """``python -m benchmark calibrate``: the report's calibration table
    (:func:`reports.build.calibration_table`) from the runs in MLflow."""
    from reports.build import calibration_table
    from reports.compare import run_sets
    from tasks import all_tasks

    work = cfg.profile_dir / "tmp" / "calibrate-artifacts"
    shutil.rmtree(work, ignore_errors=True)
    _status, data = _gather(cfg, tracker, work, None, select_by_plan)
    shutil.rmtree(work, ignore_errors=True)
    if data["scores"].empty:
        raise UserError(
            f"no probe results in {tracker.uri} ({tracker.experiment}): run the plan first"
        )
    sets, clusters, _notes = run_sets(data["scores"], data["predictions"])
    primary = {name: task.primary for name, task in all_tasks(cfg.benchmark.task_files).items()}
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
    Raises :class:`StageError` when there is no probe result to report.
    """
    from benchmark.pipeline.stages import activity_warnings, describe_data, pretrain_corpus
    from methods import CONTROLS
    from reports.build import build_report
    from tasks import all_tasks

    out_dir = Path(out_dir or cfg.profile_dir / "report")
    work = cfg.profile_dir / "tmp" / "report-artifacts"
    shutil.rmtree(work, ignore_errors=True)
    plan_status, data = _gather(cfg, tracker, work, plan_status, select_by_plan)
    if data["scores"].empty:
        raise StageError(
            f"no probe results in {tracker.uri} (experiment {tracker.experiment}) to report: "
            f"run `python -m benchmark run --profile {cfg.profile}` first"
        )
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
    warnings: list[str] = []
    activity = extras.get("source_activity")
    if activity is not None:
        # The activity of this configuration's pre-training corpus only, one row per source.
        activity = activity[activity["corpus"] == pretrain_corpus(cfg)]
        activity = activity.drop_duplicates(["separator", "source"], keep="last")
        extras["source_activity"] = activity
        for separator, part in activity.groupby("separator", sort=True):
            table = {r.source: {"active": r.active, "total": r.total} for r in part.itertuples()}
            warnings += [f"{separator}: {line}" for line in activity_warnings(table)]
    tasks = all_tasks(cfg.benchmark.task_files)
    measured_tasks = sorted(set(data["scores"]["task"]))
    methods = sorted(set(data["scores"]["method"]))
    data_notes = describe_data(cfg, [t for t in measured_tasks if t in tasks], methods)
    data_notes += [
        f"pre-training data ({', '.join(sorted(set(m)))}): {note}"
        for note, m in sorted(data["pretrain_data"].items())
    ]
    data_notes += task_data_notes(data["task_info"])
    columns, why = published_columns(cfg, data["task_info"])
    primary = {name: task.primary for name, task in tasks.items()}
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
        studies=study_inputs(cfg, data),
        expected_pairs=planned_pairs(plan_status),
        data_notes=data_notes,
        published_columns=columns,
        published_note=why,
        method_notes=method_notes(sorted(set(data["scores"]["method"]))),
        source_warnings=warnings,
        expected_figures=expected_figures(
            methods, [tasks[t] for t in measured_tasks if t in tasks]
        ),
    )
    shutil.rmtree(work, ignore_errors=True)
    log.info("report written to %s", out_dir)
    return paths


def expected_figures(methods, tasks) -> list[str]:
    """The figures a run of ``methods`` on ``tasks`` has data for: tag-wise scores with MTAT,
    loss curves with a pre-trained method, source figures with a source-pairing one."""
    from methods import get_method

    kinds = [get_method(m) for m in methods]
    names = [f"scores_{t.name}.png" for t in tasks] + ["variance.png"]
    if any(t.name == "mtat" for t in tasks):
        names.append("tagwise_pr_auc.png")
    if any(m.pretrained for m in kinds):
        names.append("pretraining.png")
    if any(m.sources for m in kinds):
        names += ["source_activity.png", "separation_quality.png"]
    return names


def planned_pairs(plan_status: dict) -> dict[tuple[str, str], int] | None:
    """The (method, task) pairs whose probes the recorded plans meant to run, each with the
    number of pre-training runs planned for it (an external encoder has one by design); None:
    unknown, e.g. a store filled elsewhere or a plan recorded before steps named them."""
    runs: dict[tuple[str, str], set[str]] = {}
    for name, s in plan_status.get("steps", {}).items():
        if s.get("stage") == "probe" and s.get("task") and name.startswith("probe:"):
            # probe:<method>:s<seed>:<task>:p<probe seed> (the method may hold ':')
            seed = name[len(f"probe:{s['method']}:") :].split(":", 1)[0]
            runs.setdefault((s["method"], s["task"]), set()).add(seed)
    return {pair: len(seeds) for pair, seeds in runs.items()} or None


def task_data_notes(task_info: dict[str, dict]) -> list[str]:
    """Per task: clips per split, and the tags or classes left out of its scores, and why."""
    lines = []
    for task, info in sorted(task_info.items()):
        clips = ", ".join(f"{split} {n}" for split, n in info["clips"].items())
        line = f"{task}: {clips} clips; {info['num_labels']} labels"
        excluded, absent = info["excluded_tags"], info["absent_classes"]
        if excluded:
            line += (
                f"; {len(excluded)} of {info['num_labels']} tags have no positive (or no "
                "negative) test clip and are left out of the macro scores: " + ", ".join(excluded)
            )
        if absent:
            line += (
                f"; {len(absent)} class(es) have no test clip (balanced accuracy averages the "
                "others): " + ", ".join(absent)
            )
        lines.append(line)
    return lines


def published_columns(cfg: Config, task_info: dict[str, dict]):
    """The paper-table columns measured on the paper's own data, and why the others are not.

    The paper's data: real datasets (``data.source=real``), pre-training on MTAT's filtered
    split with the shipped lists, and a test set of the published size (within 1%)."""
    from reports.published import PAPER_TEST_CLIPS, TABLE_COLUMNS

    d = cfg.data
    if d.source != "real":
        return [], "these results are on the synthetic corpus, not the paper's datasets"
    if d.pretrain_source != "mtat" or d.mtat_split_dir:
        return [], "pre-training did not use MTAT's filtered split as the paper did"
    reasons: dict[str, str] = {}
    kept = []
    for task, metric in TABLE_COLUMNS:
        test = task_info.get(task, {}).get("clips", {}).get("test")
        if test is None:
            continue
        if abs(test - PAPER_TEST_CLIPS[task]) <= 0.01 * PAPER_TEST_CLIPS[task]:
            kept.append((task, metric))
        else:
            reasons[task] = (
                f"{task} has {test} test clips where the paper's dataset has "
                f"{PAPER_TEST_CLIPS[task]:,}"
            )
    return kept, "; ".join(reasons.values())


def method_notes(methods) -> dict[str, str]:
    """A note per external (HEAR) encoder among ``methods``: what it is and where it came from."""
    from benchmark.evaluation.hear import module_identity
    from methods import get_method

    out = {}
    for name in methods:
        try:
            method = get_method(name)
        except ValueError:
            continue
        if not getattr(method, "external", False):
            continue
        try:
            ident = module_identity(method.module, method.model_file)
            what = f"{ident['version']}, at {ident['location']}"
        except StageError as exc:
            what = f"not importable where this report was built: {exc}"
        out[name] = (
            f"HEAR 2021 API module {method.module} ({what}); weights: "
            f"{method.model_file or 'those of the module'}; each 1-s window's embedding is the "
            "mean of the module's timestamp embeddings within it; not pre-trained here"
        )
    return out


def score_summary(leaderboard_csv: Path, primary: dict[str, str]) -> list[str]:
    """Lines for the end of ``run``: per task, each method's primary score (mean over
    pre-training runs ± SD between them), best first, and the chance level."""
    import pandas as pd

    table = pd.read_csv(leaderboard_csv)
    lines = ["scores (primary metric, mean over pre-training runs ± SD between runs):"]
    for task, part in table.groupby("task", sort=True):
        metric = primary.get(task, part["metric"].iloc[0])
        rows = part[part["metric"] == metric].sort_values("mean", ascending=False)
        chance = rows["chance"].iloc[0]
        lines.append(f"  {task} ({metric}; chance level {chance:.3f}):")
        for r in rows.itertuples():
            interval = f" ± {r.sd_between:.3f}" if r.runs > 1 else " (1 run)"
            lines.append(f"    {r.method:28s} {r.mean:.3f}{interval}")
    return lines
