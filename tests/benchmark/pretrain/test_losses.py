"""Tests of the contrastive losses against a naive per-anchor reference."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmark.config import EncoderConfig
from benchmark.pretrain.encoder import ContrastiveModel
from benchmark.pretrain.losses import centroid_contrastive_loss, contrastive_loss

DIM = 6


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def embeddings(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, DIM, generator=g, dtype=torch.float64), torch.randn(
        n, DIM, generator=g, dtype=torch.float64
    )


def bilinear(seed: int = 99):
    w = torch.randn(DIM, DIM, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return lambda a, p: a @ w @ p.T


def cosine(a, p):
    return (
        torch.nn.functional.normalize(a, dim=-1) @ torch.nn.functional.normalize(p, dim=-1).T / 0.2
    )


def dot(a, p):
    return a @ p.T


def naive_loss(anchors, positives, silent, similarity) -> tuple[float, float]:
    """One anchor at a time: build its candidate list, score each pair, log-sum-exp by hand."""
    n = len(anchors)
    silent = [bool(s) for s in silent]
    candidates = [positives[j] for j in range(n) if not silent[j]]
    if any(silent):
        quiet = [positives[j] for j in range(n) if silent[j]]
        candidates.append(sum(quiet) / len(quiet))
    total, correct = 0.0, 0
    for i in range(n):
        target = len(candidates) - 1 if silent[i] else sum(not s for s in silent[:i])
        logits = [float(similarity(anchors[i][None], c[None])[0, 0]) for c in candidates]
        peak = max(logits)
        log_sum_exp = peak + math.log(sum(math.exp(v - peak) for v in logits))
        total += log_sum_exp - logits[target]
        correct += max(range(len(logits)), key=lambda j: logits[j]) == target
    return total / n, correct / n


def pattern(name: str, n: int) -> torch.Tensor:
    silent = torch.zeros(n, dtype=torch.bool)
    if name == "one":
        silent[n // 2] = True
    elif name == "some":
        silent[::2] = True
    elif name == "all":
        silent[:] = True
    return silent


@pytest.mark.parametrize("n", [1, 2, 5, 16])
@pytest.mark.parametrize("similarity", [bilinear(), cosine], ids=["bilinear", "cosine"])
def test_contrastive_loss_matches_naive(n, similarity):
    anchors, positives = embeddings(n, seed=n)
    loss, accuracy = contrastive_loss(anchors, positives, similarity)
    expected_loss, expected_accuracy = naive_loss(anchors, positives, [False] * n, similarity)
    assert loss.item() == pytest.approx(expected_loss, rel=1e-5)
    assert accuracy.item() == pytest.approx(expected_accuracy)
    assert not accuracy.requires_grad


@pytest.mark.parametrize("n", [1, 2, 5, 16])
@pytest.mark.parametrize("silent_pattern", ["none", "one", "some", "all"])
@pytest.mark.parametrize("similarity", [bilinear(), cosine], ids=["bilinear", "cosine"])
def test_centroid_loss_matches_naive(n, silent_pattern, similarity):
    anchors, positives = embeddings(n, seed=10 + n)
    silent = pattern(silent_pattern, n)
    loss, accuracy = centroid_contrastive_loss(anchors, positives, silent, similarity)
    expected_loss, expected_accuracy = naive_loss(anchors, positives, silent, similarity)
    assert loss.item() == pytest.approx(expected_loss, rel=1e-5, abs=1e-12)
    assert accuracy.item() == pytest.approx(expected_accuracy)


def test_no_silent_positive_is_plain_cola_exactly():
    anchors, positives = embeddings(7, seed=3)
    plain = contrastive_loss(anchors, positives, bilinear())
    centroid = centroid_contrastive_loss(
        anchors, positives, torch.zeros(7, dtype=torch.bool), bilinear()
    )
    assert torch.equal(plain[0], centroid[0]) and torch.equal(plain[1], centroid[1])


def test_all_silent_gives_zero_loss_and_gradients_without_nan():
    anchors, positives = (t.requires_grad_() for t in embeddings(4, seed=4))
    loss, accuracy = centroid_contrastive_loss(
        anchors, positives, torch.ones(4, dtype=torch.bool), bilinear()
    )
    loss.backward()
    assert loss.item() == 0.0 and accuracy.item() == 1.0
    assert torch.isfinite(anchors.grad).all() and torch.isfinite(positives.grad).all()


def test_one_silent_positive_by_hand():
    anchors = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    positives = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    silent = torch.tensor([False, False, True])
    loss, accuracy = centroid_contrastive_loss(anchors, positives, silent, dot)
    # Candidates [1, 0], [0, 1] and the centroid [2, 2]; logits per anchor:
    # [1, 0, 2] -> target 0, [0, 1, 2] -> target 1, [1, 1, 4] -> target 2.
    e = math.e
    expected = (
        math.log(e + 1 + e**2) - 1 + math.log(1 + e + e**2) - 1 + math.log(2 * e + e**4) - 4
    ) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert accuracy.item() == pytest.approx(1 / 3)


@pytest.mark.parametrize("loss_kind", ["plain", "centroid"])
def test_no_silent_positive_by_hand(loss_kind):
    """Three distinct positives, none silent: both losses are COLA's, computed by hand."""
    anchors = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    positives = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    if loss_kind == "plain":
        loss, accuracy = contrastive_loss(anchors, positives, dot)
    else:
        silent = torch.zeros(3, dtype=torch.bool)
        loss, accuracy = centroid_contrastive_loss(anchors, positives, silent, dot)
    # Logits a_i . p_j, row by row, target on the diagonal:
    # [2, 0, 1] -> target 0 (the max), [0, 1, -1] -> target 1 (the max),
    # [2, 1, 0] -> target 2 (column 0 wins): accuracy 2 / 3.
    exp = math.exp
    expected = (
        (math.log(exp(2) + exp(0) + exp(1)) - 2)
        + (math.log(exp(0) + exp(1) + exp(-1)) - 1)
        + (math.log(exp(2) + exp(1) + exp(0)) - 0)
    ) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert accuracy.item() == pytest.approx(2 / 3)


