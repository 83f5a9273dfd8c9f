"""reports.compare on small hand-made tables and predictions: runs and their clustered
influences (against naive dict loops), summaries, family comparisons with Holm's correction
(against statsmodels), untestable methods and missing results."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.multitest import multipletests

from benchmark.evaluation.metrics import influence, score
from reports.compare import NOT_TESTABLE, compare, missing_results, run_sets, summarise
from reports.variance import RunSet
from tests.reports.test_variance import _naive_test

TAGS = ["rock", "piano", "slow"]
CLIPS = [f"clip{i:02d}" for i in range(12)]
GROUPS = {clip: f"song{i // 3}" for i, clip in enumerate(CLIPS)}  # 3 clips per song
TARGETS = np.array(
    [[1, 0, 1], [1, 0, 0], [1, 1, 0], [0, 1, 1], [0, 1, 0], [0, 0, 1],
     [1, 0, 0], [0, 0, 1], [0, 1, 1], [1, 1, 0], [0, 0, 0], [1, 0, 1]]
)  # fmt: skip
RUNS = {"base": (0, 1, 2), "a": (0, 1, 2), "b": (0, 1, 2)}
PROBES = (0, 1)


def _benchmark(groups=True, runs=RUNS, strength=None):
    """Scores rows (logged by :func:`score`) and predictions, each run's clips in its own
    order."""
    strength = strength or {"base": 1.0, "a": 2.0, "b": 1.0}
    predictions, rows = {}, []
    for m, (method, seeds) in enumerate(sorted(runs.items())):
        for seed in seeds:
            for probe in PROBES:
                rng = np.random.default_rng([m, seed, probe])
                logits = strength[method] * (2 * TARGETS - 1) + 1.5 * rng.standard_normal(
                    TARGETS.shape
                )
                order = rng.permutation(len(CLIPS))
                prediction = dict(
                    clip_ids=[CLIPS[i] for i in order],
                    targets=TARGETS[order],
                    scores=np.round(1 / (1 + np.exp(-logits[order])), 2),  # some ties
                )
                if groups:
                    prediction["groups"] = [GROUPS[CLIPS[i]] for i in order]
                predictions[(method, "mtat", seed, probe)] = prediction
                logged = score(prediction["targets"], prediction["scores"], TAGS, True)
                for metric in ("roc_auc", "pr_auc"):
                    rows.append(dict(method=method, task="mtat", pretrain_seed=seed,
                                     probe_seed=probe, metric=metric, value=logged[metric]))  # fmt: skip
    return pd.DataFrame(rows), predictions


def _naive_cluster_psi(prediction, metric, cluster_of):
    """A run's cluster influences by a dict loop over its own clip order (no alignment)."""
    _, psi = influence(prediction["targets"], prediction["scores"])[metric]
    sums: dict[str, float] = {}
    for clip, value in zip(prediction["clip_ids"], psi, strict=True):
        sums[cluster_of(clip)] = sums.get(cluster_of(clip), 0.0) + value
    return sums


# -- run_sets -----------------------------------------------------------------------------


def test_run_sets_gather_runs_probe_values_and_clustered_influences():
    scores, predictions = _benchmark()
    sets, clusters, notes = run_sets(scores, predictions)
    assert clusters == {"mtat": 4}
    assert notes == []
    assert sorted(sets) == [("mtat", "pr_auc"), ("mtat", "roc_auc")]
    labels = sorted(set(GROUPS.values()))
    for (task, metric), methods in sets.items():
        assert sorted(methods) == ["a", "b", "base"]
        for method, run_set in methods.items():
            assert run_set.method == method
            assert run_set.seeds.tolist() == [0, 1, 2]
            for i, seed in enumerate(run_set.seeds):
                for j, probe in enumerate(PROBES):
                    row = scores[(scores["method"] == method) & (scores["metric"] == metric)
                                 & (scores["pretrain_seed"] == seed) & (scores["probe_seed"] == probe)]  # fmt: skip
                    assert run_set.probe_values[i, j] == row["value"].item()
                per_probe = [
                    _naive_cluster_psi(predictions[(method, task, seed, p)], metric, GROUPS.get)
                    for p in PROBES
                ]
                expected = [np.mean([sums[label] for sums in per_probe]) for label in labels]
                np.testing.assert_allclose(run_set.psi[i], expected, atol=1e-14)
            assert np.abs(run_set.psi).max() > 1e-3


