"""Hyper-parameter search for probes with Optuna: the only module of the project importing optuna.

Every (method, task) gets the same budget: the same search space, the same number of COMPLETE
trials and the same TPE sampler seed, so no method is favoured by a luckier or longer search.
A trial trains a probe on the training split and returns its best validation score; the test
split is never an input here, so tuning cannot peek at it.

Studies live in an Optuna RDB storage (any SQLAlchemy URL, by default
``sqlite:///runs/optuna.db``; PostgreSQL for many processes) and are resumable: rerunning
:func:`tune_probe` with the same study name after a kill runs only the missing trials.

Several worker processes may share one study (``workers``), and give the same trials as one:

- *Parameters* of trial n come from a TPE sampler seeded with ``(sampler_seed, n)`` and fitted
  on the COMPLETE trials numbered below ``n - lag`` only, once all of those have finished
  (:class:`LaggedTPESampler`). They depend neither on how many workers there are nor on which
  finished first. With W workers, ``lag >= W - 1`` keeps waits rare; more workers than that
  wait for stragglers. (Plain ``TPESampler(seed)`` in every worker would draw the same
  start-up points in each, and later points that depend on timing: docs/SCALEOUT_PHASE1.md.)
- *The budget* is the first ``num_trials`` COMPLETE trials by number, counted once every
  trial numbered below the last of them has finished. Parallel workers may start up to W - 1
  trials more; those are wasted time, never counted, and the best trial is the best of the
  counted ones, so the budget stays exactly equal for every method.
- *Heartbeats*: every running trial's worker writes a heartbeat to the storage; a trial whose
  heartbeat stood still for ``grace_s`` seconds (its worker was killed) is marked FAIL by the
  other workers, never left RUNNING.

The numbers are identical for any number of workers as long as no worker dies: a killed
worker's trial fails and the next number takes its place.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from benchmark.evaluation.probe import (
    ProbeDivergedError,
    ProbeParams,
    ProbeSpec,
    WindowSet,
    train_probe,
)

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
LAG = 3  # default lag of :class:`LaggedTPESampler`: up to 4 workers rarely wait (ours)
HEARTBEAT_S = 5.0  # a running trial's worker writes a heartbeat this often, s (ours)
GRACE_S = 60.0  # a trial whose heartbeat stood still this long is failed, s (ours)


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
        beyond_budget: how many trials parallel workers finished beyond the budget (not
            counted, not in ``trials``).
    """

    best_params: ProbeParams
    best_value: float
    trials: list[dict] = field(default_factory=list)
    beyond_budget: int = 0


def suggest_params(trial: optuna.Trial, spec: ProbeSpec) -> ProbeParams:
    """Draw one point of :data:`SEARCH_SPACE` (dropout only for mlp probes)."""
    values = {
        name: trial.suggest_float(name, **bounds)
        for name, bounds in SEARCH_SPACE.items()
        if name != "dropout" or spec.kind == "mlp"
    }
    return ProbeParams(**values)


def search_space(spec: ProbeSpec) -> dict[str, FloatDistribution]:
    """:data:`SEARCH_SPACE` as Optuna distributions, for ``spec``'s probe (the same names and
    bounds that :func:`suggest_params` draws)."""
    return {
        name: FloatDistribution(b["low"], b["high"], log=b["log"])
        for name, b in SEARCH_SPACE.items()
        if name != "dropout" or spec.kind == "mlp"
    }


