"""Hyper-parameter search for probes with Optuna: the only module of the project importing optuna.

Every (method, task) gets the same budget: the same search space, the first ``num_trials``
COMPLETE trials by number and the same sampler seed, so no method is favoured by a luckier or
longer search. A trial trains a probe on the training split and returns its best validation
score; the test split is never an input here, so tuning cannot peek at it.

Studies live in an Optuna RDB storage (any SQLAlchemy URL, by default
``sqlite:///runs/optuna.db``; a database server such as PostgreSQL for several workers) and
are resumable. Several worker processes may share one study (``workers``). One rule covers a
rerun after a kill and any number of workers:

- *Parameters* (:func:`trial_params`, :class:`LaggedTPESampler`): trial ``n``'s are a pure
  function of the sampler seed, ``n`` and the COMPLETE trials numbered below ``n - lag``: a
  TPE sampler seeded with ``(seed, n)`` fitted on exactly those trials, once every trial
  numbered below ``n - lag`` has finished. So trial ``n`` is the same whether or not the study
  was interrupted before it, whichever worker draws it and however many workers there are.
  ``lag = 0`` (the default) is sequential TPE with a per-trial seed, the sampler of the
  single-process tuning before workers existed; W workers need ``lag >= W - 1`` (any fewer
  would mostly wait), so with a given lag any 1 to ``lag + 1`` workers give the same trials.
  (A sampler seeded once per process would draw other trials after a resumption, and the
  same start-up points in every worker: docs/SCALEOUT.md, "Parallel tuning".)
- *The budget* is the first ``num_trials`` COMPLETE trials by number, counted once every
  trial numbered below the last of them has finished (:func:`counted_trials`). Parallel
  workers may start up to W - 1 trials more (:func:`_work`); once the budget is settled they
  are stopped, their trials left RUNNING and never counted (a later call with a larger budget
  runs them again under their own numbers). The best trial is the best of the counted ones,
  so the budget stays exactly equal for every method, and ``on_trial`` (MLflow) sees exactly
  the counted trials.
- *An interrupted call* (Ctrl-C, a kill, a preemption: the workers die with the step): the
  rerun runs every trial left RUNNING by a dead process again, under its own number and with
  its own parameters, before the study goes on (:func:`_orphans`); a trial whose heartbeat
  still beats is left to its process, and a trial beyond a settled budget is not run again.
  Nothing is marked FAIL, so the study ends as an uninterrupted one.
- *Heartbeats* (:class:`_Heartbeat`): every running trial's process writes a heartbeat to the
  storage. A worker that dies while the call goes on leaves its trial to the others: they
  mark it FAIL once its heartbeat stood still for ``grace_s`` seconds, never leaving it
  RUNNING, and the next number takes its place in the budget (which stays exact; the trials
  after it then differ from an uninterrupted study's). A trial failed so while its process
  was in fact still at work (its heartbeat lagged) keeps that FAIL: its result is dropped.

Only Optuna's public API is used, except :func:`_reopen_trial` (see there). Process-wide
state: Optuna's log verbosity is WARNING during :func:`tune_probe` and restored after it;
warning filters (``warnings.catch_warnings``, not thread-safe) are changed only in the thread
that called :func:`tune_probe`, never in the heartbeat threads.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from benchmark.evaluation.probe import (
    ProbeDivergedError,
    ProbeParams,
    ProbeSpec,
    WindowSet,
    train_probe,
)
from benchmark.io import owner_is_alive, process_identity

log = logging.getLogger(__name__)

# Search space (ours). lr brackets the paper's 3e-4 / 5e-4 by more than a decade on each side.
# weight_decay is log-uniform; its lower end 1e-7 is, for Adam on standardised inputs, the same
# as the paper's 0, so no separate "no decay" switch is needed (one dimension fewer for TPE).
# dropout is searched for mlp probes only: a linear probe has no hidden layer to drop.
SEARCH_SPACE = {
    "lr": {"low": 1e-5, "high": 1e-2, "log": True},
    "weight_decay": {"low": 1e-7, "high": 1e-2, "log": True},
    "dropout": {"low": 0.0, "high": 0.5, "log": False},
}
HEARTBEAT_S = 5.0  # a running trial's process writes a heartbeat this often, s (ours)
GRACE_S = 60.0  # a trial whose heartbeat stood still this long is failed, s (ours)
# Trials before TPE models the history (optuna's default); until then draws are random.
TPE_STARTUP_TRIALS = 10
OWNER_ATTR = "bench.owner"  # user attribute: the process running a trial (benchmark.io)
HEARTBEAT_ATTR = "bench.heartbeat"  # user attribute: rewritten at each heartbeat (_Heartbeat)
# Once the budget is settled, a worker gets this long to end on its own before it is stopped;
# one still at work runs a trial beyond the budget (s, ours).
STOP_S = 5.0
WAIT_POLL_S = 0.2  # how often a worker looks whether the trials it samples from have finished


@dataclass
class TuneResult:
    """Outcome of :func:`tune_probe`.

    Attributes:
        best_params: the parameters of the best COMPLETE trial.
        best_value: its best validation score.
        trials: the study's trials up to the last counted one (also those of earlier,
            interrupted runs), by number, as ``{"number", "params", "value", "state",
            "best_epoch", "epochs_run", "duration_s"}``: the same list for any number of
            workers (trials that parallel workers ran beyond the budget are left out).
        beyond_budget: how many trials parallel workers started beyond the budget (not
            counted, not in ``trials``; finished, or left RUNNING when their worker was
            stopped).
    """

    best_params: ProbeParams
    best_value: float
    trials: list[dict] = field(default_factory=list)
    beyond_budget: int = 0


def search_space(spec: ProbeSpec) -> dict[str, FloatDistribution]:
    """:data:`SEARCH_SPACE` as Optuna distributions (dropout only for mlp probes)."""
    return {
        name: FloatDistribution(**bounds)
        for name, bounds in SEARCH_SPACE.items()
        if name != "dropout" or spec.kind == "mlp"
    }


def suggest_params(trial: optuna.Trial, spec: ProbeSpec) -> ProbeParams:
    """Draw one point of :data:`SEARCH_SPACE` (dropout only for mlp probes)."""
    values = {
        name: trial.suggest_float(name, dist.low, dist.high, log=dist.log)
        for name, dist in search_space(spec).items()
    }
    return ProbeParams(**values)


def trial_seed(sampler_seed: int, number: int) -> int:
    """The TPE seed of trial ``number``."""
    return int(np.random.SeedSequence([sampler_seed, number]).generate_state(1)[0])


def trial_params(
    sampler_seed: int,
    number: int,
    history: list[FrozenTrial],
    space: dict[str, FloatDistribution],
    n_startup_trials: int = TPE_STARTUP_TRIALS,
) -> dict[str, float]:
    """The parameters of trial ``number``: a pure function of its arguments.

    A TPE sampler seeded with :func:`trial_seed` is fitted on ``history`` (the COMPLETE trials
    the caller allows, see :class:`LaggedTPESampler`) in an in-memory study and asked once.
    """
    replay = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(
            seed=trial_seed(sampler_seed, number), n_startup_trials=n_startup_trials
        ),
    )
    replay.add_trials(history)
    return dict(replay.ask(fixed_distributions=dict(space)).params)


class LaggedTPESampler(optuna.samplers.BaseSampler):
    """TPE that gives trial ``n`` the same parameters whatever happened before it and whatever
    the number or speed of workers.

    Trial ``n`` gets :func:`trial_params` of the COMPLETE trials numbered below ``n - lag``,
    once every trial numbered below ``n - lag`` has finished (the worker waits for them, and
    meanwhile fails the stale trials of dead workers, see the module docstring). One worker:
    any ``lag`` works, ``0`` is sequential TPE with a per-trial seed. ``W`` workers:
    ``lag >= W - 1`` keeps the waits rare, at the price of a history ``lag`` trials older than
    sequential TPE's. The search space is fixed; a parameter outside it is an error.
    """

    def __init__(
        self,
        seed: int,
        space: dict[str, FloatDistribution],
        lag: int = 0,
        n_startup_trials: int = TPE_STARTUP_TRIALS,
    ):
        if lag < 0:
            raise ValueError(f"lag must be >= 0, got {lag}")
        self.seed, self.space, self.lag = seed, dict(space), lag
        self.n_startup_trials = n_startup_trials

    def infer_relative_search_space(self, study, trial) -> dict[str, FloatDistribution]:
        return dict(self.space)

    def sample_relative(self, study, trial, search_space) -> dict[str, float]:
        if not search_space:
            return {}
        horizon = trial.number - self.lag
        waited = False
        while True:
            past = [t for t in study.get_trials(deepcopy=False) if t.number < horizon]
            if all(t.state.is_finished() for t in past):
                break
            if not waited:
                log.info("trial %d waits for trials below %d to finish", trial.number, horizon)
                waited = True
            _fail_stale_trials(study)  # a dead worker's trial would be waited for forever
            time.sleep(WAIT_POLL_S)
        history = [t for t in past if t.state == TrialState.COMPLETE]
        return trial_params(self.seed, trial.number, history, self.space, self.n_startup_trials)

    def sample_independent(self, study, trial, param_name, param_distribution):
        raise ValueError(f"{param_name} is outside the fixed search space {sorted(self.space)}")


def _fail_stale_trials(study: optuna.Study) -> None:
    """Mark FAIL the RUNNING trials whose heartbeat stood still for the grace period (only in
    the thread that runs the study: see the module docstring on warning filters)."""
    with warnings.catch_warnings():  # "experimental" in Optuna 4 and 5
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def open_storage(
    storage: str, heartbeat_s: float = HEARTBEAT_S, grace_s: float = GRACE_S
) -> optuna.storages.RDBStorage:
    """The RDB storage at SQLAlchemy URL ``storage``, with trial heartbeats; the caller
    closes it (:func:`close_storage`)."""
    if not 0 < heartbeat_s < grace_s:
        raise ValueError(f"need 0 < heartbeat_s < grace_s, got {heartbeat_s}, {grace_s}")
    _ensure_sqlite_folder(storage)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            storage,
            heartbeat_interval=int(max(1, round(heartbeat_s))),
            grace_period=int(max(2, round(grace_s))),
            engine_kwargs={"pool_pre_ping": True} if not storage.startswith("sqlite") else None,
        )


def close_storage(storage: optuna.storages.RDBStorage) -> None:
    """Close ``storage``'s connections (its SQLAlchemy engine, the public ``engine``
    attribute): a process that opens storages repeatedly (a pool worker running many tune
    steps) would otherwise hold a pool of connections to the database server per storage."""
    storage.remove_session()
    storage.engine.dispose()


def _trial_dict(trial: optuna.trial.FrozenTrial) -> dict:
    duration = trial.duration.total_seconds() if trial.duration is not None else None
    return {
        "number": trial.number,
        "params": dict(trial.params),
        "value": trial.value,
        "state": trial.state.name,
        "best_epoch": trial.user_attrs.get("best_epoch"),
        "epochs_run": trial.user_attrs.get("epochs_run"),
        "duration_s": duration,
    }


def _ensure_sqlite_folder(storage: str) -> None:
    """Create the folder of a ``sqlite:///relative/or/absolute.db`` file (SQLite will not)."""
    prefix = "sqlite:///"
    if storage.startswith(prefix) and storage != prefix + ":memory:":
        Path(storage[len(prefix) :]).parent.mkdir(parents=True, exist_ok=True)


