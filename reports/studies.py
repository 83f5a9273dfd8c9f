"""The paper's analyses beyond its two tables, as statistics over pre-training runs.

Each function takes what the leaderboard already has (scores, test predictions, the
comparison rows) plus the study's own inputs, and returns plain DataFrames; the document's
sections and figures are :mod:`reports.study_sections`. Every interval and test treats a
pre-training run as the unit and adds the test set's sampling variance
(:func:`reports.variance.combined_test`, :func:`reports.variance.contrast_test`):

* :func:`convergence`: each method's score against the pre-training step (snapshots of its
  runs) and, per step, the combined test of one method against another (MSA vs MWS), Holm
  over the steps;
* :func:`separator_study`: the score against the separator's measured SI-SDR, and the slope
  of the arms' means on it as a contrast (score per dB), Holm over tasks;
* :func:`ablation_verdicts`: the ablations family's comparisons as verdicts about each
  ablated component, beside the poster's claim for that task;
* :func:`specialisation`: a source-targeted model's PR-AUC gain over the baseline on the tags
  of its own source minus its gain on the other tags, per run, with the test items'
  influences (per-tag AP influences averaged over the tag groups).

The poster's claims are quoted in :data:`CLAIMS` (it gives no ablation numbers).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from benchmark.evaluation.metrics import column_influence, scorable_tags
from reports.compare import NOT_TESTABLE, aligned_items, run_sets
from reports.stats import holm
from reports.variance import combined_test, contrast_test, run_interval

__all__ = [
    "ABLATION_CLAIMS",
    "CLAIMS",
    "ablation_verdicts",
    "convergence",
    "convergence_verdict",
    "separator_study",
    "specialisation",
]

# The poster's words (seed/000: "Qualitative Analysis", "Ablation study", section 5).
CLAIMS = {
    "convergence": (
        "Faster convergence than MWS during the early stages of pre-training, but performance "
        "balances out as pre-training progresses due to the multitude of augmented examples "
        "MWS generates."
    ),
    "separator": (
        "In contrast to environmental sounds, the quality of the separated sources impacts "
        "the performance. Improved results compared to random masking → musically meaningful "
        "soft masking is necessary to learn useful representations."
    ),
    "ablations": (
        "Inclusion of non-silent source segments during pre-training improves performance in "
        "auto-tagging and genre classification, not in instrument classification. Similar "
        "effect observed regarding intra-batch source homogeneity and the proposed loss "
        "function. Time shifting of the source excerpts is critical to the performance."
    ),
    "specialisation": (
        "Models display a specialization, according to the target pre-training source. "
        "Drums → percussive and rhythmic features (drums, beat). Accompaniment → accompanying "
        "instruments (violin, piano, guitar)."
    ),
}

# What the poster's ablation claims say about each component, per task kind: "helps" (the
# ablated model is worse) or "no help" (not better with the component). The poster gives no
# numbers; time shift is "critical" everywhere.
_TAGGING_GENRE = {"mtat": "helps", "mtat_star": "helps", "fma": "helps", "nsynth": "no help"}
ABLATION_CLAIMS: dict[str, tuple[str, dict[str, str]]] = {
    "msa_multi_no_silence": ("silent segments", _TAGGING_GENRE),
    "msa_multi_mixed_batches": ("source homogeneity in a batch", _TAGGING_GENRE),
    "msa_multi_plain_loss": ("the centroid loss", _TAGGING_GENRE),
    "msa_multi_no_shift": ("time shift", dict.fromkeys(("mtat", "mtat_star", "fma", "nsynth"), "helps")),
}  # fmt: skip


# -- convergence -------------------------------------------------------------------------------


def convergence(
    snapshot_scores: pd.DataFrame | None,
    snapshot_predictions: Mapping | None,
    scores: pd.DataFrame,
    predictions: Mapping | None,
    final_step: int,
    methods: Sequence[str],
    pair: tuple[str, str],
    alpha: float = 0.05,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Scores of ``methods`` at every snapshot step and at ``final_step`` (the leaderboard's
    runs), and per step the combined test of ``pair[0]`` against ``pair[1]``.

    ``snapshot_scores``: the score rows with a ``step`` column; ``snapshot_predictions``:
    ``(method, task, pretrain_seed, probe_seed, step) -> prediction set``.

    Returns ``(curves, tests)``: curves ``task, metric, method, step, runs, mean, ci_low,
    ci_high`` (95% t interval over runs); tests ``task, metric, step, method, baseline,
    status, diff, ci_low, ci_high, df, p, p_holm, significant`` (Holm over the steps of a
    task and metric). Empty frames when there are no snapshots.
    """
    curve_rows, test_rows = [], []
    if snapshot_scores is None or snapshot_scores.empty:
        return pd.DataFrame(curve_rows), pd.DataFrame(test_rows)
    wanted = set(methods)
    snapshot_predictions = snapshot_predictions or {}
    per_step: dict[int, tuple[pd.DataFrame, dict]] = {}
    for step, part in snapshot_scores[snapshot_scores["method"].isin(wanted)].groupby("step"):
        preds = {
            k[:4]: v for k, v in snapshot_predictions.items() if k[4] == step and k[0] in wanted
        }
        per_step[int(step)] = (part.drop(columns="step"), preds)
    final = scores[scores["method"].isin(wanted)]
    if not final.empty:
        preds = {k: v for k, v in (predictions or {}).items() if k[0] in wanted}
        per_step[int(final_step)] = (final, preds)
    for step, (frame, preds) in sorted(per_step.items()):
        sets, _clusters, _notes = run_sets(frame.reset_index(drop=True), preds or None)
        for (task, metric), by_method in sorted(sets.items()):
            for method, run_set in sorted(by_method.items()):
                mean, low, high = run_interval(run_set.run_scores)
                curve_rows.append(dict(task=task, metric=metric, method=method, step=step,
                                       runs=run_set.num_runs, mean=mean, ci_low=low, ci_high=high))  # fmt: skip
            a, b = (by_method.get(name) for name in pair)
            row = dict(task=task, metric=metric, step=step, method=pair[0], baseline=pair[1])
            if a is None or b is None:
                continue
            if a.num_runs < 2 or b.num_runs < 2:
                row.update(
                    status=NOT_TESTABLE, diff=float(a.run_scores.mean() - b.run_scores.mean())
                )
            else:
                test = combined_test(a.run_scores, b.run_scores, a.psi, b.psi, test_df=b.test_df)
                row.update(status="tested", **{k: float(test[k]) for k in
                                               ("diff", "ci_low", "ci_high", "df", "p")})  # fmt: skip
            test_rows.append(row)
    curves, tests = pd.DataFrame(curve_rows), pd.DataFrame(test_rows)
    if not tests.empty:
        tests = _holm_within(tests, ["task", "metric"], alpha)
    return curves, tests


