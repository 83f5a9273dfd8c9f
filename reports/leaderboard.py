"""Leaderboard: seed summaries, comparisons with the baseline, paper tables, figures.

Pure of tracking: the caller (the benchmark's report stage) reads MLflow and passes plain
DataFrames and dicts. :func:`build_report` writes ``leaderboard.csv``, ``leaderboard.md``,
``leaderboard.html`` (self-contained: tables as HTML, figures as base64 PNG) and the figures.

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
    (package -> version), ``machine``, ``stage_wall_s`` (stage -> seconds), ``skipped``
    (list of str: missing or skipped results known to the caller). Absent keys are reported
    as "not recorded"; other keys are listed as they are.
``extras``: dict of optional DataFrames for figures: ``loss_curves`` (method, seed, step,
    loss), ``source_activity`` (source, active, total), ``separation_quality`` (separator,
    source, si_sdr); see :mod:`reports.figures`.
``primary``: task -> primary metric (default :data:`PRIMARY`), ``baseline``: method name
    (default ``"cola"``), ``expected_methods`` / ``expected_tasks``: what should be there, so
    that every absent (method, task) cell is listed as missing rather than silently omitted.

Statistics (see :mod:`reports.stats`)
-------------------------------------
Family for multiple comparisons: all methods versus the baseline within one task and one
metric; Holm's correction is applied to the seed-level p-values of that family. A method is
marked significant (▲ better, ▼ worse) when its Holm-adjusted seed-level p is below ``alpha``
*and*, where predictions exist, the item-level BCa interval of the difference excludes zero
in the same direction. Requiring the second condition can only remove rejections, so the
family-wise error rate stays controlled by Holm at ``alpha``; it guards against claims that
the test clips alone could explain. Cross-task summaries are descriptive.
"""

from __future__ import annotations

import html
import math
import re
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.io import atomic_write_text
from reports import figures, stats
from reports.published import (
    COLUMN_LABELS,
    METHOD_LABELS,
    PUBLISHED,
    PUBLISHED_LABEL,
    TABLE1_METHODS,
    TABLE2_LABELS,
    TABLE2_METHODS,
    TABLE_COLUMNS,
)

__all__ = ["PRIMARY", "build_report", "compare_to_baseline", "missing_results", "summarise"]

PRIMARY: dict[str, str] = {
    "mtat": "roc_auc",
    "mtat_star": "roc_auc",
    "nsynth": "accuracy",
    "fma": "accuracy",
}
SCORE_COLUMNS = ["method", "task", "seed", "metric", "value"]
BETTER, WORSE = "▲", "▼"


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------


