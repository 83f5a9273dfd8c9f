"""Procedural songs: styles, song plans, four rendered stems and their honest tag concepts.

A *style* fixes tempo range, harmony, instrument palette, drum kits, bass, vocals and
loudness tendencies. :func:`plan_song` draws one song of a style (tempo, key, instruments with
their timbres, kit, voice); :func:`render_clip` plays one clip of it into the four stems
``bass, drums, vocals, other`` (mixture = their exact sum) and reports the *concepts* that are
true of the clip (instruments heard, vocals or not, tempo, loudness, style), from which MTAT tags
are drawn. Stems enter and leave on the 4-s block grid, so a silent block is exactly zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from benchmark.synth import dsp
from benchmark.synth.drums import DrumKit, make_kit, render_drums
from benchmark.synth.dsp import SR
from benchmark.synth.instruments import KINDS, Instrument, make_instrument, render_note
from benchmark.synth.knobs import BLOCK_S, MIN_ACTIVE_LEVEL, Difficulty

STEMS = ("bass", "drums", "vocals", "other")  # the separation targets (REFERENCE.md section 3)
PRE_ROLL_S = 1.0  # rendered before the clip so it starts mid-song (ringing notes, reverb)

MAJOR = (0, 2, 4, 5, 7, 9, 11)
MINOR = (0, 2, 3, 5, 7, 8, 10)
HARMONIC_MINOR = (0, 2, 3, 5, 7, 8, 11)
RAGAS = ((0, 1, 4, 5, 7, 8, 11), (0, 2, 4, 6, 7, 9, 11), (0, 2, 3, 5, 7, 9, 10))
PENTATONIC = (0, 2, 4, 7, 9)

PROGRESSIONS = {  # scale degrees (0 = tonic), one chord per harmonic step
    "pop": ((0, 4, 5, 3), (5, 3, 0, 4), (0, 5, 3, 4), (0, 3, 4, 4)),
    "rock": ((0, 3, 4, 3), (0, 4, 3, 3), (0, 0, 3, 4), (5, 3, 0, 4)),
    "metal": ((0, 5, 6, 0), (0, 0, 5, 6), (0, 3, 5, 4)),
    "classical": ((0, 3, 4, 0), (0, 5, 1, 4), (0, 3, 1, 4), (0, 4, 5, 2, 3, 0, 3, 4)),
    "electronic": ((0, 0, 5, 5), (0, 5, 3, 4), (0, 3, 0, 3), (0,)),
    "ambient": ((0, 3), (0, 5, 3, 4), (0, 2, 3, 0)),
    "country": ((0, 3, 0, 4), (0, 0, 3, 4), (0, 3, 4, 0)),
    "drone": ((0,),),
    "random": (),  # drawn per song
}

# tempo: bpm range; others: (kind, weight); roles come from ROLES; vocals types see _VOICES
STYLE_TABLE = {
    "classical": dict(tempo=(60, 150), minor=0.4, prog="classical", bars_per_chord=(1, 2),
        others=(("piano", 3), ("strings", 2), ("violin", 2), ("cello", 1.5), ("harpsichord", 1.2),
                ("flute", 1.2), ("harp", 1), ("pipe_organ", 0.6), ("brass", 0.6), ("oboe", 0.5)),
        num_others=(1, 3), drums=((None, 1),), bass=((None, 6), ("upright_bass", 2)),
        vocals=((None, 7), ("opera_female", 1), ("opera_male", 0.8), ("choir", 1.2)),
        loudness=(0.45, 0.45, 0.1), weird=0.02, solo=0.3, reverb=(0.15, 0.4),
        concepts=("classical",), bass_patterns=("long", "quarters")),
    "rock": dict(tempo=(95, 165), minor=0.4, prog="rock", bars_per_chord=(1, 1),
        others=(("distorted_guitar", 3.5), ("electric_guitar", 3), ("acoustic_guitar", 1),
                ("piano", 1), ("organ", 1), ("synth_pad", 0.5)),
        num_others=(1, 2), drums=(("rock", 19), (None, 1)), bass=(("electric_bass", 9), (None, 1)),
        vocals=((None, 3), ("male", 4.5), ("female", 2.5)), loudness=(0.05, 0.45, 0.5),
        weird=0.03, solo=0.0, reverb=(0.05, 0.2), concepts=("rock",),
        bass_patterns=("eighths", "quarters")),
    "metal": dict(tempo=(110, 200), minor=0.9, prog="metal", bars_per_chord=(1, 1),
        others=(("distorted_guitar", 1),), num_others=(1, 1), drums=(("metal", 1),),
        bass=(("electric_bass", 1),), vocals=((None, 3), ("male", 6), ("female", 1)),
        loudness=(0.0, 0.1, 0.9), weird=0.03, solo=0.0, reverb=(0.05, 0.15),
        concepts=("metal", "rock"), bass_patterns=("eighths", "sixteenths")),
    "pop": dict(tempo=(90, 130), minor=0.3, prog="pop", bars_per_chord=(1, 1),
        others=(("piano", 2.5), ("electric_guitar", 2), ("acoustic_guitar", 1.5),
                ("synth_pad", 2), ("synth_lead", 1), ("strings", 1), ("epiano", 1)),
        num_others=(2, 3), drums=(("pop", 9), (None, 1)),
        bass=(("electric_bass", 6), ("synth_bass", 3), (None, 1)),
        vocals=((None, 1), ("female", 5), ("male", 4)), loudness=(0.1, 0.7, 0.2), weird=0.02,
        solo=0.0, reverb=(0.1, 0.25), concepts=("pop",), bass_patterns=("quarters", "eighths")),
    "dance": dict(tempo=(118, 135), minor=0.6, prog="electronic", bars_per_chord=(1, 2),
        others=(("synth_pad", 3), ("synth_lead", 3), ("synth_keys", 2), ("piano", 1),
                ("synth_pluck", 1)),
        num_others=(2, 3), drums=(("dance", 1),), bass=(("synth_bass", 8), ("sub_bass", 2)),
        vocals=((None, 4), ("female", 5), ("male", 1)), loudness=(0.0, 0.5, 0.5), weird=0.05,
        solo=0.0, reverb=(0.1, 0.3), concepts=("dance", "electronic"),
        bass_patterns=("offbeat", "eighths")),
    "techno": dict(tempo=(125, 145), minor=0.7, prog="electronic", bars_per_chord=(2, 2),
        others=(("synth_pluck", 3), ("synth_pad", 3), ("synth_lead", 2), ("electronic_lead", 2)),
        num_others=(1, 2), drums=(("techno", 1),), bass=(("synth_bass", 6), ("sub_bass", 4)),
        vocals=((None, 9), ("female", 1)), loudness=(0.0, 0.4, 0.6), weird=0.15, solo=0.0,
        reverb=(0.1, 0.3), concepts=("techno", "electronic"), bass_patterns=("offbeat",)),
    "electronic": dict(tempo=(85, 140), minor=0.5, prog="electronic", bars_per_chord=(1, 2),
        others=(("synth_pad", 3), ("synth_keys", 2), ("synth_pluck", 2), ("electronic_lead", 1.5),
                ("bells", 1.5)),
        num_others=(1, 3), drums=(("breakbeat", 5), ("techno", 2), (None, 3)),
        bass=(("synth_bass", 5), ("sub_bass", 3), (None, 2)),
        vocals=((None, 7), ("female", 2), ("male", 1)), loudness=(0.1, 0.7, 0.2), weird=0.2,
        solo=0.0, reverb=(0.15, 0.35), concepts=("electronic",),
        bass_patterns=("offbeat", "long", "quarters")),
    "ambient": dict(tempo=(50, 85), minor=0.5, prog="ambient", bars_per_chord=(2, 2),
        others=(("synth_pad", 4), ("synth_strings", 2), ("bells", 1.5), ("piano", 1.5)),
        num_others=(1, 2), drums=((None, 8), ("light", 2)),
        bass=((None, 6), ("sub_bass", 2), ("synth_bass", 2)), vocals=((None, 9), ("female", 1)),
        loudness=(0.7, 0.3, 0.0), weird=0.1, solo=0.0, reverb=(0.3, 0.6),
        concepts=("ambient",), bass_patterns=("long",)),
    "new_age": dict(tempo=(60, 95), minor=0.3, prog="ambient", bars_per_chord=(1, 2),
        others=(("piano", 3), ("synth_pad", 2.5), ("flute", 1.5), ("harp", 1.5), ("strings", 1.5),
                ("pan_flute", 1)),
        num_others=(1, 3), drums=((None, 8), ("light", 2)),
        bass=((None, 6), ("synth_bass", 2), ("upright_bass", 2)),
        vocals=((None, 8.5), ("female", 1), ("choir", 0.5)), loudness=(0.6, 0.4, 0.0),
        weird=0.02, solo=0.15, reverb=(0.25, 0.5), concepts=("new age",),
        bass_patterns=("long",)),
    "country": dict(tempo=(90, 160), minor=0.1, prog="country", bars_per_chord=(1, 1),
        others=(("acoustic_guitar", 4), ("electric_guitar", 2), ("violin", 1.5), ("piano", 1.5)),
        num_others=(2, 3), drums=(("country", 8), (None, 2)),
        bass=(("upright_bass", 4), ("electric_bass", 5), (None, 1)),
        vocals=((None, 1), ("male", 5.5), ("female", 3.5)), loudness=(0.1, 0.8, 0.1),
        weird=0.02, solo=0.0, reverb=(0.05, 0.2), concepts=("country",),
        bass_patterns=("root_fifth",)),
    "indian": dict(tempo=(70, 140), minor=0.0, prog="drone", bars_per_chord=(1, 1),
        scale="raga", others=(("sitar", 5), ("flute", 2.5), ("violin", 1.5), ("oboe", 1)),
        num_others=(1, 2), drone="tanpura", drums=(("tabla", 8), (None, 2)), bass=((None, 1),),
        vocals=((None, 5), ("male", 2.5), ("female", 2.5)), loudness=(0.4, 0.6, 0.0),
        weird=0.02, solo=0.0, reverb=(0.1, 0.3), concepts=("indian",), bass_patterns=("long",)),
    "folk": dict(tempo=(80, 140), minor=0.3, prog="country", bars_per_chord=(1, 1),
        others=(("acoustic_guitar", 4.5), ("violin", 1.5), ("flute", 1.5), ("harp", 1),
                ("pan_flute", 0.5), ("clarinet", 0.5)),
        num_others=(1, 2), drums=((None, 5), ("light", 5)), bass=(("upright_bass", 4), (None, 6)),
        vocals=((None, 2), ("male", 4), ("female", 4)), loudness=(0.4, 0.6, 0.0), weird=0.02,
        solo=0.1, reverb=(0.1, 0.3), concepts=("folk",), bass_patterns=("root_fifth", "long")),
    "hiphop": dict(tempo=(80, 100), minor=0.6, prog="electronic", bars_per_chord=(1, 2),
        others=(("piano", 3), ("synth_keys", 2), ("strings", 1.5), ("epiano", 2),
                ("synth_pad", 1.5)),
        num_others=(1, 2), drums=(("hiphop", 1),),
        bass=(("sub_bass", 6), ("synth_bass", 3), ("electric_bass", 1)),
        vocals=((None, 1), ("rap_male", 7), ("rap_female", 2)), loudness=(0.0, 0.6, 0.4),
        weird=0.05, solo=0.0, reverb=(0.05, 0.2), concepts=("hip hop",),
        bass_patterns=("hiphop",)),
    "experimental": dict(tempo=(60, 180), minor=0.5, prog="random", bars_per_chord=(1, 2),
        others=tuple((k, 1) for k in ("synth_pad", "bells", "piano", "synth_pluck", "cello",
                                      "clarinet", "organ", "marimba", "electronic_lead",
                                      "distorted_guitar", "vibraphone", "synth_strings")),
        num_others=(1, 3), drums=(("random", 5), (None, 5)),
        bass=((None, 5), ("synth_bass", 3), ("sub_bass", 2)),
        vocals=((None, 6), ("male", 2), ("female", 2)), loudness=(0.4, 0.4, 0.2), weird=0.8,
        solo=0.0, reverb=(0.0, 0.5), concepts=(), bass_patterns=("long", "offbeat")),
    "world": dict(tempo=(90, 130), minor=0.4, prog="country", bars_per_chord=(1, 1),
        scale="pentatonic",
        others=(("acoustic_guitar", 3), ("pan_flute", 2), ("marimba", 2), ("brass", 1),
                ("harp", 1), ("clarinet", 1)),
        num_others=(2, 3), drums=(("latin", 5), ("light", 4), (None, 1)),
        bass=(("upright_bass", 5), ("electric_bass", 3), (None, 2)),
        vocals=((None, 3), ("male", 3.5), ("female", 3.5)), loudness=(0.1, 0.8, 0.1),
        weird=0.02, solo=0.0, reverb=(0.1, 0.3), concepts=(), bass_patterns=("root_fifth",)),
}  # fmt: skip
STYLES = tuple(STYLE_TABLE)

ROLES = {  # kind -> roles it can play in the "other" stem
    "piano": ("comp", "arp"), "epiano": ("comp",), "synth_keys": ("stab", "comp"),
    "strings": ("pad",), "synth_strings": ("pad",), "organ": ("pad", "comp"),
    "pipe_organ": ("pad",), "synth_pad": ("pad", "stab"), "acoustic_guitar": ("strum", "arp"),
    "electric_guitar": ("strum", "arp", "lead"), "distorted_guitar": ("power",),
    "harp": ("arp",), "harpsichord": ("arp",), "marimba": ("arp",), "bells": ("arp",),
    "vibraphone": ("arp", "comp"), "synth_pluck": ("arp",), "tanpura": ("drone",),
}  # fmt: skip
# everything else (violin, cello, flute, brass, reeds, leads, sitar) plays melodies: "lead"

_VOICES = {  # vocals type -> voice kinds, vibrato depth scale, concepts
    "male": (("male_voice",), 1.0, ("vocals", "male")),
    "female": (("female_voice",), 1.0, ("vocals", "female")),
    "opera_male": (("male_voice",), 2.2, ("vocals", "male", "opera")),
    "opera_female": (("female_voice",), 2.2, ("vocals", "female", "opera")),
    "choir": (("female_voice", "female_voice", "male_voice", "male_voice"), 0.7,
              ("vocals", "choir")),
    "rap_male": (("male_voice",), 0.0, ("vocals", "male")),
    "rap_female": (("female_voice",), 0.0, ("vocals", "female")),
}  # fmt: skip

_KIND_CONCEPTS = {kind: spec.tags for kind, spec in KINDS.items()}
_KIND_CONCEPTS["tanpura"] = ()
_CONSONANT_HZ = (2000.0, 3000.0, 4000.0, 5000.0)  # high-pass of "s", "t", "k" noise bursts
FAST_BPM = 135.0  # tempo at or above which a clip is "fast"
SLOW_BPM = 85.0  # at or below which it is "slow"


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


@dataclass
class ClipAudio:
    """One rendered clip: int16 stems (silent ones all zero), their sum, and its concepts."""

    stems: dict[str, np.ndarray]
    mix: np.ndarray
    active: dict[str, list[bool]]  # stem -> per 4-s block
    concepts: set[str]


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
    kinds, vib_scale, _ = _VOICES[vocal_type]
    voices = []
    for kind in kinds:
        inst = make_instrument(kind, rng, knobs.timbre_spread)
        params = {**inst.params, "vib_depth": inst.params["vib_depth"] * vib_scale}
        voices.append(Instrument(kind, inst.model, params, inst.low, inst.high))
    return voices


# -- note generation --------------------------------------------------------------------------

Note = tuple[float, float, int, float, str | None]  # start s, hold s, MIDI, velocity, vowel


@dataclass
class Grid:
    """Time grid of one clip: bar starts (s, within the rendered buffer) and chords."""

    beat_s: float
    bar_starts: list[float]
    chords: list[int]  # scale degree of the chord of each bar


def _chord_pcs(plan: SongPlan, degree: int) -> list[int]:
    sc = plan.scale
    return [(plan.key + sc[(degree + k) % len(sc)]) % 12 for k in (0, 2, 4)]


def _voicing(inst: Instrument, pcs: list[int], center: int, size: int = 3) -> list[int]:
    """Chord notes near ``center`` within the instrument's range."""
    notes = []
    for i in range(size):
        pc = pcs[i % len(pcs)]
        midi = center - ((center - pc) % 12) + 12 * (i // len(pcs))
        notes.append(inst.clamp(midi))
    return sorted(set(notes))


def _scale_notes(plan: SongPlan, low: int, high: int) -> list[int]:
    pcs = {(plan.key + d) % 12 for d in plan.melody_scale}
    return [m for m in range(low, high + 1) if m % 12 in pcs]


def _melody(
    plan: SongPlan, grid: Grid, inst: Instrument, rng, durations, rest_beats, low=None,
    high=None,
) -> list[Note]:  # fmt: skip
    """A random-walk melody on the scale, chord tones on strong beats, phrases of 2 bars."""
    low = low if low is not None else max(inst.low, 48)
    high = high if high is not None else min(inst.high, low + 19)
    pitches = _scale_notes(plan, low, high) or [inst.clamp(60 + plan.key)]
    idx = len(pitches) // 2
    notes: list[Note] = []
    beat = grid.beat_s
    for phrase_start in range(0, len(grid.bar_starts), 2):
        t = grid.bar_starts[phrase_start]
        end = t + 8 * beat - rest_beats * beat
        while t < end - 0.25 * beat:
            dur = float(rng.choice(durations)) * beat
            bar = min(int((t - grid.bar_starts[0]) / (4 * beat)), len(grid.chords) - 1)
            idx = int(np.clip(idx + rng.choice([-2, -1, -1, 0, 1, 1, 2, 3, -3]), 0,
                              len(pitches) - 1))  # fmt: skip
            if rng.random() < 0.5:  # lean on chord tones
                chord = _chord_pcs(plan, grid.chords[bar])
                near = [i for i, m in enumerate(pitches) if m % 12 in chord]
                if near:
                    idx = min(near, key=lambda i: abs(i - idx))
            dur = min(dur, end - t)
            vowel = "aeiou"[int(rng.integers(5))]
            notes.append((t, 0.92 * dur, pitches[idx], rng.uniform(85, 120), vowel))
            t += dur
    return notes


def _part_notes(part: Part, plan: SongPlan, grid: Grid, rng) -> list[Note]:
    inst, role, beat = part.instrument, part.role, grid.beat_s
    notes: list[Note] = []
    if role in ("lead", "solo"):
        notes += _melody(plan, grid, inst, rng, (0.5, 1, 1, 1.5, 2), 1.0 if role == "lead" else 0.5)
    if role in ("lead",):
        return notes
    for start, degree in zip(grid.bar_starts, grid.chords, strict=True):
        pcs = _chord_pcs(plan, degree)
        vel = rng.uniform(75, 105)
        if role == "pad":
            chord = _voicing(inst, pcs, 60 + rng.integers(-3, 4), 3)
            notes += [(start, 4 * beat * 0.98, m, vel, None) for m in chord]
        elif role == "comp":
            hits = ((0, 2), (2, 2)) if rng.random() < 0.5 else ((0, 1), (1, 1), (2, 1), (3, 1))
            chord = _voicing(inst, pcs, 60, 3)
            notes += [
                (start + b * beat, d * beat * 0.9, m, vel, None) for b, d in hits for m in chord
            ]
        elif role == "stab":
            chord = _voicing(inst, pcs, 62, 3)
            notes += [(start + (b + 0.5) * beat, 0.3 * beat, m, vel, None) for b in range(4)
                      for m in chord]  # fmt: skip
        elif role == "strum":
            chord = _voicing(inst, pcs, 52, 5)
            for b, up in _STRUMS:
                gain = 0.8 if up else 1.0
                for k, m in enumerate(chord[::-1] if up else chord):  # strings one after another
                    notes.append((start + b * beat + 0.012 * k, 0.5 * beat, m, vel * gain, None))
        elif role == "power":
            root = inst.clamp(40 + (pcs[0] - 40) % 12)
            step = 0.25 if plan.tempo < 150 else 0.5
            for k in range(int(4 / step)):
                for m in (root, root + 7, root + 12):
                    notes.append((start + k * step * beat, 0.7 * step * beat, m, vel, None))
        elif role in ("arp", "solo"):
            chord = _voicing(inst, pcs, 55 if role == "solo" else 60, 4)
            step = 0.5 if plan.tempo > 100 or role == "solo" else 0.25
            seq = chord + chord[-2:0:-1]
            for k in range(int(4 / step)):
                notes.append((start + k * step * beat, 1.5 * step * beat, seq[k % len(seq)],
                              vel * (0.7 if role == "solo" else 1), None))  # fmt: skip
        elif role == "drone":
            tonic = inst.clamp(48 + plan.key)
            for k, m in enumerate((tonic + 7, tonic + 12, tonic + 12, tonic)):
                notes.append((start + k * beat, 1.5 * beat, inst.clamp(m), vel * 0.8, None))
    return notes


_STRUMS = ((0, False), (1, False), (1.5, True), (2.5, True), (3, False), (3.5, True))  # beat, up
_BASS_PATTERNS = {  # (beat, duration in beats, interval above the root)
    "long": ((0, 3.9, 0),),
    "quarters": ((0, 0.9, 0), (1, 0.9, 0), (2, 0.9, 0), (3, 0.9, 0)),
    "eighths": tuple((k / 2, 0.45, 0) for k in range(8)),
    "sixteenths": tuple((k / 4, 0.22, 0) for k in range(16)),
    "root_fifth": ((0, 0.9, 0), (1, 0.9, 7), (2, 0.9, 0), (3, 0.9, 7)),
    "offbeat": ((0.5, 0.4, 0), (1.5, 0.4, 0), (2.5, 0.4, 0), (3.5, 0.4, 12)),
    "hiphop": ((0, 1.4, 0), (1.75, 0.5, 0), (2.5, 1.4, 0)),
}


def _bass_notes(part: Part, plan: SongPlan, grid: Grid, rng) -> list[Note]:
    inst, beat = part.instrument, grid.beat_s
    notes: list[Note] = []
    for start, degree in zip(grid.bar_starts, grid.chords, strict=True):
        root = inst.clamp(36 + (plan.key + plan.scale[degree % len(plan.scale)]) % 12)
        for b, d, interval in _BASS_PATTERNS[plan.bass_pattern]:
            notes.append((start + b * beat, d * beat, root + interval, rng.uniform(90, 115), None))
    return notes


def _vocal_notes(plan: SongPlan, grid: Grid, voice: Instrument, rng) -> list[Note]:
    if plan.vocals and plan.vocals.startswith("rap"):
        center = voice.clamp(voice.low + 7)
        notes = []
        beat = grid.beat_s
        for phrase in range(0, len(grid.bar_starts), 2):
            t0 = grid.bar_starts[phrase]
            for k in range(28):  # seven beats of sixteenth-note syllables, one beat to breathe
                if rng.random() < 0.2:
                    continue
                pitch = center + int(rng.choice([-2, 0, 0, 0, 1, 3]))
                notes.append((t0 + k * beat / 4, 0.8 * beat / 4, pitch, rng.uniform(80, 120),
                              "aeiou"[int(rng.integers(5))]))  # fmt: skip
        return notes
    opera = plan.vocals and plan.vocals.startswith("opera")
    durations = (
        (1, 2, 2, 3) if opera or plan.style in ("ambient", "new_age") else (0.5, 1, 1, 1.5, 2)
    )
    return _melody(plan, grid, voice, rng, durations, 0.5, low=voice.low + 2, high=voice.high - 2)


def _choir_part(plan: SongPlan, lead: list[Note], voice: Instrument, harmony: bool) -> list[Note]:
    """Another choir voice: the lead line (or a scale note a third to a sixth below it) moved
    into this voice's range."""
    part = []
    for start, hold, midi, vel, vowel in lead:
        if harmony:
            below = _scale_notes(plan, midi - 9, midi - 3)
            midi = below[-1] if below else midi - 5
        part.append((start, hold, voice.clamp(midi), vel * 0.9, vowel))
    return part


# -- rendering --------------------------------------------------------------------------------


def _play(
    inst: Instrument, notes: list[Note], n: int, rng, humanize_s: float, consonants: bool = False
) -> np.ndarray:  # fmt: skip
    """Render notes into ``n`` samples; identical notes are synthesised once (like a sampler)."""
    out = np.zeros(n)
    cache: dict[tuple, np.ndarray] = {}
    for start, hold, midi, vel, vowel in notes:
        if humanize_s > 0:
            start += rng.normal(0.0, humanize_s)
        i = int(round(start * SR))
        if i >= n or hold <= 0:
            continue
        key = (midi, round(hold, 2), vowel)
        if key not in cache:
            cache[key] = render_note(inst, midi, round(hold, 2), 127, rng, vowel)
        wave = cache[key] * (vel / 127) ** 1.3
        if consonants and rng.random() < 0.5:  # "s", "t", "k": a short noise burst
            m = int(rng.uniform(0.01, 0.04) * SR)
            burst = dsp.highpass(rng.standard_normal(m), float(rng.choice(_CONSONANT_HZ)))
            wave = np.concatenate([0.25 * burst * np.linspace(1, 0.3, m), wave])
        j0 = max(i, 0)
        j1 = min(n, i + len(wave))
        if j1 > j0:
            out[j0:j1] += wave[j0 - i : j1 - i]
    return out


def _weird_fx(x: np.ndarray, rng) -> np.ndarray:
    """Odd sounds for the "weird" tag: ring modulation, glitch bursts, bit crushing."""
    n = len(x)
    level = np.abs(x).mean() + 1e-3
    fx = rng.integers(3)
    if fx == 0:
        return x * np.sin(2 * np.pi * rng.uniform(30, 300) * dsp.seconds(n))
    if fx == 1:
        y = x.copy()
        for _ in range(int(rng.integers(4, 10))):
            m = int(rng.uniform(0.05, 0.25) * SR)
            i = int(rng.integers(0, max(n - m, 1)))
            y[i : i + m] += 6 * level * rng.standard_normal(min(m, n - i))
        return y
    steps = rng.uniform(3, 8) / (np.abs(x).max() + 1e-9)
    return np.round(x * steps) / steps


def _gates(plan: SongPlan, content: dict[str, list[bool]], rng, knobs) -> dict:
    """Which 4-s blocks each stem plays in: where it has content, minus random entries/exits."""
    active = {s: list(content[s]) for s in STEMS}
    num_blocks = len(active["other"])
    if plan.solo:
        return active
    for s in STEMS:
        if any(active[s]) and num_blocks > 1 and rng.random() < knobs.stem_gap_rate:
            b = int(rng.integers(1, num_blocks))
            if rng.random() < 0.5:
                active[s][:b] = [False] * b  # enters at block b
            else:
                active[s][b:] = [False] * (num_blocks - b)  # leaves at block b
    for b in range(num_blocks):  # never a silent mixture: bring a stem back
        if not any(active[s][b] for s in STEMS):
            for s in ("other", "vocals", "bass", "drums"):
                if content[s][b]:
                    active[s][b] = True
                    break
    return active


def _gate_mask(blocks: list[bool], n: int) -> np.ndarray:
    block = int(BLOCK_S * SR)
    mask = np.zeros(n)
    fade_in, fade_out = int(0.005 * SR), int(0.02 * SR)
    for b, on in enumerate(blocks):
        if not on:
            continue
        i0, i1 = b * block, min((b + 1) * block, n)
        mask[i0:i1] = 1.0
        if b > 0 and not blocks[b - 1]:
            mask[i0 : i0 + fade_in] = np.linspace(0, 1, fade_in)
        if b + 1 < len(blocks) and not blocks[b + 1]:
            mask[i1 - fade_out : i1] = np.linspace(1, 0, fade_out)
    return mask


def block_levels(x: np.ndarray, num_blocks: int) -> np.ndarray:
    """Mean |amplitude| of each 4-s block of ``x`` (the silence criterion)."""
    block = int(BLOCK_S * SR)
    return np.array([np.abs(x[b * block : (b + 1) * block]).mean() for b in range(num_blocks)])


def render_clip(plan: SongPlan, rng: np.random.Generator, duration_s: float, knobs: Difficulty):
    """Render one clip of ``plan``: four int16 stems, their exact sum, and the true concepts."""
    n = int(round(duration_s * SR))
    pre = int(PRE_ROLL_S * SR)
    total = n + pre
    beat = 60.0 / plan.tempo
    bar_s = 4 * beat
    offset = rng.uniform(0, bar_s)
    num_bars = int(np.ceil((total / SR + offset) / bar_s)) + 1
    bar_starts = [k * bar_s - offset for k in range(num_bars)]
    first = int(rng.integers(len(plan.progression)))
    chords = [plan.progression[(first + k // plan.bars_per_chord) % len(plan.progression)]
              for k in range(num_bars)]  # fmt: skip
    grid = Grid(beat, bar_starts, chords)
    humanize = knobs.humanize_ms / 1000

    raw = {s: np.zeros(total) for s in STEMS}
    for part in plan.others:
        notes = _part_notes(part, plan, grid, rng)
        raw["other"] += _play(
            part.instrument, notes, total, rng, 0 if part.electronic else humanize
        )
    if plan.bass:
        notes = _bass_notes(plan.bass, plan, grid, rng)
        raw["bass"] = _play(
            plan.bass.instrument, notes, total, rng, 0 if plan.bass.electronic else humanize
        )
    if plan.kit:
        swing = rng.uniform(0.0, 0.3) if plan.kit.name == "hiphop" else 0.0
        raw["drums"] = render_drums(plan.kit, total, bar_starts, bar_s, swing,
                                    0 if plan.kit.electronic else humanize / 2, rng)  # fmt: skip
    if plan.voices:
        lead = _vocal_notes(plan, grid, plan.voices[0], rng)
        for k, voice in enumerate(plan.voices):  # choir parts: same rhythm and vowels
            notes = lead if k == 0 else _choir_part(plan, lead, voice, harmony=k % 2 == 1)
            raw["vocals"] += _play(voice, notes, total, rng, humanize, consonants=k == 0)
    if plan.weird:
        raw["other"] = _weird_fx(raw["other"], rng)
    for s in ("other", "vocals"):
        if np.any(raw[s]):
            raw[s] = dsp.reverb(raw[s], rng, plan.reverb_wet, rng.uniform(0.6, 1.8))
    if plan.loudness == "loud":  # dense, compressed, slightly saturated
        for s in ("drums", "other"):
            raw[s] = dsp.saturate(raw[s] / (np.abs(raw[s]).max() + 1e-9), rng.uniform(1.5, 3.0))
    stems = {s: raw[s][pre:] for s in STEMS}
    if np.any(stems["other"]) and plan.noise > 0:
        noise = dsp.one_pole_lowpass(rng.standard_normal(n), rng.uniform(0.0, 0.9))
        stems["other"] += noise / np.abs(noise).mean() * np.abs(stems["other"]).mean() * plan.noise

    num_blocks = int(np.ceil(n / (BLOCK_S * SR)))
    content = {}
    for s in STEMS:  # a block has content when it is not near-silent relative to the stem
        levels = block_levels(stems[s], num_blocks)
        content[s] = list(levels > 0.1 * levels.max()) if levels.max() > 0 else [False] * num_blocks
    active = _gates(plan, content, rng, knobs)
    for s in STEMS:
        stems[s] = stems[s] * _gate_mask(active[s], n)
    ints = _balance(stems, active, plan, num_blocks)
    mix = np.sum([ints[s].astype(np.int32) for s in STEMS], axis=0)
    return ClipAudio(
        stems=ints, mix=mix.astype(np.int16), active=active,
        concepts=clip_concepts(plan, active),
    )  # fmt: skip


def _balance(stems: dict, active: dict, plan: SongPlan, num_blocks: int) -> dict:
    """Scale stems to their mix levels and the mixture to its peak, keep every active block
    above MIN_ACTIVE_LEVEL, and quantise to int16 (so the mixture is the exact sum)."""
    # levels scale linearly with gains: measure the blocks once, then work on gains only
    unit = {s: block_levels(stems[s], num_blocks) for s in STEMS}
    gains = {}
    for s in STEMS:
        on = np.array(active[s])
        level = unit[s][on].mean() if on.any() else 0.0
        gains[s] = plan.levels[s] / level if level > 0 else 0.0
    for _ in range(6):
        peak = np.abs(sum(gains[s] * stems[s] for s in STEMS)).max()
        gains = {s: g * plan.peak / max(peak, 1e-12) for s, g in gains.items()}
        low = {}
        for s in STEMS:
            levels = unit[s][np.array(active[s])] * gains[s]
            if len(levels) and 0 < levels.min() < 1.2 * MIN_ACTIVE_LEVEL:
                low[s] = 1.3 * MIN_ACTIVE_LEVEL / levels.min()
        if not low:
            break
        gains.update({s: gains[s] * f for s, f in low.items()})
    mix = sum(gains[s] * stems[s] for s in STEMS)
    limit = 0.95 / max(np.abs(mix).max(), 0.95)  # never clip, even after boosts
    return {s: np.round(stems[s] * gains[s] * limit * 32767).astype(np.int16) for s in STEMS}


def clip_concepts(plan: SongPlan, active: dict[str, list[bool]]) -> set[str]:
    """The tag concepts that are true of a clip (what is heard, not what was planned)."""
    heard = {s: any(active[s]) for s in STEMS}
    concepts = set(STYLE_TABLE[plan.style]["concepts"])
    if heard["other"]:
        for part in plan.others:
            concepts.update(_KIND_CONCEPTS[part.instrument.kind])
    if heard["bass"] and plan.bass:
        concepts.update(_KIND_CONCEPTS[plan.bass.instrument.kind])
    if heard["drums"] and plan.kit:
        if plan.kit.name != "tabla":
            concepts.add("drums")
        if plan.kit.electronic:
            concepts.add("beat")
    if not heard["drums"]:
        concepts.add("no beat")
    if heard["vocals"] and plan.vocals:
        concepts.update(_VOICES[plan.vocals][2])
    else:
        concepts.add("no vocals")
    if plan.tempo >= FAST_BPM:
        concepts.add("fast")
    elif plan.tempo <= SLOW_BPM:
        concepts.add("slow")
    if plan.loudness != "normal":
        concepts.add(plan.loudness)
    if plan.solo:
        concepts.add("solo")
    if plan.weird:
        concepts.add("weird")
    if plan.style == "metal":
        concepts.update(("heavy", "hard rock"))
    if plan.style in ("techno", "dance"):
        concepts.add("trance")
    if plan.style == "indian":
        concepts.add("eastern")
    if plan.style == "classical" and sum(p.instrument.kind == "strings" for p in plan.others):
        concepts.add("orchestra")
    return concepts
