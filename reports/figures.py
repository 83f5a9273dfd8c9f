"""Report figures: pure functions from DataFrames to PNG files.

Figures are drawn on ``matplotlib.figure.Figure`` objects with the Agg canvas, never through
``pyplot``, so no global backend or figure state is touched and nothing needs a display.
Each function validates its input and raises :class:`FigureDataError` (a ``ValueError``)
saying what is missing; the leaderboard catches it and lists the figure as not drawn, with
that reason.

Input DataFrames (column names are the contract):

* run_scores: ``method, task, metric, pretrain_seed, value``; summary: ``method, task, metric,
  mean, sd_between, ...`` (see :mod:`reports.compare`).
* per_tag: ``method, task, tag, roc_auc, pr_auc`` (any seed columns are averaged over).
* pretrain_curves: ``method, seed, step, metric, value`` (loss, contrastive_accuracy and their
  chance levels; the same with ``val_``).
* source_activity: ``source, active, total`` (excerpts where the separated source is
  non-silent, out of all excerpts).
* separation_quality: ``separator, source, si_sdr`` (dB, one row per excerpt or clip).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from benchmark.io import atomic_path

__all__ = [
    "ACTIVITY_BOUNDS",
    "FIGURE_CAPTIONS",
    "SOURCE_MODELS",
    "FigureDataError",
    "draw_figures",
    "pretraining_figure",
    "png_data_uri",
    "scores_figure",
    "separation_quality_figure",
    "source_activity_figure",
    "tagwise_figure",
    "variance_figure",
]

# The paper's tag-wise figure: each source-targeted model against COLA.
SOURCE_MODELS: tuple[str, ...] = ("msa_bass", "msa_drums", "msa_vocals", "msa_other")

_DPI = 110
ACTIVITY_BOUNDS = (0.05, 0.95)  # source-activity shares outside these are flagged
# Distinguishable colours for up to 20 series (matplotlib's tab20, dark shades first).
_COLORS = [f"C{i}" for i in range(10)] + ["#393b79", "#8c6d31", "#843c39", "#7b4173",
                                          "#3182bd", "#31a354", "#756bb1", "#636363",
                                          "#e6550d", "#17becf"]  # fmt: skip


class FigureDataError(ValueError):
    """The data a figure needs is absent or unusable; the message says what is missing."""


def _require(frame: pd.DataFrame | None, columns: Sequence[str], what: str) -> pd.DataFrame:
    if frame is None or len(frame) == 0:
        raise FigureDataError(f"no {what} data")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise FigureDataError(f"{what} data lacks columns {missing}")
    return frame


def _save(figure: Figure, path: Path) -> Path:
    path = Path(path)
    FigureCanvasAgg(figure)
    figure.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, format="png", dpi=_DPI)
    return path


def png_data_uri(path: Path) -> str:
    """The PNG file at ``path`` as a ``data:image/png;base64,...`` URI for self-contained HTML."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def scores_figure(
    summary: pd.DataFrame,
    run_scores: pd.DataFrame,
    task: str,
    path: Path,
    baselines: Sequence[str] = (),
    chance: dict | None = None,
) -> Path:
    """Per-task scores: one panel per metric, the mean over pre-training runs ± the SD between
    them, each run's score (mean of its probe seeds) as a dot; baselines' means dashed, the
    chance level (``chance``: (task, metric) -> value) a red dotted line.

    ``run_scores``: ``method, task, metric, pretrain_seed, value``.
    Raises :class:`FigureDataError` when the task has no rows.
    """
    _require(summary, ["method", "task", "metric", "mean", "sd_between"], "summary")
    _require(run_scores, ["method", "task", "metric", "value"], "run scores")
    rows = summary[summary["task"] == task]
    if rows.empty:
        raise FigureDataError(f"no scores for task {task!r}")
    metrics = list(dict.fromkeys(rows["metric"]))
    figure = Figure(figsize=(4.5 * len(metrics), 0.45 * rows["method"].nunique() + 1.6))
    for i, metric in enumerate(metrics):
        axes = figure.add_subplot(1, len(metrics), i + 1)
        part = rows[rows["metric"] == metric].sort_values("mean")
        y = np.arange(len(part))
        # One run has no SD: the point without an error bar.
        axes.errorbar(part["mean"], y, xerr=np.nan_to_num(part["sd_between"]), fmt="o",
                      color="C0", capsize=3)  # fmt: skip
        runs = run_scores[(run_scores["task"] == task) & (run_scores["metric"] == metric)]
        for j, method in enumerate(part["method"]):
            values = runs.loc[runs["method"] == method, "value"]
            axes.plot(values, np.full(len(values), j + 0.18), ".", color="0.5", markersize=4)
        for base in baselines:
            if base in set(part["method"]):
                mean = part.loc[part["method"] == base, "mean"].iloc[0]
                axes.axvline(mean, color="0.4", linestyle="--", linewidth=0.8, label=base)
        level = (chance or {}).get((task, metric))
        if level is not None and np.isfinite(level):
            axes.axvline(level, color="C3", linestyle=":", linewidth=1.2, label="chance")
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize=7, loc="best")
        axes.set_yticks(y, part["method"])
        axes.set_xlabel(f"{metric} (mean over runs ± SD; dots: runs)")
        axes.set_title(f"{task}: {metric}")
        axes.grid(axis="x", alpha=0.3)
    return _save(figure, path)


