"""Pre-training runs as the unit of replication: variance components and the one comparison.

A method's result on a task is measured by ``R`` pre-training runs (seeds), each probed with
``P`` probe seeds on the same test items, which fall into ``K`` clusters (MTAT clips of one
song, NSynth notes of one instrument, FMA tracks of one artist). Three sources of variance:

* training randomness, between runs: ``s2``, the variance (ddof 1) of the run scores
  ``S_r`` (each the mean of its probe seeds' scores) on this test set;
* probe noise, within runs: ``s2_probe``, the pooled variance of the probe seeds of a run,
  which ``s2`` already contains as ``s2_probe / P``;
* test-set sampling, between item clusters: from each run's cluster influences ``psi_rk``
  (the sum over the cluster's items of their influence on the score,
  :func:`benchmark.evaluation.metrics.influence`), whose squares add up to the variance that
  resampling clusters would give (infinitesimal jackknife, Efron 1982; clustered DeLong,
  Obuchowski 1997), scaled by ``K / (K - 1)``.

**The comparison** of method ``A`` with its family's baseline ``B`` (one test for every metric):
``D = mean_r S_A,r - mean_r S_B,r`` and

    V      = s2_pooled (1/R_A + 1/R_B) + v_test,  s2_pooled = pooled variance of run scores
    v_test = max(0, V_items - u_A / R_A - u_B / R_B)
    V_items = K/(K-1) sum_k (mean_r psi_A,rk - mean_r psi_B,rk)^2
    u_X    = K/(K-1) sum_k var_r(psi_X,rk)          (ddof 1)
    df     = V^2 / [ V_training^2 / (R_A + R_B - 2) + v_test^2 / (K - 1) ]

with a t interval and two-sided p on ``df`` degrees of freedom (Welch 1947, Satterthwaite
1946). ``V_items`` is the paired test-set variance of ``D``; part of it, ``u_X / R_X``, comes
from how each run's own errors fall on the items, which the between-run variance ``s2``
already holds, so only the remainder ``v_test`` (how the methods' average predictors differ
item by item) is added: the test-set sampling of the difference itself, without counting the
runs' noise twice. With fewer than 2 runs on either side there is no estimate of training
randomness and no test ("not testable (one pre-training run)").

Everything here is a pure, vectorised function of arrays: the report and the calibration
simulation (:func:`calibrate`) call the same :func:`combined_test`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = [
    "RunSet",
    "calibrate",
    "cluster_sums",
    "combined_test",
    "components",
    "contrast_test",
    "run_interval",
]


@dataclass
class RunSet:
    """One method on one task and metric.

    Attributes:
        method: its name.
        seeds: ``(R,)`` pre-training seeds.
        probe_values: ``(R, P)`` the logged score of each run's probe seeds (nan where a probe
            seed is missing).
        psi: ``(R, K)`` each run's cluster influences (mean over its probe seeds).
    """

    method: str
    seeds: np.ndarray
    probe_values: np.ndarray
    psi: np.ndarray

    @property
    def run_scores(self) -> np.ndarray:
        return np.nanmean(self.probe_values, axis=1)

    @property
    def num_runs(self) -> int:
        return len(self.seeds)


def cluster_sums(psi_items: np.ndarray, clusters) -> tuple[np.ndarray, np.ndarray]:
    """Sum item influences ``(..., n)`` per cluster: ``((..., K), cluster labels (K,))``, the
    clusters in sorted label order."""
    labels, index = np.unique(np.asarray(clusters), return_inverse=True)
    psi_items = np.asarray(psi_items, dtype=np.float64)
    out = np.zeros((*psi_items.shape[:-1], len(labels)))
    np.add.at(out, (..., index), psi_items)
    return out, labels


def _k_factor(num_clusters: int) -> float:
    return num_clusters / (num_clusters - 1) if num_clusters > 1 else 0.0


def components(run_set: RunSet) -> dict:
    """Mean over runs and its three sources of variance.

    Returns ``mean``, ``runs``, ``probe_seeds``, ``sd_between`` (SD of the run scores, ddof 1:
    training randomness as observed, probe noise included), ``sd_probe`` (pooled within-run SD
    of probe seeds), ``sd_training`` (``sqrt(max(0, sd_between^2 - sd_probe^2 / P))``: training
    alone), ``se_test`` (test-set sampling SE of the method's mean), ``sd_test_run`` (test-set
    sampling SD of one run's score, root mean square over runs), ``u`` (run x item variance of
    one run's score), ``clusters``; nan where undefined (one run, one probe seed).
    """
    scores = run_set.run_scores
    r, k = run_set.psi.shape
    values = run_set.probe_values
    p = int(np.max(np.sum(np.isfinite(values), axis=1))) if values.size else 0
    within = [np.nanvar(row, ddof=1) for row in values if np.sum(np.isfinite(row)) >= 2]
    sd_probe = math.sqrt(np.mean(within)) if within else math.nan
    sd_between = float(np.std(scores, ddof=1)) if r >= 2 else math.nan
    training = sd_between**2 - (sd_probe**2 / p if p and math.isfinite(sd_probe) else 0.0)
    factor = _k_factor(k)
    mean_psi = run_set.psi.mean(axis=0)
    return {
        "mean": float(np.mean(scores)),
        "runs": r,
        "probe_seeds": p,
        "clusters": k,
        "sd_between": sd_between,
        "sd_probe": sd_probe,
        "sd_training": math.sqrt(max(training, 0.0)) if math.isfinite(training) else math.nan,
        "se_test": math.sqrt(factor * np.sum(mean_psi**2)),
        "sd_test_run": math.sqrt(factor * np.mean(np.sum(run_set.psi**2, axis=1))),
        "u": float(factor * np.sum(np.var(run_set.psi, axis=0, ddof=1))) if r >= 2 else math.nan,
    }


def combined_test(
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    psi_a: np.ndarray,
    psi_b: np.ndarray,
    confidence: float = 0.95,
) -> dict[str, np.ndarray]:
    """Method A versus baseline B with training and test-set variance (module docstring).

    Vectorised over leading axes: ``scores_a (..., R_A)``, ``scores_b (..., R_B)``,
    ``psi_a (..., R_A, K)``, ``psi_b (..., R_B, K)``. Returns arrays of shape ``(...)``:
    ``diff``, ``var`` (``V``), ``var_training``, ``var_test`` (``v_test``), ``df``, ``t``,
    ``p`` (two-sided), ``ci_low``, ``ci_high``. Where ``V`` is 0 (identical results) ``p`` is
    1 and the interval is the point.

    Raises:
        ValueError: fewer than 2 runs on a side, or cluster counts that differ.
    """
    scores_a, scores_b = np.asarray(scores_a, float), np.asarray(scores_b, float)
    psi_a, psi_b = np.asarray(psi_a, float), np.asarray(psi_b, float)
    ra, rb = scores_a.shape[-1], scores_b.shape[-1]
    if ra < 2 or rb < 2:
        raise ValueError(f"the combined test needs >= 2 runs per method, got {ra} and {rb}")
    k = psi_a.shape[-1]
    if psi_b.shape[-1] != k:
        raise ValueError(f"cluster counts differ: {k} vs {psi_b.shape[-1]}")
    # Without two clusters of test items there is no test-set component (no predictions).
    factor = _k_factor(k) if k >= 2 else 0.0
    return _test(
        diff=scores_a.mean(axis=-1) - scores_b.mean(axis=-1),
        squares=scores_a.var(axis=-1) * ra + scores_b.var(axis=-1) * rb,
        runs=(ra, rb),
        items=factor * np.sum((psi_a.mean(axis=-2) - psi_b.mean(axis=-2)) ** 2, axis=-1),
        u=(
            factor * np.sum(psi_a.var(axis=-2, ddof=1), axis=-1),
            factor * np.sum(psi_b.var(axis=-2, ddof=1), axis=-1),
        ),
        clusters=k,
        confidence=confidence,
    )


def contrast_test(
    scores: list[np.ndarray],
    psi: list[np.ndarray],
    weights,
    confidence: float = 0.95,
) -> dict[str, float]:
    """A linear contrast ``L = sum_j c_j mean_r S_j,r`` of ``J`` methods' run means, with the
    same two variance components as :func:`combined_test` (which is the contrast ``(1, -1)``):

        V_training = s2_pooled sum_j c_j^2 / R_j,  s2_pooled over all J methods (N - J df)
        v_test     = max(0, K/(K-1) sum_k (sum_j c_j mean_r psi_j,rk)^2 - sum_j c_j^2 u_j / R_j)
        df         = V^2 / [ V_training^2 / (N - J) + v_test^2 / (K - 1) ]

    E.g. the slope of the methods' means on a covariate ``x_j`` (the separator study: score
    per dB of SI-SDR) is the contrast ``c_j = (x_j - mean x) / sum_j (x_j - mean x)^2``.

    Args:
        scores: per method, ``(R_j,)`` run scores.
        psi: per method, ``(R_j, K)`` run cluster influences (zeros: no test-set part).
        weights: ``(J,)`` contrast coefficients ``c_j``.

    Returns ``estimate``, ``var``, ``var_training``, ``var_test``, ``df``, ``t``, ``p``
    (two-sided), ``ci_low``, ``ci_high`` (floats).

    Raises:
        ValueError: fewer than 2 runs of a method, lengths that differ, or cluster counts that
            differ.
    """
    c = np.asarray(weights, dtype=float)
    if not (len(scores) == len(psi) == len(c)) or len(c) < 1:
        raise ValueError("scores, psi and weights need one entry per method")
    scores = [np.asarray(x, dtype=float) for x in scores]
    psi = [np.asarray(x, dtype=float) for x in psi]
    runs = np.array([len(x) for x in scores])
    if np.any(runs < 2):
        raise ValueError(f"the contrast test needs >= 2 runs per method, got {runs.tolist()}")
    k = psi[0].shape[-1]
    if any(x.shape != (r, k) for x, r in zip(psi, runs, strict=True)):
        raise ValueError("psi must be (R_j, K) with the same K for every method")
    df_training = int(runs.sum() - len(runs))
    s2 = sum(float(np.sum((x - x.mean()) ** 2)) for x in scores) / df_training
    var_training = s2 * float(np.sum(c**2 / runs))
    factor = _k_factor(k) if k >= 2 else 0.0
    combined = sum(cj * x.mean(axis=0) for cj, x in zip(c, psi, strict=True))
    items = factor * float(np.sum(combined**2))
    u = [factor * float(np.sum(x.var(axis=0, ddof=1))) for x in psi]
    var_test = max(items - float(np.sum(c**2 * np.array(u) / runs)), 0.0)
    var = var_training + var_test
    estimate = float(sum(cj * x.mean() for cj, x in zip(c, scores, strict=True)))
    if not math.isfinite(var):
        raise ValueError("the contrast's variance is not finite: non-finite run scores?")
    denominator = var_training**2 / df_training + var_test**2 / max(k - 1, 1)
    df = var**2 / denominator if denominator > 0 else math.inf
    if var > 0:
        t = estimate / math.sqrt(var)
        p = float(2 * stats.t.sf(abs(t), df))
        half = float(stats.t.ppf(0.5 + confidence / 2, df)) * math.sqrt(var)
    else:
        t = 0.0 if estimate == 0 else math.copysign(math.inf, estimate)
        p, half = (1.0 if estimate == 0 else 0.0), 0.0
    return {
        "estimate": estimate,
        "var": var,
        "var_training": var_training,
        "var_test": var_test,
        "df": float(df),
        "t": float(t),
        "p": p,
        "ci_low": estimate - half,
        "ci_high": estimate + half,
    }


def run_interval(run_scores, confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean of a method's run scores with a t interval over runs (training randomness as
    observed on this test set): ``(mean, low, high)``; the interval is nan with one run."""
    x = np.asarray(run_scores, dtype=float)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + confidence / 2, len(x) - 1)) * float(x.std(ddof=1))
    half /= math.sqrt(len(x))
    return mean, mean - half, mean + half


