"""Audio front end (REFERENCE.md section 1), shared by every method and task.

decode (soundfile) -> mono -> resample to 16 kHz (torchaudio) -> whole-clip L2 normalisation
-> |STFT| (window 400, hop 160, FFT 1024, no padding, as tf.signal.stft in COLA)
-> 64 HTK mel bands 60-7800 Hz, no area normalisation -> log(mel + 1e-6).

A clip of ``n`` samples gives ``1 + (n - 400) // 160`` frames; 4 s give 398 frames, of which
the 392 = 4 x 98 first form one storage excerpt.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

from benchmark.config import FrontEndConfig
from benchmark.errors import AudioError


def load_audio(
    path: str | Path, sample_rate: int = 16000, span: tuple[float, float] | None = None
) -> np.ndarray:
    """Decode ``path`` with soundfile, mix to mono and resample to ``sample_rate``.

    ``span``: ``(start_s, end_s)`` seconds of the file to decode (a clip cut from a longer
    recording), None for all of it. Returns a float32 array of shape ``(num_samples,)``.
    Raises :class:`AudioError` naming the file for undecodable, empty or non-finite audio.
    """
    path = Path(path)
    try:
        if span is None:
            data, sr = sf.read(str(path), dtype="float32", always_2d=True)
        else:
            sr = sf.info(str(path)).samplerate
            start, stop = round(span[0] * sr), round(span[1] * sr)
            data, sr = sf.read(str(path), start=start, stop=stop, dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises several types (LibsndfileError, RuntimeError)
        raise AudioError(_decode_failure(path, exc)) from None
    if data.size == 0:
        raise AudioError(f"{path}: no audio samples")
    mono = data.mean(axis=1)
    if not np.all(np.isfinite(mono)):
        raise AudioError(f"{path}: audio holds NaN or infinite samples")
    return resample(mono, sr, sample_rate)


def _decode_failure(path: Path, exc: Exception) -> str:
    """One line saying why ``path`` could not be read."""
    if not path.exists():
        return f"{path}: audio file not found"
    if not path.is_file():
        return f"{path}: not a regular file"
    # libsndfile says "File does not exist or is not a regular file (possibly a pipe?)" for a
    # file it cannot parse (a truncated MP3, say), which misleads: the file is there.
    detail = str(exc).split("': ", 1)[-1]
    if "does not exist" in detail or "regular file" in detail:
        return f"{path}: could not be decoded (the file is truncated or corrupt)"
    return f"{path}: could not be decoded (truncated or corrupt? {detail})"


def resample(wave: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    """Band-limited resampling with torchaudio (sinc interpolation, its defaults)."""
    if orig_sr == new_sr:
        return np.ascontiguousarray(wave, dtype=np.float32)
    out = torchaudio.functional.resample(
        torch.from_numpy(np.ascontiguousarray(wave)), orig_sr, new_sr
    )
    return out.numpy().astype(np.float32, copy=False)


def num_frames(num_samples: int, cfg: FrontEndConfig) -> int:
    """Frames the front end yields for a clip of ``num_samples`` (0 if shorter than a window)."""
    if num_samples < cfg.win_length:
        return 0
    return 1 + (num_samples - cfg.win_length) // cfg.hop_length


class LogMel(torch.nn.Module):
    """Batched log-mel front end; runs on whichever device it is moved to.

    Input ``(..., num_samples)`` float waveform at ``cfg.sample_rate``; output
    ``(..., num_frames, n_mels)`` (time first, as the feature store keeps it).
    Whole-clip L2 normalisation is applied per waveform along the last axis when
    ``normalise`` is true.
    """

    def __init__(self, cfg: FrontEndConfig = FrontEndConfig(), normalise: bool = True):
        super().__init__()
        self.cfg = cfg
        self.normalise = normalise
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=cfg.sample_rate,
            n_fft=cfg.n_fft,
            win_length=cfg.win_length,
            hop_length=cfg.hop_length,
            f_min=cfg.f_min,
            f_max=cfg.f_max,
            n_mels=cfg.n_mels,
            power=1.0,  # magnitude, not power (COLA)
            center=False,  # no padding (tf.signal.stft)
            norm=None,  # no area normalisation
            mel_scale="htk",
        )
        self._pad = (cfg.n_fft - cfg.win_length) // 2

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        if self.normalise:
            norm = torch.linalg.vector_norm(wave, dim=-1, keepdim=True)
            wave = wave / (norm + self.cfg.norm_eps)
        # torch.stft frames n_fft samples with the window centred in them; TF's stft (COLA)
        # frames win_length samples and zero-pads each frame to n_fft. Padding the signal by
        # (n_fft - win_length) / 2 on both sides makes frame i read samples [160 i, 160 i + 400).
        wave = torch.nn.functional.pad(wave, (self._pad, self._pad))
        mel = self.mel(wave)  # (..., n_mels, frames)
        return torch.log(mel + self.cfg.log_offset).transpose(-1, -2)


@lru_cache(maxsize=4)
def _cpu_frontend(cfg: FrontEndConfig) -> LogMel:
    return LogMel(cfg)


def log_mel(wave: np.ndarray, cfg: FrontEndConfig = FrontEndConfig()) -> np.ndarray:
    """Log-mel of one clip (NumPy in, NumPy out): ``(num_frames, n_mels)`` float32."""
    with torch.no_grad():
        out = _cpu_frontend(cfg)(torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)))
    return out.numpy()
