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
from reports.compare import NOT_TESTABLE
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
    "data_blocks",
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


def _mean_sd(row) -> str:
    """A method's mean over runs and, with two runs or more, the SD between them."""
    if not row["runs"] >= 2:
        return f"{row['mean']:.3f} (1 run)"
    return f"{row['mean']:.3f} ± {row['sd_between']:.3f}"


def _marker(row) -> str:
    if row.get("status") == NOT_TESTABLE:
        return "n.t."
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


def data_blocks(data_notes: Sequence[str], method_notes: Mapping[str, str]) -> list[tuple]:
    """The data the results were measured on, and the external encoders among the methods."""
    blocks: list[tuple] = [("h", 2, "Data"), ("ul", list(data_notes) or ["not recorded"])]
    if method_notes:
        blocks += [
            ("p", "External encoders (no pre-training here; marked '(external)' in the tables):"),
            ("ul", [f"{m}: {note}" for m, note in method_notes.items()]),
        ]
    return blocks


def how_to_read(alpha: float, families: Mapping[str, tuple[str, Sequence[str]]]) -> list[tuple]:
    """What the numbers are, what a marker means, and what a reader may conclude."""
    family_lines = [
        f"{name}: {', '.join(members)} versus {baseline}"
        if members
        else f"{name} (versus {baseline}): no member in this run"
        for name, (baseline, members) in families.items()
    ]
    return [
        ("h", 2, "How to read this report"),
        (
            "p",
            "The unit of replication is a pre-training run (method, pre-training seed). A "
            "run's score is the mean of its probe seeds' test scores; a cell is the mean over "
            "runs ± the SD between runs. Three sources of uncertainty are shown per cell: the "
            "between-run SD (training randomness as observed), the within-run SD of probe "
            "seeds (probe noise only; the probe seeds of one encoder are never treated as "
            "replicates), and the test-set sampling SE of the mean (from the test items' "
            "influence on the score, summed per cluster of items: MTAT clips of one song, "
            "NSynth notes of one instrument, FMA tracks of one artist).",
        ),
        (
            "p",
            "Each method is compared with the baseline of its declared family by one test "
            "for every metric: Δ = difference of the means over runs, with variance = the "
            "pooled between-run variance × (1/R_A + 1/R_B) + the test-set variance of the "
            "difference beyond what the runs' own noise explains, Satterthwaite degrees of "
            "freedom, a 95% t interval and a two-sided p (README, 'Statistics'). Holm's "
            f"correction runs within (family, task, metric); {BETTER}/{WORSE} mark an "
            f"adjusted p below α = {alpha}; n.t. = not testable (one pre-training run on a "
            "side): no marker is ever given without two runs a side. Families:",
        ),
        ("ul", family_lines),
        (
            "p",
            "What a reader may conclude: a marker says the difference is unlikely under "
            "equal methods given this many runs and this test set (the calibration section "
            "shows the false-positive rate of this machinery on simulated equal methods and "
            "the smallest difference it detects). No marker is not evidence of equality: "
            "read the interval and the minimum detectable difference. Numbers labelled "
            f"'{PUBLISHED_LABEL}' are the paper's, from another setting, and never enter a "
            "test. Cross-task summaries are descriptive.",
        ),
    ]


