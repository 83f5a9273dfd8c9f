"""Small statistics over plain numbers: thin wrappers over scipy and statsmodels.

* :func:`holm`: Holm's step-down correction within a family of comparisons (the comparisons
  themselves are :mod:`reports.variance`);
* cross-task summaries (:func:`friedman`, :func:`nemenyi_cd`, :func:`mean_ranks`), descriptive:
  with 4 tasks the Nemenyi critical difference for 9 methods is 6.006 mean ranks, so rank
  tests cannot separate methods.

The numbers a correct implementation reproduces are in REFERENCE.md section 8 and pinned in
``tests/reports/test_stats.py``.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

__all__ = ["friedman", "holm", "mean_ranks", "nemenyi_cd"]


def _as_1d(values, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    return array


def holm(pvalues, alpha: float = 0.05) -> dict:
    """Holm step-down adjustment: sorted ``p_(1) <= ... <= p_(m)`` become
    ``max_{j <= i} min(1, (m - j + 1) p_(j))``; rejected where the adjusted p is at most
    ``alpha`` (the values of statsmodels' ``multipletests(method="holm")``, tested; written out
    because that function runs a garbage collection per call, ~1 s in a process holding torch).

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
        values = p[finite]
        order = np.argsort(values, kind="stable")
        m = len(values)
        steps = np.minimum(1.0, (m - np.arange(m)) * values[order])
        corrected = np.empty(m)
        corrected[order] = np.maximum.accumulate(steps)
        adjusted[finite] = corrected
        reject[finite] = corrected <= alpha
    return dict(p_adjusted=adjusted, reject=reject)


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
