"""Synthetic music corpus: procedural MTAT-, NSynth- and FMA-like datasets with stems.

``generate(out_dir, size, seed)`` writes all three in the real datasets' formats, so the
loaders of :mod:`benchmark.data.datasets` read them unchanged. Difficulty knobs live in
:class:`Difficulty`; ``GENERATOR_VERSION`` changes whenever the output does (use it in cache keys).
"""

from benchmark.data.synth.generate import SIZES, generate, resolve_size
from benchmark.data.synth.knobs import GENERATOR_VERSION, Difficulty

__all__ = ["GENERATOR_VERSION", "SIZES", "Difficulty", "generate", "resolve_size"]
