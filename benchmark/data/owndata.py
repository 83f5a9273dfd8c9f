"""Your own audio: a folder or a manifest as the pre-training corpus, a labelled CSV as a task.

Three loaders, each returning a :class:`~benchmark.data.datasets.Dataset` like the MTAT, NSynth
and FMA loaders, so every stage reads them unchanged:

* :func:`load_audio_folder`: every audio file under a folder, searched recursively, in any
  format soundfile decodes (:data:`AUDIO_SUFFIXES`: WAV, FLAC, OGG, MP3, AIFF);
* :func:`load_manifest`: the files listed in a CSV (column ``path``, optional ``split``);
* :func:`load_labelled_csv`: a task's clips with labels, optional split and group columns
  (what a task file, ``tasks/files.py``, points at).

Train/valid splits of a pre-training corpus come from each file's content hash
(:func:`hash_split`): deterministic, independent of the order files are listed in, stable when
files are added (a file's split never changes), and identical content (a copy or a symbolic
link) always lands in one split, so it is kept once. Task splits are derived by group
(:func:`group_splits`): every group falls wholly into one split.

Clip ids are paths relative to the root (``/`` separated): unique, readable, stable.
Metadata mistakes raise :class:`DatasetError` naming the file and line; missing or empty audio
and duplicate content are skipped and counted, as in the other loaders.
"""

from __future__ import annotations

import csv
import hashlib
import math
import posixpath
from collections.abc import Sequence
from pathlib import Path

import soundfile as sf

from benchmark.data.datasets import (
    SPLITS,
    Clip,
    Dataset,
    Skips,
    add_clip,
    audio_problem,
    dataset_root,
    finish_dataset,
)
from benchmark.errors import DatasetError
from benchmark.io import file_digest

# Endings of the audio files a folder corpus picks up (soundfile's libsndfile decodes them all).
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".aif", ".aiff")
PRETRAIN_SPLITS = ("train", "valid")


# -- content hashes and splits ----------------------------------------------------------------


def content_digest(path: Path) -> str:
    """SHA-256 of a file's bytes (hex), read once per (path, size, mtime) in a process."""
    return file_digest(path)


def hash_unit(text: str) -> float:
    """A number in [0, 1) that is a fixed, uniform-looking function of ``text``."""
    return int(hashlib.sha256(text.encode()).hexdigest()[:15], 16) / 16**15


def hash_split(digest: str, valid_fraction: float) -> str:
    """``"valid"`` for about ``valid_fraction`` of all contents, ``"train"`` for the rest; a
    pure function of the file's content hash (stable when other files come or go)."""
    return "valid" if hash_unit(digest) < valid_fraction else "train"


def group_splits(
    groups: Sequence[str], valid_fraction: float, test_fraction: float, seed: int = 0
) -> dict[str, str]:
    """Each distinct group's split: groups ordered by a hash of (seed, group), the first
    ``round(test_fraction * G)`` (at least one) to test, the next to valid, the rest to train.

    Deterministic and group-disjoint by construction. Raises :class:`DatasetError` when there
    are fewer than 3 groups (no split could hold one).
    """
    distinct = sorted(set(groups))
    if len(distinct) < 3:
        raise DatasetError(
            f"only {len(distinct)} group(s): deriving train/valid/test splits by group needs at "
            "least 3 (add a split column to the CSV, or a group column with more groups)"
        )
    order = sorted(distinct, key=lambda g: hash_unit(f"{seed}\0{g}"))
    n_test = max(1, round(test_fraction * len(order)))
    n_valid = max(1, round(valid_fraction * len(order)))
    if n_test + n_valid >= len(order):
        n_test, n_valid = 1, 1
    out = dict.fromkeys(order[:n_test], "test")
    out.update(dict.fromkeys(order[n_test : n_test + n_valid], "valid"))
    out.update(dict.fromkeys(order[n_test + n_valid :], "train"))
    return out


def _check_fraction(name: str, value: float) -> None:
    if not (0.0 < value < 1.0 and math.isfinite(value)):
        raise DatasetError(f"{name} must lie strictly between 0 and 1, got {value}")


# -- pre-training corpora -----------------------------------------------------------------------


def audio_files(root: Path) -> list[Path]:
    """Audio files under ``root`` (recursive, links followed, :data:`AUDIO_SUFFIXES`), sorted
    by relative path."""
    return sorted(
        (p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file()),
        key=lambda p: p.relative_to(root).as_posix(),
    )


def _pretrain_dataset(
    name: str, listed: list[tuple[str, Path, str | None]], valid_fraction: float
) -> Dataset:
    """Clips of ``(clip_id, path, split or None)``: missing/empty audio and repeated content
    skipped; splits from the content hash where none is given."""
    clips: list[Clip] = []
    skips = Skips()
    seen: dict[str, str] = {}
    for clip_id, path, split in listed:
        problem = audio_problem(path)
        if problem:
            skips.add(problem, clip_id)
            continue
        digest = content_digest(path)
        if digest in seen:  # a copy or a link: keep one, or the split would leak
            skips.add(f"same_content_as_{seen[digest]}", clip_id)
            continue
        seen[digest] = clip_id
        clips.append(Clip(clip_id, path, split or hash_split(digest, valid_fraction), 0))
    if not any(c.split == "train" for c in clips):
        raise DatasetError(f"{name}: no training file among {len(listed)} listed")
    if not any(c.split == "valid" for c in clips):
        raise DatasetError(
            f"{name}: no validation file among {len(clips)} (data.valid_fraction="
            f"{valid_fraction}); raise data.valid_fraction or add files"
        )
    return finish_dataset(name, clips, (), False, _grouped(skips))


