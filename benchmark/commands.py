"""The sub-commands of ``python -m benchmark``; each is a thin wrapper over a stage module."""

from __future__ import annotations

import json

from benchmark.cli import command


@command("config", "print the resolved configuration of a profile (with overrides) and its hash")
def cmd_config(args, cfg):
    print(json.dumps({"hash": cfg.hash(), "config": cfg.to_dict()}, indent=2))
