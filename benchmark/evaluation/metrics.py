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

One definition, used three ways: the weighted metrics of :class:`RankedColumns` (ROC-AUC,
average precision) and :class:`ItemScores` (all four, vectorised over runs and resamples)
equal scikit-learn's with ``sample_weight`` (tested). With unit weights they are

* :func:`score` (:func:`score_multilabel`, :func:`score_multiclass`): what a probe logs, with
  validated inputs and per-tag / per-class details (raises when no tag is scorable);
* :func:`primary_score_fn`: the model-selection score (early stopping, tuning);

and with bootstrap weights (how often each test item, or its cluster, was drawn)
:meth:`ItemScores.resample` is the report's resampling (``reports.variance``): a resample
that leaves a tag without weighted positives or negatives drops that tag, for every run alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

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
    columns = RankedColumns(targets, scores).scores(np.ones(len(targets)))
    roc, pr = columns["roc_auc"], columns["pr_auc"]
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
    """``score_multilabel(...)["roc_auc"]`` without the PR-AUC details (early stopping, tuning)."""
    targets, scores, _ = _multilabel_inputs(targets, scores, list(tags))
    return float(RankedColumns(targets, scores).scores(np.ones(len(targets)))["roc_auc"].mean())


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
    unit = ItemScores(targets, scores[None]).resample(np.ones(len(targets)))
    correct = scores.argmax(axis=1) == targets
    present = np.bincount(targets, minlength=len(classes)) > 0
    return {
        "accuracy": float(unit["accuracy"][0, 0]),
        "balanced_accuracy": float(unit["balanced_accuracy"][0, 0]),
        "per_class_recall": {
            classes[c]: float(correct[targets == c].mean()) for c in np.flatnonzero(present)
        },
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


# -- item level: the same scores under resampling weights ---------------------------------
#
# A bootstrap resample of test items is a vector of weights (how often each item was drawn;
# clustered resampling gives every item of a cluster its cluster's count). Every metric below
# is the weighted version of the logged one, vectorised over runs and resamples, and equals
# scikit-learn's ``sample_weight`` result (tested); unit weights give the logged value.


def _tie_bounds(sorted_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(first, last)``: for each position of column-wise ascending ``(n, K)`` scores, the
    first and last position of its group of tied values."""
    n = sorted_scores.shape[0]
    rows = np.arange(n)[:, None]
    starts = np.ones(sorted_scores.shape, dtype=bool)
    starts[1:] = sorted_scores[1:] != sorted_scores[:-1]
    ends = np.ones(sorted_scores.shape, dtype=bool)
    ends[:-1] = starts[1:]
    first = np.maximum.accumulate(np.where(starts, rows, 0), axis=0)
    last = np.minimum.accumulate(np.where(ends, rows, n - 1)[::-1], axis=0)[::-1]
    return first, last


class RankedColumns:
    """Binary-scored columns prepared once for weighted ROC-AUC and average precision.

    ``targets`` ``(n, K)`` 0/1 and ``scores`` ``(n, K)``: ``K`` columns (tags x runs) over the
    same ``n`` items. Each column is sorted once; a resample then costs a few cumulative sums.

    Weighted ROC-AUC (Mann-Whitney, ties count one half)::

        AUC = (sum_pos w_i R_i - W_pos**2 / 2) / (W_pos W_neg),
        R_i = (weight of items scored below i) + (weight of i's tie group) / 2

    Weighted average precision (scikit-learn's step sum over distinct thresholds)::

        AP = sum_pos w_i TP(>= s_i) / W(>= s_i) / W_pos
    """

    def __init__(self, targets: np.ndarray, scores: np.ndarray):
        targets = np.asarray(targets, dtype=np.float64)
        scores = np.asarray(scores, dtype=np.float64)
        if targets.shape != scores.shape or targets.ndim != 2:
            raise ValueError(
                f"targets and scores must be (n, K) alike, got {targets.shape}, {scores.shape}"
            )
        self.order = np.argsort(scores, axis=0, kind="stable")
        self.sorted_targets = np.take_along_axis(targets, self.order, axis=0)
        self.first, self.last = _tie_bounds(np.take_along_axis(scores, self.order, axis=0))

    def scores(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        """``{"roc_auc", "pr_auc", "positives", "negatives"}``, each ``(K,)``, for item
        ``weights`` ``(n,)``; ROC-AUC and AP are nan for a column without weighted positives
        or negatives."""
        w = np.asarray(weights, dtype=np.float64)[self.order]
        wy = w * self.sorted_targets
        cum_w = np.cumsum(w, axis=0)
        cum_wy = np.cumsum(wy, axis=0)
        total, positives = cum_w[-1], cum_wy[-1]
        negatives = total - positives
        below_w = cum_w - w  # weight strictly before each position
        rank = 0.5 * (
            np.take_along_axis(below_w, self.first, axis=0)
            + np.take_along_axis(cum_w, self.last, axis=0)
        )
        with np.errstate(invalid="ignore", divide="ignore"):
            auc = ((wy * rank).sum(axis=0) - 0.5 * positives**2) / (positives * negatives)
            at_or_above_w = total - np.take_along_axis(below_w, self.first, axis=0)
            at_or_above_tp = positives - np.take_along_axis(cum_wy - wy, self.first, axis=0)
            precision = np.divide(
                at_or_above_tp, at_or_above_w, out=np.zeros_like(w), where=at_or_above_w > 0
            )
            ap = (wy * precision).sum(axis=0) / positives
        defined = (positives > 0) & (negatives > 0)
        return {
            "roc_auc": np.where(defined, auc, np.nan),
            "pr_auc": np.where(defined, ap, np.nan),
            "positives": positives,
            "negatives": negatives,
        }


class ItemScores:
    """Every run's metrics on weighted test items: the report's resampling hot path.

    Args:
        targets: ``(n, C)`` multi-hot (multi-label) or ``(n,)`` class indices (multi-class).
        scores: ``(R, n, C)`` predictions of ``R`` runs on the same ``n`` items.

    :meth:`resample` gives ``{metric: (B, R)}`` for weights ``(B, n)``; with unit weights the
    values are the logged ones (:func:`score`). Multi-label: macro ROC-AUC and PR-AUC over the
    tags scorable in that resample (weighted positives and negatives, :func:`scorable_tags`);
    multi-class: accuracy and balanced accuracy (mean weighted recall over the classes with
    weight), argmax predictions (first class on ties).

    Raises:
        ValueError: shapes that do not fit.
    """

    def __init__(self, targets, scores):
        targets = np.asarray(targets)
        scores = np.asarray(scores, dtype=np.float64)
        if scores.ndim != 3 or scores.shape[1] != targets.shape[0]:
            raise ValueError(
                f"scores must be (runs, n, C) over the {targets.shape[0]} items, got {scores.shape}"
            )
        self.multilabel = targets.ndim == 2
        self.num_runs, self.num_items, num_columns = scores.shape
        if self.multilabel:
            if targets.shape[1] != num_columns:
                raise ValueError(f"targets {targets.shape} do not match scores {scores.shape}")
            self.num_tags = num_columns
            columns = scores.transpose(1, 0, 2).reshape(self.num_items, -1)  # (n, R * C)
            self._ranked = RankedColumns(np.tile(targets, (1, self.num_runs)), columns)
        else:
            self._correct = (scores.argmax(axis=2) == targets[None, :]).astype(np.float64)
            classes = np.arange(num_columns)
            self._class_masks = (targets[None, :] == classes[:, None]).astype(np.float64)

    @property
    def metrics(self) -> tuple[str, ...]:
        return ("roc_auc", "pr_auc") if self.multilabel else ("accuracy", "balanced_accuracy")

    def resample(self, weights) -> dict[str, np.ndarray]:
        """``{metric: (B, R)}`` for item weights ``(B, n)`` (or ``(n,)``: ``B = 1``)."""
        weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
        if weights.shape[1] != self.num_items:
            raise ValueError(f"weights must be (B, {self.num_items}), got {weights.shape}")
        if not self.multilabel:
            total = weights.sum(axis=1, keepdims=True)
            accuracy = weights @ self._correct.T / total
            class_weight = weights @ self._class_masks.T  # (B, C)
            recall = np.einsum("bn,cn,rn->brc", weights, self._class_masks, self._correct)
            with np.errstate(invalid="ignore", divide="ignore"):
                recall = recall / class_weight[:, None, :]
            present = class_weight > 0
            balanced = np.nansum(np.where(present[:, None, :], recall, 0.0), axis=2) / present.sum(
                axis=1, keepdims=True
            )
            return {"accuracy": accuracy, "balanced_accuracy": balanced}
        out = {"roc_auc": np.empty((len(weights), self.num_runs)), "pr_auc": None}
        out["pr_auc"] = np.empty_like(out["roc_auc"])
        for b, w in enumerate(weights):
            columns = self._ranked.scores(w)
            for name in ("roc_auc", "pr_auc"):
                per_tag = columns[name].reshape(self.num_runs, self.num_tags)
                # the same tags for every run: their targets are the same
                kept = np.isfinite(per_tag[0])
                out[name][b] = per_tag[:, kept].mean(axis=1) if kept.any() else np.nan
        return out


# -- item level: each item's influence on a score ------------------------------------------
#
# The derivative of a weighted metric with respect to one item's weight, at unit weights:
# ``metric(1 + eps e_i) = metric(1) + eps psi_i + O(eps^2)``. For ROC-AUC these are DeLong's
# placement values ((V10_i - AUC) / P for a positive, (V01_i - AUC) / N for a negative); for
# accuracy ``(correct_i - acc) / n``. Summed per cluster of items, they give the variance a
# resampling of clusters would produce, to first order (the infinitesimal jackknife, Efron
# 1982; for clustered ROC data Obuchowski, Biometrics 1997), without resampling: the report's
# test-set components (``reports.variance``). Tested against finite differences of the
# weighted metrics above.


def _ranked_influence(targets: np.ndarray, scores: np.ndarray) -> dict[str, np.ndarray]:
    """Per-column ROC-AUC and AP with their item influences: ``{"roc_auc": (K,),
    "pr_auc": (K,), "roc_auc_psi": (n, K), "pr_auc_psi": (n, K)}`` (nan / 0 for a column
    without both classes)."""
    n = targets.shape[0]
    order = np.argsort(scores, axis=0, kind="stable")
    y = np.take_along_axis(targets, order, axis=0)
    first, last = _tie_bounds(np.take_along_axis(scores, order, axis=0))
    positives = y.sum(axis=0)
    negatives = n - positives
    defined = (positives > 0) & (negatives > 0)
    pos = np.where(defined, positives, 1.0)
    neg = np.where(defined, negatives, 1.0)
    cum_pos, cum_neg = np.cumsum(y, axis=0), np.cumsum(1 - y, axis=0)
    take = lambda a, idx: np.take_along_axis(a, idx, axis=0)  # noqa: E731
    # placements: negatives below (ties half) for positives; positives above for negatives
    neg_below = take(cum_neg - (1 - y), first) + 0.5 * (
        take(cum_neg, last) - take(cum_neg - (1 - y), first)
    )
    pos_above = (positives - take(cum_pos, last)) + 0.5 * (
        take(cum_pos, last) - take(cum_pos - y, first)
    )
    auc = (y * neg_below).sum(axis=0) / (pos * neg)
    v10, v01 = neg_below / neg, pos_above / pos
    roc_psi = np.where(y == 1, (v10 - auc) / pos, (v01 - auc) / neg)
    # average precision: precision of each tie group at its threshold (>= the group's score)
    at_or_above = n - first  # items scored at or above the group (ascending positions)
    tp_at_or_above = positives - take(cum_pos - y, first)
    precision = tp_at_or_above / at_or_above
    ap = (y * precision).sum(axis=0) / pos
    # d AP / d w_j = (1/P) [y_j (prec(g_j) - AP) + sum over groups g at or below j's group of
    #                 P_g (y_j - prec_g) / N(>= g)],  P_g = positives of group g
    is_last = np.zeros_like(y, dtype=bool)
    is_last[np.arange(n)[:, None] == last] = True
    group_pos = take(cum_pos, last) - take(cum_pos - y, first)  # positives of each position's group
    a = np.where(is_last, group_pos / at_or_above, 0.0)
    b = np.where(is_last, group_pos * precision / at_or_above, 0.0)
    cum_a, cum_b = take(np.cumsum(a, axis=0), last), take(np.cumsum(b, axis=0), last)
    ap_psi = (y * (precision - ap) + y * cum_a - cum_b) / pos
    # back to item order
    inverse = np.empty_like(order)
    np.put_along_axis(inverse, order, np.arange(n)[:, None], axis=0)
    return {
        "roc_auc": np.where(defined, auc, np.nan),
        "pr_auc": np.where(defined, ap, np.nan),
        "roc_auc_psi": np.where(defined, take(roc_psi, inverse), 0.0),
        "pr_auc_psi": np.where(defined, take(ap_psi, inverse), 0.0),
    }


def column_influence(targets, scores) -> dict[str, np.ndarray]:
    """Per-tag ROC-AUC and AP of multi-label predictions with each item's influence on them:
    ``{"roc_auc": (C,), "pr_auc": (C,), "roc_auc_psi": (n, C), "pr_auc_psi": (n, C)}``; a tag
    without both a positive and a negative clip gets nan and zero influences. Averages of
    these columns (e.g. over the tags of one source) have the averaged influences, which is
    what the source-specialisation test of the report resamples.

    Args:
        targets: ``(n, C)`` multi-hot 0/1.
        scores: ``(n, C)`` predictions.
    """
    targets = np.asarray(targets, dtype=np.float64)
    if targets.ndim != 2:
        raise ValueError(f"targets must be (n, C) multi-hot, got shape {targets.shape}")
    return _ranked_influence(targets, _as_scores(scores, *targets.shape))


def influence(targets, scores) -> dict[str, tuple[float, np.ndarray]]:
    """Every metric of one prediction set with its item influences: ``{metric: (value,
    psi (n,))}``, the macro scores over the :func:`scorable_tags` (multi-label) or accuracy and
    balanced accuracy (multi-class). ``value`` equals the logged score.

    Args:
        targets: ``(n, C)`` multi-hot or ``(n,)`` class indices.
        scores: ``(n, C)`` predictions.
    """
    targets = np.asarray(targets)
    scores = np.asarray(scores, dtype=np.float64)
    n = targets.shape[0]
    if targets.ndim == 2:
        kept = scorable_tags(targets)
        if not kept.any():
            raise ValueError("no tag has both a positive and a negative clip: no macro score")
        cols = _ranked_influence(targets[:, kept].astype(np.float64), scores[:, kept])
        return {
            name: (float(cols[name].mean()), cols[f"{name}_psi"].mean(axis=1))
            for name in ("roc_auc", "pr_auc")
        }
    correct = (scores.argmax(axis=1) == targets).astype(np.float64)
    acc = correct.mean()
    classes, counts = np.unique(targets, return_counts=True)
    recall = {c: correct[targets == c].mean() for c in classes}
    count = dict(zip(classes, counts, strict=True))
    balanced = float(np.mean(list(recall.values())))
    psi_bal = np.array(
        [(correct[i] - recall[targets[i]]) / (count[targets[i]] * len(classes)) for i in range(n)]
    )
    return {"accuracy": (float(acc), (correct - acc) / n), "balanced_accuracy": (balanced, psi_bal)}