def _check_scores(scores: pd.DataFrame) -> pd.DataFrame:
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
    scores = _check_scores(scores)
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
    missing, the metric has no item-level function in :data:`reports.stats.METRICS`, or it is
    not in ``item_metrics`` (None = every metric that has one). ``bootstrap_method`` is passed
    to ``scipy.stats.bootstrap`` ("BCa", or "percentile" to skip BCa's jackknife over clips).

    Returns the table and a list of notes (what could not be computed and why).
    Raises ``ValueError`` when predictions of one task disagree on the targets of a clip.
    """
    scores = _check_scores(scores)
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
    metric_fn = stats.METRICS.get(metric)
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
) -> list[str]:
    """Human-readable list of expected results that are absent or incomplete.

    The grid is expected methods x expected tasks, extended by whatever ``scores`` holds.
    Reports (method, task) cells with no rows, cells without the task's primary metric, and
    cells with fewer seeds than the most complete method of that task.
    """
    scores = _check_scores(scores)
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
    lines = []
    for task in tasks:
        most = int(seeds[task].max()) if task in present_tasks else 0
        for method in methods:
            if (task, method) not in seeds.index:
                lines.append(f"{method} × {task}: no results")
                continue
            metric = primary.get(task)
            if metric is not None and metric not in metrics[(task, method)]:
                lines.append(f"{method} × {task}: primary metric {metric} missing")
            if seeds[(task, method)] < most:
                lines.append(f"{method} × {task}: {seeds[(task, method)]} of {most} seeds")
    return lines


# ---------------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------------


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}"


def _fmt_p(p) -> str:
    if p is None or not math.isfinite(p):
        return "–"
    return f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}"


def _mean_pm(row) -> str:
    if row["n"] < 2:
        return f"{row['mean']:.3f} (1 seed, no interval)"
    return f"{row['mean']:.3f} ± {(row['ci_high'] - row['ci_low']) / 2:.3f}"


def _marker(row) -> str:
    if row.get("direction") == "better":
        return BETTER
    if row.get("direction") == "worse":
        return WORSE
    return ""


def _label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


# ---------------------------------------------------------------------------------------------
# Document blocks, rendered twice (Markdown, HTML) from the same content
# ---------------------------------------------------------------------------------------------


def _md_table(frame: pd.DataFrame) -> str:
    def cell(value) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    header = "| " + " | ".join(cell(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def _render_markdown(blocks: list[tuple]) -> str:
    out = []
    for kind, *content in blocks:
        if kind == "h":
            out.append("#" * content[0] + " " + content[1])
        elif kind == "p":
            out.append(content[0])
        elif kind == "ul":
            out.append("\n".join(f"- {item}" for item in content[0]) or "- none")
        elif kind == "table":
            out.append(_md_table(content[0]))
        elif kind == "img":
            out.append(f"![{content[1]}]({Path(content[0]).name})")
    return "\n\n".join(out) + "\n"


_CSS = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}"
    "table{border-collapse:collapse;margin:0.5em 0 1.5em}"
    "th,td{border:1px solid #bbb;padding:3px 8px;text-align:left}"
    "th{background:#eee}img{max-width:100%}"
)


def _render_html(blocks: list[tuple], title: str) -> str:
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
    ]
    for kind, *content in blocks:
        if kind == "h":
            out.append(f"<h{content[0]}>{html.escape(content[1])}</h{content[0]}>")
        elif kind == "p":
            out.append(f"<p>{html.escape(content[0])}</p>")
        elif kind == "ul":
            items = content[0] or ["none"]
            out.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>")
        elif kind == "table":
            out.append(content[0].to_html(index=False, escape=True, border=0))
        elif kind == "img":
            uri = figures.png_data_uri(content[0])
            out.append(f'<p><img alt="{html.escape(content[1])}" src="{uri}"></p>')
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _provenance_blocks(provenance: Mapping, absent: list[str]) -> list[tuple]:
    known = (
        "profile",
        "config_hash",
        "git_commit",
        "machine",
        "versions",
        "stage_wall_s",
        "skipped",
    )
    lines = [
        f"{name.replace('_', ' ').capitalize()}: {provenance.get(name, 'not recorded')}"
        for name in ("profile", "config_hash", "git_commit", "machine")
    ]
    versions = provenance.get("versions")
    lines.append(
        "Package versions: "
        + (
            ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))
            if versions
            else "not recorded"
        )
    )
    lines += [f"{k}: {v}" for k, v in provenance.items() if k not in known]
    blocks: list[tuple] = [("h", 2, "Provenance"), ("ul", lines)]
    wall = provenance.get("stage_wall_s")
    if wall:
        table = pd.DataFrame(
            {"stage": list(wall), "wall time (s)": [f"{float(v):.1f}" for v in wall.values()]}
        )
        blocks += [("p", "Wall time per stage:"), ("table", table)]
    else:
        blocks.append(("p", "Wall time per stage: not recorded."))
    blocks += [("p", "Missing or skipped results:"), ("ul", absent)]
    return blocks


def _how_to_read(
    baseline: str, num_seeds: int, resamples: int, bootstrap_method: str, alpha: float
) -> str:
    return (
        "Each cell is the mean over seeds of a probe's test metric "
        f"± the half-width of its 95% t-interval over seeds (here up to {num_seeds} seeds; "
        "t quantile with n-1 degrees of freedom; no interval with one seed). Rank 1 is the "
        f"highest mean on that task and metric. Δ is a method's mean minus the baseline's "
        f"({_label(baseline)}). Two uncertainties are shown. The seed-level test (paired t "
        "over seeds when both methods ran the same seeds, Welch otherwise) reflects training "
        f"randomness. The item-level 95% {bootstrap_method} bootstrap interval ({resamples} resamples of test "
        "clips, the same clips for both methods, metric averaged over seeds, tags without "
        "positives in a resample dropped) reflects which clips happen to be in the test set. "
        f"{BETTER}/{WORSE} mark a method significantly better/worse than the baseline: its "
        f"seed-level p survives Holm's correction at α = {alpha} within the family of all "
        "methods versus the baseline on that task and metric, and its item-level interval "
        "(where predictions exist) excludes zero in the same direction. No Wilcoxon test "
        "is used across seeds: with 5 seeds its smallest two-sided p is 0.0625. Numbers "
        f"labelled '{PUBLISHED_LABEL}' are the paper's, shown for reference in separate "
        "tables; they come from another setting and never enter ranks or tests. The "
        "cross-task summary is descriptive."
    )


def _task_blocks(summary: pd.DataFrame, comparison: pd.DataFrame, primary, baseline) -> list:
    blocks: list[tuple] = [("h", 2, "Results per task")]
    merged = summary.merge(comparison, on=["method", "task", "metric"], how="left")
    for task in sorted(merged["task"].unique()):
        part = merged[merged["task"] == task]
        metrics = sorted(part["metric"].unique(), key=lambda m: (m != primary.get(task), m))
        for metric in metrics:
            rows = part[part["metric"] == metric].sort_values(["rank", "method"])
            seeds = rows["n"].max()
            table = pd.DataFrame(
                {
                    "rank": rows["rank"],
                    "method": [
                        m + (" (baseline)" if m == baseline else "") for m in rows["method"]
                    ],
                    f"mean ± 95% t-interval over {seeds} seeds": [
                        _mean_pm(r) for _, r in rows.iterrows()
                    ],
                    "n": rows["n"],
                    f"Δ vs {baseline}": [_fmt(v, 4) for v in rows["diff"]],
                    "item-level 95% CI of Δ": [
                        f"[{_fmt(lo, 4)}, {_fmt(hi, 4)}]" if math.isfinite(lo) else "–"
                        for lo, hi in zip(rows["item_ci_low"], rows["item_ci_high"], strict=True)
                    ],
                    "seed-level p (test)": [
                        f"{_fmt_p(p)} ({t})" if isinstance(t, str) else "–"
                        for p, t in zip(rows["seed_p"], rows["seed_test"], strict=True)
                    ],
                    "Holm p": [_fmt_p(p) for p in rows["seed_p_holm"]],
                    "sig.": [_marker(r) for _, r in rows.iterrows()],
                }
            )
            kind = " (primary)" if primary.get(task) == metric else ""
            blocks += [("h", 3, f"{task} — {metric}{kind}"), ("table", table)]
    return blocks


def _paper_table(cells: Mapping, methods: Sequence[str], labels: Mapping[str, str]) -> pd.DataFrame:
    rows = []
    for method in methods:
        row = {"method": labels.get(method, _label(method))}
        for column in TABLE_COLUMNS:
            row[COLUMN_LABELS[column]] = cells.get((method, *column), "–")
        rows.append(row)
    return pd.DataFrame(rows)


def _paper_blocks(summary: pd.DataFrame, comparison: pd.DataFrame, expected: Sequence[str]) -> list:
    merged = summary.merge(comparison, on=["method", "task", "metric"], how="left")
    measured = {
        (r["method"], r["task"], r["metric"]): (
            f"{_mean_pm(r)} {_marker(r)}".strip()
            if r["n"] >= 2
            else f"{r['mean']:.3f} {_marker(r)}".strip()
        )
        for _, r in merged.iterrows()
    }
    published = {
        (method, task, metric): _fmt(value)
        for method, row in PUBLISHED.iterrows()
        for (task, metric), value in row.items()
    }
    present = set(summary["method"]) | set(expected)
    table2_set = set(TABLE2_METHODS)
    # Methods outside both paper tables (ablations, random_init) join Table 1 as measured rows.
    extra = sorted(m for m in present if m not in TABLE1_METHODS and m not in table2_set)
    table1 = [m for m in TABLE1_METHODS if m in present] + extra
    table2 = [m for m in TABLE2_METHODS if m in present]
    note = (
        "Measured: mean ± 95% t-interval half-width over seeds, marker as in the per-task "
        "tables; – = not measured (see missing results)."
    )
    return [
        ("h", 2, "Paper tables"),
        ("p", note),
        ("h", 3, "Table 1 — methods comparison: measured (this run)"),
        ("table", _paper_table(measured, table1, {})),
        ("h", 3, f"Table 1 — methods comparison: {PUBLISHED_LABEL}, for reference"),
        ("table", _paper_table(published, TABLE1_METHODS, {})),
        ("h", 3, "Table 2 — source-targeted models: measured (this run)"),
        ("table", _paper_table(measured, table2, TABLE2_LABELS)),
        ("h", 3, f"Table 2 — source-targeted models: {PUBLISHED_LABEL}, for reference"),
        ("table", _paper_table(published, TABLE2_METHODS, TABLE2_LABELS)),
    ]


def _cross_task_blocks(summary, comparison, primary, baseline, alpha) -> list:
    blocks: list[tuple] = [("h", 2, "Cross-task summary (descriptive)")]
    rows = summary[
        [primary.get(t) == m for t, m in zip(summary["task"], summary["metric"], strict=True)]
    ]
    if rows.empty:
        return blocks + [("p", "No primary-metric results: no cross-task summary.")]
    wide = rows.pivot(index="method", columns="task", values="mean")
    ranks = stats.mean_ranks(wide)
    counts = wide.notna().sum(axis=1)
    prim = comparison[
        [primary.get(t) == m for t, m in zip(comparison["task"], comparison["metric"], strict=True)]
    ]
    wtl = stats.win_tie_loss(prim, low="item_ci_low", high="item_ci_high") if len(prim) else None
    table = pd.DataFrame(
        {
            "method": ranks.index,
            "mean rank": [f"{v:.2f}" for v in ranks],
            "tasks ranked": [int(counts[m]) for m in ranks.index],
        }
    )
    for column in ("win", "tie", "loss", "untested"):
        table[f"{column} vs {baseline}"] = [
            "–" if m == baseline or wtl is None or m not in wtl.index else int(wtl.loc[m, column])
            for m in ranks.index
        ]
    text = (
        "Mean rank on each task's primary metric (rank 1 = best) and, against the baseline, "
        "the tasks where the item-level 95% interval of the difference lies above zero "
        "(win), below zero (loss) or contains it (tie); untested = no item-level interval."
    )
    blocks += [("p", text), ("table", table)]
    complete = wide.dropna(axis=0, how="any")
    k, n = complete.shape
    if k >= 2 and n >= 1:
        cd = stats.nemenyi_cd(k, n, alpha)
        if cd >= k - 1:
            reach = (
                f"larger than the widest possible gap ({k - 1}, first on every task against "
                "last on every task), so rank tests cannot separate any two methods"
            )
        else:
            reach = (
                f"while mean ranks lie between 1 and {k}: only a method first on nearly every "
                "task against one last on nearly every task could differ by that much, so rank "
                f"tests across {n} tasks cannot separate methods in practice"
            )
        blocks.append(
            (
                "p",
                f"With {k} methods and {n} tasks the Nemenyi critical difference is {cd:.3f} "
                f"mean ranks (α = {alpha}), {reach}. This summary is descriptive only.",
            )
        )
    if k >= 3 and n >= 2:
        result = stats.friedman(complete.T.to_numpy())
        blocks.append(
            (
                "p",
                f"Friedman statistic over the {n} tasks with all {k} methods: "
                f"χ² = {result['chi2']:.3f}, p = {_fmt_p(result['p'])} (descriptive).",
            )
        )
    return blocks


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", str(text))


def _draw_figures(out_dir: Path, summary, scores, per_tag, extras, baseline) -> tuple[dict, dict]:
    drawn: dict[str, Path] = {}
    skipped: dict[str, str] = {}
    jobs = [
        (
            f"scores_{_safe_name(task)}.png",
            lambda path, task=task: figures.scores_figure(summary, scores, task, path, baseline),
        )
        for task in sorted(summary["task"].unique())
    ]
    extras = extras or {}
    jobs += [
        (
            "tagwise_pr_auc.png",
            lambda path: figures.tagwise_figure(per_tag, path, baseline=baseline),
        ),
        (
            "loss_curves.png",
            lambda path: figures.loss_curves_figure(extras.get("loss_curves"), path),
        ),
        (
            "source_activity.png",
            lambda path: figures.source_activity_figure(extras.get("source_activity"), path),
        ),
        (
            "separation_quality.png",
            lambda path: figures.separation_quality_figure(extras.get("separation_quality"), path),
        ),
    ]
    for name, draw in jobs:
        try:
            drawn[name] = draw(out_dir / name)
        except figures.FigureDataError as error:
            skipped[name] = str(error)
    return drawn, skipped


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


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
    scores = _check_scores(scores)
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

    drawn, not_drawn = _draw_figures(out_dir, summary, scores, per_tag, extras, baseline)
    paths.update(drawn)

    num_seeds = int(summary["n"].max())
    blocks: list[tuple] = [("h", 1, "Leaderboard")]
    blocks += _provenance_blocks(provenance, absent)
    blocks += [
        ("h", 2, "How to read this report"),
        ("p", _how_to_read(baseline, num_seeds, bootstrap_resamples, bootstrap_method, alpha)),
    ]
    blocks += _task_blocks(summary, comparison, primary, baseline)
    blocks += _paper_blocks(summary, comparison, expected_methods or [])
    blocks += _cross_task_blocks(summary, comparison, primary, baseline, alpha)
    blocks += [("h", 2, "Notes on item-level intervals"), ("ul", notes)]
    blocks.append(("h", 2, "Figures"))
    for name, path in drawn.items():
        blocks.append(("img", path, name))
    blocks += [("p", "Figures not drawn:"), ("ul", [f"{k}: {v}" for k, v in not_drawn.items()])]

    paths["leaderboard.md"] = out_dir / "leaderboard.md"
    atomic_write_text(paths["leaderboard.md"], _render_markdown(blocks))
    paths["leaderboard.html"] = out_dir / "leaderboard.html"
    atomic_write_text(paths["leaderboard.html"], _render_html(blocks, "Leaderboard"))
    return paths