class LaggedTPESampler(optuna.samplers.BaseSampler):
    """TPE that gives trial n the same parameters whatever the number or speed of workers.

    Trial n is sampled by a ``TPESampler`` seeded with ``(seed, n)``, fitted (in an in-memory
    replay study) on the COMPLETE trials numbered below ``n - lag``, once all trials numbered
    below ``n - lag`` have finished; while it waits it keeps its own trial's heartbeat fresh
    and fails stale trials of dead workers. The space is fixed (``space``); a parameter
    outside it is an error.
    """

    def __init__(self, seed: int, lag: int, space: dict[str, FloatDistribution]):
        if lag < 0:
            raise ValueError(f"lag must be >= 0, got {lag}")
        self.seed, self.lag, self.space = seed, lag, dict(space)

    def infer_relative_search_space(self, study, trial):
        return dict(self.space)

    def sample_relative(self, study, trial, search_space):
        if not search_space:
            return {}
        _heartbeat(study, trial)  # from the start: a worker may die while it waits here
        horizon = trial.number - self.lag
        while True:
            past = [t for t in study.get_trials(deepcopy=False) if t.number < horizon]
            if all(t.state.is_finished() for t in past):
                break
            _heartbeat(study, trial)
            _fail_stale_trials(study)
            time.sleep(0.2)
        trial_seed = int(np.random.SeedSequence([self.seed, trial.number]).generate_state(1)[0])
        replay = optuna.create_study(
            direction=study.direction, sampler=optuna.samplers.TPESampler(seed=trial_seed)
        )
        replay.add_trials([t for t in past if t.state == TrialState.COMPLETE])
        return dict(replay.ask(fixed_distributions=self.space).params)

    def sample_independent(self, study, trial, param_name, param_distribution):
        raise ValueError(f"{param_name} is outside the fixed search space {sorted(self.space)}")


def _heartbeat(study: optuna.Study, trial) -> None:
    """Record a heartbeat of ``trial`` (Optuna starts its own only once sampling is done)."""
    storage = study._storage
    if optuna.storages._heartbeat.is_heartbeat_enabled(storage):
        storage.record_heartbeat(trial._trial_id)


def _fail_stale_trials(study: optuna.Study) -> None:
    with warnings.catch_warnings():  # "experimental" in Optuna 4 and 5
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def open_storage(
    storage: str, heartbeat_s: float = HEARTBEAT_S, grace_s: float = GRACE_S
) -> optuna.storages.RDBStorage:
    """The RDB storage at SQLAlchemy URL ``storage``, with trial heartbeats."""
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
            optuna.storages.RDBStorage(storage)
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
    probe_seed: int
    max_epochs: int
    batch_size: int
    patience: int
    score_fn: Callable[[np.ndarray, np.ndarray], float]
    windows_per_clip: int
    standardize: bool
    device: object

    def load_study(self) -> optuna.Study:
        return optuna.load_study(
            study_name=self.study_name,
            storage=open_storage(self.storage, self.heartbeat_s, self.grace_s),
            sampler=LaggedTPESampler(self.sampler_seed, self.lag, search_space(self.spec)),
        )

    def objective(self, trial: optuna.Trial) -> float:
        params = suggest_params(trial, self.spec)
        trial.set_user_attr("pid", os.getpid())
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
    counted = []
    for t in sorted(trials, key=lambda t: t.number):
        if not t.state.is_finished():
            return None
        if t.state == TrialState.COMPLETE:
            counted.append(t)
            if len(counted) == num_trials:
                return counted
    return None


def _diverged(trials: list) -> int:
    return sum(t.state == TrialState.FAIL and "diverged" in t.user_attrs for t in trials)


def _work(search: _Search, study: optuna.Study, callback=None) -> None:
    """One worker: run trials until the budget is settled (see :func:`counted_trials`) or more
    than ``num_trials`` trials diverged."""
    callbacks = [callback] if callback is not None else []
    while True:
        trials = study.get_trials(deepcopy=False)
        if counted_trials(trials, search.num_trials) is not None:
            return
        if _diverged(trials) > search.num_trials:
            return
        study.optimize(
            search.objective, n_trials=1, catch=(ProbeDivergedError,), callbacks=callbacks
        )


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
    _work(search, search.load_study())


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