def variance_figure(summary: pd.DataFrame, primary: dict, path: Path) -> Path:
    """Shares of one run's score variance per method and task (primary metric): training
    randomness, probe noise (per run: probe variance / probe seeds) and test-set sampling.

    Raises :class:`FigureDataError` without primary-metric rows with the components.
    """
    _require(summary, ["method", "task", "metric", "sd_training", "sd_probe", "probe_seeds",
                       "sd_test_run"], "summary")  # fmt: skip
    rows = summary[
        [primary.get(t) == m for t, m in zip(summary["task"], summary["metric"], strict=True)]
    ]
    if rows.empty:
        raise FigureDataError("no primary-metric rows")
    tasks = sorted(rows["task"].unique())
    figure = Figure(figsize=(4.0 * len(tasks), 0.4 * rows["method"].nunique() + 1.8))
    labels = ("training", "probe", "test set")
    colors = ("C0", "C1", "C2")
    for i, task in enumerate(tasks):
        axes = figure.add_subplot(1, len(tasks), i + 1)
        part = rows[rows["task"] == task].sort_values("method")
        parts = np.stack(
            [
                np.nan_to_num(part["sd_training"].to_numpy(float) ** 2),
                np.nan_to_num(
                    part["sd_probe"].to_numpy(float) ** 2 / part["probe_seeds"].clip(lower=1)
                ),
                np.nan_to_num(part["sd_test_run"].to_numpy(float) ** 2),
            ]
        )
        total = parts.sum(axis=0)
        shares = np.divide(parts, total, out=np.zeros_like(parts), where=total > 0)
        left = np.zeros(len(part))
        y = np.arange(len(part))
        for share, label, color in zip(shares, labels, colors, strict=True):
            axes.barh(y, share, left=left, color=color, label=label)
            left += share
        axes.set_yticks(y, part["method"])
        axes.set_xlim(0, 1)
        axes.set_xlabel("share of one run's score variance")
        axes.set_title(task)
        if i == 0:
            axes.legend(fontsize=7, loc="lower left")
    figure.suptitle("Variance decomposition (primary metric)")
    return _save(figure, path)


def tagwise_figure(
    per_tag: pd.DataFrame | None,
    path: Path,
    task: str = "mtat",
    baseline: str = "cola",
    methods: Sequence[str] = SOURCE_MODELS,
    metric: str = "pr_auc",
) -> Path:
    """Tag-wise ``metric`` of each source-targeted model minus the baseline (the paper's figure).

    Each model's per-tag value is averaged over its runs and probe seeds, then the baseline's average is
    subtracted. Tags keep the order of their first appearance in ``per_tag`` (the harness
    writes them in the pinned MTAT order). Models absent from the data are left out.
    Raises :class:`FigureDataError` when the task, the baseline, or every model is missing.
    """
    _require(per_tag, ["method", "task", "tag", metric], "per-tag")
    rows = per_tag[per_tag["task"] == task]
    if rows.empty:
        raise FigureDataError(f"no per-tag rows for task {task!r}")
    means = rows.groupby(["method", "tag"], sort=False)[metric].mean().unstack("tag")
    tags = list(dict.fromkeys(rows["tag"]))
    if baseline not in means.index:
        raise FigureDataError(f"no per-tag rows for the baseline {baseline!r} on {task!r}")
    present = [m for m in methods if m in means.index]
    if not present:
        raise FigureDataError(f"no per-tag rows for any of {list(methods)} on {task!r}")
    diffs = means.loc[present, tags] - means.loc[baseline, tags]
    figure = Figure(figsize=(max(8.0, 0.22 * len(tags) + 2), 1.9 * len(present) + 1.2))
    x = np.arange(len(tags))
    largest = np.abs(diffs.to_numpy(dtype=float))
    # Symmetric y-limits shared by all panels, so bars compare across models.
    limit = float(np.nanmax(largest)) * 1.1 if np.isfinite(largest).any() else 0.0
    limit = limit if limit > 0 else 1.0
    for i, method in enumerate(present):
        axes = figure.add_subplot(len(present), 1, i + 1)
        values = diffs.loc[method].to_numpy(dtype=float)
        axes.bar(x, values, color=np.where(values >= 0, "C2", "C3"))
        axes.axhline(0.0, color="0.3", linewidth=0.6)
        axes.set_ylim(-limit, limit)
        axes.set_ylabel(f"{method}\n- {baseline}", fontsize=8)
        axes.set_xticks(x, tags if i == len(present) - 1 else [], rotation=90, fontsize=7)
        axes.grid(axis="y", alpha=0.3)
    figure.suptitle(f"{task}: tag-wise {metric} relative to {baseline} (mean over runs)")
    return _save(figure, path)


