"""A plan step's lock is named by the content key of what it writes, and a step that lost its
lock (taken over while it stalled) writes nothing more.

Two plans whose configurations differ only in what a step's output does not depend on (more
pre-training seeds, another checkpoint interval, probe settings the tuning ignores) must take
the same lock for it: otherwise both run it at once, and on two hosts the second resumes the
first's live MLflow run (it trusts its lock). Plans that would write different things must not
wait for each other.
"""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from benchmark.errors import StageError
from benchmark.pipeline import plan, stages, state
from benchmark.pipeline.context import Context
from benchmark.pipeline.locks import LockLost, read_owner
from tests.benchmark.pipeline.test_locks import _foreign_lock
from tests.fixtures import stage_env

CHEAP = [
    "probe.params=default",
    "probe.max_epochs=2",
    "probe.patience=1",
    "probe.train_hop_frames=98",
]


@pytest.fixture(scope="module")
def env(synth_smoke, tmp_path_factory):
    """The smoke profile's stage context with a finished random_init run (the encoder the
    evaluation steps read)."""
    ctx = stage_env(synth_smoke[0], tmp_path_factory.mktemp("runs"), CHEAP)
    stages.run_pretrain(ctx, "random_init", 0)
    return ctx


def _variant(env: Context, **sections) -> Context:
    """A context of ``env``'s configuration with fields of some sections changed (same runs
    dir and MLflow experiment, nothing opened yet)."""
    cfg = env.cfg
    changed = {name: replace(getattr(cfg, name), **fields) for name, fields in sections.items()}
    return Context(replace(cfg, **changed), env.tracker, progress=False)


def _lock_name(ctx: Context, step: str) -> str:
    return state.artefact_lock(ctx.cfg, *plan.step_key(ctx, step), step).path.name


# step, a change outside what the step writes depends on, a change of something it does
STEPS = [
    ("data", {"data": {"num_workers": 3, "max_bad_fraction": 0.5}}, {"data": {"synth_seed": 1}}),
    (
        "features:fma",
        {"data": {"num_workers": 3}, "pretrain": {"seeds": (0, 1, 2)}},
        {"frontend": {"f_max": 7000.0}},
    ),
    (
        "separate:random_mask",
        {"separation": {"train_steps": 7}, "pretrain": {"lr": 0.5}},
        {"separation": {"silence_threshold": 0.02}},
    ),
    (
        "pretrain:cola:s0",
        {"pretrain": {"seeds": (0, 1, 2), "checkpoint_every": 1, "num_workers": 2}},
        {"pretrain": {"lr": 0.123}},
    ),
    (
        "snapshot:random_init:s0:@3",
        {"pretrain": {"seeds": (0, 1), "snapshot_fractions": (0.5,)}, "probe": {"max_epochs": 9}},
        None,  # its key is the run's and the step's (below)
    ),
    (
        "embed:random_init:s0:fma",
        {"probe": {"max_epochs": 9, "seeds": (0, 1, 2)}, "tune": {"num_trials": 5}},
        {"probe": {"train_hop_frames": 49}},
    ),
    (
        "tune:random_init:s0:fma",
        {"probe": {"max_epochs": 9, "seeds": (0, 1, 2)}, "tune": {"workers": 3}},
        {"tune": {"num_trials": 5}},
    ),
    (
        "probe:random_init:s0:fma:p0",
        {"probe": {"seeds": (0, 1, 2)}, "tune": {"num_trials": 5, "max_epochs": 9}},
        {"probe": {"max_epochs": 9}},
    ),
]


@pytest.mark.parametrize("step,unkeyed,keyed", STEPS, ids=[s[0] for s in STEPS])
def test_a_steps_lock_follows_the_content_key_of_what_it_writes(env, step, unkeyed, keyed):
    assert _lock_name(_variant(env, **unkeyed), step) == _lock_name(env, step)
    if keyed is not None:
        assert _lock_name(_variant(env, **keyed), step) != _lock_name(env, step)


