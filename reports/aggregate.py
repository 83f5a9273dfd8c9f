"""Cross-task aggregates with uncertainty over pre-training runs (rliable's estimators).

Per method, a ``runs x tasks`` matrix of normalised primary scores (chance -> 0, perfect -> 1:
``(score - chance) / (1 - chance)``, chance = 0.5 for ROC-AUC, the tags' mean prevalence for
PR-AUC, 1 / number of classes for accuracy), then, as Agarwal et al. (NeurIPS 2021) recommend
for few runs: the interquartile mean (IQM) and the mean of the normalised scores, and the
probability of improvement over the baseline (P(X > Y), Mann-Whitney, averaged over tasks),
each with a 95% percentile interval from a stratified bootstrap over runs (runs resampled with
replacement within each task).

The estimators are rliable's own (``rliable.metrics``). Its bootstrap (``rliable.library``) is
not used: ``StratifiedBootstrap.update_indices`` draws from NumPy's global generator
(``np.random.choice``) whatever ``random_state`` says, so it is reproducible only after seeding
process-wide state, which library code here never does; the same stratified resampling is
done below with a seeded ``numpy.random.Generator``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from rliable import metrics as rly
from scipy import stats

__all__ = ["aggregates", "chance_level", "normalise", "probability_of_improvement", "task_matrices"]


def chance_level(metric: str, targets: np.ndarray) -> float:
    """The score of a random guess: 0.5 (ROC-AUC), mean prevalence of the scorable tags
    (PR-AUC), 1 / number of classes (accuracy, balanced accuracy; ``targets`` ``(n, C)``
    one-hot-width known from the predictions, or ``(n,)`` with the vocabulary size unknown:
    the number of distinct classes)."""
    targets = np.asarray(targets)
    if metric == "roc_auc":
        return 0.5
    if metric == "pr_auc":
        prevalence = targets.mean(axis=0)
        kept = (prevalence > 0) & (prevalence < 1)
        return float(prevalence[kept].mean())
    if metric in ("accuracy", "balanced_accuracy"):
        if targets.ndim == 2:  # (n, C): the width is the number of classes
            return 1.0 / targets.shape[1]
        return 1.0 / len(np.unique(targets))
    raise ValueError(f"no chance level for metric {metric!r}")


def normalise(value, chance: float):
    """``(value - chance) / (1 - chance)``: chance -> 0, perfect -> 1."""
    return (np.asarray(value, dtype=float) - chance) / (1.0 - chance)


def _stratified(rng, matrix: np.ndarray, reps: int) -> np.ndarray:
    """``reps`` resamples of a ``(runs, tasks)`` matrix, runs drawn within each task."""
    runs, tasks = matrix.shape
    rows = rng.integers(0, runs, size=(reps, runs, tasks))
    return np.take_along_axis(matrix[None].repeat(reps, 0), rows, axis=1)


def probability_of_improvement(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """rliable's ``probability_of_improvement`` vectorised over leading axes: ``x (..., Rx,
    T)``, ``y (..., Ry, T)`` -> ``(...)``, P(X > Y) + P(X = Y) / 2 per task, averaged over
    tasks (the Mann-Whitney U statistic over ``Rx * Ry``)."""
    x, y = np.asarray(x, float)[..., :, None, :], np.asarray(y, float)[..., None, :, :]
    wins = (x > y).mean(axis=(-3, -2)) + 0.5 * (x == y).mean(axis=(-3, -2))
    return wins.mean(axis=-1)


def aggregates(
    matrices: Mapping[str, np.ndarray],
    baseline: str,
    *,
    reps: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """IQM, mean and probability of improvement over ``baseline`` with 95% intervals.

    ``matrices``: method -> ``(runs, tasks)`` normalised scores (same task columns; methods
    with a missing task are left out by the caller). Returns one row per method: ``iqm``,
    ``iqm_low``, ``iqm_high``, ``mean``, ``mean_low``, ``mean_high``, ``poi``, ``poi_low``,
    ``poi_high`` (nan for the baseline itself), ``runs``.
    """
    rng = np.random.default_rng(seed)
    base = matrices.get(baseline)
    base_boot = None
    if base is not None:
        base_boot = _stratified(np.random.default_rng([seed, 1]), base, reps)
    rows = []
    for method in sorted(matrices):
        matrix = matrices[method]
        boot = _stratified(rng, matrix, reps)
        # The same estimators as rliable's, vectorised over resamples (tested equal).
        iqm = stats.trim_mean(boot.reshape(reps, -1), 0.25, axis=1)
        mean = boot.mean(axis=(1, 2))
        row = {
            "method": method,
            "runs": matrix.shape[0],
            "iqm": float(rly.aggregate_iqm(matrix)),
            "iqm_low": float(np.percentile(iqm, 2.5)),
            "iqm_high": float(np.percentile(iqm, 97.5)),
            "mean": float(rly.aggregate_mean(matrix)),
            "mean_low": float(np.percentile(mean, 2.5)),
            "mean_high": float(np.percentile(mean, 97.5)),
        }
        if base is not None and method != baseline:
            poi = probability_of_improvement(boot, base_boot)
            row |= {
                "poi": float(rly.probability_of_improvement(matrix, base)),
                "poi_low": float(np.percentile(poi, 2.5)),
                "poi_high": float(np.percentile(poi, 97.5)),
            }
        rows.append(row)
    return pd.DataFrame(rows).reindex(
        columns=[
            "method",
            "runs",
            "iqm",
            "iqm_low",
            "iqm_high",
            "mean",
            "mean_low",
            "mean_high",
            "poi",
            "poi_low",
            "poi_high",
        ]  # fmt: skip
    )


def task_matrices(
    summary_runs: Mapping[str, Mapping[str, np.ndarray]], tasks: Sequence[str]
) -> dict[str, np.ndarray]:
    """``{method: (runs, tasks)}`` from ``{method: {task: run scores (R,)}}``, for the
    methods with every task and the same number of runs on each."""
    out = {}
    for method, by_task in summary_runs.items():
        if not all(t in by_task for t in tasks):
            continue
        lengths = {len(by_task[t]) for t in tasks}
        if len(lengths) != 1:
            continue
        out[method] = np.stack([np.asarray(by_task[t], dtype=float) for t in tasks], axis=1)
    return out
