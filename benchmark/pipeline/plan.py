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
    status: str = "pending"  # pending | done | ran | failed | blocked
    error: str = ""
    wall_s: float = 0.0
    run_id: str = ""  # the MLflow run of a tracked step (pretrain, probe)


def build_plan(ctx: Context, methods=None, tasks=None, only=None) -> list[Step]:
    """The steps of ``ctx``'s profile (narrowed to ``methods``, ``tasks`` and the stages
    ``only``), in dependency order. Raises ``ValueError`` for an unknown method or task."""
    from methods import get_method
    from tasks import get_task

    cfg = ctx.cfg

    method_names = list(methods or cfg.benchmark.methods)
    task_names = list(tasks or cfg.benchmark.tasks)
    for m in method_names:
        get_method(m)
    for t in task_names:
        get_task(t)
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

    steps.append(Step("data", "data", lambda: stages.data_paths(ctx)))
    corpora = sorted({get_task(t).corpus for t in task_names} | {"mtat"})
    for corpus in corpora:
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
                ["features:mtat"],
            )
        )
    models: dict[tuple[str, int], PretrainedModel] = {}
    first = min(cfg.pretrain.seeds)  # the run each method is tuned on (probing.tuning_model)
    for m in method_names:
        method = get_method(m)
        for seed in cfg.pretrain.seeds:
            deps = ["features:mtat"] + ([f"separate:{method.separator}"] if method.sources else [])

            def _pre(m=m, seed=seed):
                model = models[(m, seed)] = stages.run_pretrain(ctx, m, seed)
                return stages.Outcome("done" if model.cached else "ran", model.run_id)

            steps.append(Step(f"pretrain:{m}:s{seed}", "pretrain", _pre, deps))
            if method.sources:
                # The separator's measured quality, logged into the run (separator study).
                steps.append(
                    Step(
                        f"quality:{m}:s{seed}",
                        "separate",
                        lambda m=m, seed=seed: studies.record_separator_quality(
                            ctx, models[(m, seed)]
                        ),
                        [f"pretrain:{m}:s{seed}"],
                    )
                )
        for t in task_names:
            task = get_task(t)
            if tune:
                steps.append(
                    Step(
                        f"tune:{m}:{t}",
                        "tune",
                        lambda m=m, task=task: (
                            "done"
                            if probing.run_tune(ctx, models[(m, first)], task).get("cached")
                            else "ran"
                        ),
                        [f"pretrain:{m}:s{first}", f"features:{task.corpus}"],
                    )
                )
            for seed in cfg.pretrain.seeds:
                probe_deps = [f"pretrain:{m}:s{seed}", f"features:{task.corpus}"]
                if tune:
                    probe_deps += [f"pretrain:{m}:s{first}", f"tune:{m}:{t}"]
                for ps in cfg.probe.seeds:
                    steps.append(
                        Step(
                            f"probe:{m}:s{seed}:{t}:p{ps}",
                            "probe",
                            lambda m=m, seed=seed, task=task, ps=ps: probing.run_probe(
                                ctx, models[(m, seed)], task, ps, tuned_from=models[(m, first)]
                            ),
                            probe_deps,
                        )
                    )
    for m in converging:
        steps += _snapshot_steps(ctx, m, task_names, snapshot_steps, models, first, tune)
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


def _snapshot_steps(ctx, m, task_names, at, models, first, tune) -> list[Step]:
    """The convergence study's steps for method ``m``: each run's encoder at each snapshot
    step, probed on every task with the method's tuned parameters (tuned once, on its final
    encoder: the study varies the encoder only)."""
    from tasks import get_task

    cfg = ctx.cfg
    snapshots: dict[tuple[int, int], PretrainedModel] = {}
    out: list[Step] = []
    for seed in cfg.pretrain.seeds:
        for step in at:
            name = f"snapshot:{m}:s{seed}:@{step}"

            def _snap(seed=seed, step=step):
                snapshots[(seed, step)] = studies.snapshot_model(ctx, models[(m, seed)], step)
                return "done"

            out.append(Step(name, "pretrain", _snap, [f"pretrain:{m}:s{seed}"]))
            for t in task_names:
                task = get_task(t)
                deps = [name, f"features:{task.corpus}", f"pretrain:{m}:s{first}"]
                deps += [f"tune:{m}:{t}"] if tune else []
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
                        )
                    )
    return out


