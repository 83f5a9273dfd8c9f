"""Dataset loaders: MagnaTagATune (MTAT, MTAT*), NSynth and FMA, as users download them.

Each loader reads the dataset's own metadata (REFERENCE.md section 6), checks it, and returns
a :class:`Dataset`: a list of :class:`Clip` (id, absolute audio path, split, target) plus the
label vocabulary. Metadata mistakes raise :class:`DatasetError` naming the file, line or id.

Clips that cannot be used are skipped and counted in ``Dataset.skipped`` (one warning line per
reason): known broken clips, missing audio files and zero-byte files. Audio is not decoded
here (too slow for 25k clips); the feature store counts undecodable files later.

The synthetic corpus of :mod:`benchmark.data.synth` writes the same layouts, so the same loaders
read it; its source stems live at ``<mtat_root>/stems/<clip_id>/<source>.flac``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.errors import DatasetError

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")

# The benchmark order of the 50 most frequent MTAT tags (REFERENCE.md section 6). Tags are
# looked up by name in the CSV header, never by column number.
MTAT_TOP50: tuple[str, ...] = (
    "guitar", "classical", "slow", "techno", "strings", "drums", "electronic", "rock", "fast",
    "piano", "ambient", "beat", "violin", "vocal", "synth", "female", "indian", "opera", "male",
    "singing", "vocals", "no vocals", "harpsichord", "loud", "quiet", "flute", "woman",
    "male vocal", "no vocal", "pop", "soft", "sitar", "solo", "man", "classic", "choir", "voice",
    "new age", "dance", "male voice", "female vocal", "beats", "harp", "cello", "no voice",
    "weird", "country", "female voice", "metal", "choral",
)  # fmt: skip

# index = instrument_family of NSynth's examples.json (fixed even where a split lacks a family)
NSYNTH_FAMILIES: tuple[str, ...] = (
    "bass", "brass", "flute", "guitar", "keyboard", "mallet", "organ", "reed", "string",
    "synth_lead", "vocal",
)  # fmt: skip

# the 8 top-level genres of fma_small, alphabetical
FMA_GENRES: tuple[str, ...] = (
    "Electronic", "Experimental", "Folk", "Hip-Hop", "Instrumental", "International", "Pop",
    "Rock",
)  # fmt: skip

# Skip reasons that mean bad audio in the user's tree (counted against data.max_bad_fraction
# by the feature build); the known-broken and known-empty clips are documented exclusions.
UNREADABLE_REASONS = ("missing_audio", "empty_audio")

MTAT_BROKEN = {"35644", "55753", "57881"}  # 35644 missing, 55753 and 57881 corrupt (section 6)
FMA_EMPTY = {"099134", "108925", "133297"}  # tracks of fma_small that hold no audio

MTAT_CSV = "annotations_final.csv"
MTAT_SPLIT_OF_FOLDER = {**dict.fromkeys("0123456789ab", "train"), "c": "valid", "d": "test",
                        "e": "test", "f": "test"}  # fmt: skip
NSYNTH_FIELDS = (
    "note_str", "note", "instrument", "instrument_str", "instrument_family",
    "instrument_family_str", "instrument_source", "instrument_source_str", "pitch", "velocity",
    "sample_rate", "qualities", "qualities_str",
)  # fmt: skip
FMA_SPLITS = {"training": "train", "validation": "valid", "test": "test"}
FMA_SUBSETS = {"small": ("small",), "medium": ("small", "medium")}  # medium holds small (FMA)
_SHOW_IDS = 5  # ids named per skip reason in the warning


@dataclass(frozen=True)
class Clip:
    """One piece of audio with its label.

    ``target`` is a multi-hot tuple (multi-label datasets) or a class index (multi-class).
    """

    clip_id: str  # unique within the dataset (MTAT clip_id, NSynth note_str, FMA 6-digit id)
    path: Path  # absolute audio path
    split: str  # "train" | "valid" | "test"
    target: tuple[int, ...] | int
    # The cluster of test items this clip belongs to (REFERENCE.md section 10): MTAT song,
    # NSynth instrument, FMA artist, a task file's group column. "" = a cluster of its own.
    group: str = ""
    # The part of the file the clip is, (start_s, end_s) in seconds; None: the whole file.
    span: tuple[float, float] | None = None

    @property
    def cluster(self) -> str:
        """The clip's cluster id: its group, or its own id when it has none."""
        return self.group or self.clip_id


