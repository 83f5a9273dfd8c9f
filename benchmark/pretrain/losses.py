"""Contrastive objectives (REFERENCE.md section 3): COLA's and the paper's centroid variant.

Pure functions of embeddings and a similarity callable ``(a (N, D), p (M, D)) -> (N, M)``
(e.g. :meth:`benchmark.pretrain.encoder.ContrastiveModel.similarity`). Each returns ``(loss,
accuracy)``: the mean cross-entropy over anchors, and the detached fraction of anchors whose
highest logit is their target ("which positive is mine").
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

Similarity = Callable[[Tensor, Tensor], Tensor]


def contrastive_loss(
    anchors: Tensor, positives: Tensor, similarity: Similarity
) -> tuple[Tensor, Tensor]:
    """COLA's loss: cross-entropy over the batch's positives, target = own positive.

    Saeed et al., "Contrastive learning of general-purpose audio representations", ICASSP 2021.

    Args:
        anchors: ``(N, D)`` anchor embeddings.
        positives: ``(N, D)`` positive embeddings; row ``i`` is anchor ``i``'s positive.
        similarity: ``(N, D), (M, D) -> (N, M)`` logits.

    Returns:
        ``(loss, accuracy)``: scalar mean cross-entropy (float32 or wider) and detached scalar accuracy.

    Raises:
        ValueError: empty or mismatched embeddings, or logits of the wrong shape.
    """
    _check_pairs(anchors, positives)
    targets = torch.arange(anchors.shape[0], device=anchors.device)
    return _cross_entropy(similarity(anchors, positives), targets, anchors.shape[0])


def centroid_contrastive_loss(
    anchors: Tensor, positives: Tensor, silent: Tensor, similarity: Similarity
) -> tuple[Tensor, Tensor]:
    """The paper's loss: silent positives collapse into one centroid candidate.

    Garoufis et al., "Multi-Source Contrastive Learning from Musical Audio", SMC 2023. The
    candidates are the non-silent positives (in batch order) followed by ONE extra candidate,
    the mean of the silent positives' embeddings, present only when some positive is silent.
    Anchors whose positive is silent take that centroid as target; the others their own
    positive. With no silent positive this is exactly :func:`contrastive_loss`; with all
    positives silent there is a single candidate and the loss is 0 (not NaN).

    Args:
        anchors: ``(N, D)`` anchor embeddings.
        positives: ``(N, D)`` positive embeddings; row ``i`` is anchor ``i``'s positive.
        silent: ``(N,)`` bool, True where the positive is a silent (all-zero) source crop.
        similarity: ``(N, D), (M, D) -> (N, M)`` logits.

    Returns:
        ``(loss, accuracy)``: scalar mean cross-entropy (float32 or wider) and detached scalar accuracy.

    Raises:
        ValueError: empty or mismatched embeddings, ``silent`` not a bool ``(N,)`` tensor, or
        logits of the wrong shape.
    """
    _check_pairs(anchors, positives)
    n = anchors.shape[0]
    if silent.dtype != torch.bool or silent.shape != (n,):
        raise ValueError(
            f"silent must be a bool tensor of shape ({n},), got {silent.dtype} {tuple(silent.shape)}"
        )
    silent = silent.to(anchors.device)
    active = ~silent
    num_active = int(active.sum())
    if num_active == n:
        return contrastive_loss(anchors, positives, similarity)
    centroid = positives[silent].mean(dim=0, keepdim=True)
    candidates = torch.cat([positives[active], centroid])
    # An active anchor's column is its rank among the active positives; the centroid comes last.
    own_column = torch.cumsum(active.long(), dim=0) - 1
    targets = torch.where(silent, torch.full_like(own_column, num_active), own_column)
    return _cross_entropy(similarity(anchors, candidates), targets, num_active + 1)


def num_candidates(loss: str, silent: Tensor) -> int:
    """How many candidates each anchor chooses among: the batch size for the plain loss; for
    the centroid loss the non-silent positives plus one centroid when any positive is silent.

    Chance level of a batch: loss ``ln(num_candidates)`` (uniform logits) and accuracy
    ``1 / num_candidates``, the lines every contrastive loss and accuracy is read against.

    Raises:
        ValueError: unknown ``loss``.
    """
    n = int(silent.shape[0])
    if loss == "plain":
        return n
    if loss == "centroid":
        num_silent = int(silent.sum())
        return n if num_silent == 0 else n - num_silent + 1
    raise ValueError(f"unknown loss {loss!r} (plain or centroid)")


def _check_pairs(anchors: Tensor, positives: Tensor) -> None:
    if anchors.dim() != 2 or anchors.shape != positives.shape or anchors.shape[0] == 0:
        raise ValueError(
            "anchors and positives must be non-empty (N, D) tensors of the same shape, got "
            f"{tuple(anchors.shape)} and {tuple(positives.shape)}"
        )


def _cross_entropy(logits: Tensor, targets: Tensor, num_candidates: int) -> tuple[Tensor, Tensor]:
    expected = (targets.shape[0], num_candidates)
    if tuple(logits.shape) != expected:
        raise ValueError(
            f"similarity returned logits of shape {tuple(logits.shape)}, not {expected}"
        )
    # At least float32, so that bf16/fp16 logits (autocast) get a full-precision log-softmax.
    precise = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    loss = F.cross_entropy(precise, targets)
    accuracy = (logits.detach().argmax(dim=1) == targets).float().mean()
    return loss, accuracy
