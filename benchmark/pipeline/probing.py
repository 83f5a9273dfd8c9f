"""Stages ``tune`` and ``probe``: the frozen encoder's evaluation on the tasks, tracked.

embed (:mod:`benchmark.evaluation.embed`, every window of a corpus, once per checkpoint and
hop, cached) -> tune (Optuna, equal budget per method) -> probe (one MLflow run per method x
task x seed, with test predictions). Like every stage, each function here is safe to call
again: finished work is found by its key.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np

from benchmark.config import Config, results_settings, stable_hash, to_dict
from benchmark.errors import StageError
from benchmark.evaluation.embed import embed, embedding_key
from benchmark.io import atomic_write_json, read_json
from benchmark.pipeline.context import Context
from benchmark.pipeline.locks import sqlite_lock
from benchmark.pipeline.stages import (
    Outcome,
    corpus_items,
    load_task_dataset,
    mixture_store,
    pretrain_corpus,
    task_registry,
)
from benchmark.pipeline.tracking import git_commit
from benchmark.pretrain.loop import PretrainedModel

log = logging.getLogger(__name__)


def _score_fn(task, dataset):
    from benchmark.evaluation.metrics import primary_score_fn

    return primary_score_fn(dataset.vocabulary, dataset.multilabel, task.primary)


def probe_params(cfg: Config, task, method_name: str, emb_key: str, mode: str | None = None):
    from benchmark.evaluation.probe import ProbeParams

    mode = mode or cfg.probe.params
    if mode == "default":
        return ProbeParams(lr=task.lr)
    if mode == "tuned":
        path = tuned_path(cfg, method_name, task.name, emb_key)
        if not path.is_file():
            raise StageError(
                f"no tuned parameters for {method_name} on {task.name} ({path}): run "
                f"`python -m benchmark tune --profile {cfg.profile} --method {method_name} "
                f"--task {task.name}` first, or set probe.params=default"
            )
        best = read_json(path)["best_params"]
        return ProbeParams(**best)
    raise StageError(f"probe.params must be 'default' or 'tuned', got {mode!r}")


def tune_key(cfg: Config, task_name: str, emb_key: str) -> str:
    """What a tuning result depends on: the search budget, the probe setup and the embeddings
    (which carry ``probe.train_hop_frames``). ``tune`` as the results hash sees it: without
    ``tune.workers`` (placement), and ``tune.lag`` only when not 0 (so tuning done before the
    lag existed is found)."""
    tune = results_settings({"tune": to_dict(cfg.tune)})["tune"]
    return stable_hash({"tune": tune, "emb": emb_key, "task": task_name, "probe": _training(cfg)})


def tune_run_key(cfg: Config, task_name: str, emb_key: str) -> str:
    """The ``bench.key`` of a tuning's MLflow run (the plan's tune lock is named by it)."""
    return f"tune:{tune_key(cfg, task_name, emb_key)}"


def _training(cfg: Config) -> dict:
    """The probe settings that shape training, as keyword arguments of ``train_probe`` and
    ``tune_probe`` (epochs differ: ``probe.max_epochs`` vs ``tune.max_epochs``)."""
    p = cfg.probe
    return {
        "batch_size": p.batch_size,
        "patience": p.patience,
        "windows_per_clip": max(1, p.windows_per_clip),
        "standardize": p.standardize,
    }


def tuned_path(cfg, method_name, task_name, emb_key) -> Path:
    key = tune_key(cfg, task_name, emb_key)
    return cfg.workspace_dir / "tuned" / f"{method_name}-{task_name}-{key}.json"


def embedded(ctx: Context, model: PretrainedModel, task):
    """The task's dataset and its window embeddings (see :func:`embed`; computed and cached
    on disk the first time: the plan's ``embed`` step, or the first tune or probe).

    Raises :class:`StageError` when the embeddings do not vary across clips: a probe would
    fit rounding noise, so nothing is tuned or scored on them (issue #11)."""
    from benchmark.evaluation.health import describe

    dataset = load_task_dataset(ctx, task)
    store = mixture_store(ctx, task.corpus)
    audio_paths = corpus_clips = None
    if model.external is not None:  # an external encoder reads the audio files themselves
        items = corpus_items(ctx, task_registry(ctx).values(), task.corpus)
        audio_paths = {item.clip_id: item for item in items}
    if task.corpus == pretrain_corpus(ctx.cfg) and ctx.cfg.data.pretrain_source != "mtat":
        # The store also holds the pre-training folder's files: embed the tasks' clips only.
        tasks = [t for t in task_registry(ctx).values() if t.corpus == task.corpus]
        corpus_clips = sorted({c.clip_id for t in tasks for c in load_task_dataset(ctx, t).clips})
    emb = embed(ctx.cfg, model, task, dataset, store, ctx.progress, audio_paths, corpus_clips)
    if model.run_id:
        # The encoder's run records the health of its embeddings of each corpus, also when
        # they are refused below: the report shows it beside the pre-training diagnostics.
        ctx.require_tracker().log_once(
            model.run_id, health_metrics(emb["health"], prefix=f"embedding.{task.corpus}.")
        )
    if emb["health"]["collapsed"]:
        raise StageError(
            f"{model.method} (pre-training seed {model.seed}) gives {task.corpus} clips "
            f"embeddings without spread ({describe(emb['health'])}): the encoder is "
            f"collapsed, so no probe is trained or scored on it; see the report's "
            f"pre-training diagnostics"
        )
    return dataset, emb


def embedding_key_of(ctx: Context, model: PretrainedModel, task) -> str:
    """The key of the embeddings :func:`embedded` returns (``emb["key"]``), without making or
    loading them (the plan's embed lock is named by it)."""
    store = mixture_store(ctx, task.corpus)
    return embedding_key(ctx.cfg, model, task, load_task_dataset(ctx, task), store)


def health_metrics(health: dict, prefix: str = "embedding_") -> dict[str, float]:
    """An embedding's health record as MLflow metrics (``collapsed`` as 0/1)."""
    names = ("relative_spread", "median_sd", "varying_dims", "effective_rank", "collapsed")
    return {f"{prefix}{name}": float(health[name]) for name in names}


def run_tune(ctx: Context, model: PretrainedModel, task) -> dict:
    """Equal-budget Optuna search of the probe's hyper-parameters on the validation split of
    ``model``, one pre-training run. Every run is tuned (the same budget per run, so per
    method) and probes with its own parameters: the search's randomness (which trial wins on
    a small validation split) then varies between runs, where the comparison's between-run
    variance sees it. One search per method, shared by its runs, made it a method-level
    effect that no run showed: COLA and its twin (COLA on other seeds) picked learning rates
    17x apart and came out "significantly" different (issue #14).

    Returns the tuned-parameters file's content (``best_params``, ``best_value``, ``trials``,
    ``study``) plus ``cached`` (found done) and ``run_id`` (its MLflow run). Done means: the
    file exists and its run is FINISHED; otherwise the run is resumed (a complete study runs
    no further trial) or, FINISHED without its file, redone under a new run.
    """
    from benchmark.evaluation.tuning import init_storage, tune_probe

    cfg, tracker = ctx.cfg, ctx.require_tracker()
    dataset, emb = embedded(ctx, model, task)
    path = tuned_path(cfg, model.method, task.name, emb["key"])
    t = cfg.tune
    key = tune_key(cfg, task.name, emb["key"])
    run_key = tune_run_key(cfg, task.name, emb["key"])
    previous = tracker.find(run_key)
    if path.is_file() and previous is not None and previous.info.status == "FINISHED":
        return {**read_json(path), "cached": True, "run_id": previous.info.run_id}
    with sqlite_lock(cfg.optuna_storage):  # parallel steps creating its schema at once fail
        init_storage(cfg.optuna_storage)
    study = f"{cfg.profile}-{model.method}-s{model.seed}-{task.name}-{key}"
    with tracker.run(
        run_key,
        "tune",
        f"tune-{model.method}-{task.name}",
        tags={
            "method": model.method,
            "task": task.name,
            "study": study,
            "pretrain_seed": model.seed,
            "task_identity": task.identity,
            "config_hash": cfg.hash(),
            "results_hash": cfg.results_hash(),
        },
        params={"tune": to_dict(t)},
        supersede=True,
    ) as h:
        result = tune_probe(
            study,
            cfg.optuna_storage,
            task.probe_spec(len(dataset.vocabulary)),
            emb["train"][0],
            emb["valid"][0],
            num_trials=t.num_trials,
            sampler_seed=t.sampler_seed,
            probe_seed=t.probe_seed,
            max_epochs=t.max_epochs,
            **_training(cfg),
            score_fn=_score_fn(task, dataset),
            baseline_params=probe_params(cfg, task, model.method, emb["key"], "default"),
            on_trial=_trial_logger(h),
            workers=t.workers,
            lag=t.lag,
        )
        out = {
            "best_params": result.best_params.__dict__,
            "best_value": result.best_value,
            "trials": result.trials,
            "study": study,
        }
        h.artifact_dict(out, "tuning.json")
        h.metrics({"best_valid": result.best_value, "trials_beyond_budget": result.beyond_budget})
        atomic_write_json(path, out)  # the artefact, last: the run closes after it
        run_id = h.run_id
    return {**out, "cached": False, "run_id": run_id}


def probe_setup(
    ctx: Context,
    model: PretrainedModel,
    task,
    probe_seed: int,
    *,
    params_mode: str | None = None,
    tuned_from: PretrainedModel | None = None,
):
    """The content key of a probe run of :func:`run_probe` (its ``bench.key``, and the name of
    the plan's probe lock) and the probe's parameters (:class:`ProbeParams`), without making
    or loading the embeddings. Raises :class:`StageError` as :func:`probe_params`."""
    cfg = ctx.cfg
    emb_key = embedding_key_of(ctx, model, task)
    tuning_key = emb_key
    if tuned_from is not None and tuned_from is not model:
        tuning_key = embedding_key_of(ctx, tuned_from, task)
    params = probe_params(cfg, task, model.method, tuning_key, params_mode)
    key = stable_hash(
        {
            "emb": emb_key,
            "task": task.name,
            "seed": probe_seed,
            "params": params.__dict__,
            "max_epochs": cfg.probe.max_epochs,
            **_training(cfg),
        }
    )
    return key, params


def _trial_logger(h):
    """``on_trial`` of ``tune_probe`` (called with each counted trial, also those counted by an
    earlier, interrupted call): logs its value as metric ``trial_value`` at step = its number,
    once; the steps a resumed run holds already are skipped. So a tune run's trial history is
    the counted trials, whatever the number of workers and however often the step was cut."""
    logged = {m.step for m in h.client.get_metric_history(h.run_id, "trial_value")}

    def log_trial(trial: dict) -> None:
        if trial["number"] not in logged:
            h.metrics({"trial_value": trial["value"]}, trial["number"])
            logged.add(trial["number"])

    return log_trial


def run_probe(
    ctx: Context,
    model: PretrainedModel,
    task,
    probe_seed: int,
    *,
    force: bool = False,
    params_mode: str | None = None,
    tuned_from: PretrainedModel | None = None,
    snapshot_step: int | None = None,
) -> Outcome:
    """Train and test one probe seed; status 'done' (already there) or 'ran', and its run.

    ``force`` reruns a finished probe (the new run supersedes it, the old one is tagged
    ``bench.superseded_by``); ``params_mode`` overrides ``probe.params``; ``tuned_from`` is
    the model whose tuning gives the parameters (default ``model``; a snapshot's is its run's
    final encoder); ``snapshot_step``: ``model`` is the run's encoder at
    that pre-training step (the convergence study), recorded as a run of kind
    ``probe-snapshot`` that the leaderboard's tables never read. The probe's artefacts are its MLflow metrics and
    predictions, logged before the run closes; an unfinished run (a killed process) is
    resumed and the probe trained again. Raises :class:`StageError` when tuned parameters
    are asked for and missing."""
    from benchmark.evaluation.metrics import score
    from benchmark.evaluation.probe import predict_clips, train_probe

    cfg, tracker = ctx.cfg, ctx.require_tracker()
    dataset, emb = embedded(ctx, model, task)
    key, params = probe_setup(
        ctx, model, task, probe_seed, params_mode=params_mode, tuned_from=tuned_from
    )
    p = cfg.probe
    previous = tracker.find(key)
    if previous is not None and previous.info.status == "FINISHED" and not force:
        return Outcome("done", previous.info.run_id)
    mode = params_mode or cfg.probe.params
    train, valid, test = emb["train"][0], emb["valid"][0], emb["test"][0]
    spec = task.probe_spec(len(dataset.vocabulary))
    tags = {
        "method": model.method,
        "task": task.name,
        "probe_seed": probe_seed,
        "pretrain_seed": model.seed,
        "pretrain_run_id": model.run_id or "",
        "params_mode": mode,
        "task_identity": task.identity,
        "config_hash": cfg.hash(),
        "results_hash": cfg.results_hash(),
        "git_commit": git_commit(),
    }
    kind, name = "probe", f"probe-{model.method}-{task.name}-s{model.seed}-p{probe_seed}"
    if snapshot_step is not None:
        kind, name = "probe-snapshot", f"{name}-step{snapshot_step}"
        tags["pretrain_step"] = snapshot_step
    with tracker.run(
        key,
        kind,
        name,
        tags=tags,
        params={"probe": to_dict(p), "params": params.__dict__, "spec": spec.__dict__},
        supersede=force,  # the forced run replaces the finished one
    ) as h:
        t0 = time.perf_counter()
        result = train_probe(
            spec,
            params,
            train,
            valid,
            seed=probe_seed,
            max_epochs=p.max_epochs,
            **_training(cfg),
            score_fn=_score_fn(task, dataset),
        )
        # float64 throughout: the saved predictions give back exactly the logged metrics.
        scores = predict_clips(result.model, test).astype(np.float64)
        targets = test.targets
        metrics = score(targets, scores, list(dataset.vocabulary), dataset.multilabel)
        flat = {m: metrics[m] for m in task.metrics}
        flat.update(
            {
                "best_epoch": result.best_epoch,
                "epochs_run": result.epochs_run,
                "valid_primary": result.best_valid_score,
                "train_s": time.perf_counter() - t0,
                "num_train_clips": train.num_clips,
                "num_valid_clips": valid.num_clips,
                "num_test_clips": len(targets),
                **health_metrics(emb["health"]),
            }
        )
        h.metrics(flat)
        h.artifact_dict({k: v for k, v in metrics.items() if k not in task.metrics}, "details.json")
        tmp = cfg.profile_dir / "tmp" / f"{h.run_id}"
        tmp.mkdir(parents=True, exist_ok=True)
        # groups: each test clip's cluster (song, instrument, artist), so that the report can
        # resample clusters rather than clips (REFERENCE.md section 10).
        np.savez_compressed(
            tmp / "predictions.npz",
            clip_ids=np.array([c.clip_id for c in emb["test"][1]]),
            groups=np.array([c.cluster for c in emb["test"][1]]),
            targets=targets,
            scores=scores,
            vocabulary=np.array(dataset.vocabulary),
        )
        h.artifact(tmp / "predictions.npz")
        shutil.rmtree(tmp, ignore_errors=True)
        run_id = h.run_id
    return Outcome("ran", run_id)
