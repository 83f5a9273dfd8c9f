"""Comparison statistics of the leaderboard: seed summaries, every method versus the baseline
(seed level and item level), and the results that are missing.

Pure functions of plain DataFrames and dicts (see :mod:`reports.build` for the input contract);
the tests and intervals themselves are :mod:`reports.stats`, the metrics
:mod:`benchmark.evaluation.metrics`.

Family for multiple comparisons: all methods versus the baseline within one task and one
metric; Holm's correction is applied to the seed-level p-values of that family. A method is
marked significant (▲ better, ▼ worse) when its Holm-adjusted seed-level p is below ``alpha``
*and*, where predictions exist, the item-level BCa interval of the difference excludes zero
in the same direction. Requiring the second condition can only remove rejections, so the
family-wise error rate stays controlled by Holm at ``alpha``; it guards against claims that
the test clips alone could explain. Cross-task summaries are descriptive.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from benchmark.evaluation.metrics import ITEM_METRICS
from reports import stats

__all__ = [
    "SCORE_COLUMNS",
    "chance_levels",
    "check_scores",
    "compare_to_baseline",
    "missing_results",
    "summarise",
]

SCORE_COLUMNS = ["method", "task", "seed", "metric", "value"]


def check_scores(scores: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in SCORE_COLUMNS if c not in scores.columns]
    if missing:
        raise ValueError(f"scores lacks columns {missing}; expected {SCORE_COLUMNS}")
    if scores.empty:
        raise ValueError("scores is empty: there is nothing to report")
    duplicated = scores.duplicated(["method", "task", "seed", "metric"])
    if duplicated.any():
        first = scores.loc[duplicated, ["method", "task", "seed", "metric"]].iloc[0].tolist()
        raise ValueError(f"scores has duplicate rows for (method, task, seed, metric) = {first}")
    return scores[SCORE_COLUMNS].copy()


def summarise(scores: pd.DataFrame) -> pd.DataFrame:
    """Seed summary and rank per (method, task, metric).

    Columns: method, task, metric, mean, std, n, ci_low, ci_high (95% t-interval over seeds),
    rank (1 = highest mean within task and metric; ties share the best rank).
    Raises ``ValueError`` on missing columns, duplicate rows or non-finite values.
    """
    scores = check_scores(scores)
    rows = []
    for (method, task, metric), part in scores.groupby(["method", "task", "metric"], sort=True):
        rows.append(
            dict(method=method, task=task, metric=metric, **stats.seed_summary(part["value"]))
        )
    summary = pd.DataFrame(rows)
    summary["rank"] = (
        summary.groupby(["task", "metric"])["mean"].rank(ascending=False, method="min").astype(int)
    )
    return summary


def _stable_seed(seed: int, *keys: str) -> list[int]:
    # Same clips resampled for every method of a (task, metric), whatever else is in the run.
    return [int(seed), *(zlib.crc32(key.encode()) for key in keys)]


def _aligned_runs(
    predictions: Mapping, task: str, methods: Sequence[str], baseline: str
) -> tuple[np.ndarray | None, dict[str, list[np.ndarray]], list[str]]:
    """Targets and per-method lists of seed scores on the clips common to every run."""
    notes: list[str] = []
    runs = {
        method: [
            predictions[key]
            for key in sorted(k for k in predictions if k[0] == method and k[1] == task)
        ]
        for method in methods
    }
    runs = {method: items for method, items in runs.items() if items}
    if baseline not in runs:
        return None, {}, [f"no predictions for the baseline {baseline!r}"]
    common = set(runs[baseline][0]["clip_ids"])
    for items in runs.values():
        for item in items:
            common &= set(item["clip_ids"])
    order = [c for c in runs[baseline][0]["clip_ids"] if c in common]
    largest = max(len(item["clip_ids"]) for items in runs.values() for item in items)
    if len(order) < largest:
        notes.append(
            f"{task}: item-level intervals use the {len(order)} clips common to every run "
            f"(largest run: {largest})"
        )
    targets = None
    aligned: dict[str, list[np.ndarray]] = {}
    for method, items in runs.items():
        aligned[method] = []
        for item in items:
            position = {clip: i for i, clip in enumerate(item["clip_ids"])}
            index = np.array([position[c] for c in order], dtype=int)
            run_targets = np.asarray(item["targets"])[index]
            if targets is None:
                targets = run_targets
            elif not np.array_equal(run_targets, targets):
                raise ValueError(f"{task}: targets of {method} disagree with the baseline's")
            aligned[method].append(np.asarray(item["scores"], dtype=float)[index])
    return targets, aligned, notes


def compare_to_baseline(
    scores: pd.DataFrame,
    predictions: Mapping | None,
    baseline: str = "cola",
    bootstrap_resamples: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
    *,
    item_metrics: Sequence[str] | None = None,
    bootstrap_method: str = "BCa",
) -> tuple[pd.DataFrame, list[str]]:
    """Every method versus the baseline, per task and metric, at seed and item level.

    Columns: method, task, metric, diff (seed mean minus baseline's), seed_test, seed_p,
    seed_p_holm, item_diff, item_ci_low, item_ci_high, item_excludes_zero, significant,
    direction (``"better"``, ``"worse"`` or ``""``). Holm family: all methods versus the
    baseline within a task and metric. Item-level columns are nan where predictions are
    missing, the metric has no item-level function in
    :data:`benchmark.evaluation.metrics.ITEM_METRICS`, or it is
    not in ``item_metrics`` (None = every metric that has one). ``bootstrap_method`` is passed
    to ``scipy.stats.bootstrap`` ("BCa", or "percentile" to skip BCa's jackknife over clips).

    Returns the table and a list of notes (what could not be computed and why).
    Raises ``ValueError`` when predictions of one task disagree on the targets of a clip.
    """
    scores = check_scores(scores)
    predictions = predictions or {}
    rows: list[dict] = []
    notes: list[str] = []
    for (task, metric), part in scores.groupby(["task", "metric"], sort=True):
        values = {
            method: dict(zip(group["seed"], group["value"], strict=True))
            for method, group in part.groupby("method", sort=True)
        }
        if baseline not in values:
            notes.append(f"{task} / {metric}: no baseline ({baseline}) results, no comparisons")
            continue
        others = [m for m in values if m != baseline]
        if not others:
            continue
        base_mean = float(np.mean(list(values[baseline].values())))
        family = []
        for method in others:
            test = stats.seed_test(values[method], values[baseline])
            family.append(
                dict(
                    method=method,
                    task=task,
                    metric=metric,
                    diff=float(np.mean(list(values[method].values()))) - base_mean,
                    seed_test=test["test"],
                    seed_p=test["p"],
                )
            )
        adjusted = stats.holm([row["seed_p"] for row in family], alpha)
        for row, p_holm, reject in zip(
            family, adjusted["p_adjusted"], adjusted["reject"], strict=True
        ):
            row.update(seed_p_holm=float(p_holm), holm_reject=bool(reject))
        if item_metrics is None or metric in item_metrics:
            item, item_notes = _item_level(
                predictions,
                task,
                metric,
                [baseline, *others],
                baseline,
                dict(n_resamples=bootstrap_resamples, method=bootstrap_method),
                seed,
            )
            notes += item_notes
        else:
            item = {}
            notes.append(f"{task} / {metric}: item-level interval not requested")
        for row in family:
            result = item.get(row["method"])
            row.update(
                item_diff=result["diff"] if result else math.nan,
                item_ci_low=result["ci_low"] if result else math.nan,
                item_ci_high=result["ci_high"] if result else math.nan,
                item_excludes_zero=result["excludes_zero"] if result else None,
            )
            agrees = (
                result is None
                or (row["diff"] > 0 and result["ci_low"] > 0)
                or (row["diff"] < 0 and result["ci_high"] < 0)
            )
            row["significant"] = bool(row.pop("holm_reject") and agrees)
            row["direction"] = (
                ("better" if row["diff"] > 0 else "worse") if row["significant"] else ""
            )
            rows.append(row)
    columns = [
        "method", "task", "metric", "diff", "seed_test", "seed_p", "seed_p_holm", "item_diff",
        "item_ci_low", "item_ci_high", "item_excludes_zero", "significant", "direction",
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=columns), notes


def _item_level(
    predictions, task, metric, methods, baseline, bootstrap_options, seed
) -> tuple[dict[str, dict], list[str]]:
    """Bootstrap results per method, and notes saying what could not be computed and why."""
    metric_fn = ITEM_METRICS.get(metric)
    if metric_fn is None:
        return {}, [f"{task} / {metric}: no item-level metric function, no item-level interval"]
    if not any(key[1] == task for key in predictions):
        return {}, [f"{task} / {metric}: no predictions, no item-level interval"]
    targets, aligned, notes = _aligned_runs(predictions, task, methods, baseline)
    if targets is None:
        return {}, [f"{task} / {metric}: {note}" for note in notes]
    multilabel = metric in ("roc_auc", "pr_auc")
    if multilabel != (targets.ndim == 2):
        return {}, [f"{task} / {metric}: targets of shape {targets.shape} do not suit {metric}"]
    without = [m for m in methods if m not in aligned]
    if without:
        # Not fatal: the other methods still get intervals; the report says who has none.
        notes.append(f"{task} / {metric}: no predictions for {', '.join(without)}")
    result = stats.paired_bootstrap_many(
        metric_fn,
        targets,
        aligned,
        baseline,
        seed=_stable_seed(seed, task, metric),
        **bootstrap_options,
    )
    return result, notes


def missing_results(
    scores: pd.DataFrame,
    expected_methods: Sequence[str] | None,
    expected_tasks: Sequence[str] | None,
    primary: Mapping[str, str],
    expected_pairs: Sequence[tuple[str, str]] | None = None,
) -> list[str]:
    """Human-readable list of expected results that are absent or incomplete.

    The grid is expected methods x expected tasks, extended by whatever ``scores`` holds; or,
    with ``expected_pairs`` ((method, task) that a plan meant to run), exactly those pairs
    and the ones present (what was left out on purpose is not missing).
    Reports (method, task) cells with no rows, cells without the task's primary metric, and
    cells with fewer seeds than the most complete method of that task.
    """
    scores = check_scores(scores)
    present_methods = sorted(scores["method"].unique())
    present_tasks = sorted(scores["task"].unique())
    methods = list(expected_methods or []) + [
        m for m in present_methods if m not in (expected_methods or [])
    ]
    tasks = list(expected_tasks or []) + [
        t for t in present_tasks if t not in (expected_tasks or [])
    ]
    seeds = scores.groupby(["task", "method"])["seed"].nunique()
    metrics = scores.groupby(["task", "method"])["metric"].agg(set)
    if expected_pairs is None:
        cells = [(method, task) for task in tasks for method in methods]
    else:
        present = set(zip(scores["method"], scores["task"], strict=True))
        cells = list(dict.fromkeys([*expected_pairs, *sorted(present)]))
        cells.sort(key=lambda cell: (cell[1], cell[0]))
    lines = []
    for method, task in cells:
        most = int(seeds[task].max()) if task in present_tasks else 0
        if (task, method) not in seeds.index:
            lines.append(f"{method} × {task}: no results")
            continue
        metric = primary.get(task)
        if metric is not None and metric not in metrics[(task, method)]:
            lines.append(f"{method} × {task}: primary metric {metric} missing")
        if seeds[(task, method)] < most:
            lines.append(f"{method} × {task}: {seeds[(task, method)]} of {most} seeds")
    return lines


def chance_levels(predictions: Mapping | None) -> dict[tuple[str, str], float]:
    """What a predictor that ignores the audio scores on each task's test clips.

    ``(task, metric) -> value``: ROC-AUC 0.5; PR-AUC the mean positive rate of the scorable
    tags (a constant score's average precision); accuracy the share of the most frequent test
    class (always predicting it); balanced accuracy 1 / the number of classes present.
    Computed from the targets of one run per task (every run of a task has the same targets).
    """
    out: dict[tuple[str, str], float] = {}
    for (_method, task, _seed), run in sorted((predictions or {}).items(), key=lambda kv: kv[0]):
        if (task, "roc_auc") in out or (task, "accuracy") in out:
            continue
        targets = np.asarray(run["targets"])
        if targets.ndim == 2:
            positives = targets.mean(axis=0)
            kept = (positives > 0) & (positives < 1)
            out[(task, "roc_auc")] = 0.5
            out[(task, "pr_auc")] = float(positives[kept].mean()) if kept.any() else math.nan
        else:
            counts = np.bincount(targets.astype(int))
            out[(task, "accuracy")] = float(counts.max() / counts.sum())
            out[(task, "balanced_accuracy")] = 1.0 / int((counts > 0).sum())
    return out
