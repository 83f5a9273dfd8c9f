"""FMA-like corpus: 8 genres of procedural songs in the real fma_small layout.

Writes ``fma/fma_metadata/tracks.csv`` with FMA's two-level header (read it with
``pd.read_csv(path, header=[0, 1], index_col=0)``) and ``fma/fma_small/NNN/NNNNNN.mp3``.
Genres draw their songs from overlapping style mixtures, so genre is learnable but not trivial.
A few rows of other subsets (``medium``, ``large``, no audio) exercise the subset filter.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.data.datasets import FMA_EMPTY, FMA_GENRES
from benchmark.data.synth.files import write_audio
from benchmark.data.synth.knobs import Difficulty
from benchmark.data.synth.music import render_clip
from benchmark.data.synth.songs import plan_song

CORPUS_KEY = 3
GENRE_STYLES = {  # genre -> (primary style, weight), then secondary styles (scaled by a knob)
    "Electronic": (("electronic", 3.5), ("techno", 3), ("dance", 2.5), ("ambient", 1)),
    "Experimental": (("experimental", 6), ("ambient", 1.5), ("electronic", 1.5), ("classical", 1)),
    "Folk": (("folk", 6), ("country", 2.5), ("new_age", 1.5)),
    "Hip-Hop": (("hiphop", 8), ("electronic", 1), ("pop", 1)),
    "Instrumental": (("new_age", 2.5), ("classical", 2.5), ("ambient", 1.5), ("rock", 1.5),
                     ("electronic", 1), ("folk", 1)),
    "International": (("indian", 4.5), ("world", 4.5), ("folk", 1)),
    "Pop": (("pop", 7), ("dance", 1.5), ("country", 1.5)),
    "Rock": (("rock", 6.5), ("metal", 2.5), ("pop", 1)),
}  # fmt: skip
GENRE_IDS = {"Electronic": 15, "Experimental": 38, "Folk": 17, "Hip-Hop": 21,
             "Instrumental": 1235, "International": 2, "Pop": 10, "Rock": 12}  # fmt: skip
OTHER_GENRES = ("Blues", "Classical", "Jazz", "Country", "Soul-RnB", "Spoken", "Easy Listening")
FMA_SPLIT_NAMES = {"train": "training", "valid": "validation", "test": "test"}
MAX_TRACKS_PER_ARTIST = 5  # tracks per artist: 1-5, 3 on average


@dataclass(frozen=True)
class TrackJob:
    """One FMA track to render (built in the parent process, run in a worker)."""

    index: int
    track_id: int
    genre: str
    style: str
    split: str
    artist: int
    duration_s: float
    seed: int
    knobs: Difficulty

    @property
    def path(self) -> str:
        tid = f"{self.track_id:06d}"
        return f"fma_small/{tid[:3]}/{tid}.mp3"


def rng_for(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(CORPUS_KEY, *key)))


def _style(genre: str, rng: np.random.Generator, mix: float) -> str:
    table = GENRE_STYLES[genre]
    weights = np.array([w if i == 0 else w * mix for i, (_, w) in enumerate(table)], dtype=float)
    return table[int(rng.choice(len(table), p=weights / weights.sum()))][0]


def _genre_splits(count: int, rng: np.random.Generator) -> list[str]:
    """80/10/10 training/validation/test within a genre (tiny genres: all training)."""
    n_valid = n_test = round(0.1 * count) if count >= 3 else 0
    splits = ["valid"] * n_valid + ["test"] * n_test
    splits += ["train"] * (count - len(splits))
    return [splits[i] for i in rng.permutation(count)]


def catalogue(num_tracks: int, duration_s: float, seed: int, knobs: Difficulty) -> list[TrackJob]:
    """Genres, styles, splits and track ids of ``num_tracks`` tracks (balanced genres)."""
    rng = rng_for(seed, 0)
    base, extra = divmod(num_tracks, len(FMA_GENRES))
    slots = []
    for g, genre in enumerate(FMA_GENRES):
        count = base + (1 if g < extra else 0)
        slots += [(genre, split) for split in _genre_splits(count, rng)]
    slots = [slots[i] for i in rng.permutation(len(slots))]  # ids do not follow genres
    artists = _artists(slots, rng_for(seed, 8))
    jobs = []
    track_id = 2
    for index, (genre, split) in enumerate(slots):
        while f"{track_id:06d}" in FMA_EMPTY:
            track_id += 1
        style = _style(genre, rng, knobs.fma_style_mix)
        jobs.append(TrackJob(index, track_id, genre, style, split, artists[index], duration_s,
                             seed, knobs))  # fmt: skip
        track_id += int(rng.integers(1, 30))
    return jobs


def _artists(slots: list[tuple[str, str]], rng: np.random.Generator) -> list[int]:
    """An artist id per slot: artists of 1-5 tracks within one genre and split, as in FMA,
    whose splits keep an artist's tracks together; test tracks then cluster by artist."""
    out = [0] * len(slots)
    artist = 0
    for key in sorted(set(slots)):
        positions = [i for i, slot in enumerate(slots) if slot == key]
        while positions:
            artist += 1
            size = int(rng.integers(1, MAX_TRACKS_PER_ARTIST + 1))
            for i in positions[:size]:
                out[i] = artist
            positions = positions[size:]
    return out


