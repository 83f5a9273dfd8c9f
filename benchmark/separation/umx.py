"""Open-Unmix separation (paper: sources from Open-Unmix), pretrained or from a local directory.

Two kinds of model, both run through the package's own ``openunmix.model.Separator``:

- a pretrained name (``umxhq``, ``umxl``, ``umx``): the package's hub loader
  (``openunmix.umxhq(...)``) builds the model and downloads the weights from Zenodo into the
  torch hub cache. The package calls ``torch.hub.load_state_dict_from_url`` with torch's
  default ``weights_only=False``; :func:`_safe_hub_loading` makes that call use
  ``weights_only=True`` and check the SHA-256 prefix in the file name, so a tampered cached
  file is refused rather than unpickled. Offline, the download fails and a
  :class:`SeparationError` says so and names the alternatives.
- a local model directory in the package's training format (what ``scripts/train.py`` of
  open-unmix and :func:`benchmark.separation.train_separator` write): ``separator.json``
  (``nfft``, ``nhop``, ``sample_rate``, ``nb_channels``), and per target ``<target>.json``
  (hyper-parameters under ``args``) plus ``<target>.pth`` (a plain state dict). The package's
  ``load_target_models`` unpickles with torch's defaults and ignores ``nb_layers`` and
  ``unidirectional``, so :func:`load_local_umx` reads the directory itself, always with
  ``weights_only=True``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import pickle
import threading
from pathlib import Path

import numpy as np
import openunmix
import torch
import torchaudio
from openunmix.model import OpenUnmix
from openunmix.model import Separator as UnmixSeparator

from benchmark.config import SeparationConfig
from benchmark.errors import CheckpointError
from benchmark.io import load_weights, pick_device
from benchmark.separation.base import SAMPLE_RATE, SOURCES, SeparationError, Separator, check_wave

PRETRAINED_MODELS = ("umxhq", "umxl", "umx")  # package hub models with the four targets
WIENER_WIN_LEN = 300  # frames per independent Wiener-filter block (package default)
SEPARATOR_CONF = "separator.json"  # the package's name for the STFT settings of a local model

_HUB_LOCK = threading.Lock()


@contextlib.contextmanager
def _safe_hub_loading():
    """Make ``torch.hub.load_state_dict_from_url`` refuse pickled code while the block runs.

    The package's hub loaders call that function without ``weights_only``; this swaps in a
    wrapper that forces ``weights_only=True`` and ``check_hash=True`` (the package's file
    names carry a SHA-256 prefix). The swap is process-wide, hence the lock.
    """
    original = torch.hub.load_state_dict_from_url

    def load_safely(url, *args, **kwargs):
        kwargs["weights_only"] = True
        kwargs["check_hash"] = True
        return original(url, *args, **kwargs)

    with _HUB_LOCK:
        torch.hub.load_state_dict_from_url = load_safely
        try:
            yield
        finally:
            torch.hub.load_state_dict_from_url = original


def load_pretrained_umx(
    name: str, niter: int, device=None, targets: tuple[str, ...] = SOURCES
) -> UnmixSeparator:
    """Open-Unmix pretrained separator ``name`` through the package's hub loader.

    Downloads the weights (or reuses the torch hub cache), loading them with
    ``weights_only=True``. Returns a frozen ``openunmix.model.Separator`` running at 44.1 kHz
    on stereo input, with the targets in the order given.
    Raises :class:`SeparationError` for an unknown name, a failed download (offline) or
    weights that hold more than tensors.
    """
    if name not in PRETRAINED_MODELS:
        raise SeparationError(
            f"unknown Open-Unmix model '{name}': neither a pretrained name "
            f"({', '.join(PRETRAINED_MODELS)}) nor an existing model directory"
        )
    device = pick_device() if device is None else torch.device(device)
    loader = getattr(openunmix, name)
    try:
        with _safe_hub_loading():
            separator = loader(
                targets=list(targets),
                niter=niter,
                device=device,
                pretrained=True,
                wiener_win_len=WIENER_WIN_LEN,
            )
    except pickle.UnpicklingError:
        # torch's message would suggest weights_only=False, the unsafe way out: not repeated.
        raise SeparationError(
            f"Open-Unmix '{name}': refusing the cached weights, they contain pickled code, not "
            f"only tensors; delete them from {torch.hub.get_dir()}/checkpoints"
        ) from None
    except Exception as exc:  # urllib, http, ssl and hash errors all mean "no usable weights"
        raise SeparationError(
            f"Open-Unmix '{name}': pretrained weights could not be downloaded "
            f"({type(exc).__name__}: {exc}). Without internet, train a small local model with "
            f"`python -m benchmark train-separator` or set separation.umx_model=<model dir> "
            f"(a directory with separator.json, <target>.json and <target>.pth)"
        ) from None
    separator.freeze()
    return separator


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise SeparationError(f"Open-Unmix model dir {path.parent}: missing {path.name} ({what})")
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        raise SeparationError(f"Open-Unmix model file {path}: unreadable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise SeparationError(f"Open-Unmix model file {path}: expected a JSON object")
    return data


def read_separator_conf(model_dir: Path) -> dict:
    """The STFT settings of a local model: ``{nfft, nhop, sample_rate, nb_channels}``."""
    path = Path(model_dir) / SEPARATOR_CONF
    conf = _read_json(path, "STFT settings")
    missing = [k for k in ("nfft", "nhop", "sample_rate", "nb_channels") if k not in conf]
    if missing:
        raise SeparationError(f"Open-Unmix model file {path}: missing keys {missing}")
    return conf


def _weights_file(model_dir: Path, target: str) -> Path:
    """``<target>.pth``, or the hub-style ``<target>-<sha>.pth`` the package also accepts."""
    exact = model_dir / f"{target}.pth"
    if exact.is_file():
        return exact
    hashed = sorted(model_dir.glob(f"{target}-*.pth"))
    if len(hashed) == 1:
        return hashed[0]
    raise SeparationError(
        f"Open-Unmix model dir {model_dir}: expected one weights file {target}.pth "
        f"(or {target}-<hash>.pth), found {[p.name for p in hashed]}"
    )


def load_state_dict_safely(path: Path, device=None) -> dict[str, torch.Tensor]:
    """``torch.load(path, weights_only=True)``: tensors only, never pickled code.

    Raises :class:`SeparationError` naming the file when it holds anything else (code,
    custom classes) or is not a state dict of tensors.
    """
    try:
        state = load_weights(path, map_location=device or "cpu")
    except CheckpointError:
        raise SeparationError(
            f"Open-Unmix weights {path}: refused, it contains pickled code, not only tensors; "
            "it will not be loaded"
        ) from None
    except Exception as exc:  # torch raises RuntimeError/EOFError/... for damaged files
        raise SeparationError(f"Open-Unmix weights {path}: unreadable ({exc})") from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise SeparationError(f"Open-Unmix weights {path}: not a state dict of tensors")
    return state


# Fields of a model's JSON files that record how long training took, not what was trained.
TIMING_FIELDS = ("train_time_s",)


def model_identity(model_dir: Path, targets: tuple[str, ...] = SOURCES) -> str:
    """What identifies a local model directory's separations (16 hex digits): its STFT
    settings (``separator.json``), each target's hyper-parameters (``<target>.json`` without
    :data:`TIMING_FIELDS`) and weights file. Other files (``quality.json``, timings) do not
    count, so retraining the same model gives the same identity.

    Raises :class:`SeparationError` for a missing or malformed file.
    """
    model_dir = Path(model_dir).expanduser()
    digest = hashlib.sha256()

    def add(name: str, data: bytes) -> None:
        digest.update(f"{name}:{len(data)}:".encode())
        digest.update(data)

    add(SEPARATOR_CONF, _canonical(read_separator_conf(model_dir)))
    for target in targets:
        meta = _read_json(model_dir / f"{target}.json", f"hyper-parameters of {target}")
        add(f"{target}.json", _canonical({k: v for k, v in meta.items() if k not in TIMING_FIELDS}))
        add(f"{target}.pth", _weights_file(model_dir, target).read_bytes())
    return digest.hexdigest()[:16]


def _canonical(obj: dict) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def load_local_umx(
    model_dir: Path, targets: tuple[str, ...] = SOURCES, device=None
) -> dict[str, OpenUnmix]:
    """Load the per-target ``OpenUnmix`` models of a local model directory (package format).

    For each target reads ``<target>.json`` (``args.nfft``, ``args.nb_channels``,
    ``args.hidden_size``; optional ``args.nb_layers`` and ``args.unidirectional``) and the
    weights with ``weights_only=True``; ``max_bin`` is the length of ``input_mean`` as in the
    package's loader. Returns ``{target: frozen OpenUnmix on device}``.
    Raises :class:`SeparationError` naming the file for missing or malformed files and for
    weights that hold code or do not fit the architecture.
    """
    model_dir = Path(model_dir).expanduser()
    device = pick_device() if device is None else torch.device(device)
    if not model_dir.is_dir():
        raise SeparationError(f"Open-Unmix model dir {model_dir} does not exist")
    models = {}
    for target in targets:
        json_path = model_dir / f"{target}.json"
        args = _read_json(json_path, f"hyper-parameters of {target}").get("args")
        if not isinstance(args, dict) or not all(
            k in args for k in ("nfft", "nb_channels", "hidden_size")
        ):
            raise SeparationError(
                f"Open-Unmix model file {json_path}: needs args.nfft, args.nb_channels and "
                "args.hidden_size"
            )
        weights_path = _weights_file(model_dir, target)
        state = load_state_dict_safely(weights_path)
        if "input_mean" not in state:
            raise SeparationError(f"Open-Unmix weights {weights_path}: no input_mean tensor")
        model = OpenUnmix(
            nb_bins=int(args["nfft"]) // 2 + 1,
            nb_channels=int(args["nb_channels"]),
            hidden_size=int(args["hidden_size"]),
            nb_layers=int(args.get("nb_layers", 3)),
            unidirectional=bool(args.get("unidirectional", False)),
            max_bin=int(state["input_mean"].shape[0]),
        )
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise SeparationError(
                f"Open-Unmix weights {weights_path} do not fit {json_path}: {exc}"
            ) from None
        model.freeze()
        models[target] = model.to(device)
    return models


class UMXSeparator(Separator):
    """Open-Unmix as a :class:`Separator`: 16 kHz mono in, four 16 kHz mono sources out.

    Each batch: zero-pad to the longest clip, resample 16 kHz -> the model's rate
    (torchaudio), duplicate mono to the model's channel count, run the package's
    ``Separator`` (``niter`` EM steps of the multichannel Wiener filter; 0 = the model's
    magnitudes with the mixture phase), average the channels, resample back to 16 kHz and
    trim each clip to its own length. Clips are grouped longest first, so equal-length clips
    share a batch without padding; a shorter clip padded in a batch can differ in its last
    frames from its unbatched result (the LSTM is bidirectional). Runs in eval mode under
    ``torch.inference_mode``.
    """

    name = "umx"

    def __init__(
        self,
        separator: UnmixSeparator,
        model_rate: int,
        nb_channels: int,
        batch_size: int = 4,
        device=None,
        description: str = "",
    ):
        self.device = pick_device() if device is None else torch.device(device)
        self.separator = separator.to(self.device)
        self.separator.freeze()
        self.model_rate = int(model_rate)
        self.nb_channels = int(nb_channels)
        self.batch_size = max(1, int(batch_size))
        self.description = description
        self.targets = list(separator.target_models)
        missing = [s for s in SOURCES if s not in self.targets]
        if missing:
            raise SeparationError(f"Open-Unmix model {description}: no targets {missing}")

    def separate(self, wave: np.ndarray, clip_id: str) -> dict[str, np.ndarray]:
        return self.separate_batch([wave], [clip_id])[0]

    def separate_batch(
        self, waves: list[np.ndarray], clip_ids: list[str]
    ) -> list[dict[str, np.ndarray]]:
        if len(waves) != len(clip_ids):
            raise ValueError(f"{len(waves)} waveforms but {len(clip_ids)} clip ids")
        waves = [check_wave(w, c) for w, c in zip(waves, clip_ids, strict=True)]
        order = sorted(range(len(waves)), key=lambda i: -len(waves[i]))
        results: list[dict[str, np.ndarray] | None] = [None] * len(waves)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            try:
                outputs = self._run([waves[i] for i in chunk])
            except torch.OutOfMemoryError as exc:
                raise SeparationError(
                    f"Open-Unmix out of memory on clips {[clip_ids[i] for i in chunk]}; "
                    f"lower separation.batch_size ({exc})"
                ) from None
            for i, out in zip(chunk, outputs, strict=True):
                results[i] = out
        return results

    def _run(self, waves: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        longest = max(len(w) for w in waves)
        batch = np.zeros((len(waves), longest), dtype=np.float32)
        for row, w in enumerate(waves):
            batch[row, : len(w)] = w
        with torch.inference_mode():
            audio = torch.from_numpy(batch).to(self.device)
            audio = torchaudio.functional.resample(audio, SAMPLE_RATE, self.model_rate)
            audio = audio[:, None, :].expand(-1, self.nb_channels, -1).contiguous()
            estimates = self.separator(audio)  # (batch, targets, channels, samples)
            estimates = estimates.mean(dim=2)
            estimates = torchaudio.functional.resample(estimates, self.model_rate, SAMPLE_RATE)
            estimates = estimates.float().cpu().numpy()
        if estimates.shape[-1] < longest:  # resampling rounds lengths up; guard anyway
            pad = longest - estimates.shape[-1]
            estimates = np.pad(estimates, ((0, 0), (0, 0), (0, pad)))
        return [
            {
                s: np.ascontiguousarray(estimates[row, self.targets.index(s), : len(w)])
                for s in SOURCES
            }
            for row, w in enumerate(waves)
        ]


def build_umx(
    cfg: SeparationConfig, *, stems_root: Path | None = None, device=None
) -> UMXSeparator:
    """Registry factory: ``cfg.umx_model`` is a local model directory or a pretrained name.

    A local directory runs at the sample rate and channel count saved in its
    ``separator.json`` (``cfg.umx_sample_rate`` applies to pretrained models only).
    ``cfg.wiener`` selects one EM step of the Wiener filter (the package's default for
    its pretrained separators), otherwise none. Raises :class:`SeparationError`.
    """
    device = pick_device() if device is None else torch.device(device)
    niter = 1 if cfg.wiener else 0
    model_dir = Path(cfg.umx_model).expanduser()
    if model_dir.exists():
        conf = read_separator_conf(model_dir)
        models = load_local_umx(model_dir, SOURCES, device)
        separator = UnmixSeparator(
            target_models=models,
            niter=niter,
            sample_rate=float(conf["sample_rate"]),
            n_fft=int(conf["nfft"]),
            n_hop=int(conf["nhop"]),
            nb_channels=int(conf["nb_channels"]),
            wiener_win_len=WIENER_WIN_LEN,
        )
        return UMXSeparator(
            separator,
            model_rate=int(conf["sample_rate"]),
            nb_channels=int(conf["nb_channels"]),
            batch_size=cfg.batch_size,
            device=device,
            description=str(model_dir),
        )
    separator = load_pretrained_umx(cfg.umx_model, niter, device)
    return UMXSeparator(
        separator,
        model_rate=cfg.umx_sample_rate,
        nb_channels=2,  # the pretrained models are stereo
        batch_size=cfg.batch_size,
        device=device,
        description=cfg.umx_model,
    )
