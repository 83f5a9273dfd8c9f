"""MLflow tracking: the only module of the project that imports mlflow.

Every tracked step carries a tag ``bench.key``, the content key of its output, and
``bench.owner``, the process that last opened it (:func:`benchmark.io.process_identity`).
The rule for every tracked step (train-separator, separate, pretrain, tune, probe):

* inside its run, a step logs what it logs and writes its artefact atomically; the run is
  closed FINISHED after that, so a FINISHED run always has its artefact;
* a step is done when its run is FINISHED and its artefact exists;
* on a rerun, an unfinished run of the key (FAILED, KILLED, or RUNNING with a dead owner) is
  resumed, never duplicated: the step runs again inside it, reusing what the killed process
  finished (checkpoint, trials, model directory) and closes it; a run RUNNING in a live
  process is left alone (:class:`~benchmark.errors.StageError`);
* a FINISHED run whose artefact has gone is redone under a new run, and the old one is tagged
  ``bench.superseded_by`` (the new one ``bench.supersedes``); lookups skip superseded runs;
* a process that holds the plan's lock of a key (:meth:`Tracker.locked`) resumes a run of it
  left open on another host, and checks before each write that the lock is still its own: one
  whose lock was taken over stops (``LockLost``) and leaves the run to the new holder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from benchmark.errors import StageError
from benchmark.io import owner_is_alive, process_identity
from benchmark.pipeline.locks import LockLost, StepLock, sqlite_lock

log = logging.getLogger(__name__)

# The pre-training metrics the report draws: training and eval-mode validation loss and
# contrastive accuracy, each with its chance level, and validation with the running batch-norm
# statistics (what the evaluated encoder would have been without precise BN).
PRETRAIN_CURVES = (
    "loss", "contrastive_accuracy", "chance_loss", "chance_accuracy",
    "val_loss", "val_contrastive_accuracy", "val_chance_loss", "val_chance_accuracy",
    "val_loss_running_stats", "val_contrastive_accuracy_running_stats",
)  # fmt: skip
# What the probe stage logs into an encoder's run per corpus (``embedding.<corpus>.<stat>``).
HEALTH_STATS = ("relative_spread", "median_sd", "varying_dims", "effective_rank", "collapsed")

_SEEDED = ["method", "task", "pretrain_seed", "probe_seed"]

KEY_TAG = "bench.key"
KIND_TAG = "bench.kind"
OWNER_TAG = "bench.owner"
SUPERSEDED_TAG = "bench.superseded_by"
SUPERSEDES_TAG = "bench.supersedes"
# Test hook (tests/benchmark/pipeline/test_interrupted.py): with this variable set to a step
# kind, the process ends (os._exit) right before closing the first run of that kind, as if
# killed between "artefact written" and "run closed".
EXIT_BEFORE_CLOSE_ENV = "BENCH_TEST_EXIT_BEFORE_CLOSE"
EXIT_BEFORE_CLOSE_STATUS = 86

# MLflow's SQLite store logs schema migrations at INFO on first use; keep the console quiet.
for _name in ("alembic", "mlflow.store.db.utils", "mlflow.tracking.fluent"):
    logging.getLogger(_name).setLevel(logging.WARNING)


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}} -> {"a.b": "1"}`` (MLflow params are flat strings)."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = str(v)
    return out


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs, {gpu}"


def is_server(tracking_uri: str) -> bool:
    """Whether ``tracking_uri`` names a tracking server (clients speak HTTP to it)."""
    return tracking_uri.startswith(("http://", "https://"))


class Tracker:
    """One MLflow experiment (one per profile) in any tracking store.

    ``artifact_root``: where a new experiment keeps its artefacts with a database or file
    store (beside the database; MLflow would otherwise use ``./mlruns`` of whatever folder it
    runs in). Ignored for a tracking server: its experiments get the server's own artifact
    location (``mlflow-artifacts:/``, uploaded over HTTP), never a path of this machine that
    jobs on other nodes could not reach.
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        artifact_root: Path | None = None,
        *,
        create: bool = True,
    ):
        """Open (``create``: or create) the experiment. ``create=False`` writes nothing: a
        missing experiment reads as one without runs (``--dry-run``)."""
        if tracking_uri.startswith("sqlite:///") and create:
            Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.uri = tracking_uri
        self.experiment = experiment
        self._locks: dict[str, StepLock] = {}  # bench.key -> its lock, held (see locked)
        # Opening a SQLite store creates or migrates its schema: one process at a time.
        with sqlite_lock(tracking_uri) if create else contextlib.nullcontext():
            self.client = MlflowClient(tracking_uri=tracking_uri)
            self.experiment_id = self._experiment(experiment, artifact_root, create)

    def _experiment(self, experiment: str, artifact_root: Path | None, create: bool):
        """The id of ``experiment``, created (or restored) when needed; None when it does not
        exist and ``create`` is False."""
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None and not create:
            return None
        if exp is None:
            location = (
                (Path(artifact_root) / experiment).resolve().as_uri()
                if artifact_root and not is_server(self.uri)
                else None
            )
            try:
                exp_id = self.client.create_experiment(experiment, artifact_location=location)
            except MlflowException:
                # Another process (a parallel step) created it first: use theirs.
                exp = self.client.get_experiment_by_name(experiment)
                if exp is None:
                    raise
                exp_id = exp.experiment_id
        else:
            exp_id = exp.experiment_id
            if exp.lifecycle_stage != "active":
                self.client.restore_experiment(exp_id)
        return exp_id

    # -- lookup -----------------------------------------------------------------------
    def runs(self, filter_string: str = "", max_results: int = 50000) -> list:
        if self.experiment_id is None:
            return []
        return self.client.search_runs(
            [self.experiment_id], filter_string=filter_string, max_results=max_results
        )

    def find(self, key: str):
        """The run holding ``key`` (finished ones first, superseded ones never), or None.

        A run is superseded once another run of its key names it in ``bench.supersedes``,
        even before it carries ``bench.superseded_by`` (a process killed between creating
        the new run and tagging the old one): the rerun then resumes the new run.
        """
        runs = self.runs(f"tags.`{KEY_TAG}` = '{key}'")
        replaced = {r.data.tags[SUPERSEDES_TAG] for r in runs if SUPERSEDES_TAG in r.data.tags}
        runs = [
            r for r in runs if SUPERSEDED_TAG not in r.data.tags and r.info.run_id not in replaced
        ]
        runs.sort(key=lambda r: (r.info.status != "FINISHED", r.info.start_time))
        return runs[0] if runs else None

    def is_done(self, key: str) -> bool:
        run = self.find(key)
        return run is not None and run.info.status == "FINISHED"

    # -- writing ----------------------------------------------------------------------
    @contextlib.contextmanager
    def run(
        self,
        key: str,
        kind: str,
        name: str,
        tags: dict | None = None,
        params: dict | None = None,
        *,
        supersede: bool = False,
    ):
        """Open the run of ``key``: a new one, or the unfinished one left by a dead process
        (resumed); FINISHED on leaving the block, FAILED on an error. Write the step's
        artefact inside the block, last.

        ``supersede``: a FINISHED run of ``key`` (whose artefact has gone, or a forced rerun)
        is replaced by a new run; the old one is tagged ``bench.superseded_by``.
        Raises :class:`StageError` when a live process has the run open, ``RuntimeError`` (a
        caller's bug) when the run is FINISHED and ``supersede`` is false, and
        :class:`~benchmark.pipeline.locks.LockLost` when this process held the lock of ``key``
        (:meth:`locked`) and lost it: the run is then left as it is, to the new holder.
        """
        lock = self._locks.get(key)
        if lock is not None:
            lock.check()  # a run open elsewhere is resumed only while the lock is ours
        existing = self.find(key)
        supersedes = None
        if existing is not None and existing.info.status == "FINISHED":
            if not supersede:
                raise RuntimeError(
                    f"run {existing.info.run_id} for {kind} {name} is already finished"
                )
            supersedes, existing = existing.info.run_id, None
        if existing is not None:
            self._check_not_live(existing, kind, name)
            run_id = existing.info.run_id
            self.client.set_tag(run_id, OWNER_TAG, process_identity())
            self.client.update_run(run_id, status="RUNNING")
            log.info("resuming MLflow run %s (%s %s)", run_id, kind, name)
            supersedes = existing.data.tags.get(SUPERSEDES_TAG)
            if supersedes:  # the killed process may not have tagged the old run yet
                self.client.set_tag(supersedes, SUPERSEDED_TAG, run_id)
        else:
            all_tags = {
                KEY_TAG: key,
                KIND_TAG: kind,
                OWNER_TAG: process_identity(),
                "mlflow.runName": name,
            }
            if supersedes:
                all_tags[SUPERSEDES_TAG] = supersedes
            run_id = self.client.create_run(
                self.experiment_id, tags=all_tags, run_name=name
            ).info.run_id
            if supersedes:
                self.client.set_tag(supersedes, SUPERSEDED_TAG, run_id)
                log.info("run %s of %s %s is redone as run %s", supersedes, kind, name, run_id)
            if params:
                self.log_params(run_id, params)
        if tags:
            for k, v in tags.items():
                self.client.set_tag(run_id, k, str(v))
        handle = RunHandle(self, run_id, lock)
        try:
            yield handle
        except LockLost:
            raise  # the new holder has the run open
        except BaseException:
            self.client.set_terminated(run_id, status=RunStatus.to_string(RunStatus.FAILED))
            raise
        handle.check_lock()
        if os.environ.get(EXIT_BEFORE_CLOSE_ENV) == kind:
            os._exit(EXIT_BEFORE_CLOSE_STATUS)
        self.client.set_terminated(run_id, status="FINISHED")

    @contextlib.contextmanager
    def locked(self, key: str, lock: StepLock):
        """Within the block this process holds ``lock``, the lock named by content key ``key``
        (:meth:`benchmark.pipeline.context.Context.hold`): a run of ``key`` left RUNNING by a
        process on another host is then its dead holder's (the lock was taken over only once
        that holder was gone, e.g. a Slurm job requeued onto another node), and is resumed;
        the run checks that the lock is still ours before each write and before it closes
        (:meth:`RunHandle.check_lock`)."""
        self._locks[key] = lock
        try:
            yield
        finally:
            del self._locks[key]

    def _check_not_live(self, run, kind: str, name: str) -> None:
        """Raise StageError when ``run`` is RUNNING in a process that still runs (on another
        host: unless this process holds the lock of its key, see :meth:`locked`)."""
        owner = run.data.tags.get(OWNER_TAG)
        if run.info.status != "RUNNING" or owner is None or owner == process_identity():
            return
        alive = owner_is_alive(owner)
        if alive is None and run.data.tags.get(KEY_TAG) in self._locks:
            log.info(
                "run %s was open on another host (%s), whose step lock we hold",
                run.info.run_id,
                owner,
            )
            return
        if alive is not False:
            raise StageError(
                f"MLflow run {run.info.run_id} ({kind} {name}) is open in process {owner} "
                "(host:pid:start), which still runs or runs on another host; wait for it to "
                "finish, or stop it and rerun"
            )

    def fail_orphans(self) -> list[str]:
        """Mark FAILED the runs left RUNNING by processes that died (a rerun of their step
        resumes them); returns their ids."""
        failed = []
        for run in self.runs("attributes.status = 'RUNNING'"):
            owner = run.data.tags.get(OWNER_TAG)
            if owner is None or owner_is_alive(owner) is False:
                self.client.set_terminated(run.info.run_id, status="FAILED")
                failed.append(run.info.run_id)
        if failed:
            log.info("marked %d runs of killed processes FAILED: %s", len(failed), failed)
        return failed

    def log_once(self, run_id: str, metrics: dict[str, float]) -> None:
        """Log ``metrics`` into a (possibly finished) run unless it already has all of them."""
        present = self.client.get_run(run_id).data.metrics
        if not all(name in present for name in metrics):
            RunHandle(self, run_id).metrics(metrics)

    def log_params(self, run_id: str, params: dict) -> None:
        from mlflow.entities import Param

        flat = [Param(k, v[:6000]) for k, v in flatten(params).items()]
        for i in range(0, len(flat), 100):
            self.client.log_batch(run_id, params=flat[i : i + 100])


