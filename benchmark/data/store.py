"""Feature store: log-mel spectrograms on disk, computed once, read as random crops.

Layout of one store (a directory, content-keyed by its caller)::

    <store>/shards/<shard_key>.npy    float16 (total_frames, n_mels), memory-mapped when read
    <store>/shards/<shard_key>.json   index: one entry per (clip_id, source) with its frame
                                      offset and count, per-entry metadata, bad clips, checksum
    <store>/manifest.json             the ordered shard keys of the last build + its report

A *job* is one clip: a content key (for audio files: path, size, mtime, plus the front-end
config) and a payload handed to the extraction function in a worker process. Jobs are
sorted by clip id and cut into shards of ``shard_size``; a shard's key hashes its jobs' keys,
so a changed file rebuilds only its shard. A shard is written ``.npy`` first and ``.json``
last, each atomically; the ``.json`` is the commit marker and holds the byte length and CRC-32
of the ``.npy``, so a truncated or corrupt shard is detected and rebuilt, never read.

Bad clips (undecodable, empty, non-finite, shorter than one crop, and listed clips whose files
are missing, passed as ``missing``) are skipped with a warning naming the file and counted in
the build report; more than ``max_bad_fraction`` of them fails the build with
:class:`StoreBuildError`.
"""

from __future__ import annotations

import logging
import os
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from benchmark.config import stable_hash
from benchmark.errors import StoreBuildError, StoreReadError
from benchmark.io import atomic_path, atomic_write_json, read_json, torch_threads

log = logging.getLogger(__name__)

STORE_VERSION = 1  # bump when the on-disk format changes
DTYPE = np.float16


@dataclass(frozen=True)
class Job:
    """One clip to extract: ``key`` identifies its content, ``payload`` goes to the extractor."""

    clip_id: str
    key: str
    payload: object


@dataclass
class Entry:
    """What an extractor returns for one clip and source.

    ``features`` is ``(num_frames, n_mels)`` or ``None`` (nothing stored, e.g. a source that
    is silent throughout); ``meta`` is JSON-serialisable (e.g. per-excerpt silence flags).
    """

    source: str
    features: np.ndarray | None
    meta: dict = field(default_factory=dict)


class BadClip(Exception):
    """Raised by an extractor for a clip to skip; the message says why."""


Extractor = Callable[[object], list[Entry]]


def file_key(path: Path, *parts) -> str:
    """Content key of an audio file: its path, size and modification time, plus ``parts``."""
    st = os.stat(path)
    return stable_hash([str(Path(path).resolve()), st.st_size, st.st_mtime_ns, *parts])


# -- building ---------------------------------------------------------------------------


@dataclass
class BuildReport:
    num_jobs: int = 0
    num_bad: int = 0  # bad clips: the jobs that failed and the missing ones
    bad: list[tuple[str, str]] = field(default_factory=list)  # (clip_id, reason)
    shards_built: int = 0
    shards_reused: int = 0
    num_missing: int = 0  # listed clips that never became jobs (missing or empty files)

    def to_dict(self) -> dict:
        return {
            "num_jobs": self.num_jobs,
            "num_missing": self.num_missing,
            "num_bad": self.num_bad,
            "bad": [list(b) for b in self.bad],
            "shards_built": self.shards_built,
            "shards_reused": self.shards_reused,
        }


def _shard_paths(root: Path, key: str) -> tuple[Path, Path]:
    return root / "shards" / f"{key}.npy", root / "shards" / f"{key}.json"


def _crc32_file(path: Path, chunk: int = 1 << 24) -> int:
    crc = 0
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            crc = zlib.crc32(block, crc)
    return crc


def shard_is_valid(root: Path, key: str, verify_checksum: bool = True) -> bool:
    """True when the shard's index exists and its data file has the recorded length/CRC."""
    npy, meta = _shard_paths(root, key)
    if not (npy.is_file() and meta.is_file()):
        return False
    try:
        info = read_json(meta)
    except (OSError, ValueError):
        return False
    if info.get("version") != STORE_VERSION or npy.stat().st_size != info.get("nbytes"):
        return False
    return not verify_checksum or _crc32_file(npy) == info.get("crc32")


