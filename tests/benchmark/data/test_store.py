"""Feature store: content keys, resume, corruption, bad clips, flat memory."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile as sf
import torch

from benchmark.config import FrontEndConfig
from benchmark.data.features import AudioItem, build_mixtures
from benchmark.data.store import (
    BadClip,
    Entry,
    FeatureStore,
    Job,
    StoreBuildError,
    StoreReadError,
    build,
)

CFG = FrontEndConfig()


def _write_clips(folder, n, seconds=1.5, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(n):
        path = folder / f"c{i:03d}.wav"
        sf.write(path, (0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32), 16000)
        items.append(AudioItem(f"c{i:03d}", path))
    return items


def test_store_round_trip_matches_front_end(tmp_path):
    from benchmark.data.audio import load_audio, log_mel

    items = _write_clips(tmp_path / "audio", 5)
    store = build_mixtures(items, tmp_path / "cache", "toy", CFG, progress=False)
    assert len(store) == 5
    i = store.index("c003")
    expected = log_mel(load_audio(items[3].path), CFG)
    np.testing.assert_allclose(store.frames(i), expected, atol=2e-2)  # float16 storage
    crops = store.crops(np.array([i, i]), np.array([0, 10]), 98)
    assert crops.shape == (2, 98, 64) and crops.dtype == np.float32
    np.testing.assert_array_equal(crops[1], store.frames(i, 10, 98).astype(np.float32))
    with pytest.raises(IndexError):
        store.frames(i, store.lengths[i] - 10, 98)


def _count_built(tmp_path, items, **kw):
    before = {p.name for p in (tmp_path / "cache").rglob("*.npy")}
    build_mixtures(items, tmp_path / "cache", "toy", CFG, progress=False, **kw)
    after = {p.name for p in (tmp_path / "cache").rglob("*.npy")}
    return after - before


def test_rebuild_only_what_changed(tmp_path, monkeypatch):
    import benchmark.data.features as features_mod

    items = _write_clips(tmp_path / "audio", 8)
    monkeypatch.setattr(features_mod, "build", _small_shards(features_mod.build))
    assert len(_count_built(tmp_path, items)) == 4  # 8 clips / 2 per shard
    assert _count_built(tmp_path, items) == set()  # nothing changed: nothing rebuilt
    # touch one file's content: exactly its shard is rebuilt
    sf.write(items[5].path, np.ones(24000, np.float32) * 0.1, 16000)
    assert len(_count_built(tmp_path, items)) == 1
    # a front-end change is a different store: everything rebuilt there
    import dataclasses

    cfg2 = dataclasses.replace(CFG, n_mels=32)
    store = build_mixtures(items, tmp_path / "cache", "toy", cfg2, progress=False)
    assert store.n_mels == 32


def _small_shards(real_build):
    def wrapper(*args, **kwargs):
        kwargs["shard_size"] = 2
        return real_build(*args, **kwargs)

    return wrapper


class _Crash(RuntimeError):
    pass


def _extract_or_crash(payload):
    value, crash_on = payload
    if value == crash_on:
        raise _Crash(f"simulated crash at {value}")
    return [Entry("mix", np.full((100, 4), value, np.float32))]


def test_resume_after_interrupted_build(tmp_path):
    jobs = [Job(f"c{i}", f"k{i}", (i, 5)) for i in range(8)]
    with pytest.raises(_Crash):
        build(tmp_path, jobs, _extract_or_crash, shard_size=2, progress=False)
    done = sorted(p.name for p in (tmp_path / "shards").glob("*.json"))
    assert len(done) == 2  # shards {0,1} and {2,3} finished before the crash
    assert not list((tmp_path / "shards").glob("*.tmp*"))  # no half-written file left
    jobs = [Job(f"c{i}", f"k{i}", (i, -1)) for i in range(8)]  # same keys, no crash now
    report = build(tmp_path, jobs, _extract_or_crash, shard_size=2, progress=False)
    assert report.shards_reused == 2 and report.shards_built == 2
    store = FeatureStore(tmp_path)
    for i in range(8):
        assert float(store.frames(store.index(f"c{i}"))[0, 0]) == i


def _extract_const(payload):
    return [Entry("mix", np.full((50, 4), payload, np.float32))]


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_shard_is_detected_and_rebuilt(tmp_path, damage):
    jobs = [Job(f"c{i}", f"k{i}", i) for i in range(4)]
    build(tmp_path, jobs, _extract_const, shard_size=2, progress=False)
    npy = sorted((tmp_path / "shards").glob("*.npy"))[0]
    data = bytearray(npy.read_bytes())
    if damage == "truncate":
        npy.write_bytes(bytes(data[: len(data) // 2]))
        with pytest.raises(StoreReadError, match="corrupt"):
            FeatureStore(tmp_path)
    else:
        data[-10] ^= 0xFF  # same length, different content: only the checksum sees it
        npy.write_bytes(bytes(data))
        with pytest.raises(StoreReadError, match="corrupt"):
            FeatureStore(tmp_path, verify=True)
    report = build(tmp_path, jobs, _extract_const, shard_size=2, progress=False)
    assert report.shards_built == 1 and report.shards_reused == 1
    store = FeatureStore(tmp_path, verify=True)
    assert float(store.frames(store.index("c1"))[0, 0]) == 1


def test_bad_audio_is_skipped_counted_and_thresholded(tmp_path):
    items = _write_clips(tmp_path / "audio", 6)
    (tmp_path / "audio" / "empty.wav").write_bytes(b"")
    (tmp_path / "audio" / "corrupt.mp3").write_bytes(os.urandom(2000))
    sf.write(tmp_path / "audio" / "short.wav", np.full(8000, 0.1, np.float32), 16000)
    sf.write(
        tmp_path / "audio" / "nan.wav", np.full(20000, np.nan, np.float32), 16000, subtype="FLOAT"
    )
    bad = [
        AudioItem(n, tmp_path / "audio" / f)
        for n, f in [
            ("empty", "empty.wav"),
            ("corrupt", "corrupt.mp3"),
            ("short", "short.wav"),
            ("nan", "nan.wav"),
        ]
    ]
    with pytest.raises(StoreBuildError, match="4 of 10 clips are bad"):
        build_mixtures(items + bad, tmp_path / "cache", "toy", CFG, progress=False)
    store = build_mixtures(
        items + bad, tmp_path / "cache", "toy", CFG, progress=False, max_bad_fraction=0.5
    )
    report = store.report()
    assert report["num_bad"] == 4
    reasons = dict(report["bad"])
    assert "shorter than one crop" in reasons["short"] and "short.wav" in reasons["short"]
    assert "corrupt.mp3" in reasons["corrupt"] and "NaN" in reasons["nan"]
    assert len(store) == 6 and not store.has("corrupt")


def test_extractor_bad_clip_exception_is_a_skip(tmp_path):
    def extract(payload):
        if payload == 2:
            raise BadClip("clip 2: deliberately bad")
        return [Entry("mix", np.zeros((10, 4), np.float32))]

    report = build(
        tmp_path,
        [Job(f"c{i}", f"k{i}", i) for i in range(50)],
        extract,
        progress=False,
        max_bad_fraction=0.05,
    )
    assert report.num_bad == 1 and report.bad == [("c2", "clip 2: deliberately bad")]


_RSS_SCRIPT = textwrap.dedent(
    """
    import resource, sys
    import numpy as np
    from benchmark.data.store import Entry, FeatureStore, Job, build

    def extract(i):
        return [Entry("mix", np.random.default_rng(i).standard_normal((3000, 64)).astype(np.float32))]

    n, root = int(sys.argv[1]), sys.argv[2]
    build(root, [Job(f"c{i:05d}", f"k{i}", i) for i in range(n)], extract, shard_size=16,
          progress=False)
    build_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    store = FeatureStore(root)
    rng = np.random.default_rng(0)
    for _ in range(200):
        rows = rng.integers(0, len(store), 32)
        store.crops(rows, rng.integers(0, 3000 - 98, 32), 98)
    # Pages of the memory maps count in RSS (with kernel read-ahead) but are page cache
    # the kernel can drop; the anonymous part is what a corpus loaded into RAM would grow.
    status = open("/proc/self/status").read()
    anon = int(status.split("RssAnon:")[1].split()[0])
    print(build_peak, anon)
    """
)


def test_memory_stays_flat_as_the_corpus_grows(tmp_path):
    def peak_kib(n):
        out = subprocess.run(
            [sys.executable, "-c", _RSS_SCRIPT, str(n), str(tmp_path / f"s{n}")],
            check=True,
            capture_output=True,
            text=True,
        )
        build_peak, anon = out.stdout.strip().splitlines()[-1].split()
        return int(build_peak), int(anon)

    small, large = peak_kib(32), peak_kib(320)  # 12 MB vs 123 MB of float16 features
    # Allowance: index metadata. A store loaded into RAM would add ~111 MB.
    assert large[0] - small[0] < 20_000, (small, large)  # peak RSS while building
    assert large[1] - small[1] < 20_000, (small, large)  # anonymous RSS after 6,400 crops


def test_an_inline_build_leaves_the_callers_torch_threads(tmp_path):
    """Extraction uses one thread, but built inline (one worker) it must not leave the calling
    process at one thread: later stages' CPU numbers depend on the thread count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = []

        def extract(payload):
            seen.append(torch.get_num_threads())
            return _extract_const(payload)

        build(tmp_path, [Job("c0", "k0", 0)], extract, shard_size=2, progress=False)
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_a_build_in_this_process_leaves_the_callers_torch_threads(tmp_path):
    """Issue #13: a store built in the main process (one shard, or one worker) used to leave
    torch on one thread, so every later step of that process ran on one thread."""
    items = _write_clips(tmp_path / "audio", 2)
    previous = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        build_mixtures(items, tmp_path / "cache", "x", CFG, workers=1, progress=False)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(previous)


