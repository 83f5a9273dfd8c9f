"""End-to-end test of reports.build on a small synthetic benchmark (CPU, a few seconds)."""

from __future__ import annotations

import re

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from benchmark.evaluation.metrics import ITEM_METRICS
from reports.build import build_report
from reports.published import PUBLISHED_LABEL

NUM_CLIPS, NUM_TAGS, NUM_CLASSES, SEEDS = 60, 4, 4, range(5)
# Signal strength per method: msa_multi is clearly better; msa_vocals is run on mtat only.
STRENGTH = {"cola": 1.0, "msa_multi": 3.5, "msa_vocals": 1.0}
TAGS = ["guitar", "classical", "slow", "techno"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _synthetic_benchmark():
    rng = np.random.default_rng(123)
    tag_targets = (rng.random((NUM_CLIPS, NUM_TAGS)) < 0.3).astype(int)
    tag_targets[0] = 1
    class_targets = np.arange(NUM_CLIPS) % NUM_CLASSES
    clip_ids = [f"clip{i:03d}" for i in range(NUM_CLIPS)]
    predictions, rows, tag_rows = {}, [], []
    for index, (method, strength) in enumerate(STRENGTH.items()):
        for seed in SEEDS:
            noise = np.random.default_rng([seed, index]).normal
            logits = strength * (2 * tag_targets - 1) + 1.5 * noise(size=tag_targets.shape)
            probabilities = 1 / (1 + np.exp(-logits))
            predictions[(method, "mtat", seed)] = dict(
                clip_ids=clip_ids, targets=tag_targets, scores=probabilities
            )
            for tag, column in zip(TAGS, probabilities.T, strict=True):
                tag_rows.append(
                    dict(method=method, task="mtat", seed=seed, tag=tag, pr_auc=column.mean())
                )
            if method == "msa_vocals":
                continue
            logits = strength * np.eye(NUM_CLASSES)[class_targets] + noise(
                size=(NUM_CLIPS, NUM_CLASSES)
            )
            softmax = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
            # Clip order differs per run: the report must align runs by clip id.
            order = np.random.default_rng([seed, index, 7]).permutation(NUM_CLIPS)
            predictions[(method, "fma", seed)] = dict(
                clip_ids=[clip_ids[i] for i in order],
                targets=class_targets[order],
                scores=softmax[order],
            )
    for (method, task, seed), run in predictions.items():
        names = ["roc_auc", "pr_auc"] if task == "mtat" else ["accuracy", "balanced_accuracy"]
        for name in names:
            value = ITEM_METRICS[name](run["targets"], run["scores"])
            rows.append(dict(method=method, task=task, seed=seed, metric=name, value=value))
    per_tag = pd.DataFrame(tag_rows).assign(roc_auc=0.5)
    per_tag.loc[per_tag["method"] == "msa_vocals", "method"] = "msa_drums"
    return pd.DataFrame(rows), predictions, per_tag


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    scores, predictions, per_tag = _synthetic_benchmark()
    out_dir = tmp_path_factory.mktemp("report")
    extras = {
        "loss_curves": pd.DataFrame(
            [
                dict(method=m, seed=s, step=k, loss=5 / (k + 1) + s * 0.01)
                for m in ("cola", "msa_multi")
                for s in range(2)
                for k in range(10)
            ]
        ),
        "source_activity": pd.DataFrame(
            {
                "source": ["bass", "drums", "vocals", "other"],
                "active": [50, 58, 31, 60],
                "total": 60,
            }
        ),
    }
    paths = build_report(
        out_dir,
        scores,
        predictions,
        per_tag=per_tag,
        provenance={
            "profile": "smoke",
            "config_hash": "abc123",
            "git_commit": "deadbeef",
            "versions": {"numpy": np.__version__},
            "machine": "2-core CPU",
            "stage_compute_s": {"pretrain": 812.5, "probe": 33.25},
            "stage_wall_s": {"pretrain": 12.5, "probe": 3.25},
            "skipped": ["nsynth: dataset not found"],
        },
        extras=extras,
        baseline="cola",
        expected_methods=["cola", "msa_multi", "msa_vocals", "msa_bass"],
        expected_tasks=["mtat", "fma"],
        bootstrap_resamples=99,
        # PR-AUC and balanced accuracy skip the bootstrap to keep the test fast (see stats tests).
        item_metrics=["roc_auc", "accuracy"],
    )
    csv = pd.read_csv(paths["leaderboard.csv"])
    markdown = paths["leaderboard.md"].read_text()
    return dict(paths=paths, scores=scores, csv=csv, markdown=markdown, out_dir=out_dir)


def test_files_exist(report):
    for name in ("leaderboard.csv", "leaderboard.md", "leaderboard.html", "scores_mtat.png",
                 "scores_fma.png", "tagwise_pr_auc.png", "loss_curves.png", "source_activity.png"):  # fmt: skip
        assert name in report["paths"], name
        assert report["paths"][name].stat().st_size > 0


def test_csv_means_equal_an_independent_groupby(report):
    expected = (
        report["scores"]
        .groupby(["method", "task", "metric"])["value"]
        .agg(["mean", "std", "count"])
    )
    got = report["csv"].set_index(["method", "task", "metric"]).loc[expected.index]
    np.testing.assert_allclose(got["mean"], expected["mean"], rtol=1e-12)
    np.testing.assert_allclose(got["std"], expected["std"], rtol=1e-12)
    assert (got["n"] == expected["count"]).all()


def test_clearly_better_method_is_significant(report):
    csv = report["csv"].set_index(["method", "task", "metric"])
    for task, metric in (("mtat", "roc_auc"), ("fma", "accuracy")):
        row = csv.loc[("msa_multi", task, metric)]
        assert row["significant"] and row["direction"] == "better"
        assert row["item_ci_low"] > 0 and row["seed_p_holm"] < 0.05 and row["rank"] == 1
        assert row["seed_test"] == "paired_t"
    assert "▲" in report["markdown"]


def test_item_level_point_estimate_matches_the_scores_table(report):
    # The synthetic scores were computed with the same metric functions from the predictions.
    tested = report["csv"].dropna(subset=["item_diff"])
    assert len(tested) >= 3
    np.testing.assert_allclose(tested["item_diff"], tested["diff"], atol=1e-9)
    skipped = report["csv"][report["csv"]["metric"] == "pr_auc"]
    assert skipped["item_ci_low"].isna().all()
    assert "mtat / pr_auc: item-level interval not requested" in report["markdown"]


def test_holm_adjusted_p_is_not_below_the_raw_p(report):
    compared = report["csv"].dropna(subset=["seed_p"])
    assert (compared["seed_p_holm"] >= compared["seed_p"] - 1e-12).all()
    baseline = report["csv"][report["csv"]["method"] == "cola"]
    assert baseline["is_baseline"].all() and baseline["seed_p"].isna().all()


def test_missing_cells_are_said(report):
    markdown = report["markdown"]
    assert "missing: msa_vocals × fma: no results" in markdown
    assert "missing: msa_bass × mtat: no results" in markdown
    assert "skipped: nsynth: dataset not found" in markdown


def test_provenance_and_reading_guide(report):
    markdown = report["markdown"]
    for text in ("smoke", "abc123", "deadbeef", "2-core CPU", "pretrain", "How to read this report",
                 "95% t-interval over 5 seeds", "Nemenyi critical difference"):  # fmt: skip
        assert text in markdown, text


def test_wall_time_shows_the_compute_behind_the_results_and_the_last_invocation(report):
    """Issue #13: after a resume the table showed only the last rerun's 0.3 s per stage."""
    markdown = report["markdown"]
    assert "| stage | compute (s) | last invocation (s) |" in markdown
    assert "| pretrain | 812.5 | 12.5 |" in markdown


def test_published_rows_are_labelled_and_not_measured(report):
    markdown = report["markdown"]
    assert f"Table 1 — methods comparison: {PUBLISHED_LABEL}" in markdown
    assert f"Table 2 — source-targeted models: {PUBLISHED_LABEL}" in markdown
    assert "CLMR (reported)" in markdown
    csv = report["csv"]
    assert set(csv["method"]) == set(STRENGTH)
    assert "source" not in csv.columns and "clmr" not in set(csv["method"])


def test_html_is_self_contained(report):
    html = report["paths"]["leaderboard.html"].read_text()
    references = re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]+)""", html, flags=re.IGNORECASE)
    assert references, "figures should be embedded"
    assert all(ref.startswith("data:") for ref in references)
    assert "<link" not in html.lower() and "url(" not in html.lower()
    assert "<table" in html


def test_pngs_are_valid(report):
    for name, path in report["paths"].items():
        if name.endswith(".png"):
            assert path.read_bytes()[:8] == PNG_SIGNATURE
            image = matplotlib.image.imread(path)
            assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50


def test_figures_without_data_are_listed_as_not_drawn(report):
    assert "separation_quality.png: no separation-quality data" in report["markdown"]
    assert "separation_quality.png" not in report["paths"]


def test_report_without_predictions_says_why(tmp_path):
    scores, _, _ = _synthetic_benchmark()
    failed = dict(method="msa_vocals", task="mtat", seed=9, metric="roc_auc", value=np.nan)
    scores = pd.concat([scores, pd.DataFrame([failed])], ignore_index=True)
    paths = build_report(tmp_path, scores, predictions=None, bootstrap_resamples=9)
    markdown = paths["leaderboard.md"].read_text()
    assert "skipped: msa_vocals × mtat: seed 9 roc_auc is nan, left out" in markdown
    assert "mtat / roc_auc: no predictions, no item-level interval" in markdown
    assert "tagwise_pr_auc.png: no per-tag data" in markdown
    csv = pd.read_csv(paths["leaderboard.csv"])
    assert csv["item_ci_low"].isna().all()
    # Without an item-level interval the seed-level Holm test alone decides.
    row = csv.set_index(["method", "task", "metric"]).loc[("msa_multi", "mtat", "roc_auc")]
    assert row["significant"]
