"""``make bench`` (benchmark.perf): its sections run and their figures are consistent.

Only relations between measured quantities are asserted, never speeds: timing targets belong
to ``make bench``, not to unit tests.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from benchmark import perf
from benchmark.config import resolve
from tasks import TASKS


def test_pretrain_section_compares_the_loop_with_the_encoder(tmp_path):
    r = perf.bench_pretrain(tmp_path, "smoke", warmup=10, steps=10)
    for key in ("data_path_only_pairs_per_s", "encoder_only_pairs_per_s", "full_loop_pairs_per_s"):
        assert math.isfinite(r[key]) and r[key] > 0, key
    assert r["loop_over_encoder_ratio"] == pytest.approx(
        r["full_loop_pairs_per_s"] / r["encoder_only_pairs_per_s"]
    )
    assert r["batch_pairs"] == 8  # the smoke profile's batch
    assert r["profile_run_updates"] == resolve("smoke").pretrain.steps
    assert r["steps_per_s"] == pytest.approx(r["full_loop_pairs_per_s"] / r["batch_pairs"])
    assert r["projected_run_min"] == pytest.approx(r["profile_run_updates"] / r["steps_per_s"] / 60)


def test_pretrain_section_needs_whole_metric_windows(tmp_path):
    with pytest.raises(ValueError, match="multiples"):
        perf.bench_pretrain(tmp_path, "smoke", warmup=5, steps=10)


def test_precision_section_compares_the_fast_paths_with_fp32(tmp_path):
    """The bf16 path really runs in reduced precision (its loss differs from fp32's, by more
    than channels-last's reordering does) and stays within the stated tolerance; fp32 run
    twice gives the same losses."""
    from tests.fixtures import TINY_PRETRAIN

    r = perf.bench_precision(tmp_path, "smoke", steps=10, overrides=TINY_PRETRAIN)
    assert r["chance_loss"] == pytest.approx(math.log(4)) and r["steps"] == 10
    bf16, cl = r["bf16"], r["channels_last"]
    assert bf16["first_step_diff"] > cl["first_step_diff"] and bf16["first_step_diff"] > 0
    assert bf16["within"] and cl["within"]
    again = r["fp32_again"]  # the control: the same fp32 run twice is the same on a CPU
    assert again["first_step_diff"] == again["trajectory_diff"] == 0 and again["within"]


def test_precision_verdict_against_a_hand_computation():
    steps = np.arange(12.0)
    losses = {"fp32": list(3 - 0.1 * steps), "channels_last": list(3 - 0.1 * steps)}
    losses["bf16"] = [3.01, *(3 - 0.1 * steps[1:] + 0.05)]
    tolerance = {"channels_last": {"first_step": 0.0, "trajectory": 0.0}}
    tolerance["bf16"] = {"first_step": 0.01, "trajectory": 0.05}
    v = perf.precision_verdict(losses, chance=2.0, tolerance=tolerance)
    assert v["channels_last"]["first_step_diff"] == 0 and v["channels_last"]["within"]
    assert v["bf16"]["first_step_diff"] == pytest.approx(0.005)
    assert v["bf16"]["trajectory_diff"] == pytest.approx(0.025)  # the last 10 steps: +0.05 / 2
    assert v["bf16"]["within"]
    tolerance["bf16"]["trajectory"] = 0.02
    assert not perf.precision_verdict(losses, 2.0, tolerance)["bf16"]["within"]


def test_probe_section_reports_every_task(tmp_path):
    r = perf.bench_probe(tmp_path, "smoke")
    seeds = len(resolve("smoke").probe.seeds)
    for name in TASKS:
        t = r[name]
        assert t["probe_seeds"] == seeds
        # Every seed trains at least one epoch and at most the smoke profile's cap of 5.
        assert seeds <= t["epochs_run"] <= seeds * 5
        # The second embed call reads the cache instead of running the encoder.
        assert t["embed_cached_s"] < t["embed_s"]
        assert t["reencode_projected_s"] == pytest.approx(
            t["probes_s"] + t["epochs_run"] * t["reencode_epoch_s"] + seeds * t["reencode_test_s"]
        )
        assert t["speedup"] == pytest.approx(
            t["reencode_projected_s"] / (t["embed_s"] + t["probes_s"])
        )
    total_ours = sum(r[n]["embed_s"] + r[n]["probes_s"] for n in TASKS)
    total_reencode = sum(r[n]["reencode_projected_s"] for n in TASKS)
    assert r["all_tasks_speedup"] == pytest.approx(total_reencode / total_ours)


def test_main_runs_sections_in_subprocesses_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert perf.main(["--only", "store", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["store"]["store_random_crops_per_s"] > 0
    assert result["store"]["peak_rss_mib"] > 0  # measured in the section's own process
    assert "store_random_crops_per_s" in capsys.readouterr().out


def test_main_rejects_unknown_sections(tmp_path):
    with pytest.raises(SystemExit):
        perf.main(["--only", "nope", "--out", str(tmp_path / "b.json")])