def pretraining_figure(curves: pd.DataFrame | None, path: Path) -> Path:
    """Pre-training curves against their chance lines, per method (mean over seeds).

    Four panels: training and eval-mode validation loss divided by the chance loss ``ln M``,
    and training and validation contrastive accuracy divided by the chance accuracy ``1 / M``
    (``M`` candidates per anchor, which the centroid loss varies per batch): on every panel
    the chance line is 1, so methods with different losses share one scale. Loss below 1 and
    accuracy above 1 mean learning.

    Raises :class:`FigureDataError` when there are no curves with their chance levels.
    """
    _require(curves, ["method", "seed", "step", "metric", "value"], "pre-training curve")
    wide = curves.pivot_table(
        index=["method", "seed", "step"], columns="metric", values="value", aggfunc="last"
    ).reset_index()
    panels = [
        ("loss", "chance_loss", "training loss / chance"),
        ("val_loss", "val_chance_loss", "eval-mode validation loss / chance"),
        ("contrastive_accuracy", "chance_accuracy", "training accuracy / chance"),
        (
            "val_contrastive_accuracy",
            "val_chance_accuracy",
            "eval-mode validation accuracy / chance",
        ),
    ]
    if not any(a in wide and b in wide for a, b, _ in panels):
        raise FigureDataError("no pre-training curve with its chance level")
    figure = Figure(figsize=(10.0, 7.0))
    methods = sorted(wide["method"].unique())
    for i, (metric, chance, title) in enumerate(panels):
        axes = figure.add_subplot(2, 2, i + 1)
        if metric in wide and chance in wide:
            part = wide.dropna(subset=[metric, chance])
            for j, method in enumerate(methods):
                rows = part[part["method"] == method]
                if rows.empty:
                    continue
                ratio = (rows[metric] / rows[chance]).groupby(rows["step"]).mean()
                marker = "o" if "val" in metric else None  # validations are a few points
                axes.plot(ratio.index, ratio.values, "-", marker=marker, markersize=3,
                          color=_COLORS[j % len(_COLORS)], label=str(method))  # fmt: skip
        axes.axhline(1.0, color="black", linestyle="--", linewidth=1.0, label="chance")
        axes.set_title(title, fontsize=10)
        axes.set_xlabel("step")
        axes.grid(alpha=0.3)
        if i == 3:
            axes.legend(fontsize=7, ncol=2)
    figure.suptitle("Pre-training against chance (mean over seeds; 1 = chance)")
    return _save(figure, path)


def source_activity_figure(source_activity: pd.DataFrame | None, path: Path) -> Path:
    """Fraction of excerpts in which each separated source is active (not silent).

    Raises :class:`FigureDataError` when there are no rows or a total is not positive.
    """
    _require(source_activity, ["source", "active", "total"], "source-activity")
    if np.any(source_activity["total"].to_numpy() <= 0):
        raise FigureDataError("source-activity totals must be positive")
    fraction = source_activity["active"] / source_activity["total"]
    figure = Figure(figsize=(6.0, 3.5))
    axes = figure.add_subplot(1, 1, 1)
    x = np.arange(len(source_activity))
    # Shares outside ACTIVITY_BOUNDS: the silence flags carry little information (red).
    low, high = ACTIVITY_BOUNDS
    colours = ["C3" if (f > high or f < low) else "C0" for f in fraction]
    axes.bar(x, fraction, color=colours)
    for bound in ACTIVITY_BOUNDS:
        axes.axhline(bound, color="0.5", linestyle=":", linewidth=0.8)
    for xi, active, total, share in zip(
        x, source_activity["active"], source_activity["total"], fraction, strict=True
    ):
        axes.annotate(f"{int(active)}/{int(total)}", (xi, share), ha="center", va="bottom")
    axes.set_xticks(x, source_activity["source"])
    axes.set_ylim(0, 1.12)
    axes.set_ylabel("fraction of excerpts active")
    axes.set_title("Separated-source activity (non-silent excerpts)")
    return _save(figure, path)


