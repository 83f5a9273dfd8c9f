"""The embedding cache follows the store's content: a store that gains clips under the same
folder (a task file added on the pre-training folder) gets new embeddings, not the old rows."""

from __future__ import annotations

import numpy as np
import torch

from benchmark.config import resolve
from benchmark.data.store import FeatureStore, Job, build
from benchmark.evaluation.embed import _embed_store, store_content
from benchmark.pretrain.loop import PretrainedModel, build_model
from tests.fixtures import TINY_PRETRAIN, _mix_extract


def _store(root, num_clips: int) -> FeatureStore:
    jobs = [Job(f"c{i:03d}", f"k{i}", (i, 300)) for i in range(num_clips)]
    build(root, jobs, _mix_extract, progress=False)
    return FeatureStore(root)


def _cached(folder):
    return np.load(folder / "embeddings.npy"), np.load(folder / "offsets.npy")


def test_a_store_that_gains_clips_gets_new_embeddings(tmp_path):
    cfg = resolve("smoke", [*TINY_PRETRAIN, f"paths.runs_dir={tmp_path / 'runs'}"])
    weights = tmp_path / "final.pt"
    torch.save(build_model(cfg.encoder, 0, torch.device("cpu")).state_dict(), weights)
    model = PretrainedModel("random_init", 0, "floor", weights, None)
    small = _store(tmp_path / "store", 3)
    _, offsets = _cached(_embed_store(cfg, model, small, 98, progress=False))
    assert len(offsets) == 4
    grown = _store(tmp_path / "store", 5)  # same folder, two more clips
    assert grown.root == small.root and store_content(grown) != store_content(small)
    embeddings, offsets = _cached(_embed_store(cfg, model, grown, 98, progress=False))
    assert len(offsets) == 6 and offsets[-1] == len(embeddings) == 5 * 3  # 3 windows per clip


def test_the_cache_keeps_float16_only(tmp_path):
    """The float32 features are scratch: the folder holds the float16 cache and its maps, not
    a second copy twice its size; the map gives back the float32 features within float16's
    rounding."""
    import benchmark.evaluation.embed as embed_module

    cfg = resolve("smoke", [*TINY_PRETRAIN, f"paths.runs_dir={tmp_path / 'runs'}"])
    weights = tmp_path / "final.pt"
    torch.save(build_model(cfg.encoder, 0, torch.device("cpu")).state_dict(), weights)
    model = PretrainedModel("random_init", 0, "floor", weights, None)
    folder = _embed_store(cfg, model, _store(tmp_path / "store", 2), 98, progress=False)
    names = {"embeddings.npy", "offset.npy", "scale.npy", "offsets.npy", "health.json"}
    assert {p.name for p in folder.iterdir()} == names | {"done.json"}
    net = embed_module._encoder_for(cfg, model, torch.device("cpu"))
    store = FeatureStore(tmp_path / "store")
    crop = cfg.frontend.crop_frames
    x = torch.from_numpy(store.crops(np.array([0, 1]), np.array([0, 0]), crop))
    z, _ = _cached(folder)
    restored = z[::3].astype(np.float32) * np.load(folder / "scale.npy") + np.load(
        folder / "offset.npy"
    )
    with torch.inference_mode():
        direct = net.features(x).numpy()
    np.testing.assert_allclose(restored, direct, atol=2e-3 * direct.std(0).max() + 1e-6)


def test_the_encoder_runs_on_compute_threads_and_the_caller_keeps_its_own(tmp_path, monkeypatch):
    """Issue #13: a step's numbers depended on the thread count that earlier steps of the same
    process had left; embedding runs on ``compute.torch_threads`` whatever the caller set."""
    import benchmark.evaluation.embed as embed_module

    cfg = resolve(
        "smoke", [*TINY_PRETRAIN, f"paths.runs_dir={tmp_path / 'runs'}", "compute.torch_threads=2"]
    )
    weights = tmp_path / "final.pt"
    torch.save(build_model(cfg.encoder, 0, torch.device("cpu")).state_dict(), weights)
    model = PretrainedModel("random_init", 0, "floor", weights, None)
    store = _store(tmp_path / "store", 2)
    seen: list[int] = []
    real = embed_module._encoder_for

    class _Counting:
        def __init__(self, net):
            self.net, self.feature_dim = net, net.feature_dim

        def features(self, x):
            seen.append(torch.get_num_threads())
            return self.net.features(x)

    monkeypatch.setattr(embed_module, "_encoder_for", lambda *a: _Counting(real(*a)))
    previous = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        _embed_store(cfg, model, store, 98, progress=False)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(previous)
    assert seen and set(seen) == {2}
