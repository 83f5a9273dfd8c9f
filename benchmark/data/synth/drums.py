"""Synthesised drum kits and 16-step patterns per style."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from benchmark.data.synth import dsp
from benchmark.data.synth.dsp import SR


def _kick(rng, f_start, f_end, pitch_tau, amp_tau, click):
    n = int(amp_tau * 6 * SR)
    t = dsp.seconds(n)
    freq = f_end + (f_start - f_end) * np.exp(-t / pitch_tau)
    x = dsp.sine(freq, n) * np.exp(-t / amp_tau)
    m = min(n, int(0.003 * SR))
    x[:m] += click * rng.standard_normal(m)
    return x


def _snare(rng, tone_hz, tone_mix, noise_tau, low_hz, high_hz):
    n = int(noise_tau * 6 * SR)
    t = dsp.seconds(n)
    noise = dsp.bandpass(rng.standard_normal(n), low_hz, high_hz) * np.exp(-t / noise_tau)
    tone = dsp.sine(tone_hz * (1 + 0.5 * np.exp(-t / 0.01)), n) * np.exp(-t / 0.04)
    return (1 - tone_mix) * noise / (np.abs(noise).max() + 1e-9) + tone_mix * tone


def _hat(rng, tau, cutoff_hz):
    n = int(tau * 6 * SR)
    return dsp.highpass(rng.standard_normal(n), cutoff_hz) * dsp.exp_decay(n, tau)


def _clap(rng, tau):
    n = int((tau * 6 + 0.03) * SR)
    env = np.zeros(n)
    for offset in (0.0, 0.011, 0.022):  # three hands, slightly apart
        i = int(offset * SR)
        env[i:] += dsp.exp_decay(n - i, 0.006 if offset < 0.02 else tau)
    return dsp.bandpass(rng.standard_normal(n), 900.0, 5000.0) * env


def _ride(rng, tau, base_hz):
    n = int(tau * 4 * SR)
    t = dsp.seconds(n)
    ratios = (1.0, 1.34, 1.48, 1.69, 2.05, 2.44)  # inharmonic metallic partials
    x = sum(np.sign(np.sin(2 * np.pi * base_hz * r * t)) for r in ratios)
    return dsp.highpass(x + 2 * rng.standard_normal(n), 3000.0) * np.exp(-t / tau)


def _membrane(rng, f0, bend, tau, noise):
    """Pitched hand drum (tabla, conga, tom): a sine gliding by ``bend`` with a noise slap."""
    n = int(tau * 6 * SR)
    t = dsp.seconds(n)
    freq = f0 * (1 + bend * np.exp(-t / 0.03))
    x = dsp.sine(freq, n) + 0.3 * dsp.sine(freq * 2.3, n) * np.exp(-t / (tau / 3))
    m = min(n, int(0.01 * SR))
    x[:m] += noise * rng.standard_normal(m)
    return x * np.exp(-t / tau)


def _shaker(rng, tau):
    n = int(tau * 6 * SR)
    env = np.minimum(dsp.seconds(n) / 0.01, 1.0) * dsp.exp_decay(n, tau)
    return dsp.highpass(rng.standard_normal(n), 4000.0) * env


_SOUNDS = {  # voice -> (function, parameter ranges)
    "kick": (_kick, dict(f_start=(120, 200), f_end=(45, 60), pitch_tau=(0.02, 0.05),
                         amp_tau=(0.08, 0.18), click=(0.1, 0.4))),
    "kick808": (_kick, dict(f_start=(90, 140), f_end=(38, 50), pitch_tau=(0.03, 0.08),
                            amp_tau=(0.25, 0.5), click=(0.0, 0.15))),
    "snare": (_snare, dict(tone_hz=(170, 240), tone_mix=(0.2, 0.5), noise_tau=(0.05, 0.1),
                           low_hz=(1000, 2000), high_hz=(5000, 7500))),
    "brush": (_snare, dict(tone_hz=(180, 220), tone_mix=(0.0, 0.15), noise_tau=(0.03, 0.07),
                           low_hz=(2000, 3000), high_hz=(6000, 7500))),
    "clap": (_clap, dict(tau=(0.04, 0.09))),
    "hat": (_hat, dict(tau=(0.012, 0.03), cutoff_hz=(5500, 7000))),
    "open_hat": (_hat, dict(tau=(0.08, 0.18), cutoff_hz=(5000, 6500))),
    "ride": (_ride, dict(tau=(0.3, 0.8), base_hz=(300, 500))),
    "rim": (_membrane, dict(f0=(1500, 1900), bend=(0.0, 0.1), tau=(0.01, 0.02), noise=(0.5, 1))),
    "tom": (_membrane, dict(f0=(90, 160), bend=(0.2, 0.5), tau=(0.1, 0.2), noise=(0.2, 0.5))),
    "tabla_na": (_membrane, dict(f0=(350, 520), bend=(0.0, 0.05), tau=(0.08, 0.2),
                                 noise=(0.3, 0.6))),
    "tabla_ge": (_membrane, dict(f0=(80, 120), bend=(0.4, 0.9), tau=(0.15, 0.35),
                                 noise=(0.1, 0.3))),
    "conga": (_membrane, dict(f0=(180, 300), bend=(0.05, 0.2), tau=(0.08, 0.15), noise=(0.3, 0.7))),
    "shaker": (_shaker, dict(tau=(0.02, 0.05))),
}  # fmt: skip

# voice (key of _SOUNDS; "kick:" prefixes alias one sound under a role) -> 16-step pattern:
# "X" accent, "x" normal, "o" ghost note, "." rest
KITS: dict[str, tuple[dict[str, str], ...]] = {
    "rock": (
        {"kick": "x.......x.x.....", "snare": "....X.......X...", "hat": "x.x.x.x.x.x.x.x."},
        {"kick": "x......xx.......", "snare": "....X.......X..o", "hat": "x.x.x.x.x.x.x.x."},
        {"kick": "x.x.....x.x.....", "snare": "....X.......X...", "ride": "x.x.x.x.x.x.x.x."},
    ),
    "metal": (
        {"kick": "xxxxxxxxxxxxxxxx", "snare": "....X.......X...", "ride": "x...x...x...x..."},
        {"kick": "x.xxx.xxx.xxx.xx", "snare": "....X.......X...", "hat": "x.x.x.x.x.x.x.x."},
        {"kick": "xx.xxx.xxx.xxx.x", "snare": "X.......X.......", "ride": "x.x.x.x.x.x.x.x."},
    ),
    "pop": (
        {"kick": "x.....x.x.......", "snare": "....X.......X...", "hat": "x.x.x.x.x.x.x.x."},
        {"kick": "x.......x..x....", "clap": "....X.......X...", "hat": "xoxoxoxoxoxoxoxo"},
    ),
    "dance": (
        {"kick808": "x...x...x...x...", "clap": "....X.......X...",
         "open_hat": "..x...x...x...x.", "hat": "xoxoxoxoxoxoxoxo"},
        {"kick808": "x...x...x...x...", "snare": "....X.......X...",
         "open_hat": "..x...x...x...x."},
    ),
    "techno": (
        {"kick808": "X...X...X...X...", "hat": "..x...x...x...x.", "rim": "...x..x....x..x."},
        {"kick808": "X...X...X...X...", "open_hat": "..x...x...x...x.", "clap": "....x.......x..."},
        {"kick808": "X...X...X...X...", "hat": "xxxxxxxxxxxxxxxx", "rim": "..x....x..x....."},
    ),
    "breakbeat": (
        {"kick": "x.........x.....", "snare": "....X..o.o..X...", "hat": "xxxxxxxxxxxxxxxx"},
        {"kick": "x.x.......x.....", "snare": "....X.......X.o.", "hat": "x.x.x.x.x.x.x.x."},
    ),
    "hiphop": (
        {"kick808": "x......x..x.....", "snare": "....X.......X...", "hat": "x.x.x.x.x.x.x.x."},
        {"kick808": "x.x.......xx....", "clap": "....X.......X...", "hat": "xxxxxxxxxxxxxxxx"},
    ),
    "country": (
        {"kick": "x.......x.......", "brush": "x.x.X.x.x.x.X.x."},
        {"kick": "x...x...x...x...", "brush": "..x.X.x...x.X.x.", "hat": "x.x.x.x.x.x.x.x."},
    ),
    "light": (
        {"kick": "x.......x.......", "shaker": "x.x.x.x.x.x.x.x."},
        {"conga": "x..x..x...x.x...", "shaker": "xoxoxoxoxoxoxoxo"},
    ),
    "latin": (
        {"conga": "x..x..x.x..x..x.", "rim": "x..x...x..x.x...", "shaker": "xoxoxoxoxoxoxoxo",
         "kick": "x.......x......."},
    ),
    "tabla": (
        {"tabla_ge": "x.....x...x.....", "tabla_na": "x.xx.x.xx.xx.x.x"},
        {"tabla_ge": "x..x....x..x....", "tabla_na": ".xx.xxx..xx.xxx."},
    ),
}  # fmt: skip
ELECTRONIC_KITS = {"dance", "techno", "breakbeat", "hiphop"}  # programmed: quantised, "beat"
_ACCENT = {"X": 1.0, "x": 0.75, "o": 0.35}


@dataclass(frozen=True, eq=False)
class DrumKit:
    """A drum kit of one song: its sounds (drawn once) and its bar patterns."""

    name: str
    sounds: dict  # voice -> waveform
    patterns: tuple[dict[str, str], ...]

    @property
    def electronic(self) -> bool:
        return self.name in ELECTRONIC_KITS


def make_kit(name: str, rng: np.random.Generator, spread: float = 1.0) -> DrumKit:
    """Draw the sounds of kit ``name``; ``"random"`` makes experimental sparse patterns."""
    if name == "random":
        voices = ("kick", "snare", "hat", "rim", "tom", "clap")
        patterns = tuple(
            {v: "".join("x" if rng.random() < 0.2 else "." for _ in range(16)) for v in voices}
            for _ in range(2)
        )
    else:
        patterns = KITS[name]
    sounds = {}
    for voice in sorted({v for p in patterns for v in p}):
        func, ranges = _SOUNDS[voice]
        args = {k: (lo + hi) / 2 + (rng.random() - 0.5) * (hi - lo) * spread
                for k, (lo, hi) in ranges.items()}  # fmt: skip
        wave = func(rng, **args)
        sounds[voice] = wave / (np.abs(wave).max() + 1e-9)
    return DrumKit(name, sounds, patterns)


def render_drums(
    kit: DrumKit, n: int, bar_starts_s: list[float], bar_s: float, swing: float,
    humanize_s: float, rng: np.random.Generator,
) -> np.ndarray:  # fmt: skip
    """Play the kit's patterns (one per bar, varied) into ``n`` samples."""
    out = np.zeros(n)
    step_s = bar_s / 16
    pattern = kit.patterns[int(rng.integers(len(kit.patterns)))]
    for bar, start in enumerate(bar_starts_s):
        if bar % 4 == 0 and rng.random() < 0.5:  # change groove at phrase starts
            pattern = kit.patterns[int(rng.integers(len(kit.patterns)))]
        for voice, steps in pattern.items():
            wave = kit.sounds[voice]
            for i, ch in enumerate(steps):
                if ch == "." or (ch == "o" and rng.random() < 0.3):
                    continue
                t = start + i * step_s + (swing * step_s if i % 2 else 0.0)
                if humanize_s > 0:
                    t += rng.normal(0.0, humanize_s)
                j = int(round(t * SR))
                if j < 0 or j >= n:
                    continue
                gain = _ACCENT[ch] * rng.uniform(0.85, 1.0)
                m = min(len(wave), n - j)
                out[j : j + m] += gain * wave[:m]
    return out
