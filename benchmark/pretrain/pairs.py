"""Crops for pre-training: the excerpts of a corpus and their sources, read from the stores.

A method (``methods/``) turns a :class:`PairCorpus` and a seeded generator into a
:class:`PairBatch`; this module knows the stores' layout so the methods do not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from benchmark.data.store import FeatureStore


@dataclass
class PairBatch:
    """One batch of anchor-positive pairs.

    ``anchors``/``positives``: float32 ``(B, crop_frames, n_mels)``; ``silent``: bool ``(B,)``,
    true where the positive is a silent source; ``source``: the batch's source type (or None).
    """

    anchors: torch.Tensor
    positives: torch.Tensor
    silent: torch.Tensor
    source: str | None = None

    def pin_memory(self) -> PairBatch:
        """Page-locked copies (DataLoader ``pin_memory=True`` calls this on CUDA machines), so
        the host-to-device copies of the loop overlap with compute."""
        return PairBatch(
            self.anchors.pin_memory(),
            self.positives.pin_memory(),
            self.silent.pin_memory(),
            self.source,
        )


class PairCorpus:
    """The 4-s excerpts of the pre-training clips, and per source which rows/flags they have.

    ``mix`` holds one entry ``(clip_id, "mix")`` per clip; ``sources`` (optional) holds
    ``(clip_id, source)`` entries with ``meta["silent"]`` flags per excerpt and no frames
    when the source is silent throughout. Silent crops read as ``silence_value`` everywhere
    (``pretrain.silent_value``: 0.0 in the stored log-mel domain, as the authors' code).
    """

    def __init__(
        self,
        mix: FeatureStore,
        excerpt_frames: int,
        crop_frames: int,
        silence_value: float,
        sources: FeatureStore | None = None,
        clip_ids: list[str] | None = None,
    ):
        self.mix = mix
        self.sources = sources
        self.excerpt_frames = excerpt_frames
        self.crop_frames = crop_frames
        self.silence_value = silence_value
        wanted = set(clip_ids) if clip_ids is not None else None
        names = sorted(set(sources.sources)) if sources is not None else []
        rows, excerpt = [], []
        for i, (cid, src) in enumerate(zip(mix.clip_ids, mix.sources, strict=True)):
            if src != "mix" or (wanted is not None and cid not in wanted):
                continue
            if not all(sources.has(cid, name) for name in names):
                continue  # a clip the separator skipped cannot give MSA pairs
            for k in range(int(mix.lengths[i]) // excerpt_frames):
                rows.append(i)
                excerpt.append(k)
        if not rows:
            raise ValueError(f"{mix.root}: no 4-s excerpt to pre-train on")
        self.mix_rows = np.asarray(rows, dtype=np.int64)
        self.excerpt_index = np.asarray(excerpt, dtype=np.int64)
        self.source_rows: dict[str, np.ndarray] = {}
        self.silent: dict[str, np.ndarray] = {}
        if sources is not None:
            for name in names:
                srows = np.empty(len(rows), dtype=np.int64)
                flags = np.empty(len(rows), dtype=bool)
                for e, (r, k) in enumerate(zip(self.mix_rows, self.excerpt_index, strict=True)):
                    j = sources.index(mix.clip_ids[r], name)
                    srows[e] = j
                    flags[e] = bool(sources.metas[j]["silent"][k])
                self.source_rows[name] = srows
                self.silent[name] = flags

    def __len__(self) -> int:
        return len(self.mix_rows)

    @property
    def source_names(self) -> tuple[str, ...]:
        return tuple(sorted(self.source_rows))

    def active(self, source: str) -> np.ndarray:
        """Indices of the excerpts in which ``source`` is not silent."""
        return np.flatnonzero(~self.silent[source])

    def random_starts(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Crop starts (frames) within an excerpt, uniform over every valid position."""
        return rng.integers(0, self.excerpt_frames - self.crop_frames + 1, size=n)

    def mix_crops(self, excerpts: np.ndarray, starts: np.ndarray) -> np.ndarray:
        base = self.excerpt_index[excerpts] * self.excerpt_frames
        return self.mix.crops(self.mix_rows[excerpts], base + starts, self.crop_frames)

    def source_crops(
        self, source: str | np.ndarray, excerpts: np.ndarray, starts: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Crops of ``source`` (one name, or one per item) and their silence flags."""
        if self.sources is None:
            raise ValueError("this corpus has no separated sources")
        names = np.broadcast_to(np.asarray(source, dtype=object), excerpts.shape)
        out = np.full(
            (len(excerpts), self.crop_frames, self.sources.n_mels or self.mix.n_mels),
            self.silence_value,
            dtype=np.float32,
        )
        silent = np.empty(len(excerpts), dtype=bool)
        for b, (name, e, s) in enumerate(zip(names, excerpts, starts, strict=True)):
            silent[b] = self.silent[name][e]
            if not silent[b]:
                start = int(self.excerpt_index[e]) * self.excerpt_frames + int(s)
                out[b] = self.sources.frames(
                    int(self.source_rows[name][e]), start, self.crop_frames
                )
        return out, silent