def test_the_lock_names_are_the_keys_the_stages_record(env):
    """Checked against what the stages wrote: the pre-training run's ``bench.key``, the
    feature store's folder; a snapshot per step; the quality step logs into the pre-training
    run, under its lock."""
    model = stages.run_pretrain(env, "random_init", 0)
    run_key = env.tracker.client.get_run(model.run_id).data.tags["bench.key"]
    assert plan.step_key(env, "pretrain:random_init:s0") == ("pretrain", run_key)
    assert plan.step_key(env, "quality:random_init:s0") == ("pretrain", run_key)
    store = stages.mixture_store(env, "fma")
    assert plan.step_key(env, "features:fma") == ("features", store.root.name)
    snapshots = {_lock_name(env, f"snapshot:random_init:s0:@{at}") for at in (3, 6)}
    assert len(snapshots) == 2
    assert all(run_key in name for name in snapshots)


def test_a_step_that_lost_its_lock_stops_before_writing_its_artefact(env, monkeypatch):
    """A holder stalled for longer than ``lock_stale_s`` (suspended, a hung filesystem) is
    taken over. When it carries on, it stops at its next write with a one-line error naming
    the lock: no predictions logged, the MLflow run left open for the new holder (not marked
    FAILED), no record of the step."""
    import benchmark.evaluation.probe as probe_module

    name = "probe:random_init:s0:fma:p7"
    kind, key = plan.step_key(env, name)
    path = state.artefact_lock(env.cfg, kind, key, name).path
    trained = probe_module.train_probe
    taken = {}

    def train_then_lose_the_lock(*args, **kwargs):
        result = trained(*args, **kwargs)
        assert read_owner(path).what == name  # held while the probe trains
        path.unlink()  # a waiter judged this holder dead and took the lock over
        taken["owner"] = _foreign_lock(path, what=name)
        return result

    monkeypatch.setattr(probe_module, "train_probe", train_then_lose_the_lock)
    lost = f"^{re.escape(str(path))}: lost the lock of {re.escape(name)} \\(taken over by other"
    with pytest.raises(LockLost, match=lost):
        plan.run_step(env.cfg, name, env)
    assert read_owner(path).token == taken["owner"].token  # the new holder's lock stays
    (run,) = env.tracker.runs(f"tags.`bench.key` = '{key}'")
    assert run.info.status == "RUNNING"  # left to the new holder, which resumes it
    artifacts = {a.path for a in env.tracker.client.list_artifacts(run.info.run_id)}
    assert "predictions.npz" not in artifacts
    assert state.read_record(env.cfg, name) is None
    path.unlink()
    env.tracker.client.set_terminated(run.info.run_id, status="FAILED")


def test_a_step_without_its_inputs_fails_and_is_recorded_as_before(env):
    """The key of a step after pre-training needs the finished run, as the step itself does:
    without it the step fails with the stage's error, recorded like any failure."""
    name = "embed:cola:s0:fma"
    with pytest.raises(StageError, match="no finished pre-training of cola seed 0"):
        plan.run_step(env.cfg, name, env)
    assert state.read_record(env.cfg, name)["status"] == "failed"


def test_separator_training_generates_the_corpus_under_the_data_steps_lock(tmp_path, monkeypatch):
    """Separator training needs the synthetic corpus whatever the data source; generating it
    outside the data step's lock let a concurrent ``run`` generating the same corpus delete
    the other's half-written folder. Now both take one lock, and a finished corpus none."""
    from benchmark.config import resolve

    cfg = resolve("smoke", [f"paths.runs_dir={tmp_path}"])
    ctx = Context(cfg, None, progress=False)
    kind, key = plan.step_key(ctx, "data")
    lock = state.artefact_lock(cfg, kind, key, "probe")
    held_while_generating = []

    def generate(cfg, progress):
        held_while_generating.append(lock.holder())
        root = stages.synthetic_root(cfg)
        root.mkdir(parents=True)
        (root / "manifest.json").write_text("{}")
        return stages.synthetic_layout(cfg)

    monkeypatch.setattr(stages, "synthetic_paths", generate)
    assert stages._synthetic_corpus(ctx) == stages.synthetic_layout(cfg)
    assert held_while_generating and held_while_generating[0] is not None
    assert lock.holder() is None  # let go once generated
    stages._synthetic_corpus(ctx)  # a finished corpus: neither generated nor locked again
    assert len(held_while_generating) == 1