def separation_quality_figure(separation_quality: pd.DataFrame | None, path: Path) -> Path:
    """SI-SDR (dB) of each separator per source, measured on the synthetic corpus's validation
    clips (the only audio with true stems): grouped bars (one value per separator and source,
    e.g. a mean) or box plots (several), each separator with its own colour and hatch.

    Raises :class:`FigureDataError` when there are no finite SI-SDR values.
    """
    _require(separation_quality, ["separator", "source", "si_sdr"], "separation-quality")
    data = separation_quality[np.isfinite(separation_quality["si_sdr"].astype(float))]
    if data.empty:
        raise FigureDataError("no finite SI-SDR values")
    sources = list(dict.fromkeys(data["source"]))
    separators = list(dict.fromkeys(data["separator"]))
    width = 0.8 / len(separators)
    figure = Figure(figsize=(max(6.5, 1.7 * len(sources)), 4.2))
    axes = figure.add_subplot(1, 1, 1)
    one_value = data.groupby(["separator", "source"]).size().max() == 1
    for j, separator in enumerate(separators):
        part = data[data["separator"] == separator]
        positions = np.arange(len(sources)) + (j - (len(separators) - 1) / 2) * width
        colour, hatch = f"C{j % 10}", _HATCHES[j % len(_HATCHES)]
        groups = [part.loc[part["source"] == s, "si_sdr"].to_numpy(dtype=float) for s in sources]
        kept = [(p, g) for p, g in zip(positions, groups, strict=True) if g.size]
        if one_value:
            values = [float(g[0]) for _, g in kept]
            bars = axes.bar(
                [p for p, _ in kept], values, width * 0.9, color=colour, hatch=hatch,
                edgecolor="black", label=str(separator),
            )  # fmt: skip
            axes.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
        else:
            boxes = axes.boxplot(
                [g for _, g in kept], positions=[p for p, _ in kept], widths=width * 0.9,
                patch_artist=True,
            )  # fmt: skip
            for box in boxes["boxes"]:
                box.set_facecolor(colour)
                box.set_hatch(hatch)
            axes.plot([], [], "s", color=colour, label=str(separator))
    axes.axhline(0.0, color="0.3", linewidth=0.6)
    axes.set_xticks(np.arange(len(sources)), sources)
    axes.set_ylabel("SI-SDR (dB), higher is better")
    axes.set_title(
        "Separation quality per source\nmeasured on the synthetic validation set (true stems)",
        fontsize=10,
    )
    axes.legend(fontsize=8, loc="best")
    axes.grid(axis="y", alpha=0.3)
    return _save(figure, path)


_HATCHES = ("", "//", "..", "xx", "\\\\")

# What each figure shows and where it was measured: the caption under it in the report.
FIGURE_CAPTIONS: dict[str, str] = {
    # scores_<task>.png: see draw_figures
    "tagwise_pr_auc.png": "Tag-wise PR-AUC of each source-targeted model minus the baseline "
    "(MTAT test clips, mean over runs)",
    "variance.png": "Where one run's score variance comes from (primary metric): training "
    "randomness, probe noise and test-set sampling",
    "pretraining.png": "Pre-training loss and contrastive accuracy, training batches and "
    "eval-mode validation, each divided by its chance level (ln M, 1/M)",
    "source_activity.png": "Share of the pre-training excerpts in which each separated source "
    "is active (not silent); red: above 95% or below 5%, where silence flags say little",
    "separation_quality.png": "Separation quality (SI-SDR) per source, measured on the "
    "synthetic corpus's validation clips, whose true stems are known; it says nothing direct "
    "about separation on real recordings",
}


# -- the report's figures ---------------------------------------------------------------


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", str(text))


def draw_figures(
    out_dir: Path, summary, run_scores, per_tag, extras, baseline, primary, baselines=(),
    chance=None,
) -> tuple[dict, dict]:  # fmt: skip
    """Every figure of the report into ``out_dir``: returns (name -> path of those drawn,
    name -> reason for those not drawn, from their :class:`FigureDataError`)."""
    drawn: dict[str, Path] = {}
    skipped: dict[str, str] = {}
    jobs = [
        (
            f"scores_{_safe_name(task)}.png",
            lambda path, task=task: scores_figure(
                summary, run_scores, task, path, baselines, chance
            ),
        )
        for task in sorted(summary["task"].unique())
    ]
    extras = extras or {}
    jobs += [
        ("variance.png", lambda path: variance_figure(summary, primary, path)),
        (
            "tagwise_pr_auc.png",
            lambda path: tagwise_figure(per_tag, path, baseline=baseline),
        ),
        (
            "pretraining.png",
            lambda path: pretraining_figure(extras.get("pretrain_curves"), path),
        ),
        (
            "source_activity.png",
            lambda path: source_activity_figure(extras.get("source_activity"), path),
        ),
        (
            "separation_quality.png",
            lambda path: separation_quality_figure(extras.get("separation_quality"), path),
        ),
    ]
    for name, draw in jobs:
        try:
            drawn[name] = draw(out_dir / name)
        except FigureDataError as error:
            skipped[name] = str(error)
    return drawn, skipped
