"""MagnaTagATune, unfiltered ("MTAT*"): the folder rule over all clips, the same probe as MTAT."""

import functools

from tasks.base import Task
from tasks.mtat import TASK as MTAT
from tasks.mtat import load

TASK = Task(
    name="mtat_star",
    corpus=MTAT.corpus,
    load=functools.partial(load, filtered=False),
    probe_kind=MTAT.probe_kind,
    lr=MTAT.lr,
    multilabel=True,
    metrics=MTAT.metrics,
)
