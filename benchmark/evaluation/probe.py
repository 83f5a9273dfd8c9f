"""Shallow probes trained on cached window embeddings of a frozen encoder.

The encoder has already embedded every 98-frame window of every clip; a probe only ever reads
those embeddings, never the encoder. The protocol is the paper's (REFERENCE.md section 5):

- each epoch draws, for every training clip, ``windows_per_clip`` random windows among that
  clip's cached windows: the role the paper's random 98-frame crops play;
- Adam, mini-batches of 128, binary cross-entropy on sigmoid outputs (multi-label) or
  cross-entropy on softmax outputs (multi-class);
- after each epoch the validation clips are predicted (window probabilities averaged per clip)
  and scored with the task's primary metric; training stops when that score has not improved
  for ``patience`` epochs (at most ``max_epochs``), and the best-on-validation weights are kept.

Inputs are standardised (``standardize=True``, config ``probe.standardize``; the paper's probes
read raw features) with per-dimension mean and standard deviation of the training windows,
stored as buffers of the probe (so they travel with its state dict). Embeddings of an untrained
or briefly trained encoder have arbitrary, dimension-dependent scale, which would otherwise make
one learning rate right for one method and wrong for another; fitting the statistics on the
training windows only keeps validation and test data unseen.

A probe never sees test data: :func:`train_probe` takes only a training and a validation split.
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from benchmark.io import pick_device, torch_threads

log = logging.getLogger(__name__)

PROBE_KINDS = ("linear", "mlp")

# Rows per chunk when a whole split is reduced (statistics, finiteness): bounds the temporary
# float64 copy to ~64k x D values instead of the whole split.
_CHUNK_ROWS = 65536


class ProbeDivergedError(FloatingPointError):
    """The training loss became nan or inf before any epoch could be validated."""


@dataclass(frozen=True)
class ProbeSpec:
    """What a task declares about its probe.

    Attributes:
        kind: ``"linear"`` (one dense layer) or ``"mlp"`` (Dense(hidden_dim, ReLU) [+ dropout]
            + Dense(num_outputs)) (paper: linear for MTAT and FMA, mlp for NSynth).
        multilabel: sigmoid outputs with binary cross-entropy (True) or softmax outputs with
            cross-entropy (False).
        num_outputs: number of tags or classes.
        hidden_dim: width of the mlp's hidden layer (paper: 512).
    """

    kind: str
    multilabel: bool
    num_outputs: int
    hidden_dim: int = 512

    def __post_init__(self):
        if self.kind not in PROBE_KINDS:
            raise ValueError(f"unknown probe kind {self.kind!r} (known: {', '.join(PROBE_KINDS)})")
        minimum = 1 if self.multilabel else 2
        if self.num_outputs < minimum:
            raise ValueError(f"num_outputs must be >= {minimum}, got {self.num_outputs}")
        if self.hidden_dim < 1:
            raise ValueError(f"hidden_dim must be >= 1, got {self.hidden_dim}")


@dataclass(frozen=True)
class ProbeParams:
    """The tunable hyper-parameters of a probe.

    Attributes:
        lr: Adam learning rate (paper: 5e-4 for MTAT and FMA, 3e-4 for NSynth).
        weight_decay: Adam's L2 weight decay (paper: 0).
        dropout: dropout probability after the mlp's hidden layer; must be 0 for a linear probe.
    """

    lr: float
    weight_decay: float = 0.0
    dropout: float = 0.0

    def __post_init__(self):
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")


@dataclass
class WindowSet:
    """One split's cached window embeddings and its clip-level targets.

    Attributes:
        embeddings: ``(num_windows, D)`` float32 (float16 is kept as is and cast per batch,
            other float dtypes are cast to float32).
        clip_index: ``(num_windows,)`` integers: the clip each window belongs to, in
            ``[0, num_clips)``; every clip must own at least one window.
        targets: ``(num_clips, C)`` multi-hot (multi-label) or ``(num_clips,)`` integer class
            indices (multi-class).

    Raises:
        ValueError: on inconsistent shapes, an out-of-range clip index, or a clip without windows.
    """

    embeddings: np.ndarray
    clip_index: np.ndarray
    targets: np.ndarray

    def __post_init__(self):
        embeddings = np.asarray(self.embeddings)
        if embeddings.ndim != 2 or not np.issubdtype(embeddings.dtype, np.floating):
            raise ValueError(
                f"embeddings must be a 2-d float array, got {embeddings.dtype} {embeddings.shape}"
            )
        clip_index = np.asarray(self.clip_index)
        if clip_index.shape != (embeddings.shape[0],):
            raise ValueError(
                f"clip_index must have shape ({embeddings.shape[0]},), got {clip_index.shape}"
            )
        if not np.issubdtype(clip_index.dtype, np.integer):
            raise ValueError(f"clip_index must hold integers, got dtype {clip_index.dtype}")
        targets = np.asarray(self.targets)
        if targets.ndim not in (1, 2) or targets.shape[0] == 0:
            raise ValueError(f"targets must be (num_clips,) or (num_clips, C), got {targets.shape}")
        num_clips = targets.shape[0]
        if clip_index.size and (clip_index.min() < 0 or clip_index.max() >= num_clips):
            raise ValueError(f"clip_index must lie in [0, {num_clips})")
        empty = np.flatnonzero(np.bincount(clip_index, minlength=num_clips) == 0)
        if empty.size:
            raise ValueError(
                f"{empty.size} clip(s) own no window (first: {empty[0]}); "
                "drop their targets or embed them"
            )

    @property
    def num_clips(self) -> int:
        return int(np.shape(self.targets)[0])

    @property
    def num_windows(self) -> int:
        return int(np.shape(self.embeddings)[0])

    @property
    def dim(self) -> int:
        return int(np.shape(self.embeddings)[1])


class Probe(nn.Module):
    """Standardisation buffers followed by a linear layer or a one-hidden-layer MLP.

    Input ``(B, D)`` embeddings; :meth:`forward` gives ``(B, C)`` logits, :meth:`probabilities`
    sigmoid (multi-label) or softmax (multi-class) outputs. ``mean`` and ``std`` are buffers: part
    of the state dict, never trained.
    """

    def __init__(self, spec: ProbeSpec, input_dim: int, params: ProbeParams):
        super().__init__()
        self.spec = spec
        self.params = params
        self.register_buffer("mean", torch.zeros(input_dim))
        self.register_buffer("std", torch.ones(input_dim))
        if spec.kind == "linear":
            self.net = nn.Linear(input_dim, spec.num_outputs)
        else:
            self.net = nn.Sequential(
                nn.Linear(input_dim, spec.hidden_dim),
                nn.ReLU(),
                nn.Dropout(params.dropout),
                nn.Linear(spec.hidden_dim, spec.num_outputs),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x.to(self.mean.dtype) - self.mean) / self.std)

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        logits = self(x)
        return torch.sigmoid(logits) if self.spec.multilabel else torch.softmax(logits, dim=-1)


def build_probe(
    spec: ProbeSpec,
    input_dim: int,
    params: ProbeParams,
    *,
    mean: torch.Tensor | np.ndarray | None = None,
    std: torch.Tensor | np.ndarray | None = None,
) -> Probe:
    """A fresh probe for ``input_dim``-d embeddings (weights drawn from torch's global RNG).

    ``mean`` / ``std`` (``(input_dim,)``) set the standardisation; left out, the probe starts as
    the identity transform (mean 0, std 1), which is what loading a saved state dict overwrites.

    Raises:
        ValueError: for dropout on a linear probe, a non-positive ``input_dim``, or statistics of
            the wrong shape or with a non-positive std.
    """
    if input_dim < 1:
        raise ValueError(f"input_dim must be >= 1, got {input_dim}")
    if spec.kind == "linear" and params.dropout > 0:
        raise ValueError("dropout applies to mlp probes only; a linear probe needs dropout=0")
    probe = Probe(spec, input_dim, params)
    for name, value in (("mean", mean), ("std", std)):
        if value is None:
            continue
        value = torch.as_tensor(value, dtype=torch.float32)
        if value.shape != (input_dim,):
            raise ValueError(f"{name} must have shape ({input_dim},), got {tuple(value.shape)}")
        getattr(probe, name).copy_(value)
    if not (probe.std > 0).all():
        raise ValueError("std must be positive")
    return probe


@dataclass
class ProbeResult:
    """Outcome of :func:`train_probe`.

    Attributes:
        model: the probe with its best-on-validation weights loaded, in eval mode.
        best_epoch: 1-based epoch whose weights ``model`` holds.
        best_valid_score: ``score_fn`` on the validation clips for those weights.
        history: one ``{"epoch", "train_loss", "valid_score"}`` dict per epoch run.
        epochs_run: epochs trained before stopping (early or at ``max_epochs``).
    """

    model: Probe
    best_epoch: int
    best_valid_score: float
    history: list[dict] = field(default_factory=list)
    epochs_run: int = 0


# -- tensors on the device ---------------------------------------------------------------------


@dataclass
class _DeviceWindows:
    """A WindowSet as tensors on the device, so every batch is one index operation."""

    embeddings: torch.Tensor  # (num_windows, D), float32 or float16
    clip_index: torch.Tensor  # (num_windows,) int64
    num_clips: int


def _to_device(windows: WindowSet, device: torch.device) -> _DeviceWindows:
    embeddings = np.asarray(windows.embeddings)
    # float16 caches stay float16 (half the memory) and are cast per batch by the probe.
    if embeddings.dtype not in (np.float16, np.float32):
        embeddings = embeddings.astype(np.float32)
    with warnings.catch_warnings():
        # Caches arrive as read-only memory maps; torch warns that it cannot protect them from
        # writes, but nothing here writes to embeddings.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        embeddings = torch.as_tensor(embeddings, device=device)
    for start in range(0, embeddings.shape[0], _CHUNK_ROWS):
        if not torch.isfinite(embeddings[start : start + _CHUNK_ROWS]).all():
            raise ValueError("embeddings contain nan or inf")
    clip_index = torch.as_tensor(np.asarray(windows.clip_index, dtype=np.int64), device=device)
    return _DeviceWindows(embeddings, clip_index, windows.num_clips)


def _window_statistics(embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and population std of ``(N, D)`` windows, in float64, two passes."""
    total = torch.zeros(embeddings.shape[1], dtype=torch.float64, device=embeddings.device)
    for start in range(0, embeddings.shape[0], _CHUNK_ROWS):
        total += embeddings[start : start + _CHUNK_ROWS].double().sum(dim=0)
    mean = total / embeddings.shape[0]
    squares = torch.zeros_like(total)
    for start in range(0, embeddings.shape[0], _CHUNK_ROWS):
        squares += ((embeddings[start : start + _CHUNK_ROWS].double() - mean) ** 2).sum(dim=0)
    std = (squares / embeddings.shape[0]).sqrt()
    # A (numerically) constant dimension carries nothing: divide it by 1 so it maps to ~0
    # instead of amplifying rounding noise.
    constant = std <= 1e-6 * std.max()
    std[constant] = 1.0
    return mean.float(), std.float()


@torch.no_grad()
def _predict(model: Probe, windows: _DeviceWindows, batch_size: int) -> np.ndarray:
    """``(num_clips, C)`` float64: window probabilities averaged per clip."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(
        windows.num_clips,
        model.spec.num_outputs,
        dtype=torch.float64,
        device=windows.embeddings.device,
    )
    for start in range(0, windows.embeddings.shape[0], batch_size):
        probs = model.probabilities(windows.embeddings[start : start + batch_size])
        sums.index_add_(0, windows.clip_index[start : start + batch_size], probs.double())
    counts = torch.bincount(windows.clip_index, minlength=windows.num_clips).double()
    model.train(was_training)
    return (sums / counts[:, None]).cpu().numpy()


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def predict_clips(
    model: Probe,
    windows: WindowSet,
    device: torch.device | str | None = None,
    batch_size: int = 4096,
) -> np.ndarray:
    """Clip scores: each clip's window probabilities (sigmoid or softmax), averaged.

    This is the paper's test protocol: non-overlapping windows, predictions averaged per piece.

    Args:
        model: a probe from :func:`build_probe` / :func:`train_probe`.
        windows: the split to predict; its targets are not read.
        device: where to compute; default the model's device (the model is moved there).
        batch_size: windows per forward pass.

    Returns:
        ``(num_clips, C)`` float64 array.

    Raises:
        ValueError: if the embedding width does not match the probe or contains nan/inf.
    """
    device = torch.device(device) if device is not None else _model_device(model)
    model.to(device)
    if windows.dim != model.mean.shape[0]:
        raise ValueError(f"embeddings are {windows.dim}-d, the probe expects {model.mean.shape[0]}")
    return _predict(model, _to_device(windows, device), batch_size)


# -- training ----------------------------------------------------------------------------------


def _check_targets(spec: ProbeSpec, windows: WindowSet, name: str) -> np.ndarray:
    targets = np.asarray(windows.targets)
    if spec.multilabel:
        if targets.shape != (windows.num_clips, spec.num_outputs):
            raise ValueError(
                f"{name} targets must be (num_clips, {spec.num_outputs}) multi-hot, "
                f"got {targets.shape}"
            )
        if not np.isin(targets, (0, 1)).all():
            raise ValueError(f"{name} multi-label targets must be 0/1")
        return targets.astype(np.float32)
    if targets.ndim != 1 or not np.issubdtype(targets.dtype, np.integer):
        raise ValueError(
            f"{name} targets must be (num_clips,) integers, got {targets.dtype} {targets.shape}"
        )
    if targets.min() < 0 or targets.max() >= spec.num_outputs:
        raise ValueError(f"{name} targets must lie in [0, {spec.num_outputs})")
    return targets.astype(np.int64)


def _window_draws(clip_index: np.ndarray, num_clips: int):
    """Return a function ``rng -> (num_clips * k,)`` window indices, k random windows per clip."""
    order = np.argsort(clip_index, kind="stable")
    counts = np.bincount(clip_index, minlength=num_clips)
    starts = np.cumsum(counts) - counts

    def draw(rng: np.random.Generator, per_clip: int) -> np.ndarray:
        offsets = rng.integers(0, counts[:, None], size=(num_clips, per_clip))
        return order[starts[:, None] + offsets].reshape(-1)

    return draw


def train_probe(
    spec: ProbeSpec,
    params: ProbeParams,
    train: WindowSet,
    valid: WindowSet,
    *,
    seed: int,
    score_fn: Callable[[np.ndarray, np.ndarray], float],
    batch_size: int = 128,
    max_epochs: int = 50,
    patience: int = 5,
    windows_per_clip: int = 1,
    device: torch.device | str | None = None,
    progress: bool = False,
    cpu_threads: int | None = 1,
    standardize: bool = True,
) -> ProbeResult:
    """Train a probe with early stopping on the validation clips (REFERENCE.md section 5).

    Args:
        spec: the task's probe declaration.
        params: learning rate, weight decay, dropout.
        train: training windows; standardisation statistics come from these only.
        valid: validation windows, used only to score epochs.
        seed: seeds the initial weights, dropout, window draws and shuffles; on the CPU the
            same seed gives the same model. torch's global RNG is restored afterwards.
        score_fn: ``score_fn(valid.targets, clip_scores) -> float``, the task's primary metric,
            higher is better (e.g. :func:`benchmark.evaluation.metrics.primary_score_fn`).
        batch_size: windows per optimiser step (paper: 128).
        max_epochs: epoch cap (paper: 50).
        patience: stop after this many epochs without a strict improvement (paper: 5).
        windows_per_clip: random windows drawn per training clip per epoch; 0 means 1
            (paper: one random crop per clip).
        device: default :func:`benchmark.io.pick_device` (CUDA when present).
        progress: show a tqdm bar over epochs.
        cpu_threads: torch intra-op threads while training on the CPU, restored afterwards;
            None leaves torch's setting. A probe step is a tiny matmul for which handing work
            to a second thread costs more than it saves: measured 1.3 ms per step on one thread
            versus 7-30 ms on two threads of a loaded 2-core machine.
        standardize: standardise inputs with the training windows' per-dimension mean and
            std (module docstring); False feeds the raw embeddings, as the paper's probes do.

    Returns:
        A :class:`ProbeResult` whose model holds the best-on-validation weights.

    Raises:
        ValueError: on bad arguments or data (see :class:`WindowSet`), or a non-finite score.
        ProbeDivergedError: if the loss is nan or inf within the first epoch.
    """
    if batch_size < 1 or max_epochs < 1 or patience < 1 or windows_per_clip < 0:
        raise ValueError(
            "batch_size, max_epochs and patience must be >= 1 and windows_per_clip >= 0"
        )
    if train.dim != valid.dim:
        raise ValueError(f"train embeddings are {train.dim}-d, valid {valid.dim}-d")
    windows_per_clip = max(windows_per_clip, 1)
    device = torch.device(device) if device is not None else pick_device()
    train_targets = _check_targets(spec, train, "train")
    _check_targets(spec, valid, "valid")

    train_windows = _to_device(train, device)
    valid_windows = _to_device(valid, device)
    clip_targets = torch.as_tensor(train_targets, device=device)
    mean, std = _window_statistics(train_windows.embeddings) if standardize else (None, None)
    draw = _window_draws(np.asarray(train.clip_index, dtype=np.int64), train.num_clips)
    rng = np.random.default_rng(seed)
    loss_fn = nn.BCEWithLogitsLoss() if spec.multilabel else nn.CrossEntropyLoss()

    fork_devices = [device.index or 0] if device.type == "cuda" else []
    threads = cpu_threads if device.type == "cpu" else None
    with torch_threads(threads), torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(seed)
        model = build_probe(spec, train.dim, params, mean=mean, std=std).to(device)
        optimiser = torch.optim.Adam(
            model.parameters(), lr=params.lr, weight_decay=params.weight_decay
        )
        history: list[dict] = []
        best_score, best_epoch, best_state = -math.inf, 0, None
        epochs = range(1, max_epochs + 1)
        if progress:
            from tqdm.auto import tqdm

            epochs = tqdm(epochs, desc=f"{spec.kind} probe", unit="epoch", leave=False)
        for epoch in epochs:
            model.train()
            picks = draw(rng, windows_per_clip)
            picks = torch.as_tensor(picks[rng.permutation(picks.size)], device=device)
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            for start in range(0, picks.numel(), batch_size):
                batch = picks[start : start + batch_size]
                logits = model(train_windows.embeddings[batch])
                loss = loss_fn(logits, clip_targets[train_windows.clip_index[batch]])
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                loss_sum += loss.detach() * batch.numel()
            train_loss = float(loss_sum) / picks.numel()
            if not math.isfinite(train_loss):
                # Diverged weights cannot be scored; keep the last good epoch, if any.
                history.append({"epoch": epoch, "train_loss": train_loss, "valid_score": math.nan})
                if best_state is None:
                    raise ProbeDivergedError(f"training loss is {train_loss} in epoch {epoch}")
                log.warning("probe loss became %s in epoch %d; stopping", train_loss, epoch)
                break

            valid_score = float(score_fn(valid.targets, _predict(model, valid_windows, 4096)))
            if not math.isfinite(valid_score):
                raise ValueError(f"score_fn returned {valid_score} in epoch {epoch}")
            history.append({"epoch": epoch, "train_loss": train_loss, "valid_score": valid_score})
            if progress:
                epochs.set_postfix(loss=f"{train_loss:.4f}", valid=f"{valid_score:.4f}")
            if valid_score > best_score:
                best_score, best_epoch = valid_score, epoch
                best_state = copy.deepcopy(model.state_dict())
            elif epoch - best_epoch >= patience:
                break

    model.load_state_dict(best_state)
    model.eval()
    return ProbeResult(
        model=model,
        best_epoch=best_epoch,
        best_valid_score=best_score,
        history=history,
        epochs_run=len(history),
    )
