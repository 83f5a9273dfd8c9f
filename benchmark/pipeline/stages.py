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
import math
import shutil
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

from benchmark.config import Config, SeparationConfig, stable_hash, to_dict
from benchmark.data.datasets import Dataset
from benchmark.data.features import AudioItem, build_mixtures, mixture_root
from benchmark.data.store import FeatureStore
from benchmark.errors import DatasetError, StageError
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
    # Joins every cache key of the built-in corpora: the synthetic corpus's identity (generator
    # version, size and seed; "" for real trees).
    corpus_version: str


def data_paths(ctx: Context) -> DataPaths:
    """Stage ``data``: :func:`prepare_data` of the context's config, once per context."""
    return ctx.once(("paths",), lambda: prepare_data(ctx.cfg, ctx.progress))


def synthetic_root(cfg: Config) -> Path:
    """Where the synthetic corpus of ``cfg`` lives (generated there on first use)."""
    from benchmark.data.synth import GENERATOR_VERSION

    d = cfg.data
    return cfg.cache_dir / "synth" / f"{d.synth_size}-s{d.synth_seed}-v{GENERATOR_VERSION}"


def synthetic_layout(cfg: Config) -> DataPaths:
    """The paths of ``cfg``'s synthetic corpus (whether or not it is generated yet). Its
    ``corpus_version`` is named after its folder: corpora of another size or seed (same clip
    ids, other audio) must not share feature stores, sources or pre-training keys."""
    root = synthetic_root(cfg)
    return DataPaths(
        root / "mtat",
        root / "mtat" / "mtat_split",
        root / "mtat" / "stems",
        root / "nsynth",
        root / "fma",
        "small",
        f"synth-{root.name}",  # {size}-s{seed}-v{generator version}
    )


