"""Interrupted equals uninterrupted (issue #13), end to end on the smoke profile.

The smoke profile runs once uninterrupted; then again in a fresh runs folder, killed with
SIGKILL at seeded random moments of every stage (corpus generation, separator training,
separation, pre-training, tuning, probing, the report) and restarted after each kill; and
again, ending the process inside each kind of tracked step between "artefact written" and
"run closed" (the test hook ``BENCH_TEST_EXIT_BEFORE_CLOSE``, not timing luck). Each
interrupted run must end with the same ``leaderboard.csv`` byte for byte, the same weights
in every pre-training run's ``final.pt``, the same MLflow runs (by what each is: kind,
method, task, seeds) and none unfinished, duplicated or superseded without being marked.

What is compared does not depend on whether the smoke encoders learn anything: the
leaderboard holds whatever numbers the pipeline computes, to the last digit.

Slow (``make test-slow``, not ``make test`` or ``.ci/run``): one smoke run uninterrupted
(15 min), then about 1.5 and 1.25 times that for the two tests; 57 min in all on a 2-core
machine shared with other jobs (load ~6).
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from contextlib import closing
from pathlib import Path

import pytest
import torch

from benchmark.pipeline.tracking import EXIT_BEFORE_CLOSE_ENV, EXIT_BEFORE_CLOSE_STATUS

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[3]
RUN_TIMEOUT_S = 3600  # one invocation of the whole smoke pipeline, on a loaded machine
POLL_S = 0.05
HOOKED_KINDS = ("train-separator", "separate", "pretrain", "tune", "probe")


def _start(runs: Path, log: Path, **env) -> subprocess.Popen:
    """``run --profile smoke`` in a new process, its output appended to ``log`` unbuffered;
    ``proc.log`` and ``proc.log_start`` (where its output begins) serve the report's marker."""
    command = [sys.executable, "-m", "benchmark", "--log-level", "WARNING", "run", "--profile",
               "smoke", f"paths.runs_dir={runs}"]  # fmt: skip
    start = log.stat().st_size if log.exists() else 0
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            command,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    proc.log, proc.log_start = log, start
    return proc


def _finish(proc: subprocess.Popen, log: Path, expected: int = 0) -> None:
    rc = proc.wait(timeout=RUN_TIMEOUT_S)
    assert rc == expected, f"exit status {rc}, expected {expected}; see {log}:\n" + "\n".join(
        log.read_text(errors="replace").splitlines()[-30:]
    )


def _count(db: Path, sql: str) -> int:
    """A count from a SQLite store being written by the pipeline (0 while unreadable)."""
    if not db.is_file():
        return 0
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as con:
            return int(con.execute(sql).fetchone()[0])
    except sqlite3.Error:
        return 0


def _running_runs(runs: Path, kind: str, pid: int) -> int:
    """MLflow runs of ``kind`` that process ``pid`` has open (the ``bench.owner`` tag)."""
    return _count(
        runs / "mlflow.db",
        "SELECT count(*) FROM runs r JOIN tags k ON k.run_uuid = r.run_uuid "
        "JOIN tags o ON o.run_uuid = r.run_uuid WHERE r.status = 'RUNNING' "
        f"AND k.key = 'bench.kind' AND k.value = '{kind}' "
        f"AND o.key = 'bench.owner' AND o.value LIKE '%:{pid}:%'",
    )


def _running_trials(runs: Path, pid: int) -> int:
    """Optuna trials that process ``pid`` is running."""
    return _count(
        runs / "optuna.db",
        "SELECT count(*) FROM trials t JOIN trial_user_attributes a ON a.trial_id = t.trial_id "
        f"WHERE t.state = 'RUNNING' AND a.key = 'bench.owner' AND a.value_json LIKE '%:{pid}:%'",
    )


