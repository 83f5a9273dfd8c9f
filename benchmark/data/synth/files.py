"""Writing audio files of the corpus."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import soundfile as sf

from benchmark.data.synth.knobs import SAMPLE_RATE


def write_audio(path: Path, wave: np.ndarray, fmt: str, subtype: str | None = None) -> None:
    """Encode ``wave`` (int16 PCM, or float in [-1, 1]) at 16 kHz as ``fmt`` into ``path``.

    Encoding goes through memory: soundfile's close() fsyncs each file, which costs more than
    encoding a FLAC clip; the corpus is complete only when its manifest is written anyway.
    """
    buf = io.BytesIO()
    sf.write(buf, wave, SAMPLE_RATE, format=fmt, subtype=subtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
