"""The shared encoder and the COLA contrastive model (REFERENCE.md section 2).

One encoder serves every method: EfficientNet-B0 from the ``efficientnet_pytorch`` package
(1 input channel, random init, no top) followed by global max pooling, as in COLA (Saeed et al.,
ICASSP 2021) and in the authors' code (``tf.keras.applications.EfficientNetB0(include_top=False,
weights=None, input_shape=(None, 64, 1), pooling="max")``). The contrastive model adds COLA's
head and similarity; probes read :meth:`ContrastiveModel.features`, never the head.

Orientation: a log-mel batch ``(B, T, F)`` (time first, ``F = 64`` mel bands) is fed to the CNN
as ``(B, 1, T, F)``: image height = time, image width = frequency, the layout of the authors'
Keras input ``(T, 64, 1)``. A 98 x 64 crop leaves a 4 x 2 feature map to max-pool.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from efficientnet_pytorch import EfficientNet
from torch import Tensor, nn

from benchmark.config import EncoderConfig

SIMILARITIES = ("bilinear", "cosine")
# COLA's head uses Keras' LayerNormalization, whose default epsilon is 1e-3 (PyTorch: 1e-5).
LAYER_NORM_EPS = 1e-3


class Encoder(nn.Module):
    """EfficientNet-B0 with global max pooling: log-mel ``(B, T, F)`` -> feature ``(B, feature_dim)``.

    ``feature_dim`` is 1280 for B0 and shrinks with ``width_coefficient < 1`` (the package rounds
    channel counts to multiples of 8). Drop connect (0.2, scaled by block index) and batch-norm
    settings are the package's defaults, which match Keras' EfficientNet. ``image_size=None``
    selects the package's dynamic TensorFlow-style "same" padding, correct for any input size;
    its static padding would be computed for 224 x 224 images and misplace the padding on odd
    intermediate sizes (98 -> 49 -> 25 -> 13 -> 7 -> 4 frames).

    Args:
        width_coefficient: channel multiplier (B0: 1.0).
        depth_coefficient: block-repeat multiplier (B0: 1.0).

    Raises:
        ValueError: a coefficient is not positive.
    """

    def __init__(self, width_coefficient: float = 1.0, depth_coefficient: float = 1.0) -> None:
        super().__init__()
        if width_coefficient <= 0 or depth_coefficient <= 0:
            raise ValueError(
                f"width and depth coefficients must be positive, got "
                f"{width_coefficient} and {depth_coefficient}"
            )
        self.width_coefficient = width_coefficient
        self.depth_coefficient = depth_coefficient
        self.net = EfficientNet.from_name(
            "efficientnet-b0",
            in_channels=1,
            include_top=False,
            image_size=None,
            width_coefficient=width_coefficient,
            depth_coefficient=depth_coefficient,
        )
        self.feature_dim: int = self.net._bn1.num_features

    def forward(self, x: Tensor) -> Tensor:
        """Embed a log-mel batch.

        Args:
            x: ``(B, T, F)`` log-mel spectrograms, time first.

        Returns:
            ``(B, feature_dim)`` max-pooled features.

        Raises:
            ValueError: ``x`` is not 3-D.
        """
        if x.dim() != 3:
            raise ValueError(f"expected a (batch, frames, mel bands) tensor, got {tuple(x.shape)}")
        maps = self.net.extract_features(x.unsqueeze(1))  # (B, C, T / 32, F / 32), rounded up
        return maps.amax(dim=(2, 3))


class ContrastiveModel(nn.Module):
    """COLA's contrastive model: encoder, projection head and similarity.

    Head (Saeed et al., COLA, ICASSP 2021; the authors' ``network.py``):
    ``Linear(feature_dim, embedding_dim)``, then, for the bilinear similarity, LayerNorm and tanh.
    Bilinear similarity: ``s(a, p) = a^T W p`` with a learned ``W`` (embedding_dim x
    embedding_dim) initialised from N(0, ``bilinear_init_std``^2), no temperature; COLA's
    ``BilinearProduct`` uses Keras' "random_normal" initializer, std 0.05. With tanh'd
    512-d embeddings that makes the initial logits' std about 10 (losses of 12-22 at the
    first steps), which slows learning at CPU scale (README, "Profiles").
    Cosine similarity: ``cos(a, p) / temperature`` on the raw head output. The head's Linear uses
    Keras' Dense initialisation (Glorot-uniform weight, zero bias).

    Args:
        cfg: encoder size, embedding size, similarity kind and temperature.

    Raises:
        ValueError: unknown similarity, non-positive embedding size or temperature.
    """

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        if cfg.similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, got {cfg.similarity!r}")
        if cfg.embedding_dim < 1:
            raise ValueError(f"embedding_dim must be positive, got {cfg.embedding_dim}")
        if cfg.similarity == "cosine" and cfg.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {cfg.temperature}")
        if cfg.similarity == "bilinear" and not cfg.bilinear_init_std > 0:
            raise ValueError(f"bilinear_init_std must be positive, got {cfg.bilinear_init_std}")
        self.similarity_kind = cfg.similarity
        self.temperature = cfg.temperature
        self.encoder = Encoder(cfg.width_coefficient, cfg.depth_coefficient)
        self.feature_dim = self.encoder.feature_dim
        self.embedding_dim = cfg.embedding_dim
        self.head = nn.Linear(self.feature_dim, cfg.embedding_dim)
        nn.init.xavier_uniform_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        if cfg.similarity == "bilinear":
            self.norm: nn.Module = nn.LayerNorm(cfg.embedding_dim, eps=LAYER_NORM_EPS)
            self.bilinear_weight = nn.Parameter(
                torch.randn(cfg.embedding_dim, cfg.embedding_dim) * cfg.bilinear_init_std
            )
        else:
            self.norm = nn.Identity()
            self.register_parameter("bilinear_weight", None)

    def features(self, x: Tensor) -> Tensor:
        """Pooled encoder feature, what probes read: ``(B, T, F)`` -> ``(B, feature_dim)``."""
        return self.encoder(x)

    def project(self, x: Tensor) -> Tensor:
        """Contrastive embedding: ``(B, T, F)`` -> ``(B, embedding_dim)``."""
        z = self.norm(self.head(self.encoder(x)))
        return torch.tanh(z) if self.similarity_kind == "bilinear" else z

    def similarity(self, anchors: Tensor, candidates: Tensor) -> Tensor:
        """Logits between every anchor and every candidate.

        Args:
            anchors: ``(N, D)`` embeddings.
            candidates: ``(M, D)`` embeddings.

        Returns:
            ``(N, M)`` logits: ``a^T W p`` (bilinear) or ``cos(a, p) / temperature`` (cosine).

        Raises:
            ValueError: inputs are not 2-D or their widths differ from ``embedding_dim``.
        """
        for name, t in (("anchors", anchors), ("candidates", candidates)):
            if t.dim() != 2 or t.shape[1] != self.embedding_dim:
                raise ValueError(f"{name} must be (n, {self.embedding_dim}), got {tuple(t.shape)}")
        if self.similarity_kind == "bilinear":
            return anchors @ self.bilinear_weight @ candidates.T
        a = F.normalize(anchors, dim=-1)
        p = F.normalize(candidates, dim=-1)
        return a @ p.T / self.temperature

    def forward(self, anchors: Tensor, positives: Tensor) -> tuple[Tensor, Tensor]:
        """Embed anchors and positives in one encoder pass.

        One pass over the concatenation, as COLA's ``train_step`` does, so that batch-norm
        statistics in training mode cover anchors and positives together.

        Args:
            anchors: ``(N, T, F)`` log-mel crops.
            positives: ``(M, T, F)`` log-mel crops.

        Returns:
            ``(za, zp)``: ``(N, embedding_dim)`` and ``(M, embedding_dim)``.

        Raises:
            ValueError: the crops' ``(T, F)`` shapes differ.
        """
        if anchors.shape[1:] != positives.shape[1:]:
            raise ValueError(
                f"anchor and positive crops differ: {tuple(anchors.shape)} vs "
                f"{tuple(positives.shape)}"
            )
        z = self.project(torch.cat([anchors, positives]))
        return z[: anchors.shape[0]], z[anchors.shape[0] :]


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of (distinct) parameter elements of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def reestimate_batchnorm(
    encoder: nn.Module,
    batches: Iterable[Tensor],
    device: torch.device | str | None = None,
) -> int:
    """Recompute every batch-norm layer's running statistics from data, then leave eval mode.

    ("Precise BN", Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021.) REFERENCE.md
    section 9: a random-init encoder in eval mode keeps its initial running statistics (mean 0,
    variance 1), which do not fit log-mel input and give degenerate features; a briefly trained
    one keeps running averages that lag its weights (``benchmark.pretrain.loop``). Every
    evaluated encoder therefore gets statistics re-estimated from data. The statistics are reset and accumulated as a cumulative average over the batches (``momentum
    = None``, each batch weighted equally). Only the batch-norm layers run in training mode, so
    drop connect stays off and the statistics are those of the deterministic network. No
    gradients are computed; the layers' momenta are restored afterwards.

    Args:
        encoder: any module containing batch-norm layers (an :class:`Encoder` or a
            :class:`ContrastiveModel`'s encoder), called as ``encoder(batch)``.
        batches: input batches, e.g. ``(B, T, F)`` log-mel windows.
        device: where to move each batch; default: the device of the encoder's parameters.

    Returns:
        The number of samples seen.

    Raises:
        ValueError: the encoder has no batch-norm layer or ``batches`` is empty.
    """
    norms = [m for m in encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        raise ValueError("the encoder has no batch-norm layer")
    iterator = iter(batches)
    first = next(iterator, None)
    if first is None:
        raise ValueError("no batches to estimate batch-norm statistics from")
    if device is None:
        device = next(encoder.parameters()).device
    momenta = [m.momentum for m in norms]
    encoder.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    num_samples = 0
    try:
        with torch.no_grad():
            for batch in itertools.chain([first], iterator):
                encoder(batch.to(device))
                num_samples += batch.shape[0]
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        encoder.eval()
    return num_samples
