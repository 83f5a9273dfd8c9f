"""Command line: ``python -m benchmark <command>`` (also installed as ``mscol-bench``).

Every command takes ``--profile`` and ``key=value`` overrides; user mistakes end with a
one-line error and exit status 2, known failures of a stage with one line and status 1
(``--debug`` shows the traceback; :mod:`benchmark.errors` lists both kinds).
The commands themselves are the :data:`benchmark.commands.COMMANDS` registry.
"""

from __future__ import annotations

import argparse
import logging
import sys

from benchmark import config as config_mod
from benchmark.commands import COMMANDS
from benchmark.errors import EXPECTED_FAILURES, USER_MISTAKES

log = logging.getLogger("benchmark")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--profile",
        default="default",
        help="a shipped profile (benchmark/profiles/*.toml) or a profile file path/mine.toml",
    )
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. pretrain.steps=50"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmark",
        description="Benchmark harness for contrastive self-supervised learning on music audio.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.help, description=command.help)
        _common(p)
        command.add_args(p)
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
    try:
        cfg = config_mod.resolve(args.profile, args.overrides)
        result = COMMANDS[args.command].fn(args, cfg)
        return int(result or 0)
    except USER_MISTAKES as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except (
        EXPECTED_FAILURES
    ) as exc:  # a known failure type of a stage (bad data, corrupt store, ...)
        if args.debug:
            raise
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
