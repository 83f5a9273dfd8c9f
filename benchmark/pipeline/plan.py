"""The run plan of ``make benchmark``: every step of a profile, resumable, failure-isolated.

A step is a plain, picklable call, :func:`run_step` ``(config dict, step name)``, so that any
executor (:mod:`benchmark.pipeline.executors`: this process, a process pool, Slurm jobs) can
run it anywhere; :func:`run_step` opens what it needs itself (or uses the caller's
:class:`Context`), holds the lock of what the step writes, named by its content key
(:func:`step_key`, :mod:`benchmark.pipeline.locks`), and leaves a record
(:mod:`benchmark.pipeline.state`). Each step is content-keyed by the stage it calls, so a
rerun after Ctrl-C, a kill or a cancelled job skips what is finished. A failing step is
reported, its dependants are skipped, the independent ones still run, and the report lists
what is missing.

Step names: ``data``, ``features:<corpus>``, ``separate:<separator>``,
``pretrain:<method>:s<seed>``, ``embed:<method>:s<seed>:<task>``,
``tune:<method>:s<seed>:<task>`` (once per pre-training run and task: each run's probes use
its own search, so the between-run variance holds the search's randomness too),
``probe:<method>:s<seed>:<task>:p<probe seed>``; the studies add
``quality:<method>:s<seed>`` (stage separate: the separator's measured quality, logged into the
run), ``snapshot:<method>:s<seed>:@<step>`` (stage pretrain: the run's encoder at a
pre-training step) and ``probe@<step>:<method>:s<seed>:<task>:p<probe seed>`` (stage probe: a
probe of that snapshot). A method name may hold ``:`` (``hear:x``).

A step's status: "ran" or "done" (found finished) for the tracked stages, "checked" for the
cache stages (data, features, separate, embed: built now or found built), "failed",
"blocked" (a step it needs failed).
"""

from __future__ import annotations

import logging
import re
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from benchmark.config import Config, from_dict
from benchmark.io import atomic_write_json, read_json
from benchmark.pipeline import probing, stages, state, studies
from benchmark.pipeline.context import Context, open_context
from benchmark.pipeline.locks import LockLost, Owner, StepLock, known_dead
from benchmark.pipeline.tracking import Tracker
from benchmark.pretrain.loop import PretrainedModel

log = logging.getLogger(__name__)

# In dependency order: a step depends on steps of earlier stages only.
STAGES = ("data", "features", "separate", "pretrain", "embed", "tune", "probe")
TRACKED = ("pretrain", "tune", "probe")  # stages whose steps leave an MLflow run
SUCCEEDED = ("ran", "done", "checked")  # the statuses of a step whose dependants may run

_METHOD = r"(?P<method>.+)"  # may hold ':' (an external encoder, hear:<module>)
_TASK = r"(?P<task>[^:]+)"
# kind (the name up to its first ':' or '@') -> (stage, pattern of the whole name)
_NAMES = {
    "data": ("data", r"data"),
    "features": ("features", r"features:(?P<corpus>[^:]+)"),
    "separate": ("separate", r"separate:(?P<separator>[^:]+)"),
    "quality": ("separate", rf"quality:{_METHOD}:s(?P<seed>\d+)"),
    "pretrain": ("pretrain", rf"pretrain:{_METHOD}:s(?P<seed>\d+)"),
    "snapshot": ("pretrain", rf"snapshot:{_METHOD}:s(?P<seed>\d+):@(?P<snapshot_step>\d+)"),
    "embed": ("embed", rf"embed:{_METHOD}:s(?P<seed>\d+):{_TASK}"),
    "tune": ("tune", rf"tune:{_METHOD}:s(?P<seed>\d+):{_TASK}"),
    "probe": ("probe", rf"probe:{_METHOD}:s(?P<seed>\d+):{_TASK}:p(?P<probe_seed>\d+)"),
    "probe@": (
        "probe",
        rf"probe@(?P<snapshot_step>\d+):{_METHOD}:s(?P<seed>\d+):{_TASK}:p(?P<probe_seed>\d+)",
    ),
}


def step_name(stage: str, method: str, seed: int, task: str = "", probe_seed=None) -> str:
    """The name of a model's step: ``pretrain:<method>:s<seed>``, ``embed:...:<task>``,
    ``tune:...:<task>``, ``probe:...:<task>:p<probe seed>`` (:func:`parse_step` inverts it)."""
    name = f"{stage}:{method}:s{seed}"
    if task:
        name += f":{task}"
    if probe_seed is not None:
        name += f":p{probe_seed}"
    return name