@pytest.mark.parametrize("similarity", ["bilinear", "cosine"])
def test_all_silent_batch_through_the_model_is_finite(similarity):
    """Every positive is the silence value log(1e-6): one candidate (the centroid), loss 0.

    The loss is then 0 whatever the parameters, so its gradient is exactly zero: what can go
    wrong is a NaN/inf (e.g. from identical positive embeddings), or the graph not reaching the
    encoder. A loss that kept the silent positives apart (the plain one) would give log(B).
    """
    torch.manual_seed(0)
    model = ContrastiveModel(
        EncoderConfig(
            width_coefficient=0.1,
            depth_coefficient=0.1,
            embedding_dim=8,
            similarity=similarity,
        )
    ).train()
    g = torch.Generator().manual_seed(1)
    anchors = torch.randn(4, 98, 64, generator=g) * 2.0 - 9.0
    positives = torch.full((4, 98, 64), math.log(1e-6))
    za, zp = model(anchors, positives)
    loss, accuracy = centroid_contrastive_loss(
        za, zp, torch.ones(4, dtype=torch.bool), model.similarity
    )
    loss.backward()
    assert torch.isfinite(loss) and loss.item() == 0.0 and accuracy.item() == 1.0
    encoder_parameters = list(model.encoder.parameters())
    assert all(p.grad is not None for p in encoder_parameters)
    for parameter in encoder_parameters:
        assert torch.isfinite(parameter.grad).all()
        assert torch.count_nonzero(parameter.grad) == 0


def test_centroid_is_the_mean_of_silent_positives_and_comes_last():
    anchors = torch.zeros(4, 2)
    positives = torch.tensor([[0.0, 2.0], [5.0, 5.0], [2.0, 0.0], [7.0, 1.0]])
    seen = []

    def recording(a, p):
        seen.append(p.clone())
        return a @ p.T

    centroid_contrastive_loss(
        anchors, positives, torch.tensor([True, False, True, False]), recording
    )
    torch.testing.assert_close(seen[0], torch.tensor([[5.0, 5.0], [7.0, 1.0], [1.0, 1.0]]))


