"""Pre-training on a folder of real-data-like audio: a source-pairing method runs on it with the
separator trained on the synthetic corpus's stems (data.source=real, no roots), the
source-activity warnings are computed and recorded, and an MTAT-format tree that is not the
original names its fixes; plus the report's pure helpers on what was planned and measured."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from benchmark.errors import DatasetError
from benchmark.pipeline import stages
from benchmark.pipeline.report import planned_pairs, published_columns, task_data_notes
from benchmark.pipeline.tracking import load_artifact_dict
from tests.fixtures import stage_env


@pytest.fixture(scope="module")
def folder_env(synth_smoke, tmp_path_factory):
    """My music: the smoke corpus's MTAT-like MP3s copied into a folder of folders."""
    music = tmp_path_factory.mktemp("music")
    for path in sorted((synth_smoke[0] / "mtat").glob("[0-9a-f]/*.mp3"))[:40]:
        target = music / path.parent.name / path.name
        target.parent.mkdir(exist_ok=True)
        shutil.copyfile(path, target)
    overrides = ["data.source=real", "data.pretrain_source=folder", f"data.pretrain_root={music}",
                 "data.valid_fraction=0.2"]  # fmt: skip
    return stage_env(synth_smoke[0], tmp_path_factory.mktemp("runs"), overrides), music


def test_a_source_pairing_method_pre_trains_on_a_folder_with_the_trained_separator(folder_env):
    ctx, music = folder_env
    corpus = stages.pretrain_corpus(ctx.cfg)
    assert corpus.startswith("own-music")
    train, valid = stages.pretrain_clips(ctx)
    assert len(train) + len(valid) == 40 and valid
    assert all(c.path.is_relative_to(music) for c in train)
    # trained on the synthetic corpus's true stems, although the data is "real"
    model_dir = stages.train_separator_stage(ctx)
    assert model_dir.is_relative_to(ctx.cfg.cache_dir / "separators")
    store = stages.source_store(ctx, "config")
    assert store.root.name.startswith(f"{corpus}-src-umx")
    model = stages.run_pretrain(ctx, "msa_vocals", 0)
    assert model.final_path.is_file()
    runs = [r for r in ctx.tracker.runs() if r.data.tags.get("bench.kind") == "separate"]
    assert len(runs) == 1 and runs[0].data.tags["corpus"] == corpus
    recorded = load_artifact_dict(ctx.tracker.client, runs[0].info.run_id, "activity.json")
    assert recorded["warnings"] == stages.activity_warnings(recorded["activity"])
    assert sum(row["total"] for row in recorded["activity"].values()) > 0


def test_activity_outside_five_to_ninety_five_percent_is_flagged():
    activity = {
        "vocals": {"active": 574, "total": 574},
        "bass": {"active": 300, "total": 574},
        "drums": {"active": 2, "total": 574},
    }
    warnings = stages.activity_warnings(activity)
    assert len(warnings) == 2
    assert warnings[0].startswith("vocals is active in 574 of 574 excerpts (100%)")
    assert warnings[1].startswith("drums is active in 2 of 574 excerpts (0%)")
    assert stages.activity_table(activity)[1].split() == ["vocals", "574", "574", "100%"]


def test_an_mtat_format_tree_that_is_not_the_original_names_the_fixes(synth_smoke, tmp_path):
    ctx = stage_env(
        synth_smoke[0], tmp_path / "runs", ["data.source=real",
                                            f"data.mtat_root={synth_smoke[0] / 'mtat'}"]
    )  # fmt: skip
    with pytest.raises(DatasetError, match="set data.mtat_split_dir=.*data.pretrain_source=folder"):
        stages.pretrain_clips(ctx)
    # the tree's own lists make it work
    fixed = stage_env(
        synth_smoke[0], tmp_path / "runs2",
        ["data.source=real", f"data.mtat_root={synth_smoke[0] / 'mtat'}",
         f"data.mtat_split_dir={synth_smoke[0] / 'mtat' / 'mtat_split'}"],
    )  # fmt: skip
    train, valid = stages.pretrain_clips(fixed)
    assert train and valid


