"""End-to-end test of reports.build on a small synthetic benchmark (CPU, a few seconds)."""

from __future__ import annotations

import re

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from benchmark.evaluation.metrics import score
from reports.build import build_report
from reports.published import PUBLISHED_LABEL

NUM_CLIPS, NUM_TAGS, NUM_CLASSES = 60, 4, 4
PRETRAIN_SEEDS, PROBE_SEEDS = range(3), range(2)
# Signal strength per method: msa_multi is clearly better, random_init clearly worse;
# cola_twin is cola again (the negative control); msa_vocals is run on mtat only; single has
# one pre-training run (not testable).
STRENGTH = {"cola": 1.0, "msa_multi": 3.5, "msa_vocals": 1.0, "cola_twin": 1.0, "random_init": 0.1}
FAMILIES = {
    "paper": ("cola", ("msa_multi", "msa_vocals", "single")),
    "controls": ("cola", ("random_init", "cola_twin")),
}
TAGS = ["guitar", "classical", "slow", "techno"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _synthetic_benchmark():
    rng = np.random.default_rng(123)
    tag_targets = (rng.random((NUM_CLIPS, NUM_TAGS)) < 0.3).astype(int)
    tag_targets[0] = 1
    class_targets = np.arange(NUM_CLIPS) % NUM_CLASSES
    clip_ids = [f"clip{i:03d}" for i in range(NUM_CLIPS)]
    groups = [f"song{i // 3}" for i in range(NUM_CLIPS)]  # three clips per song
    predictions, rows, tag_rows = {}, [], []
    strengths = {**STRENGTH, "single": 1.0}
    for index, (method, strength) in enumerate(strengths.items()):
        seeds = [0] if method == "single" else PRETRAIN_SEEDS
        for pseed in seeds:
            run_effect = np.random.default_rng([pseed, index, 99]).normal(0, 0.3)
            for probe in PROBE_SEEDS:
                noise = np.random.default_rng([pseed, probe, index]).normal
                logits = (strength + run_effect) * (2 * tag_targets - 1) + 1.5 * noise(
                    size=tag_targets.shape
                )
                probabilities = 1 / (1 + np.exp(-logits))
                key = (method, "mtat", pseed, probe)
                predictions[key] = dict(
                    clip_ids=clip_ids, targets=tag_targets, scores=probabilities, groups=groups
                )
                for tag, column in zip(TAGS, probabilities.T, strict=True):
                    tag_rows.append(dict(method=method, task="mtat", pretrain_seed=pseed,
                                         probe_seed=probe, tag=tag, pr_auc=column.mean()))  # fmt: skip
                if method == "msa_vocals":
                    continue
                logits = (strength + run_effect) * np.eye(NUM_CLASSES)[class_targets] + noise(
                    size=(NUM_CLIPS, NUM_CLASSES)
                )
                softmax = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
                # Clip order differs per run: the report must align runs by clip id.
                order = np.random.default_rng([pseed, probe, index, 7]).permutation(NUM_CLIPS)
                predictions[(method, "fma", pseed, probe)] = dict(
                    clip_ids=[clip_ids[i] for i in order],
                    targets=class_targets[order],
                    scores=softmax[order],
                    groups=[groups[i] for i in order],
                )
    for (method, task, pseed, probe), run in predictions.items():
        multilabel = task == "mtat"
        names = TAGS if multilabel else [f"c{i}" for i in range(NUM_CLASSES)]
        for name, value in score(run["targets"], run["scores"], names, multilabel).items():
            if name in ("roc_auc", "pr_auc", "accuracy", "balanced_accuracy"):
                rows.append(dict(method=method, task=task, pretrain_seed=pseed, probe_seed=probe,
                                 metric=name, value=value))  # fmt: skip
    per_tag = pd.DataFrame(tag_rows).assign(roc_auc=0.5)
    per_tag.loc[per_tag["method"] == "msa_vocals", "method"] = "msa_drums"
    return pd.DataFrame(rows), predictions, per_tag


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    scores, predictions, per_tag = _synthetic_benchmark()
    out_dir = tmp_path_factory.mktemp("report")
    extras = {
        "pretrain_curves": pd.DataFrame(
            [
                dict(method=m, seed=s, step=k, metric=name, value=value)
                for m in ("cola", "msa_multi")
                for s in range(2)
                for k in range(10, 101, 10)
                for name, value in (
                    ("loss", 3.0 / (1 + k / 50) + s * 0.01),
                    ("chance_loss", np.log(32)),
                    ("contrastive_accuracy", min(1.0, k / 200)),
                    ("chance_accuracy", 1 / 32),
                )
            ]
            + [
                dict(method=m, seed=s, step=100, metric=name, value=value)
                for m, collapsed in (("cola", False), ("msa_multi", True))
                for s in range(2)
                for name, value in (
                    ("val_loss", np.log(32) if collapsed else 2.0),
                    ("val_chance_loss", np.log(32)),
                    ("val_contrastive_accuracy", 1 / 32 if collapsed else 0.25),
                    ("val_chance_accuracy", 1 / 32),
                )
            ]
        ),
        "pretrain_runs": pd.DataFrame(
            dict(
                method=["cola", "cola", "msa_multi", "msa_multi"],
                seed=[0, 1, 0, 1],
                trained=True,
                collapsed=[False, False, True, False],
            )
        ),
        "embedding_health": pd.DataFrame(
            dict(
                method=["cola", "msa_multi"],
                seed=[0, 0],
                corpus=["mtat", "mtat"],
                relative_spread=[0.6, 1e-5],
                median_sd=[0.5, 8e-7],
                varying_dims=[1.0, 0.3],
                effective_rank=[40.0, 120.0],
                collapsed=[0.0, 1.0],
            )
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
        families=FAMILIES,
        baseline="cola",
        controls={"positive": "random_init", "negative": "cola_twin"},
        expected_methods=["cola", "msa_multi", "msa_vocals", "msa_bass"],
        expected_tasks=["mtat", "fma"],
        calibration_reps=1000,
    )
    csv = pd.read_csv(paths["leaderboard.csv"])
    markdown = paths["leaderboard.md"].read_text()
    return dict(paths=paths, scores=scores, csv=csv, markdown=markdown, out_dir=out_dir)


def test_files_exist(report):
    for name in ("leaderboard.csv", "leaderboard.md", "leaderboard.html", "scores_mtat.png",
                 "scores_fma.png", "tagwise_pr_auc.png", "pretraining.png", "source_activity.png",
                 "variance.png"):  # fmt: skip
        assert name in report["paths"], name
        assert report["paths"][name].stat().st_size > 0


def test_csv_means_equal_an_independent_groupby(report):
    runs = report["scores"].groupby(["method", "task", "metric", "pretrain_seed"])["value"].mean()
    expected = runs.groupby(["method", "task", "metric"]).agg(["mean", "std", "count"])
    got = report["csv"].set_index(["method", "task", "metric"]).loc[expected.index]
    np.testing.assert_allclose(got["mean"], expected["mean"], rtol=1e-12)
    np.testing.assert_allclose(got["sd_between"], expected["std"], rtol=1e-12, equal_nan=True)
    assert (got["runs"] == expected["count"]).all()
    probes = report["scores"].groupby(["method", "task", "metric", "pretrain_seed"])["value"]
    pooled = probes.var(ddof=1).groupby(["method", "task", "metric"]).mean() ** 0.5
    np.testing.assert_allclose(got["sd_probe"], pooled.loc[expected.index], rtol=1e-12)


def test_clearly_better_method_is_significant(report):
    csv = report["csv"].set_index(["method", "task", "metric"])
    for task, metric in (("mtat", "roc_auc"), ("fma", "accuracy"), ("mtat", "pr_auc")):
        row = csv.loc[("msa_multi", task, metric)]
        assert row["status"] == "tested" and row["family"] == "paper"
        assert row["significant"] and row["direction"] == "better"
        assert row["ci_low"] > 0 and row["p_holm"] < 0.05 and row["rank"] == 1
    assert "▲" in report["markdown"]


def test_controls_hold_and_are_reported(report):
    csv = report["csv"].set_index(["method", "task", "metric"])
    assert csv.loc[("random_init", "mtat", "roc_auc")]["direction"] == "worse"
    twin = report["csv"][report["csv"]["method"] == "cola_twin"]
    assert (twin["status"] == "tested").all() and not twin["significant"].any()
    calibration = report["markdown"][report["markdown"].index("## Calibration") :]
    assert "positive: random_init vs cola" in calibration
    assert "negative: cola_twin vs cola" in calibration
    assert "NO" not in calibration.split("## Variance decomposition")[0]
    assert "A/A false positives" in calibration


def test_one_run_is_not_testable(report):
    single = report["csv"][report["csv"]["method"] == "single"]
    assert (single["status"] == "not testable (one pre-training run)").all()
    assert not single["significant"].any() and single["p"].isna().all()
    assert "n.t." in report["markdown"]


def test_holm_adjusted_p_is_not_below_the_raw_p(report):
    compared = report["csv"].dropna(subset=["p"])
    assert (compared["p_holm"] >= compared["p"] - 1e-12).all()
    baseline = report["csv"][report["csv"]["method"] == "cola"]
    assert baseline["p"].isna().all()


def test_missing_cells_are_said(report):
    markdown = report["markdown"]
    assert "missing: msa_vocals × fma: no results" in markdown
    assert "missing: msa_bass × mtat: no results" in markdown
    assert "skipped: nsynth: dataset not found" in markdown


def test_provenance_and_reading_guide(report):
    markdown = report["markdown"]
    for text in ("smoke", "abc123", "deadbeef", "2-core CPU", "pretrain", "How to read this report",
                 "unit of replication is a pre-training run", "Nemenyi critical difference",
                 "paper: msa_multi, msa_vocals, single versus cola"):  # fmt: skip
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
    assert set(csv["method"]) == set(STRENGTH) | {"single"}
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
    failed = dict(method="msa_vocals", task="mtat", pretrain_seed=9, probe_seed=0,
                  metric="roc_auc", value=np.nan)  # fmt: skip
    scores = pd.concat([scores, pd.DataFrame([failed])], ignore_index=True)
    paths = build_report(
        tmp_path, scores, predictions=None, families=FAMILIES, calibration_reps=500
    )
    markdown = paths["leaderboard.md"].read_text()
    assert "pre-training seed 9, probe seed 0: roc_auc is nan, left out" in markdown
    assert "mtat: no predictions; comparisons use training randomness only" in markdown
    assert "tagwise_pr_auc.png: no per-tag data" in markdown
    csv = pd.read_csv(paths["leaderboard.csv"])
    row = csv.set_index(["method", "task", "metric"]).loc[("msa_multi", "mtat", "roc_auc")]
    assert row["significant"] and row["var_test"] == 0


def test_diagnostics_sections_flag_the_collapsed_method(report):
    markdown = report["markdown"]
    diagnostics = markdown[markdown.index("## Pre-training diagnostics") :]
    diagnostics = diagnostics[: diagnostics.index("## Results per task")]
    assert "Collapsed: msa_multi s0." in diagnostics
    assert "| cola | 0 |" in diagnostics and "learned" in diagnostics
    health = diagnostics[diagnostics.index("## Embedding health") :]
    assert "| msa_multi | mtat | 1 | 1e-05 |" in health and "collapsed" in health
    tables = markdown[markdown.index("## Results per task") :]
    assert "msa_multi ⚠ collapsed" in tables
    assert "cola (baseline) ⚠" not in tables


def test_report_says_what_it_measured(tmp_path):
    """Only planned results can be missing; published rows only for columns on the paper's
    data; chance levels, external encoders, data notes and figure captions are shown."""
    scores, predictions, _ = _synthetic_benchmark()
    paths = build_report(
        tmp_path,
        scores,
        predictions,
        families=FAMILIES,
        calibration_reps=200,
        expected_methods=["cola", "msa_multi", "msa_vocals", "msa_bass"],
        expected_tasks=["mtat", "fma"],
        # the plan left msa_bass and msa_vocals × fma out on purpose
        expected_pairs=[("cola", "mtat"), ("cola", "fma"), ("msa_multi", "fma")],
        data_notes=["pre-training: every audio file under /music", "fma: test 60 clips"],
        published_columns=[],
        published_note="these results are on the synthetic corpus",
        method_notes={"msa_vocals": "HEAR 2021 API module tiny"},
        extras={"separation_quality": pd.DataFrame(
            {"separator": ["umx (trained here)", "random_mask"] * 2,
             "source": ["bass", "bass", "drums", "drums"], "si_sdr": [3.1, -2.0, 5.2, -1.5]}
        )},
    )  # fmt: skip
    markdown = paths["leaderboard.md"].read_text()
    # nothing planned is absent; msa_bass was never planned ("single" has 1 run by design)
    assert "no results" not in markdown and "msa_bass" not in markdown
    assert "- pre-training: every audio file under /music" in markdown
    assert f"{PUBLISHED_LABEL}, for reference" not in markdown  # no published tables
    assert "not comparable: these results are on the synthetic corpus" in markdown
    assert "msa_vocals (external)" in markdown
    assert "msa_vocals: HEAR 2021 API module tiny" in markdown
    assert "Chance level on these test clips: 0.500" in markdown  # mtat roc_auc
    assert "measured on the synthetic corpus's validation clips" in markdown
    csv = pd.read_csv(paths["leaderboard.csv"]).set_index(["method", "task", "metric"])
    assert csv.loc[("cola", "mtat", "roc_auc"), "chance"] == 0.5
    fma_counts = np.bincount(np.arange(NUM_CLIPS) % NUM_CLASSES)
    assert csv.loc[("cola", "fma", "accuracy"), "chance"] == fma_counts.max() / NUM_CLIPS
    positives = predictions[("cola", "mtat", 0, 0)]["targets"].mean(axis=0)
    assert csv.loc[("cola", "mtat", "pr_auc"), "chance"] == pytest.approx(positives.mean())


def test_figures_a_run_has_no_data_for_by_design_are_not_listed(tmp_path):
    scores, predictions, _ = _synthetic_benchmark()
    paths = build_report(
        tmp_path, scores, predictions, families=FAMILIES, calibration_reps=200,
        expected_figures=["scores_mtat.png", "scores_fma.png", "pretraining.png"],
    )  # fmt: skip
    markdown = paths["leaderboard.md"].read_text()
    assert "- pretraining.png: " in markdown  # expected, so said
    assert "separation_quality.png" not in markdown  # no separation ran: nothing to say


def test_calibration_pools_the_components_of_every_method_with_two_runs():
    from reports.build import calibration_table
    from reports.variance import RunSet, calibrate

    rng = np.random.default_rng(5)
    k = 12

    def run_set(name, runs):
        scores = 0.7 + 0.01 * rng.standard_normal((runs, 2))
        return RunSet(name, np.arange(runs), scores, 0.004 * rng.standard_normal((runs, k)))

    methods = {"cola": run_set("cola", 3), "a": run_set("a", 4), "single": run_set("single", 1)}
    rows = calibration_table({("t", "accuracy"): methods}, {"t": k}, {"t": "accuracy"}, "cola",
                             0.05, reps=500)  # fmt: skip
    (row,) = rows
    # pooled by hand: squares over both methods with >= 2 runs, on (3 - 1) + (4 - 1) d.f.
    squares, dfs, u_sum = 0.0, 0, 0.0
    for name in ("cola", "a"):
        scores = methods[name].run_scores
        squares += sum((x - scores.mean()) ** 2 for x in scores)
        dfs += len(scores) - 1
        u = k / (k - 1) * sum(np.var(methods[name].psi[:, j], ddof=1) for j in range(k))
        u_sum += (len(scores) - 1) * u
    assert row["sd_run"] == pytest.approx((squares / dfs) ** 0.5, rel=1e-12)
    assert row["u"] == pytest.approx(u_sum / dfs, rel=1e-12)
    assert row["methods_pooled"] == 2 and row["runs"] == 3 and row["test_df"] == k - 1
    assert row["s2_over_u"] == pytest.approx(row["sd_run"] ** 2 / row["u"])
    expected = calibrate(row["sd_run"], row["u"], k, 3, test_df=k - 1, reps=500)
    assert row["false_positive_rate"] == expected["false_positive_rate"]
    assert row["worst_null_rate"] >= row["false_positive_rate"]


def test_the_negative_control_is_one_question_asked_on_every_task():
    from statsmodels.stats.multitest import multipletests

    from reports.build import _controls

    def comparison(p_values):
        rows = [
            dict(method="cola_twin", baseline="cola", task=f"t{i // 2}", metric=f"m{i % 2}",
                 status="tested", p=p, significant=p < 0.05, direction="", diff=0.01)
            for i, p in enumerate(p_values)
        ]  # fmt: skip
        return pd.DataFrame(rows)

    controls = {"positive": "random_init", "negative": "cola_twin"}
    # one of 8 tests below 0.05 by chance: marked in the tables, yet the control holds, as
    # Holm over the 8 tests (statsmodels) says
    p_values = [0.03, 0.4, 0.6, 0.2, 0.9, 0.5, 0.7, 0.35]
    (row,) = _controls(comparison(p_values), controls, {"t0": "m0"}, ["t0"])
    expected = multipletests(p_values, method="holm")[1].min()
    assert row["holds"] == "yes" and f"smallest Holm p {expected:.3f} (t0 / m0)" in row["measured"]
    assert "marked in the tables (α per task and metric) on t0 / m0" in row["measured"]
    assert "Holm over the 8 tests" in row["expected"]
    # a difference no chance explains at the family-wise level: the control fails
    (row,) = _controls(comparison([0.001, *p_values[1:]]), controls, {"t0": "m0"}, ["t0"])
    assert row["holds"] == "NO"
