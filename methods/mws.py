"""MWS augmentations for COLA + MWS (REFERENCE.md section 3).

Zhao et al., "S3T: Self-supervised pre-training with Swin Transformer for music
classification", ICASSP 2022, as re-implemented by Garoufis et al. (``mask_and_shift`` in the
authors' ``pretraining.py``). Four augmentations, each with its own coin flip, applied in this
order to one log-mel crop ``(T, F) = (98, 64)`` (time first): time masking, frequency masking,
frequency shift, time warping. Anchor and positive are augmented independently.

Everything is a pure function of a NumPy array: the input is never modified (the authors' code
masks a view of the stored excerpt in place, so an anchor's masks could leak into a positive
cropped from the same excerpt afterwards; we do not reproduce that). Randomness comes only from
an explicit ``np.random.Generator``; :func:`draw_mws_params` consumes it in a fixed order, so a
seeded generator gives the same augmentation.

Fill value: masks and the vacated top bands of a shift are set to ``fill_value`` (default 0.0).
The authors' code writes 0 into the raw ``log(mel + 1e-6)`` values, i.e. a mel magnitude of 1;
S3T writes zeros into its input. Which domain "zero" is meant in is the caller's choice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Distributions, all from the authors' ``mask_and_shift`` (probabilities and ranges as in S3T);
# ranges are inclusive. ``int(np.random.uniform(a, b))`` there draws an integer in [a, b - 1].
CROP_FRAMES = 98  # T of a crop; the warp's knots below are tied to it
CROP_BANDS = 64  # F of a crop
TIME_MASK_P = 0.5
TIME_MASK_COUNT = (1, 9)  # masks per crop
TIME_MASK_WIDTH = (1, 9)  # frames per mask
TIME_MASK_START = (0, 86)  # first masked frame (code: uniform(0, 87)), so masks end by frame 94
FREQ_MASK_P = 0.5
FREQ_MASK_COUNT = (1, 4)
FREQ_MASK_WIDTH = (1, 11)  # bands per mask
FREQ_MASK_START = (0, 63)  # code: uniform(0, 64); a mask running past the top band is cut there
FREQ_SHIFT_P = 0.4
FREQ_SHIFT_BANDS = (1, 9)  # downward shift in mel bands
TIME_WARP_P = 0.4
TIME_WARP_CENTRE = (38, 57)  # input frame moved to output frame 48 (code: uniform(38, 58))


@dataclass(frozen=True)
class MWSParams:
    """The drawn parameters of one MWS augmentation; ``None``/empty = not applied."""

    time_masks: tuple[tuple[int, int], ...] = ()  # (start frame, width) per mask
    freq_masks: tuple[tuple[int, int], ...] = ()  # (start band, width) per mask
    shift: int | None = None  # downward frequency shift, bands
    warp_centre: int | None = None  # input frame that time warping moves to the middle


def _check_crop(crop: np.ndarray) -> None:
    if crop.ndim != 2:
        raise ValueError(f"expected one (frames, mel bands) crop, got shape {crop.shape}")


def _check_masks(masks, size: int, axis: str) -> None:
    for start, width in masks:
        if width < 0 or not 0 <= start < size:
            raise ValueError(f"{axis} mask (start {start}, width {width}) outside 0..{size - 1}")


def time_mask(
    crop: np.ndarray, masks: tuple[tuple[int, int], ...], fill_value: float = 0.0
) -> np.ndarray:
    """Set frames ``start .. start + width - 1`` of each mask to ``fill_value``.

    Args:
        crop: ``(T, F)`` log-mel crop.
        masks: ``(start, width)`` pairs; a mask is cut at the last frame.
        fill_value: value of masked cells.

    Returns:
        A new ``(T, F)`` array.

    Raises:
        ValueError: ``crop`` is not 2-D, a start is outside the crop or a width is negative.
    """
    return _mask(crop, masks, 0, fill_value)


def freq_mask(
    crop: np.ndarray, masks: tuple[tuple[int, int], ...], fill_value: float = 0.0
) -> np.ndarray:
    """Set bands ``start .. start + width - 1`` of each mask to ``fill_value``.

    Args:
        crop: ``(T, F)`` log-mel crop.
        masks: ``(start, width)`` pairs; a mask is cut at the top band.
        fill_value: value of masked cells.

    Returns:
        A new ``(T, F)`` array.

    Raises:
        ValueError: ``crop`` is not 2-D, a start is outside the crop or a width is negative.
    """
    return _mask(crop, masks, 1, fill_value)


def _mask(crop: np.ndarray, masks, axis: int, fill_value: float) -> np.ndarray:
    """Fill ``width`` entries from ``start`` along ``axis`` (0 time, 1 frequency) per mask."""
    _check_crop(crop)
    _check_masks(masks, crop.shape[axis], ("time", "frequency")[axis])
    out = crop.copy()
    view = out if axis == 0 else out.T
    for start, width in masks:
        view[start : start + width] = fill_value
    return out


def freq_shift(crop: np.ndarray, shift: int, fill_value: float = 0.0) -> np.ndarray:
    """Shift the spectrum down by ``shift`` bands: band ``b`` moves to ``b - shift``.

    The lowest ``shift`` bands fall off; the top ``shift`` bands are set to ``fill_value``.

    Args:
        crop: ``(T, F)`` log-mel crop.
        shift: bands, ``0 <= shift <= F``.
        fill_value: value of the vacated top bands.

    Returns:
        A new ``(T, F)`` array.

    Raises:
        ValueError: ``crop`` is not 2-D or ``shift`` is out of range.
    """
    _check_crop(crop)
    num_bands = crop.shape[1]
    if not 0 <= shift <= num_bands:
        raise ValueError(f"shift must be in 0..{num_bands}, got {shift}")
    out = np.full_like(crop, fill_value)
    out[:, : num_bands - shift] = crop[:, shift:]
    return out


def warp_positions(num_frames: int, centre: int) -> np.ndarray:
    """Input positions sampled by :func:`time_warp`: ``(T,)``, increasing, from 0 to ``T - 1``.

    As the authors' code: output frames ``0 .. T//2 - 1`` sample ``linspace(0, centre)``, output
    frames ``T//2 .. T - 1`` sample ``linspace(centre + 1, T - 1)``. Input frame ``centre`` thus
    lands on output frame ``T//2 - 1`` (48 for 98 frames): a displacement of ``48 - centre``;
    ``centre = T//2 - 1`` is the identity.

    Raises:
        ValueError: ``centre`` outside ``0 .. T - 2``.
    """
    half = num_frames // 2
    if not 0 <= centre <= num_frames - 2:
        raise ValueError(f"warp centre must be in 0..{num_frames - 2}, got {centre}")
    return np.concatenate(
        [
            np.linspace(0.0, centre, half),
            np.linspace(centre + 1.0, num_frames - 1.0, num_frames - half),
        ]
    )


def time_warp(crop: np.ndarray, centre: int) -> np.ndarray:
    """Piecewise-linear time warp that moves input frame ``centre`` to the middle frame.

    Linear interpolation along time at :func:`warp_positions`; the first and last frames are
    kept and the shape is unchanged.

    Args:
        crop: ``(T, F)`` log-mel crop, ``T >= 2``.
        centre: input frame moved to output frame ``T//2 - 1``.

    Returns:
        A new ``(T, F)`` array of the crop's dtype.

    Raises:
        ValueError: ``crop`` is not 2-D or ``centre`` is out of range.
    """
    _check_crop(crop)
    positions = warp_positions(crop.shape[0], centre)
    lower = np.minimum(np.floor(positions).astype(np.int64), crop.shape[0] - 2)
    frac = (positions - lower)[:, None]
    warped = crop[lower] * (1.0 - frac) + crop[lower + 1] * frac
    return warped.astype(crop.dtype, copy=False)


def _integer(rng: np.random.Generator, bounds: tuple[int, int], size: int | None = None):
    return rng.integers(bounds[0], bounds[1] + 1, size=size)


def draw_mws_params(rng: np.random.Generator) -> MWSParams:
    """Draw one crop's MWS parameters: four independent coins, then each applied one's values."""
    coins = rng.random(4)
    time_masks: tuple[tuple[int, int], ...] = ()
    freq_masks: tuple[tuple[int, int], ...] = ()
    shift = centre = None
    if coins[0] < TIME_MASK_P:
        count = int(_integer(rng, TIME_MASK_COUNT))
        starts = _integer(rng, TIME_MASK_START, count)
        widths = _integer(rng, TIME_MASK_WIDTH, count)
        time_masks = tuple(zip(starts.tolist(), widths.tolist(), strict=True))
    if coins[1] < FREQ_MASK_P:
        count = int(_integer(rng, FREQ_MASK_COUNT))
        starts = _integer(rng, FREQ_MASK_START, count)
        widths = _integer(rng, FREQ_MASK_WIDTH, count)
        freq_masks = tuple(zip(starts.tolist(), widths.tolist(), strict=True))
    if coins[2] < FREQ_SHIFT_P:
        shift = int(_integer(rng, FREQ_SHIFT_BANDS))
    if coins[3] < TIME_WARP_P:
        centre = int(_integer(rng, TIME_WARP_CENTRE))
    return MWSParams(time_masks, freq_masks, shift, centre)


def apply_mws(crop: np.ndarray, params: MWSParams, fill_value: float = 0.0) -> np.ndarray:
    """Apply drawn MWS parameters in S3T's order: time mask, freq mask, shift, warp.

    Args:
        crop: ``(98, 64)`` log-mel crop, time first.
        params: from :func:`draw_mws_params`.
        fill_value: value of masked cells and of the bands vacated by the shift.

    Returns:
        A new ``(98, 64)`` array.

    Raises:
        ValueError: ``crop`` is not ``(98, 64)``.
    """
    if crop.shape != (CROP_FRAMES, CROP_BANDS):
        raise ValueError(f"expected a ({CROP_FRAMES}, {CROP_BANDS}) crop, got {crop.shape}")
    out = time_mask(crop, params.time_masks, fill_value)
    out = freq_mask(out, params.freq_masks, fill_value)
    if params.shift is not None:
        out = freq_shift(out, params.shift, fill_value)
    if params.warp_centre is not None:
        out = time_warp(out, params.warp_centre)
    return out


def mws_augment(crop: np.ndarray, rng: np.random.Generator, fill_value: float = 0.0) -> np.ndarray:
    """One MWS augmentation of a ``(98, 64)`` crop; deterministic given ``rng``'s state.

    Raises:
        ValueError: ``crop`` is not ``(98, 64)``.
    """
    return apply_mws(crop, draw_mws_params(rng), fill_value)
