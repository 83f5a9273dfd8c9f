"""Stages ``embed``, ``tune`` and ``probe``: the frozen encoder's evaluation on the tasks.

embed (every window of a corpus, once per checkpoint and hop, cached) -> tune (Optuna, equal
budget per method) -> probe (one MLflow run per method x task x seed, with test predictions).
Like every stage, each function here is safe to call again: finished work is found by its key.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from benchmark.config import Config, stable_hash, to_dict
from benchmark.datasets import Dataset
from benchmark.io import atomic_save_npy, atomic_write_json, pick_device, read_json
from benchmark.stages import (
    Outcome,
    PretrainedModel,
    StageError,
    data_paths,
    load_task_dataset,
    mixture_store,
)
from benchmark.store import FeatureStore
from benchmark.tracking import Tracker, git_commit

log = logging.getLogger(__name__)


# -- embedding --------------------------------------------------------------------------


def window_starts(num_frames: int, crop: int, hop: int) -> np.ndarray:
    """Starts of the crop-long windows of a clip every ``hop`` frames (at least one window)."""
    return np.arange(0, max(num_frames - crop, 0) + 1, hop)


def weights_key(model: PretrainedModel) -> str:
    """What identifies the encoder's weights: the pre-training key and, for a trained model,
    the digest of its checkpoint file (a retrained checkpoint, e.g. after a non-deterministic
    GPU run, must not reuse the embeddings of the old one)."""
    if model.final_path is None:
        return model.key
    return stable_hash({"key": model.key, "weights": _file_digest(Path(model.final_path))})


_DIGESTS: dict = {}


def _file_digest(path: Path) -> str:
    """SHA-256 of a file, memoised per (path, size, mtime) within the process."""
    import hashlib

    st = path.stat()
    memo = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if memo not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _DIGESTS[memo] = h.hexdigest()[:16]
    return _DIGESTS[memo]


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
        {
            "model": weights_key(model),
            "store": store.root.name,
            "hop": hop,
            "crop": crop,
            "bn": bn_key,
        }
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
            "model": weights_key(model),
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

    return primary_score_fn(dataset.vocabulary, dataset.multilabel, task.primary)


def probe_params(cfg: Config, task, method_name: str, emb_key: str, mode: str | None = None):
    from benchmark.probe import ProbeParams

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
    (which carry ``probe.train_hop_frames``)."""
    return stable_hash(
        {"tune": to_dict(cfg.tune), "emb": emb_key, "task": task_name, "probe": _training(cfg)}
    )


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
    return cfg.profile_dir / "tuned" / f"{method_name}-{task_name}-{key}.json"


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
    key = tune_key(cfg, task.name, emb["key"])
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
            "results_hash": cfg.results_hash(),
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
            **_training(cfg),
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
) -> Outcome:
    """Train and test one probe seed; status 'done' (already there) or 'ran', and its run."""
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
            "max_epochs": p.max_epochs,
            **_training(cfg),
        }
    )
    previous = tracker.find(key)
    if previous is not None and previous.info.status == "FINISHED" and not force:
        return Outcome("done", previous.info.run_id)
    mode = params_mode or cfg.probe.params
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
        "params_mode": mode,
        "config_hash": cfg.hash(),
        "results_hash": cfg.results_hash(),
        "git_commit": git_commit(),
    }
    if force and previous is not None and previous.info.status == "FINISHED":
        key = f"{key}:forced:{time.time_ns()}"
        tags["supersedes"] = previous.info.run_id
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
            scores=scores,
            vocabulary=np.array(dataset.vocabulary),
        )
        h.artifact(tmp / "predictions.npz")
        shutil.rmtree(tmp, ignore_errors=True)
        run_id = h.run_id
    return Outcome("ran", run_id)
