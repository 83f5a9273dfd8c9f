"""Front end against an independent NumPy/SciPy implementation of REFERENCE.md section 1."""

import numpy as np
import pytest
import scipy.signal
import soundfile as sf
import torch

from benchmark.config import FrontEndConfig
from benchmark.data.audio import AudioError, LogMel, load_audio, log_mel, num_frames

CFG = FrontEndConfig()


def _htk_mel(f):
    return 2595.0 * np.log10(1.0 + f / 700.0)


def _htk_hz(m):
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def reference_log_mel(wave: np.ndarray, cfg: FrontEndConfig = CFG) -> np.ndarray:
    """Naive definition: L2-normalise, frame without padding, |rFFT| of Hann-windowed frames
    (window zero-padded to n_fft), triangular HTK mel filters, log(mel + 1e-6)."""
    x = wave.astype(np.float64)
    x = x / (np.sqrt(np.sum(x**2)) + cfg.norm_eps)
    n = 1 + (len(x) - cfg.win_length) // cfg.hop_length
    window = scipy.signal.get_window("hann", cfg.win_length, fftbins=True)
    frames = np.stack(
        [x[i * cfg.hop_length : i * cfg.hop_length + cfg.win_length] for i in range(n)]
    )
    spec = np.abs(np.fft.rfft(frames * window, n=cfg.n_fft, axis=1))  # (n, n_fft/2+1)
    freqs = np.linspace(0, cfg.sample_rate / 2, cfg.n_fft // 2 + 1)
    edges = _htk_hz(np.linspace(_htk_mel(cfg.f_min), _htk_mel(cfg.f_max), cfg.n_mels + 2))
    fb = np.zeros((len(freqs), cfg.n_mels))
    for m in range(cfg.n_mels):
        lo, c, hi = edges[m], edges[m + 1], edges[m + 2]
        up = (freqs - lo) / (c - lo)
        down = (hi - freqs) / (hi - c)
        fb[:, m] = np.maximum(0.0, np.minimum(up, down))
    return np.log(spec @ fb + cfg.log_offset)


def _tone_and_noise(seconds=2.0, sr=16000, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)).astype(
        np.float32
    )


def test_log_mel_matches_numpy_reference():
    wave = _tone_and_noise()
    ours = log_mel(wave)
    ref = reference_log_mel(wave)
    assert ours.shape == ref.shape == (num_frames(len(wave), CFG), 64)
    # Tolerance: float32 STFT vs float64 reference; log domain, bins with energy.
    np.testing.assert_allclose(ours, ref, atol=2e-3, rtol=1e-3)


def test_frame_counts_follow_cola():
    assert num_frames(16000, CFG) == 98  # a 1-s crop (COLA)
    assert num_frames(64000, CFG) == 398  # 4 s: the first 392 form one excerpt
    assert num_frames(399, CFG) == 0


def test_whole_clip_normalisation_makes_gain_irrelevant():
    wave = _tone_and_noise()
    np.testing.assert_allclose(log_mel(wave), log_mel(wave * 7.5), atol=1e-4)


def test_batched_equals_single():
    waves = np.stack([_tone_and_noise(seed=s) for s in range(3)])
    batched = LogMel(CFG)(torch.from_numpy(waves)).numpy()
    for i in range(3):
        np.testing.assert_allclose(batched[i], log_mel(waves[i]), atol=1e-5)


@pytest.mark.parametrize(
    "fmt,ext", [("WAV", "wav"), ("FLAC", "flac"), ("OGG", "ogg"), ("MP3", "mp3")]
)
def test_load_audio_formats_mono_and_resample(tmp_path, fmt, ext):
    sr = 22050
    t = np.arange(sr) / sr
    stereo = np.stack([np.sin(2 * np.pi * 300 * t), 0.5 * np.sin(2 * np.pi * 300 * t)], 1) * 0.5
    path = tmp_path / f"clip.{ext}"
    sf.write(path, stereo.astype(np.float32), sr, format=fmt)
    wave = load_audio(path, 16000)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(len(wave) - 16000) <= 1200  # MP3/OGG decoders may pad a frame
    # the mono mix-down of channels (1, 0.5) has peak 0.375
    assert 0.3 < np.abs(wave).max() < 0.45


def test_load_audio_errors_name_the_file(tmp_path):
    bad = tmp_path / "corrupt.mp3"
    bad.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(AudioError, match="corrupt.mp3"):
        load_audio(bad)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros((0,), np.float32), 16000)
    with pytest.raises(AudioError, match="empty.wav"):
        load_audio(empty)
    nan = tmp_path / "nan.wav"
    sf.write(nan, np.full(16000, np.nan, np.float32), 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN"):
        load_audio(nan)


def test_truncated_mp3_is_called_truncated_or_corrupt(tmp_path):
    """Issue #13: libsndfile says "File does not exist or is not a regular file (possibly a
    pipe?)" for a truncated MP3, which sent users looking for a missing file."""
    whole = tmp_path / "whole.mp3"
    sf.write(whole, 0.1 * np.random.default_rng(0).standard_normal(48000), 16000)
    cut = tmp_path / "cut.mp3"
    cut.write_bytes(whole.read_bytes()[:400])
    with pytest.raises(AudioError) as info:
        load_audio(cut)
    message = str(info.value)
    assert message.startswith(f"{cut}: ") and "truncated or corrupt" in message
    assert "does not exist" not in message and "regular file" not in message
    with pytest.raises(AudioError, match="missing.mp3: audio file not found"):
        load_audio(tmp_path / "missing.mp3")
