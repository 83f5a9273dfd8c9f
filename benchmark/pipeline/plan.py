"""The run plan of ``make benchmark``: every step of a profile, resumable, failure-isolated.

Steps run in dependency order. Each step is content-keyed by the stage it calls, so a rerun
after Ctrl-C or a kill skips what is finished. A failing step is reported, its dependants
are skipped, the independent ones still run, and the report lists what is missing.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

from benchmark.config import Config
from benchmark.pipeline import probing, stages, studies
from benchmark.pipeline.context import Context
from benchmark.pipeline.tracking import Tracker
from benchmark.pretrain.loop import PretrainedModel

log = logging.getLogger(__name__)


@dataclass
class Step:
    name: str
    stage: str  # data | features | separate | pretrain | tune | probe | report
    run: Callable[[], object]
    deps: list[str] = field(default_factory=list)
    status: str = "pending"  # pending | checked (a cache stage) | done | ran | failed | blocked
    error: str = ""
    wall_s: float = 0.0
    run_id: str = ""  # the MLflow run of a tracked step (pretrain, tune, probe)
    method: str = ""  # pretrain, tune, probe: the method (names may hold ':', e.g. hear:x)
    task: str = ""  # tune, probe: the task


def step_name(stage: str, method: str, seed: int, task: str = "", probe_seed=None) -> str:
    """The name of a tracked step: ``pretrain:<method>:s<seed>``, ``tune:...:<task>``,
    ``probe:...:<task>:p<probe seed>``."""
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


def build_plan(ctx: Context, methods=None, tasks=None, only=None) -> list[Step]:
    """The steps of ``ctx``'s profile (narrowed to ``methods``, ``tasks`` and the stages
    ``only``), in dependency order. Raises ``ValueError`` for an unknown method or task."""
    from methods import get_method

    cfg = ctx.cfg

    method_names = list(methods or cfg.benchmark.methods)
    task_names = list(tasks or stages.planned_tasks(ctx))
    for m in method_names:
        get_method(m)
    for t in task_names:
        stages.get_task(ctx, t)
    steps: list[Step] = []
    # The convergence study (benchmark.convergence_methods): snapshots of these methods' runs.
    # (A method without pre-training has no snapshots: the same encoder at every step.)
    converging = [
        m
        for m in cfg.benchmark.convergence_methods
        if m in method_names and get_method(m).pretrained
    ]
    snapshot_steps = snapshot_steps_of(cfg) if converging else []
    # Probes use ``probe.params``: the paper's learning rates ("default") or the best Optuna
    # trial ("tuned", equal budget per method), which needs the tune steps.
    tune = cfg.benchmark.tune or cfg.probe.params == "tuned"
    trains = any(get_method(m).pretrained for m in method_names)
    pre_corpus = stages.pretrain_corpus(cfg)

    # The synthetic corpus is generated (or the real roots are checked) only when a registered
    # task or MTAT pre-training reads it.
    builtin = stages.needs_builtin_data(ctx, task_names, trains)
    steps.append(Step("data", "data", lambda: stages.data_paths(ctx) if builtin else "done"))
    corpora = {stages.get_task(ctx, t).corpus for t in task_names}
    corpora |= {pre_corpus} if trains else set()
    for corpus in sorted(corpora):
        steps.append(
            Step(
                f"features:{corpus}",
                "features",
                lambda c=corpus: stages.mixture_store(ctx, c),
                ["data"],
            )
        )
    separators = sorted({get_method(m).separator for m in method_names if get_method(m).sources})
    for sep in separators:
        steps.append(
            Step(
                f"separate:{sep}",
                "separate",
                lambda s=sep: stages.source_store(ctx, s),
                [f"features:{pre_corpus}"],
            )
        )
    models: dict[tuple[str, int], PretrainedModel] = {}
    for m in method_names:
        method = get_method(m)
        for seed in pretrain_seeds(cfg, method):
            deps = [f"features:{pre_corpus}"] if method.pretrained else ["data"]
            deps += [f"separate:{method.separator}"] if method.sources else []

            def _pre(m=m, seed=seed):
                model = models[(m, seed)] = stages.run_pretrain(ctx, m, seed)
                return stages.Outcome("done" if model.cached else "ran", model.run_id)

            steps.append(Step(step_name("pretrain", m, seed), "pretrain", _pre, deps, method=m))
            if method.sources:
                # The separator's measured quality, logged into the run (separator study).
                steps.append(
                    Step(
                        f"quality:{m}:s{seed}",
                        "separate",
                        lambda m=m, seed=seed: studies.record_separator_quality(
                            ctx, models[(m, seed)]
                        ),
                        [step_name("pretrain", m, seed)],
                        method=m,
                    )
                )
        first = min(pretrain_seeds(cfg, method))  # the run it is tuned on (probing.tuning_model)
        for t in task_names:
            task = stages.get_task(ctx, t)
            tune_name = step_name("tune", m, first, t)
            if tune:
                steps.append(
                    Step(
                        tune_name,
                        "tune",
                        lambda m=m, task=task, first=first: _tune_outcome(
                            probing.run_tune(ctx, models[(m, first)], task)
                        ),
                        [step_name("pretrain", m, first), f"features:{task.corpus}"],
                        method=m,
                        task=t,
                    )
                )
            for seed in pretrain_seeds(cfg, method):
                probe_deps = [step_name("pretrain", m, seed), f"features:{task.corpus}"]
                if tune:
                    probe_deps += [step_name("pretrain", m, first), tune_name]
                for ps in cfg.probe.seeds:
                    steps.append(
                        Step(
                            step_name("probe", m, seed, t, ps),
                            "probe",
                            lambda m=m, seed=seed, task=task, ps=ps, first=first: probing.run_probe(
                                ctx, models[(m, seed)], task, ps, tuned_from=models[(m, first)]
                            ),
                            probe_deps,
                            method=m,
                            task=t,
                        )
                    )
    for m in converging:
        steps += _snapshot_steps(ctx, m, task_names, snapshot_steps, models, tune)
    if only:
        wanted = set(only)
        steps = [s for s in steps if s.stage in wanted or s.stage in ("data",)]
        names = {s.name for s in steps}
        for s in steps:
            s.deps = [d for d in s.deps if d in names]
    return steps


def snapshot_steps_of(cfg: Config) -> list[int]:
    from benchmark.pretrain.loop import snapshot_steps

    return snapshot_steps(cfg.pretrain)


def _snapshot_steps(ctx, m, task_names, at, models, tune) -> list[Step]:
    """The convergence study's steps for method ``m``: each run's encoder at each snapshot
    step, probed on every task with the method's tuned parameters (tuned once, on its final
    encoder: the study varies the encoder only)."""
    from methods import get_method

    cfg = ctx.cfg
    first = min(pretrain_seeds(cfg, get_method(m)))
    snapshots: dict[tuple[int, int], PretrainedModel] = {}
    out: list[Step] = []
    for seed in pretrain_seeds(cfg, get_method(m)):
        for step in at:
            name = f"snapshot:{m}:s{seed}:@{step}"

            def _snap(seed=seed, step=step):
                snapshots[(seed, step)] = studies.snapshot_model(ctx, models[(m, seed)], step)
                return "done"

            out.append(Step(name, "pretrain", _snap, [step_name("pretrain", m, seed)], method=m))
            for t in task_names:
                task = stages.get_task(ctx, t)
                deps = [name, f"features:{task.corpus}", step_name("pretrain", m, first)]
                deps += [step_name("tune", m, first, t)] if tune else []
                for ps in cfg.probe.seeds:
                    out.append(
                        Step(
                            f"probe@{step}:{m}:s{seed}:{t}:p{ps}",
                            "probe",
                            lambda seed=seed, step=step, task=task, ps=ps: probing.run_probe(
                                ctx,
                                snapshots[(seed, step)],
                                task,
                                ps,
                                tuned_from=models[(m, first)],
                                snapshot_step=step,
                            ),
                            deps,
                            method=m,
                            task=t,
                        )
                    )
    return out


def _tune_outcome(out: dict) -> stages.Outcome:
    return stages.Outcome("done" if out["cached"] else "ran", out["run_id"])


def execute(steps: list[Step], on_step: Callable[[Step], None] | None = None) -> dict[str, float]:
    """Run the steps in order; a failure blocks its dependants only. ``on_step(step)`` is
    called after each step (e.g. to record it at once). Returns wall time per stage.

    A step's status: "done" (found finished) or "ran" for tracked steps, "checked" for the
    cache stages (data, features, separate: built now or found built), "failed", "blocked".
    """
    by_name = {s.name: s for s in steps}
    wall: dict[str, float] = {}
    for step in steps:
        blocked = [d for d in step.deps if by_name[d].status in ("failed", "blocked")]
        if blocked:
            step.status, step.error = "blocked", f"needs {', '.join(blocked)}"
            log.warning("skipping %s: %s", step.name, step.error)
        else:
            t0 = time.perf_counter()
            try:
                result = step.run()
                if isinstance(result, stages.Outcome):
                    step.status, step.run_id = result.status, result.run_id or ""
                else:
                    step.status = result if result in ("done", "ran") else "checked"
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # isolate: one failing step must not stop the others
                step.status, step.error = "failed", f"{type(exc).__name__}: {exc}"
                log.error("step %s failed: %s", step.name, step.error)
                log.debug("%s", traceback.format_exc())
            step.wall_s = time.perf_counter() - t0
            wall[step.stage] = wall.get(step.stage, 0.0) + step.wall_s
        if on_step is not None:
            on_step(step)
    return wall


def merge_status(previous: dict, steps: list[Step], wall: dict, results_hash: str) -> dict:
    """The ``plan_status.json`` after running ``steps``: each step's status and MLflow run.

    A plan of the same configuration (``results_hash``: another ``--methods``, an added
    ablation, a rerun) adds to the steps of the earlier plans, replacing those it ran (steps
    still pending keep their earlier entry); a plan of another configuration starts afresh,
    so the report never mixes configurations. A step that failed or was blocked keeps the
    run of its last good result (the report shows it and lists the step as failed or
    blocked). ``compute_s`` sums a step's wall time over the invocations that ran or checked
    it (not those that found it done): the compute behind its result.
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
                before.get("compute_s", 0.0) + (s.wall_s if s.status != "done" else 0.0), 2
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