@dataclass
class Dataset:
    """A loaded dataset: clips of all splits, the label vocabulary and what was skipped."""

    name: str
    clips: list[Clip]
    vocabulary: tuple[str, ...]
    multilabel: bool
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> number of clips
    skipped_ids: dict[str, tuple[str, ...]] = field(default_factory=dict)  # reason -> clip ids

    def unreadable(self) -> list[tuple[str, str]]:
        """``(clip_id, reason)`` of the clips skipped for missing or empty audio files."""
        return [
            (clip_id, reason)
            for reason in UNREADABLE_REASONS
            for clip_id in self.skipped_ids.get(reason, ())
        ]

    def split(self, name: str) -> list[Clip]:
        """Clips of one split, in load order. Raises ValueError for an unknown split name."""
        if name not in SPLITS:
            raise ValueError(f"unknown split '{name}' (expected one of {', '.join(SPLITS)})")
        return [c for c in self.clips if c.split == name]

    def counts(self) -> dict[str, int]:
        """Number of clips per split (every split listed, zeros included)."""
        out = dict.fromkeys(SPLITS, 0)
        for c in self.clips:
            out[c.split] += 1
        return out

    def targets(self, clips: Sequence[Clip] | None = None) -> np.ndarray:
        """Targets of ``clips`` (default: all): ``(n, C)`` float32 multi-hot or ``(n,)`` int64."""
        clips = self.clips if clips is None else clips
        if self.multilabel:
            arr = np.array([c.target for c in clips], dtype=np.float32)
            return arr.reshape(len(clips), len(self.vocabulary))
        return np.array([c.target for c in clips], dtype=np.int64)


# -- shared helpers --------------------------------------------------------------------------


class Skips:
    """Collects skipped clip ids per reason for the summary warning."""

    def __init__(self):
        self.ids: dict[str, list[str]] = {}

    def add(self, reason: str, clip_id: str) -> None:
        self.ids.setdefault(reason, []).append(clip_id)

    def counts(self) -> dict[str, int]:
        return {reason: len(ids) for reason, ids in self.ids.items()}


