"""The paper's analyses as plan steps: encoders at intermediate pre-training steps (the
convergence study) and the measured quality of each method's separator (the
separator-quality study). The report's sections are :mod:`reports.studies`.

Both reuse what the other stages made: a snapshot is the finished run's
``snapshot-<step>.pt`` (kept by the loop, :data:`benchmark.pretrain.loop.SNAPSHOT`) with
precise-BN statistics, cached beside it; its embeddings are cached like any encoder's and
its probes are content-keyed runs of kind ``probe-snapshot``. Separator quality is the SI-SDR
that training the separator measured on the validation clips' true stems.
"""

from __future__ import annotations

import math
from dataclasses import replace

from benchmark.pipeline.context import Context
from benchmark.pipeline.stages import pair_corpora, separator_quality
from benchmark.pretrain.loop import PretrainedModel, evaluated_snapshot

# Metric names logged into a pre-training run: the mean SI-SDR (dB) of its separator per
# source on the validation clips, and 1 for the true stems (exact: no finite SI-SDR).
SI_SDR_METRIC = "separation.si_sdr.{source}"
EXACT_METRIC = "separation.exact"


def snapshot_model(ctx: Context, model: PretrainedModel, step: int) -> PretrainedModel:
    """The encoder of ``model``'s pre-training run after ``step`` updates, evaluated like
    ``final.pt`` (:func:`benchmark.pretrain.loop.evaluated_snapshot`). Its ``key`` names the
    step; it has no MLflow run of its own (``run_id`` None)."""
    from methods import get_method

    method = get_method(model.method)
    corpus, _valid = pair_corpora(ctx, method)
    train_seed = model.seed + getattr(method, "seed_offset", 0)
    path = evaluated_snapshot(
        ctx.cfg, method, corpus, model.final_path.parent, model.key, train_seed, step
    )
    return replace(model, key=snapshot_key(model, step), final_path=path, run_id=None)


def snapshot_key(model: PretrainedModel, step: int) -> str:
    """The content key of ``model``'s encoder after ``step`` updates (the plan's snapshot lock
    is named by it)."""
    return f"{model.key}@{step}"


def record_separator_quality(ctx: Context, model: PretrainedModel) -> str:
    """Log the measured quality of ``model``'s separator into its pre-training run (once):
    :data:`SI_SDR_METRIC` per source, or :data:`EXACT_METRIC` for the true stems. Returns
    "ran", or "done" when they are there already or nothing measured this separator
    (downloaded weights, real data)."""
    from methods import get_method

    method = get_method(model.method)
    quality = separator_quality(ctx, method.separator) if method.sources else None
    if quality is None or model.run_id is None:
        return "done"
    if quality.get("oracle"):
        metrics = {EXACT_METRIC: 1.0}
    else:
        metrics = {
            SI_SDR_METRIC.format(source=source): float(value)
            for source, value in quality["mean_si_sdr_db"].items()
            if value is not None and math.isfinite(value)
        }
    tracker = ctx.require_tracker()
    if not metrics or all(k in tracker.client.get_run(model.run_id).data.metrics for k in metrics):
        return "done"
    tracker.log_once(model.run_id, metrics)
    return "ran"