def _test(diff, squares, runs, items, u, clusters, confidence=0.95) -> dict[str, np.ndarray]:
    """The test from its sufficient statistics: ``squares`` = both methods' sums of squared
    run-score deviations, ``items`` = ``V_items``, ``u`` = ``(u_A, u_B)``."""
    ra, rb = runs
    df_training = ra + rb - 2
    # Training randomness pooled over the two methods (the same pipeline, the same number of
    # runs by design, which keeps the pooled t robust to unequal variances; Welch's separate
    # variances are conservative with 3 runs a side: 3.3% false positives at alpha 0.05).
    var_training = squares / df_training * (1 / ra + 1 / rb)
    var_test = np.maximum(items - u[0] / ra - u[1] / rb, 0.0)
    var = var_training + var_test
    if not np.all(np.isfinite(var)):
        raise ValueError("the comparison's variance is not finite: non-finite run scores?")
    with np.errstate(invalid="ignore", divide="ignore"):
        denominator = var_training**2 / df_training + var_test**2 / max(clusters - 1, 1)
        df = np.where(denominator > 0, var**2 / denominator, np.inf)
        t = np.where(var > 0, diff / np.sqrt(var), np.where(diff == 0, 0.0, np.sign(diff) * np.inf))
        p = np.where(var > 0, 2 * stats.t.sf(np.abs(t), df), np.where(diff == 0, 1.0, 0.0))
        half = np.where(var > 0, stats.t.ppf(0.5 + confidence / 2, df) * np.sqrt(var), 0.0)
    return {
        "diff": diff,
        "var": var,
        "var_training": var_training,
        "var_test": var_test,
        "df": df,
        "t": t,
        "p": p,
        "ci_low": diff - half,
        "ci_high": diff + half,
    }


