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
    # FMA's splits are stratified by genre (Defferrard et al., ISMIR 2017): fma_small's test
    # split holds 100 tracks of each of its 8 genres (REFERENCE.md). The genre shares are
    # fixed by design, so test-set sampling varies only within genres.
    test_strata="class",
)
