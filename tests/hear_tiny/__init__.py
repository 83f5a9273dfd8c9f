"""A tiny external encoder implementing the HEAR 2021 API, for tests and the README walkthrough.

Embedding: log-mel frames (32 bands, 25-ms window, 50-ms hop) times a fixed random projection
to 16 dimensions. ``load_model(model_file_path)`` reads the projection's seed from the file
(a text file holding an integer), or uses seed 0 without one. It learns nothing: on a task it
scores what a fixed linear view of the spectrum allows, a floor for real encoders.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchaudio

SAMPLE_RATE = 16000  # Hz
HOP_MS = 50  # one timestamp every 50 ms (hear-eval-kit's largest recommended hop)
EMBEDDING_SIZE = 16
N_MELS = 32


class TinyModel(torch.nn.Module):
    """Log-mel frames times a fixed random ``(32, 16)`` projection."""

    sample_rate = SAMPLE_RATE
    scene_embedding_size = EMBEDDING_SIZE
    timestamp_embedding_size = EMBEDDING_SIZE

    def __init__(self, seed: int = 0):
        super().__init__()
        self.mel = torchaudio.transforms.MelSpectrogram(
            SAMPLE_RATE, n_fft=400, hop_length=SAMPLE_RATE * HOP_MS // 1000, n_mels=N_MELS
        )
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("projection", torch.randn(N_MELS, EMBEDDING_SIZE, generator=generator))

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """``(n, samples)`` -> ``(n, frames, 16)``; frame ``t`` is centred at ``t`` hops."""
        mel = torch.log(self.mel(audio) + 1e-6).transpose(1, 2)  # (n, frames, 32)
        return mel @ self.projection


def load_model(model_file_path: str = "") -> TinyModel:
    """The model; ``model_file_path``: a text file holding the projection's integer seed."""
    seed = int(Path(model_file_path).read_text().strip()) if model_file_path else 0
    return TinyModel(seed).eval()


def get_timestamp_embeddings(audio: torch.Tensor, model: TinyModel):
    """``(n, samples)`` float32 -> embeddings ``(n, T, 16)``, timestamps ``(n, T)`` in ms."""
    embeddings = model(audio)
    steps = torch.arange(embeddings.shape[1], dtype=torch.float32, device=audio.device)
    timestamps = (steps * HOP_MS).expand(audio.shape[0], -1)
    return embeddings, timestamps


def get_scene_embeddings(audio: torch.Tensor, model: TinyModel) -> torch.Tensor:
    """``(n, samples)`` -> ``(n, 16)``: the mean of the timestamp embeddings."""
    return model(audio).mean(dim=1)