def init_storage(storage: str, attempts: int = 5) -> None:
    """Create the Optuna schema of ``storage`` (SQLAlchemy URL) if it has none yet.

    Two processes creating the schema of one new database at once fail. SQLite: the pipeline
    calls this under a file lock before its parallel steps tune. A database server: the
    loser's ``CREATE`` fails (PostgreSQL: a duplicate ``studydirection`` type) once the winner
    has made the schema, so it tries again, up to ``attempts`` times, and then finds it."""
    import sqlalchemy.exc

    _ensure_sqlite_folder(storage)
    for attempt in range(1, attempts + 1):
        try:
            close_storage(optuna.storages.RDBStorage(storage))
            return
        except sqlalchemy.exc.DBAPIError as exc:
            if storage.startswith("sqlite") or attempt == attempts:
                raise
            log.info("creating the Optuna schema raced another process (%s); again", exc.orig)
            time.sleep(0.5 * attempt)


@dataclass
class _Search:
    """What every worker of one :func:`tune_probe` call needs (pickled for spawned workers)."""

    study_name: str
    storage: str
    heartbeat_s: float
    grace_s: float
    spec: ProbeSpec
    train: WindowSet
    valid: WindowSet
    num_trials: int
    sampler_seed: int
    lag: int
    n_startup_trials: int
    probe_seed: int
    max_epochs: int
    batch_size: int
    patience: int
    score_fn: Callable[[np.ndarray, np.ndarray], float]
    windows_per_clip: int
    standardize: bool
    device: object

    def sampler(self) -> LaggedTPESampler:
        return LaggedTPESampler(
            self.sampler_seed, search_space(self.spec), self.lag, self.n_startup_trials
        )

    def objective(self, trial: optuna.Trial) -> float:
        # Who runs it, before sampling (which may wait): see _orphans.
        trial.set_user_attr(OWNER_ATTR, process_identity())
        trial.set_user_attr("pid", os.getpid())
        params = suggest_params(trial, self.spec)
        try:
            result = train_probe(
                self.spec,
                params,
                self.train,
                self.valid,
                seed=self.probe_seed,
                score_fn=self.score_fn,
                batch_size=self.batch_size,
                max_epochs=self.max_epochs,
                patience=self.patience,
                windows_per_clip=self.windows_per_clip,
                standardize=self.standardize,
                device=self.device,
            )
        except ProbeDivergedError as exc:
            trial.set_user_attr("diverged", str(exc))
            raise
        trial.set_user_attr("best_epoch", result.best_epoch)
        trial.set_user_attr("epochs_run", result.epochs_run)
        return result.best_valid_score