def _null_statistics(rng, reps, runs, sd_run, u, clusters) -> dict:
    """Sufficient statistics of ``reps`` comparisons of two equal methods with ``runs`` runs
    each (run scores N(0, sd_run^2); per-run cluster influences N(0, u / K)), drawn through
    their exact distributions (normal and chi-square), so that any number of runs costs the
    same."""
    k = clusters
    factor = _k_factor(k)
    diff = rng.normal(0.0, sd_run * math.sqrt(2 / runs), reps)
    squares = sd_run**2 * rng.chisquare(2 * (runs - 1), reps)
    cell = u / k  # variance of one cluster influence of one run
    items = factor * cell * (2 / runs) * rng.chisquare(k, reps)
    u_hat = [factor * cell * rng.chisquare(k * (runs - 1), reps) / (runs - 1) for _ in range(2)]
    return {"diff": diff, "squares": squares, "items": items, "u": tuple(u_hat)}


def calibrate(
    sd_run: float,
    u: float,
    clusters: int,
    runs: int,
    *,
    alpha: float = 0.05,
    reps: int = 4000,
    seed: int = 0,
    target_power: float = 0.8,
    planted: float = 0.01,
    max_runs: int = 200,
) -> dict:
    """Simulate the comparison machinery with measured variance components.

    Two methods with ``runs`` pre-training runs each, run scores of SD ``sd_run`` (the
    measured between-run SD) and per-run test-set influences of total variance ``u`` over
    ``clusters`` clusters (the measured run x item part):

    * A/A (equal methods, ``reps`` times, through :func:`combined_test` on simulated arrays):
      ``false_positive_rate`` = share of p < alpha, with its binomial standard error;
    * power (the same statistics with a planted difference added to A's runs):
      ``min_detectable`` = the smallest difference detected (p < alpha, right sign) with
      ``target_power``, and ``runs_for_planted`` = the fewest runs per method that detect a
      difference of ``planted`` with that power (None beyond ``max_runs``).
    """
    rng = np.random.default_rng(seed)
    scale = math.sqrt(u / clusters) if u > 0 else 0.0
    null = combined_test(
        rng.normal(0.0, sd_run, (reps, runs)),
        rng.normal(0.0, sd_run, (reps, runs)),
        rng.normal(0.0, scale, (reps, runs, clusters)),
        rng.normal(0.0, scale, (reps, runs, clusters)),
    )
    fpr = float(np.mean(null["p"] < alpha))

    def power(delta, n_runs):
        # Common random numbers: the same null draws for every delta (a planted difference
        # only shifts ``diff``), so the power curve is monotone and the bisection exact.
        stats_ = _null_statistics(
            np.random.default_rng([seed, n_runs]), reps, n_runs, sd_run, u, clusters
        )
        result = _test(stats_["diff"] + delta, stats_["squares"], (n_runs, n_runs),
                       stats_["items"], stats_["u"], clusters)  # fmt: skip
        return float(np.mean((result["p"] < alpha) & (result["diff"] > 0)))

    low, high = 0.0, max(1e-6, 10 * sd_run + 10 * math.sqrt(max(u, 0.0)))
    for _ in range(30):
        mid = 0.5 * (low + high)
        low, high = (low, mid) if power(mid, runs) >= target_power else (mid, high)
    needed = next((r for r in range(2, max_runs + 1) if power(planted, r) >= target_power), None)
    return {
        "false_positive_rate": fpr,
        "fpr_se": math.sqrt(fpr * (1 - fpr) / reps),
        "reps": reps,
        "runs": runs,
        "min_detectable": high,
        "planted": planted,
        "runs_for_planted": needed,
        "target_power": target_power,
    }
