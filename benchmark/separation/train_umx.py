"""Train a small Open-Unmix on a multitrack corpus with true stems (offline stand-in for umxhq).

The recipe is the package's ``scripts/train.py`` scaled down for a CPU: one
``openunmix.model.OpenUnmix`` per target, mixture magnitude spectrogram in, target magnitude
spectrogram out, MSE loss, Adam (weight decay 1e-5), input standardised with per-bin mean and
standard deviation of the training mixtures. Training examples are built as the package's
MUSDB dataset does: for each source a random excerpt of a random training clip with a random
gain in [0.25, 1.25] (its ``random_track_mix`` and ``gain`` augmentations), the mixture being
their sum. Differences, for speed: 16 kHz audio (no resampling to 44.1 kHz), STFT 1024/256
(513 bins, the whole 8-kHz band), mono models (``nb_channels=1``: the corpus is mono),
``cfg.train_hidden_size`` units, a fixed number of steps instead of epochs with early
stopping, and the four targets trained side by side on the same batches.

The output directory is in the package's local-model format (see
:mod:`benchmark.separation.umx`) plus ``quality.json``: SI-SDR per source on the validation
clips for the trained model and for the random-mask baseline, and ``training_time.json``
(wall time). Identity (:func:`benchmark.separation.umx.model_identity`) comes from the
weights and hyper-parameters only, so retraining the same separator keeps every key that
depends on it; the wall time lives in its own file for that reason.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from openunmix.model import OpenUnmix
from openunmix.transforms import ComplexNorm, make_filterbanks
from openunmix.utils import bandwidth_to_max_bin
from tqdm import tqdm

from benchmark.config import SeparationConfig, to_dict
from benchmark.io import atomic_write_json, pick_device, seeded_torch, torch_threads
from benchmark.separation.base import SAMPLE_RATE, SOURCES, SeparationError, load_stems
from benchmark.separation.metrics import score_separator
from benchmark.separation.random_mask import RandomMaskSeparator
from benchmark.separation.umx import SEPARATOR_CONF, build_umx

TRAIN_N_FFT = 1024  # STFT size at 16 kHz (ours; package: 4096 at 44.1 kHz)
TRAIN_N_HOP = 256  # STFT hop (ours; package: 1024 at 44.1 kHz)
TRAIN_NB_CHANNELS = 1  # mono models: the corpus is mono (ours; package: 2)
TRAIN_NB_LAYERS = 3  # Bi-LSTM layers (package default)
TRAIN_BANDWIDTH_HZ = SAMPLE_RATE // 2  # the whole band (package: 16 kHz of 22.05)
TRAIN_WEIGHT_DECAY = 1e-5  # Adam weight decay (package default)
GAIN_RANGE = (0.25, 1.25)  # random source gain (package's _augment_gain)
LOSS_LOG_EVERY = 50  # steps per entry of the loss history (ours)
TRAINING_TIME = "training_time.json"  # {"train_time_s": wall seconds}; not part of identity


def _spectrogram_encoder() -> torch.nn.Module:
    """Waveform ``(B, 1, n)`` -> magnitude ``(B, 1, 513, frames)``, as the package's trainer.

    Uncentred frames, like ``scripts/train.py`` (the separator centres them at inference).
    """
    stft, _ = make_filterbanks(
        n_fft=TRAIN_N_FFT, n_hop=TRAIN_N_HOP, center=False, sample_rate=float(SAMPLE_RATE)
    )
    return torch.nn.Sequential(stft, ComplexNorm(mono=TRAIN_NB_CHANNELS == 1))


def _load_corpus(
    stems_root: Path, clip_ids: list[str], progress: bool
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Stems of the training clips and the input statistics of their mixtures.

    Returns the stems of each clip as float16 ``(4, n)`` in :data:`SOURCES` order (half the
    memory of float32; ample precision for training examples) and the per-bin mean and
    standard deviation of the mixtures' magnitude frames, as the package's
    ``get_statistics`` (a StandardScaler over every frame of each whole training mixture,
    no augmentation; the standard deviation floored at 1e-4 of its maximum), float64
    ``(513,)`` each.
    """
    if not clip_ids:
        raise SeparationError("train_separator: no training clips")
    encoder = _spectrogram_encoder()
    total = np.zeros(TRAIN_N_FFT // 2 + 1)
    total_sq = np.zeros_like(total)
    count = 0
    corpus = []
    for clip_id in tqdm(clip_ids, desc="load stems", leave=False, disable=not progress):
        stems = load_stems(stems_root, clip_id)
        stacked = np.stack([stems[s] for s in SOURCES])
        corpus.append(stacked.astype(np.float16))
        if stacked.shape[1] < TRAIN_N_FFT:
            continue
        with torch.inference_mode():
            mix = torch.from_numpy(stacked.sum(axis=0))[None, None]
            mag = encoder(mix)[0, 0].double().numpy()  # (bins, frames)
        total += mag.sum(axis=1)
        total_sq += np.square(mag).sum(axis=1)
        count += mag.shape[1]
    if count == 0:
        raise SeparationError(
            f"train_separator: every training clip is shorter than one STFT frame "
            f"({TRAIN_N_FFT} samples)"
        )
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - np.square(mean), 0.0))
    return corpus, mean, np.maximum(std, 1e-4 * std.max())


