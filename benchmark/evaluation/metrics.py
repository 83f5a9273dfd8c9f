"""Clip-level scores of probe predictions: the one definition of every metric, for the scores
a probe logs and for the report's recomputation on resampled test clips.

Multi-label tagging (MTAT, MTAT*) is scored by macro ROC-AUC and macro PR-AUC (average
precision) over the tags; multi-class tasks (NSynth, FMA) by accuracy, which is what the paper
calls "WA" (REFERENCE.md section 5), with balanced accuracy reported beside it.

One rule for tags (:func:`scorable_tags`): a tag enters the macro scores only when its targets
hold both a positive and a negative clip, for ROC-AUC and PR-AUC alike. Without a positive,
scikit-learn 1.9 returns nan for ROC-AUC (with a warning) and 0.0 for average precision; without
a negative, ROC-AUC is undefined and average precision is 1.0 whatever the scores. Any of these
values would silently corrupt a macro average, so such tags are left out (REFERENCE.md
section 8, last bullet); a bootstrap resample of a rare or a common tag often is such a tag.

Two ways in, one definition:

* :func:`score` (:func:`score_multilabel`, :func:`score_multiclass`): what a probe logs.
  Validated inputs, per-tag / per-class details, scikit-learn's values; raises when no tag is
  scorable. :func:`primary_score_fn` is the model-selection score (early stopping, tuning).
* :data:`ITEM_METRICS` (:func:`macro_roc_auc`, :func:`macro_pr_auc`, :func:`accuracy`,
  :func:`balanced_accuracy`): the same scores as bare functions of ``(targets, scores)`` for
  resampling (``reports.stats``): nan instead of an error when a resample leaves no scorable
  tag, and the multi-label ones score a stack of runs ``(runs, n, C)`` in one call. Their
  ROC-AUC uses the Mann-Whitney rank identity (:func:`roc_auc_columns`, one ``rankdata`` call
  per resample), equal to scikit-learn's to 1e-12 (tested); the logged value stays
  scikit-learn's, so logged scores and early stopping are those of earlier runs to the bit.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    recall_score,
    roc_auc_score,
)

# The metric that model selection (early stopping, tuning) maximises, per task kind (paper).
PRIMARY = {"multilabel": "roc_auc", "multiclass": "accuracy"}


def scorable_tags(targets) -> np.ndarray:
    """Bool ``(C,)``: the tags of ``(n, C)`` multi-hot ``targets`` that have at least one
    positive and one negative clip, the only ones a macro score averages over."""
    positives = np.asarray(targets).sum(axis=0)
    return (positives > 0) & (positives < np.shape(targets)[0])


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
    kept = scorable_tags(targets)
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


def _logged_macro_roc_auc(targets, scores, tags: Sequence[str]) -> float:
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
            return _logged_macro_roc_auc(targets, scores, names)
        if not multilabel and metric == "accuracy":
            return score_multiclass(targets, scores, names)["accuracy"]
        value = score(targets, scores, names, multilabel).get(metric)
        if value is None:
            raise ValueError(f"unknown primary metric {metric!r} for this label type")
        return float(value)

    return score_fn


# -- item level: bare functions of (targets, scores) for resampling ----------------------


def _multilabel(targets, scores) -> tuple[np.ndarray, np.ndarray]:
    targets = np.asarray(targets)
    scores = np.asarray(scores, dtype=float)
    if targets.ndim != 2 or scores.shape[-2:] != targets.shape or scores.ndim not in (2, 3):
        raise ValueError(
            f"multi-label metrics need targets (n, C) and scores (n, C) or (runs, n, C), "
            f"got {targets.shape} and {scores.shape}"
        )
    return targets, scores


def _macro_over_runs(score_fn, targets, scores, keep):
    """Per-tag ``score_fn`` averaged over the kept tags, for one run or a stack of runs.

    A stack of runs (same clips, hence same targets) is flattened into one multi-label call of
    runs x tags columns: scikit-learn's cost is mostly per call, and the bootstrap calls this
    thousands of times. Macro averaging is the plain mean over columns, as in scikit-learn.
    """
    if not keep.any():
        return math.nan if scores.ndim == 2 else np.full(scores.shape[0], np.nan)
    if scores.ndim == 2:
        return float(score_fn(targets[:, keep], scores[:, keep], average="macro"))
    num_runs, n_items, _ = scores.shape
    kept = scores[:, :, keep].transpose(1, 0, 2).reshape(n_items, -1)
    per_tag = score_fn(np.tile(targets[:, keep], (1, num_runs)), kept, average=None)
    return np.asarray(per_tag, dtype=float).reshape(num_runs, -1).mean(axis=1)


def roc_auc_columns(targets, scores, average=None):
    """ROC-AUC of every column at once through the Mann-Whitney rank identity.

    AUC = (sum of the positives' ranks - P(P+1)/2) / (P N), ties at mid-rank: the value
    scikit-learn's ``roc_auc_score`` gives, at one ``scipy.stats.rankdata`` call per resample
    instead of one scikit-learn call per column (the bootstrap's hot path; tested against
    scikit-learn). ``targets`` / ``scores``: ``(n, C)``; every column must hold both classes.
    Returns ``(C,)``, or their mean with ``average="macro"``.
    """
    targets = np.asarray(targets, dtype=float)
    ranks = stats.rankdata(np.asarray(scores, dtype=float), axis=0)
    pos = targets.sum(axis=0)
    neg = targets.shape[0] - pos
    auc = ((ranks * targets).sum(axis=0) - pos * (pos + 1) / 2) / (pos * neg)
    return float(auc.mean()) if average == "macro" else auc


def macro_roc_auc(targets, scores):
    """Macro ROC-AUC over the :func:`scorable_tags`; nan when none is left.

    Shapes: targets (n, C) multi-hot; scores (n, C) -> float, or (runs, n, C) (several runs on
    the same clips) -> ndarray (runs,). Raises ``ValueError`` on other shapes.
    """
    targets, scores = _multilabel(targets, scores)
    return _macro_over_runs(roc_auc_columns, targets, scores, scorable_tags(targets))


def macro_pr_auc(targets, scores):
    """Macro PR-AUC (scikit-learn average precision) over the :func:`scorable_tags`; nan when
    none is left. Shapes as in :func:`macro_roc_auc`. Raises ``ValueError`` on other shapes.
    """
    targets, scores = _multilabel(targets, scores)
    return _macro_over_runs(average_precision_score, targets, scores, scorable_tags(targets))


def _labels(scores_or_labels) -> np.ndarray:
    array = np.asarray(scores_or_labels)
    return array.argmax(axis=1) if array.ndim == 2 else array


def accuracy(targets, scores_or_labels) -> float:
    """Plain accuracy ("WA" in the paper); scores (n, C) are turned into labels by argmax."""
    return float(accuracy_score(np.asarray(targets), _labels(scores_or_labels)))


def balanced_accuracy(targets, scores_or_labels) -> float:
    """Balanced accuracy (mean per-class recall over the classes present in ``targets``)."""
    with warnings.catch_warnings():
        # A resample may predict a class absent from its targets; sklearn warns, the value is fine.
        warnings.simplefilter("ignore", UserWarning)
        return float(balanced_accuracy_score(np.asarray(targets), _labels(scores_or_labels)))


# Metric name (as logged by the probes) -> item-level metric function.
ITEM_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "roc_auc": macro_roc_auc,
    "pr_auc": macro_pr_auc,
    "accuracy": accuracy,
    "balanced_accuracy": balanced_accuracy,
}
# Metrics that accept a stack of runs (runs, n, C) and return one value per run.
RUN_STACKED = (macro_roc_auc, macro_pr_auc)
# Metrics whose mean over runs of equal length on the same targets equals the metric of the
# runs concatenated (accuracy: correct counts add up; balanced accuracy: each class's recall
# has the same denominator in every run), so a method's seed mean costs one call.
SEED_POOLABLE = (accuracy, balanced_accuracy)
