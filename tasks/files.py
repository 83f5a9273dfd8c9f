"""Tasks declared by files, not code: a TOML file names the audio, the labels CSV, the kind of
labels, the probe and the metrics (hear-eval-kit's idea: a task is data, not a code branch).

A task file (all paths relative to the file's folder, or absolute)::

    name = "guitar_or_backing"       # the task's name in plans, reports and MLflow
    audio_root = "/data/songs"       # audio files of the CSV's paths are under this folder
    labels = "labels.csv"            # columns: path, label (or labels), [split], [group], [id]
    kind = "multiclass"              # multiclass (one label) | multilabel (tags, ";"-joined)
    probe = "linear"                 # linear | mlp (Dense(512, ReLU) + Dense(C))
    lr = 5e-4                        # optional: probe learning rate (default 5e-4)
    metrics = ["accuracy", "balanced_accuracy"]  # optional; the first is the primary one
    classes = ["backing", "guitar"]  # optional: fixes the vocabulary and its order
    label_separator = ";"            # optional: between the tags of a multilabel row
    clip_s = 29.0                    # optional: cut each file into clips of this many seconds
    test_strata = "class"            # optional: the test split holds a fixed number of clips
                                     #   per class (multiclass); the report's test-set
                                     #   variance then varies only within classes
    [columns]                        # optional: other column names, e.g. label = "genre"
    [split]                          # optional: used when the CSV has no split column
    valid_fraction = 0.15            #   splits derived by group: deterministic, group-disjoint
    test_fraction = 0.15
    seed = 0

``benchmark.task_files`` names task files or folders of them (``*.toml``); their tasks join
the registered ones (:func:`tasks.all_tasks`). Tasks of files on the same audio root share one
feature store and one set of embeddings per encoder. The loader is
:func:`benchmark.data.owndata.load_labelled_csv`.
"""

from __future__ import annotations

import functools
import hashlib
import re
import tomllib
from collections.abc import Sequence
from pathlib import Path

from benchmark.data.datasets import DatasetError
from benchmark.data.owndata import load_labelled_csv
from benchmark.evaluation.probe import PROBE_KINDS
from tasks.base import TEST_STRATA, Task

KINDS = {"multiclass": False, "multilabel": True}  # kind -> multilabel
METRICS = {
    "multiclass": ("accuracy", "balanced_accuracy"),
    "multilabel": ("roc_auc", "pr_auc"),
}  # what a probe of each kind logs; the first is the default primary metric
DEFAULT_LR = 5e-4  # the paper's rate for its linear probes (MTAT, FMA)
_KEYS = {
    "name", "audio_root", "labels", "kind", "probe", "lr", "metrics", "classes",
    "label_separator", "columns", "split", "clip_s", "test_strata",
}  # fmt: skip
_COLUMN_KEYS = {"path", "label", "labels", "split", "group", "id"}
_SPLIT_KEYS = {"valid_fraction", "test_fraction", "seed"}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def task_file_paths(entries: Sequence[str]) -> list[Path]:
    """The task files named by ``entries``: files as they are, folders as their ``*.toml``
    (sorted). Raises :class:`DatasetError` for an entry that does not exist or a folder
    without task files."""
    out: list[Path] = []
    for entry in entries:
        path = Path(entry).expanduser()
        if path.is_dir():
            found = sorted(path.glob("*.toml"))
            if not found:
                raise DatasetError(f"{path}: no task file (*.toml) in this folder")
            out += found
        elif path.is_file():
            out.append(path)
        else:
            raise DatasetError(f"{path}: task file not found (benchmark.task_files)")
    return [p.resolve() for p in out]


