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
from benchmark.evaluation.health import describe, embedding_health
from benchmark.evaluation.probe import WindowSet
from benchmark.io import (
    atomic_path,
    atomic_save_npy,
    atomic_write_json,
    file_digest,
    pick_device,
    read_json,
    scratch_path,
    torch_threads,
)
from benchmark.pretrain.loop import PretrainedModel

log = logging.getLogger(__name__)


def window_starts(num_frames: int, crop: int, hop: int) -> np.ndarray:
    """Starts of the crop-long windows of a clip every ``hop`` frames (at least one window)."""
    return np.arange(0, max(num_frames - crop, 0) + 1, hop)


def weights_key(model: PretrainedModel) -> str:
    """What identifies the encoder's weights: the pre-training key and the digest of its
    ``final.pt`` (a retrained checkpoint, e.g. after a non-deterministic GPU run, must not
    reuse the embeddings of the old one); for an external encoder, its key (which identifies
    the module and its weights file)."""
    if model.final_path is None:
        return model.key
    return stable_hash({"key": model.key, "weights": file_digest(Path(model.final_path))[:16]})


# Version of the cache's on-disk format; part of every embedding key. 2: float16 after a
# per-dimension affine transform (issue #11), with a health record.
CACHE_FORMAT = 2
# Windows per block when the cache is written and read: bounds memory to a block of float32
# features, whatever the corpus size.
_BLOCK = 16384


def _encoder_for(cfg: Config, model: PretrainedModel, device):
    """The frozen encoder of ``final.pt``, in eval mode (its batch-norm statistics are the
    precise-BN ones the pre-training stage saved)."""
    from benchmark.pretrain.loop import load_encoder

    return load_encoder(cfg.encoder, model.final_path, device)


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
    cfg, model: PretrainedModel, store: FeatureStore, hop: int, progress, audio_paths=None,
    clip_ids=None,
) -> Path:  # fmt: skip
    """Embed every ``hop``-spaced window of every clip of ``store`` once (or of the clips
    ``clip_ids`` only: a store that also holds pre-training files no task reads); the cache
    folder.

    Shared by every task on the same corpus (MTAT and MTAT* embed once). The folder holds
    ``embeddings.npy`` ``(W, D)`` float16 ``z``, ``offset.npy`` and ``scale.npy`` ``(D,)``
    float32 with ``x = z * scale + offset`` (per-dimension mean and SD over the windows, SD 1
    for a constant dimension), ``offsets.npy`` ``(rows + 1,)`` (the windows of store row ``r``
    are ``offsets[r]:offsets[r + 1]``, empty for a row left out), ``health.json``
    (:func:`embedding_health` of the float32 clip means) and ``done.json``, written last. An
    external encoder (``model.external``) embeds the same windows from the audio
    ``audio_paths`` (clip id -> ``AudioItem``; :mod:`benchmark.evaluation.hear`).

    Why the affine transform: float16 keeps ~3 significant digits of a value, so features
    that vary across clips by much less than their magnitude (an encoder near collapse) would
    be stored as constants; relative to each dimension's own spread the rounding error is
    ~5e-4 SD whatever the offset, and the cache stays half the size of float32.
    """
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
            "format": CACHE_FORMAT,
            # only when rows are chosen: the keys of whole-store caches stay as they were
            **({"clips": stable_hash(sorted(clip_ids))} if clip_ids is not None else {}),
        }
    )
    name = model.method.replace(":", "-").replace("@", "-").replace("/", "_")[:40]
    out = cfg.cache_dir / "embeddings" / f"{store.root.name[:40]}-{name}-s{model.seed}-h{hop}-{key}"
    if (out / "done.json").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    counts = _window_counts(store, crop, hop, selected)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    with scratch_path(out / "features32.npy", suffix=".npy") as tmp32:
        # float32 features first, in a scratch file deleted once the float16 cache is written
        # (memory stays flat on any corpus; the cache keeps half the disk of float32).
        # Pinned threads: the embeddings must not depend on the caller's thread count.
        with torch_threads(cfg.compute.torch_threads):
            if model.external is not None:
                feats = _embed_external(
                    cfg, model, store, hop, tmp32, audio_paths, progress, counts
                )
            else:
                feats = _embed_encoder(cfg, model, store, hop, tmp32, progress, counts)
        offset, scale = _affine(feats)
        health = embedding_health(_clip_means(feats, offsets))
        with atomic_path(out / "embeddings.npy", suffix=".npy") as tmp16:
            z = np.lib.format.open_memmap(tmp16, mode="w+", dtype=np.float16, shape=feats.shape)
            for i in range(0, len(feats), _BLOCK):
                z[i : i + _BLOCK] = (feats[i : i + _BLOCK] - offset) / scale
            z.flush()
            del z
        del feats
    atomic_save_npy(out / "offset.npy", offset)
    atomic_save_npy(out / "scale.npy", scale)
    atomic_save_npy(out / "offsets.npy", offsets)
    atomic_write_json(out / "health.json", health)
    atomic_write_json(out / "done.json", {"key": key, "windows": int(offsets[-1])})
    if health["collapsed"]:
        log.warning(
            "%s s%d: embeddings without spread: %s", model.method, model.seed, describe(health)
        )
    return out


