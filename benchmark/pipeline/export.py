"""``export-hear``: a finished pre-training run as an installable HEAR 2021 API module.

Writes a folder with ``pyproject.toml`` and a package (``<name>/__init__.py``, ``model.pt``,
``config.json``, ``README.md``). The package's functions are the harness's own
(:mod:`benchmark.evaluation.hear_export`), so the package depends on this harness being
installed (``pip install <mscol-bench checkout>``); the weights are those of the run's
``final.pt``, loaded as the pipeline's embedding loads them
(:func:`benchmark.pretrain.loop.load_encoder`).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from benchmark.config import to_dict
from benchmark.errors import UserError
from benchmark.io import atomic_write_text
from benchmark.pipeline.context import Context
from benchmark.pipeline.stages import run_pretrain
from benchmark.pipeline.tracking import git_commit

_NAME = re.compile(r"[a-z_][a-z0-9_]*")

_INIT = '''"""HEAR 2021 API module: {method} (seed {seed}) pre-trained by mscol-bench.

Exported with `python -m benchmark export-hear` from the pre-training run {key}
(mscol-bench commit {commit}). Audio at 16 kHz, the harness's log-mel front end, 98-frame
(~1 s) windows every {hop} frames; timestamps are window centres in ms; the scene embedding
is the mean of the window embeddings. Needs the mscol-bench harness installed.
"""

from pathlib import Path

from benchmark.evaluation import hear_export as _runtime

_HERE = Path(__file__).resolve().parent


def load_model(model_file_path: str = ""):
    """The encoder; ``model_file_path``: other weights of the same architecture (a state dict
    as in ``model.pt``), default the exported ones."""
    return _runtime.load_model(model_file_path or _HERE / "model.pt", _HERE / "config.json")


def get_scene_embeddings(audio, model):
    """``(n_sounds, n_samples)`` float32 at 16 kHz -> ``(n_sounds, {dim})``."""
    return _runtime.get_scene_embeddings(audio, model)


def get_timestamp_embeddings(audio, model):
    """``(n_sounds, n_samples)`` -> embeddings ``(n_sounds, n_windows, {dim})``, timestamps
    ``(n_sounds, n_windows)`` in ms."""
    return _runtime.get_timestamp_embeddings(audio, model)
'''

_PYPROJECT = """[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "{dist}"
version = "1.0.0"
description = "HEAR 2021 API encoder {method} (seed {seed}) exported by mscol-bench"
requires-python = ">=3.11"
# The functions are the harness's own (benchmark.evaluation.hear_export): install the
# mscol-bench checkout first (pip install /path/to/mscol-bench).
dependencies = ["mscol-bench", "torch", "torchaudio", "efficientnet_pytorch"]

[tool.setuptools]
packages = ["{name}"]

[tool.setuptools.package-data]
{name} = ["model.pt", "config.json"]
"""


def export_hear(
    ctx: Context,
    method: str,
    seed: int,
    out_dir: Path,
    name: str = "",
    hop_frames: int | None = None,
) -> Path:
    """Write the HEAR module of the finished pre-training of ``method`` / ``seed`` (under
    ``ctx``'s config) into ``out_dir``; returns the package folder.

    ``name``: the import name (default ``mscol_<method>_s<seed>``); ``hop_frames``: the
    window hop (default the crop, 98 frames: the harness's test windows).
    Raises :class:`UserError` for a bad name, a method without pre-training or an ``out_dir``
    holding other files, :class:`~benchmark.errors.StageError` when the run is not finished.
    """
    cfg = ctx.cfg
    name = name or re.sub(r"[^a-z0-9_]", "_", f"mscol_{method}_s{seed}".lower())
    if not _NAME.fullmatch(name):
        raise UserError(f"--name {name!r}: a module name is lower-case letters, digits and _")
    hop = hop_frames or cfg.frontend.crop_frames
    if hop < 1:
        raise UserError(f"--hop-frames must be >= 1, got {hop}")
    model = run_pretrain(ctx, method, seed, build_sources=False, find_only=True)
    if model.final_path is None:
        raise UserError(f"{method} has no pre-trained weights to export")
    out_dir = Path(out_dir)
    package = out_dir / name
    if out_dir.exists() and any(out_dir.iterdir()):
        if not (out_dir / "pyproject.toml").is_file() or not package.is_dir():
            raise UserError(f"{out_dir} is not empty; choose an empty or new folder")
        shutil.rmtree(package)  # a previous export of the same name: replaced
    package.mkdir(parents=True)
    shutil.copyfile(model.final_path, package / "model.pt")
    config = {
        "encoder": to_dict(cfg.encoder),
        "frontend": to_dict(cfg.frontend),
        "hop_frames": hop,
        "method": method,
        "seed": seed,
        "pretrain_key": model.key,
        "harness_commit": git_commit(),
    }
    atomic_write_text(package / "config.json", json.dumps(config, indent=2, sort_keys=True))
    from benchmark.evaluation.hear_export import load_model

    dim = load_model(package / "model.pt", package / "config.json").scene_embedding_size
    fields = dict(
        method=method, seed=seed, key=model.key, commit=config["harness_commit"], hop=hop,
        dim=dim, name=name, dist=name.replace("_", "-"),
    )  # fmt: skip
    atomic_write_text(package / "__init__.py", _INIT.format(**fields))
    atomic_write_text(out_dir / "pyproject.toml", _PYPROJECT.format(**fields))
    for path in (out_dir / "pyproject.toml", *package.iterdir()):
        path.chmod(0o644)  # atomic writes make private files; a package is read by others
    return package
