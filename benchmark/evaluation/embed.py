"""Stage ``embed``: the frozen encoder's embeddings of every window of a corpus, cached on disk.

The encoder runs once per (checkpoint content, corpus store, hop); every task on that corpus
selects its clips from the cache (MTAT and MTAT* embed once). Probes and tuning then train on
these embeddings, never on the encoder.
"""

from __future__ import annotations

import hashlib
import logging
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from benchmark.config import Config, stable_hash
from benchmark.data.datasets import Dataset
from benchmark.data.store import FeatureStore
from benchmark.evaluation.probe import WindowSet
from benchmark.io import atomic_save_npy, atomic_write_json, pick_device, torch_threads
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
    """SHA-256 of a file (16 hex digits); a file is read once per (path, size, mtime)."""
    st = path.stat()
    return _digest_of(str(path.resolve()), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=256)
def _digest_of(path: str, size: int, mtime_ns: int) -> str:
    # Pure given its arguments (a rewritten file has another size or mtime): a checkpoint is
    # hashed once, not once per task, split and probe seed.
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


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


def _embed_store(
    cfg, model, store, hop, bn_rows, bn_key, progress
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of every ``hop``-spaced window of every clip of ``store`` (cached on disk).

    Shared by every task on the same corpus (MTAT and MTAT* embed once). Returns
    ``(embeddings (W, D) float16 memory map, offsets (rows + 1,))``: the windows of store row
    ``r`` are ``embeddings[offsets[r]:offsets[r + 1]]``.
    """
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
        # Pinned threads: the embeddings must not depend on the caller's thread count.
        with torch_threads(cfg.compute.torch_threads):
            feats = _run_encoder(cfg, model, store, bn_rows, windows, device, progress)
        atomic_save_npy(out / "embeddings.npy", feats)
        atomic_save_npy(out / "offsets.npy", offsets)
        atomic_write_json(out / "done.json", {"key": key, "windows": len(windows)})
    return np.load(out / "embeddings.npy", mmap_mode="r"), np.load(out / "offsets.npy")


def _run_encoder(cfg, model, store, bn_rows, windows, device, progress) -> np.ndarray:
    """``(len(windows), feature_dim)`` float16 features of ``windows`` = [(row, start)]."""
    from tqdm import tqdm

    crop = cfg.frontend.crop_frames
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
    return feats


def embed(
    cfg: Config, model: PretrainedModel, task, dataset: Dataset, store: FeatureStore, progress=True
) -> dict:
    """Window embeddings of the splits of ``dataset``: split -> (WindowSet, clips), plus "key".

    Training windows every ``probe.train_hop_frames`` frames (crop diversity), validation and
    test windows non-overlapping (REFERENCE.md section 5). The frozen encoder runs once per
    (checkpoint, corpus store, hop); tasks select their clips from that cache.
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
