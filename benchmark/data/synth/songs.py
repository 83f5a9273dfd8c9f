"""Song plans: what is fixed for a song of a style, drawn once and shared by its clips.

A *style* (:mod:`benchmark.data.synth.styles`) fixes tempo range, harmony, instrument palette,
drum kits, bass, vocals and loudness tendencies. :func:`plan_song` draws one song of a style
(tempo, key, instruments with their timbres, kit, voice); :mod:`benchmark.data.synth.notes`
writes its notes and :mod:`benchmark.data.synth.music` renders its clips.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from benchmark.data.synth.drums import DrumKit, make_kit
from benchmark.data.synth.instruments import Instrument, make_instrument
from benchmark.data.synth.knobs import Difficulty
from benchmark.data.synth.styles import (
    HARMONIC_MINOR,
    MAJOR,
    MINOR,
    PENTATONIC,
    PROGRESSIONS,
    RAGAS,
    ROLES,
    STYLE_TABLE,
    VOICES,
)

STEMS = ("bass", "drums", "vocals", "other")  # the separation targets (REFERENCE.md section 3)


@dataclass(eq=False)
class Part:
    """An instrument of a song and what it plays."""

    instrument: Instrument
    role: str
    electronic: bool  # quantised timing


@dataclass(eq=False)
class SongPlan:
    """Everything fixed for a song (shared by its clips)."""

    style: str
    tempo: float  # bpm
    key: int  # tonic pitch class
    scale: tuple[int, ...]
    melody_scale: tuple[int, ...]
    progression: tuple[int, ...]
    bars_per_chord: int
    others: list[Part]
    bass: Part | None
    bass_pattern: str
    kit: DrumKit | None
    vocals: str | None
    voices: list[Instrument]
    loudness: str  # quiet | normal | loud
    weird: bool
    solo: bool
    reverb_wet: float
    levels: dict[str, float]  # stem -> target mean |amplitude| where active (before the peak)
    peak: float  # target peak of the mixture
    noise: float  # background noise, fraction of the "other" level


def _choice(items, rng):
    names = [k for k, _ in items]
    weights = np.array([w for _, w in items], dtype=float)
    return names[int(rng.choice(len(names), p=weights / weights.sum()))]


def _is_electronic(kind: str) -> bool:
    return kind.startswith(("synth", "electronic", "sub")) or kind == "bells"


def plan_song(style: str, rng: np.random.Generator, knobs: Difficulty, vocals: bool = True):
    """Draw a song of ``style``; ``vocals=False`` forces an instrumental."""
    s = STYLE_TABLE[style]
    tempo = float(rng.uniform(*s["tempo"]))
    minor = rng.random() < s["minor"]
    scale = (
        HARMONIC_MINOR if minor and style in ("classical", "metal") else MINOR if minor else MAJOR
    )
    melody_scale = scale
    if s.get("scale") == "raga":
        scale = melody_scale = RAGAS[int(rng.integers(len(RAGAS)))]
    elif s.get("scale") == "pentatonic":
        melody_scale = PENTATONIC
    if s["prog"] == "random":
        progression = tuple(int(d) for d in rng.integers(0, 7, size=int(rng.integers(2, 6))))
    else:
        options = PROGRESSIONS[s["prog"]]
        progression = options[int(rng.integers(len(options)))]
    solo = rng.random() < s["solo"]
    others = _draw_others(s, rng, knobs, solo)
    bass = kit = None
    voices: list[Instrument] = []
    vocal_type = None
    if not solo:
        bass_kind = _choice(s["bass"], rng)
        if bass_kind:
            bass = Part(make_instrument(bass_kind, rng, knobs.timbre_spread), "bass",
                        _is_electronic(bass_kind))  # fmt: skip
        kit_name = _choice(s["drums"], rng)
        kit = make_kit(kit_name, rng, knobs.timbre_spread) if kit_name else None
        vocal_type = _choice(s["vocals"], rng) if vocals else None
        if vocal_type:
            voices = _draw_voices(vocal_type, rng, knobs)
    loudness = ("quiet", "normal", "loud")[int(rng.choice(3, p=np.array(s["loudness"])))]
    spread = 10 ** (knobs.level_spread_db * (rng.random(4) - 0.5) / 20)
    levels = dict(zip(STEMS, 0.09 * spread, strict=True))
    peak = {"quiet": rng.uniform(0.35, 0.5), "normal": rng.uniform(0.7, 0.88), "loud": 0.9}
    plan = SongPlan(
        style=style, tempo=tempo, key=int(rng.integers(12)), scale=scale,
        melody_scale=melody_scale, progression=progression,
        bars_per_chord=int(rng.integers(s["bars_per_chord"][0], s["bars_per_chord"][1] + 1)),
        others=others, bass=bass, bass_pattern=str(rng.choice(s["bass_patterns"])), kit=kit,
        vocals=vocal_type, voices=voices, loudness=loudness, weird=rng.random() < s["weird"],
        solo=solo, reverb_wet=float(rng.uniform(*s["reverb"])), levels=levels,
        peak=float(peak[loudness]), noise=float(rng.uniform(0, knobs.noise_max)),
    )  # fmt: skip
    return plan


def _draw_others(s: dict, rng, knobs: Difficulty, solo: bool) -> list[Part]:
    palette = list(s["others"])
    lo, hi = (1, 1) if solo else s["num_others"]
    count = int(rng.integers(lo, hi + 1))
    parts = []
    for _ in range(min(count, len(palette))):
        kind = _choice(palette, rng)
        palette = [(k, w) for k, w in palette if k != kind]
        roles = ROLES.get(kind, ("lead",))
        if solo:  # a solo chordal instrument plays melody and accompaniment
            role = "lead" if roles == ("lead",) else "solo"
        else:
            role = str(rng.choice(roles))
        parts.append(Part(make_instrument(kind, rng, knobs.timbre_spread), role,
                          _is_electronic(kind)))  # fmt: skip
    if s.get("drone"):
        tanpura = make_instrument("sitar", rng, knobs.timbre_spread)
        tanpura = Instrument("tanpura", tanpura.model, {**tanpura.params, "decay_s": 4.0}, 36, 60)
        parts.append(Part(tanpura, "drone", False))
    return parts


def _draw_voices(vocal_type: str, rng, knobs: Difficulty) -> list[Instrument]:
    kinds, vib_scale, _ = VOICES[vocal_type]
    voices = []
    for kind in kinds:
        inst = make_instrument(kind, rng, knobs.timbre_spread)
        params = {**inst.params, "vib_depth": inst.params["vib_depth"] * vib_scale}
        voices.append(Instrument(kind, inst.model, params, inst.low, inst.high))
    return voices
