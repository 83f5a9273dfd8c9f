"""The report's one entry point: :func:`build_report` writes the leaderboard and its figures.

Pure of tracking: the caller (the benchmark's report stage) reads MLflow and passes plain
DataFrames and dicts. :func:`build_report` writes ``leaderboard.csv``, ``leaderboard.md``,
``leaderboard.html`` (self-contained: tables as HTML, figures as base64 PNG) and the figures.
The work is split by job: comparison statistics (:mod:`reports.compare`, :mod:`reports.stats`),
the document's sections and the paper tables (:mod:`reports.sections`), rendering
(:mod:`reports.render`) and figures (:mod:`reports.figures`).

Input contract
--------------
``scores``: DataFrame with columns ``method, task, seed, metric, value``, one row per probe
    run and metric. Metric names: ``roc_auc``, ``pr_auc`` (mtat, mtat_star); ``accuracy``,
    ``balanced_accuracy`` (nsynth, fma). All metrics are higher-is-better.
``predictions``: dict ``(method, task, seed) -> dict(clip_ids, targets, scores)`` with
    ``clip_ids`` a list of str (n), ``targets`` an (n, C) multi-hot or (n,) int array, and
    ``scores`` an (n, C) array of probabilities; used for item-level intervals. Optional.
``per_tag``: DataFrame ``method, task, seed, tag, roc_auc, pr_auc``; optional (tag-wise figure).
``provenance``: dict with ``profile``, ``config_hash``, ``git_commit``, ``versions``
    (package -> version), ``machine``, ``stage_compute_s`` (stage -> seconds of compute behind
    the results, summed over invocations), ``stage_wall_s`` (stage -> seconds of the last
    invocation), ``skipped``
    (list of str: missing or skipped results known to the caller). Absent keys are reported
    as "not recorded"; other keys are listed as they are.
``extras``: dict of optional DataFrames for figures: ``loss_curves`` (method, seed, step,
    loss), ``source_activity`` (source, active, total), ``separation_quality`` (separator,
    source, si_sdr); see :mod:`reports.figures`.
``primary``: task -> primary metric (default :data:`PRIMARY`), ``baseline``: method name
    (default ``"cola"``), ``expected_methods`` / ``expected_tasks``: what should be there, so
    that every absent (method, task) cell is listed as missing rather than silently omitted.

Statistics: see :mod:`reports.compare`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.io import atomic_write_text
from reports.compare import check_scores, compare_to_baseline, missing_results, summarise
from reports.figures import draw_figures
from reports.render import render_html, render_markdown
from reports.sections import (
    cross_task_blocks,
    how_to_read,
    paper_blocks,
    provenance_blocks,
    task_blocks,
)

__all__ = ["PRIMARY", "build_report"]

PRIMARY: dict[str, str] = {
    "mtat": "roc_auc",
    "mtat_star": "roc_auc",
    "nsynth": "accuracy",
    "fma": "accuracy",
}


def build_report(
    out_dir,
    scores: pd.DataFrame,
    predictions: Mapping | None = None,
    per_tag: pd.DataFrame | None = None,
    provenance: Mapping | None = None,
    extras: Mapping[str, pd.DataFrame] | None = None,
    primary: Mapping[str, str] | None = None,
    baseline: str = "cola",
    expected_methods: Sequence[str] | None = None,
    expected_tasks: Sequence[str] | None = None,
    bootstrap_resamples: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
    *,
    item_metrics: Sequence[str] | None = None,
    bootstrap_method: str = "BCa",
) -> dict[str, Path]:
    """Write the leaderboard (csv, md, html) and its figures into ``out_dir``.

    See the module docstring for the input contract and the statistics. The CSV holds
    measured rows only (published numbers appear only in the Markdown/HTML, labelled).
    ``item_metrics`` and ``bootstrap_method`` are passed to :func:`compare_to_baseline`.
    Item-level cost per task and metric: ``bootstrap_resamples + num_clips`` evaluations (the
    clips term is BCa's jackknife), each computing the metric for every run; on real MTAT
    (4,332 test clips, 50 tags) with scikit-learn metrics this takes hours, so restrict
    ``item_metrics`` or use ``bootstrap_method="percentile"`` there.

    Returns file name -> path for every file written.
    Raises ``ValueError`` on malformed ``scores`` or inconsistent prediction targets.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    primary = dict(PRIMARY if primary is None else primary)
    provenance = dict(provenance or {})
    scores = check_scores(scores)
    # A failed probe may log nan: leave the run out and say so rather than fail the report.
    finite = np.isfinite(scores["value"].astype(float))
    dropped = [
        f"{r.method} × {r.task}: seed {r.seed} {r.metric} is {r.value}, left out"
        for r in scores[~finite].itertuples()
    ]
    scores = scores[finite]
    summary = summarise(scores)
    comparison, notes = compare_to_baseline(
        scores,
        predictions,
        baseline,
        bootstrap_resamples,
        alpha,
        seed,
        item_metrics=item_metrics,
        bootstrap_method=bootstrap_method,
    )
    absent = [f"skipped: {line}" for line in [*(provenance.get("skipped") or []), *dropped]]
    absent += [
        f"missing: {line}"
        for line in missing_results(scores, expected_methods, expected_tasks, primary)
    ]

    leaderboard = summary.merge(comparison, on=["method", "task", "metric"], how="left")
    leaderboard["is_baseline"] = leaderboard["method"] == baseline
    leaderboard = leaderboard[
        ["method", "task", "metric", "mean", "std", "n", "ci_low", "ci_high", "rank",
         "is_baseline", "diff", "item_diff", "item_ci_low", "item_ci_high", "item_excludes_zero",
         "seed_test", "seed_p", "seed_p_holm", "significant", "direction"]
    ].sort_values(["task", "metric", "rank", "method"])  # fmt: skip
    paths = {"leaderboard.csv": out_dir / "leaderboard.csv"}
    atomic_write_text(paths["leaderboard.csv"], leaderboard.to_csv(index=False))

    drawn, not_drawn = draw_figures(out_dir, summary, scores, per_tag, extras, baseline)
    paths.update(drawn)

    num_seeds = int(summary["n"].max())
    blocks: list[tuple] = [("h", 1, "Leaderboard")]
    blocks += provenance_blocks(provenance, absent)
    blocks += [
        ("h", 2, "How to read this report"),
        ("p", how_to_read(baseline, num_seeds, bootstrap_resamples, bootstrap_method, alpha)),
    ]
    blocks += task_blocks(summary, comparison, primary, baseline)
    blocks += paper_blocks(summary, comparison, expected_methods or [])
    blocks += cross_task_blocks(summary, comparison, primary, baseline, alpha)
    blocks += [("h", 2, "Notes on item-level intervals"), ("ul", notes)]
    blocks.append(("h", 2, "Figures"))
    for name, path in drawn.items():
        blocks.append(("img", path, name))
    blocks += [("p", "Figures not drawn:"), ("ul", [f"{k}: {v}" for k, v in not_drawn.items()])]

    paths["leaderboard.md"] = out_dir / "leaderboard.md"
    atomic_write_text(paths["leaderboard.md"], render_markdown(blocks))
    paths["leaderboard.html"] = out_dir / "leaderboard.html"
    atomic_write_text(paths["leaderboard.html"], render_html(blocks, "Leaderboard"))
    return paths