def _mid_training(runs: Path) -> bool:
    """A pre-training run past a checkpoint and not finished."""
    return any(
        not (ckpt.parent / "final.pt").exists()
        for ckpt in (runs / "smoke" / "pretrain").glob("*/checkpoint.pt")
    )


def _reporting(proc: subprocess.Popen) -> bool:
    """The process has printed its steps' outcome ("finished in ..."), which ``run`` does
    right before it builds the report."""
    with open(proc.log, "rb") as fh:
        fh.seek(proc.log_start)
        return b"finished in " in fh.read()


# (stage, marker(runs, proc) that process proc is in that stage, (min, max) of the seeded
# delay, what the kill must find under way or None), in pipeline order. The smoke plan runs
# each method's pre-training, tuning and probes in turn. The markers of tracked work look at
# the runs and trials the process to be killed has open, never at what earlier processes
# left; the others at files that exist only while their stage is under way (the corpus's
# temporary folder, a checkpoint without final weights), at a finished shard of the sources,
# or at the process's own output (the report).
KILLS = [
    ("corpus generation",
     lambda r, p: any((r / "cache" / "synth").glob("*.partial")), (0.5, 4.0), None),
    ("separator training",
     lambda r, p: _running_runs(r, "train-separator", p.pid) > 0, (0, 1), "train-separator"),
    ("separation",
     lambda r, p: any((r / "cache" / "features").glob("*-src-*/shards/*.json")), (0, 1), None),
    ("pre-training", lambda r, p: _running_runs(r, "pretrain", p.pid) > 0, (0, 0.5), "pretrain"),
    ("tuning", lambda r, p: _running_trials(r, p.pid) > 0, (0, 0.5), "a tuning trial"),
    ("probing", lambda r, p: _running_runs(r, "probe", p.pid) > 0, (0, 0.3), "probe"),
    ("pre-training after a checkpoint", lambda r, p: _mid_training(r), (0, 0.2), "pretrain"),
    ("report", lambda r, p: _reporting(p), (0, 2), None),
]  # fmt: skip
ATTEMPTS = 3  # kills per stage until one finds its kind of work under way


def _kill_in(proc: subprocess.Popen, runs: Path, marker, delay: float) -> bool:
    """SIGKILL ``proc`` at the first moment, ``delay`` s or more after its ``marker`` first
    held, at which the marker holds (so that a short step is killed inside a step of its
    kind, not after it); False when the process ended first."""
    since = None
    while proc.poll() is None:
        if marker(runs, proc):
            since = time.monotonic() if since is None else since
            if time.monotonic() - since >= delay:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return True
        time.sleep(POLL_S)
    return False


def _in_flight(runs: Path, pid: int) -> list[str]:
    """What the killed process ``pid`` had under way when it died: the runs and trials it
    left open (a dead process closes nothing)."""
    kinds = [k for k in HOOKED_KINDS if _running_runs(runs, k, pid)]
    return kinds + (["a tuning trial"] if _running_trials(runs, pid) else [])


