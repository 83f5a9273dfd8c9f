"""Tests of the MWS augmentations (time/frequency masking, frequency shift, time warping)."""

import numpy as np
import pytest

from methods import mws
from methods.mws import (
    MWSParams,
    apply_mws,
    draw_mws_params,
    freq_mask,
    freq_shift,
    mws_augment,
    time_mask,
    time_warp,
    warp_positions,
)

T, F = 98, 64


def crop(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(-9.0, 2.0, size=(T, F)).astype(np.float32)


def test_time_mask_sets_only_masked_frames():
    x = crop()
    out = time_mask(x, ((3, 4), (90, 9)), fill_value=-5.0)
    masked = np.zeros(T, dtype=bool)
    masked[3:7] = True
    masked[90:] = True  # the second mask is cut at the last frame
    assert (out[masked] == -5.0).all()
    np.testing.assert_array_equal(out[~masked], x[~masked])
    assert not (x == -5.0).any()  # the input is untouched


def test_freq_mask_sets_only_masked_bands():
    x = crop()
    out = freq_mask(x, ((0, 2), (60, 11)))
    masked = np.zeros(F, dtype=bool)
    masked[0:2] = True
    masked[60:] = True
    assert (out[:, masked] == 0.0).all()
    np.testing.assert_array_equal(out[:, ~masked], x[:, ~masked])


@pytest.mark.parametrize("shift", [1, 5, 9])
def test_freq_shift_moves_content_down(shift):
    band = 20
    x = np.full((T, F), -9.0, dtype=np.float32)
    x[:, band] = 3.0
    out = freq_shift(x, shift, fill_value=-1.0)
    assert (out[:, band - shift] == 3.0).all()
    assert (out[:, F - shift :] == -1.0).all()
    np.testing.assert_array_equal(out[:, : F - shift], x[:, shift:])


def test_freq_shift_of_zero_is_identity():
    x = crop()
    np.testing.assert_array_equal(freq_shift(x, 0), x)


@pytest.mark.parametrize("centre", [38, 45, 48, 57])
def test_time_warp_keeps_shape_ends_and_order(centre):
    x = crop()
    out = time_warp(x, centre)
    assert out.shape == (T, F) and out.dtype == x.dtype
    np.testing.assert_array_equal(out[0], x[0])
    np.testing.assert_array_equal(out[-1], x[-1])
    # On a ramp (value = frame index) the output is the sampled positions: increasing.
    ramp = np.repeat(np.arange(T, dtype=np.float64)[:, None], F, axis=1)
    warped = time_warp(ramp, centre)[:, 0]
    np.testing.assert_allclose(warped, warp_positions(T, centre))
    assert (np.diff(warped) > 0).all()
    assert warped[T // 2 - 1] == centre  # the centre frame lands on frame 48


def test_time_warp_without_displacement_is_identity():
    x = crop()
    np.testing.assert_allclose(time_warp(x, T // 2 - 1), x, rtol=0, atol=1e-6)


def test_time_warp_interpolates_linearly():
    x = crop()
    positions = warp_positions(T, 40)
    # Column by column, the warp is NumPy's linear interpolation at the sampled positions.
    expected = np.stack([np.interp(positions, np.arange(T), x[:, f]) for f in range(F)], axis=1)
    np.testing.assert_allclose(time_warp(x, 40), expected, rtol=1e-5, atol=1e-5)


def test_illegal_parameters_raise():
    x = crop()
    with pytest.raises(ValueError):
        time_mask(x, ((98, 1),))
    with pytest.raises(ValueError):
        freq_mask(x, ((-1, 3),))
    with pytest.raises(ValueError):
        freq_shift(x, 65)
    with pytest.raises(ValueError):
        time_warp(x, 97)
    with pytest.raises(ValueError):
        time_mask(x[None], ())
    with pytest.raises(ValueError):
        mws_augment(np.zeros((97, 64)), np.random.default_rng(0))


def test_apply_mws_follows_the_order_mask_then_shift_then_warp():
    x = crop()
    params = MWSParams(time_masks=((10, 3),), freq_masks=((30, 2),), shift=4, warp_centre=44)
    expected = time_warp(freq_shift(freq_mask(time_mask(x, ((10, 3),)), ((30, 2),)), 4), 44)
    np.testing.assert_array_equal(apply_mws(x, params), expected)
    np.testing.assert_array_equal(apply_mws(x, MWSParams()), x)


def test_mws_augment_is_deterministic_for_a_seeded_rng():
    x = crop()
    first = [mws_augment(x, np.random.default_rng(7)) for _ in range(2)]
    np.testing.assert_array_equal(first[0], first[1])
    rng = np.random.default_rng(7)
    draws = [mws_augment(x, rng) for _ in range(5)]
    assert any(not np.array_equal(draws[0], d) for d in draws[1:])


def test_application_rates_and_ranges_match_the_paper():
    rng = np.random.default_rng(0)
    draws = [draw_mws_params(rng) for _ in range(4000)]
    rates = {
        "time": np.mean([bool(p.time_masks) for p in draws]),
        "freq": np.mean([bool(p.freq_masks) for p in draws]),
        "shift": np.mean([p.shift is not None for p in draws]),
        "warp": np.mean([p.warp_centre is not None for p in draws]),
    }
    expected = {
        "time": mws.TIME_MASK_P,
        "freq": mws.FREQ_MASK_P,
        "shift": mws.FREQ_SHIFT_P,
        "warp": mws.TIME_WARP_P,
    }
    for name, p in expected.items():
        # 4000 draws: the standard error is below 0.008; 4 of them is a safe margin.
        assert abs(rates[name] - p) < 0.032, name
    assert (mws.TIME_MASK_P, mws.FREQ_MASK_P, mws.FREQ_SHIFT_P, mws.TIME_WARP_P) == (
        0.5,
        0.5,
        0.4,
        0.4,
    )

    def values(getter):
        return {v for p in draws for v in getter(p)}

    assert {len(p.time_masks) for p in draws if p.time_masks} == set(range(1, 10))
    assert values(lambda p: [w for _, w in p.time_masks]) == set(range(1, 10))
    assert values(lambda p: [s for s, _ in p.time_masks]) == set(range(0, 87))
    assert {len(p.freq_masks) for p in draws if p.freq_masks} == set(range(1, 5))
    assert values(lambda p: [w for _, w in p.freq_masks]) == set(range(1, 12))
    assert values(lambda p: [s for s, _ in p.freq_masks]) == set(range(0, 64))
    assert values(lambda p: [p.shift] if p.shift else []) == set(range(1, 10))
    assert values(lambda p: [p.warp_centre] if p.warp_centre else []) == set(range(38, 58))


def test_masked_cells_of_an_augmented_crop_hold_the_fill_value():
    rng = np.random.default_rng(3)
    x = crop()
    for _ in range(50):
        params = draw_mws_params(rng)
        if params.shift is None and params.warp_centre is None and params.time_masks:
            out = apply_mws(x, params, fill_value=-20.0)
            start, width = params.time_masks[0]
            assert (out[start : start + width] == -20.0).all()
            return
    pytest.fail("no draw with masks only")
