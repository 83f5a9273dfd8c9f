"""Stage ``features``: the log-mel of every clip's mixture, and the excerpt layout.

Written through :mod:`benchmark.data.store`, content-keyed by the audio files' identity and
the configuration that shapes their output, so reruns only redo what changed. The sources'
features (stage ``separate``) are built the same way by :mod:`benchmark.separation.sources`.

Excerpts: a clip of ``F`` frames holds ``F // excerpt_frames`` excerpts of 392 frames (4 s);
excerpt ``k`` covers frames ``[392 k, 392 (k + 1))`` and the samples those frames read.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmark.config import FrontEndConfig, section_hash
from benchmark.data.audio import AudioError, load_audio, log_mel, num_frames
from benchmark.data.store import (
    BadClip,
    Entry,
    FeatureStore,
    Job,
    build,
    file_key,
    shard_size_for,
)

log = logging.getLogger(__name__)

MIX = "mix"


@dataclass(frozen=True)
class AudioItem:
    """A clip to featurise: its id and audio file (what every dataset loader provides), and
    the part of the file it is (``span``: start and end in seconds; None: the whole file)."""

    clip_id: str
    path: Path
    span: tuple[float, float] | None = None


def excerpt_spans(num_samples: int, cfg: FrontEndConfig) -> list[tuple[int, int]]:
    """Sample span ``[start, end)`` that each 4-s excerpt's frames read."""
    count = num_frames(num_samples, cfg) // cfg.excerpt_frames
    stride = cfg.excerpt_frames * cfg.hop_length
    width = (cfg.excerpt_frames - 1) * cfg.hop_length + cfg.win_length
    return [(k * stride, k * stride + width) for k in range(count)]


def load_checked(path: Path, cfg: FrontEndConfig, span=None) -> np.ndarray:
    """The clip (``span`` of the file, or all of it) at 16 kHz; raises :class:`BadClip` for
    one that is unreadable, shorter than a crop or all zeros (the store skips and counts it)."""
    try:
        wave = load_audio(path, cfg.sample_rate, span)
    except AudioError as exc:
        raise BadClip(str(exc)) from None
    if num_frames(len(wave), cfg) < cfg.crop_frames:
        raise BadClip(f"{path}: {len(wave) / cfg.sample_rate:.2f} s is shorter than one crop")
    if not np.any(wave):
        raise BadClip(f"{path}: audio is all zeros")
    return wave


def extract_mixture(payload: tuple) -> list[Entry]:
    """``(path, cfg)`` or ``(path, cfg, span)``: the clip's log-mel."""
    path, cfg, *span = payload
    wave = load_checked(Path(path), cfg, span[0] if span else None)
    feats = log_mel(wave, cfg)
    return [Entry(MIX, feats, {"num_samples": len(wave)})]


def store_root(cache_dir: Path, kind: str, dataset: str, key: str) -> Path:
    return Path(cache_dir) / "features" / f"{dataset}-{kind}-{key}"


def _mixture_key(cfg: FrontEndConfig, corpus_version: str) -> str:
    return section_hash(cfg, extra={"kind": MIX, "corpus": corpus_version})


def mixture_root(
    cache_dir: Path, dataset: str, cfg: FrontEndConfig, corpus_version: str = ""
) -> Path:
    """Where :func:`build_mixtures` keeps ``dataset``'s store: a folder named by its content
    key (the front end and ``corpus_version``), known before anything is built."""
    return store_root(cache_dir, MIX, dataset, _mixture_key(cfg, corpus_version))


def build_mixtures(
    items: Sequence[AudioItem],
    cache_dir: Path,
    dataset: str,
    cfg: FrontEndConfig,
    *,
    corpus_version: str = "",
    workers: int = 1,
    max_bad_fraction: float = 0.01,
    progress: bool = True,
    missing: Sequence[tuple[str, str]] = (),
) -> FeatureStore:
    """Stage ``features``: the log-mel of every clip's mixture, one entry ``(clip_id, "mix")``.

    ``corpus_version`` (e.g. the synthetic corpus's generator version, size and seed) joins
    every content key.
    ``missing``: ``(clip_id, reason)`` of the listed clips without usable files (the dataset
    loaders skip them); they count as bad clips. Raises :class:`StoreBuildError` when more
    than ``max_bad_fraction`` of the listed clips are bad.
    """
    key = _mixture_key(cfg, corpus_version)
    root = mixture_root(cache_dir, dataset, cfg, corpus_version)
    # A whole file keeps the job key and payload it always had (existing stores stay valid).
    jobs = [
        Job(it.clip_id, file_key(it.path, key), (Path(it.path), cfg))
        if it.span is None
        else Job(it.clip_id, file_key(it.path, key, *it.span), (Path(it.path), cfg, it.span))
        for it in items
    ]
    build(
        root,
        jobs,
        extract_mixture,
        shard_size=shard_size_for(len(jobs), workers, 64),
        workers=workers,
        max_bad_fraction=max_bad_fraction,
        desc=f"features {dataset}",
        progress=progress,
        missing=missing,
    )
    return FeatureStore(root)