def counted_trials(trials: list, num_trials: int) -> list | None:
    """The first ``num_trials`` COMPLETE trials by number, once settled: every trial numbered
    below the last of them has finished (a running one might still complete and count).
    None while not settled."""
    counted = counted_so_far(trials, num_trials)
    return counted if len(counted) == num_trials else None


def counted_so_far(trials: list, num_trials: int) -> list:
    """The COMPLETE trials counted already, by number: the first ones, up to ``num_trials``,
    numbered below the lowest unfinished trial (which might still complete and count)."""
    counted = []
    for t in sorted(trials, key=lambda t: t.number):
        if len(counted) == num_trials or not t.state.is_finished():
            break
        if t.state == TrialState.COMPLETE:
            counted.append(t)
    return counted


def _diverged(trials: list) -> int:
    return sum(t.state == TrialState.FAIL and "diverged" in t.user_attrs for t in trials)


def _ask(study: optuna.Study) -> optuna.Trial:
    """``study.ask()``, which pops the lowest WAITING trial (the baseline) first."""
    with warnings.catch_warnings():  # our loop is Study.optimize's, with heartbeats of its own
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
        return study.ask()


def _trial_id(storage: optuna.storages.RDBStorage, study: optuna.Study, number: int) -> int:
    """The storage's id of trial ``number`` (Optuna's trial objects keep theirs private)."""
    study_id = storage.get_study_id_from_name(study.study_name)
    return storage.get_trial_id_from_study_id_trial_number(study_id, number)


