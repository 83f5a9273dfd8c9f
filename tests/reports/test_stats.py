"""Tests of reports.stats: REFERENCE.md section 8 golden values (Holm, Friedman, Nemenyi),
properties, a naive Holm loop and Demšar's table.

The comparisons themselves are tested in tests/reports/test_variance.py and test_compare.py."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as scipy_stats

from reports import stats

# --- Golden values (REFERENCE.md section 8), exactly as listed ----------------------------------


def test_holm_golden():
    result = stats.holm([0.01, 0.04, 0.03])
    np.testing.assert_allclose(result["p_adjusted"], [0.03, 0.06, 0.06], atol=1e-12)
    assert result["reject"].tolist() == [True, False, False]


def test_friedman_golden():
    # 4 tasks x 3 methods, ranked A > B > C on every task.
    matrix = np.array([[0.9, 0.8, 0.7], [0.6, 0.5, 0.4], [0.95, 0.9, 0.1], [0.3, 0.2, 0.1]])
    result = stats.friedman(matrix)
    assert result["chi2"] == pytest.approx(8.0, abs=1e-12)
    assert result["p"] == pytest.approx(0.018316, abs=5e-7)
    assert (result["n_blocks"], result["k"]) == (4, 3)


def test_friedman_equals_the_textbook_formula():
    # chi2 = 12 / (n k (k + 1)) sum_j R_j^2 - 3 n (k + 1), R_j the rank sums (no ties)
    rng = np.random.default_rng(0)
    matrix = rng.random((6, 4))
    n, k = matrix.shape
    ranks = np.array([scipy_stats.rankdata(row) for row in matrix])
    chi2 = 12 / (n * k * (k + 1)) * np.sum(ranks.sum(axis=0) ** 2) - 3 * n * (k + 1)
    result = stats.friedman(matrix)
    assert result["chi2"] == pytest.approx(chi2, rel=1e-12)
    assert result["p"] == pytest.approx(scipy_stats.chi2.sf(chi2, k - 1), rel=1e-12)


def test_nemenyi_cd_golden():
    assert stats.nemenyi_cd(9, 4) == pytest.approx(6.006, abs=5e-4)


@pytest.mark.parametrize(
    ("k", "q_table"),
    [(2, 1.960), (3, 2.343), (4, 2.569), (5, 2.728), (6, 2.850), (9, 3.102), (10, 3.164)],
)
def test_nemenyi_q_matches_demsar_table(k, q_table):
    # Independent reference: q_0.05 of Demšar (2006), Table 5a; CD = q * sqrt(k(k+1)/(6N)).
    n = 4
    q = stats.nemenyi_cd(k, n) / math.sqrt(k * (k + 1) / (6 * n))
    assert q == pytest.approx(q_table, abs=1e-3)


# --- Holm -----------------------------------------------------------------------------------------


def _naive_holm(p, alpha=0.05):
    """Holm's step-down procedure, by hand: sorted p_(i) times (m - i), running maximum,
    capped at 1; reject while p_(i) <= alpha / (m - i)."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    adjusted, reject = [0.0] * m, [False] * m
    running, stopped = 0.0, False
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
        stopped = stopped or p[i] > alpha / (m - rank)
        reject[i] = not stopped
    return adjusted, reject


def test_holm_equals_a_naive_step_down_loop():
    rng = np.random.default_rng(1)
    cases = [[0.2], (rng.random(3) ** 3).tolist(), [0.01, 0.01, 0.04, 0.3, 0.004, 0.04],
             (rng.random(9) ** 4).tolist()]  # fmt: skip
    for p in cases:
        adjusted, reject = _naive_holm(p)
        result = stats.holm(p)
        np.testing.assert_allclose(result["p_adjusted"], adjusted, atol=1e-15)
        assert result["reject"].tolist() == reject
    assert any(reject) and not all(reject)  # the last case rejects some, not all


def test_holm_leaves_nan_out_of_the_family():
    result = stats.holm([0.01, float("nan"), 0.04])
    np.testing.assert_allclose(result["p_adjusted"][[0, 2]], [0.02, 0.04])
    assert math.isnan(result["p_adjusted"][1]) and not result["reject"][1]
    assert stats.holm([float("nan")])["reject"].tolist() == [False]
    with pytest.raises(ValueError):
        stats.holm([1.5])
    with pytest.raises(ValueError, match="one-dimensional"):
        stats.holm([[0.1, 0.2]])


# statsmodels' multipletests runs gc.collect() on every call (see tests/reports/conftest.py).
@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=12))
def test_holm_properties(pvalues):
    p = np.array(pvalues)
    adjusted = stats.holm(p)["p_adjusted"]
    assert np.all(adjusted >= p - 1e-12)
    assert np.all(adjusted <= 1.0)
    order = np.argsort(p, kind="stable")
    assert np.all(np.diff(adjusted[order]) >= -1e-12)


# --- Cross-task summaries -----------------------------------------------------------------------


def test_mean_ranks():
    table = pd.DataFrame({"t1": [0.9, 0.8, 0.7], "t2": [0.5, 0.6, np.nan]}, index=["a", "b", "c"])
    ranks = stats.mean_ranks(table)
    assert ranks.to_dict() == {"a": 1.5, "b": 1.5, "c": 3.0}
    ties = pd.DataFrame({"t1": [0.9, 0.9, 0.7]}, index=["a", "b", "c"])
    assert stats.mean_ranks(ties).to_dict() == {"a": 1.5, "b": 1.5, "c": 3.0}
    assert stats.mean_ranks(table).index.tolist()[-1] == "c"  # sorted best to worst


def test_friedman_and_nemenyi_reject_bad_shapes():
    with pytest.raises(ValueError):
        stats.friedman(np.ones((4, 2)))
    with pytest.raises(ValueError):
        stats.friedman(np.ones((1, 3)))
    with pytest.raises(ValueError):
        stats.friedman([[1.0, 2.0, np.nan], [1.0, 2.0, 3.0]])
    with pytest.raises(ValueError):
        stats.nemenyi_cd(1, 4)
    with pytest.raises(ValueError):
        stats.nemenyi_cd(3, 0)
