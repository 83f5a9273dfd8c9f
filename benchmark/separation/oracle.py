"""The oracle separator: the true stems of a multitrack clip (the synthetic corpus has them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmark.config import SeparationConfig
from benchmark.separation.base import SOURCES, SeparationError, Separator, check_wave, load_stem


class OracleSeparator(Separator):
    """Returns ``<stems_root>/<clip_id>/<source>.flac`` as-is, ignoring the waveform's content.

    An upper bound for every real separator. When the mixture given is the clip's
    ``mix.flac`` and that file is the exact sum of the stems (as the synthetic corpus
    writes it), the four sources sum to the mixture exactly.
    Raises :class:`SeparationError` naming the file when a stem is missing or unreadable,
    or when its length differs from the mixture's.
    """

    name = "oracle"

    def __init__(self, stems_root: Path):
        self.stems_root = Path(stems_root)

    def separate(self, wave: np.ndarray, clip_id: str) -> dict[str, np.ndarray]:
        wave = check_wave(wave, clip_id)
        sources = {}
        for source in SOURCES:
            stem = load_stem(self.stems_root, clip_id, source)
            if len(stem) != len(wave):
                raise SeparationError(
                    f"clip {clip_id}: true stem {source} has {len(stem)} samples, the mixture "
                    f"{len(wave)} (is the waveform this clip's 16-kHz mix?)"
                )
            sources[source] = stem
        return sources


def build_oracle(
    cfg: SeparationConfig, *, stems_root: Path | None = None, device=None
) -> OracleSeparator:
    """Registry factory; ``stems_root`` is required (device is unused)."""
    if stems_root is None:
        raise SeparationError("the oracle separator needs stems_root (a multitrack corpus)")
    return OracleSeparator(stems_root)
