"""benchmark.evaluation.health against independent numpy computations and known cases."""

from __future__ import annotations

import numpy as np
import pytest

from benchmark.evaluation.health import MIN_RELATIVE_SPREAD, describe, embedding_health


def test_statistics_against_naive_definitions():
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 1.0, size=(50, 8)) * np.arange(1, 9)
    health = embedding_health(x)
    sd = np.array([np.sqrt(np.mean((x[:, d] - x[:, d].mean()) ** 2)) for d in range(8)])
    rms = np.sqrt(np.sum(x**2) / x.size)
    assert health["median_sd"] == pytest.approx(np.median(sd))
    assert health["relative_spread"] == pytest.approx(np.sqrt(np.mean(sd**2)) / rms)
    assert health["varying_dims"] == 1.0
    s = np.linalg.svd(x - x.mean(axis=0), compute_uv=False)
    p = s / s.sum()
    assert health["effective_rank"] == pytest.approx(np.exp(-np.sum(p * np.log(p))))
    assert not health["collapsed"]
    assert (health["num_clips"], health["dim"]) == (50, 8)


def test_effective_rank_counts_directions():
    rng = np.random.default_rng(1)
    one = np.outer(rng.normal(size=40), rng.normal(size=16))
    assert embedding_health(one)["effective_rank"] == pytest.approx(1.0, abs=1e-6)
    iso = rng.normal(size=(4000, 16))
    assert embedding_health(iso)["effective_rank"] > 15.5


def test_constant_embeddings_are_collapsed():
    x = np.full((30, 64), 0.066)
    health = embedding_health(x)
    assert health["collapsed"] and health["relative_spread"] < 1e-12
    assert health["varying_dims"] == 0.0
    assert describe(health).startswith("relative spread ")


def test_rounding_noise_spread_is_collapsed():
    """The measured defect: values ~0.066 that vary across clips by ~8e-7."""
    rng = np.random.default_rng(2)
    x = 0.066 + 8e-7 * rng.normal(size=(100, 640))
    health = embedding_health(x)
    assert health["relative_spread"] < MIN_RELATIVE_SPREAD
    assert health["collapsed"]
    assert health["effective_rank"] > 50  # noise has rank; spread is what tells collapse


@pytest.mark.parametrize("bad", [np.zeros((1, 4)), np.zeros(5), np.array([[np.nan, 1], [1, 1]])])
def test_rejects_unusable_input(bad):
    with pytest.raises(ValueError):
        embedding_health(bad)