def pretrain_seeds(cfg: Config, method) -> tuple[int, ...]:
    """Pre-training seeds of ``method``: every configured seed, or the first one only for an
    external encoder (its weights are fixed: other seeds would repeat the same work)."""
    return cfg.pretrain.seeds[:1] if getattr(method, "external", False) else cfg.pretrain.seeds


def parse_step(name: str) -> tuple[str, dict]:
    """``(stage, fields)`` of a step name, e.g. ``("pretrain", {"method": "cola", "seed": 0})``;
    ``ValueError`` naming the name otherwise."""
    _kind, stage, fields = _parse(name)
    return stage, fields


def _parse(name: str) -> tuple[str, str, dict]:
    """``(kind, stage, fields)`` of a step name (see :data:`_NAMES`)."""
    head = name.partition(":")[0]
    kind = "probe@" if head.startswith("probe@") else head
    stage, pattern = _NAMES.get(kind, ("", ""))
    match = re.fullmatch(pattern, name) if pattern else None
    if match is None:
        raise ValueError(
            f"not a plan step: {name!r} (e.g. data, features:mtat, pretrain:cola:s0, "
            "embed:cola:s0:fma, tune:cola:s0:fma, probe:cola:s0:fma:p0)"
        )
    fields = {
        k: int(v) if k.endswith(("seed", "step")) else v for k, v in match.groupdict().items()
    }
    return kind, stage, fields


@dataclass(frozen=True)
class StepResult:
    """How a step ended: ``status`` "ran", "done" (found finished) or "checked" (a cache
    stage), its MLflow run (tracked stages), its wall time in seconds, and ``compute_s``: its
    wall time summed over every run of it under this configuration that ran or checked it
    (not those that found it done), the compute behind its result (kept in its record)."""

    status: str
    run_id: str = ""
    wall_s: float = 0.0
    compute_s: float | None = None


def run_step(cfg: Config | dict, name: str, ctx: Context | None = None) -> StepResult:
    """Run plan step ``name`` of configuration ``cfg`` (a :class:`Config` or its
    :func:`~benchmark.config.to_dict`), wherever this is called.

    ``ctx``: reuse a command's context (what it opened stays open between steps); None opens
    one for this step. The lock of what the step writes (:func:`step_key`) is held meanwhile:
    a second caller waits, then finds the step finished by its content keys. A record of the
    outcome is written either way.

    Returns a :class:`StepResult`. Raises ``ValueError`` for a malformed name, and whatever
    the stage raises (after recording the failure); an interruption (Ctrl-C, a Slurm requeue's
    ``SystemExit``) records nothing: the step is not finished, and resumes when run again;
    nor does :class:`LockLost` (the lock was taken over: the step is its new holder's).
    """
    cfg = cfg if isinstance(cfg, Config) else from_dict(cfg)
    kind, stage, fields = _parse(name)
    if ctx is None:
        ctx = open_context(cfg, progress=sys.stderr.isatty())
    outer, ctx.step = ctx.step, name
    t0 = time.perf_counter()
    try:
        # Finding the key opens the step's inputs: the step's work, unlike waiting for the lock.
        artefact = step_key(ctx, name)
        keyed = time.perf_counter()
        with ctx.hold(*artefact):
            t0 += time.perf_counter() - keyed
            compute = _compute_so_far(cfg, name)
            status, run_id = _RUNNERS[kind](ctx, **fields)
            wall_s = _since(t0)
            compute += wall_s if status != "done" else 0.0
            state.write_record(
                cfg, name, stage, status, run_id or "", wall_s=wall_s, compute_s=compute
            )
    except LockLost:
        raise
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        wall_s = _since(t0)
        compute = _compute_so_far(cfg, name) + wall_s
        state.write_record(
            cfg, name, stage, "failed", error=error, wall_s=wall_s, compute_s=compute
        )
        raise
    finally:
        ctx.step = outer
    return StepResult(status, run_id or "", wall_s, round(compute, 2))


def _compute_so_far(cfg: Config, name: str) -> float:
    """The compute of ``name``'s earlier runs under this configuration (from its record)."""
    before = state.read_record(cfg, name) or {}
    return float(before.get("compute_s", before.get("wall_s", 0.0)))


