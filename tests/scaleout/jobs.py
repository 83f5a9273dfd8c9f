"""What the scale-out tests run elsewhere: Slurm jobs (submitit) and worker processes.

Module-level, so that a Slurm job (a fresh interpreter started by submitit) and a spawned
multiprocessing worker import them by name; nothing here may depend on pytest.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import submitit
from submitit.slurm.slurm import SlurmInfoWatcher

# -- submitit without sacct -------------------------------------------------------------------


class SqueueWatcher(SlurmInfoWatcher):
    """Job states from slurmctld (``squeue --states=all``) instead of ``sacct``.

    submitit reads job states with ``sacct``, which needs an accounting database (slurmdbd +
    MariaDB/MySQL). The test cluster has none: ``sacct`` exits 1 with "Slurm accounting storage
    is disabled", submitit logs "Bypassing sacct error ..., status may be inaccurate" on every
    poll and the state stays UNKNOWN forever, so a job killed before writing its result (scancel,
    node failure) would make ``job.result()`` wait forever. slurmctld itself knows every job's
    state until ``MinJobAge`` seconds after it ended (3600 s on the test cluster): squeue prints
    the same ``JobID|State|NodeList`` lines (``123_4``, ``123_[5-7]`` for arrays), which
    submitit's own parser reads once a header is put in front.
    """

    def _make_command(self) -> list[str] | None:
        to_check = sorted({x.split("_")[0] for x in self._registered - self._finished})
        if not to_check:
            return None
        jobs = ",".join(to_check)
        return ["squeue", "--noheader", "--states=all", "--format=%i|%T|%N", f"--jobs={jobs}"]

    def read_info(self, string: bytes | str) -> dict[str, dict[str, str]]:
        if not isinstance(string, str):
            string = string.decode()
        return super().read_info("JobID|State|NodeList\n" + string)


def accounting_enabled() -> bool:
    """Whether this cluster has an accounting database (so ``sacct`` answers)."""
    out = subprocess.run(
        ["scontrol", "show", "config"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    match = re.search(r"^AccountingStorageType\s*=\s*(\S+)", out, re.MULTILINE)
    return bool(match) and match.group(1) != "accounting_storage/none"


@contextlib.contextmanager
def slurm_executor(folder: Path, **parameters) -> Iterator[submitit.AutoExecutor]:
    """``AutoExecutor(cluster="slurm")``; job states from squeue when sacct cannot answer.

    The watcher is a class attribute of ``submitit.SlurmJob``, shared by the whole process, and
    the only way in: ``job_class`` of the executor would not do, because submitit builds the
    jobs of an array as ``SlurmJob`` whatever the class (submitit 1.5.4, slurm.py:347). So it
    is installed for the ``with`` block only and the previous watcher put back afterwards:
    nothing else in the process (another test, the pipeline) sees a watcher it did not ask for.
    The pipeline itself never needs it (:mod:`benchmark.pipeline.slurm` asks squeue directly).
    """
    previous = submitit.SlurmJob.watcher
    if not accounting_enabled():
        submitit.SlurmJob.watcher = SqueueWatcher(delay_s=30)
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
        executor.update_parameters(
            **{"timeout_min": 10, "mem_gb": 1, "cpus_per_task": 1, **parameters}
        )
        yield executor
    finally:
        submitit.SlurmJob.watcher = previous


# -- Slurm jobs -------------------------------------------------------------------------------


def square_to_file(x: int, out_dir: str) -> dict:
    """An array element: writes x**2 beside the others, returns it with its Slurm identity."""
    started = time.time()
    value = x * x
    Path(out_dir, f"square-{x}.json").write_text(json.dumps(value))
    return {
        "value": value,
        "job": os.environ.get("SLURM_JOB_ID"),
        "array_task": os.environ.get("SLURM_ARRAY_TASK_ID"),
        "started": started,
        "ended": time.time(),
    }


def sum_files(out_dir: str) -> dict:
    """The dependent job: reads what the array wrote (it must all be there already)."""
    started = time.time()
    values = [json.loads(p.read_text()) for p in sorted(Path(out_dir).glob("square-*.json"))]
    return {"total": sum(values), "count": len(values), "started": started}


def sleep_for(seconds: float, progress_file: str) -> str:
    Path(progress_file).write_text("started")
    time.sleep(seconds)
    return "slept"


class Countdown(submitit.helpers.Checkpointable):
    """A resumable job: ``steps`` steps of ``step_s`` s; on preemption it resumes where it was.

    submitit calls :meth:`checkpoint` in the job when Slurm signals preemption (USR2), pickles
    what it returns and requeues the job; the requeued job calls that pickle instead.
    """

    def __init__(self) -> None:
        self.position = 0  # steps done; part of the checkpoint (the object is pickled)
        self.starts: list[int] = []  # the step each attempt started from

    def __call__(self, steps: int, step_s: float, progress_file: str) -> dict:
        self.starts.append(self.position)
        while self.position < steps:
            time.sleep(step_s)
            self.position += 1
            Path(progress_file).write_text(str(self.position))
        return {
            "position": self.position,
            "starts": self.starts,
            "restarts": int(os.environ.get("SLURM_RESTART_COUNT", "0")),
        }

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        # The default implementation does the same; spelled out because this is the contract.
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


# -- MLflow workers ---------------------------------------------------------------------------


def log_runs(
    tracking_uri: str,
    experiment_id: str,
    worker: int,
    runs: int,
    artifact_dir: str,
    barrier,
    results,
) -> None:
    """Log ``runs`` runs with tags, metrics and an artifact, over HTTP only.

    ``barrier`` (shared by the workers) makes them start logging at the same moment; the run
    ids go to ``results[worker]`` (a shared dict).
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    client.search_experiments(max_results=1)  # connection warmed up before the barrier
    barrier.wait(timeout=60)
    ids = []
    for i in range(runs):
        run = client.create_run(experiment_id, tags={"worker": str(worker), "index": str(i)})
        rid = run.info.run_id
        for step in range(5):
            client.log_metric(rid, "loss", 1.0 / (1 + step + worker), step=step)
        client.log_param(rid, "lr", f"{1e-3 * (worker + 1):g}")
        path = Path(artifact_dir, f"w{worker}-r{i}.json")
        path.write_text(json.dumps({"worker": worker, "run": i}))
        client.log_artifact(rid, str(path), "outputs")
        client.set_terminated(rid, "FINISHED")
        ids.append(rid)
    results[worker] = ids


