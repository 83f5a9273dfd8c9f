"""Hyper-parameter search for probes with Optuna: the only module of the project importing optuna.

Every (method, task) gets the same budget: the same search space, the first ``num_trials``
COMPLETE trials by number and the same sampler seed, so no method is favoured by a luckier or
longer search. A trial trains a probe on the training split and returns its best validation
score; the test split is never an input here, so tuning cannot peek at it.

Deterministic sampling (:func:`trial_params`): trial ``n``'s parameters are a pure function of
the sampler seed, ``n`` and the COMPLETE trials numbered below ``n - lag``: a TPE sampler seeded
with ``(seed, n)`` fitted on exactly those trials. So trial ``n`` is the same whether or not
the study was interrupted before it, and whichever worker draws it; with one worker ``lag`` is
0, which is sequential TPE with a per-trial seed. (A sampler seeded once per process would
draw other trials after a resumption, and the same ones in every parallel worker.)

Studies live in an Optuna RDB storage (any SQLAlchemy URL, by default
``sqlite:///runs/optuna.db``) and are resumable: rerunning :func:`tune_probe` with the same
study name after a kill finishes the trial the killed process was running (same number, same
parameters) and runs only the missing ones.
"""

from __future__ import annotations

import logging
import time
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


@dataclass
class TuneResult:
    """Outcome of :func:`tune_probe`.

    Attributes:
        best_params: the parameters of the best COMPLETE trial.
        best_value: its best validation score.
        trials: every trial the study holds (also those of earlier, interrupted runs), by number,
            as ``{"number", "params", "value", "state", "best_epoch", "epochs_run", "duration_s"}``.
    """

    best_params: ProbeParams
    best_value: float
    trials: list[dict] = field(default_factory=list)


