"""The two feature stages: log-mel of mixtures, and log-mel + silence flags of sources.

Both write through :mod:`benchmark.store`, content-keyed by the audio files' identity and
the configuration that shapes their output, so reruns only redo what changed.

Excerpts: a clip of ``F`` frames holds ``F // excerpt_frames`` excerpts of 392 frames (4 s);
excerpt ``k`` covers frames ``[392 k, 392 (k + 1))`` and the samples those frames read.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmark.audio import AudioError, load_audio, log_mel, num_frames
from benchmark.config import FrontEndConfig, SeparationConfig, section_hash, to_dict
from benchmark.store import BadClip, Entry, FeatureStore, Job, build, file_key

log = logging.getLogger(__name__)

MIX = "mix"


@dataclass(frozen=True)
class AudioItem:
    """A clip to featurise: its id and audio file (what every dataset loader provides)."""

    clip_id: str
    path: Path


def excerpt_spans(num_samples: int, cfg: FrontEndConfig) -> list[tuple[int, int]]:
    """Sample span ``[start, end)`` that each 4-s excerpt's frames read."""
    count = num_frames(num_samples, cfg) // cfg.excerpt_frames
    stride = cfg.excerpt_frames * cfg.hop_length
    width = (cfg.excerpt_frames - 1) * cfg.hop_length + cfg.win_length
    return [(k * stride, k * stride + width) for k in range(count)]


def _load_checked(path: Path, cfg: FrontEndConfig) -> np.ndarray:
    try:
        wave = load_audio(path, cfg.sample_rate)
    except AudioError as exc:
        raise BadClip(str(exc)) from None
    if num_frames(len(wave), cfg) < cfg.crop_frames:
        raise BadClip(f"{path}: {len(wave) / cfg.sample_rate:.2f} s is shorter than one crop")
    if not np.any(wave):
        raise BadClip(f"{path}: audio is all zeros")
    return wave


def extract_mixture(payload: tuple[Path, FrontEndConfig]) -> list[Entry]:
    path, cfg = payload
    wave = _load_checked(Path(path), cfg)
    feats = log_mel(wave, cfg)
    return [Entry(MIX, feats, {"num_samples": len(wave)})]


def store_root(cache_dir: Path, kind: str, dataset: str, key: str) -> Path:
    return Path(cache_dir) / "features" / f"{dataset}-{kind}-{key}"


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
) -> FeatureStore:
    """Stage ``features``: the log-mel of every clip's mixture, one entry ``(clip_id, "mix")``.

    ``corpus_version`` (e.g. the synthetic generator's version) joins every content key.
    """
    key = section_hash(cfg, extra={"kind": MIX, "corpus": corpus_version})
    root = store_root(cache_dir, MIX, dataset, key)
    jobs = [Job(it.clip_id, file_key(it.path, key), (Path(it.path), cfg)) for it in items]
    build(
        root,
        jobs,
        extract_mixture,
        workers=workers,
        max_bad_fraction=max_bad_fraction,
        desc=f"features {dataset}",
        progress=progress,
    )
    return FeatureStore(root)


# -- sources ----------------------------------------------------------------------------

_SEPARATOR_CACHE: dict[str, object] = {}


def _separator(sep_cfg: SeparationConfig, stems_root: Path | None):
    from benchmark.separation import build_separator

    k = section_hash(sep_cfg, extra={"stems": str(stems_root)})
    if k not in _SEPARATOR_CACHE:
        _SEPARATOR_CACHE.clear()
        _SEPARATOR_CACHE[k] = build_separator(sep_cfg, stems_root=stems_root)
    return _SEPARATOR_CACHE[k]


def extract_sources(
    payload: tuple[str, Path, FrontEndConfig, SeparationConfig, Path | None],
) -> list[Entry]:
    """Separate one clip; per source: log-mel (None when silent throughout) + silence flags."""
    from benchmark.separation import SOURCES, SeparationError

    clip_id, path, cfg, sep_cfg, stems_root = payload
    wave = _load_checked(Path(path), cfg)
    spans = excerpt_spans(len(wave), cfg)
    if not spans:
        raise BadClip(f"{path}: shorter than one 4-s excerpt; no sources to pair")
    try:
        sources = _separator(sep_cfg, stems_root).separate(wave, clip_id)
    except (SeparationError, AudioError) as exc:
        raise BadClip(str(exc)) from None
    entries = []
    for name in SOURCES:
        src = np.asarray(sources[name], dtype=np.float32)
        if not np.all(np.isfinite(src)):
            raise BadClip(f"{path}: separator produced non-finite samples for {name}")
        # Silence is judged on the raw separated waveform, before any normalisation (code).
        flags = silence_flags(src, spans, sep_cfg.silence_threshold)
        feats = None if all(flags) else log_mel(src, cfg)
        entries.append(Entry(name, feats, {"silent": [bool(f) for f in flags]}))
    return entries


def silence_flags(wave: np.ndarray, spans, threshold: float) -> list[bool]:
    """True for each excerpt span whose mean absolute amplitude is <= ``threshold``."""
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
    weights enter through ``separator_identity``)."""
    sep_key_cfg = {k: v for k, v in to_dict(sep_cfg).items() if not k.startswith("train_")}
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
) -> FeatureStore:
    """Stage ``separate``: per-source log-mel excerpts aligned with the mixtures, plus flags.

    ``separator_identity`` names what the config alone cannot (e.g. the hash of a locally
    trained model's weights), so new weights invalidate the cache.
    """
    key = _sources_key(cfg, sep_cfg, separator_identity, corpus_version)
    root = sources_root(cache_dir, dataset, cfg, sep_cfg, separator_identity, corpus_version)
    jobs = [
        Job(
            it.clip_id,
            file_key(it.path, key),
            (it.clip_id, Path(it.path), cfg, sep_cfg, stems_root),
        )
        for it in items
    ]
    # Separation runs in this process: torch already uses every core for one model.
    build(
        root,
        jobs,
        extract_sources,
        shard_size=16,
        workers=1,
        max_bad_fraction=max_bad_fraction,
        desc=f"separate {dataset} ({sep_cfg.separator})",
        progress=progress,
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