class RunHandle:
    """Logging helpers bound to one run; with the lock of its key (:meth:`Tracker.locked`),
    each first checks that the lock is still ours (a step writes its artefact after logging,
    so one that lost its lock stops before)."""

    def __init__(self, tracker: Tracker, run_id: str, lock: StepLock | None = None):
        self.tracker = tracker
        self.client = tracker.client
        self.run_id = run_id
        self.lock = lock

    def check_lock(self) -> None:
        """Raise :class:`~benchmark.pipeline.locks.LockLost` when the run's lock was taken over."""
        if self.lock is not None:
            self.lock.check()

    def metrics(self, values: dict[str, float], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        self.check_lock()
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step or 0) for k, v in values.items()]
        for i in range(0, len(batch), 500):
            self.client.log_batch(self.run_id, metrics=batch[i : i + 500])

    def tag(self, key: str, value) -> None:
        self.check_lock()
        self.client.set_tag(self.run_id, key, str(value))

    def artifact(self, path: Path, subdir: str | None = None) -> None:
        self.check_lock()
        self.client.log_artifact(self.run_id, str(path), subdir)

    def artifact_dict(self, obj: dict, name: str) -> None:
        self.check_lock()
        self.client.log_dict(self.run_id, obj, name)


@contextlib.contextmanager
def _no_progress_bars():
    """MLflow draws a progress bar per artifact download (96 of them in one report); its only
    switch is an environment variable, set here for the duration of the call and restored."""
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    previous = os.environ.get(name)
    os.environ[name] = "false"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


