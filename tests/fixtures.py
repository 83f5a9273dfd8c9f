"""Small in-memory corpora for tests of the pairing and training code (no audio decoding)."""

from __future__ import annotations

import numpy as np

from benchmark.pairs import PairCorpus
from benchmark.store import Entry, FeatureStore, Job, build

SILENCE = float(np.log(1e-6))
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
