"""Your own audio: folder and manifest corpora (content-hash splits, duplicates, formats) and
labelled task CSVs (splits from the CSV or by group), with every mistake named by file and line."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from benchmark.data.owndata import (
    content_digest,
    group_splits,
    hash_split,
    load_audio_folder,
    load_labelled_csv,
    load_manifest,
)
from benchmark.errors import DatasetError

SR = 16000


def _write(path: Path, seed: int, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(SR // 2) / SR
    sf.write(path, 0.3 * np.sin(2 * np.pi * (200 + 37 * seed) * t), SR, format=fmt)


@pytest.fixture()
def folder(tmp_path):
    """Forty files in four formats in nested folders, one copy, one link, a text file."""
    root = tmp_path / "music"
    formats = [("wav", "WAV"), ("flac", "FLAC"), ("ogg", "OGG"), ("mp3", "MP3")]
    for i in range(40):
        ext, fmt = formats[i % 4]
        _write(root / f"album{i % 3}" / "disc" / f"track{i:02d}.{ext}", i, fmt)
    (root / "album0" / "notes.txt").write_text("not audio")
    (root / "copy.wav").write_bytes((root / "album0" / "disc" / "track00.wav").read_bytes())
    os.symlink(root / "album1" / "disc" / "track01.flac", root / "link.flac")
    return root


def test_folder_corpus_reads_every_format_recursively_and_keeps_one_of_each_content(folder):
    ds = load_audio_folder(folder, valid_fraction=0.25)
    ids = {c.clip_id for c in ds.clips}
    assert len(ids) == 40 and "album0/disc/track00.wav" in ids and "album3" not in ids
    assert {Path(i).suffix for i in ids} == {".wav", ".flac", ".ogg", ".mp3"}
    assert ds.skipped == {"same_content": 2}  # the copy and the link: one split, kept once
    counts = ds.counts()
    assert counts["test"] == 0 and 0 < counts["valid"] < counts["train"]
    for clip in ds.clips:
        assert clip.path == folder / clip.clip_id


def test_folder_split_is_a_pure_function_of_content(folder, tmp_path):
    before = {c.clip_id: c.split for c in load_audio_folder(folder, 0.25).clips}
    for i in range(40, 60):  # new files never move old ones between splits
        _write(folder / "new" / f"t{i}.wav", i, "WAV")
    after = {c.clip_id: c.split for c in load_audio_folder(folder, 0.25).clips}
    assert all(after[k] == v for k, v in before.items())
    # a file's split follows its bytes, not its name or folder
    copy = tmp_path / "elsewhere" / "renamed.flac"
    copy.parent.mkdir()
    copy.write_bytes((folder / "album1" / "disc" / "track13.flac").read_bytes())
    assert hash_split(content_digest(copy), 0.25) == before["album1/disc/track13.flac"]


def test_folder_errors_name_the_fix(tmp_path):
    with pytest.raises(DatasetError, match="is not a directory"):
        load_audio_folder(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"no audio file \(.wav"):
        load_audio_folder(tmp_path / "empty")
    _write(tmp_path / "one" / "a.wav", 1, "WAV")
    with pytest.raises(DatasetError, match="no validation file .* raise data.valid_fraction"):
        load_audio_folder(tmp_path / "one", valid_fraction=0.01)


def test_manifest_lists_files_with_optional_splits(folder, tmp_path):
    csv = tmp_path / "list.csv"
    csv.write_text(
        "path,split\n"
        "album0/disc/track00.wav,valid\n"
        f"{folder / 'album1' / 'disc' / 'track01.flac'},\n"
        "album2/disc/track02.ogg,train\n"
        "album0/disc/missing.wav,train\n"
    )
    ds = load_manifest(csv, root=folder, valid_fraction=0.5)
    by_id = {c.clip_id: c for c in ds.clips}
    assert by_id["album0/disc/track00.wav"].split == "valid"
    assert by_id["album2/disc/track02.ogg"].split == "train"
    assert str(folder / "album1" / "disc" / "track01.flac") in by_id  # absolute path kept
    assert ds.skipped == {"missing_audio": 1}
    csv.write_text("path,split\nalbum0/disc/track00.wav,test\n")
    with pytest.raises(DatasetError, match=r"list\.csv:2: split 'test' is not train or valid"):
        load_manifest(csv, root=folder)
    csv.write_text("file\nx.wav\n")
    with pytest.raises(DatasetError, match=r"list\.csv: no 'path' column \(columns: file\)"):
        load_manifest(csv, root=folder)
    csv.write_text("path\n../outside.wav\n")
    with pytest.raises(DatasetError, match=r"list\.csv:2: path '\.\./outside\.wav' escapes"):
        load_manifest(csv, root=folder)


def _labels(tmp_path, folder, rows, header="path,label,group"):
    csv = tmp_path / "labels.csv"
    csv.write_text(header + "\n" + "\n".join(rows) + "\n")
    return csv


def test_labelled_csv_derives_group_disjoint_splits(folder, tmp_path):
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("track*"))
    rows = [f"{f},{'low' if i % 2 else 'high'},album{i % 10}" for i, f in enumerate(files)]
    csv = _labels(tmp_path, folder, rows)
    ds = load_labelled_csv("t", csv, folder, multilabel=False, valid_fraction=0.2,
                           test_fraction=0.2)  # fmt: skip
    assert ds.vocabulary == ("high", "low") and not ds.multilabel
    split_of = {}
    for clip in ds.clips:
        assert split_of.setdefault(clip.group, clip.split) == clip.split  # group-disjoint
    assert (
        sorted(split_of.values()).count("test") == 2 and list(split_of.values()).count("valid") == 2
    )
    again = load_labelled_csv("t", csv, folder, multilabel=False, valid_fraction=0.2,
                              test_fraction=0.2)  # fmt: skip
    assert [c.split for c in again.clips] == [c.split for c in ds.clips]  # deterministic
    assert group_splits(["a", "b", "c"], 0.1, 0.1) == group_splits(["c", "a", "b"], 0.1, 0.1)


def test_labelled_csv_multilabel_with_splits_classes_and_renamed_columns(folder, tmp_path):
    rows = [
        "album0/disc/track00.wav,guitar;drums,train",
        "album1/disc/track01.flac,,train",
        "album2/disc/track02.ogg,drums,valid",
        "album0/disc/track03.mp3,guitar,test",
    ]
    csv = _labels(tmp_path, folder, rows, header="file,tags,split")
    ds = load_labelled_csv(
        "tags", csv, folder, multilabel=True, classes=("drums", "guitar", "piano"),
        columns={"path": "file", "labels": "tags"},
    )  # fmt: skip
    assert ds.vocabulary == ("drums", "guitar", "piano")
    assert ds.targets().tolist() == [[1, 1, 0], [0, 0, 0], [1, 0, 0], [0, 1, 0]]
    assert [c.split for c in ds.clips] == ["train", "train", "valid", "test"]
    assert all(c.cluster == c.clip_id for c in ds.clips)  # no group column: own clusters


@pytest.mark.parametrize(
    "rows, header, message",
    [
        (["album0/disc/track00.wav,x,nope"], "path,label,split", r"labels\.csv:2: split 'nope'"),
        (["album0/disc/track00.wav,,train"], "path,label,split", r"labels\.csv:2: empty label"),
        (["a.wav,x"], "path,genre", r"labels\.csv: no 'label' column for the label"),
        (["album0/disc/track00.wav,x,train", "album0/disc/track00.wav,y,test"],
         "path,label,split", r"labels\.csv:3: clip 'album0/disc/track00\.wav' is listed twice"),
        (["album0/disc/track00.wav,x,train"], "path,label,split",
         r"no clip in split\(s\) valid, test"),
        (["album0/disc/track00.wav,x,a", "album1/disc/track01.flac,y,b"], "path,label,group",
         r"only 2 group\(s\)"),
    ],
)  # fmt: skip
def test_labelled_csv_mistakes_name_file_and_line(folder, tmp_path, rows, header, message):
    csv = _labels(tmp_path, folder, rows, header)
    with pytest.raises(DatasetError, match=message):
        load_labelled_csv("t", csv, folder, multilabel=False)


def test_labelled_csv_unknown_class_with_fixed_classes(folder, tmp_path):
    csv = _labels(tmp_path, folder, ["album0/disc/track00.wav,x,train"], "path,label,split")
    with pytest.raises(DatasetError, match=r"labels\.csv:2: 'x' is not one of the task's classes"):
        load_labelled_csv("t", csv, folder, multilabel=False, classes=("a", "b"))


def test_clip_s_cuts_recordings_into_clips_that_stay_together(tmp_path):
    from benchmark.config import FrontEndConfig
    from benchmark.data.audio import load_audio, log_mel
    from benchmark.data.features import extract_mixture

    t = np.arange(int(3.0 * SR)) / SR
    for i in range(4):
        path = tmp_path / "songs" / f"s{i}.flac"
        path.parent.mkdir(exist_ok=True)
        sf.write(path, 0.3 * np.sin(2 * np.pi * (150 + 50 * i) * t * (1 + t)), SR)
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label\n" + "".join(f"s{i}.flac,{'ab'[i % 2]}\n" for i in range(4)))
    ds = load_labelled_csv("cut", csv, tmp_path / "songs", multilabel=False, clip_s=1.25,
                           valid_fraction=0.25, test_fraction=0.25)  # fmt: skip
    # 3 s = two 1.25-s clips; the 0.5-s rest is under half a clip and dropped
    assert [c.clip_id for c in ds.clips if c.path.name == "s0.flac"] == [
        "s0.flac@0s",
        "s0.flac@1.25s",
    ]
    assert ds.clips[1].span == (1.25, 2.5)
    for c in ds.clips:  # clips of one recording share its group, hence its split
        assert c.group == c.path.name
    assert len({(c.group, c.split) for c in ds.clips}) == 4
    # the feature store reads exactly that span of the file
    cfg = FrontEndConfig()
    clip = ds.clips[1]
    (entry,) = extract_mixture((clip.path, cfg, clip.span))
    whole = load_audio(clip.path, SR)
    np.testing.assert_allclose(entry.features, log_mel(whole[20000:40000], cfg), atol=1e-5)
