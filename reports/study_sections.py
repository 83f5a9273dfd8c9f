"""The report's study sections (convergence, separator quality, ablations, source
specialisation): each states the poster's claim, what this run measured with its intervals,
and whether the claim held here. Numbers come from :mod:`reports.studies`; figures are drawn
here, on Agg figures like :mod:`reports.figures`.

``inputs`` of :func:`study_blocks` (all optional; a section without its data says so):
``snapshot_scores``, ``snapshot_predictions``, ``final_step`` (the convergence study);
``convergence_methods``, ``convergence_pair``; ``separator_runs`` and ``separator_arms``;
``ablations``; ``tag_sources`` (tag -> sources), ``source_models`` (method -> source),
``tag_mapping`` (where the mapping comes from).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from reports.figures import FigureDataError, _save
from reports.published import COLUMN_LABELS, TABLE_COLUMNS
from reports.studies import (
    CLAIMS,
    ablation_verdicts,
    convergence,
    convergence_verdict,
    separator_study,
    specialisation,
)

__all__ = ["study_blocks"]


def _f(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}"


def _ci(mean, low, high, digits: int = 3) -> str:
    if _f(mean, digits) == "–":  # nothing measured (e.g. a source without tags of its own)
        return "–"
    if not (isinstance(low, float) and math.isfinite(low)):
        return f"{_f(mean, digits)} (one run: no interval)"
    return f"{_f(mean, digits)} [{_f(low, digits)}, {_f(high, digits)}]"


def _p(value) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:.4f}" if value >= 1e-4 else f"{value:.1e}"


def study_blocks(out_dir: Path, inputs: Mapping, scores, predictions, sets, comparison, summary,
                 primary: Mapping[str, str], alpha: float) -> tuple[list[tuple], dict[str, Path], dict[str, str]]:  # fmt: skip
    """The four study sections and their figures: ``(blocks, drawn figures, not drawn)``."""
    blocks: list[tuple] = [("h", 1, "The paper's studies")]
    drawn: dict[str, Path] = {}
    skipped: dict[str, str] = {}
    for section in (_convergence, _separators, _ablations, _specialisation):
        part, figures = section(
            out_dir, inputs, scores, predictions, sets, comparison, summary, primary, alpha
        )
        blocks += part
        for name, draw in figures:
            try:
                drawn[name] = draw(out_dir / name)
                blocks.append(("img", drawn[name], name))
            except FigureDataError as error:
                skipped[name] = str(error)
    return blocks, drawn, skipped


def _claim(key: str) -> tuple:
    return ("p", f"Claim (poster, quoted): “{CLAIMS[key]}”")


# -- 1. convergence --------------------------------------------------------------------------------


def _convergence(out_dir, inputs, scores, predictions, sets, comparison, summary, primary, alpha):
    blocks: list[tuple] = [
        ("h", 2, "Convergence: MSA against MWS during pre-training"),
        _claim("convergence"),
    ]
    methods = list(inputs.get("convergence_methods") or ())
    pair = tuple(inputs.get("convergence_pair") or ("msa_multi", "cola_mws"))
    final_step = int(inputs.get("final_step") or 0)
    curves, tests = convergence(inputs.get("snapshot_scores"), inputs.get("snapshot_predictions"),
                                scores, predictions, final_step, methods, pair, alpha)  # fmt: skip
    if curves.empty:
        return blocks + [("p", "Not measured in this run: no snapshot was probed "
                               "(benchmark.convergence_methods is empty; the studies profile sets it).")], []  # fmt: skip
    blocks.append(("p", f"Measured: {', '.join(methods)} probed on every task with the encoder of each "
                        f"pre-training run after {', '.join(str(s) for s in sorted(curves['step'].unique()))} "
                        f"of {final_step} steps (snapshots with precise-BN statistics, like final.pt; probe "
                        "parameters tuned per run and task on its final encoder). Each cell: mean over "
                        "pre-training runs [95% t interval over runs]. Per step, the combined test of "
                        f"{pair[0]} against {pair[1]} (run and test-set variance), Holm over the steps."))  # fmt: skip
    verdicts = convergence_verdict(tests, final_step, primary)
    if verdicts:
        blocks += [("p", f"Did the claim hold here ({pair[0]} significantly ahead before half of the steps, "
                         "indistinguishable at the end)?"), ("table", pd.DataFrame(verdicts))]  # fmt: skip
    figures = []
    for task in sorted(curves["task"].unique()):
        metric = primary.get(task)
        part = curves[(curves["task"] == task) & (curves["metric"] == metric)]
        if part.empty:
            continue
        wide = part.assign(cell=[_ci(r.mean, r.ci_low, r.ci_high) for r in part.itertuples()])
        table = wide.pivot(index="step", columns="method", values="cell").reset_index()
        t = (
            tests[(tests["task"] == task) & (tests["metric"] == metric)]
            if not tests.empty
            else tests
        )
        if not t.empty:
            table = table.merge(pd.DataFrame({
                "step": t["step"],
                f"Δ {pair[0]} − {pair[1]} [95% CI]": [
                    _ci(r.diff, getattr(r, "ci_low", math.nan), getattr(r, "ci_high", math.nan), 4)
                    if r.status == "tested" else f"{_f(r.diff, 4)} ({r.status})" for r in t.itertuples()],
                "p": [_p(v) for v in t["p"]], "Holm p": [_p(v) for v in t["p_holm"]],
                "sig.": ["▲" if s and d > 0 else ("▼" if s else "") for s, d in zip(t["significant"], t["diff"], strict=True)],
            }), on="step", how="left")  # fmt: skip
        blocks += [("h", 3, f"{task} — {metric}"), ("table", table)]
        figures.append((f"convergence_{task}.png", lambda path, p=part, task=task, metric=metric:
                        _convergence_figure(p, task, metric, final_step, path)))  # fmt: skip
    return blocks, figures


def _convergence_figure(curves: pd.DataFrame, task, metric, final_step, path) -> Path:
    figure = Figure(figsize=(6.0, 4.0))
    axes = figure.add_subplot(1, 1, 1)
    for j, (method, part) in enumerate(curves.groupby("method", sort=True)):
        part = part.sort_values("step")
        low = np.nan_to_num(part["mean"] - part["ci_low"])
        high = np.nan_to_num(part["ci_high"] - part["mean"])
        axes.errorbar(part["step"] + (j - 1) * final_step * 0.006, part["mean"], yerr=[low, high],
                      fmt="-o", capsize=3, markersize=4, color=f"C{j}", label=method)  # fmt: skip
    axes.set_xlabel("pre-training step")
    axes.set_ylabel(metric)
    axes.set_title(f"{task}: probe score vs pre-training step (mean, 95% CI over runs)", fontsize=9)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return _save(figure, path)


# -- 2. separator quality ------------------------------------------------------------------------------


def _separators(out_dir, inputs, scores, predictions, sets, comparison, summary, primary, alpha):
    blocks: list[tuple] = [
        ("h", 2, "Separator quality: the same MSA with better or worse sources"),
        _claim("separator"),
    ]
    arms = list(inputs.get("separator_arms") or ())
    quality, arm_scores, slopes = separator_study(
        sets, inputs.get("separator_runs"), arms, primary, alpha
    )
    if quality.empty or arm_scores.empty or arm_scores["method"].nunique() < 2:
        return blocks + [("p", "Not measured in this run: fewer than two arms of the study "
                               f"({', '.join(arms) or 'none declared'}) have results and a measured separator.")], []  # fmt: skip
    blocks.append(("p", "Measured: msa_multi pre-trained with sources from each separator, everything else "
                        "fixed. Separator quality: mean SI-SDR (dB) over the validation clips' true stems, per "
                        "source and averaged over the sources (measured when the separator was trained; the true "
                        "stems are exact). Scores: mean over pre-training runs [95% t interval over runs]."))  # fmt: skip
    qtable = pd.DataFrame({
        "arm": quality["method"],
        "separator quality (mean SI-SDR, dB)": ["exact (true stems)" if e else _f(q, 2) for e, q in zip(quality["exact"], quality["quality_db"], strict=True)],
        **{f"SI-SDR {s}": [_f(v, 2) for v in quality.get(f"si_sdr_{s}", pd.Series([math.nan] * len(quality)))]
           for s in ("bass", "drums", "vocals", "other")},
    })  # fmt: skip
    blocks.append(("table", qtable))
    prim = arm_scores[
        [primary.get(t) == m for t, m in zip(arm_scores["task"], arm_scores["metric"], strict=True)]
    ]
    table = prim.assign(cell=[_ci(r.mean, r.ci_low, r.ci_high) for r in prim.itertuples()]).pivot(
        index="method", columns="task", values="cell").reindex([a for a in arms if a in set(prim["method"])])  # fmt: skip
    blocks += [("p", "Primary metric per task:"), ("table", table.reset_index())]
    if slopes.empty:
        blocks.append(
            ("p", "No slope test: fewer than two arms with a finite SI-SDR and two runs each.")
        )
    else:
        held = []
        for r in slopes.itertuples():
            verdict = ("yes: better sources, better scores" if r.significant and r.slope > 0 else
                       "no: worse with better sources" if r.significant else "not detected")  # fmt: skip
            held.append(verdict)
        blocks += [
            ("p", "Is the relationship significant? The slope of the arms' mean scores on their mean SI-SDR "
                  "(OLS over the arms with a finite SI-SDR; score per dB) as a linear contrast of the arms' "
                  "means, with the pooled between-run variance and the test set's sampling variance "
                  "(Satterthwaite df), Holm over the tasks. The claim held here where the slope is "
                  "significantly positive."),
            ("table", pd.DataFrame({
                "task / metric": [f"{r.task} / {r.metric}" for r in slopes.itertuples()],
                "arms": slopes["arms"],
                "slope per dB [95% CI]": [_ci(r.slope, r.ci_low, r.ci_high, 5) for r in slopes.itertuples()],
                "df": [_f(v, 1) for v in slopes["df"]], "p": [_p(v) for v in slopes["p"]],
                "Holm p": [_p(v) for v in slopes["p_holm"]], "claim held here": held})),
        ]  # fmt: skip
    fam = (
        comparison[(comparison.get("family") == "separators")]
        if "family" in comparison
        else comparison.iloc[0:0]
    )
    fam = fam[[primary.get(t) == m for t, m in zip(fam["task"], fam["metric"], strict=True)]]
    if len(fam):
        blocks += [("p", "Each other separator against the configured one (family 'separators', combined test, Holm):"),
                   ("table", pd.DataFrame({
                       "arm": fam["method"], "task": fam["task"],
                       "Δ vs msa_multi [95% CI]": [_ci(r.diff, r.ci_low, r.ci_high, 4) if r.status == "tested" else r.status for r in fam.itertuples()],
                       "Holm p": [_p(v) for v in fam["p_holm"]],
                       "sig.": [("▲" if r.diff > 0 else "▼") if r.significant else "" for r in fam.itertuples()]}))]  # fmt: skip
    return blocks, [("separator_study.png", lambda path: _separator_figure(prim, path))]


def _separator_figure(arm_scores: pd.DataFrame, path) -> Path:
    if arm_scores.empty:
        raise FigureDataError("no separator-study scores")
    tasks = sorted(arm_scores["task"].unique())
    figure = Figure(figsize=(4.0 * len(tasks), 3.6))
    finite = arm_scores["quality_db"][np.isfinite(arm_scores["quality_db"])]
    top = (finite.max() if len(finite) else 0.0) + 6.0  # where the true stems are drawn
    for i, task in enumerate(tasks):
        axes = figure.add_subplot(1, len(tasks), i + 1)
        part = arm_scores[arm_scores["task"] == task]
        x = np.where(np.isfinite(part["quality_db"]), part["quality_db"], top)
        low = np.nan_to_num(part["mean"] - part["ci_low"])
        high = np.nan_to_num(part["ci_high"] - part["mean"])
        axes.errorbar(x, part["mean"], yerr=[low, high], fmt="o", capsize=3)
        for xi, yi, name in zip(x, part["mean"], part["method"], strict=True):
            axes.annotate(name, (xi, yi), fontsize=6, xytext=(3, 3), textcoords="offset points")
        axes.axvline(top - 3.0, color="0.6", linestyle=":", linewidth=0.8)
        axes.set_xlabel("mean SI-SDR (dB); right of the dotted line: true stems")
        axes.set_ylabel(part["metric"].iloc[0])
        axes.set_title(task, fontsize=9)
        axes.grid(alpha=0.3)
    figure.suptitle("Downstream score vs separation quality (mean, 95% CI over runs)", fontsize=10)
    return _save(figure, path)


# -- 3. ablations -------------------------------------------------------------------------------------


def _ablations(out_dir, inputs, scores, predictions, sets, comparison, summary, primary, alpha):
    blocks: list[tuple] = [("h", 2, "Ablations of MSA (the paper's layout)"), _claim("ablations"),
                           ("p", "The poster gives these claims without numbers; none are shown as published.")]  # fmt: skip
    ablations = [a for a in (inputs.get("ablations") or ()) if a in set(summary["method"])]
    if not ablations or "msa_multi" not in set(summary["method"]):
        return blocks + [
            ("p", "Not measured in this run: no ablation of msa_multi has results.")
        ], []
    merged = summary.merge(comparison, on=["method", "task", "metric"], how="left")
    cells = {}
    for r in merged.itertuples():
        if r.method == "msa_multi":
            cells[(r.method, r.task, r.metric)] = f"{r.mean:.3f}" + (
                f" ± {r.sd_between:.3f}" if r.runs >= 2 else ""
            )
        elif r.method in ablations:
            mark = ("▲" if r.diff > 0 else "▼") if r.significant is True else ""
            delta = (
                f"Δ {r.diff:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}]"
                if r.status == "tested"
                else "n.t."
            )
            cells[(r.method, r.task, r.metric)] = f"{r.mean:.3f} ({delta}) {mark}".strip()
    rows = [{"model": m, **{COLUMN_LABELS[c]: cells.get((m, *c), "–") for c in TABLE_COLUMNS}}
            for m in ["msa_multi", *ablations]]  # fmt: skip
    blocks += [("p", "Measured: mean over pre-training runs; for each ablation its difference from msa_multi "
                     "with the combined test's 95% interval, ▲/▼ where Holm-significant within the ablations "
                     "family (per task and metric)."), ("table", pd.DataFrame(rows))]  # fmt: skip
    verdicts = ablation_verdicts(comparison, primary)
    if not verdicts.empty:
        blocks += [
            ("p", "Per-task verdict on each task's primary metric: what removing the component did (the "
                  "component helps = the ablation is significantly worse), the poster's claim for that task, "
                  "and whether this run agrees ('not detected': the claim expects a help this run could not "
                  "detect; read the interval and the calibration's minimum detectable difference)."),
            ("table", pd.DataFrame({
                "ablation": verdicts["ablation"], "component": verdicts["component"], "task": verdicts["task"],
                "Δ [95% CI]": [_ci(r.diff, r.ci_low, r.ci_high, 4) for r in verdicts.itertuples()],
                "Holm p": [_p(v) for v in verdicts["p_holm"]], "measured": verdicts["measured"],
                "claim": verdicts["claim"], "claim held here": verdicts["held"]})),
        ]  # fmt: skip
    return blocks, []


# -- 4. source specialisation ----------------------------------------------------------------------------


def _specialisation(
    out_dir, inputs, scores, predictions, sets, comparison, summary, primary, alpha
):
    blocks: list[tuple] = [
        ("h", 2, "Source specialisation of the source-targeted models"),
        _claim("specialisation"),
    ]
    tag_sources = inputs.get("tag_sources") or {}
    models = {
        m: s for m, s in (inputs.get("source_models") or {}).items() if m in set(summary["method"])
    }
    if not tag_sources or not models:
        return blocks + [
            ("p", "Not measured in this run: no source-targeted model or no tag-to-source mapping.")
        ], []
    figures = []
    for task in ("mtat", "mtat_star"):
        frame, notes = specialisation(predictions, tag_sources, models, "cola", task, alpha)
        if frame.empty:
            blocks += [("p", "; ".join(notes or [f"{task}: no results"]))]
            continue
        blocks += [("h", 3, f"{task} — PR-AUC"),
                   ("p", f"Tags by source: {inputs.get('tag_mapping', 'as given')}. Per model: the mean PR-AUC "
                         "gain over COLA on the tags of its own source, on the other tags, and their "
                         "difference (specialisation), each the combined test over pre-training runs "
                         "with the test set's sampling variance (95% CI); Holm over the models on the "
                         "specialisation. The claim held here for a model whose specialisation is "
                         "significantly positive.")]  # fmt: skip
        get = lambda r, k: getattr(r, k, math.nan)  # noqa: E731
        blocks.append(("table", pd.DataFrame({
            "model": frame["method"], "source": frame["source"], "own tags": frame["own_tags"],
            "other tags": frame["num_other_tags"],
            "gain on own tags": [_ci(get(r, "gain_own"), get(r, "gain_own_low"), get(r, "gain_own_high"), 4) for r in frame.itertuples()],
            "gain on other tags": [_ci(get(r, "gain_other"), get(r, "gain_other_low"), get(r, "gain_other_high"), 4) for r in frame.itertuples()],
            "specialisation": [_ci(get(r, "specialisation"), get(r, "spec_low"), get(r, "spec_high"), 4) if r.status == "tested" else r.status for r in frame.itertuples()],
            "Holm p": [_p(get(r, "p_holm")) for r in frame.itertuples()],
            "claim held here": [("yes" if r.specialisation > 0 else "no (opposite)") if get(r, "significant") is True
                                else ("not detected" if r.status == "tested" else "–") for r in frame.itertuples()],
        })))  # fmt: skip
        if task == "mtat" and "specialisation" in frame:
            figures.append(
                ("specialisation.png", lambda path, f=frame: _specialisation_figure(f, path))
            )
    return blocks, figures


def _specialisation_figure(frame: pd.DataFrame, path) -> Path:
    tested = frame[frame["status"] == "tested"]
    if tested.empty:
        raise FigureDataError("no tested specialisation")
    figure = Figure(figsize=(6.5, 3.8))
    axes = figure.add_subplot(1, 1, 1)
    x = np.arange(len(tested))
    for offset, (value, label) in zip((-0.2, 0.2), (("gain_own", "own source's tags"), ("gain_other", "other tags")), strict=True):  # fmt: skip
        mean = tested[value].to_numpy(float)
        err = [
            mean - tested[f"{value}_low"].to_numpy(float),
            tested[f"{value}_high"].to_numpy(float) - mean,
        ]
        axes.bar(x + offset, mean, width=0.4, yerr=err, capsize=3, label=label)
    axes.axhline(0.0, color="0.3", linewidth=0.6)
    axes.set_xticks(x, tested["method"])
    axes.set_ylabel("PR-AUC gain over COLA")
    axes.set_title("mtat: gain on own-source tags vs other tags (95% CI)", fontsize=9)
    axes.legend(fontsize=8)
    axes.grid(axis="y", alpha=0.3)
    return _save(figure, path)