def test_run_sets_follow_a_stratified_design():
    # strata of songs: song0 and song1 in "x", song2 and song3 in "y" (clips carry them)
    stratum = {"song0": "x", "song1": "x", "song2": "y", "song3": "y"}
    scores, predictions = _benchmark()
    for prediction in predictions.values():
        prediction["strata"] = [stratum[g] for g in prediction["groups"]]
    sets, clusters, notes = run_sets(scores, predictions)
    free, _, _ = run_sets(*_benchmark())
    assert clusters == {"mtat": 4} and notes == []
    for key, methods in sets.items():
        for method, run_set in methods.items():
            assert run_set.test_df == 2 and free[key][method].test_df == 3  # K - H, K - 1
            psi = free[key][method].psi  # per-cluster sums in song order
            for h in ([0, 1], [2, 3]):
                # centred within the stratum, scaled by sqrt((n_h/(n_h-1)) / (K/(K-1)))
                expected = (psi[:, h] - psi[:, h].mean(axis=1, keepdims=True)) * (
                    2 / (4 / 3)
                ) ** 0.5
                np.testing.assert_allclose(run_set.psi[:, h], expected, atol=1e-14)
    # the comparison uses the design's degrees of freedom (2 here, not 3)
    rows = compare(sets, {"paper": ("base", ("a", "b"))})
    assert (rows["status"] == "tested").all()
    # runs that disagree on a clip's stratum are refused
    key = next(iter(predictions))
    predictions[key]["strata"] = ["z"] * len(CLIPS)
    with pytest.raises(ValueError, match="disagree on the stratum"):
        run_sets(scores, predictions)


def test_run_sets_without_group_ids_make_each_clip_its_own_cluster():
    scores, predictions = _benchmark(groups=False)
    sets, clusters, notes = run_sets(scores, predictions)
    assert clusters == {"mtat": len(CLIPS)}
    assert any("no group ids" in note and note.startswith("mtat") for note in notes)
    run_set = sets[("mtat", "roc_auc")]["a"]
    for i, seed in enumerate(run_set.seeds):
        per_probe = [
            _naive_cluster_psi(predictions[("a", "mtat", seed, p)], "roc_auc", lambda c: c)
            for p in PROBES
        ]
        expected = [np.mean([sums[clip] for sums in per_probe]) for clip in sorted(CLIPS)]
        np.testing.assert_allclose(run_set.psi[i], expected, atol=1e-14)


def test_run_sets_use_the_clips_common_to_every_run():
    scores, predictions = _benchmark()
    short = predictions[("b", "mtat", 1, 0)]
    keep = [i for i, clip in enumerate(short["clip_ids"]) if clip != "clip04"]
    predictions[("b", "mtat", 1, 0)] = {key: [value[i] for i in keep] if isinstance(value, list)
                                        else value[keep] for key, value in short.items()}  # fmt: skip
    sets, clusters, notes = run_sets(scores, predictions)
    assert any("11 clips common to every run (largest run: 12)" in note for note in notes)
    assert clusters == {"mtat": 4}

    def without(prediction):
        kept = [i for i, clip in enumerate(prediction["clip_ids"]) if clip != "clip04"]
        return {key: [value[i] for i in kept] if isinstance(value, list) else value[kept]
                for key, value in prediction.items()}  # fmt: skip

    per_probe = [
        _naive_cluster_psi(without(predictions[("a", "mtat", 0, p)]), "pr_auc", GROUPS.get)
        for p in PROBES
    ]
    labels = sorted(set(GROUPS.values()))
    expected = [np.mean([sums[label] for sums in per_probe]) for label in labels]
    np.testing.assert_allclose(sets[("mtat", "pr_auc")]["a"].psi[0], expected, atol=1e-14)


