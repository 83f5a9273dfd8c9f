"""Note generation: the notes each part of a song plays in one clip (chords, arpeggios,
strums, melodies, bass patterns, sung lines), on the clip's bar grid.

A note is ``(start s, hold s, MIDI pitch, velocity, vowel or None)``; the parts come from the
song's plan (:mod:`benchmark.data.synth.songs`), the audio from :mod:`benchmark.data.synth.music`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from benchmark.data.synth.instruments import Instrument
from benchmark.data.synth.songs import Part, SongPlan

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


def part_notes(part: Part, plan: SongPlan, grid: Grid, rng) -> list[Note]:
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


def bass_notes(part: Part, plan: SongPlan, grid: Grid, rng) -> list[Note]:
    inst, beat = part.instrument, grid.beat_s
    notes: list[Note] = []
    for start, degree in zip(grid.bar_starts, grid.chords, strict=True):
        root = inst.clamp(36 + (plan.key + plan.scale[degree % len(plan.scale)]) % 12)
        for b, d, interval in _BASS_PATTERNS[plan.bass_pattern]:
            notes.append((start + b * beat, d * beat, root + interval, rng.uniform(90, 115), None))
    return notes


def vocal_notes(plan: SongPlan, grid: Grid, voice: Instrument, rng) -> list[Note]:
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


def choir_part(plan: SongPlan, lead: list[Note], voice: Instrument, harmony: bool) -> list[Note]:
    """Another choir voice: the lead line (or a scale note a third to a sixth below it) moved
    into this voice's range."""
    part = []
    for start, hold, midi, vel, vowel in lead:
        if harmony:
            below = _scale_notes(plan, midi - 9, midi - 3)
            midi = below[-1] if below else midi - 5
        part.append((start, hold, voice.clamp(midi), vel * 0.9, vowel))
    return part
