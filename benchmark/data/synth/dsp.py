"""Signal primitives of the synthetic corpus (NumPy/SciPy only, all at 16 kHz).

Everything returns float32/float64 NumPy arrays of samples; randomness comes only from the
``np.random.Generator`` passed in, so a seed fixes the output.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import signal

from benchmark.data.synth.knobs import SAMPLE_RATE as SR

TABLE_SIZE = 4096  # wavetable length (power of two: the phase wraps with a bit mask)
BAND_LIMIT_HZ = 7600.0  # highest partial kept (below the 8 kHz Nyquist frequency)
KS_LFILTER_MAX_PERIOD = 48  # Karplus-Strong: lfilter below this period, block loop above


def midi_to_hz(midi: float | np.ndarray) -> float | np.ndarray:
    return 440.0 * 2.0 ** ((np.asarray(midi) - 69.0) / 12.0)


def seconds(n: int) -> np.ndarray:
    return np.arange(n) / SR


# -- oscillators -------------------------------------------------------------------------------


def harmonic_table(amps: np.ndarray) -> np.ndarray:
    """One period of ``sum_k amps[k] sin(2 pi (k+1) x)``, peak-normalised, TABLE_SIZE samples."""
    amps = np.asarray(amps, dtype=np.float64)
    spectrum = np.zeros(TABLE_SIZE // 2 + 1, dtype=np.complex128)
    k = min(len(amps), TABLE_SIZE // 2 - 1)
    spectrum[1 : k + 1] = -0.5j * amps[:k] * TABLE_SIZE
    table = np.fft.irfft(spectrum, n=TABLE_SIZE)
    return table / max(np.abs(table).max(), 1e-12)


def band_limited(amps: np.ndarray, f0: float) -> np.ndarray:
    """Drop the partials of ``amps`` (harmonics of ``f0``) above the band limit."""
    keep = max(1, int(BAND_LIMIT_HZ // max(f0, 1.0)))
    return np.asarray(amps)[:keep]


def oscillator(table: np.ndarray, freq: float | np.ndarray, n: int, phase0: float = 0.0):
    """Wavetable oscillator: ``n`` samples at ``freq`` Hz (a constant or one value per sample)."""
    if np.ndim(freq) == 0:
        phase = phase0 + np.arange(n) * (float(freq) / SR)
    else:
        phase = phase0 + np.cumsum(freq[:n]) / SR
    idx = (phase * TABLE_SIZE).astype(np.int64) & (TABLE_SIZE - 1)
    return table[idx]


def sine(freq: float | np.ndarray, n: int, phase0: float = 0.0) -> np.ndarray:
    if np.ndim(freq) == 0:
        return np.sin(2 * np.pi * (phase0 + np.arange(n) * (float(freq) / SR)))
    return np.sin(2 * np.pi * (phase0 + np.cumsum(freq[:n]) / SR))


CONTROL_STEP = 32  # samples per value of slowly varying controls (vibrato): 2 ms


def vibrato(f0: float, n: int, rate_hz: float, depth_st: float, delay_s: float, phase0: float):
    """Per-sample frequency with a sinusoidal vibrato that fades in after ``delay_s``.

    Computed at the control rate (every CONTROL_STEP samples) and held: vibrato is slow.
    """
    t = np.arange(0, n + CONTROL_STEP, CONTROL_STEP) / SR
    ramp = np.clip((t - delay_s) / 0.3, 0.0, 1.0)
    control = f0 * 2.0 ** (depth_st * ramp * np.sin(2 * np.pi * rate_hz * t + phase0) / 12.0)
    return np.repeat(control, CONTROL_STEP)[:n]


# -- envelopes ---------------------------------------------------------------------------------


def envelope(n: int, hold: int, attack_s: float, decay_s: float, sustain: float, release_s: float):
    """Attack (linear), exponential decay to ``sustain``, exponential release after ``hold``.

    The last 2 ms fade linearly to zero so that a cut note never clicks.
    """
    env = np.ones(n)
    a = min(max(int(attack_s * SR), 1), n)
    env[:a] = np.arange(a) / a
    if sustain < 1.0:
        env[a:] = sustain + (1.0 - sustain) * np.exp(-np.arange(n - a) / max(decay_s * SR, 1.0))
    if hold < n:
        level = env[max(hold - 1, 0)]
        env[hold:] = level * np.exp(-np.arange(n - hold) / max(release_s * SR, 1.0))
    fade = min(n, int(0.002 * SR))
    env[n - fade :] *= np.linspace(1.0, 0.0, fade)
    return env


def exp_decay(n: int, tau_s: float) -> np.ndarray:
    return np.exp(-np.arange(n) / max(tau_s * SR, 1.0))


# -- filters -----------------------------------------------------------------------------------


@lru_cache(maxsize=512)
def _butter(order: int, cutoff: tuple[float, ...], btype: str):
    wn = [min(max(c / (SR / 2), 1e-4), 0.999) for c in cutoff]
    return signal.butter(order, wn if len(wn) > 1 else wn[0], btype=btype, output="sos")


def highpass(x: np.ndarray, cutoff_hz: float, order: int = 2) -> np.ndarray:
    return signal.sosfilt(_butter(order, (round(cutoff_hz, -1),), "highpass"), x)


def bandpass(x: np.ndarray, low_hz: float, high_hz: float, order: int = 2) -> np.ndarray:
    return signal.sosfilt(_butter(order, (round(low_hz, -1), round(high_hz, -1)), "bandpass"), x)


def one_pole_lowpass(x: np.ndarray, coeff: float) -> np.ndarray:
    """``y[n] = (1 - c) x[n] + c y[n-1]``: a gentle brightness control (c in [0, 1))."""
    return signal.lfilter([1.0 - coeff], [1.0, -coeff], x)


def resonator(x: np.ndarray, freq_hz: float, bandwidth_hz: float) -> np.ndarray:
    """Two-pole resonator (a formant): unit gain near ``freq_hz``."""
    r = np.exp(-np.pi * bandwidth_hz / SR)
    theta = 2 * np.pi * min(freq_hz, SR / 2 - 100) / SR
    a = [1.0, -2.0 * r * np.cos(theta), r * r]
    return signal.lfilter([1.0 - r], a, x)


def saturate(x: np.ndarray, drive: float) -> np.ndarray:
    """Soft clipping ``tanh(drive x) / tanh(drive)``: distortion and loudness."""
    return np.tanh(drive * x) / np.tanh(drive)


# -- physical-ish models -----------------------------------------------------------------------


def karplus_strong(
    f0: float, n: int, rng: np.random.Generator, decay_s: float, brightness: float,
    pluck_position: float,
) -> np.ndarray:  # fmt: skip
    """Plucked string (Karplus-Strong): a noise burst circulating in a damped delay loop.

    ``decay_s``: time for the fundamental to fall by 1/e; ``brightness`` in (0, 1]: 1 = raw
    noise burst, small = soft (finger) pluck; ``pluck_position`` in (0, 0.5]: comb notch.
    """
    period = max(2, int(round(SR / f0 - 0.5)))  # the two-point average adds half a sample
    burst = rng.uniform(-1.0, 1.0, period)
    burst = one_pole_lowpass(burst, 1.0 - brightness)
    notch = max(1, int(pluck_position * period))
    burst = burst - np.roll(burst, notch)  # plucking at a fraction of the string
    rho = min(np.exp(-1.0 / (f0 * decay_s)), 0.99995)  # loop gain per period
    if period < KS_LFILTER_MAX_PERIOD:
        a = np.zeros(period + 2)
        a[0], a[period], a[period + 1] = 1.0, -0.5 * rho, -0.5 * rho
        x = np.zeros(n)
        x[: min(period, n)] = burst[: min(period, n)]
        return signal.lfilter([1.0], a, x)
    # long periods: update whole periods at once (each depends only on the one before)
    y = np.zeros(n + 1)  # y[0] is the sample before the first
    y[1 : min(period, n) + 1] = burst[: min(period, n)]
    for start in range(period + 1, n + 1, period):
        stop = min(start + period, n + 1)
        m = stop - start
        y[start:stop] = 0.5 * rho * (y[start - period : start - period + m]
                                     + y[start - period - 1 : start - period - 1 + m])  # fmt: skip
    return y[1:]


VOWEL_FORMANTS = {  # (frequency Hz, bandwidth Hz, gain) of F1-F3 for an adult male voice
    "a": ((730, 90, 1.0), (1090, 110, 0.5), (2440, 160, 0.25)),
    "e": ((530, 70, 1.0), (1840, 100, 0.4), (2480, 150, 0.25)),
    "i": ((300, 50, 1.0), (2250, 120, 0.3), (3000, 170, 0.25)),
    "o": ((570, 70, 1.0), (840, 80, 0.6), (2410, 150, 0.15)),
    "u": ((330, 60, 1.0), (870, 80, 0.35), (2250, 150, 0.1)),
}
VOWELS = tuple(VOWEL_FORMANTS)


def formant_voice(
    freq: np.ndarray, vowel: str, formant_scale: float, breath: float, rng: np.random.Generator
) -> np.ndarray:
    """Sung vowel: a glottal-like source (-12 dB/octave harmonics + breath) through formants."""
    n = len(freq)
    f0 = float(np.median(freq))
    amps = band_limited(1.0 / np.arange(1, 200) ** 2, f0 * 1.06)
    source = oscillator(_voice_table(len(amps)), freq, n, rng.random())
    source = source + breath * rng.standard_normal(n) * np.abs(source)
    out = np.zeros(n)
    for f, bw, gain in VOWEL_FORMANTS[vowel]:
        out += gain * resonator(source, f * formant_scale, bw * formant_scale)
    return out


@lru_cache(maxsize=64)
def _voice_table(num_partials: int) -> np.ndarray:
    return harmonic_table(1.0 / np.arange(1, num_partials + 1) ** 2)


def reverb(x: np.ndarray, rng: np.random.Generator, wet: float, decay_s: float) -> np.ndarray:
    """Mix ``x`` with a convolution reverb: a noise tail falling 60 dB over ``decay_s``."""
    if wet <= 0:
        return x
    n_ir = int(decay_s * SR)
    ir = rng.standard_normal(n_ir) * exp_decay(n_ir, decay_s / 6.9)
    ir = one_pole_lowpass(ir, 0.5)
    ir[: int(0.01 * SR)] = 0.0  # 10-ms pre-delay
    ir /= np.sqrt(np.sum(ir**2)) + 1e-12
    # single precision: twice as fast, and far below the 16-bit quantisation of the output
    tail = signal.fftconvolve(x.astype(np.float32), ir.astype(np.float32))[: len(x)]
    return (1 - wet) * x + wet * tail
