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
@pytest.mark.parametrize(("startup", "lag"), [(10, 3), (2, 0), (2, 1)])
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


def test_optuna_is_silenced_during_the_call_only(storage, caplog):
    """Optuna's INFO lines (one per trial and per replayed study) are replaced by ours, and
    the caller's verbosity is back afterwards: setting it for good changed process state."""
    train, valid, _ = _splits(0)
    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.INFO)
    optuna.logging.enable_propagation()  # so that caplog would see Optuna's records
    try:
        with caplog.at_level("INFO"):
            _tune(storage, "m/t", train, valid, 1)
        assert optuna.logging.get_verbosity() == optuna.logging.INFO
    finally:
        optuna.logging.disable_propagation()
        optuna.logging.set_verbosity(previous)
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
    with pytest.raises(ValueError, match="3 workers need lag >= 2"):
        _tune(storage, "m/t", train, valid, 2, workers=3, lag=1)
    with pytest.raises(ValueError, match="in-memory"):
        _tune("sqlite:///:memory:", "m/t", train, valid, 2, workers=2, lag=1)


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


# -- the scale-out review: a trial failed meanwhile, Optuna's API, on_trial, stopping ------


def test_a_trial_failed_meanwhile_by_a_heartbeat_check_is_dropped_and_replaced(
    storage, monkeypatch
):
    """A trial whose heartbeat lagged past the grace period is failed by another worker while
    its process still trains it; telling it then raised "Cannot tell a FAIL trial" (or could
    not write its attributes) and crashed the step. Its result is dropped instead, and the
    next number takes its place: still exactly ``num_trials`` counted trials."""
    train, valid, _ = _splits(0)
    calls = []
    train_probe = tuning.train_probe

    def failed_by_another_worker_during_the_second(*args, **kwargs):
        calls.append(1)
        result = train_probe(*args, **kwargs)
        if len(calls) == 2:  # what fail_stale_trials in another worker does to trial 1
            other = optuna.storages.RDBStorage(storage)
            study_id = other.get_study_id_from_name("m/t")
            trial_id = other.get_trial_id_from_study_id_trial_number(study_id, 1)
            other.set_trial_state_values(trial_id, TrialState.FAIL)
        return result

    monkeypatch.setattr(tuning, "train_probe", failed_by_another_worker_during_the_second)
    result = _tune(storage, "m/t", train, valid, 3)
    assert [t["state"] for t in result.trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert len(calls) == 4 and result.best_value == max(
        t["value"] for t in _complete(result.trials)
    )


def test_reopen_trial_is_optuna_trial_of_that_id(storage):
    """The one Optuna internal the module uses (``Trial(study, trial_id)``): a RUNNING trial
    reopened keeps its number and stored parameters, takes attributes and can be told."""
    opened = tuning.open_storage(storage)
    try:
        study = optuna.create_study(study_name="s", storage=opened, direction="maximize")
        asked = tuning._ask(study)
        drawn = tuning.suggest_params(asked, SPEC)
        trial = tuning._reopen_trial(study, tuning._trial_id(opened, study, asked.number))
        assert isinstance(trial, optuna.Trial) and trial.number == asked.number
        assert tuning.suggest_params(trial, SPEC) == drawn
        trial.set_user_attr("who", "the rerun")
        study.tell(trial, 0.5)
        (told,) = study.get_trials()
        assert (told.state, told.value, told.user_attrs["who"]) == (
            TrialState.COMPLETE,
            0.5,
            "the rerun",
        )
    finally:
        tuning.close_storage(opened)


def test_only_public_optuna_api_outside_the_one_shim():
    source = inspect.getsource(tuning)
    shim = inspect.getsource(tuning._reopen_trial)
    assert "optuna.trial.Trial(study, trial_id)" in shim
    rest = source.replace(shim, "")
    for private in (
        "._storage",
        "._trial_id",
        "._study_id",
        "optuna.storages._",
        "get_heartbeat_thread",
        "is_heartbeat_enabled",
        "optuna.trial.Trial(",
    ):
        assert private not in rest, private


def _enqueued_study(storage: str, name: str, points: list[dict]) -> None:
    """A study holding ``points`` as queued trials 0, 1, ... (like trials enqueued by hand)."""
    tuning.init_storage(storage)
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    for point in points:
        study.enqueue_trial(point)


def _state(storage: str, name: str, number: int) -> TrialState | None:
    trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    return trials[number].state if number < len(trials) else None


def _score_after(storage, name, number, state, main_pid, worker_s, targets, scores):
    """SCORE_FN, except that the test's own process first waits until trial ``number`` (a
    spawned worker's) is in ``state``, and a worker takes ``worker_s`` seconds longer."""
    if os.getpid() == main_pid:
        deadline = time.monotonic() + 120
        while _state(storage, name, number) != state:
            assert time.monotonic() < deadline, f"trial {number} never got {state}"
            time.sleep(0.1)
    else:
        time.sleep(worker_s)
    return SCORE_FN(targets, scores)


POINTS = [{"lr": 3e-4, "weight_decay": 1e-7}, {"lr": 1e-3, "weight_decay": 1e-5}]


def test_on_trial_sees_the_counted_trials_only_whatever_the_workers(storage):
    """on_trial (MLflow's trial history) also saw the trials that parallel workers finished
    beyond the budget, so the logged tune run depended on the number of workers. Here a
    spawned worker finishes queued trial 1 while this process runs trial 0 of a budget of 1."""
    train, valid, _ = _splits(0)
    seen = {1: [], 2: []}
    _enqueued_study(storage, "one", POINTS)
    one = _tune(storage, "one", train, valid, 1, on_trial=seen[1].append)
    _enqueued_study(storage, "two", POINTS)
    after_trial_1 = functools.partial(
        _score_after, storage, "two", 1, TrialState.COMPLETE, os.getpid(), 0.0
    )
    two = _tune(
        storage,
        "two",
        train,
        valid,
        1,
        workers=2,
        lag=1,
        score_fn=after_trial_1,
        on_trial=seen[2].append,
    )
    assert _state(storage, "two", 1) == TrialState.COMPLETE  # the worker's, beyond the budget
    assert [(t["number"], t["value"]) for t in seen[2]] == [(0, one.best_value)]
    assert _without_durations(seen[2]) == _without_durations(seen[1])
    assert _without_durations(two.trials) == _without_durations(one.trials)
    assert two.beyond_budget == 1 and one.beyond_budget == 0  # trial 1 stayed queued


def test_once_the_budget_is_settled_a_worker_at_a_trial_beyond_it_is_stopped(storage):
    """The step waited up to an hour for workers still running trials beyond the budget. They
    are stopped instead; their trial stays RUNNING, never counted, and a later call with a
    larger budget runs it under its own number."""
    train, valid, _ = _splits(0)
    _enqueued_study(storage, "s", POINTS)
    while_trial_1_runs = functools.partial(
        _score_after, storage, "s", 1, TrialState.RUNNING, os.getpid(), 60.0
    )
    started = time.monotonic()
    result = _tune(storage, "s", train, valid, 1, workers=2, lag=1, score_fn=while_trial_1_runs)
    assert time.monotonic() - started < 45, "waited for the worker's trial beyond the budget"
    assert [t["number"] for t in result.trials] == [0] and result.beyond_budget == 1
    assert _state(storage, "s", 1) == TrialState.RUNNING
    larger = _tune(storage, "s", train, valid, 2)
    assert [t["state"] for t in larger.trials] == ["COMPLETE", "COMPLETE"]
    assert larger.trials[1]["params"] == POINTS[1]


def test_a_trial_beyond_a_settled_budget_is_not_run_again(storage, monkeypatch):
    """A call killed after its budget was settled leaves a worker's trial beyond it RUNNING;
    the rerun ran it again (wasted: it is never counted)."""
    train, valid, _ = _splits(0)
    first = _tune(storage, "s", train, valid, 2)
    study = optuna.load_study(study_name="s", storage=storage)
    left = study.ask()  # trial 2 of a killed worker
    left.set_user_attr(tuning.OWNER_ATTR, _dead_process())
    calls = []
    monkeypatch.setattr(tuning, "train_probe", lambda *a, **k: calls.append(1))
    again = _tune(storage, "s", train, valid, 2)
    assert calls == [] and again.trials == first.trials and again.beyond_budget == 1
    assert _state(storage, "s", 2) == TrialState.RUNNING


def test_on_trial_after_an_interruption_sees_every_counted_trial(storage):
    """A trial finished (told) but not yet reported when the call was killed was never passed
    to on_trial by the rerun: MLflow lacked it. Now every counted trial is passed, also those
    of earlier calls (a caller logging them skips what it has logged: here a dict)."""
    train, valid, _ = _splits(0)
    whole = []
    _tune(storage, "whole", train, valid, 4, on_trial=whole.append)

    logged: dict[int, dict] = {}

    def log_once(trial):
        logged.setdefault(trial["number"], trial)

    def killed_before_logging_trial_2(trial):
        if trial["number"] == 2:
            raise KeyboardInterrupt
        log_once(trial)

    with pytest.raises(KeyboardInterrupt):
        _tune(storage, "cut", train, valid, 4, on_trial=killed_before_logging_trial_2)
    assert _state(storage, "cut", 2) == TrialState.COMPLETE and 2 not in logged
    _tune(storage, "cut", train, valid, 4, on_trial=log_once)
    assert _without_durations([logged[n] for n in sorted(logged)]) == _without_durations(whole)


def test_a_trial_whose_heartbeat_beats_elsewhere_is_left_to_its_process(storage, monkeypatch):
    """A trial RUNNING in a process this host cannot check (another host) was taken for an
    orphan and run again, also while its process was alive. Now: trial 1, whose heartbeat
    beats, is left to its process (which tells it later); trial 2, whose heartbeat stood still
    for the grace period, is run again here."""
    import threading

    monkeypatch.setattr(tuning, "TPE_STARTUP_TRIALS", 2, raising=False)
    train, valid, _ = _splits(0)
    _tune(storage, "s", train, valid, 1, lag=1)  # lag 1: trial 2 need not wait for trial 1
    elsewhere = tuning.open_storage(storage, heartbeat_s=1, grace_s=2)
    study = optuna.load_study(
        study_name="s",
        storage=elsewhere,
        sampler=tuning.LaggedTPESampler(0, tuning.search_space(SPEC), 1, n_startup_trials=2),
    )
    alive, dead = tuning._ask(study), tuning._ask(study)
    for trial in (alive, dead):
        trial.set_user_attr(tuning.OWNER_ATTR, "another-host:1234:")
        tuning.suggest_params(trial, SPEC)
    dead.set_user_attr("bench.heartbeat", 0.0)  # its last beat, long ago
    study_id = elsewhere.get_study_id_from_name("s")
    alive_id = elsewhere.get_trial_id_from_study_id_trial_number(study_id, alive.number)
    errors = []

    def the_other_process():
        try:
            for _ in range(40):  # 4 s: its heartbeat, as the other host's process writes it
                elsewhere.record_heartbeat(alive_id)
                elsewhere.set_trial_user_attr(alive_id, "bench.heartbeat", time.time())
                time.sleep(0.1)
            study.tell(alive, 0.123)
        except Exception as exc:  # noqa: BLE001 (asserted below)
            errors.append(exc)

    other = threading.Thread(target=the_other_process)
    other.start()
    result = _tune(storage, "s", train, valid, 3, lag=1, heartbeat_s=1, grace_s=2)
    other.join()
    assert errors == []
    assert [t["state"] for t in result.trials] == ["COMPLETE"] * 3
    assert result.trials[1]["value"] == 0.123
    pids = [
        t.user_attrs.get("pid") for t in optuna.load_study(study_name="s", storage=storage).trials
    ]
    assert pids[2] == os.getpid()


def test_every_storage_opened_is_closed(storage, monkeypatch):
    """Every RDBStorage opened held a connection pool for the life of the process: a pool
    worker running many tune steps piled them up on the database server."""
    import sqlalchemy.engine

    created, disposed = [], set()
    create_engine, dispose = sqlalchemy.engine.create_engine, sqlalchemy.engine.Engine.dispose

    def recorded_create_engine(*args, **kwargs):
        created.append(create_engine(*args, **kwargs))
        return created[-1]

    def recorded_dispose(engine, *args, **kwargs):
        disposed.add(id(engine))
        return dispose(engine, *args, **kwargs)

    monkeypatch.setattr(sqlalchemy.engine, "create_engine", recorded_create_engine)
    monkeypatch.setattr(sqlalchemy.engine.Engine, "dispose", recorded_dispose)
    train, valid, _ = _splits(0)
    tuning.init_storage(storage)
    _tune(storage, "m/t", train, valid, 2)
    assert created and [id(e) in disposed for e in created] == [True] * len(created)


def test_warning_filters_change_only_in_the_calling_thread(storage, monkeypatch):
    """``warnings.catch_warnings`` swaps process-wide filters and is not thread-safe: the
    heartbeat threads must never use it."""
    import threading
    import warnings

    users = set()
    catch_warnings = warnings.catch_warnings

    class Recorded(catch_warnings):
        def __enter__(self):
            users.add(threading.current_thread().name)
            return super().__enter__()

    monkeypatch.setattr(warnings, "catch_warnings", Recorded)
    train, valid, _ = _splits(0)
    slow = functools.partial(_slowly, SCORE_FN, 0.6)  # beats while it trains
    _tune(storage, "m/t", train, valid, 2, score_fn=slow, heartbeat_s=1, grace_s=30)
    assert users == {threading.current_thread().name}


def _stand_in_probe(spec, params, *args, **kwargs):
    """A cheap, deterministic stand-in for train_probe: a smooth score of the parameters."""
    from types import SimpleNamespace

    score = -((np.log10(params.lr) + 3.3) ** 2) - 0.1 * (np.log10(params.weight_decay) + 5) ** 2
    return SimpleNamespace(best_valid_score=float(score), best_epoch=1, epochs_run=2)


def _sequential_tpe(seed: int, num_trials: int, baseline: dict, startup: int) -> list[dict]:
    """main's tuning written out naively: one process; trial 0 the baseline, trial n drawn by
    a TPE sampler seeded with SeedSequence([seed, n]) fitted on every COMPLETE trial before n."""
    space = {
        "lr": optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True),
        "weight_decay": optuna.distributions.FloatDistribution(1e-7, 1e-2, log=True),
    }
    done = []
    for n in range(num_trials):
        params = baseline
        if n > 0:
            seed_n = int(np.random.SeedSequence([seed, n]).generate_state(1)[0])
            replay = optuna.create_study(
                direction="maximize",
                sampler=optuna.samplers.TPESampler(seed=seed_n, n_startup_trials=startup),
            )
            replay.add_trials(done)
            params = replay.ask(fixed_distributions=space).params
        value = _stand_in_probe(SPEC, ProbeParams(**params)).best_valid_score
        done.append(optuna.trial.create_trial(params=params, distributions=space, value=value))
    return [{"params": t.params, "value": t.value} for t in done]


def test_the_default_lag_draws_mains_trials(storage, monkeypatch):
    """tune.lag defaults to 0, which must give main's tuning (sequential TPE with a per-trial
    seed) exactly, so that main's tuned parameters and leaderboard stay what they were."""
    monkeypatch.setattr(tuning, "train_probe", _stand_in_probe)
    monkeypatch.setattr(tuning, "TPE_STARTUP_TRIALS", 3, raising=False)
    result = _tune(storage, "m/t", None, None, 9, baseline_params=ProbeParams(lr=5e-4))
    reference = _sequential_tpe(0, 9, {"lr": 5e-4, "weight_decay": 1e-7}, startup=3)
    assert [{"params": t["params"], "value": t["value"]} for t in result.trials] == reference