def _reopen_trial(study: optuna.Study, trial_id: int) -> optuna.Trial:
    """The RUNNING trial ``trial_id`` of ``study`` as an :class:`optuna.Trial`, to run it
    again under its own number and with its own parameters.

    The one Optuna internal this module uses, as nothing public does it: ``Trial(study,
    trial_id)`` is how ``Study.ask`` and ``Study.optimize`` wrap a trial, but the constructor
    is not public API. ``Study.ask`` only creates trials or pops WAITING ones, and putting an
    orphan back as WAITING would keep its old heartbeat, so that another worker's
    ``fail_stale_trials`` could fail it between the pop and its first new beat.
    ``test_reopen_trial_is_optuna_trial_of_that_id`` (tests) fails if Optuna changes it."""
    return optuna.trial.Trial(study, trial_id)


class _Heartbeat:
    """A thread writing trial ``trial_id``'s heartbeat every heartbeat interval of
    ``storage``, from :meth:`start` until :meth:`stop` or the trial has finished: Optuna's
    (``record_heartbeat``, read by ``fail_stale_trials``) and the user attribute
    :data:`HEARTBEAT_ATTR`, which :func:`_orphans` watches (Optuna has no public reader of
    its own heartbeats). A daemon thread, so it never keeps a dying process alive."""

    def __init__(self, storage: optuna.storages.RDBStorage, trial_id: int):
        self.storage, self.trial_id = storage, trial_id
        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=self._beat, name=f"heartbeat of trial id {trial_id}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.ident is not None:
            self._thread.join()

    def __enter__(self) -> _Heartbeat:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _beat(self) -> None:
        interval = self.storage.get_heartbeat_interval()
        while True:
            try:
                self.storage.record_heartbeat(self.trial_id)
                self.storage.set_trial_user_attr(self.trial_id, HEARTBEAT_ATTR, time.time())
            except optuna.exceptions.UpdateFinishedTrialError:
                return  # told, or failed as stale by another worker
            if self._stopped.wait(interval):
                return


def _evaluate(search: _Search, trial: optuna.Trial) -> tuple[float | None, TrialState]:
    """The trial's value and state to tell: COMPLETE, or FAIL for a diverged probe."""
    try:
        return search.objective(trial), TrialState.COMPLETE
    except ProbeDivergedError as exc:
        log.warning("%s: trial %d failed: %s", search.study_name, trial.number, exc)
        return None, TrialState.FAIL


