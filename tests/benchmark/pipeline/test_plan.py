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
    "pretrain.seeds=0",
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

    return Step(name, name.split(":")[0], status=status, run_id=run_id)


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


def test_step_names_parse_and_bad_names_say_what_is_expected():
    from benchmark.pipeline.plan import parse_step

    assert parse_step("data") == ("data", {})
    assert parse_step("probe:msa_multi:s2:mtat_star:p4") == (
        "probe",
        {"method": "msa_multi", "seed": 2, "task": "mtat_star", "probe_seed": 4},
    )
    # An external encoder's name holds ':' (hear:<module>).
    assert parse_step("embed:hear:mscol_cola_s0:s0:fma") == (
        "embed",
        {"method": "hear:mscol_cola_s0", "seed": 0, "task": "fma"},
    )
    # The studies' steps (#17) have stages of their own kind of work.
    assert parse_step("snapshot:cola_mws:s1:@3") == (
        "pretrain",
        {"method": "cola_mws", "seed": 1, "snapshot_step": 3},
    )
    assert parse_step("probe@3:hear:x:s0:fma:p1") == (
        "probe",
        {"snapshot_step": 3, "method": "hear:x", "seed": 0, "task": "fma", "probe_seed": 1},
    )
    assert parse_step("quality:msa_multi:s0") == ("separate", {"method": "msa_multi", "seed": 0})
    for bad in (
        "probe:cola:s0:fma",
        "pretrain:cola:0",
        "report",
        "tune:cola:s0:fma:p0",
        "snapshot:cola:s0:3",
        "probe@x:cola:s0:fma:p0",
    ):
        with pytest.raises(ValueError, match=f"not a plan step: '{bad}'"):
            parse_step(bad)


def test_plan_steps_are_picklable_calls_of_a_config_and_a_name():
    import pickle

    from benchmark.config import from_dict, resolve
    from benchmark.pipeline.context import Context
    from benchmark.pipeline.plan import build_plan, run_step, step_name

    cfg = resolve("smoke", ["pretrain.seeds=0-1"])
    ctx = Context(cfg, None, progress=False)
    steps = build_plan(ctx, ["random_init", "msa_vocals"], ["mtat", "mtat_star", "fma"])
    for step in steps:
        assert step.fn is run_step and step.args[1] == step.name
        fn, args = pickle.loads(pickle.dumps((step.fn, step.args)))
        assert fn is run_step and args == step.args
    # The steps carry the narrowed lists: where they run, the command line is not known.
    narrowed = from_dict(steps[0].args[0])
    assert narrowed.benchmark.methods == ("random_init", "msa_vocals")
    assert narrowed.results_hash() == cfg.results_hash()
    deps = {s.name: s.deps for s in steps}
    assert deps["pretrain:msa_vocals:s0"] == ["features:mtat", "separate:config"]
    # Tasks on one corpus embed one after the other (the second finds the first's cache).
    assert deps["embed:msa_vocals:s0:mtat_star"] == [
        "pretrain:msa_vocals:s0",
        "features:mtat",
        "embed:msa_vocals:s0:mtat",
    ]
    # Every pre-training run is tuned per task, and its probes use its own parameters (one
    # search shared by a method's runs is a method-level effect no run shows).
    assert deps["probe:msa_vocals:s1:fma:p1"] == [
        "embed:msa_vocals:s1:fma",
        "tune:msa_vocals:s1:fma",
    ]
    assert deps["tune:msa_vocals:s0:fma"] == ["embed:msa_vocals:s0:fma"]
    assert deps["tune:msa_vocals:s1:fma"] == ["embed:msa_vocals:s1:fma"]
    assert deps["pretrain:random_init:s1"] == ["data"]  # nothing to train: no features needed
    assert step_name("probe", "msa_vocals", 1, "fma", 1) == "probe:msa_vocals:s1:fma:p1"
    assert {(s.method, s.task) for s in steps if s.name == "probe:msa_vocals:s1:fma:p1"} == {
        ("msa_vocals", "fma")
    }
    order = [s.name for s in steps]
    assert all(order.index(d) < order.index(s.name) for s in steps for d in s.deps)
    only = build_plan(ctx, ["cola"], ["fma"], ["probe"])
    assert {s.stage for s in only} == {"data", "embed", "probe"}
    with pytest.raises(ValueError, match="unknown stage.*: bogus"):
        build_plan(ctx, ["cola"], ["fma"], ["bogus"])