def audio_problem(path: Path) -> str | None:
    """Why the audio file at ``path`` cannot be listed (None when it can)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "missing_audio"
    return "empty_audio" if size == 0 else None


def add_clip(clips: list[Clip], skips: Skips, clip: Clip) -> None:
    problem = audio_problem(clip.path)
    if problem:
        skips.add(problem, clip.clip_id)
    else:
        clips.append(clip)


def finish_dataset(
    name: str, clips: list[Clip], vocabulary: Sequence[str], multilabel: bool, skips: Skips
) -> Dataset:
    """Build the Dataset and log its per-split counts and one warning per skip reason."""
    ids = {reason: tuple(found) for reason, found in skips.ids.items()}
    ds = Dataset(name, clips, tuple(vocabulary), multilabel, skips.counts(), ids)
    for reason, ids in skips.ids.items():
        shown = ", ".join(ids[:_SHOW_IDS]) + (", ..." if len(ids) > _SHOW_IDS else "")
        log.warning("%s: skipped %d clip(s) (%s): %s", name, len(ids), reason, shown)
    counts = ds.counts()
    log.info("%s: %s clips", name, ", ".join(f"{s} {counts[s]}" for s in SPLITS))
    return ds


def safe_relative(rel: str, where: str) -> str:
    """Check that ``rel`` is a relative path that stays inside the dataset root."""
    if not rel:
        raise DatasetError(f"{where}: empty audio path")
    norm = posixpath.normpath(rel.replace("\\", "/"))
    if posixpath.isabs(norm) or (len(norm) > 1 and norm[1] == ":"):
        raise DatasetError(f"{where}: audio path '{rel}' is absolute; expected relative to root")
    if norm == ".." or norm.startswith("../"):
        raise DatasetError(f"{where}: audio path '{rel}' escapes the dataset root")
    return norm


def dataset_root(root: str | Path, name: str) -> Path:
    path = Path(root).expanduser().resolve()
    if not path.is_dir():
        raise DatasetError(f"{name} root {path} is not a directory")
    return path


# -- MTAT ------------------------------------------------------------------------------------


def default_mtat_split_dir() -> Path:
    """The shipped filtered-MTAT split lists (``tasks/mtat_split``).

    Found without importing ``tasks`` (whose modules import this one).
    """
    spec = importlib.util.find_spec("tasks")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError("cannot locate the 'tasks' package holding mtat_split/")
    return Path(next(iter(spec.submodule_search_locations))) / "mtat_split"


def read_mtat_split_lists(split_dir: Path | None = None) -> dict[str, list[str]]:
    """Read ``{train,valid,test}.txt`` (one ``mp3_path`` per line) from ``split_dir``.

    Returns ``{split: [mp3_path, ...]}`` in file order (default: the shipped lists).
    Raises :class:`DatasetError` naming the file and line for a missing file, an unsafe path,
    a folder that contradicts the split (0-b train, c valid, d-f test) or a repeated path.
    """
    entries = _split_entries(Path(split_dir) if split_dir is not None else default_mtat_split_dir())
    return {split: [rel for _, rel in lines] for split, lines in entries.items()}


def _split_entries(split_dir: Path) -> dict[str, list[tuple[int, str]]]:
    """``{split: [(line number, mp3_path), ...]}``, checked (see read_mtat_split_lists)."""
    out: dict[str, list[tuple[int, str]]] = {}
    seen: dict[str, str] = {}
    for split in SPLITS:
        path = split_dir / f"{split}.txt"
        if not path.is_file():
            raise DatasetError(f"{path}: MTAT split list not found")
        entries = []
        for lineno, raw in enumerate(path.read_text().splitlines(), start=1):
            line = raw.strip()
            if not line:
                continue
            where = f"{path}:{lineno}"
            rel = safe_relative(line, where)
            folder = rel.split("/", 1)[0]
            if MTAT_SPLIT_OF_FOLDER.get(folder) != split:
                raise DatasetError(f"{where}: folder '{folder}' of '{rel}' is not a {split} folder")
            if rel in seen:
                raise DatasetError(f"{where}: '{rel}' is listed twice (also at {seen[rel]})")
            seen[rel] = where
            entries.append((lineno, rel))
        out[split] = entries
    return out


def read_mtat_annotations(csv_path: Path) -> pd.DataFrame:
    """Read and check ``annotations_final.csv`` (tab-separated, every field quoted).

    Returns a string DataFrame with columns ``clip_id``, the tag columns and ``mp3_path``
    (paths normalised). Raises :class:`DatasetError` naming the file and, where it applies,
    the clip id for: a wrong delimiter, missing columns, duplicate clip ids or paths, tag
    values other than 0/1, and audio paths that are absolute or escape the root.
    """
    if not csv_path.is_file():
        raise DatasetError(f"{csv_path}: MTAT annotations file not found")
    try:
        df = pd.read_csv(csv_path, sep="\t", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{csv_path}: cannot parse as tab-separated CSV ({exc})") from None
    if len(df.columns) == 1 and "," in str(df.columns[0]):
        raise DatasetError(
            f"{csv_path}: found a single column; the file looks comma-separated, "
            "but annotations_final.csv must be tab-separated"
        )
    missing = [c for c in ("clip_id", "mp3_path", *MTAT_TOP50) if c not in df.columns]
    if missing:
        raise DatasetError(f"{csv_path}: missing column(s): {', '.join(missing)}")
    df["clip_id"] = df["clip_id"].str.strip()
    dup = df["clip_id"][df["clip_id"].duplicated()]
    if len(dup):
        raise DatasetError(f"{csv_path}: duplicate clip_id {dup.iloc[0]}")
    tag_cols = [c for c in df.columns if c not in ("clip_id", "mp3_path")]
    bad = ~df[tag_cols].isin(["0", "1"])
    if bad.to_numpy().any():
        row, col = np.argwhere(bad.to_numpy())[0]
        raise DatasetError(
            f"{csv_path}: clip_id {df['clip_id'].iloc[row]}: tag '{tag_cols[col]}' has value "
            f"'{df[tag_cols[col]].iloc[row]}' (expected 0 or 1)"
        )
    df["mp3_path"] = [
        safe_relative(p.strip(), f"{csv_path}: clip_id {cid}")
        for cid, p in zip(df["clip_id"], df["mp3_path"], strict=True)
    ]
    dup = df["mp3_path"][df["mp3_path"].duplicated()]
    if len(dup):
        raise DatasetError(f"{csv_path}: mp3_path '{dup.iloc[0]}' appears in two rows")
    return df


def load_mtat(root: str | Path, filtered: bool = True, split_dir: Path | None = None) -> Dataset:
    """Load MagnaTagATune with the 50-tag vocabulary :data:`MTAT_TOP50`.

    ``filtered=True`` ("mtat", the paper's version): split membership from the list files in
    ``split_dir`` (default: the shipped ``tasks/mtat_split``). ``filtered=False`` ("mtat_star"):
    every CSV row, split by folder (0-b train, c valid, d-f test); clips without a top-50 tag
    stay, with all-zero labels. Known broken clips, missing and zero-byte files are skipped.

    Raises :class:`DatasetError` for bad annotations (see :func:`read_mtat_annotations`), a
    listed path absent from the CSV (naming list file and line), or an unknown folder.
    """
    root = dataset_root(root, "MTAT")
    df = read_mtat_annotations(root / MTAT_CSV)
    labels = df[list(MTAT_TOP50)].to_numpy() == "1"
    row_of_path = {p: i for i, p in enumerate(df["mp3_path"])}
    if filtered:
        split_dir = Path(split_dir) if split_dir is not None else default_mtat_split_dir()
        rows = _listed_rows(_split_entries(split_dir), row_of_path, split_dir)
    else:
        rows = _folder_rows(df, root / MTAT_CSV)
    clips: list[Clip] = []
    skips = Skips()
    for split, row in rows:
        clip_id = df["clip_id"].iloc[row]
        if clip_id in MTAT_BROKEN:
            skips.add("known_broken", clip_id)
            continue
        target = tuple(int(v) for v in labels[row])
        rel = df["mp3_path"].iloc[row]
        add_clip(clips, skips, Clip(clip_id, root / rel, split, target, mtat_song(rel)))
    name = "mtat" if filtered else "mtat_star"
    return finish_dataset(name, clips, MTAT_TOP50, True, skips)


_SEGMENT_SUFFIX = re.compile(r"-\d+-\d+$")


def mtat_song(mp3_path: str) -> str:
    """The song of an MTAT clip: its file name without the folder, the ``.mp3`` and the
    ``-<start>-<end>`` segment suffix (MTAT cuts each song into ~29-s segments), e.g.
    ``f/american_bach_soloists-...-01-bwv54__i_aria-30-59.mp3`` ->
    ``american_bach_soloists-...-01-bwv54__i_aria``."""
    stem = posixpath.basename(mp3_path)
    stem = stem[:-4] if stem.lower().endswith(".mp3") else stem
    return _SEGMENT_SUFFIX.sub("", stem)


def _listed_rows(
    entries: dict[str, list[tuple[int, str]]], row_of_path: dict[str, int], split_dir: Path
) -> list[tuple[str, int]]:
    rows = []
    for split, lines in entries.items():
        for lineno, rel in lines:
            if rel not in row_of_path:
                raise DatasetError(
                    f"{split_dir / f'{split}.txt'}:{lineno}: '{rel}' is not in {MTAT_CSV}"
                )
            rows.append((split, row_of_path[rel]))
    return rows


def _folder_rows(df: pd.DataFrame, csv_path: Path) -> list[tuple[str, int]]:
    rows = []
    for i, (clip_id, rel) in enumerate(zip(df["clip_id"], df["mp3_path"], strict=True)):
        folder = rel.split("/", 1)[0] if "/" in rel else ""
        if folder not in MTAT_SPLIT_OF_FOLDER:
            raise DatasetError(
                f"{csv_path}: clip_id {clip_id}: '{rel}' is not in an MTAT folder 0-9, a-f"
            )
        rows.append((MTAT_SPLIT_OF_FOLDER[folder], i))
    return rows


# -- NSynth ----------------------------------------------------------------------------------


def load_nsynth(root: str | Path) -> Dataset:
    """Load NSynth: 11-way instrument-family classification (:data:`NSYNTH_FAMILIES`).

    Reads ``nsynth-{train,valid,test}/examples.json`` (JSON only) and lists
    ``audio/<note_str>.wav``; target = ``instrument_family``. Missing and zero-byte audio is
    skipped. Raises :class:`DatasetError` naming the file for a missing or malformed JSON
    file, and naming the note for missing fields, an unknown or inconsistent family, an unsafe
    note_str or a note repeated across splits.
    """
    root = dataset_root(root, "NSynth")
    clips: list[Clip] = []
    skips = Skips()
    seen: set[str] = set()
    for split in SPLITS:
        split_dir = root / f"nsynth-{split}"
        for note_str, family, instrument in _nsynth_examples(split_dir / "examples.json"):
            if note_str in seen:
                raise DatasetError(f"{split_dir}: note {note_str} also appears in another split")
            seen.add(note_str)
            path = split_dir / "audio" / f"{note_str}.wav"
            add_clip(clips, skips, Clip(note_str, path, split, family, instrument))
    return finish_dataset("nsynth", clips, NSYNTH_FAMILIES, False, skips)


def _nsynth_examples(path: Path) -> list[tuple[str, int, str]]:
    """``(note_str, instrument_family, instrument_str)`` of one examples.json, checked, in file
    order (the instrument is the note's cluster: one instrument plays many notes)."""
    if not path.is_file():
        raise DatasetError(f"{path}: NSynth examples file not found")
    try:
        with path.open(encoding="utf-8") as fh:
            data = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: malformed JSON ({exc})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a JSON object keyed by note_str")
    out = []
    for key, ex in data.items():
        where = f"{path}: note {key}"
        if not isinstance(ex, dict):
            raise DatasetError(f"{where}: expected an object of note fields")
        missing = [f for f in NSYNTH_FIELDS if f not in ex]
        if missing:
            raise DatasetError(f"{where}: missing field(s) {', '.join(missing)}")
        if ex["note_str"] != key:
            raise DatasetError(f"{where}: note_str '{ex['note_str']}' differs from its key")
        if "/" in key or "\\" in key or key in ("", ".", ".."):
            raise DatasetError(f"{where}: note_str is not a plain file name")
        family = ex["instrument_family"]
        family_ok = isinstance(family, int) and not isinstance(family, bool)
        if not family_ok or not 0 <= family < len(NSYNTH_FAMILIES):
            raise DatasetError(f"{where}: unknown instrument_family {family!r}")
        if ex["instrument_family_str"] != NSYNTH_FAMILIES[family]:
            raise DatasetError(
                f"{where}: instrument_family {family} is '{NSYNTH_FAMILIES[family]}', but "
                f"instrument_family_str is '{ex['instrument_family_str']}'"
            )
        out.append((key, family, str(ex["instrument_str"])))
    return out


# -- FMA -------------------------------------------------------------------------------------

_FMA_COLUMNS = (("set", "subset"), ("set", "split"), ("track", "genre_top"), ("artist", "id"))


def load_fma(root: str | Path, subset: str = "small") -> Dataset:
    """Load FMA genre classification (``('track', 'genre_top')``, single label).

    Each track's group (cluster of test items) is its artist, ``('artist', 'id')``.
    ``subset="small"``: the 8 genres of :data:`FMA_GENRES`; ``subset="medium"``: small plus
    medium tracks (as FMA defines medium), vocabulary = the sorted genre_top values present.
    Audio at ``fma_<subset>/<id[:3]>/<id>.mp3``. Known empty tracks, missing and zero-byte
    files are skipped; short tracks are kept (the feature store handles them).

    Raises :class:`DatasetError` for an unknown subset, an unreadable ``tracks.csv`` or missing
    columns (naming the file), and an unknown split or genre (naming the track id).
    """
    if subset not in FMA_SUBSETS:
        raise DatasetError(f"unknown FMA subset '{subset}' (expected small or medium)")
    root = dataset_root(root, "FMA")
    tracks = _read_fma_tracks(root / "fma_metadata" / "tracks.csv")
    tracks = tracks[tracks[("set", "subset")].isin(FMA_SUBSETS[subset])]
    genres = tracks[("track", "genre_top")]
    if subset == "small":
        vocabulary = FMA_GENRES
    else:
        vocabulary = tuple(sorted({g for g in genres if isinstance(g, str)}))
    class_of = {g: i for i, g in enumerate(vocabulary)}
    clips: list[Clip] = []
    skips = Skips()
    artists = tracks[("artist", "id")]
    rows = zip(tracks.index, tracks[("set", "split")], genres, artists, strict=True)
    for track_id, split, genre, artist in rows:
        clip_id = f"{track_id:06d}"
        if split not in FMA_SPLITS:
            raise DatasetError(f"FMA track {clip_id}: unknown split {split!r}")
        if genre not in class_of:
            raise DatasetError(f"FMA track {clip_id}: genre_top {genre!r} is not a {subset} genre")
        if clip_id in FMA_EMPTY:
            skips.add("known_empty", clip_id)
            continue
        path = root / f"fma_{subset}" / clip_id[:3] / f"{clip_id}.mp3"
        # No artist id: the track is a cluster of its own.
        group = f"artist-{int(artist)}" if pd.notna(artist) else ""
        add_clip(clips, skips, Clip(clip_id, path, FMA_SPLITS[split], class_of[genre], group))
    return finish_dataset(
        f"fma_{subset}" if subset != "small" else "fma", clips, vocabulary, False, skips
    )


def _read_fma_tracks(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DatasetError(f"{path}: FMA tracks file not found")
    try:
        tracks = pd.read_csv(path, header=[0, 1], index_col=0, low_memory=False)
    except (pd.errors.ParserError, ValueError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot parse the two-level tracks.csv ({exc})") from None
    missing = [f"{a}/{b}" for a, b in _FMA_COLUMNS if (a, b) not in tracks.columns]
    if missing:
        raise DatasetError(f"{path}: missing column(s) {', '.join(missing)}")
    if not pd.api.types.is_integer_dtype(tracks.index):
        raise DatasetError(f"{path}: the track_id index is not integer")
    dup = tracks.index[tracks.index.duplicated()]
    if len(dup):
        raise DatasetError(f"{path}: duplicate track_id {dup[0]:06d}")
    return tracks