@pytest.mark.parametrize("silent_pattern", ["none", "some"])
def test_identical_positives_give_log_of_candidate_count(silent_pattern):
    n = 6
    anchors = embeddings(n, seed=5)[0]
    positives = torch.ones(n, DIM, dtype=torch.float64)
    silent = pattern(silent_pattern, n)
    loss, _ = centroid_contrastive_loss(anchors, positives, silent, bilinear())
    num_candidates = int((~silent).sum()) + int(silent.any())
    assert loss.item() == pytest.approx(math.log(num_candidates))
    loss, _ = contrastive_loss(anchors, positives, bilinear())
    assert loss.item() == pytest.approx(math.log(n))


def test_gradients_reach_anchors_and_every_silent_positive_equally():
    anchors, positives = (t.requires_grad_() for t in embeddings(5, seed=6))
    silent = torch.tensor([True, False, True, False, False])
    loss, _ = centroid_contrastive_loss(anchors, positives, silent, bilinear())
    loss.backward()
    assert (anchors.grad.abs().sum(dim=1) > 0).all()
    assert (positives.grad.abs().sum(dim=1) > 0).all()
    # Both silent positives enter only through their mean, so they get the same gradient.
    torch.testing.assert_close(positives.grad[0], positives.grad[2])


@pytest.mark.parametrize("loss_kind", ["plain", "centroid"])
def test_gradient_reaches_encoder_parameters(loss_kind):
    torch.manual_seed(0)
    model = ContrastiveModel(
        EncoderConfig(width_coefficient=0.25, depth_coefficient=0.25, embedding_dim=8)
    ).train()
    # Half-length crops (49 frames) keep this fast; the encoder takes any length.
    anchors = torch.randn(4, 49, 64) - 9
    positives = torch.randn(4, 49, 64) - 9
    silent = torch.tensor([False, True, False, True])
    positives[silent] = 0.0
    za, zp = model(anchors, positives)
    if loss_kind == "plain":
        loss, _ = contrastive_loss(za, zp, model.similarity)
    else:
        loss, _ = centroid_contrastive_loss(za, zp, silent, model.similarity)
    loss.backward()
    for parameter in (
        model.encoder.net._conv_stem.weight,
        model.encoder.net._conv_head.weight,
        model.head.weight,
        model.bilinear_weight,
    ):
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0


def test_illegal_arguments_raise():
    anchors, positives = embeddings(3, seed=7)
    with pytest.raises(ValueError, match="same shape"):
        contrastive_loss(anchors, positives[:2], dot)
    with pytest.raises(ValueError, match="non-empty"):
        contrastive_loss(anchors[:0], positives[:0], dot)
    with pytest.raises(ValueError, match="bool"):
        centroid_contrastive_loss(anchors, positives, torch.zeros(3), dot)
    with pytest.raises(ValueError, match="bool"):
        centroid_contrastive_loss(anchors, positives, torch.zeros(2, dtype=torch.bool), dot)
    with pytest.raises(ValueError, match="logits"):
        contrastive_loss(anchors, positives, lambda a, p: a @ p.T[:, :2])


@settings(max_examples=40, deadline=None)
@given(
    silent_bits=st.lists(st.booleans(), min_size=1, max_size=10),
    seed=st.integers(0, 2**16),
)
def test_loss_is_non_negative_and_invariant_to_joint_permutation(silent_bits, seed):
    n = len(silent_bits)
    anchors, positives = embeddings(n, seed)
    silent = torch.tensor(silent_bits)
    similarity = bilinear(seed)
    loss, accuracy = centroid_contrastive_loss(anchors, positives, silent, similarity)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    permuted, permuted_accuracy = centroid_contrastive_loss(
        anchors[order], positives[order], silent[order], similarity
    )
    assert loss.item() >= 0
    assert permuted.item() == pytest.approx(loss.item(), rel=1e-9, abs=1e-12)
    assert permuted_accuracy.item() == pytest.approx(accuracy.item())


def test_low_precision_logits_give_a_float32_loss():
    anchors, positives = embeddings(4, seed=8)
    loss, _ = contrastive_loss(anchors.bfloat16(), positives.bfloat16(), dot)
    assert loss.dtype == torch.float32