def _local_artifact(artifact_uri: str, name: str) -> Path | None:
    """The file of artifact ``name`` when the store keeps artifacts on this machine's disk
    (read in place: no copy, no progress bar), else None."""
    parsed = urlparse(artifact_uri)
    if parsed.scheme not in ("", "file"):
        return None
    path = Path(url2pathname(parsed.path)) / name
    return path if path.is_file() else None


def load_artifact_dict(client: MlflowClient, run_id: str, name: str) -> dict:
    """Read a JSON artifact written with :meth:`RunHandle.artifact_dict`."""
    local = _local_artifact(client.get_run(run_id).info.artifact_uri, name)
    if local is not None:
        return json.loads(local.read_text())
    # Through the client, which knows its tracking server: mlflow.artifacts.load_dict would
    # resolve an ``mlflow-artifacts:`` URI against the process-wide tracking URI instead.
    with tempfile.TemporaryDirectory() as tmp, _no_progress_bars():
        return json.loads(Path(client.download_artifacts(run_id, name, tmp)).read_text())


def download_artifact(client: MlflowClient, run_id: str, path: str, dst: Path) -> Path:
    """The artifact ``path`` of a run as a local file (in place for local stores, else copied
    into ``dst``)."""
    local = _local_artifact(client.get_run(run_id).info.artifact_uri, path)
    if local is not None:
        return local
    dst.mkdir(parents=True, exist_ok=True)
    with _no_progress_bars():
        return Path(client.download_artifacts(run_id, path, str(dst)))


