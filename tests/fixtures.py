"""Small corpora for tests: in-memory stores for the pairing and training code (no audio
decoding), and stage environments on the smoke synthetic corpus."""

from __future__ import annotations

import numpy as np

from benchmark.data.store import Entry, FeatureStore, Job, build
from benchmark.pretrain.pairs import PairCorpus

SILENCE = 0.0  # a silent source's crop: pretrain.silent_value (the authors' np.zeros)
SOURCES = ("bass", "drums", "vocals", "other")


def _mix_extract(payload):
    i, frames = payload
    rng = np.random.default_rng(i)
    return [Entry("mix", rng.standard_normal((frames, 64)).astype(np.float32) - 5.0)]


def _source_extract(payload):
    """Each source is the mixture plus an offset; source s is silent in excerpt k when
    (i + k + s) % 3 == 0, and vocals are silent throughout in every 4th clip."""
    i, frames = payload
    mix = _mix_extract(payload)[0].features
    out = []
    for s, name in enumerate(SOURCES):
        flags = [(i + k + s) % 3 == 0 for k in range(frames // 392)]
        if name == "vocals" and i % 4 == 0:
            flags = [True] * len(flags)
        feats = None if all(flags) else mix + 0.5 * (s + 1)
        out.append(Entry(name, feats, {"silent": flags}))
    return out


def make_corpus(
    tmp_path, num_clips: int = 6, frames: int = 3 * 392 + 20, sources: bool = True
) -> PairCorpus:
    jobs = [Job(f"c{i:03d}", f"k{i}-{frames}", (i, frames)) for i in range(num_clips)]
    build(tmp_path / "mix", jobs, _mix_extract, progress=False)
    src = None
    if sources:
        build(tmp_path / "src", jobs, _source_extract, progress=False)
        src = FeatureStore(tmp_path / "src")
    return PairCorpus(FeatureStore(tmp_path / "mix"), 392, 98, SILENCE, sources=src)


# A tiny encoder and a two-step pre-training: the stage tests check wiring, not learning.
TINY_PRETRAIN = [
    "encoder.width_coefficient=0.1",
    "encoder.depth_coefficient=0.1",
    "pretrain.steps=2",
    "pretrain.batch_size=4",
    "pretrain.num_workers=0",
    "pretrain.checkpoint_every=2",
    "pretrain.val_every=2",
    "pretrain.val_batches=1",
]


def stage_env(synth_root, runs, overrides=()):
    """The :class:`~benchmark.pipeline.context.Context` (config, tracker, no progress bars) of
    the smoke profile in a fresh runs dir ``runs`` that reuses the generated smoke corpus at
    ``synth_root`` (the plan would generate it there)."""
    from pathlib import Path

    from benchmark.config import resolve
    from benchmark.data.synth import GENERATOR_VERSION
    from benchmark.pipeline.context import Context
    from benchmark.pipeline.tracking import Tracker

    runs = Path(runs)
    cfg = resolve("smoke", [*TINY_PRETRAIN, *overrides, f"paths.runs_dir={runs}"])
    target = cfg.cache_dir / "synth" / f"smoke-s0-v{GENERATOR_VERSION}"
    target.parent.mkdir(parents=True)
    target.symlink_to(synth_root)
    tracker = Tracker(cfg.tracking_uri, "mscol-test", artifact_root=runs / "mlartifacts")
    return Context(cfg, tracker, progress=False)
