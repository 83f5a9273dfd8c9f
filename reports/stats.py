"""Statistics for comparing methods: pure functions over numbers, thin wrappers over libraries.

Every test here is the library's own (scipy, statsmodels, scikit-learn); this module only
chooses the test, shapes its inputs and names its outputs. The numbers a correct
implementation reproduces are in REFERENCE.md section 8 and pinned in
``tests/reports/test_stats.py``.

Two levels of evidence, two kinds of test:

* seed level (training randomness): one metric value per pre-training/probe seed.
  :func:`seed_summary` gives a 95% t-interval; :func:`seed_test` compares two methods with a
  paired t-test when both were run on the same seeds, Welch's t-test otherwise.
  There is deliberately no Wilcoxon signed-rank test across seeds: with 5 pairs the smallest
  exact two-sided p-value is 2 / 2**5 = 0.0625 (:func:`wilcoxon_min_p`), so it can never reject
  at 0.05 however large the difference.
* item level (test-set sampling): per-clip predictions of the seeds of two methods.
  :func:`paired_bootstrap` resamples test clips (the same clips for both methods) and gives a
  BCa interval of the metric difference; :func:`mcnemar_exact` compares two single runs on
  per-item correctness.

Cross-task summaries (:func:`friedman`, :func:`nemenyi_cd`, :func:`mean_ranks`,
:func:`win_tie_loss`) are descriptive: with 4 tasks the Nemenyi critical difference for 9
methods is 6.006 mean ranks, so rank tests cannot separate methods.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests

from benchmark.evaluation.metrics import RUN_STACKED, SEED_POOLABLE

__all__ = [
    "friedman",
    "holm",
    "mcnemar_exact",
    "mcnemar_from_table",
    "mean_ranks",
    "nemenyi_cd",
    "paired_bootstrap",
    "paired_bootstrap_many",
    "paired_t",
    "seed_summary",
    "seed_test",
    "welch_t",
    "wilcoxon_min_p",
    "win_tie_loss",
]


def _as_1d(values, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    return array


# ---------------------------------------------------------------------------------------------
# Seed level
# ---------------------------------------------------------------------------------------------


def seed_summary(values, confidence: float = 0.95) -> dict:
    """Mean, standard deviation (ddof=1) and t-interval of the mean over seeds.

    The interval is scipy's ``ttest_1samp(values, 0).confidence_interval(confidence)``,
    i.e. ``mean ± t_{n-1} * std / sqrt(n)``. With one seed, std and the interval are nan.

    Returns ``dict(mean, std, n, ci_low, ci_high)``.
    Raises ``ValueError`` when ``values`` is empty, not 1-D, or holds a non-finite value.
    """
    array = _as_1d(values, "values")
    if array.size == 0:
        raise ValueError("seed_summary needs at least one value")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"seed_summary got non-finite values: {array.tolist()}")
    mean = float(array.mean())
    if array.size == 1:
        return dict(mean=mean, std=math.nan, n=1, ci_low=math.nan, ci_high=math.nan)
    if np.ptp(array) == 0.0:
        # scipy's t statistic is 0/0 here; the interval of a constant sample is the point.
        return dict(mean=mean, std=0.0, n=int(array.size), ci_low=mean, ci_high=mean)
    std = float(array.std(ddof=1))
    interval = stats.ttest_1samp(array, 0.0).confidence_interval(confidence)
    return dict(
        mean=mean,
        std=std,
        n=int(array.size),
        ci_low=float(interval.low),
        ci_high=float(interval.high),
    )


def paired_t(a, b, confidence: float = 0.95) -> dict:
    """Paired t-test of ``a - b`` (scipy ``ttest_rel``) with its confidence interval.

    ``d_z`` is the standardised mean difference of paired samples: mean of the differences
    divided by their standard deviation (ddof=1); ``d_z = t / sqrt(n)``.

    Returns ``dict(t, df, p, mean_diff, ci_low, ci_high, d_z)``.
    Raises ``ValueError`` when the samples differ in length or have fewer than 2 pairs.
    """
    a = _as_1d(a, "a")
    b = _as_1d(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.size} vs {b.size}")
    if a.size < 2:
        raise ValueError("a paired t-test needs at least 2 pairs")
    result = stats.ttest_rel(a, b)
    interval = result.confidence_interval(confidence)
    diffs = a - b
    sd = float(diffs.std(ddof=1))
    return dict(
        t=float(result.statistic),
        df=float(result.df),
        p=float(result.pvalue),
        mean_diff=float(diffs.mean()),
        ci_low=float(interval.low),
        ci_high=float(interval.high),
        d_z=float(diffs.mean() / sd) if sd > 0 else math.nan,
    )


def welch_t(a, b, confidence: float = 0.95) -> dict:
    """Welch's unequal-variance t-test of ``mean(a) - mean(b)`` (scipy ``ttest_ind``).

    Effect sizes: ``cohen_d`` is the mean difference over the pooled standard deviation
    ``sqrt(((n_a-1) s_a^2 + (n_b-1) s_b^2) / (n_a + n_b - 2))``; ``hedges_g`` multiplies it by
    the small-sample correction ``1 - 3 / (4 (n_a + n_b) - 9)`` (Hedges & Olkin 1985), which
    matters with 5 seeds per method (factor 0.903).

    Returns ``dict(t, df, p, mean_diff, ci_low, ci_high, cohen_d, hedges_g)``; ``df`` is the
    Welch–Satterthwaite value. Raises ``ValueError`` when a sample has fewer than 2 values.
    """
    a = _as_1d(a, "a")
    b = _as_1d(b, "b")
    if a.size < 2 or b.size < 2:
        raise ValueError("Welch's t-test needs at least 2 values per sample")
    result = stats.ttest_ind(a, b, equal_var=False)
    interval = result.confidence_interval(confidence)
    n_a, n_b = a.size, b.size
    pooled = math.sqrt(((n_a - 1) * a.var(ddof=1) + (n_b - 1) * b.var(ddof=1)) / (n_a + n_b - 2))
    mean_diff = float(a.mean() - b.mean())
    cohen_d = mean_diff / pooled if pooled > 0 else math.nan
    return dict(
        t=float(result.statistic),
        df=float(result.df),
        p=float(result.pvalue),
        mean_diff=mean_diff,
        ci_low=float(interval.low),
        ci_high=float(interval.high),
        cohen_d=cohen_d,
        hedges_g=cohen_d * (1.0 - 3.0 / (4.0 * (n_a + n_b) - 9.0)),
    )


def seed_test(a_by_seed: Mapping, b_by_seed: Mapping, confidence: float = 0.95) -> dict:
    """Compare two methods over seeds: paired t when their seed sets match, Welch otherwise.

    Pairing by seed is only meaningful when seed ``s`` fixes the same randomness (data order,
    probe initialisation) for both methods, which is how the harness seeds runs. When the
    seed sets differ (a run failed, or methods were run on different seeds), all values of
    each method are compared with Welch's test instead.

    Returns the chosen test's dict (see :func:`paired_t`, :func:`welch_t`) plus ``test``
    (``"paired_t"``, ``"welch_t"``, or ``"none"`` when a method has fewer than 2 seeds; then
    every number is nan) and ``n_a``, ``n_b``.
    """
    n_a, n_b = len(a_by_seed), len(b_by_seed)
    if set(a_by_seed) == set(b_by_seed) and n_a >= 2:
        seeds = sorted(a_by_seed)
        result = paired_t([a_by_seed[s] for s in seeds], [b_by_seed[s] for s in seeds], confidence)
        return dict(result, test="paired_t", n_a=n_a, n_b=n_b)
    if n_a >= 2 and n_b >= 2:
        result = welch_t(list(a_by_seed.values()), list(b_by_seed.values()), confidence)
        return dict(result, test="welch_t", n_a=n_a, n_b=n_b)
    nan = math.nan
    return dict(
        t=nan, df=nan, p=nan, mean_diff=nan, ci_low=nan, ci_high=nan, test="none", n_a=n_a, n_b=n_b
    )


def wilcoxon_min_p(n: int) -> float:
    """Smallest two-sided p-value an exact Wilcoxon signed-rank test can give with ``n`` pairs.

    Computed by scipy on the most extreme data (all ``n`` differences positive); equals
    ``2 / 2**n``: 0.0625 for 5 seeds, which is why reports use no Wilcoxon test across seeds.
    Raises ``ValueError`` when ``n < 1``.
    """
    if n < 1:
        raise ValueError("n must be at least 1")
    return float(stats.wilcoxon(np.arange(1.0, n + 1.0), method="exact").pvalue)


# ---------------------------------------------------------------------------------------------
# Multiple comparisons
# ---------------------------------------------------------------------------------------------


def holm(pvalues, alpha: float = 0.05) -> dict:
    """Holm step-down adjustment (statsmodels ``multipletests(method="holm")``).

    nan entries (tests that could not be run) stay nan, are not rejected and do not count
    towards the family size: the family is the set of tests actually carried out.

    Returns ``dict(p_adjusted=ndarray, reject=ndarray[bool])`` in the input order.
    Raises ``ValueError`` when a p-value lies outside [0, 1].
    """
    p = _as_1d(pvalues, "pvalues")
    finite = np.isfinite(p)
    if np.any((p[finite] < 0) | (p[finite] > 1)):
        raise ValueError(f"p-values must lie in [0, 1], got {p.tolist()}")
    adjusted = np.full(p.shape, np.nan)
    reject = np.zeros(p.shape, dtype=bool)
    if finite.any():
        reject[finite], adjusted[finite], _, _ = multipletests(p[finite], alpha, method="holm")
    return dict(p_adjusted=adjusted, reject=reject)


# ---------------------------------------------------------------------------------------------
# Item level: bootstrap and McNemar (the metrics are benchmark.evaluation.metrics.ITEM_METRICS)
# ---------------------------------------------------------------------------------------------


def _runs(scores) -> list[np.ndarray]:
    # One array = one run; a list/tuple = several seeds of a method on the same clips.
    if isinstance(scores, list | tuple):
        return [np.asarray(s) for s in scores]
    return [np.asarray(scores)]


def paired_bootstrap_many(
    metric_fn: Callable,
    targets,
    scores_by_method: Mapping[str, object],
    baseline: str,
    n_resamples: int = 2000,
    seed=0,
    confidence: float = 0.95,
    method: str = "BCa",
) -> dict[str, dict]:
    """Item-level bootstrap of ``metric(method) - metric(baseline)`` for several methods at once.

    Test clips are resampled with replacement (the same resampled clips for every method and
    seed, so the comparison is paired) and ``scipy.stats.bootstrap`` forms the interval
    (BCa by default; its acceleration uses a jackknife over the clips). A method's metric is
    the mean over its seeds of ``metric_fn(targets, scores_seed)``, which is what the
    leaderboard reports. Sharing one bootstrap between all methods computes the baseline once
    per resample. Cost: ``n_resamples + n_clips`` evaluations (BCa), each one metric call per
    run, or one call for all runs with a run-stacked metric (``macro_roc_auc``,
    ``macro_pr_auc`` of :mod:`benchmark.evaluation.metrics`).

    ``scores_by_method`` maps a method name to an array (one run) or a list of arrays (seeds),
    each aligned with ``targets`` along axis 0. ``seed`` is passed to
    ``np.random.default_rng`` (an int or a sequence of ints).

    Returns, for every method except the baseline, ``dict(diff, ci_low, ci_high,
    excludes_zero, n_items, method)``. When every resample gives the same difference (e.g.
    identical scores) BCa is undefined and the interval is that single value.
    Raises ``ValueError`` when the baseline is missing or a run's length differs from targets.
    """
    if baseline not in scores_by_method:
        raise ValueError(f"baseline {baseline!r} is not among {sorted(scores_by_method)}")
    targets = np.asarray(targets)
    n_items = targets.shape[0]
    runs = {name: _runs(scores) for name, scores in scores_by_method.items()}
    for name, arrays in runs.items():
        for array in arrays:
            if array.shape[0] != n_items:
                raise ValueError(
                    f"{name}: scores have {array.shape[0]} items, targets have {n_items}"
                )
    others = [name for name in runs if name != baseline]
    if not others:
        return {}
    # Every run stacked on a leading axis; each method owns a contiguous slice of it.
    names = list(runs)
    stacked = np.stack([array for name in names for array in runs[name]])
    bounds = np.cumsum([0] + [len(runs[name]) for name in names])
    owner = {name: slice(bounds[i], bounds[i + 1]) for i, name in enumerate(names)}

    def method_means(idx: np.ndarray) -> dict[str, float]:
        resampled = stacked[:, idx]
        if metric_fn in SEED_POOLABLE:
            return {
                name: metric_fn(
                    np.tile(targets[idx], len(runs[name])), np.concatenate(resampled[part])
                )
                for name, part in owner.items()
            }
        if metric_fn in RUN_STACKED:
            per_run = np.asarray(metric_fn(targets[idx], resampled), dtype=float)
        else:
            per_run = np.array([metric_fn(targets[idx], run) for run in resampled], dtype=float)
        return {name: float(per_run[part].mean()) for name, part in owner.items()}

    def statistic(idx):
        means = method_means(np.asarray(idx, dtype=int))
        # Rounded so that differences equal but for float noise stay exactly tied: BCa's bias
        # correction counts resamples below the point estimate, and discrete metrics
        # (accuracy) tie often.
        return np.round([means[name] - means[baseline] for name in others], 12)

    point = statistic(np.arange(n_items))
    with warnings.catch_warnings():
        # A method identical to the baseline gives a degenerate distribution; scipy warns and
        # returns nan, which is replaced by the point below. Other nans stay visible as nan.
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        warnings.filterwarnings("ignore", "invalid value encountered", RuntimeWarning)
        result = stats.bootstrap(
            (np.arange(n_items),),
            statistic,
            n_resamples=n_resamples,
            vectorized=False,
            confidence_level=confidence,
            method=method,
            rng=np.random.default_rng(seed),
        )
    low = np.atleast_1d(np.asarray(result.confidence_interval.low, dtype=float))
    high = np.atleast_1d(np.asarray(result.confidence_interval.high, dtype=float))
    distribution = np.atleast_2d(result.bootstrap_distribution)
    summary = {}
    for i, name in enumerate(others):
        lo, hi = low[i], high[i]
        if np.all(distribution[i] == distribution[i][0]):
            # Degenerate bootstrap distribution: no spread, so the interval is the point.
            lo = hi = distribution[i][0]
        summary[name] = dict(
            diff=float(point[i]),
            ci_low=float(lo),
            ci_high=float(hi),
            excludes_zero=bool(lo > 0 or hi < 0),
            n_items=int(n_items),
            method=method,
        )
    return summary


def paired_bootstrap(
    metric_fn: Callable[[np.ndarray, np.ndarray], float],
    targets,
    scores_a,
    scores_b,
    n_resamples: int = 2000,
    seed=0,
    confidence: float = 0.95,
    method: str = "BCa",
) -> dict:
    """Item-level bootstrap interval of ``metric(a) - metric(b)`` on the same test clips.

    ``scores_a`` / ``scores_b``: one run's scores (n, C) or (n,), or a list of such arrays
    (seeds; the metric is averaged over them). See :func:`paired_bootstrap_many`.

    Returns ``dict(diff, ci_low, ci_high, excludes_zero, n_items, method)``.
    Raises ``ValueError`` when lengths differ from ``targets``.
    """
    result = paired_bootstrap_many(
        metric_fn,
        targets,
        {"a": scores_a, "b": scores_b},
        baseline="b",
        n_resamples=n_resamples,
        seed=seed,
        confidence=confidence,
        method=method,
    )
    return result["a"]


def mcnemar_from_table(table) -> dict:
    """Exact McNemar test (statsmodels, binomial on the discordant cells) of a 2x2 table.

    ``table[0][1]`` (b) counts items only the first method got right, ``table[1][0]`` (c)
    items only the second got right. Returns ``dict(p, table, b, c)``.
    Raises ``ValueError`` when the table is not 2x2 of non-negative counts.
    """
    table = np.asarray(table)
    if table.shape != (2, 2) or np.any(table < 0):
        raise ValueError(f"McNemar needs a 2x2 table of counts, got {table.tolist()}")
    result = mcnemar(table, exact=True)
    return dict(
        p=float(result.pvalue), table=table.tolist(), b=int(table[0, 1]), c=int(table[1, 0])
    )


def mcnemar_exact(correct_a, correct_b) -> dict:
    """Exact McNemar test of two classifiers from per-item correctness (booleans, same items).

    Table rows: first method right / wrong; columns: second method right / wrong.
    Raises ``ValueError`` when the arrays differ in length.
    """
    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"correctness arrays must be 1-D and equal: {a.shape} vs {b.shape}")
    table = [[int(np.sum(a & b)), int(np.sum(a & ~b))], [int(np.sum(~a & b)), int(np.sum(~a & ~b))]]
    return mcnemar_from_table(table)


# ---------------------------------------------------------------------------------------------
# Cross-task summaries (descriptive)
# ---------------------------------------------------------------------------------------------


def friedman(scores_matrix) -> dict:
    """Friedman chi-square over blocks (rows: tasks) and treatments (columns: methods).

    Descriptive only here: with 4 tasks a significant Friedman statistic cannot be followed by
    post-hoc tests able to separate methods (see :func:`nemenyi_cd`).
    Returns ``dict(chi2, p, n_blocks, k)``. Raises ``ValueError`` with fewer than 3 methods or
    2 tasks, or missing values.
    """
    matrix = np.asarray(scores_matrix, dtype=float)
    if matrix.ndim != 2 or matrix.shape[1] < 3 or matrix.shape[0] < 2:
        raise ValueError(f"Friedman needs >= 2 tasks x >= 3 methods, got shape {matrix.shape}")
    if not np.all(np.isfinite(matrix)):
        raise ValueError("Friedman needs a complete matrix (no missing task x method cells)")
    result = stats.friedmanchisquare(*matrix.T)
    return dict(
        chi2=float(result.statistic),
        p=float(result.pvalue),
        n_blocks=int(matrix.shape[0]),
        k=int(matrix.shape[1]),
    )


def nemenyi_cd(k: int, n: int, alpha: float = 0.05) -> float:
    """Nemenyi critical difference of mean ranks for ``k`` methods over ``n`` tasks (Demšar 2006).

    ``CD = q_alpha * sqrt(k (k + 1) / (6 n))`` with ``q_alpha`` the studentized range quantile
    ``studentized_range.ppf(1 - alpha, k, inf) / sqrt(2)``. For 9 methods and 4 tasks it is
    6.006 mean ranks, nearly the whole range 1..9: descriptive only.
    Raises ``ValueError`` when ``k < 2`` or ``n < 1``.
    """
    if k < 2 or n < 1:
        raise ValueError(f"nemenyi_cd needs k >= 2 methods and n >= 1 tasks, got k={k}, n={n}")
    q_alpha = stats.studentized_range.ppf(1.0 - alpha, k, np.inf) / math.sqrt(2.0)
    return float(q_alpha * math.sqrt(k * (k + 1) / (6.0 * n)))


def mean_ranks(table: pd.DataFrame) -> pd.Series:
    """Mean rank of each method (rows) over tasks (columns); rank 1 = highest score.

    Ties get the average rank; a missing cell is left out of that task's ranking and of the
    method's mean (the count of tasks behind each mean can differ: say so when reporting).
    Descriptive only. Returns a Series sorted from best to worst mean rank.
    """
    ranks = table.rank(axis=0, ascending=False, method="average")
    return ranks.mean(axis=1, skipna=True).sort_values()


def win_tie_loss(
    comparisons: pd.DataFrame,
    low: str = "ci_low",
    high: str = "ci_high",
    by: str = "method",
) -> pd.DataFrame:
    """Count per method the tasks where the item-level interval vs the baseline excludes zero.

    ``comparisons`` has one row per (method, task) with the interval of the difference method
    minus baseline. A win is an interval above zero, a loss one below, a tie one containing
    zero; rows without an interval are counted as ``untested``. Descriptive only: no
    multiplicity correction across tasks.
    Returns a DataFrame indexed by method with columns win, tie, loss, untested.
    """
    lo = comparisons[low].astype(float)
    hi = comparisons[high].astype(float)
    tested = lo.notna() & hi.notna()
    outcome = pd.Series("untested", index=comparisons.index)
    outcome[tested & (lo > 0)] = "win"
    outcome[tested & (hi < 0)] = "loss"
    outcome[tested & (lo <= 0) & (hi >= 0)] = "tie"
    counts = pd.crosstab(comparisons[by], outcome)
    counts = counts.reindex(columns=["win", "tie", "loss", "untested"], fill_value=0)
    counts.columns.name = None
    return counts
