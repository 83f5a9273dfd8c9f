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


# -- the project's tuning (benchmark.evaluation.tuning) on PostgreSQL -------------------------


def test_tune_steps_creating_the_schema_at_once_all_succeed(postgres_server, request):
    """Parallel tune steps open a new PostgreSQL database at once: one creates Optuna's
    schema, the others' CREATE fails on the duplicate and they try again. (Threads, each with
    its own connection, make the race tight enough to happen every time without the retry.)"""
    import threading

    from benchmark.evaluation.tuning import init_storage

    for attempt in range(3):
        url = postgres_server.create_database(f"schema_{attempt}_{time.monotonic_ns() % 10**6}")
        barrier = threading.Barrier(6)
        errors = []

        def create(url=url, barrier=barrier, errors=errors):
            try:
                barrier.wait(60)
                init_storage(url)
            except Exception as exc:  # noqa: BLE001 (collected, asserted below)
                errors.append(exc)

        threads = [threading.Thread(target=create) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert errors == []


def _tune_in_thread(url: str, name: str, workers: int, out: dict, **kwargs):
    """``tune_probe`` on a planted problem (trials of ~1 s), in a thread of this process (its
    spawned workers are separate processes); the result or the exception lands in ``out``."""
    import functools
    import threading

    from tests.benchmark.evaluation import test_tuning as t

    train, valid, _ = t._splits(0)

    def target():
        try:
            out["result"] = t._tune(
                url,
                name,
                train,
                valid,
                kwargs.pop("num_trials", 8),
                workers=workers,
                lag=1,
                score_fn=functools.partial(t._slowly, t.SCORE_FN, 0.5),
                **kwargs,
            )
        except BaseException as exc:  # noqa: BLE001 (re-raised by the test)
            out["error"] = exc

    thread = threading.Thread(target=target, name=f"tune {name}")
    thread.start()
    return thread


def _finished(thread, out: dict, timeout: float = 300):
    thread.join(timeout)
    assert not thread.is_alive(), "tune_probe did not end"
    if "error" in out:
        raise out["error"]
    return out["result"]


def test_tune_probe_with_two_workers_gives_the_trials_of_one(fresh_database):
    """The project's sampler (TPE on a lagged history, seeded per trial number) and budget on
    a database server: one worker and two give the same counted trials and the same best."""
    one, two = {}, {}
    a = _finished(_tune_in_thread(fresh_database, "one", 1, one), one)
    b = _finished(_tune_in_thread(fresh_database, "two", 2, two), two)

    def essentials(result):
        return [(t["number"], t["params"], t["state"], t["value"]) for t in result.trials]

    assert essentials(b) == essentials(a)
    assert (b.best_params, b.best_value) == (a.best_params, a.best_value)
    import optuna

    pids = {
        t.user_attrs["pid"]
        for t in optuna.load_study(study_name="two", storage=fresh_database).trials
    }
    assert len(pids) == 2


def test_a_killed_tuning_worker_is_failed_by_the_heartbeat_and_the_budget_stays_exact(
    fresh_database,
):
    import optuna
    from optuna.trial import TrialState

    from benchmark.evaluation.tuning import init_storage

    init_storage(fresh_database)  # before the test watches the study from this thread
    out: dict = {}
    thread = _tune_in_thread(
        fresh_database, "killed", 2, out, num_trials=8, heartbeat_s=1, grace_s=GRACE_S
    )

    def worker_trial():
        try:
            study = optuna.load_study(study_name="killed", storage=fresh_database)
        except KeyError:  # not created yet
            return None
        running = [
            t
            for t in study.get_trials(states=(TrialState.RUNNING,))
            if t.user_attrs.get("pid", os.getpid()) != os.getpid()
        ]
        return running[0] if running else None

    _wait(lambda: worker_trial() is not None, 120, "a trial of the spawned worker")
    victim = worker_trial()
    os.kill(victim.user_attrs["pid"], signal.SIGKILL)
    result = _finished(thread, out)

    trials = optuna.load_study(study_name="killed", storage=fresh_database).get_trials()
    assert trials[victim.number].state == TrialState.FAIL
    assert not [t for t in trials if not t.state.is_finished()], "no trial left unfinished"
    counted = [t for t in result.trials if t["state"] == "COMPLETE"]
    assert len(counted) == 8 and result.trials[-1]["state"] == "COMPLETE"
    assert victim.number in [t["number"] for t in result.trials if t["state"] == "FAIL"]
    assert result.best_value == max(t["value"] for t in counted)