def load_task_file(path: str | Path) -> Task:
    """The :class:`Task` a TOML task file declares (its data is read when the task is loaded).

    Raises :class:`DatasetError` naming the file for invalid TOML, an unknown or missing key, a
    kind, probe or metric that does not exist, or an audio root or labels file not found.
    """
    path = Path(path).resolve()
    try:
        raw = path.read_bytes()
        spec = tomllib.loads(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise DatasetError(f"{path}: not a readable TOML task file ({exc})") from None

    def fail(message: str):
        raise DatasetError(f"{path}: {message}")

    unknown = sorted(set(spec) - _KEYS)
    if unknown:
        fail(f"unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(_KEYS))})")
    for key in ("name", "audio_root", "labels", "kind", "probe"):
        if not isinstance(spec.get(key), str) or not spec[key]:
            fail(f"'{key}' must be given as a string")
    name = spec["name"]
    if not _NAME.fullmatch(name):
        fail(f"name '{name}' may hold only letters, digits, '_', '.' and '-'")
    kind = spec["kind"]
    if kind not in KINDS:
        fail(f"kind '{kind}' is not one of {', '.join(KINDS)}")
    if spec["probe"] not in PROBE_KINDS:
        fail(f"probe '{spec['probe']}' is not one of {', '.join(PROBE_KINDS)}")
    metrics = tuple(spec.get("metrics", METRICS[kind]))
    wrong = [m for m in metrics if m not in METRICS[kind]]
    if wrong or not metrics:
        fail(f"metrics {list(metrics)}: a {kind} task reports {', '.join(METRICS[kind])}")
    clip_s = spec.get("clip_s", 0.0)
    if isinstance(clip_s, bool) or not isinstance(clip_s, int | float) or clip_s < 0:
        fail(f"clip_s must be a number of seconds >= 0, got {clip_s!r}")
    test_strata = spec.get("test_strata", "")
    if test_strata not in TEST_STRATA:
        fail(f"test_strata must be one of {', '.join(repr(s) for s in TEST_STRATA)}, "
             f"got {test_strata!r}")  # fmt: skip
    if test_strata == "class" and kind != "multiclass":
        fail("test_strata 'class' needs kind = \"multiclass\" (one label per clip)")
    lr = spec.get("lr", DEFAULT_LR)
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not lr > 0:
        fail(f"lr must be a positive number, got {lr!r}")
    columns = spec.get("columns", {})
    split = spec.get("split", {})
    for section, allowed, value in (
        ("columns", _COLUMN_KEYS, columns),
        ("split", _SPLIT_KEYS, split),
    ):
        if not isinstance(value, dict) or set(value) - allowed:
            fail(f"[{section}] takes only {', '.join(sorted(allowed))}")
    classes = spec.get("classes", [])
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        fail("classes must be a list of strings")
    audio_root = (path.parent / spec["audio_root"]).resolve()
    labels = (path.parent / spec["labels"]).resolve()
    if not audio_root.is_dir():
        fail(f"audio_root {audio_root} is not a folder")
    if not labels.is_file():
        fail(f"labels file {labels} not found")
    multilabel = KINDS[kind]
    load = functools.partial(
        _load,
        name=name,
        csv_path=labels,
        audio_root=audio_root,
        multilabel=multilabel,
        classes=tuple(classes),
        columns={str(k): str(v) for k, v in columns.items()},
        label_separator=str(spec.get("label_separator", ";")),
        valid_fraction=float(split.get("valid_fraction", 0.15)),
        test_fraction=float(split.get("test_fraction", 0.15)),
        split_seed=int(split.get("seed", 0)),
        clip_s=float(clip_s),
    )
    # What the results depend on besides the audio files (whose identity the feature store
    # keys already hold): the declaration and the labels.
    identity = hashlib.sha256(raw + b"\0" + labels.read_bytes()).hexdigest()[:16]
    return Task(
        name=name,
        corpus=audio_corpus(audio_root),
        load=load,
        probe_kind=spec["probe"],
        lr=float(lr),
        multilabel=multilabel,
        metrics=metrics,
        identity=identity,
        declared_in=str(path),
        test_strata=test_strata,
    )


def audio_corpus(audio_root: Path) -> str:
    """The corpus name of a task file's audio: tasks on one root share features and embeddings."""
    slug = re.sub(r"[^A-Za-z0-9]+", "_", audio_root.name).strip("_")[:24] or "root"
    digest = hashlib.sha256(str(audio_root).encode()).hexdigest()[:8]
    return f"own-{slug}-{digest}"


def _load(paths, **kwargs):
    """``Task.load``: the labelled CSV (the data paths of the built-in corpora play no part)."""
    del paths
    name = kwargs.pop("name")
    csv_path = kwargs.pop("csv_path")
    audio_root = kwargs.pop("audio_root")
    return load_labelled_csv(name, csv_path, audio_root, **kwargs)
