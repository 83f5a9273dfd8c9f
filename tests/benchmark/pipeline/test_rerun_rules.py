"""What a rerun does with the MLflow runs a killed process left (issue #13), per tracked step:

* artefact written, run never closed (RUNNING, its owner dead) -> the run is resumed and
  closed; no second run, no run left open;
* run FINISHED, artefact gone -> redone under a new run, the old one tagged superseded;
* run open in a live process -> a one-line StageError, nothing touched.

A kill is simulated by editing the store as the killed process left it (status RUNNING, the
``bench.owner`` tag naming a process that has ended); the end-to-end kill tests are in
``test_interrupted.py``.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess

import pytest

from benchmark.errors import StageError
from benchmark.pipeline import probing, stages
from tasks import TASKS
from tests.fixtures import stage_env

OWNER = "bench.owner"  # the tag naming the process that has a run open
CHEAP = [
    "probe.max_epochs=2",
    "probe.patience=1",
    "probe.train_hop_frames=98",
    "probe.seeds=0",
    "tune.max_epochs=2",
    "separation.train_steps=2",
    "separation.train_hidden_size=8",
]


@pytest.fixture(scope="module")
def env(synth_smoke, tmp_path_factory):
    return stage_env(synth_smoke[0], tmp_path_factory.mktemp("runs"), CHEAP)


def _ended_process() -> str:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return f"{socket.gethostname()}:{proc.pid}:"


def _left_open(tracker, run_id, owner=None):
    """The run as a process killed before closing it leaves it."""
    tracker.client.set_tag(run_id, OWNER, owner or _ended_process())
    tracker.client.update_run(run_id, status="RUNNING")


def _runs(tracker, kind):
    return [r for r in tracker.runs() if r.data.tags.get("bench.kind") == kind]


def _status(tracker, run_id):
    return tracker.client.get_run(run_id).info.status


def test_tune_killed_after_its_file_and_before_closing_its_run(env):
    """The tune step used to write its tuned file after closing its run, and a rerun that
    found the file never closed a run left open: it stayed RUNNING for good."""
    tracker = env.tracker
    model = stages.run_pretrain(env, "cola", 0)
    first = probing.run_tune(env, model, TASKS["fma"])
    (run,) = _runs(tracker, "tune")
    _left_open(tracker, run.info.run_id)
    again = probing.run_tune(env, model, TASKS["fma"])
    assert again["best_params"] == first["best_params"]
    (run_after,) = _runs(tracker, "tune")
    assert run_after.info.run_id == run.info.run_id
    assert run_after.info.status == "FINISHED"


def test_tune_whose_file_is_gone_is_redone_under_a_new_run(env):
    """A FINISHED tune run without its tuned file made every rerun fail with "run ... is
    already finished", and the five probes stayed blocked."""
    tracker = env.tracker
    model = stages.run_pretrain(env, "cola", 0)
    task = TASKS["fma"]
    first = probing.run_tune(env, model, task)
    old = tracker.find(_runs(tracker, "tune")[0].data.tags["bench.key"])
    emb_key = probing.embedded(env, model, task)[1]["key"]
    probing.tuned_path(env.cfg, "cola", task.name, emb_key).unlink()
    again = probing.run_tune(env, model, task)
    assert again["best_params"] == first["best_params"] and not again["cached"]
    new = tracker.find(old.data.tags["bench.key"])
    assert new.info.run_id != old.info.run_id and new.info.status == "FINISHED"
    old_after = tracker.client.get_run(old.info.run_id)
    assert old_after.data.tags["bench.superseded_by"] == new.info.run_id
    assert new.data.tags["bench.supersedes"] == old.info.run_id
    assert probing.run_probe(env, model, task, 0, params_mode="tuned").status == "ran"


def test_pretrain_whose_weights_are_gone_is_redone_under_a_new_run(env):
    tracker = env.tracker
    first = stages.run_pretrain(env, "cola", 0)
    first.final_path.unlink()
    (first.final_path.parent / "checkpoint.pt").unlink()
    again = stages.run_pretrain(env, "cola", 0)
    assert not again.cached and again.final_path.is_file()
    assert again.run_id != first.run_id
    assert tracker.client.get_run(first.run_id).data.tags["bench.superseded_by"] == again.run_id
    assert stages.run_pretrain(env, "cola", 0).run_id == again.run_id  # done now


