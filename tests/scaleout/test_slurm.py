"""submitit on a real (throwaway, one-node) Slurm cluster: arrays, dependencies, requeue, scancel."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from submitit.core.utils import UncompletedJobError

from tests.scaleout import jobs

pytestmark = pytest.mark.services


def _wait(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def test_cluster_matches_this_host(slurm_cluster):
    import os

    assert slurm_cluster.node_state() == "idle"
    assert slurm_cluster.cpus == os.cpu_count()
    info = slurm_cluster.command("scontrol", "show", "node", slurm_cluster.node).stdout
    assert (
        f"CPUTot={slurm_cluster.cpus}" in info and f"RealMemory={slurm_cluster.memory_mb}" in info
    )


def test_array_then_dependent_job(slurm_cluster, tmp_path):
    """An array of 2 jobs and a job that starts only after both succeeded (afterok)."""
    out = tmp_path / "out"
    out.mkdir()
    with jobs.slurm_executor(tmp_path / "submitit", name="square") as executor:
        array = executor.map_array(jobs.square_to_file, [1, 2], [str(out)] * 2)
        assert len(array) == 2 and len({j.job_id.split("_")[0] for j in array}) == 1
        executor.update_parameters(
            name="sum",
            slurm_additional_parameters={
                "dependency": "afterok:" + ":".join(j.job_id for j in array)
            },
        )
        dependent = executor.submit(jobs.sum_files, str(out))
        results = [j.result() for j in array]
        summary = dependent.result()

    assert [r["value"] for r in results] == [1, 4]
    assert sorted(r["array_task"] for r in results) == ["0", "1"]
    assert summary["total"] == 5 and summary["count"] == 2
    assert summary["started"] >= max(r["ended"] for r in results)
    # The result file comes before the end of the job: its state follows within a moment.
    for job in [*array, dependent]:
        _wait(lambda j=job: slurm_cluster.job_state(j.job_id) == "COMPLETED", 30, "end")


def test_checkpointable_job_is_requeued_and_resumes(slurm_cluster, tmp_path):
    """Preemption as submitit's own helper sends it (SIGTERM, then USR2): checkpoint, requeue,
    resume from the checkpoint and return the right result."""
    progress = tmp_path / "progress"
    with jobs.slurm_executor(tmp_path / "submitit", name="countdown") as executor:
        job = executor.submit(jobs.Countdown(), 16, 0.25, str(progress))
        _wait(lambda: progress.exists() and int(progress.read_text() or 0) >= 3, 60, "3 steps")
        job._interrupt()  # scancel --signal SIGTERM, then scancel --signal USR2 (preemption)
        result = job.result()

    assert result["position"] == 16
    assert result["restarts"] == 1
    assert result["starts"][0] == 0 and result["starts"][1] >= 3, result  # resumed, not restarted
    log = Path(job.paths.stdout).read_text() + Path(job.paths.stderr).read_text()
    assert "Requeued job" in log


def test_cancelled_job_is_observable(slurm_cluster, tmp_path):
    progress = tmp_path / "progress"
    with jobs.slurm_executor(tmp_path / "submitit", name="sleeper") as executor:
        job = executor.submit(jobs.sleep_for, 300, str(progress))
        _wait(progress.exists, 60, "the job to start")
        assert job.state == "RUNNING"

        job.cancel()  # scancel <id>

        _wait(
            lambda: job.watcher.get_state(job.job_id, mode="force") == "CANCELLED",
            30,
            "CANCELLED",
        )
        assert slurm_cluster.job_state(job.job_id) == "CANCELLED"
        job._results_timeout_s = 0  # no result will come: don't wait 15 s for the file
        with pytest.raises(UncompletedJobError, match="has not produced any output"):
            job.result()


def test_the_squeue_watcher_is_installed_only_inside_the_block(slurm_cluster, tmp_path):
    import submitit

    before = submitit.SlurmJob.watcher
    with jobs.slurm_executor(tmp_path / "submitit"):
        assert isinstance(submitit.SlurmJob.watcher, jobs.SqueueWatcher)
    assert submitit.SlurmJob.watcher is before
