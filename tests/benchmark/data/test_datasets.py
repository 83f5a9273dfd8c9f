"""Dataset loaders on the shipped MTAT lists and on small fake trees built here, including
broken input: every metadata problem is a DatasetError naming the file, line or id."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from benchmark.data.datasets import (
    FMA_GENRES,
    MTAT_TOP50,
    NSYNTH_FAMILIES,
    DatasetError,
    load_fma,
    load_mtat,
    load_nsynth,
    mtat_song,
    read_mtat_split_lists,
)

SR = 16000
EXTRA_TAGS = ("jazz", "hard rock", "eastern")  # non-top-50 MTAT columns


def _write_mp3(path: Path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(SR // 4) / SR
    sf.write(path, 0.3 * np.sin(2 * np.pi * (220 + 20 * seed) * t), SR, format="MP3")


def _write_mtat_csv(path: Path, rows: list[dict], sep: str = "\t", columns=None) -> None:
    """rows: {"clip_id", "mp3_path", "tags": set}; written like annotations_final.csv."""
    columns = columns or ["clip_id", *sorted(MTAT_TOP50 + EXTRA_TAGS), "mp3_path"]
    lines = [sep.join(f'"{c}"' for c in columns)]
    for r in rows:
        values = [r["clip_id"] if c == "clip_id" else r["mp3_path"] if c == "mp3_path"
                  else r.get("raw", {}).get(c, "1" if c in r["tags"] else "0") for c in columns]  # fmt: skip
        lines.append(sep.join(f'"{v}"' for v in values))
    path.write_text("\n".join(lines) + "\n")


# -- shipped lists ---------------------------------------------------------------------------


def test_shipped_mtat_lists_have_the_paper_counts():
    lists = read_mtat_split_lists()
    assert {s: len(v) for s, v in lists.items()} == {"train": 15244, "valid": 1529, "test": 4332}
    assert all(p.endswith(".mp3") for paths in lists.values() for p in paths)


# -- fake MTAT tree --------------------------------------------------------------------------


@pytest.fixture()
def mtat_tree(tmp_path):
    """A tiny MTAT: 3 real list paths per split, untagged rows in c/d, a known broken clip,
    a zero-byte file, a missing file and a corrupt MP3. Returns (root, split_dir, rows)."""
    lists = read_mtat_split_lists()
    root = tmp_path / "mtat"
    rows = []
    clip_id = 100
    for split, paths in lists.items():
        for k, rel in enumerate(paths[:3]):
            tags = {MTAT_TOP50[(clip_id + k) % 50], "jazz"}
            rows.append({"clip_id": str(clip_id), "mp3_path": rel, "tags": tags, "split": split})
            _write_mp3(root / rel, clip_id)
            clip_id += 1
    for folder in ("c", "d"):  # clips without a top-50 tag: only in MTAT*
        rel = f"{folder}/fake_artist-untagged-01-song-0-29.mp3"
        rows.append({"clip_id": str(clip_id), "mp3_path": rel, "tags": {"jazz"}})
        _write_mp3(root / rel)
        clip_id += 1
    problems = {  # clip_id -> (path, how its audio is broken)
        "35644": ("0/known_broken-album-01-song-0-29.mp3", "absent"),
        "7": ("1/zero_bytes-album-01-song-0-29.mp3", "empty"),
        "8": ("2/missing-album-01-song-0-29.mp3", "absent"),
        "9": ("3/corrupt-album-01-song-0-29.mp3", "corrupt"),
    }
    for cid, (rel, kind) in problems.items():
        rows.append({"clip_id": cid, "mp3_path": rel, "tags": {"guitar", "rock"}})
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        if kind == "empty":
            (root / rel).write_bytes(b"")
        elif kind == "corrupt":
            (root / rel).write_bytes(np.random.default_rng(0).bytes(2000))
    _write_mtat_csv(root / "annotations_final.csv", rows)
    split_dir = tmp_path / "split"
    split_dir.mkdir()
    for split in ("train", "valid", "test"):
        listed = [r["mp3_path"] for r in rows if r.get("split") == split]
        if split == "train":
            listed += [rel for rel, _ in problems.values()]
        (split_dir / f"{split}.txt").write_text("".join(f"{p}\n" for p in listed))
    return root, split_dir, rows


def test_mtat_filtered_uses_the_lists_and_skips_bad_audio(mtat_tree, caplog):
    root, split_dir, rows = mtat_tree
    with caplog.at_level(logging.WARNING, logger="benchmark.data.datasets"):
        ds = load_mtat(root, filtered=True, split_dir=split_dir)
    assert ds.name == "mtat" and ds.multilabel and ds.vocabulary == MTAT_TOP50
    assert ds.counts() == {"train": 4, "valid": 3, "test": 3}  # 3 + the corrupt MP3
    assert ds.skipped == {"known_broken": 1, "empty_audio": 1, "missing_audio": 1}
    assert "9" in {c.clip_id for c in ds.split("train")}  # decode errors are the store's job
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 3 and any("35644" in w for w in warnings)
    by_id = {c.clip_id: c for c in ds.clips}
    for r in rows:
        if r["clip_id"] in by_id:
            clip = by_id[r["clip_id"]]
            assert clip.path == root / r["mp3_path"] and clip.path.is_absolute()
            expected = [int(t in r["tags"]) for t in MTAT_TOP50]
            assert list(clip.target) == expected
            # the song: the file name without its folder, extension and segment suffix
            song = r["mp3_path"].split("/")[1].rsplit("-", 2)[0]
            assert clip.group == song and clip.cluster == song
    targets = ds.targets(ds.split("valid"))
    assert targets.shape == (3, 50) and targets.dtype == np.float32


def test_mtat_song_strips_folder_extension_and_segment():
    path = "f/american_bach_soloists-j_s__bach_solo_cantatas-01-bwv54__i_aria-30-59.mp3"
    song = "american_bach_soloists-j_s__bach_solo_cantatas-01-bwv54__i_aria"
    assert mtat_song(path) == song
    assert mtat_song(path.replace("30-59", "146-175")) == song
    assert mtat_song("0/a-b-01-c.mp3") == "a-b-01-c"  # no segment suffix: the whole stem


def test_mtat_star_uses_the_folder_rule_and_keeps_untagged_clips(mtat_tree):
    root, _, _ = mtat_tree
    ds = load_mtat(root, filtered=False)
    assert ds.name == "mtat_star"
    assert ds.counts() == {"train": 4, "valid": 4, "test": 4}
    assert ds.skipped == {"known_broken": 1, "empty_audio": 1, "missing_audio": 1}
    untagged = [c for c in ds.clips if "untagged" in c.path.name]
    assert {c.split for c in untagged} == {"valid", "test"}
    assert all(sum(c.target) == 0 for c in untagged)


def test_mtat_list_entry_missing_from_the_csv_names_list_and_line(mtat_tree):
    root, _, _ = mtat_tree
    with pytest.raises(DatasetError, match=r"train\.txt:4: .* is not in annotations_final\.csv"):
        load_mtat(root, filtered=True)  # the shipped lists name clips this tree lacks


def test_mtat_list_with_a_folder_of_another_split(tmp_path):
    for split, line in (("train", "b/x.mp3"), ("valid", "c/y.mp3"), ("test", "d/z.mp3")):
        (tmp_path / f"{split}.txt").write_text(f"{line}\n")
    read_mtat_split_lists(tmp_path)
    (tmp_path / "train.txt").write_text("0/ok.mp3\nc/x.mp3\n")
    with pytest.raises(DatasetError, match=r"train\.txt:2: folder 'c'"):
        read_mtat_split_lists(tmp_path)


def _bad_csv(tmp_path, **change) -> Path:
    root = tmp_path / "bad"
    root.mkdir()
    rows = [{"clip_id": "1", "mp3_path": "0/a.mp3", "tags": {"guitar"}},
            {"clip_id": "2", "mp3_path": "c/b.mp3", "tags": set()}]  # fmt: skip
    rows[1].update(change.pop("row", {}))
    _write_mtat_csv(root / "annotations_final.csv", rows, **change)
    return root


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sep": ","}, r"annotations_final\.csv: .*comma-separated"),
        ({"columns": ["clip_id", *[t for t in MTAT_TOP50 if t != "harp"], "mp3_path"]},
         r"annotations_final\.csv: missing column\(s\): harp"),
        ({"row": {"clip_id": "1"}}, r"duplicate clip_id 1"),
        ({"row": {"raw": {"piano": "2"}}}, r"clip_id 2: tag 'piano' has value '2'"),
        ({"row": {"mp3_path": "../x.mp3"}}, r"clip_id 2: audio path '\.\./x\.mp3' escapes"),
        ({"row": {"mp3_path": "c/../../x.mp3"}}, r"clip_id 2: .* escapes"),
        ({"row": {"mp3_path": "/etc/x.mp3"}}, r"clip_id 2: .* is absolute"),
        ({"row": {"mp3_path": "z/x.mp3"}}, r"clip_id 2: 'z/x\.mp3' is not in an MTAT folder"),
    ],
)  # fmt: skip
def test_mtat_bad_annotations_raise_naming_file_and_clip(tmp_path, change, message):
    root = _bad_csv(tmp_path, **change)
    with pytest.raises(DatasetError, match=message):
        load_mtat(root, filtered=False)


def test_missing_mtat_csv(tmp_path):
    with pytest.raises(DatasetError, match=r"annotations_final\.csv: .*not found"):
        load_mtat(tmp_path, filtered=False)


# -- NSynth ----------------------------------------------------------------------------------


def _note(family: int, number: int, pitch: int, velocity: int = 100) -> dict:
    name = f"{NSYNTH_FAMILIES[family]}_acoustic_{number:03d}"
    return {
        "note_str": f"{name}-{pitch:03d}-{velocity:03d}", "note": number * 1000 + pitch,
        "instrument": number, "instrument_str": name, "instrument_family": family,
        "instrument_family_str": NSYNTH_FAMILIES[family], "instrument_source": 0,
        "instrument_source_str": "acoustic", "pitch": pitch, "velocity": velocity,
        "sample_rate": SR, "qualities": [0] * 10, "qualities_str": [],
    }  # fmt: skip


@pytest.fixture()
def nsynth_tree(tmp_path):
    root = tmp_path / "nsynth"
    notes = {"train": [_note(0, 1, 40), _note(3, 2, 60)], "valid": [_note(8, 3, 70)],
             "test": [_note(10, 4, 60), _note(10, 4, 62), _note(10, 4, 64)]}  # fmt: skip
    for split, examples in notes.items():
        folder = root / f"nsynth-{split}"
        (folder / "audio").mkdir(parents=True)
        (folder / "examples.json").write_text(json.dumps({e["note_str"]: e for e in examples}))
        for e in examples:
            sf.write(folder / "audio" / f"{e['note_str']}.wav", np.zeros(1600, np.int16), SR)
    test_audio = root / "nsynth-test" / "audio"
    (test_audio / "vocal_acoustic_004-062-100.wav").write_bytes(b"")
    (test_audio / "vocal_acoustic_004-064-100.wav").unlink()
    return root


def test_nsynth_loads_families_and_skips_bad_audio(nsynth_tree):
    ds = load_nsynth(nsynth_tree)
    assert ds.name == "nsynth" and not ds.multilabel and ds.vocabulary == NSYNTH_FAMILIES
    assert ds.counts() == {"train": 2, "valid": 1, "test": 1}
    assert ds.skipped == {"empty_audio": 1, "missing_audio": 1}
    assert ds.targets(ds.split("train")).tolist() == [0, 3]
    assert ds.targets().dtype == np.int64
    clip = ds.split("valid")[0]
    assert clip.clip_id == "string_acoustic_003-070-100"
    assert clip.group == "string_acoustic_003"  # notes cluster by instrument
    assert clip.path == nsynth_tree / "nsynth-valid" / "audio" / f"{clip.clip_id}.wav"


def test_nsynth_malformed_json_names_the_file(nsynth_tree):
    path = nsynth_tree / "nsynth-valid" / "examples.json"
    path.write_text(path.read_text()[:-5])
    with pytest.raises(DatasetError, match=r"nsynth-valid/examples\.json: malformed JSON"):
        load_nsynth(nsynth_tree)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"instrument_family": 11}, r"note string_acoustic_003-070-100: unknown instrument_family 11"),
        ({"instrument_family_str": "drum"}, r"note string_acoustic_003-070-100: .*'drum'"),
        ({"instrument_family": "8"}, r"unknown instrument_family '8'"),
    ],
)  # fmt: skip
def test_nsynth_unknown_family_names_the_note(nsynth_tree, change, message):
    path = nsynth_tree / "nsynth-valid" / "examples.json"
    examples = json.loads(path.read_text())
    next(iter(examples.values())).update(change)
    path.write_text(json.dumps(examples))
    with pytest.raises(DatasetError, match=message):
        load_nsynth(nsynth_tree)


def test_nsynth_missing_field_and_unsafe_name(nsynth_tree):
    path = nsynth_tree / "nsynth-train" / "examples.json"
    examples = json.loads(path.read_text())
    first = next(iter(examples.values()))
    del first["pitch"]
    path.write_text(json.dumps(examples))
    with pytest.raises(DatasetError, match=r"bass_acoustic_001-040-100: missing field\(s\) pitch"):
        load_nsynth(nsynth_tree)
    path.write_text(json.dumps({"../evil": {**_note(0, 1, 40), "note_str": "../evil"}}))
    with pytest.raises(DatasetError, match=r"note \.\./evil: note_str is not a plain file name"):
        load_nsynth(nsynth_tree)


# -- FMA -------------------------------------------------------------------------------------


def _write_tracks(path: Path, rows: list[tuple]) -> None:
    """rows: (track_id, subset, split, genre_top) written with FMA's two-level header."""
    columns = pd.MultiIndex.from_tuples([("album", "title"), ("artist", "id"), ("set", "split"),
                                         ("set", "subset"), ("track", "genre_top"),
                                         ("track", "title")])  # fmt: skip
    # artist id: tracks of the same hundred share an artist
    data = [["Album", tid // 100, split, subset, genre, f"Track {tid}"]
            for tid, subset, split, genre in rows]  # fmt: skip
    df = pd.DataFrame(data, index=pd.Index([r[0] for r in rows], name="track_id"), columns=columns)
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path)