def _stop_workers(procs: list, timeout: float) -> list[int | None]:
    """Wait up to ``timeout`` s for the workers (each may finish a trial beyond the budget),
    then end the rest; their exit codes."""
    deadline = time.monotonic() + timeout
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
    for proc in procs:
        if proc.is_alive():
            proc.kill()
            proc.join(10)
    return [proc.exitcode for proc in procs]


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
    lag: int = LAG,
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
        baseline_params: if given and the study holds no COMPLETE trial yet, enqueued as the
            next trial (trial 0 of a new study), e.g. the paper's lr, so the tuned probe is
            never worse on validation than the default one; it counts towards ``num_trials``
            like any trial.
        on_trial: called in this process with each trial's dict (see :class:`TuneResult`) that
            finished in this run, whichever worker ran it, in order of trial number as far as
            they finish in order (e.g. to log it to MLflow).
        device: passed to ``train_probe``.
        workers: processes sharing the study: this one and ``workers - 1`` spawned ones (each
            gets a pickled copy of ``train`` and ``valid``). Any number gives the same trials.
        lag: see :class:`LaggedTPESampler`; part of what a result depends on.
        heartbeat_s, grace_s: trial heartbeats (see the module docstring).

    Returns:
        A :class:`TuneResult`.

    Raises:
        ValueError: if ``num_trials < 1``, ``workers < 1`` or ``lag < 0``.
        RuntimeError: if more than ``num_trials`` trials diverged, or every worker ended
            before the budget was met.

    One call per study at a time (the plan's step lock sees to it): trials left RUNNING by an
    earlier, killed call are marked FAIL at the start. Within the call, a worker killed mid-trial
    leaves its trial to the heartbeat: the other workers fail it after ``grace_s``.
    """
    if num_trials < 1:
        raise ValueError(f"num_trials must be >= 1, got {num_trials}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if lag < 0:
        raise ValueError(f"lag must be >= 0, got {lag}")
    # Optuna logs one INFO line per trial; our own progress line below replaces it.
    optuna.logging.set_verbosity(optuna.logging.WARNING)

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
        probe_seed=probe_seed,
        max_epochs=max_epochs,
        batch_size=batch_size,
        patience=patience,
        score_fn=score_fn,
        windows_per_clip=windows_per_clip,
        standardize=standardize,
        device=device,
    )
    optuna.create_study(
        study_name=study_name,
        storage=open_storage(storage, heartbeat_s, grace_s),
        direction="maximize",
        load_if_exists=True,
    )
    study = search.load_study()
    existing = study.get_trials(deepcopy=False)
    for trial in existing:
        if trial.state == TrialState.RUNNING:
            study.tell(trial.number, state=TrialState.FAIL)
    pending = (TrialState.COMPLETE, TrialState.WAITING)
    if baseline_params is not None and not any(t.state in pending for t in existing):
        study.enqueue_trial(_baseline_point(baseline_params, spec))

    finished_before = {t.number for t in existing if t.state.is_finished()}
    reported: set[int] = set()

    def report_new(study: optuna.Study, _trial=None) -> None:
        """Log (and pass to ``on_trial``) every trial that finished since the last call."""
        trials = study.get_trials(deepcopy=False)
        done = sum(t.state == TrialState.COMPLETE for t in trials)
        for trial in sorted(trials, key=lambda t: t.number):
            if (
                not trial.state.is_finished()
                or trial.number in finished_before
                or trial.number in reported
            ):
                continue
            reported.add(trial.number)
            info = _trial_dict(trial)
            log.info(
                "%s: trial %d %s value=%s (%d/%d complete) %s",
                study_name,
                trial.number,
                info["state"],
                _fmt(info["value"]),
                done,
                num_trials,
                ", ".join(f"{k}={v:.3g}" for k, v in info["params"].items()),
            )
            if on_trial is not None:
                on_trial(info)

    started = time.perf_counter()
    procs = _start_workers(search, workers - 1)
    try:
        _work(search, study, callback=report_new)
        codes = _stop_workers(procs, timeout=3600)
    finally:
        _stop_workers(procs, timeout=0)
    report_new(study)
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
    last = counted[-1].number
    log.info(
        "%s: %d trials complete in %.0f s (%d worker(s))",
        study_name,
        num_trials,
        time.perf_counter() - started,
        workers,
    )
    # The best of the counted trials; a tie goes to the lowest number.
    best = max(counted, key=lambda t: (t.value, -t.number))
    return TuneResult(
        best_params=ProbeParams(**best.params),
        best_value=float(best.value),
        trials=[_trial_dict(t) for t in sorted(trials, key=lambda t: t.number) if t.number <= last],
        beyond_budget=sum(t.number > last for t in trials),
    )


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


def _num_complete(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
