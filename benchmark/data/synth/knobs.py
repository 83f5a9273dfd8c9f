"""Constants and difficulty knobs of the synthetic corpus, in one place.

The knobs set how hard the generated tasks are (tag noise, timbre variety, mix levels). They
are recorded in the corpus manifest; changing a default changes the generated audio, so bump
``GENERATOR_VERSION`` with it (other stages put the version in their cache keys).
"""

from __future__ import annotations

from dataclasses import dataclass

GENERATOR_VERSION = "2"  # 2: FMA artists of 1-5 tracks (test clusters); bump whenever the generated output changes for a given seed

SAMPLE_RATE = 16000  # Hz, every file of the corpus (REFERENCE.md: the front-end rate)
BLOCK_S = 4.0  # seconds; stems enter and leave on this grid, the length of a storage excerpt
SILENCE_THRESHOLD = 0.01  # mean |amplitude| at or below which a 4-s source excerpt is silent
MIN_ACTIVE_LEVEL = 0.03  # mean |amplitude| floor of an active stem in any 4-s block (3x above)
NSYNTH_NOTE_S = 4.0  # seconds per NSynth note (3 s held + 1 s release, as NSynth)
NSYNTH_HOLD_S = 3.0


@dataclass(frozen=True)
class Difficulty:
    """Knobs that make the synthetic tasks harder or easier (defaults: calibrated guesses)."""

    tag_drop_rate: float = 0.2  # each true MTAT tag is dropped with this probability (weak tags)
    synonym_rate: float = 0.4  # each extra synonym of a true concept is also tagged ("man", ...)
    untagged_rate: float = 0.1  # clips whose top-50 tags are all dropped (MTAT vs MTAT* differ)
    timbre_spread: float = 1.0  # width of per-instrument timbre parameter ranges (0 = fixed)
    level_spread_db: float = 8.0  # random spread of per-stem mix levels, dB
    noise_max: float = 0.15  # background noise level, at most this fraction of the mix level
    stem_gap_rate: float = 0.3  # probability that a stem enters or leaves within a clip
    humanize_ms: float = 12.0  # timing jitter of played (non-electronic) notes, ms
    fma_style_mix: float = 1.0  # weight of a genre's secondary styles (0 = one style per genre)