def test_the_studies_steps_are_picklable_calls_too():
    """#17's snapshot, snapshot-probe and separator-quality steps go through run_step like
    every other step (#16): any executor runs them, in dependency order."""
    import pickle

    from benchmark.config import resolve
    from benchmark.pipeline.context import Context
    from benchmark.pipeline.plan import build_plan, parse_step, run_step

    cfg = resolve(
        "smoke",
        ["pretrain.seeds=0-1", "benchmark.convergence_methods=msa_multi,random_init"],
    )
    steps = build_plan(Context(cfg, None, progress=False), ["random_init", "msa_multi"], ["fma"])
    for step in steps:
        assert step.fn is run_step and step.args[1] == step.name
        assert pickle.loads(pickle.dumps(step.args)) == step.args
        assert parse_step(step.name)[0] == step.stage
    deps = {s.name: s.deps for s in steps}
    snapshots = [n for n in deps if n.startswith("snapshot:")]
    assert snapshots and all(n.startswith("snapshot:msa_multi:") for n in snapshots)  # trained
    at = snapshots[0].rsplit("@", 1)[1]
    assert deps[f"snapshot:msa_multi:s1:@{at}"] == ["pretrain:msa_multi:s1"]
    assert deps[f"probe@{at}:msa_multi:s1:fma:p0"] == [
        f"snapshot:msa_multi:s1:@{at}",
        "features:fma",
        "pretrain:msa_multi:s1",
        "tune:msa_multi:s1:fma",  # its run's final encoder's parameters (smoke tunes)
    ]
    assert deps["quality:msa_multi:s1"] == ["pretrain:msa_multi:s1"]
    order = [s.name for s in steps]
    assert all(order.index(d) < order.index(s.name) for s in steps for d in s.deps)


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
            Step("features:fma", "features", fn=lambda: object()),
            Step("pretrain:cola:s0", "pretrain", fn=lambda: stages.Outcome(pretrain_status, "r")),
            Step("probe:cola:s0:fma:p0", "probe", fn=lambda: "ran"),
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


def test_recording_after_each_step_keeps_what_another_invocation_recorded(tmp_path):
    """#13 records plan_status.json after every step; #16 runs two invocations at once. Each
    merges its steps onto the file as it found it (compute is never added twice) and keeps
    the other's entries written meanwhile."""
    from benchmark.config import resolve
    from benchmark.pipeline.plan import read_status, record_status

    cfg = resolve("smoke", [f"paths.runs_dir={tmp_path}"])
    a, b = _step("probe:cola:s0:fma:p0", "a"), _step("probe:cola:s0:fma:p1", "b")
    a.wall_s = b.wall_s = 2.0
    base = read_status(cfg)
    assert base == {}
    mine = [a, _step("probe:cola:s0:fma:p2", "", "pending")]
    record_status(cfg, mine, base)
    record_status(cfg, [b], read_status(cfg))  # another invocation, meanwhile
    record_status(cfg, mine, base)  # this one records again after its next step
    steps = read_status(cfg)["steps"]
    assert {k: v["run_id"] for k, v in steps.items()} == {
        "probe:cola:s0:fma:p0": "a",
        "probe:cola:s0:fma:p1": "b",
    }
    assert steps["probe:cola:s0:fma:p0"]["compute_s"] == 2.0  # not 4: recorded twice
    # A step found done says so, with the compute of the run that did it (from its record).
    done = _step("probe:cola:s0:fma:p1", "b", "done")
    done.compute_s = 2.0
    record_status(cfg, [done], base)
    entry = read_status(cfg)["steps"]["probe:cola:s0:fma:p1"]
    assert (entry["status"], entry["compute_s"]) == ("done", 2.0)


