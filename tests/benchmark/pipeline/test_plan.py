"""The run plan: kill `run --profile smoke` midway, rerun, nothing redone or duplicated."""

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

ARGS = [
    "--methods",
    "random_init,cola",
    "--tasks",
    "fma",
    "probe.params=default",
    "probe.seeds=0-1",
]


def _run(tmp_path, extra=()):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    cmd = [
        sys.executable,
        "-m",
        "benchmark",
        "--log-level",
        "WARNING",
        "run",
        "--profile",
        "smoke",
        *ARGS[:4],  # options first: argparse reads the key=value overrides as one positional
        f"paths.runs_dir={tmp_path / 'runs'}",
        *ARGS[4:],
        *extra,
    ]
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


@pytest.mark.slow
def test_killed_run_resumes_without_duplicates(tmp_path):
    proc = _run(tmp_path)
    deadline = time.time() + 600
    db = tmp_path / "runs" / "mlflow.db"
    while time.time() < deadline and proc.poll() is None:
        if list((tmp_path / "runs").glob("smoke/pretrain/cola-*/checkpoint.pt")):
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    rerun = _run(tmp_path)
    out, _ = rerun.communicate(timeout=1200)
    assert rerun.returncode == 0, out
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("mscol-smoke")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    keys = Counter(r.data.tags["bench.key"] for r in runs)
    assert max(keys.values()) == 1, keys
    assert all(r.info.status == "FINISHED" for r in runs)
    probes = [r for r in runs if r.data.tags.get("bench.kind") == "probe"]
    assert len(probes) == 2 * 2  # 2 methods x 2 seeds on fma
    # A third run does nothing new.
    third = _run(tmp_path)
    out, _ = third.communicate(timeout=600)
    assert third.returncode == 0, out
    assert len(client.search_runs([exp.experiment_id], max_results=1000)) == len(runs)


def _step(name, run_id, status="ran"):
    from benchmark.pipeline.plan import Step

    return Step(name, name.split(":")[0], lambda: None, status=status, run_id=run_id)


def test_plans_of_one_configuration_add_up_and_another_starts_afresh():
    from benchmark.pipeline.plan import merge_status

    first = merge_status({}, [_step("probe:cola:s0:fma:p0", "a")], {"probe": 1.0}, "H")
    # A narrower plan of the same configuration (an added method) adds; a rerun step replaces.
    second = merge_status(
        first,
        [_step("probe:msa_multi:s0:fma:p0", "b"), _step("probe:cola:s0:fma:p0", "c", "done")],
        {},
        "H",
    )
    assert {k: v["run_id"] for k, v in second["steps"].items()} == {
        "probe:cola:s0:fma:p0": "c",
        "probe:msa_multi:s0:fma:p0": "b",
    }
    other = merge_status(second, [_step("probe:cola:s0:fma:p0", "d")], {}, "other")
    assert list(other["steps"]) == ["probe:cola:s0:fma:p0"]
    assert other["steps"]["probe:cola:s0:fma:p0"]["run_id"] == "d"


@pytest.mark.slow
def test_studies_end_to_end_on_the_smoke_scale(tmp_path):
    """`run` with the studies' methods on the smoke profile: snapshots probed, separators of
    three qualities, an ablation and a source-targeted model; the report carries the four
    study sections and a rerun redoes nothing."""
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    methods = (
        "cola,cola_mws,cola_random_mask,msa_drums,msa_multi,msa_multi_no_shift,msa_multi_oracle"
    )
    cmd = [
        sys.executable, "-m", "benchmark", "--log-level", "WARNING", "run", "--profile", "smoke",
        "--methods", methods, "--tasks", "mtat,fma", f"paths.runs_dir={tmp_path / 'runs'}",
        "probe.params=default", "benchmark.convergence_methods=cola_mws,msa_multi",
    ]  # fmt: skip
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    assert first.returncode == 0, first.stdout + first.stderr
    text = (tmp_path / "runs" / "smoke" / "report" / "leaderboard.md").read_text()
    for heading in (
        "## Convergence",
        "## Separator quality",
        "## Ablations",
        "## Source specialisation",
    ):
        assert heading in text
    assert "Not measured in this run" not in text
    assert "| 3 |" in text  # the snapshot at half of the 6 steps is a row of the convergence table
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout + again.stderr
    import json

    status = json.loads((tmp_path / "runs" / "smoke" / "plan_status.json").read_text())["steps"]
    redone = [name for name, info in status.items() if info["status"] == "ran"]
    assert all(name.split(":")[0] in ("data", "features", "separate") for name in redone), redone


def test_a_failed_or_blocked_step_keeps_its_last_good_run():
    """Issue #13: plan_status overwrote the run ids of five probes with "blocked", and the
    report silently dropped their rows."""
    from benchmark.pipeline.plan import merge_status

    good = merge_status({}, [_step("probe:cola:s0:fma:p0", "a")], {}, "H")
    blocked = _step("probe:cola:s0:fma:p0", "", "blocked")
    blocked.error = "needs tune:cola:s0:fma"
    after = merge_status(good, [blocked], {}, "H")["steps"]["probe:cola:s0:fma:p0"]
    assert after["run_id"] == "a" and after["status"] == "blocked"
    assert after["error"] == "needs tune:cola:s0:fma"


def test_report_lists_a_blocked_step_and_reads_its_last_good_run():
    from benchmark.pipeline.report import plan_run_ids, skipped_lines

    status = {
        "steps": {
            "probe:cola:s0:fma:p0": {
                "status": "blocked",
                "error": "needs tune:cola:s0:fma",
                "run_id": "a",
                "stage": "probe",
            },
            "probe:cola:s0:fma:p1": {"status": "ran", "error": "", "run_id": "b", "stage": "probe"},
        }
    }
    assert plan_run_ids(status) == {"a", "b"}
    assert skipped_lines(status) == [
        "probe:cola:s0:fma:p0: blocked (needs tune:cola:s0:fma); the result of its last good "
        "run a is shown"
    ]


def test_cache_stages_are_checked_and_compute_adds_up_over_invocations():
    """Issue #13: `run` counted cache checks as steps that ran, and the report's wall time
    per stage showed only the last invocation (0.3 s per stage after a resume)."""
    from benchmark.pipeline import stages
    from benchmark.pipeline.plan import Step, execute, merge_status

    def steps(pretrain_status):
        return [
            Step("features:fma", "features", lambda: object()),
            Step("pretrain:cola:s0", "pretrain", lambda: stages.Outcome(pretrain_status, "r")),
            Step("probe:cola:s0:fma:p0", "probe", lambda: "ran"),
        ]

    first = steps("ran")
    recorded = []
    execute(first, on_step=recorded.append)
    assert [s.status for s in first] == ["checked", "ran", "ran"]
    assert recorded == first

    from benchmark.pipeline.plan import stage_compute

    for s, wall in zip(first, (10.0, 100.0, 1.0), strict=True):
        s.wall_s = wall
    status = merge_status({}, first, {}, "H")
    second = steps("done")
    execute(second)
    for s, wall in zip(second, (0.5, 0.25, 2.0), strict=True):
        s.wall_s = wall
    status = merge_status(status, second, {"pretrain": 0.25}, "H")
    # a step found done adds nothing; a cache check and a step run again add their time
    assert stage_compute(status) == {"features": 10.5, "pretrain": 100.0, "probe": 3.0}
    assert status["stage_wall_s"] == {"pretrain": 0.2}
