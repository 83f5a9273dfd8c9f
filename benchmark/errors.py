"""The errors a user sees: each carries a complete message, so the command line prints it as
one line (``--debug`` shows the traceback).

Two kinds, two exit statuses (:mod:`benchmark.cli`):

* :data:`USER_MISTAKES` (exit 2, ``error: <message>``): a wrong command line, profile or
  override, fixed by typing something else.
* :data:`EXPECTED_FAILURES` (exit 1, ``error: <Type>: <message>``): a stage that cannot run
  on this data or in this state (bad audio, a corrupt store, a stage to run first, ...).

Every other exception keeps its traceback: it is a bug, not a message. Exceptions that never
reach the user stay with the code that raises and catches them: ``BadClip``
(:mod:`benchmark.data.store`: a clip to skip and count), ``ProbeDivergedError``
(:mod:`benchmark.evaluation.probe`: a tuning trial that diverged) and ``FigureDataError``
(:mod:`reports.figures`: a figure listed as not drawn).

This module imports nothing of the project: every layer may raise these.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix on the command line; printed as one line, exit status 2."""


class ConfigError(ValueError):
    """A user mistake in a profile or an override (unknown key, wrong type, bad value)."""


class StageError(RuntimeError):
    """A stage that cannot run as configured; the message says what to do."""


class AudioError(ValueError):
    """Audio that cannot be used: undecodable, empty, non-finite or too short. Names the file."""


class DatasetError(ValueError):
    """Dataset metadata that cannot be used; the message names the file, line or id."""


class StoreBuildError(RuntimeError):
    """A build that cannot be trusted (too many bad clips, or a failing extractor)."""


class StoreReadError(RuntimeError):
    """A store that is missing, incomplete or corrupt on read."""


class CheckpointError(RuntimeError):
    """A weights file that will not be loaded (it holds pickled code); names the file."""


class SeparationError(RuntimeError):
    """A separator cannot produce sources; the message names the clip or model and the problem."""


USER_MISTAKES: tuple[type[Exception], ...] = (UserError, ConfigError)
EXPECTED_FAILURES: tuple[type[Exception], ...] = (
    StageError,
    AudioError,
    DatasetError,
    StoreBuildError,
    StoreReadError,
    SeparationError,
    CheckpointError,
    FileNotFoundError,
)
