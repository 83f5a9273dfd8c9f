"""Optuna tuning: trial budget, resumption, equal budgets across methods, no test data."""

import functools
import inspect
import os
import time

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

import benchmark.evaluation.tuning as tuning
from benchmark.evaluation.metrics import primary_score_fn
from benchmark.evaluation.probe import ProbeDivergedError, ProbeParams, ProbeSpec, WindowSet
from benchmark.evaluation.tuning import SEARCH_SPACE, tune_probe
from tests.benchmark.evaluation.test_probe import planted_windows

NUM_CLASSES, DIM = 3, 8
SPEC = ProbeSpec("linear", False, NUM_CLASSES)
SCORE_FN = primary_score_fn(["a", "b", "c"], multilabel=False)


def _splits(seed: int):
    rng = np.random.default_rng(seed)
    directions = rng.standard_normal((NUM_CLASSES, DIM))
    return tuple(
        planted_windows(rng, n, False, directions, windows_per_clip=3, signal=0.5)
        for n in (40, 20, 30)
    )


def _tune(storage, name, train, valid, num_trials, **kwargs):
    spec = kwargs.pop("spec", SPEC)
    options = dict(
        num_trials=num_trials,
        sampler_seed=0,
        probe_seed=0,
        max_epochs=2,
        batch_size=32,
        patience=2,
        score_fn=SCORE_FN,
        device="cpu",  # exact reproducibility is promised on the CPU
    )
    options.update(kwargs)
    return tune_probe(name, storage, spec, train, valid, **options)


@pytest.fixture
def storage(tmp_path):
    # A nested, not yet existing folder: tune_probe must create it for SQLite.
    return f"sqlite:///{tmp_path / 'runs' / 'optuna.db'}"


def _complete(trials):
    return [t for t in trials if t["state"] == "COMPLETE"]


def test_runs_the_budget_and_reports_each_trial(storage):
    train, valid, _ = _splits(0)
    reported = []
    result = _tune(storage, "m/t", train, valid, 3, on_trial=reported.append)

    assert len(result.trials) == 3 and len(_complete(result.trials)) == 3
    assert [t["number"] for t in reported] == [0, 1, 2]
    assert set(reported[0]) >= {"number", "params", "value", "state", "best_epoch", "epochs_run"}
    assert set(reported[0]["params"]) == {"lr", "weight_decay"}, "no dropout for a linear probe"
    best = max(result.trials, key=lambda t: t["value"])
    assert result.best_value == best["value"]
    assert result.best_params == ProbeParams(**best["params"])
    for trial in result.trials:
        for name, value in trial["params"].items():
            assert SEARCH_SPACE[name]["low"] <= value <= SEARCH_SPACE[name]["high"]


def test_rerun_resumes_without_redoing_or_exceeding(storage):
    train, valid, _ = _splits(0)
    first = _tune(storage, "m/t", train, valid, 3)
    again = _tune(storage, "m/t", train, valid, 3)
    assert again.trials == first.trials, "a finished study runs no further trial"

    # A larger budget adds trials after the first ones; no trial repeats another's draws.
    more = _tune(storage, "m/t", train, valid, 5)
    assert [t["state"] for t in more.trials] == ["COMPLETE"] * 5
    assert more.trials[:3] == first.trials
    params = [tuple(t["params"].values()) for t in more.trials]
    assert len(set(params)) == 5


def _without_durations(trials):
    return [{k: v for k, v in t.items() if k != "duration_s"} for t in trials]


def _dead_process() -> str:
    """The :func:`benchmark.io.process_identity` of a process that has ended."""
    import socket
    import subprocess

    proc = subprocess.Popen(["true"])
    proc.wait()
    return f"{socket.gethostname()}:{proc.pid}:"


