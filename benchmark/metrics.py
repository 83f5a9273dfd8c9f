"""Clip-level scores of probe predictions, computed with scikit-learn (no hand-written metric).

Multi-label tagging (MTAT, MTAT*) is scored by macro ROC-AUC and macro PR-AUC (average
precision) over the tags; multi-class tasks (NSynth, FMA) by accuracy, which is what the paper
calls "WA" (REFERENCE.md section 5), with balanced accuracy reported beside it.

A tag whose targets hold no positive (or no negative) has no defined ROC-AUC: scikit-learn 1.9
returns nan with a warning for it, and ``average_precision_score`` returns 0.0 for a tag without
positives. Either value would silently corrupt a macro average, so such tags are left out of the
macro scores and listed under ``excluded_tags`` (REFERENCE.md section 8, last bullet).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    recall_score,
    roc_auc_score,
)

# The metric that model selection (early stopping, tuning) maximises, per task kind (paper).
PRIMARY = {"multilabel": "roc_auc", "multiclass": "accuracy"}


def _as_scores(scores, num_rows: int, num_columns: int) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (num_rows, num_columns):
        raise ValueError(f"scores must have shape ({num_rows}, {num_columns}), got {scores.shape}")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain nan or inf")
    return scores


def _multilabel_inputs(targets, scores, tags: list[str]):
    """Checked ``(n, C)`` int targets, float64 scores, and the mask of scorable tags."""
    targets = np.asarray(targets)
    if targets.ndim != 2 or targets.shape[1] != len(tags):
        raise ValueError(f"targets must have shape (n, {len(tags)}), got {targets.shape}")
    if not np.isin(targets, (0, 1)).all():
        raise ValueError("multi-label targets must be 0/1")
    targets = targets.astype(np.int64)
    scores = _as_scores(scores, *targets.shape)
    positives = targets.sum(axis=0)
    kept = (positives > 0) & (positives < targets.shape[0])
    if not kept.any():
        raise ValueError("no tag has both a positive and a negative clip: no macro score")
    return targets[:, kept], scores[:, kept], kept


def _per_column(metric, targets: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """``metric`` of every column, in one scikit-learn call (much faster than a loop)."""
    if targets.shape[1] == 1:
        # A single column is "binary" to scikit-learn, not multilabel-indicator.
        return np.array([metric(targets[:, 0], scores[:, 0])])
    return np.asarray(metric(targets, scores, average=None), dtype=np.float64)


def score_multilabel(targets, scores, tags: Sequence[str]) -> dict:
    """Macro ROC-AUC and PR-AUC over the tags that have both positives and negatives.

    Args:
        targets: ``(n, C)`` multi-hot 0/1 ground truth (any numeric or bool dtype).
        scores: ``(n, C)`` finite scores, higher = more likely (e.g. sigmoid probabilities).
        tags: the ``C`` tag names, in column order.

    Returns:
        ``{"roc_auc": float, "pr_auc": float, "per_tag": {tag: {"roc_auc", "pr_auc"}},
        "excluded_tags": [tag, ...]}``. ``roc_auc`` / ``pr_auc`` are the unweighted means over the
        kept tags (those with at least one positive and one negative); ``per_tag`` holds the kept
        tags only, in column order; ``excluded_tags`` lists the others, in column order.

    Raises:
        ValueError: on a shape mismatch, targets other than 0/1, non-finite scores, or when no
            tag has both a positive and a negative (no macro score is defined).
    """
    tags = list(tags)
    targets, scores, kept = _multilabel_inputs(targets, scores, tags)
    roc = _per_column(roc_auc_score, targets, scores)
    pr = _per_column(average_precision_score, targets, scores)
    kept_tags = [tags[column] for column in np.flatnonzero(kept)]
    return {
        "roc_auc": float(roc.mean()),
        "pr_auc": float(pr.mean()),
        "per_tag": {
            tag: {"roc_auc": float(r), "pr_auc": float(p)}
            for tag, r, p in zip(kept_tags, roc, pr, strict=True)
        },
        "excluded_tags": [tags[column] for column in np.flatnonzero(~kept)],
    }


def macro_roc_auc(targets, scores, tags: Sequence[str]) -> float:
    """``score_multilabel(...)["roc_auc"]`` without the PR-AUC work (early stopping, tuning)."""
    targets, scores, _ = _multilabel_inputs(targets, scores, list(tags))
    return float(_per_column(roc_auc_score, targets, scores).mean())


def score_multiclass(targets, scores, classes: Sequence[str]) -> dict:
    """Accuracy (the paper's "WA"), balanced accuracy and per-class recall of argmax predictions.

    Args:
        targets: ``(n,)`` integer class indices in ``[0, C)``.
        scores: ``(n, C)`` finite scores (e.g. softmax probabilities); the prediction is the
            argmax (the first class on ties).
        classes: the ``C`` class names, in column order.

    Returns:
        ``{"accuracy", "balanced_accuracy", "per_class_recall": {class: recall},
        "absent_classes": [class, ...]}``. Balanced accuracy is scikit-learn's: the mean recall
        over the classes present in ``targets``. A class absent from the targets (NSynth's
        synth_lead in its test split) has no recall; it is left out of the mean and of
        ``per_class_recall`` and listed in ``absent_classes``. Predictions of such a class still
        count as errors for the true class, so they lower both scores.

    Raises:
        ValueError: on a shape mismatch, targets outside ``[0, C)`` or non-finite scores.
    """
    classes = list(classes)
    targets = np.asarray(targets)
    if targets.ndim != 1:
        raise ValueError(f"targets must have shape (n,), got {targets.shape}")
    if not np.issubdtype(targets.dtype, np.integer):
        raise ValueError(f"multi-class targets must be integers, got dtype {targets.dtype}")
    if targets.size == 0:
        raise ValueError("no targets to score")
    if targets.min() < 0 or targets.max() >= len(classes):
        raise ValueError(f"targets must lie in [0, {len(classes)})")
    scores = _as_scores(scores, targets.shape[0], len(classes))
    predictions = scores.argmax(axis=1)

    present = np.bincount(targets, minlength=len(classes)) > 0
    recalls = recall_score(
        targets,
        predictions,
        labels=np.arange(len(classes)),
        average=None,
        zero_division=np.nan,
    )
    with warnings.catch_warnings():
        # Expected whenever a class absent from the targets is predicted; the docstring says
        # how that case is scored.
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        balanced = balanced_accuracy_score(targets, predictions)
    return {
        "accuracy": float(accuracy_score(targets, predictions)),
        "balanced_accuracy": float(balanced),
        "per_class_recall": {classes[c]: float(recalls[c]) for c in np.flatnonzero(present)},
        "absent_classes": [classes[c] for c in np.flatnonzero(~present)],
    }


def score(targets, scores, names: Sequence[str], multilabel: bool) -> dict:
    """Dispatch to :func:`score_multilabel` or :func:`score_multiclass`."""
    if multilabel:
        return score_multilabel(targets, scores, names)
    return score_multiclass(targets, scores, names)


def primary_score_fn(
    names: Sequence[str], multilabel: bool, metric: str | None = None
) -> Callable[[np.ndarray, np.ndarray], float]:
    """The ``score_fn(targets, clip_scores) -> float`` that probes maximise for a task.

    ``metric`` is the task's primary metric (default: :data:`PRIMARY` of its label type,
    macro ROC-AUC or accuracy); higher is better. Any metric :func:`score` reports works.
    """
    names = list(names)
    metric = metric or PRIMARY["multilabel" if multilabel else "multiclass"]
    # Equals score(...)[metric] (tested), but skips the PR-AUC work for the usual primaries:
    # this runs after every probe epoch.

    def score_fn(targets, scores) -> float:
        if multilabel and metric == "roc_auc":
            return macro_roc_auc(targets, scores, names)
        if not multilabel and metric == "accuracy":
            return score_multiclass(targets, scores, names)["accuracy"]
        value = score(targets, scores, names, multilabel).get(metric)
        if value is None:
            raise ValueError(f"unknown primary metric {metric!r} for this label type")
        return float(value)

    return score_fn