def test_run_sets_reject_runs_that_disagree_on_targets_or_groups():
    scores, predictions = _benchmark()
    key = ("b", "mtat", 2, 1)
    wrong = dict(predictions[key], targets=predictions[key]["targets"].copy())
    wrong["targets"][0, 0] = 1 - wrong["targets"][0, 0]
    with pytest.raises(ValueError, match="disagree on the targets"):
        run_sets(scores, {**predictions, key: wrong})
    regrouped = dict(predictions[key], groups=["song9"] + predictions[key]["groups"][1:])
    with pytest.raises(ValueError, match="disagree on the group"):
        run_sets(scores, {**predictions, key: regrouped})


def test_run_sets_without_predictions_have_no_test_set_component():
    scores, _ = _benchmark()
    sets, clusters, notes = run_sets(scores, None)
    assert clusters == {"mtat": 0}
    assert any("no predictions" in note for note in notes)
    assert np.all(sets[("mtat", "roc_auc")]["a"].psi == 0)
    rows = compare(sets, {"paper": ("base", ("a", "b"))})
    assert (rows["status"] == "tested").all() and (rows["var_test"] == 0).all()
    assert (rows["df"] == 4).all()  # the pooled t of 3 + 3 runs


# -- summarise ----------------------------------------------------------------------------


def _run_set(method, run_scores, psi=None, probe_values=None):
    run_scores = np.asarray(run_scores, dtype=float)
    values = probe_values if probe_values is not None else run_scores[:, None]
    psi = np.zeros((len(run_scores), 5)) if psi is None else psi
    return RunSet(method, np.arange(len(run_scores)), np.asarray(values, dtype=float), psi)


def test_summarise_means_components_and_ranks_with_ties():
    sets = {
        ("t", "accuracy"): {
            "x": _run_set("x", [0.5, 0.75]),
            "y": _run_set("y", [0.75, 0.5]),  # tied with x
            "z": _run_set("z", [0.25, 0.5]),
            "w": _run_set("w", [0.875]),
        },
        ("u", "accuracy"): {"x": _run_set("x", [0.25, 0.25]), "y": _run_set("y", [0.5, 0.5])},
    }
    summary = summarise(sets).set_index(["method", "task"])
    assert summary.loc[("x", "t"), "mean"] == 0.625
    assert summary.loc[("x", "t"), "sd_between"] == pytest.approx(np.std([0.5, 0.75], ddof=1))
    ranks = {m: summary.loc[(m, "t"), "rank"] for m in "wxyz"}
    assert ranks == {"w": 1, "x": 2, "y": 2, "z": 4}  # ties share the best rank
    assert summary.loc[("y", "u"), "rank"] == 1 and summary.loc[("x", "u"), "rank"] == 2
    assert summary.loc[("w", "t"), "runs"] == 1 and math.isnan(
        summary.loc[("w", "t"), "sd_between"]
    )


# -- compare ------------------------------------------------------------------------------


def _family_sets(extra=()):
    """Hand-made run sets on one task: base, three members of different strength, and
    ``extra`` methods."""
    rng = np.random.default_rng(0)

    def runs(name, shift, r=3):
        scores = 0.80 + shift + 0.004 * rng.standard_normal(r)
        return _run_set(name, scores, psi=0.0005 * rng.standard_normal((r, 8)))

    methods = {"base": runs("base", 0.0), "a": runs("a", 0.02), "b": runs("b", 0.008),
               "c": runs("c", -0.006)}  # fmt: skip
    for name in extra:
        methods[name] = runs(name, 0.01)
    return {("t", "roc_auc"): methods}


