"""The "COLA + random soft mask" baseline: pseudo-sources from random smooth TF masks."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmark.config import SeparationConfig
from benchmark.separation.base import SOURCES, Separator, check_wave, stable_seed

N_FFT = 1024  # STFT size at 16 kHz, 64 ms (ours)
HOP_LENGTH = 256  # STFT hop, 16 ms; 75 % overlap keeps the Hann window invertible (ours)
# Standard deviation of the random mask logits (ours). With 4 sources, 2.0 makes the masks
# lean clearly towards one or two sources per region (mean largest weight ~0.6) while
# staying soft; 1.0 would give near-uniform masks, i.e. four quiet copies of the mixture.
MASK_LOGIT_STD = 2.0


def random_soft_masks(
    num_bins: int,
    num_frames: int,
    seed: int,
    time_smooth_frames: int,
    freq_smooth_bins: int,
    num_sources: int = len(SOURCES),
    logit_std: float = MASK_LOGIT_STD,
) -> torch.Tensor:
    """Random soft masks, positive, smooth, summing to one across sources at every bin.

    Recipe: for each source draw i.i.d. ``N(0, logit_std^2)`` logits on a coarse grid whose
    nodes are at most ``freq_smooth_bins`` bins and ``time_smooth_frames`` frames apart
    (both ends included), interpolate them bilinearly to every TF bin, then take a softmax
    across the sources. Drawn from a CPU ``torch.Generator`` seeded with ``seed``.

    Returns float32 ``(num_sources, num_bins, num_frames)``.
    Raises ``ValueError`` for non-positive sizes or smoothing lengths.
    """
    if min(num_bins, num_frames, time_smooth_frames, freq_smooth_bins, num_sources) <= 0:
        raise ValueError(
            "random_soft_masks: sizes and smoothing lengths must be positive, got "
            f"bins={num_bins} frames={num_frames} time_smooth={time_smooth_frames} "
            f"freq_smooth={freq_smooth_bins} sources={num_sources}"
        )
    grid_bins = math.ceil((num_bins - 1) / freq_smooth_bins) + 1
    grid_frames = math.ceil((num_frames - 1) / time_smooth_frames) + 1
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, num_sources, grid_bins, grid_frames, generator=generator)
    logits = F.interpolate(
        coarse * logit_std, size=(num_bins, num_frames), mode="bilinear", align_corners=True
    )[0]
    return torch.softmax(logits, dim=0)


class RandomMaskSeparator(Separator):
    """Four pseudo-sources from random soft masks on the mixture STFT (paper: COLA + random mask).

    STFT: ``torch.stft`` at 16 kHz, ``n_fft`` 1024, hop 256, Hann window, centred frames
    with zero padding (so any length works). Masks: :func:`random_soft_masks` with
    ``cfg.mask_time_smooth_frames`` (frames) and ``cfg.mask_freq_smooth_bins`` (bins) as node
    spacing and logit standard deviation :data:`MASK_LOGIT_STD`, seeded by a SHA-256 of
    ``(cfg.mask_seed, clip_id)``: the same clip always gets the same masks. Each mask
    multiplies the complex STFT and ``torch.istft`` returns exactly ``n`` samples. Because the
    masks sum to one and the STFT is linear and invertible, the four sources sum to the
    mixture up to float rounding. Source names are labels only: mask ``k`` becomes
    ``SOURCES[k]``.
    """

    name = "random_mask"

    def __init__(self, cfg: SeparationConfig = SeparationConfig()):
        self.cfg = cfg
        self.window = torch.hann_window(N_FFT)

    def separate(self, wave: np.ndarray, clip_id: str) -> dict[str, np.ndarray]:
        wave = check_wave(wave, clip_id)
        x = torch.from_numpy(wave)
        spec = torch.stft(
            x,
            n_fft=N_FFT,
            hop_length=HOP_LENGTH,
            window=self.window,
            center=True,
            pad_mode="constant",
            return_complex=True,
        )
        masks = random_soft_masks(
            num_bins=spec.shape[0],
            num_frames=spec.shape[1],
            seed=stable_seed("random_mask", self.cfg.mask_seed, clip_id),
            time_smooth_frames=self.cfg.mask_time_smooth_frames,
            freq_smooth_bins=self.cfg.mask_freq_smooth_bins,
        )
        sources = torch.istft(
            masks * spec[None],
            n_fft=N_FFT,
            hop_length=HOP_LENGTH,
            window=self.window,
            center=True,
            length=len(wave),
        )
        return {s: sources[k].numpy().astype(np.float32) for k, s in enumerate(SOURCES)}


def build_random_mask(
    cfg: SeparationConfig, *, stems_root: Path | None = None, device=None
) -> RandomMaskSeparator:
    """Registry factory (runs on the CPU: a few FFTs per clip; stems_root is unused)."""
    return RandomMaskSeparator(cfg)
