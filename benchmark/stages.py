"""The pipeline's stages, each content-keyed on disk and recorded in MLflow.

data -> features -> separate -> pretrain -> embed -> tune / probe -> report

Every function here is safe to call again: finished work is found by its key (files on disk,
and a FINISHED MLflow run carrying the same ``bench.key``) and is not redone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from benchmark.config import Config, section_hash, stable_hash, to_dict
from benchmark.datasets import Dataset
from benchmark.features import AudioItem, build_mixtures, build_sources, source_activity
from benchmark.io import atomic_save_npy, atomic_write_json, pick_device, read_json
from benchmark.pairs import PairCorpus
from benchmark.store import FeatureStore
from benchmark.tracking import Tracker, git_commit

log = logging.getLogger(__name__)

TRAINED_SEPARATOR = "trained"  # separation.umx_model value: the model `train-separator` made


class StageError(RuntimeError):
    """A stage that cannot run as configured; the message says what to do."""


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


def data_paths(cfg: Config, progress: bool = True) -> DataPaths:
    """Where the datasets are; generates the synthetic corpus once when it is the source."""
    return _memo(("paths", cfg.data, cfg.cache_dir), lambda: _data_paths(cfg))


def _data_paths(cfg: Config) -> DataPaths:
    d = cfg.data
    if d.source == "synthetic":
        from benchmark.synth import GENERATOR_VERSION, generate

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


_MEMO: dict = {}


def _memo(key, fn):
    """Per-process memo of loaded datasets and opened stores (the plan asks many times)."""
    if key not in _MEMO:
        _MEMO[key] = fn()
    return _MEMO[key]


def load_task_dataset(task, paths: DataPaths) -> Dataset:
    return _memo(("dataset", task.name, paths), lambda: _load_task_dataset(task, paths))


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


def corpus_items(tasks, paths: DataPaths, corpus: str) -> list[AudioItem]:
    """The union of the clips of every task reading ``corpus`` (one feature store each)."""
    items: dict[str, AudioItem] = {}
    for task in tasks:
        if task.corpus == corpus:
            for clip in load_task_dataset(task, paths).clips:
                items.setdefault(clip.clip_id, AudioItem(clip.clip_id, clip.path))
    return list(items.values())


def mixture_store(
    cfg: Config, paths: DataPaths, corpus: str, progress: bool = True
) -> FeatureStore:
    key = ("mix", corpus, paths, cfg.frontend, cfg.data.max_bad_fraction)
    return _memo(key, lambda: _mixture_store(cfg, paths, corpus, progress))


def _mixture_store(cfg: Config, paths: DataPaths, corpus: str, progress: bool) -> FeatureStore:
    from tasks import TASKS

    items = corpus_items(TASKS.values(), paths, corpus)
    return build_mixtures(
        items,
        cfg.cache_dir,
        corpus,
        cfg.frontend,
        corpus_version=paths.corpus_version,
        workers=cfg.data.num_workers,
        max_bad_fraction=cfg.data.max_bad_fraction,
        progress=progress,
    )


def pretrain_clips(paths: DataPaths) -> tuple[list, list]:
    """The pre-training data (paper): MTAT filtered train split, its valid split for checks."""
    from tasks import TASKS

    ds = load_task_dataset(TASKS["mtat"], paths)
    return ds.split("train"), ds.split("valid")


# -- separation -------------------------------------------------------------------------


def _dir_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.glob("*")):
        if p.is_file():
            h.update(p.name.encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def trained_separator_dir(cfg: Config, paths: DataPaths) -> Path:
    s = to_dict(cfg.separation)
    key = stable_hash(
        {k: v for k, v in s.items() if k.startswith("train_")}
        | {"corpus": paths.corpus_version, "stems": str(paths.stems_root)}
    )
    return cfg.cache_dir / "separators" / f"umx-{key}"


def train_separator_stage(
    cfg: Config, paths: DataPaths, tracker: Tracker | None, progress=True
) -> Path:
    """Train Open-Unmix on the corpus's true stems (synthetic corpus), once per config."""
    from benchmark.separation import train_separator

    if paths.stems_root is None or not paths.stems_root.is_dir():
        raise StageError("train-separator needs a corpus with true stems (data.source=synthetic)")
    out = trained_separator_dir(cfg, paths)
    if (out / "quality.json").is_file():
        return out
    train, valid = pretrain_clips(paths)
    t0 = time.perf_counter()
    key = f"train-separator:{out.name}"
    run = tracker.run(key, "train-separator", "train-separator") if tracker else _nullcontext()
    with run as handle:
        train_separator(
            paths.stems_root,
            [c.clip_id for c in train],
            [c.clip_id for c in valid],
            out,
            cfg.separation,
            progress=progress,
        )
        if handle:
            handle.tag("model_dir", out)
            quality = read_json(out / "quality.json")
            handle.artifact_dict(quality, "quality.json")
            handle.metrics({"wall_s": time.perf_counter() - t0})
    return out


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def resolve_separation(cfg: Config, paths: DataPaths, separator: str, tracker=None, progress=True):
    """The SeparationConfig actually used and what identifies its weights."""
    sep = cfg.separation
    if separator == "random_mask":
        return replace(sep, separator="random_mask"), "random_mask"
    if sep.separator == "umx" and sep.umx_model == TRAINED_SEPARATOR:
        model_dir = train_separator_stage(cfg, paths, tracker, progress)
        return replace(sep, umx_model=str(model_dir)), _dir_digest(model_dir)
    if sep.separator == "umx" and Path(sep.umx_model).is_dir():
        return sep, _dir_digest(Path(sep.umx_model))
    return sep, sep.umx_model if sep.separator == "umx" else sep.separator