def test_pretrain_finished_in_another_runs_dir_is_not_redone_here(env):
    """#16: a tracking server outlives runs dirs. A FINISHED run whose weights were written to
    another runs dir (its ``checkpoint`` tag) is not retrained and superseded from this one
    (#13's rule is for weights gone from the runs dir they were written to)."""
    tracker = env.tracker
    first = stages.run_pretrain(env, "random_init", 0)
    elsewhere = "/elsewhere/runs/smoke/pretrain/x/final.pt"
    tracker.client.set_tag(first.run_id, "checkpoint", elsewhere)
    moved = first.final_path.with_name("final.moved")
    first.final_path.rename(moved)
    try:
        with pytest.raises(StageError, match="point paths.runs_dir at the runs dir"):
            stages.run_pretrain(env, "random_init", 0)
        assert "bench.superseded_by" not in tracker.client.get_run(first.run_id).data.tags
    finally:
        moved.rename(first.final_path)
        tracker.client.set_tag(first.run_id, "checkpoint", str(first.final_path.resolve()))
    assert stages.run_pretrain(env, "random_init", 0).run_id == first.run_id


def test_pretrain_killed_after_its_weights_is_closed_without_training_again(env):
    tracker = env.tracker
    first = stages.run_pretrain(env, "cola", 0)
    _left_open(tracker, first.run_id)
    again = stages.run_pretrain(env, "cola", 0)
    assert again.run_id == first.run_id and _status(tracker, first.run_id) == "FINISHED"
    run = tracker.client.get_run(first.run_id)
    assert run.data.metrics["resumed_from_step"] == env.cfg.pretrain.steps


def test_train_separator_killed_after_its_model_and_before_closing_its_run(env):
    """train-separator: a kill after quality.json and before the run was closed left the
    run RUNNING for good."""
    tracker = env.tracker
    out = stages.train_separator_stage(env)
    (run,) = _runs(tracker, "train-separator")
    _left_open(tracker, run.info.run_id)
    assert stages.train_separator_stage(env) == out
    (run_after,) = _runs(tracker, "train-separator")
    assert run_after.info.run_id == run.info.run_id and run_after.info.status == "FINISHED"
    assert run_after.data.metrics["wall_s"] > 0  # the training's time, not this rerun's


def test_probe_killed_before_closing_its_run_is_resumed_and_forced_probes_supersede(env):
    tracker = env.tracker
    model = stages.run_pretrain(env, "random_init", 0)
    task = TASKS["fma"]
    first = probing.run_probe(env, model, task, 0, params_mode="default")
    _left_open(tracker, first.run_id)
    again = probing.run_probe(env, model, task, 0, params_mode="default")
    assert (again.status, again.run_id) == ("ran", first.run_id)
    assert _status(tracker, first.run_id) == "FINISHED"
    forced = probing.run_probe(env, model, task, 0, force=True, params_mode="default")
    assert forced.run_id != first.run_id
    assert tracker.client.get_run(first.run_id).data.tags["bench.superseded_by"] == forced.run_id
    assert probing.run_probe(env, model, task, 0, params_mode="default").run_id == forced.run_id


def test_a_run_open_in_a_live_process_is_left_alone(env):
    tracker = env.tracker
    model = stages.run_pretrain(env, "random_init", 0)
    task = TASKS["fma"]
    first = probing.run_probe(env, model, task, 0, params_mode="default")
    live = subprocess.Popen(["sleep", "60"])
    try:
        owner = f"{socket.gethostname()}:{live.pid}:"
        _left_open(tracker, first.run_id, owner)
        with pytest.raises(StageError, match=f"open in process {owner}"):
            probing.run_probe(env, model, task, 0, params_mode="default")
        assert tracker.fail_orphans() == []
        assert _status(tracker, first.run_id) == "RUNNING"
    finally:
        live.kill()
        live.wait()
    assert tracker.fail_orphans() == [first.run_id]
    assert probing.run_probe(env, model, task, 0, params_mode="default").run_id == first.run_id
    assert _status(tracker, first.run_id) == "FINISHED"


