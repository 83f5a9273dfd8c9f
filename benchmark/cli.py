"""Command line: ``python -m benchmark <command>`` (also installed as ``mscol-bench``).

Every command takes ``--profile`` and ``key=value`` overrides; user mistakes end with a
one-line error and exit status 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from benchmark import config as config_mod

log = logging.getLogger("benchmark")


class UserError(Exception):
    """A mistake the user can fix; printed as one line without a traceback."""


COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable]] = {}


def command(
    name: str, help_: str, add_args: Callable[[argparse.ArgumentParser], None] | None = None
):
    """Register ``fn(args, cfg)`` as a sub-command."""

    def deco(fn):
        COMMANDS[name] = (help_, add_args or (lambda p: None), fn)
        return fn

    return deco


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default="default", help="named profile (benchmark/profiles/*.toml)")
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. pretrain.steps=50"
    )


def build_parser() -> argparse.ArgumentParser:
    import benchmark.commands  # noqa: F401  (registers the sub-commands)

    parser = argparse.ArgumentParser(
        prog="python -m benchmark",
        description="Benchmark harness for contrastive self-supervised learning on music audio.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name, (help_, add_args, _fn) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        _common(p)
        add_args(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    _help, _add, fn = COMMANDS[args.command]
    try:
        cfg = config_mod.resolve(args.profile, args.overrides)
        result = fn(args, cfg)
        return int(result or 0)
    except (UserError, config_mod.ConfigError) as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as exc:  # a known failure type of a stage (bad data, corrupt store, ...)
        if args.debug or not _is_expected(exc):
            raise
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


def _is_expected(exc: Exception) -> bool:
    """Errors that carry a complete message for the user (the rest keep their traceback)."""
    from benchmark.audio import AudioError
    from benchmark.stages import StageError
    from benchmark.store import StoreBuildError, StoreReadError

    expected: tuple[type, ...] = (
        AudioError,
        StageError,
        StoreBuildError,
        StoreReadError,
        FileNotFoundError,
    )
    try:
        from benchmark.datasets import DatasetError

        expected += (DatasetError,)
    except ImportError:
        pass
    try:
        from benchmark.separation import SeparationError

        expected += (SeparationError,)
    except ImportError:
        pass
    return isinstance(exc, expected)
