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
  Obuchowski 1997), scaled by ``K / (K - 1)``. Where the test split was drawn within strata
  (FMA small's test split holds 100 tracks of each genre), the clusters are centred within
  their stratum and scaled by ``n_h / (n_h - 1)`` instead (the stratified variance, Cochran
  1977, sec. 5A; Wolter 2007, sec. 1.4): a design that fixes each stratum's share has no
  between-strata sampling variance. :class:`SamplingDesign` does this once, for every caller.

**The comparison** of method ``A`` with its family's baseline ``B`` (one test for every metric):
``D = mean_r S_A,r - mean_r S_B,r`` and

    V       = s2_pooled (1/R_A + 1/R_B) + v_test,  s2_pooled = pooled variance of run scores
    V_items = K/(K-1) sum_k (mean_r psi_A,rk - mean_r psi_B,rk)^2     (df_test d.f.)
    u_X     = K/(K-1) sum_k var_r(psi_X,rk)          (ddof 1; df_test (R_X - 1) d.f.)
    v_test  = V_items - u_A / R_A - u_B / R_B   if F = V_items / (u_A/R_A + u_B/R_B) exceeds
              its 75% point under "no test-set difference", else 0
    df      = V^2 / [ V_training^2 / (R_A + R_B - 2) + T ],
    T       = V_items^2 / df_test + (u_A/R_A)^2 / (df_test (R_A-1)) + (u_B/R_B)^2 / (df_test (R_B-1))
              where v_test > 0, else 0

with a t interval and two-sided p on ``df`` degrees of freedom (Welch 1947, Satterthwaite
1946). ``df_test`` is ``K - 1`` for clusters drawn freely and ``K - H`` for ``H`` strata.

Why: the run scores on this test set vary by training randomness and by how each run's own
errors fall on the items; ``s2`` holds both, whatever their sizes. What ``s2`` cannot show is
how the test set, drawn again, would move the difference of the methods' *average*
predictors: that is ``V_items`` less its expected share of the runs' own noise
(``E[V_items] = true test-set variance + u_A/R_A + u_B/R_B``), so ``v_test`` is unbiased
before truncation. The pre-test ("sometimes pool", Bancroft 1944; level 0.25 as Bozivich,
Bancroft & Hartley 1956 recommend) drops it where it cannot be told from the noise, and ``T``
(Satterthwaite for a difference of mean squares) charges its imprecision where it is kept:
:func:`_test_set_part`, and the README's calibration figures. With fewer than 2 runs on
either side there is no estimate of training randomness and no test ("not testable (one
pre-training run)").

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
    "SamplingDesign",
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
        psi: ``(R, K)`` each run's cluster influences (mean over its probe seeds), from
            :meth:`SamplingDesign.influences`.
        test_df: degrees of freedom of the test-set variance (:attr:`SamplingDesign.df`; None:
            ``K - 1``, clusters drawn freely).
    """

    method: str
    seeds: np.ndarray
    probe_values: np.ndarray
    psi: np.ndarray
    test_df: int | None = None

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


@dataclass(frozen=True)
class SamplingDesign:
    """How a task's test items were sampled: in clusters (``groups``, one label per item),
    optionally within strata (``strata``, one label per item: a stratified split such as FMA
    small's, which holds the same number of test tracks of every genre).

    :meth:`influences` turns item influences into cluster influences whose sum of squares,
    times ``K / (K - 1)``, is the design's variance of the score, so that every function of
    this module treats a stratified design exactly as a free one, with :attr:`df` degrees of
    freedom (``K - 1`` free, ``K - H`` with ``H`` strata). A cluster whose items fall in several
    strata counts in its most frequent one (ties: the first label); a stratum with a single
    cluster adds no variance and no degree of freedom (it cannot show its spread).
    """

    groups: np.ndarray
    strata: np.ndarray | None = None

    @classmethod
    def of(cls, groups, strata=None) -> SamplingDesign:
        groups = np.asarray(groups)
        if strata is not None:
            strata = np.asarray(strata)
            if strata.shape != groups.shape:
                raise ValueError(f"strata {strata.shape} and groups {groups.shape} differ in shape")
        return cls(groups, strata)

    @property
    def labels(self) -> np.ndarray:
        """The cluster labels in the order of :meth:`influences`' last axis (sorted)."""
        return np.unique(self.groups)

    @property
    def num_clusters(self) -> int:
        return len(self.labels)

    def cluster_strata(self) -> np.ndarray | None:
        """Each cluster's stratum (``(K,)``, in :attr:`labels` order), or None (no strata)."""
        if self.strata is None:
            return None
        labels, index = np.unique(self.groups, return_inverse=True)
        values, stratum = np.unique(self.strata, return_inverse=True)
        counts = np.zeros((len(labels), len(values)), dtype=int)
        np.add.at(counts, (index, stratum), 1)
        return values[np.argmax(counts, axis=1)]

    def mixed_clusters(self) -> int:
        """How many clusters have items in more than one stratum."""
        if self.strata is None:
            return 0
        pairs = np.unique(np.stack([self.groups.astype(str), self.strata.astype(str)]), axis=1)
        return int(len(pairs[0]) - len(np.unique(pairs[0])))

    @property
    def df(self) -> int:
        """Degrees of freedom of the test-set variance: ``K - 1``, or ``sum_h (n_h - 1)``."""
        strata = self.cluster_strata()
        if strata is None:
            return max(self.num_clusters - 1, 0)
        _, sizes = np.unique(strata, return_counts=True)
        return int(np.sum(sizes - 1))

    def influences(self, psi_items) -> np.ndarray:
        """Item influences ``(..., n)`` -> cluster influences ``(..., K)`` (module docstring).

        Free clusters: the per-cluster sums (:func:`cluster_sums`). Strata: each cluster's sum
        minus its stratum's mean, times ``sqrt(c_h / c)`` with ``c_h = n_h / (n_h - 1)`` and
        ``c = K / (K - 1)``, so that ``c * sum_k psi_k^2`` is the stratified variance
        ``sum_h c_h sum_(k in h) (s_k - mean_h s)^2``.
        """
        sums, _ = cluster_sums(psi_items, self.groups)
        strata = self.cluster_strata()
        if strata is None:
            return sums
        k = sums.shape[-1]
        out = np.zeros_like(sums)
        for value in np.unique(strata):
            members = strata == value
            n_h = int(members.sum())
            if n_h < 2:
                continue
            part = sums[..., members]
            scale = math.sqrt((n_h / (n_h - 1)) / _k_factor(k))
            out[..., members] = scale * (part - part.mean(axis=-1, keepdims=True))
        return out


def components(run_set: RunSet) -> dict:
    """Mean over runs and its three sources of variance.

    Returns ``mean``, ``runs``, ``probe_seeds``, ``sd_between`` (SD of the run scores, ddof 1:
    training randomness as observed, probe noise included), ``sd_probe`` (pooled within-run SD
    of probe seeds), ``sd_training`` (``sqrt(max(0, sd_between^2 - sd_probe^2 / P))``: training
    alone), ``se_test`` (test-set sampling SE of the method's mean), ``sd_test_run`` (test-set
    sampling SD of one run's score, root mean square over runs), ``u`` (run x item variance of
    one run's score), ``clusters``, ``test_df`` (degrees of freedom of the test-set variance);
    nan where undefined (one run, one probe seed).
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
        "test_df": _df_test(run_set.test_df, k),
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
    test_df: int | None = None,
) -> dict[str, np.ndarray]:
    """Method A versus baseline B with training and test-set variance (module docstring).

    Vectorised over leading axes: ``scores_a (..., R_A)``, ``scores_b (..., R_B)``,
    ``psi_a (..., R_A, K)``, ``psi_b (..., R_B, K)``. Returns arrays of shape ``(...)``:
    ``diff``, ``var`` (``V``), ``var_training``, ``var_test`` (``v_test``), ``df``, ``t``,
    ``p`` (two-sided), ``ci_low``, ``ci_high``. Where ``V`` is 0 (identical results) ``p`` is
    1 and the interval is the point. ``test_df``: degrees of freedom of the test-set part
    (:attr:`SamplingDesign.df`; None: ``K - 1``).

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
        test_df=_df_test(test_df, k),
        confidence=confidence,
    )


def contrast_test(
    scores: list[np.ndarray],
    psi: list[np.ndarray],
    weights,
    confidence: float = 0.95,
    test_df: int | None = None,
) -> dict[str, float]:
    """A linear contrast ``L = sum_j c_j mean_r S_j,r`` of ``J`` methods' run means, with the
    same two variance components as :func:`combined_test` (which is the contrast ``(1, -1)``):

        V_training = s2_pooled sum_j c_j^2 / R_j,  s2_pooled over all J methods (N - J df)
        V_items    = K/(K-1) sum_k (sum_j c_j mean_r psi_j,rk)^2
        v_test     = V_items - sum_j c_j^2 u_j / R_j  (where the pre-test keeps it, else 0)
        df         = V^2 / [ V_training^2 / (N - J) + T ]

    with the pre-test and the Satterthwaite term ``T`` of :func:`_test_set_part`.

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
    var_test, test_part = _test_set_part(
        items,
        [(cj**2 * uj / rj, rj - 1) for cj, uj, rj in zip(c, u, runs, strict=True)],
        _df_test(test_df, k),
    )
    var_test, test_part = float(var_test), float(test_part)
    var = var_training + var_test
    estimate = float(sum(cj * x.mean() for cj, x in zip(c, scores, strict=True)))
    if not math.isfinite(var):
        raise ValueError("the contrast's variance is not finite: non-finite run scores?")
    denominator = var_training**2 / df_training + test_part
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


PRETEST_LEVEL = 0.25  # Bozivich, Bancroft & Hartley (1956): the level for pooling mean squares


def _test_set_part(items, runs_noise, test_df):
    """The test-set variance of a comparison and its term of the Satterthwaite denominator.

    ``items``: the paired test-set variance ``V_items`` (mean square on ``df_test`` degrees of
    freedom); ``runs_noise``: per method ``(c_j^2 u_j / R_j, R_j - 1)``, the part of
    ``V_items`` that the runs' own item noise puts there, each a mean square on
    ``df_test (R_j - 1)`` degrees of freedom. Returns ``(v_test, term)``:

    * ``v_test = V_items - sum_j c_j^2 u_j / R_j`` when an F test finds ``V_items`` above the
      runs' noise at :data:`PRETEST_LEVEL` (Satterthwaite's degrees of freedom for the
      noise's sum), else 0: the "sometimes pool" rule (Bancroft 1944; Bozivich, Bancroft &
      Hartley 1956). Without it, the truncated estimate is pure noise when the methods'
      average predictors do not differ, and equal methods came out significant 2.8% of the
      time, not 5%, where the between-run variance is small beside ``u`` (3.8% now);
    * ``term = V_items^2 / df_test + sum_j (c_j^2 u_j / R_j)^2 / (df_test (R_j - 1))`` when
      ``v_test > 0``: Satterthwaite (1946) for a linear combination of mean squares. Counting
      ``v_test`` as one mean square on ``df_test`` degrees of freedom, as if nothing had been
      subtracted, overstates its precision: methods equal on average but different item by
      item came out significant 7.4-8.0% of the time there (4.0-4.1% now).

    Both figures: ``tests/reports/test_variance.py``. Where ``s2`` is that small, methods
    that differ item by item by less than the runs' noise cannot be told from equal ones on
    one test set, and no rule keeps both kinds of null at 5%: :func:`calibrate` measures the
    worst rate per task (``worst_null_rate``) and the report prints it.

    Vectorised over the leading axes of ``items`` and of the noise values.
    """
    df = max(int(test_df), 1)
    items = np.asarray(items, dtype=float)
    noise = [np.asarray(value, dtype=float) for value, _ in runs_noise]
    noise_df = [df * max(int(r), 1) for _, r in runs_noise]
    total = sum(noise) if noise else np.zeros_like(items)
    with np.errstate(invalid="ignore", divide="ignore"):
        spread = sum(x**2 / d for x, d in zip(noise, noise_df, strict=True)) if noise else 0.0
        df_noise = np.where(spread > 0, total**2 / spread, np.inf)
        critical = stats.f.ppf(1 - PRETEST_LEVEL, df, np.minimum(df_noise, 1e9))
        pooled = items > critical * total
        var_test = np.where(pooled, np.maximum(items - total, 0.0), 0.0)
        term = np.where(var_test > 0, items**2 / df + spread, 0.0)
    return var_test, term


def _df_test(test_df: int | None, clusters: int) -> int:
    """The test-set part's degrees of freedom: as given, else ``K - 1`` (clusters drawn freely)."""
    return int(test_df) if test_df is not None else max(clusters - 1, 0)


