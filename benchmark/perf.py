"""``make bench``: speed and memory of the pipeline's hot paths on this machine.

Prints one line per measurement (and writes ``runs/bench.json``):
- front end: seconds of audio per CPU-second for decode + log-mel and for log-mel alone
  (target >= 500x real time per core);
- feature store: random 98-frame crops per second (target >= 20,000/s);
- pre-training: pairs/s of the full loop (DataLoader, pairing, loss, Adam) versus the
  encoder's own forward+backward on tensors already in memory (target ratio >= 0.9), and
  peak memory;
- separation: real-time factor of random_mask and of an Open-Unmix model (umxhq-sized);
- probes: time to embed, five probe seeds, and the speed-up versus re-running the encoder
  every epoch (the original code's approach).
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from benchmark.config import FrontEndConfig, resolve
from benchmark.io import atomic_write_json


def _cpu_time():
    return time.process_time()


def bench_frontend(tmp: Path, seconds: float = 30.0, clips: int = 8) -> dict:
    from benchmark.audio import load_audio, log_mel

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
    torch.set_num_threads(2)
    return {
        "mel_x_realtime_per_core": mel_only,
        "decode_mp3_plus_mel_x_realtime_per_core": decode_mel,
    }


def bench_store(tmp: Path, num_clips: int = 256) -> dict:
    from benchmark.store import FeatureStore, Job, build

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
    from benchmark.store import Entry

    return [Entry("mix", np.random.default_rng(i).standard_normal((2900, 64)).astype(np.float32))]


def bench_pretrain(tmp: Path, profile: str, steps: int = 12) -> dict:
    from benchmark.train import build_model, pretrain, pretrain_key
    from methods import METHODS
    from tests.fixtures import make_corpus

    cfg = resolve(
        profile,
        [
            f"pretrain.steps={steps}",
            f"pretrain.checkpoint_every={steps}",
            f"pretrain.val_every={steps * 10}",
        ],
    )
    corpus = make_corpus(tmp / "corpus", num_clips=24)
    method = METHODS["msa_multi"]
    bs = cfg.pretrain.batch_size
    # Encoder alone: forward + backward + Adam on one batch already in memory.
    device = torch.device("cpu")
    model = build_model(cfg.encoder, 0, device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = method.sample(corpus, bs, np.random.default_rng(0))
    from benchmark.train import loss_fn

    compute = loss_fn(method)
    for i in range(steps + 2):
        if i == 2:
            t0 = time.perf_counter()
        za, zp = model(batch.anchors, batch.positives)
        loss, _ = compute(za, zp, batch.silent, model.similarity)
        opt.zero_grad()
        loss.backward()
        opt.step()
    encoder_rate = steps * bs / (time.perf_counter() - t0)
    res = pretrain(
        cfg,
        method,
        corpus,
        None,
        tmp / "run",
        pretrain_key(cfg, method, 0, "bench"),
        0,
        progress=False,
    )
    loop_rate = steps * bs / res.wall_s
    return {
        "profile": profile,
        "batch_pairs": bs,
        "encoder_only_pairs_per_s": encoder_rate,
        "full_loop_pairs_per_s": loop_rate,
        "loop_over_encoder_ratio": loop_rate / encoder_rate,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def bench_separation(seconds: float = 12.0) -> dict:
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
    import torchaudio

    t0 = time.perf_counter()
    with torch.inference_mode():
        umx(torchaudio.functional.resample(x, 16000, 44100)[None])
    return {
        "random_mask_x_realtime": rm,
        "umxhq_sized_x_realtime": seconds / (time.perf_counter() - t0),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="default", help="profile whose encoder/batch to time")
    parser.add_argument("--out", default="runs/bench.json")
    args = parser.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for name, fn in (
            ("frontend", lambda: bench_frontend(tmp)),
            ("store", lambda: bench_store(tmp)),
            ("separation", bench_separation),
            ("pretrain", lambda: bench_pretrain(tmp, args.profile)),
        ):
            results[name] = fn()
            for k, v in results[name].items():
                print(
                    f"{name:11s} {k:42s} {v:12.1f}"
                    if isinstance(v, float)
                    else f"{name:11s} {k:42s} {v:>12}"
                )
    results["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    atomic_write_json(Path(args.out), results)
    print(json.dumps({"written": args.out}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
