"""The report's one entry point: :func:`build_report` writes the leaderboard and its figures.

Pure of tracking: the caller (the benchmark's report stage) reads MLflow and passes plain
DataFrames and dicts. :func:`build_report` writes ``leaderboard.csv``, ``leaderboard.md``,
``leaderboard.html`` (self-contained: tables as HTML, figures as base64 PNG) and the figures.
The work is split by job: comparison statistics (:mod:`reports.compare`, :mod:`reports.stats`),
the document's sections and the paper tables (:mod:`reports.sections`), rendering
(:mod:`reports.render`) and figures (:mod:`reports.figures`).

Input contract
--------------
``scores``: DataFrame with columns ``method, task, pretrain_seed, probe_seed, metric,
    value``, one row per probe run and metric. Metric names: ``roc_auc``, ``pr_auc`` (mtat,
    mtat_star); ``accuracy``, ``balanced_accuracy`` (nsynth, fma). All higher-is-better.
``predictions``: dict ``(method, task, pretrain_seed, probe_seed) -> dict(clip_ids, targets,
    scores, groups, strata)`` with ``clip_ids`` a list of str (n), ``targets`` an (n, C)
    multi-hot or (n,) int array, ``scores`` an (n, C) array of probabilities, ``groups`` (n,)
    cluster ids (optional: each clip its own cluster) and ``strata`` (n,) the strata the test
    split was drawn within (optional; the report stage adds them for tasks declared
    ``test_strata = "class"``); used for the test-set components. Optional.
``per_tag``: DataFrame ``method, task, tag, roc_auc, pr_auc`` (+ seed columns); optional.
``provenance``: dict with ``profile``, ``config_hash``, ``git_commit``, ``versions``
    (package -> version), ``machine``, ``stage_compute_s`` (stage -> seconds of compute behind
    the results, summed over invocations), ``stage_wall_s`` (stage -> seconds of the last
    invocation), ``skipped``
    (list of str: missing or skipped results known to the caller). Absent keys are reported
    as "not recorded"; other keys are listed as they are.
``extras``: dict of optional DataFrames: ``pretrain_curves`` (method, seed, step, metric,
    value), ``pretrain_runs`` (method, seed, trained, collapsed), ``embedding_health``
    (method, seed, corpus, relative_spread, median_sd, varying_dims, effective_rank,
    collapsed) for the diagnostics sections (:mod:`reports.diagnostics`);
    ``source_activity`` (source, active, total), ``separation_quality`` (separator, source,
    si_sdr); see :mod:`reports.figures`.
``primary``: task -> primary metric (default :data:`PRIMARY`); ``families``: name ->
    (baseline, members), the declared comparison families; ``baseline``: the reference of the
    cross-task summaries and figures; ``controls``: the positive control (a method expected
    significantly below its baseline on the first task's primary metric) and the negative
    control (the baseline trained again under another name: expected never flagged);
    ``expected_methods`` / ``expected_tasks``: what should be there, so that every absent
    (method, task) cell is listed as missing rather than silently omitted.
``studies``: the inputs of the paper's study sections (convergence, separator quality,
    ablations, source specialisation; :mod:`reports.study_sections`); None leaves them out.

Statistics: see :mod:`reports.compare` and :mod:`reports.variance`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.io import atomic_write_text
from reports.aggregate import aggregates, chance_level, normalise, task_matrices
from reports.compare import (
    chance_levels,
    check_scores,
    compare,
    missing_results,
    run_sets,
    summarise,
)
from reports.diagnostics import collapsed_methods, embedding_blocks, pretraining_blocks
from reports.figures import FIGURE_CAPTIONS, draw_figures
from reports.render import render_html, render_markdown
from reports.sections import (
    calibration_blocks,
    cross_task_blocks,
    data_blocks,
    how_to_read,
    paper_blocks,
    provenance_blocks,
    task_blocks,
    variance_blocks,
)
from reports.stats import holm
from reports.study_sections import study_blocks
from reports.variance import calibrate, components

__all__ = ["PRIMARY", "build_report", "calibration_table"]

PRIMARY: dict[str, str] = {
    "mtat": "roc_auc",
    "mtat_star": "roc_auc",
    "nsynth": "accuracy",
    "fma": "accuracy",
}


def calibration_table(
    sets,
    clusters: Mapping[str, int],
    primary: Mapping[str, str],
    baseline: str,
    alpha: float,
    reps: int = 4000,
) -> list[dict]:
    """:func:`reports.variance.calibrate` per task (primary metric) with the components
    measured in this run, pooled over every method with at least 2 runs (the same pipeline
    and test set; one method's between-run variance from 3 runs has only 2 degrees of
    freedom): the pooled between-run SD (``sd_run``), the run x item variance ``u`` (averaged
    with the same weights), the baseline's number of runs, the task's clusters and test-set
    degrees of freedom. ``s2_over_u`` (their ratio) says where the test stands: below ~0.4
    the runs' own item noise dominates and the worst equal-means rate grows."""
    out = []
    for (task, metric), methods in sorted(sets.items()):
        if primary.get(task) != metric or baseline not in methods:
            continue
        base = components(methods[baseline])
        if base["runs"] < 2:
            continue
        pooled = [methods[m] for m in sorted(methods) if methods[m].num_runs >= 2]
        weights = np.array([rs.num_runs - 1 for rs in pooled], dtype=float)
        squares = sum(float(np.sum((rs.run_scores - rs.run_scores.mean()) ** 2)) for rs in pooled)
        sd_run = math.sqrt(squares / weights.sum())
        u_values = np.array([components(rs)["u"] for rs in pooled])
        u = (
            float(np.sum(weights * u_values) / weights.sum())
            if np.all(np.isfinite(u_values))
            else 0.0
        )
        result = calibrate(
            sd_run,
            u,
            max(clusters.get(task, 0), 2),
            base["runs"],
            test_df=base["test_df"] if clusters.get(task, 0) else None,
            alpha=alpha,
            reps=reps,
        )
        out.append(dict(task=task, metric=metric, baseline=baseline, sd_run=sd_run, u=u,
                        s2_over_u=sd_run**2 / u if u > 0 else math.inf, methods_pooled=len(pooled),
                        clusters=clusters.get(task, 0), test_df=base["test_df"], **result))  # fmt: skip
    return out


