"""The sub-commands of ``python -m benchmark``; each is a thin wrapper over a stage module.

:data:`COMMANDS` maps a name to its :class:`Command` (help, arguments, function), like the
method and task registries: a plain dict, no registration by import side effect. Each
function takes ``(args, cfg)`` and returns an exit status (None = 0); the pipeline is imported
inside the functions, so ``--help`` and ``config`` start fast.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmark.errors import UserError


@dataclass(frozen=True)
class Command:
    """A sub-command: its one-line help, a function adding its options to its parser, and
    ``fn(args, cfg) -> exit status or None``."""

    help: str
    add_args: Callable[[argparse.ArgumentParser], None]
    fn: Callable[[argparse.Namespace, object], int | None]


def _no_args(p: argparse.ArgumentParser) -> None:
    pass


def _context(cfg):
    from benchmark.pipeline.context import open_context

    return open_context(cfg)


def _method_arg(p):
    p.add_argument("--method", required=True, help="a registered method (see `list`)")


def _task_arg(p, required=True):
    p.add_argument("--task", required=required, help="a registered task (see `list`)")


def _seeds(text: str | None, default):
    if not text:
        return tuple(default)
    from benchmark.config import _parse_sequence

    return tuple(int(s) for s in _parse_sequence("--seeds", text, int))


def _checked(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def _data_lines(cfg, task_names=None, method_names=None) -> list[str]:
    from benchmark.pipeline.stages import describe_data

    return _checked(describe_data, cfg, task_names, method_names)


def cmd_config(args, cfg):
    print(json.dumps({"hash": cfg.hash(), "config": cfg.to_dict()}, indent=2))
    print("data this configuration uses:")
    for line in _data_lines(cfg):
        print(f"  {line}")


def cmd_list(args, cfg):
    from methods import METHODS
    from tasks import all_tasks

    print("methods:")
    for name, m in METHODS.items():
        what = (
            "no pre-training"
            if not m.pretrained
            else (
                f"sources {','.join(m.sources)} from {m.separator}"
                if m.sources
                else "mixture crops"
            )
        )
        print(f"  {name:26s} loss={m.loss:8s} {what}")
    print("  hear:<module>              external encoder: any installed HEAR-API module")
    print("tasks:")
    for name, t in _checked(all_tasks, cfg.benchmark.task_files).items():
        where = f" (task file {t.declared_in})" if t.declared_in else ""
        print(
            f"  {name:26s} corpus={t.corpus:7s} probe={t.probe_kind:6s} "
            f"metrics={','.join(t.metrics)}{where}"
        )


def _synth_args(p):
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--size", default="smoke", help="smoke | default | <number of MTAT-like clips>")
    p.add_argument("--seed", type=int, default=0)


def cmd_synth(args, cfg):
    from benchmark.data.synth import generate

    size = int(args.size) if args.size.isdigit() else args.size
    if size not in ("smoke", "default") and not isinstance(size, int):
        raise UserError(f"--size must be smoke, default or a number, got {args.size!r}")
    manifest = generate(Path(args.out), size, args.seed, workers=cfg.data.num_workers)
    print(json.dumps({k: v for k, v in manifest.items() if k != "clips"}, indent=2, default=str))


def _split(text: str | None) -> list[str] | None:
    return [x.strip() for x in text.split(",") if x.strip()] if text else None


def _features_args(p):
    p.add_argument(
        "--tasks",
        default=None,
        help="comma-separated tasks whose corpora to build (default: the profile's tasks and "
        "task files); the pre-training corpus is always built",
    )


def cmd_features(args, cfg):
    from benchmark.pipeline import stages
    from benchmark.pipeline.context import Context

    ctx = Context(cfg)  # nothing here is tracked
    names = _split(args.tasks) or _checked(stages.planned_tasks, ctx)
    corpora = {_checked(stages.get_task, ctx, t).corpus for t in names}
    for corpus in sorted(corpora | {stages.pretrain_corpus(cfg)}):
        store = stages.mixture_store(ctx, corpus)
        rep = store.report()
        print(
            f"{corpus}: {len(store)} clips in {store.root} ({rep['num_bad']} skipped, of which "
            f"{rep.get('num_missing', 0)} missing or empty files)"
        )


def cmd_train_separator(args, cfg):
    from benchmark.pipeline import stages

    out = stages.train_separator_stage(_context(cfg))
    print(
        json.dumps(
            {"model_dir": str(out), **json.loads((out / "quality.json").read_text())},
            indent=2,
            default=str,
        )
    )


def _separate_args(p):
    p.add_argument(
        "--separator",
        default=None,
        help="umx | oracle | random_mask | trained:<fraction> (default: config)",
    )


def cmd_separate(args, cfg):
    from dataclasses import replace

    from benchmark.pipeline import stages
    from benchmark.separation.sources import source_activity

    sep = args.separator or cfg.separation.separator
    if sep in ("random_mask", "oracle") or sep.startswith(stages.TRAINED_SEPARATOR + ":"):
        store = stages.source_store(_context(cfg), sep)  # a method's separator spec
    else:
        cfg = replace(cfg, separation=replace(cfg.separation, separator=sep))
        store = stages.source_store(_context(cfg), "config")
    print(
        json.dumps(
            {
                "store": str(store.root),
                "activity": source_activity(store),
                "report": store.report(),
            },
            indent=2,
        )
    )


def _pretrain_args(p):
    _method_arg(p)
    p.add_argument(
        "--seed", type=int, default=None, help="pre-training seed (default: pretrain.seeds)"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="only resume an unfinished run, fail if there is none (without the flag an "
        "unfinished run of the same config is resumed too, and a new one started otherwise)",
    )


def cmd_pretrain(args, cfg):
    from benchmark.pipeline import stages

    seeds = [args.seed] if args.seed is not None else cfg.pretrain.seeds
    ctx = _context(cfg)
    for seed in seeds:
        model = _checked(
            stages.run_pretrain,
            ctx,
            args.method,
            seed,
            build_sources=False,
            resume_only=args.resume,
        )
        what = "" if model.run_id else " (no pre-training: initial weights, batch-norm statistics)"
        print(f"{args.method} seed {seed}: {model.final_path}{what}")


def _task_and_models(args, cfg):
    """The context, ``--task``, and ``--method``'s model for every pre-training seed (trained
    now if not finished; the sources of a source-pairing method must have been separated)."""
    from benchmark.pipeline import stages

    ctx = _context(cfg)
    task = _checked(stages.get_task, ctx, args.task)
    # A generator: each seed's model is made when its turn comes (its probes run before the
    # next seed trains).
    models = (
        (seed, _checked(stages.run_pretrain, ctx, args.method, seed, build_sources=False))
        for seed in cfg.pretrain.seeds
    )
    return ctx, task, models


def _probe_args(p):
    _method_arg(p)
    _task_arg(p)
    p.add_argument("--seeds", default=None, help="probe seeds, e.g. 0-4 (default: probe.seeds)")
    p.add_argument("--force", action="store_true", help="rerun finished probe runs")


def cmd_probe(args, cfg):
    from benchmark.pipeline import probing

    ctx, task, models = _task_and_models(args, cfg)
    for pseed, model in models:
        for seed in _seeds(args.seeds, cfg.probe.seeds):
            out = probing.run_probe(ctx, model, task, seed, force=args.force)
            print(
                f"{args.method} {task.name} pretrain seed {pseed} probe seed {seed}: "
                f"{out.status} (MLflow run {out.run_id})"
            )


def _tune_args(p):
    _method_arg(p)
    _task_arg(p)


def cmd_tune(args, cfg):
    from benchmark.pipeline import probing

    ctx, task, models = _task_and_models(args, cfg)
    for pseed, model in models:  # every pre-training run its own search (probing.run_tune)
        out = probing.run_tune(ctx, model, task)
        print(
            json.dumps(
                {
                    "pretrain_seed": pseed,
                    "best_params": out["best_params"],
                    "best_value": out["best_value"],
                },
                indent=2,
            )  # fmt: skip
        )


def _report_args(p):
    p.add_argument("--tracking-uri", default=None, help="read results from this MLflow store")
    p.add_argument("--out", default=None, help="output folder (default runs/<profile>/report)")
    p.add_argument(
        "--all-runs",
        action="store_true",
        help="read the newest run of every result, not only the last plan's (implied by "
        "--tracking-uri)",
    )


def cmd_report(args, cfg):
    from dataclasses import replace

    from benchmark.pipeline import state
    from benchmark.pipeline.executors import steps_from_records
    from benchmark.pipeline.plan import finish
    from benchmark.pipeline.report import make_report

    if args.tracking_uri:
        cfg = replace(cfg, paths=replace(cfg.paths, tracking_uri=args.tracking_uri))
    tracker = _context(cfg).tracker
    plan = state.submitted_plan(cfg)
    if plan is not None and not (args.all_runs or args.tracking_uri or args.out):
        # A plan submitted to Slurm: what its steps' records say now (its report job may not
        # have run yet, or was cancelled).
        _, paths = finish(cfg, tracker, steps_from_records(cfg, plan))
    else:
        paths = make_report(
            cfg,
            tracker,
            Path(args.out) if args.out else None,
            select_by_plan=not (args.all_runs or args.tracking_uri),
        )
    for name, path in sorted(paths.items()):
        print(f"{name}: {path}")


def cmd_calibrate(args, cfg):
    from dataclasses import replace

    from benchmark.pipeline.report import calibrate_runs

    if args.tracking_uri:
        cfg = replace(cfg, paths=replace(cfg.paths, tracking_uri=args.tracking_uri))
    rows = calibrate_runs(cfg, _context(cfg).tracker, select_by_plan=not args.tracking_uri)
    if not rows:
        print("nothing to calibrate: no task has two pre-training runs of its baseline")
        return 0
    print(f"{'task / metric':28s} {'runs':>4s} {'SD runs':>8s} {'s2/u':>6s} {'clusters':>8s} "
          f"{'d.f.':>5s} {'A/A false pos.':>16s} {'worst eq.':>9s} {'MDD (80%)':>10s} "
          f"{'runs for 0.01':>14s}")  # fmt: skip
    for r in rows:
        fpr = f"{100 * r['false_positive_rate']:.1f}% ± {100 * r['fpr_se']:.1f}"
        worst = f"{100 * r['worst_null_rate']:.1f}%"
        needed = r["runs_for_planted"] or "> 200"
        print(f"{r['task'] + ' / ' + r['metric']:28s} {r['runs']:4d} {r['sd_run']:8.4f} "
              f"{r['s2_over_u']:6.2f} {r['clusters']:8d} {r['test_df']:5d} {fpr:>16s} "
              f"{worst:>9s} {r['min_detectable']:10.4f} {needed!s:>14s}")  # fmt: skip
    return 0


def _calibrate_args(p):
    p.add_argument("--tracking-uri", default=None, help="read results from this MLflow store")


def _plan_args(p):
    p.add_argument(
        "--only",
        default=None,
        help="comma-separated stages: features,separate,pretrain,embed,tune,probe",
    )
    p.add_argument(
        "--methods", default=None, help="comma-separated methods (default: the profile's)"
    )
    p.add_argument("--tasks", default=None, help="comma-separated tasks (default: the profile's)")


def _run_args(p):
    p.add_argument("--dry-run", action="store_true", help="print the plan and each step's state")
    _plan_args(p)
    p.add_argument(
        "--executor",
        choices=("local", "processes", "slurm"),
        default=None,
        help="where the steps run (default: executor.kind, local): this process, a pool of "
        "--workers processes, or Slurm jobs (the command returns once they are submitted)",
    )
    p.add_argument(
        "--workers", type=int, default=None, help="processes: pool size (executor.workers)"
    )


def _plan(args, ctx):
    from benchmark.pipeline.plan import build_plan

    return _checked(build_plan, ctx, _split(args.methods), _split(args.tasks), _split(args.only))


def _print_states(ctx, steps) -> None:
    """What ``status`` and ``run --dry-run`` print: the data, then every step's state."""
    from benchmark.pipeline.plan import status_lines, step_states

    tasks = sorted({s.task for s in steps if s.task}) or None
    methods = sorted({s.method for s in steps if s.method}) or None
    print("data:")
    for line in _data_lines(ctx.cfg, tasks, methods):
        print(f"  {line}")
    for line in status_lines(step_states(ctx, steps)):
        print(line)