def _since(t0: float) -> float:
    return time.perf_counter() - t0


def step_key(ctx: Context, name: str) -> tuple[str, str]:
    """``(kind, content key)`` of what step ``name`` writes, keyed as its stage keys it (an
    MLflow run's ``bench.key``, a store's folder): its lock is named by them
    (:func:`state.artefact_lock`), so that the steps of any two plans that would write the
    same thing take the same lock, and no others do. Opens the step's inputs as the step
    does (the plan made them first); raises what the step would raise without them."""
    kind, _stage, fields = _parse(name)
    return _KEYS[kind](ctx, **fields)


def _model(ctx: Context, method: str, seed: int) -> PretrainedModel:
    """The finished pre-trained model (the plan runs ``pretrain`` first), once per context."""
    return ctx.once(
        ("model", method, seed),
        lambda: stages.run_pretrain(ctx, method, seed, build_sources=False, find_only=True),
    )


def _snapshot(ctx: Context, method: str, seed: int, at: int) -> PretrainedModel:
    """The encoder of a finished run after ``at`` updates (:func:`studies.snapshot_model`),
    once per context (the snapshot step, or the first of its probes without it)."""
    return ctx.once(
        ("snapshot", method, seed, at),
        lambda: studies.snapshot_model(ctx, _model(ctx, method, seed), at),
    )


def _run_data(ctx):
    # The synthetic corpus is generated (or the real roots are checked) only when a task of
    # the plan (``benchmark.tasks``, narrowed by build_plan) or MTAT pre-training reads it.
    from methods import get_method

    trains = any(get_method(m).pretrained for m in ctx.cfg.benchmark.methods)
    if not stages.needs_builtin_data(ctx, list(ctx.cfg.benchmark.tasks), trains):
        return "done", ""
    stages.data_paths(ctx)
    return "checked", ""


def _run_features(ctx, corpus):
    stages.mixture_store(ctx, corpus)
    return "checked", ""


def _run_separate(ctx, separator):
    stages.source_store(ctx, separator)
    return "checked", ""


def _run_quality(ctx, method, seed):
    # Logged into the pre-training run, which holds the step's result: "ran" or "done".
    return studies.record_separator_quality(ctx, _model(ctx, method, seed)), ""


def _run_pretrain(ctx, method, seed):
    model = ctx.once(("model", method, seed), lambda: stages.run_pretrain(ctx, method, seed))
    return ("done" if model.cached else "ran"), model.run_id or ""


def _run_snapshot(ctx, method, seed, snapshot_step):
    _snapshot(ctx, method, seed, snapshot_step)  # a kept snapshot, evaluated once and cached
    return "done", ""


def _run_embed(ctx, method, seed, task):
    probing.embedded(ctx, _model(ctx, method, seed), stages.get_task(ctx, task))
    return "checked", ""


def _run_tune(ctx, method, seed, task):
    out = probing.run_tune(ctx, _model(ctx, method, seed), stages.get_task(ctx, task))
    return ("done" if out["cached"] else "ran"), out.get("run_id") or ""


def _run_probe(ctx, method, seed, task, probe_seed):
    model = _model(ctx, method, seed)
    out = probing.run_probe(ctx, model, stages.get_task(ctx, task), probe_seed)
    return out.status, out.run_id or ""


def _run_snapshot_probe(ctx, snapshot_step, method, seed, task, probe_seed):
    final = _model(ctx, method, seed)  # the run's tuning, done on its final encoder
    out = probing.run_probe(
        ctx,
        _snapshot(ctx, method, seed, snapshot_step),
        stages.get_task(ctx, task),
        probe_seed,
        tuned_from=final,
        snapshot_step=snapshot_step,
    )
    return out.status, out.run_id or ""


_RUNNERS: dict[str, Callable[..., tuple[str, str]]] = {
    "data": _run_data,
    "features": _run_features,
    "separate": _run_separate,
    "quality": _run_quality,
    "pretrain": _run_pretrain,
    "snapshot": _run_snapshot,
    "embed": _run_embed,
    "tune": _run_tune,
    "probe": _run_probe,
    "probe@": _run_snapshot_probe,
}


