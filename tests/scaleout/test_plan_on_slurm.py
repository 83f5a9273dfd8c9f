"""The plan on a real (one-node) Slurm cluster, tracked by an MLflow server on PostgreSQL.

A reduced smoke plan (two methods, one task, two probe seeds, tuning on: 13 steps; see
``tests/benchmark/pipeline/test_executors.py``) keeps each plan run to minutes.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from pathlib import Path

import pytest

from benchmark.pipeline import slurm
from tests.benchmark.pipeline.test_executors import (
    PLAN,
    assert_each_step_once,
    cli,
    finish,
    leaderboard,
    mlflow_runs,
    runs_with_corpus,
)

pytestmark = [
    pytest.mark.services,
    pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
]
STAGES = ("data", "features", "separate", "pretrain", "embed", "tune", "probe", "report")
# The test cluster has 2 CPUs, no GPU and ~24 GB: two one-CPU jobs at a time.
SMALL_JOBS = [
    f"executor.{stage}.{key}={value}"
    for stage in STAGES
    for key, value in (("gpus", 0), ("cpus", 1), ("mem_gb", 1))
]


@pytest.fixture(scope="module")
def local_reference(synth_smoke, tmp_path_factory):
    """The reduced plan run locally with the embedded SQLite stores: its leaderboard."""
    runs = runs_with_corpus(tmp_path_factory.mktemp("local"), synth_smoke[0])
    finish(cli(runs, "run", *PLAN))
    return leaderboard(runs)


def submit(runs: Path, *args: str, overrides=(), plain=False) -> tuple[str, str]:
    """``run --executor slurm``: returns at once with the job ids; (output, report job)."""
    t0 = time.monotonic()
    proc = cli(runs, "run", *args, "--executor", "slurm", overrides=overrides, plain=plain)
    out = finish(proc, 300)
    assert time.monotonic() - t0 < 120, "submitting must not wait for the jobs"
    return out, re.search(r"report +job (\S+)", out).group(1)


def wait_for(cluster, job: str, timeout: float = 1800) -> str:
    """Wait until ``job`` has ended (a requeued job is still in flight); its final state."""
    deadline = time.monotonic() + timeout
    while (state := cluster.job_state(job)) in ("", *slurm.IN_FLIGHT):
        assert time.monotonic() < deadline, f"job {job} still {state or 'unknown'}"
        time.sleep(2)
    return state


def test_slurm_gives_the_local_leaderboard(
    slurm_cluster, tracking, local_reference, synth_smoke, tmp_path
):
    server, stores = tracking
    runs = runs_with_corpus(tmp_path / "runs", synth_smoke[0])
    # Two Optuna workers per tune job, sharing each study on PostgreSQL: the same numbers
    # (the lag that two workers need changes no trial of a budget of random start-up trials).
    overrides = [*stores, *SMALL_JOBS, "tune.workers=2", "tune.lag=1"]
    out, report = submit(runs, *PLAN, overrides=overrides)
    assert "submitted 13 step(s)" in out
    assert wait_for(slurm_cluster, report) == "COMPLETED"

    assert leaderboard(runs) == local_reference
    runs_logged = mlflow_runs(server.uri)
    assert_each_step_once(runs_logged)  # no duplicate, no unfinished run
    assert Counter(r.data.tags["bench.kind"] for r in runs_logged)["probe"] == 4
    # Jobs logged over HTTP only: the artifacts are in the server's store.
    assert list(server.artifacts_dir.rglob("predictions.npz"))
    assert not (runs / "mlflow.db").exists() and not (runs / "optuna.db").exists()
    status = finish(cli(runs, "status", *PLAN, overrides=overrides)).strip().splitlines()
    assert status[-1] == "13 steps: 13 done"
    assert re.search(r"^probe:cola:s0:fma:p1 +done +job \d+_\d$", "\n".join(status), re.M)
    # Everything is done: a resubmission submits nothing but a report.
    again, report = submit(runs, *PLAN, overrides=overrides)
    assert "submitted 0 step(s)" in again and "13 step(s) done before" in again
    assert wait_for(slurm_cluster, report) == "COMPLETED"


def test_two_submissions_at_once_run_each_step_once(slurm_cluster, tracking, synth_smoke, tmp_path):
    server, stores = tracking
    runs = runs_with_corpus(tmp_path / "runs", synth_smoke[0])
    overrides = [*stores, *SMALL_JOBS]
    procs = [cli(runs, "run", *PLAN, "--executor", "slurm", overrides=overrides) for _ in range(2)]
    outs = [finish(p, 300) for p in procs]
    submitted = [int(re.search(r"submitted (\d+) step", o).group(1)) for o in outs]
    assert sorted(submitted) == [0, 13], outs  # the second saw the first's jobs in flight
    reports = [re.search(r"report +job (\S+)", o).group(1) for o in outs]
    states = [wait_for(slurm_cluster, r) for r in reports]
    assert "COMPLETED" in states  # the first report job is cancelled if still queued
    assert_each_step_once(mlflow_runs(server.uri))
    status = finish(cli(runs, "status", *PLAN, overrides=overrides)).strip().splitlines()
    assert status[-1] == "13 steps: 13 done"


# Long enough to interrupt it twice, and for a cancelled job not to finish within the
# cluster's KillWait (2 s): submitit ignores SIGTERM, so a job with little left to do would
# complete before SIGKILL. A checkpoint every 5 of STEPS steps of the tiny encoder (0.04 s a
# step on the idle 2-core machine, up to ~1.5 s under load).
STEPS = 200
LONG_PRETRAIN = [
    f"pretrain.steps={STEPS}",
    "pretrain.checkpoint_every=5",
    f"pretrain.val_every={STEPS}",
]
PRETRAIN_ONLY = ["--methods", "cola", "--tasks", "fma", "--only", "features,pretrain"]


def _weights(runs: Path) -> dict:
    import torch

    (final,) = (runs / "smoke" / "pretrain").glob("cola-*/final.pt")
    return torch.load(final, weights_only=True)


def _checkpoint_step(runs: Path) -> int:
    from benchmark.pretrain.loop import load_checkpoint

    found = list((runs / "smoke" / "pretrain").glob("cola-*/checkpoint.pt"))
    return int(load_checkpoint(found[0])["step"]) if found else 0


def _pretrain_job(runs: Path) -> str:
    """The Slurm job of the last submitted ``pretrain:cola:s0`` (from the plan's jobs.json)."""
    (jobs,) = (runs / "smoke" / "plan").glob("*/jobs.json")
    return json.loads(jobs.read_text())["pretrain:cola:s0"]["job"]


def _wait_for_checkpoint(runs: Path, after: int = 0, timeout: float = 600) -> int:
    """The step of the first checkpoint later than step ``after``."""
    deadline = time.monotonic() + timeout
    while (step := _checkpoint_step(runs)) <= after:
        assert time.monotonic() < deadline, f"no checkpoint after step {after}"
        time.sleep(0.1)
    return step


def _same(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _job_log(runs: Path, job: str) -> str:
    return "".join(p.read_text() for p in (runs / "smoke" / "slurm").glob(f"{job}_*log.*"))


def _wait_for_resumption(runs: Path, job: str, timeout: float = 600) -> int:
    """The step the requeued ``job`` resumed from (its log says so)."""
    deadline = time.monotonic() + timeout
    while not (found := re.search(rf"resuming at step (\d+) of {STEPS}", _job_log(runs, job))):
        assert time.monotonic() < deadline, "the requeued job did not resume"
        time.sleep(0.2)
    return int(found.group(1))


def test_an_interrupted_pretraining_job_resumes_to_the_uninterrupted_weights(
    slurm_cluster, tracking, synth_smoke, tmp_path
):
    """Preemption (USR2, as Slurm announces it to submitit): checkpoint, requeue, resume from
    the checkpoint. Then ``scancel`` (a job lost for good): the step shows as cancelled, a
    resubmission runs only it, and it resumes again. The final weights equal those of an
    uninterrupted pre-training."""
    server, stores = tracking
    reference = runs_with_corpus(tmp_path / "reference", synth_smoke[0])
    finish(cli(reference, "pretrain", "--method", "cola", overrides=LONG_PRETRAIN))

    runs = runs_with_corpus(tmp_path / "runs", synth_smoke[0])
    overrides = [*stores, *SMALL_JOBS, *LONG_PRETRAIN]
    _, report = submit(runs, *PRETRAIN_ONLY, overrides=overrides)
    job = _pretrain_job(runs)
    first = _wait_for_checkpoint(runs)

    slurm_cluster.command("scancel", "--signal=USR2", job)  # preemption
    resumed = _wait_for_resumption(runs, job)
    assert resumed >= first and "Requeued job" in _job_log(runs, job)
    second = _wait_for_checkpoint(runs, after=resumed)  # the requeued job's own progress

    slurm_cluster.command("scancel", job)  # cancelled for good
    assert wait_for(slurm_cluster, job) == "CANCELLED"
    assert second < STEPS and not list((runs / "smoke" / "pretrain").glob("cola-*/final.pt"))
    wait_for(slurm_cluster, report)  # afterany: the report job runs after a cancellation
    status = finish(cli(runs, "status", *PRETRAIN_ONLY, overrides=overrides))
    assert re.search(rf"^pretrain:cola:s0 +cancelled +job {job}\b", status, re.M), status

    again, report = submit(runs, *PRETRAIN_ONLY, overrides=overrides)
    assert "submitted 1 step(s)" in again  # data and features were done
    assert wait_for(slurm_cluster, report) == "COMPLETED"
    (run,) = [r for r in mlflow_runs(server.uri) if r.data.tags["bench.kind"] == "pretrain"]
    assert run.info.status == "FINISHED" and run.data.metrics["resumed_from_step"] >= second
    assert _same(_weights(runs), _weights(reference))