def test_a_step_record_carries_the_compute_summed_over_its_runs():
    """Slurm's report job rebuilds the status from the steps' records, possibly again after a
    resubmission: the compute comes from the records, never added twice."""
    from benchmark.pipeline.plan import merge_status

    ran = _step("probe:cola:s0:fma:p0", "a")
    ran.wall_s, ran.compute_s = 2.0, 5.0  # this run's 2 s, and 3 s of earlier runs
    first = merge_status({}, [ran], {}, "H")
    again = merge_status(first, [ran], {}, "H")
    assert first["steps"]["probe:cola:s0:fma:p0"]["compute_s"] == 5.0
    assert again["steps"]["probe:cola:s0:fma:p0"]["compute_s"] == 5.0


def test_run_step_records_checked_and_sums_compute_over_runs(tmp_path, monkeypatch):
    import benchmark.pipeline.plan as plan
    from benchmark.config import resolve
    from benchmark.pipeline import state
    from benchmark.pipeline.context import Context

    cfg = resolve("smoke", [f"paths.runs_dir={tmp_path}"])
    outcomes = iter([("checked", ""), ("checked", ""), ("done", "")])

    def fake(ctx, corpus):
        time.sleep(0.05)
        return next(outcomes)

    monkeypatch.setitem(plan._RUNNERS, "features", fake)
    monkeypatch.setitem(plan._KEYS, "features", lambda ctx, corpus: ("features", corpus))
    ctx = Context(cfg, None, progress=False)
    results = [plan.run_step(cfg, "features:fma", ctx) for _ in range(3)]
    assert [r.status for r in results] == ["checked", "checked", "done"]
    record = state.read_record(cfg, "features:fma")
    assert record["status"] == "done"
    total = results[0].wall_s + results[1].wall_s  # a step found done adds nothing
    assert record["compute_s"] == results[2].compute_s == pytest.approx(total, abs=0.02)


def test_status_tells_a_live_holder_from_one_whose_heartbeat_stopped(tmp_path):
    """A step whose lock a process on another host holds: running while its heartbeat is
    fresh, stale once it stood still for longer than ``executor.lock_stale_s`` (a holder that
    died there: nothing here can tell it is dead, and its step is not running forever)."""
    import json
    import re
    from dataclasses import asdict, replace

    from benchmark.config import resolve
    from benchmark.pipeline import locks, state
    from benchmark.pipeline.context import Context
    from benchmark.pipeline.plan import Step, status_lines, step_states

    cfg = resolve("smoke", [f"paths.runs_dir={tmp_path}"])
    ctx = Context(cfg, None, progress=False)
    step = Step("pretrain:cola:s0", "pretrain", method="cola")
    lock = state.artefact_lock(cfg, "pretrain", "0123456789abcdef", step.name)
    owner = replace(
        locks.this_process(step.name, cfg.results_hash()), machine="other:boot:1", host="other"
    )
    lock.path.parent.mkdir(parents=True)
    lock.path.write_text(json.dumps(asdict(owner)))
    beat = lock.path.with_name(f"{lock.path.name}.{owner.token}.beat")
    beat.write_text("7 0.0")
    (running,) = step_states(ctx, [step])
    assert running.state == "running"
    assert re.fullmatch(r"other pid \d+, since [\d:]+, heartbeat \d+ s ago", running.detail)
    twenty_minutes_ago = time.time() - 20 * 60
    os.utime(beat, (twenty_minutes_ago, twenty_minutes_ago))
    (stale,) = step_states(ctx, [step])
    assert stale.state == "stale" and "no heartbeat for 20 min (" in stale.detail
    assert status_lines([stale])[-1] == "1 steps: 1 stale"