# -- reading results back (the report stage) ----------------------------------------------


def select_results(runs: list, run_ids: set[str] | None = None) -> list:
    """The FINISHED runs a report should read.

    With ``run_ids`` (the pretrain and probe runs the last plan produced or found), exactly
    those pretrain/probe runs: results of other configurations in the same experiment never
    mix in. Without, one probe run per (method, task, seed) and one pretrain run per
    (method, seed), the newest (a forced rerun replaces the run it supersedes).
    Other kinds (separation records) are kept unless superseded (a record redone because its
    artefact had gone is read once, from its new run).
    """
    finished = [r for r in runs if r.info.status == "FINISHED"]
    tracked = ("probe", "pretrain", "probe-snapshot")
    if run_ids is not None:
        return [
            r
            for r in finished
            if (
                r.info.run_id in run_ids
                if r.data.tags.get(KIND_TAG) in tracked
                else SUPERSEDED_TAG not in r.data.tags
            )
        ]
    newest: dict = {}
    rest = []
    for r in sorted(finished, key=lambda r: r.info.start_time):
        t = r.data.tags
        kind = t.get(KIND_TAG)
        if kind in ("probe", "probe-snapshot"):
            key = (t.get("method"), t.get("task"), t.get("pretrain_seed"), t.get("probe_seed"))
            newest[(kind, *key, t.get("pretrain_step"))] = r
        elif kind == "pretrain":
            newest[(kind, t.get("method"), t.get("seed"))] = r
        elif SUPERSEDED_TAG not in t:
            rest.append(r)
    return rest + list(newest.values())


