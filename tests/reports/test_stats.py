"""Tests of reports.stats: REFERENCE.md section 8 golden values, properties, naive references.

The metrics the bootstrap resamples are tested in tests/benchmark/evaluation/test_metrics.py."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scipy import stats as scipy_stats
from sklearn.metrics import roc_auc_score

from benchmark.evaluation.metrics import accuracy, balanced_accuracy, macro_pr_auc, macro_roc_auc
from reports import stats

A = [0.81, 0.83, 0.85, 0.87, 0.89]
B = [0.80, 0.81, 0.82, 0.83, 0.84]


# --- Golden values (REFERENCE.md section 8), exactly as listed ----------------------------------


def test_paired_t_golden():
    result = stats.paired_t(A, B)
    assert result["t"] == pytest.approx(4.2426, abs=5e-5)
    assert result["df"] == 4
    assert result["p"] == pytest.approx(0.013236, abs=5e-7)
    assert result["mean_diff"] == pytest.approx(0.03, abs=1e-12)
    assert result["ci_low"] == pytest.approx(0.010368, abs=5e-7)
    assert result["ci_high"] == pytest.approx(0.049632, abs=5e-7)
    assert result["d_z"] == pytest.approx(1.8974, abs=5e-5)


def test_wilcoxon_exact_golden_and_why_reports_use_none():
    assert scipy_stats.wilcoxon(A, B, method="exact").pvalue == pytest.approx(0.0625, abs=1e-12)
    # 0.0625 is also the smallest exact two-sided p with 5 pairs: Wilcoxon can never reach 0.05.
    assert stats.wilcoxon_min_p(5) == pytest.approx(0.0625, abs=1e-12)
    for n in range(1, 9):
        assert stats.wilcoxon_min_p(n) == pytest.approx(2.0 / 2**n)


def test_mcnemar_exact_golden():
    result = stats.mcnemar_from_table([[50, 10], [2, 38]])
    assert result["p"] == pytest.approx(0.038574, abs=5e-7)
    assert (result["b"], result["c"]) == (10, 2)


def test_mcnemar_from_correctness_arrays_builds_the_table():
    both, only_a, only_b, neither = 50, 10, 2, 38
    correct_a = [True] * both + [True] * only_a + [False] * only_b + [False] * neither
    correct_b = [True] * both + [False] * only_a + [True] * only_b + [False] * neither
    result = stats.mcnemar_exact(correct_a, correct_b)
    assert result["table"] == [[50, 10], [2, 38]]
    assert result["p"] == pytest.approx(0.038574, abs=5e-7)


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


def _rare_tag_data(n=30, seed=3):
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, 3)) < 0.4).astype(int)
    targets[:, 2] = 0
    targets[0, 2] = 1  # one positive only: many resamples miss it
    scores_a = np.clip(targets * 0.3 + rng.random((n, 3)) * 0.7, 0, 1)
    scores_b = rng.random((n, 3))
    return targets, scores_a, scores_b


def test_bootstrap_drops_tags_without_positives_in_a_resample():
    targets, scores_a, scores_b = _rare_tag_data()
    for metric in (macro_roc_auc, macro_pr_auc):
        result = stats.paired_bootstrap(metric, targets, scores_a, scores_b, 49, seed=0)
        assert math.isfinite(result["ci_low"]) and math.isfinite(result["ci_high"])
        assert result["ci_low"] <= result["diff"] <= result["ci_high"]

    # Without dropping, sklearn's nan for the resamples that miss the rare tag poisons ROC-AUC.
    def naive_roc(t, s):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return roc_auc_score(t, s, average=None).mean()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        naive = stats.paired_bootstrap(naive_roc, targets, scores_a, scores_b, 49, seed=0)
    assert math.isnan(naive["ci_low"])


def test_pooled_accuracy_bootstrap_equals_naive_per_run_loop():
    rng = np.random.default_rng(0)
    targets = np.arange(40) % 4
    runs = {
        name: [rng.random((40, 4)) + (name == "good") * np.eye(4)[targets] for _ in range(2)]
        for name in ("base", "good", "same")
    }
    for metric in (accuracy, balanced_accuracy):
        fast = stats.paired_bootstrap_many(metric, targets, runs, "base", 49, seed=1)
        naive = stats.paired_bootstrap_many(
            lambda t, s, metric=metric: metric(t, s), targets, runs, "base", 49, seed=1
        )
        for name in ("good", "same"):
            for key in ("diff", "ci_low", "ci_high"):
                assert fast[name][key] == pytest.approx(naive[name][key], abs=1e-12)
        assert fast["good"]["excludes_zero"] and fast["good"]["ci_low"] > 0


def test_bootstrap_many_equals_pairwise():
    targets, scores_a, scores_b = _rare_tag_data()
    many = stats.paired_bootstrap_many(
        macro_roc_auc, targets, {"b": scores_b, "a": scores_a}, "b", 49, seed=5
    )
    single = stats.paired_bootstrap(macro_roc_auc, targets, scores_a, scores_b, 49, seed=5)
    assert many["a"] == single


def test_bootstrap_rejects_misaligned_runs():
    targets, scores_a, scores_b = _rare_tag_data()
    with pytest.raises(ValueError, match="items"):
        stats.paired_bootstrap(macro_roc_auc, targets, scores_a[:-1], scores_b, 9, seed=0)


# --- Seed level ---------------------------------------------------------------------------------


def test_seed_summary_matches_t_formula():
    values = np.array([0.61, 0.64, 0.60, 0.66, 0.63])
    result = stats.seed_summary(values)
    half = scipy_stats.t.ppf(0.975, 4) * values.std(ddof=1) / math.sqrt(5)
    assert result["mean"] == pytest.approx(values.mean())
    assert result["std"] == pytest.approx(values.std(ddof=1))
    assert result["n"] == 5
    assert result["ci_low"] == pytest.approx(values.mean() - half)
    assert result["ci_high"] == pytest.approx(values.mean() + half)


def test_seed_summary_single_seed_and_errors():
    result = stats.seed_summary([0.7])
    assert result["mean"] == 0.7 and result["n"] == 1
    assert math.isnan(result["std"]) and math.isnan(result["ci_low"])
    with pytest.raises(ValueError):
        stats.seed_summary([])
    with pytest.raises(ValueError):
        stats.seed_summary([0.5, float("nan")])


def test_welch_t_and_effect_sizes():
    a, b = np.array(A), np.array([0.80, 0.81, 0.82, 0.83])
    result = stats.welch_t(a, b)
    reference = scipy_stats.ttest_ind(a, b, equal_var=False)
    assert result["t"] == pytest.approx(reference.statistic)
    assert result["p"] == pytest.approx(reference.pvalue)
    pooled = math.sqrt((4 * a.var(ddof=1) + 3 * b.var(ddof=1)) / 7)
    d = (a.mean() - b.mean()) / pooled
    assert result["cohen_d"] == pytest.approx(d)
    assert result["hedges_g"] == pytest.approx(d * (1 - 3 / (4 * 9 - 9)))


def test_seed_test_chooses_paired_or_welch():
    a = dict(enumerate(A))
    b = dict(enumerate(B))
    paired = stats.seed_test(a, b)
    assert paired["test"] == "paired_t"
    assert paired["p"] == pytest.approx(0.013236, abs=5e-7)
    b_other = {s + 10: v for s, v in b.items()}
    welch = stats.seed_test(a, b_other)
    assert welch["test"] == "welch_t"
    assert welch["p"] == pytest.approx(scipy_stats.ttest_ind(A, B, equal_var=False).pvalue)
    none = stats.seed_test({0: 0.5}, {0: 0.4})
    assert none["test"] == "none" and math.isnan(none["p"])


def test_paired_t_rejects_bad_input():
    with pytest.raises(ValueError):
        stats.paired_t([1.0, 2.0], [1.0])
    with pytest.raises(ValueError):
        stats.paired_t([1.0], [2.0])


def test_holm_leaves_nan_out_of_the_family():
    result = stats.holm([0.01, float("nan"), 0.04])
    np.testing.assert_allclose(result["p_adjusted"][[0, 2]], [0.02, 0.04])
    assert math.isnan(result["p_adjusted"][1]) and not result["reject"][1]
    with pytest.raises(ValueError):
        stats.holm([1.5])


def test_seed_level_aa_rejection_rate_is_nominal():
    # 400 simulated A/A comparisons of 5 seeds: same generator, shared per-seed effect.
    rng = np.random.default_rng(2024)
    rejections = 0
    for _ in range(400):
        seed_effect = rng.normal(0.0, 0.01, size=5)
        a = 0.85 + seed_effect + rng.normal(0.0, 0.005, size=5)
        b = 0.85 + seed_effect + rng.normal(0.0, 0.005, size=5)
        rejections += stats.paired_t(a, b)["p"] < 0.05
    assert 0.02 <= rejections / 400 <= 0.09


# --- Properties ---------------------------------------------------------------------------------

_value = st.integers(0, 1000).map(lambda k: k / 1000)
_pair = st.integers(2, 8).flatmap(
    lambda n: st.tuples(
        st.lists(_value, min_size=n, max_size=n), st.lists(_value, min_size=n, max_size=n)
    )
)


def _spread(a, b) -> float:
    return float(np.std(np.subtract(a, b), ddof=1))


@given(_pair)
def test_paired_t_antisymmetric(pair):
    a, b = pair
    assume(_spread(a, b) > 1e-3)
    forward, backward = stats.paired_t(a, b), stats.paired_t(b, a)
    assert backward["t"] == pytest.approx(-forward["t"], rel=1e-9, abs=1e-9)
    assert backward["p"] == pytest.approx(forward["p"], rel=1e-9, abs=1e-12)
    assert backward["mean_diff"] == pytest.approx(-forward["mean_diff"], abs=1e-12)


@given(_pair, st.integers(-4, 4).map(lambda k: k / 4))
def test_paired_t_invariant_to_a_common_shift(pair, shift):
    a, b = pair
    assume(_spread(a, b) > 1e-2)
    base = stats.paired_t(a, b)
    shifted = stats.paired_t(np.add(a, shift), np.add(b, shift))
    assert shifted["t"] == pytest.approx(base["t"], rel=1e-6, abs=1e-9)
    assert shifted["p"] == pytest.approx(base["p"], rel=1e-6, abs=1e-12)


# statsmodels' multipletests runs gc.collect() on every call (~0.1 s here): few examples.
@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=12))
def test_holm_properties(pvalues):
    p = np.array(pvalues)
    adjusted = stats.holm(p)["p_adjusted"]
    assert np.all(adjusted >= p - 1e-12)
    assert np.all(adjusted <= 1.0)
    order = np.argsort(p, kind="stable")
    assert np.all(np.diff(adjusted[order]) >= -1e-12)


@given(st.lists(_value, min_size=1, max_size=10))
def test_seed_summary_interval_contains_the_mean(values):
    result = stats.seed_summary(values)
    if result["n"] == 1:
        assert math.isnan(result["ci_low"])
    else:
        assert result["ci_low"] <= result["mean"] <= result["ci_high"]


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**16), st.integers(12, 30))
def test_bootstrap_of_identical_scores_is_zero(seed, n):
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, 3, size=n)
    scores = rng.random((n, 3))
    result = stats.paired_bootstrap(accuracy, targets, scores, scores.copy(), 49, seed=seed)
    assert result["diff"] == 0.0
    assert result["ci_low"] <= 0.0 <= result["ci_high"]
    assert not result["excludes_zero"]


# --- Cross-task summaries -----------------------------------------------------------------------


def test_mean_ranks_and_win_tie_loss():
    table = pd.DataFrame({"t1": [0.9, 0.8, 0.7], "t2": [0.5, 0.6, np.nan]}, index=["a", "b", "c"])
    ranks = stats.mean_ranks(table)
    assert ranks.to_dict() == {"a": 1.5, "b": 1.5, "c": 3.0}
    comparisons = pd.DataFrame(
        {
            "method": ["a", "a", "b", "b"],
            "task": ["t1", "t2", "t1", "t2"],
            "ci_low": [0.01, -0.02, -0.05, np.nan],
            "ci_high": [0.03, 0.01, -0.01, np.nan],
        }
    )
    counts = stats.win_tie_loss(comparisons)
    assert counts.loc["a"].to_dict() == {"win": 1, "tie": 1, "loss": 0, "untested": 0}
    assert counts.loc["b"].to_dict() == {"win": 0, "tie": 0, "loss": 1, "untested": 1}


def test_friedman_and_nemenyi_reject_bad_shapes():
    with pytest.raises(ValueError):
        stats.friedman(np.ones((4, 2)))
    with pytest.raises(ValueError):
        stats.friedman([[1.0, 2.0, np.nan], [1.0, 2.0, 3.0]])
    with pytest.raises(ValueError):
        stats.nemenyi_cd(1, 4)
