"""What every separator shares: the source names, the error type, the protocol, stem loading."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Protocol

import numpy as np

from benchmark.data.audio import AudioError, load_audio
from benchmark.errors import SeparationError

SOURCES = ("bass", "drums", "vocals", "other")  # the four Open-Unmix targets (paper)
SAMPLE_RATE = 16000  # Hz: separators take and return 16-kHz audio (paper: front-end rate)
MIX_NAME = "mix"  # <stems_root>/<clip_id>/mix.flac: the mixture of a multitrack clip


class Separator(Protocol):
    """Splits a mono 16-kHz mixture into the four :data:`SOURCES`.

    Concrete separators subclass this protocol explicitly to inherit the looping
    :meth:`separate_batch`; the batched Open-Unmix separator overrides it.
    """

    name: str

    def separate(self, wave: np.ndarray, clip_id: str) -> dict[str, np.ndarray]:
        """Separate one clip.

        ``wave``: mono float32 ``(n,)`` at 16 kHz, not normalised. Returns
        ``{source: float32 (n,) at 16 kHz}`` for every source in :data:`SOURCES`.
        Raises :class:`SeparationError` naming the clip.
        """
        ...

    def separate_batch(
        self, waves: list[np.ndarray], clip_ids: list[str]
    ) -> list[dict[str, np.ndarray]]:
        """Separate several clips; the default loops over :meth:`separate`."""
        if len(waves) != len(clip_ids):
            raise ValueError(f"{len(waves)} waveforms but {len(clip_ids)} clip ids")
        return [self.separate(w, c) for w, c in zip(waves, clip_ids, strict=True)]


def check_wave(wave: np.ndarray, clip_id: str) -> np.ndarray:
    """Return ``wave`` as contiguous float32 ``(n,)``; raise SeparationError if unusable."""
    wave = np.asarray(wave)
    if wave.ndim != 1:
        raise SeparationError(f"clip {clip_id}: expected a mono waveform (n,), got {wave.shape}")
    if wave.size == 0:
        raise SeparationError(f"clip {clip_id}: empty waveform")
    if not np.all(np.isfinite(wave)):
        raise SeparationError(f"clip {clip_id}: waveform holds NaN or infinite samples")
    return np.ascontiguousarray(wave, dtype=np.float32)


def stem_path(stems_root: Path, clip_id: str, name: str) -> Path:
    """``<stems_root>/<clip_id>/<name>.flac`` (name: a source or ``mix``)."""
    return Path(stems_root) / clip_id / f"{name}.flac"


def load_stem(stems_root: Path, clip_id: str, name: str) -> np.ndarray:
    """Load one stem (or the mixture) of a multitrack clip as float32 ``(n,)`` at 16 kHz.

    Raises :class:`SeparationError` naming the file when it is missing or undecodable.
    """
    path = stem_path(stems_root, clip_id, name)
    if not path.is_file():
        raise SeparationError(f"clip {clip_id}: stem file {path} does not exist")
    try:
        return load_audio(path, SAMPLE_RATE)
    except AudioError as exc:
        raise SeparationError(f"clip {clip_id}: {exc}") from None


def load_stems(stems_root: Path, clip_id: str) -> dict[str, np.ndarray]:
    """All four true stems of a clip, ``{source: float32 (n,)}``; lengths must agree."""
    stems = {s: load_stem(stems_root, clip_id, s) for s in SOURCES}
    lengths = {s: len(w) for s, w in stems.items()}
    if len(set(lengths.values())) != 1:
        raise SeparationError(f"clip {clip_id}: stems differ in length {lengths}")
    return stems


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from a SHA-256 of the parts: equal across processes, unlike ``hash()``."""
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1