# random start-up draws only / TPE's model too, on the newest history or a lagged one (#16)
@pytest.mark.parametrize(("startup", "lag"), [(10, tuning.LAG), (2, 0), (2, 1)])
def test_trial_n_is_the_same_with_or_without_an_interruption_before_it(
    storage, monkeypatch, startup, lag
):
    """Issue #13: a resumed study reseeded TPE from the number of existing trials and drew
    other trials than an uninterrupted one (lr 0.00831 instead of 0.000443), which won."""
    monkeypatch.setattr(tuning, "TPE_STARTUP_TRIALS", startup, raising=False)
    train, valid, _ = _splits(0)
    options = dict(baseline_params=ProbeParams(lr=5e-4), lag=lag)
    whole = _tune(storage, "whole", train, valid, 5, **options)
    _tune(storage, "cut", train, valid, 2, **options)  # the process ends after two trials
    resumed = _tune(storage, "cut", train, valid, 5, **options)
    assert _without_durations(resumed.trials) == _without_durations(whole.trials)
    assert resumed.best_params == whole.best_params


@pytest.mark.parametrize("owner", ["dead process", "none yet"])
def test_a_trial_killed_while_running_is_run_again_under_its_own_number(
    storage, monkeypatch, owner
):
    """A kill during trial 2 leaves it RUNNING; the rerun runs trial 2 again (same number,
    same parameters) instead of failing it and drawing other trials after it."""
    monkeypatch.setattr(tuning, "TPE_STARTUP_TRIALS", 2, raising=False)
    train, valid, _ = _splits(0)
    lag = 0  # sequential TPE: trial 2's draw depends on trials 0 and 1
    whole = _tune(storage, "whole", train, valid, 4, lag=lag)
    _tune(storage, "cut", train, valid, 2, lag=lag)
    # What the killed process left: trial 2 created (by the study's own sampler), maybe
    # with its owner recorded, and never finished.
    study = optuna.load_study(study_name="cut", storage=storage)
    trial = study.ask()
    if owner == "dead process":
        study.sampler = tuning.LaggedTPESampler(
            0, tuning.search_space(SPEC), lag=lag, n_startup_trials=2
        )
        trial = optuna.trial.Trial(study, trial._trial_id)
        trial.set_user_attr(tuning.OWNER_ATTR, _dead_process())
        tuning.suggest_params(trial, SPEC)
    resumed = _tune(storage, "cut", train, valid, 4, lag=lag)
    assert [t["state"] for t in resumed.trials] == ["COMPLETE"] * 4
    assert _without_durations(resumed.trials) == _without_durations(whole.trials)


def test_sampled_parameters_are_a_pure_function_of_seed_number_and_history():
    """What parallel workers (issue #16) rely on: trial n's parameters are
    trial_params(seed, n, COMPLETE trials numbered below n - lag), nothing else."""
    space = tuning.search_space(SPEC)
    for lag in (0, 2):
        study = optuna.create_study(
            direction="maximize",
            sampler=tuning.LaggedTPESampler(3, space, lag=lag, n_startup_trials=2),
        )
        for n in range(6):
            trial = study.ask()
            params = tuning.suggest_params(trial, SPEC)
            # a diverging trial now and then: FAIL trials are not part of the history
            study.tell(trial, state=TrialState.FAIL) if n == 3 else study.tell(trial, -params.lr)
        trials = study.get_trials()
        for t in trials:
            history = [
                h for h in trials if h.number < t.number - lag and h.state.name == "COMPLETE"
            ]
            assert t.params == tuning.trial_params(3, t.number, history, space, 2), (lag, t.number)
        if lag == 0:
            first = [t.params for t in trials]
    assert first[:2] == [t.params for t in trials[:2]]  # random start-up: seed and number only
    assert first[2:] != [t.params for t in trials[2:]]  # the lag changes what TPE has seen


def test_equal_budget_for_every_method(storage):
    """Two methods (different embeddings), same seed: same trials, same sampled parameters."""
    train_a, valid_a, _ = _splits(0)
    train_b, valid_b, _ = _splits(1)
    a = _tune(storage, "method_a/t", train_a, valid_a, 3)
    b = _tune(storage, "method_b/t", train_b, valid_b, 3)
    assert len(_complete(a.trials)) == len(_complete(b.trials)) == 3
    assert [t["params"] for t in a.trials] == [t["params"] for t in b.trials]
    assert [t["value"] for t in a.trials] != [t["value"] for t in b.trials]


