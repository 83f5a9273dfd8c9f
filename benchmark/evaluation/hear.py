"""The HEAR 2021 API in: an installed module's encoder embedded like a native one.

A HEAR module (https://hearbenchmark.com, "Common API") provides ``load_model(
model_file_path="")``, ``get_scene_embeddings(audio, model)`` and
``get_timestamp_embeddings(audio, model)``; the model carries ``sample_rate`` (Hz),
``scene_embedding_size`` and ``timestamp_embedding_size``. ``audio`` is a float32 tensor
``(n_sounds, n_samples)`` at the model's rate; timestamp embeddings come back as
``(n_sounds, n_timestamps, D)`` with timestamps ``(n_sounds, n_timestamps)`` in milliseconds.

Window protocol (how the harness's windows map onto a HEAR model): the harness embeds every
98-frame window of a clip (10-ms hop, 400-sample frames: samples ``[160 s, 160 s + 15,920)``
at 16 kHz for the window starting at frame ``s``, i.e. ``[10 s, 10 s + 995)`` ms) and
averages the probe's predictions per clip. For a HEAR model the clip is decoded at the
model's rate and passed whole to ``get_timestamp_embeddings``; a window's embedding is the
mean of the timestamp embeddings whose timestamps fall within its span (the nearest one
when none does). The model thus sees the clip as it would in hear-eval-kit (its own framing
and normalisation), and the probes see one embedding per harness window, as for native
encoders. A module exported by ``export-hear`` places one timestamp at the centre of each
98-frame window, so at its default hop this reproduces the native windows exactly.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import logging
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch

from benchmark.config import FrontEndConfig, stable_hash
from benchmark.data.audio import load_audio
from benchmark.errors import StageError
from benchmark.io import file_digest, pick_device

log = logging.getLogger(__name__)

FUNCTIONS = ("load_model", "get_scene_embeddings", "get_timestamp_embeddings")
ATTRIBUTES = ("sample_rate", "scene_embedding_size", "timestamp_embedding_size")


def import_hear_module(name: str):
    """Import the module ``name`` and check that it has the HEAR API's three functions.

    Raises :class:`StageError` naming the module and the fix when it cannot be imported or
    lacks a function."""
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        raise StageError(
            f"hear:{name}: cannot import module {name!r} ({exc}); pip install it or put its "
            "folder on PYTHONPATH"
        ) from None
    missing = [f for f in FUNCTIONS if not callable(getattr(module, f, None))]
    if missing:
        raise StageError(
            f"hear:{name}: module {module.__name__} lacks the HEAR function(s) {', '.join(missing)}"
        )
    return module


def load_hear_model(name: str, model_file: str = ""):
    """``(module, model)``: the module's ``load_model(model_file)``, its attributes checked.

    Raises :class:`StageError` for a model without ``sample_rate`` /
    ``scene_embedding_size`` / ``timestamp_embedding_size`` or with non-positive values."""
    module = import_hear_module(name)
    model = module.load_model(model_file) if model_file else module.load_model()
    for attribute in ATTRIBUTES:
        value = getattr(model, attribute, None)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise StageError(
                f"hear:{name}: the model's {attribute} is {value!r}; the HEAR API needs a "
                "positive number"
            )
    return module, model


def module_identity(name: str, model_file: str = "") -> dict:
    """What identifies an external encoder's embeddings: module name, its distribution's
    version, a digest of the module's files (a local module edited in place changes it) and
    of the model file. Raises :class:`StageError` when the module cannot be imported."""
    module = import_hear_module(name)
    files = _module_files(module)
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        digest.update(_file_digest(path).encode())
    top = name.partition(".")[0]
    distributions = importlib.metadata.packages_distributions().get(top, [])
    version = ""
    if distributions:
        version = f"{distributions[0]} {importlib.metadata.version(distributions[0])}"
    version = version or str(getattr(module, "__version__", "unversioned"))
    model_digest = _file_digest(Path(model_file)) if model_file else ""
    return {
        "module": name,
        "version": version,
        "files": digest.hexdigest()[:16],
        "model_file": model_file,
        "model_digest": model_digest,
        "location": str(Path(module.__file__).parent if module.__file__ else ""),
    }


def _module_files(module) -> list[Path]:
    """The module's own files: the package folder's (weights included) or the module file."""
    if not module.__file__:
        return []
    path = Path(module.__file__)
    if path.name != "__init__.py":
        return [path]
    return sorted(p for p in path.parent.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def _file_digest(path: Path) -> str:
    return file_digest(path)[:16]


def identity_key(identity: dict) -> str:
    """The content key of an external encoder (joins its embeddings' cache key)."""
    return stable_hash({k: v for k, v in identity.items() if k != "location"})


def window_spans_ms(starts: np.ndarray, cfg: FrontEndConfig) -> tuple[np.ndarray, np.ndarray]:
    """``(begin, end)`` in ms of the ``crop_frames`` windows starting at frames ``starts``."""
    hop_ms = 1000.0 * cfg.hop_length / cfg.sample_rate
    width_ms = 1000.0 * ((cfg.crop_frames - 1) * cfg.hop_length + cfg.win_length) / cfg.sample_rate
    begin = np.asarray(starts, dtype=np.float64) * hop_ms
    return begin, begin + width_ms


def pool_windows(
    embeddings: np.ndarray, timestamps: np.ndarray, begin: np.ndarray, end: np.ndarray
) -> np.ndarray:
    """Per window ``[begin, end)`` ms: the mean of the timestamp ``embeddings`` ``(T, D)``
    whose ``timestamps`` ``(T,)`` fall inside, else the one nearest the window's centre.
    Returns ``(W, D)`` float32."""
    out = np.empty((len(begin), embeddings.shape[1]), dtype=np.float32)
    for w, (b, e) in enumerate(zip(begin, end, strict=True)):
        inside = (timestamps >= b) & (timestamps < e)
        if inside.any():
            out[w] = embeddings[inside].mean(axis=0)
        else:
            out[w] = embeddings[int(np.argmin(np.abs(timestamps - (b + e) / 2)))]
    return out


class HearEmbedder:
    """Window embeddings of clips through a HEAR module (see the module docstring).

    ``__call__(path, starts, span)`` decodes the clip (``span`` of the file in seconds, or
    all of it) at the model's rate and returns ``(W, D)`` float32, one row per window start
    (frames). Raises :class:`StageError` when the module
    returns arrays of the wrong shape or non-finite values.
    """

    def __init__(self, name: str, model_file: str, frontend: FrontEndConfig, device=None):
        self.name = name
        self.module, self.model = load_hear_model(name, model_file)
        self.frontend = frontend
        self.device = device or pick_device()
        if isinstance(self.model, torch.nn.Module):
            self.model = self.model.to(self.device).eval()
        self.sample_rate = int(self.model.sample_rate)
        self.dim = int(self.model.timestamp_embedding_size)

    def __call__(self, path: Path, starts: np.ndarray, span=None) -> np.ndarray:
        wave = load_audio(path, self.sample_rate, span)
        audio = torch.from_numpy(wave[None]).to(self.device)
        with torch.inference_mode():
            embeddings, timestamps = self.module.get_timestamp_embeddings(audio, self.model)
        embeddings = _numpy(embeddings)
        timestamps = _numpy(timestamps)
        if embeddings.ndim != 3 or embeddings.shape[:1] != (1,) or embeddings.shape[2] != self.dim:
            raise StageError(
                f"hear:{self.name}: get_timestamp_embeddings returned embeddings of shape "
                f"{embeddings.shape}; expected (1, n_timestamps, {self.dim})"
            )
        if timestamps.shape != embeddings.shape[:2] or embeddings.shape[1] == 0:
            raise StageError(
                f"hear:{self.name}: timestamps of shape {timestamps.shape} for embeddings of "
                f"shape {embeddings.shape}; expected (1, n_timestamps) with n_timestamps > 0"
            )
        if not np.isfinite(embeddings).all():
            raise StageError(f"hear:{self.name}: non-finite embeddings for {path}")
        begin, end = window_spans_ms(starts, self.frontend)
        return pool_windows(embeddings[0], timestamps[0].astype(np.float64), begin, end)


def _numpy(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().float().cpu().numpy()
    return np.asarray(value, dtype=np.float32)


def embed_clips(
    embedder: Callable[..., np.ndarray],
    clip_ids: list[str],
    starts: list[np.ndarray],
    audio: Mapping,
    progress: Callable | None = None,
) -> np.ndarray:
    """Concatenated window embeddings of every clip ``(sum W, D)`` in the given order;
    ``audio``: clip id -> an item with ``path`` and ``span`` (an ``AudioItem``).

    Raises :class:`StageError` when a clip has no audio."""
    rows = []
    for clip_id, clip_starts in zip(clip_ids, starts, strict=True):
        if clip_id not in audio:
            raise StageError(f"no audio file known for clip {clip_id}: cannot embed it externally")
        item = audio[clip_id]
        rows.append(embedder(Path(item.path), clip_starts, item.span))
        if progress is not None:
            progress()
    return np.concatenate(rows) if rows else np.zeros((0, 0), dtype=np.float32)
