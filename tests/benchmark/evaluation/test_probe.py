"""Probes on synthetic window embeddings: planted signal, chance, early stopping, determinism."""

import warnings

import numpy as np
import pytest
import torch

from benchmark.evaluation.metrics import primary_score_fn, score_multiclass, score_multilabel
from benchmark.evaluation.probe import (
    ProbeParams,
    ProbeSpec,
    WindowSet,
    _window_draws,
    build_probe,
    predict_clips,
    train_probe,
)

NUM_TAGS, NUM_CLASSES, DIM, WINDOWS = 5, 4, 32, 6


def planted_windows(
    rng: np.random.Generator,
    num_clips: int,
    multilabel: bool,
    directions: np.ndarray,
    *,
    windows_per_clip: int = WINDOWS,
    signal: float = 1.5,
) -> WindowSet:
    """Windows whose embeddings carry the clip's labels along fixed random ``directions``.

    Each clip's label vector (multi-hot, or one-hot of the class), scaled to +-1, is projected on
    ``directions`` (``(C, D)``) and every window adds unit Gaussian noise: the labels are
    linearly separable from a clip's mean embedding. Windows are stored in shuffled order.
    """
    num_outputs = directions.shape[0]
    if multilabel:
        targets = (rng.random((num_clips, num_outputs)) < 0.35).astype(np.float32)
        labels = targets
    else:
        targets = rng.integers(0, num_outputs, num_clips)
        labels = np.eye(num_outputs)[targets]
    clip_index = rng.permutation(np.repeat(np.arange(num_clips), windows_per_clip))
    noise = rng.standard_normal((clip_index.size, directions.shape[1]))
    embeddings = signal * (2 * labels[clip_index] - 1) @ directions + noise
    return WindowSet(embeddings.astype(np.float32), clip_index, targets)


def _shuffled(windows: WindowSet, rng: np.random.Generator) -> WindowSet:
    """The same embeddings with the clips' targets permuted: no signal left."""
    return WindowSet(windows.embeddings, windows.clip_index, rng.permutation(windows.targets))


def _names(n):
    return [f"n{i}" for i in range(n)]


def _task(multilabel: bool):
    num_outputs = NUM_TAGS if multilabel else NUM_CLASSES
    return num_outputs, primary_score_fn(_names(num_outputs), multilabel)


def _fit(spec, params, train, valid, *, seed=0, score_fn=None, **kwargs):
    """``train_probe`` on the CPU; ``score_fn`` defaults to the task kind's primary score."""
    score_fn = score_fn or _task(spec.multilabel)[1]
    return train_probe(
        spec, params, train, valid, seed=seed, score_fn=score_fn, device="cpu", **kwargs
    )


def _one_epoch_linear(train, valid, **kwargs):
    """A linear multi-class probe after one epoch (lr 1e-3, seed 0)."""
    spec = ProbeSpec("linear", False, NUM_CLASSES)
    return _fit(spec, ProbeParams(lr=1e-3), train, valid, max_epochs=1, **kwargs)


@pytest.fixture(scope="module")
def splits():
    """Planted train / valid / test splits for both task kinds."""
    rng = np.random.default_rng(0)
    data = {}
    for multilabel in (True, False):
        directions = rng.standard_normal((NUM_TAGS if multilabel else NUM_CLASSES, DIM))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        data[multilabel] = tuple(
            planted_windows(rng, n, multilabel, directions) for n in (200, 80, 400)
        )
    return data


@pytest.mark.parametrize("kind", ["linear", "mlp"])
@pytest.mark.parametrize("multilabel", [True, False], ids=["multilabel", "multiclass"])
@pytest.mark.parametrize("shuffle", [False, True], ids=["planted", "shuffled"])
def test_planted_signal_is_learnt_and_shuffled_labels_give_chance(
    splits, kind, multilabel, shuffle
):
    train, valid, test = splits[multilabel]
    if shuffle:
        # Labels independent of the embeddings in every split. (Shuffling only the training
        # labels would not give chance: the probe would map the planted clusters to a random
        # permutation of the classes, whose test accuracy varies widely around chance.)
        rng = np.random.default_rng(1)
        train, valid, test = (_shuffled(split, rng) for split in (train, valid, test))
    num_outputs, _ = _task(multilabel)
    spec = ProbeSpec(kind, multilabel, num_outputs, hidden_dim=64)
    result = _fit(
        spec, ProbeParams(lr=3e-3), train, valid, max_epochs=15, patience=4, windows_per_clip=3
    )
    scores = predict_clips(result.model, test)
    if multilabel:
        roc_auc = score_multilabel(test.targets, scores, _names(num_outputs))["roc_auc"]
        assert abs(roc_auc - 0.5) < 0.08 if shuffle else roc_auc > 0.98
    else:
        accuracy = score_multiclass(test.targets, scores, _names(num_outputs))["accuracy"]
        chance = 1 / NUM_CLASSES
        assert abs(accuracy - chance) < 0.1 if shuffle else accuracy > 0.95