def execute(steps: list[Step]) -> dict[str, float]:
    """Run the steps in order; a failure blocks its dependants only. Returns wall time per stage."""
    by_name = {s.name: s for s in steps}
    wall: dict[str, float] = {}
    for step in steps:
        blocked = [d for d in step.deps if by_name[d].status in ("failed", "blocked")]
        if blocked:
            step.status, step.error = "blocked", f"needs {', '.join(blocked)}"
            log.warning("skipping %s: %s", step.name, step.error)
            continue
        t0 = time.perf_counter()
        try:
            result = step.run()
            if isinstance(result, stages.Outcome):
                step.status, step.run_id = result.status, result.run_id or ""
            else:
                step.status = "done" if result == "done" else "ran"
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # isolate: one failing step must not stop the others
            step.status, step.error = "failed", f"{type(exc).__name__}: {exc}"
            log.error("step %s failed: %s", step.name, step.error)
            log.debug("%s", traceback.format_exc())
        step.wall_s = time.perf_counter() - t0
        wall[step.stage] = wall.get(step.stage, 0.0) + step.wall_s
    return wall


def merge_status(previous: dict, steps: list[Step], wall: dict, results_hash: str) -> dict:
    """The ``plan_status.json`` after running ``steps``: each step's status and MLflow run.

    A plan of the same configuration (``results_hash``: another ``--methods``, an added
    ablation) adds to the steps of the earlier plans, replacing those it reran; a plan of
    another configuration starts afresh, so the report never mixes configurations.
    """
    info = {
        s.name: {
            "status": s.status,
            "error": s.error,
            "wall_s": round(s.wall_s, 2),
            "stage": s.stage,
            "run_id": s.run_id,
        }
        for s in steps
    }
    if previous.get("results_hash") == results_hash:
        info = {**previous.get("steps", {}), **info}
    return {
        "results_hash": results_hash,
        "steps": info,
        "stage_wall_s": {k: round(v, 1) for k, v in wall.items()},
    }


def plan_status(steps: list[Step], tracker: Tracker, cfg: Config) -> list[str]:
    """Lines for ``--dry-run``: every step and whether MLflow already holds its finished run.

    Tracked steps (pretrain, tune, probe) are looked up by their tags under this configuration
    (``results_hash``: the methods and tasks listed do not matter);
    the cache stages (data, features, separate) are content-keyed on disk and report
    "checked when run" (a finished one costs seconds).
    """
    wanted = cfg.results_hash()
    finished = [
        r
        for r in tracker.runs()
        if r.info.status == "FINISHED" and r.data.tags.get("results_hash", wanted) == wanted
    ]
    seen = set()
    for r in finished:
        t = r.data.tags
        kind = t.get("bench.kind")
        if kind == "pretrain":
            seen.add(f"pretrain:{t.get('method')}:s{t.get('seed')}")
        elif kind == "tune":
            seen.add(f"tune:{t.get('method')}:{t.get('task')}")
        elif kind == "probe":
            seen.add(
                f"probe:{t.get('method')}:s{t.get('pretrain_seed')}:{t.get('task')}:p{t.get('probe_seed')}"
            )
        elif kind == "probe-snapshot":
            seen.add(
                f"probe@{t.get('pretrain_step')}:{t.get('method')}:s{t.get('pretrain_seed')}:"
                f"{t.get('task')}:p{t.get('probe_seed')}"
            )
    lines, left = [], 0
    for s in steps:
        if s.stage in ("pretrain", "tune", "probe"):
            if s.stage == "pretrain" and s.name.split(":")[1] == "random_init":
                state = "no training: batch-norm statistics only, checked when run"
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
