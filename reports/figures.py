"""Report figures: pure functions from DataFrames to PNG files.

Figures are drawn on ``matplotlib.figure.Figure`` objects with the Agg canvas, never through
``pyplot``, so no global backend or figure state is touched and nothing needs a display.
Each function validates its input and raises :class:`FigureDataError` (a ``ValueError``)
saying what is missing; the leaderboard catches it and lists the figure as not drawn, with
that reason.

Input DataFrames (column names are the contract):

* scores: ``method, task, seed, metric, value``; summary: ``method, task, metric, mean,
  ci_low, ci_high`` (see :mod:`reports.compare`).
* per_tag: ``method, task, seed, tag, roc_auc, pr_auc``.
* loss_curves: ``method, seed, step, loss``.
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
    "loss_curves_figure",
    "png_data_uri",
    "scores_figure",
    "separation_quality_figure",
    "source_activity_figure",
    "tagwise_figure",
]

# The paper's tag-wise figure: each source-targeted model against COLA.
SOURCE_MODELS: tuple[str, ...] = ("msa_bass", "msa_drums", "msa_vocals", "msa_other")

_DPI = 110
ACTIVITY_BOUNDS = (0.05, 0.95)  # source-activity shares outside these are flagged


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
    scores: pd.DataFrame,
    task: str,
    path: Path,
    baseline: str | None = None,
    chance: dict | None = None,
) -> Path:
    """Per-task scores: one panel per metric, seed mean with its 95% t-interval, seeds as dots.

    Methods are ordered by their mean on each panel; the baseline's mean is a dashed line, the
    chance level (``chance``: (task, metric) -> value) a red dotted one.
    Raises :class:`FigureDataError` when the task has no rows.
    """
    _require(summary, ["method", "task", "metric", "mean", "ci_low", "ci_high"], "summary")
    _require(scores, ["method", "task", "seed", "metric", "value"], "scores")
    rows = summary[summary["task"] == task]
    if rows.empty:
        raise FigureDataError(f"no scores for task {task!r}")
    metrics = list(dict.fromkeys(rows["metric"]))
    figure = Figure(figsize=(4.5 * len(metrics), 0.45 * rows["method"].nunique() + 1.6))
    for i, metric in enumerate(metrics):
        axes = figure.add_subplot(1, len(metrics), i + 1)
        part = rows[rows["metric"] == metric].sort_values("mean")
        y = np.arange(len(part))
        # A single seed has no interval: plot the point without an error bar.
        low = np.nan_to_num(part["mean"] - part["ci_low"])
        high = np.nan_to_num(part["ci_high"] - part["mean"])
        axes.errorbar(part["mean"], y, xerr=[low, high], fmt="o", color="C0", capsize=3)
        seeds = scores[(scores["task"] == task) & (scores["metric"] == metric)]
        for j, method in enumerate(part["method"]):
            values = seeds.loc[seeds["method"] == method, "value"]
            axes.plot(values, np.full(len(values), j + 0.18), ".", color="0.5", markersize=4)
        if baseline is not None and baseline in set(part["method"]):
            base = part.loc[part["method"] == baseline, "mean"].iloc[0]
            axes.axvline(base, color="0.4", linestyle="--", linewidth=0.8, label=baseline)
        level = (chance or {}).get((task, metric))
        if level is not None and np.isfinite(level):
            axes.axvline(level, color="C3", linestyle=":", linewidth=1.2, label="chance")
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize=7, loc="best")
        axes.set_yticks(y, part["method"])
        axes.set_xlabel(metric)
        axes.set_title(f"{task}: {metric}")
        axes.grid(axis="x", alpha=0.3)
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

    Each model's per-tag value is averaged over its seeds, then the baseline's seed average is
    subtracted. Tags keep the order of their first appearance in ``per_tag`` (the harness
    writes them in the pinned MTAT order). Models absent from the data are left out.
    Raises :class:`FigureDataError` when the task, the baseline, or every model is missing.
    """
    _require(per_tag, ["method", "task", "seed", "tag", metric], "per-tag")
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
    figure.suptitle(f"{task}: tag-wise {metric} relative to {baseline} (mean over seeds)")
    return _save(figure, path)


def loss_curves_figure(loss_curves: pd.DataFrame | None, path: Path) -> Path:
    """Pre-training loss against step: per method the mean over seeds and the min-max band.

    Raises :class:`FigureDataError` when there are no rows.
    """
    _require(loss_curves, ["method", "seed", "step", "loss"], "loss-curve")
    figure = Figure(figsize=(7.0, 4.0))
    axes = figure.add_subplot(1, 1, 1)
    for i, (method, part) in enumerate(loss_curves.groupby("method", sort=True)):
        by_step = part.groupby("step")["loss"].agg(["mean", "min", "max"])
        axes.plot(by_step.index, by_step["mean"], color=f"C{i % 10}", label=str(method))
        axes.fill_between(
            by_step.index, by_step["min"], by_step["max"], color=f"C{i % 10}", alpha=0.15
        )
    axes.set_xlabel("step")
    axes.set_ylabel("contrastive loss")
    axes.set_title("Pre-training loss (mean over seeds, band: min to max)")
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
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
    "(MTAT test clips, mean over seeds)",
    "loss_curves.png": "Pre-training contrastive loss (training batches)",
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
    out_dir: Path, summary, scores, per_tag, extras, baseline, chance=None
) -> tuple[dict, dict]:
    """Every figure of the report into ``out_dir``: returns (name -> path of those drawn,
    name -> reason for those not drawn, from their :class:`FigureDataError`)."""
    drawn: dict[str, Path] = {}
    skipped: dict[str, str] = {}
    jobs = [
        (
            f"scores_{_safe_name(task)}.png",
            lambda path, task=task: scores_figure(summary, scores, task, path, baseline, chance),
        )
        for task in sorted(summary["task"].unique())
    ]
    extras = extras or {}
    jobs += [
        (
            "tagwise_pr_auc.png",
            lambda path: tagwise_figure(per_tag, path, baseline=baseline),
        ),
        (
            "loss_curves.png",
            lambda path: loss_curves_figure(extras.get("loss_curves"), path),
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