def _sample_batch(
    corpus: list[np.ndarray], rng: np.random.Generator, batch_size: int, num_samples: int
) -> np.ndarray:
    """Random training examples ``(batch, 4, num_samples)``: per source a random clip,
    a random offset and a random gain (zero-padded when the clip is shorter)."""
    batch = np.zeros((batch_size, len(SOURCES), num_samples), dtype=np.float32)
    for b in range(batch_size):
        for k in range(len(SOURCES)):
            wave = corpus[rng.integers(len(corpus))][k]
            start = rng.integers(len(wave) - num_samples + 1) if len(wave) > num_samples else 0
            piece = wave[start : start + num_samples]
            batch[b, k, : len(piece)] = piece.astype(np.float32) * rng.uniform(*GAIN_RANGE)
    return batch


def _target_json(target: str, cfg: SeparationConfig, history: list[float]) -> dict:
    """``<target>.json`` in the package's layout: hyper-parameters under ``args`` (no wall
    time: the file is part of the model's identity)."""
    args = {
        "target": target,
        "nfft": TRAIN_N_FFT,
        "nhop": TRAIN_N_HOP,
        "nb_channels": TRAIN_NB_CHANNELS,
        "hidden_size": cfg.train_hidden_size,
        "nb_layers": TRAIN_NB_LAYERS,
        "unidirectional": False,
        "bandwidth": TRAIN_BANDWIDTH_HZ,
        "sample_rate": SAMPLE_RATE,
        "seq_dur": cfg.train_seq_dur_s,
        "batch_size": cfg.train_batch_size,
        "lr": cfg.train_lr,
        "weight_decay": TRAIN_WEIGHT_DECAY,
        "seed": cfg.train_seed,
        "steps": cfg.train_steps,
    }
    return {
        "args": args,
        "sample_rate": SAMPLE_RATE,
        "steps_trained": cfg.train_steps,
        "train_loss_history": history,
        "train_loss_every_steps": LOSS_LOG_EVERY,
        "trainer": "benchmark.separation.train_separator",
    }


def train_separator(
    stems_root: Path,
    clip_ids_train: list[str],
    clip_ids_valid: list[str],
    out_dir: Path,
    cfg: SeparationConfig,
    device=None,
    progress: bool = True,
    num_threads: int | None = None,
) -> Path:
    """Train one small Open-Unmix per source on true stems; write a local model directory.

    stems_root: ``<stems_root>/<clip_id>/{bass,drums,vocals,other,mix}.flac`` at 16 kHz
    (``mix.flac`` is only read for the validation scores). Uses ``cfg.train_steps`` steps
    per target of ``cfg.train_batch_size`` excerpts of ``cfg.train_seq_dur_s`` seconds, Adam
    at ``cfg.train_lr``, ``cfg.train_hidden_size`` units, seeded by ``cfg.train_seed``
    (deterministic on the CPU). Writes into ``out_dir``, atomically (a temporary sibling
    directory renamed at the end; an existing ``out_dir`` is replaced):
    ``separator.json``, ``<target>.json`` + ``<target>.pth`` per source (loadable with
    ``separation.umx_model=<out_dir>``), ``training_time.json`` and ``quality.json`` (mean SI-SDR per source on
    ``clip_ids_valid`` for this model, with ``cfg.wiener``, and for the random-mask baseline;
    silent references skipped and counted).
    ``num_threads``: torch CPU threads while training (None: the caller's); the weights depend
    on it. The caller's thread count and random generators are restored afterwards.
    Returns ``out_dir``. Raises :class:`SeparationError` for missing or unusable stems.
    """
    out_dir = Path(out_dir)
    device = pick_device() if device is None else torch.device(device)
    with torch_threads(num_threads), seeded_torch(cfg.train_seed):
        return _train(
            stems_root, list(clip_ids_train), list(clip_ids_valid), out_dir, cfg, device, progress
        )