def _grouped(skips: Skips) -> Skips:
    """One skip reason for every repeated content (the per-file reasons name the kept file)."""
    out = Skips()
    for reason, ids in skips.ids.items():
        for clip_id in ids:
            out.add("same_content" if reason.startswith("same_content_as_") else reason, clip_id)
    return out


def load_audio_folder(root: str | Path, valid_fraction: float = 0.1) -> Dataset:
    """Every audio file under ``root`` as a pre-training corpus (splits ``train``/``valid``).

    Clip ids are the paths relative to ``root``. Raises :class:`DatasetError` when ``root`` is
    not a folder, holds no audio file, or a split would be empty.
    """
    _check_fraction("data.valid_fraction", valid_fraction)
    root = dataset_root(root, "pre-training folder")
    files = audio_files(root)
    if not files:
        raise DatasetError(
            f"{root}: no audio file ({', '.join(AUDIO_SUFFIXES)}) in this folder or below"
        )
    listed = [(p.relative_to(root).as_posix(), p, None) for p in files]
    return _pretrain_dataset(f"folder {root}", listed, valid_fraction)


def _read_csv(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Header and ``(line number, row)`` of a comma-separated file with a header line."""
    if not path.is_file():
        raise DatasetError(f"{path}: CSV file not found")
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in reader.fieldnames or []]
            reader.fieldnames = header
            rows = [
                (reader.line_num, {k: (v or "").strip() for k, v in row.items() if k})
                for row in reader
            ]
    except (csv.Error, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read as CSV ({exc})") from None
    if not header:
        raise DatasetError(f"{path}: empty CSV (expected a header line)")
    return header, rows


def _audio_path(rel: str, root: Path, where: str) -> tuple[str, Path]:
    """``(clip id, absolute path)`` of a listed path: relative to ``root`` (kept inside it) or
    absolute (its own id)."""
    if not rel:
        raise DatasetError(f"{where}: empty path")
    if posixpath.isabs(rel.replace("\\", "/")):
        return rel, Path(rel)
    norm = posixpath.normpath(rel.replace("\\", "/"))
    if norm == ".." or norm.startswith("../"):
        raise DatasetError(f"{where}: path '{rel}' escapes the audio root {root}")
    return norm, root / norm


def load_manifest(
    csv_path: str | Path, root: str | Path | None = None, valid_fraction: float = 0.1
) -> Dataset:
    """The files listed in a manifest CSV as a pre-training corpus.

    Columns: ``path`` (relative to ``root``, default the manifest's folder, or absolute) and
    optionally ``split`` (``train`` or ``valid``; empty cells fall back to the content hash).
    Raises :class:`DatasetError` naming the file and line for a missing column, an unknown
    split, a path that escapes the root or is listed twice.
    """
    _check_fraction("data.valid_fraction", valid_fraction)
    csv_path = Path(csv_path).expanduser().resolve()
    header, rows = _read_csv(csv_path)
    if "path" not in header:
        raise DatasetError(f"{csv_path}: no 'path' column (columns: {', '.join(header)})")
    base = dataset_root(root, "manifest audio root") if root else csv_path.parent
    listed: list[tuple[str, Path, str | None]] = []
    seen: set[str] = set()
    for line, row in rows:
        where = f"{csv_path}:{line}"
        clip_id, path = _audio_path(row["path"], base, where)
        if clip_id in seen:
            raise DatasetError(f"{where}: '{row['path']}' is listed twice")
        seen.add(clip_id)
        split = row.get("split") or None
        if split is not None and split not in PRETRAIN_SPLITS:
            raise DatasetError(f"{where}: split '{split}' is not train or valid")
        listed.append((clip_id, path, split))
    if not listed:
        raise DatasetError(f"{csv_path}: no rows")
    return _pretrain_dataset(f"manifest {csv_path}", listed, valid_fraction)


# -- labelled tasks -----------------------------------------------------------------------------


def load_labelled_csv(
    name: str,
    csv_path: str | Path,
    audio_root: str | Path,
    *,
    multilabel: bool,
    classes: Sequence[str] = (),
    columns: dict[str, str] | None = None,
    label_separator: str = ";",
    valid_fraction: float = 0.15,
    test_fraction: float = 0.15,
    split_seed: int = 0,
    clip_s: float = 0.0,
) -> Dataset:
    """A task's clips from a labels CSV.

    Columns (names changeable with ``columns``, e.g. ``{"label": "genre"}``): ``path`` (audio
    file relative to ``audio_root``, or absolute); ``label`` (multi-class: one class) or
    ``labels`` (multi-label: tags joined by ``label_separator``, may be empty); optional
    ``split`` (train/valid/test, then every row needs one), ``group`` (the cluster of items:
    song, artist, recording session; default: each clip its own) and ``id`` (clip id; default:
    the path relative to the root). Without a split column the splits are derived by group
    (:func:`group_splits`, deterministic, group-disjoint).

    ``classes`` fixes the vocabulary and its order (a label outside it is an error); by
    default it is the sorted set of labels present. ``clip_s`` > 0 cuts each file into
    consecutive clips of that many seconds (MTAT's are ~29 s; a last piece shorter than half
    a clip is dropped), ids ``<id>@<start>s``, all in the row's split and group (the file's,
    by default: clips of one recording never straddle splits). Missing and zero-byte audio is skipped
    and counted. Raises :class:`DatasetError` naming the file and line for a missing column,
    an unknown split or class, a repeated id, or a split left without clips.
    """
    columns = {"path": "path", "id": "id", "split": "split", "group": "group"} | (columns or {})
    label_key = "labels" if multilabel else "label"
    columns.setdefault(label_key, label_key)
    csv_path = Path(csv_path).expanduser().resolve()
    root = dataset_root(audio_root, f"task {name}: audio")
    header, rows = _read_csv(csv_path)
    for need in ("path", label_key):
        if columns[need] not in header:
            raise DatasetError(
                f"{csv_path}: no '{columns[need]}' column for the {need} "
                f"(columns: {', '.join(header)})"
            )
    if not rows:
        raise DatasetError(f"{csv_path}: no rows")

    def cell(row, key):
        return row.get(columns[key], "") if columns[key] in header else ""

    parsed = []  # (where, clip_id, path, labels, split, group)
    seen: dict[str, str] = {}
    for line, row in rows:
        where = f"{csv_path}:{line}"
        rel_id, path = _audio_path(cell(row, "path"), root, where)
        clip_id = cell(row, "id") or rel_id
        if clip_id in seen:
            raise DatasetError(
                f"{where}: clip '{clip_id}' is listed twice (also at {seen[clip_id]})"
            )
        seen[clip_id] = where
        raw = cell(row, label_key)
        if multilabel:
            labels = [t.strip() for t in raw.split(label_separator) if t.strip()]
        else:
            if not raw:
                raise DatasetError(f"{where}: empty {columns[label_key]}")
            labels = [raw]
        split = cell(row, "split")
        if columns["split"] in header and split not in SPLITS:
            raise DatasetError(f"{where}: split '{split}' is not one of {', '.join(SPLITS)}")
        parsed.append((where, clip_id, path, labels, split, cell(row, "group")))
    vocabulary = tuple(classes) or tuple(
        sorted({t for *_, labels, _s, _g in parsed for t in labels})
    )
    index = {t: i for i, t in enumerate(vocabulary)}
    if len(index) != len(vocabulary):
        raise DatasetError(f"task {name}: classes repeat a name")
    if columns["split"] in header:
        split_of = None
    else:
        split_of = group_splits(
            [group or clip_id for _w, clip_id, _p, _l, _s, group in parsed],
            valid_fraction,
            test_fraction,
            split_seed,
        )
    clips: list[Clip] = []
    skips = Skips()
    for where, clip_id, path, labels, split, group in parsed:
        unknown = [t for t in labels if t not in index]
        if unknown:
            raise DatasetError(f"{where}: '{unknown[0]}' is not one of the task's classes")
        if multilabel:
            target: tuple[int, ...] | int = tuple(int(t in labels) for t in vocabulary)
        else:
            target = index[labels[0]]
        split = split if split_of is None else split_of[group or clip_id]
        if clip_s <= 0:
            add_clip(clips, skips, Clip(clip_id, path, split, target, group))
            continue
        problem = audio_problem(path)
        if problem:
            skips.add(problem, clip_id)
            continue
        for start, end in _cuts(path, clip_s, where):
            piece = f"{clip_id}@{start:g}s"
            clips.append(Clip(piece, path, split, target, group or clip_id, (start, end)))
    ds = finish_dataset(name, clips, vocabulary, multilabel, skips)
    empty = [s for s, n in ds.counts().items() if n == 0]
    if empty:
        raise DatasetError(f"task {name} ({csv_path}): no clip in split(s) {', '.join(empty)}")
    return ds


def _cuts(path: Path, clip_s: float, where: str) -> list[tuple[float, float]]:
    """``(start, end)`` seconds of the consecutive ``clip_s``-second clips of a file; the last
    is kept when it holds at least half a clip. Raises :class:`DatasetError` naming ``where``
    for a file soundfile cannot read."""
    try:
        duration = sf.info(str(path)).duration
    except Exception as exc:  # soundfile raises several types
        raise DatasetError(f"{where}: cannot read {path} ({exc})") from None
    count = int(duration // clip_s) + (duration % clip_s >= clip_s / 2)
    return [(k * clip_s, min((k + 1) * clip_s, duration)) for k in range(max(count, 1))]