def _run_trial(
    search: _Search,
    study: optuna.Study,
    storage: optuna.storages.RDBStorage,
    trial: optuna.Trial,
    callback=None,
) -> FrozenTrial:
    """Run ``trial`` to its end, with a heartbeat while it runs; a diverged probe is a FAIL.

    Any other exception, Ctrl-C included, leaves the trial RUNNING, to be run again under its
    own number by the rerun (Optuna's own loop would mark it FAIL, and the next trial would
    take another number). A trial that another worker failed meanwhile, taking it for dead
    (its heartbeat lagged past the grace period), stays FAIL: its result is dropped and, as
    for a dead worker, the next number takes its place in the budget."""
    trial_id = _trial_id(storage, study, trial.number)
    with _Heartbeat(storage, trial_id):
        try:
            value, state = _evaluate(search, trial)
            finished = study.tell(trial, value, state, skip_if_finished=True)
        except optuna.exceptions.UpdateFinishedTrialError:  # an attribute written too late
            finished = storage.get_trial(trial_id)
    if finished.state == TrialState.FAIL and "diverged" not in finished.user_attrs:
        log.warning(
            "%s: trial %d was failed by another worker while it ran (its heartbeat stood "
            "still for %.0f s); its result is dropped and the next trial takes its place",
            search.study_name,
            trial.number,
            search.grace_s,
        )
    if callback is not None:
        callback(study, finished)
    return finished


def _work(
    search: _Search, study: optuna.Study, storage: optuna.storages.RDBStorage, callback=None
) -> None:
    """One worker: run trials until the budget is settled (see :func:`counted_trials`) or more
    than ``num_trials`` trials diverged.

    A new trial starts only while the COMPLETE and running trials together are fewer than
    ``num_trials`` (a queued one always): otherwise the worker waits for them, and starts
    another only if one of them fails. So workers start at most W - 1 trials beyond the
    budget (W workers deciding at the same moment), however long a lower trial runs."""
    while True:
        trials = study.get_trials(deepcopy=False)
        if counted_trials(trials, search.num_trials) is not None:
            return
        if _diverged(trials) > search.num_trials:
            return
        _fail_stale_trials(study)  # as Optuna's loop does before each trial
        queued = any(t.state == TrialState.WAITING for t in trials)
        live = (TrialState.COMPLETE, TrialState.RUNNING)
        if not queued and sum(t.state in live for t in trials) >= search.num_trials:
            time.sleep(WAIT_POLL_S)
            continue
        _run_trial(search, study, storage, _ask(study), callback)


def _die_with_parent(parent: int) -> None:
    """Linux: this process gets SIGKILL when its parent (the tuning step) dies, so no worker
    outlives a killed step and runs trials of a study that a rerun has taken over."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _worker_main(payload: bytes, parent: int) -> None:
    """Entry point of a spawned worker: unpickle the search, work until the budget is met."""
    _die_with_parent(parent)
    import cloudpickle

    search: _Search = cloudpickle.loads(payload)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # a process of our own
    storage = open_storage(search.storage, search.heartbeat_s, search.grace_s)
    try:
        study = optuna.load_study(
            study_name=search.study_name, storage=storage, sampler=search.sampler()
        )
        _work(search, study, storage)
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group: the step says so
        sys.exit(130)
    finally:
        close_storage(storage)


def _start_workers(search: _Search, count: int) -> list:
    """``count`` spawned worker processes (a fresh interpreter each: no forked torch state).
    The search is pickled with cloudpickle: a task's ``score_fn`` is a closure."""
    import cloudpickle

    if count <= 0:
        return []
    payload = cloudpickle.dumps(search)
    context = multiprocessing.get_context("spawn")
    procs = [
        context.Process(
            target=_worker_main,
            args=(payload, os.getpid()),
            name=f"tune worker {i + 1}",
            daemon=True,
        )
        for i in range(count)
    ]
    for proc in procs:
        proc.start()
    return procs


def _stop_workers(procs: list, grace_s: float) -> tuple[list[int | None], int]:
    """Give the workers ``grace_s`` seconds to end on their own, then stop the others
    (SIGTERM, then SIGKILL). Called once the budget is settled (or the call failed): a worker
    still at work then runs a trial beyond the budget, which is never counted, so waiting for
    it would only waste time. Returns the exit codes of the workers that ended on their own,
    and how many were stopped."""
    deadline = time.monotonic() + grace_s
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
    stopped = [proc for proc in procs if proc.is_alive()]
    for proc in stopped:
        proc.terminate()
    for proc in stopped:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join(10)
    return [proc.exitcode for proc in procs if proc not in stopped], len(stopped)


