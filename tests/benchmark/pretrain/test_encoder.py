"""Tests of the shared encoder, the contrastive model and batch-norm re-estimation."""

import pytest
import torch
from torch import nn

from benchmark.config import EncoderConfig
from benchmark.pretrain.encoder import (
    ContrastiveModel,
    Encoder,
    count_parameters,
    reestimate_batchnorm,
)

SMALL = {"width_coefficient": 0.25, "depth_coefficient": 0.25}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def log_mel(batch: int, frames: int = 49, seed: int = 0) -> torch.Tensor:
    """Log-mel-like input: values around log(mel + 1e-6) of quiet audio, not centred.

    Half a crop by default, to keep the tiny-model tests fast; the B0 test uses 98 frames.
    """
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, frames, 64, generator=g) * 2.0 - 9.0


def small_model(similarity: str = "bilinear", embedding_dim: int = 16) -> ContrastiveModel:
    torch.manual_seed(0)
    return ContrastiveModel(
        EncoderConfig(**SMALL, embedding_dim=embedding_dim, similarity=similarity)
    )


def test_b0_shape_and_size():
    encoder = Encoder().eval()
    with torch.no_grad():
        features = encoder(log_mel(2, frames=98))
    assert encoder.feature_dim == 1280
    assert features.shape == (2, 1280)
    # EfficientNet-B0 without its classifier: about 4.0 M parameters.
    assert 3.9e6 < count_parameters(encoder) < 4.1e6


@pytest.mark.parametrize(("width", "feature_dim"), [(0.25, 320), (0.5, 640)])
def test_feature_dim_follows_width(width, feature_dim):
    encoder = Encoder(width, 0.25)
    assert encoder.feature_dim == feature_dim
    assert encoder.net._conv_stem.in_channels == 1


def test_encoder_accepts_any_number_of_frames():
    encoder = Encoder(**SMALL).eval()
    with torch.no_grad():
        assert encoder(log_mel(2, frames=392)).shape == (2, 320)
        assert encoder(log_mel(2, frames=98)).shape == (2, 320)


def test_encoder_is_time_first():
    """Time is the image height: the first convolution sees (B, 1, T, F)."""
    encoder = Encoder(**SMALL).eval()
    shapes = []
    encoder.net._conv_stem.register_forward_hook(lambda m, i, o: shapes.append(i[0].shape))
    with torch.no_grad():
        encoder(log_mel(3, frames=40))
    assert shapes == [(3, 1, 40, 64)]


def test_encoder_rejects_wrong_rank():
    with pytest.raises(ValueError, match="frames"):
        Encoder(**SMALL)(torch.zeros(2, 1, 98, 64))
    with pytest.raises(ValueError, match="positive"):
        Encoder(0.0, 1.0)


def test_bilinear_model_shapes_and_similarity():
    model = small_model().eval()
    anchors, positives = log_mel(3, seed=1), log_mel(5, seed=2)
    with torch.no_grad():
        za, zp = model(anchors, positives)
        assert model.features(anchors).shape == (3, model.feature_dim)
        logits = model.similarity(za, zp)
        # One pass over the concatenation equals separate passes in eval mode.
        torch.testing.assert_close(za, model.project(anchors))
        torch.testing.assert_close(zp, model.project(positives))
    assert za.shape == (3, 16) and zp.shape == (5, 16)
    assert za.abs().max() < 1  # tanh after LayerNorm
    assert logits.shape == (3, 5)
    w = model.bilinear_weight
    assert w.shape == (16, 16)
    expected = torch.stack([torch.stack([a @ w @ p for p in zp]) for a in za])
    torch.testing.assert_close(logits, expected)


def test_cosine_model_similarity():
    model = small_model("cosine").eval()
    assert model.bilinear_weight is None
    with torch.no_grad():
        z = model.project(log_mel(4))
        logits = model.similarity(z, z)
    torch.testing.assert_close(torch.diagonal(logits), torch.full((4,), 1 / 0.2))
    assert logits.abs().max() <= 1 / 0.2 + 1e-4


@pytest.mark.parametrize(
    "overrides",
    [{"similarity": "dot"}, {"embedding_dim": 0}, {"similarity": "cosine", "temperature": 0.0}],
)
def test_model_rejects_bad_config(overrides):
    with pytest.raises(ValueError):
        ContrastiveModel(EncoderConfig(**SMALL, **overrides))


def test_similarity_rejects_wrong_width():
    model = small_model()
    with pytest.raises(ValueError, match="candidates"):
        model.similarity(torch.zeros(2, 16), torch.zeros(2, 8))


def test_channels_last_and_bf16_autocast_run():
    model = small_model().to(memory_format=torch.channels_last).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        za, zp = model(log_mel(2, seed=1), log_mel(2, seed=2))
        logits = model.similarity(za, zp)
    logits.float().sum().backward()
    assert torch.isfinite(logits.float()).all()
    assert model.encoder.net._conv_stem.weight.grad is not None


def test_count_parameters():
    layer = nn.Linear(3, 4)
    assert count_parameters(layer) == 16
    layer.bias.requires_grad_(False)
    assert count_parameters(layer, trainable_only=True) == 12


def test_reestimate_batchnorm_repairs_random_init_features():
    encoder = Encoder(**SMALL)
    x = log_mel(8)
    momentum = encoder.net._bn0.momentum
    with torch.no_grad():
        before = encoder.eval()(x)
    # REFERENCE.md section 9: initial running statistics give degenerate features.
    assert before.std(dim=0).max() < 1e-6

    assert reestimate_batchnorm(encoder, [x]) == 8
    assert not encoder.training
    assert encoder.net._bn0.momentum == momentum
    with torch.no_grad():
        stem = encoder.net._conv_stem(x.unsqueeze(1))
        after = encoder(x)
    torch.testing.assert_close(encoder.net._bn0.running_mean, stem.mean(dim=(0, 2, 3)))
    assert after.std(dim=0).median() > 0.1
    assert not torch.allclose(after[0], after[1])


def test_reestimate_batchnorm_is_a_deterministic_cumulative_average():
    encoder = Encoder(**SMALL)
    x = log_mel(8)
    reestimate_batchnorm(encoder, [x[:4], x[4:]])
    first = encoder.net._bn1.running_mean.clone()
    # Drop connect stays off, so the same batches give the same statistics.
    reestimate_batchnorm(encoder, iter([x[:4], x[4:]]))
    torch.testing.assert_close(encoder.net._bn1.running_mean, first)
    with torch.no_grad():
        stems = [encoder.net._conv_stem(b.unsqueeze(1)).mean(dim=(0, 2, 3)) for b in (x[:4], x[4:])]
    torch.testing.assert_close(encoder.net._bn0.running_mean, (stems[0] + stems[1]) / 2)


def test_reestimate_batchnorm_rejects_empty_input():
    encoder = Encoder(**SMALL)
    stats = encoder.net._bn0.running_var.clone()
    with pytest.raises(ValueError, match="no batches"):
        reestimate_batchnorm(encoder, [])
    torch.testing.assert_close(encoder.net._bn0.running_var, stats)
    with pytest.raises(ValueError, match="batch-norm"):
        reestimate_batchnorm(nn.Linear(2, 2), [torch.zeros(1, 2)])
