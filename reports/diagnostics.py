"""Is anything being measured? Pre-training diagnostics and embedding health, against chance.

A leaderboard of encoders that learned nothing still has numbers in every cell. These sections
put each encoder's evidence of learning next to its chance level before any score is read:

* pre-training: the last training loss and contrastive accuracy, and the final eval-mode
  validation (the mode the probes embed in) with its chance levels ``ln M`` and ``1 / M``
  (``M`` candidates per anchor), and the verdict of the pre-training stage (``collapsed``:
  eval-mode validation at chance);
* embeddings: per corpus, how much the clip embeddings differ across clips
  (:mod:`benchmark.evaluation.health`); the probe stage refuses collapsed ones.

Inputs are the DataFrames of ``benchmark.pipeline.tracking.collect``: ``pretrain_curves``
(method, seed, step, metric, value), ``pretrain_runs`` (method, seed, trained, collapsed),
``embedding_health`` (method, seed, corpus, relative_spread, median_sd, varying_dims,
effective_rank, collapsed). Pure: DataFrames in, document blocks out.
"""

from __future__ import annotations

import math

import pandas as pd

__all__ = ["collapsed_methods", "embedding_blocks", "pretraining_blocks", "pretraining_table"]


def _last(curves: pd.DataFrame, method: str, seed: int, metric: str) -> float:
    rows = curves[(curves["method"] == method) & (curves["seed"] == seed)]
    rows = rows[rows["metric"] == metric].sort_values("step")
    return float(rows["value"].iloc[-1]) if len(rows) else math.nan


def pretraining_table(curves: pd.DataFrame | None, runs: pd.DataFrame | None) -> pd.DataFrame:
    """One row per pre-training run: final training and eval-mode validation numbers with
    their chance levels, accuracy as a multiple of chance, and the verdict.

    Columns: method, seed, train_loss, train_chance_loss, train_accuracy, val_loss,
    val_chance_loss, val_accuracy, val_chance_accuracy, val_accuracy_x_chance,
    val_loss_running_stats, verdict ("learned", "collapsed", "no pre-training",
    "no validation").
    """
    columns = [
        "method", "seed", "train_loss", "train_chance_loss", "train_accuracy", "val_loss",
        "val_chance_loss", "val_accuracy", "val_chance_accuracy", "val_accuracy_x_chance",
        "val_loss_running_stats", "verdict",
    ]  # fmt: skip
    if runs is None or runs.empty:
        return pd.DataFrame(columns=columns)
    curves = curves if curves is not None else pd.DataFrame(columns=["method", "seed", "step"])
    rows = []
    for run in runs.sort_values(["method", "seed"]).itertuples():
        if "metric" in curves:
            values = {
                name: _last(curves, run.method, run.seed, metric)
                for name, metric in (
                    ("train_loss", "loss"),
                    ("train_chance_loss", "chance_loss"),
                    ("train_accuracy", "contrastive_accuracy"),
                    ("val_loss", "val_loss"),
                    ("val_chance_loss", "val_chance_loss"),
                    ("val_accuracy", "val_contrastive_accuracy"),
                    ("val_chance_accuracy", "val_chance_accuracy"),
                    ("val_loss_running_stats", "val_loss_running_stats"),
                )
            }
        else:
            values = {}
        if not run.trained:
            verdict = "no pre-training"
        elif run.collapsed is None or pd.isna(run.collapsed):
            verdict = "no validation"
        else:
            verdict = "collapsed" if run.collapsed else "learned"
        chance = values.get("val_chance_accuracy", math.nan)
        ratio = values.get("val_accuracy", math.nan) / chance if chance else math.nan
        rows.append(
            {"method": run.method, "seed": run.seed, **values, "val_accuracy_x_chance": ratio,
             "verdict": verdict}
        )  # fmt: skip
    return pd.DataFrame(rows).reindex(columns=columns)


def collapsed_methods(runs: pd.DataFrame | None) -> set[str]:
    """Methods with at least one collapsed pre-training run."""
    if runs is None or runs.empty:
        return set()
    flagged = runs[runs["collapsed"].fillna(False).astype(bool)]
    return set(flagged["method"])