def cmd_status(args, cfg):
    from benchmark.pipeline.context import open_context

    ctx = open_context(cfg, read_only=True)  # writes nothing
    _print_states(ctx, _plan(args, ctx))


def cmd_run(args, cfg):
    import shlex
    import time
    from dataclasses import replace

    from benchmark.errors import StageError
    from benchmark.pipeline import stages
    from benchmark.pipeline.context import open_context
    from benchmark.pipeline.executors import make_executor, printable
    from benchmark.pipeline.plan import finish, read_status, record_status
    from benchmark.pipeline.report import score_summary

    if args.executor or args.workers:
        executor = cfg.executor
        cfg = replace(
            cfg,
            executor=replace(
                executor,
                kind=args.executor or executor.kind,
                workers=args.workers or executor.workers,
            ),
        )
    # --dry-run writes nothing: no MLflow store, no folders.
    ctx = open_context(cfg, read_only=args.dry_run)
    steps = _plan(args, ctx)
    if args.dry_run:
        _print_states(ctx, steps)
        return 0
    executor = make_executor(cfg)
    t0 = time.perf_counter()
    ctx.tracker.fail_orphans()  # runs left open by killed processes; their steps resume them
    base = read_status(cfg)  # plan_status.json as this invocation found it

    def record(step) -> None:
        # After every step that ends here, so that a kill loses at most the step it interrupted.
        record_status(cfg, steps, base)

    launch = executor.launch(cfg, steps, ctx, on_step=record)
    if not launch.finished:
        print(
            f"submitted {len(launch.jobs)} step(s) of profile {cfg.profile} to Slurm "
            f"in {time.perf_counter() - t0:.0f} s:"
        )
        for line in printable(launch):
            print(line)
        narrowed = [f"--{k}={v}" for k in ("methods", "tasks", "only") if (v := getattr(args, k))]
        again = " ".join(
            shlex.quote(a) for a in [f"--profile={cfg.profile}", *narrowed, *args.overrides]
        )
        print(f"progress: python -m benchmark status {again}")
        return 0
    failed = [s for s in steps if s.status in ("failed", "blocked")]
    counts = {k: sum(s.status == k for s in steps) for k in ("ran", "done", "checked")}
    # The steps' outcome first: whatever the report does, the user learns what failed.
    print(
        f"finished in {time.perf_counter() - t0:.0f} s: {counts['ran']} steps ran, "
        f"{counts['done']} were done, {counts['checked']} cache steps checked, "
        f"{len(failed)} failed or blocked"
    )
    for s in failed:
        print(f"  {s.status}: {s.name}: {s.error}")
    try:
        _, paths = finish(cfg, ctx.tracker, steps, base=base)
    except StageError as exc:
        print(f"report: not built: {exc}")
        return 1
    if not paths:
        print(
            "report: not built, this plan has no probe results"
            + (f" (--only {args.only})" if args.only else "")
            + f"; run `python -m benchmark run --profile {cfg.profile}` for the whole pipeline"
        )
        return 1 if failed else 0
    primary = {name: task.primary for name, task in stages.task_registry(ctx).items()}
    for line in score_summary(paths["leaderboard.csv"], primary):
        print(line)
    print(f"report: {paths['leaderboard.md']} (and leaderboard.html)")
    return 1 if failed else 0


