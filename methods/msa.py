"""Multi-source association (MSA), the paper's pretext task, and its ablations.

Garoufis, Zlatintsi, Maragos, "Multi-Source Contrastive Learning from Musical Audio".
Anchor: a random 1-s crop of a 4-s mixture excerpt. Positive: an independently placed
(time-shifted) 1-s crop of ONE separated source of the same excerpt.

- Source homogeneity: each batch uses a single source type drawn from ``sources``.
- Silence: a ``silence_fraction`` of the batches draw from all excerpts (the positive is
  silent where the source is absent); the others only from excerpts where it is active.
- Loss: the centroid variant (silent positives collapse into one candidate, their mean).

``COLA + random mask`` is the same machinery with random soft masks as "sources".
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from benchmark.pretrain.pairs import PairBatch, PairCorpus

ALL_SOURCES = ("bass", "drums", "vocals", "other")


@dataclass(frozen=True)
class MSA:
    name: str = "msa_multi"
    sources: tuple[str, ...] = ALL_SOURCES
    separator: str = "config"  # the configured separator (Open-Unmix in the paper)
    silence: bool = True  # ablation "without silent segments" sets False
    homogeneous: bool = True  # ablation "mixed source types inside a batch" sets False
    loss: str = "centroid"  # ablation "plain loss" sets "plain"
    time_shift: bool = True  # ablation "without time shift" sets False
    silence_fraction: float = 0.5  # batches that may hold silent positives (paper)
    pretrained: bool = True

    def params(self) -> dict:
        return dataclasses.asdict(self)

    def _excerpts(self, corpus, source, allow_silent, n, rng) -> np.ndarray:
        if allow_silent:
            return rng.integers(0, len(corpus), size=n)
        active = corpus.active(source)
        if len(active) == 0:
            raise ValueError(f"{self.name}: no excerpt where '{source}' is active")
        return active[rng.integers(0, len(active), size=n)]

    def sample(self, corpus: PairCorpus, batch_size: int, rng: np.random.Generator) -> PairBatch:
        missing = [s for s in self.sources if s not in corpus.source_rows]
        if missing:
            raise ValueError(f"{self.name}: corpus lacks sources {missing}; run `separate` first")
        allow_silent = self.silence and rng.random() < self.silence_fraction
        if self.homogeneous:
            source = self.sources[int(rng.integers(len(self.sources)))]
            names = np.full(batch_size, source, dtype=object)
            excerpts = self._excerpts(corpus, source, allow_silent, batch_size, rng)
        else:
            source = None
            names = np.asarray(self.sources, dtype=object)[
                rng.integers(len(self.sources), size=batch_size)
            ]
            excerpts = np.empty(batch_size, dtype=np.int64)
            # In a fixed order: iterating a set of strings follows PYTHONHASHSEED, which would
            # make the batch of a (seed, step) differ between processes.
            for name in sorted(set(names)):
                idx = np.flatnonzero(names == name)
                excerpts[idx] = self._excerpts(corpus, name, allow_silent, len(idx), rng)
        anchor_starts = corpus.random_starts(rng, batch_size)
        positive_starts = (
            corpus.random_starts(rng, batch_size) if self.time_shift else anchor_starts
        )
        anchors = corpus.mix_crops(excerpts, anchor_starts)
        positives, silent = corpus.source_crops(names, excerpts, positive_starts)
        return PairBatch(
            torch.from_numpy(anchors),
            torch.from_numpy(positives),
            torch.from_numpy(silent),
            source,
        )
