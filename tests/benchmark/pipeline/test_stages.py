"""Stages end to end on the smoke corpus: every task for random_init and a pre-trained method,
metrics recomputed independently from the saved predictions, the embedding cache, tuning
(budget, no test data, tuned probes) and which runs a report reads."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    roc_auc_score,
)

from benchmark.errors import StageError
from benchmark.evaluation import embed as embed_mod
from benchmark.evaluation.probe import WindowSet
from benchmark.pipeline import probing, stages
from benchmark.pipeline.context import Context
from benchmark.pipeline.tracking import Tracker, collect, select_results
from tasks import TASKS
from tests.fixtures import stage_env

PROBES = [
    "probe.max_epochs=3",
    "probe.patience=1",
    "probe.train_hop_frames=98",
    "probe.params=default",
]


@pytest.fixture(scope="module")
def env(synth_smoke, tmp_path_factory):
    return stage_env(synth_smoke[0], tmp_path_factory.mktemp("runs"), PROBES)


def test_every_task_runs_for_random_init_and_cola(env, tmp_path):
    ctx = env
    tracker = ctx.tracker
    for method in ("random_init", "cola"):
        model = stages.run_pretrain(ctx, method, 0)
        for task in TASKS.values():
            first = probing.run_probe(ctx, model, task, 0)
            assert first.status == "ran"
            # a rerun of finished work is skipped and names the run that holds it
            again = probing.run_probe(ctx, model, task, 0)
            assert (again.status, again.run_id) == ("done", first.run_id)
    data = collect(tracker, tmp_path)
    scores = data["scores"]
    assert len(data["predictions"]) == 2 * len(TASKS)
    for (method, task_name, _pretrain_seed, _probe_seed), pred in data["predictions"].items():
        task = TASKS[task_name]
        # each test clip's cluster (song, instrument, artist) travels with its prediction
        cluster = {c.clip_id: c.cluster for c in stages.load_task_dataset(ctx, task).clips}
        assert pred["groups"] == [cluster[c] for c in pred["clip_ids"]]
        if task_name != "fma":  # the smoke corpus has one FMA test track per genre and artist
            assert len(set(pred["groups"])) < len(pred["groups"]), task_name
        logged = scores[(scores.method == method) & (scores.task == task_name)]
        logged = dict(zip(logged.metric, logged.value, strict=True))
        targets, probs = pred["targets"], pred["scores"]
        if task.multilabel:
            keep = (targets.sum(0) > 0) & (targets.sum(0) < len(targets))
            expected = roc_auc_score(targets[:, keep], probs[:, keep], average="macro")
            assert logged["roc_auc"] == pytest.approx(expected, abs=1e-12)
            expected = average_precision_score(targets[:, keep], probs[:, keep], average="macro")
            assert logged["pr_auc"] == pytest.approx(expected, abs=1e-12)
            # per-tag scores (the tag-wise figures) for the kept tags, in vocabulary order
            per_tag = data["per_tag"]
            rows = per_tag[(per_tag.method == method) & (per_tag.task == task_name)]
            kept = [t for t, k in zip(pred["vocabulary"], keep, strict=True) if k]
            assert list(rows.tag) == kept
            column = pred["vocabulary"].index(kept[0])
            tag0 = roc_auc_score(targets[:, column], probs[:, column])
            assert rows.roc_auc.iloc[0] == pytest.approx(tag0, abs=1e-12)
        else:
            predicted = probs.argmax(1)
            assert logged["accuracy"] == pytest.approx(accuracy_score(targets, predicted))
            expected = balanced_accuracy_score(targets, predicted)
            assert logged["balanced_accuracy"] == pytest.approx(expected, abs=1e-12)


def test_second_probe_run_does_not_call_the_encoder(env, monkeypatch):
    ctx = env
    model = stages.run_pretrain(ctx, "cola", 0)
    task = TASKS["fma"]
    probing.run_probe(ctx, model, task, 1)

    def no_encoder(*args, **kwargs):
        raise AssertionError("the encoder was run although embeddings are cached")

    monkeypatch.setattr(embed_mod, "_encoder_for", no_encoder)
    assert probing.run_probe(ctx, model, task, 1, force=True).status == "ran"
    assert probing.run_probe(ctx, model, task, 2).status == "ran"


def test_pretrain_is_tracked_once(env):
    ctx = env
    tracker = ctx.tracker
    first = stages.run_pretrain(ctx, "cola", 0)
    again = stages.run_pretrain(ctx, "cola", 0)
    assert again.cached and again.run_id == first.run_id
    runs = [r for r in tracker.runs() if r.data.tags.get("bench.kind") == "pretrain"]
    assert len({r.data.tags["bench.key"] for r in runs}) == len(runs)
    assert np.isfinite(runs[0].data.metrics["loss"])


def test_tuning_has_the_budget_feeds_tuned_probes_and_never_reads_test_data(
    env, monkeypatch, tmp_path
):
    ctx = env
    cfg, tracker = ctx.cfg, ctx.tracker
    model = stages.run_pretrain(ctx, "cola", 0)
    task = TASKS["fma"]
    with pytest.raises(StageError, match="python -m benchmark tune --profile smoke"):
        probing.run_probe(ctx, model, task, 0, params_mode="tuned")
    out = probing.run_tune(ctx, model, task)
    complete = [t for t in out["trials"] if t["state"] == "COMPLETE"]
    assert len(complete) == cfg.tune.num_trials
    assert out["best_value"] == max(t["value"] for t in complete)
    tune_runs = [r for r in tracker.runs() if r.data.tags.get("bench.kind") == "tune"]
    assert len(tune_runs) == 1 and tune_runs[0].data.tags["study"] == out["study"]
    assert probing.run_tune(ctx, model, task)["cached"]

    # probe.params=tuned: the probe trains with the best trial's parameters, and says so.
    tuned = probing.run_probe(ctx, model, task, 0, params_mode="tuned")
    run = tracker.client.get_run(tuned.run_id)
    assert run.data.tags["params_mode"] == "tuned"
    assert float(run.data.params["params.lr"]) == pytest.approx(out["best_params"]["lr"])
    assert float(run.data.params["params.weight_decay"]) == pytest.approx(
        out["best_params"]["weight_decay"]
    )

    # The same search with the test split destroyed (NaN embeddings, permuted labels) in a
    # fresh study and MLflow store finds the same trials: tuning never looks at test data.
    fresh = replace(
        cfg, paths=replace(cfg.paths, optuna_storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    )
    other = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "t", artifact_root=tmp_path / "art")
    monkeypatch.setattr(probing, "tuned_path", lambda *args: tmp_path / "tuned.json")
    real_embed = probing.embed

    def destroyed_test(*args, **kwargs):
        out = dict(real_embed(*args, **kwargs))
        windows, clips = out["test"]
        out["test"] = (
            WindowSet(
                np.full(windows.embeddings.shape, np.nan, dtype=np.float32),
                windows.clip_index,
                np.random.default_rng(0).permutation(windows.targets),
            ),
            clips,
        )
        return out

    monkeypatch.setattr(probing, "embed", destroyed_test)
    # (the model's pre-training run lives in the first store, not in this fresh one)
    elsewhere = replace(model, run_id=None)
    again = probing.run_tune(Context(fresh, other, progress=False), elsewhere, task)
    assert again["best_params"] == out["best_params"]
    assert [t["value"] for t in again["trials"]] == [t["value"] for t in out["trials"]]


def _run(run_id, start, kind, **tags):
    return SimpleNamespace(
        info=SimpleNamespace(run_id=run_id, start_time=start, status="FINISHED"),
        data=SimpleNamespace(tags={"bench.kind": kind, **tags}),
    )


def test_report_reads_the_plans_runs_or_the_newest_of_each_result():
    probe = dict(method="cola", task="fma", pretrain_seed="0", probe_seed="0")
    runs = [
        _run("old", 1, "probe", **probe),
        _run("forced", 2, "probe", **probe, supersedes="old"),
        _run("other-seed", 3, "probe", **(probe | {"probe_seed": "1"})),
        _run("pre", 1, "pretrain", method="cola", seed="0"),
        _run("sep", 1, "separate"),
    ]
    newest = {r.info.run_id for r in select_results(runs)}
    assert newest == {"forced", "other-seed", "pre", "sep"}
    planned = {r.info.run_id for r in select_results(runs, {"old", "pre"})}
    assert planned == {"old", "pre", "sep"}  # other configurations' runs never mix in


def test_a_superseded_record_is_not_read_twice():
    """A train-separator run redone because its model had gone (issue #13's rerun rule) left
    two FINISHED records of one separator; the report read both quality tables."""
    runs = [
        _run("old", 1, "train-separator", **{"bench.superseded_by": "new"}),
        _run("new", 2, "train-separator", **{"bench.supersedes": "old"}),
        _run("sep", 1, "separate"),
    ]
    assert {r.info.run_id for r in select_results(runs)} == {"new", "sep"}
    assert {r.info.run_id for r in select_results(runs, {"x"})} == {"new", "sep"}


def test_embeddings_follow_the_checkpoint_content(env, monkeypatch, tmp_path):
    """Same weights at another path reuse the cache; changed weights under the same
    pre-training key (a retrained, non-deterministic run) get new embeddings."""
    import shutil

    import torch

    ctx = env
    cfg = ctx.cfg
    model = stages.run_pretrain(ctx, "cola", 0)
    task = TASKS["fma"]
    dataset = stages.load_task_dataset(ctx, task)
    store = stages.mixture_store(ctx, task.corpus)
    before = embed_mod.embed(cfg, model, task, dataset, store, progress=False)

    shutil.copy(model.final_path, tmp_path / "copy.pt")
    copy = replace(model, final_path=tmp_path / "copy.pt")
    with monkeypatch.context() as m:
        m.setattr(embed_mod, "_encoder_for", lambda *a, **k: pytest.fail("encoder was run"))
        assert (
            embed_mod.embed(cfg, copy, task, dataset, store, progress=False)["key"] == before["key"]
        )

    state = torch.load(model.final_path, weights_only=True)
    torch.save(
        {k: v * 1.5 if v.is_floating_point() else v for k, v in state.items()}, tmp_path / "w.pt"
    )
    changed = embed_mod.embed(
        cfg, replace(model, final_path=tmp_path / "w.pt"), task, dataset, store, progress=False
    )
    assert changed["key"] != before["key"]
    assert not np.array_equal(changed["test"][0].embeddings, before["test"][0].embeddings)


def test_separator_specs_map_to_their_settings():
    from dataclasses import replace

    from benchmark.config import resolve
    from benchmark.errors import StageError
    from benchmark.pipeline.stages import separation_for

    cfg = resolve("default")
    assert separation_for(cfg, "config") == cfg.separation
    assert separation_for(cfg, "oracle") == replace(cfg.separation, separator="oracle")
    assert separation_for(cfg, "random_mask").separator == "random_mask"
    short = separation_for(cfg, "trained:0.25")
    assert (short.separator, short.umx_model, short.train_steps) == ("umx", "trained", 150)
    assert short.train_hidden_size == cfg.separation.train_hidden_size
    for bad in ("trained:0", "trained:x", "umx2"):
        with pytest.raises(StageError):
            separation_for(cfg, bad)


def test_a_tree_with_most_files_missing_fails_the_feature_build(synth_smoke, tmp_path):
    """Issue #13: missing audio files did not count toward data.max_bad_fraction (the
    loaders skip them), so a tree with nearly every listed file missing built with exit
    status 0 and "(0 skipped)"."""
    import shutil

    from benchmark.errors import EXPECTED_FAILURES, StoreBuildError

    root = tmp_path / "synth"
    root.mkdir()
    for name in ("mtat", "nsynth", "manifest.json"):
        (root / name).symlink_to(synth_smoke[0] / name)
    shutil.copytree(synth_smoke[0] / "fma", root / "fma")
    tracks = sorted((root / "fma").rglob("*.mp3"))
    for path in tracks[2:]:
        path.unlink()
    ctx = stage_env(root, tmp_path / "runs", PROBES)
    with pytest.raises(StoreBuildError) as info:
        stages.mixture_store(ctx, "fma")
    assert isinstance(info.value, EXPECTED_FAILURES)  # one line, exit status 1
    assert f"{len(tracks) - 2} of {len(tracks)} clips are bad" in str(info.value)