def _holm_within(frame: pd.DataFrame, by: list[str], alpha: float) -> pd.DataFrame:
    """``p_holm`` and ``significant`` per group of ``by`` (untested rows: nan, False)."""
    frame = frame.copy()
    if "p" not in frame:
        frame["p"] = math.nan
    frame["p_holm"], frame["significant"] = math.nan, False
    for _, part in frame.groupby(by):
        result = holm(part["p"].to_numpy(dtype=float), alpha)
        frame.loc[part.index, "p_holm"] = result["p_adjusted"]
        frame.loc[part.index, "significant"] = result["reject"]
    return frame


def convergence_verdict(
    tests: pd.DataFrame, final_step: int, primary: Mapping[str, str]
) -> list[dict]:
    """Per task (primary metric): is ``method`` significantly ahead at an early step (before
    half of the steps), and are the two indistinguishable at the end? With the claim's
    reading: held when both; partly when only one."""
    rows = []
    if tests.empty:
        return rows
    for task, part in tests.groupby("task", sort=True):
        part = part[part["metric"] == primary.get(task)]
        if part.empty:
            continue
        early = part[(part["step"] < final_step / 2) & (part["status"] == "tested")]
        ahead = early[early["significant"] & (early["diff"] > 0)]
        behind = early[early["significant"] & (early["diff"] < 0)]
        end = part[part["step"] == final_step]
        even = (
            not end.empty and end["status"].iloc[0] == "tested" and not end["significant"].iloc[0]
        )
        if early.empty or end.empty or end["status"].iloc[0] != "tested":
            held = "not testable"
        elif len(ahead) and even:
            held = "yes"
        elif len(behind):
            held = "no (behind early)"
        elif len(ahead) or even:
            held = "partly (" + ("ahead early" if len(ahead) else "no early lead detected") + ", " + (
                "even at the end" if even else "not even at the end") + ")"  # fmt: skip
        else:
            held = "no"
        rows.append(dict(task=task, metric=primary.get(task),
                         ahead_at=", ".join(str(s) for s in ahead["step"]) or "none",
                         even_at_end="yes" if even else "no", held=held))  # fmt: skip
    return rows