# What each kind of step writes, and its content key (step_key): the same functions the
# stages key it with.
def _data_key(ctx):
    cfg = ctx.cfg
    # A synthetic corpus's folder is its key; real data is only looked at (nothing written).
    return "data", stages.synthetic_root(cfg).name if cfg.data.source == "synthetic" else "real"


def _features_key(ctx, corpus):
    return "features", stages.mixture_store_root(ctx, corpus).name


def _separate_key(ctx, separator):
    return "separate", stages.sources_run_key(ctx, separator)


def _quality_key(ctx, method, seed):
    return "pretrain", _model(ctx, method, seed).key  # logged into the pre-training run


def _pretrain_key(ctx, method, seed):
    return "pretrain", stages.pretrain_run_key(ctx, method, seed)


def _snapshot_key(ctx, method, seed, snapshot_step):
    return "snapshot", studies.snapshot_key(_model(ctx, method, seed), snapshot_step)


def _embed_key(ctx, method, seed, task):
    model, task = _model(ctx, method, seed), stages.get_task(ctx, task)
    return "embed", probing.embedding_key_of(ctx, model, task)


def _tune_key(ctx, method, seed, task):
    model, task = _model(ctx, method, seed), stages.get_task(ctx, task)
    return "tune", probing.tune_run_key(
        ctx.cfg, task.name, probing.embedding_key_of(ctx, model, task)
    )


def _probe_key(ctx, method, seed, task, probe_seed):
    model, task = _model(ctx, method, seed), stages.get_task(ctx, task)
    return "probe", probing.probe_setup(ctx, model, task, probe_seed)[0]


def _snapshot_probe_key(ctx, snapshot_step, method, seed, task, probe_seed):
    final = _model(ctx, method, seed)
    model, task = _snapshot(ctx, method, seed, snapshot_step), stages.get_task(ctx, task)
    return "probe", probing.probe_setup(ctx, model, task, probe_seed, tuned_from=final)[0]


_KEYS: dict[str, Callable[..., tuple[str, str]]] = {
    "data": _data_key,
    "features": _features_key,
    "separate": _separate_key,
    "quality": _quality_key,
    "pretrain": _pretrain_key,
    "snapshot": _snapshot_key,
    "embed": _embed_key,
    "tune": _tune_key,
    "probe": _probe_key,
    "probe@": _snapshot_probe_key,
}


@dataclass
class Step:
    """One step of the plan: ``fn(*args)`` runs it (by default :func:`run_step` of the plan's
    config dict and the step's name: picklable, so any executor can run it)."""

    name: str
    stage: str  # one of STAGES
    deps: list[str] = field(default_factory=list)
    fn: Callable[..., StepResult] = run_step
    args: tuple = ()
    status: str = "pending"  # pending | checked (a cache stage) | done | ran | failed | blocked
    error: str = ""
    wall_s: float = 0.0
    run_id: str = ""  # the MLflow run of a tracked step (pretrain, tune, probe)
    method: str = ""  # pretrain, embed, tune, probe: the method (names may hold ':', e.g. hear:x)
    task: str = ""  # embed, tune, probe: the task
    compute_s: float | None = None  # see StepResult (None: not known, merge_status sums)