def _train(stems_root, clip_ids_train, clip_ids_valid, out_dir, cfg, device, progress) -> Path:
    """:func:`train_separator` inside its thread and generator context."""
    corpus, mean, scale = _load_corpus(stems_root, list(clip_ids_train), progress)
    max_bin = int(bandwidth_to_max_bin(SAMPLE_RATE, TRAIN_N_FFT, TRAIN_BANDWIDTH_HZ))
    models = {
        target: OpenUnmix(
            nb_bins=TRAIN_N_FFT // 2 + 1,
            nb_channels=TRAIN_NB_CHANNELS,
            hidden_size=cfg.train_hidden_size,
            nb_layers=TRAIN_NB_LAYERS,
            input_mean=mean,
            input_scale=scale,
            max_bin=max_bin,
        ).to(device)
        for target in SOURCES
    }
    optimisers = {
        t: torch.optim.Adam(m.parameters(), lr=cfg.train_lr, weight_decay=TRAIN_WEIGHT_DECAY)
        for t, m in models.items()
    }
    encoder = _spectrogram_encoder().to(device)
    rng = np.random.default_rng(cfg.train_seed)
    num_samples = int(round(cfg.train_seq_dur_s * SAMPLE_RATE))
    history: dict[str, list[float]] = {t: [] for t in SOURCES}
    running = dict.fromkeys(SOURCES, 0.0)
    for model in models.values():
        model.train()
    started = time.perf_counter()
    steps = tqdm(range(cfg.train_steps), desc="train separator", disable=not progress)
    for step in steps:
        batch = _sample_batch(corpus, rng, cfg.train_batch_size, num_samples)
        batch = torch.from_numpy(batch).to(device)
        with torch.no_grad():
            mix_spec = encoder(batch.sum(dim=1, keepdim=True))  # (B, 1, bins, frames)
            target_specs = encoder(batch.reshape(-1, 1, num_samples)).reshape(
                batch.shape[0], len(SOURCES), *mix_spec.shape[2:]
            )
        for k, target in enumerate(SOURCES):
            optimisers[target].zero_grad(set_to_none=True)
            estimate = models[target](mix_spec)
            loss = torch.nn.functional.mse_loss(estimate, target_specs[:, k : k + 1])
            loss.backward()
            optimisers[target].step()
            running[target] += loss.item()
        if (step + 1) % LOSS_LOG_EVERY == 0 or step + 1 == cfg.train_steps:
            done = (step % LOSS_LOG_EVERY) + 1
            for target in SOURCES:
                history[target].append(running[target] / done)
                running[target] = 0.0
            steps.set_postfix({t[:3]: f"{history[t][-1]:.3g}" for t in SOURCES})
    seconds = time.perf_counter() - started

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        _write_model(tmp_dir, models, cfg, history)
        atomic_write_json(tmp_dir / TRAINING_TIME, {"train_time_s": round(seconds, 1)})
        quality = _quality(tmp_dir, stems_root, list(clip_ids_valid), cfg, device)
        atomic_write_json(tmp_dir / "quality.json", quality)
        _replace_dir(tmp_dir, out_dir)
    finally:
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir)
    return out_dir


def _write_model(
    model_dir: Path,
    models: dict[str, OpenUnmix],
    cfg: SeparationConfig,
    history: dict[str, list[float]],
) -> None:
    """The package's local-model layout: separator.json, <target>.json, <target>.pth."""
    separator_conf = {
        "nfft": TRAIN_N_FFT,
        "nhop": TRAIN_N_HOP,
        "sample_rate": SAMPLE_RATE,
        "nb_channels": TRAIN_NB_CHANNELS,
    }
    atomic_write_json(model_dir / SEPARATOR_CONF, separator_conf)
    for target, model in models.items():
        model.eval()
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        torch.save(state, model_dir / f"{target}.pth")
        meta = _target_json(target, cfg, history[target])
        meta["separation_config"] = to_dict(cfg)
        atomic_write_json(model_dir / f"{target}.json", meta)


def _quality(
    model_dir: Path, stems_root: Path, clip_ids: list[str], cfg: SeparationConfig, device
) -> dict:
    """SI-SDR of the freshly written model (loaded back from disk) and of random masks."""
    trained = build_umx(replace(cfg, umx_model=str(model_dir)), device=device)
    results = {"num_clips": len(clip_ids), "clip_ids": clip_ids, "wiener": cfg.wiener}
    for key, separator in (("umx", trained), ("random_mask", RandomMaskSeparator(cfg))):
        results[key] = score_separator(separator, stems_root, clip_ids, cfg.batch_size).to_dict()
    return results


def _replace_dir(tmp_dir: Path, out_dir: Path) -> None:
    """Rename ``tmp_dir`` onto ``out_dir``; an existing ``out_dir`` is removed afterwards."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        os.replace(out_dir, old)
    os.replace(tmp_dir, out_dir)
    if old is not None:
        shutil.rmtree(old)
