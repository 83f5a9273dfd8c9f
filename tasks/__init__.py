"""The task registry: a plain dict from name to task declaration (no import side effects).

To add a task: one module declaring ``TASK = Task(...)`` (tasks/base.py), one line here, one
test file (see README, "Adding a task").
"""

from tasks.fma import TASK as FMA
from tasks.mtat import TASK as MTAT
from tasks.mtat_star import TASK as MTAT_STAR
from tasks.nsynth import TASK as NSYNTH

TASKS = {
    "mtat": MTAT,
    "mtat_star": MTAT_STAR,
    "nsynth": NSYNTH,
    "fma": FMA,
}


def get_task(name: str):
    """The registered task ``name``; ValueError listing the known ones otherwise."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task '{name}' (known: {', '.join(TASKS)})") from None