def _controls(
    comparison: pd.DataFrame, controls: Mapping[str, str], primary, tasks, alpha: float = 0.05
) -> list[dict]:
    """The positive and negative controls' outcomes, with what was expected."""
    rows = []
    first = next((t for t in tasks if t in primary), None)
    positive, negative = controls.get("positive"), controls.get("negative")
    for _, r in comparison.iterrows():
        if r["method"] == positive and r["task"] == first and r["metric"] == primary[first]:
            holds = r["status"] == "tested" and r["direction"] == "worse"
            rows.append(
                {
                    "control": f"positive: {positive} vs {r['baseline']}",
                    "where": f"{r['task']} / {r['metric']}",
                    "expected": "significantly worse",
                    "measured": _outcome(r),
                    "holds": "yes" if holds else "NO",
                }
            )
    tested = comparison[(comparison["method"] == negative) & (comparison["status"] == "tested")]
    if len(tested):
        # The control is one question (does the machinery tell equal methods apart?) asked on
        # every task and metric: Holm over all of them, so that a correct machinery fails it
        # 5% of the time. "Never flagged at 5% per test" would fail 1 - 0.95^8 = 34% of the
        # time with 8 independent tests, so it would prove nothing either way.
        adjusted = holm(tested["p"].to_numpy(dtype=float), alpha)["p_adjusted"]
        smallest = int(np.nanargmin(adjusted))
        failed = bool(adjusted[smallest] <= alpha)
        per_test = tested[tested["significant"].fillna(False)]
        where = lambda frame: ", ".join(  # noqa: E731
            f"{a} / {b}" for a, b in zip(frame["task"], frame["metric"], strict=True)
        )
        rows.append(
            {
                "control": f"negative: {negative} vs {tested['baseline'].iloc[0]}",
                "where": f"every task and metric ({len(tested)} tests)",
                "expected": f"not flagged (Holm over the {len(tested)} tests)",
                "measured": (
                    f"smallest Holm p {adjusted[smallest]:.3f} "
                    f"({tested['task'].iloc[smallest]} / {tested['metric'].iloc[smallest]}); "
                    + (
                        f"marked in the tables (α per task and metric) on {where(per_test)}"
                        if len(per_test)
                        else "no marker in the tables"
                    )
                ),
                "holds": "NO" if failed else "yes",
            }
        )
    return rows


