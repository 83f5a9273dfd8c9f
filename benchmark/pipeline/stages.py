"""The pipeline's stages, each content-keyed on disk and recorded in MLflow.

data -> features -> separate -> pretrain (here) -> embed -> tune / probe
(:mod:`benchmark.pipeline.probing`)

Every function here is safe to call again: finished work is found by its key (files on disk,
and a FINISHED MLflow run carrying the same ``bench.key``) and is not redone. Stages take the
command's :class:`~benchmark.pipeline.context.Context`, which keeps the datasets and stores
they open for as long as the command runs.
"""

from __future__ import annotations

import logging
import shutil
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

from benchmark.config import Config, stable_hash, to_dict
from benchmark.data.datasets import Dataset
from benchmark.data.features import AudioItem, build_mixtures
from benchmark.data.store import FeatureStore
from benchmark.errors import StageError
from benchmark.io import read_json
from benchmark.pipeline.context import Context
from benchmark.pipeline.tracking import git_commit
from benchmark.pretrain.loop import PretrainedModel
from benchmark.pretrain.pairs import PairCorpus
from benchmark.separation import model_identity
from benchmark.separation.sources import build_sources, source_activity, sources_root
from benchmark.separation.train_umx import TRAINING_TIME

log = logging.getLogger(__name__)

TRAINED_SEPARATOR = "trained"  # separation.umx_model value: the model `train-separator` made


@dataclass(frozen=True)
class Outcome:
    """What a tracked step did: ``status`` "ran" or "done" (found finished), and its MLflow run
    (the report reads exactly the runs the last plan produced or found)."""

    status: str
    run_id: str | None = None


# -- data -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataPaths:
    mtat_root: Path | None
    mtat_split_dir: Path | None  # None -> the shipped real split lists
    stems_root: Path | None  # true stems (synthetic corpus only)
    nsynth_root: Path | None
    fma_root: Path | None
    fma_subset: str
    corpus_version: str  # joins every cache key (the synthetic generator's version)


def data_paths(ctx: Context) -> DataPaths:
    """Stage ``data``: :func:`prepare_data` of the context's config, once per context."""
    return ctx.once(("paths",), lambda: prepare_data(ctx.cfg))


def prepare_data(cfg: Config) -> DataPaths:
    """Where the datasets are; generates the synthetic corpus once when it is the source.

    Raises :class:`StageError` for an unknown ``data.source``."""
    d = cfg.data
    if d.source == "synthetic":
        from benchmark.data.synth import GENERATOR_VERSION, generate

        root = cfg.cache_dir / "synth" / f"{d.synth_size}-s{d.synth_seed}-v{GENERATOR_VERSION}"
        if not (root / "manifest.json").is_file():
            tmp = root.with_name(root.name + ".partial")
            shutil.rmtree(tmp, ignore_errors=True)
            log.info("generating the synthetic corpus (%s) in %s", d.synth_size, root)
            size = int(d.synth_size) if d.synth_size.isdigit() else d.synth_size
            generate(tmp, size, d.synth_seed, workers=d.num_workers)
            shutil.rmtree(root, ignore_errors=True)
            tmp.rename(root)  # the corpus appears whole or not at all
        return DataPaths(
            root / "mtat",
            root / "mtat" / "mtat_split",
            root / "mtat" / "stems",
            root / "nsynth",
            root / "fma",
            "small",
            f"synth-v{GENERATOR_VERSION}",
        )
    if d.source != "real":
        raise StageError(f"data.source must be 'synthetic' or 'real', got {d.source!r}")

    def _root(value: str) -> Path | None:
        return Path(value).expanduser() if value else None

    return DataPaths(
        _root(d.mtat_root), None, None, _root(d.nsynth_root), _root(d.fma_root), d.fma_subset, ""
    )


def load_task_dataset(ctx: Context, task) -> Dataset:
    """The dataset of ``task``, loaded once per context."""
    paths = data_paths(ctx)
    return ctx.once(("dataset", task.name), lambda: _load_task_dataset(task, paths))