def task_blocks(
    summary: pd.DataFrame,
    comparison: pd.DataFrame,
    primary,
    flags: Mapping[str, str] | None = None,
    chance: Mapping[tuple[str, str], float] | None = None,
    external: set[str] | frozenset = frozenset(),
) -> list:
    """Per task and metric, the ranked table with each method's test against its family's
    baseline; ``flags`` (method -> word, e.g. "collapsed") are shown beside the name, external
    encoders marked; ``chance``: (task, metric) -> the level said above each table."""
    flags, chance = flags or {}, chance or {}
    blocks: list[tuple] = [("h", 2, "Results per task")]
    baselines = {b for b in comparison.get("baseline", pd.Series(dtype=str)).dropna()}
    merged = summary.merge(comparison, on=["method", "task", "metric"], how="left")
    for task in sorted(merged["task"].unique()):
        part = merged[merged["task"] == task]
        metrics = sorted(part["metric"].unique(), key=lambda m: (m != primary.get(task), m))
        for metric in metrics:
            rows = part[part["metric"] == metric].sort_values(["rank", "method"])
            table = pd.DataFrame(
                {
                    "rank": rows["rank"],
                    "method": [
                        m
                        + (" (baseline)" if m in baselines else "")
                        + (" (external)" if m in external else "")
                        + (f" ⚠ {flags[m]}" if m in flags else "")
                        for m in rows["method"]
                    ],
                    "mean ± SD between runs": [_mean_sd(r) for _, r in rows.iterrows()],
                    "runs × probes": [
                        f"{r['runs']} × {r['probe_seeds']}" for _, r in rows.iterrows()
                    ],
                    "probe SD": [_fmt(v, 4) for v in rows["sd_probe"]],
                    "test SE": [_fmt(v, 4) for v in rows["se_test"]],
                    "vs": [b if isinstance(b, str) else "–" for b in rows["baseline"]],
                    "Δ [95% CI]": [
                        (
                            f"{_fmt(r['diff'], 4)} [{_fmt(r['ci_low'], 4)}, {_fmt(r['ci_high'], 4)}]"
                            if r.get("status") == "tested"
                            else (_fmt(r["diff"], 4) if isinstance(r.get("status"), str) else "–")
                        )
                        for _, r in rows.iterrows()
                    ],
                    "p": [_fmt_p(v) for v in rows["p"]],
                    "Holm p": [_fmt_p(v) for v in rows["p_holm"]],
                    "sig.": [_marker(r) for _, r in rows.iterrows()],
                }
            )
            kind = " (primary)" if primary.get(task) == metric else ""
            blocks.append(("h", 3, f"{task} — {metric}{kind}"))
            level = chance.get((task, metric))
            if level is not None and math.isfinite(level):
                blocks.append(
                    (
                        "p",
                        f"Chance level on these test clips: {level:.3f} "
                        "(a predictor that ignores the audio).",
                    )
                )
            blocks.append(("table", table))
    return blocks


def variance_blocks(summary: pd.DataFrame, primary) -> list:
    """Which source of variance dominates, per task (primary metric) and method."""
    rows = summary[
        [primary.get(t) == m for t, m in zip(summary["task"], summary["metric"], strict=True)]
    ]
    blocks: list[tuple] = [("h", 2, "Variance decomposition")]
    if rows.empty:
        return blocks + [("p", "No primary-metric results.")]
    blocks.append(
        (
            "p",
            "Variance of one run's score on the primary metric, split into training "
            "randomness (between-run variance minus its probe part), probe noise (probe "
            "variance / probe seeds per run) and test-set sampling (one run's test-set "
            "variance), as SDs and as shares of their sum. Figure variance.png draws the "
            "shares.",
        )
    )
    out = []
    for _, r in rows.sort_values(["task", "method"]).iterrows():
        parts = {
            "training": r["sd_training"] ** 2,
            "probe": (r["sd_probe"] ** 2 / r["probe_seeds"]) if r["probe_seeds"] else math.nan,
            "test set": r["sd_test_run"] ** 2,
        }
        total = sum(v for v in parts.values() if math.isfinite(v))
        dominant = max(
            (k for k in parts if math.isfinite(parts[k])), key=lambda k: parts[k], default="–"
        )
        out.append(
            {
                "task": r["task"],
                "method": r["method"],
                "training SD": _fmt(r["sd_training"], 4),
                "probe SD (run mean)": _fmt(math.sqrt(parts["probe"]), 4)
                if math.isfinite(parts["probe"])
                else "–",
                "test-set SD": _fmt(r["sd_test_run"], 4),
                "shares (training / probe / test)": (
                    " / ".join(
                        f"{100 * v / total:.0f}%" if math.isfinite(v) else "–"
                        for v in parts.values()
                    )
                    if total > 0
                    else "–"
                ),
                "dominant": dominant if total > 0 else "–",
            }
        )
    return blocks + [("table", pd.DataFrame(out))]


