"""Adding a method takes one class and one registry line (README, "Adding a method")."""

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from benchmark.config import resolve
from benchmark.pretrain.loop import is_complete, pretrain, pretrain_key
from benchmark.pretrain.pairs import PairBatch, PairCorpus
from methods import METHODS, get_method
from tests.fixtures import TINY_PRETRAIN, make_corpus


@dataclass(frozen=True)
class TimeReversal:
    """Toy method: the positive is the anchor's crop played backwards."""

    name: str = "toy_time_reversal"
    pretrained: bool = True
    loss: str = "plain"
    sources: tuple[str, ...] = ()
    separator: str = ""

    def params(self) -> dict:
        return dataclasses.asdict(self)

    def sample(self, corpus: PairCorpus, batch_size: int, rng: np.random.Generator) -> PairBatch:
        excerpts = rng.integers(0, len(corpus), size=batch_size)
        anchors = corpus.mix_crops(excerpts, corpus.random_starts(rng, batch_size))
        positives = np.ascontiguousarray(anchors[:, ::-1])
        return PairBatch(
            torch.from_numpy(anchors),
            torch.from_numpy(positives),
            torch.zeros(batch_size, dtype=torch.bool),
        )


def test_a_toy_method_registers_and_trains_through_the_public_api(tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, "toy_time_reversal", TimeReversal())
    method = get_method("toy_time_reversal")
    corpus = make_corpus(tmp_path / "corpus", num_clips=3, sources=False)
    cfg = resolve("smoke", TINY_PRETRAIN)
    key = pretrain_key(cfg, method, 0, "toy")
    seen = []
    pretrain(
        cfg,
        method,
        corpus,
        None,
        tmp_path / "run",
        key,
        seed=0,
        progress=False,
        on_metrics=lambda m, step: seen.append((step, m["loss"])),
    )
    assert is_complete(tmp_path / "run", key)
    assert seen and seen[-1][0] == 2 and np.isfinite(seen[-1][1])
