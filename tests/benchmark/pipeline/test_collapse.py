"""Issue #11: the evaluated encoder is the trained one, with valid batch-norm statistics, and a
collapse can never pass silently.

A small COLA encoder pre-trained for a few dozen steps on the smoke corpus must
- validate in eval mode below chance loss (before the fix: exactly ln 16, every clip alike);
- give cached embeddings (what the probes read) that vary across clips and agree with the
  same encoder's float32 features;
- give the same probe score from the cache as from those float32 features;
and an encoder whose output is constant must be refused by the probe stage, never scored.

These tests use only interfaces that existed before the fix (MLflow metrics, ``embed``,
``run_probe``), so they fail on the commit before it, for the reasons above.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from benchmark.errors import StageError
from benchmark.evaluation.embed import embed, window_starts
from benchmark.evaluation.metrics import primary_score_fn, score
from benchmark.evaluation.probe import ProbeParams, WindowSet, predict_clips, train_probe
from benchmark.pipeline import probing, stages
from benchmark.pretrain.loop import load_encoder
from tasks import get_task
from tests.fixtures import stage_env

BATCH = 16
# Big enough to learn within a few dozen steps on 2 CPU cores (~1 min): the quarter-size
# encoder of the smoke profile and the small initial logit scale of the CPU profiles.
LEARNING = [
    "encoder.width_coefficient=0.25",
    "encoder.depth_coefficient=0.25",
    "encoder.similarity=cosine",
    "pretrain.steps=40",
    f"pretrain.batch_size={BATCH}",
    "pretrain.val_every=20",
    "pretrain.checkpoint_every=20",
    "pretrain.val_batches=4",
]


@pytest.fixture(scope="module")
def learned(synth_smoke, tmp_path_factory):
    ctx = stage_env(synth_smoke[0], tmp_path_factory.mktemp("collapse"), LEARNING)
    model = stages.run_pretrain(ctx, "cola", 0)
    return ctx, model


def _history(ctx, model, name):
    return {m.step: m.value for m in ctx.tracker.client.get_metric_history(model.run_id, name)}


def test_eval_mode_validation_is_below_chance(learned):
    ctx, model = learned
    val_loss = _history(ctx, model, "val_loss")
    chance = math.log(BATCH)  # COLA: every positive of the batch is a candidate
    assert set(val_loss) == {20, 40}
    assert val_loss[40] < 0.9 * chance, (val_loss, chance)
    accuracy = _history(ctx, model, "val_contrastive_accuracy")
    assert accuracy[40] > 2 / BATCH, accuracy


def _float32_features(ctx, model, store, clips):
    """Naive reference: the encoder of ``final.pt`` on every non-overlapping window."""
    net = load_encoder(ctx.cfg.encoder, model.final_path, torch.device("cpu"))
    crop = ctx.cfg.frontend.crop_frames
    out = []
    with torch.no_grad():
        for clip in clips:
            row = store.index(clip.clip_id)
            starts = window_starts(int(store.lengths[row]), crop, crop)
            x = store.crops(np.full(len(starts), row), starts, crop)
            out.append(net.features(torch.from_numpy(x)).numpy())
    return out


@pytest.fixture(scope="module")
def embedded(learned):
    ctx, model = learned
    task = get_task("mtat")
    dataset = stages.load_task_dataset(ctx, task)
    store = stages.mixture_store(ctx, task.corpus)
    emb = embed(ctx.cfg, model, task, dataset, store, progress=False)
    test_set, test_clips = emb["test"]
    reference = _float32_features(ctx, model, store, test_clips)
    return ctx, task, dataset, emb, reference


def test_cached_embeddings_vary_across_clips_and_match_float32(embedded):
    _ctx, _task, _dataset, emb, reference = embedded
    cached = np.asarray(emb["test"][0].embeddings, dtype=np.float64)
    exact = np.concatenate(reference).astype(np.float64)
    assert cached.shape == exact.shape
    clip_means = np.stack([r.mean(axis=0) for r in reference])
    spread = clip_means.std(axis=0)
    rms = np.sqrt(np.mean(clip_means**2))
    # Across-clip spread: a healthy encoder's is of the order of its values (0.3-1 measured);
    # the collapsed encoders of issue #11 had 1e-5.
    assert np.sqrt(np.mean(spread**2)) / rms > 0.05
    assert np.mean(spread > 1e-3 * rms) > 0.5
    # The cache keeps what the encoder produced: error per dimension well below that
    # dimension's spread (float16 of the standardised value: ~5e-4 of an SD).
    sd = exact.std(axis=0) + 1e-12
    assert np.max(np.abs(cached - exact) / sd) < 5e-3


def test_probe_from_cache_scores_like_float32_features(embedded):
    """Tolerance: 0.01 of macro ROC-AUC. float16 rounding moves each input by ~5e-4 SD, which
    can move a tag's ranking of a few test clips; measured here: differences of ~1e-3."""
    _ctx, task, dataset, emb, reference = embedded
    train, valid, test = (emb[s][0] for s in ("train", "valid", "test"))
    exact_test = WindowSet(np.concatenate(reference), test.clip_index, test.targets)
    score_fn = primary_score_fn(dataset.vocabulary, dataset.multilabel, task.primary)
    spec = task.probe_spec(len(dataset.vocabulary))
    result = train_probe(
        spec, ProbeParams(lr=1e-3), train, valid, seed=0, score_fn=score_fn, max_epochs=20
    )
    names = list(dataset.vocabulary)
    from_cache = score(test.targets, predict_clips(result.model, test), names, True)["roc_auc"]
    from_float32 = score(test.targets, predict_clips(result.model, exact_test), names, True)
    assert abs(from_cache - from_float32["roc_auc"]) < 0.01
    assert from_cache > 0.5  # a trained encoder's probe is above chance on MTAT-like tags


def test_collapsed_encoder_is_refused(learned):
    """An encoder whose pooled output is the same for every input (the last batch norm's
    scale zeroed: a constant before the final activation) is never probed."""
    ctx, model = learned
    state = torch.load(model.final_path, map_location="cpu", weights_only=True)
    state["encoder.net._bn1.weight"] = torch.zeros_like(state["encoder.net._bn1.weight"])
    path = model.final_path.parent.parent / "constant" / "final.pt"
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    constant = dataclasses.replace(model, key="constant-encoder", final_path=path, run_id=None)
    with pytest.raises(StageError, match="without spread"):
        probing.run_probe(ctx, constant, get_task("mtat"), 0, params_mode="default")
    probe_runs = [r for r in ctx.tracker.runs() if r.data.tags.get("bench.kind") == "probe"]
    assert not [r for r in probe_runs if r.data.tags.get("pretrain_run_id") == ""]
