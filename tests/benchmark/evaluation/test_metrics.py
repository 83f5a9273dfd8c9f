"""Metrics against scikit-learn called independently (with ``sample_weight`` for the weighted
ones), naive loops over tags / classes and finite differences: the logged scores, the report's
resampling (:class:`ItemScores`) and the item influences (:func:`influence`) are one
definition."""

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
    PRIMARY,
    ItemScores,
    RankedColumns,
    influence,
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
    # the report's two ways in: unit resample weights and the influence function's value
    unit = ItemScores(targets, scores[None]).resample(np.ones(len(targets)))
    assert unit["roc_auc"][0, 0] == pytest.approx(expected, abs=1e-12)
    assert influence(targets, scores)["roc_auc"][0] == pytest.approx(expected, abs=1e-12)


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


# -- the report's resampling: weighted metrics against scikit-learn's sample_weight ---------


def _sk_tag(kind, y, s, w):
    """scikit-learn's weighted ROC-AUC / AP of one tag (warnings silenced: the caller only asks
    for tags with weighted positives and negatives)."""
    fn = roc_auc_score if kind == "roc_auc" else average_precision_score
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(y, s, sample_weight=w)


def _sk_macro(kind, targets, scores, w):
    """Naive weighted macro: mean of scikit-learn's per-tag values over the tags that have a
    weighted positive and a weighted negative; nan when there is none."""
    values = []
    for c in range(targets.shape[1]):
        positive_weight = float(np.sum(w * targets[:, c]))
        negative_weight = float(np.sum(w * (1 - targets[:, c])))
        if positive_weight > 0 and negative_weight > 0:
            values.append(_sk_tag(kind, targets[:, c], scores[:, c], w))
    return float(np.mean(values)) if values else math.nan


def _sk_multiclass(targets, scores, w):
    predictions = scores.argmax(axis=1)
    with warnings.catch_warnings():
        # y_pred may hold a class without weight in y_true: scikit-learn warns and drops it
        warnings.simplefilter("ignore")
        balanced = balanced_accuracy_score(targets, predictions, sample_weight=w)
    return accuracy_score(targets, predictions, sample_weight=w), balanced


def _bootstrap_weights(rng, num_resamples, n):
    """Integer resample weights (multinomial counts: many zeros, some 2s and 3s)."""
    return np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(num_resamples)])


def _tied_multilabel(rng, runs, n=40, num_tags=5):
    """Multi-label targets with a rare tag (2 positives), and ``runs`` runs of scores rounded
    to one decimal (many ties)."""
    targets = (rng.random((n, num_tags)) < 0.35).astype(int)
    targets[:2], targets[2:4] = 1, 0
    targets[:, -1] = 0
    targets[[5, 9], -1] = 1
    scores = np.round(np.clip(0.3 * targets + rng.random((runs, n, num_tags)), 0, 1), 1)
    return targets, scores


def test_ranked_columns_equal_scikit_learn_with_sample_weight_and_ties():
    rng = np.random.default_rng(11)
    n, k = 50, 8
    targets = (rng.random((n, k)) < 0.3).astype(int)
    targets[:, 6] = 0
    targets[3, 6] = 1  # a rare column: undefined in the resamples that miss item 3
    targets[:, 7] = 1  # no negatives: always undefined
    scores = np.round(rng.random((n, k)), 1)  # ties within and across classes
    ranked = RankedColumns(targets, scores)
    weights = [np.ones(n), rng.integers(0, 4, n).astype(float), *_bootstrap_weights(rng, 8, n)]
    undefined_seen = 0
    for w in weights:
        columns = ranked.scores(w)
        for c in range(k):
            positives = np.sum(w * targets[:, c])
            negatives = np.sum(w * (1 - targets[:, c]))
            assert columns["positives"][c] == positives
            assert columns["negatives"][c] == negatives
            if positives > 0 and negatives > 0:
                for kind in ("roc_auc", "pr_auc"):
                    expected = _sk_tag(kind, targets[:, c], scores[:, c], w)
                    assert columns[kind][c] == pytest.approx(expected, abs=1e-12)
            else:
                undefined_seen += 1
                assert math.isnan(columns["roc_auc"][c]) and math.isnan(columns["pr_auc"][c])
    assert undefined_seen > len(weights)  # column 7 always, column 6 sometimes


def test_item_scores_multilabel_equal_scikit_learn_over_runs_and_resamples():
    rng = np.random.default_rng(12)
    targets, scores = _tied_multilabel(rng, runs=3)
    weights = np.vstack([np.ones(len(targets)), _bootstrap_weights(rng, 12, len(targets))])
    out = ItemScores(targets, scores).resample(weights)
    assert out["roc_auc"].shape == out["pr_auc"].shape == (len(weights), 3)
    for b, w in enumerate(weights):
        for r, run in enumerate(scores):
            for kind in ("roc_auc", "pr_auc"):
                expected = _sk_macro(kind, targets, run, w)
                assert out[kind][b, r] == pytest.approx(expected, abs=1e-12)


