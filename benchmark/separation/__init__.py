"""Source separation for the multi-source association method (REFERENCE.md sections 3-4).

Every separator maps a mono, un-normalised 16-kHz mixture ``(n,)`` to the four
:data:`SOURCES`, each ``(n,)`` at 16 kHz:

- ``umx``: Open-Unmix (paper), pretrained (``umxhq``, ``umxl``) or a local model directory,
  e.g. one written by :func:`train_separator` (the offline stand-in for umxhq);
- ``oracle``: the true stems of a multitrack corpus (upper bound; synthetic corpus);
- ``random_mask``: random smooth soft masks on the mixture STFT (paper: COLA + random mask).

``build_separator(cfg)`` picks one by ``cfg.separator``; :func:`si_sdr` and
:func:`evaluate_separator` measure separation quality. Stage ``separate`` (per-source log-mel +
silence flags of the pre-training clips) is :mod:`benchmark.separation.sources`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from benchmark.config import SeparationConfig
from benchmark.separation.base import SAMPLE_RATE, SOURCES, SeparationError, Separator
from benchmark.separation.metrics import (
    SILENT_REFERENCE_POWER,
    SeparationScores,
    evaluate_separator,
    score_separator,
    si_sdr,
)
from benchmark.separation.oracle import OracleSeparator, build_oracle
from benchmark.separation.random_mask import (
    RandomMaskSeparator,
    build_random_mask,
    random_soft_masks,
)
from benchmark.separation.train_umx import train_separator
from benchmark.separation.umx import (
    PRETRAINED_MODELS,
    UMXSeparator,
    build_umx,
    load_local_umx,
    load_pretrained_umx,
    model_identity,
)

# name -> factory(cfg, *, stems_root, device); the key is the separator's `name`
SEPARATORS: dict[str, Callable[..., Separator]] = {
    "umx": build_umx,
    "oracle": build_oracle,
    "random_mask": build_random_mask,
}


def build_separator(
    cfg: SeparationConfig, *, stems_root: Path | None = None, device=None
) -> Separator:
    """The separator named by ``cfg.separator``, configured from ``cfg``.

    stems_root: the multitrack corpus root (required by ``oracle``); device: torch device
    for ``umx`` (default :func:`benchmark.io.pick_device`).
    Raises :class:`SeparationError` for an unknown name or a separator that cannot be built
    (missing weights, malformed or unsafe model files, no stems_root for the oracle).
    """
    factory = SEPARATORS.get(cfg.separator)
    if factory is None:
        raise SeparationError(
            f"unknown separator '{cfg.separator}' (known: {', '.join(SEPARATORS)})"
        )
    return factory(cfg, stems_root=stems_root, device=device)


__all__ = [
    "PRETRAINED_MODELS",
    "SAMPLE_RATE",
    "SEPARATORS",
    "SILENT_REFERENCE_POWER",
    "SOURCES",
    "OracleSeparator",
    "RandomMaskSeparator",
    "SeparationError",
    "SeparationScores",
    "Separator",
    "UMXSeparator",
    "build_separator",
    "evaluate_separator",
    "load_local_umx",
    "load_pretrained_umx",
    "model_identity",
    "random_soft_masks",
    "score_separator",
    "si_sdr",
    "train_separator",
]
