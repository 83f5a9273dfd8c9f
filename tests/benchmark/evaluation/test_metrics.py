"""Metrics against scikit-learn called independently, and naive loops over tags / classes;
the logged scores and the report's resampling functions agree (one definition, two ways in)."""

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    recall_score,
    roc_auc_score,
)

from benchmark.evaluation.metrics import (
    ITEM_METRICS,
    PRIMARY,
    accuracy,
    balanced_accuracy,
    macro_pr_auc,
    macro_roc_auc,
    primary_score_fn,
    score,
    score_multiclass,
    score_multilabel,
)


def _random_multilabel(rng, n=120, num_tags=6):
    targets = (rng.random((n, num_tags)) < 0.3).astype(np.float32)
    targets[0], targets[1] = 1, 0  # every tag has a positive and a negative
    scores = np.clip(0.4 * targets + rng.random((n, num_tags)), 0, 1)
    return targets, scores


def _random_task(rng, multilabel, n=120, k=6):
    """Targets and informative scores of a ``k``-tag or ``k``-class task."""
    if multilabel:
        return _random_multilabel(rng, n, k)
    targets = rng.integers(0, k, n)
    return targets, rng.random((n, k)) + 0.3 * np.eye(k)[targets]


def test_multilabel_matches_sklearn_macro():
    rng = np.random.default_rng(0)
    targets, scores = _random_multilabel(rng)
    tags = [f"tag{i}" for i in range(targets.shape[1])]
    result = score_multilabel(targets, scores, tags)

    assert result["excluded_tags"] == []
    assert result["roc_auc"] == pytest.approx(roc_auc_score(targets, scores, average="macro"))
    assert result["pr_auc"] == pytest.approx(
        average_precision_score(targets, scores, average="macro")
    )
    assert list(result["per_tag"]) == tags
    for column, tag in enumerate(tags):
        expected_roc = roc_auc_score(targets[:, column], scores[:, column])
        expected_pr = average_precision_score(targets[:, column], scores[:, column])
        assert result["per_tag"][tag]["roc_auc"] == pytest.approx(expected_roc)
        assert result["per_tag"][tag]["pr_auc"] == pytest.approx(expected_pr)


def test_multilabel_excludes_tags_without_positives_or_negatives():
    targets = np.array(
        [
            # a  b  c  d
            [1, 0, 0, 1],
            [0, 0, 1, 1],
            [1, 0, 1, 1],
            [0, 0, 0, 1],
            [1, 0, 0, 1],
        ]
    )
    scores = np.array(
        [
            [0.9, 0.1, 0.2, 0.5],
            [0.2, 0.3, 0.8, 0.4],
            [0.4, 0.2, 0.3, 0.9],
            [0.5, 0.9, 0.1, 0.1],
            [0.7, 0.4, 0.6, 0.3],
        ]
    )
    tags = ["a", "b", "c", "d"]
    with warnings.catch_warnings():
        # The nan / 0.0 values scikit-learn gives excluded tags come with warnings: none may occur.
        warnings.simplefilter("error")
        result = score_multilabel(targets, scores, tags)

    assert result["excluded_tags"] == ["b", "d"]
    assert list(result["per_tag"]) == ["a", "c"]
    roc, pr = [], []
    for column in (0, 2):
        roc.append(roc_auc_score(targets[:, column], scores[:, column]))
        pr.append(average_precision_score(targets[:, column], scores[:, column]))
    assert result["roc_auc"] == pytest.approx(sum(roc) / len(roc))
    assert result["pr_auc"] == pytest.approx(sum(pr) / len(pr))
    # Tag a: positives 0.9, 0.4, 0.7 vs negatives 0.2, 0.5 -> 5 of 6 pairs ordered.
    assert result["per_tag"]["a"]["roc_auc"] == pytest.approx(5 / 6)
    assert np.isfinite(result["roc_auc"]) and np.isfinite(result["pr_auc"])


def test_multilabel_single_scorable_tag():
    targets = np.array([[1, 0], [0, 0], [1, 0], [0, 0]])
    scores = np.array([[0.8, 0.1], [0.3, 0.2], [0.6, 0.3], [0.7, 0.4]])
    result = score_multilabel(targets, scores, ["x", "y"])
    assert result["excluded_tags"] == ["y"]
    assert result["roc_auc"] == pytest.approx(roc_auc_score(targets[:, 0], scores[:, 0]))