def _load_task_dataset(task, paths: DataPaths) -> Dataset:
    root = {"mtat": paths.mtat_root, "nsynth": paths.nsynth_root, "fma": paths.fma_root}[
        task.corpus
    ]
    if root is None:
        raise StageError(
            f"task {task.name} needs data.{task.corpus}_root (set it with "
            f"data.{task.corpus}_root=/path, or use data.source=synthetic)"
        )
    return task.load(paths)


# -- features ---------------------------------------------------------------------------


def corpus_items(ctx: Context, tasks, corpus: str) -> tuple[list[AudioItem], list]:
    """The union of the clips of every task reading ``corpus`` (one feature store each), and
    ``(clip_id, reason)`` of the listed clips whose audio files are missing or empty."""
    items: dict[str, AudioItem] = {}
    unreadable: dict[str, str] = {}
    for task in tasks:
        if task.corpus == corpus:
            dataset = load_task_dataset(ctx, task)
            for clip in dataset.clips:
                items.setdefault(clip.clip_id, AudioItem(clip.clip_id, clip.path))
            unreadable.update(dataset.unreadable())
    return list(items.values()), sorted(unreadable.items())


def mixture_store(ctx: Context, corpus: str) -> FeatureStore:
    """Stage ``features``: the log-mel store of ``corpus`` (built or found), once per context."""
    return ctx.once(("mix", corpus), lambda: _mixture_store(ctx, corpus))


def _mixture_store(ctx: Context, corpus: str) -> FeatureStore:
    from tasks import TASKS

    cfg, paths = ctx.cfg, data_paths(ctx)
    items, unreadable = corpus_items(ctx, TASKS.values(), corpus)
    return build_mixtures(
        items,
        cfg.cache_dir,
        corpus,
        cfg.frontend,
        corpus_version=paths.corpus_version,
        workers=cfg.data.num_workers,
        max_bad_fraction=cfg.data.max_bad_fraction,
        progress=ctx.progress,
        missing=[(clip_id, reason.replace("_", " ")) for clip_id, reason in unreadable],
    )


def pretrain_clips(ctx: Context) -> tuple[list, list]:
    """The pre-training data (paper): MTAT filtered train split, its valid split for checks."""
    from tasks import TASKS

    ds = load_task_dataset(ctx, TASKS["mtat"])
    return ds.split("train"), ds.split("valid")


# -- separation -------------------------------------------------------------------------


def trained_separator_dir(cfg: Config, paths: DataPaths) -> Path:
    s = to_dict(cfg.separation)
    key = stable_hash(
        {k: v for k, v in s.items() if k.startswith("train_")}
        | {"corpus": paths.corpus_version, "stems": str(paths.stems_root)}
    )
    return cfg.cache_dir / "separators" / f"umx-{key}"


def train_separator_stage(ctx: Context) -> Path:
    """Train Open-Unmix on the corpus's true stems (synthetic corpus), once per config.

    Raises :class:`StageError` when the corpus has no true stems."""
    from benchmark.separation import train_separator

    cfg, paths, tracker = ctx.cfg, data_paths(ctx), ctx.tracker
    if paths.stems_root is None or not paths.stems_root.is_dir():
        raise StageError("train-separator needs a corpus with true stems (data.source=synthetic)")
    out = trained_separator_dir(cfg, paths)
    key = f"train-separator:{out.name}"
    trained = (out / "quality.json").is_file()  # the directory appears whole (atomic rename)
    existing = tracker.find(key) if tracker else None
    if trained and (tracker is None or (existing and existing.info.status == "FINISHED")):
        return out
    run = (
        tracker.run(key, "train-separator", "train-separator", supersede=True)
        if tracker
        else nullcontext()
    )
    with run as handle:
        if not trained:  # else a killed process trained it and did not close its run
            train, valid = pretrain_clips(ctx)
            train_separator(
                paths.stems_root,
                [c.clip_id for c in train],
                [c.clip_id for c in valid],
                out,
                cfg.separation,
                progress=ctx.progress,
                num_threads=cfg.compute.torch_threads,
            )
        if handle:
            handle.tag("model_dir", out)
            handle.artifact_dict(read_json(out / "quality.json"), "quality.json")
            if (out / TRAINING_TIME).is_file():  # the training's time, also when resumed
                handle.metrics({"wall_s": read_json(out / TRAINING_TIME)["train_time_s"]})
    return out


