"""The floor: a randomly initialised encoder, never pre-trained.

Its BatchNorm statistics are re-estimated on each task's training windows before embedding
(REFERENCE.md section 9): initial running statistics give degenerate features on log-mel.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from benchmark.pretrain.pairs import PairBatch, PairCorpus


@dataclass(frozen=True)
class RandomInit:
    name: str = "random_init"
    pretrained: bool = False
    loss: str = "plain"
    sources: tuple[str, ...] = ()
    separator: str = ""

    def params(self) -> dict:
        return dataclasses.asdict(self)

    def sample(self, corpus: PairCorpus, batch_size: int, rng: np.random.Generator) -> PairBatch:
        raise ValueError("random_init is never pre-trained; it has no pairs")