@settings(max_examples=25, deadline=None)
@given(
    targets=arrays(np.int8, (12, 4), elements=st.integers(0, 1)),
    scores=arrays(np.float64, (12, 4), elements=st.floats(0, 1)),
)
def test_multilabel_macro_is_mean_over_kept_tags(targets, scores):
    tags = ["a", "b", "c", "d"]
    kept = [c for c in range(4) if 0 < targets[:, c].sum() < len(targets)]
    if not kept:
        with pytest.raises(ValueError, match="no tag"):
            score_multilabel(targets, scores, tags)
        return
    result = score_multilabel(targets, scores, tags)
    assert result["excluded_tags"] == [tags[c] for c in range(4) if c not in kept]
    expected = np.mean([roc_auc_score(targets[:, c], scores[:, c]) for c in kept])
    assert result["roc_auc"] == pytest.approx(expected)
    assert primary_score_fn(tags, True)(targets, scores) == pytest.approx(expected)
    assert macro_roc_auc(targets, scores) == pytest.approx(expected)


def test_multilabel_rejects_bad_input():
    targets = np.array([[1, 0], [0, 1]])
    with pytest.raises(ValueError, match="0/1"):
        score_multilabel(np.array([[2, 0], [0, 1]]), np.zeros((2, 2)), ["a", "b"])
    with pytest.raises(ValueError, match="nan"):
        score_multilabel(targets, np.array([[np.nan, 0], [0, 1]]), ["a", "b"])
    with pytest.raises(ValueError, match="shape"):
        score_multilabel(targets, np.zeros((2, 3)), ["a", "b"])
    with pytest.raises(ValueError, match="shape"):
        score_multilabel(targets, np.zeros((2, 2)), ["a"])
    with pytest.raises(ValueError, match="no tag"):
        score_multilabel(np.ones((3, 2)), np.zeros((3, 2)), ["a", "b"])


def test_multiclass_matches_sklearn():
    rng = np.random.default_rng(1)
    targets = rng.integers(0, 4, 200)
    scores = rng.random((200, 4)) + 0.5 * np.eye(4)[targets]
    classes = ["w", "x", "y", "z"]
    result = score_multiclass(targets, scores, classes)
    predictions = scores.argmax(axis=1)

    assert result["accuracy"] == pytest.approx(accuracy_score(targets, predictions))
    assert result["balanced_accuracy"] == pytest.approx(
        balanced_accuracy_score(targets, predictions)
    )
    recalls = recall_score(targets, predictions, average=None)
    assert result["per_class_recall"] == pytest.approx(dict(zip(classes, recalls, strict=True)))
    assert result["absent_classes"] == []


def test_multiclass_with_a_class_absent_from_targets():
    # NSynth's test split lacks synth_lead: predicting it must count as an error, and the
    # absent class must not enter balanced accuracy.
    classes = ["a", "b", "c"]
    targets = np.array([0, 0, 0, 0, 1, 1])
    predictions = np.array([0, 0, 2, 1, 1, 1])
    scores = np.eye(3)[predictions]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = score_multiclass(targets, scores, classes)

    assert result["absent_classes"] == ["c"]
    assert result["accuracy"] == pytest.approx(4 / 6)
    recall_a = sum(p == 0 for t, p in zip(targets, predictions, strict=True) if t == 0) / 4
    recall_b = sum(p == 1 for t, p in zip(targets, predictions, strict=True) if t == 1) / 2
    assert result["per_class_recall"] == pytest.approx({"a": recall_a, "b": recall_b})
    assert result["balanced_accuracy"] == pytest.approx((recall_a + recall_b) / 2)


def test_multiclass_rejects_bad_input():
    with pytest.raises(ValueError, match="lie in"):
        score_multiclass(np.array([0, 3]), np.zeros((2, 3)), ["a", "b", "c"])
    with pytest.raises(ValueError, match="integers"):
        score_multiclass(np.array([0.0, 1.0]), np.zeros((2, 3)), ["a", "b", "c"])
    with pytest.raises(ValueError, match="shape"):
        score_multiclass(np.array([0, 1]), np.zeros((2, 2)), ["a", "b", "c"])


@pytest.mark.parametrize("multilabel", [True, False])
def test_primary_score_fn_is_the_primary_metric(multilabel):
    targets, scores = _random_task(np.random.default_rng(2), multilabel)
    names = [f"n{i}" for i in range(6)]
    key = PRIMARY["multilabel" if multilabel else "multiclass"]
    expected = score(targets, scores, names, multilabel)[key]
    assert primary_score_fn(names, multilabel)(targets, scores) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("multilabel", "metric", "reference"),
    [
        (True, "pr_auc", lambda t, s: average_precision_score(t, s, average="macro")),
        (False, "balanced_accuracy", lambda t, s: balanced_accuracy_score(t, s.argmax(1))),
    ],
)
def test_primary_score_fn_follows_a_declared_metric(multilabel, metric, reference):
    """A task may declare another primary metric; early stopping and tuning then use it."""
    targets, scores = _random_task(np.random.default_rng(3), multilabel)
    names = [f"n{i}" for i in range(6)]
    fn = primary_score_fn(names, multilabel, metric)
    assert fn(targets, scores) == pytest.approx(reference(targets, scores), abs=1e-12)
    with pytest.raises(ValueError, match="unknown primary metric"):
        primary_score_fn(names, multilabel, "f1")(targets, scores)


