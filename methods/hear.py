"""External encoders as methods: any installed module implementing the HEAR 2021 API.

A method named ``hear:<module>`` (or ``hear:<module>@<model file>``) is benchmarked like a
native one, with no pre-training step: the same tasks, embedding cache, probes, tuning and
statistics. This declaration only says which module and weights; loading the module and
mapping the harness's window protocol onto it is :mod:`benchmark.evaluation.hear`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from benchmark.pretrain.pairs import PairBatch, PairCorpus

PREFIX = "hear:"
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


@dataclass(frozen=True)
class External:
    """An encoder from outside the harness (HEAR 2021 API). ``module``: its import name;
    ``model_file``: the ``model_file_path`` handed to ``load_model`` ("" = the module's own)."""

    name: str
    module: str
    model_file: str = ""
    pretrained: bool = False  # nothing to pre-train here: the module brings its weights
    loss: str = ""
    sources: tuple[str, ...] = ()
    separator: str = ""
    external: bool = True

    def params(self) -> dict:
        return {"name": self.name, "hear_module": self.module, "model_file": self.model_file}

    def sample(self, corpus: PairCorpus, batch_size: int, rng: np.random.Generator) -> PairBatch:
        raise TypeError(f"{self.name} is an external encoder: it is not pre-trained here")


def parse(name: str) -> External:
    """The :class:`External` of ``hear:<module>[@<model file>]``; ValueError naming the
    expected form otherwise."""
    spec = name.removeprefix(PREFIX)
    module, _, model_file = spec.partition("@")
    if not name.startswith(PREFIX) or not _MODULE.fullmatch(module):
        raise ValueError(
            f"'{name}' is not an external encoder: expected hear:<module> or "
            "hear:<module>@<model file>, e.g. hear:hear_tiny"
        )
    return External(name, module, model_file)