def _tracking_server_args(p):
    p.add_argument("action", choices=("start", "stop", "status"))
    p.add_argument(
        "--folder",
        default=None,
        help="where its PostgreSQL cluster, artifacts, logs and state file live "
        "(default <runs_dir>/tracking-server)",
    )
    p.add_argument(
        "--host",
        default=None,
        help="start: the IPv4 address both servers listen on (default: the previous start's, "
        "at first 127.0.0.1, this machine only; 0.0.0.0 for the compute nodes of a cluster: "
        "MLflow's server has no authentication, so only on a network that only trusted "
        "machines reach)",
    )


def cmd_tracking_server(args, cfg):
    from benchmark.pipeline import services

    folder = Path(args.folder) if args.folder else cfg.runs_dir / "tracking-server"
    try:
        if args.action == "start":
            info = services.start_tracking_server(folder, host=args.host)
        elif args.action == "stop":
            info = services.stop_tracking_server(folder)
        else:
            info = services.tracking_server_status(folder)
    except services.ServiceError as exc:
        raise UserError(f"tracking-server {args.action}: {exc}") from None
    for line in info:
        print(line)


def _export_args(p):
    _method_arg(p)
    p.add_argument("--seed", type=int, default=None, help="pre-training seed (default: the first)")
    p.add_argument("--out", required=True, help="output folder (new or empty)")
    p.add_argument("--name", default="", help="module name (default mscol_<method>_s<seed>)")
    p.add_argument(
        "--hop-frames",
        type=int,
        default=None,
        help="timestamp hop in 10-ms frames (default 98: the harness's ~1-s test windows; "
        "5 gives HEAR's 50-ms event resolution)",
    )


