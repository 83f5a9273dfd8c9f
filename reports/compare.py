"""Comparison statistics of the leaderboard: runs, variance components, family comparisons.

The unit of replication is a pre-training run (method, pre-training seed); its probe seeds are
averaged (they measure probe noise only). Per task and metric, :func:`run_sets` gathers each
method's runs with their probe-seed scores and their test items' influences (clustered: MTAT
clips by song, NSynth notes by instrument, FMA tracks by artist, when the predictions carry
group ids; within strata where they carry strata, as FMA's genre-balanced test split);
:func:`summarise` gives the mean over runs and its three sources of variance; :func:`compare`
tests every family member against its family's baseline with the one combined test of
:mod:`reports.variance`, Holm-corrected within (family, task, metric).

Families are declared (``benchmark.pipeline.report`` passes them from the method registry
and the config): adding a method to one family never changes another family's p-values.

Pure functions of plain DataFrames and dicts (see :mod:`reports.build` for the contract).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from benchmark.evaluation.metrics import influence
from reports.stats import holm
from reports.variance import RunSet, SamplingDesign, combined_test, components

__all__ = [
    "NOT_TESTABLE",
    "SCORE_COLUMNS",
    "aligned_items",
    "check_scores",
    "compare",
    "missing_results",
    "run_sets",
    "summarise",
]

SCORE_COLUMNS = ["method", "task", "pretrain_seed", "probe_seed", "metric", "value"]
NOT_TESTABLE = "not testable (one pre-training run)"
_KEY = ["method", "task", "pretrain_seed", "probe_seed", "metric"]


def check_scores(scores: pd.DataFrame) -> pd.DataFrame:
    """The score rows (one per probe run and metric), checked: columns, no duplicates.

    Raises ``ValueError`` naming what is wrong."""
    missing = [c for c in SCORE_COLUMNS if c not in scores.columns]
    if missing:
        raise ValueError(f"scores lacks columns {missing}; expected {SCORE_COLUMNS}")
    if scores.empty:
        raise ValueError("scores is empty: there is nothing to report")
    duplicated = scores.duplicated(_KEY)
    if duplicated.any():
        first = scores.loc[duplicated, _KEY].iloc[0].tolist()
        raise ValueError(f"scores has duplicate rows for {tuple(_KEY)} = {first}")
    return scores[SCORE_COLUMNS].copy()


def _aligned(predictions: Mapping, task: str) -> tuple[list[str], np.ndarray, SamplingDesign, list]:
    """The test clips common to every prediction set of ``task``, their targets and how they
    were sampled.

    Returns ``(clip ids, targets, design, notes)``; the design's clusters are the predictions'
    ``groups`` where recorded, else each clip is its own cluster (said in notes), and its
    strata the predictions' ``strata`` where recorded. Raises ``ValueError`` when two runs
    disagree on a clip's target, group or stratum.
    """
    sets = [predictions[key] for key in sorted(k for k in predictions if k[1] == task)]
    common = set(sets[0]["clip_ids"])
    for item in sets[1:]:
        common &= set(item["clip_ids"])
    order = [c for c in sets[0]["clip_ids"] if c in common]
    notes = []
    largest = max(len(item["clip_ids"]) for item in sets)
    if len(order) < largest:
        notes.append(
            f"{task}: the test-set components use the {len(order)} clips common to every run "
            f"(largest run: {largest})"
        )
    targets = groups = strata = None
    for item in sets:
        position = {clip: i for i, clip in enumerate(item["clip_ids"])}
        index = np.array([position[c] for c in order], dtype=int)
        run_targets = np.asarray(item["targets"])[index]
        run_groups = np.asarray(item["groups"])[index] if item.get("groups") is not None else None
        run_strata = np.asarray(item["strata"])[index] if item.get("strata") is not None else None
        if targets is None:
            targets, groups, strata = run_targets, run_groups, run_strata
        elif not np.array_equal(run_targets, targets):
            raise ValueError(f"{task}: two runs' predictions disagree on the targets of a clip")
        elif (
            run_groups is not None and groups is not None and not np.array_equal(run_groups, groups)
        ):
            raise ValueError(f"{task}: two runs' predictions disagree on the group of a clip")
        elif (run_strata is None) != (strata is None) or (
            strata is not None and not np.array_equal(run_strata, strata)
        ):
            raise ValueError(f"{task}: two runs' predictions disagree on the stratum of a clip")
    if groups is None:
        groups = np.asarray(order)
        notes.append(f"{task}: no group ids were recorded; every test clip is its own cluster")
    design = SamplingDesign.of(groups, strata)
    if design.mixed_clusters():
        notes.append(
            f"{task}: {design.mixed_clusters()} of {design.num_clusters} test clusters span "
            "several strata; each counts in its most frequent one"
        )
    return order, targets, design, notes


def aligned_items(predictions: Mapping, task: str):
    """The test clips common to every prediction set of ``task``: ``(clip ids, targets,
    sampling design, notes)`` (see :func:`run_sets`)."""
    return _aligned(predictions, task)


def run_sets(
    scores: pd.DataFrame, predictions: Mapping | None
) -> tuple[dict[tuple[str, str], dict[str, RunSet]], dict[str, int], list[str]]:
    """Every method's runs per (task, metric).

    ``predictions``: ``(method, task, pretrain_seed, probe_seed) -> dict(clip_ids, targets,
    scores, groups?, strata?)``. A run's probe values are the logged scores; its cluster
    influences (:func:`benchmark.evaluation.metrics.influence`, summed per cluster on the
    clips common to every run of the task, centred within strata where there are strata:
    :class:`reports.variance.SamplingDesign`) are averaged over its probe seeds. Without
    predictions a task
    gets zero influences and a note (no test-set component).

    Returns ``({(task, metric): {method: RunSet}}, {task: number of clusters}, notes)``.
    """
    scores = check_scores(scores)
    predictions = predictions or {}
    out: dict[tuple[str, str], dict[str, RunSet]] = {}
    clusters: dict[str, int] = {}
    notes: list[str] = []
    for task, task_scores in scores.groupby("task", sort=True):
        psi: dict = {}
        if any(key[1] == task for key in predictions):
            order, targets, design, task_notes = _aligned(predictions, task)
            notes += task_notes
            for key, item in predictions.items():
                if key[1] != task:
                    continue
                position = {clip: i for i, clip in enumerate(item["clip_ids"])}
                index = np.array([position[c] for c in order], dtype=int)
                for metric, (_value, items) in influence(
                    targets, np.asarray(item["scores"])[index]
                ).items():
                    psi[(metric, *key[:1], *key[2:])] = items
            clusters[task] = design.num_clusters
        else:
            design = None
            clusters[task] = 0
            notes.append(f"{task}: no predictions; comparisons use training randomness only")
        for (metric, method), part in task_scores.groupby(["metric", "method"], sort=True):
            seeds = np.array(sorted(part["pretrain_seed"].unique()))
            probe_seeds = sorted(part["probe_seed"].unique())
            values = np.full((len(seeds), len(probe_seeds)), np.nan)
            run_psi = []
            for i, seed in enumerate(seeds):
                rows = part[part["pretrain_seed"] == seed]
                for _, row in rows.iterrows():
                    values[i, probe_seeds.index(row["probe_seed"])] = row["value"]
                items = [
                    psi[(metric, method, seed, p)]
                    for p in rows["probe_seed"]
                    if (metric, method, seed, p) in psi
                ]
                if items and design is not None:
                    run_psi.append(design.influences(np.mean(items, axis=0)))
                else:
                    if design is not None:
                        notes.append(
                            f"{task} / {metric}: {method} pre-training seed {seed} has no saved "
                            "predictions: its test-set influence counts as zero"
                        )
                    run_psi.append(np.zeros(max(clusters[task], 1)))
            out.setdefault((task, metric), {})[method] = RunSet(
                method, seeds, values, np.stack(run_psi), design.df if design else None
            )
    return out, clusters, notes


def summarise(sets: Mapping[tuple[str, str], Mapping[str, RunSet]]) -> pd.DataFrame:
    """Mean over runs, its variance components (:func:`reports.variance.components`) and the
    rank (1 = highest mean within task and metric; ties share the best rank), per (method,
    task, metric)."""
    rows = [
        dict(method=method, task=task, metric=metric, **components(run_set))
        for (task, metric), methods in sorted(sets.items())
        for method, run_set in sorted(methods.items())
    ]
    summary = pd.DataFrame(rows)
    summary["rank"] = (
        summary.groupby(["task", "metric"])["mean"].rank(ascending=False, method="min").astype(int)
    )
    return summary


COMPARISON_COLUMNS = [
    "family", "baseline", "method", "task", "metric", "status", "diff", "ci_low", "ci_high",
    "df", "var_training", "var_test", "p", "p_holm", "significant", "direction",
]  # fmt: skip


def compare(
    sets: Mapping[tuple[str, str], Mapping[str, RunSet]],
    families: Mapping[str, tuple[str, Sequence[str]]],
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Every family member versus its family's baseline, per task and metric.

    ``families``: name -> (baseline, members). Rows: ``COMPARISON_COLUMNS``; ``status`` is
    "tested", :data:`NOT_TESTABLE` (fewer than 2 runs on a side: no marker, ever), or "no
    baseline results". Holm's correction runs within (family, task, metric) over the tested
    members; ``significant`` = Holm-adjusted p below ``alpha``; ``direction`` "better",
    "worse" or "".
    """
    rows: list[dict] = []
    for (task, metric), methods in sorted(sets.items()):
        for family, (baseline, members) in families.items():
            present = [m for m in members if m in methods and m != baseline]
            if not present:
                continue
            base = methods.get(baseline)
            block = []
            for method in present:
                row = dict(
                    family=family, baseline=baseline, method=method, task=task, metric=metric
                )
                run_set = methods[method]
                if base is None:
                    row["status"] = "no baseline results"
                elif run_set.num_runs < 2 or base.num_runs < 2:
                    row["status"] = NOT_TESTABLE
                    row["diff"] = float(run_set.run_scores.mean() - base.run_scores.mean())
                else:
                    test = combined_test(run_set.run_scores, base.run_scores, run_set.psi,
                                         base.psi, test_df=base.test_df)  # fmt: skip
                    row.update(status="tested", **{k: float(test[k]) for k in (
                        "diff", "ci_low", "ci_high", "df", "var_training", "var_test", "p")})  # fmt: skip
                block.append(row)
            corrected = holm([r.get("p", math.nan) for r in block], alpha)
            adjusted, reject = corrected["p_adjusted"], corrected["reject"]
            for row, p_holm, rejected in zip(block, adjusted, reject, strict=True):
                row["p_holm"] = float(p_holm)
                row["significant"] = bool(rejected)
                row["direction"] = ("better" if row["diff"] > 0 else "worse") if rejected else ""
                rows.append(row)
    return pd.DataFrame(rows).reindex(columns=COMPARISON_COLUMNS)