def test_early_stopping_restores_the_best_epoch(splits):
    """A scripted validation score: best at epoch 2, then patience 3 -> stop after epoch 5."""
    train, valid, _ = splits[False]
    scripted = iter([0.1, 0.5, 0.4, 0.5, 0.3, 0.9, 0.9])
    seen = []

    def score_fn(targets, clip_scores):
        seen.append(clip_scores.copy())
        return next(scripted)

    spec = ProbeSpec("linear", False, NUM_CLASSES)
    result = _fit(spec, ProbeParams(lr=1e-2), train, valid, score_fn=score_fn, patience=3)
    assert result.best_epoch == 2
    assert result.epochs_run == 5 == len(result.history)
    assert result.best_valid_score == 0.5
    assert [h["valid_score"] for h in result.history] == [0.1, 0.5, 0.4, 0.5, 0.3]
    # The returned model is epoch 2's, not the last one's (a tie, epoch 4, does not replace it).
    np.testing.assert_array_equal(predict_clips(result.model, valid), seen[1])
    assert not np.array_equal(seen[1], seen[4])


@pytest.mark.parametrize("patience", [1, 3])
def test_early_stopping_bounds_and_restored_score(splits, patience):
    train, valid, _ = splits[True]
    train = _shuffled(train, np.random.default_rng(2))  # a noisy plateau: stops early
    _, score_fn = _task(True)
    spec = ProbeSpec("linear", True, NUM_TAGS)
    max_epochs = 30
    result = _fit(
        spec, ProbeParams(lr=1e-2), train, valid, max_epochs=max_epochs, patience=patience
    )
    scores = [h["valid_score"] for h in result.history]
    assert result.epochs_run <= result.best_epoch + patience
    assert result.epochs_run == max_epochs or result.epochs_run == result.best_epoch + patience
    assert result.best_valid_score == max(scores) == scores[result.best_epoch - 1]
    restored = score_fn(valid.targets, predict_clips(result.model, valid))
    assert restored == pytest.approx(result.best_valid_score, abs=1e-12)


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_same_seed_same_model_and_global_rng_untouched(splits, kind):
    train, valid, test = splits[False]
    spec = ProbeSpec(kind, False, NUM_CLASSES, hidden_dim=32)
    params = ProbeParams(lr=3e-3, dropout=0.2 if kind == "mlp" else 0.0)

    def run(seed):
        result = _fit(spec, params, train, valid, seed=seed, max_epochs=3, patience=3)
        return predict_clips(result.model, test)

    torch.manual_seed(123)
    threads = torch.get_num_threads()
    first = run(0)
    after = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(after, torch.rand(3)), "train_probe must not consume the global RNG"
    assert torch.get_num_threads() == threads
    np.testing.assert_array_equal(first, run(0))
    assert not np.array_equal(first, run(1))


def test_standardisation_uses_training_windows_only(splits):
    train, valid, _ = splits[False]
    rng = np.random.default_rng(3)
    scale = rng.uniform(0.01, 100, DIM).astype(np.float32)
    train = WindowSet(train.embeddings * scale + 5, train.clip_index, train.targets)
    train.embeddings[:, 0] = 7.0  # a constant dimension
    valid = WindowSet(valid.embeddings * 1000 - 3, valid.clip_index, valid.targets)
    result = _one_epoch_linear(train, valid)
    expected_mean = train.embeddings.astype(np.float64).mean(axis=0)
    expected_std = train.embeddings.astype(np.float64).std(axis=0)
    expected_std[0] = 1.0
    np.testing.assert_allclose(result.model.mean.numpy(), expected_mean, rtol=1e-6)
    np.testing.assert_allclose(result.model.std.numpy(), expected_std, rtol=1e-5)
    # The statistics are buffers: a saved state dict restores them into a fresh probe.
    state = result.model.state_dict()
    assert {"mean", "std"} <= set(state)
    fresh = build_probe(result.model.spec, DIM, result.model.params)
    fresh.load_state_dict(state)
    np.testing.assert_array_equal(predict_clips(fresh, valid), predict_clips(result.model, valid))


