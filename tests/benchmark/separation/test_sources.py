"""Stage ``separate``'s per-clip work: the silence rule as production applies it, and the
separator built once per build, on first use."""

from __future__ import annotations

import numpy as np

from benchmark.config import FrontEndConfig, SeparationConfig
from benchmark.data.features import excerpt_spans
from benchmark.separation import sources


def test_silence_flags_on_constructed_wave():
    excerpt = 1000
    levels = [0.0, 0.005, 0.01, 0.0101, 0.5]
    signs = np.where(np.arange(excerpt) % 2 == 0, 1.0, -1.0)  # mean |a| = level exactly
    wave = np.concatenate([level * signs for level in levels] + [np.ones(300)]).astype(np.float32)
    spans = [(k * excerpt, (k + 1) * excerpt) for k in range(len(levels))]
    assert sources.silence_flags(wave, spans, threshold=0.01) == [True, True, True, False, False]
    # a loud sample inside an otherwise silent excerpt raises its mean above the threshold
    wave[10] = 20.0
    assert sources.silence_flags(wave, spans[:1], threshold=0.01) == [False]
    assert sources.silence_flags(wave, [], threshold=0.01) == []


def test_silence_flags_follow_the_overlapping_spans_of_the_front_end():
    cfg = FrontEndConfig()
    spans = excerpt_spans(10 * cfg.sample_rate, cfg)
    assert len(spans) == 2 and spans[0][1] > spans[1][0]  # each excerpt reads one window more
    wave = np.zeros(10 * cfg.sample_rate, dtype=np.float32)
    wave[spans[1][0] : spans[0][1]] = 1.0  # loud only where the two spans overlap
    overlap = spans[0][1] - spans[1][0]
    threshold = 0.5 * overlap / (spans[0][1] - spans[0][0])
    assert sources.silence_flags(wave, spans, threshold) == [False, False]


def test_the_separator_is_built_on_first_use_and_once(monkeypatch):
    built = []

    def fake_build(sep_cfg, stems_root=None):
        built.append((sep_cfg, stems_root))
        return object()

    monkeypatch.setattr(sources, "build_separator", fake_build)
    lazy = sources.SeparatorOnFirstUse(SeparationConfig(separator="random_mask"), None)
    assert built == []  # a build whose shards are all finished never loads the model
    first = lazy()
    assert lazy() is first and len(built) == 1


def test_sources_key_follows_the_weights_not_the_model_folder(tmp_path):
    """The same trained weights in another folder (another runs folder, a moved cache) give
    the same sources, hence the same pre-training keys; other weights give other sources."""
    from dataclasses import replace

    cfg, sep = FrontEndConfig(), SeparationConfig()
    here = replace(sep, umx_model="/runs/a/cache/separators/umx-1")
    there = replace(sep, umx_model="/elsewhere/cache/separators/umx-2")
    root = sources.sources_root(tmp_path, "mtat", cfg, here, "digest", "v1")
    assert sources.sources_root(tmp_path, "mtat", cfg, there, "digest", "v1") == root
    assert sources.sources_root(tmp_path, "mtat", cfg, here, "other", "v1") != root
    # without an identity the model's name is what identifies it
    umxhq, umxl = replace(sep, umx_model="umxhq"), replace(sep, umx_model="umxl")
    assert sources.sources_root(tmp_path, "mtat", cfg, umxhq) != sources.sources_root(
        tmp_path, "mtat", cfg, umxl
    )
