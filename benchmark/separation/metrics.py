"""Separation quality: SI-SDR of separated sources against the true stems."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmark.separation.base import (
    MIX_NAME,
    SOURCES,
    SeparationError,
    Separator,
    load_stem,
    load_stems,
)

# Mean power at or below which a reference stem counts as silent for SI-SDR (ours): -100 dBFS,
# i.e. numerically silent. SI-SDR is undefined for an all-zero reference, so such clips are
# skipped and counted rather than scored.
SILENT_REFERENCE_POWER = 1e-10


def si_sdr(reference: np.ndarray, estimate: np.ndarray, eps: float = 1e-8) -> float:
    """Scale-invariant signal-to-distortion ratio in dB (Le Roux et al., ICASSP 2019).

    ``SI-SDR = 10 log10(|a r|^2 / |e - a r|^2)`` with ``a = <e, r> / |r|^2``: the estimate is
    projected on the reference, so any rescaling of the estimate leaves the score unchanged.
    No mean is removed (the paper's definition; audio stems carry no DC worth mentioning).
    ``eps`` is added to both energies, so a perfect estimate gives a large finite value. An
    all-zero estimate recovers nothing of the reference and gives ``-inf`` (the eps
    convention alone would score it 0 dB, better than most real estimates).

    reference, estimate: same shape (any; flattened), computed in float64.
    Raises ``ValueError`` for mismatched shapes or an all-zero reference (undefined).
    """
    ref = np.asarray(reference, dtype=np.float64).ravel()
    est = np.asarray(estimate, dtype=np.float64).ravel()
    if np.shape(reference) != np.shape(estimate):
        raise ValueError(
            f"si_sdr: reference {np.shape(reference)} and estimate {np.shape(estimate)} differ"
        )
    ref_energy = float(ref @ ref)
    if ref_energy == 0.0:
        raise ValueError("si_sdr: undefined for an all-zero reference")
    if not np.any(est):
        return float("-inf")
    scale = float(est @ ref) / ref_energy
    target = scale * ref
    noise = est - target
    return 10.0 * math.log10((float(target @ target) + eps) / (float(noise @ noise) + eps))


@dataclass
class SeparationScores:
    """Per-clip SI-SDR of one separator on multitrack clips.

    ``scores[source]`` lists the SI-SDR (dB) of every clip whose reference is audible
    (``-inf`` where the separator returned all zeros); ``skipped[source]`` counts clips left
    out because the reference stem is silent.
    """

    separator: str
    scores: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in SOURCES})
    skipped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SOURCES, 0))

    def means(self) -> dict[str, float]:
        """Mean SI-SDR per source (dB); NaN without an audible reference, -inf after a
        silent estimate."""
        return {s: float(np.mean(v)) if v else float("nan") for s, v in self.scores.items()}

    def to_dict(self) -> dict:
        """JSON-ready summary; a non-finite mean is written as null (see the counts)."""
        return {
            "separator": self.separator,
            "mean_si_sdr_db": {s: m if np.isfinite(m) else None for s, m in self.means().items()},
            "num_scored": {s: len(v) for s, v in self.scores.items()},
            "num_skipped_silent": dict(self.skipped),
            "num_silent_estimates": {
                s: sum(1 for x in v if x == float("-inf")) for s, v in self.scores.items()
            },
        }


def score_separator(
    separator: Separator, stems_root: Path, clip_ids: list[str], batch_size: int = 4
) -> SeparationScores:
    """Separate each clip's ``mix.flac`` and score every source against the true stem.

    Clips go to ``separator.separate_batch`` ``batch_size`` at a time. References with mean
    power ``<= SILENT_REFERENCE_POWER`` are skipped and counted.
    Raises :class:`SeparationError` for missing or unreadable stems.
    """
    result = SeparationScores(separator=separator.name)
    for start in range(0, len(clip_ids), batch_size):
        chunk = list(clip_ids[start : start + batch_size])
        mixes = [load_stem(stems_root, c, MIX_NAME) for c in chunk]
        estimates = separator.separate_batch(mixes, chunk)
        for clip_id, estimate in zip(chunk, estimates, strict=True):
            references = load_stems(stems_root, clip_id)
            for source in SOURCES:
                ref = references[source]
                if float(np.mean(np.square(ref, dtype=np.float64))) <= SILENT_REFERENCE_POWER:
                    result.skipped[source] += 1
                    continue
                est = estimate[source]
                if len(est) != len(ref):
                    raise SeparationError(
                        f"clip {clip_id}: {source} stem has {len(ref)} samples, the "
                        f"separated {source} from {MIX_NAME}.flac has {len(est)}"
                    )
                result.scores[source].append(si_sdr(ref, est))
    return result


def evaluate_separator(
    separator: Separator, stems_root: Path, clip_ids: list[str], batch_size: int = 4
) -> dict[str, float]:
    """Mean SI-SDR (dB) per source of ``separator`` on multitrack clips; see score_separator."""
    return score_separator(separator, stems_root, clip_ids, batch_size).means()
