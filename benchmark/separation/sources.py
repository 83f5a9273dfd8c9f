"""Stage ``separate``: per-source log-mel + silence flags of the pre-training clips.

Written through :mod:`benchmark.data.store` like the mixtures (:mod:`benchmark.data.features`),
content-keyed by the audio files' identity, the front end, the separation settings and what
identifies the separator's weights, so reruns only redo what changed. Source excerpts align with
the mixture's: excerpt ``k`` covers frames ``[392 k, 392 (k + 1))`` (:func:`excerpt_spans`).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np

from benchmark.config import FrontEndConfig, SeparationConfig, section_hash, to_dict
from benchmark.data.audio import AudioError, log_mel
from benchmark.data.features import AudioItem, excerpt_spans, load_checked, store_root
from benchmark.data.store import (
    BadClip,
    Entry,
    FeatureStore,
    Job,
    build,
    file_key,
    shard_size_for,
)
from benchmark.separation import build_separator
from benchmark.separation.base import SOURCES, SeparationError, Separator


class SeparatorOnFirstUse:
    """The separator of one build, made when the first clip needs it and then reused.

    A build whose shards are all finished never loads the model; a separator that cannot be
    built raises on every clip (each one is then a bad clip naming the reason).
    """

    def __init__(self, sep_cfg: SeparationConfig, stems_root: Path | None):
        self.sep_cfg, self.stems_root = sep_cfg, stems_root
        self._separator: Separator | None = None

    def __call__(self) -> Separator:
        if self._separator is None:
            self._separator = build_separator(self.sep_cfg, stems_root=self.stems_root)
        return self._separator


def extract_sources(
    payload: tuple[str, Path],
    *,
    cfg: FrontEndConfig,
    silence_threshold: float,
    separator: SeparatorOnFirstUse,
) -> list[Entry]:
    """Separate one clip ``(clip_id, path)``; per source: log-mel (None when silent
    throughout) + silence flags. Raises :class:`BadClip` for a clip to skip."""
    clip_id, path = payload
    wave = load_checked(Path(path), cfg)
    spans = excerpt_spans(len(wave), cfg)
    if not spans:
        raise BadClip(f"{path}: shorter than one 4-s excerpt; no sources to pair")
    try:
        sources = separator().separate(wave, clip_id)
    except (SeparationError, AudioError) as exc:
        raise BadClip(str(exc)) from None
    entries = []
    for name in SOURCES:
        src = np.asarray(sources[name], dtype=np.float32)
        if not np.all(np.isfinite(src)):
            raise BadClip(f"{path}: separator produced non-finite samples for {name}")
        # Silence is judged on the raw separated waveform, before any normalisation (code).
        flags = silence_flags(src, spans, silence_threshold)
        feats = None if all(flags) else log_mel(src, cfg)
        entries.append(Entry(name, feats, {"silent": [bool(f) for f in flags]}))
    return entries


def silence_flags(wave: np.ndarray, spans, threshold: float) -> list[bool]:
    """True for each excerpt span ``[a, b)`` of ``wave`` (samples) whose mean absolute amplitude
    is ``<= threshold`` (paper, section 3: 0.01 over 4 s, before any normalisation)."""
    return [float(np.mean(np.abs(wave[a:b]))) <= threshold for a, b in spans]


def sources_root(
    cache_dir: Path,
    dataset: str,
    cfg: FrontEndConfig,
    sep_cfg: SeparationConfig,
    separator_identity: str = "",
    corpus_version: str = "",
) -> Path:
    """Where :func:`build_sources` keeps the sources of this front end, separator and corpus."""
    key = _sources_key(cfg, sep_cfg, separator_identity, corpus_version)
    return store_root(cache_dir, f"src-{sep_cfg.separator}", dataset, key)


def _sources_key(cfg, sep_cfg, separator_identity: str, corpus_version: str) -> str:
    """Content key of separated sources (training settings of the separator excluded: its
    weights enter through ``separator_identity``, which then also replaces ``umx_model``, the
    model's name or folder: the same weights in another folder give the same sources)."""
    sep_key_cfg = {
        k: v
        for k, v in to_dict(sep_cfg).items()
        if not k.startswith("train_") and not (k == "umx_model" and separator_identity)
    }
    return section_hash(
        cfg,
        extra={"sep": sep_key_cfg, "identity": separator_identity, "corpus": corpus_version},
    )


def build_sources(
    items: Sequence[AudioItem],
    cache_dir: Path,
    dataset: str,
    cfg: FrontEndConfig,
    sep_cfg: SeparationConfig,
    *,
    stems_root: Path | None = None,
    separator_identity: str = "",
    corpus_version: str = "",
    max_bad_fraction: float = 0.01,
    progress: bool = True,
    num_threads: int = 1,
) -> FeatureStore:
    """Stage ``separate``: per-source log-mel excerpts aligned with the mixtures, plus flags.

    ``separator_identity`` names what the config alone cannot (e.g. the hash of a locally
    trained model's weights), so new weights invalidate the cache. The separator runs on
    ``num_threads`` torch threads (its output depends on the count); the caller's count is
    restored afterwards.
    Raises :class:`benchmark.errors.StoreBuildError` when too many clips are bad.
    """
    key = _sources_key(cfg, sep_cfg, separator_identity, corpus_version)
    root = sources_root(cache_dir, dataset, cfg, sep_cfg, separator_identity, corpus_version)
    jobs = [Job(it.clip_id, file_key(it.path, key), (it.clip_id, Path(it.path))) for it in items]
    extract = partial(
        extract_sources,
        cfg=cfg,
        silence_threshold=sep_cfg.silence_threshold,
        separator=SeparatorOnFirstUse(sep_cfg, stems_root),
    )
    # Separation runs in this process, one model on ``num_threads`` threads (not a pool).
    build(
        root,
        jobs,
        extract,
        shard_size=shard_size_for(len(jobs), 2, 16),  # a separated song takes a while
        workers=1,
        max_bad_fraction=max_bad_fraction,
        desc=f"separate {dataset} ({sep_cfg.separator})",
        progress=progress,
        num_threads=num_threads,
    )
    return FeatureStore(root)


def source_activity(store: FeatureStore) -> dict[str, dict[str, int]]:
    """Per source: how many excerpts are active and how many there are in all."""
    table: dict[str, dict[str, int]] = {}
    for source, meta in zip(store.sources, store.metas, strict=True):
        flags = meta.get("silent", [])
        row = table.setdefault(source, {"active": 0, "total": 0})
        row["active"] += sum(1 for f in flags if not f)
        row["total"] += len(flags)
    return table