def _build_shard(
    root: Path, key: str, jobs: Sequence[Job], extract: Extractor, num_threads: int
) -> dict:
    """Extract every job of one shard and write it (in a worker process or in this one)."""
    # The same thread count wherever the shard is built (features depend on it), restored
    # afterwards: the caller's thread count is not ours to change.
    with torch_threads(num_threads):
        return _extract_and_write(root, key, jobs, extract)


def _extract_and_write(root: Path, key: str, jobs: Sequence[Job], extract: Extractor) -> dict:
    entries, blocks, bad = [], [], []
    offset = 0
    for job in jobs:
        try:
            produced = extract(job.payload)
        except BadClip as exc:
            bad.append((job.clip_id, str(exc)))
            continue
        for item in produced:
            n = 0 if item.features is None else int(item.features.shape[0])
            if n:
                blocks.append(np.asarray(item.features, dtype=DTYPE))
            entries.append(
                {
                    "clip_id": job.clip_id,
                    "source": item.source,
                    "offset": offset,
                    "num_frames": n,
                    "meta": item.meta,
                }
            )
            offset += n
    n_mels = blocks[0].shape[1] if blocks else 0
    data = np.concatenate(blocks, axis=0) if blocks else np.zeros((0, n_mels), DTYPE)
    npy, meta = _shard_paths(root, key)
    with atomic_path(npy, suffix=".npy") as tmp:
        np.save(tmp, data)
    info = {
        "version": STORE_VERSION,
        "entries": entries,
        "bad": bad,
        "n_mels": int(data.shape[1]),
        "nbytes": npy.stat().st_size,
        "crc32": _crc32_file(npy),
    }
    atomic_write_json(meta, info)
    return {"key": key, "bad": bad}


