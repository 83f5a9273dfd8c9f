"""Rendering: one clip of a planned song into the four stems and their honest tag concepts.

:func:`render_clip` plays one clip of a song (:func:`benchmark.data.synth.songs.plan_song`) into
the four stems ``bass, drums, vocals, other`` (mixture = their exact sum) and reports the
*concepts* that are true of the clip (instruments heard, vocals or not, tempo, loudness, style),
from which MTAT tags are drawn. Stems enter and leave on the 4-s block grid, so a silent block is
exactly zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from benchmark.data.synth import dsp
from benchmark.data.synth.drums import render_drums
from benchmark.data.synth.dsp import SR
from benchmark.data.synth.instruments import KINDS, Instrument, render_note
from benchmark.data.synth.knobs import BLOCK_S, MIN_ACTIVE_LEVEL, Difficulty
from benchmark.data.synth.notes import (
    Grid,
    Note,
    bass_notes,
    choir_part,
    part_notes,
    vocal_notes,
)
from benchmark.data.synth.songs import STEMS, SongPlan
from benchmark.data.synth.styles import STYLE_TABLE, VOICES

PRE_ROLL_S = 1.0  # rendered before the clip so it starts mid-song (ringing notes, reverb)

_KIND_CONCEPTS = {**{kind: spec.tags for kind, spec in KINDS.items()}, "tanpura": ()}
_CONSONANT_HZ = (2000.0, 3000.0, 4000.0, 5000.0)  # high-pass of "s", "t", "k" noise bursts
FAST_BPM = 135.0  # tempo at or above which a clip is "fast"
SLOW_BPM = 85.0  # at or below which it is "slow"


@dataclass
class ClipAudio:
    """One rendered clip: int16 stems (silent ones all zero), their sum, and its concepts."""

    stems: dict[str, np.ndarray]
    mix: np.ndarray
    active: dict[str, list[bool]]  # stem -> per 4-s block
    concepts: set[str]


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
        notes = part_notes(part, plan, grid, rng)
        raw["other"] += _play(
            part.instrument, notes, total, rng, 0 if part.electronic else humanize
        )
    if plan.bass:
        notes = bass_notes(plan.bass, plan, grid, rng)
        raw["bass"] = _play(
            plan.bass.instrument, notes, total, rng, 0 if plan.bass.electronic else humanize
        )
    if plan.kit:
        swing = rng.uniform(0.0, 0.3) if plan.kit.name == "hiphop" else 0.0
        raw["drums"] = render_drums(plan.kit, total, bar_starts, bar_s, swing,
                                    0 if plan.kit.electronic else humanize / 2, rng)  # fmt: skip
    if plan.voices:
        lead = vocal_notes(plan, grid, plan.voices[0], rng)
        for k, voice in enumerate(plan.voices):  # choir parts: same rhythm and vowels
            notes = lead if k == 0 else choir_part(plan, lead, voice, harmony=k % 2 == 1)
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
        concepts.update(VOICES[plan.vocals][2])
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
