"""MagnaTagATune auto-tagging, filtered version (the paper's "MTAT"): top-50 tags, linear probe.

Split from the shipped lists (jongpillee/music_dataset_split, as the authors used), or the
synthetic corpus's own lists in the same format.
"""

from benchmark.data.datasets import load_mtat
from tasks.base import Task


def load(paths, filtered: bool = True):
    return load_mtat(paths.mtat_root, filtered=filtered, split_dir=paths.mtat_split_dir)


TASK = Task(
    name="mtat",
    corpus="mtat",
    load=load,
    probe_kind="linear",
    lr=5e-4,  # paper
    multilabel=True,
    metrics=("roc_auc", "pr_auc"),
)