def _test(diff, squares, runs, items, u, test_df, confidence=0.95) -> dict[str, np.ndarray]:
    """The test from its sufficient statistics: ``squares`` = both methods' sums of squared
    run-score deviations, ``items`` = ``V_items``, ``u`` = ``(u_A, u_B)``."""
    ra, rb = runs
    df_training = ra + rb - 2
    # Training randomness pooled over the two methods (the same pipeline, the same number of
    # runs by design, which keeps the pooled t robust to unequal variances; Welch's separate
    # variances are conservative with 3 runs a side: 3.3% false positives at alpha 0.05).
    var_training = squares / df_training * (1 / ra + 1 / rb)
    var_test, test_part = _test_set_part(items, [(u[0] / ra, ra - 1), (u[1] / rb, rb - 1)], test_df)
    var = var_training + var_test
    if not np.all(np.isfinite(var)):
        raise ValueError("the comparison's variance is not finite: non-finite run scores?")
    with np.errstate(invalid="ignore", divide="ignore"):
        denominator = var_training**2 / df_training + test_part
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
    each (run scores N(0, sd_run^2); per-run cluster influences N(0, u / K), centred as real
    influences are, so ``K - 1`` degrees of freedom), drawn through their exact distributions
    (normal and chi-square), so that any number of runs costs the same."""
    k = clusters
    factor = _k_factor(k)
    diff = rng.normal(0.0, sd_run * math.sqrt(2 / runs), reps)
    squares = sd_run**2 * rng.chisquare(2 * (runs - 1), reps)
    cell = u / k  # variance of one cluster influence of one run
    items = factor * cell * (2 / runs) * rng.chisquare(k - 1, reps)
    u_hat = [
        factor * cell * rng.chisquare((k - 1) * (runs - 1), reps) / (runs - 1) for _ in range(2)
    ]
    return {"diff": diff, "squares": squares, "items": items, "u": tuple(u_hat)}


def calibrate(
    sd_run: float,
    u: float,
    clusters: int,
    runs: int,
    *,
    test_df: int | None = None,
    alpha: float = 0.05,
    reps: int = 4000,
    seed: int = 0,
    target_power: float = 0.8,
    planted: float = 0.01,
    max_runs: int = 200,
    spreads: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0),
) -> dict:
    """Simulate the comparison machinery with measured variance components.

    Two methods with ``runs`` pre-training runs each, run scores of SD ``sd_run`` (the
    measured between-run SD) and per-run test-set influences of total variance ``u`` over
    ``clusters`` clusters (the measured run x item part), centred as real influences are; a
    stratified design (``test_df`` = ``K - H``) is simulated as ``test_df + 1`` free clusters,
    which have the same degrees of freedom:

    * A/A (equal methods, ``reps`` times, through :func:`combined_test` on simulated arrays):
      ``false_positive_rate`` = share of p < alpha, with its binomial standard error;
    * equal means, different items (``reps`` times per spread): two methods equal on average
      over test sets whose average predictors differ cluster by cluster, with a test-set
      variance of their difference of ``spread * u / runs`` (the scale at which it is hardest
      to tell from the runs' own item noise), for each of ``spreads``; the difference the
      test set happens to show is in the run scores, as in the benchmark.
      ``worst_null_rate`` = the largest share of p < alpha over the spreads, at
      ``worst_null_spread``: what a marker risks when methods differ item by item;
    * power (the same statistics with a planted difference added to A's runs):
      ``min_detectable`` = the smallest difference detected (p < alpha, right sign) with
      ``target_power``, and ``runs_for_planted`` = the fewest runs per method that detect a
      difference of ``planted`` with that power (None beyond ``max_runs``).
    """
    clusters = max(_df_test(test_df, clusters) + 1, 2)
    rng = np.random.default_rng(seed)
    scale = math.sqrt(u / clusters) if u > 0 else 0.0

    def influences():
        draw = rng.normal(0.0, scale, (reps, runs, clusters))
        return draw - draw.mean(axis=-1, keepdims=True)

    scores_a = rng.normal(0.0, sd_run, (reps, runs))
    scores_b = rng.normal(0.0, sd_run, (reps, runs))
    null = combined_test(scores_a, scores_b, influences(), influences())
    fpr = float(np.mean(null["p"] < alpha))

    worst, worst_spread = fpr, 0.0
    for spread in spreads if u > 0 else ():
        # the population influences of A - B: their sum is the test set's share of D
        item_diff = rng.normal(0.0, math.sqrt(spread * u / runs / clusters), (reps, 1, clusters))
        shift = item_diff.sum(axis=-1)
        result = combined_test(
            rng.normal(0.0, sd_run, (reps, runs)) + shift / 2,
            rng.normal(0.0, sd_run, (reps, runs)) - shift / 2,
            influences() + (item_diff - item_diff.mean(axis=-1, keepdims=True)) / 2,
            influences() - (item_diff - item_diff.mean(axis=-1, keepdims=True)) / 2,
        )
        rate = float(np.mean(result["p"] < alpha))
        if rate > worst:
            worst, worst_spread = rate, spread

    def power(delta, n_runs):
        # Common random numbers: the same null draws for every delta (a planted difference
        # only shifts ``diff``), so the power curve is monotone and the bisection exact.
        stats_ = _null_statistics(
            np.random.default_rng([seed, n_runs]), reps, n_runs, sd_run, u, clusters
        )
        result = _test(stats_["diff"] + delta, stats_["squares"], (n_runs, n_runs),
                       stats_["items"], stats_["u"], clusters - 1)  # fmt: skip
        return float(np.mean((result["p"] < alpha) & (result["diff"] > 0)))

    low, high = 0.0, max(1e-6, 10 * sd_run + 10 * math.sqrt(max(u, 0.0)))
    for _ in range(30):
        mid = 0.5 * (low + high)
        low, high = (low, mid) if power(mid, runs) >= target_power else (mid, high)
    needed = next((r for r in range(2, max_runs + 1) if power(planted, r) >= target_power), None)
    return {
        "false_positive_rate": fpr,
        "fpr_se": math.sqrt(fpr * (1 - fpr) / reps),
        "worst_null_rate": worst,
        "worst_null_spread": worst_spread,
        "reps": reps,
        "runs": runs,
        "min_detectable": high,
        "planted": planted,
        "runs_for_planted": needed,
        "target_power": target_power,
    }