def missing_results(
    scores: pd.DataFrame,
    expected_methods: Sequence[str] | None,
    expected_tasks: Sequence[str] | None,
    primary: Mapping[str, str],
    expected_pairs: Sequence[tuple[str, str]] | Mapping[tuple[str, str], int] | None = None,
) -> list[str]:
    """Human-readable list of expected results that are absent or incomplete.

    The grid is expected methods x expected tasks, extended by whatever ``scores`` holds; or,
    with ``expected_pairs`` ((method, task) that a plan meant to run), exactly those pairs
    and the ones present (what was left out on purpose is not missing).
    Reports (method, task) cells with no rows, cells without the task's primary metric, and
    cells with fewer pre-training runs than planned (``expected_pairs`` as a mapping to the
    planned number of runs) or, else, than the most complete method of that task.
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
    runs = scores.groupby(["task", "method"])["pretrain_seed"].nunique()
    metrics = scores.groupby(["task", "method"])["metric"].agg(set)
    if expected_pairs is None:
        cells = [(method, task) for task in tasks for method in methods]
    else:
        present = set(zip(scores["method"], scores["task"], strict=True))
        cells = list(dict.fromkeys([*expected_pairs, *sorted(present)]))
        cells.sort(key=lambda cell: (cell[1], cell[0]))
    lines = []
    planned = expected_pairs if isinstance(expected_pairs, Mapping) else {}
    for method, task in cells:
        most = int(runs[task].max()) if task in present_tasks else 0
        most = planned.get((method, task), most)
        if (task, method) not in runs.index:
            lines.append(f"{method} × {task}: no results")
            continue
        metric = primary.get(task)
        if metric is not None and metric not in metrics[(task, method)]:
            lines.append(f"{method} × {task}: primary metric {metric} missing")
        if runs[(task, method)] < most:
            lines.append(f"{method} × {task}: {runs[(task, method)]} of {most} pre-training runs")
    return lines


def chance_levels(predictions: Mapping | None) -> dict[tuple[str, str], float]:
    """What a predictor that ignores the audio scores on each task's test clips.

    ``(task, metric) -> value``: ROC-AUC 0.5; PR-AUC the mean positive rate of the scorable
    tags (a constant score's average precision); accuracy the share of the most frequent test
    class (always predicting it); balanced accuracy 1 / the number of classes present.
    Computed from the targets of one run per task (every run of a task has the same targets).
    """
    out: dict[tuple[str, str], float] = {}
    for key, run in sorted((predictions or {}).items(), key=lambda kv: kv[0]):
        task = key[1]
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