def build_plan(ctx: Context, methods=None, tasks=None, only=None) -> list[Step]:
    """The steps of ``ctx``'s profile (narrowed to ``methods``, ``tasks`` and the stages
    ``only``), in dependency order. Raises ``ValueError`` for an unknown method, task or stage.

    Tasks: ``tasks``, else :func:`stages.planned_tasks` (``benchmark.tasks`` and the task files'
    tasks). Each step carries the config with ``benchmark.methods``/``tasks`` narrowed to the
    plan's (where the steps run, nothing else is known of the command line).
    """
    from methods import get_method

    cfg = ctx.cfg
    method_names = list(methods or cfg.benchmark.methods)
    task_names = list(tasks or stages.planned_tasks(ctx))
    for m in method_names:
        get_method(m)
    for t in task_names:
        stages.get_task(ctx, t)
    step_cfg = replace(
        cfg,
        benchmark=replace(cfg.benchmark, methods=tuple(method_names), tasks=tuple(task_names)),
    ).to_dict()
    steps: list[Step] = []

    def add(name: str, deps: list[str], method: str = "", task: str = "") -> None:
        stage = _parse(name)[1]
        steps.append(
            Step(name, stage, list(deps), run_step, (step_cfg, name), method=method, task=task)
        )

    # Probes use ``probe.params``: the paper's learning rates ("default") or the best Optuna
    # trial ("tuned", equal budget per method), which needs the tune steps.
    tune = cfg.benchmark.tune or cfg.probe.params == "tuned"
    trains = any(get_method(m).pretrained for m in method_names)
    pre_corpus = stages.pretrain_corpus(cfg)
    # The convergence study (benchmark.convergence_methods): snapshots of these methods' runs.
    # (A method without pre-training has no snapshots: the same encoder at every step.)
    converging = [
        m
        for m in cfg.benchmark.convergence_methods
        if m in method_names and get_method(m).pretrained
    ]
    at = snapshot_steps_of(cfg) if converging else []

    add("data", [])
    corpora = {stages.get_task(ctx, t).corpus for t in task_names}
    corpora |= {pre_corpus} if trains else set()
    for corpus in sorted(corpora):
        add(f"features:{corpus}", ["data"])
    separators = sorted({get_method(m).separator for m in method_names if get_method(m).sources})
    for sep in separators:
        add(f"separate:{sep}", [f"features:{pre_corpus}"])
    for m in method_names:
        method = get_method(m)
        seeds = pretrain_seeds(cfg, method)
        for seed in seeds:
            deps = [f"features:{pre_corpus}"] if method.pretrained else ["data"]
            deps += [f"separate:{method.separator}"] if method.sources else []
            add(step_name("pretrain", m, seed), deps, m)
            if method.sources:
                # The separator's measured quality, logged into the run (separator study).
                add(f"quality:{m}:s{seed}", [step_name("pretrain", m, seed)], m)
        for seed in seeds:
            embedded_corpus: dict[str, str] = {}
            for t in task_names:
                corpus = stages.get_task(ctx, t).corpus
                # Tasks on one corpus share its window embeddings (the second finds the first's
                # cache): embedding them one after the other runs the encoder once.
                after = [embedded_corpus[corpus]] if corpus in embedded_corpus else []
                emb = step_name("embed", m, seed, t)
                add(emb, [step_name("pretrain", m, seed), f"features:{corpus}", *after], m, t)
                embedded_corpus[corpus] = emb
                if tune:  # each run its own search (probing.run_tune)
                    add(step_name("tune", m, seed, t), [emb], m, t)
        for t in task_names:
            for seed in seeds:
                probe_deps = [step_name("embed", m, seed, t)]
                if tune:
                    probe_deps.append(step_name("tune", m, seed, t))
                for ps in cfg.probe.seeds:
                    add(step_name("probe", m, seed, t, ps), probe_deps, m, t)
    for m in converging:
        _add_snapshot_steps(ctx, add, m, task_names, at, tune)
    if only:
        wanted = set(only)
        unknown = wanted - set(STAGES)
        if unknown:
            raise ValueError(
                f"unknown stage(s) in --only: {', '.join(sorted(unknown))} "
                f"(known: {', '.join(STAGES[1:])})"
            )
        if wanted & {"tune", "probe"}:
            wanted.add("embed")  # what they train on
        steps = [s for s in steps if s.stage in wanted or s.stage == "data"]
        names = {s.name for s in steps}
        for s in steps:
            s.deps = [d for d in s.deps if d in names]
    return steps


def snapshot_steps_of(cfg: Config) -> list[int]:
    from benchmark.pretrain.loop import snapshot_steps

    return snapshot_steps(cfg.pretrain)


def _add_snapshot_steps(ctx, add, m, task_names, at, tune) -> None:
    """The convergence study's steps for method ``m``: each run's encoder at each snapshot
    step, probed on every task with the run's tuned parameters (tuned on its final encoder:
    the study varies the encoder only)."""
    from methods import get_method

    cfg = ctx.cfg
    for seed in pretrain_seeds(cfg, get_method(m)):
        for step in at:
            name = f"snapshot:{m}:s{seed}:@{step}"
            add(name, [step_name("pretrain", m, seed)], m)
            for t in task_names:
                corpus = stages.get_task(ctx, t).corpus
                deps = [name, f"features:{corpus}", step_name("pretrain", m, seed)]
                deps += [step_name("tune", m, seed, t)] if tune else []
                for ps in cfg.probe.seeds:
                    add(f"probe@{step}:{m}:s{seed}:{t}:p{ps}", deps, m, t)


