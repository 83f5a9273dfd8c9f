"""The README walkthrough "Your own data", end to end through the command line: a folder of
audio and a labels CSV, a profile file, cola pre-trained on the folder, a task declared by
file, an external HEAR encoder, the report; and the promises around it (``--dry-run`` writes
nothing, a plan without probes ends in one line, the failed steps are always listed)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "benchmark", "--log-level", "WARNING", *args],
        cwd=cwd or ROOT, env=env, capture_output=True, text=True, timeout=1500,
    )  # fmt: skip


@pytest.fixture(scope="module")
def walkthrough(synth_smoke, tmp_path_factory):
    """My music = the smoke corpus's FMA-like MP3s; my task = their genre, grouped by artist."""
    root = synth_smoke[0] / "fma"
    work = tmp_path_factory.mktemp("mine")
    tracks = pd.read_csv(root / "fma_metadata" / "tracks.csv", header=[0, 1], index_col=0)
    tracks = tracks[tracks[("set", "subset")] == "small"]
    with open(work / "genres.csv", "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["path", "label", "group"])
        for track_id, row in tracks.iterrows():
            tid = f"{track_id:06d}"
            out.writerow([f"{tid[:3]}/{tid}.mp3", row[("track", "genre_top")],
                          f"artist{row[('artist', 'id')]}"])  # fmt: skip
    (work / "genre.toml").write_text(
        f'name = "my_genres"\naudio_root = "{root / "fma_small"}"\nlabels = "genres.csv"\n'
        'kind = "multiclass"\nprobe = "linear"\n[split]\nvalid_fraction = 0.2\n'
        "test_fraction = 0.25\n"
    )
    (work / "mine.toml").write_text(
        'base = "smoke"\n'
        f'[data]\npretrain_source = "folder"\npretrain_root = "{root / "fma_small"}"\n'
        "valid_fraction = 0.2\n"
        "[encoder]\nwidth_coefficient = 0.1\ndepth_coefficient = 0.1\n"
        "[pretrain]\nsteps = 2\nbatch_size = 4\nnum_workers = 0\ncheckpoint_every = 2\n"
        "val_every = 2\n"
        '[probe]\nparams = "default"\nseeds = [0, 1]\nmax_epochs = 3\ntrain_hop_frames = 98\n'
        f'[paths]\nruns_dir = "{work / "runs"}"\n'
        '[benchmark]\nmethods = ["random_init", "cola", "hear:tests.hear_tiny"]\ntasks = []\n'
        f'task_files = ["{work / "genre.toml"}"]\ncalibration_reps = 200\n'
    )
    return work


def test_dry_run_says_which_data_and_writes_nothing(walkthrough):
    out = _cli("run", "--profile", str(walkthrough / "mine.toml"), "--dry-run")
    assert out.returncode == 0, out.stderr
    assert "pre-training: every audio file under" in out.stdout
    assert f"task my_genres: task file {walkthrough / 'genre.toml'}" in out.stdout
    assert "probe:hear:tests.hear_tiny:s0:my_genres:p1" in out.stdout
    assert not (walkthrough / "runs").exists()  # no mlflow.db, no folders


def test_features_builds_only_the_named_tasks_and_the_pretraining_corpus(walkthrough):
    out = _cli("features", "--profile", str(walkthrough / "mine.toml"), "--tasks", "my_genres")
    assert out.returncode == 0, out.stderr
    # the task's audio root is the pre-training folder: one store serves both
    (line,) = out.stdout.strip().splitlines()
    assert line.startswith("own-fma_small-") and "(0 skipped, of which 0 missing" in line
    wrong = _cli("features", "--profile", str(walkthrough / "mine.toml"), "--tasks", "nope")
    assert wrong.returncode == 2 and "unknown task 'nope'" in wrong.stderr


def test_a_plan_without_probes_ends_in_one_line(walkthrough):
    out = _cli("run", "--profile", str(walkthrough / "mine.toml"), "--only", "features")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    assert "report: not built, this plan has no probe results (--only features)" in out.stdout
    assert "finished in" in out.stdout  # the steps' summary comes first, always


def test_your_own_data_walkthrough(walkthrough):
    out = _cli("run", "--profile", str(walkthrough / "mine.toml"))
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert "0 failed or blocked" in text
    assert "my_genres (accuracy; chance level" in text
    for method in ("random_init", "cola", "hear:tests.hear_tiny"):
        assert f"    {method}" in text, method
    report = (walkthrough / "runs" / "mine" / "report" / "leaderboard.md").read_text()
    assert "hear:tests.hear_tiny (external)" in report
    assert "HEAR 2021 API module tests.hear_tiny" in report
    assert "pre-training: every audio file under" in report
    assert "my_genres: train" in report and "clips;" in report
    assert "No task of the paper's tables was run" in report
    assert "missing:" not in report
    # the external encoder and the folder corpus leave no pre-training or separation behind
    runs = walkthrough / "runs" / "mine" / "pretrain"
    # (random_init: its initial weights with batch-norm statistics of the folder's music)
    assert sorted({p.name.split("-")[0] for p in runs.iterdir()}) == ["cola", "random_init"]
    # export the encoder pre-trained on my music as a HEAR module
    exported = _cli("export-hear", "--profile", str(walkthrough / "mine.toml"), "--method",
                    "cola", "--out", str(walkthrough / "export"))  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    assert (walkthrough / "export" / "mscol_cola_s0" / "model.pt").is_file()