def test_a_retrained_separator_keeps_its_identity(env):
    """Issue #13: the separator's identity digested every file of its folder, wall times
    included, so retraining an identical separator changed the source store's key and every
    MSA pre-training key."""
    out = stages.train_separator_stage(env)
    identity = stages.resolve_separation(env, "config")[1]
    for path in out.glob("*.json"):  # another wall time, as a retrain records it
        data = json.loads(path.read_text())
        if "train_time_s" in data:
            data["train_time_s"] += 12.3
            path.write_text(json.dumps(data))
    assert stages.resolve_separation(env, "config")[1] == identity
    shutil.rmtree(out)  # a real retrain: same config, same weights, same identity
    assert stages.resolve_separation(env, "config")[1] == identity
    assert (out / "quality.json").is_file()


def test_a_resumed_pretrain_run_has_one_loss_point_per_step(tmp_path):
    """A resumed run logs again the steps between its last checkpoint and the kill."""
    from benchmark.pipeline.tracking import Tracker, collect

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "t", artifact_root=tmp_path / "a")
    with tracker.run("k", "pretrain", "p", tags={"method": "cola", "seed": 0}) as h:
        h.metrics({"loss": 3.0}, 10)
        h.metrics({"loss": 2.5}, 20)
        h.metrics({"loss": 2.5}, 20)  # the resumed process, same value
    curves = collect(tracker, tmp_path / "work")["pretrain_curves"]
    assert curves[["step", "metric", "value"]].values.tolist() == [
        [10, "loss", 3.0],
        [20, "loss", 2.5],
    ]


def test_a_tune_run_logs_each_counted_trial_once_across_a_kill(tmp_path):
    """A tune run's trial history (``trial_value`` at step = trial number): a trial told but
    not yet logged when the step was killed was never logged by the rerun, which passed on
    only the trials finished in its own call. Now the resumed run ends with the history of
    an uninterrupted one, each step once."""
    from benchmark.pipeline.tracking import Tracker
    from tests.benchmark.evaluation import test_tuning as t

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "t", artifact_root=tmp_path / "a")
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    train, valid, _ = t._splits(0)

    def tune(key, wrap=lambda log: log):
        with tracker.run(key, "tune", key) as h:
            t._tune(storage, key, train, valid, 4, on_trial=wrap(probing._trial_logger(h)))
        return h.run_id

    def killed_before_logging_trial_2(log):
        def on_trial(trial):
            if trial["number"] == 2:
                raise KeyboardInterrupt
            log(trial)

        return on_trial

    def history(run_id):
        points = tracker.client.get_metric_history(run_id, "trial_value")
        return sorted((m.step, m.value) for m in points)

    whole = tune("whole")
    with pytest.raises(KeyboardInterrupt):
        tune("cut", killed_before_logging_trial_2)
    cut = tune("cut")  # resumes the run the kill left FAILED
    assert [step for step, _ in history(whole)] == [0, 1, 2, 3]
    assert history(cut) == history(whole)


def test_a_kill_while_superseding_leaves_no_third_run(env):
    """Killed after creating the new run and before tagging the old one superseded: the
    rerun resumes the new run instead of superseding the old one again."""
    tracker = env.tracker
    model = stages.run_pretrain(env, "random_init", 0)
    task = TASKS["nsynth"]
    old = probing.run_probe(env, model, task, 0, params_mode="default").run_id
    key = tracker.client.get_run(old).data.tags["bench.key"]
    new = tracker.client.create_run(
        tracker.experiment_id,
        tags={"bench.key": key, "bench.kind": "probe", "bench.supersedes": old,
              OWNER: _ended_process(), "method": "random_init", "task": "nsynth", "seed": "0"},
    ).info.run_id  # fmt: skip
    again = probing.run_probe(env, model, task, 0, force=True, params_mode="default")
    assert again.run_id == new and _status(tracker, new) == "FINISHED"
    assert tracker.client.get_run(old).data.tags["bench.superseded_by"] == new
    keys = [r for r in _runs(tracker, "probe") if r.data.tags["bench.key"] == key]
    assert len(keys) == 2