def cmd_export_hear(args, cfg):
    from benchmark.pipeline.export import export_hear

    seed = args.seed if args.seed is not None else cfg.pretrain.seeds[0]
    package = _checked(
        export_hear, _context(cfg), args.method, seed, Path(args.out), args.name, args.hop_frames
    )
    print(f"HEAR module {package.name} written to {package.parent}")
    print(f"  install: pip install {package.parent}   (needs this harness installed)")
    print(f"  benchmark it: benchmark.methods=hear:{package.name}")


# name -> Command; the order is the order of ``--help``.
COMMANDS: dict[str, Command] = {
    "config": Command(
        "print the resolved configuration of a profile (with overrides) and its hash",
        _no_args,
        cmd_config,
    ),
    "list": Command("list the registered methods and tasks", _no_args, cmd_list),
    "synth": Command(
        "generate the synthetic corpus (MTAT-, NSynth- and FMA-format trees with stems)",
        _synth_args,
        cmd_synth,
    ),
    "features": Command(
        "build the log-mel feature stores of the tasks' corpora and the pre-training corpus",
        _features_args,
        cmd_features,
    ),
    "train-separator": Command(
        "train Open-Unmix on the synthetic corpus's true stems; it then separates any data, "
        "real included, as separation.umx_model=trained",
        _no_args,
        cmd_train_separator,
    ),
    "separate": Command(
        "separate the pre-training clips into sources (log-mel + silence flags)",
        _separate_args,
        cmd_separate,
    ),
    "calibrate": Command(
        "simulate the comparisons with the variance measured in the runs: A/A false "
        "positives, minimum detectable difference, runs needed",
        _calibrate_args,
        cmd_calibrate,
    ),
    "pretrain": Command(
        "pre-train one method (resumes an unfinished run of the same config)",
        _pretrain_args,
        cmd_pretrain,
    ),
    "probe": Command(
        "embed with the frozen encoder (cached) and train/test probes, 5 seeds",
        _probe_args,
        cmd_probe,
    ),
    "tune": Command(
        "equal-budget Optuna search of the probe's lr / weight decay / dropout",
        _tune_args,
        cmd_tune,
    ),
    "report": Command(
        "build the leaderboard (md, csv, html) and figures from the MLflow store",
        _report_args,
        cmd_report,
    ),
    "run": Command(
        "the whole pipeline of a profile, resumable; ends with the report (--executor "
        "local | processes | slurm)",
        _run_args,
        cmd_run,
    ),
    "status": Command(
        "each step of a profile's plan: done, queued, running, failed (with its Slurm job)",
        _plan_args,
        cmd_status,
    ),
    "tracking-server": Command(
        "start | stop | status: a local MLflow tracking server on PostgreSQL (data under runs/)",
        _tracking_server_args,
        cmd_tracking_server,
    ),
    "export-hear": Command(
        "write a finished pre-training run as an installable HEAR 2021 API module",
        _export_args,
        cmd_export_hear,
    ),
}
