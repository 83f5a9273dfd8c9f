"""The task registry: a plain dict from name to task declaration (no import side effects).

To add a task: one module declaring ``TASK = Task(...)`` (tasks/base.py), one line here, one
test file (see README, "Adding a task"); or, without code, a TOML task file
(:mod:`tasks.files`) named by ``benchmark.task_files``: :func:`all_tasks` adds those.
"""

from collections.abc import Sequence

from benchmark.data.datasets import DatasetError
from tasks.files import load_task_file, task_file_paths
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


def all_tasks(task_files: Sequence[str] = ()) -> dict:
    """The registered tasks and those of the task files (files or folders of ``*.toml``).

    Raises :class:`DatasetError` for a task file that cannot be read or a task name that is
    already taken (by a registered task or another file).
    """
    out = dict(TASKS)
    for path in task_file_paths(task_files):
        task = load_task_file(path)
        if task.name in out:
            where = out[task.name].declared_in or "the registry (tasks/__init__.py)"
            raise DatasetError(f"{path}: task name '{task.name}' is already taken by {where}")
        out[task.name] = task
    return out
