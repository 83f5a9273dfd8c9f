"""The study statistics against independent references: statsmodels (OLS contrasts, Holm),
scikit-learn (per-tag AP), naive loops, and the leaderboard's own two-method test."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import average_precision_score
from statsmodels.formula.api import ols
from statsmodels.stats.multitest import multipletests

from benchmark.evaluation.metrics import column_influence, influence
from reports.compare import run_sets
from reports.studies import (
    ablation_verdicts,
    convergence,
    convergence_verdict,
    separator_study,
    specialisation,
)
from reports.variance import combined_test, contrast_test, run_interval


def _groups(rng, runs=(3, 4, 3), clusters=12, sd=0.02):
    scores = [rng.normal(0.6 + 0.01 * j, sd, r) for j, r in enumerate(runs)]
    psi = [rng.normal(0.0, 0.01, (r, clusters)) for r in runs]
    return scores, psi


def test_contrast_of_two_methods_is_the_combined_test():
    rng = np.random.default_rng(0)
    scores, psi = _groups(rng, runs=(3, 4))
    got = contrast_test(scores, psi, [1.0, -1.0])
    ref = combined_test(scores[0], scores[1], psi[0], psi[1])
    for key in ("var", "var_training", "var_test", "df", "p", "ci_low", "ci_high"):
        assert got[key] == pytest.approx(float(ref[key]), rel=1e-10), key
    assert got["estimate"] == pytest.approx(float(ref["diff"]), rel=1e-12)


def test_contrast_without_test_set_part_is_the_ols_contrast_of_a_one_way_anova():
    rng = np.random.default_rng(1)
    scores, psi = _groups(rng, runs=(3, 4, 5))
    zeros = [np.zeros_like(p) for p in psi]
    weights = np.array([-0.5, 0.2, 0.3])
    got = contrast_test(scores, zeros, weights)
    frame = pd.DataFrame(
        {
            "y": np.concatenate(scores),
            "g": np.repeat(["a", "b", "c"], [len(s) for s in scores]),
        }
    )
    fit = ols("y ~ C(g) - 1", frame).fit()
    ref = fit.t_test(weights.reshape(1, -1))
    assert got["estimate"] == pytest.approx(float(ref.effect[0]), rel=1e-10)
    assert math.sqrt(got["var"]) == pytest.approx(float(ref.sd[0, 0]), rel=1e-10)
    assert got["df"] == pytest.approx(fit.df_resid)
    assert got["p"] == pytest.approx(float(ref.pvalue), rel=1e-8)
    low, high = ref.conf_int()[0]
    assert (got["ci_low"], got["ci_high"]) == pytest.approx((low, high), rel=1e-8)


def test_contrast_test_set_variance_against_a_naive_loop():
    rng = np.random.default_rng(2)
    scores, psi = _groups(rng, runs=(3, 3, 4), clusters=7)
    psi[1] = psi[1] + 0.03 * rng.standard_normal(7)  # its average predictor differs by cluster
    weights = [0.4, -1.0, 0.6]
    got = contrast_test(scores, psi, weights)
    k = 7
    items = 0.0
    for cluster in range(k):
        total = 0.0
        for c, p in zip(weights, psi, strict=True):
            total += c * sum(p[r][cluster] for r in range(len(p))) / len(p)
        items += total**2
    items *= k / (k - 1)
    own = 0.0
    for c, p in zip(weights, psi, strict=True):
        u = k / (k - 1) * sum(np.var(p[:, cl], ddof=1) for cl in range(k))
        own += c**2 * u / len(p)
    assert items > 2 * own  # far above the runs' noise: the pre-test keeps the component
    assert got["var_test"] == pytest.approx(items - own, rel=1e-10)
    # its Satterthwaite term: V_items on K - 1 d.f., each method's noise on (K - 1)(R_j - 1)
    term = items**2 / (k - 1) + sum(
        (c**2 * k / (k - 1) * sum(np.var(p[:, cl], ddof=1) for cl in range(k)) / len(p)) ** 2
        / ((k - 1) * (len(p) - 1))
        for c, p in zip(weights, psi, strict=True)
    )
    s2 = sum(float(np.sum((x - x.mean()) ** 2)) for x in scores) / (10 - 3)
    v_training = s2 * sum(c**2 / len(x) for c, x in zip(weights, scores, strict=True))
    assert got["df"] == pytest.approx(
        (v_training + items - own) ** 2 / (v_training**2 / 7 + term), rel=1e-10
    )


def test_contrast_rejects_single_runs():
    with pytest.raises(ValueError, match=">= 2 runs"):
        contrast_test(
            [np.array([0.5]), np.array([0.5, 0.6])], [np.zeros((1, 3)), np.zeros((2, 3))], [1, -1]
        )


def test_run_interval_is_scipys_t_interval():
    x = np.array([0.61, 0.64, 0.60, 0.66])
    mean, low, high = run_interval(x)
    ref = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    assert (low, high) == pytest.approx(ref, rel=1e-12) and mean == pytest.approx(x.mean())
    assert math.isnan(run_interval([0.5])[1])


# -- shared fixtures: prediction sets of a multi-class task ---------------------------------------


def _multiclass(rng, methods, seeds, quality, n=60, classes=4, step=None):
    """Score rows and predictions of ``methods``: a clip is right with probability
    ``quality[method]`` (per run jittered), each probe seed its own draw."""
    targets = rng.integers(0, classes, n)
    clips = [f"c{i}" for i in range(n)]
    groups = [f"g{i // 3}" for i in range(n)]
    rows, preds = [], {}
    for method in methods:
        for seed in seeds:
            q = quality[method] + rng.normal(0, 0.03)
            for probe in (0, 1):
                scores = rng.random((n, classes))
                right = rng.random(n) < q
                scores[np.arange(n), targets] += np.where(right, 2.0, 0.0)
                acc = float(np.mean(scores.argmax(axis=1) == targets))
                rows.append(dict(method=method, task="fma", pretrain_seed=seed, probe_seed=probe,
                                 metric="accuracy", value=acc))  # fmt: skip
                key = (method, "fma", seed, probe) + ((step,) if step is not None else ())
                preds[key] = dict(clip_ids=clips, targets=targets, scores=scores, groups=groups,
                                  vocabulary=[str(c) for c in range(classes)])  # fmt: skip
    frame = pd.DataFrame(rows)
    if step is not None:
        frame["step"] = step
    return frame, preds


def test_convergence_per_step_equals_the_leaderboard_test_and_holm_over_steps():
    rng = np.random.default_rng(3)
    quality = {"msa_multi": 0.7, "cola_mws": 0.5}
    snaps, snap_preds = [], {}
    for step, q in ((10, {"msa_multi": 0.6, "cola_mws": 0.3}), (25, quality)):
        frame, preds = _multiclass(rng, quality, (0, 1, 2), q, step=step)
        snaps.append(frame)
        snap_preds |= preds
    final, final_preds = _multiclass(rng, quality, (0, 1, 2), {"msa_multi": 0.5, "cola_mws": 0.5})
    curves, tests = convergence(pd.concat(snaps), snap_preds, final, final_preds, 100,
                                ["msa_multi", "cola_mws"], ("msa_multi", "cola_mws"))  # fmt: skip
    assert sorted(tests["step"]) == [10, 25, 100]
    # each step: the leaderboard's machinery on that step's runs alone
    for step, frame, preds in ((10, snaps[0], snap_preds), (100, final, final_preds)):
        preds = {k[:4]: v for k, v in preds.items() if len(k) == 4 or k[4] == step}
        sets, _, _ = run_sets(frame.drop(columns="step", errors="ignore"), preds)
        a, b = sets[("fma", "accuracy")]["msa_multi"], sets[("fma", "accuracy")]["cola_mws"]
        ref = combined_test(a.run_scores, b.run_scores, a.psi, b.psi)
        row = tests[tests["step"] == step].iloc[0]
        assert row["diff"] == pytest.approx(float(ref["diff"])) and row["p"] == pytest.approx(
            float(ref["p"])
        )
        naive = (
            frame[frame["method"] == "msa_multi"].groupby("pretrain_seed")["value"].mean().mean()
        )
        got = curves[(curves["step"] == step) & (curves["method"] == "msa_multi")]["mean"].iloc[0]
        assert got == pytest.approx(naive)
    assert tests["p_holm"].to_numpy() == pytest.approx(multipletests(tests["p"], method="holm")[1])


def test_convergence_verdict_reads_the_claim():
    tests = pd.DataFrame(
        dict(task="fma", metric="accuracy", step=[10, 50, 100], status="tested",
             diff=[0.1, 0.02, 0.0], significant=[True, False, False])
    )  # fmt: skip
    assert convergence_verdict(tests, 100, {"fma": "accuracy"})[0]["held"] == "yes"
    tests.loc[0, "significant"] = False
    assert convergence_verdict(tests, 100, {"fma": "accuracy"})[0]["held"].startswith("partly")
    tests.loc[0, ["significant", "diff"]] = [True, -0.1]
    assert convergence_verdict(tests, 100, {"fma": "accuracy"})[0]["held"] == "no (behind early)"


def test_separator_slope_is_the_ols_slope_of_the_arm_means_with_its_contrast_test():
    rng = np.random.default_rng(4)
    arms = ["cola_random_mask", "msa_multi_umx_short", "msa_multi", "msa_multi_oracle"]
    quality = dict(zip(arms, (0.3, 0.5, 0.6, 0.8), strict=True))
    frame, preds = _multiclass(rng, arms, (0, 1, 2), quality)
    sets, _, _ = run_sets(frame, preds)
    db = {"cola_random_mask": -8.0, "msa_multi_umx_short": 1.0, "msa_multi": 4.0}
    records = [dict(method=m, seed=s, source=src, si_sdr=db[m] + (0.5 if src == "bass" else 0.0))
               for m in db for s in (0, 1, 2) for src in ("bass", "drums", "vocals", "other")]  # fmt: skip
    records += [
        dict(method="msa_multi_oracle", seed=s, source="exact", si_sdr=math.inf) for s in (0, 1, 2)
    ]
    quality_frame, scores, slopes = separator_study(
        sets, pd.DataFrame(records), arms, {"fma": "accuracy"}
    )
    x = np.array([db[m] + 0.125 for m in db])
    assert quality_frame.set_index("method").loc[
        list(db), "quality_db"
    ].to_numpy() == pytest.approx(x)
    assert bool(quality_frame.set_index("method").loc["msa_multi_oracle", "exact"])
    means = [sets[("fma", "accuracy")][m].run_scores.mean() for m in db]
    row = slopes.iloc[0]
    assert row["slope"] == pytest.approx(np.polyfit(x, means, 1)[0], rel=1e-10)
    assert "msa_multi_oracle" not in row["arms"]
    weights = (x - x.mean()) / np.sum((x - x.mean()) ** 2)
    ref = contrast_test([sets[("fma", "accuracy")][m].run_scores for m in db],
                        [sets[("fma", "accuracy")][m].psi for m in db], weights)  # fmt: skip
    assert row["p"] == pytest.approx(ref["p"]) and row["slope"] > 0
    assert set(scores["method"]) == set(arms)


def test_ablation_verdicts_name_what_the_component_does_and_check_the_claim():
    base = dict(family="ablations", baseline="msa_multi", metric="accuracy", status="tested",
                ci_low=-0.1, ci_high=0.1, p_holm=0.01)  # fmt: skip
    comparison = pd.DataFrame([
        base | dict(method="msa_multi_no_silence", task="fma", diff=-0.05, significant=True),
        base | dict(method="msa_multi_no_silence", task="nsynth", diff=-0.05, significant=True),
        base | dict(method="msa_multi_no_shift", task="fma", diff=0.01, significant=False),
        base | dict(method="msa_multi_plain_loss", task="fma", diff=0.05, significant=True),
    ])  # fmt: skip
    got = ablation_verdicts(comparison, {"fma": "accuracy", "nsynth": "accuracy"})
    assert got["measured"].tolist() == ["component helps", "component helps",
                                        "no detectable difference", "component hurts"]  # fmt: skip
    # tagging/genre: helps is claimed; instrument: no help is claimed; shift: critical everywhere
    assert got["held"].tolist() == ["yes", "no", "not detected", "no"]


# -- source specialisation ----------------------------------------------------------------------


def _tagging(rng, methods, seeds, boost, n=80, tags=("drums", "beat", "piano", "rock", "slow")):
    targets = (rng.random((n, len(tags))) < 0.3).astype(int)
    targets[0], targets[1] = 1, 0  # every tag has a positive and a negative
    clips, groups = [f"c{i}" for i in range(n)], [f"s{i // 2}" for i in range(n)]
    preds = {}
    for method in methods:
        for seed in seeds:
            for probe in (0, 1):
                noise = rng.normal(0, 1, targets.shape)
                signal = np.array([boost[method].get(t, 0.5) for t in tags]) + rng.normal(
                    0, 0.05, len(tags)
                )
                preds[(method, "mtat", seed, probe)] = dict(
                    clip_ids=clips, targets=targets, scores=noise + signal * targets * 2,
                    groups=groups, vocabulary=list(tags))  # fmt: skip
    return preds, list(tags)


def test_specialisation_values_are_sklearn_average_precision_differences():
    rng = np.random.default_rng(5)
    boost = {"cola": {}, "msa_drums": {"drums": 1.5, "beat": 1.5}}
    preds, tags = _tagging(rng, boost, (0, 1, 2), boost)
    mapping = {"drums": ("drums",), "beat": ("drums",), "piano": ("other",)}
    frame, _ = specialisation(preds, mapping, {"msa_drums": "drums"}, "cola", "mtat")
    row = frame.iloc[0]

    def naive(method, columns):
        per_run = []
        for seed in (0, 1, 2):
            vals = []
            for probe in (0, 1):
                p = preds[(method, "mtat", seed, probe)]
                vals.append(np.mean([average_precision_score(p["targets"][:, tags.index(t)],
                                                             p["scores"][:, tags.index(t)]) for t in columns]))  # fmt: skip
            per_run.append(np.mean(vals))
        return np.mean(per_run)

    own, other = ["drums", "beat"], ["piano", "rock", "slow"]
    assert row["own_tags"] == "drums, beat" and row["num_other_tags"] == 3
    assert row["gain_own"] == pytest.approx(naive("msa_drums", own) - naive("cola", own), rel=1e-9)
    assert row["gain_other"] == pytest.approx(
        naive("msa_drums", other) - naive("cola", other), rel=1e-9
    )
    assert row["specialisation"] == pytest.approx(row["gain_own"] - row["gain_other"], rel=1e-9)
    assert row["significant"] and row["specialisation"] > 0


def test_specialisation_is_not_flagged_between_equal_models_and_says_when_a_source_has_no_tag():
    rng = np.random.default_rng(6)
    # an unrelated model's predictions come first: they are not part of the test
    boost = {"msa_multi": {}, "cola": {}, "msa_drums": {}, "msa_bass": {}}
    preds, _ = _tagging(rng, boost, (0, 1, 2), boost)
    mapping = {"drums": ("drums",), "beat": ("drums",), "piano": ("other",)}
    frame, _ = specialisation(
        preds, mapping, {"msa_drums": "drums", "msa_bass": "bass"}, "cola", "mtat"
    )
    rows = frame.set_index("method")
    assert not rows.loc["msa_drums", "significant"]
    assert rows.loc["msa_bass", "status"].startswith("no scorable mtat tag of bass")


def test_column_influences_average_to_the_macro_influence():
    rng = np.random.default_rng(7)
    targets = (rng.random((50, 6)) < 0.4).astype(int)
    scores = rng.random((50, 6))
    cols = column_influence(targets, scores)
    macro = influence(targets, scores)
    for name in ("roc_auc", "pr_auc"):
        assert cols[name].mean() == pytest.approx(macro[name][0])
        assert cols[f"{name}_psi"].mean(axis=1) == pytest.approx(macro[name][1])
    for c in range(6):
        assert cols["pr_auc"][c] == pytest.approx(
            average_precision_score(targets[:, c], scores[:, c])
        )


def test_the_report_carries_the_four_study_sections(tmp_path):
    """build_report with study inputs: each section states the claim, the measurement and
    the verdict; a section without its data says it was not measured."""
    from reports.build import build_report

    rng = np.random.default_rng(8)
    methods = ["cola", "cola_mws", "cola_random_mask", "msa_drums", "msa_multi",
               "msa_multi_no_shift", "msa_multi_umx_short", "msa_multi_oracle"]  # fmt: skip
    quality = dict.fromkeys(methods, 0.5) | {"msa_multi_no_shift": 0.2, "msa_multi_oracle": 0.7}
    scores, preds = _multiclass(rng, methods, (0, 1, 2), quality)
    snap, snap_preds = _multiclass(rng, ["cola_mws", "msa_multi"], (0, 1, 2),
                                   {"cola_mws": 0.3, "msa_multi": 0.6}, step=10)  # fmt: skip
    boost = {m: {} for m in methods} | {"msa_drums": {"drums": 1.5, "beat": 1.5}}
    tag_preds, _tags = _tagging(rng, methods, (0, 1, 2), boost)
    rows = [dict(method=k[0], task="mtat", pretrain_seed=k[2], probe_seed=k[3], metric="roc_auc",
                 value=0.7) for k in tag_preds]  # fmt: skip
    records = [dict(method=m, seed=s, source=src, si_sdr=db)
               for m, db in (("cola_random_mask", -9.0), ("msa_multi_umx_short", 2.0), ("msa_multi", 5.0))
               for s in (0, 1, 2) for src in ("bass", "drums", "vocals", "other")]  # fmt: skip
    records += [
        dict(method="msa_multi_oracle", seed=s, source="exact", si_sdr=math.inf) for s in (0, 1, 2)
    ]
    families = {"ablations": ("msa_multi", ("msa_multi_no_shift",)),
                "separators": ("msa_multi", ("msa_multi_oracle", "msa_multi_umx_short"))}  # fmt: skip
    studies = dict(
        snapshot_scores=snap, snapshot_predictions=snap_preds, final_step=100,
        convergence_methods=["cola_mws", "msa_multi"], convergence_pair=("msa_multi", "cola_mws"),
        separator_runs=pd.DataFrame(records),
        separator_arms=["cola_random_mask", "msa_multi_umx_short", "msa_multi", "msa_multi_oracle"],
        ablations=["msa_multi_no_shift"], tag_sources={"drums": ("drums",), "beat": ("drums",)},
        source_models={"msa_drums": "drums"}, tag_mapping="test mapping",
    )  # fmt: skip
    paths = build_report(tmp_path, pd.concat([scores, pd.DataFrame(rows)]), preds | tag_preds,
                         families=families, primary={"fma": "accuracy", "mtat": "roc_auc"},
                         calibration_reps=200, studies=studies)  # fmt: skip
    text = paths["leaderboard.md"].read_text()
    for heading in (
        "## Convergence",
        "## Separator quality",
        "## Ablations",
        "## Source specialisation",
    ):
        assert heading in text
    assert text.count("Claim (poster, quoted)") == 4
    assert "Not measured" not in text
    assert "time shift" in text and "claim held here" in text
    for figure in ("convergence_fma.png", "separator_study.png", "specialisation.png"):
        assert figure in paths and paths[figure].stat().st_size > 0
    empty = build_report(tmp_path / "empty", scores, preds, calibration_reps=200,
                         primary={"fma": "accuracy"}, studies={})  # fmt: skip
    assert empty["leaderboard.md"].read_text().count("Not measured in this run") == 4


def test_a_cell_without_a_value_says_nothing_was_measured():
    """A model with no tag of its own source (bass on MTAT) has no gain: '–', not a claim
    about runs; one run gives a value without an interval; more give the interval."""
    from reports.study_sections import _ci

    nan = float("nan")
    assert _ci(nan, nan, nan) == "–"
    assert _ci(None, None, None) == "–"
    assert _ci(0.5, nan, nan) == "0.500 (one run: no interval)"
    assert _ci(0.5, 0.4, 0.6) == "0.500 [0.400, 0.600]"