def _f(value, digits: int = 3) -> str:
    return "–" if value is None or not math.isfinite(float(value)) else f"{value:.{digits}f}"


def pretraining_blocks(curves: pd.DataFrame | None, runs: pd.DataFrame | None) -> list[tuple]:
    """The "Pre-training diagnostics" section: text, table, and what to do with a collapse."""
    table = pretraining_table(curves, runs)
    blocks: list[tuple] = [("h", 2, "Pre-training diagnostics")]
    if table.empty:
        return blocks + [("p", "No pre-training run was recorded.")]
    blocks.append(
        (
            "p",
            "Each pre-training run's last training loss and contrastive accuracy (train "
            "mode, one batch), and its final eval-mode validation on fixed batches of the "
            "validation split, in the mode the probes embed in (batch-norm statistics "
            "re-estimated, precise BN). Chance: loss ln M and accuracy 1/M for M candidates "
            "per anchor (M = batch size; fewer with the centroid loss when positives are "
            "silent). A run is collapsed when its eval-mode validation loss is within 2% of "
            "chance or above it; 'val loss, running BN' is the same validation with the "
            "running batch-norm statistics, what the encoder would have been without precise "
            "BN. Figure pretraining.png draws the curves, as multiples of chance.",
        )
    )
    shown = pd.DataFrame(
        {
            "method": table["method"],
            "seed": table["seed"],
            "train loss (chance)": [
                f"{_f(a)} ({_f(b)})"
                for a, b in zip(table["train_loss"], table["train_chance_loss"], strict=True)
            ],
            "train acc.": [_f(v) for v in table["train_accuracy"]],
            "eval-mode val loss (chance)": [
                f"{_f(a)} ({_f(b)})"
                for a, b in zip(table["val_loss"], table["val_chance_loss"], strict=True)
            ],
            "eval-mode val acc. (chance)": [
                f"{_f(a)} ({_f(b)})"
                for a, b in zip(table["val_accuracy"], table["val_chance_accuracy"], strict=True)
            ],
            "× chance": [_f(v, 1) for v in table["val_accuracy_x_chance"]],
            "val loss, running BN": [_f(v) for v in table["val_loss_running_stats"]],
            "verdict": table["verdict"],
        }
    )
    blocks.append(("table", shown))
    bad = table[table["verdict"] == "collapsed"]
    if len(bad):
        names = ", ".join(f"{m} s{s}" for m, s in zip(bad["method"], bad["seed"], strict=True))
        blocks.append(
            (
                "p",
                f"Collapsed: {names}. Their scores below are not measurements of the method; "
                "probes on embeddings without spread are refused (see Embedding health).",
            )
        )
    return blocks


def embedding_blocks(health: pd.DataFrame | None) -> list[tuple]:
    """The "Embedding health" section: per method and corpus, over pre-training seeds."""
    blocks: list[tuple] = [("h", 2, "Embedding health")]
    if health is None or health.empty:
        return blocks + [("p", "No embedding was recorded.")]
    blocks.append(
        (
            "p",
            "How much each encoder's clip embeddings (window embeddings averaged per clip, "
            "every clip of the corpus) differ across clips, before caching: relative spread "
            "= RMS across-clip SD / RMS value (0: every clip the same); median per-dimension "
            "SD across clips; share of dimensions that vary; effective rank of the centred "
            "clip matrix (Roy & Vetterli 2007). Worst seed shown. An embedding with relative "
            "spread below 1e-3 is collapsed and no probe is trained on it.",
        )
    )
    rows = []
    for (method, corpus), part in health.groupby(["method", "corpus"], sort=True):
        worst = part.loc[part["relative_spread"].idxmin()]
        rows.append(
            {
                "method": method,
                "corpus": corpus,
                "seeds": len(part),
                "relative spread": f"{worst['relative_spread']:.3g}",
                "median SD": f"{worst['median_sd']:.3g}",
                "varying dims": f"{100 * worst['varying_dims']:.0f}%",
                "effective rank": f"{worst['effective_rank']:.1f}",
                "verdict": "collapsed" if part["collapsed"].astype(bool).any() else "healthy",
            }
        )
    return blocks + [("table", pd.DataFrame(rows))]
