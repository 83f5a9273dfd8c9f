"""The whole ``smoke`` profile on every executor: the same leaderboard, and what Slurm costs.

``make test-slow`` (``-m slow``), not ``make test``: the three runs take 44 min on the 2-core
machine of the project (the Slurm run is 359 jobs on two one-CPU slots, 32 min). The fast
``tests/scaleout/test_plan_on_slurm.py`` checks the same on a reduced plan in CI.

It runs ``run --profile smoke`` locally (SQLite stores), with ``--executor processes
--workers 2`` (SQLite) and with ``--executor slurm`` (MLflow server on PostgreSQL, Optuna on
PostgreSQL, one Optuna worker as locally), asserts that the three leaderboards are equal
byte for byte, and writes the wall times to ``$MSCOL_OVERHEAD_JSON`` if set (and to the test
summary): the Slurm path's overhead against ``local`` is README's "Scale-out measured".
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter

import pytest

from benchmark.config import resolve
from tests.benchmark.pipeline.test_executors import (
    assert_each_step_once,
    cli,
    finish,
    leaderboard,
    mlflow_runs,
    runs_with_corpus,
)
from tests.scaleout.conftest import TIMINGS
from tests.scaleout.test_plan_on_slurm import SMALL_JOBS, submit, wait_for

pytestmark = [
    pytest.mark.services,
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
]


def _run(runs, *args, overrides=()) -> float:
    t0 = time.monotonic()
    proc = cli(runs, "run", *args, overrides=overrides, plain=True)
    out = finish(proc, 3 * 3600)
    assert "0 failed or blocked" in out, out[-3000:]
    return time.monotonic() - t0


def _step_seconds(runs) -> float:
    """Seconds the steps themselves took (their records), without job start-up."""
    return sum(
        json.loads(p.read_text())["wall_s"] for p in (runs / "smoke" / "plan").glob("*/steps/*")
    )


def test_the_smoke_profile_gives_one_leaderboard_on_every_executor(
    slurm_cluster, tracking, synth_smoke, tmp_path
):
    server, stores = tracking
    times: dict[str, float] = {}

    local = runs_with_corpus(tmp_path / "local", synth_smoke[0])
    times["local_s"] = _run(local)
    times["local_steps_s"] = _step_seconds(local)

    pool = runs_with_corpus(tmp_path / "processes", synth_smoke[0])
    times["processes_2_s"] = _run(pool, "--executor", "processes", "--workers", "2")
    assert leaderboard(pool) == leaderboard(local)

    runs = runs_with_corpus(tmp_path / "slurm", synth_smoke[0])
    overrides = [*stores, *SMALL_JOBS]  # one Optuna worker, as locally: the executor's cost
    t0 = time.monotonic()
    out, report = submit(runs, overrides=overrides, plain=True)
    times["slurm_submit_s"] = time.monotonic() - t0
    jobs = int(re.search(r"submitted (\d+) step", out).group(1))
    assert wait_for(slurm_cluster, report, timeout=3 * 3600) == "COMPLETED"
    times["slurm_s"] = time.monotonic() - t0
    times["slurm_steps_s"] = _step_seconds(runs)
    times["slurm_jobs"] = jobs + 1  # and the report

    assert leaderboard(runs) == leaderboard(local)
    logged = mlflow_runs(server.uri)
    assert_each_step_once(logged)
    cfg = resolve("smoke")
    probes = len(cfg.benchmark.methods) * len(cfg.pretrain.seeds) * len(cfg.benchmark.tasks)
    assert Counter(r.data.tags["bench.kind"] for r in logged)["probe"] == probes * len(
        cfg.probe.seeds
    )

    times["slurm_overhead_s"] = times["slurm_s"] - times["local_s"]
    times["slurm_overhead_per_job_s"] = times["slurm_overhead_s"] / times["slurm_jobs"]
    TIMINGS.update({f"smoke {k}": v for k, v in times.items()})
    if os.environ.get("MSCOL_OVERHEAD_JSON"):
        with open(os.environ["MSCOL_OVERHEAD_JSON"], "w") as fh:
            json.dump({k: round(v, 1) for k, v in times.items()}, fh, indent=2)
