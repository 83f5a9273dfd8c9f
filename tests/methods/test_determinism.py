"""Batches are a pure function of (seed, step): the same in every process, whatever
PYTHONHASHSEED (string hashing, hence set and dict-of-set iteration order, changes with it);
and a silent positive holds the configured silent value, the one MWS masks fill with."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from benchmark.config import PretrainConfig
from benchmark.pretrain.pairs import PairCorpus
from methods import METHODS
from methods.msa import MSA
from methods.mws import mws_augment
from tests.fixtures import make_corpus

ROOT = Path(__file__).resolve().parents[2]
SEED, STEPS, BATCH = 7, range(4), 8

# Runs in a fresh interpreter: every pre-training method draws the batches of a few steps over
# the fixture corpus; prints {method: sha256 of the batches' bytes}.
_DRAW = """
import hashlib, json, sys
from pathlib import Path
from benchmark.pretrain.loop import step_rng
from methods import METHODS
from tests.fixtures import make_corpus

corpus = make_corpus(Path(sys.argv[1]))
seed, steps, batch_size = int(sys.argv[2]), range(int(sys.argv[3])), int(sys.argv[4])
out = {}
for name, method in METHODS.items():
    if not method.pretrained:
        continue
    digest = hashlib.sha256()
    for step in steps:
        batch = method.sample(corpus, batch_size, step_rng(seed, step))
        for tensor in (batch.anchors, batch.positives, batch.silent):
            digest.update(tensor.numpy().tobytes())
        digest.update(repr(batch.source).encode())
    out[name] = digest.hexdigest()
print(json.dumps(out))
"""


def _hashes(tmp_path: Path, hash_seeds: tuple[str, ...]) -> list[dict[str, str]]:
    """``{method: hash}`` from one fresh interpreter per hash seed (run side by side)."""
    procs = []
    for hash_seed in hash_seeds:
        env = {
            **os.environ,
            "PYTHONHASHSEED": hash_seed,
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1",
        }
        folder = tmp_path / f"hashseed{hash_seed}"
        folder.mkdir()
        args = [str(folder), str(SEED), str(len(STEPS)), str(BATCH)]
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", _DRAW, *args],
                env=env,
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    out = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def test_batches_are_identical_under_two_hash_seeds(tmp_path):
    first, second = _hashes(tmp_path, ("1", "2"))
    pretrained = sorted(name for name, method in METHODS.items() if method.pretrained)
    assert sorted(first) == sorted(second) == pretrained
    assert len(pretrained) == len(METHODS) - 1  # every method but the untrained floor
    differing = [name for name in pretrained if first[name] != second[name]]
    assert differing == [], f"batches depend on PYTHONHASHSEED: {differing}"


def test_a_silent_positive_holds_the_configured_silent_value(tmp_path):
    silent_value = PretrainConfig().silent_value
    fill_value = inspect.signature(mws_augment).parameters["fill_value"].default
    assert silent_value == 0.0 == fill_value
    # the fixture's stores under the configured silent value, as the pipeline builds them
    # (benchmark.pipeline.stages: PairCorpus(..., cfg.pretrain.silent_value, sources, ids))
    fixture = make_corpus(tmp_path)
    corpus = PairCorpus(
        fixture.mix, fixture.excerpt_frames, fixture.crop_frames, silent_value, fixture.sources
    )
    silent_crops, active_crops = [], []
    for step in range(40):
        batch = MSA("msa_vocals", sources=("vocals",)).sample(
            corpus, 8, np.random.default_rng([SEED, step])
        )
        silent = batch.silent.numpy()
        silent_crops += list(batch.positives.numpy()[silent])
        active_crops += list(batch.positives.numpy()[~silent])
    assert len(silent_crops) >= 8 and len(active_crops) >= 8
    assert all(np.all(crop == fill_value) for crop in silent_crops)
    assert not any(np.all(crop == fill_value) for crop in active_crops)
