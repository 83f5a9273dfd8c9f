"""The paper's published numbers and table layout, as data (REFERENCE.md section 7).

These are reference rows for reports, labelled "published (paper)" wherever they appear and
never mixed with measured rows or used as test expectations. Method keys are the harness
registry names; ``msa_other`` is the paper's "accompaniment" model. The CLMR row is the number
the paper quotes from the CLMR paper, not a run of ours.
"""

from __future__ import annotations

import math

import pandas as pd

__all__ = [
    "COLUMN_LABELS",
    "METHOD_LABELS",
    "PUBLISHED",
    "PAPER_TEST_CLIPS",
    "PUBLISHED_LABEL",
    "TABLE1_METHODS",
    "TABLE2_LABELS",
    "TABLE2_METHODS",
    "TABLE_COLUMNS",
]

PUBLISHED_LABEL = "published (paper)"

# Test clips of each paper task on the datasets as published (REFERENCE.md section 6): a run
# whose test set differs is not on the paper's data, and its numbers are not comparable.
PAPER_TEST_CLIPS: dict[str, int] = {"mtat": 4332, "mtat_star": 5329, "nsynth": 4096, "fma": 800}

# (task, metric) columns in the paper's order; "WA" in the paper is plain accuracy.
TABLE_COLUMNS: list[tuple[str, str]] = [
    ("mtat", "roc_auc"),
    ("mtat", "pr_auc"),
    ("mtat_star", "roc_auc"),
    ("mtat_star", "pr_auc"),
    ("nsynth", "accuracy"),
    ("fma", "accuracy"),
]
COLUMN_LABELS: dict[tuple[str, str], str] = {
    ("mtat", "roc_auc"): "MTAT ROC",
    ("mtat", "pr_auc"): "MTAT PR",
    ("mtat_star", "roc_auc"): "MTAT* ROC",
    ("mtat_star", "pr_auc"): "MTAT* PR",
    ("nsynth", "accuracy"): "NSynth WA",
    ("fma", "accuracy"): "FMA WA",
}

METHOD_LABELS: dict[str, str] = {
    "clmr": "CLMR (reported)",
    "cola": "COLA",
    "cola_mws": "COLA + MWS",
    "cola_random_mask": "COLA + random mask",
    "msa_bass": "MSA bass",
    "msa_drums": "MSA drums",
    "msa_other": "MSA accompaniment",
    "msa_vocals": "MSA vocals",
    "msa_multi": "MSA multi-source",
}

# Table 1 compares methods; Table 2 compares source-targeted models ("none" = COLA).
TABLE1_METHODS: list[str] = ["clmr", "cola", "cola_mws", "cola_random_mask", "msa_multi"]
TABLE2_METHODS: list[str] = [
    "msa_bass",
    "msa_drums",
    "msa_other",
    "msa_vocals",
    "cola",
    "msa_multi",
]
TABLE2_LABELS: dict[str, str] = {
    "msa_bass": "bass",
    "msa_drums": "drums",
    "msa_other": "accomp.",
    "msa_vocals": "vocals",
    "cola": "none (COLA)",
    "msa_multi": "multi-source",
}

_NA = math.nan
# method -> values in TABLE_COLUMNS order (REFERENCE.md section 7).
_ROWS: dict[str, list[float]] = {
    "clmr": [_NA, _NA, 0.887, 0.356, _NA, 0.484],
    "cola": [0.886, 0.396, 0.880, 0.334, 0.593, 0.460],
    "cola_mws": [0.898, 0.425, 0.892, 0.358, 0.645, 0.493],
    "cola_random_mask": [0.883, 0.390, 0.880, 0.337, 0.632, 0.476],
    "msa_bass": [0.885, 0.392, 0.880, 0.332, 0.624, 0.487],
    "msa_drums": [0.881, 0.385, 0.876, 0.328, 0.611, 0.503],
    "msa_other": [0.892, 0.410, 0.888, 0.348, 0.636, 0.480],
    "msa_vocals": [0.896, 0.412, 0.891, 0.348, 0.632, 0.481],
    "msa_multi": [0.900, 0.429, 0.895, 0.361, 0.627, 0.510],
}

# Wide table: index = method key, columns = MultiIndex (task, metric); nan = not reported.
PUBLISHED: pd.DataFrame = pd.DataFrame.from_dict(
    _ROWS,
    orient="index",
    columns=pd.MultiIndex.from_tuples(TABLE_COLUMNS, names=["task", "metric"]),
)
PUBLISHED.index.name = "method"
