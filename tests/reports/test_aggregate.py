"""reports.aggregate against rliable's own estimators, the normal-theory SE of a mean, and
known values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from rliable import metrics as rly

from reports.aggregate import (
    aggregates,
    chance_level,
    normalise,
    probability_of_improvement,
    task_matrices,
)


def test_probability_of_improvement_vectorised_equals_rliable_per_resample():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, (20, 3, 4)).astype(float)  # small integers: many ties
    y = rng.integers(0, 5, (20, 5, 4)).astype(float)
    fast = probability_of_improvement(x, y)
    assert fast.shape == (20,)
    expected = [rly.probability_of_improvement(a, b) for a, b in zip(x, y, strict=True)]
    np.testing.assert_allclose(fast, expected, atol=1e-15)
    # two leading axes, and the plain (runs, tasks) call
    stacked = probability_of_improvement(x.reshape(4, 5, 3, 4), y.reshape(4, 5, 5, 4))
    np.testing.assert_allclose(stacked.ravel(), expected, atol=1e-15)
    assert float(probability_of_improvement(x[0], y[0])) == pytest.approx(expected[0])
    # known values: always ahead, all tied, always behind
    ones, zeros = np.ones((3, 2)), np.zeros((3, 2))
    assert float(probability_of_improvement(ones, zeros)) == 1.0
    assert float(probability_of_improvement(ones, ones)) == 0.5
    assert float(probability_of_improvement(zeros, ones)) == 0.0


def _matrices():
    rng = np.random.default_rng(1)
    return {
        "base": 0.40 + 0.05 * rng.standard_normal((5, 4)),
        "good": 0.50 + 0.05 * rng.standard_normal((5, 4)),
        "same": 0.40 + 0.05 * rng.standard_normal((5, 4)),
    }


def test_aggregates_point_estimates_are_rliables_and_intervals_contain_them():
    matrices = _matrices()
    table = aggregates(matrices, "base", reps=500, seed=3).set_index("method")
    assert table.index.tolist() == ["base", "good", "same"]
    for method, matrix in matrices.items():
        row = table.loc[method]
        assert row["runs"] == 5
        assert row["iqm"] == pytest.approx(rly.aggregate_iqm(matrix), abs=1e-15)
        assert row["mean"] == pytest.approx(rly.aggregate_mean(matrix), abs=1e-15)
        for name in ("iqm", "mean"):
            assert row[f"{name}_low"] < row[name] < row[f"{name}_high"]
        if method == "base":
            assert math.isnan(row["poi"]) and math.isnan(row["poi_low"])
        else:
            expected = rly.probability_of_improvement(matrix, matrices["base"])
            assert row["poi"] == pytest.approx(expected, abs=1e-15)
            assert row["poi_low"] <= row["poi"] <= row["poi_high"]
    assert table.loc["good", "poi_low"] > 0.5  # clearly better
    assert table.loc["same", "poi_low"] < 0.5 < table.loc["same", "poi_high"]


def test_mean_interval_matches_the_normal_theory_se_of_a_stratified_resample():
    # Runs resampled within each task: the bootstrap SD of the mean over R runs and T tasks is
    # sqrt(sum_t var_t / R) / T with var_t the plug-in (ddof 0) variance of task t's runs.
    rng = np.random.default_rng(4)
    runs, tasks = 12, 3
    matrix = rng.standard_normal((runs, tasks)) * np.array([0.02, 0.05, 0.1])
    table = aggregates({"m": matrix}, "m", reps=4000, seed=5).iloc[0]
    se = math.sqrt(np.sum(matrix.var(axis=0) / runs)) / tasks
    width = table["mean_high"] - table["mean_low"]
    assert width == pytest.approx(2 * 1.96 * se, rel=0.1)


def _naive_iqm(matrix):
    """The interquartile mean by hand: drop the lowest and highest quarter of all scores."""
    values = np.sort(np.ravel(matrix))
    cut = int(0.25 * len(values))
    return values[cut : len(values) - cut].mean()


def test_intervals_agree_with_an_independent_bootstrap():
    """A naive stratified bootstrap (a loop with its own generator; the IQM by hand, which is
    rliable's on the data, and rliable's probability of improvement) gives the same percentile
    intervals up to Monte Carlo noise. Measured: within 4% of the interval's width for the IQM
    and the mean (2000 naive resamples), 8% for the probability of improvement (300: rliable's
    is slow); tolerances 12% and 20%."""
    matrices = _matrices()
    assert _naive_iqm(matrices["good"]) == pytest.approx(rly.aggregate_iqm(matrices["good"]))
    table = aggregates(matrices, "base", reps=4000, seed=11).set_index("method")
    rng = np.random.default_rng(12)

    def resample(matrix):
        rows = rng.integers(0, matrix.shape[0], matrix.shape)
        return np.take_along_axis(matrix, rows, axis=0)  # runs drawn within each task

    naive = {"iqm": [], "mean": [], "poi": []}
    for i in range(2000):
        good = resample(matrices["good"])
        naive["iqm"].append(_naive_iqm(good))
        naive["mean"].append(good.mean())
        if i < 300:
            naive["poi"].append(rly.probability_of_improvement(good, resample(matrices["base"])))
    row = table.loc["good"]
    for name, values in naive.items():
        low, high = np.percentile(values, [2.5, 97.5])
        tolerance = (0.2 if name == "poi" else 0.12) * (high - low)
        assert row[f"{name}_low"] == pytest.approx(low, abs=tolerance), name
        assert row[f"{name}_high"] == pytest.approx(high, abs=tolerance), name


def test_bootstrap_resamples_runs_within_each_task():
    # Every run's scores sum to zero across tasks: resampling whole runs would always give a
    # mean of 0 (a point interval); resampling within each task (stratified) does not.
    matrix = np.array([[0.1, -0.1], [0.3, -0.3], [-0.2, 0.2], [0.05, -0.05]])
    row = aggregates({"m": matrix}, "m", reps=400, seed=0).iloc[0]
    assert row["mean"] == pytest.approx(0.0, abs=1e-15)
    assert row["mean_high"] - row["mean_low"] > 0.05


def test_aggregates_are_reproducible_and_leave_the_global_generator_alone():
    matrices = _matrices()
    np.random.seed(2024)
    before = np.random.get_state()
    first = aggregates(matrices, "base", reps=300, seed=7)
    after = np.random.get_state()
    assert before[0] == after[0] and np.array_equal(before[1], after[1])
    assert before[2:] == after[2:]
    np.random.seed(99)  # another global state changes nothing
    pd.testing.assert_frame_equal(aggregates(matrices, "base", reps=300, seed=7), first)
    other = aggregates(matrices, "base", reps=300, seed=8)
    assert not np.allclose(other["iqm_low"], first["iqm_low"])
    # without the baseline among the matrices: no probability of improvement
    assert aggregates({"good": matrices["good"]}, "base", reps=50)["poi"].isna().all()


def test_chance_level_and_normalise_known_values():
    assert chance_level("roc_auc", np.zeros((4, 2))) == 0.5
    tags = np.array([[1, 0, 1, 0], [0, 0, 1, 1], [0, 0, 1, 0], [0, 0, 1, 1]])
    # tags 1 (no positive) and 2 (no negative) are not scorable: mean of 1/4 and 2/4
    assert chance_level("pr_auc", tags) == pytest.approx(0.375)
    assert chance_level("accuracy", np.array([0, 1, 2, 2, 1, 0, 3])) == 0.25
    assert chance_level("balanced_accuracy", np.array([0, 1, 1])) == 0.5
    # (n, C) one-hot targets: the number of classes is their width, not their 2 distinct values
    one_hot = np.eye(5)[[0, 1, 1, 3]]
    assert chance_level("accuracy", one_hot) == chance_level("balanced_accuracy", one_hot) == 0.2
    with pytest.raises(ValueError, match="no chance level"):
        chance_level("f1", np.zeros(3))
    np.testing.assert_allclose(normalise([0.5, 1.0, 0.75, 0.25], 0.5), [0.0, 1.0, 0.5, -0.5])
    assert float(normalise(0.4, 0.25)) == pytest.approx(0.2)


def test_task_matrices_keep_complete_methods_only():
    runs = {
        "a": {"t": [0.1, 0.2], "u": [0.3, 0.4]},
        "b": {"t": [0.1, 0.2]},  # a task missing
        "c": {"t": [0.1, 0.2, 0.3], "u": [0.3, 0.4]},  # unequal runs
    }
    out = task_matrices(runs, ["t", "u"])
    assert list(out) == ["a"]
    np.testing.assert_array_equal(out["a"], [[0.1, 0.3], [0.2, 0.4]])