def _final_weights(runs: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {
        path.parent.name: torch.load(path, weights_only=True)
        for path in sorted((runs / "smoke" / "pretrain").glob("*/final.pt"))
    }


def _mlflow_runs(runs: Path) -> list[dict]:
    """Every MLflow run: status and tags."""
    with closing(sqlite3.connect(runs / "mlflow.db")) as con:
        status = dict(con.execute("SELECT run_uuid, status FROM runs"))
        tags: dict[str, dict] = {run: {} for run in status}
        for run, key, value in con.execute("SELECT run_uuid, key, value FROM tags"):
            tags[run][key] = value
    return [{"id": run, "status": status[run], **tags[run]} for run in status]


def _current(runs: list[dict]) -> list[dict]:
    """The runs a lookup finds (a superseded run has been replaced by the run it names)."""
    return [r for r in runs if "bench.superseded_by" not in r]


def _what(run: dict) -> tuple:
    """What a run is, whatever folder it ran in: kind, method, task, seeds, separator, and the
    content key of the kinds whose keys do not depend on the folder (pre-training, sources).
    The others' do: a file's identity in the feature stores includes its path and mtime, so the
    embedding, tuning and probe keys of two folders differ while their numbers agree, and the
    trained separator's key names the corpus's folder."""
    kind = run["bench.kind"]
    seed = run.get("seed", run.get("pretrain_seed", ""))
    key = run["bench.key"] if kind in ("pretrain", "separate") else ""
    return (kind, run.get("method", ""), run.get("task", ""), seed, run.get("probe_seed", ""),
            run.get("separator", ""), key)  # fmt: skip


def _assert_same_results(reference: Path, runs: Path) -> None:
    board = "smoke/report/leaderboard.csv"
    assert (runs / board).read_bytes() == (reference / board).read_bytes()
    want, got = _final_weights(reference), _final_weights(runs)
    assert sorted(got) == sorted(want) and want
    for name, state in want.items():
        for tensor, value in state.items():
            assert torch.equal(got[name][tensor], value), (name, tensor)
    mlflow = _mlflow_runs(runs)
    assert [r["id"] for r in mlflow if r["status"] != "FINISHED"] == []
    keys = Counter(r["bench.key"] for r in _current(mlflow))
    assert [k for k, n in keys.items() if n > 1] == [], "duplicated runs"
    what = Counter(_what(r) for r in _current(mlflow))
    assert what == Counter(_what(r) for r in _current(_mlflow_runs(reference)))
    superseded = {r["bench.superseded_by"] for r in mlflow if "bench.superseded_by" in r}
    assert superseded <= {r["id"] for r in mlflow}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("uninterrupted") / "runs"
    log = runs.parent / "run.log"
    _finish(_start(runs, log), log)
    return runs


def test_killed_at_random_moments_gives_the_uninterrupted_results(uninterrupted, tmp_path):
    runs, log = tmp_path / "runs", tmp_path / "run.log"
    rng = random.Random(13)
    killed: list[tuple[str, list[str]]] = []
    proc = _start(runs, log)
    for stage, marker, (low, high), expected in KILLS:
        for _ in range(ATTEMPTS):
            if not _kill_in(proc, runs, marker, rng.uniform(low, high)):
                _finish(proc, log)  # it finished before the kill: the next kill needs a process
                proc = _start(runs, log)
                break
            under_way = _in_flight(runs, proc.pid)
            killed.append((stage, under_way))
            proc = _start(runs, log)
            if expected is None or expected in under_way:
                break  # else the step it was in had just closed: kill the next one
    _finish(proc, log)
    report = "\n".join(f"killed during {stage}: {', '.join(w) or '-'}" for stage, w in killed)
    (tmp_path / "kills.txt").write_text(report + "\n")
    print(report)
    assert len(killed) >= 5, report
    # Killed with work of each tracked kind under way (RUNNING in MLflow or Optuna).
    under_way = {w for _, ws in killed for w in ws}
    assert {"train-separator", "pretrain", "a tuning trial", "probe"} <= under_way, report
    _assert_same_results(uninterrupted, runs)

    # A rerun after all that adds nothing and writes the same leaderboard from its caches.
    before = len(_mlflow_runs(runs))
    _finish(_start(runs, log), log)
    assert len(_mlflow_runs(runs)) == before
    _assert_same_results(uninterrupted, runs)


def test_killed_between_artefact_and_run_close_in_every_step(uninterrupted, tmp_path):
    runs, log = tmp_path / "runs", tmp_path / "run.log"
    for kind in HOOKED_KINDS:
        proc = _start(runs, log, **{EXIT_BEFORE_CLOSE_ENV: kind})
        _finish(proc, log, expected=EXIT_BEFORE_CLOSE_STATUS)  # the hook did end it there
    _finish(_start(runs, log), log)
    _assert_same_results(uninterrupted, runs)