def test_mlp_searches_dropout_and_baseline_is_trial_zero(storage):
    train, valid, _ = _splits(0)
    spec = ProbeSpec("mlp", False, NUM_CLASSES, hidden_dim=16)
    result = _tune(
        storage, "m/mlp", train, valid, 2, spec=spec, baseline_params=ProbeParams(lr=3e-4)
    )
    assert result.trials[0]["params"] == {
        "lr": 3e-4,
        "weight_decay": SEARCH_SPACE["weight_decay"]["low"],
        "dropout": 0.0,
    }
    assert 0.0 <= result.trials[1]["params"]["dropout"] <= 0.5


def test_diverged_trials_fail_and_do_not_count(storage, monkeypatch):
    train, valid, _ = _splits(0)
    calls = []
    train_probe = tuning.train_probe

    def train_probe_diverging_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise ProbeDivergedError("loss is nan in epoch 1")
        return train_probe(*args, **kwargs)

    monkeypatch.setattr(tuning, "train_probe", train_probe_diverging_once)
    result = _tune(storage, "m/t", train, valid, 2)
    assert [t["state"] for t in result.trials] == ["FAIL", "COMPLETE", "COMPLETE"]


class _SpyWindowSet(WindowSet):
    """A WindowSet that records which of its attributes are read after construction."""

    def __post_init__(self):
        super().__post_init__()
        self.reads = []

    def __getattribute__(self, name):
        reads = object.__getattribute__(self, "__dict__").get("reads")
        if reads is not None and name in ("embeddings", "clip_index", "targets"):
            reads.append(name)
        return object.__getattribute__(self, name)


def test_tuning_never_touches_test_data(storage):
    train, valid, test = (_SpyWindowSet(s.embeddings, s.clip_index, s.targets) for s in _splits(0))
    parameters = inspect.signature(tune_probe).parameters
    assert not any("test" in name for name in parameters), "tune_probe takes no test split"

    scored_targets = []

    def spy_score_fn(targets, clip_scores):
        scored_targets.append(targets)
        return SCORE_FN(targets, clip_scores)

    _tune(storage, "m/t", train, valid, 2, score_fn=spy_score_fn)
    # Positive control: the spies do see the splits that are used.
    assert {"embeddings", "clip_index", "targets"} <= set(train.reads)
    assert {"embeddings", "clip_index", "targets"} <= set(valid.reads)
    assert test.reads == []
    # Every score of every epoch of every trial is a validation score.
    assert scored_targets and all(t is valid.targets for t in scored_targets)


def test_optuna_is_silenced(storage, caplog):
    train, valid, _ = _splits(0)
    with caplog.at_level("INFO"):
        _tune(storage, "m/t", train, valid, 1)
    assert optuna.logging.get_verbosity() == optuna.logging.WARNING
    assert not any(r.name.startswith("optuna") for r in caplog.records)
    assert any(
        r.name == "benchmark.evaluation.tuning" and "trial 0" in r.message for r in caplog.records
    )


def test_invalid_budget_raises(storage):
    train, valid, _ = _splits(0)
    with pytest.raises(ValueError, match="num_trials"):
        _tune(storage, "m/t", train, valid, 0)