def settle(step: Step, result) -> None:
    """Set ``step``'s status and MLflow run from what its call returned: a
    :class:`StepResult`, a :class:`stages.Outcome`, "done" or "ran"; anything else is a cache
    stage's store: "checked"."""
    if isinstance(result, StepResult):
        step.status, step.run_id, step.compute_s = result.status, result.run_id, result.compute_s
    elif isinstance(result, stages.Outcome):
        step.status, step.run_id = result.status, result.run_id or ""
    else:
        step.status = result if result in ("done", "ran") else "checked"


def execute(
    steps: list[Step],
    ctx: Context | None = None,
    on_step: Callable[[Step], None] | None = None,
) -> dict[str, float]:
    """Run the steps in order in this process (the ``local`` executor); a failure blocks its
    dependants only. ``ctx``: the command's context, shared by the steps (None: each step opens
    its own). ``on_step(step)`` is called after each step, blocked ones included (e.g. to
    record it at once). Returns wall time per stage."""
    by_name = {s.name: s for s in steps}
    for step in steps:
        blocked = [d for d in step.deps if by_name[d].status in ("failed", "blocked")]
        if blocked:
            step.status, step.error = "blocked", f"needs {', '.join(blocked)}"
            log.warning("skipping %s: %s", step.name, step.error)
        else:
            t0 = time.perf_counter()
            try:
                settle(
                    step, step.fn(*step.args, ctx=ctx) if ctx is not None else step.fn(*step.args)
                )
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # isolate: one failing step must not stop the others
                step.status, step.error = "failed", f"{type(exc).__name__}: {exc}"
                log.error("step %s failed: %s", step.name, step.error)
                log.debug("%s", traceback.format_exc())
            step.wall_s = time.perf_counter() - t0
        if on_step is not None:
            on_step(step)
    return stage_walls(steps)


def stage_walls(steps: list[Step]) -> dict[str, float]:
    """Wall time per stage: the sum of its steps' (with parallel workers, more than elapsed)."""
    wall: dict[str, float] = {}
    for s in steps:
        if s.status in (*SUCCEEDED, "failed"):
            wall[s.stage] = wall.get(s.stage, 0.0) + s.wall_s
    return wall


def merge_status(previous: dict, steps: list[Step], wall: dict, results_hash: str) -> dict:
    """The ``plan_status.json`` after running ``steps``: each step's status and MLflow run.

    A plan of the same configuration (``results_hash``: another ``--methods``, an added
    ablation, a rerun) adds to the steps of the earlier plans, replacing those it ran (steps
    still pending keep their earlier entry); a plan of another configuration starts afresh,
    so the report never mixes configurations. A step that failed or was blocked keeps the
    run of its last good result (the report shows it and lists the step as failed or
    blocked). ``compute_s`` sums a step's wall time over the invocations that ran or checked
    it (not those that found it done): the compute behind its result (a step's own record of
    it, ``Step.compute_s``, when it has one).
    ``stage_wall_s`` is this invocation's wall time per stage.
    """
    earlier = previous.get("steps", {}) if previous.get("results_hash") == results_hash else {}
    info = dict(earlier)
    for s in steps:
        if s.status == "pending":
            continue
        before = earlier.get(s.name, {})
        entry = {
            "status": s.status,
            "error": s.error,
            "wall_s": round(s.wall_s, 2),
            "stage": s.stage,
            "run_id": s.run_id,
            "compute_s": round(
                s.compute_s
                if s.compute_s is not None
                else before.get("compute_s", 0.0) + (s.wall_s if s.status != "done" else 0.0),
                2,
            ),
            "method": s.method,
            "task": s.task,
        }
        if s.status in ("failed", "blocked") and not s.run_id and before.get("run_id"):
            entry["run_id"] = before["run_id"]
        info[s.name] = entry
    return {
        "results_hash": results_hash,
        "steps": info,
        "stage_wall_s": {k: round(v, 1) for k, v in wall.items()},
    }


# Per stage, the summed compute of plan_status.json (in state: the report reads it too).
stage_compute = state.stage_compute


def read_status(cfg: Config) -> dict:
    """``plan_status.json`` of ``cfg``'s profile, or {} before the first plan."""
    status_file = cfg.profile_dir / "plan_status.json"
    return read_json(status_file) if status_file.is_file() else {}