def calibration_blocks(calibration: Sequence[Mapping], controls: Sequence[Mapping]) -> list:
    """The report's calibration: simulated A/A and power per task, and the controls."""
    blocks: list[tuple] = [("h", 2, "Calibration")]
    if not calibration:
        return blocks + [("p", "Not computed: no task has two pre-training runs of its baseline.")]
    blocks.append(
        (
            "p",
            "The comparison machinery simulated with the variance components measured in "
            "this run (between-run SD and run × item variance pooled over every method with "
            "two runs or more, this test set's clusters and degrees of freedom, the "
            "baseline's number of runs): the false-positive rate of equal methods (A/A) at α, "
            "which should be close to α; the worst rate over methods that are equal on "
            "average but differ item by item (what a marker risks when the runs' own item "
            "noise, u, dwarfs the between-run variance, s²); the smallest difference detected "
            "with 80% power; and the pre-training runs per method a difference of 0.01 would "
            "need.",
        )
    )
    table = pd.DataFrame(
        {
            "task / metric": [f"{c['task']} / {c['metric']}" for c in calibration],
            "runs": [c["runs"] for c in calibration],
            "between-run SD (methods)": [
                f"{_fmt(c['sd_run'], 4)} ({c.get('methods_pooled', 1)})" for c in calibration
            ],
            "s²/u": [_fmt(c.get("s2_over_u", math.nan), 2) for c in calibration],
            "clusters (d.f.)": [f"{c['clusters']} ({c.get('test_df', '–')})" for c in calibration],
            "A/A false positives": [
                f"{100 * c['false_positive_rate']:.1f}% ± {100 * c['fpr_se']:.1f} ({c['reps']} sims)"
                for c in calibration
            ],
            "equal means, worst": [
                f"{100 * c['worst_null_rate']:.1f}%" if "worst_null_rate" in c else "–"
                for c in calibration
            ],
            "min. detectable Δ (80%)": [_fmt(c["min_detectable"], 4) for c in calibration],
            "runs for Δ = 0.01": [
                c["runs_for_planted"] if c["runs_for_planted"] else "> 200" for c in calibration
            ],
        }
    )
    blocks.append(("table", table))
    if controls:
        blocks += [
            ("h", 3, "Controls on the real pipeline"),
            ("table", pd.DataFrame(controls)),
        ]
    return blocks


def _paper_table(cells: Mapping, methods: Sequence[str], labels: Mapping[str, str]) -> pd.DataFrame:
    rows = []
    for method in methods:
        row = {"method": labels.get(method, _label(method))}
        for column in TABLE_COLUMNS:
            row[COLUMN_LABELS[column]] = cells.get((method, *column), "–")
        rows.append(row)
    return pd.DataFrame(rows)


def paper_blocks(
    summary: pd.DataFrame,
    comparison: pd.DataFrame,
    expected: Sequence[str],
    published_columns: Sequence[tuple[str, str]] | None = None,
    published_note: str = "",
) -> list:
    """The paper's two tables, measured; published reference tables only for the columns in
    ``published_columns`` (None: all), the columns measured on the paper's own data."""
    if not set(summary["task"]) & {task for task, _ in TABLE_COLUMNS}:
        return [
            ("h", 2, "Paper tables"),
            ("p", "No task of the paper's tables was run; the paper's numbers are not shown."),
        ]
    merged = summary.merge(comparison, on=["method", "task", "metric"], how="left")
    measured = {
        (r["method"], r["task"], r["metric"]): f"{_mean_sd(r)} {_marker(r)}".strip()
        for _, r in merged.iterrows()
    }
    comparable = set(TABLE_COLUMNS if published_columns is None else published_columns)
    published = {
        (method, task, metric): _fmt(value)
        for method, row in PUBLISHED.iterrows()
        for (task, metric), value in row.items()
        if (task, metric) in comparable
    }
    present = set(summary["method"]) | set(expected)
    table2_set = set(TABLE2_METHODS)
    # Methods outside both paper tables (ablations, random_init) join Table 1 as measured rows.
    extra = sorted(m for m in present if m not in TABLE1_METHODS and m not in table2_set)
    table1 = [m for m in TABLE1_METHODS if m in present] + extra
    table2 = [m for m in TABLE2_METHODS if m in present]
    note = (
        "Measured: mean over pre-training runs ± SD between runs, marker as in the per-task "
        "tables; – = not measured (see missing results)."
    )
    if comparable != set(TABLE_COLUMNS):
        shown = ", ".join(COLUMN_LABELS[c] for c in TABLE_COLUMNS if c in comparable) or "none"
        note += (
            f" Published reference values are shown only for columns measured on the paper's "
            f"own data (here: {shown}); the others are not comparable"
            + (f": {published_note}" if published_note else ".")
        )
    blocks = [
        ("h", 2, "Paper tables"),
        ("p", note),
        ("h", 3, "Table 1 — methods comparison: measured (this run)"),
        ("table", _paper_table(measured, table1, {})),
    ]
    if comparable:
        blocks += [
            ("h", 3, f"Table 1 — methods comparison: {PUBLISHED_LABEL}, for reference"),
            ("table", _paper_table(published, TABLE1_METHODS, {})),
        ]
    blocks += [
        ("h", 3, "Table 2 — source-targeted models: measured (this run)"),
        ("table", _paper_table(measured, table2, TABLE2_LABELS)),
    ]
    if comparable:
        blocks += [
            ("h", 3, f"Table 2 — source-targeted models: {PUBLISHED_LABEL}, for reference"),
            ("table", _paper_table(published, TABLE2_METHODS, TABLE2_LABELS)),
        ]
    return blocks