def _predictions(tracker: Tracker, run, workdir: Path) -> dict:
    """A probe run's saved test predictions (``predictions.npz``)."""
    import numpy as np

    pred = download_artifact(
        tracker.client, run.info.run_id, "predictions.npz", workdir / run.info.run_id
    )
    with np.load(pred, allow_pickle=False) as z:
        return {
            "clip_ids": [str(c) for c in z["clip_ids"]],
            "targets": z["targets"],
            "scores": z["scores"],
            "vocabulary": [str(v) for v in z["vocabulary"]],
            # cluster ids of the test clips (song, instrument, artist), when recorded
            "groups": [str(g) for g in z["groups"]] if "groups" in z.files else None,
        }


def collect(tracker: Tracker, workdir: Path, run_ids: set[str] | None = None) -> dict:
    """Everything the report needs, from the MLflow store alone (works for runs made elsewhere).

    ``run_ids`` restricts the pretrain/probe runs read (see :func:`select_results`).
    Returns dict with ``scores`` (method, task, pretrain_seed, probe_seed, metric, value),
    ``predictions`` ((method, task, pretrain_seed, probe_seed) -> clip_ids/targets/scores/
    vocabulary/groups), ``per_tag``, ``pretrain_curves``
    (method, seed, step, metric, value: the :data:`PRETRAIN_CURVES` histories),
    ``pretrain_runs`` (method, seed, trained, collapsed), ``embedding_health`` (method, seed,
    corpus and :data:`HEALTH_STATS`), ``source_activity`` (separator, corpus, source, active,
    total), ``separation_quality``, ``snapshot_scores`` (as ``scores`` with ``step``: the
    convergence study's probes of earlier encoders), ``separator_runs`` (method, seed, source,
    si_sdr: the SI-SDR of each pre-training run's separator, source "exact" with inf for true
    stems) (DataFrames or None), ``snapshot_predictions`` (as ``predictions``, keys ending in
    the step), ``task_info`` (task -> clips per split, number of labels, tags or classes left
    out of the scores), ``pretrain_data`` (what the pre-training runs read -> their methods)
    and ``num_runs``.
    """
    import pandas as pd

    runs = select_results(tracker.runs(), run_ids)
    hashes = {r.data.tags.get("results_hash") for r in runs if r.data.tags.get(KIND_TAG) == "probe"}
    if len(hashes) > 1:
        log.warning(
            "the report mixes probe runs of %d configurations (results_hash %s); run "
            "`run` to report one plan's results",
            len(hashes),
            ", ".join(sorted(h or "?" for h in hashes)),
        )
    score_rows, tag_rows, activity_rows, quality_rows = [], [], [], []
    curve_rows, pretrain_rows, health_rows = [], [], []
    snapshot_rows, separation_rows = [], []
    task_info: dict[str, dict] = {}
    pretrain_data: dict[str, list[str]] = {}  # what pre-training read -> the methods
    predictions: dict = {}
    snapshot_predictions: dict = {}
    for run in runs:
        kind = run.data.tags.get(KIND_TAG)
        tags = run.data.tags
        if kind == "probe-snapshot":
            # The convergence study: a run's encoder at an earlier step (never a leaderboard row).
            method, task, step = tags["method"], tags["task"], int(tags["pretrain_step"])
            seeds = (int(tags["pretrain_seed"]), int(tags["probe_seed"]))
            for metric in ("roc_auc", "pr_auc", "accuracy", "balanced_accuracy"):
                if metric in run.data.metrics:
                    snapshot_rows.append(
                        (method, task, *seeds, step, metric, run.data.metrics[metric])
                    )
            snapshot_predictions[(method, task, *seeds, step)] = _predictions(tracker, run, workdir)
        elif kind == "probe":
            method, task = tags["method"], tags["task"]
            seeds = (int(tags["pretrain_seed"]), int(tags["probe_seed"]))
            for metric in ("roc_auc", "pr_auc", "accuracy", "balanced_accuracy"):
                if metric in run.data.metrics:
                    score_rows.append((method, task, *seeds, metric, run.data.metrics[metric]))
            predictions[(method, task, *seeds)] = _predictions(tracker, run, workdir)
            try:
                details = load_artifact_dict(tracker.client, run.info.run_id, "details.json")
            except Exception:  # older runs without details
                details = {}
            for tag, values in (details.get("per_tag") or {}).items():
                tag_rows.append(
                    (method, task, *seeds, tag, values.get("roc_auc"), values.get("pr_auc"))
                )
            # What the data of a task looked like (the same for every run of the task).
            task_info.setdefault(
                task,
                {
                    "clips": {
                        split: int(run.data.metrics[f"num_{split}_clips"])
                        for split in ("train", "valid", "test")
                        if f"num_{split}_clips" in run.data.metrics
                    },
                    "num_labels": len(predictions[(method, task, *seeds)]["vocabulary"]),
                    "excluded_tags": details.get("excluded_tags") or [],
                    "absent_classes": details.get("absent_classes") or [],
                },
            )
        elif kind == "pretrain":
            method, seed = tags.get("method"), int(tags.get("seed", 0))
            if tags.get("pretrain_data"):
                pretrain_data.setdefault(tags["pretrain_data"], []).append(method)
            for name in PRETRAIN_CURVES:
                if name in run.data.metrics:
                    history = tracker.client.get_metric_history(run.info.run_id, name)
                    # A resumed run logs again the steps between its last checkpoint and the
                    # kill (the same values): one point per step.
                    by_step = {m.step: m.value for m in sorted(history, key=lambda m: m.timestamp)}
                    for step, value in sorted(by_step.items()):
                        curve_rows.append((method, seed, step, name, value))
            exact = run.data.metrics.get("separation.exact") == 1.0
            for name, value in run.data.metrics.items():
                if name.startswith("separation.si_sdr."):
                    separation_rows.append((method, seed, name.rsplit(".", 1)[1], value))
            if exact:
                separation_rows.append((method, seed, "exact", float("inf")))
            collapsed = tags.get("collapsed")
            pretrain_rows.append(
                (method, seed, tags.get("trained", "true") == "true",
                 None if collapsed is None else collapsed == "true")
            )  # fmt: skip
            health: dict = {}
            for name, value in run.data.metrics.items():
                if name.startswith("embedding."):
                    _, corpus, stat = name.split(".", 2)
                    health.setdefault(corpus, {})[stat] = value
            for corpus, values in sorted(health.items()):
                health_rows.append(
                    (method, seed, corpus, *(values.get(stat) for stat in HEALTH_STATS))
                )
        elif kind == "separate":
            d = load_artifact_dict(tracker.client, run.info.run_id, "activity.json")
            corpus = tags.get("corpus", "mtat")
            for src, row in d["activity"].items():
                activity_rows.append(
                    (tags.get("separator"), corpus, src, row["active"], row["total"])
                )
        elif kind == "train-separator":
            q = load_artifact_dict(tracker.client, run.info.run_id, "quality.json")
            for sep in ("umx", "random_mask"):
                for src, value in q.get(sep, {}).get("mean_si_sdr_db", {}).items():
                    quality_rows.append(
                        (f"{sep} (trained here)" if sep == "umx" else sep, src, value)
                    )

    def frame(rows, cols):
        return pd.DataFrame(rows, columns=cols) if rows else None

    activity = frame(activity_rows, ["separator", "corpus", "source", "active", "total"])
    return {
        "scores": pd.DataFrame(score_rows, columns=[*_SEEDED, "metric", "value"]),
        "predictions": predictions,
        "per_tag": frame(tag_rows, [*_SEEDED, "tag", "roc_auc", "pr_auc"]),
        "pretrain_curves": frame(curve_rows, ["method", "seed", "step", "metric", "value"]),
        "pretrain_runs": frame(pretrain_rows, ["method", "seed", "trained", "collapsed"]),
        "embedding_health": frame(health_rows, ["method", "seed", "corpus", *HEALTH_STATS]),
        "source_activity": activity,
        "separation_quality": frame(quality_rows, ["separator", "source", "si_sdr"]),
        "snapshot_scores": frame(
            snapshot_rows,
            ["method", "task", "pretrain_seed", "probe_seed", "step", "metric", "value"],
        ),  # fmt: skip
        "snapshot_predictions": snapshot_predictions,
        "separator_runs": frame(separation_rows, ["method", "seed", "source", "si_sdr"]),
        "task_info": task_info,
        "pretrain_data": pretrain_data,
        "num_runs": len(runs),
    }