def test_ctrl_c_during_a_trial_leaves_it_to_be_run_again_under_its_number(storage, monkeypatch):
    """Optuna's own loop marks a trial FAIL on Ctrl-C, and the rerun would then draw the next
    trial under another number: interrupted by Ctrl-C must equal uninterrupted too."""
    train, valid, _ = _splits(0)
    whole = _tune(storage, "whole", train, valid, 3)
    calls = []
    train_probe = tuning.train_probe

    def interrupted_in_the_second_trial(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return train_probe(*args, **kwargs)

    monkeypatch.setattr(tuning, "train_probe", interrupted_in_the_second_trial)
    with pytest.raises(KeyboardInterrupt):
        _tune(storage, "cut", train, valid, 3)
    resumed = _tune(storage, "cut", train, valid, 3)
    assert _without_durations(resumed.trials) == _without_durations(whole.trials)


def _slowly(score_fn, seconds, targets, scores):
    """``score_fn`` that takes ``seconds`` longer: trials long enough for two workers."""
    time.sleep(seconds)
    return score_fn(targets, scores)


def test_two_workers_give_the_trials_of_one_worker(storage):
    """Two processes share one study (SQLite here; PostgreSQL: tests/scaleout): the counted
    trials, their parameters, values and the best are those of one worker."""
    train, valid, _ = _splits(0)
    slow = functools.partial(_slowly, SCORE_FN, 0.4)
    options = dict(score_fn=slow, baseline_params=ProbeParams(lr=3e-4), lag=1)
    one = _tune(storage, "one", train, valid, 10, **options)
    two = _tune(storage, "two", train, valid, 10, workers=2, **options)

    def essentials(result):
        return [(t["number"], t["params"], t["state"], t["value"]) for t in result.trials]

    assert essentials(two) == essentials(one)
    assert (two.best_params, two.best_value) == (one.best_params, one.best_value)
    assert len(_complete(two.trials)) == 10 and 0 <= two.beyond_budget <= 1
    pids = {
        t.user_attrs["pid"]
        for t in optuna.load_study(study_name="two", storage=storage).trials
        if t.state == TrialState.COMPLETE
    }
    assert len(pids) == 2 and os.getpid() in pids, "both workers ran trials"


def test_the_counted_trials_wait_for_a_lower_running_trial():
    """The budget is the first N COMPLETE trials by number, settled only once no lower trial
    can still complete: a fast worker's trial 3 must not replace a slow worker's trial 2."""
    from optuna.trial import create_trial

    def trial(number, state, value=None):
        t = create_trial(state=state, value=value, params={}, distributions={})
        t.number = number
        return t

    running = [
        trial(0, TrialState.COMPLETE, 1.0),
        trial(1, TrialState.COMPLETE, 2.0),
        trial(2, TrialState.RUNNING),
    ]
    assert tuning.counted_trials([*running, trial(3, TrialState.COMPLETE, 3.0)], 3) is None
    failed = [*running[:2], trial(2, TrialState.FAIL), trial(3, TrialState.COMPLETE, 3.0)]
    assert [t.number for t in tuning.counted_trials(failed, 3)] == [0, 1, 3]
    done = [*running[:2], trial(2, TrialState.COMPLETE, 0.5), trial(3, TrialState.RUNNING)]
    assert [t.number for t in tuning.counted_trials(done, 3)] == [0, 1, 2]


def test_lag_and_workers_are_checked(storage):
    train, valid, _ = _splits(0)
    with pytest.raises(ValueError, match="workers"):
        _tune(storage, "m/t", train, valid, 2, workers=0)
    with pytest.raises(ValueError, match="lag"):
        _tune(storage, "m/t", train, valid, 2, lag=-1)


def test_a_study_killed_with_its_workers_resumes_as_an_uninterrupted_one(storage):
    """#13 and #16 together: a kill of the tuning step takes its workers with it and leaves
    their trials RUNNING (one with its parameters drawn, one still waiting to draw them); the
    rerun with two workers runs both again under their own numbers, and the study ends as an
    uninterrupted one, with the same counted trials and the same best."""
    train, valid, _ = _splits(0)
    options = dict(baseline_params=ProbeParams(lr=3e-4), lag=1)
    whole = _tune(storage, "whole", train, valid, 6, **options)
    _tune(storage, "cut", train, valid, 2, **options)
    study = optuna.load_study(study_name="cut", storage=storage)
    study.sampler = tuning.LaggedTPESampler(0, tuning.search_space(SPEC), lag=1)
    drawn, waiting = study.ask(), study.ask()  # trials 2 and 3 of two killed workers
    for trial in (drawn, waiting):
        trial.set_user_attr(tuning.OWNER_ATTR, _dead_process())
    tuning.suggest_params(drawn, SPEC)
    resumed = _tune(storage, "cut", train, valid, 6, workers=2, **options)

    def essentials(result):
        return [(t["number"], t["params"], t["state"], t["value"]) for t in result.trials]

    assert essentials(resumed) == essentials(whole)
    assert (resumed.best_params, resumed.best_value) == (whole.best_params, whole.best_value)
    states = {
        t.number: t.state for t in optuna.load_study(study_name="cut", storage=storage).trials
    }
    assert states[2] == states[3] == TrialState.COMPLETE
