"""Executors: where the plan's steps run. The plan, its keys and its results are the same on each.

A step is :func:`benchmark.pipeline.plan.run_step` of (config dict, step name), a plain
picklable call, so an executor only decides where and when each step runs:

- ``local`` (:class:`LocalExecutor`, the default): one after the other in this process,
  sharing the command's :class:`~benchmark.pipeline.context.Context`.
- ``processes`` (:class:`ProcessExecutor`): a pool of ``executor.workers`` processes on this
  machine, fed in dependency order (a step is handed out once all it needs has run); with
  GPUs, worker ``i`` sees only GPU ``i mod #GPUs`` (``CUDA_VISIBLE_DEVICES``).
- ``slurm`` (:class:`SlurmExecutor`): every step a job, submitted through submitit; steps of a
  stage with the same dependencies form one job array, dependencies between steps are Slurm
  dependencies (``afterok`` on exactly the jobs, or array elements, a step needs), resources per
  stage come from ``executor.<stage>``. The command returns once the plan is submitted; the
  last job builds the report (``afterany``: it runs even when some steps failed).

Two executors, or two submissions, at once never run a step twice: each step holds its lock
while it runs (:mod:`benchmark.pipeline.locks`) and finds finished work by its content keys; a
Slurm submission skips the steps that are done or still queued or running
(:func:`submit_plan`).
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import submitit

from benchmark.config import Config, ExecutorConfig, from_dict
from benchmark.errors import ConfigError, StageError
from benchmark.pipeline import slurm, state
from benchmark.pipeline.context import Context, open_context
from benchmark.pipeline.plan import (
    STAGES,
    SUCCEEDED,
    TRACKED,
    Step,
    execute,
    finish,
    parse_step,
    run_step,
    settle,
)

log = logging.getLogger(__name__)

KINDS = ("local", "processes", "slurm")


@dataclass
class Launch:
    """What an executor did with a plan: ``finished`` (the steps ran here; their statuses are
    set) or submitted (``jobs``: step -> Slurm job id of this submission, ``kept``: steps
    already queued or running, ``report_job``: the job that builds the report)."""

    finished: bool
    jobs: dict[str, str] = field(default_factory=dict)
    kept: dict[str, str] = field(default_factory=dict)
    done: list[str] = field(default_factory=list)
    report_job: str = ""


def check_executor(cfg: Config) -> None:
    """``ConfigError`` naming the problem for an executor that cannot run this configuration
    (an unknown kind, no workers, SQLite stores for Slurm jobs on other machines)."""
    e = cfg.executor
    if e.kind not in KINDS:
        raise ConfigError(f"executor.kind must be one of {', '.join(KINDS)}, got {e.kind!r}")
    if e.workers < 1:
        raise ConfigError(f"executor.workers must be >= 1, got {e.workers}")
    if e.kind == "slurm":
        local = [
            (key, value)
            for key, value in (
                ("paths.tracking_uri", cfg.tracking_uri),
                ("paths.optuna_storage", cfg.optuna_storage),
            )
            if value.startswith(("sqlite:", "file:")) or "://" not in value
        ]
        if local:
            key, value = local[0]
            raise ConfigError(
                f"executor.kind=slurm needs stores that jobs on other nodes can share; "
                f"{key} is {value!r}: set paths.tracking_uri to an MLflow server and "
                f"paths.optuna_storage to a database that the compute nodes reach (e.g. "
                f"`python -m benchmark tracking-server start --host 0.0.0.0` on a machine they "
                f'reach prints both; README, "Running on a cluster")'
            )


def make_executor(cfg: Config):
    """The executor ``executor.kind`` names (see :func:`check_executor` for what is raised)."""
    check_executor(cfg)
    e = cfg.executor
    if e.kind == "local":
        return LocalExecutor()
    if e.kind == "processes":
        return ProcessExecutor(e.workers)
    return SlurmExecutor(e)


class LocalExecutor:
    """Every step in this process, in plan order (today's behaviour, and the default)."""

    kind = "local"

    def launch(self, cfg: Config, steps: list[Step], ctx: Context, on_step=None) -> Launch:
        """``on_step(step)``: called after each step (see :func:`execute`)."""
        execute(steps, ctx, on_step)
        return Launch(finished=True)


# -- processes --------------------------------------------------------------------------------


def visible_gpus() -> list[str]:
    """The GPUs this process may hand out: ``CUDA_VISIBLE_DEVICES`` if set, else every GPU."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip() and d.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def _worker_init(devices: list[str], counter) -> None:
    """Runs first in each pool worker: its own GPU, before anything initialises CUDA."""
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    if devices:
        os.environ["CUDA_VISIBLE_DEVICES"] = devices[index % len(devices)]


class ProcessExecutor:
    """A pool of ``workers`` processes (spawned: no state forked from this one) fed in
    dependency order; a failure blocks its dependants only, as in :func:`execute`.

    A worker that dies without a word (the kernel's out-of-memory killer sends SIGKILL)
    breaks the whole pool: every step in it fails with ``BrokenProcessPool``, whichever
    worker died. So the pool is made again, and a step that ran alone when it broke is failed
    with that reason (in its record too: the dead worker wrote none); steps that ran side by
    side are run again one at a time, each alone, which finds the one that kills its worker
    and lets the others finish.
    """

    kind = "processes"

    def __init__(self, workers: int, devices: list[str] | None = None):
        self.workers = workers
        self.devices = devices

    def launch(
        self, cfg: Config, steps: list[Step], ctx: Context | None = None, on_step=None
    ) -> Launch:
        """``on_step(step)``: called in this process as each step ends or is blocked."""
        devices = visible_gpus() if self.devices is None else self.devices
        by_name = {s.name: s for s in steps}
        waiting = list(steps)
        alone: set[str] = set()  # steps that were in a pool that broke: run with no other
        running: dict[Future, tuple[Step, float]] = {}
        pool = self._pool(devices)
        try:
            while waiting or running:
                still = []
                for step in waiting:
                    deps = [by_name[d].status for d in step.deps]
                    bad = [d for d in step.deps if by_name[d].status in ("failed", "blocked")]
                    side_by_side = [step.name, *(s.name for s, _ in running.values())]
                    busy = len(running) >= self.workers or (
                        len(side_by_side) > 1 and not alone.isdisjoint(side_by_side)
                    )
                    if bad:
                        step.status, step.error = "blocked", f"needs {', '.join(bad)}"
                        log.warning("skipping %s: %s", step.name, step.error)
                        if on_step is not None:
                            on_step(step)
                    elif all(s in SUCCEEDED for s in deps) and not busy:
                        running[pool.submit(step.fn, *step.args)] = (step, time.perf_counter())
                    else:
                        still.append(step)
                waiting = still
                if not running:
                    continue
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                lost: list[tuple[Step, float]] = []
                if any(isinstance(f.exception(), BrokenProcessPool) for f in finished):
                    pool.shutdown(wait=True)  # every future of a broken pool has ended
                    finished = set(running)
                    pool = self._pool(devices)
                for future in finished:
                    step, t0 = running.pop(future)
                    if isinstance(future.exception(), BrokenProcessPool):
                        lost.append((step, t0))
                        continue
                    _settle(step, future, t0)
                    if on_step is not None:
                        on_step(step)
                if len(lost) == 1:
                    step, t0 = lost[0]
                    _worker_died(cfg, step, t0)
                    if on_step is not None:
                        on_step(step)
                elif lost:
                    log.warning(
                        "a worker process died while %s ran: running them again one at a time",
                        ", ".join(s.name for s, _ in lost),
                    )
                    alone.update(s.name for s, _ in lost)
                    waiting = [s for s, _ in lost] + waiting
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return Launch(finished=True)

    def _pool(self, devices: list[str]) -> ProcessPoolExecutor:
        import multiprocessing

        mp = multiprocessing.get_context("spawn")
        return ProcessPoolExecutor(
            self.workers, mp_context=mp, initializer=_worker_init, initargs=(devices, mp.Value("i"))
        )


def _settle(step: Step, future: Future, t0: float) -> None:
    try:
        result = future.result()
    except Exception as exc:
        step.status, step.error = "failed", f"{type(exc).__name__}: {exc}"
        step.wall_s = time.perf_counter() - t0
        log.error("step %s failed: %s", step.name, step.error)
        return
    settle(step, result)
    step.wall_s = result.wall_s


def _worker_died(cfg: Config, step: Step, t0: float) -> None:
    """Fail ``step``, whose worker process died while it ran alone, and record it as
    :func:`run_step` records a failure (the worker could not)."""
    step.status = "failed"
    step.error = (
        "its worker process died (killed without a word, e.g. by the kernel for lack of "
        "memory: fewer executor.workers leave each more)"
    )
    step.wall_s = time.perf_counter() - t0
    before = state.read_record(cfg, step.name) or {}
    compute = float(before.get("compute_s", before.get("wall_s", 0.0))) + step.wall_s
    state.write_record(
        cfg,
        step.name,
        step.stage,
        "failed",
        error=step.error,
        wall_s=step.wall_s,
        compute_s=compute,
    )
    log.error("step %s failed: %s", step.name, step.error)


# -- Slurm ------------------------------------------------------------------------------------


def _job_logging() -> None:
    """A Slurm job is its own process: its log lines go to the job's stderr file."""
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


class StepJob(submitit.helpers.Checkpointable):
    """A plan step as a Slurm job.

    Checkpointable: when Slurm preempts the job or its time limit nears (submitit asks for
    USR2 90 s before), submitit requeues the same call, which finds the step's lock left by
    its own earlier incarnation (same job id, lower restart count), takes it over and resumes:
    finished work by its content keys, pre-training from its last ``checkpoint.pt`` (which
    gives the same weights as an uninterrupted run).
    """

    def __call__(self, cfg: dict, name: str):
        _job_logging()
        return run_step(cfg, name)


class ReportJob:
    """The plan's last job: what every step's record says, then ``plan_status.json`` and the
    report (``afterany``: it runs after failures too, and lists what is missing)."""

    def __call__(self, cfg: dict, plan: list[tuple[str, str, list[str]]]) -> str:
        _job_logging()
        config = from_dict(cfg)
        steps = steps_from_records(config, plan)
        _, paths = finish(config, open_context(config, progress=False).require_tracker(), steps)
        return str(paths.get("leaderboard.md", "no report: no probe in this plan"))


def steps_from_records(cfg: Config, plan: list[tuple[str, str, list[str]]]) -> list[Step]:
    """The plan's steps as their records left them; a step without a record never ran here
    (a step it needs failed, or its job was cancelled) and counts as blocked."""
    steps = []
    for name, stage, deps in plan:
        fields = parse_step(name)[1]
        step = Step(name, stage, list(deps), method=fields.get("method", ""))
        step.task = fields.get("task", "")
        record = state.read_record(cfg, name)
        if record is None:
            step.status = "blocked"
            step.error = "no record: not run yet, a step it needs failed, or its job was cancelled"
        else:
            step.status, step.error = record["status"], record.get("error", "")
            step.run_id, step.wall_s = record.get("run_id", ""), record.get("wall_s", 0.0)
            step.compute_s = record.get("compute_s")
        steps.append(step)
    return steps


def _resources(e: ExecutorConfig, stage: str, name: str) -> dict:
    r = e.resources(stage)
    params = {
        "name": name,
        "timeout_min": r.time_min,
        "cpus_per_task": r.cpus,
        "mem_gb": r.mem_gb,
        "slurm_array_parallelism": e.array_parallelism,
    }
    if r.gpus:
        params["gpus_per_node"] = r.gpus
    if r.partition:
        params["slurm_partition"] = r.partition
    return params


class SlurmExecutor:
    """Submits the plan as Slurm jobs through submitit and returns (see :func:`submit_plan`)."""

    kind = "slurm"

    def __init__(self, config: ExecutorConfig):
        self.config = config

    def launch(self, cfg: Config, steps: list[Step], ctx: Context, on_step=None) -> Launch:
        """Submits and returns: no step ends here (``on_step`` is never called); each job
        leaves its step's record, and the report job writes ``plan_status.json``."""
        if not slurm.available():
            raise ConfigError("executor.kind=slurm: no Slurm here (squeue is not on the PATH)")
        return submit_plan(cfg, steps, ctx.require_tracker())


def submit_plan(cfg: Config, steps: list[Step], tracker) -> Launch:
    """Submit every step that is neither done nor in flight, and the report job.

    Under the plan's submit lock (two submissions at once take turns): a step is *done* when
    its record says ran/done (and, for a tracked step, its MLflow run is FINISHED), *in flight*
    when the job recorded for it is queued or running; such steps are not submitted again, and
    the steps that need them depend on their jobs. The rest is submitted stage by stage: the
    steps of one stage that need the same jobs form one array. Each job gets
    ``--kill-on-invalid-dep=yes``: a step whose dependency failed is cancelled rather than left
    pending for ever. A pending report job of an earlier submission is cancelled (the new one
    waits for all of it). Returns a :class:`Launch` with the job ids; raises
    :class:`StageError` and submits nothing when squeue cannot say which jobs are in flight.
    """
    e = cfg.executor
    folder = Path(e.folder) if e.folder else cfg.profile_dir / "slurm"
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    # Relative paths in the config resolve against the folder each job starts in: the one
    # this command runs in (sbatch's default), which must be on the shared filesystem.
    cfg_dict = cfg_for_jobs(cfg, steps)
    launch = Launch(finished=False)
    with state.submit_lock(cfg):
        submitted = state.read_jobs(cfg)
        try:
            live = slurm.job_states([v["job"] for v in submitted.values()])
        except StageError as exc:  # a running step's job would look gone and run twice
            raise StageError(f"nothing submitted: {exc}") from None
        finished_runs = {r.info.run_id for r in tracker.runs() if r.info.status == "FINISHED"}
        job_of: dict[str, str] = {}  # step -> the job the steps after it must wait for
        todo: list[Step] = []
        for step in steps:
            record = state.read_record(cfg, step.name)
            job = submitted.get(step.name, {}).get("job", "")
            if job and live.get(job) in slurm.IN_FLIGHT:
                job_of[step.name] = launch.kept[step.name] = job
            elif (
                record
                and record["status"] in SUCCEEDED
                and (
                    step.stage not in TRACKED
                    or not record["run_id"]
                    or record["run_id"] in finished_runs
                )
            ):
                launch.done.append(step.name)
            else:
                todo.append(step)
        # Stage by stage, in waves: a step is submitted once every step it needs that is to be
        # submitted has its job (a study's step may need a step of a later stage, e.g. a
        # separator's quality, stage separate, needs the pre-training run it is logged into).
        unsubmitted = {s.name for s in todo}
        while unsubmitted:
            before = len(unsubmitted)
            for stage in STAGES:
                groups: dict[tuple[str, ...], list[Step]] = {}
                for step in todo:
                    if step.stage != stage or step.name not in unsubmitted:
                        continue
                    if any(d in unsubmitted for d in step.deps):
                        continue
                    needs = tuple(sorted({job_of[d] for d in step.deps if d in job_of}))
                    groups.setdefault(needs, []).append(step)
                for needs, members in groups.items():
                    ids = _submit_group(executor, e, stage, needs, members, cfg_dict)
                    for step, job in zip(members, ids, strict=True):
                        job_of[step.name] = launch.jobs[step.name] = job
                        unsubmitted.discard(step.name)
            if len(unsubmitted) == before:
                raise ValueError(f"the plan's dependencies form a cycle: {sorted(unsubmitted)}")
        old_report = submitted.get("report", {}).get("job", "")
        if old_report and live.get(old_report) in slurm.QUEUED:
            slurm.cancel([old_report])
        plan = [(s.name, s.stage, list(s.deps)) for s in steps]
        executor.update_parameters(
            **_resources(e, "report", f"mscol-{cfg.profile}-report"),
            slurm_additional_parameters=(
                {"dependency": "afterany:" + ":".join(sorted(set(job_of.values())))}
                if job_of
                else {}
            ),
        )
        # The report of the command's configuration (its methods and tasks are the expected
        # rows), as a local run's report is.
        launch.report_job = executor.submit(ReportJob(), cfg.to_dict(), plan).job_id
        state.add_jobs(cfg, {**launch.jobs, "report": launch.report_job})
        state.write_submitted_plan(cfg, plan)
    return launch


def cfg_for_jobs(cfg: Config, steps: list[Step]) -> dict:
    """The config dict the plan's steps carry (``benchmark.methods``/``tasks`` narrowed)."""
    return steps[0].args[0] if steps and steps[0].args else cfg.to_dict()


def _submit_group(executor, e: ExecutorConfig, stage, needs, members, cfg_dict) -> list[str]:
    """One job (or one array) for ``members``, starting after ``needs`` succeeded."""
    additional = {"kill-on-invalid-dep": "yes"}
    if needs:
        additional["dependency"] = "afterok:" + ":".join(needs)
    executor.update_parameters(
        **_resources(e, stage, f"mscol-{stage}"), slurm_additional_parameters=additional
    )
    if len(members) == 1:
        return [executor.submit(StepJob(), cfg_dict, members[0].name).job_id]
    with executor.batch():
        jobs = [executor.submit(StepJob(), cfg_dict, s.name) for s in members]
    return [j.job_id for j in jobs]


def job_logs(cfg: Config, job_id: str) -> tuple[Path, Path]:
    """The stdout and stderr files submitit writes for ``job_id``."""
    e = cfg.executor
    folder = Path(e.folder) if e.folder else cfg.profile_dir / "slurm"
    paths = submitit.core.utils.JobPaths(folder, job_id=job_id)
    return paths.stdout, paths.stderr


def printable(launch: Launch) -> list[str]:
    """What ``run --executor slurm`` prints: the jobs by stage, and how to watch them."""
    lines = []
    by_stage: dict[str, list[str]] = {}
    for name, job in launch.jobs.items():
        by_stage.setdefault(parse_step(name)[0], []).append(job)
    for stage in STAGES:
        if stage in by_stage:
            jobs = by_stage[stage]
            arrays = sorted({j.split("_")[0] for j in jobs})
            lines.append(f"  {stage:9s} {len(jobs):4d} step(s) in job(s) {', '.join(arrays)}")
    if launch.kept:
        lines.append(f"  {len(launch.kept)} step(s) already queued or running, not resubmitted")
    if launch.done:
        lines.append(f"  {len(launch.done)} step(s) done before, not resubmitted")
    lines.append(f"  report    job {launch.report_job} (after all of them)")
    return lines