# Trials before TPE models the history (optuna's default); until then draws are random.
TPE_STARTUP_TRIALS = 10
OWNER_ATTR = "bench.owner"  # user attribute: the process running a trial (benchmark.io)
WAIT_POLL_S = 0.5  # how often a worker looks whether the trials it samples from have finished


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
    """TPE that gives trial ``n`` the same parameters whatever happened before it.

    Trial ``n`` gets :func:`trial_params` of the COMPLETE trials numbered below ``n - lag``,
    once every trial numbered below ``n - lag`` has finished (the worker waits for them).
    One worker: ``lag=0``. ``W`` workers: ``lag >= W - 1`` keeps the waits rare, at the price
    of a history ``lag`` trials older than sequential TPE's. The search space is fixed.
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
            time.sleep(WAIT_POLL_S)
        history = [t for t in past if t.state == TrialState.COMPLETE]
        return trial_params(self.seed, trial.number, history, self.space, self.n_startup_trials)

    def sample_independent(self, study, trial, param_name, param_distribution):
        raise ValueError(f"{param_name} is outside the fixed search space {sorted(self.space)}")


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
) -> TuneResult:
    """Run (or resume) an Optuna study until it holds ``num_trials`` COMPLETE trials.

    Each trial trains a probe with :func:`benchmark.evaluation.probe.train_probe` on ``train`` with early
    stopping on ``valid``, and reports its best validation score (maximised).

    Args:
        study_name: unique per (method, task, ...), e.g. ``"<profile>/<method>/<task>"``.
        storage: SQLAlchemy URL of the Optuna storage, e.g. ``sqlite:///runs/optuna.db``.
        spec: the task's probe.
        train, valid: the splits; there is deliberately no test argument.
        num_trials: COMPLETE trials the study must hold (the equal budget of every method).
        sampler_seed: TPE seed (the same for every method).
        probe_seed: the seed of every trial's probe, so trials differ only in parameters.
        max_epochs, batch_size, patience, windows_per_clip, standardize: passed to
            ``train_probe``.
        score_fn: the task's primary metric, ``score_fn(valid.targets, clip_scores) -> float``.
        baseline_params: if given, enqueued as trial 0 of a new study (one without trials),
            e.g. the paper's lr, so the tuned probe is never worse on validation than the
            default one; it counts towards ``num_trials`` like any trial.
        on_trial: called with each trial's dict (see :class:`TuneResult`) as it finishes, in
            this run only (e.g. to log it to MLflow).
        device: passed to ``train_probe``.

    Returns:
        A :class:`TuneResult` whose best trial is the best of the first ``num_trials``
        COMPLETE trials by number.

    Raises:
        ValueError: if ``num_trials < 1``.
        RuntimeError: if more than ``num_trials`` trials fail (diverge) in this run.

    Trials are sampled by :class:`LaggedTPESampler` (lag 0: one worker), so trial ``n`` is the
    same with or without an interruption before it. A trial left RUNNING by a process that
    died (its ``bench.owner`` attribute names a dead process on this host, or none) is run
    again under its own number with its own parameters, before any new trial; a trial of a
    live process (or another host) is waited for.
    """
    if num_trials < 1:
        raise ValueError(f"num_trials must be >= 1, got {num_trials}")
    # Optuna logs one INFO line per trial; our own progress line below replaces it.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _ensure_sqlite_folder(storage)

    study = optuna.create_study(
        study_name=study_name,
        storage=storage,
        direction="maximize",
        sampler=LaggedTPESampler(
            sampler_seed, search_space(spec), lag=0, n_startup_trials=TPE_STARTUP_TRIALS
        ),
        load_if_exists=True,
    )
    if baseline_params is not None and not study.get_trials(deepcopy=False):
        study.enqueue_trial(_baseline_point(baseline_params, spec))

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr(OWNER_ATTR, process_identity())
        params = suggest_params(trial, spec)
        result = train_probe(
            spec,
            params,
            train,
            valid,
            seed=probe_seed,
            score_fn=score_fn,
            batch_size=batch_size,
            max_epochs=max_epochs,
            patience=patience,
            windows_per_clip=windows_per_clip,
            standardize=standardize,
            device=device,
        )
        trial.set_user_attr("best_epoch", result.best_epoch)
        trial.set_user_attr("epochs_run", result.epochs_run)
        return result.best_valid_score

    def report(study: optuna.Study, trial: FrozenTrial) -> None:
        info = _trial_dict(trial)
        done = _num_complete(study)
        best = _best(study, num_trials)
        log.info(
            "%s: trial %d %s value=%s (%d/%d complete, best %s) %s",
            study_name,
            trial.number,
            info["state"],
            _fmt(info["value"]),
            done,
            num_trials,
            _fmt(best.value if best else None),
            ", ".join(f"{k}={v:.3g}" for k, v in info["params"].items()),
        )
        if on_trial is not None:
            on_trial(info)

    def run_trial(trial: optuna.Trial) -> bool:
        """Run ``trial`` to its end; True when it failed (diverged). Any other exception,
        Ctrl-C included, leaves it RUNNING, to be run again under its own number (Optuna's
        own loop would mark it FAIL, and the next trial would take another number)."""
        try:
            finished = study.tell(trial, objective(trial))
        except ProbeDivergedError as exc:
            log.warning("%s: trial %d failed: %s", study_name, trial.number, exc)
            finished = study.tell(trial, state=TrialState.FAIL)
        report(study, finished)
        return finished.state == TrialState.FAIL

    started = time.perf_counter()
    failures = sum(run_trial(trial) for trial in _orphans(study))
    while _num_complete(study) < num_trials:
        failures += run_trial(study.ask())
        if failures > num_trials:
            raise RuntimeError(f"study {study_name}: {failures} trials diverged in this run")
    log.info(
        "%s: %d trials complete in %.0f s", study_name, num_trials, time.perf_counter() - started
    )

    best = _best(study, num_trials)
    return TuneResult(
        best_params=ProbeParams(**best.params),
        best_value=float(best.value),
        trials=[_trial_dict(t) for t in study.get_trials(deepcopy=False)],
    )


def _orphans(study: optuna.Study) -> list[optuna.Trial]:
    """The RUNNING trials that no live process is running (their owner died, was this very
    process, or is unknown), in number order, to be run again under their own numbers.

    Their parameters are stored already, or are drawn again by the sampler exactly as before
    (a pure function of the trial number and the history), so the study continues as if it
    had not been interrupted. Trials of live processes, or of another host, are left to them.
    """
    here = process_identity()
    orphans = []
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = frozen.user_attrs.get(OWNER_ATTR)
        if owner is not None and owner != here and owner_is_alive(owner) is not False:
            continue
        log.info(
            "%s: trial %d was left running by %s; running it again",
            study.study_name,
            frozen.number,
            owner or "an unknown process",
        )
        # Trial(study, id) is how Study.optimize itself wraps a trial; FrozenTrial keeps the
        # id private.
        orphans.append(optuna.trial.Trial(study, frozen._trial_id))
    return orphans


def _best(study: optuna.Study, num_trials: int) -> FrozenTrial | None:
    """The best of the first ``num_trials`` COMPLETE trials by number (the budget; a parallel
    study may hold more), the lower number on a tie; None before any completes."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
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


def _num_complete(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
