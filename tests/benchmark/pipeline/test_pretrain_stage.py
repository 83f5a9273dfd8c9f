"""Stage ``pretrain`` (benchmark.pipeline.stages.run_pretrain) for every registered method on the
smoke
corpus: the MLflow run it records (kind, params, tags, metrics), the files of its run
directory, weights that actually moved, and the StageErrors of ``build_sources=False`` (sources
not built) and ``resume_only=True`` (nothing to resume)."""

from __future__ import annotations

import math

import pytest
import torch

from benchmark.errors import StageError
from benchmark.io import read_json
from benchmark.pipeline import stages
from benchmark.pretrain.loop import build_model
from methods import METHODS
from tests.fixtures import stage_env

METRICS = ("loss", "contrastive_accuracy", "chance_loss", "chance_accuracy", "lr", "pairs_per_s")
METRICS += ("val_loss", "val_contrastive_accuracy", "val_chance_loss", "val_chance_accuracy")
METRICS += ("wall_s", "resumed_from_step")

SEPARATE = "python -m benchmark separate --profile smoke"


def _setup(synth_smoke, runs):
    return stage_env(synth_smoke[0], runs)


def _pretrain_runs(tracker):
    return [r for r in tracker.runs() if r.data.tags.get("bench.kind") == "pretrain"]


@pytest.fixture(scope="module")
def env(synth_smoke, tmp_path_factory):
    return _setup(synth_smoke, tmp_path_factory.mktemp("pretrain_runs"))


@pytest.fixture(scope="module")
def sources(env):
    """Builds the separated sources once per separator a registered method needs."""
    separators = sorted({m.separator for m in METHODS.values() if m.sources})
    assert set(separators) == {"config", "random_mask", "oracle", "trained:0.25"}
    for separator in separators:
        stages.source_store(env, separator)


@pytest.mark.parametrize("method_name", sorted(METHODS))
def test_pretrain_every_method(env, sources, method_name):
    cfg, tracker = env.cfg, env.tracker
    method = METHODS[method_name]
    if method.sources:
        assert stages.sources_ready(env, method.separator)
    model = stages.run_pretrain(env, method_name, 0)
    assert model.method == method_name and model.seed == 0

    if not method.pretrained:
        # Nothing trained: the initial weights with precise-BN statistics, in a tracked run
        # (trained=false, no training metrics) that later holds its embeddings' health.
        run = tracker.find(model.key)
        assert run is not None and run.info.run_id == model.run_id
        assert run.info.status == "FINISHED" and run.data.tags["trained"] == "false"
        assert "loss" not in run.data.metrics
        initial_model = build_model(cfg.encoder, 0, torch.device("cpu"))
        final = torch.load(model.final_path, map_location="cpu", weights_only=True)
        for name, value in initial_model.named_parameters():
            assert torch.equal(value.detach(), final[name]), name
        stats = [k for k in final if k.endswith("running_var")]
        assert stats and not all(torch.equal(final[k], torch.ones_like(final[k])) for k in stats)
        assert stages.run_pretrain(env, method_name, 0).cached
        return

    assert not model.cached
    run = tracker.find(model.key)
    assert run is not None and run.info.run_id == model.run_id
    assert run.info.status == "FINISHED"
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    assert tags["bench.kind"] == "pretrain"
    assert tags["bench.key"] == model.key
    assert tags["method"] == method_name
    assert tags["seed"] == "0"
    assert tags["config_hash"] == cfg.hash()
    assert tags["git_commit"]
    assert tags["checkpoint"] == str(model.final_path.resolve())
    assert tags["collapsed"] in ("true", "false")
    # batches of 4 pairs: 4 candidates, or fewer with the centroid loss (at least 2, or 1 when
    # every positive of the batch is silent, frequent with the true stems of msa_multi_oracle)
    least = 1 if method.loss == "centroid" else 4
    assert math.log(least) - 1e-9 <= metrics["val_chance_loss"] <= math.log(4) + 1e-9
    assert params["config.pretrain.steps"] == "2"
    assert params["config.pretrain.batch_size"] == "4"
    assert params["seed"] == "0"
    assert params["method.name"] == method_name
    for name in METRICS:
        assert name in metrics, name
        assert math.isfinite(metrics[name]), (name, metrics[name])
    assert metrics["resumed_from_step"] == 0
    assert 0 <= metrics["contrastive_accuracy"] <= 1
    assert metrics["lr"] > 0 and metrics["pairs_per_s"] > 0
    # steps=2: the training metrics are logged at the last step only
    history = tracker.client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in history] == [2]

    run_dir = model.final_path.parent
    assert model.final_path == run_dir / "final.pt"
    for name in ("checkpoint.pt", "final.pt", "config.json"):
        assert (run_dir / name).is_file(), name
    config = read_json(run_dir / "config.json")
    assert config["hash"] == model.key
    # the seed it trained with: the negative control's copy of COLA offsets its seeds
    assert config["seed"] == getattr(method, "seed_offset", 0)
    assert config["method"]["name"] == method_name

    initial_model = build_model(cfg.encoder, config["seed"], torch.device("cpu"))
    initial = initial_model.state_dict()
    final = torch.load(model.final_path, map_location="cpu", weights_only=True)
    assert final.keys() == initial.keys()
    # Learnable parameters only: BatchNorm running statistics change even without updates.
    learnable = {name for name, _ in initial_model.named_parameters()}
    moved = [
        k
        for k in sorted(learnable)
        if initial[k].is_floating_point() and not torch.equal(initial[k], final[k])
    ]
    assert moved, "pre-training left every learnable weight at its initial value"