def _embed_encoder(cfg, model, store, hop, path, progress, counts) -> np.ndarray:
    """The float32 features of the windows of the rows with ``counts`` > 0, written to a
    memory map at ``path``."""
    from tqdm import tqdm

    crop = cfg.frontend.crop_frames
    windows = [
        (r, st)
        for r, n in enumerate(store.lengths)
        if counts[r]
        for st in window_starts(int(n), crop, hop)
    ]
    device = pick_device()
    net = _encoder_for(cfg, model, device)
    bs = cfg.probe.embed_batch_size
    feats = np.lib.format.open_memmap(
        path, mode="w+", dtype=np.float32, shape=(len(windows), net.feature_dim)
    )
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


def _embed_external(cfg, model, store, hop, path, audio_paths, progress, counts) -> np.ndarray:
    """The features of an external (HEAR) encoder: the same windows, from the audio files
    (rows with ``counts`` 0 are left out), as a float32 memory map at ``path``."""
    from tqdm import tqdm

    from benchmark.evaluation.hear import HearEmbedder, embed_clips

    crop = cfg.frontend.crop_frames
    rows = [r for r, count in enumerate(counts) if count]
    starts = [window_starts(int(store.lengths[r]), crop, hop) for r in rows]
    module, model_file = model.external
    embedder = HearEmbedder(module, model_file, cfg.frontend)
    clip_ids = [store.clip_ids[r] for r in rows]
    with tqdm(
        total=len(rows), desc=f"embed {store.root.name[:24]} ({model.method})",
        unit="clip", disable=not progress,
    ) as bar:  # fmt: skip
        values = embed_clips(embedder, clip_ids, starts, audio_paths or {}, bar.update)
    feats = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=values.shape)
    feats[:] = values
    return feats


def _affine(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and SD (1 where constant) of ``(W, D)`` features, float32, two
    passes in float64 blocks."""
    total = np.zeros(feats.shape[1])
    for i in range(0, len(feats), _BLOCK):
        total += feats[i : i + _BLOCK].sum(axis=0, dtype=np.float64)
    mean = total / len(feats)
    squares = np.zeros(feats.shape[1])
    for i in range(0, len(feats), _BLOCK):
        squares += ((feats[i : i + _BLOCK] - mean) ** 2).sum(axis=0)
    sd = np.sqrt(squares / len(feats))
    sd[sd == 0] = 1.0
    return mean.astype(np.float32), sd.astype(np.float32)


def _clip_means(feats: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """``(rows, D)`` float64: each embedded store row's windows averaged (rows left out, with
    no windows, are not rows of the result)."""
    rows = [r for r in range(len(offsets) - 1) if offsets[r + 1] > offsets[r]]
    out = np.empty((len(rows), feats.shape[1]))
    for i, r in enumerate(rows):
        out[i] = feats[offsets[r] : offsets[r + 1]].mean(axis=0, dtype=np.float64)
    return out


def load_windows(folder: Path, index: np.ndarray) -> np.ndarray:
    """The float32 embeddings ``x = z * scale + offset`` of the windows ``index`` of a cache
    folder of :func:`_embed_store`."""
    z = np.load(folder / "embeddings.npy", mmap_mode="r")
    scale, offset = np.load(folder / "scale.npy"), np.load(folder / "offset.npy")
    out = np.empty((len(index), z.shape[1]), dtype=np.float32)
    for i in range(0, len(index), _BLOCK):
        out[i : i + _BLOCK] = z[index[i : i + _BLOCK]].astype(np.float32) * scale + offset
    return out


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
    """Window embeddings of the splits of ``dataset``: split -> (WindowSet, clips), plus "key"
    and "health" (:func:`benchmark.evaluation.health.embedding_health` of the corpus's clips).

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
    result: dict = {}
    for split, clips in splits.items():
        folder = _embed_store(cfg, model, store, hops[split], progress, audio_paths, corpus_clips)
        offsets = np.load(folder / "offsets.npy")
        rows = [store.index(c.clip_id) for c in clips]
        idx = np.concatenate([np.arange(offsets[r], offsets[r + 1]) for r in rows])
        clip_index = np.concatenate(
            [np.full(offsets[r + 1] - offsets[r], i) for i, r in enumerate(rows)]
        )
        result[split] = (
            WindowSet(
                load_windows(folder, idx), clip_index.astype(np.int64), dataset.targets(clips)
            ),
            clips,
        )
        if split == "test":
            # Non-overlapping windows of every clip of the corpus: the health of the embedding.
            result["health"] = read_json(folder / "health.json")
    result["key"] = embedding_key(cfg, model, task, dataset, store)
    return result


def embedding_key(
    cfg: Config, model: PretrainedModel, task, dataset: Dataset, store: FeatureStore
) -> str:
    """What the embeddings :func:`embed` returns depend on (weights, corpus store and its
    content, hops, the task's clips and declaration, the cache format), without loading them."""
    crop = cfg.frontend.crop_frames
    return stable_hash(
        {
            "model": weights_key(model),
            "store": store.root.name,
            "content": store_content(store),
            "hops": {"train": cfg.probe.train_hop_frames, "valid": crop, "test": crop},
            "task": task.name,
            "clips": stable_hash(sorted(c.clip_id for c in dataset.clips)),
            # a task file's labels and declaration (registered tasks: "", keys unchanged)
            **({"task_identity": task.identity} if getattr(task, "identity", "") else {}),
            "format": CACHE_FORMAT,
        }
    )