def test_compare_holm_within_a_family_equals_statsmodels():
    sets = _family_sets()
    rows = compare(sets, {"paper": ("base", ("a", "b", "c"))}).set_index("method")
    assert rows.index.tolist() == ["a", "b", "c"]
    assert (rows["status"] == "tested").all() and (rows["baseline"] == "base").all()
    methods = sets[("t", "roc_auc")]
    for method in "abc":
        naive = _naive_test(methods[method].run_scores.tolist(), methods["base"].run_scores.tolist(),
                            methods[method].psi.tolist(), methods["base"].psi.tolist())  # fmt: skip
        for key in ("diff", "ci_low", "ci_high", "df", "var_training", "var_test", "p"):
            assert rows.loc[method, key] == pytest.approx(naive[key], rel=1e-9), key
    raw = rows["p"].to_numpy()
    reject, adjusted, _, _ = multipletests(raw, 0.05, method="holm")
    np.testing.assert_allclose(rows["p_holm"], adjusted, rtol=1e-12)
    assert rows["significant"].tolist() == reject.tolist()
    assert (rows["p_holm"] > rows["p"]).any()  # the correction did something
    # a significant member has a direction; the others have none
    assert rows.loc["a", "significant"] and rows.loc["a", "direction"] == "better"
    assert (rows.loc[~rows["significant"], "direction"] == "").all()


def test_adding_a_method_to_another_family_never_changes_a_familys_p_values():
    paper = {"paper": ("base", ("a", "b", "c"))}
    alone = compare(_family_sets(), paper)
    both = compare(_family_sets(extra=("d",)), {**paper, "other": ("base", ("d",))})
    pd.testing.assert_frame_equal(
        both[both["family"] == "paper"].reset_index(drop=True), alone.reset_index(drop=True)
    )
    assert both[both["family"] == "other"]["method"].tolist() == ["d"]
    # whereas a new member of the same family enlarges its Holm correction
    grown = compare(_family_sets(extra=("d",)), {"paper": ("base", ("a", "b", "c", "d"))})
    grown = grown.set_index("method").loc[["a", "b", "c"]]
    np.testing.assert_allclose(grown["p"], alone["p"])
    assert (grown["p_holm"].to_numpy() > alone["p_holm"].to_numpy()).any()


def test_a_method_with_one_run_is_not_testable_and_never_marked():
    sets = _family_sets()
    methods = sets[("t", "roc_auc")]
    methods["single"] = _run_set("single", [0.95])  # far ahead, but one run
    rows = compare(sets, {"paper": ("base", ("a", "b", "c", "single"))}).set_index("method")
    single = rows.loc["single"]
    assert single["status"] == NOT_TESTABLE == "not testable (one pre-training run)"
    assert single["diff"] == pytest.approx(0.95 - methods["base"].run_scores.mean())
    assert math.isnan(single["p"]) and math.isnan(single["p_holm"])
    assert not single["significant"] and single["direction"] == ""
    # it is not part of the family's correction
    tested = rows.loc[["a", "b", "c"]]
    np.testing.assert_allclose(
        tested["p_holm"], multipletests(tested["p"], method="holm")[1], rtol=1e-12
    )
    # a baseline with one run: nothing is testable
    methods["base"] = _run_set("base", [0.8])
    rows = compare(sets, {"paper": ("base", ("a", "b"))})
    assert (rows["status"] == NOT_TESTABLE).all() and not rows["significant"].any()


