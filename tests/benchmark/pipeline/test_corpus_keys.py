"""The synthetic corpus's size and seed join every key its data enters: corpora of another
size or seed have the same clip ids and other audio, so they must not share a feature store,
separated sources, a trained separator or a pre-training run (nor, through those, embeddings,
tuned parameters or probes). Keys only: no corpus is generated."""

from __future__ import annotations

from benchmark.config import resolve
from benchmark.data.features import mixture_root
from benchmark.pipeline import stages
from benchmark.pretrain.loop import pretrain_key
from benchmark.separation.sources import sources_root
from methods import get_method


def _keys(runs, *overrides) -> dict:
    """The store folders and pre-training keys a smoke-profile run of ``overrides`` would use
    on the synthetic corpus (as :func:`stages.pair_corpora` and ``sources_ready`` form them)."""
    cfg = resolve("smoke", [*overrides, f"paths.runs_dir={runs}"])
    paths = stages.synthetic_layout(cfg)
    mix = mixture_root(cfg.cache_dir, "mtat", cfg.frontend, paths.corpus_version)
    out = {"mix": mix.name, "separator": stages.trained_separator_dir(cfg, paths).name}
    for separator in ("oracle", "random_mask"):  # identities that do not depend on the corpus
        sep = stages.separation_for(cfg, separator)
        src = sources_root(
            cfg.cache_dir, "mtat", cfg.frontend, sep, separator, paths.corpus_version
        )
        out[f"src-{separator}"] = src.name
        identity = mix.name + "|" + src.name  # pair_corpora's data identity (MTAT pre-training)
        out[f"pretrain-msa-{separator}"] = pretrain_key(cfg, get_method("msa_multi"), 0, identity)
    out["pretrain-cola"] = pretrain_key(cfg, get_method("cola"), 0, mix.name)
    return out


def test_synthetic_corpora_of_another_seed_or_size_share_no_key(tmp_path):
    base = _keys(tmp_path)
    assert _keys(tmp_path) == base  # the same configuration finds its work again
    for other in ("data.synth_seed=1", "data.synth_size=7"):
        keys = _keys(tmp_path, other)
        same = [name for name in base if keys[name] == base[name]]
        assert not same, f"{other} shares {same} with the default corpus"


def test_real_data_keys_carry_no_corpus_version(tmp_path):
    cfg = resolve("smoke", ["data.source=real", f"paths.runs_dir={tmp_path}"])
    assert stages.prepare_data(cfg, progress=False).corpus_version == ""


def test_a_moved_runs_folder_keeps_every_key(tmp_path):
    """Keys name content, not places: a runs folder moved or copied elsewhere (another disk,
    a cluster's shared filesystem) finds its trained separator, stores and runs again."""
    here, there = _keys(tmp_path / "a"), _keys(tmp_path / "elsewhere" / "b")
    assert here == there
