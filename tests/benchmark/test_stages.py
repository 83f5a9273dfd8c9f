"""Stages end to end on the smoke corpus: every task for random_init and a pre-trained method,
metrics recomputed independently from the saved predictions, and the embedding cache."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, roc_auc_score

from benchmark import evaluate, stages
from benchmark.config import resolve
from benchmark.synth import GENERATOR_VERSION
from benchmark.tracking import Tracker, collect
from tasks import TASKS

OVERRIDES = [
    "encoder.width_coefficient=0.1",
    "encoder.depth_coefficient=0.1",
    "pretrain.steps=2",
    "pretrain.batch_size=4",
    "pretrain.num_workers=0",
    "pretrain.checkpoint_every=2",
    "pretrain.val_every=2",
    "pretrain.val_batches=1",
    "probe.max_epochs=3",
    "probe.patience=1",
    "probe.train_hop_frames=98",
]


@pytest.fixture(scope="module")
def env(synth_smoke, tmp_path_factory):
    root, _ = synth_smoke
    runs = tmp_path_factory.mktemp("runs")
    cfg = resolve("smoke", [*OVERRIDES, f"paths.runs_dir={runs}"])
    # The plan would generate the corpus here; reuse the session's copy instead.
    target = cfg.cache_dir / "synth" / f"smoke-s0-v{GENERATOR_VERSION}"
    target.parent.mkdir(parents=True)
    target.symlink_to(root)
    stages._MEMO.clear()
    tracker = Tracker(cfg.tracking_uri, "mscol-test", artifact_root=runs / "mlartifacts")
    return cfg, tracker


def test_every_task_runs_for_random_init_and_cola(env, tmp_path):
    cfg, tracker = env
    for method in ("random_init", "cola"):
        model = stages.run_pretrain(cfg, method, 0, tracker, progress=False)
        for task in TASKS.values():
            assert evaluate.run_probe(cfg, model, task, 0, tracker, progress=False) == "ran"
            # a rerun of finished work is skipped
            assert evaluate.run_probe(cfg, model, task, 0, tracker, progress=False) == "done"
    data = collect(tracker, tmp_path)
    scores = data["scores"]
    assert len(data["predictions"]) == 2 * len(TASKS)
    for (method, task_name, _seed), pred in data["predictions"].items():
        task = TASKS[task_name]
        logged = scores[(scores.method == method) & (scores.task == task_name)]
        logged = dict(zip(logged.metric, logged.value, strict=True))
        targets, probs = pred["targets"], pred["scores"]
        if task.multilabel:
            keep = (targets.sum(0) > 0) & (targets.sum(0) < len(targets))
            expected = roc_auc_score(targets[:, keep], probs[:, keep], average="macro")
            assert logged["roc_auc"] == pytest.approx(expected, abs=1e-9)
        else:
            expected = accuracy_score(targets, probs.argmax(1))
            assert logged["accuracy"] == pytest.approx(expected, abs=1e-12)


def test_second_probe_run_does_not_call_the_encoder(env, monkeypatch):
    cfg, tracker = env
    model = stages.run_pretrain(cfg, "cola", 0, tracker, progress=False)
    task = TASKS["fma"]
    evaluate.run_probe(cfg, model, task, 1, tracker, progress=False)

    def no_encoder(*args, **kwargs):
        raise AssertionError("the encoder was run although embeddings are cached")

    monkeypatch.setattr(evaluate, "_encoder_for", no_encoder)
    assert evaluate.run_probe(cfg, model, task, 1, tracker, progress=False, force=True) == "ran"
    assert evaluate.run_probe(cfg, model, task, 2, tracker, progress=False) == "ran"


def test_pretrain_is_tracked_once(env):
    cfg, tracker = env
    first = stages.run_pretrain(cfg, "cola", 0, tracker, progress=False)
    again = stages.run_pretrain(cfg, "cola", 0, tracker, progress=False)
    assert again.cached and again.run_id == first.run_id
    runs = [r for r in tracker.runs() if r.data.tags.get("bench.kind") == "pretrain"]
    assert len({r.data.tags["bench.key"] for r in runs}) == len(runs)
    assert np.isfinite(runs[0].data.metrics["loss"])
