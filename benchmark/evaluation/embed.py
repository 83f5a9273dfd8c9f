"""Stage ``embed``: the frozen encoder's embeddings of every window of a corpus, cached on disk.

The encoder runs once per (checkpoint content, corpus store, hop); every task on that corpus
selects its clips from the cache (MTAT and MTAT* embed once). Probes and tuning then train on
these embeddings, never on the encoder.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from benchmark.config import Config, stable_hash
from benchmark.data.datasets import Dataset
from benchmark.data.store import FeatureStore
from benchmark.evaluation.probe import WindowSet
from benchmark.io import atomic_save_npy, atomic_write_json, file_digest, pick_device
from benchmark.pretrain.loop import PretrainedModel

log = logging.getLogger(__name__)


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


def _file_digest(path: Path) -> str:
    """SHA-256 of a checkpoint (16 hex digits), hashed once per (path, size, mtime): once, not
    once per task, split and probe seed."""
    return file_digest(path)[:16]


def _encoder_for(cfg: Config, model: PretrainedModel, store: FeatureStore, train_rows, device):
    from benchmark.pretrain.encoder import ContrastiveModel, reestimate_batchnorm
    from benchmark.pretrain.loop import build_model, load_encoder

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


def store_content(store: FeatureStore) -> str:
    """What identifies a store's rows: its shards' keys (each a hash of its clips' files)."""
    return stable_hash(store.shard_keys)


def _window_counts(store, crop: int, hop: int, selected) -> list[int]:
    """Windows per store row: every ``hop``-spaced crop, none for rows not ``selected``."""
    return [
        len(window_starts(int(n), crop, hop)) if selected is None or r in selected else 0
        for r, n in enumerate(store.lengths)
    ]


def _embed_store(
    cfg, model, store, hop, bn_rows, bn_key, progress, audio_paths=None, clip_ids=None
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of every ``hop``-spaced window of every clip of ``store`` (cached on disk),
    or of the clips ``clip_ids`` only (a store that also holds pre-training files no task
    reads: embedding those would be wasted).

    Shared by every task on the same corpus (MTAT and MTAT* embed once). Returns
    ``(embeddings (W, D) float16 memory map, offsets (rows + 1,))``: the windows of store row
    ``r`` are ``embeddings[offsets[r]:offsets[r + 1]]`` (empty for a row left out). An
    external encoder (``model.external``) embeds the same windows from the audio
    ``audio_paths`` (clip id -> ``AudioItem``; :mod:`benchmark.evaluation.hear`).
    """
    from tqdm import tqdm

    crop = cfg.frontend.crop_frames
    selected = None if clip_ids is None else {store.index(c) for c in clip_ids if store.has(c)}
    key = stable_hash(
        {
            "model": weights_key(model),
            "store": store.root.name,
            # A store's folder is named by its config; its shards by the files in it. A store
            # that gained or lost clips (a task added on its audio) has other rows.
            "content": store_content(store),
            "hop": hop,
            "crop": crop,
            "bn": bn_key,
            # only when rows are chosen: the keys of whole-store caches stay as they were
            **({"clips": stable_hash(sorted(clip_ids))} if clip_ids is not None else {}),
        }
    )
    name = model.method.replace(":", "-").replace("@", "-").replace("/", "_")[:40]
    out = cfg.cache_dir / "embeddings" / f"{store.root.name[:40]}-{name}-s{model.seed}-h{hop}-{key}"
    counts = _window_counts(store, crop, hop, selected)
    if not (out / "done.json").is_file() and model.external is not None:
        _embed_external(cfg, model, store, hop, out, key, audio_paths, progress, counts)
    if not (out / "done.json").is_file():
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        windows = [
            (r, st)
            for r, n in enumerate(store.lengths)
            if counts[r]
            for st in window_starts(int(n), crop, hop)
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


def _embed_external(cfg, model, store, hop, out, key, audio_paths, progress, counts) -> None:
    """The cache of an external (HEAR) encoder: the same windows, from the audio files
    (rows with ``counts`` 0 are left out)."""
    from tqdm import tqdm

    from benchmark.evaluation.hear import HearEmbedder, embed_clips

    crop = cfg.frontend.crop_frames
    rows = [r for r, count in enumerate(counts) if count]
    starts = [window_starts(int(store.lengths[r]), crop, hop) for r in rows]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    module, model_file = model.external
    embedder = HearEmbedder(module, model_file, cfg.frontend)
    clip_ids = [store.clip_ids[r] for r in rows]
    with tqdm(
        total=len(rows), desc=f"embed {store.root.name[:24]} ({model.method})",
        unit="clip", disable=not progress,
    ) as bar:  # fmt: skip
        feats = embed_clips(embedder, clip_ids, starts, audio_paths or {}, bar.update)
    atomic_save_npy(out / "embeddings.npy", feats.astype(np.float16))
    atomic_save_npy(out / "offsets.npy", offsets)
    atomic_write_json(out / "done.json", {"key": key, "windows": int(offsets[-1])})


def embed(
    cfg: Config,
    model: PretrainedModel,
    task,
    dataset: Dataset,
    store: FeatureStore,
    progress=True,
    audio_paths=None,
    corpus_clips=None,
) -> dict:
    """Window embeddings of the splits of ``dataset``: split -> (WindowSet, clips), plus "key".

    Training windows every ``probe.train_hop_frames`` frames (crop diversity), validation and
    test windows non-overlapping (REFERENCE.md section 5). The frozen encoder runs once per
    (checkpoint, corpus store, hop); tasks select their clips from that cache. An external
    encoder needs ``audio_paths`` (clip id -> ``AudioItem``: file and span) for every clip.
    ``corpus_clips``: the clips of every task on this corpus, when the store holds others
    (pre-training files): only those are embedded.
    """
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
    needs_bn = model.final_path is None and model.external is None
    bn_key = stable_hash(sorted(c.clip_id for c in splits["train"])) if needs_bn else ""
    result: dict = {}
    for split, clips in splits.items():
        emb, offsets = _embed_store(
            cfg, model, store, hops[split], bn_rows, bn_key, progress, audio_paths, corpus_clips
        )
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
            "content": store_content(store),
            "hops": hops,
            "bn": bn_key,
            "task": task.name,
            "clips": stable_hash(sorted(c.clip_id for c in dataset.clips)),
            # a task file's labels and declaration (registered tasks: "", keys unchanged)
            **({"task_identity": task.identity} if getattr(task, "identity", "") else {}),
        }
    )
    return result
