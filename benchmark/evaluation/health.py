"""Embedding health: does a frozen encoder tell clips apart at all?

A probe trained on embeddings that are (nearly) the same for every clip fits rounding noise,
and its score means nothing (issue #11: eval-mode encoders whose features varied across clips
by 8e-7 were probed after standardisation blew that noise up to unit variance). So every
cached embedding gets a health record, computed from the float32 features before they are
stored, and the probe stage refuses embeddings without spread.

All statistics are over clips: each clip's window embeddings are averaged first, so a
clip-independent feature counts as flat even if it varies along time.
"""

from __future__ import annotations

import numpy as np

# A clip-level embedding whose across-clip spread is below this fraction of its typical
# magnitude is collapsed. Healthy encoders here measure 0.3-1; the collapsed ones of issue #11
# measured ~1e-5 (8e-7 spread on values of ~0.066).
MIN_RELATIVE_SPREAD = 1e-3
# A dimension "varies" when its across-clip SD is at least this fraction of the features'
# root-mean-square value.
VARYING_DIM_FRACTION = 1e-3


def embedding_health(clip_embeddings: np.ndarray) -> dict:
    """Spread of clip-level embeddings ``(num_clips, D)`` across clips.

    Returns a JSON-ready dict:
        ``num_clips``, ``dim``;
        ``median_sd``: median over dimensions of the across-clip standard deviation;
        ``relative_spread``: root-mean-square across-clip SD over the root-mean-square value
        of the features (0: every clip the same; scale-free);
        ``varying_dims``: fraction of dimensions whose across-clip SD is at least
        :data:`VARYING_DIM_FRACTION` of that root-mean-square value;
        ``effective_rank``: exp of the entropy of the normalised singular values of the
        centred clip matrix (Roy & Vetterli, EUSIPCO 2007): 1 for one direction of variation,
        ``min(num_clips - 1, D)`` at most; meaningful only when there is spread;
        ``collapsed``: ``relative_spread`` below :data:`MIN_RELATIVE_SPREAD`.

    Raises:
        ValueError: fewer than 2 clips, not 2-D, or non-finite values.
    """
    x = np.asarray(clip_embeddings, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need (num_clips >= 2, D) clip embeddings, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("clip embeddings contain nan or inf")
    sd = x.std(axis=0)
    rms_value = float(np.sqrt(np.mean(x**2)))
    rms_sd = float(np.sqrt(np.mean(sd**2)))
    relative = rms_sd / rms_value if rms_value > 0 else 0.0
    singular = np.linalg.svd(x - x.mean(axis=0), compute_uv=False)
    total = singular.sum()
    if total > 0:
        p = singular[singular > 0] / total
        effective_rank = float(np.exp(-(p * np.log(p)).sum()))
    else:
        effective_rank = 0.0
    return {
        "num_clips": int(x.shape[0]),
        "dim": int(x.shape[1]),
        "median_sd": float(np.median(sd)),
        "relative_spread": relative,
        "varying_dims": float(np.mean(sd >= VARYING_DIM_FRACTION * rms_value))
        if rms_value
        else 0.0,
        "effective_rank": effective_rank,
        "collapsed": bool(relative < MIN_RELATIVE_SPREAD),
    }


def describe(health: dict) -> str:
    """One line for messages and logs."""
    return (
        f"relative spread {health['relative_spread']:.2g}, median per-dimension SD across "
        f"clips {health['median_sd']:.2g}, {100 * health['varying_dims']:.0f}% of "
        f"{health['dim']} dimensions vary, effective rank {health['effective_rank']:.1f}"
    )
