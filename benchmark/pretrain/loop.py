"""The one pre-training loop, shared by every method (a method only makes pairs).

Adam, lr halved after ``lr_decay_fraction`` of the steps (paper: 1e-3, halved at 5,000 of
10,000). Batches come from a DataLoader whose workers call ``method.sample`` with a generator
seeded by ``(seed, step)``: the batch of a step does not depend on the number of workers or
on where a run was resumed, so a killed and resumed run ends with the same weights.

Checkpoints (``checkpoint.pt``: model, optimiser, scheduler, step, torch RNG states) are
written atomically every ``checkpoint_every`` steps and load with ``weights_only=True``;
the run directory also holds the resolved ``config.json`` with its hash, and ``final.pt``
+ ``final.json`` once the run is complete.

The evaluated encoder is the trained one with valid batch-norm statistics ("precise BN",
``pretrain.precise_bn_batches``): training runs on batch statistics, but the running averages
that eval mode uses move with momentum 0.01 (Keras' 0.99, kept by ``efficientnet_pytorch``),
so after a few hundred steps they still carry ``0.99**steps`` of their initial values (13% at
200 steps) and no longer match the trained weights; the eval-mode features then shrink layer
by layer until every clip gets the same embedding. So ``final.pt`` holds statistics
re-estimated from fixed batches of the method's own training pairs, and every eval-mode
validation does the same on a copy. ``random_init`` gets the same rule from mixture crops
(:func:`materialize_untrained`). Validation logs its chance level beside it, and
``final.json`` says whether the run is ``collapsed`` (eval-mode validation at chance).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm import tqdm

from benchmark.config import Config, EncoderConfig, PretrainConfig, stable_hash
from benchmark.io import (
    atomic_torch_save,
    atomic_write_json,
    load_weights,
    pick_device,
    read_json,
    seeded_torch,
    torch_threads,
)
from benchmark.pretrain.encoder import ContrastiveModel, reestimate_batchnorm
from benchmark.pretrain.losses import centroid_contrastive_loss, contrastive_loss, num_candidates
from benchmark.pretrain.pairs import PairBatch, PairCorpus

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
FINAL = "final.pt"
SNAPSHOT = "snapshot-{step:06d}.pt"  # the training weights at a snapshot step, as trained
EVALUATED_SNAPSHOT = "snapshot-{step:06d}-bn.pt"  # the same with precise-BN statistics

# Streams of step_rng: 0 training batches, 1 validation batches, 2 precise-BN batches.
_VALID_STREAM, _BN_STREAM = 1, 2
# A run is "collapsed" when its final eval-mode validation loss is within this fraction of the
# chance loss ln(num candidates), or above it: the encoder did not learn the pretext task in
# the mode the probes use (the defect this check exists for sat at exactly ln 32).
CHANCE_MARGIN = 0.02


def num_updates(p: PretrainConfig) -> int:
    """Optimiser updates of a run: ``steps``, or 64 batches per step for ``step_unit=chunk64``
    (the authors' script calls a chunk of 64 batches one step)."""
    per_step = {"batch": 1, "chunk64": 64}
    if p.step_unit not in per_step:
        raise ValueError(
            f"pretrain.step_unit must be one of {sorted(per_step)}, got {p.step_unit!r}"
        )
    return p.steps * per_step[p.step_unit]


def snapshot_steps(p: PretrainConfig) -> list[int]:
    """The updates after which the loop keeps a snapshot (``p.snapshot_fractions`` of
    :func:`num_updates`, rounded, at least 1; the last update is ``final.pt``'s, not a
    snapshot). Raises ``ValueError`` for a fraction outside (0, 1]."""
    total = num_updates(p)
    bad = [f for f in p.snapshot_fractions if not 0.0 < f <= 1.0]
    if bad:
        raise ValueError(f"pretrain.snapshot_fractions must lie in (0, 1], got {bad}")
    steps = {max(1, round(f * total)) for f in p.snapshot_fractions}
    return sorted(s for s in steps if s < total)


def step_rng(seed: int, step: int, stream: int = 0) -> np.random.Generator:
    """The generator of one step's batch: a pure function of (seed, step, stream)."""
    return np.random.default_rng([seed, step, stream])


class _Batches(IterableDataset):
    """Yields the batches of steps ``[start, stop)``; worker ``w`` of ``n`` makes every n-th.

    DataLoader reads its workers round-robin, so batches arrive in step order.
    """

    def __init__(
        self,
        method,
        corpus: PairCorpus,
        batch_size: int,
        seed: int,
        start: int,
        stop: int,
        stream: int = 0,
    ):
        self.method, self.corpus, self.batch_size = method, corpus, batch_size
        self.seed, self.start, self.stop, self.stream = seed, start, stop, stream

    def __iter__(self) -> Iterator[tuple[int, PairBatch]]:
        info = get_worker_info()
        wid, num = (info.id, info.num_workers) if info else (0, 1)
        if info is not None:
            # A worker process is ours: one thread each, the workers already share the cores.
            # Inline (no workers) this is the caller's process, whose threads we leave alone;
            # batches are NumPy-made, so they do not depend on the thread count either way.
            torch.set_num_threads(1)
        for step in range(self.start + wid, self.stop, num):
            rng = step_rng(self.seed, step, self.stream)
            yield step, self.method.sample(self.corpus, self.batch_size, rng)


def batches(
    method, corpus, batch_size, seed, start, stop, num_workers, stream=0, pin_memory=False
) -> DataLoader:
    """The batches of steps ``[start, stop)``, made by ``num_workers`` processes (0: inline);
    ``pin_memory`` page-locks them for asynchronous host-to-device copies (CUDA).

    The loader gets its own torch generator: by default a DataLoader iterator draws its base
    seed from torch's global generator, so a resumed run (which builds its loader after
    restoring that generator) would be one draw ahead of an uninterrupted one, and the
    encoder's drop connect would then differ.
    """
    return DataLoader(
        _Batches(method, corpus, batch_size, seed, start, stop, stream),
        batch_size=None,
        num_workers=num_workers,
        prefetch_factor=4 if num_workers else None,
        persistent_workers=False,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(seed),
    )


def loss_fn(method) -> Callable:
    if method.loss == "centroid":
        return lambda za, zp, silent, sim: centroid_contrastive_loss(za, zp, silent, sim)
    if method.loss == "plain":
        return lambda za, zp, silent, sim: contrastive_loss(za, zp, sim)
    raise ValueError(f"{method.name}: unknown loss {method.loss!r}")


def build_model(enc: EncoderConfig, seed: int, device) -> ContrastiveModel:
    """The initial model of ``seed`` on ``device``; the caller's random generators are left
    as they were (the weights are those drawn after ``torch.manual_seed(seed)``)."""
    with seeded_torch(seed):
        return _new_model(enc, device)


def _new_model(enc: EncoderConfig, device) -> ContrastiveModel:
    """A model initialised from torch's global generator (seeded by the caller)."""
    model = ContrastiveModel(enc).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def _autocast(device, bf16: bool | None = None):
    """bfloat16 autocast where the loop uses it (``bf16=None``: on CUDA), or as asked."""
    on = device.type == "cuda" if bf16 is None else bf16
    return torch.autocast(device.type if on else "cpu", dtype=torch.bfloat16, enabled=on)


def train_step(model, opt, compute_loss, anchors, positives, silent, device, bf16=None):
    """One optimiser update on a batch already on ``device``; returns (loss, accuracy).

    The loop's step, also timed alone by ``make bench`` (the encoder's own throughput) and run
    with and without bfloat16 autocast (``bf16``; None: the loop's choice) by its precision
    check."""
    with _autocast(device, bf16):
        za, zp = model(anchors, positives)
    loss, acc = compute_loss(za.float(), zp.float(), silent, model.similarity)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss, acc


@dataclass
class PretrainResult:
    run_dir: Path
    final_path: Path
    steps_done: int
    resumed_from: int
    wall_s: float
    validation: dict | None = None  # final eval-mode validation (see :func:`validate`)


@dataclass
class PretrainedModel:
    """A method's encoder after stage ``pretrain``: what evaluation embeds with.

    ``key`` is the pre-training run's content key, ``final_path`` its weights (for a method
    without pre-training, random_init, the initial weights with precise-BN statistics; None
    for an external encoder), ``run_id`` its MLflow run; ``cached`` says it was found finished
    and nothing was trained. ``external``: for an encoder of the HEAR API, ``(module, model
    file)``; its ``key`` then identifies the module and weights."""

    method: str
    seed: int
    key: str
    final_path: Path
    run_id: str | None
    cached: bool = False
    external: tuple[str, str] | None = None


def _save_checkpoint(path: Path, model, opt, sched, step: int, key: str) -> None:
    state = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "step": step,
        "key": key,
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    atomic_torch_save(path, state)


def load_checkpoint(path: Path, device="cpu") -> dict:
    """Load a checkpoint without executing pickled code (``weights_only=True``).

    Raises :class:`benchmark.errors.CheckpointError` naming a file that holds code."""
    return load_weights(path, map_location=device)


def pretrain(
    cfg: Config,
    method,
    corpus: PairCorpus,
    valid: PairCorpus | None,
    run_dir: Path,
    key: str,
    seed: int,
    *,
    on_metrics: Callable[[dict, int], None] | None = None,
    device=None,
    progress: bool = True,
    stop_after: int | None = None,
) -> PretrainResult:
    """Pre-train ``method`` for ``cfg.pretrain.steps`` steps, resuming ``run_dir`` if it holds
    a checkpoint of the same ``key``. ``stop_after`` ends early (tests of resumption).

    Runs on ``cfg.compute.torch_threads`` CPU threads with torch's generator seeded by ``seed``
    (initial weights, then drop connect); the caller's thread count and generator states are
    restored afterwards, so the result does not depend on what ran before in this process.
    Raises :class:`benchmark.errors.CheckpointError` for a checkpoint holding code and
    ``RuntimeError`` for a checkpoint of another ``key``.
    """
    device = device or pick_device()
    with torch_threads(cfg.compute.torch_threads), seeded_torch(seed):
        return _pretrain(
            cfg, method, corpus, valid, run_dir, key, seed, on_metrics, device, progress, stop_after
        )


def _pretrain(
    cfg, method, corpus, valid, run_dir, key, seed, on_metrics, device, progress, stop_after
) -> PretrainResult:
    """:func:`pretrain` inside its thread and generator context."""
    p: PretrainConfig = cfg.pretrain
    total = num_updates(p)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        run_dir / "config.json",
        {"hash": key, "method": method.params(), "seed": seed, "config": cfg.to_dict()},
    )
    # Drawn from the generator seeded above, which training then continues (drop connect).
    model = _new_model(cfg.encoder, device)
    opt = torch.optim.Adam(model.parameters(), lr=p.lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(
        opt, milestones=[max(1, math.floor(total * p.lr_decay_fraction))], gamma=0.5
    )
    start = 0
    ckpt_path = run_dir / CHECKPOINT
    if ckpt_path.is_file():
        state = load_checkpoint(ckpt_path, device)
        if state.get("key") != key:
            raise RuntimeError(
                f"{ckpt_path}: checkpoint of another configuration ({state.get('key')} != {key})"
            )
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"].cpu())
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
        start = int(state["step"])
        log.info("%s seed %d: resuming at step %d of %d", method.name, seed, start, total)
    compute_loss = loss_fn(method)
    stop = total if stop_after is None else min(total, stop_after)
    snapshots = set(snapshot_steps(p))
    t0 = time.perf_counter()
    model.train()
    bar = tqdm(
        total=total,
        initial=start,
        desc=f"pretrain {method.name} s{seed}",
        unit="step",
        disable=not progress,
    )
    window_t, window_pairs = time.perf_counter(), 0
    loader = batches(
        method,
        corpus,
        p.batch_size,
        seed,
        start,
        stop,
        p.num_workers,
        pin_memory=device.type == "cuda",
    )
    for step, batch in loader:
        anchors = batch.anchors.to(device, non_blocking=True)
        positives = batch.positives.to(device, non_blocking=True)
        silent = batch.silent.to(device)
        loss, acc = train_step(model, opt, compute_loss, anchors, positives, silent, device)
        sched.step()
        done = step + 1
        window_pairs += len(anchors)
        bar.update()
        if on_metrics and (done % 10 == 0 or done == total):
            now = time.perf_counter()
            m = num_candidates(method.loss, batch.silent)
            on_metrics(
                {
                    "loss": float(loss.detach()),
                    "contrastive_accuracy": float(acc),
                    "chance_loss": math.log(m),
                    "chance_accuracy": 1.0 / m,
                    "lr": float(sched.get_last_lr()[0]),
                    "pairs_per_s": window_pairs / max(now - window_t, 1e-9),
                },
                done,
            )
            window_t, window_pairs = now, 0
        paused = time.perf_counter()  # validation and checkpoints are not training throughput
        # The last step's validation runs on the final model below, after its precise BN.
        if valid is not None and done % p.val_every == 0 and done < total:
            _report_validation(
                validate(model, method, valid, p, seed, device, bn_corpus=corpus),
                method, seed, done, on_metrics,
            )  # fmt: skip
            model.train()
        if done in snapshots:
            # Before the checkpoint: a run killed in between redoes this step and rewrites the
            # same snapshot (batches and drop connect are functions of (seed, step)).
            atomic_torch_save(run_dir / SNAPSHOT.format(step=done), model.state_dict())
        if done % p.checkpoint_every == 0 or done == total:
            _save_checkpoint(ckpt_path, model, opt, sched, done, key)
        window_t += time.perf_counter() - paused
    bar.close()
    steps_done = stop
    final = run_dir / FINAL
    validation = None
    if steps_done == total:
        # The evaluated encoder: the trained weights with re-estimated batch-norm statistics.
        precise_bn(model, method, corpus, p, seed, device)
        if valid is not None:
            validation = validate(model, method, valid, p, seed, device)
            _report_validation(validation, method, seed, total, on_metrics)
        _save_final(run_dir, model, key, method, seed, total, validation)
    return PretrainResult(run_dir, final, steps_done, start, time.perf_counter() - t0, validation)


def _report_validation(metrics: dict, method, seed: int, step: int, on_metrics) -> None:
    log.info(
        "%s s%d step %d: eval-mode val loss %.4f (chance %.4f), accuracy %.3f (chance %.3f)",
        method.name, seed, step, metrics["val_loss"], metrics["val_chance_loss"],
        metrics["val_contrastive_accuracy"], metrics["val_chance_accuracy"],
    )  # fmt: skip
    if on_metrics:
        on_metrics(metrics, step)


def _save_final(run_dir: Path, model, key: str, method, seed: int, steps: int, validation):
    """``final.pt`` (weights) then ``final.json`` (the commit marker), each atomically."""
    atomic_torch_save(run_dir / FINAL, model.state_dict())
    info = {"hash": key, "steps": steps, "method": method.name, "seed": seed}
    if validation is not None:
        info["validation"] = validation
        info["collapsed"] = pretext_collapsed(validation)
    atomic_write_json(run_dir / "final.json", info)


def pretext_collapsed(validation: dict) -> bool:
    """Whether an eval-mode validation (:func:`validate`) is at chance: its loss is within
    :data:`CHANCE_MARGIN` of ``ln(num candidates)``, or above it."""
    return validation["val_loss"] >= (1.0 - CHANCE_MARGIN) * validation["val_chance_loss"]


def recalibration_batches(
    method, corpus: PairCorpus, batch_size: int, seed: int, num_batches: int
) -> Iterator[torch.Tensor]:
    """The fixed inputs of precise BN: ``(2 * batch_size, T, F)`` crops per batch.

    A pre-training method's own pairs (anchors and positives in one batch, as its training
    forward pass sees them), drawn from ``step_rng(seed, i, stream 2)``; for a method without
    pre-training (random_init) as many mixture crops, from the same corpus and generators.
    """
    for i in range(num_batches):
        rng = step_rng(seed, i, _BN_STREAM)
        if method.pretrained:
            pairs = method.sample(corpus, batch_size, rng)
            yield torch.cat([pairs.anchors, pairs.positives])
        else:
            excerpts = rng.integers(0, len(corpus), size=2 * batch_size)
            crops = corpus.mix_crops(excerpts, corpus.random_starts(rng, 2 * batch_size))
            yield torch.from_numpy(crops)


def precise_bn(
    model: ContrastiveModel, method, corpus: PairCorpus, p: PretrainConfig, seed, device
):
    """Re-estimate ``model``'s batch-norm statistics in place (``p.precise_bn_batches`` fixed
    batches of :func:`recalibration_batches`; 0 leaves the running statistics) and leave it
    in eval mode. Uses no random generator of torch's, so resuming stays exact."""
    if p.precise_bn_batches > 0:
        batches_ = recalibration_batches(method, corpus, p.batch_size, seed, p.precise_bn_batches)
        reestimate_batchnorm(model.encoder, batches_, device)
    model.eval()


@torch.no_grad()
def validate(
    model,
    method,
    valid: PairCorpus,
    p: PretrainConfig,
    seed: int,
    device,
    *,
    bn_corpus: PairCorpus | None = None,
) -> dict:
    """Eval-mode contrastive loss and accuracy on fixed validation batches, with chance.

    The batches are the same at every validation (``step_rng(seed, i, stream 1)``). Given
    ``bn_corpus`` (the training pairs), the model is evaluated as it would be embedded: a copy
    with precise-BN statistics from ``bn_corpus``; the original's running statistics are
    reported beside it (``val_*_running_stats``), and ``model`` is left unchanged. Without
    ``bn_corpus``, ``model`` itself is evaluated as it is (e.g. the final model).

    Returns ``val_loss``, ``val_contrastive_accuracy``, and their chance levels
    ``val_chance_loss`` (mean of ``ln M``) and ``val_chance_accuracy`` (mean of ``1 / M``),
    ``M`` the candidates per anchor of each batch (:func:`num_candidates`).
    """
    if bn_corpus is None:
        return _evaluate(model, method, valid, p, seed, device)
    evaluated = copy.deepcopy(model)
    precise_bn(evaluated, method, bn_corpus, p, seed, device)
    metrics = _evaluate(evaluated, method, valid, p, seed, device)
    running = _evaluate(model, method, valid, p, seed, device)
    metrics["val_loss_running_stats"] = running["val_loss"]
    metrics["val_contrastive_accuracy_running_stats"] = running["val_contrastive_accuracy"]
    return metrics


@torch.no_grad()
def _evaluate(model, method, valid: PairCorpus, p: PretrainConfig, seed: int, device) -> dict:
    model.eval()
    compute_loss = loss_fn(method)
    losses, accs, chance_losses, chance_accs = [], [], [], []
    for i in range(p.val_batches):
        batch = method.sample(valid, p.batch_size, step_rng(seed, i, _VALID_STREAM))
        with _autocast(device):
            za, zp = model(batch.anchors.to(device), batch.positives.to(device))
        loss, acc = compute_loss(za.float(), zp.float(), batch.silent.to(device), model.similarity)
        m = num_candidates(method.loss, batch.silent)
        losses.append(float(loss))
        accs.append(float(acc))
        chance_losses.append(math.log(m))
        chance_accs.append(1.0 / m)
    return {
        "val_loss": float(np.mean(losses)),
        "val_contrastive_accuracy": float(np.mean(accs)),
        "val_chance_loss": float(np.mean(chance_losses)),
        "val_chance_accuracy": float(np.mean(chance_accs)),
    }


def materialize_untrained(
    cfg: Config, method, corpus: PairCorpus, run_dir: Path, key: str, seed: int, device=None
) -> Path:
    """The encoder of a method without pre-training (random_init): its initial weights with
    the same precise-BN rule as every trained encoder (mixture crops of ``corpus``), saved
    as ``final.pt`` + ``final.json`` in ``run_dir``. Returns the ``final.pt`` path."""
    device = device or pick_device()
    run_dir.mkdir(parents=True, exist_ok=True)
    # The statistics depend on the thread count like any forward pass: pinned, then restored.
    with torch_threads(cfg.compute.torch_threads):
        model = build_model(cfg.encoder, seed, device)
        precise_bn(model, method, corpus, cfg.pretrain, seed, device)
    _save_final(run_dir, model, key, method, seed, 0, None)
    return run_dir / FINAL


def evaluated_snapshot(
    cfg: Config,
    method,
    corpus: PairCorpus,
    run_dir: Path,
    key: str,
    seed: int,
    step: int,
    device=None,
) -> Path:
    """The encoder of a finished run at snapshot ``step``, as ``final.pt`` is made: its
    weights then, with batch-norm statistics re-estimated by :func:`precise_bn` (the same
    fixed batches of the method's own pairs). Written once as ``snapshot-<step>-bn.pt`` beside
    the run's snapshot and returned.

    A run that kept no snapshot at ``step`` (it finished before the snapshot existed, or under
    other ``snapshot_fractions``) is replayed from scratch up to ``step`` in
    ``<run_dir>/replay``: the loop's batches and random streams are functions of (seed, step),
    so the replay's weights are the run's. ``seed`` is the seed the run trained with.
    """
    out = run_dir / EVALUATED_SNAPSHOT.format(step=step)
    if out.is_file():
        return out
    device = device or pick_device()
    raw = run_dir / SNAPSHOT.format(step=step)
    if not raw.is_file():
        replay = run_dir / "replay"
        fraction = (step / num_updates(cfg.pretrain),)
        snap_cfg = dataclasses.replace(
            cfg, pretrain=dataclasses.replace(cfg.pretrain, snapshot_fractions=fraction)
        )
        log.info("%s s%d: replaying %d steps for a snapshot", method.name, seed, step)
        pretrain(snap_cfg, method, corpus, None, replay, key, seed, device=device,
                 progress=False, stop_after=step)  # fmt: skip
        os.replace(replay / SNAPSHOT.format(step=step), raw)
        shutil.rmtree(replay, ignore_errors=True)
    model = ContrastiveModel(cfg.encoder).to(device)  # every weight is overwritten next
    model.load_state_dict(load_weights(raw, map_location=device))
    with torch_threads(cfg.compute.torch_threads):  # as final.pt's statistics are made
        precise_bn(model, method, corpus, cfg.pretrain, seed, device)
    atomic_torch_save(out, model.state_dict())
    return out


def is_complete(run_dir: Path, key: str) -> bool:
    info = run_dir / "final.json"
    return info.is_file() and (run_dir / FINAL).is_file() and read_json(info).get("hash") == key


def load_encoder(cfg_enc: EncoderConfig, final_path: Path, device=None) -> ContrastiveModel:
    """The pre-trained model of a finished run, in eval mode."""
    device = device or pick_device()
    model = ContrastiveModel(cfg_enc).to(device)
    model.load_state_dict(load_weights(final_path, map_location=device))
    return model.eval()


def pretrain_key(cfg: Config, method, seed: int, data_identity: str) -> str:
    """Content key of a pre-training run: what determines its weights, nothing else (for a
    method without pre-training: initial weights and batch-norm statistics only)."""
    p = cfg.pretrain
    payload = {
        "method": method.params(),
        "encoder": cfg.to_dict()["encoder"],
        "frontend": cfg.to_dict()["frontend"],
        "batch_size": p.batch_size,
        "precise_bn_batches": p.precise_bn_batches,
        "silent_value": p.silent_value,
        "seed": seed,
        "data": data_identity,
    }
    if method.pretrained:
        payload |= {
            "steps": p.steps,
            "step_unit": p.step_unit,
            "lr": p.lr,
            "lr_decay_fraction": p.lr_decay_fraction,
        }
    return stable_hash(payload)
