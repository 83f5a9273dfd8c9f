"""NSynth-like corpus: 4-s single notes of synthetic instruments in 11 families.

Writes ``nsynth/nsynth-{train,valid,test}/examples.json`` (all 13 NSynth fields) and
``audio/<note_str>.wav`` (16-bit PCM, 16 kHz, mono, 64000 samples). Instruments do not overlap
between splits and ``synth_lead`` has no test instrument, as in NSynth.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmark.data.datasets import NSYNTH_FAMILIES, SPLITS
from benchmark.data.synth import dsp
from benchmark.data.synth.files import write_audio
from benchmark.data.synth.instruments import KINDS, make_instrument, render_note
from benchmark.data.synth.knobs import NSYNTH_HOLD_S, NSYNTH_NOTE_S, SAMPLE_RATE, Difficulty

CORPUS_KEY = 2
SOURCES = ("acoustic", "electronic", "synthetic")
QUALITIES = (
    "bright", "dark", "distortion", "fast_decay", "long_release", "multiphonic",
    "nonlinear_env", "percussive", "reverb", "tempo-synced",
)  # fmt: skip
VELOCITIES = (25, 50, 75, 100, 127)
FAMILY_PITCH = {  # MIDI range of each family (within NSynth's 21-108)
    "bass": (24, 60), "brass": (40, 84), "flute": (55, 96), "guitar": (40, 88),
    "keyboard": (21, 108), "mallet": (45, 100), "organ": (36, 96), "reed": (44, 91),
    "string": (28, 100), "synth_lead": (45, 96), "vocal": (45, 81),
}  # fmt: skip
FAMILY_KINDS = {family: tuple(k for k, spec in KINDS.items() if spec.family == family)
                for family in NSYNTH_FAMILIES}  # fmt: skip
_PERCUSSIVE_MODELS = {"pluck", "piano", "epiano", "mallet", "sub"}
NOTE_SAMPLES = int(NSYNTH_NOTE_S * SAMPLE_RATE)


@dataclass(frozen=True)
class InstrumentJob:
    """All notes of one instrument (built in the parent process, run in a worker)."""

    index: int  # global instrument number
    family: str
    kind: str
    number: int  # instrument number within (family, source), as in guitar_acoustic_010
    split: str
    notes: tuple[tuple[int, int, int], ...]  # (note id, pitch, velocity)
    seed: int
    knobs: Difficulty


def rng_for(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(CORPUS_KEY, *key)))


def instruments_per_family(num_notes: int) -> int:
    """3 (one per split) for small corpora, growing to 12 for large ones."""
    return int(np.clip(round(num_notes / 240), 3, 12))


def catalogue(num_notes: int, seed: int, knobs: Difficulty) -> list[InstrumentJob]:
    """Instruments (family, kind, split) and the pitch/velocity of each of their notes."""
    rng = rng_for(seed, 0)
    per_family = instruments_per_family(num_notes)
    plan = []  # (family, kind, split)
    for family in NSYNTH_FAMILIES:
        count = per_family - 1 if family == "synth_lead" else per_family
        splits = ["valid"] + ([] if family == "synth_lead" else ["test"])
        splits = splits + ["train"] * (count - len(splits))
        kinds = FAMILY_KINDS[family]
        order = rng.permutation(len(kinds))
        for i, split in enumerate(splits):
            plan.append((family, kinds[order[i % len(kinds)]], split))
    base, extra = divmod(num_notes, len(plan))
    numbers: dict[tuple[str, int], int] = {}
    jobs = []
    note_id = int(rng.integers(0, 1000))
    for index, (family, kind, split) in enumerate(plan):
        source = KINDS[kind].source
        number = numbers.get((family, source), 0)
        numbers[(family, source)] = number + 1
        lo, hi = FAMILY_PITCH[family]
        lo, hi = max(lo, KINDS[kind].low), min(hi, KINDS[kind].high)
        grid = [(p, v) for p in range(lo, hi + 1) for v in VELOCITIES]
        count = base + (1 if index < extra else 0)
        picks = rng.choice(len(grid), size=min(count, len(grid)), replace=False)
        notes = []
        for k in sorted(int(i) for i in picks):
            note_id += int(rng.integers(1, 50))
            notes.append((note_id, *grid[k]))
        jobs.append(InstrumentJob(index, family, kind, number, split, tuple(notes), seed, knobs))
    return jobs


def instrument_str(job: InstrumentJob) -> str:
    return f"{job.family}_{SOURCES[KINDS[job.kind].source]}_{job.number:03d}"


def render(job: InstrumentJob, root: Path) -> list[dict]:
    """Render and write every note of one instrument; return their examples.json entries."""
    inst = make_instrument(job.kind, rng_for(job.seed, 1, job.index), job.knobs.timbre_spread)
    traits = rng_for(job.seed, 2, job.index)
    reverb_wet = float(traits.uniform(0.2, 0.5)) if traits.random() < 0.3 else 0.0
    qualities = _qualities(inst.model, inst.params, reverb_wet)
    audio_dir = root / f"nsynth-{job.split}" / "audio"
    name = instrument_str(job)
    source = KINDS[job.kind].source
    entries = []
    for k, (note_id, pitch, velocity) in enumerate(job.notes):
        rng = rng_for(job.seed, 3, job.index, k)
        wave = render_note(inst, pitch, NSYNTH_HOLD_S, velocity, rng).astype(np.float64)
        wave = _fit(dsp.reverb(wave, rng, reverb_wet, 1.5))
        note_str = f"{name}-{pitch:03d}-{velocity:03d}"
        pcm = np.round(np.clip(wave, -1, 1) * 32767).astype(np.int16)
        write_audio(audio_dir / f"{note_str}.wav", pcm, "WAV", "PCM_16")
        entries.append({
            "note_str": note_str, "note": note_id, "instrument": job.index,
            "instrument_str": name, "instrument_family": NSYNTH_FAMILIES.index(job.family),
            "instrument_family_str": job.family, "instrument_source": source,
            "instrument_source_str": SOURCES[source], "pitch": pitch, "velocity": velocity,
            "sample_rate": SAMPLE_RATE, "qualities": [int(q in qualities) for q in QUALITIES],
            "qualities_str": [q for q in QUALITIES if q in qualities],
        })  # fmt: skip
    return entries


def _fit(wave: np.ndarray) -> np.ndarray:
    """Exactly 4 s: pad with zeros or cut with a 50-ms fade."""
    if len(wave) >= NOTE_SAMPLES:
        wave = wave[:NOTE_SAMPLES].copy()
        fade = int(0.05 * SAMPLE_RATE)
        wave[-fade:] *= np.linspace(1, 0, fade)
        return wave
    return np.pad(wave, (0, NOTE_SAMPLES - len(wave)))


def _qualities(model: str, p: dict, reverb_wet: float) -> set[str]:
    """NSynth note qualities that follow from the instrument's parameters."""
    q = set()
    tilt = p.get("tilt", p.get("tilt_bright", 1.2))
    if p.get("brightness", 0.5) > 0.8 or tilt < 0.9 or p.get("buzz", 0) > 0.4:
        q.add("bright")
    if p.get("brightness", 0.5) < 0.3 or tilt > 1.4 or p.get("body", 0) > 0.5:
        q.add("dark")
    if p.get("drive", 0) > 2 or p.get("buzz", 0) > 0.8:
        q.add("distortion")
    if p.get("decay_s", 9) < 1.0 or p.get("decay_tau", 9) < 0.5:
        q.add("fast_decay")
    if p["release_s"] >= 0.4:
        q.add("long_release")
    if p.get("ensemble", 1) > 1 or p.get("num_osc", 1) > 2 or p.get("octave", 0) > 0.3:
        q.add("multiphonic")
    if p.get("tremolo", 0) > 0.2:
        q.add("nonlinear_env")
    if model in _PERCUSSIVE_MODELS:
        q.add("percussive")
    if reverb_wet > 0:
        q.add("reverb")
    return q


def write_metadata(root: Path, entries_by_job: list[tuple[InstrumentJob, list[dict]]]) -> dict:
    """Write the three examples.json files; return notes per split."""
    by_split: dict[str, dict] = {s: {} for s in SPLITS}
    for job, entries in sorted(entries_by_job, key=lambda je: je[0].index):
        for e in entries:
            by_split[job.split][e["note_str"]] = e
    for split, examples in by_split.items():
        path = root / f"nsynth-{split}" / "examples.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.parent / "audio").mkdir(exist_ok=True)
        path.write_text(json.dumps(examples, indent=1))
    return {s: len(e) for s, e in by_split.items()}