def _threads_seen(payload):
    return [Entry("mix", np.full((100, 64), torch.get_num_threads(), dtype=np.float32))]


@pytest.mark.parametrize("workers", [1, 2])
def test_extraction_runs_on_the_threads_asked_for_wherever_it_runs(tmp_path, workers):
    """In a worker or in this process, the extractor sees ``num_threads`` (features depend on
    the thread count, so where a shard was built must not matter)."""
    jobs = [Job(f"c{i}", f"k{i}", i) for i in range(4)]
    build(tmp_path, jobs, _threads_seen, shard_size=2, workers=workers, progress=False)
    store = FeatureStore(tmp_path)
    assert {float(store.frames(i)[0, 0]) for i in range(len(store))} == {1.0}


def test_missing_files_count_as_bad_clips(tmp_path):
    """Issue #13: an MTAT tree with 21,095 of 21,105 listed files missing built with exit
    status 0 and "(0 skipped)": the loaders skip missing files, and the build never saw them."""
    items = _write_clips(tmp_path / "audio", 2)
    missing = [("gone1", "missing audio"), ("gone2", "empty audio")]
    store = build_mixtures(
        items, tmp_path / "a", "x", CFG, max_bad_fraction=0.5, progress=False, missing=missing
    )
    report = store.report()
    assert (report["num_bad"], report["num_missing"], report["num_jobs"]) == (2, 2, 2)
    assert ["gone1", "missing audio"] in report["bad"]
    with pytest.raises(StoreBuildError, match=r"3 of 5 clips are bad \(3 missing"):
        build_mixtures(
            items, tmp_path / "b", "x", CFG, max_bad_fraction=0.5, progress=False,
            missing=[*missing, ("gone3", "missing audio")],
        )  # fmt: skip