def synthetic_paths(cfg: Config, progress: bool = True) -> DataPaths:
    """The synthetic corpus of ``cfg``, generated once (whole or not at all)."""
    from benchmark.data.synth import generate

    d = cfg.data
    root = synthetic_root(cfg)
    if not (root / "manifest.json").is_file():
        tmp = root.with_name(root.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        log.info("generating the synthetic corpus (%s) in %s", d.synth_size, root)
        size = int(d.synth_size) if d.synth_size.isdigit() else d.synth_size
        generate(tmp, size, d.synth_seed, workers=d.num_workers, progress=progress)
        shutil.rmtree(root, ignore_errors=True)
        tmp.rename(root)  # the corpus appears whole or not at all
    return synthetic_layout(cfg)


def _synthetic_corpus(ctx: Context) -> DataPaths:
    """The synthetic corpus of ``ctx``'s config for a stage that needs it whatever the data
    source (separator training): generated, when missing, under the lock of the plan's data
    step, so that a concurrent ``run`` generating the same corpus is waited for, not raced."""
    cfg = ctx.cfg
    root = synthetic_root(cfg)
    if (root / "manifest.json").is_file():
        return synthetic_layout(cfg)
    with ctx.hold("data", root.name):  # the data step's lock (plan._data_key)
        return synthetic_paths(cfg, ctx.progress)


def prepare_data(cfg: Config, progress: bool = True) -> DataPaths:
    """Where the datasets are; generates the synthetic corpus once when it is the source.

    ``data.mtat_split_dir`` replaces the filtered-MTAT lists (shipped, or the synthetic
    corpus's own). ``data.source`` is checked by :func:`benchmark.config.check`."""
    d = cfg.data
    split_dir = Path(d.mtat_split_dir).expanduser() if d.mtat_split_dir else None
    if d.source == "synthetic":
        return synthetic_paths(cfg, progress)

    def _root(value: str) -> Path | None:
        return Path(value).expanduser() if value else None

    return DataPaths(
        _root(d.mtat_root),
        split_dir,
        None,
        _root(d.nsynth_root),
        _root(d.fma_root),
        d.fma_subset,
        "",
    )


def describe_data(cfg: Config, task_names=None, method_names=None) -> list[str]:
    """Which data a run of ``cfg`` uses, one line each (``config`` and ``--dry-run`` print it;
    the report repeats it): for ``task_names`` and ``method_names`` (default: the
    configuration's). Reads nothing and generates nothing."""
    from methods import get_method

    d = cfg.data
    lines = []
    synth = f"synthetic corpus ({d.synth_size}, seed {d.synth_seed}) in {synthetic_root(cfg)}"
    if d.pretrain_source == "mtat":
        where = synth if d.source == "synthetic" else f"real MTAT at {d.mtat_root or '(unset)'}"
        lists = d.mtat_split_dir or (
            "the synthetic corpus's lists" if d.source == "synthetic" else "the shipped lists"
        )
        lines.append(f"pre-training: MTAT filtered train/valid split ({lists}) of the {where}")
    elif d.pretrain_source == "folder":
        lines.append(
            f"pre-training: every audio file under {d.pretrain_root} (recursive), "
            f"{d.valid_fraction:.0%} held out for validation by content hash"
        )
    else:
        lines.append(
            f"pre-training: the files listed in {d.pretrain_manifest} (root "
            f"{d.pretrain_root or 'the manifest folder'}); split column or content hash"
        )
    tasks = _all_tasks(cfg)
    roots = {"mtat": d.mtat_root, "nsynth": d.nsynth_root, "fma": d.fma_root}
    for name in task_names or (*cfg.benchmark.tasks, *_file_task_names(cfg, tasks)):
        task = tasks.get(name)
        if task is None:
            continue
        if task.declared_in:
            lines.append(f"task {name}: task file {task.declared_in}")
        elif d.source == "synthetic":
            lines.append(f"task {name}: {task.corpus} of the {synth}")
        else:
            lines.append(f"task {name}: real {task.corpus} at {roots[task.corpus] or '(unset)'}")
    sep = cfg.separation
    methods = [get_method(m) for m in method_names or cfg.benchmark.methods]
    if not any(m.sources for m in methods):
        return lines  # no method pairs with separated sources
    if sep.separator == "umx" and sep.umx_model == TRAINED_SEPARATOR:
        configured = f"Open-Unmix trained here on the true stems of the {synth}"
    elif sep.separator == "umx":
        configured = f"Open-Unmix {sep.umx_model}"
    else:
        configured = f"separation.separator={sep.separator}"
    for kind in sorted({m.separator for m in methods if m.sources}):
        what = "random soft masks of the mixture" if kind == "random_mask" else configured
        lines.append(f"separated sources ({kind} separator): {what}")
    return lines


def _all_tasks(cfg: Config) -> dict:
    from tasks import all_tasks

    return all_tasks(cfg.benchmark.task_files)


def _file_task_names(cfg: Config, tasks: dict) -> list[str]:
    return [n for n, t in tasks.items() if t.declared_in and n not in cfg.benchmark.tasks]


def task_registry(ctx: Context) -> dict:
    """Every task of this configuration: registered ones and those of ``benchmark.task_files``."""
    return ctx.once(("tasks",), lambda: _all_tasks(ctx.cfg))


def planned_tasks(ctx: Context) -> list[str]:
    """The tasks a plan runs by default: ``benchmark.tasks`` then the task files' tasks."""
    return [*ctx.cfg.benchmark.tasks, *_file_task_names(ctx.cfg, task_registry(ctx))]


def get_task(ctx: Context, name: str):
    """The task ``name`` of this configuration; ValueError listing the known ones otherwise."""
    tasks = task_registry(ctx)
    if name not in tasks:
        raise ValueError(f"unknown task '{name}' (known: {', '.join(tasks)})")
    return tasks[name]


BUILTIN_CORPORA = ("mtat", "nsynth", "fma")  # the corpora data.source chooses


def load_task_dataset(ctx: Context, task) -> Dataset:
    """The dataset of ``task``, loaded once per context (a task file's data needs neither the
    real roots nor the synthetic corpus)."""
    return ctx.once(("dataset", task.name), lambda: _load_task_dataset(ctx, task))


def _load_task_dataset(ctx: Context, task) -> Dataset:
    if task.corpus not in BUILTIN_CORPORA:
        return task.load(None)
    cfg, paths = ctx.cfg, data_paths(ctx)
    roots = {"mtat": paths.mtat_root, "nsynth": paths.nsynth_root, "fma": paths.fma_root}
    if task.corpus in roots and roots[task.corpus] is None:
        raise StageError(
            f"task {task.name} needs data.{task.corpus}_root (set it with "
            f"data.{task.corpus}_root=/path, or use data.source=synthetic)"
        )
    try:
        return task.load(paths)
    except DatasetError as exc:
        if task.name == "mtat" and paths.mtat_split_dir is None and "is not in" in str(exc):
            raise DatasetError(
                f"{exc}: this MTAT tree is not the original one the shipped split lists "
                "describe; set data.mtat_split_dir=<folder with train/valid/test.txt>, or "
                "pre-train on the tree's audio with data.pretrain_source=folder "
                f"data.pretrain_root={cfg.data.mtat_root} and leave out task mtat "
                "(e.g. benchmark.tasks=mtat_star)"
            ) from None
        raise


# -- features ---------------------------------------------------------------------------


def needs_builtin_data(ctx: Context, task_names, pretrains: bool) -> bool:
    """Whether a plan reads the synthetic corpus or the real roots: a registered task, or
    pre-training on MTAT (a folder or manifest and task files need neither)."""
    tasks = [get_task(ctx, t) for t in task_names]
    mtat_pretraining = pretrains and ctx.cfg.data.pretrain_source == "mtat"
    return mtat_pretraining or any(t.corpus in BUILTIN_CORPORA for t in tasks)


def corpus_items(ctx: Context, tasks, corpus: str) -> list[AudioItem]:
    """The union of the clips of every task reading ``corpus`` (one feature store each), and of
    the pre-training clips when ``corpus`` is the pre-training corpus."""
    items: dict[str, AudioItem] = {}
    clips = [c for t in tasks if t.corpus == corpus for c in load_task_dataset(ctx, t).clips]
    if corpus == pretrain_corpus(ctx.cfg):
        clips += pretrain_dataset(ctx).clips
    for clip in clips:
        item = items.setdefault(clip.clip_id, AudioItem(clip.clip_id, clip.path, clip.span))
        if (item.path, item.span) != (clip.path, clip.span):
            raise StageError(
                f"corpus {corpus}: clip id '{clip.clip_id}' names two pieces of audio "
                f"({item.path} {item.span or ''} and {clip.path} {clip.span or ''}); give the "
                "tasks on this audio the same ids"
            )
    return list(items.values())


def corpus_unreadable(ctx: Context, tasks, corpus: str) -> list[tuple[str, str]]:
    """``(clip_id, reason)`` of the clips of :func:`corpus_items` whose audio files are listed
    but missing or empty (the feature build counts them as bad clips)."""
    datasets = [load_task_dataset(ctx, t) for t in tasks if t.corpus == corpus]
    if corpus == pretrain_corpus(ctx.cfg):
        datasets.append(pretrain_dataset(ctx))
    unreadable: dict[str, str] = {}
    for dataset in datasets:
        unreadable.update(dataset.unreadable())
    return sorted(unreadable.items())


def mixture_store(ctx: Context, corpus: str) -> FeatureStore:
    """Stage ``features``: the log-mel store of ``corpus`` (built or found), once per context."""
    return ctx.once(("mix", corpus), lambda: _mixture_store(ctx, corpus))


def mixture_store_root(ctx: Context, corpus: str) -> Path:
    """Where stage ``features`` keeps the store of ``corpus``, built or not: a folder named by
    the store's content key (the plan's features lock is named by it)."""
    cfg = ctx.cfg
    return mixture_root(cfg.cache_dir, corpus, cfg.frontend, _corpus_version(ctx, corpus))


def _corpus_version(ctx: Context, corpus: str) -> str:
    # The synthetic corpus's identity keys its own corpora only (task files, folders: none).
    return data_paths(ctx).corpus_version if corpus in BUILTIN_CORPORA else ""


def _mixture_store(ctx: Context, corpus: str) -> FeatureStore:
    cfg = ctx.cfg
    tasks = task_registry(ctx).values()
    items = corpus_items(ctx, tasks, corpus)
    unreadable = corpus_unreadable(ctx, tasks, corpus)
    return build_mixtures(
        items,
        cfg.cache_dir,
        corpus,
        cfg.frontend,
        corpus_version=_corpus_version(ctx, corpus),
        workers=cfg.data.num_workers,
        max_bad_fraction=cfg.data.max_bad_fraction,
        progress=ctx.progress,
        missing=[(clip_id, reason.replace("_", " ")) for clip_id, reason in unreadable],
    )


def pretrain_corpus(cfg: Config) -> str:
    """The corpus name of the pre-training data: ``mtat`` or one named after the folder or
    manifest (its feature store and separated sources are keyed by it)."""
    from tasks.files import audio_corpus

    d = cfg.data
    if d.pretrain_source == "mtat":
        return "mtat"
    if d.pretrain_source == "folder":
        # The name task files on the same folder get: one feature store serves both (clip
        # ids are the paths relative to the folder in both).
        return audio_corpus(Path(d.pretrain_root).expanduser().resolve())
    resolved = str(Path(d.pretrain_manifest).expanduser().resolve())
    slug = "".join(ch if ch.isalnum() else "_" for ch in Path(resolved).stem)[:24]
    return f"pretrain-manifest-{slug}-{stable_hash([resolved, d.pretrain_root], 8)}"


def pretrain_dataset(ctx: Context) -> Dataset:
    """The pre-training data (``data.pretrain_source``), loaded once per context: the MTAT
    filtered split (paper), a folder of audio or a manifest."""
    return ctx.once(("pretrain",), lambda: _pretrain_dataset(ctx))


def _pretrain_dataset(ctx: Context) -> Dataset:
    from benchmark.data.owndata import load_audio_folder, load_manifest
    from tasks import TASKS

    d = ctx.cfg.data
    if d.pretrain_source == "folder":
        return load_audio_folder(d.pretrain_root, d.valid_fraction)
    if d.pretrain_source == "manifest":
        return load_manifest(d.pretrain_manifest, d.pretrain_root or None, d.valid_fraction)
    return load_task_dataset(ctx, TASKS["mtat"])


def pretrain_data_note(ctx: Context) -> str:
    """What the pre-training read, in one line for its MLflow run and the report: clips per
    split and what was skipped."""
    ds = pretrain_dataset(ctx)
    counts = ds.counts()
    note = f"{pretrain_corpus(ctx.cfg)}: train {counts['train']}, valid {counts['valid']} files"
    if ds.skipped:
        note += "; skipped " + ", ".join(f"{n} ({why})" for why, n in sorted(ds.skipped.items()))
    return note


def pretrain_clips(ctx: Context) -> tuple[list, list]:
    """The pre-training clips and the validation clips of its checks."""
    ds = pretrain_dataset(ctx)
    return ds.split("train"), ds.split("valid")


# -- separation -------------------------------------------------------------------------


def separation_for(cfg: Config, separator: str) -> SeparationConfig:
    """The separation settings of a method's ``separator``: "config" (``cfg.separation``),
    "random_mask", "oracle" (the corpus's true stems) or "trained:<fraction>" (Open-Unmix
    trained here for that fraction of ``separation.train_steps``: the separator-quality
    study's lower budgets). Raises :class:`StageError` for anything else."""
    sep = cfg.separation
    if separator == "config":
        return sep
    if separator in ("random_mask", "oracle"):
        return replace(sep, separator=separator)
    if separator.startswith(TRAINED_SEPARATOR + ":"):
        try:
            fraction = float(separator.partition(":")[2])
        except ValueError:
            fraction = math.nan
        if not 0.0 < fraction <= 1.0:
            raise StageError(f"separator {separator!r}: the fraction must lie in (0, 1]")
        steps = max(1, round(fraction * sep.train_steps))
        return replace(sep, separator="umx", umx_model=TRAINED_SEPARATOR, train_steps=steps)
    raise StageError(
        f"unknown separator {separator!r} (config, random_mask, oracle or trained:<fraction>)"
    )


def trained_separator_dir(cfg: Config, paths: DataPaths, sep: SeparationConfig | None = None):
    """Where the separator trained on the synthetic corpus ``paths`` with ``sep``'s training
    settings (default ``cfg.separation``'s) lives."""
    s = to_dict(sep or cfg.separation)
    key = stable_hash(
        {k: v for k, v in s.items() if k.startswith("train_")}
        # the corpus's identity, not its folder: a moved runs folder keeps its separator
        | {"corpus": paths.corpus_version}
    )
    return cfg.cache_dir / "separators" / f"umx-{key}"


def train_separator_stage(ctx: Context, sep: SeparationConfig | None = None) -> Path:
    """Train Open-Unmix on the synthetic corpus's true stems, once per config (``sep``: other
    training settings than ``ctx.cfg.separation``'s, e.g. a shorter budget).

    Whatever the pre-training data, the stems come from the synthetic corpus of
    ``data.synth_size``/``data.synth_seed`` (generated if needed): real recordings have no true
    stems. The model then separates any audio, real included (``separation.umx_model=trained``).
    """
    from benchmark.data.datasets import load_mtat
    from benchmark.separation import train_separator

    cfg, tracker = ctx.cfg, ctx.tracker
    sep = sep or cfg.separation
    paths = ctx.once(("synthetic",), lambda: _synthetic_corpus(ctx))
    out = trained_separator_dir(cfg, paths, sep)
    key = f"train-separator:{out.name}"
    # Found or trained under its own lock: steps of several plans (separate, pretrain, quality)
    # may ask for it at once, and which sources it makes is known only once it exists.
    with ctx.hold("train-separator", key):
        trained = (out / "quality.json").is_file()  # the directory appears whole (atomic rename)
        existing = tracker.find(key) if tracker else None
        if trained and (tracker is None or (existing and existing.info.status == "FINISHED")):
            return out
        run = (
            tracker.run(
                key,
                "train-separator",
                "train-separator",
                {"train_steps": sep.train_steps},
                supersede=True,
            )
            if tracker
            else nullcontext()
        )
        with run as handle:
            if not trained:  # else a killed process trained it and did not close its run
                synth = load_mtat(paths.mtat_root, filtered=True, split_dir=paths.mtat_split_dir)
                train, valid = synth.split("train"), synth.split("valid")
                train_separator(
                    paths.stems_root,
                    [c.clip_id for c in train],
                    [c.clip_id for c in valid],
                    out,
                    sep,
                    progress=ctx.progress,
                    num_threads=cfg.compute.torch_threads,
                )
            if handle:
                handle.tag("model_dir", out)
                handle.artifact_dict(read_json(out / "quality.json"), "quality.json")
                if (out / TRAINING_TIME).is_file():  # the training's time, also when resumed
                    handle.metrics({"wall_s": read_json(out / TRAINING_TIME)["train_time_s"]})
    return out


def _trained_dir_if_any(ctx: Context, sep: SeparationConfig | None = None) -> Path | None:
    """The trained separator's folder without training it (None when it is not there)."""
    out = trained_separator_dir(ctx.cfg, synthetic_layout(ctx.cfg), sep)
    return out if (out / "quality.json").is_file() else None


def resolve_separation(ctx: Context, separator: str):
    """The SeparationConfig actually used for a method's ``separator`` (:func:`separation_for`)
    and what identifies its weights (trains a ``trained`` separator first when it is not
    there yet)."""
    sep = separation_for(ctx.cfg, separator)
    if sep.separator == "random_mask":
        return sep, "random_mask"
    if sep.separator == "umx" and sep.umx_model == TRAINED_SEPARATOR:
        model_dir = train_separator_stage(ctx, sep)
        return replace(sep, umx_model=str(model_dir)), model_identity(model_dir)
    if sep.separator == "umx" and Path(sep.umx_model).expanduser().is_dir():
        model_dir = Path(sep.umx_model).expanduser()
        return replace(sep, umx_model=str(model_dir)), model_identity(model_dir)
    return sep, sep.umx_model if sep.separator == "umx" else sep.separator


def separator_quality(ctx: Context, separator: str) -> dict | None:
    """Measured quality of a method's ``separator`` on the validation clips' true stems, from
    the ``quality.json`` of a separator trained here (which also scores random masks on the
    same clips): that separator's entry (``mean_si_sdr_db``: source -> dB, ...);
    ``{"oracle": True}`` for the true stems; None when nothing here measured it (downloaded
    weights, real data)."""
    sep = separation_for(ctx.cfg, separator)
    if sep.separator == "oracle":
        return {"oracle": True}
    if sep.separator == "umx" and sep.umx_model == TRAINED_SEPARATOR:
        return read_json(train_separator_stage(ctx, sep) / "quality.json")["umx"]
    if sep.separator == "random_mask" and ctx.cfg.separation.umx_model == TRAINED_SEPARATOR:
        # Scored beside the profile's trained separator; never trained for this alone.
        found = _trained_dir_if_any(ctx)
        return read_json(found / "quality.json")["random_mask"] if found is not None else None
    return None


def sources_ready(ctx: Context, separator: str) -> bool:
    """Whether stage ``separate`` has built the sources for ``separator`` (see
    :func:`separation_for`) under this config (without building or training anything)."""
    cfg = ctx.cfg
    sep = separation_for(cfg, separator)
    if sep.separator == "umx" and sep.umx_model == TRAINED_SEPARATOR:
        if _trained_dir_if_any(ctx, sep) is None:
            return False
    return (source_store_root(ctx, separator) / "manifest.json").is_file()


def source_store_root(ctx: Context, separator: str) -> Path:
    """Where stage ``separate`` keeps the sources for ``separator``, built or not: a folder
    named by their content key, which holds the separator's weights (one trained here is
    trained first)."""
    cfg = ctx.cfg
    sep_cfg, identity = resolve_separation(ctx, separator)
    return sources_root(
        cfg.cache_dir, pretrain_corpus(cfg), cfg.frontend, sep_cfg, identity, _pretrain_version(ctx)
    )


def sources_run_key(ctx: Context, separator: str) -> str:
    """The ``bench.key`` of the MLflow record of the sources for ``separator`` (the plan's
    separate lock is named by it)."""
    return f"separate:{source_store_root(ctx, separator).name}"


def _pretrain_version(ctx: Context) -> str:
    """The corpus version in the pre-training data's keys (synthetic corpus only)."""
    return data_paths(ctx).corpus_version if pretrain_corpus(ctx.cfg) == "mtat" else ""


def _stems_root(ctx: Context) -> Path | None:
    """The true stems of the pre-training clips (the synthetic MTAT corpus only)."""
    return data_paths(ctx).stems_root if pretrain_corpus(ctx.cfg) == "mtat" else None


def separate_command(cfg: Config, separator: str) -> str:
    """The command that builds the sources a method needs."""
    extra = f" --separator {separator}" if separator != "config" else ""
    return f"python -m benchmark separate --profile {cfg.profile}{extra}"


def source_store(ctx: Context, separator: str) -> FeatureStore:
    """Stage ``separate``: per-source log-mel + silence flags of the pre-training clips, for
    ``separator`` "config" (``separation.separator``) or "random_mask"; once per context."""
    return ctx.once(("src", separator), lambda: _source_store(ctx, separator))


def activity_warnings(activity: dict[str, dict[str, int]]) -> list[str]:
    """One line per source active in over 95% or under 5% of the excerpts
    (:data:`reports.figures.ACTIVITY_BOUNDS`): there the separator hears the source
    everywhere or nowhere, and its silence flags carry no information."""
    from reports.figures import ACTIVITY_BOUNDS

    low, high = ACTIVITY_BOUNDS
    out = []
    for source, row in activity.items():
        share = row["active"] / row["total"] if row["total"] else 0.0
        if share > high or share < low:
            out.append(
                f"{source} is active in {row['active']} of {row['total']} excerpts ({share:.0%}): "
                "its silence flags say little about this music (a separator trained on other "
                "data, or music without/with this source throughout); MSA's silent batches "
                "and its centroid loss then rest on them"
            )
    return out


def activity_table(activity: dict[str, dict[str, int]]) -> list[str]:
    """The source-activity table as text lines."""
    lines = [f"{'source':8s} {'active':>7s} {'total':>7s} {'share':>6s}"]
    for source, row in activity.items():
        share = row["active"] / row["total"] if row["total"] else 0.0
        lines.append(f"{source:8s} {row['active']:7d} {row['total']:7d} {share:6.0%}")
    return lines


def _source_store(ctx: Context, separator: str) -> FeatureStore:
    cfg, tracker = ctx.cfg, ctx.tracker
    sep_cfg, identity = resolve_separation(ctx, separator)
    corpus = pretrain_corpus(cfg)
    stems = _stems_root(ctx)
    if sep_cfg.separator == "oracle" and stems is None:
        raise StageError(
            "separation.separator=oracle needs true stems, which only the synthetic corpus has; "
            "use separation.separator=umx (separation.umx_model=trained, umxhq or a folder)"
        )
    train, valid = pretrain_clips(ctx)
    items = [AudioItem(c.clip_id, c.path) for c in train + valid]
    store = build_sources(
        items,
        cfg.cache_dir,
        corpus,
        cfg.frontend,
        sep_cfg,
        stems_root=stems,
        separator_identity=identity,
        corpus_version=_pretrain_version(ctx),
        max_bad_fraction=cfg.data.max_bad_fraction,
        progress=ctx.progress,
        num_threads=cfg.compute.torch_threads,
    )
    activity = source_activity(store)
    warnings = activity_warnings(activity)
    log.info(
        "source activity (%s separator, %s):\n%s",
        sep_cfg.separator,
        corpus,
        "\n".join(activity_table(activity)),
    )
    for line in warnings:
        log.warning("source activity: %s", line)
    if tracker is not None:
        key = sources_run_key(ctx, separator)
        if not tracker.is_done(key):
            with tracker.run(
                key,
                "separate",
                f"separate-{sep_cfg.separator}",
                tags={"separator": sep_cfg.separator, "spec": separator, "corpus": corpus},
            ) as h:
                h.artifact_dict(
                    {"activity": activity, "warnings": warnings, "report": store.report()},
                    "activity.json",
                )
                for src, row in activity.items():
                    h.metrics({f"active_{src}": row["active"], f"total_{src}": row["total"]})
    return store


# -- pretraining ------------------------------------------------------------------------


def pair_corpora(ctx: Context, method) -> tuple[PairCorpus, PairCorpus]:
    """The training and validation pair corpora of ``method``."""
    cfg = ctx.cfg
    mix = mixture_store(ctx, pretrain_corpus(cfg))
    sources = source_store(ctx, method.separator) if method.sources else None
    train, valid = pretrain_clips(ctx)
    f = cfg.frontend

    def make(clips):
        ids = [c.clip_id for c in clips]
        return PairCorpus(
            mix, f.excerpt_frames, f.crop_frames, cfg.pretrain.silent_value, sources, ids
        )

    return make(train), make(valid)


def pretrain_data_identity(ctx: Context, method) -> str:
    """What identifies the data ``method`` pre-trains on (:func:`pair_corpora`), for its runs'
    content key: the folders of its stores and, for a folder or manifest, which files were
    read."""
    cfg = ctx.cfg
    identity = mixture_store(ctx, pretrain_corpus(cfg)).root.name
    if method.sources:
        identity += "|" + source_store(ctx, method.separator).root.name
    if cfg.data.pretrain_source != "mtat":
        # Files come and go in a folder or manifest (MTAT's lists are fixed): which files
        # were read is part of what the weights depend on.
        train, valid = pretrain_clips(ctx)
        identity += "|" + stable_hash(sorted(c.clip_id for c in train + valid))
    return identity


def pretrain_run_key(ctx: Context, method_name: str, seed: int) -> str:
    """The content key of the run :func:`run_pretrain` finds or trains: its MLflow run's
    ``bench.key``, part of its folder's name, and the name of the plan's pretrain lock.
    Raises ``ValueError`` for an unknown method."""
    from benchmark.pretrain.loop import pretrain_key
    from methods import get_method

    method = get_method(method_name)
    if getattr(method, "external", False):
        from benchmark.evaluation.hear import identity_key, module_identity

        identity = module_identity(method.module, method.model_file)
        return stable_hash({"hear": identity_key(identity), "encoder": method.params()})
    return pretrain_key(ctx.cfg, method, seed, pretrain_data_identity(ctx, method))


def run_pretrain(
    ctx: Context,
    method_name: str,
    seed: int,
    *,
    build_sources: bool = True,
    resume_only: bool = False,
    find_only: bool = False,
) -> PretrainedModel:
    """Stage ``pretrain`` for one method and seed (found finished, resumed, or trained).

    ``build_sources=False``: a method that pairs with sources needs stage ``separate`` to have
    run, else StageError naming the command (the plan orders the stages itself).
    ``resume_only``: StageError unless an unfinished run of this config exists to resume.
    ``find_only``: return a finished run of this config, StageError naming the command
    otherwise (nothing is trained; a plan step after ``pretrain`` never trains).
    Raises ``ValueError`` for an unknown method.
    """
    from benchmark.pretrain.loop import (
        is_complete,
        materialize_untrained,
        pretext_collapsed,
        pretrain,
    )
    from methods import get_method

    cfg = ctx.cfg

    method = get_method(method_name)
    if getattr(method, "external", False):
        key = pretrain_run_key(ctx, method_name, seed)
        return PretrainedModel(
            method_name, seed, key, None, None, True, (method.module, method.model_file)
        )
    # The seed the run trains with: a method's copy under another name (the negative control)
    # adds an offset, so that its runs are independent of the original's.
    train_seed = seed + getattr(method, "seed_offset", 0)
    tracker = ctx.require_tracker()
    if method.sources and not build_sources and not sources_ready(ctx, method.separator):
        raise StageError(
            f"{method_name} pairs mixtures with separated sources ({method.separator} "
            f"separator), which are not built yet: run `{separate_command(cfg, method.separator)}`"
        )
    corpus, valid = pair_corpora(ctx, method)
    key = pretrain_run_key(ctx, method_name, seed)
    run_dir = cfg.workspace_dir / "pretrain" / f"{method_name}-s{seed}-{key}"
    existing = tracker.find(key)
    if is_complete(run_dir, key) and existing is not None and existing.info.status == "FINISHED":
        return PretrainedModel(
            method_name, seed, key, run_dir / "final.pt", existing.info.run_id, cached=True
        )
    recorded = existing.data.tags.get("checkpoint") if existing is not None else None
    if (
        existing is not None
        and existing.info.status == "FINISHED"
        and recorded
        and Path(recorded) != (run_dir / "final.pt").resolve()
    ):
        # A tracking server outlives runs dirs: its run was trained in another runs dir
        # (a FINISHED run whose weights are gone from this one is redone, superseding it).
        raise StageError(
            f"MLflow run {existing.info.run_id} ({tracker.uri}) holds a finished pre-training "
            f"of {method_name} seed {seed} whose weights are in {Path(recorded).parent}, not in "
            f"{run_dir}: point paths.runs_dir at the runs dir it was trained in, or delete that "
            "MLflow run"
        )
    if find_only:
        raise StageError(
            f"no finished pre-training of {method_name} seed {seed} under this configuration: "
            f"run `python -m benchmark pretrain --profile {cfg.profile} --method {method_name}"
            f" --seed {seed}` (with the same overrides) first"
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
        "pretrain_data": pretrain_data_note(ctx),
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