def source_store(
    cfg: Config, paths: DataPaths, separator: str, tracker: Tracker | None = None, progress=True
) -> FeatureStore:
    """Stage ``separate``: per-source log-mel + silence flags of the pre-training clips."""
    key = ("src", separator, paths, cfg.frontend, cfg.separation, cfg.data.max_bad_fraction)
    return _memo(key, lambda: _source_store(cfg, paths, separator, tracker, progress))


def _source_store(cfg, paths, separator, tracker, progress) -> FeatureStore:
    sep_cfg, identity = resolve_separation(cfg, paths, separator, tracker, progress)
    train, valid = pretrain_clips(paths)
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
        progress=progress,
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


def silence_value(cfg: Config) -> float:
    """Log-mel of an all-zero waveform: what a silent source crop holds."""
    return float(np.log(cfg.frontend.log_offset))


def pair_corpora(
    cfg, paths, method, tracker=None, progress=True
) -> tuple[PairCorpus, PairCorpus, str]:
    mix = mixture_store(cfg, paths, "mtat", progress)
    sources = None
    if method.sources:
        sources = source_store(cfg, paths, method.separator, tracker, progress)
    train, valid = pretrain_clips(paths)
    f = cfg.frontend

    def make(clips):
        ids = [c.clip_id for c in clips]
        return PairCorpus(mix, f.excerpt_frames, f.crop_frames, silence_value(cfg), sources, ids)

    identity = mix.root.name + ("|" + sources.root.name if sources is not None else "")
    return make(train), make(valid), identity


@dataclass
class PretrainedModel:
    method: str
    seed: int
    key: str
    final_path: Path | None  # None for random_init
    run_id: str | None
    cached: bool = False  # found finished; nothing was trained


def run_pretrain(
    cfg: Config, method_name: str, seed: int, tracker: Tracker, progress=True
) -> PretrainedModel:
    from benchmark.train import is_complete, pretrain, pretrain_key
    from methods import get_method

    method = get_method(method_name)
    if not method.pretrained:
        key = stable_hash(
            {"method": method.params(), "encoder": to_dict(cfg.encoder), "seed": seed}
        )
        return PretrainedModel(method_name, seed, key, None, None, cached=True)
    paths = data_paths(cfg, progress)
    corpus, valid, identity = pair_corpora(cfg, paths, method, tracker, progress)
    key = pretrain_key(cfg, method, seed, identity)
    run_dir = cfg.profile_dir / "pretrain" / f"{method_name}-s{seed}-{key}"
    existing = tracker.find(key)
    if is_complete(run_dir, key) and existing is not None and existing.info.status == "FINISHED":
        return PretrainedModel(
            method_name, seed, key, run_dir / "final.pt", existing.info.run_id, cached=True
        )
    params = {"config": cfg.to_dict(), "method": method.params(), "seed": seed}
    tags = {
        "method": method_name,
        "seed": seed,
        "config_hash": cfg.hash(),
        "git_commit": git_commit(),
    }
    with tracker.run(
        key, "pretrain", f"pretrain-{method_name}-s{seed}", tags=tags, params=params
    ) as h:
        result = pretrain(
            cfg,
            method,
            corpus,
            valid,
            run_dir,
            key,
            seed,
            on_metrics=lambda m, step: h.metrics(m, step),
            progress=progress,
        )
        h.tag("checkpoint", result.final_path.resolve())
        h.artifact(run_dir / "config.json")
        h.metrics({"wall_s": result.wall_s, "resumed_from_step": result.resumed_from})
        run_id = h.run_id
    return PretrainedModel(method_name, seed, key, result.final_path, run_id)


