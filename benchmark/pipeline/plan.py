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
from benchmark.pipeline import probing, stages
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
        for t in task_names:
            task = get_task(t)
            if tune:
                steps.append(
                    Step(
                        f"tune:{m}:{t}",
                        "tune",
                        lambda m=m, task=task: _tune_outcome(
                            probing.run_tune(ctx, models[(m, first)], task)
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
    if only:
        wanted = set(only)
        steps = [s for s in steps if s.stage in wanted or s.stage in ("data",)]
        names = {s.name for s in steps}
        for s in steps:
            s.deps = [d for d in s.deps if d in names]
    return steps


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
    lines, left = [], 0
    for s in steps:
        if s.stage in ("pretrain", "tune", "probe"):
            if s.stage == "pretrain" and s.name.split(":")[1] == "random_init":
                state = "no training: batch-norm statistics only, checked when run"
            else:
                state = "done" if s.name in seen else "to do"
                left += state == "to do"
        else:
            state = "checked when run"
        lines.append(f"{s.name:50s} {state}")
    lines.append(f"{len(steps)} steps, {left} tracked steps left to run")
    return lines