def test_item_scores_multiclass_equal_scikit_learn_over_runs_and_resamples():
    rng = np.random.default_rng(13)
    n, num_classes = 60, 5
    targets = rng.integers(0, num_classes, n)
    targets[targets == 4] = 0  # a class never true, sometimes predicted
    targets[7] = 3  # class 3 rare: some resamples miss it
    scores = np.round(rng.random((3, n, num_classes)) + 0.3 * np.eye(num_classes)[targets], 1)
    weights = np.vstack([np.ones(n), _bootstrap_weights(rng, 15, n)])
    out = ItemScores(targets, scores).resample(weights)
    for b, w in enumerate(weights):
        for r, run in enumerate(scores):
            acc, balanced = _sk_multiclass(targets, run, w)
            assert out["accuracy"][b, r] == pytest.approx(acc, abs=1e-12)
            assert out["balanced_accuracy"][b, r] == pytest.approx(balanced, abs=1e-12)


def test_resampled_macro_drops_a_tag_without_weighted_positives_or_negatives_for_every_run():
    rng = np.random.default_rng(14)
    targets, scores = _tied_multilabel(rng, runs=4, n=30, num_tags=4)
    targets[:, 0] = 1
    targets[[2, 3], 0] = 0  # tag 0 has two negatives only
    rare, common = 3, 0
    w = np.ones(len(targets))
    w[[5, 9]] = 0  # no weighted positive of the rare tag
    w[[2, 3]] = 0  # no weighted negative of the common tag
    out = ItemScores(targets, scores).resample(w)
    for r, run in enumerate(scores):
        for kind in ("roc_auc", "pr_auc"):
            kept = [_sk_tag(kind, targets[:, c], run[:, c], w) for c in (1, 2)]
            assert out[kind][0, r] == pytest.approx(np.mean(kept), abs=1e-12)
            # scikit-learn's own value for the dropped tags would corrupt the mean
            sk_rare = _sk_tag(kind, targets[:, rare], run[:, rare], w)
            sk_common = _sk_tag(kind, targets[:, common], run[:, common], w)
            assert math.isnan(sk_rare) or sk_rare == 0.0
            assert math.isnan(sk_common) or sk_common == pytest.approx(1.0)
    # no scorable tag left: nan for every run, not an error
    only_rare = ItemScores(targets[:, [rare]], scores[:, :, [rare]]).resample(w)
    assert np.isnan(only_rare["roc_auc"]).all() and np.isnan(only_rare["pr_auc"]).all()


@pytest.mark.parametrize("seed", range(3))
def test_unit_weights_give_the_logged_scores(seed):
    rng = np.random.default_rng(seed)
    targets, scores = _tied_multilabel(rng, runs=3)
    targets[:, 1] = 1  # an excluded tag
    tags = [f"t{i}" for i in range(targets.shape[1])]
    unit = ItemScores(targets, scores).resample(np.ones(len(targets)))
    for r, run in enumerate(scores):
        logged = score(targets, run, tags, multilabel=True)
        assert logged["excluded_tags"] == ["t1"]
        for kind in ("roc_auc", "pr_auc"):
            assert unit[kind][0, r] == pytest.approx(logged[kind], abs=1e-12)
    classes = [f"c{i}" for i in range(4)]
    labels = rng.integers(0, 3, 50)  # class 3 absent from the targets
    probabilities = np.round(rng.random((3, 50, 4)), 1)
    unit = ItemScores(labels, probabilities).resample(np.ones(50))
    for r, run in enumerate(probabilities):
        logged = score(labels, run, classes, multilabel=False)
        for kind in ("accuracy", "balanced_accuracy"):
            assert unit[kind][0, r] == pytest.approx(logged[kind], abs=1e-12)


def test_item_scores_reject_bad_shapes():
    targets = np.zeros((5, 3), dtype=int)
    with pytest.raises(ValueError, match="runs, n, C"):
        ItemScores(targets, np.zeros((5, 3)))
    with pytest.raises(ValueError, match="do not match"):
        ItemScores(targets, np.zeros((1, 5, 4)))
    with pytest.raises(ValueError, match="weights"):
        ItemScores(np.arange(5) % 2, np.zeros((1, 5, 2))).resample(np.ones(4))


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
    # The report's metrics drop the tag instead of averaging a nan or a 0.0 into the macro.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        unit = ItemScores(targets, scores[None]).resample(np.ones(10))
        values = influence(targets, scores)
    assert unit["roc_auc"][0, 0] == pytest.approx(roc[1]) == values["roc_auc"][0]
    assert unit["pr_auc"][0, 0] == pytest.approx(pr[1]) == values["pr_auc"][0]


