"""The HEAR 2021 API out: what a module written by ``python -m benchmark export-hear`` runs.

The exported package holds the pre-trained weights (``model.pt``, the run's ``final.pt``) and
``config.json`` (front end, encoder, timestamp hop); its ``__init__.py`` hands them to the
functions here, which are the harness's own code paths, so the module embeds exactly as the
harness does:

* audio ``(n_sounds, n_samples)`` float32 at 16 kHz (``model.sample_rate``; hear-eval-kit
  resamples for the caller), each sound whole-clip L2-normalised, then the harness's log-mel
  (:class:`benchmark.data.audio.LogMel`), rounded to float16 as the feature store keeps it
  (what the encoder saw in pre-training and in the harness's own embedding);
* windows of 98 frames (~1 s) every ``hop_frames`` frames (default 98: the harness's
  validation and test windows), sounds shorter than one window padded with the log-mel of
  silence; each window through the frozen encoder (:meth:`ContrastiveModel.features`, the
  pooled feature the probes read);
* timestamps: the centre of each window, in ms; the scene embedding of a sound is the mean of
  its window embeddings.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from benchmark.config import EncoderConfig, FrontEndConfig
from benchmark.data.audio import LogMel
from benchmark.pretrain.encoder import ContrastiveModel
from benchmark.pretrain.loop import load_encoder

BATCH_WINDOWS = 256  # windows per encoder pass


class ExportedEncoder(torch.nn.Module):
    """A pre-trained encoder with the harness's front end, as the HEAR API's ``model``.

    Attributes ``sample_rate`` (Hz), ``scene_embedding_size`` and ``timestamp_embedding_size``
    (the encoder's feature size) are the HEAR API's; ``hop_frames`` is the window hop.
    """

    def __init__(self, model: ContrastiveModel, frontend: FrontEndConfig, hop_frames: int):
        super().__init__()
        if hop_frames < 1:
            raise ValueError(f"hop_frames must be >= 1, got {hop_frames}")
        self.encoder_model = model.eval()
        self.logmel = LogMel(frontend)
        self.frontend = frontend
        self.hop_frames = hop_frames
        self.sample_rate = frontend.sample_rate
        self.scene_embedding_size = model.feature_dim
        self.timestamp_embedding_size = model.feature_dim


def load_model(model_file_path: str | Path, config_path: str | Path) -> ExportedEncoder:
    """The exported encoder: weights from ``model_file_path``, settings from ``config_path``
    (``{"encoder": ..., "frontend": ..., "hop_frames": ...}``), on the CPU in eval mode
    (move it with ``.to(device)``). Raises ``FileNotFoundError`` for a missing file."""
    config = json.loads(Path(config_path).read_text())
    encoder = EncoderConfig(**config["encoder"])
    frontend = FrontEndConfig(**config["frontend"])
    model = load_encoder(encoder, Path(model_file_path), torch.device("cpu"))
    return ExportedEncoder(model, frontend, int(config["hop_frames"])).eval()


def _check_audio(audio: torch.Tensor) -> None:
    if not isinstance(audio, torch.Tensor) or audio.dim() != 2:
        raise ValueError(f"audio must be a (n_sounds, n_samples) tensor, got {type(audio)}")


@torch.no_grad()
def get_timestamp_embeddings(
    audio: torch.Tensor, model: ExportedEncoder
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(n_sounds, n_samples)`` -> embeddings ``(n_sounds, n_windows, D)`` float32 and
    timestamps ``(n_sounds, n_windows)`` in ms (window centres). Raises ``ValueError`` for
    audio that is not 2-D."""
    _check_audio(audio)
    f = model.frontend
    device = next(model.encoder_model.parameters()).device
    audio = audio.to(device=device, dtype=torch.float32)
    # Float16, as the feature store holds every log-mel the encoder has seen.
    mel = model.logmel(audio).half().float()  # (n, frames, n_mels)
    frames = mel.shape[1]
    if frames < f.crop_frames:
        silence = math.log(f.log_offset)  # the log-mel of silence
        mel = torch.nn.functional.pad(mel, (0, 0, 0, f.crop_frames - frames), value=silence)
        frames = f.crop_frames
    starts = torch.arange(0, frames - f.crop_frames + 1, model.hop_frames, device=device)
    index = starts[:, None] + torch.arange(f.crop_frames, device=device)  # (W, crop)
    windows = mel[:, index]  # (n, W, crop, n_mels)
    n, w = windows.shape[:2]
    flat = windows.reshape(n * w, f.crop_frames, f.n_mels)
    feats = torch.cat(
        [
            model.encoder_model.features(flat[i : i + BATCH_WINDOWS])
            for i in range(0, len(flat), BATCH_WINDOWS)
        ]
    )
    centre = (
        starts.double() * f.hop_length + ((f.crop_frames - 1) * f.hop_length + f.win_length) / 2
    )
    timestamps = (1000.0 * centre / f.sample_rate).float().expand(n, -1)
    return feats.reshape(n, w, -1).float(), timestamps


@torch.no_grad()
def get_scene_embeddings(audio: torch.Tensor, model: ExportedEncoder) -> torch.Tensor:
    """``(n_sounds, n_samples)`` -> ``(n_sounds, D)``: the mean of the window embeddings."""
    embeddings, _ = get_timestamp_embeddings(audio, model)
    return embeddings.mean(dim=1)