class _Reporter:
    """The study's callback in :func:`tune_probe`'s process: logs each trial that finished in
    this call (whichever worker ran it) and passes each counted trial to ``on_trial`` once,
    in number order, as soon as it is counted (:func:`counted_so_far`), also the trials
    counted by an earlier, interrupted call: never a trial beyond the budget."""

    def __init__(self, search: _Search, on_trial, finished_before: set[int]):
        self.search, self.on_trial = search, on_trial
        self.logged, self.passed = set(finished_before), set()

    def __call__(self, study: optuna.Study, _trial=None) -> None:
        trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
        num_trials = self.search.num_trials
        done = sum(t.state == TrialState.COMPLETE for t in trials)
        best = _best(trials, num_trials)
        for trial in trials:
            if not trial.state.is_finished() or trial.number in self.logged:
                continue
            self.logged.add(trial.number)
            info = _trial_dict(trial)
            log.info(
                "%s: trial %d %s value=%s (%d/%d complete, best %s) %s",
                self.search.study_name,
                trial.number,
                info["state"],
                _fmt(info["value"]),
                done,
                num_trials,
                _fmt(best.value if best else None),
                ", ".join(f"{k}={v:.3g}" for k, v in info["params"].items()),
            )
        for trial in counted_so_far(trials, num_trials):
            if trial.number not in self.passed:
                self.passed.add(trial.number)
                if self.on_trial is not None:
                    self.on_trial(_trial_dict(trial))


