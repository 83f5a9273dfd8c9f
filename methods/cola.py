"""COLA (Saeed et al., ICASSP 2021) and COLA + MWS (Zhao et al., S3T, ICASSP 2022).

Anchor and positive are two independent random 1-s crops of the same 4-s mixture excerpt;
with ``augment`` each crop also gets its own MWS augmentation (methods/mws.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from benchmark.pretrain.pairs import PairBatch, PairCorpus
from methods.mws import mws_augment


@dataclass(frozen=True)
class COLA:
    name: str = "cola"
    augment: bool = False  # COLA + MWS: mask, warp, shift each crop independently
    # Added to every pre-training seed: a copy of a method under another name (the negative
    # control) trains on disjoint seeds, i.e. independent runs of the same method.
    seed_offset: int = 0
    pretrained: bool = True
    loss: str = "plain"
    sources: tuple[str, ...] = ()
    separator: str = ""

    def params(self) -> dict:
        return dataclasses.asdict(self)

    def sample(self, corpus: PairCorpus, batch_size: int, rng: np.random.Generator) -> PairBatch:
        excerpts = rng.integers(0, len(corpus), size=batch_size)
        anchors = corpus.mix_crops(excerpts, corpus.random_starts(rng, batch_size))
        positives = corpus.mix_crops(excerpts, corpus.random_starts(rng, batch_size))
        if self.augment:
            # Anchor and positive each get their own coin flips (S3T).
            anchors = np.stack([mws_augment(a, rng) for a in anchors])
            positives = np.stack([mws_augment(p, rng) for p in positives])
        return PairBatch(
            torch.from_numpy(anchors),
            torch.from_numpy(positives),
            torch.zeros(batch_size, dtype=torch.bool),
        )