# -- the item-level functions the report resamples ------------------------------------------


def test_sklearn_behaviour_for_a_tag_without_positives():
    targets = np.zeros((10, 2), dtype=int)
    targets[:4, 1] = 1
    scores = np.tile(np.linspace(0, 1, 10)[:, None], (1, 2))
    with pytest.warns(UndefinedMetricWarning):
        roc = roc_auc_score(targets, scores, average=None)
    assert math.isnan(roc[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pr = average_precision_score(targets, scores, average=None)
    assert pr[0] == 0.0
    # The report metrics drop the tag instead of averaging a nan or a 0.0 into the macro mean.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert macro_roc_auc(targets, scores) == pytest.approx(roc[1])
        assert macro_pr_auc(targets, scores) == pytest.approx(pr[1])


def test_a_tag_without_negatives_is_dropped_by_roc_and_pr_alike():
    targets = np.array([[1, 1], [1, 0], [1, 1], [1, 0], [1, 0]])
    scores = np.array([[0.1, 0.9], [0.2, 0.1], [0.3, 0.8], [0.4, 0.3], [0.5, 0.2]])
    # Tag 0 is positive on every clip: its average precision would be 1.0 whatever the scores.
    assert average_precision_score(targets[:, 0], scores[:, 0]) == 1.0
    assert macro_roc_auc(targets, scores) == pytest.approx(1.0)
    assert macro_pr_auc(targets, scores) == pytest.approx(
        average_precision_score(targets[:, 1], scores[:, 1])
    )
    assert math.isnan(macro_pr_auc(targets[:, :1], scores[:, :1]))  # no scorable tag left


def test_stacked_multilabel_metrics_equal_per_run_calls():
    rng = np.random.default_rng(3)
    targets = (rng.random((30, 3)) < 0.4).astype(int)
    targets[:, 2] = 0
    targets[0, 2] = 1
    stack = rng.random((3, 30, 3))
    for metric in (macro_roc_auc, macro_pr_auc):
        np.testing.assert_allclose(metric(targets, stack), [metric(targets, s) for s in stack])


def test_rank_based_roc_auc_equals_scikit_learn_with_ties_and_stacked_runs():
    rng = np.random.default_rng(0)
    targets = (rng.random((60, 7)) < 0.3).astype(int)
    targets[0, :] = 1
    targets[1, :] = 0
    scores = np.round(rng.random((3, 60, 7)), 1)  # rounding makes many ties
    for run in scores:
        assert macro_roc_auc(targets, run) == pytest.approx(
            roc_auc_score(targets, run, average="macro"), abs=1e-12
        )
    stacked = macro_roc_auc(targets, scores)
    expected = [roc_auc_score(targets, run, average="macro") for run in scores]
    np.testing.assert_allclose(stacked, expected, atol=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_logged_scores_equal_the_reports_recomputation(seed):
    """What a probe logs (:func:`score`) and what the report recomputes from the saved
    predictions (:data:`ITEM_METRICS`) agree, with a tag positive on every clip and a tag
    positive on none among the tags."""
    rng = np.random.default_rng(seed)
    targets, scores = _random_multilabel(rng, n=40, num_tags=6)
    targets[:, 1] = 1  # all positives
    targets[:, 4] = 0  # no positive
    tags = [f"tag{i}" for i in range(6)]
    logged = score(targets, scores, tags, multilabel=True)
    assert logged["excluded_tags"] == ["tag1", "tag4"]
    for name in ("roc_auc", "pr_auc"):
        assert ITEM_METRICS[name](targets, scores) == pytest.approx(logged[name], abs=1e-12)
        stacked = ITEM_METRICS[name](targets, np.stack([scores, scores]))
        np.testing.assert_allclose(stacked, [logged[name]] * 2, atol=1e-12)

    classes = [f"class{i}" for i in range(5)]
    labels, probabilities = _random_task(rng, multilabel=False, n=40, k=5)
    labels[labels == 3] = 0  # a class absent from the targets
    logged = score(labels, probabilities, classes, multilabel=False)
    assert accuracy(labels, probabilities) == logged["accuracy"]
    assert balanced_accuracy(labels, probabilities) == pytest.approx(
        logged["balanced_accuracy"], abs=1e-12
    )
