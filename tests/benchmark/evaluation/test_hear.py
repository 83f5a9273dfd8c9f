"""The HEAR 2021 API in and out: the window protocol against a naive reference, an external
encoder through the pipeline (cached by content), the API's mistakes named, and a pre-trained
encoder exported, pip-installed and loaded back giving the native embeddings."""

from __future__ import annotations

import importlib
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from benchmark.config import FrontEndConfig
from benchmark.errors import StageError
from benchmark.evaluation import embed as embed_mod
from benchmark.evaluation.hear import (
    HearEmbedder,
    import_hear_module,
    load_hear_model,
    pool_windows,
    window_spans_ms,
)
from benchmark.pipeline import probing, stages
from benchmark.pipeline.export import export_hear
from tests import hear_tiny
from tests.fixtures import stage_env

PROBES = ["probe.max_epochs=2", "probe.patience=1", "probe.train_hop_frames=98",
          "probe.params=default", "probe.seeds=0"]  # fmt: skip
TINY = "tests.hear_tiny"


def test_windows_are_the_harness_crops_in_ms():
    begin, end = window_spans_ms(np.array([0, 49, 98]), FrontEndConfig())
    # frame s reads samples [160 s, 160 s + 400): 98 frames span 97 * 160 + 400 = 15,920
    np.testing.assert_allclose(begin, [0.0, 490.0, 980.0])
    np.testing.assert_allclose(end - begin, 995.0)


def test_pooling_is_the_mean_of_the_timestamps_inside_else_the_nearest():
    rng = np.random.default_rng(0)
    embeddings = rng.standard_normal((40, 3)).astype(np.float32)
    timestamps = np.arange(40) * 50.0 + 25.0
    begin, end = np.array([0.0, 300.0, 5000.0]), np.array([995.0, 1295.0, 5995.0])
    got = pool_windows(embeddings, timestamps, begin, end)
    for w in range(2):  # naive reference
        rows = [embeddings[t] for t in range(40) if begin[w] <= timestamps[t] < end[w]]
        np.testing.assert_allclose(got[w], np.mean(rows, axis=0), rtol=1e-6)
    np.testing.assert_array_equal(got[2], embeddings[39])  # past the end: the nearest


def test_the_embedder_pools_the_modules_timestamp_embeddings(tmp_path):
    path = tmp_path / "clip.wav"
    wave = np.random.default_rng(1).uniform(-0.5, 0.5, 3 * 16000).astype(np.float32)
    sf.write(path, wave, 16000, subtype="FLOAT")
    embedder = HearEmbedder(TINY, "", FrontEndConfig(), device=torch.device("cpu"))
    starts = np.array([0, 98, 196])
    got = embedder(path, starts)
    model = hear_tiny.load_model()
    emb, ts = hear_tiny.get_timestamp_embeddings(torch.from_numpy(wave[None]), model)
    emb, ts = emb[0].detach().numpy(), ts[0].numpy()
    for w, s in enumerate(starts):
        inside = (ts >= 10 * s) & (ts < 10 * s + 995)
        np.testing.assert_allclose(got[w], emb[inside].mean(axis=0), rtol=1e-5, atol=1e-6)