def resolve_separation(ctx: Context, separator: str):
    """The SeparationConfig actually used and what identifies its weights (trains the
    ``trained`` separator first when it is not there yet)."""
    sep = ctx.cfg.separation
    if separator == "random_mask":
        return replace(sep, separator="random_mask"), "random_mask"
    if sep.separator == "umx" and sep.umx_model == TRAINED_SEPARATOR:
        model_dir = train_separator_stage(ctx)
        return replace(sep, umx_model=str(model_dir)), model_identity(model_dir)
    if sep.separator == "umx" and Path(sep.umx_model).is_dir():
        return sep, model_identity(Path(sep.umx_model))
    return sep, sep.umx_model if sep.separator == "umx" else sep.separator


def sources_ready(ctx: Context, separator: str) -> bool:
    """Whether stage ``separate`` has built the sources for ``separator`` ("config" or
    "random_mask") under this config (without building or training anything)."""
    cfg, paths = ctx.cfg, data_paths(ctx)
    sep = cfg.separation
    if separator != "random_mask" and sep.separator == "umx" and sep.umx_model == TRAINED_SEPARATOR:
        if not (trained_separator_dir(cfg, paths) / "quality.json").is_file():
            return False
    sep_cfg, identity = resolve_separation(ctx, separator)
    root = sources_root(
        cfg.cache_dir, "mtat", cfg.frontend, sep_cfg, identity, paths.corpus_version
    )
    return (root / "manifest.json").is_file()


def separate_command(cfg: Config, separator: str) -> str:
    """The command that builds the sources a method needs."""
    extra = " --separator random_mask" if separator == "random_mask" else ""
    return f"python -m benchmark separate --profile {cfg.profile}{extra}"


def source_store(ctx: Context, separator: str) -> FeatureStore:
    """Stage ``separate``: per-source log-mel + silence flags of the pre-training clips, for
    ``separator`` "config" (``separation.separator``) or "random_mask"; once per context."""
    return ctx.once(("src", separator), lambda: _source_store(ctx, separator))


def _source_store(ctx: Context, separator: str) -> FeatureStore:
    cfg, paths, tracker = ctx.cfg, data_paths(ctx), ctx.tracker
    sep_cfg, identity = resolve_separation(ctx, separator)
    train, valid = pretrain_clips(ctx)
    items = [AudioItem(c.clip_id, c.path) for c in train + valid]
    store = build_sources(
        items,
        cfg.cache_dir,
        "mtat",
        cfg.frontend,
        sep_cfg,
        stems_root=paths.stems_root,
        separator_identity=identity,
        corpus_version=paths.corpus_version,
        max_bad_fraction=cfg.data.max_bad_fraction,
        progress=ctx.progress,
        num_threads=cfg.compute.torch_threads,
    )
    if tracker is not None:
        key = f"separate:{store.root.name}"
        if not tracker.is_done(key):
            with tracker.run(
                key,
                "separate",
                f"separate-{sep_cfg.separator}",
                tags={"separator": sep_cfg.separator},
            ) as h:
                activity = source_activity(store)
                h.artifact_dict({"activity": activity, "report": store.report()}, "activity.json")
                for src, row in activity.items():
                    h.metrics({f"active_{src}": row["active"], f"total_{src}": row["total"]})
                log.info("source activity (%s): %s", sep_cfg.separator, activity)
    return store


# -- pretraining ------------------------------------------------------------------------


def pair_corpora(ctx: Context, method) -> tuple[PairCorpus, PairCorpus, str]:
    """The training and validation pair corpora of ``method``, and what identifies their data."""
    cfg = ctx.cfg
    mix = mixture_store(ctx, "mtat")
    sources = None
    if method.sources:
        sources = source_store(ctx, method.separator)
    train, valid = pretrain_clips(ctx)
    f = cfg.frontend

    def make(clips):
        ids = [c.clip_id for c in clips]
        return PairCorpus(
            mix, f.excerpt_frames, f.crop_frames, cfg.pretrain.silent_value, sources, ids
        )

    identity = mix.root.name + ("|" + sources.root.name if sources is not None else "")
    return make(train), make(valid), identity


