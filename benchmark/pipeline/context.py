"""What one command or plan shares: its configuration, its tracker, and what it has opened.

A :class:`Context` is created per command (:mod:`benchmark.commands`) or per test, never at
import time: the datasets it loaded and the stores it opened live exactly as long as it does,
so two configurations in one process never see each other's (no process-wide memo).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from benchmark.config import Config
from benchmark.pipeline import state
from benchmark.pipeline.locks import StepLock
from benchmark.pipeline.tracking import Tracker

T = TypeVar("T")


@dataclass
class Context:
    """``cfg`` and ``tracker`` (None: stages that can record nothing, e.g. ``features``);
    ``progress`` shows progress bars; ``step``: the plan step running in it now
    (:func:`benchmark.pipeline.plan.run_step`), named in the locks it holds."""

    cfg: Config
    tracker: Tracker | None = None
    progress: bool = True
    step: str = ""
    _opened: dict = field(default_factory=dict, init=False, repr=False)

    def once(self, key: tuple, open_fn: Callable[[], T]) -> T:
        """``open_fn()`` the first time ``key`` is asked for, the same object afterwards: the
        plan asks for the same datasets and stores many times (a failure is not kept)."""
        if key not in self._opened:
            self._opened[key] = open_fn()
        return self._opened[key]

    @contextmanager
    def hold(self, kind: str, key: str) -> Iterator[StepLock]:
        """Hold the lock of the artefact of ``kind`` whose content key is ``key``
        (:func:`state.artefact_lock`) while the block runs, after waiting for its holder.

        For the tracker, ``key`` is then a ``bench.key`` this process holds the lock of
        (:meth:`Tracker.locked`): a run of it left open on another host is resumed, and a run
        of it checks before each write that the lock is still ours."""
        with state.artefact_lock(self.cfg, kind, key, self.step or kind) as lock:
            with self.tracker.locked(key, lock) if self.tracker else nullcontext():
                yield lock

    def require_tracker(self) -> Tracker:
        """The tracker of a stage that records MLflow runs (pretrain, tune, probe); raises
        ``RuntimeError`` (a caller's bug, not a user's mistake) when there is none."""
        if self.tracker is None:
            raise RuntimeError("this stage records MLflow runs: the Context needs a tracker")
        return self.tracker


def open_context(cfg: Config, progress: bool = True, *, read_only: bool = False) -> Context:
    """The context of a command: the profile's MLflow experiment ``mscol-<profile>`` (or its
    workspace's, ``paths.workspace``).

    ``read_only`` (``--dry-run``) writes nothing: without an existing SQLite store the context
    has no tracker (nothing is recorded yet), and a missing experiment is not created."""
    if read_only and cfg.tracking_uri.startswith("sqlite:///"):
        if not Path(cfg.tracking_uri.removeprefix("sqlite:///")).is_file():
            return Context(cfg, None, progress)
    tracker = Tracker(
        cfg.tracking_uri,
        cfg.experiment,
        artifact_root=cfg.runs_dir / "mlartifacts",
        create=not read_only,
    )
    return Context(cfg, tracker, progress)