def tune_probe(
    study_name: str,
    storage: str,
    spec: ProbeSpec,
    train: WindowSet,
    valid: WindowSet,
    *,
    num_trials: int,
    sampler_seed: int,
    probe_seed: int,
    max_epochs: int,
    batch_size: int,
    patience: int,
    score_fn: Callable[[np.ndarray, np.ndarray], float],
    windows_per_clip: int = 1,
    standardize: bool = True,
    baseline_params: ProbeParams | None = None,
    on_trial: Callable[[dict], None] | None = None,
    device=None,
    workers: int = 1,
    lag: int = 0,
    heartbeat_s: float = HEARTBEAT_S,
    grace_s: float = GRACE_S,
) -> TuneResult:
    """Run (or resume) an Optuna study until it holds ``num_trials`` counted COMPLETE trials.

    Each trial trains a probe with :func:`benchmark.evaluation.probe.train_probe` on ``train`` with early
    stopping on ``valid``, and reports its best validation score (maximised).

    Args:
        study_name: unique per (method, task, ...), e.g. ``"<profile>/<method>/<task>"``.
        storage: SQLAlchemy URL of the Optuna storage, e.g. ``sqlite:///runs/optuna.db``.
        spec: the task's probe.
        train, valid: the splits; there is deliberately no test argument.
        num_trials: COMPLETE trials counted (the equal budget of every method; see the module
            docstring for how parallel workers keep it exact).
        sampler_seed: TPE seed (the same for every method).
        probe_seed: the seed of every trial's probe, so trials differ only in parameters.
        max_epochs, batch_size, patience, windows_per_clip, standardize: passed to
            ``train_probe``.
        score_fn: the task's primary metric, ``score_fn(valid.targets, clip_scores) -> float``.
        baseline_params: if given, enqueued as trial 0 of a new study (one without trials),
            e.g. the paper's lr, so the tuned probe is never worse on validation than the
            default one; it counts towards ``num_trials`` like any trial.
        on_trial: called in this process with the dict (see :class:`TuneResult`) of each
            counted trial, in number order, once it is counted, whichever worker ran it:
            also those counted by an earlier, interrupted call (a caller that logs them, e.g.
            to MLflow, skips what it logged before), never a trial beyond the budget. So
            what it sees is the same for any number of workers and any interruptions.
        device: passed to ``train_probe``.
        workers: processes sharing the study: this one and ``workers - 1`` spawned ones (each
            gets a pickled copy of ``train`` and ``valid``). They need a storage that all of
            them reach: not an in-memory database (the pipeline's config also refuses SQLite
            files, whose single writer lock the workers would wait on; the tests use small
            ones). Any number from 1 to ``lag + 1`` gives the same trials (see the module
            docstring for a worker that dies meanwhile).
        lag: see :class:`LaggedTPESampler`; part of what a result depends on; 0 is
            sequential TPE.
        heartbeat_s, grace_s: trial heartbeats (see the module docstring).

    Returns:
        A :class:`TuneResult` whose best trial is the best of the counted trials.

    Raises:
        ValueError: if ``num_trials < 1``, ``workers < 1``, ``lag < 0``, ``lag < workers -
            1``, or ``workers > 1`` with an in-memory storage.
        RuntimeError: if more than ``num_trials`` trials diverged, or every worker ended
            before the budget was met.

    One call per study at a time (the plan's step lock sees to it). A trial left RUNNING by an
    earlier call is run again by this process under its own number with its own parameters,
    while the workers go on with the next trials (see :func:`_orphans` for which). Within the
    call, a worker killed mid-trial leaves its trial to the heartbeat: the other workers fail
    it after ``grace_s``.
    """
    if num_trials < 1:
        raise ValueError(f"num_trials must be >= 1, got {num_trials}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if lag < 0:
        raise ValueError(f"lag must be >= 0, got {lag}")
    if lag < workers - 1:
        raise ValueError(f"{workers} workers need lag >= {workers - 1}, got {lag}")
    if workers > 1 and storage in ("sqlite://", "sqlite:///:memory:"):
        raise ValueError(f"{workers} workers cannot share the in-memory storage {storage}")
    search = _Search(
        study_name=study_name,
        storage=storage,
        heartbeat_s=heartbeat_s,
        grace_s=grace_s,
        spec=spec,
        train=train,
        valid=valid,
        num_trials=num_trials,
        sampler_seed=sampler_seed,
        lag=lag,
        n_startup_trials=TPE_STARTUP_TRIALS,
        probe_seed=probe_seed,
        max_epochs=max_epochs,
        batch_size=batch_size,
        patience=patience,
        score_fn=score_fn,
        windows_per_clip=windows_per_clip,
        standardize=standardize,
        device=device,
    )
    # Optuna logs one INFO line per trial and per replayed study (trial_params); our own
    # progress line replaces them. Restored after the call.
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    opened = open_storage(storage, heartbeat_s, grace_s)
    try:
        return _tune(search, opened, baseline_params, on_trial, workers)
    finally:
        close_storage(opened)
        optuna.logging.set_verbosity(verbosity)


def _tune(
    search: _Search,
    storage: optuna.storages.RDBStorage,
    baseline_params: ProbeParams | None,
    on_trial: Callable[[dict], None] | None,
    workers: int,
) -> TuneResult:
    """:func:`tune_probe` on an open storage."""
    study_name, num_trials = search.study_name, search.num_trials
    study = optuna.create_study(
        study_name=study_name,
        storage=storage,
        sampler=search.sampler(),
        direction="maximize",
        load_if_exists=True,
    )
    existing = study.get_trials(deepcopy=False)
    if baseline_params is not None and not existing:
        study.enqueue_trial(_baseline_point(baseline_params, search.spec))
    # A settled budget (a call killed after it, before returning) needs no trial: a RUNNING
    # one lies beyond it, left to a later call with a larger budget.
    settled = counted_trials(existing, num_trials) is not None
    # Claimed before any worker starts: from here on their heartbeats are this process's.
    orphans = [] if settled else _orphans(study, storage, search.grace_s)
    beats = [_Heartbeat(storage, _trial_id(storage, study, t.number)) for t in orphans]
    report = _Reporter(search, on_trial, {t.number for t in existing if t.state.is_finished()})
    started = time.perf_counter()
    procs: list = []
    try:
        for beat in beats:
            beat.start()
        procs = [] if settled else _start_workers(search, workers - 1)
        # The orphans first, in number order (the workers meanwhile draw the next numbers),
        # unless the budget is settled before them.
        for trial, beat in zip(orphans, beats, strict=True):
            if counted_trials(study.get_trials(deepcopy=False), num_trials) is not None:
                break
            beat.stop()  # _run_trial beats from here on
            _run_trial(search, study, storage, trial, callback=report)
        _work(search, study, storage, callback=report)
    finally:
        for beat in beats:
            beat.stop()
        codes, stopped = _stop_workers(procs, STOP_S)
    report(study)
    trials = study.get_trials(deepcopy=False)
    diverged = _diverged(trials)
    if diverged > num_trials:
        raise RuntimeError(f"study {study_name}: {diverged} trials diverged")
    counted = counted_trials(trials, num_trials)
    if counted is None:
        raise RuntimeError(
            f"study {study_name}: the workers ended before {num_trials} trials completed "
            f"(worker exit codes {codes})"
        )
    if any(code != 0 for code in codes):
        log.warning("%s: a tuning worker ended with exit code(s) %s", study_name, codes)
    if stopped:
        log.info("%s: stopped %d worker(s) at trials beyond the budget", study_name, stopped)
    last = counted[-1].number
    log.info(
        "%s: %d trials complete in %.0f s (%d worker(s))",
        study_name,
        num_trials,
        time.perf_counter() - started,
        workers,
    )
    best = _best(counted, num_trials)
    return TuneResult(
        best_params=ProbeParams(**best.params),
        best_value=float(best.value),
        trials=[_trial_dict(t) for t in sorted(trials, key=lambda t: t.number) if t.number <= last],
        beyond_budget=sum(t.number > last and t.state != TrialState.WAITING for t in trials),
    )


def _orphans(
    study: optuna.Study, storage: optuna.storages.RDBStorage, grace_s: float
) -> list[optuna.Trial]:
    """The RUNNING trials that no live process runs, in number order, claimed by this process
    to be run again under their own numbers: their owner died, or was this very process
    (Ctrl-C). A trial of a live process on this host is left to it. A trial whose process
    this host cannot check (another host, or none recorded yet) is left to it when its
    heartbeat (:data:`HEARTBEAT_ATTR`) changes within ``grace_s`` seconds of this process's
    clock (so clocks of different machines never need to agree), and claimed otherwise: one
    call per study at a time, so it is a dead call's, e.g. a Slurm job requeued onto another
    node (waiting here only then, at most ``grace_s``).

    Their parameters are stored already, or are drawn again by the sampler exactly as before
    (a pure function of the trial number and the history), so the study continues as if it
    had not been interrupted.
    """
    here = process_identity()
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    unknown = []
    for frozen in running:
        owner = frozen.user_attrs.get(OWNER_ATTR)
        if owner != here and (owner is None or owner_is_alive(owner) is None):
            unknown.append(frozen)
    beating = _beating(study, storage, unknown, grace_s)
    orphans = []
    for frozen in running:
        owner = frozen.user_attrs.get(OWNER_ATTR)
        if frozen.number in beating or (
            owner is not None and owner != here and owner_is_alive(owner) is True
        ):
            continue
        log.info(
            "%s: trial %d was left running by %s; running it again",
            study.study_name,
            frozen.number,
            owner or "an unknown process",
        )
        trial = _reopen_trial(study, _trial_id(storage, study, frozen.number))
        trial.set_user_attr(OWNER_ATTR, here)
        trial.set_user_attr("pid", os.getpid())
        orphans.append(trial)
    return orphans


def _beating(
    study: optuna.Study,
    storage: optuna.storages.RDBStorage,
    trials: list[FrozenTrial],
    grace_s: float,
) -> set[int]:
    """The numbers of those RUNNING ``trials`` whose heartbeat attribute changes (or which
    finish) within ``grace_s`` seconds: a live process runs them. A trial without one never
    had a heartbeat (it was created and left before its first) and is not watched."""
    watched = {
        t.number: (_trial_id(storage, study, t.number), t.user_attrs[HEARTBEAT_ATTR])
        for t in trials
        if HEARTBEAT_ATTR in t.user_attrs
    }
    if watched:
        log.info(
            "%s: trials %s were left running by processes that this host cannot check; "
            "watching their heartbeats for up to %.0f s",
            study.study_name,
            sorted(watched),
            grace_s,
        )
    beating: set[int] = set()
    deadline = time.monotonic() + grace_s
    while watched and time.monotonic() < deadline:
        time.sleep(WAIT_POLL_S)
        for number, (trial_id, beat) in list(watched.items()):
            now = storage.get_trial(trial_id)
            if now.state != TrialState.RUNNING or now.user_attrs.get(HEARTBEAT_ATTR) != beat:
                beating.add(number)
                del watched[number]
    return beating


def _best(trials: list[FrozenTrial], num_trials: int) -> FrozenTrial | None:
    """The best of the first ``num_trials`` COMPLETE ``trials`` by number so far (the budget;
    a parallel study may hold more), the lower number on a tie; None before any completes."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    budget = sorted(complete, key=lambda t: t.number)[:num_trials]
    return max(budget, key=lambda t: (t.value, -t.number)) if budget else None


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _baseline_point(params: ProbeParams, spec: ProbeSpec) -> dict:
    """``params`` as a point of the search space, to enqueue as a trial."""
    # A weight decay of 0 (the paper's) lies outside the log-uniform range: use its lower end,
    # which is the same thing in practice (see SEARCH_SPACE).
    point = {
        "lr": params.lr,
        "weight_decay": max(params.weight_decay, SEARCH_SPACE["weight_decay"]["low"]),
    }
    if spec.kind == "mlp":
        point["dropout"] = params.dropout
    return point