def _outcome(row) -> str:
    if row["status"] != "tested":
        return row["status"]
    return (
        f"Δ {row['diff']:.4f} [{row['ci_low']:.4f}, {row['ci_high']:.4f}], "
        f"Holm p {row['p_holm']:.2g}"
    )


def build_report(
    out_dir,
    scores: pd.DataFrame,
    predictions: Mapping | None = None,
    per_tag: pd.DataFrame | None = None,
    provenance: Mapping | None = None,
    extras: Mapping[str, pd.DataFrame] | None = None,
    primary: Mapping[str, str] | None = None,
    families: Mapping[str, tuple[str, Sequence[str]]] | None = None,
    baseline: str = "cola",
    controls: Mapping[str, str] | None = None,
    expected_methods: Sequence[str] | None = None,
    expected_tasks: Sequence[str] | None = None,
    alpha: float = 0.05,
    seed: int = 0,
    calibration_reps: int = 4000,
    *,
    studies: Mapping | None = None,
    expected_pairs: Sequence[tuple[str, str]] | None = None,
    data_notes: Sequence[str] = (),
    published_columns: Sequence[tuple[str, str]] | None = None,
    published_note: str = "",
    method_notes: Mapping[str, str] | None = None,
    source_warnings: Sequence[str] = (),
    expected_figures: Sequence[str] | None = None,
) -> dict[str, Path]:
    """Write the leaderboard (csv, md, html) and its figures into ``out_dir``.

    See the module docstring for the input contract. The CSV holds measured rows only (the
    published numbers appear only in the Markdown/HTML, labelled).

    ``expected_pairs``: the (method, task) pairs the plan meant to run: only those can be
    missing. ``data_notes``: what data was used (the "Data" section). ``published_columns``:
    the paper-table columns ``(task, metric)`` measured on the paper's own data, the only ones
    given published reference values (None: all); ``published_note`` says why others are not.
    ``method_notes``: method -> note (external encoders), listed and marked "(external)".
    ``source_warnings``: lines on separated-source activity to show beside its figure.
    ``expected_figures``: the figures this run has data for by design (None: all); another
    figure not drawn is not listed as missing (no source separation ran, no tagging task).

    Returns file name -> path for every file written. Raises ``ValueError`` on malformed
    ``scores`` or predictions whose targets disagree.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    primary = dict(PRIMARY if primary is None else primary)
    families = dict(families or {})
    controls = dict(controls or {})
    provenance = dict(provenance or {})
    extras = dict(extras or {})
    scores = check_scores(scores)
    # A failed probe may log nan: leave the run out and say so rather than fail the report.
    finite = np.isfinite(scores["value"].astype(float))
    dropped = [
        f"{r.method} × {r.task}: pre-training seed {r.pretrain_seed}, probe seed "
        f"{r.probe_seed}: {r.metric} is {r.value}, left out"
        for r in scores[~finite].itertuples()
    ]
    scores = scores[finite]
    sets, clusters, notes = run_sets(scores, predictions)
    summary = summarise(sets)
    comparison = compare(sets, families, alpha)
    absent = [f"skipped: {line}" for line in [*(provenance.get("skipped") or []), *dropped]]
    absent += [
        f"missing: {line}"
        for line in missing_results(
            scores, expected_methods, expected_tasks, primary, expected_pairs
        )
    ]
    chance_of = chance_levels(predictions)
    calibration = calibration_table(sets, clusters, primary, baseline, alpha, calibration_reps)
    tasks = list(expected_tasks or sorted(summary["task"].unique()))
    control_rows = _controls(comparison, controls, primary, tasks, alpha)

    # Cross-task aggregates over runs: normalised primary scores, runs x tasks per method.
    by_method: dict[str, dict[str, np.ndarray]] = {}
    primary_tasks = [t for t in sorted(summary["task"].unique()) if (t, primary.get(t)) in sets]
    for task in list(primary_tasks):
        chance = _chance(predictions, task, primary[task])
        if chance is None:
            notes.append(f"{task}: no predictions to tell its chance level: not in the aggregates")
            primary_tasks.remove(task)
            continue
        for method, run_set in sets[(task, primary[task])].items():
            by_method.setdefault(method, {})[task] = normalise(run_set.run_scores, chance)
    matrices = task_matrices(by_method, primary_tasks)
    aggregate = aggregates(matrices, baseline, seed=seed) if matrices else None

    leaderboard = summary.merge(comparison, on=["method", "task", "metric"], how="left")
    leaderboard["chance"] = [
        chance_of.get((t, m), np.nan)
        for t, m in zip(leaderboard["task"], leaderboard["metric"], strict=True)
    ]
    leaderboard = leaderboard.sort_values(["task", "metric", "rank", "method"])
    paths = {"leaderboard.csv": out_dir / "leaderboard.csv"}
    atomic_write_text(paths["leaderboard.csv"], leaderboard.to_csv(index=False))

    run_scores = pd.DataFrame(
        [
            dict(method=m, task=t, metric=k, pretrain_seed=int(seed_), value=float(v))
            for (t, k), methods in sets.items()
            for m, rs in methods.items()
            for seed_, v in zip(rs.seeds, rs.run_scores, strict=True)
        ]
    )
    baselines = sorted({b for b, _ in families.values()})
    drawn, not_drawn = draw_figures(
        out_dir, summary, run_scores, per_tag, extras, baseline, primary, baselines, chance_of
    )
    paths.update(drawn)

    blocks: list[tuple] = [("h", 1, "Leaderboard")]
    external = dict(method_notes or {})
    blocks += provenance_blocks(provenance, absent)
    blocks += data_blocks(data_notes, external)
    blocks += how_to_read(alpha, families)
    blocks += pretraining_blocks(extras.get("pretrain_curves"), extras.get("pretrain_runs"))
    blocks += embedding_blocks(extras.get("embedding_health"))
    flags = dict.fromkeys(collapsed_methods(extras.get("pretrain_runs")), "collapsed")
    blocks += task_blocks(summary, comparison, primary, flags, chance_of, set(external))
    blocks += calibration_blocks(calibration, control_rows)
    blocks += variance_blocks(summary, primary)
    blocks += paper_blocks(
        summary, comparison, expected_methods or [], published_columns, published_note
    )
    blocks += cross_task_blocks(summary, aggregate, primary, baseline, alpha)
    if studies is not None:
        # The paper's analyses beyond its tables (reports.study_sections documents ``studies``).
        study, study_drawn, study_skipped = study_blocks(
            out_dir, studies, scores, predictions, sets, comparison, summary, primary, alpha
        )
        blocks += study
        paths.update(study_drawn)
        not_drawn.update(study_skipped)
    blocks += [("h", 2, "Notes on the test-set components"), ("ul", notes)]
    blocks.append(("h", 2, "Figures"))
    for name, path in drawn.items():
        caption = FIGURE_CAPTIONS.get(name) or (
            f"Test scores on {name[len('scores_') : -len('.png')]}: mean over pre-training runs "
            "± SD between them, each run as a grey dot, baselines dashed, chance dotted red"
        )
        blocks.append(("img", path, caption))
        if name == "source_activity.png" and source_warnings:
            blocks += [("p", "Warnings on source activity:"), ("ul", list(source_warnings))]
    if expected_figures is not None:
        not_drawn = {k: v for k, v in not_drawn.items() if k in set(expected_figures)}
    if not_drawn:
        blocks += [("p", "Figures not drawn:"), ("ul", [f"{k}: {v}" for k, v in not_drawn.items()])]

    paths["leaderboard.md"] = out_dir / "leaderboard.md"
    atomic_write_text(paths["leaderboard.md"], render_markdown(blocks))
    paths["leaderboard.html"] = out_dir / "leaderboard.html"
    atomic_write_text(paths["leaderboard.html"], render_html(blocks, "Leaderboard"))
    return paths


def _chance(predictions: Mapping | None, task: str, metric: str) -> float | None:
    """The metric's chance level from a prediction set of the task (0.5 for ROC-AUC without;
    None for the others without predictions)."""
    for key, item in (predictions or {}).items():
        if key[1] == task:
            if metric in ("accuracy", "balanced_accuracy"):
                return 1.0 / np.asarray(item["scores"]).shape[1]
            return chance_level(metric, np.asarray(item["targets"]))
    return 0.5 if metric == "roc_auc" else None
