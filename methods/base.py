"""What a pre-training method is: how it makes pairs, which loss it uses, what it needs."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from benchmark.pretrain.pairs import PairBatch, PairCorpus


class Method(Protocol):
    """A pre-training method. Plain frozen dataclasses implement it (see ``methods/``).

    Attributes:
        name: registry key.
        pretrained: False for the untrained floor (no pre-training step at all).
        loss: ``"plain"`` (COLA's cross-entropy) or ``"centroid"`` (the paper's variant).
        sources: source names the method pairs with, or ``()`` for mixture-only methods.
        separator: ``"config"`` (the configured separator, e.g. Open-Unmix), ``"random_mask"``,
            ``"oracle"`` (true stems), ``"trained:<fraction>"`` (Open-Unmix trained here for
            that fraction of ``separation.train_steps``), or ``""`` when no sources are needed.
    """

    name: str
    pretrained: bool
    loss: str
    sources: tuple[str, ...]
    separator: str

    def sample(self, corpus: PairCorpus, batch_size: int, rng: np.random.Generator) -> PairBatch:
        """Draw one batch of pairs; all randomness from ``rng``."""
        ...

    def params(self) -> dict:
        """The method's parameters (part of its pre-training run's content key)."""
        ...