@pytest.fixture()
def fma_tree(tmp_path):
    root = tmp_path / "fma"
    rows = [(2, "small", "training", "Hip-Hop"), (5, "small", "validation", "Pop"),
            (10, "small", "test", "Rock"), (140, "small", "training", "Folk"),
            (99134, "small", "training", "Rock"),  # known empty track
            (98565, "small", "training", "Electronic"),  # known short track: kept
            (77, "small", "test", "Experimental"),  # file missing
            (20, "medium", "training", "Jazz"), (21, "large", "training", None)]  # fmt: skip
    _write_tracks(root / "fma_metadata" / "tracks.csv", rows)
    for tid, subset, *_ in rows:
        if tid != 77:
            for folder in ("fma_small", "fma_medium") if subset == "small" else ("fma_medium",):
                _write_mp3(root / folder / f"{tid:06d}"[:3] / f"{tid:06d}.mp3")
    return root


def test_fma_small_filters_subset_and_skips(fma_tree):
    ds = load_fma(fma_tree)
    assert ds.name == "fma" and not ds.multilabel and ds.vocabulary == FMA_GENRES
    assert ds.counts() == {"train": 3, "valid": 1, "test": 1}
    assert ds.skipped == {"known_empty": 1, "missing_audio": 1}
    by_id = {c.clip_id: c for c in ds.clips}
    assert set(by_id) == {"000002", "000005", "000010", "000140", "098565"}
    assert by_id["000140"].path == fma_tree / "fma_small" / "000" / "000140.mp3"
    assert FMA_GENRES[by_id["000002"].target] == "Hip-Hop"
    # tracks cluster by artist (the helper gives tracks of one hundred one artist)
    assert by_id["000002"].group == by_id["000010"].group == "artist-0"
    assert by_id["000140"].group == "artist-1"
    assert ds.targets().dtype == np.int64


