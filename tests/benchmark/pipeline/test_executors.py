"""Executors without engines: a process pool gives the local leaderboard, two runs at once do
each step once, a bad executor is a one-line error. (Slurm: tests/scaleout/test_plan_on_slurm.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from benchmark.data.synth import GENERATOR_VERSION
from tests.fixtures import TINY_PRETRAIN

ROOT = Path(__file__).resolve().parents[3]
# A plan small enough for every test run: two methods, one pre-training seed, one task, two
# probe seeds, tuning on.
PLAN = ["--methods", "random_init,cola", "--tasks", "fma"]
OVERRIDES = [
    *TINY_PRETRAIN,
    "pretrain.seeds=0",
    "probe.seeds=0-1",
    "probe.max_epochs=3",
    "tune.num_trials=2",
    "tune.max_epochs=2",
    "benchmark.calibration_reps=200",
]


def runs_with_corpus(runs: Path, synth_root: Path) -> Path:
    """A fresh runs dir that reuses the session's smoke corpus (the data step finds it)."""
    target = runs / "cache" / "synth" / f"smoke-s0-v{GENERATOR_VERSION}"
    target.parent.mkdir(parents=True)
    target.symlink_to(synth_root)
    return runs


def cli(
    runs: Path, command: str, *args: str, env=None, overrides=(), plain=False
) -> subprocess.Popen:
    """``python -m benchmark <command> --profile smoke <args> <overrides>`` as a process;
    the reduced plan's :data:`OVERRIDES` come first unless ``plain`` (the whole profile)."""
    argv = [
        sys.executable,
        "-m",
        "benchmark",
        "--log-level",
        "WARNING",
        command,
        "--profile",
        "smoke",
        *args,
        f"paths.runs_dir={runs}",
        *([] if plain else OVERRIDES),
        *overrides,
    ]
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.Popen(
        argv, cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def finish(proc: subprocess.Popen, timeout: float = 900) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


def mlflow_runs(tracking_uri: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("mscol-smoke")
    return client.search_runs([experiment.experiment_id], max_results=5000)


def assert_each_step_once(runs: list) -> None:
    """One MLflow run per content key, every one FINISHED."""
    keys = Counter(r.data.tags["bench.key"] for r in runs)
    assert max(keys.values()) == 1, [k for k, n in keys.items() if n > 1]
    assert {r.info.status for r in runs} == {"FINISHED"}


def leaderboard(runs: Path) -> str:
    return (runs / "smoke" / "report" / "leaderboard.csv").read_text()


def test_a_pool_of_two_processes_gives_the_local_leaderboard(synth_smoke, tmp_path):
    local = runs_with_corpus(tmp_path / "local", synth_smoke[0])
    pool = runs_with_corpus(tmp_path / "pool", synth_smoke[0])
    finish(cli(local, "run", *PLAN))
    out = finish(cli(pool, "run", *PLAN, "--executor", "processes", "--workers", "2"))
    assert "0 failed or blocked" in out
    assert leaderboard(pool) == leaderboard(local)
    runs = mlflow_runs(f"sqlite:///{pool / 'mlflow.db'}")
    assert_each_step_once(runs)
    assert Counter(r.data.tags["bench.kind"] for r in runs)["probe"] == 2 * 2
    status = finish(cli(pool, "status", *PLAN))
    assert status.strip().splitlines()[-1] == "13 steps: 13 done"


def test_two_runs_at_once_do_each_step_once(synth_smoke, tmp_path):
    runs = runs_with_corpus(tmp_path / "runs", synth_smoke[0])
    first = cli(runs, "run", *PLAN)
    second = cli(runs, "run", *PLAN, "--executor", "processes")
    finish(first)
    finish(second)
    assert_each_step_once(mlflow_runs(f"sqlite:///{runs / 'mlflow.db'}"))
    records = list((runs / "smoke" / "plan").glob("*/steps/*.json"))
    assert len(records) == 13
    assert not list((runs / "cache" / "locks").glob("*.lock"))  # all released


@pytest.mark.parametrize(
    "args,message",
    [
        (["executor.kind=cluster"], "executor.kind must be one of local, processes, slurm"),
        (["--executor", "processes", "executor.workers=0"], "executor.workers must be >= 1"),
        # What the compute nodes need, not a server on this machine's loopback address.
        (["--executor", "slurm"], "and paths.optuna_storage to a database that the compute nodes"),
    ],
)
def test_an_executor_that_cannot_run_is_a_one_line_error(tmp_path, args, message):
    options = [a for a in args if "=" not in a]
    proc = cli(tmp_path / "runs", "run", *PLAN, *options, overrides=[a for a in args if "=" in a])
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2, out
    (line,) = out.strip().splitlines()
    assert line.startswith("error: ") and message in line


def _visible_devices(_):
    import time

    time.sleep(1.0)  # long enough that several workers take tasks
    return os.environ.get("CUDA_VISIBLE_DEVICES"), os.getpid()


def test_pool_workers_get_one_gpu_each_round_robin(monkeypatch):
    """On a multi-GPU node each pool worker sees its own device (CUDA_VISIBLE_DEVICES is set
    in the worker before anything initialises CUDA); this process' setting is untouched."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from benchmark.pipeline.executors import _worker_init, visible_gpus

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5,7")
    assert visible_gpus() == ["2", "5", "7"]
    mp = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        3, mp_context=mp, initializer=_worker_init, initargs=(visible_gpus(), mp.Value("i"))
    ) as pool:
        seen = dict((pid, gpu) for gpu, pid in pool.map(_visible_devices, range(6)))
    # Every worker that ran a task sees one of the GPUs, and no two workers the same one.
    assert set(seen.values()) <= {"2", "5", "7"} and len(set(seen.values())) == len(seen)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2,5,7"


def _killed(*_):
    os._exit(137)  # as the out-of-memory killer leaves a worker: no exception, no result


def _ran(seconds: float):
    import time

    from benchmark.pipeline.plan import StepResult

    time.sleep(seconds)
    return StepResult("ran", wall_s=seconds)


def test_a_killed_pool_worker_fails_its_step_and_the_others_go_on(tmp_path):
    """One dead worker breaks a ProcessPoolExecutor (every step in it gets BrokenProcessPool):
    the step whose worker died is failed with the reason, in its record too, and the others,
    the one that ran beside it included, finish in a new pool."""
    from benchmark.config import resolve
    from benchmark.pipeline import state
    from benchmark.pipeline.executors import ProcessExecutor
    from benchmark.pipeline.plan import Step

    cfg = resolve("smoke", [f"paths.runs_dir={tmp_path}"])
    steps = [
        Step("killed", "pretrain", fn=_killed),
        Step("beside", "pretrain", fn=_ran, args=(2.0,)),  # running when the pool breaks
        Step("needs-killed", "probe", deps=["killed"], fn=_ran, args=(0.0,)),
        Step("needs-beside", "probe", deps=["beside"], fn=_ran, args=(0.0,)),
        Step("after", "probe", fn=_ran, args=(0.0,)),  # waits for a free worker
    ]
    seen = []
    launch = ProcessExecutor(workers=2, devices=[]).launch(cfg, steps, on_step=seen.append)

    assert launch.finished
    assert {s.name: s.status for s in steps} == {
        "killed": "failed",
        "beside": "ran",
        "needs-killed": "blocked",
        "needs-beside": "ran",
        "after": "ran",
    }
    assert "worker process died" in steps[0].error
    assert sorted(s.name for s in seen) == sorted(s.name for s in steps)  # each reported once
    record = state.read_record(cfg, "killed")
    assert record["status"] == "failed" and "worker process died" in record["error"]
