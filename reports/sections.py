"""The leaderboard's sections as document blocks (:mod:`reports.render`): provenance, how to
read the report, the per-task tables, the paper's two tables (measured beside published) and
the cross-task summary.

Inputs are the outputs of :mod:`reports.compare` (``summary``, ``comparison``); numbers are
formatted here and nowhere else.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import pandas as pd

from reports import stats
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

__all__ = [
    "cross_task_blocks",
    "how_to_read",
    "paper_blocks",
    "provenance_blocks",
    "task_blocks",
]

BETTER, WORSE = "▲", "▼"


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


def provenance_blocks(provenance: Mapping, absent: list[str]) -> list[tuple]:
    known = (
        "profile",
        "config_hash",
        "git_commit",
        "machine",
        "versions",
        "stage_wall_s",
        "stage_compute_s",
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
    compute = provenance.get("stage_compute_s") or {}
    wall = provenance.get("stage_wall_s") or {}
    if compute or wall:
        stages = list(compute) + [k for k in wall if k not in compute]

        def cell(table, stage):
            return f"{float(table[stage]):.1f}" if stage in table else "-"

        table = pd.DataFrame(
            {
                "stage": stages,
                "compute (s)": [cell(compute, k) for k in stages],
                "last invocation (s)": [cell(wall, k) for k in stages],
            }
        )
        blocks += [
            (
                "p",
                "Wall time per stage: compute is the time of every recorded invocation that "
                "ran (or, for cache stages, checked) the steps behind these results, summed "
                "over reruns; a step cut short by a kill is not recorded. The last "
                "invocation may only have found them done.",
            ),
            ("table", table),
        ]
    else:
        blocks.append(("p", "Wall time per stage: not recorded."))
    blocks += [("p", "Missing or skipped results:"), ("ul", absent)]
    return blocks


def how_to_read(
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
        "clips, the same clips for both methods, metric averaged over seeds, tags without a "
        "positive or without a negative clip in a resample dropped) reflects which clips happen "
        "to be in the test set. "
        f"{BETTER}/{WORSE} mark a method significantly better/worse than the baseline: its "
        f"seed-level p survives Holm's correction at α = {alpha} within the family of all "
        "methods versus the baseline on that task and metric, and its item-level interval "
        "(where predictions exist) excludes zero in the same direction. No Wilcoxon test "
        "is used across seeds: with 5 seeds its smallest two-sided p is 0.0625. Numbers "
        f"labelled '{PUBLISHED_LABEL}' are the paper's, shown for reference in separate "
        "tables; they come from another setting and never enter ranks or tests. The "
        "cross-task summary is descriptive."
    )


def task_blocks(summary: pd.DataFrame, comparison: pd.DataFrame, primary, baseline) -> list:
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


def paper_blocks(summary: pd.DataFrame, comparison: pd.DataFrame, expected: Sequence[str]) -> list:
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


def cross_task_blocks(summary, comparison, primary, baseline, alpha) -> list:
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