def test_fma_medium_includes_small_with_sorted_vocabulary(fma_tree):
    ds = load_fma(fma_tree, subset="medium")
    assert ds.vocabulary == ("Electronic", "Experimental", "Folk", "Hip-Hop", "Jazz", "Pop",
                             "Rock")  # fmt: skip
    assert "000020" in {c.clip_id for c in ds.clips}
    assert all(c.path.parent.parent.name == "fma_medium" for c in ds.clips)


def test_fma_unknown_genre_names_the_track(tmp_path):
    _write_tracks(tmp_path / "fma_metadata" / "tracks.csv",
                  [(2, "small", "training", "Rock"), (3, "small", "test", "Polka")])  # fmt: skip
    with pytest.raises(DatasetError, match=r"FMA track 000003: genre_top 'Polka'"):
        load_fma(tmp_path)


def test_fma_bad_metadata(tmp_path):
    path = tmp_path / "fma_metadata" / "tracks.csv"
    path.parent.mkdir(parents=True)
    path.write_text("track_id,genre\n2,Rock\n")
    with pytest.raises(DatasetError, match=r"tracks\.csv"):
        load_fma(tmp_path)
    _write_tracks(path, [(2, "small", "train", "Rock")])
    with pytest.raises(DatasetError, match=r"FMA track 000002: unknown split 'train'"):
        load_fma(tmp_path)
    with pytest.raises(DatasetError, match="unknown FMA subset 'large'"):
        load_fma(tmp_path, subset="large")


def test_dataset_split_names_are_checked(fma_tree):
    ds = load_fma(fma_tree)
    with pytest.raises(ValueError, match="unknown split 'training'"):
        ds.split("training")
