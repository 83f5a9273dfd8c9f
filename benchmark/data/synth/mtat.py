"""MTAT-like corpus: tagged 8-12 s songs clips with their four stems, in the real MTAT layout.

Writes ``mtat/annotations_final.csv`` (tab-separated, every field quoted), MP3 clips in
folders ``0``-``9``, ``a``-``f`` (0-b train, c valid, d-f test), the filtered split lists
``mtat/mtat_split/{train,valid,test}.txt`` and ``mtat/stems/<clip_id>/{bass,drums,vocals,
other,mix}.flac`` (16-bit; ``mix`` is the exact sum of the four stems).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmark.data.datasets import MTAT_BROKEN, MTAT_SPLIT_OF_FOLDER, MTAT_TOP50, SPLITS
from benchmark.data.synth.files import write_audio
from benchmark.data.synth.knobs import Difficulty
from benchmark.data.synth.music import render_clip
from benchmark.data.synth.songs import STEMS, plan_song

CORPUS_KEY = 1  # first element of every MTAT seed's spawn key

# MTAT tag columns beyond the top 50 (real MTAT has 188): they show that loaders pick tags by
# name; "jazz" is never true here
EXTRA_TAGS = (
    "acoustic", "bass", "eastern", "folk", "hard rock", "heavy", "hip hop", "jazz", "no beat",
    "orchestra", "organ", "trance", "trumpet",
)  # fmt: skip
TAG_COLUMNS = tuple(sorted(MTAT_TOP50 + EXTRA_TAGS))  # not the benchmark order, on purpose

SYNONYMS = {  # concept -> the MTAT tags annotators used for it
    "vocals": ("vocals", "vocal", "voice", "singing"),
    "no vocals": ("no vocals", "no vocal", "no voice"),
    "male": ("male", "man", "male vocal", "male voice"),
    "female": ("female", "woman", "female vocal", "female voice"),
    "choir": ("choir", "choral"),
    "classical": ("classical", "classic"),
    "beat": ("beat", "beats"),
    "quiet": ("quiet", "soft"),
}

STYLE_WEIGHTS = {  # how often each style occurs (classical is MTAT's second tag)
    "classical": 24, "rock": 9, "pop": 7, "electronic": 8, "techno": 7, "ambient": 8,
    "new_age": 6, "indian": 5, "metal": 4, "dance": 5, "country": 4, "folk": 5, "hiphop": 2,
    "experimental": 4, "world": 2,
}  # fmt: skip
FOLDERS = "0123456789abcdef"
_WORDS = (
    "river", "night", "golden", "echo", "morning", "stone", "velvet", "paper", "silver", "glass",
    "winter", "harbor", "falling", "circle", "hollow", "electric", "quiet", "ember", "north",
    "garden", "signal", "mirror", "lantern", "distant", "static", "amber", "canyon", "drift",
)  # fmt: skip
_SEGMENTS = ((0, 29), (30, 59), (59, 88), (88, 117), (117, 146), (146, 175))  # as in MTAT names


@dataclass(frozen=True)
class ClipJob:
    """One MTAT clip to render (built in the parent process, run in a worker)."""

    index: int
    clip_id: str
    song: int
    style: str
    path: str  # mp3_path relative to mtat/
    duration_s: float
    seed: int
    knobs: Difficulty


def rng_for(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(CORPUS_KEY, *key)))


def _slug(rng: np.random.Generator, words: int) -> str:
    return "_".join(_WORDS[int(i)] for i in rng.integers(len(_WORDS), size=words))


def catalogue(num_clips: int, duration_s: float, seed: int, knobs: Difficulty) -> list[ClipJob]:
    """Songs, artists, folders, clip ids and paths of ``num_clips`` clips."""
    rng = rng_for(seed, 0)
    total = sum(STYLE_WEIGHTS.values())
    style_load = dict.fromkeys(STYLE_WEIGHTS, 0)
    folder_load = dict.fromkeys(FOLDERS, 0)
    jobs: list[ClipJob] = []
    clip_id, song, artist = int(rng.integers(2, 10)), 0, 0
    max_album = max(2, num_clips // 24)  # small corpora: small albums, so more styles
    while len(jobs) < num_clips:
        # the style furthest behind its share: small corpora still cover every style
        deficit = {s: w / total * (len(jobs) + 1) - style_load[s] for s, w in STYLE_WEIGHTS.items()}
        style = max(deficit, key=lambda s: (deficit[s], rng.random()))
        album = _slug(rng, 2)
        album_end = len(jobs) + max_album
        for track in range(int(rng.integers(1, 4))):
            least = min(folder_load.values())  # songs fill the folders evenly, as in MTAT
            folder = str(rng.choice([f for f, c in folder_load.items() if c == least]))
            title = _slug(rng, int(rng.integers(1, 4)))
            for segment in _SEGMENTS[: int(rng.integers(1, 4))]:
                if len(jobs) in (num_clips, album_end):
                    break
                while str(clip_id) in MTAT_BROKEN:
                    clip_id += 1
                name = f"synth_artist_{artist}-{album}-{track + 1:02d}-{title}-{segment[0]}-{segment[1]}"
                jobs.append(ClipJob(len(jobs), str(clip_id), song, style, f"{folder}/{name}.mp3",
                                    duration_s, seed, knobs))  # fmt: skip
                folder_load[folder] += 1
                style_load[style] += 1
                clip_id += int(rng.integers(1, 4))
            song += 1
        artist += 1
    return jobs


def render(job: ClipJob, root: Path) -> dict:
    """Render one clip, write its MP3 and stems; return its CSV row data."""
    plan = plan_song(job.style, rng_for(job.seed, 1, job.song), job.knobs)
    clip = render_clip(plan, rng_for(job.seed, 2, job.index), job.duration_s, job.knobs)
    stem_dir = root / "stems" / job.clip_id
    for name, wave in (*clip.stems.items(), ("mix", clip.mix)):
        write_audio(stem_dir / f"{name}.flac", wave, "FLAC", "PCM_16")
    write_audio(root / job.path, clip.mix.astype(np.float32) / 32768, "MP3")
    tags = draw_tags(sorted(clip.concepts), rng_for(job.seed, 3, job.index), job.knobs)
    return {
        "clip_id": job.clip_id, "mp3_path": job.path, "tags": tags, "style": job.style,
        "concepts": sorted(clip.concepts), "active": clip.active,
    }  # fmt: skip


def draw_tags(concepts: list[str], rng: np.random.Generator, knobs: Difficulty) -> list[str]:
    """Weak MTAT annotation of true concepts: one or more synonyms, each possibly dropped."""
    tags: set[str] = set()
    for concept in concepts:
        names = [t for t in SYNONYMS.get(concept, (concept,)) if t in TAG_COLUMNS]
        if not names:
            continue
        chosen = {names[int(rng.integers(len(names)))]}
        chosen.update(t for t in names if rng.random() < knobs.synonym_rate)
        tags.update(t for t in sorted(chosen) if rng.random() >= knobs.tag_drop_rate)
    if rng.random() < knobs.untagged_rate:
        tags -= set(MTAT_TOP50)
    return sorted(tags)


def write_metadata(root: Path, rows: list[dict]) -> dict[str, dict[str, int]]:
    """Write annotations_final.csv and the filtered split lists; return split counts."""
    rows = sorted(rows, key=lambda r: int(r["clip_id"]))
    header = ("clip_id", *TAG_COLUMNS, "mp3_path")
    lines = ["\t".join(f'"{h}"' for h in header)]
    for r in rows:
        tags = set(r["tags"])
        fields = (r["clip_id"], *("1" if t in tags else "0" for t in TAG_COLUMNS), r["mp3_path"])
        lines.append("\t".join(f'"{v}"' for v in fields))
    (root / "annotations_final.csv").write_text("\n".join(lines) + "\n")
    split_dir = root / "mtat_split"
    split_dir.mkdir(parents=True, exist_ok=True)
    counts = {"all": dict.fromkeys(SPLITS, 0), "filtered": dict.fromkeys(SPLITS, 0)}
    listed: dict[str, list[str]] = {s: [] for s in SPLITS}
    for r in rows:
        split = MTAT_SPLIT_OF_FOLDER[r["mp3_path"].split("/", 1)[0]]
        counts["all"][split] += 1
        if set(r["tags"]) & set(MTAT_TOP50):
            listed[split].append(r["mp3_path"])
            counts["filtered"][split] += 1
    for split, paths in listed.items():
        (split_dir / f"{split}.txt").write_text("".join(f"{p}\n" for p in sorted(paths)))
    return counts


STEM_NAMES = (*STEMS, "mix")