def _write_status(cfg: Config, steps: list[Step], base: dict | None) -> dict:
    """Merge ``steps`` into ``plan_status.json`` and write it (the report lock held).

    ``base``: the file as this invocation found it when it started (None: as it is now). A
    step's entry is merged onto ``base``, so that recording after every step never adds one
    invocation's compute twice; what other invocations of the same configuration recorded
    meanwhile (steps this one did not run, or found done) is kept from the file as it is now.
    """
    current = read_status(cfg)
    status = merge_status(
        current if base is None else base, steps, stage_walls(steps), cfg.results_hash()
    )
    if base is not None and current.get("results_hash") == status["results_hash"]:
        mine = {s.name for s in steps if s.status != "pending"}
        for name, entry in current.get("steps", {}).items():
            if name not in mine:
                status["steps"][name] = entry
    atomic_write_json(cfg.profile_dir / "plan_status.json", status)
    return status


def record_status(cfg: Config, steps: list[Step], base: dict) -> dict:
    """Write ``plan_status.json`` now (after each step, so that a kill loses at most the step
    it interrupted; see :func:`_write_status` for ``base``). Returns the status."""
    with state.report_lock(cfg):
        return _write_status(cfg, steps, base)


def finish(
    cfg: Config, tracker: Tracker, steps: list[Step], base: dict | None = None
) -> tuple[dict, dict]:
    """Record the plan in ``plan_status.json`` (see :func:`merge_status` and, for ``base``,
    :func:`record_status`) and build the report from exactly its runs. Returns (the status,
    report file name -> path).

    Two finishing plans of one configuration (two report jobs) take turns, so neither loses
    the other's steps from ``plan_status.json``. A plan without probe results (``--only
    pretrain``, or every probe failed) has nothing to report: no report, an empty dict of
    paths. Raises :class:`~benchmark.errors.StageError` when the report cannot be built (the
    status is written first).
    """
    from benchmark.pipeline.report import make_report

    status_file = cfg.profile_dir / "plan_status.json"
    with state.report_lock(cfg):
        status = _write_status(cfg, steps, base)
        if not any(s.stage == "probe" and s.status in ("ran", "done") for s in steps):
            log.info("no probe results in this plan: no report")
            return status, {}
        t0 = time.perf_counter()
        paths = make_report(cfg, tracker, plan_status=status)
        status["stage_wall_s"]["report"] = round(time.perf_counter() - t0, 1)
        atomic_write_json(status_file, status)
    return status, paths


@dataclass(frozen=True)
class StepState:
    """What :func:`step_states` says of a step: ``state`` done | queued | running | stale |
    failed | cancelled | to do, and where or why (a Slurm job, a host and pid, an error)."""

    name: str
    state: str
    detail: str = ""