def test_a_missing_probe_seed_or_run_does_not_switch_the_test():
    scores, predictions = _benchmark()
    # run 1 of method a lost its probe seed 1
    lost = (scores["method"] == "a") & (scores["pretrain_seed"] == 1) & (scores["probe_seed"] == 1)
    del predictions[("a", "mtat", 1, 1)]
    sets, _, _ = run_sets(scores[~lost], predictions)
    run_set = sets[("mtat", "roc_auc")]["a"]
    assert np.isnan(run_set.probe_values[1, 1]) and run_set.num_runs == 3
    assert run_set.run_scores[1] == run_set.probe_values[1, 0]
    # its influences are those of the probe seed it has
    sums = _naive_cluster_psi(predictions[("a", "mtat", 1, 0)], "roc_auc", GROUPS.get)
    np.testing.assert_allclose(run_set.psi[1], [sums[k] for k in sorted(sums)], atol=1e-14)
    # ... and method b lost its whole run 2 (its seeds no longer match the baseline's)
    gone = (scores["method"] == "b") & (scores["pretrain_seed"] == 2)
    predictions = {k: v for k, v in predictions.items() if k[0] != "b" or k[2] != 2}
    sets, _, _ = run_sets(scores[~lost & ~gone], predictions)
    rows = compare(sets, {"paper": ("base", ("a", "b"))})
    assert len(rows) == 4 and (rows["status"] == "tested").all()
    rows = rows[rows["metric"] == "roc_auc"].set_index("method")
    base = sets[("mtat", "roc_auc")]["base"]
    for method, runs in (("a", 3), ("b", 2)):
        run_set = sets[("mtat", "roc_auc")][method]
        assert run_set.num_runs == runs
        naive = _naive_test(run_set.run_scores.tolist(), base.run_scores.tolist(),
                            run_set.psi.tolist(), base.psi.tolist())  # fmt: skip
        for key in ("diff", "df", "var_training", "var_test", "p"):
            assert rows.loc[method, key] == pytest.approx(naive[key], rel=1e-9), (method, key)


def test_compare_without_baseline_results():
    sets = _family_sets()
    del sets[("t", "roc_auc")]["base"]
    rows = compare(sets, {"paper": ("base", ("a", "b"))})
    assert (rows["status"] == "no baseline results").all()
    assert not rows["significant"].any()
    assert compare(sets, {"paper": ("base", ("nobody",))}).empty


# -- missing results and input checks -------------------------------------------------------


def test_missing_results_and_score_checks():
    scores = pd.DataFrame(
        {
            "method": ["a", "a", "b", "b", "b", "b"],
            "task": ["t", "t", "t", "t", "t", "u"],
            "pretrain_seed": [0, 1, 0, 1, 2, 0],
            "probe_seed": [0, 0, 0, 0, 0, 0],
            "metric": ["accuracy"] * 6,
            "value": [0.5, 0.7, 0.8, 0.8, 0.7, 0.1],
        }
    )
    lines = missing_results(scores, ["a", "b", "c"], ["t", "u"], {"t": "accuracy", "u": "roc_auc"})
    assert lines == [
        "a × t: 2 of 3 pre-training runs",
        "c × t: no results",
        "a × u: no results",
        "b × u: primary metric roc_auc missing",
        "c × u: no results",
    ]
    # A plan's pairs: what it left out is not missing; a pair planned with one run (an
    # external encoder) is complete with one, and one planned with 4 lacks one more.
    planned = {("a", "t"): 1, ("b", "t"): 4}
    lines = missing_results(scores, ["a", "b", "c"], ["t", "u"], {"t": "accuracy"}, planned)
    assert lines == ["b × t: 3 of 4 pre-training runs"]
    assert missing_results(scores, None, None, {}, [("a", "t"), ("c", "t")]) == [
        "a × t: 2 of 3 pre-training runs",
        "c × t: no results",
    ]
    with pytest.raises(ValueError, match="duplicate"):
        run_sets(pd.concat([scores, scores.iloc[:1]]), None)
    with pytest.raises(ValueError, match="lacks columns"):
        missing_results(scores.drop(columns="probe_seed"), None, None, {})
    with pytest.raises(ValueError, match="empty"):
        run_sets(scores.iloc[:0], None)