def run_pretrain(
    ctx: Context,
    method_name: str,
    seed: int,
    *,
    build_sources: bool = True,
    resume_only: bool = False,
) -> PretrainedModel:
    """Stage ``pretrain`` for one method and seed (found finished, resumed, or trained).

    ``build_sources=False``: a method that pairs with sources needs stage ``separate`` to have
    run, else StageError naming the command (the plan orders the stages itself).
    ``resume_only``: StageError unless an unfinished run of this config exists to resume.
    Raises ``ValueError`` for an unknown method.
    """
    from benchmark.pretrain.loop import (
        is_complete,
        materialize_untrained,
        pretext_collapsed,
        pretrain,
        pretrain_key,
    )
    from methods import get_method

    cfg = ctx.cfg

    method = get_method(method_name)
    # The seed the run trains with: a method's copy under another name (the negative control)
    # adds an offset, so that its runs are independent of the original's.
    train_seed = seed + getattr(method, "seed_offset", 0)
    tracker = ctx.require_tracker()
    if method.sources and not build_sources and not sources_ready(ctx, method.separator):
        raise StageError(
            f"{method_name} pairs mixtures with separated sources ({method.separator} "
            f"separator), which are not built yet: run `{separate_command(cfg, method.separator)}`"
        )
    corpus, valid, identity = pair_corpora(ctx, method)
    key = pretrain_key(cfg, method, seed, identity)
    run_dir = cfg.profile_dir / "pretrain" / f"{method_name}-s{seed}-{key}"
    existing = tracker.find(key)
    if is_complete(run_dir, key) and existing is not None and existing.info.status == "FINISHED":
        return PretrainedModel(
            method_name, seed, key, run_dir / "final.pt", existing.info.run_id, cached=True
        )
    # Otherwise the run is resumed (a killed process left it open: training continues from
    # the checkpoint, zero steps if the weights were complete) or, FINISHED without its
    # weights, redone under a new run.
    if resume_only and not (run_dir / "checkpoint.pt").is_file():
        raise StageError(
            f"nothing to resume for {method_name} seed {seed}: no checkpoint in {run_dir}"
        )
    params = {"config": cfg.to_dict(), "method": method.params(), "seed": seed}
    tags = {
        "method": method_name,
        "seed": seed,
        "trained": str(method.pretrained).lower(),
        "config_hash": cfg.hash(),
        "results_hash": cfg.results_hash(),
        "git_commit": git_commit(),
    }
    if not method.pretrained:
        # Nothing to train: the initial weights, with batch-norm statistics estimated by the
        # same rule as every trained encoder's (precise BN on the pre-training corpus). The
        # run records it, and later the health of its embeddings, like any encoder's.
        with tracker.run(
            key,
            "pretrain",
            f"pretrain-{method_name}-s{seed}",
            tags=tags,
            params=params,
            supersede=True,  # FINISHED, its weights gone: redone under a new run
        ) as h:
            final_path = materialize_untrained(cfg, method, corpus, run_dir, key, train_seed)
            h.tag("checkpoint", final_path.resolve())
            run_id = h.run_id
        return PretrainedModel(method_name, seed, key, final_path, run_id)
    with tracker.run(
        key, "pretrain", f"pretrain-{method_name}-s{seed}", tags=tags, params=params, supersede=True
    ) as h:
        result = pretrain(
            cfg,
            method,
            corpus,
            valid,
            run_dir,
            key,
            train_seed,
            on_metrics=lambda m, step: h.metrics(m, step),
            progress=ctx.progress,
        )
        h.tag("checkpoint", result.final_path.resolve())
        if result.validation is not None:
            # Eval-mode validation at chance: the report and the probes show it (issue #11).
            h.tag("collapsed", str(pretext_collapsed(result.validation)).lower())
        h.artifact(run_dir / "config.json")
        h.metrics({"wall_s": result.wall_s, "resumed_from_step": result.resumed_from})
        run_id = h.run_id
    return PretrainedModel(method_name, seed, key, result.final_path, run_id)
