"""Optuna studies on PostgreSQL shared by worker processes, with heartbeats."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

import pytest

from tests.scaleout import jobs

pytestmark = [
    pytest.mark.services,
    # heartbeats, fail_stale_trials and the retry callback are "experimental" in Optuna 5.0
    pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
]
GRACE_S = 3  # jobs.storage: heartbeat_interval=1, grace_period=3

SEED = 7


def _study(url: str, name: str):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(study_name=name, storage=jobs.storage(url), direction="minimize")


def _wait(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def _kill_mid_trial(url: str, name: str, study) -> int:
    """Start a worker, SIGKILL it while its trial runs; returns that trial's number."""
    from optuna.trial import TrialState

    ctx = multiprocessing.get_context("spawn")
    worker = ctx.Process(target=jobs.hanging_worker, args=(url, name, SEED))
    worker.start()
    try:

        def running():
            return [
                t
                for t in study.get_trials(states=(TrialState.RUNNING,))
                if t.user_attrs.get("pid") == worker.pid
            ]

        _wait(lambda: bool(running()), 60, "the worker's trial to run")
        time.sleep(1.5)  # a heartbeat or two
    finally:
        os.kill(worker.pid, signal.SIGKILL)
        worker.join(10)
    assert worker.exitcode == -signal.SIGKILL
    return running()[0].number


def test_killed_workers_trial_is_failed_by_the_heartbeat(fresh_database):
    import optuna
    from optuna.trial import TrialState

    study = _study(fresh_database, "heartbeat")
    number = _kill_mid_trial(fresh_database, "heartbeat", study)
    killed_at = time.monotonic()

    # Retrying stale trials: each gets a WAITING copy with the same parameters.
    retrying = optuna.load_study(
        study_name="heartbeat", storage=jobs.storage(fresh_database, retry=True)
    )
    optuna.storages.fail_stale_trials(retrying)
    if time.monotonic() - killed_at < GRACE_S - 0.5:  # not stale yet
        assert retrying.trials[number].state == TrialState.RUNNING
    _wait(
        lambda: (
            optuna.storages.fail_stale_trials(retrying)
            or retrying.trials[number].state.is_finished()
        ),
        30,
        "the stale trial to fail",
    )
    trials = retrying.get_trials()
    assert trials[number].state == TrialState.FAIL
    (retry,) = [t for t in trials if t.state == TrialState.WAITING]
    assert retry.params == trials[number].params
    assert optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(retry) == number


def test_two_workers_share_a_study_to_a_fixed_budget(fresh_database):
    """Two worker processes, MaxTrialsCallback(states=(COMPLETE,)); a killed worker's trial
    is failed by the survivors (each calls fail_stale_trials before asking for a trial)."""
    from optuna.trial import TrialState

    total = 8
    study = _study(fresh_database, "budget")
    killed = _kill_mid_trial(fresh_database, "budget", study)
    # Both start together once the killed trial is stale (they import Optuna meanwhile).
    start_at = time.time() + GRACE_S + 0.5

    ctx = multiprocessing.get_context("spawn")
    workers = [
        ctx.Process(
            target=jobs.optuna_worker,
            args=(fresh_database, "budget", total, 0.6, SEED, False, start_at),
        )
        for _ in range(2)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert [w.exitcode for w in workers] == [0, 0]

    trials = study.get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert trials[killed].state == TrialState.FAIL
    # MaxTrialsCallback stops a worker after a trial once the study holds `total` COMPLETE
    # trials; the other worker's trial in flight still completes: up to workers - 1 more.
    assert total <= len(complete) <= total + len(workers) - 1
    assert [t.number for t in trials] == list(range(len(trials)))  # unique, no gaps
    assert {t.user_attrs["pid"] for t in complete} == {w.pid for w in workers}
    # Parameters are a function of (seed, trial number): whichever worker ran a trial.
    for t in complete:
        assert t.params == pytest.approx(jobs.per_trial_params(SEED, t.number))


def _run_workers(url: str, name: str, n_workers: int, total: int, sampler: str) -> list:
    """Parameters by trial number after ``n_workers`` processes optimised a new study."""
    study = _study(url, name)
    ctx = multiprocessing.get_context("spawn")
    start_at = time.time() + 3  # after every worker's imports
    workers = [
        ctx.Process(
            target=jobs.optuna_worker,
            kwargs=dict(
                url=url,
                study_name=name,
                total=total,
                trial_s=0.3,
                seed=SEED,
                start_at=start_at,
                sampler=sampler,
            ),
        )
        for _ in range(n_workers)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert [w.exitcode for w in workers] == [0] * n_workers
    return [(t.number, t.params) for t in study.get_trials()]


def test_lagged_tpe_gives_the_same_trials_with_one_or_two_workers(fresh_database):
    """TPE fitted on trials numbered < n - lag (seeded with (seed, n)): trial n's parameters do
    not depend on how many workers ran the study, nor on which finished first."""
    total = 10  # 4 random start-up trials, then 6 TPE trials
    one = _run_workers(fresh_database, "lagged-1", 1, total, "lagged-tpe")
    two = _run_workers(fresh_database, "lagged-2", 2, total, "lagged-tpe")
    assert len(one) == total and total <= len(two) <= total + 1
    assert two[:total] == one