def shard_size_for(num_jobs: int, workers: int, largest: int) -> int:
    """Clips per shard: ``largest``, or fewer for a small corpus, so that every worker gets
    shards and the progress bar moves (at least 4 shards per worker when that is possible)."""
    return max(1, min(largest, -(-num_jobs // (4 * max(1, workers)))))


def build(
    root: Path,
    jobs: Sequence[Job],
    extract: Extractor,
    *,
    shard_size: int = 64,
    workers: int = 1,
    max_bad_fraction: float = 0.01,
    desc: str = "features",
    progress: bool = True,
    num_threads: int = 1,
    missing: Sequence[tuple[str, str]] = (),
) -> BuildReport:
    """Build (or resume) the store at ``root`` from ``jobs``; finished shards are reused.

    ``missing``: ``(clip_id, reason)`` of listed clips that never became jobs (e.g. audio
    files that are missing or empty); they are bad clips like the ones that fail to decode.

    ``extract`` must be a picklable top-level function (or ``functools.partial`` of one) when
    ``workers > 1``. It runs on ``num_threads`` torch threads whether a shard is built in a
    worker process or in this one (this process's count is restored afterwards); with
    ``workers > 1`` keep the default 1: the pool already fills the cores.
    Raises :class:`StoreBuildError` when more than ``max_bad_fraction`` of the jobs are bad.
    """
    root = Path(root)
    (root / "shards").mkdir(parents=True, exist_ok=True)
    ids = [j.clip_id for j in jobs]
    if len(set(ids)) != len(ids):
        raise StoreBuildError(f"{root}: duplicate clip ids among the jobs")
    ordered = sorted(jobs, key=lambda j: j.clip_id)
    chunks = [ordered[i : i + shard_size] for i in range(0, len(ordered), shard_size)]
    keys = [stable_hash([STORE_VERSION, [j.key for j in c]]) for c in chunks]

    report = BuildReport(num_jobs=len(ordered), num_missing=len(missing))
    todo = [(k, c) for k, c in zip(keys, chunks, strict=True) if not shard_is_valid(root, k)]
    report.shards_reused = len(chunks) - len(todo)
    if todo:
        log.info("%s: building %d of %d shards in %s", desc, len(todo), len(chunks), root)
    total = sum(len(c) for _, c in todo)
    bar = tqdm(total=total, desc=desc, unit="clip", disable=not progress or not todo)
    if workers > 1 and len(todo) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [
                (pool.submit(_build_shard, root, k, c, extract, num_threads), c) for k, c in todo
            ]
            for fut, c in futures:
                fut.result()
                bar.update(len(c))
    else:
        for k, c in todo:
            _build_shard(root, k, c, extract, num_threads)
            bar.update(len(c))
    bar.close()
    report.shards_built = len(todo)

    report.bad = [(clip_id, reason) for clip_id, reason in missing]
    for k in keys:
        for clip_id, reason in read_json(_shard_paths(root, k)[1])["bad"]:
            report.bad.append((clip_id, reason))
    report.num_bad = len(report.bad)
    listed = report.num_jobs + report.num_missing
    for clip_id, reason in report.bad[:20]:
        log.warning("%s: skipped %s: %s", desc, clip_id, reason)
    if report.num_bad > 20:
        log.warning("%s: ... and %d more skipped clips", desc, report.num_bad - 20)
    atomic_write_json(root / "manifest.json", {"shards": keys, "report": report.to_dict()})
    if listed and report.num_bad / listed > max_bad_fraction:
        raise StoreBuildError(
            f"{desc}: {report.num_bad} of {listed} clips are bad ({report.num_missing} missing "
            f"or empty files; > {max_bad_fraction:.1%}); first: {report.bad[:3]}; see "
            f"{root / 'manifest.json'}"
        )
    return report


# -- reading ----------------------------------------------------------------------------


class FeatureStore:
    """Read-only view of a built store: entries and random crops without loading it all.

    Memory maps are opened lazily in each process, so the object can be handed to
    DataLoader workers cheaply.
    """

    def __init__(self, root: Path, verify: bool = False):
        self.root = Path(root)
        manifest = self.root / "manifest.json"
        if not manifest.is_file():
            raise StoreReadError(f"{self.root}: no manifest.json (the store was never built)")
        self.shard_keys: list[str] = read_json(manifest)["shards"]
        clip_ids, sources, shard_idx, offsets, lengths, metas = [], [], [], [], [], []
        self.n_mels = 0
        for s, key in enumerate(self.shard_keys):
            if not shard_is_valid(self.root, key, verify_checksum=verify):
                raise StoreReadError(
                    f"{self.root}: shard {key} is missing or corrupt; rerun the build to repair it"
                )
            info = read_json(_shard_paths(self.root, key)[1])
            self.n_mels = self.n_mels or info["n_mels"]
            for e in info["entries"]:
                clip_ids.append(e["clip_id"])
                sources.append(e["source"])
                shard_idx.append(s)
                offsets.append(e["offset"])
                lengths.append(e["num_frames"])
                metas.append(e["meta"])
        self.clip_ids = clip_ids
        self.sources = sources
        self.shard_idx = np.asarray(shard_idx, dtype=np.int64)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.metas = metas
        self._lookup = {(c, s): i for i, (c, s) in enumerate(zip(clip_ids, sources, strict=True))}
        self._maps: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.clip_ids)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_maps"] = {}  # memory maps are reopened in the receiving process
        return state

    def index(self, clip_id: str, source: str = "mix") -> int:
        try:
            return self._lookup[(clip_id, source)]
        except KeyError:
            raise KeyError(
                f"{self.root}: no entry for clip {clip_id!r}, source {source!r}"
            ) from None

    def has(self, clip_id: str, source: str = "mix") -> bool:
        return (clip_id, source) in self._lookup

    def _shard(self, s: int) -> np.ndarray:
        arr = self._maps.get(s)
        if arr is None:
            npy, _ = _shard_paths(self.root, self.shard_keys[s])
            arr = self._maps[s] = np.load(npy, mmap_mode="r")
        return arr

    def frames(self, i: int, start: int = 0, length: int | None = None) -> np.ndarray:
        """Frames ``[start, start + length)`` of entry ``i`` as a float16 view ``(length, n_mels)``."""
        total = int(self.lengths[i])
        length = total - start if length is None else length
        if start < 0 or start + length > total:
            raise IndexError(f"entry {i}: frames [{start}, {start + length}) outside [0, {total})")
        off = int(self.offsets[i]) + start
        return self._shard(int(self.shard_idx[i]))[off : off + length]

    def crops(self, rows: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
        """Stack crops: ``rows``/``starts`` of shape (B,) -> float32 ``(B, length, n_mels)``."""
        out = np.empty((len(rows), length, self.n_mels), dtype=np.float32)
        for b, (i, s) in enumerate(zip(rows, starts, strict=True)):
            out[b] = self.frames(int(i), int(s), length)
        return out

    def report(self) -> dict:
        return read_json(self.root / "manifest.json")["report"]