# -- separator quality ---------------------------------------------------------------------------


def separator_quality(separator_runs: pd.DataFrame | None, arms: Sequence[str]) -> pd.DataFrame:
    """Per arm (method): mean SI-SDR per source over its runs' records and their mean over
    the sources (``quality_db``; inf for the true stems). Arms without a record are left out."""
    rows = []
    if separator_runs is None or separator_runs.empty:
        return pd.DataFrame(rows)
    for method in arms:
        part = separator_runs[separator_runs["method"] == method]
        if part.empty:
            continue
        if (part["source"] == "exact").any():
            rows.append(dict(method=method, exact=True, quality_db=math.inf))
            continue
        per_source = part.groupby("source")["si_sdr"].mean()
        rows.append(dict(method=method, exact=False, quality_db=float(per_source.mean()),
                         **{f"si_sdr_{s}": float(v) for s, v in per_source.items()}))  # fmt: skip
    return pd.DataFrame(rows)


def separator_study(
    sets: Mapping,
    separator_runs: pd.DataFrame | None,
    arms: Sequence[str],
    primary: Mapping[str, str],
    alpha: float = 0.05,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The arms' scores against their separators' quality.

    ``sets``: :func:`reports.compare.run_sets` output. Returns ``(quality, scores, slopes)``:
    quality from :func:`separator_quality`; scores ``method, task, metric, quality_db, runs,
    mean, ci_low, ci_high``; slopes per task (primary metric) over the arms with a finite
    SI-SDR: ``task, metric, arms, slope`` (score per dB, the OLS slope of the arms' means),
    ``ci_low, ci_high, df, p, p_holm, significant`` (:func:`reports.variance.contrast_test`,
    Holm over the tasks).
    """
    quality = separator_quality(separator_runs, arms)
    if quality.empty:
        return quality, pd.DataFrame(), pd.DataFrame()
    x_of = dict(zip(quality["method"], quality["quality_db"], strict=True))
    score_rows, slope_rows = [], []
    for (task, metric), by_method in sorted(sets.items()):
        present = [m for m in arms if m in by_method and m in x_of]
        for method in present:
            mean, low, high = run_interval(by_method[method].run_scores)
            score_rows.append(dict(method=method, task=task, metric=metric, quality_db=x_of[method],
                                   runs=by_method[method].num_runs, mean=mean, ci_low=low, ci_high=high))  # fmt: skip
        finite = [m for m in present if math.isfinite(x_of[m]) and by_method[m].num_runs >= 2]
        if primary.get(task) != metric or len(finite) < 2:
            continue
        x = np.array([x_of[m] for m in finite])
        if np.ptp(x) == 0:
            continue
        weights = (x - x.mean()) / np.sum((x - x.mean()) ** 2)
        test = contrast_test([by_method[m].run_scores for m in finite],
                             [by_method[m].psi for m in finite], weights,
                             test_df=by_method[finite[0]].test_df)  # fmt: skip
        slope_rows.append(dict(task=task, metric=metric, arms=", ".join(finite), slope=test["estimate"],
                               ci_low=test["ci_low"], ci_high=test["ci_high"], df=test["df"], p=test["p"]))  # fmt: skip
    slopes = pd.DataFrame(slope_rows)
    if not slopes.empty:
        slopes = _holm_within(slopes.assign(family="slope"), ["family"], alpha).drop(
            columns="family"
        )
    return quality, pd.DataFrame(score_rows), slopes


# -- ablations -----------------------------------------------------------------------------------


def ablation_verdicts(
    comparison: pd.DataFrame, primary: Mapping[str, str], family: str = "ablations"
) -> pd.DataFrame:
    """Per ablation and task (primary metric): what the family's combined test says about the
    ablated component (``component helps`` when the ablation is significantly worse after
    Holm, ``component hurts`` when better, ``no detectable difference``), the poster's claim
    for that task (:data:`ABLATION_CLAIMS`) and whether the measurement agrees: "yes",
    "not detected" (the claim expects help, none was detected), "no" (the opposite)."""
    rows = []
    part = (
        comparison[comparison["family"] == family]
        if "family" in comparison
        else comparison.iloc[0:0]
    )
    for r in part.itertuples():
        if primary.get(r.task) != r.metric:
            continue
        component, claims = ABLATION_CLAIMS.get(r.method, (r.method, {}))
        if r.status != "tested":
            measured = r.status
        elif r.significant:
            measured = "component helps" if r.diff < 0 else "component hurts"
        else:
            measured = "no detectable difference"
        claim = claims.get(r.task)
        if claim is None or r.status != "tested":
            held = "–"
        elif claim == "helps":
            held = {"component helps": "yes", "component hurts": "no"}.get(measured, "not detected")
        else:  # "no help": the component does not improve this task
            held = "no" if measured == "component helps" else "yes"
        rows.append(dict(ablation=r.method, component=component, task=r.task, metric=r.metric,
                         diff=r.diff, ci_low=r.ci_low, ci_high=r.ci_high, p_holm=r.p_holm,
                         measured=measured, claim=claim or "–", held=held))  # fmt: skip
    return pd.DataFrame(rows)


# -- source specialisation -------------------------------------------------------------------------


def specialisation(
    predictions: Mapping | None,
    tag_sources: Mapping[str, Sequence[str]],
    models: Mapping[str, str],
    baseline: str = "cola",
    task: str = "mtat",
    alpha: float = 0.05,
) -> tuple[pd.DataFrame, list[str]]:
    """Each source-targeted model's PR-AUC gain over ``baseline`` on its own source's tags
    versus the other tags, with run + test-set intervals.

    ``models``: method -> its source; ``tag_sources``: tag -> the sources it describes. Own
    tags: those of exactly that source; other tags: those not involving it (style, tempo,
    mood tags included); tags of several sources count for neither. Only tags with both a
    positive and a negative test clip count. Per pre-training run (probe seeds averaged):
    ``own`` = mean AP over the own tags, ``other`` = mean AP over the other tags; the test is
    :func:`reports.variance.combined_test` of the model's runs against the baseline's on
    ``own`` (``gain_own``), ``other`` (``gain_other``) and ``own - other``
    (``specialisation`` = ``gain_own - gain_other``), Holm over the models on the last.

    Returns ``(rows, notes)``; rows ``method, source, own_tags, num_other_tags, runs,
    gain_own, gain_own_low, gain_own_high, gain_other, ..._low/_high, specialisation,
    spec_low, spec_high, p, p_holm, significant, status``.
    """
    notes: list[str] = []
    keys = [k for k in (predictions or {}) if k[1] == task]
    if not keys or not any(k[0] == baseline for k in keys):
        return pd.DataFrame(), [
            f"{task}: no test predictions of {baseline}: no specialisation test"
        ]
    subset = {k: predictions[k] for k in keys if k[0] in models or k[0] == baseline}
    order, targets, design, _ = aligned_items(subset, task)
    vocabulary = list(next(iter(subset.values()))["vocabulary"])
    scorable = scorable_tags(targets)
    per_run: dict[str, dict[int, list]] = {}
    columns: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for source in sorted(set(models.values())):
        own = [
            i
            for i, t in enumerate(vocabulary)
            if scorable[i] and tuple(tag_sources.get(t, ())) == (source,)
        ]
        other = [
            i
            for i, t in enumerate(vocabulary)
            if scorable[i] and source not in tag_sources.get(t, ())
        ]
        columns[source] = (np.array(own, dtype=int), np.array(other, dtype=int))
    for key, item in subset.items():
        method, _task, seed, _probe = key
        position = {clip: i for i, clip in enumerate(item["clip_ids"])}
        index = np.array([position[c] for c in order], dtype=int)
        cols = column_influence(targets, np.asarray(item["scores"])[index])
        sources = [models[method]] if method in models else sorted(set(models.values()))
        for source in sources:
            own, other = columns[source]
            if len(own) == 0 or len(other) == 0:
                continue
            values = {
                "own": (cols["pr_auc"][own].mean(), cols["pr_auc_psi"][:, own].mean(axis=1)),
                "other": (cols["pr_auc"][other].mean(), cols["pr_auc_psi"][:, other].mean(axis=1)),
            }
            per_run.setdefault(f"{method}|{source}", {}).setdefault(seed, []).append(values)

    def runs_of(name: str, part: str):
        seeds = sorted(per_run.get(name, {}))
        scores_, psi = [], []
        for seed in seeds:
            probes = per_run[name][seed]
            if part == "diff":
                vals = [p["own"][0] - p["other"][0] for p in probes]
                items = [p["own"][1] - p["other"][1] for p in probes]
            else:
                vals = [p[part][0] for p in probes]
                items = [p[part][1] for p in probes]
            scores_.append(float(np.mean(vals)))
            psi.append(design.influences(np.mean(items, axis=0)))
        return np.array(scores_), np.array(psi)

    rows = []
    for method, source in models.items():
        own, other = columns[source]
        row = dict(method=method, source=source,
                   own_tags=", ".join(vocabulary[i] for i in own) or "none",
                   num_other_tags=len(other))  # fmt: skip
        name, base = f"{method}|{source}", f"{baseline}|{source}"
        if len(own) == 0:
            rows.append(row | dict(status=f"no scorable {task} tag of {source} alone"))
            continue
        if name not in per_run:
            rows.append(row | dict(status="no predictions"))
            continue
        results = {}
        for part in ("own", "other", "diff"):
            a, b = runs_of(name, part), runs_of(base, part)
            row["runs"] = len(a[0])
            if len(a[0]) < 2 or len(b[0]) < 2:
                results[part] = None
                continue
            results[part] = combined_test(a[0], b[0], a[1], b[1], test_df=design.df)
        if results["diff"] is None:
            diff = runs_of(name, "diff")[0].mean() - runs_of(base, "diff")[0].mean()
            rows.append(row | dict(status=NOT_TESTABLE, specialisation=float(diff)))
            continue
        for part, label in (("own", "gain_own"), ("other", "gain_other"), ("diff", "spec")):
            t = results[part]
            value_name = "specialisation" if part == "diff" else label
            row[value_name] = float(t["diff"])
            row[f"{label}_low"], row[f"{label}_high"] = float(t["ci_low"]), float(t["ci_high"])
        row.update(p=float(results["diff"]["p"]), status="tested")
        rows.append(row)
    frame = pd.DataFrame(rows)
    if "p" in frame:
        tested = frame["status"] == "tested"
        adjusted = holm(frame.loc[tested, "p"].to_numpy(dtype=float), alpha)
        frame["p_holm"], frame["significant"] = math.nan, False
        frame.loc[tested, "p_holm"] = adjusted["p_adjusted"]
        frame.loc[tested, "significant"] = adjusted["reject"]
    return frame, notes
