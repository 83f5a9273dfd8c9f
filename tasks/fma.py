"""FMA genre recognition (genre_top of fma_small by default): 8 classes, linear probe."""

from benchmark.data.datasets import load_fma
from tasks.base import Task


def load(paths):
    return load_fma(paths.fma_root, subset=paths.fma_subset)


TASK = Task(
    name="fma",
    corpus="fma",
    load=load,
    probe_kind="linear",
    lr=5e-4,  # paper
    multilabel=False,
    metrics=("accuracy", "balanced_accuracy"),
)