# -- influence: the derivative of every metric w.r.t. each item's weight ---------------------


def _finite_differences(targets, scores, metric, eps=1e-6):
    """Central differences of the weighted metric (:meth:`ItemScores.resample`) in each item's
    weight at unit weights: the naive reference of the influence function."""
    n = len(targets)
    eye = np.eye(n)
    weights = np.vstack([np.ones(n) + eps * eye, np.ones(n) - eps * eye])
    values = ItemScores(targets, scores[None]).resample(weights)[metric][:, 0]
    return (values[:n] - values[n:]) / (2 * eps)


def _multilabel_case(rng, n=45):
    targets = (rng.random((n, 5)) < 0.3).astype(int)
    targets[:2], targets[2:4] = 1, 0
    targets[:, 4] = 1  # excluded: no negative
    scores = np.round(0.3 * targets + rng.random((n, 5)), 1)  # ties
    return targets, scores


def _multiclass_case(rng, n=45):
    targets = rng.integers(0, 4, n)
    targets[targets == 3] = 0  # class 3 absent from the targets
    scores = np.round(rng.random((n, 4)) + 0.4 * np.eye(4)[targets], 1)
    scores[::7] = 0.5  # rows of all-equal scores: argmax takes the first class
    return targets, scores


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("multilabel", [True, False])
def test_influence_is_the_derivative_of_the_weighted_metric(multilabel, seed):
    rng = np.random.default_rng(100 + seed)
    targets, scores = (_multilabel_case if multilabel else _multiclass_case)(rng)
    names = [f"n{i}" for i in range(scores.shape[1])]
    logged = score(targets, scores, names, multilabel)
    values = influence(targets, scores)
    expected_metrics = ("roc_auc", "pr_auc") if multilabel else ("accuracy", "balanced_accuracy")
    assert tuple(values) == expected_metrics
    for metric, (value, psi) in values.items():
        assert value == pytest.approx(logged[metric], abs=1e-12)
        assert psi.shape == (len(targets),)
        reference = _finite_differences(targets, scores, metric)
        np.testing.assert_allclose(psi, reference, rtol=0, atol=1e-7)
        assert np.abs(psi).max() > 1e-3  # not trivially zero
        # every metric is invariant to scaling all weights: the influences sum to zero
        assert abs(psi.sum()) < 1e-12


def test_roc_auc_influence_is_delong_placements():
    """Known values: DeLong's placements for a 2-positive, 3-negative column with a tie."""
    targets = np.array([[1], [1], [0], [0], [0]])
    scores = np.array([[0.9], [0.4], [0.4], [0.2], [0.1]])
    value, psi = influence(targets, scores)["roc_auc"]
    # positive 0.9 beats 3 negatives (V10 = 1); positive 0.4 beats 2 and ties 1 (V10 = 2.5/3)
    auc = (1 + 2.5 / 3) / 2
    assert value == pytest.approx(auc)
    v10 = np.array([1.0, 2.5 / 3])
    v01 = np.array([1.5 / 2, 1.0, 1.0])  # positives above each negative (tie counts 1/2)
    expected = np.concatenate([(v10 - auc) / 2, (v01 - auc) / 3])
    np.testing.assert_allclose(psi, expected, atol=1e-15)


@pytest.mark.parametrize("seed", range(3))
def test_logged_value_equals_the_reports_recomputation_from_saved_predictions(seed):
    """For every metric, what a probe logs (:func:`score`) equals what the report recomputes
    from the saved predictions: the report (``reports.compare.run_sets``) aligns each run's
    saved predictions by clip id and calls :func:`influence`, whose value is the score; the
    weighted metric at unit weights is the same number."""
    rng = np.random.default_rng(seed)
    cases = [(True, *_multilabel_case(rng, n=40)), (False, *_multiclass_case(rng, n=40))]
    for multilabel, targets, scores in cases:
        names = [f"n{i}" for i in range(scores.shape[1])]
        logged = score(targets, scores, names, multilabel)
        # saved in another clip order, recomputed in the report's order
        order = rng.permutation(len(targets))
        recomputed = influence(targets[order], scores[order])
        unit = ItemScores(targets[order], scores[order][None]).resample(np.ones(len(targets)))
        for metric, (value, psi) in recomputed.items():
            assert value == pytest.approx(logged[metric], abs=1e-12)
            assert unit[metric][0, 0] == pytest.approx(logged[metric], abs=1e-12)
            # the influences follow their items
            np.testing.assert_allclose(
                psi, influence(targets, scores)[metric][1][order], atol=1e-15
            )
