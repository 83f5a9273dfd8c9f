"""Tests of benchmark.separation on a tiny synthetic multitrack corpus written to tmp_path."""

from __future__ import annotations

import json
import os
import urllib.error
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from openunmix.model import OpenUnmix

from benchmark.config import SeparationConfig
from benchmark.separation import (
    SEPARATORS,
    SOURCES,
    SeparationError,
    Separator,
    build_separator,
    evaluate_separator,
    load_local_umx,
    random_soft_masks,
    score_separator,
    si_sdr,
    train_separator,
)
from benchmark.separation.base import load_stem

SR = 16000
CPU = torch.device("cpu")


# -- a tiny multitrack corpus -------------------------------------------------------------


def _stems(rng: np.random.Generator, duration_s: float, vocals: bool) -> dict[str, np.ndarray]:
    """Sine bass, noise-burst drums, a harmonic 'voice' with vibrato, square-wave chords."""
    n = int(duration_s * SR)
    t = np.arange(n) / SR
    bass = np.zeros(n)
    for start in range(0, n, SR // 2):
        tt = t[start : start + SR // 2] - t[start]
        bass[start : start + SR // 2] = np.sin(2 * np.pi * rng.uniform(45, 110) * tt) * np.exp(
            -2 * tt
        )
    drums = np.zeros(n)
    for start in range(0, n, SR // 4):
        m = min(n - start, SR // 8)
        burst = np.clip(rng.standard_normal(m), -2.5, 2.5) * np.exp(-40 * np.arange(m) / SR)
        drums[start : start + m] += 0.4 * burst
    voice = np.zeros(n)
    if vocals:
        f0 = rng.uniform(200, 400) * (1 + 0.02 * np.sin(2 * np.pi * 5 * t))
        phase = 2 * np.pi * np.cumsum(f0) / SR
        voice = sum(0.5 / k * np.sin(k * phase) for k in range(1, 6))
    other = np.zeros(n)
    for start in range(0, n, SR):
        tt = t[start : start + SR]
        root = rng.uniform(250, 500)
        other[start : start + SR] = sum(
            0.2 * np.sign(np.sin(2 * np.pi * root * r * tt)) for r in (1, 1.25, 1.5)
        )
    return {"bass": bass, "drums": drums, "vocals": voice, "other": other}


def write_corpus(root: Path, num_clips: int, duration_s: float, silent_vocals=(), seed=0):
    """Write ``<root>/<clip>/{bass,drums,vocals,other,mix}.flac``; mix = exact sum of the stems.

    Stems are quantised to 16 bits first, so the 16-bit mix is their exact sum.
    """
    rng = np.random.default_rng(seed)
    ids = []
    for i in range(num_clips):
        clip_id = f"clip{i:03d}"
        stems = _stems(rng, duration_s, vocals=i not in silent_vocals)
        peak = np.abs(sum(stems.values())).max() / 0.9
        ints = {k: np.round(v / peak * 32767).astype(np.int16) for k, v in stems.items()}
        mix = sum(v.astype(np.int32) for v in ints.values())
        assert np.abs(mix).max() < 32767
        folder = root / clip_id
        folder.mkdir(parents=True)
        for name, v in ints.items():
            sf.write(folder / f"{name}.flac", v, SR, subtype="PCM_16")
        sf.write(folder / "mix.flac", mix.astype(np.int16), SR, subtype="PCM_16")
        ids.append(clip_id)
    return ids


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("stems")
    ids = write_corpus(root, num_clips=6, duration_s=3.0, silent_vocals=(5,))
    return root, ids


def _save_untrained_model(
    model_dir: Path, nfft=512, nhop=128, sample_rate=SR, nb_channels=1, hidden=16
) -> Path:
    """An untrained OpenUnmix per source in the package's local-model layout."""
    model_dir.mkdir(parents=True, exist_ok=True)
    conf = {"nfft": nfft, "nhop": nhop, "sample_rate": sample_rate, "nb_channels": nb_channels}
    (model_dir / "separator.json").write_text(json.dumps(conf))
    torch.manual_seed(0)
    for target in SOURCES:
        model = OpenUnmix(nb_bins=nfft // 2 + 1, nb_channels=nb_channels, hidden_size=hidden)
        model.eval()
        torch.save(model.state_dict(), model_dir / f"{target}.pth")
        args = {"nfft": nfft, "nhop": nhop, "nb_channels": nb_channels, "hidden_size": hidden}
        (model_dir / f"{target}.json").write_text(json.dumps({"args": args}))
    return model_dir


# -- si_sdr --------------------------------------------------------------------------------


def test_si_sdr_hand_computed():
    rng = np.random.default_rng(0)
    ref = np.sin(2 * np.pi * 440 * np.arange(SR) / SR)
    # a scaled copy is a perfect estimate: only eps keeps the value finite
    assert si_sdr(ref, 2.0 * ref) > 80.0
    # orthogonal noise with 1/100 of the reference's energy -> exactly 20 dB, at any scale
    noise = rng.standard_normal(SR)
    noise -= (noise @ ref) / (ref @ ref) * ref
    noise *= np.sqrt((ref @ ref) / 100.0 / (noise @ noise))
    assert si_sdr(ref, ref + noise) == pytest.approx(20.0, abs=1e-6)
    assert si_sdr(ref, -3.0 * (ref + noise)) == pytest.approx(20.0, abs=1e-6)
    assert si_sdr(ref, noise) < -60.0  # orthogonal: nothing of the reference
    assert si_sdr(ref, np.zeros_like(ref)) == float("-inf")  # not the 0 dB of eps/eps


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_si_sdr_matches_cosine_formula(seed):
    # independent formula: SI-SDR = 10 log10(c^2 / (1 - c^2)), c = cosine similarity
    rng = np.random.default_rng(seed)
    ref = rng.standard_normal(1000)
    est = ref + rng.uniform(0.1, 3.0) * rng.standard_normal(1000)
    c = (ref @ est) / np.linalg.norm(ref) / np.linalg.norm(est)
    assert si_sdr(ref, est) == pytest.approx(10 * np.log10(c**2 / (1 - c**2)), abs=1e-6)


def test_si_sdr_rejects_silent_reference_and_shape_mismatch():
    with pytest.raises(ValueError, match="all-zero"):
        si_sdr(np.zeros(10), np.ones(10))
    with pytest.raises(ValueError, match="differ"):
        si_sdr(np.ones(10), np.ones(11))


# -- registry ------------------------------------------------------------------------------


def test_registry_keys_are_separator_names(corpus):
    root, _ = corpus
    assert set(SEPARATORS) == {"umx", "oracle", "random_mask"}
    for name in ("oracle", "random_mask"):
        assert build_separator(SeparationConfig(separator=name), stems_root=root).name == name
    with pytest.raises(SeparationError, match="unknown separator 'nope'"):
        build_separator(SeparationConfig(separator="nope"))


# -- oracle --------------------------------------------------------------------------------


def test_oracle_returns_true_stems_summing_to_mix(corpus):
    root, ids = corpus
    sep = build_separator(SeparationConfig(separator="oracle"), stems_root=root)
    mix = load_stem(root, ids[0], "mix")
    sources = sep.separate(mix, ids[0])
    assert set(sources) == set(SOURCES)
    for s in SOURCES:
        assert sources[s].dtype == np.float32 and sources[s].shape == mix.shape
        np.testing.assert_array_equal(sources[s], load_stem(root, ids[0], s))
    np.testing.assert_array_equal(sum(sources[s] for s in SOURCES), mix)
    assert [set(o) for o in sep.separate_batch([mix, mix], [ids[0], ids[0]])] == [set(SOURCES)] * 2


def test_oracle_errors_name_the_problem(corpus, tmp_path):
    root, ids = corpus
    with pytest.raises(SeparationError, match="stems_root"):
        build_separator(SeparationConfig(separator="oracle"))
    sep = build_separator(SeparationConfig(separator="oracle"), stems_root=root)
    with pytest.raises(SeparationError, match=r"nope.*drums\.flac|nope.*bass\.flac"):
        sep.separate(np.zeros(SR, np.float32), "nope")
    with pytest.raises(SeparationError, match="samples"):
        sep.separate(np.zeros(100, np.float32), ids[0])


# -- random masks --------------------------------------------------------------------------


def test_random_masks_are_positive_smooth_and_sum_to_one():
    masks = random_soft_masks(513, 200, seed=3, time_smooth_frames=25, freq_smooth_bins=16)
    assert masks.shape == (4, 513, 200)
    assert float(masks.min()) > 0.0
    torch.testing.assert_close(masks.sum(0), torch.ones(513, 200), atol=1e-6, rtol=0)

    # smooth: neighbouring bins/frames differ far less than bins/frames 4 nodes apart
    def mean_step(dim, lag):
        return float(
            (
                masks.narrow(dim, lag, masks.shape[dim] - lag)
                - masks.narrow(dim, 0, masks.shape[dim] - lag)
            )
            .abs()
            .mean()
        )

    assert mean_step(1, 1) < 0.2 * mean_step(1, 64)  # white-noise masks: ratio ~1
    assert mean_step(2, 1) < 0.2 * mean_step(2, 100)
    assert float(masks.std()) > 0.1  # yet far from uniform 1/4 masks
    with pytest.raises(ValueError):
        random_soft_masks(10, 10, seed=0, time_smooth_frames=0, freq_smooth_bins=4)


def test_random_mask_reconstructs_mixture_and_is_deterministic(corpus):
    root, ids = corpus
    cfg = SeparationConfig(separator="random_mask")
    sep = build_separator(cfg)
    mix = load_stem(root, ids[0], "mix")
    first = sep.separate(mix, ids[0])
    total = sum(first[s] for s in SOURCES)
    assert all(first[s].dtype == np.float32 and first[s].shape == mix.shape for s in SOURCES)
    assert np.abs(total - mix).max() < 1e-4 * np.abs(mix).max()
    again = build_separator(cfg).separate(mix.copy(), ids[0])
    for s in SOURCES:
        np.testing.assert_array_equal(first[s], again[s])
    other_clip = sep.separate(mix, ids[1])
    other_seed = build_separator(replace(cfg, mask_seed=1)).separate(mix, ids[0])
    assert not np.allclose(first["bass"], other_clip["bass"])
    assert not np.allclose(first["bass"], other_seed["bass"])
    short = sep.separate(mix[:100], "short")  # shorter than one FFT frame
    assert np.abs(sum(short.values()) - mix[:100]).max() < 1e-4 * np.abs(mix[:100]).max()


def test_separators_reject_bad_waveforms():
    sep = build_separator(SeparationConfig(separator="random_mask"))
    with pytest.raises(SeparationError, match="clip x: empty"):
        sep.separate(np.zeros(0, np.float32), "x")
    with pytest.raises(SeparationError, match="mono"):
        sep.separate(np.zeros((2, 10), np.float32), "x")
    with pytest.raises(SeparationError, match="NaN"):
        sep.separate(np.full(10, np.nan, np.float32), "x")


# -- evaluation ----------------------------------------------------------------------------


def test_evaluation_scores_oracle_high_and_skips_silent_references(corpus):
    root, ids = corpus
    oracle = build_separator(SeparationConfig(separator="oracle"), stems_root=root)
    scores = score_separator(oracle, root, ids, batch_size=4)
    assert scores.skipped == {"bass": 0, "drums": 0, "vocals": 1, "other": 0}
    assert {s: len(v) for s, v in scores.scores.items()} == {
        "bass": 6,
        "drums": 6,
        "vocals": 5,
        "other": 6,
    }
    assert all(v > 60 for v in evaluate_separator(oracle, root, ids).values())
    masks = evaluate_separator(
        build_separator(SeparationConfig(separator="random_mask")), root, ids
    )
    assert all(v < 5 for v in masks.values())


class _SilentSeparator(Separator):
    name = "silent"

    def separate(self, wave, clip_id):
        return {s: np.zeros_like(wave) for s in SOURCES}


def test_silent_estimates_score_minus_infinity_and_are_counted(corpus):
    root, ids = corpus
    summary = score_separator(_SilentSeparator(), root, ids[:2]).to_dict()
    assert summary["mean_si_sdr_db"] == dict.fromkeys(SOURCES)
    assert summary["num_silent_estimates"] == dict.fromkeys(SOURCES, 2)
    json.dumps(summary, allow_nan=False)  # strict JSON


# -- Open-Unmix: local model directories and safe loading ----------------------------------


def test_local_umx_model_dir_separates(corpus, tmp_path):
    root, ids = corpus
    model_dir = _save_untrained_model(tmp_path / "model")
    models = load_local_umx(model_dir, device=CPU)
    assert set(models) == set(SOURCES) and not models["bass"].training
    cfg = SeparationConfig(separator="umx", umx_model=str(model_dir), batch_size=2)
    sep = build_separator(cfg, device=CPU)
    assert sep.name == "umx" and sep.model_rate == SR
    mixes = [load_stem(root, c, "mix") for c in ids[:3]]
    mixes[1] = mixes[1][: SR + 123]  # a shorter clip in the batch: padded, then trimmed
    batch = sep.separate_batch(mixes, ids[:3])
    for mix, out in zip(mixes, batch, strict=True):
        assert set(out) == set(SOURCES)
        for s in SOURCES:
            assert out[s].dtype == np.float32 and out[s].shape == mix.shape
            assert np.all(np.isfinite(out[s]))
    single = build_separator(cfg, device=CPU).separate(mixes[0], ids[0])
    for s in SOURCES:  # deterministic, and batching equal-length clips changes nothing
        np.testing.assert_allclose(single[s], batch[0][s], atol=1e-5)
    wiener = build_separator(replace(cfg, wiener=True), device=CPU).separate(mixes[2], ids[2])
    assert all(wiener[s].shape == mixes[2].shape for s in SOURCES)


def test_local_umx_respects_saved_sample_rate_and_channels(tmp_path):
    model_dir = _save_untrained_model(
        tmp_path / "model44", nfft=1024, nhop=256, sample_rate=44100, nb_channels=2
    )
    sep = build_separator(SeparationConfig(umx_model=str(model_dir)), device=CPU)
    assert (sep.model_rate, sep.nb_channels) == (44100, 2)
    wave = np.random.default_rng(0).standard_normal(SR // 2).astype(np.float32) * 0.1
    out = sep.separate(wave, "x")
    assert all(out[s].shape == wave.shape and out[s].dtype == np.float32 for s in SOURCES)


class _Payload:
    """A custom class: unpickling it must not even be attempted."""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))

    def __init__(self, marker: Path):
        self.marker = marker


class _Custom:
    pass


@pytest.mark.parametrize("kind", ["os_system", "custom_class", "not_tensors"])
def test_checkpoint_with_code_is_refused(tmp_path, kind):
    model_dir = _save_untrained_model(tmp_path / "model")
    marker = tmp_path / "executed"
    state = torch.load(model_dir / "drums.pth", weights_only=True)
    if kind == "os_system":
        state["fc1.weight"] = _Payload(marker)
    elif kind == "custom_class":
        state["extra"] = _Custom()
    else:
        state["extra"] = "a string"
    torch.save(state, model_dir / "drums.pth")
    with pytest.raises(SeparationError, match=r"drums\.pth.*(refused|not a state dict)"):
        load_local_umx(model_dir, device=CPU)
    with pytest.raises(SeparationError, match=r"drums\.pth"):
        build_separator(SeparationConfig(umx_model=str(model_dir)), device=CPU)
    assert not marker.exists()


def test_malformed_model_dirs_fail_clearly(tmp_path):
    model_dir = _save_untrained_model(tmp_path / "model")
    (model_dir / "vocals.json").write_text(json.dumps({"args": {"nfft": 512}}))
    with pytest.raises(SeparationError, match=r"vocals\.json.*hidden_size"):
        load_local_umx(model_dir, device=CPU)
    model_dir = _save_untrained_model(tmp_path / "model2")
    args = {"nfft": 512, "nhop": 128, "nb_channels": 1, "hidden_size": 32}
    (model_dir / "other.json").write_text(json.dumps({"args": args}))
    with pytest.raises(SeparationError, match=r"other\.pth do not fit"):
        load_local_umx(model_dir, device=CPU)
    (model_dir / "separator.json").unlink()
    with pytest.raises(SeparationError, match=r"separator\.json"):
        build_separator(SeparationConfig(umx_model=str(model_dir)), device=CPU)


# -- Open-Unmix: pretrained names through the package's hub loader --------------------------


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty torch hub cache in tmp_path whose downloads are answered by ``responder``."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    calls = []

    def install(responder):
        def fake_download(url, dst, hash_prefix=None, progress=True):
            calls.append((url, hash_prefix))
            responder(url, Path(dst))

        monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)

    return install, calls, tmp_path / "hub" / "checkpoints"


def test_pretrained_offline_fails_with_advice(offline_hub):
    install, calls, _ = offline_hub

    def no_network(url, dst):
        raise urllib.error.URLError("no network")

    install(no_network)
    with pytest.raises(SeparationError, match=r"umxhq.*could not be downloaded.*train-separator"):
        build_separator(SeparationConfig(umx_model="umxhq"), device=CPU)
    assert calls and calls[0][0].startswith("https://") and calls[0][1]  # hash is checked
    with pytest.raises(SeparationError, match="unknown Open-Unmix model 'nope'"):
        build_separator(SeparationConfig(umx_model="nope"), device=CPU)


def test_pretrained_cached_file_with_code_is_refused(offline_hub, tmp_path):
    install, calls, cache = offline_hub
    marker = tmp_path / "executed"

    def evil(url, dst):
        torch.save({"fc1.weight": _Payload(marker)}, dst)

    install(evil)
    with pytest.raises(SeparationError, match="refusing the cached weights"):
        build_separator(SeparationConfig(umx_model="umxhq"), device=CPU)
    assert not marker.exists()
    assert torch.hub.load_state_dict_from_url.__name__ == "load_state_dict_from_url"


@pytest.mark.slow
def test_pretrained_umxhq_runs_with_downloaded_weights(offline_hub):
    """The whole umxhq path with stand-in weights (an untrained umxhq-sized network)."""
    install, calls, _ = offline_hub
    fresh = OpenUnmix(nb_bins=2049, nb_channels=2, hidden_size=512, max_bin=1487).state_dict()

    def download(url, dst):
        torch.save(fresh, dst)

    install(download)
    sep = build_separator(SeparationConfig(umx_model="umxhq"), device=CPU)
    assert (sep.model_rate, sep.nb_channels, len(calls)) == (44100, 2, 4)
    wave = np.random.default_rng(0).standard_normal(SR).astype(np.float32) * 0.1
    out = sep.separate(wave, "x")
    assert all(out[s].shape == wave.shape and np.all(np.isfinite(out[s])) for s in SOURCES)


# -- training ------------------------------------------------------------------------------

TINY = SeparationConfig(
    train_steps=3, train_batch_size=2, train_seq_dur_s=0.5, train_hidden_size=16, batch_size=2
)


def test_train_separator_writes_a_loadable_model_dir(corpus, tmp_path):
    root, ids = corpus
    out = tmp_path / "sep"
    (out).mkdir()
    (out / "stale.txt").write_text("replaced atomically")
    result = train_separator(root, ids[:4], ids[4:], out, TINY, device=CPU, progress=False)
    assert result == out
    names = {p.name for p in out.iterdir()}
    assert names == {"separator.json", "quality.json", "training_time.json"} | {
        f"{s}.{ext}" for s in SOURCES for ext in ("json", "pth")
    }
    assert [p.name for p in tmp_path.iterdir()] == ["sep"]  # no temporary leftovers
    meta = json.loads((out / "bass.json").read_text())
    assert meta["args"]["sample_rate"] == SR and meta["args"]["hidden_size"] == 16
    assert json.loads((out / "separator.json").read_text())["sample_rate"] == SR
    quality = json.loads((out / "quality.json").read_text())
    for key in ("umx", "random_mask"):
        assert set(quality[key]["mean_si_sdr_db"]) == set(SOURCES)
        assert quality[key]["num_skipped_silent"]["vocals"] == 1  # clip005 has no vocals
    sep = build_separator(replace(TINY, umx_model=str(out)), device=CPU)
    assert sep.model_rate == SR
    mix = load_stem(root, ids[4], "mix")
    assert all(v.shape == mix.shape for v in sep.separate(mix, ids[4]).values())
    # deterministic on the CPU: a second run gives identical weights
    again = train_separator(root, ids[:4], [], tmp_path / "again", TINY, device=CPU, progress=False)
    for s in SOURCES:
        first = torch.load(out / f"{s}.pth", weights_only=True)
        second = torch.load(again / f"{s}.pth", weights_only=True)
        assert all(torch.equal(first[k], second[k]) for k in first)


def test_train_separator_reports_missing_stems(corpus, tmp_path):
    root, ids = corpus
    with pytest.raises(SeparationError, match="missing"):
        train_separator(root, ["missing"], [], tmp_path / "x", TINY, device=CPU, progress=False)
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_trained_separator_beats_random_masks(tmp_path):
    root = tmp_path / "stems"
    ids = write_corpus(root, num_clips=10, duration_s=4.0, seed=1)
    cfg = replace(SeparationConfig(), train_steps=150, train_batch_size=8, train_hidden_size=64)
    out = train_separator(root, ids[:8], ids[8:], tmp_path / "sep", cfg, device=CPU, progress=False)
    quality = json.loads((out / "quality.json").read_text())
    for s in SOURCES:
        assert quality["umx"]["mean_si_sdr_db"][s] > quality["random_mask"]["mean_si_sdr_db"][s]


def test_training_pins_threads_and_leaves_the_callers_state(corpus, tmp_path):
    """Issue #13: the separator's weights depend on the thread count, which the caller's
    earlier steps used to change; training now runs on ``num_threads`` and leaves the caller's
    thread count and random generators as they were."""
    root, ids = corpus
    previous = torch.get_num_threads()
    weights = []
    try:
        for threads in (1, 3):
            torch.set_num_threads(threads)
            torch.manual_seed(threads)
            rng_before = torch.get_rng_state()
            out = train_separator(
                root, ids[:4], [], tmp_path / f"t{threads}", TINY, device=CPU, progress=False,
                num_threads=2,
            )  # fmt: skip
            assert torch.get_num_threads() == threads
            assert torch.equal(torch.get_rng_state(), rng_before)
            weights.append({s: torch.load(out / f"{s}.pth", weights_only=True) for s in SOURCES})
    finally:
        torch.set_num_threads(previous)
    for s in SOURCES:
        assert all(torch.equal(weights[0][s][k], weights[1][s][k]) for k in weights[0][s])


def test_model_identity_is_weights_and_hyper_parameters_only(corpus, tmp_path):
    from benchmark.separation import model_identity

    root, ids = corpus
    out = train_separator(
        root, ids[:4], ids[4:], tmp_path / "sep", TINY, device=CPU, progress=False
    )
    identity = model_identity(out)
    assert (out / "training_time.json").is_file()
    assert all("train_time_s" not in json.loads(p.read_text()) for p in out.glob("*.json")
               if p.name != "training_time.json")  # fmt: skip
    (out / "quality.json").write_text("{}")  # scores are not identity
    (out / "training_time.json").write_text('{"train_time_s": 1.0}')
    meta = json.loads((out / "bass.json").read_text())
    (out / "bass.json").write_text(json.dumps({**meta, "train_time_s": 99.0}))  # older models
    assert model_identity(out) == identity
    state = torch.load(out / "bass.pth", weights_only=True)
    torch.save(
        {k: v + 1 if v.is_floating_point() else v for k, v in state.items()}, out / "bass.pth"
    )
    assert model_identity(out) != identity
    (out / "drums.pth").unlink()
    with pytest.raises(SeparationError, match="drums"):
        model_identity(out)
