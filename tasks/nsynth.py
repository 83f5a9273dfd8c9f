"""NSynth instrument-family classification: 11 classes, Dense(512, ReLU) + Dense(11) probe."""

from benchmark.data.datasets import load_nsynth
from tasks.base import Task


def load(paths):
    return load_nsynth(paths.nsynth_root)


TASK = Task(
    name="nsynth",
    corpus="nsynth",
    load=load,
    probe_kind="mlp",
    lr=3e-4,  # paper
    multilabel=False,
    metrics=("accuracy", "balanced_accuracy"),
)
