"""``make bench``: speed and memory of the pipeline's hot paths on this machine.

Each section runs in its own Python process (so its peak memory is its own) and prints one
line per measurement; everything is also written to ``runs/bench.json``.

- ``frontend``: seconds of audio per CPU-second for decode + log-mel and for log-mel alone
  (target >= 500x real time per core);
- ``store``: random 98-frame crops per second from the feature store (target >= 20,000/s);
- ``separation``: real-time factor of random_mask and of an Open-Unmix model (umxhq-sized);
- ``pretrain``: steady-state pairs/s of the full loop (DataLoader workers, pairing, loss,
  Adam) versus the encoder's own forward + backward + Adam on one batch already in memory
  (target ratio >= 0.9: the data path must be hidden), the data path alone, and peak memory;
  Also steps/s and the projected time of the profile's whole pre-training run (one method,
  one seed);
- ``precision``: the loop's fast paths (channels-last, bfloat16 autocast) against plain fp32
  training from the same weights on the same batches, within :data:`PRECISION_TOLERANCE`;
- ``probe``: for one method on the smoke corpus, the time to embed each task, five probe
  seeds, and the speed-up versus re-running the frozen encoder every epoch (the original
  code's approach), projected from one measured epoch of that approach.

``--profile`` picks the encoder and batch size (default: the ``default`` profile);
``--only pretrain,probe`` runs some sections; ``--steps N`` times N steps in ``pretrain`` and
trains N in ``precision`` (default 30). On a GPU machine, ``make bench-gpu`` runs the
``paper`` encoder (issue #16's figures).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from benchmark.config import FrontEndConfig, resolve
from benchmark.io import atomic_write_json, pick_device


def _cpu_time():
    return time.process_time()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_frontend(tmp: Path, profile: str, seconds: float = 30.0, clips: int = 8) -> dict:
    from benchmark.data.audio import load_audio, log_mel

    torch.set_num_threads(1)  # per core
    cfg = FrontEndConfig()
    rng = np.random.default_rng(0)
    paths = []
    for i in range(clips):
        p = tmp / f"clip{i}.mp3"
        sf.write(p, (0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32), 16000)
        paths.append(p)
    waves = [load_audio(p) for p in paths]
    log_mel(waves[0], cfg)  # warm-up
    t0 = _cpu_time()
    for w in waves:
        log_mel(w, cfg)
    mel_only = clips * seconds / (_cpu_time() - t0)
    t0 = _cpu_time()
    for p in paths:
        log_mel(load_audio(p), cfg)
    decode_mel = clips * seconds / (_cpu_time() - t0)
    return {
        "mel_x_realtime_per_core": mel_only,
        "decode_mp3_plus_mel_x_realtime_per_core": decode_mel,
    }


def bench_store(tmp: Path, profile: str, num_clips: int = 256) -> dict:
    from benchmark.data.store import FeatureStore, Job, build

    build(
        tmp / "store",
        [Job(f"c{i:05d}", f"k{i}", i) for i in range(num_clips)],
        _extract_random,
        shard_size=64,
        progress=False,
    )
    store = FeatureStore(tmp / "store")
    rng = np.random.default_rng(0)
    rows = rng.integers(0, len(store), 20000)
    starts = rng.integers(0, 2900 - 98, 20000)
    store.crops(rows[:256], starts[:256], 98)  # open the maps
    t0 = time.perf_counter()
    for i in range(0, 20000, 128):
        store.crops(rows[i : i + 128], starts[i : i + 128], 98)
    return {"store_random_crops_per_s": 20000 / (time.perf_counter() - t0)}


def _extract_random(i):
    from benchmark.data.store import Entry

    return [Entry("mix", np.random.default_rng(i).standard_normal((2900, 64)).astype(np.float32))]


def bench_separation(tmp: Path, profile: str, seconds: float = 12.0) -> dict:
    import torchaudio
    from openunmix.model import OpenUnmix, Separator

    from benchmark.config import SeparationConfig
    from benchmark.separation import build_separator

    rng = np.random.default_rng(0)
    wave = (0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32)
    sep = build_separator(SeparationConfig(separator="random_mask"))
    t0 = time.perf_counter()
    sep.separate(wave, "bench")
    rm = seconds / (time.perf_counter() - t0)
    # umxhq-sized network (untrained: weights cannot be downloaded here) at 44.1 kHz.
    targets = {
        t: OpenUnmix(nb_bins=2049, nb_channels=2, hidden_size=512, max_bin=1487).eval()
        for t in ("vocals", "drums", "bass", "other")
    }
    umx = Separator(targets, niter=0, sample_rate=44100).eval()
    x = torch.from_numpy(np.stack([wave, wave])).float()
    t0 = time.perf_counter()
    with torch.inference_mode():
        umx(torchaudio.functional.resample(x, 16000, 44100)[None])
    return {
        "random_mask_x_realtime": rm,
        "umxhq_sized_x_realtime": seconds / (time.perf_counter() - t0),
    }


def bench_pretrain(tmp: Path, profile: str, steps: int = 30, warmup: int = 10) -> dict:
    """Steady-state throughput of the loop versus the encoder alone (after ``warmup`` steps).

    The loop reports pairs/s over windows of 10 steps (``benchmark.pretrain.loop``); the windows after
    the warm-up are compared with the encoder's forward + backward + Adam on one batch already
    on the device through the loop's own ``train_step``.
    """
    from benchmark.pretrain.loop import (
        batches,
        build_model,
        loss_fn,
        num_updates,
        pretrain,
        pretrain_key,
        train_step,
    )
    from methods import METHODS
    from tests.fixtures import make_corpus

    if warmup % 10 or steps % 10:
        raise ValueError("warmup and steps must be multiples of the loop's 10-step window")
    total = warmup + steps
    run_updates = num_updates(resolve(profile).pretrain)  # the profile's own run length
    cfg = resolve(
        profile,
        [
            f"pretrain.steps={total}",
            f"pretrain.checkpoint_every={total}",
            f"pretrain.val_every={total * 10}",
        ],
    )
    corpus = make_corpus(tmp / "corpus", num_clips=24)
    method = METHODS["msa_multi"]
    bs = cfg.pretrain.batch_size
    device = pick_device()
    compute = loss_fn(method)

    # The data path alone: batches/s the DataLoader workers deliver with no model running.
    loader = batches(method, corpus, bs, 0, 0, 2 * total, cfg.pretrain.num_workers)
    t0, n = None, 0
    for i, _ in enumerate(loader):
        if i == warmup:
            t0 = time.perf_counter()
        n += i >= warmup
    data_rate = n * bs / (time.perf_counter() - t0)

    # The encoder alone, on one batch already on the device.
    model = build_model(cfg.encoder, 0, device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = method.sample(corpus, bs, np.random.default_rng(0))
    anchors, positives = batch.anchors.to(device), batch.positives.to(device)
    silent = batch.silent.to(device)
    for i in range(warmup + steps):
        if i == warmup:
            _sync(device)
            t0 = time.perf_counter()
        train_step(model, opt, compute, anchors, positives, silent, device)
    _sync(device)
    encoder_rate = steps * bs / (time.perf_counter() - t0)
    del model, opt

    # The full loop.
    windows: list[tuple[int, float]] = []
    res = pretrain(
        cfg,
        method,
        corpus,
        None,
        tmp / "run",
        pretrain_key(cfg, method, 0, "bench"),
        0,
        on_metrics=lambda m, step: windows.append((step, m["pairs_per_s"])),
        device=device,
        progress=False,
    )
    steady = [rate for step, rate in windows if step > warmup]
    loop_rate = len(steady) / sum(1 / r for r in steady)  # equal pairs per window
    out = {
        "profile": profile,
        "device": device.type,
        "batch_pairs": bs,
        "dataloader_workers": cfg.pretrain.num_workers,
        "data_path_only_pairs_per_s": data_rate,
        "encoder_only_pairs_per_s": encoder_rate,
        "full_loop_pairs_per_s": loop_rate,
        "loop_over_encoder_ratio": loop_rate / encoder_rate,
        "whole_run_incl_startup_pairs_per_s": total * bs / res.wall_s,
        "steps_per_s": loop_rate / bs,
        "profile_run_updates": run_updates,
        # one method, one seed, at the full loop's steady rate (validation not included)
        "projected_run_min": run_updates / (loop_rate / bs) / 60,
    }
    if device.type == "cuda":
        out["peak_cuda_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


# The fast paths against fp32, as fractions of the chance loss ln N (N pairs in a batch):
# channels-last is fp32 in another memory order (reduction order only); bfloat16 keeps 8 bits
# of mantissa (~0.4% per value), so one forward's loss moves by a few parts in a thousand of
# ln N. "trajectory": the mean loss over the last 10 of the trained steps, where rounding
# differences have compounded through the updates.
PRECISION_TOLERANCE = {
    # the control: fp32 again (0 on a CPU; on a GPU, its nondeterministic kernels' floor)
    "fp32_again": {"first_step": 1e-4, "trajectory": 0.02},
    "channels_last": {"first_step": 1e-4, "trajectory": 0.02},
    "bf16": {"first_step": 0.01, "trajectory": 0.05},
}


def bench_precision(tmp: Path, profile: str, steps: int = 30, overrides=(), seed: int = 0) -> dict:
    """The loop's fast paths against plain fp32 training: from the same initial weights, on
    the same ``steps`` batches (drawn again for each path, a pure function of the step;
    MSA's, the method with every pairing and the centroid loss),
    the loop's :func:`~benchmark.pretrain.loop.train_step` with

    - ``fp32``: contiguous tensors, no autocast (the reference), and ``fp32_again``, the
      same once more (the control: how far two identical runs drift apart on this device);
    - ``channels_last``: the loop's memory format on CUDA, fp32;
    - ``bf16``: channels-last under bfloat16 autocast (the loop's CUDA path; on a CPU, CPU
      autocast, another set of kernels).

    For each path, the loss difference from fp32 at the first step (the same weights: the
    forward's precision alone) and of the mean loss over the last 10 steps, as fractions of
    ln N, and whether both lie within :data:`PRECISION_TOLERANCE`. Dropout and drop connect
    draw the same masks in every path (the same seeded generator)."""
    import math

    from benchmark.io import seeded_torch
    from benchmark.pretrain.loop import build_model, loss_fn, step_rng, train_step
    from methods import METHODS
    from tests.fixtures import make_corpus

    if steps < 10:
        raise ValueError("precision needs at least 10 steps (the trajectory's window)")
    cfg = resolve(profile, list(overrides))
    corpus = make_corpus(tmp / "corpus", num_clips=24)
    method = METHODS["msa_multi"]
    bs = cfg.pretrain.batch_size
    device = pick_device()
    compute = loss_fn(method)
    chance = math.log(bs)
    paths = {
        "fp32": (torch.contiguous_format, False),
        "fp32_again": (torch.contiguous_format, False),
        "channels_last": (torch.channels_last, False),
        "bf16": (torch.channels_last, True),
    }
    losses: dict[str, list[float]] = {}
    for name, (memory_format, bf16) in paths.items():
        model = build_model(cfg.encoder, seed, device).to(memory_format=memory_format)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.pretrain.lr)
        with seeded_torch(seed):
            losses[name] = [
                float(
                    train_step(
                        model,
                        opt,
                        compute,
                        b.anchors.to(device),
                        b.positives.to(device),
                        b.silent.to(device),
                        device,
                        bf16=bf16,
                    )[0].detach()
                )
                for b in (method.sample(corpus, bs, step_rng(seed, i)) for i in range(steps))
            ]
        del model, opt
    ref = losses["fp32"]
    return {
        "profile": profile,
        "device": device.type,
        "batch_pairs": bs,
        "steps": steps,
        "chance_loss": chance,
        "fp32_first_loss": ref[0],
        "fp32_last10_loss": float(np.mean(ref[-10:])),
    } | precision_verdict(losses, chance)


def precision_verdict(losses: dict[str, list[float]], chance: float, tolerance=None) -> dict:
    """Each fast path's losses (``losses[name]``, one per step) against ``losses["fp32"]``:
    the first step's and the last 10 steps' mean difference as fractions of ``chance``, and
    whether both lie within ``tolerance`` (default :data:`PRECISION_TOLERANCE`)."""
    ref = losses["fp32"]
    out = {}
    for name, tol in (tolerance or PRECISION_TOLERANCE).items():
        first = abs(losses[name][0] - ref[0]) / chance
        trajectory = float(abs(np.mean(losses[name][-10:]) - np.mean(ref[-10:])) / chance)
        out[name] = {
            "first_step_diff": first,
            "trajectory_diff": trajectory,
            "tolerance_first_step": tol["first_step"],
            "tolerance_trajectory": tol["trajectory"],
            "within": bool(first <= tol["first_step"] and trajectory <= tol["trajectory"]),
        }
    return out


def bench_probe(tmp: Path, profile: str, method: str = "cola") -> dict:
    """The probe stage of one method on the smoke corpus, task by task.

    ``embed_s``: the frozen encoder over every window of the task's clips (cold cache);
    ``embed_cached_s``: the same call again (the cache is read, the encoder is not run);
    ``probes_s``: the five probe seeds from cached embeddings, MLflow logging included;
    ``reencode_epoch_s``: one measured epoch of the original approach, the frozen encoder on
    one random crop per training clip and on every window of the validation clips;
    ``reencode_projected_s``: ``probes_s`` + that epoch times the epochs the five seeds
    actually ran + the test windows once per seed; ``speedup`` = projected / (embed + probes).
    """
    import shutil

    from benchmark.evaluation.embed import embed
    from benchmark.pipeline import probing, stages
    from benchmark.pipeline.context import Context
    from benchmark.pipeline.tracking import KIND_TAG, Tracker
    from benchmark.pretrain.loop import load_encoder
    from tasks import TASKS

    cfg = resolve(
        profile,
        [
            f"paths.runs_dir={tmp / 'runs'}",
            "data.synth_size=smoke",
            "pretrain.steps=4",
            "pretrain.checkpoint_every=4",
            "pretrain.val_every=4",
            "probe.params=default",
        ],
    )
    tracker = Tracker(cfg.tracking_uri, "bench", artifact_root=cfg.runs_dir / "mlartifacts")
    ctx = Context(cfg, tracker, progress=False)
    device = pick_device()
    model = stages.run_pretrain(ctx, method, 0)
    net = load_encoder(cfg.encoder, model.final_path, device)
    f = cfg.frontend
    with torch.inference_mode():  # warm-up, so the first timed epoch is not penalised
        net.features(torch.zeros(8, f.crop_frames, f.n_mels, device=device))
    out: dict = {"profile": profile, "method": method, "device": device.type}
    totals = {"ours_s": 0.0, "reencode_s": 0.0}
    for name, task in TASKS.items():
        dataset = stages.load_task_dataset(ctx, task)
        store = stages.mixture_store(ctx, task.corpus)
        shutil.rmtree(cfg.cache_dir / "embeddings", ignore_errors=True)  # every task cold
        t0 = time.perf_counter()
        embed(cfg, model, task, dataset, store, progress=False)
        embed_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        embed(cfg, model, task, dataset, store, progress=False)
        cached_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for seed in cfg.probe.seeds:
            probing.run_probe(ctx, model, task, seed)
        probes_s = time.perf_counter() - t0
        runs = tracker.runs(
            f"tags.`{KIND_TAG}` = 'probe' and tags.task = '{name}' and tags.method = '{method}'"
        )
        epochs = sum(int(r.data.metrics["epochs_run"]) for r in runs)
        epoch_s, test_s = _reencode_costs(cfg, net, store, dataset, device)
        reencode = probes_s + epochs * epoch_s + len(cfg.probe.seeds) * test_s
        ours = embed_s + probes_s
        totals["ours_s"] += ours
        totals["reencode_s"] += reencode
        out[name] = {
            "embed_s": embed_s,
            "embed_cached_s": cached_s,
            "probes_s": probes_s,
            "probe_seeds": len(cfg.probe.seeds),
            "epochs_run": epochs,
            "reencode_epoch_s": epoch_s,
            "reencode_test_s": test_s,
            "reencode_projected_s": reencode,
            "speedup": reencode / ours,
        }
    out["all_tasks_speedup"] = totals["reencode_s"] / totals["ours_s"]
    return out


def _reencode_costs(cfg, net, store, dataset, device) -> tuple[float, float]:
    """Measured seconds of one epoch of the re-encoding approach (one random crop per training
    clip + every non-overlapping window of the validation clips) and of encoding the test."""
    from benchmark.evaluation.embed import window_starts

    crop = cfg.frontend.crop_frames
    rng = np.random.default_rng(0)

    def rows(split):
        return [store.index(c.clip_id) for c in dataset.split(split) if store.has(c.clip_id)]

    def windows(split):
        return [
            (r, int(s))
            for r in rows(split)
            for s in window_starts(int(store.lengths[r]), crop, crop)
        ]

    crops = [(r, int(rng.integers(0, store.lengths[r] - crop + 1))) for r in rows("train")]
    big = cfg.probe.embed_batch_size
    epoch_s = _encode_time(net, store, crops, crop, cfg.probe.batch_size, device)
    epoch_s += _encode_time(net, store, windows("valid"), crop, big, device)
    return epoch_s, _encode_time(net, store, windows("test"), crop, big, device)


@torch.inference_mode()
def _encode_time(net, store, windows, crop: int, batch: int, device) -> float:
    """Seconds to read and encode ``windows`` [(row, start)] with the frozen encoder."""
    _sync(device)
    t0 = time.perf_counter()
    for i in range(0, len(windows), batch):
        chunk = np.asarray(windows[i : i + batch])
        x = torch.from_numpy(store.crops(chunk[:, 0], chunk[:, 1], crop)).to(device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            net.features(x).float().cpu()
    _sync(device)
    return time.perf_counter() - t0


SECTIONS = {
    "frontend": bench_frontend,
    "store": bench_store,
    "separation": bench_separation,
    "pretrain": bench_pretrain,
    "precision": bench_precision,
    "probe": bench_probe,
}
STEPPED = ("pretrain", "precision")  # the sections that take ``--steps``


def run_section(name: str, profile: str, steps: int | None = None) -> dict:
    """One section in this (fresh) process; adds the process's peak resident memory.

    Forked DataLoader workers share the parent's pages, so their own peak is not added.
    """
    kwargs = {"steps": steps} if steps is not None and name in STEPPED else {}
    with tempfile.TemporaryDirectory() as d:
        result = SECTIONS[name](Path(d), profile, **kwargs)
    return result | {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _print(name: str, result: dict, prefix: str = "") -> None:
    for k, v in result.items():
        if isinstance(v, dict):
            _print(name, v, f"{prefix}{k}.")
            continue
        label = f"{prefix}{k}"
        if isinstance(v, float):  # small figures (differences, tolerances) keep 3 digits
            text = f"{v:12.2f}" if v == 0 or abs(v) >= 0.1 else f"{v:12.3g}"
        else:
            text = f"{v!s:>12}"
        print(f"{name:11s} {label:44s} {text}", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="default", help="profile whose encoder/batch to time")
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    parser.add_argument("--out", default="runs/bench.json")
    parser.add_argument("--steps", type=int, help="steps timed in pretrain, trained in precision")
    parser.add_argument("--section", help=argparse.SUPPRESS)  # internal: one section, JSON out
    args = parser.parse_args(argv)
    if args.section:
        print(json.dumps(run_section(args.section, args.profile, args.steps)))
        return 0
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(names) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown} (known: {', '.join(SECTIONS)})")
    results: dict = {"device": pick_device().type}
    for name in names:
        steps = ["--steps", str(args.steps)] if args.steps is not None else []
        proc = subprocess.run(
            [sys.executable, "-m", "benchmark.perf", "--section", name, "--profile", args.profile]
            + steps,
            stdout=subprocess.PIPE,
            check=True,
            text=True,
        )
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        _print(name, results[name])
    atomic_write_json(Path(args.out), results)
    print(json.dumps({"written": args.out}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
