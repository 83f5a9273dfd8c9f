"""Synthetic instruments: timbre models, and instrument kinds with jittered parameters.

A *model* is a synthesis method (Karplus-Strong pluck, decaying-harmonic piano, bowed
sawtooth, additive organ, formant voice, ...). A *kind* (``"acoustic_guitar"``, ``"cello"``)
is a model with parameter ranges, a playable MIDI range, its NSynth family/source and its MTAT
tag concepts. :func:`make_instrument` draws one concrete instrument of a kind (so two "violins"
differ); :func:`render_note` plays one note of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from benchmark.data.synth import dsp
from benchmark.data.synth.dsp import SR


@dataclass(frozen=True, eq=False)
class Instrument:
    """One concrete instrument: a kind with drawn timbre parameters."""

    kind: str
    model: str
    params: dict
    low: int  # playable MIDI range
    high: int

    def clamp(self, midi: int) -> int:
        """Move ``midi`` by octaves into the playable range."""
        while midi < self.low:
            midi += 12
        while midi > self.high:
            midi -= 12
        return max(midi, self.low)


@dataclass(frozen=True)
class Kind:
    model: str
    low: int
    high: int
    params: dict  # name -> constant, (lo, hi) uniform range, or list of choices
    family: str | None = None  # NSynth instrument_family_str
    source: int = 0  # NSynth instrument_source: 0 acoustic, 1 electronic, 2 synthetic
    tags: tuple[str, ...] = ()  # MTAT tag concepts this instrument makes true


KINDS: dict[str, Kind] = {
    # plucked strings (Karplus-Strong)
    "acoustic_guitar": Kind("pluck", 40, 84, dict(decay_s=(1.2, 3.0), brightness=(0.35, 0.8),
        pluck_position=(0.12, 0.3), body=(0.1, 0.4), buzz=0.0, octave=0.0, release_s=0.08,
        drive=0.0), "guitar", 0, ("guitar", "acoustic")),
    "electric_guitar": Kind("pluck", 40, 86, dict(decay_s=(2.0, 4.0), brightness=(0.5, 0.9),
        pluck_position=(0.08, 0.2), body=(0.0, 0.3), buzz=0.0, octave=0.0, release_s=0.06,
        drive=(0.0, 1.5)), "guitar", 1, ("guitar",)),
    "distorted_guitar": Kind("pluck", 40, 76, dict(decay_s=(2.0, 4.0), brightness=(0.6, 1.0),
        pluck_position=(0.08, 0.2), body=(0.2, 0.5), buzz=0.0, octave=0.0, release_s=0.05,
        drive=(4.0, 12.0)), "guitar", 1, ("guitar",)),
    "synth_pluck": Kind("pluck", 45, 90, dict(decay_s=(0.4, 1.2), brightness=(0.8, 1.0),
        pluck_position=(0.3, 0.5), body=(0.0, 0.2), buzz=(0.0, 0.3), octave=(0.0, 0.5),
        release_s=0.05, drive=(0.0, 2.0)), "guitar", 2, ("synth",)),
    "harp": Kind("pluck", 36, 96, dict(decay_s=(1.5, 3.5), brightness=(0.15, 0.4),
        pluck_position=(0.35, 0.5), body=(0.2, 0.5), buzz=0.0, octave=0.0, release_s=1.0,
        drive=0.0), "string", 0, ("harp",)),
    "harpsichord": Kind("pluck", 41, 89, dict(decay_s=(0.8, 1.6), brightness=(0.85, 1.0),
        pluck_position=(0.06, 0.12), body=(0.0, 0.15), buzz=(0.0, 0.1), octave=(0.3, 0.6),
        release_s=0.1, drive=0.0), "keyboard", 0, ("harpsichord",)),
    "sitar": Kind("pluck", 48, 84, dict(decay_s=(2.0, 4.0), brightness=(0.7, 1.0),
        pluck_position=(0.05, 0.12), body=(0.0, 0.2), buzz=(0.5, 1.2), octave=(0.0, 0.2),
        release_s=0.3, drive=0.0), "string", 0, ("sitar",)),
    "pizzicato": Kind("pluck", 36, 88, dict(decay_s=(0.3, 0.8), brightness=(0.2, 0.5),
        pluck_position=(0.2, 0.4), body=(0.3, 0.6), buzz=0.0, octave=0.0, release_s=0.1,
        drive=0.0), "string", 0, ("strings",)),
    "upright_bass": Kind("pluck", 28, 55, dict(decay_s=(0.8, 1.6), brightness=(0.15, 0.35),
        pluck_position=(0.2, 0.4), body=(0.4, 0.7), buzz=0.0, octave=0.0, release_s=0.08,
        drive=0.0), "bass", 0, ("bass",)),
    "electric_bass": Kind("pluck", 28, 60, dict(decay_s=(2.0, 4.0), brightness=(0.3, 0.6),
        pluck_position=(0.1, 0.25), body=(0.3, 0.6), buzz=0.0, octave=0.0, release_s=0.05,
        drive=(0.0, 1.0)), "bass", 1, ("bass",)),
    # decaying harmonics
    "piano": Kind("piano", 21, 108, dict(tilt=(1.0, 1.8), bright_tau=(0.08, 0.3),
        decay_tau=(1.0, 2.5), detune_cents=(0.5, 3.0), hammer=(0.02, 0.1), release_s=0.15),
        "keyboard", 0, ("piano",)),
    "epiano": Kind("epiano", 28, 100, dict(ratio=[1.0, 2.0, 14.0], index=(0.8, 3.0),
        index_tau=(0.05, 0.4), decay_tau=(0.8, 2.0), tremolo=(0.0, 0.3), release_s=0.12),
        "keyboard", 1, ("piano",)),
    "synth_keys": Kind("epiano", 36, 96, dict(ratio=[0.5, 1.0, 3.0], index=(1.0, 4.0),
        index_tau=(0.2, 1.0), decay_tau=(0.5, 1.5), tremolo=(0.0, 0.2), release_s=0.3),
        "keyboard", 2, ("synth",)),
    "marimba": Kind("mallet", 45, 96, dict(ratios=[(1.0, 3.93, 9.2), (1.0, 4.0, 10.0)],
        decay_tau=(0.15, 0.5), tremolo=0.0, strike=(0.05, 0.2), release_s=0.1),
        "mallet", 0, ()),
    "vibraphone": Kind("mallet", 53, 89, dict(ratios=[(1.0, 4.0, 10.0)], decay_tau=(0.8, 2.0),
        tremolo=(0.2, 0.5), strike=(0.02, 0.1), release_s=0.3), "mallet", 1, ()),
    "bells": Kind("mallet", 60, 100, dict(ratios=[(1.0, 2.76, 5.4), (1.0, 2.0, 3.01, 4.2),
        (0.5, 1.0, 2.41, 3.9)], decay_tau=(0.8, 2.5), tremolo=0.0, strike=(0.0, 0.1),
        release_s=0.5), "mallet", 2, ()),
    # sustained tones
    "strings": Kind("bowed", 36, 96, dict(tilt=(0.9, 1.4), attack_s=(0.12, 0.35),
        vib_rate=(4.5, 6.0), vib_depth=(0.05, 0.2), ensemble=3, detune_cents=(5.0, 14.0),
        bow_noise=(0.0, 0.05), release_s=0.3), "string", 0, ("strings",)),
    "violin": Kind("bowed", 55, 100, dict(tilt=(0.8, 1.2), attack_s=(0.05, 0.15),
        vib_rate=(5.0, 6.5), vib_depth=(0.15, 0.35), ensemble=1, detune_cents=0.0,
        bow_noise=(0.02, 0.08), release_s=0.15), "string", 0, ("violin", "strings")),
    "cello": Kind("bowed", 36, 76, dict(tilt=(1.0, 1.5), attack_s=(0.06, 0.2),
        vib_rate=(4.5, 6.0), vib_depth=(0.12, 0.3), ensemble=1, detune_cents=0.0,
        bow_noise=(0.02, 0.08), release_s=0.2), "string", 0, ("cello", "strings")),
    "synth_strings": Kind("bowed", 36, 96, dict(tilt=(0.7, 1.1), attack_s=(0.2, 0.6),
        vib_rate=(3.0, 5.0), vib_depth=(0.0, 0.08), ensemble=3, detune_cents=(8.0, 20.0),
        bow_noise=0.0, release_s=0.5), "string", 2, ("synth", "strings")),
    "organ": Kind("organ", 36, 96, dict(drawbars=[(8, 8, 8, 0, 0, 0, 0, 0, 0),
        (8, 8, 6, 8, 0, 4, 0, 0, 2), (6, 8, 8, 6, 4, 4, 2, 2, 4), (0, 8, 0, 6, 0, 4, 0, 0, 6)],
        tremolo=(0.0, 0.4), click=(0.0, 0.1), attack_s=0.005, release_s=0.04),
        "organ", 1, ("organ",)),
    "pipe_organ": Kind("organ", 36, 96, dict(drawbars=[(4, 8, 0, 6, 0, 3, 0, 0, 2),
        (6, 8, 2, 6, 2, 4, 0, 2, 4), (0, 8, 0, 8, 0, 0, 0, 0, 0)], tremolo=0.0,
        click=(0.05, 0.2), attack_s=(0.03, 0.08), release_s=0.25), "organ", 0, ("organ",)),
    "flute": Kind("flute", 60, 96, dict(h2=(0.05, 0.3), h3=(0.0, 0.15), breath=(0.05, 0.2),
        vib_rate=(4.5, 5.5), vib_depth=(0.05, 0.2), attack_s=(0.04, 0.12), release_s=0.1),
        "flute", 0, ("flute",)),
    "pan_flute": Kind("flute", 55, 88, dict(h2=(0.0, 0.1), h3=(0.1, 0.3), breath=(0.2, 0.4),
        vib_rate=(4.0, 5.0), vib_depth=(0.0, 0.1), attack_s=(0.03, 0.08), release_s=0.2),
        "flute", 0, ("flute",)),
    "synth_flute": Kind("flute", 55, 96, dict(h2=(0.0, 0.05), h3=(0.0, 0.05), breath=(0.0, 0.06),
        vib_rate=(5.0, 6.5), vib_depth=(0.0, 0.15), attack_s=(0.01, 0.05), release_s=0.2),
        "flute", 2, ("synth",)),
    "brass": Kind("brass", 40, 82, dict(tilt_dark=(2.0, 3.0), tilt_bright=(0.6, 1.1),
        attack_s=(0.03, 0.08), bright_tau=(0.1, 0.4), scoop_st=(0.3, 1.0), vib_depth=(0.0, 0.1),
        release_s=0.1), "brass", 0, ("trumpet",)),
    "synth_brass": Kind("pad", 40, 84, dict(num_osc=2, detune_cents=(4.0, 12.0),
        cutoff_mult=(3.0, 8.0), attack_s=(0.02, 0.06), release_s=0.15, square=0.0,
        tilt=(0.8, 1.0)), "brass", 2, ("synth",)),
    "clarinet": Kind("reed", 50, 91, dict(even=(0.02, 0.15), tilt=(0.9, 1.4), breath=(0.02, 0.08),
        nasal_hz=(1200.0, 2000.0), vib_depth=(0.0, 0.06), attack_s=(0.03, 0.07),
        release_s=0.08), "reed", 0, ()),
    "sax": Kind("reed", 44, 80, dict(even=(0.6, 1.0), tilt=(0.8, 1.2), breath=(0.05, 0.15),
        nasal_hz=(900.0, 1600.0), vib_depth=(0.05, 0.2), attack_s=(0.02, 0.06),
        release_s=0.08), "reed", 0, ()),
    "oboe": Kind("reed", 58, 91, dict(even=(0.5, 0.9), tilt=(0.5, 0.8), breath=(0.01, 0.05),
        nasal_hz=(1400.0, 2600.0), vib_depth=(0.03, 0.12), attack_s=(0.02, 0.05),
        release_s=0.06), "reed", 0, ()),
    "synth_pad": Kind("pad", 36, 90, dict(num_osc=3, detune_cents=(8.0, 25.0),
        cutoff_mult=(1.5, 4.0), attack_s=(0.3, 0.9), release_s=0.6, square=(0.0, 1.0),
        tilt=(0.9, 1.2)), "synth_lead", 2, ("synth",)),
    "synth_lead": Kind("pad", 48, 96, dict(num_osc=2, detune_cents=(3.0, 12.0),
        cutoff_mult=(4.0, 12.0), attack_s=(0.005, 0.03), release_s=0.1, square=(0.0, 1.0),
        tilt=(0.8, 1.1)), "synth_lead", 2, ("synth",)),
    "electronic_lead": Kind("pad", 48, 96, dict(num_osc=1, detune_cents=0.0,
        cutoff_mult=(3.0, 10.0), attack_s=(0.005, 0.02), release_s=0.08, square=(0.5, 1.0),
        tilt=(0.9, 1.3)), "synth_lead", 1, ("synth",)),
    "synth_bass": Kind("pad", 24, 55, dict(num_osc=2, detune_cents=(2.0, 10.0),
        cutoff_mult=(2.0, 6.0), attack_s=0.005, release_s=0.05, square=(0.0, 1.0),
        tilt=(0.9, 1.2)), "bass", 2, ("synth", "bass")),
    "sub_bass": Kind("sub", 24, 50, dict(drop_st=(5.0, 14.0), drop_tau=(0.01, 0.05),
        decay_tau=(0.4, 1.5), drive=(1.0, 2.5), release_s=0.05), "bass", 2, ("bass",)),
    # voices (formant synthesis)
    "male_voice": Kind("voice", 45, 67, dict(formant_scale=(0.95, 1.05), breath=(0.02, 0.12),
        vib_rate=(4.8, 6.0), vib_depth=(0.15, 0.4), attack_s=(0.03, 0.08), release_s=0.12,
        ensemble=1), "vocal", 0, ()),
    "female_voice": Kind("voice", 57, 81, dict(formant_scale=(1.12, 1.25), breath=(0.03, 0.15),
        vib_rate=(5.0, 6.5), vib_depth=(0.15, 0.45), attack_s=(0.03, 0.08), release_s=0.12,
        ensemble=1), "vocal", 0, ()),
    "synth_choir": Kind("voice", 48, 79, dict(formant_scale=(1.0, 1.2), breath=(0.0, 0.05),
        vib_rate=(4.0, 5.5), vib_depth=(0.05, 0.2), attack_s=(0.1, 0.4), release_s=0.4,
        ensemble=3), "vocal", 2, ()),
}  # fmt: skip


def make_instrument(kind: str, rng: np.random.Generator, spread: float = 1.0) -> Instrument:
    """Draw one instrument of ``kind``; ``spread`` scales the width of its parameter ranges."""
    spec = KINDS[kind]
    params = {}
    for name, value in spec.params.items():
        if isinstance(value, list):
            params[name] = value[int(rng.integers(len(value)))]
        elif isinstance(value, tuple) and len(value) == 2 and not isinstance(value[0], tuple):
            lo, hi = value
            params[name] = (lo + hi) / 2 + (rng.random() - 0.5) * (hi - lo) * spread
        else:
            params[name] = value
    return Instrument(kind, spec.model, params, spec.low, spec.high)


def render_note(
    inst: Instrument, midi: float, hold_s: float, velocity: float, rng: np.random.Generator,
    vowel: str | None = None,
) -> np.ndarray:  # fmt: skip
    """One note: ``hold_s`` seconds held then the instrument's release; peak ~ velocity / 127.

    ``vowel`` (a, e, i, o, u) is used by voices; a random one is drawn when omitted.
    """
    p = inst.params
    hold = max(int(hold_s * SR), 1)
    n = hold + int(p["release_s"] * SR) + int(0.01 * SR)
    f0 = float(dsp.midi_to_hz(midi))
    x = _MODELS[inst.model](p, f0, hold, n, rng, vowel)
    peak = np.abs(x).max()
    gain = (velocity / 127.0) ** 1.3 / peak if peak > 0 else 0.0
    return (x * gain).astype(np.float32)


# -- models: (params, f0, hold samples, total samples, rng, vowel) -> waveform -----------------


def _pluck(p, f0, hold, n, rng, vowel):
    x = dsp.karplus_strong(f0, n, rng, p["decay_s"], p["brightness"], p["pluck_position"])
    if p["octave"] > 0:
        x = x + p["octave"] * dsp.karplus_strong(2 * f0, n, rng, p["decay_s"] * 0.7, 1.0, 0.1)
    if p["buzz"] > 0:  # sitar bridge (jawari): rectification adds a bright, buzzing partial band
        x = x + p["buzz"] * dsp.highpass(np.abs(x) - np.abs(x).mean(), 1500.0)
    if p["body"] > 0:
        x = dsp.one_pole_lowpass(x, p["body"])
    if p["drive"] > 0:
        x = dsp.saturate(x / (np.abs(x).max() + 1e-9), 1.0 + p["drive"])
    return x * dsp.envelope(n, hold, 0.0005, 1e9, 1.0, p["release_s"] / 3)


@lru_cache(maxsize=256)
def _tilt_table(tilt: float, num: int, odd_even: float = 1.0) -> np.ndarray:
    k = np.arange(1, num + 1)
    amps = 1.0 / k**tilt
    amps[1::2] *= odd_even  # even harmonics (clarinet: weak)
    return dsp.harmonic_table(amps)


def _num_partials(f0: float) -> int:
    return max(1, min(int(dsp.BAND_LIMIT_HZ // f0), 64))


def _piano(p, f0, hold, n, rng, vowel):
    num = _num_partials(f0)
    t = dsp.seconds(n)
    bright = dsp.oscillator(_tilt_table(round(p["tilt"], 2), num), f0, n, rng.random())
    dark = dsp.oscillator(_tilt_table(round(p["tilt"] + 1.5, 2), num), f0, n, rng.random())
    w = np.exp(-t / p["bright_tau"])
    detuned = f0 * 2 ** (p["detune_cents"] / 1200)
    second = dsp.oscillator(_tilt_table(round(p["tilt"] + 1.5, 2), _num_partials(detuned)),
                            detuned, n, rng.random())  # fmt: skip
    tau = p["decay_tau"] * np.clip((261.6 / f0) ** 0.5, 0.3, 3.0)  # low strings ring longer
    x = (w * bright + (1 - w) * dark + 0.5 * second) * np.exp(-t / tau)
    hammer = min(n, int(0.006 * SR))
    x[:hammer] += p["hammer"] * rng.standard_normal(hammer) * np.linspace(1, 0, hammer) * 3
    return x * dsp.envelope(n, hold, 0.002, 1e9, 1.0, p["release_s"] / 3)


def _epiano(p, f0, hold, n, rng, vowel):
    t = dsp.seconds(n)
    index = p["index"] * np.exp(-t / p["index_tau"])
    mod_f = min(f0 * p["ratio"], dsp.BAND_LIMIT_HZ)
    x = np.sin(2 * np.pi * f0 * t + index * np.sin(2 * np.pi * mod_f * t))
    x *= np.exp(-t / p["decay_tau"]) * (1 + p["tremolo"] * np.sin(2 * np.pi * 5.0 * t))
    return x * dsp.envelope(n, hold, 0.002, 1e9, 1.0, p["release_s"] / 3)


def _bowed(p, f0, hold, n, rng, vowel):
    num = _num_partials(f0 * 1.03)
    table = _tilt_table(round(p["tilt"], 2), num)
    x = np.zeros(n)
    for i in range(int(p["ensemble"])):
        cents = p["detune_cents"] * (i - (p["ensemble"] - 1) / 2)
        freq = dsp.vibrato(f0 * 2 ** (cents / 1200), n, p["vib_rate"] * (1 + 0.07 * i),
                           p["vib_depth"], 0.15, rng.random() * 6.28)  # fmt: skip
        x += dsp.oscillator(table, freq, n, rng.random())
    if p["bow_noise"] > 0:
        x += p["bow_noise"] * p["ensemble"] * dsp.highpass(rng.standard_normal(n), 2000.0)
    return x * dsp.envelope(n, hold, p["attack_s"], 0.3, 0.85, p["release_s"] / 3)


_DRAWBAR_HARMONICS = (1, 2, 3, 4, 6, 8, 10, 12, 16)  # of f0/2: 16', 8', 5 1/3', 4', ... 1'


@lru_cache(maxsize=64)
def _organ_table(drawbars: tuple[int, ...], num: int) -> np.ndarray:
    amps = np.zeros(16)
    for level, h in zip(drawbars, _DRAWBAR_HARMONICS, strict=True):
        amps[h - 1] = 10 ** ((level - 8) * 3 / 20) if level > 0 else 0.0  # 3 dB per drawbar step
    return dsp.harmonic_table(amps[:num])


def _organ(p, f0, hold, n, rng, vowel):
    base = f0 / 2  # the 16' drawbar sounds an octave below the key
    table = _organ_table(tuple(p["drawbars"]), max(1, int(dsp.BAND_LIMIT_HZ // base)))
    x = dsp.oscillator(table, base, n, rng.random())
    t = dsp.seconds(n)
    x *= 1 + p["tremolo"] * np.sin(2 * np.pi * 6.3 * t)  # rotating-speaker tremolo
    click = min(n, int(0.004 * SR))
    x[:click] += p["click"] * 4 * rng.standard_normal(click)
    return x * dsp.envelope(n, hold, p["attack_s"], 1e9, 1.0, p["release_s"] / 3)


def _flute(p, f0, hold, n, rng, vowel):
    freq = dsp.vibrato(f0, n, p["vib_rate"], p["vib_depth"], 0.2, rng.random() * 6.28)
    table = dsp.harmonic_table(dsp.band_limited(np.array([1.0, p["h2"], p["h3"]]), f0))
    x = dsp.oscillator(table, freq, n, rng.random())
    noise = rng.standard_normal(n)
    x += p["breath"] * (dsp.resonator(noise, f0, 60.0) * 3 + 0.3 * dsp.highpass(noise, 3000.0))
    return x * dsp.envelope(n, hold, p["attack_s"], 1e9, 1.0, p["release_s"] / 3)


def _brass(p, f0, hold, n, rng, vowel):
    t = dsp.seconds(n)
    freq = f0 * 2 ** (-p["scoop_st"] * np.exp(-t / 0.04) / 12)  # lip scoop up to pitch
    freq = freq * (1 + p["vib_depth"] / 17 * np.sin(2 * np.pi * 5.5 * t))
    num = _num_partials(f0)
    bright = dsp.oscillator(_tilt_table(round(p["tilt_bright"], 2), num), freq, n)
    dark = dsp.oscillator(_tilt_table(round(p["tilt_dark"], 2), num), freq, n)
    w = np.minimum(t / p["attack_s"], 1.0) * (0.5 + 0.5 * np.exp(-t / p["bright_tau"]))
    x = w * bright + (1 - w) * dark
    return x * dsp.envelope(n, hold, p["attack_s"], 0.2, 0.8, p["release_s"] / 3)


def _reed(p, f0, hold, n, rng, vowel):
    num = _num_partials(f0)
    table = _tilt_table(round(p["tilt"], 2), num, round(p["even"], 2))
    freq = f0 * (1 + p["vib_depth"] / 17 * np.sin(2 * np.pi * 5.0 * dsp.seconds(n)))
    x = dsp.oscillator(table, freq, n, rng.random())
    x = x + 0.7 * dsp.resonator(x, p["nasal_hz"], 400.0)  # reed/bore formant
    x += p["breath"] * dsp.bandpass(rng.standard_normal(n), 1000.0, 5000.0)
    return x * dsp.envelope(n, hold, p["attack_s"], 0.3, 0.9, p["release_s"] / 3)


def _mallet(p, f0, hold, n, rng, vowel):
    t = dsp.seconds(n)
    x = np.zeros(n)
    for i, ratio in enumerate(p["ratios"]):
        f = f0 * ratio
        if f < dsp.BAND_LIMIT_HZ:
            x += np.sin(2 * np.pi * f * t) * np.exp(-t * (1 + 2 * i) / p["decay_tau"]) / (1 + i)
    if p["tremolo"] > 0:
        x *= 1 + p["tremolo"] * np.sin(2 * np.pi * 5.5 * t)
    strike = min(n, int(0.003 * SR))
    x[:strike] += p["strike"] * 4 * rng.standard_normal(strike)
    return x * dsp.envelope(n, hold, 0.001, 1e9, 1.0, p["release_s"] / 3)


@lru_cache(maxsize=256)
def _filtered_table(tilt: float, num: int, odd_even: float, cutoff_harmonic: float):
    """Harmonics through a 2nd-order Butterworth low-pass at ``cutoff_harmonic`` x f0: a static
    filter on a periodic tone only scales its harmonics, so it is baked into the table."""
    k = np.arange(1, num + 1)
    amps = 1.0 / k**tilt / np.sqrt(1 + (k / cutoff_harmonic) ** 4)
    amps[1::2] *= odd_even
    return dsp.harmonic_table(amps)


def _pad(p, f0, hold, n, rng, vowel):
    num = _num_partials(f0 * 1.02)
    cutoff = round(min(p["cutoff_mult"], 7000.0 / f0), 1)
    saw = _filtered_table(round(p["tilt"], 2), num, 1.0, cutoff)
    square = _filtered_table(round(p["tilt"], 2), num, 0.0, cutoff)
    x = np.zeros(n)
    voices = int(p["num_osc"])
    for i in range(voices):
        cents = p["detune_cents"] * (i - (voices - 1) / 2)
        f = f0 * 2 ** (cents / 1200)
        x += (1 - p["square"]) * dsp.oscillator(saw, f, n, rng.random())
        x += p["square"] * dsp.oscillator(square, f, n, rng.random())
    return x * dsp.envelope(n, hold, p["attack_s"], 0.5, 0.8, p["release_s"] / 3)


def _sub(p, f0, hold, n, rng, vowel):
    t = dsp.seconds(n)
    freq = f0 * 2 ** (p["drop_st"] * np.exp(-t / p["drop_tau"]) / 12)  # 808-style pitch drop
    x = dsp.saturate(dsp.sine(freq, n), p["drive"]) * np.exp(-t / p["decay_tau"])
    return x * dsp.envelope(n, hold, 0.001, 1e9, 1.0, p["release_s"] / 3)


def _voice(p, f0, hold, n, rng, vowel):
    vowel = vowel or dsp.VOWELS[int(rng.integers(len(dsp.VOWELS)))]
    x = np.zeros(n)
    voices = int(p["ensemble"])
    for i in range(voices):
        cents = 10.0 * (i - (voices - 1) / 2) + rng.normal(0, 3) * (voices > 1)
        t = dsp.seconds(n)
        scoop = 2 ** (-0.6 * np.exp(-t / 0.05) / 12)  # singers slide into the note
        freq = dsp.vibrato(f0 * 2 ** (cents / 1200), n, p["vib_rate"] * (1 + 0.05 * i),
                           p["vib_depth"], 0.25, rng.random() * 6.28) * scoop  # fmt: skip
        x += dsp.formant_voice(freq, vowel, p["formant_scale"], p["breath"], rng)
    return x * dsp.envelope(n, hold, p["attack_s"], 0.3, 0.9, p["release_s"] / 3)


_MODELS = {
    "pluck": _pluck,
    "piano": _piano,
    "epiano": _epiano,
    "bowed": _bowed,
    "organ": _organ,
    "flute": _flute,
    "brass": _brass,
    "reed": _reed,
    "mallet": _mallet,
    "pad": _pad,
    "sub": _sub,
    "voice": _voice,
}
