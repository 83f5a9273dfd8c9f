"""What a downstream task declares: its data, split, labels, probe and metrics (no code paths).

The evaluation stages (benchmark/pipeline/probing.py) read these declarations; a task never
trains or scores anything itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from benchmark.data.datasets import Dataset
from benchmark.evaluation.probe import ProbeSpec

TEST_STRATA = ("", "class")  # how a task's test split was drawn (Task.test_strata)


@dataclass(frozen=True)
class Task:
    """A downstream task.

    Attributes:
        name: registry key.
        corpus: the audio corpus the task reads ("mtat", "nsynth", "fma"); tasks on the same
            corpus share its features and embeddings (MTAT and MTAT* do).
        load: ``DataPaths -> Dataset`` (clips with splits and targets).
        probe_kind: "linear" or "mlp" (REFERENCE.md section 5).
        lr: the paper's probe learning rate (Adam).
        multilabel: multi-label (sigmoid, BCE) or multi-class (softmax, CE).
        metrics: the metrics reported; the first is the primary one (model selection,
            early stopping, tuning, ranking).
        identity: what the results depend on beyond the audio files and the name (a task
            file's content hash; "" for a registered task, whose code is its identity).
        declared_in: the task file that declares it ("" for a registered task).
        test_strata: how the test split was drawn: "" (clusters of items drawn freely) or
            "class" (a fixed number of test items per class, as FMA small's 100 tracks per
            genre; multi-class tasks only). The report's test-set variance follows it
            (:class:`reports.variance.SamplingDesign`).
    """

    name: str
    corpus: str
    load: Callable[..., Dataset]
    probe_kind: str
    lr: float
    multilabel: bool
    metrics: tuple[str, ...]
    identity: str = ""
    declared_in: str = ""
    test_strata: str = ""

    def __post_init__(self):
        if self.test_strata not in TEST_STRATA:
            raise ValueError(
                f"task {self.name}: test_strata {self.test_strata!r} is not one of "
                f"{', '.join(repr(s) for s in TEST_STRATA)}"
            )
        if self.test_strata == "class" and self.multilabel:
            raise ValueError(f"task {self.name}: test_strata 'class' needs one label per clip")

    @property
    def primary(self) -> str:
        return self.metrics[0]

    def probe_spec(self, num_outputs: int) -> ProbeSpec:
        return ProbeSpec(kind=self.probe_kind, multilabel=self.multilabel, num_outputs=num_outputs)