# -- embedding --------------------------------------------------------------------------


def window_starts(num_frames: int, crop: int, hop: int) -> np.ndarray:
    """Starts of the crop-long windows of a clip every ``hop`` frames (at least one window)."""
    return np.arange(0, max(num_frames - crop, 0) + 1, hop)


def _encoder_for(cfg: Config, model: PretrainedModel, store: FeatureStore, train_rows, device):
    from benchmark.encoder import ContrastiveModel, reestimate_batchnorm
    from benchmark.train import build_model, load_encoder

    if model.final_path is not None:
        return load_encoder(cfg.encoder, model.final_path, device)
    net: ContrastiveModel = build_model(cfg.encoder, model.seed, device)
    # random_init floor: BatchNorm statistics from the task's training windows (REFERENCE 9).
    rng = np.random.default_rng(model.seed)
    crop = cfg.frontend.crop_frames

    def sample_batches(n_batches=20, size=64):
        for _ in range(n_batches):
            rows = rng.choice(train_rows, size=size)
            starts = [int(rng.integers(0, store.lengths[r] - crop + 1)) for r in rows]
            yield torch.from_numpy(store.crops(rows, np.asarray(starts), crop))

    reestimate_batchnorm(net.encoder, sample_batches(), device)
    return net.eval()


def _embed_store(
    cfg, model, store, hop, bn_rows, bn_key, progress
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of every ``hop``-spaced window of every clip of ``store`` (cached on disk).

    Shared by every task on the same corpus (MTAT and MTAT* embed once). Returns
    ``(embeddings (W, D) float16 memory map, offsets (rows + 1,))``: the windows of store row
    ``r`` are ``embeddings[offsets[r]:offsets[r + 1]]``.
    """
    from tqdm import tqdm

    crop = cfg.frontend.crop_frames
    key = stable_hash(
        {"model": model.key, "store": store.root.name, "hop": hop, "crop": crop, "bn": bn_key}
    )
    out = (
        cfg.cache_dir
        / "embeddings"
        / f"{store.root.name[:40]}-{model.method}-s{model.seed}-h{hop}-{key}"
    )
    if not (out / "done.json").is_file():
        counts = [len(window_starts(int(n), crop, hop)) for n in store.lengths]
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        windows = [
            (r, st) for r, n in enumerate(store.lengths) for st in window_starts(int(n), crop, hop)
        ]
        device = pick_device()
        net = _encoder_for(cfg, model, store, bn_rows, device)
        feats = np.empty((len(windows), net.feature_dim), dtype=np.float16)
        bs = cfg.probe.embed_batch_size
        with torch.inference_mode():
            for i in tqdm(
                range(0, len(windows), bs),
                desc=f"embed {store.root.name[:24]} ({model.method})",
                disable=not progress,
            ):
                chunk = windows[i : i + bs]
                x = store.crops(
                    np.array([r for r, _ in chunk]), np.array([st for _, st in chunk]), crop
                )
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    feats[i : i + len(chunk)] = (
                        net.features(torch.from_numpy(x).to(device)).float().cpu().numpy()
                    )
        atomic_save_npy(out / "embeddings.npy", feats)
        atomic_save_npy(out / "offsets.npy", offsets)
        atomic_write_json(out / "done.json", {"key": key, "windows": len(windows)})
    return np.load(out / "embeddings.npy", mmap_mode="r"), np.load(out / "offsets.npy")


def embed(
    cfg: Config, model: PretrainedModel, task, dataset: Dataset, store: FeatureStore, progress=True
) -> dict:
    """Window embeddings of the splits of ``dataset``: split -> (WindowSet, clips), plus "key".

    Training windows every ``probe.train_hop_frames`` frames (crop diversity), validation and
    test windows non-overlapping (REFERENCE.md section 5). The frozen encoder runs once per
    (checkpoint, corpus store, hop); tasks select their clips from that cache.
    """
    from benchmark.probe import WindowSet

    crop = cfg.frontend.crop_frames
    hops = {"train": cfg.probe.train_hop_frames, "valid": crop, "test": crop}
    splits = {
        s: [c for c in dataset.split(s) if store.has(c.clip_id)] for s in ("train", "valid", "test")
    }
    missing = {s: len(dataset.split(s)) - len(v) for s, v in splits.items()}
    if any(missing.values()):
        log.warning(
            "%s: clips without features (skipped at the feature stage): %s", task.name, missing
        )
    bn_rows = np.array([store.index(c.clip_id) for c in splits["train"]])
    # random_init re-estimates BatchNorm on this task's training windows (REFERENCE 9).
    bn_key = (
        stable_hash(sorted(c.clip_id for c in splits["train"])) if model.final_path is None else ""
    )
    result: dict = {}
    for split, clips in splits.items():
        emb, offsets = _embed_store(cfg, model, store, hops[split], bn_rows, bn_key, progress)
        rows = [store.index(c.clip_id) for c in clips]
        idx = np.concatenate([np.arange(offsets[r], offsets[r + 1]) for r in rows])
        clip_index = np.concatenate(
            [np.full(offsets[r + 1] - offsets[r], i) for i, r in enumerate(rows)]
        )
        result[split] = (
            WindowSet(np.asarray(emb[idx]), clip_index.astype(np.int64), dataset.targets(clips)),
            clips,
        )
    result["key"] = stable_hash(
        {
            "model": model.key,
            "store": store.root.name,
            "hops": hops,
            "bn": bn_key,
            "task": task.name,
            "clips": stable_hash(sorted(c.clip_id for c in dataset.clips)),
        }
    )
    return result


# -- probing ----------------------------------------------------------------------------


def _score_fn(task, dataset):
    from benchmark.metrics import primary_score_fn

    return primary_score_fn(dataset.vocabulary, dataset.multilabel)


def probe_params(cfg: Config, task, method_name: str, emb_key: str, mode: str | None = None):
    from benchmark.probe import ProbeParams

    mode = mode or cfg.probe.params
    if mode == "default":
        return ProbeParams(lr=task.lr)
    if mode == "tuned":
        path = tuned_path(cfg, method_name, task.name, emb_key)
        if not path.is_file():
            raise StageError(
                f"no tuned parameters for {method_name} on {task.name}: run `tune` first ({path})"
            )
        best = read_json(path)["best_params"]
        return ProbeParams(**best)
    raise StageError(f"probe.params must be 'default' or 'tuned', got {mode!r}")


def tuned_path(cfg, method_name, task_name, emb_key) -> Path:
    return cfg.profile_dir / "tuned" / f"{method_name}-{task_name}-{emb_key}.json"


def run_tune(cfg: Config, model: PretrainedModel, task, tracker: Tracker, progress=True) -> dict:
    """Equal-budget Optuna search of the probe's hyper-parameters on the validation split."""
    from benchmark.tuning import tune_probe

    paths = data_paths(cfg, progress)
    dataset = load_task_dataset(task, paths)
    store = mixture_store(cfg, paths, task.corpus, progress)
    emb = embed(cfg, model, task, dataset, store, progress)
    path = tuned_path(cfg, model.method, task.name, emb["key"])
    if path.is_file():
        return {**read_json(path), "cached": True}
    t = cfg.tune
    key = stable_hash(
        {"tune": to_dict(t), "emb": emb["key"], "task": task.name, "probe": to_dict(cfg.probe)}
    )
    study = f"{cfg.profile}-{model.method}-s{model.seed}-{task.name}-{key}"
    with tracker.run(
        f"tune:{key}",
        "tune",
        f"tune-{model.method}-{task.name}",
        tags={
            "method": model.method,
            "task": task.name,
            "study": study,
            "pretrain_seed": model.seed,
            "config_hash": cfg.hash(),
        },
        params={"tune": to_dict(t)},
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
            batch_size=cfg.probe.batch_size,
            patience=cfg.probe.patience,
            score_fn=_score_fn(task, dataset),
            baseline_params=probe_params(cfg, task, model.method, emb["key"], "default"),
            on_trial=lambda tr: h.metrics(
                {"trial_value": tr["value"] if tr["value"] is not None else float("nan")},
                tr["number"],
            ),
        )
        out = {
            "best_params": result.best_params.__dict__,
            "best_value": result.best_value,
            "trials": result.trials,
            "study": study,
        }
        h.artifact_dict(out, "tuning.json")
        h.metrics({"best_valid": result.best_value})
    atomic_write_json(path, out)
    return out


def run_probe(
    cfg: Config,
    model: PretrainedModel,
    task,
    probe_seed: int,
    tracker: Tracker,
    progress=True,
    force=False,
    params_mode: str | None = None,
) -> str:
    """Train and test one probe seed; returns 'done' (already there) or 'ran'."""
    from benchmark.metrics import score
    from benchmark.probe import predict_clips, train_probe

    paths = data_paths(cfg, progress)
    dataset = load_task_dataset(task, paths)
    store = mixture_store(cfg, paths, task.corpus, progress)
    emb = embed(cfg, model, task, dataset, store, progress)
    params = probe_params(cfg, task, model.method, emb["key"], params_mode)
    p = cfg.probe
    key = stable_hash(
        {
            "emb": emb["key"],
            "task": task.name,
            "seed": probe_seed,
            "params": params.__dict__,
            "batch_size": p.batch_size,
            "max_epochs": p.max_epochs,
            "patience": p.patience,
            "windows_per_clip": p.windows_per_clip,
        }
    )
    if tracker.is_done(key) and not force:
        return "done"
    train, valid, test = emb["train"][0], emb["valid"][0], emb["test"][0]
    spec = task.probe_spec(len(dataset.vocabulary))
    seed_label = model.seed * 1000 + probe_seed
    tags = {
        "method": model.method,
        "task": task.name,
        "seed": seed_label,
        "probe_seed": probe_seed,
        "pretrain_seed": model.seed,
        "pretrain_run_id": model.run_id or "",
        "config_hash": cfg.hash(),
        "git_commit": git_commit(),
    }
    if force and tracker.is_done(key):
        key = f"{key}:forced:{time.time_ns()}"
    with tracker.run(
        key,
        "probe",
        f"probe-{model.method}-{task.name}-s{seed_label}",
        tags=tags,
        params={"probe": to_dict(p), "params": params.__dict__, "spec": spec.__dict__},
    ) as h:
        t0 = time.perf_counter()
        result = train_probe(
            spec,
            params,
            train,
            valid,
            seed=probe_seed,
            batch_size=p.batch_size,
            max_epochs=p.max_epochs,
            patience=p.patience,
            windows_per_clip=max(1, p.windows_per_clip),
            score_fn=_score_fn(task, dataset),
        )
        scores = predict_clips(result.model, test)
        targets = test.targets
        metrics = score(targets, scores, list(dataset.vocabulary), dataset.multilabel)
        flat = {m: metrics[m] for m in task.metrics}
        flat.update(
            {
                "best_epoch": result.best_epoch,
                "valid_primary": result.best_valid_score,
                "train_s": time.perf_counter() - t0,
                "num_test_clips": len(targets),
            }
        )
        h.metrics(flat)
        h.artifact_dict({k: v for k, v in metrics.items() if k not in task.metrics}, "details.json")
        tmp = cfg.profile_dir / "tmp" / f"{h.run_id}"
        tmp.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            tmp / "predictions.npz",
            clip_ids=np.array([c.clip_id for c in emb["test"][1]]),
            targets=targets,
            scores=scores.astype(np.float32),
            vocabulary=np.array(dataset.vocabulary),
        )
        h.artifact(tmp / "predictions.npz")
        shutil.rmtree(tmp, ignore_errors=True)
    return "ran"


def feature_report(store: FeatureStore) -> dict:
    return json.loads(json.dumps(store.report()))


def section_key(cfg: Config, *names: str) -> str:
    return section_hash(*(getattr(cfg, n) for n in names))