def render(job: TrackJob, root: Path) -> dict:
    """Render one track and write its MP3; return its tracks.csv row data."""
    plan = plan_song(job.style, rng_for(job.seed, 1, job.index), job.knobs,
                     vocals=job.genre != "Instrumental")  # fmt: skip
    clip = render_clip(plan, rng_for(job.seed, 2, job.index), job.duration_s, job.knobs)
    write_audio(root / job.path, clip.mix.astype(np.float32) / 32768, "MP3")
    return {"track_id": job.track_id, "style": job.style, "concepts": sorted(clip.concepts)}


def write_metadata(root: Path, jobs: list[TrackJob], seed: int) -> dict:
    """Write fma_metadata/tracks.csv (two-level header, as FMA); return split counts."""
    rng = rng_for(seed, 9)
    records = []
    for job in sorted(jobs, key=lambda j: j.track_id):
        records.append(_record(job.track_id, job.artist, FMA_SPLIT_NAMES[job.split], "small",
                               job.genre, job.duration_s))  # fmt: skip
    last = max((j.track_id for j in jobs), default=2)
    for k in range(max(2, len(jobs) // 16)):  # other subsets: no audio in fma_small
        genre = OTHER_GENRES[k % len(OTHER_GENRES)] if k % 3 else None
        subset = "medium" if k % 2 else "large"
        split = ("training", "validation", "test")[k % 3]
        records.append(_record(last + 7 * (k + 1), int(rng.integers(1, 9999)), split, subset,
                               genre, float(rng.uniform(60, 400))))  # fmt: skip
    df = pd.DataFrame.from_records(records, index="track_id")
    df.columns = pd.MultiIndex.from_tuples(df.columns)
    df.index.name = "track_id"
    path = root / "fma_metadata" / "tracks.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path)
    counts = {s: sum(j.split == s for j in jobs) for s in FMA_SPLIT_NAMES}
    return {"splits": counts, "genres": {g: sum(j.genre == g for j in jobs) for g in FMA_GENRES}}


def _record(track_id, artist, split, subset, genre, duration_s) -> dict:
    gid = GENRE_IDS.get(genre)
    return {
        "track_id": track_id,
        ("album", "id"): artist * 3 + 1,
        ("album", "title"): f"Synthetic Album {artist}",
        ("artist", "id"): artist,
        ("artist", "name"): f"Synth Artist {artist}",
        ("set", "split"): split,
        ("set", "subset"): subset,
        ("track", "bit_rate"): 320000,
        ("track", "duration"): int(round(duration_s)),
        ("track", "genre_top"): genre,
        ("track", "genres"): f"[{gid}]" if gid else "[]",
        ("track", "genres_all"): f"[{gid}]" if gid else "[]",
        ("track", "title"): f"Track {track_id}",
    }
