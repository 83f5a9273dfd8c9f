"""The synthetic corpus: real on-disk formats (checked with plain pandas/json/soundfile),
readable by the loaders, deterministic, with exact stems and honest tags."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from benchmark.data.datasets import (
    FMA_GENRES,
    MTAT_SPLIT_OF_FOLDER,
    MTAT_TOP50,
    NSYNTH_FAMILIES,
    NSYNTH_FIELDS,
    load_fma,
    load_mtat,
    load_nsynth,
)
from benchmark.data.synth import GENERATOR_VERSION, SIZES, generate, resolve_size
from benchmark.data.synth.knobs import SILENCE_THRESHOLD

SR = 16000
BLOCK = 4 * SR
STEMS = ("bass", "drums", "vocals", "other")
VOCAL_TAGS = {"vocals", "vocal", "voice", "singing", "male", "female", "man", "woman", "choir",
              "choral", "opera", "male vocal", "female vocal", "male voice", "female voice"}  # fmt: skip
NO_VOCAL_TAGS = {"no vocals", "no vocal", "no voice"}


@pytest.fixture(scope="module")
def smoke(synth_smoke):
    return synth_smoke


@pytest.fixture(scope="module")
def mtat_table(smoke):
    root, _ = smoke
    return pd.read_csv(root / "mtat" / "annotations_final.csv", sep="\t", dtype=str)


@pytest.fixture(scope="module")
def stems(smoke, mtat_table):
    """clip_id -> {stem: int16 array} for every MTAT clip (mix included)."""
    root, _ = smoke
    out = {}
    for clip_id in mtat_table["clip_id"]:
        folder = root / "mtat" / "stems" / clip_id
        out[clip_id] = {s: sf.read(folder / f"{s}.flac", dtype="int16")[0]
                        for s in (*STEMS, "mix")}  # fmt: skip
    return out


# -- manifest and sizes ----------------------------------------------------------------------


def test_manifest_records_version_seed_and_counts(smoke):
    root, manifest = smoke
    assert json.loads((root / "manifest.json").read_text()) == manifest
    assert manifest["generator_version"] == GENERATOR_VERSION
    assert manifest["seed"] == 0 and manifest["sample_rate"] == SR
    size = SIZES["smoke"]
    assert manifest["mtat"]["num_clips"] == size.mtat_clips
    assert sum(manifest["mtat"]["splits"].values()) == size.mtat_clips
    assert manifest["nsynth"]["num_notes"] == size.nsynth_notes
    assert manifest["fma"]["num_tracks"] == size.fma_tracks
    assert not list(root.glob(".synth_in_progress"))


def test_resolve_size():
    assert resolve_size("smoke") == SIZES["smoke"]
    assert resolve_size(64) == resolve_size("64")
    n = resolve_size(64)
    assert (n.mtat_clips, n.nsynth_notes, n.fma_tracks, n.clip_s) == (64, 120, 64, 12.0)
    for bad in ("huge", 0, -3):
        with pytest.raises(ValueError):
            resolve_size(bad)


# -- MTAT format -----------------------------------------------------------------------------


def test_mtat_csv_is_tab_separated_and_fully_quoted(smoke, mtat_table):
    root, _ = smoke
    lines = (root / "mtat" / "annotations_final.csv").read_text().splitlines()
    assert lines[0].startswith('"clip_id"\t')
    assert lines[0].endswith('\t"mp3_path"')
    for line in lines:
        fields = line.split("\t")
        assert len(fields) == len(mtat_table.columns)
        assert all(f.startswith('"') and f.endswith('"') and len(f) >= 2 for f in fields)
    cols = list(mtat_table.columns)
    assert cols[0] == "clip_id" and cols[-1] == "mp3_path"
    tags = cols[1:-1]
    assert set(MTAT_TOP50) <= set(tags) and len(tags) > 50  # plus other MTAT tags
    assert tags != list(MTAT_TOP50)[: len(tags)]  # not in benchmark order: select by name
    assert mtat_table["clip_id"].is_unique and mtat_table["mp3_path"].is_unique
    assert mtat_table[tags].isin(["0", "1"]).all().all()


def test_mtat_audio_paths_folders_and_mp3(smoke, mtat_table):
    root, manifest = smoke
    pattern = re.compile(r"^[0-9a-f]/[a-z0-9_]+(-[a-z0-9_]+)+-\d+-\d+\.mp3$")
    for rel in mtat_table["mp3_path"]:
        assert pattern.match(rel), rel
        assert rel.split("/")[0] in MTAT_SPLIT_OF_FOLDER
    folders = {rel[0] for rel in mtat_table["mp3_path"]}
    assert {"c"} <= folders and folders & set("def") and folders & set("0123456789ab")
    for rel in mtat_table["mp3_path"][:8]:
        info = sf.info(str(root / "mtat" / rel))
        assert info.samplerate == SR and info.channels == 1
        assert abs(info.duration - manifest["mtat"]["clip_duration_s"]) < 0.1


def test_mtat_split_lists_hold_the_tagged_clips(smoke, mtat_table):
    root, manifest = smoke
    tagged = set(mtat_table["mp3_path"][(mtat_table[list(MTAT_TOP50)] == "1").any(axis=1)])
    listed = []
    for split in ("train", "valid", "test"):
        lines = (root / "mtat" / "mtat_split" / f"{split}.txt").read_text().splitlines()
        assert all(MTAT_SPLIT_OF_FOLDER[p.split("/")[0]] == split for p in lines)
        assert len(lines) == manifest["mtat"]["filtered_splits"][split]
        listed += lines
    assert set(listed) == tagged and len(listed) == len(tagged)
    assert len(tagged) < len(mtat_table)  # some clips have no top-50 tag: MTAT != MTAT*


# -- stems ----------------------------------------------------------------------------------


def test_stems_are_16k_pcm16_and_sum_exactly_to_the_mix(smoke, mtat_table, stems):
    root, manifest = smoke
    n = int(manifest["mtat"]["clip_duration_s"] * SR)
    info = sf.info(str(root / "mtat" / "stems" / mtat_table["clip_id"][0] / "vocals.flac"))
    assert (info.samplerate, info.channels, info.subtype) == (SR, 1, "PCM_16")
    for clip_id, s in stems.items():
        total = sum(s[name].astype(np.int32) for name in STEMS)
        assert all(len(s[name]) == n for name in s), clip_id
        np.testing.assert_array_equal(total, s["mix"].astype(np.int32), err_msg=clip_id)
        peak = np.abs(s["mix"]).max() / 32768
        assert 0.25 < peak <= 0.96, clip_id


def test_mp3_is_the_encoded_mix(smoke, mtat_table, stems):
    root, _ = smoke
    for clip_id, rel in list(zip(mtat_table["clip_id"], mtat_table["mp3_path"], strict=True))[:4]:
        decoded, _ = sf.read(str(root / "mtat" / rel), dtype="float32")
        mix = stems[clip_id]["mix"] / 32768
        assert len(decoded) == len(mix)
        assert np.corrcoef(decoded, mix)[0, 1] > 0.9


def test_silent_stem_blocks_are_exactly_zero_and_active_ones_are_audible(stems):
    silent = active = partly = 0
    for s in stems.values():
        for name in STEMS:
            x = s[name] / 32768
            levels = [np.abs(x[b : b + BLOCK]).mean() for b in range(0, len(x), BLOCK)]
            for b, level in zip(range(0, len(x), BLOCK), levels, strict=True):
                if np.any(x[b : b + BLOCK]):
                    assert level > 2 * SILENCE_THRESHOLD
                    active += 1
                else:
                    silent += 1
            partly += 0 < sum(lv > 0 for lv in levels) < len(levels)
    assert silent > 0 and active > 0
    assert partly > 0  # some stems enter or leave within a clip


def test_tags_are_honest(mtat_table, stems):
    tag_sets = {row["clip_id"]: {t for t in mtat_table.columns[1:-1] if row[t] == "1"}
                for _, row in mtat_table.iterrows()}  # fmt: skip
    instrumental = 0
    for clip_id, tags in tag_sets.items():
        s = stems[clip_id]
        if tags & NO_VOCAL_TAGS:
            assert not s["vocals"].any(), clip_id
            assert not tags & VOCAL_TAGS, clip_id
            instrumental += 1
        if tags & VOCAL_TAGS:
            assert s["vocals"].any(), clip_id
        if tags & {"drums", "beat", "beats"}:
            assert s["drums"].any(), clip_id
        if "solo" in tags:
            assert not (s["bass"].any() or s["drums"].any() or s["vocals"].any()), clip_id
    assert instrumental > 0
    assert any(tags & VOCAL_TAGS for tags in tag_sets.values())


# -- NSynth format ---------------------------------------------------------------------------


def test_nsynth_json_and_wav_format(smoke):
    root, manifest = smoke
    instruments = {}
    families = {}
    total = 0
    for split in ("train", "valid", "test"):
        folder = root / "nsynth" / f"nsynth-{split}"
        examples = json.loads((folder / "examples.json").read_text())
        total += len(examples)
        for key, ex in examples.items():
            assert set(ex) == set(NSYNTH_FIELDS)
            assert key == ex["note_str"]
            assert re.fullmatch(r"[a-z_]+_(acoustic|electronic|synthetic)_\d{3}-\d{3}-\d{3}", key)
            assert key == f"{ex['instrument_str']}-{ex['pitch']:03d}-{ex['velocity']:03d}"
            assert NSYNTH_FAMILIES[ex["instrument_family"]] == ex["instrument_family_str"]
            assert ex["instrument_str"].startswith(ex["instrument_family_str"] + "_")
            assert ["acoustic", "electronic", "synthetic"][ex["instrument_source"]] == \
                ex["instrument_source_str"]  # fmt: skip
            assert 21 <= ex["pitch"] <= 108 and ex["velocity"] in (25, 50, 75, 100, 127)
            assert ex["sample_rate"] == SR
            assert len(ex["qualities"]) == 10 and set(ex["qualities"]) <= {0, 1}
            assert len(ex["qualities_str"]) == sum(ex["qualities"])
            instruments.setdefault(split, set()).add(ex["instrument_str"])
            families.setdefault(split, set()).add(ex["instrument_family_str"])
        for key in list(examples)[:5]:
            wave, sr = sf.read(str(folder / "audio" / f"{key}.wav"), dtype="int16")
            info = sf.info(str(folder / "audio" / f"{key}.wav"))
            assert (sr, info.channels, info.subtype, len(wave)) == (SR, 1, "PCM_16", 64000)
            assert np.abs(wave).max() > 1000
    assert total == manifest["nsynth"]["num_notes"]
    assert families["train"] == set(NSYNTH_FAMILIES)
    assert "synth_lead" not in families["test"]
    assert not instruments["train"] & instruments["valid"]
    assert not instruments["train"] & instruments["test"]
    assert not instruments["valid"] & instruments["test"]


# -- FMA format ------------------------------------------------------------------------------


def test_fma_tracks_csv_has_the_two_level_header(smoke):
    root, manifest = smoke
    path = root / "fma" / "fma_metadata" / "tracks.csv"
    first, second, third = path.read_text().splitlines()[:3]
    assert first.startswith(",album,") and ",set,set," in first
    assert "split" in second.split(",") and "genre_top" in second.split(",")
    assert third.startswith("track_id,") and set(third.split(",")[1:]) == {""}
    tracks = pd.read_csv(path, header=[0, 1], index_col=0)
    assert tracks.index.name == "track_id"
    for col in (("set", "subset"), ("set", "split"), ("track", "genre_top"), ("track", "title")):
        assert col in tracks.columns
    small = tracks[tracks[("set", "subset")] == "small"]
    assert len(small) == manifest["fma"]["num_tracks"] < len(tracks)  # other subsets listed
    assert set(small[("set", "split")]) == {"training", "validation", "test"}
    counts = small[("track", "genre_top")].value_counts()
    assert set(counts.index) == set(FMA_GENRES) and counts.nunique() == 1
    for track_id in small.index[:5]:
        tid = f"{track_id:06d}"
        info = sf.info(str(root / "fma" / "fma_small" / tid[:3] / f"{tid}.mp3"))
        assert info.samplerate == SR and info.channels == 1


# -- through the loaders ---------------------------------------------------------------------


def test_loaders_read_the_synthetic_corpus(smoke):
    root, manifest = smoke
    mtat = load_mtat(root / "mtat", filtered=True, split_dir=root / "mtat" / "mtat_split")
    star = load_mtat(root / "mtat", filtered=False)
    assert mtat.counts() == manifest["mtat"]["filtered_splits"]
    assert star.counts() == manifest["mtat"]["splits"]
    assert mtat.skipped == star.skipped == {}
    assert mtat.targets(mtat.split("train")).shape == (len(mtat.split("train")), 50)
    assert mtat.targets().sum(axis=1).min() >= 1
    assert star.targets().sum(axis=1).min() == 0
    nsynth = load_nsynth(root / "nsynth")
    assert nsynth.counts() == manifest["nsynth"]["splits"] and nsynth.skipped == {}
    assert set(nsynth.targets(nsynth.split("train"))) == set(range(11))
    fma = load_fma(root / "fma")
    assert fma.counts() == manifest["fma"]["splits"] and fma.skipped == {}
    genre_counts = [manifest["fma"]["genres"][g] for g in FMA_GENRES]
    assert np.bincount(fma.targets(), minlength=8).tolist() == genre_counts


def test_test_clips_cluster_like_the_real_datasets(smoke):
    """Several clips per MTAT song, notes per NSynth instrument and tracks per FMA artist, and
    no cluster crosses splits: the clustered statistics have clusters to resample."""
    root, _ = smoke
    datasets = {
        "mtat": load_mtat(root / "mtat", filtered=False),
        "nsynth": load_nsynth(root / "nsynth"),
        "fma": load_fma(root / "fma"),
    }
    for name, ds in datasets.items():
        assert all(c.group for c in ds.clips), name
        split_of: dict[str, set] = {}
        for c in ds.clips:
            split_of.setdefault(c.group, set()).add(c.split)
        assert all(len(s) == 1 for s in split_of.values()), f"{name}: a cluster crosses splits"
        sizes = pd.Series([c.group for c in ds.clips]).value_counts()
        assert sizes.max() >= 3 and len(sizes) < 0.75 * len(ds.clips), (name, sizes.describe())


# -- determinism and safety ------------------------------------------------------------------


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_same_seed_gives_identical_files_for_any_worker_count(tmp_path):
    one = generate(tmp_path / "one", size=4, seed=3, workers=1)
    two = generate(tmp_path / "two", size=4, seed=3, workers=2)
    assert one == two
    a, b = _tree_bytes(tmp_path / "one"), _tree_bytes(tmp_path / "two")
    assert a.keys() == b.keys()
    suffixes = {Path(k).suffix for k in a}
    assert {".wav", ".flac", ".mp3", ".csv", ".json", ".txt"} <= suffixes
    for key in a:
        assert a[key] == b[key], key


def test_generate_overwrites_only_its_own_output(tmp_path):
    foreign = tmp_path / "foreign"
    (foreign / "mtat").mkdir(parents=True)
    (foreign / "mtat" / "keep.txt").write_text("not ours")
    with pytest.raises(FileExistsError, match="refusing"):
        generate(foreign, size=1, workers=1)
    assert (foreign / "mtat" / "keep.txt").exists()
    ours = tmp_path / "ours"
    generate(ours, size=1, seed=0, workers=1)
    before = _tree_bytes(ours)
    (ours / "mtat" / "stale.txt").write_text("left over")
    manifest = generate(ours, size=1, seed=1, workers=1)
    assert manifest["seed"] == 1 and not (ours / "mtat" / "stale.txt").exists()
    audio = (".wav", ".mp3")  # (all-zero stems are the same bytes for any seed)
    after = _tree_bytes(ours)
    old = {v for k, v in before.items() if k.endswith(audio)}
    assert not old & {v for k, v in after.items() if k.endswith(audio)}  # another seed: new audio
