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
    for bad in ("probe:cola:s0:fma", "pretrain:cola:0", "report", "tune:cola:s0:fma:p0"):
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
    # A method is tuned once per task, on its first pre-training seed; every run's probes use
    # those parameters.
    assert deps["probe:msa_vocals:s1:fma:p1"] == [
        "embed:msa_vocals:s1:fma",
        "tune:msa_vocals:s0:fma",
    ]
    assert deps["tune:msa_vocals:s0:fma"] == ["embed:msa_vocals:s0:fma"]
    assert not [s for s in steps if s.name.startswith("tune:msa_vocals:s1")]
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