def stage_compute(status: dict) -> dict[str, float]:
    """Per stage, the summed ``compute_s`` of its steps in ``plan_status.json``."""
    total: dict[str, float] = {}
    for entry in status.get("steps", {}).values():
        stage = entry.get("stage", "?")
        total[stage] = total.get(stage, 0.0) + float(entry.get("compute_s", entry.get("wall_s", 0)))
    return {k: round(v, 1) for k, v in total.items()}


def plan_status(
    steps: list[Step], tracker: Tracker | None, cfg: Config, task_identity: dict | None = None
) -> list[str]:
    """Lines for ``--dry-run``: every step and whether MLflow already holds its finished run
    (``tracker`` None: no store exists yet, nothing is done). ``task_identity``: task ->
    :attr:`Task.identity`; a run of an edited task file is not done.

    Tracked steps (pretrain, tune, probe) are looked up by their tags under this configuration
    (``results_hash``: the methods and tasks listed do not matter);
    the cache stages (data, features, separate) are content-keyed on disk and report
    "checked when run" (a finished one costs seconds).
    """
    from methods import get_method

    wanted = cfg.results_hash()
    finished = [
        r
        for r in (tracker.runs() if tracker is not None else [])
        if r.info.status == "FINISHED" and r.data.tags.get("results_hash", wanted) == wanted
    ]
    seen = set()
    identity = task_identity or {}
    for r in finished:
        t = r.data.tags
        kind = t.get("bench.kind")
        if kind in ("tune", "probe") and t.get("task_identity", "") != identity.get(
            t.get("task"), ""
        ):
            continue  # the task file changed since: its results are not this plan's
        if kind == "pretrain":
            seen.add(step_name("pretrain", t.get("method"), t.get("seed")))
        elif kind == "tune":
            seen.add(step_name("tune", t.get("method"), t.get("pretrain_seed", 0), t.get("task")))
        elif kind == "probe":
            seen.add(
                step_name(
                    "probe",
                    t.get("method"),
                    t.get("pretrain_seed"),
                    t.get("task"),
                    t.get("probe_seed"),
                )
            )
        elif kind == "probe-snapshot":
            seen.add(
                f"probe@{t.get('pretrain_step')}:{t.get('method')}:s{t.get('pretrain_seed')}:"
                f"{t.get('task')}:p{t.get('probe_seed')}"
            )
    lines, left = [], 0
    for s in steps:
        if s.stage in ("pretrain", "tune", "probe"):
            if s.stage == "pretrain" and getattr(get_method(s.method), "external", False):
                state = "nothing to do (an external encoder is not pre-trained)"
            elif s.name.startswith("snapshot:"):
                state = "a kept snapshot with batch-norm statistics, checked when run"
            else:
                state = "done" if s.name in seen else "to do"
                left += state == "to do"
        else:
            state = "checked when run"
        lines.append(f"{s.name:50s} {state}")
    lines.append(f"{len(steps)} steps, {left} tracked steps left to run")
    return lines