def test_without_standardisation_the_probe_reads_raw_embeddings(splits):
    """``standardize=False`` (the paper's probes): identity buffers, so the first layer sees
    the embeddings as they are; a naive matmul of the weights reproduces the logits."""
    train, valid, _ = splits[False]
    shifted = WindowSet(train.embeddings * 3 + 2, train.clip_index, train.targets)
    result = _one_epoch_linear(shifted, valid, standardize=False)
    np.testing.assert_array_equal(result.model.mean.numpy(), np.zeros(DIM, np.float32))
    np.testing.assert_array_equal(result.model.std.numpy(), np.ones(DIM, np.float32))
    x = valid.embeddings[:4].astype(np.float32)
    weight = result.model.net.weight.detach().numpy()
    bias = result.model.net.bias.detach().numpy()
    with torch.no_grad():
        logits = result.model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(logits, x @ weight.T + bias, rtol=1e-5, atol=1e-5)


def test_float16_memory_mapped_cache_is_cast_exactly(splits, tmp_path):
    """The embed stage hands over read-only float16 memory maps."""
    train, valid, _ = splits[True]
    _, score_fn = _task(True)
    spec = ProbeSpec("linear", True, NUM_TAGS)
    np.save(tmp_path / "train.npy", train.embeddings.astype(np.float16))
    mapped = np.load(tmp_path / "train.npy", mmap_mode="r")
    half = WindowSet(mapped, train.clip_index, train.targets)
    full = WindowSet(np.asarray(mapped, np.float32), train.clip_index, train.targets)
    kwargs = dict(seed=0, score_fn=score_fn, max_epochs=2, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from_half = train_probe(spec, ProbeParams(lr=1e-3), half, valid, **kwargs)
    from_full = train_probe(spec, ProbeParams(lr=1e-3), full, valid, **kwargs)
    np.testing.assert_array_equal(
        predict_clips(from_half.model, valid), predict_clips(from_full.model, valid)
    )


@pytest.mark.parametrize("multilabel", [True, False])
def test_predict_clips_equals_naive_per_clip_average(multilabel):
    rng = np.random.default_rng(4)
    num_clips, num_outputs = 7, 3
    counts = rng.integers(1, 5, num_clips)
    clip_index = rng.permutation(np.repeat(np.arange(num_clips), counts))
    embeddings = rng.standard_normal((clip_index.size, 8)).astype(np.float32)
    targets = (
        np.zeros((num_clips, num_outputs), np.float32)
        if multilabel
        else np.zeros(num_clips, np.int64)
    )
    windows = WindowSet(embeddings, clip_index, targets)
    torch.manual_seed(0)
    spec = ProbeSpec("mlp", multilabel, num_outputs, hidden_dim=16)
    model = build_probe(spec, 8, ProbeParams(lr=1e-3), mean=np.full(8, 0.5), std=np.full(8, 2.0))

    got = predict_clips(model, windows, batch_size=5)  # batches cut across clips
    with torch.no_grad():
        logits = model.net((torch.from_numpy(embeddings) - 0.5) / 2.0)
        probs = torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=1)
    for clip in range(num_clips):
        expected = probs[torch.from_numpy(clip_index == clip)].double().mean(dim=0).numpy()
        np.testing.assert_allclose(got[clip], expected, rtol=1e-6)
    if not multilabel:
        np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-6)


def test_window_draws_pick_windows_of_each_clip():
    rng = np.random.default_rng(5)
    clip_index = rng.permutation(np.repeat(np.arange(4), [1, 2, 3, 5]))
    draw = _window_draws(clip_index, 4)
    seen = set()
    for _ in range(50):
        picks = draw(rng, 3).reshape(4, 3)
        np.testing.assert_array_equal(clip_index[picks], np.repeat(np.arange(4)[:, None], 3, 1))
        seen.update(picks.ravel().tolist())
    assert seen == set(range(clip_index.size)), "every window is eventually drawn"


def test_invalid_inputs_raise():
    embeddings = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match="own no window"):
        WindowSet(embeddings, np.array([0, 0, 1, 1]), np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="lie in"):
        WindowSet(embeddings, np.array([0, 1, 2, 3]), np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="shape"):
        WindowSet(embeddings, np.array([0, 1, 2]), np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="unknown probe kind"):
        ProbeSpec("transformer", True, 3)
    with pytest.raises(ValueError, match="dropout"):
        build_probe(ProbeSpec("linear", True, 3), 3, ProbeParams(lr=1e-3, dropout=0.1))
    with pytest.raises(ValueError, match="lr"):
        ProbeParams(lr=0.0)

    out_of_range = WindowSet(embeddings, np.array([0, 0, 1, 1]), np.array([0, 5]))
    nan = WindowSet(np.full((4, 3), np.nan, np.float32), np.array([0, 0, 1, 1]), np.array([0, 1]))
    for windows, match in ((out_of_range, "targets must lie"), (nan, "nan")):
        with pytest.raises(ValueError, match=match):
            train_probe(
                ProbeSpec("linear", False, 3),
                ProbeParams(lr=1e-3),
                windows,
                windows,
                seed=0,
                score_fn=lambda t, s: 0.0,
            )