def test_build_sources_false_needs_separate(synth_smoke, tmp_path_factory):
    ctx = _setup(synth_smoke, tmp_path_factory.mktemp("pretrain_nosources"))
    tracker = ctx.tracker
    assert not stages.sources_ready(ctx, "config")
    assert not stages.sources_ready(ctx, "random_mask")

    with pytest.raises(StageError) as err:
        stages.run_pretrain(ctx, "msa_multi", 0, build_sources=False)
    assert SEPARATE in str(err.value)
    assert "--separator" not in str(err.value)
    with pytest.raises(StageError) as err:
        stages.run_pretrain(ctx, "cola_random_mask", 0, build_sources=False)
    assert f"{SEPARATE} --separator random_mask" in str(err.value)
    assert not _pretrain_runs(tracker)

    stages.source_store(ctx, "random_mask")
    assert stages.sources_ready(ctx, "random_mask")
    assert not stages.sources_ready(ctx, "config")  # one separator does not make both
    model = stages.run_pretrain(ctx, "cola_random_mask", 0, build_sources=False)
    assert model.final_path is not None and model.final_path.is_file()
    run = tracker.find(model.key)
    assert run is not None and run.info.status == "FINISHED"
    assert run.info.run_id == model.run_id


def test_resume_only_without_checkpoint(env):
    with pytest.raises(StageError, match="nothing to resume"):
        stages.run_pretrain(env, "cola", 7, resume_only=True)
    assert not [r for r in _pretrain_runs(env.tracker) if r.data.tags["seed"] == "7"]
    assert not list((env.cfg.profile_dir / "pretrain").glob("cola-s7-*"))


def test_studies_snapshot_probes_and_separator_quality(env, sources, tmp_path):
    """The convergence study's snapshot of a finished run is probed as kind probe-snapshot
    (collected apart from the leaderboard's scores), and the separator study's runs carry
    their separator's measured SI-SDR (true stems: exact)."""
    from benchmark.pipeline import probing, studies
    from benchmark.pipeline.tracking import collect
    from tasks import get_task

    model = stages.run_pretrain(env, "cola_mws", 0)
    snap = studies.snapshot_model(env, model, 1)  # 2 steps: the snapshot of 10-50% is step 1
    assert snap.final_path.name == "snapshot-000001-bn.pt" and snap.key == f"{model.key}@1"
    assert snap.final_path.parent == model.final_path.parent and snap.run_id is None
    task = get_task("fma")
    early = probing.run_probe(env, snap, task, 0, params_mode="default", snapshot_step=1)
    final = probing.run_probe(env, model, task, 0, params_mode="default")
    assert early.run_id != final.run_id
    tags = env.tracker.client.get_run(early.run_id).data.tags
    assert tags["bench.kind"] == "probe-snapshot" and tags["pretrain_step"] == "1"
    assert (
        probing.run_probe(env, snap, task, 0, params_mode="default", snapshot_step=1).status
        == "done"
    )

    for name in ("msa_multi", "msa_multi_oracle", "cola_random_mask"):
        assert studies.record_separator_quality(env, stages.run_pretrain(env, name, 0)) == "ran"
    ids = {early.run_id, final.run_id} | {
        r.info.run_id for r in _pretrain_runs(env.tracker) if r.data.tags["seed"] == "0"
    }
    data = collect(env.tracker, tmp_path, ids)
    assert set(data["scores"]["method"]) == {"cola_mws"}
    snapshot = data["snapshot_scores"]
    assert set(snapshot["step"]) == {1} and set(snapshot["method"]) == {"cola_mws"}
    assert ("cola_mws", "fma", 0, 0, 1) in data["snapshot_predictions"]
    records = data["separator_runs"].set_index(["method", "source"])["si_sdr"]
    assert records[("msa_multi_oracle", "exact")] == math.inf
    quality = read_json(
        stages.trained_separator_dir(env.cfg, stages.data_paths(env)) / "quality.json"
    )
    for source, value in quality["umx"]["mean_si_sdr_db"].items():
        assert records[("msa_multi", source)] == pytest.approx(value)
    for source, value in quality["random_mask"]["mean_si_sdr_db"].items():
        assert records[("cola_random_mask", source)] == pytest.approx(value)