def test_modules_that_break_the_api_are_named(tmp_path, monkeypatch):
    with pytest.raises(StageError, match=r"hear:no_such_module: cannot import module"):
        import_hear_module("no_such_module")
    (tmp_path / "half_hear.py").write_text("def load_model(model_file_path=''):\n    return 1\n")
    (tmp_path / "no_rate.py").write_text(
        "class M:\n    scene_embedding_size = 4\n    timestamp_embedding_size = 4\n"
        "def load_model(model_file_path=''):\n    return M()\n"
        "def get_scene_embeddings(audio, model):\n    pass\n"
        "def get_timestamp_embeddings(audio, model):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(StageError, match="lacks the HEAR function.*get_scene_embeddings"):
        import_hear_module("half_hear")
    with pytest.raises(StageError, match="the model's sample_rate is None"):
        load_hear_model("no_rate")


@pytest.fixture(scope="module")
def env(synth_smoke, tmp_path_factory):
    return stage_env(synth_smoke[0], tmp_path_factory.mktemp("runs"), PROBES)


def test_an_external_encoder_runs_through_the_pipeline_and_is_cached_by_content(
    env, tmp_path, monkeypatch
):
    ctx = env
    task = stages.get_task(ctx, "fma")
    model = stages.run_pretrain(ctx, f"hear:{TINY}", 0)
    assert model.external == (TINY, "") and model.final_path is None
    outcome = probing.run_probe(ctx, model, task, 0)
    run = ctx.tracker.client.get_run(outcome.run_id)
    assert run.data.tags["method"] == f"hear:{TINY}" and 0 <= run.data.metrics["accuracy"] <= 1
    dataset, first = probing._embedded(ctx, model, task)
    assert first["train"][0].dim == hear_tiny.EMBEDDING_SIZE
    # A cache hit never loads the module again.
    with monkeypatch.context() as m:
        m.setattr(embed_mod, "_embed_external", lambda *a, **k: pytest.fail("re-embedded"))
        assert probing._embedded(ctx, model, task)[1]["key"] == first["key"]
    # Other weights (a model file with another seed) are other embeddings.
    seed_file = tmp_path / "seed.txt"
    seed_file.write_text("7")
    other = stages.run_pretrain(ctx, f"hear:{TINY}@{seed_file}", 0)
    assert other.key != model.key
    second = probing._embedded(ctx, other, task)[1]
    assert not np.array_equal(second["test"][0].embeddings, first["test"][0].embeddings)


def test_export_hear_round_trip_gives_the_native_embeddings(env, tmp_path):
    """cola pre-trained here -> export-hear -> pip install -> loaded back through the HEAR
    adapter: the embeddings of the harness's validation and test windows agree with the
    native ones to float16 storage precision (both are stored as float16)."""
    ctx = env
    native_model = stages.run_pretrain(ctx, "cola", 0)
    package = export_hear(ctx, "cola", 0, tmp_path / "export", name="mscol_roundtrip")
    assert (tmp_path / "export" / "pyproject.toml").is_file()
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(site), str(package.parent)],
        check=True, capture_output=True,
    )  # fmt: skip
    assert (site / "mscol_roundtrip" / "model.pt").is_file()
    sys.path.insert(0, str(site))
    try:
        module = importlib.import_module("mscol_roundtrip")
        assert Path(module.__file__).parent == site / "mscol_roundtrip"
        _check_hear_contract(module)
        task = stages.get_task(ctx, "fma")
        external = replace(native_model, method="hear:mscol_roundtrip", key="exported",
                           final_path=None, external=("mscol_roundtrip", ""))  # fmt: skip
        _, native = probing._embedded(ctx, native_model, task)
        _, exported = probing._embedded(ctx, external, task)
    finally:
        sys.path.remove(str(site))
        sys.modules.pop("mscol_roundtrip", None)
    for split in ("valid", "test"):
        a = native[split][0].embeddings.astype(np.float32)
        b = exported[split][0].embeddings.astype(np.float32)
        assert a.shape == b.shape
        # Stated tolerance: 1% of the largest feature (float16 keeps ~3 significant digits).
        assert np.abs(a - b).max() <= 1e-2 * np.abs(a).max(), split


def _check_hear_contract(module) -> None:
    """What hearvalidator checks (it needs TensorFlow, so it is not run here): the three
    functions, the model's attributes, float32 outputs of the right shapes for batches of
    white noise (16 x 2 s, 8 x 3.74 s), and regularly spaced timestamps in ms."""
    model = module.load_model()
    assert model.sample_rate in (16000, 22050, 44100, 48000)
    assert model.scene_embedding_size == model.timestamp_embedding_size > 0
    audio = torch.rand(16, int(2.0 * model.sample_rate)) * 2 - 1
    emb, ts = module.get_timestamp_embeddings(audio, model)
    assert emb.dtype == torch.float32 and emb.shape[0] == 16
    assert ts.shape == emb.shape[:2] and emb.shape[2] == model.timestamp_embedding_size
    diff = torch.diff(ts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert torch.all(torch.abs(diff - diff.float().mean()) < 1e-3)
    assert ts[0, 0] == pytest.approx(497.5)  # the first window's centre
    scene = module.get_scene_embeddings(torch.rand(8, int(3.74 * model.sample_rate)) * 2 - 1, model)
    assert scene.dtype == torch.float32 and scene.shape == (8, model.scene_embedding_size)