def step_states(ctx: Context, steps: list[Step]) -> list[StepState]:
    """The state of every step, from what each executor leaves behind (writes nothing).

    In this order: a Slurm job recorded for the step that is queued or running; the step's
    record (done, or failed with its error); a holder of its lock not known dead (a local or
    pool run: running with the age of its heartbeat, or stale when that is older than
    ``executor.lock_stale_s``: a run on another host that died, whose lock the next run of
    the step takes over); a Slurm job that ended without a record (cancelled: by hand or because a step it needs
    failed; failed: time limit, node failure, ...); for tracked steps without a record, a
    FINISHED MLflow run with the step's tags under this configuration (earlier plans). A
    tracked step's run counts only while it is current: under this configuration, and for a
    tune or probe, of the task as its task file says now (an edited task is to do again).
    ``ctx.tracker`` None (no store yet): nothing tracked is done.
    """
    from benchmark.pipeline import slurm
    from methods import get_method

    cfg, tracker = ctx.cfg, ctx.tracker
    submitted = state.read_jobs(cfg)
    live = slurm.job_states([v["job"] for v in submitted.values()]) if submitted else {}
    wanted = cfg.results_hash()
    identity = {t: stages.get_task(ctx, t).identity for t in {s.task for s in steps if s.task}}

    def current(run) -> bool:
        tags = run.data.tags
        if tags.get("results_hash", wanted) != wanted:
            return False
        kinds = ("tune", "probe", "probe-snapshot")
        if tags.get("bench.kind") in kinds and tags.get("task") in identity:
            return tags.get("task_identity", "") == identity[tags["task"]]
        return True

    runs = [
        r
        for r in (tracker.runs() if tracker is not None and tracker.experiment_id else [])
        if r.info.status == "FINISHED" and current(r)
    ]
    finished_ids = {r.info.run_id for r in runs}
    seen = {_tracked_name(r.data.tags) for r in runs}
    held = state.held_steps(cfg)
    out = []
    for s in steps:
        record = state.read_record(cfg, s.name)
        job = submitted.get(s.name, {}).get("job", "")
        job_state = live.get(job, "")
        lock, holder = held.get(s.name, (None, None))
        if job_state in slurm.QUEUED | slurm.RUNNING:
            where = f"job {job}" + (
                f" ({job_state})" if job_state not in ("PENDING", "RUNNING") else ""
            )
            found = StepState(s.name, "queued" if job_state in slurm.QUEUED else "running", where)
        elif (
            record
            and record["status"] in SUCCEEDED
            and (s.stage not in TRACKED or not record["run_id"] or record["run_id"] in finished_ids)
        ):
            found = StepState(s.name, "done", f"job {record['job']}" if record["job"] else "")
        elif holder is not None and not known_dead(holder):
            found = _held_state(s.name, lock, holder)
        elif record and record["status"] == "failed":
            found = StepState(s.name, "failed", record["error"])
        elif job_state == "CANCELLED":
            found = StepState(
                s.name, "cancelled", f"job {job}: cancelled, or a step it needs failed"
            )
        elif job_state in slurm.FAILED:
            found = StepState(s.name, "failed", f"job {job} {job_state}")
        elif s.stage in TRACKED and s.name in seen:
            found = StepState(s.name, "done", "found in MLflow")
        elif s.name.startswith("pretrain:") and getattr(get_method(s.method), "external", False):
            found = StepState(s.name, "to do", "an external encoder: nothing to pre-train")
        elif s.name.startswith("snapshot:"):
            found = StepState(
                s.name, "to do", "checked when run (a kept snapshot with batch-norm statistics)"
            )
        else:
            found = StepState(s.name, "to do", "" if s.stage in TRACKED else "checked when run")
        out.append(found)
    return out


def _held_state(name: str, lock: StepLock, holder: Owner) -> StepState:
    """A step whose lock ``holder`` holds: running, or stale when its heartbeat is older than
    the lock's ``stale_s`` (by this machine's clock: approximate across machines)."""
    age = lock.heartbeat_age(holder)
    if age is not None and age > lock.stale_s:
        return StepState(
            name,
            "stale",
            f"{holder.describe()}: no heartbeat for {_duration(age)} (the step's next run "
            "takes its lock over)",
        )
    beat = "" if age is None else f", heartbeat {_duration(age)} ago"
    return StepState(name, "running", holder.describe() + beat)


def _duration(seconds: float) -> str:
    """``12 s``, ``20 min``, ``3 h``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.0f} h"


def _tracked_name(t: dict) -> str:
    """The step name of a tracked MLflow run, from its tags."""
    kind = t.get("bench.kind")
    if kind == "pretrain":
        return step_name("pretrain", t.get("method"), t.get("seed"))
    if kind == "tune":
        return step_name("tune", t.get("method"), t.get("pretrain_seed", 0), t.get("task"))
    if kind == "probe":
        return step_name(
            "probe", t.get("method"), t.get("pretrain_seed"), t.get("task"), t.get("probe_seed")
        )
    if kind == "probe-snapshot":
        return (
            f"probe@{t.get('pretrain_step')}:{t.get('method')}:s{t.get('pretrain_seed')}:"
            f"{t.get('task')}:p{t.get('probe_seed')}"
        )
    return ""


def status_lines(states: list[StepState]) -> list[str]:
    """A table of the steps and a summary line, for ``status`` and ``run --dry-run``."""
    lines = [f"{s.name:50s} {s.state:9s} {s.detail}".rstrip() for s in states]
    counts: dict[str, int] = {}
    for s in states:
        counts[s.state] = counts.get(s.state, 0) + 1
    order = ("done", "running", "stale", "queued", "failed", "cancelled", "to do")
    lines.append(
        f"{len(states)} steps: " + ", ".join(f"{counts[k]} {k}" for k in order if k in counts)
    )
    return lines
