"""Tasks declared by TOML files: what a file may say, the mistakes it can make, and a built-in
task re-declared as a file over the same audio giving identical embeddings and scores."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmark.data.datasets import load_nsynth
from benchmark.errors import DatasetError
from benchmark.evaluation.embed import embed
from benchmark.pipeline import probing, stages
from tasks import TASKS, all_tasks
from tasks.files import load_task_file
from tests.fixtures import stage_env

PROBES = ["probe.max_epochs=3", "probe.patience=1", "probe.train_hop_frames=98",
          "probe.params=default", "probe.standardize=true"]  # fmt: skip


def _task_file(tmp_path, audio_root, **changes) -> str:
    (tmp_path / "labels.csv").write_text("path,label\n")
    spec = {"name": "mine", "audio_root": str(audio_root), "labels": "labels.csv",
            "kind": "multiclass", "probe": "linear"} | changes  # fmt: skip
    lines = [f"{k} = {json.dumps(v)}" for k, v in spec.items() if v is not None]
    path = tmp_path / "mine.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_a_task_file_declares_a_task(tmp_path):
    task = load_task_file(_task_file(tmp_path, tmp_path, lr=1e-3, metrics=["balanced_accuracy"]))
    assert (task.name, task.probe_kind, task.lr, task.multilabel) == ("mine", "linear", 1e-3, False)
    assert task.metrics == ("balanced_accuracy",) and task.primary == "balanced_accuracy"
    assert task.corpus.startswith("own-") and task.declared_in.endswith("mine.toml")
    default = load_task_file(_task_file(tmp_path, tmp_path, kind="multilabel"))
    assert default.metrics == ("roc_auc", "pr_auc") and default.lr == 5e-4
    # the identity follows the labels: edited labels are other results
    assert task.test_strata == "" and default.test_strata == ""
    stratified = load_task_file(_task_file(tmp_path, tmp_path, test_strata="class"))
    assert stratified.test_strata == "class"
    before = default.identity
    (tmp_path / "labels.csv").write_text("path,labels\na.wav,x\n")
    assert load_task_file(tmp_path / "mine.toml").identity != before


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"colour": "red"}, r"mine\.toml: unknown key\(s\) colour"),
        ({"kind": "regression"}, r"kind 'regression' is not one of multiclass, multilabel"),
        ({"probe": "transformer"}, r"probe 'transformer' is not one of linear, mlp"),
        ({"metrics": ["roc_auc"]}, r"a multiclass task reports accuracy, balanced_accuracy"),
        ({"labels": "absent.csv"}, r"labels file .*absent\.csv not found"),
        ({"name": "a b"}, r"name 'a b' may hold only"),
        ({"lr": -1}, r"lr must be a positive number"),
        ({"probe": None}, r"'probe' must be given as a string"),
        ({"test_strata": "genre"}, r"test_strata must be one of '', 'class', got 'genre'"),
        ({"kind": "multilabel", "test_strata": "class"}, r"test_strata 'class' needs kind"),
    ],
)
def test_task_file_mistakes_name_the_file(tmp_path, changes, message):
    with pytest.raises(DatasetError, match=message):
        load_task_file(_task_file(tmp_path, tmp_path, **changes))


def test_task_files_join_the_registry_and_names_stay_unique(tmp_path):
    path = _task_file(tmp_path, tmp_path)
    assert set(all_tasks([path])) == {*TASKS, "mine"}
    assert set(all_tasks([str(tmp_path)])) == {*TASKS, "mine"}  # a folder of task files
    with pytest.raises(DatasetError, match="task name 'fma' is already taken by the registry"):
        all_tasks([_task_file(tmp_path, tmp_path, name="fma")])
    with pytest.raises(DatasetError, match="task file not found"):
        all_tasks([str(tmp_path / "nope.toml")])


def test_nsynth_redeclared_as_a_task_file_gives_identical_embeddings_and_scores(
    synth_smoke, tmp_path_factory
):
    """The built-in NSynth task and a task file over the same notes (a CSV written from the
    loader's clips: path, family, split, instrument, note id) agree to the bit."""
    root = synth_smoke[0] / "nsynth"
    folder = tmp_path_factory.mktemp("taskfile")
    builtin = load_nsynth(root)
    rows = ["path,label,split,group,id"]
    for c in builtin.clips:
        label = builtin.vocabulary[c.target]
        rows.append(
            f"{c.path.relative_to(root).as_posix()},{label},{c.split},{c.group},{c.clip_id}"
        )
    (folder / "notes.csv").write_text("\n".join(rows) + "\n")
    (folder / "nsynth_again.toml").write_text(
        f'name = "nsynth_again"\naudio_root = "{root}"\nlabels = "notes.csv"\n'
        'kind = "multiclass"\nprobe = "mlp"\nlr = 3e-4\n'
        'metrics = ["accuracy", "balanced_accuracy"]\n'
    )
    ctx = stage_env(synth_smoke[0], folder / "runs", [*PROBES, f"benchmark.task_files={folder}"])
    original, again = stages.get_task(ctx, "nsynth"), stages.get_task(ctx, "nsynth_again")
    assert again.corpus != original.corpus  # its own feature store over the same files
    model = stages.run_pretrain(ctx, "random_init", 0)
    windows = {}
    for task in (original, again):
        dataset = stages.load_task_dataset(ctx, task)
        store = stages.mixture_store(ctx, task.corpus)
        windows[task.name] = embed(ctx.cfg, model, task, dataset, store, progress=False)
    a, b = windows["nsynth"], windows["nsynth_again"]
    assert a["key"] != b["key"]
    for split in ("train", "valid", "test"):
        assert [c.clip_id for c in a[split][1]] == [c.clip_id for c in b[split][1]]
        assert np.array_equal(a[split][0].embeddings, b[split][0].embeddings)
        assert np.array_equal(a[split][0].targets, b[split][0].targets)
    logged = {}
    for task in (original, again):
        run_id = probing.run_probe(ctx, model, task, 0).run_id
        logged[task.name] = ctx.tracker.client.get_run(run_id).data.metrics
    for metric in ("accuracy", "balanced_accuracy", "valid_primary", "best_epoch"):
        assert logged["nsynth"][metric] == logged["nsynth_again"][metric], metric