# -- Optuna workers ---------------------------------------------------------------------------

SEARCH = {"x": (-10.0, 10.0), "y": (-10.0, 10.0)}


def per_trial_params(seed: int, number: int) -> dict[str, float]:
    """Parameters that are a pure function of (seed, trial number)."""
    import numpy as np

    rng = np.random.default_rng([seed, number])
    return {k: float(rng.uniform(lo, hi)) for k, (lo, hi) in SEARCH.items()}


def make_per_trial_sampler(seed: int):
    """A sampler whose draw for trial n depends on (seed, n) only, not on other workers."""
    import optuna

    class PerTrialRandomSampler(optuna.samplers.RandomSampler):
        def sample_independent(self, study, trial, param_name, param_distribution):
            value = per_trial_params(seed, trial.number)[param_name]
            return param_distribution.to_internal_repr(value)

    return PerTrialRandomSampler(seed=seed)


def storage(url: str, retry: bool = False):
    import optuna

    callback = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1) if retry else None
    return optuna.storages.RDBStorage(
        url,
        heartbeat_interval=1,
        grace_period=3,
        heartbeat_stale_trial_callback=callback,
        engine_kwargs={"pool_pre_ping": True},
    )


def optuna_worker(
    url: str,
    study_name: str,
    total: int,
    trial_s: float,
    seed: int,
    retry: bool = False,
    start_at: float = 0.0,
):
    """Optimise the study until it holds ``total`` COMPLETE trials (counted by any worker).

    ``start_at``: a ``time.time()`` before which the worker does not begin (after its imports).
    Parameters from :func:`make_per_trial_sampler` (the project's own sampler, TPE on a lagged
    history, is tested through ``benchmark.evaluation.tuning``). A trial lasts up to ``trial_s``
    seconds, a random fraction of it, so that workers finish out of order.
    """
    import random

    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(
        study_name=study_name, storage=storage(url, retry), sampler=make_per_trial_sampler(seed)
    )
    time.sleep(max(0.0, start_at - time.time()))

    def objective(trial):
        x = trial.suggest_float("x", *SEARCH["x"])
        y = trial.suggest_float("y", *SEARCH["y"])
        trial.set_user_attr("pid", os.getpid())
        time.sleep(trial_s * random.random())
        return (x - 1) ** 2 + (y + 2) ** 2

    study.optimize(
        objective, callbacks=[optuna.study.MaxTrialsCallback(total, states=(TrialState.COMPLETE,))]
    )


def hanging_worker(url: str, study_name: str, seed: int):
    """Starts one trial and never finishes it (the test kills this process with SIGKILL)."""
    import optuna

    study = optuna.load_study(
        study_name=study_name, storage=storage(url), sampler=make_per_trial_sampler(seed)
    )

    def objective(trial):
        trial.suggest_float("x", *SEARCH["x"])
        trial.suggest_float("y", *SEARCH["y"])
        trial.set_user_attr("pid", os.getpid())
        time.sleep(600)
        return 0.0

    study.optimize(objective, n_trials=1)
