"""Generate the whole synthetic corpus (MTAT-like, NSynth-like, FMA-like) into one folder."""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from benchmark.data.synth import fma, mtat, nsynth
from benchmark.data.synth.knobs import GENERATOR_VERSION, NSYNTH_NOTE_S, SAMPLE_RATE, Difficulty

log = logging.getLogger(__name__)

_CORPORA = ("mtat", "nsynth", "fma")
_IN_PROGRESS = ".synth_in_progress"  # marks a tree this generator may overwrite


@dataclass(frozen=True)
class Size:
    mtat_clips: int
    clip_s: float  # MTAT and FMA clip duration, seconds
    nsynth_notes: int
    fma_tracks: int


SIZES = {
    "smoke": Size(mtat_clips=160, clip_s=6.0, nsynth_notes=150, fma_tracks=64),
    "default": Size(mtat_clips=640, clip_s=12.0, nsynth_notes=1200, fma_tracks=640),
}


def resolve_size(size: str | int) -> Size:
    """A named size, or an integer N: N MTAT clips of 12 s, NSynth and FMA scaled as default."""
    if isinstance(size, str) and size.strip().isdigit():
        size = int(size)
    if isinstance(size, int) and not isinstance(size, bool):
        if size < 1:
            raise ValueError(f"synthetic corpus size must be a positive integer, got {size}")
        ref = SIZES["default"]
        return Size(
            mtat_clips=size, clip_s=ref.clip_s,
            nsynth_notes=max(1, round(size * ref.nsynth_notes / ref.mtat_clips)),
            fma_tracks=max(1, round(size * ref.fma_tracks / ref.mtat_clips)),
        )  # fmt: skip
    if size not in SIZES:
        raise ValueError(f"unknown synthetic corpus size {size!r} (smoke, default or an integer)")
    return SIZES[size]


def generate(
    out_dir: Path, size: str | int = "smoke", seed: int = 0, workers: int = 2,
    knobs: Difficulty | None = None, progress: bool = True,
) -> dict:  # fmt: skip
    """Write the synthetic corpus under ``out_dir`` and return its manifest.

    Layout: ``mtat/`` (annotations_final.csv, MP3 folders 0-f, mtat_split/, stems/),
    ``nsynth/`` (nsynth-{train,valid,test}/) and ``fma/`` (fma_metadata/, fma_small/), the
    formats of the real datasets, all at 16 kHz. The same ``seed`` gives byte-identical files
    for any number of ``workers`` (every clip has its own seed). ``manifest.json`` is written
    last: its presence means the tree is complete.

    ``progress`` shows a progress bar (one step per clip, note set or track).

    Raises ValueError for an unknown size, FileExistsError when ``out_dir`` holds ``mtat``,
    ``nsynth`` or ``fma`` folders that this generator did not write.
    """
    out_dir = Path(out_dir)
    knobs = knobs or Difficulty()
    spec = resolve_size(size)
    _prepare(out_dir)
    started = time.perf_counter()
    roots = {name: out_dir / name for name in _CORPORA}
    mtat_jobs = mtat.catalogue(spec.mtat_clips, spec.clip_s, seed, knobs)
    fma_jobs = fma.catalogue(spec.fma_tracks, spec.clip_s, seed, knobs)
    nsynth_jobs = nsynth.catalogue(spec.nsynth_notes, seed, knobs)
    jobs = [("mtat", j) for j in mtat_jobs] + [("fma", j) for j in fma_jobs]
    jobs += [("nsynth", j) for j in nsynth_jobs]
    results = _run(jobs, roots, workers, progress)

    mtat_counts = mtat.write_metadata(roots["mtat"], results["mtat"])
    nsynth_counts = nsynth.write_metadata(
        roots["nsynth"], list(zip(nsynth_jobs, results["nsynth"], strict=True))
    )
    fma_counts = fma.write_metadata(roots["fma"], fma_jobs, seed)
    manifest = {
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "size": size,
        "sample_rate": SAMPLE_RATE,
        "difficulty": dataclasses.asdict(knobs),
        "mtat": {
            "num_clips": len(mtat_jobs), "clip_duration_s": spec.clip_s,
            "num_songs": len({j.song for j in mtat_jobs}), "splits": mtat_counts["all"],
            "filtered_splits": mtat_counts["filtered"], "tag_columns": list(mtat.TAG_COLUMNS),
            "stems": list(mtat.STEM_NAMES),
        },
        "nsynth": {
            "num_notes": sum(nsynth_counts.values()), "note_duration_s": NSYNTH_NOTE_S,
            "num_instruments": len(nsynth_jobs), "splits": nsynth_counts,
        },
        "fma": {
            "num_tracks": len(fma_jobs), "track_duration_s": spec.clip_s, **fma_counts,
        },
    }  # fmt: skip
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    (out_dir / _IN_PROGRESS).unlink()
    log.info("synthetic corpus (%s, seed %d) written to %s in %.1f s", size, seed, out_dir,
             time.perf_counter() - started)  # fmt: skip
    return manifest


def _prepare(out_dir: Path) -> None:
    """Clear a previous synthetic corpus in ``out_dir``; refuse to touch anything else."""
    ours = (out_dir / "manifest.json").is_file() or (out_dir / _IN_PROGRESS).is_file()
    existing = [out_dir / c for c in _CORPORA if (out_dir / c).exists()]
    if existing and not ours:
        raise FileExistsError(
            f"{out_dir} holds {', '.join(p.name for p in existing)} but no synthetic-corpus "
            "manifest; refusing to overwrite it (choose an empty folder)"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / _IN_PROGRESS).touch()
    (out_dir / "manifest.json").unlink(missing_ok=True)
    for path in existing:
        shutil.rmtree(path)


_RENDER = {"mtat": mtat.render, "nsynth": nsynth.render, "fma": fma.render}


def _work(item: tuple[int, str, object, Path]):
    index, corpus, job, root = item
    return index, _RENDER[corpus](job, root)


def _run(
    jobs: list[tuple[str, object]], roots: dict[str, Path], workers: int, progress: bool
) -> dict:
    """Render every job (in ``workers`` processes); results per corpus in job order."""
    items = [(i, corpus, job, roots[corpus]) for i, (corpus, job) in enumerate(jobs)]
    out: list = [None] * len(items)
    if workers <= 1:
        with tqdm(
            total=len(items), desc="synthetic corpus", unit="job", disable=not progress
        ) as bar:
            for item in items:
                index, result = _work(item)
                out[index] = result
                bar.update()
    else:
        with _context().Pool(workers) as pool:
            with tqdm(
                total=len(items), desc="synthetic corpus", unit="job", disable=not progress
            ) as bar:
                for index, result in pool.imap_unordered(_work, items, chunksize=2):
                    out[index] = result
                    bar.update()
    results: dict[str, list] = {c: [] for c in _CORPORA}
    for (corpus, _job), result in zip(jobs, out, strict=True):
        results[corpus].append(result)
    return results


def _context():
    """Fork where it is safe (Linux, torch not loaded: saves each worker ~1.5 s of imports);
    otherwise spawn fresh interpreters (a forked torch can deadlock in its thread pools)."""
    if sys.platform.startswith("linux") and "torch" not in sys.modules:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")