def test_report_helpers_say_what_was_planned_and_measured():
    status = {"steps": {
        "probe:cola:s0:fma:p0": {"stage": "probe", "method": "cola", "task": "fma"},
        "probe:cola:s0:fma:p1": {"stage": "probe", "method": "cola", "task": "fma"},
        "probe:cola:s1:fma:p0": {"stage": "probe", "method": "cola", "task": "fma"},
        "probe:hear:x:s0:fma:p0": {"stage": "probe", "method": "hear:x", "task": "fma"},
        "probe@3:cola:s2:fma:p0": {"stage": "probe", "method": "cola", "task": "fma"},  # snapshot
        "pretrain:cola:s0": {"stage": "pretrain", "method": "cola", "task": ""},
    }}  # fmt: skip
    # each pair with its planned pre-training runs (an external encoder's method holds ':')
    assert planned_pairs(status) == {("cola", "fma"): 2, ("hear:x", "fma"): 1}
    assert planned_pairs({"steps": {}}) is None
    info = {"mtat": {"clips": {"train": 10, "valid": 2, "test": 4}, "num_labels": 50,
                     "excluded_tags": ["opera", "sitar"], "absent_classes": []}}  # fmt: skip
    (line,) = task_data_notes(info)
    assert line.startswith("mtat: train 10, valid 2, test 4 clips; 50 labels; 2 of 50 tags")
    assert line.endswith("left out of the macro scores: opera, sitar")
    from benchmark.config import resolve

    synthetic = resolve("smoke")
    assert published_columns(synthetic, info) == ([], "these results are on the synthetic "
                                                      "corpus, not the paper's datasets")  # fmt: skip
    real = resolve("paper")
    info["mtat"]["clips"]["test"] = 4332
    info["mtat_star"] = {"clips": {"test": 118}}
    kept, why = published_columns(real, info)
    assert kept == [("mtat", "roc_auc"), ("mtat", "pr_auc")]
    assert why == "mtat_star has 118 test clips where the paper's dataset has 5,329"


def test_a_task_on_the_pretraining_folder_embeds_its_own_clips_only(synth_smoke, folder_env):
    """The folder's feature store serves pre-training and the task; the embeddings cover the
    task's clips, not every pre-training file."""
    from benchmark.pipeline import probing

    _, music = folder_env
    files = sorted(p.relative_to(music).as_posix() for p in music.rglob("*.mp3"))[:12]
    work = music.parent / f"{music.name}-task"
    work.mkdir()
    rows = [f"{f},{'ab'[i % 2]},{i // 2}" for i, f in enumerate(files)]
    (work / "labels.csv").write_text("path,label,group\n" + "\n".join(rows) + "\n")
    (work / "few.toml").write_text(
        f'name = "few"\naudio_root = "{music}"\nlabels = "labels.csv"\nkind = "multiclass"\n'
        'probe = "linear"\n[split]\nvalid_fraction = 0.2\ntest_fraction = 0.2\n'
    )
    ctx = stage_env(
        synth_smoke[0], work / "runs",
        ["data.pretrain_source=folder", f"data.pretrain_root={music}",
         f"benchmark.task_files={work / 'few.toml'}", "probe.train_hop_frames=98"],
    )  # fmt: skip
    task = stages.get_task(ctx, "few")
    assert task.corpus == stages.pretrain_corpus(ctx.cfg)  # one store for both
    store = stages.mixture_store(ctx, task.corpus)
    assert len(store) == 40
    model = stages.run_pretrain(ctx, "random_init", 0)
    _, emb = probing.embedded(ctx, model, task)
    (cache,) = (ctx.cfg.cache_dir / "embeddings").iterdir()
    embedded = int(np.load(cache / "offsets.npy")[-1])
    in_task = sum(emb[s][0].num_windows for s in ("train", "valid", "test"))
    assert embedded == in_task  # the 28 pre-training-only files were not embedded