def cross_task_blocks(summary, aggregate: pd.DataFrame | None, primary, baseline, alpha) -> list:
    """Aggregates over tasks with intervals over runs (rliable), and the mean ranks with what
    rank tests could and could not show."""
    blocks: list[tuple] = [("h", 2, "Across tasks")]
    rows = summary[
        [primary.get(t) == m for t, m in zip(summary["task"], summary["metric"], strict=True)]
    ]
    if rows.empty:
        return blocks + [("p", "No primary-metric results: no cross-task summary.")]
    if rows["task"].nunique() < 2:
        return blocks + [("p", "One task: nothing to summarise across tasks.")]
    if aggregate is not None and len(aggregate):
        blocks.append(
            (
                "p",
                "Per method, over the tasks' primary metrics normalised so that chance is 0 and "
                "a perfect score 1 ((score - chance) / (1 - chance); chance 0.5 for ROC-AUC, 1 / "
                "classes for accuracy): the interquartile mean (IQM) and the mean over runs and "
                "tasks, and the probability that a run of the method beats a run of "
                f"{baseline} on a task (averaged over tasks), each with a 95% interval from a "
                "stratified bootstrap over runs (rliable's estimators, Agarwal et al. 2021).",
            )
        )
        table = pd.DataFrame(
            {
                "method": aggregate["method"],
                "runs": aggregate["runs"],
                "IQM [95% CI]": [
                    f"{r.iqm:.3f} [{r.iqm_low:.3f}, {r.iqm_high:.3f}]"
                    for r in aggregate.itertuples()
                ],
                "mean [95% CI]": [
                    f"{r.mean:.3f} [{r.mean_low:.3f}, {r.mean_high:.3f}]"
                    for r in aggregate.itertuples()
                ],
                f"P(improvement over {baseline}) [95% CI]": [
                    f"{r.poi:.2f} [{r.poi_low:.2f}, {r.poi_high:.2f}]"
                    if math.isfinite(r.poi)
                    else "–"
                    for r in aggregate.itertuples()
                ],
            }
        ).sort_values("IQM [95% CI]", ascending=False)
        blocks.append(("table", table))
    wide = rows.pivot(index="method", columns="task", values="mean")
    ranks = stats.mean_ranks(wide)
    counts = wide.notna().sum(axis=1)
    blocks.append(
        (
            "table",
            pd.DataFrame(
                {
                    "method": ranks.index,
                    "mean rank": [f"{v:.2f}" for v in ranks],
                    "tasks ranked": [int(counts[m]) for m in ranks.index],
                }
            ),
        )
    )
    complete = wide.dropna(axis=0, how="any")
    k, n = complete.shape
    if k >= 2 and n >= 1:
        cd = stats.nemenyi_cd(k, n, alpha)
        blocks.append(
            (
                "p",
                f"Mean rank on each task's primary metric (1 = best). With {k} methods and {n} "
                f"tasks the Nemenyi critical difference is {cd:.3f} mean ranks (α = {alpha}): "
                "rank tests across so few tasks cannot separate methods; the ranks are "
                "descriptive.",
            )
        )
    return blocks
