"""Every registered method: pairs of the right shape and content, and the paper's rules."""

import numpy as np
import pytest

from methods import ABLATIONS, METHODS, get_method
from tests.fixtures import SILENCE, make_corpus

PRETRAINED = [name for name, m in METHODS.items() if m.pretrained]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def test_registry_keys_match_names_and_ablations_exist():
    for key, method in METHODS.items():
        assert method.name == key
    assert set(ABLATIONS) == {
        "msa_multi_no_silence",
        "msa_multi_mixed_batches",
        "msa_multi_plain_loss",
        "msa_multi_no_shift",
    }
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        get_method("nope")


@pytest.mark.parametrize("name", PRETRAINED)
def test_batches_have_the_right_shape_and_are_deterministic(corpus, name):
    method = METHODS[name]
    a = method.sample(corpus, 16, np.random.default_rng(3))
    b = method.sample(corpus, 16, np.random.default_rng(3))
    assert a.anchors.shape == a.positives.shape == (16, 98, 64)
    assert a.silent.shape == (16,)
    np.testing.assert_array_equal(a.anchors.numpy(), b.anchors.numpy())
    np.testing.assert_array_equal(a.positives.numpy(), b.positives.numpy())


def _which_excerpt(corpus, crop, atol=0.0):
    """Find (excerpt, start) of a mixture crop by brute force: the naive reference."""
    for e in range(len(corpus)):
        base = corpus.excerpt_index[e] * 392
        frames = corpus.mix.frames(int(corpus.mix_rows[e]), base, 392).astype(np.float32)
        for s in range(392 - 98 + 1):
            if np.allclose(frames[s : s + 98], crop, atol=atol, rtol=0):
                return e, s
    raise AssertionError("crop not found in any excerpt")


def test_cola_pairs_come_from_the_same_excerpt(corpus):
    batch = METHODS["cola"].sample(corpus, 6, np.random.default_rng(0))
    for a, p in zip(batch.anchors.numpy(), batch.positives.numpy(), strict=True):
        assert _which_excerpt(corpus, a)[0] == _which_excerpt(corpus, p)[0]
    assert not batch.silent.any()


def test_msa_positive_is_the_source_of_the_same_excerpt(corpus):
    offsets = {"bass": 0.5, "drums": 1.0, "vocals": 1.5, "other": 2.0}  # see tests/fixtures.py
    for seed in range(6):
        batch = METHODS["msa_multi"].sample(corpus, 8, np.random.default_rng(seed))
        for a, p, silent in zip(
            batch.anchors.numpy(), batch.positives.numpy(), batch.silent.numpy(), strict=True
        ):
            e, _ = _which_excerpt(corpus, a)
            if silent:
                assert np.all(p == SILENCE)
                assert corpus.silent[batch.source][e]
            else:
                # positive = mixture crop (same excerpt, any start) + the source's offset
                e2, _ = _which_excerpt(corpus, p - offsets[batch.source], atol=2e-2)  # float16
                assert e2 == e


def test_single_source_batches_and_silence_fraction(corpus):
    method = METHODS["msa_multi"]
    sources, with_silent_allowed = set(), 0
    for seed in range(200):
        batch = method.sample(corpus, 12, np.random.default_rng(seed))
        sources.add(batch.source)
        with_silent_allowed += bool(batch.silent.any())
    assert sources == {"bass", "drums", "vocals", "other"}
    # Silent positives only in the "all excerpts" half of the batches (about a third of the
    # excerpts are silent per source in the fixture, so such a batch almost surely has one).
    assert 70 <= with_silent_allowed <= 130


def test_source_targeted_and_no_silence_variants(corpus):
    for seed in range(30):
        b = METHODS["msa_vocals"].sample(corpus, 8, np.random.default_rng(seed))
        assert b.source == "vocals"
        assert (
            not METHODS["msa_multi_no_silence"]
            .sample(corpus, 8, np.random.default_rng(seed))
            .silent.any()
        )


def test_no_shift_ablation_uses_the_anchor_position(corpus):
    batch = METHODS["msa_multi_no_shift"].sample(corpus, 8, np.random.default_rng(1))
    for a, p, silent in zip(
        batch.anchors.numpy(), batch.positives.numpy(), batch.silent.numpy(), strict=True
    ):
        if not silent:
            diff = p - a
            assert np.allclose(diff, diff.flat[0], atol=2e-2)  # same frames, constant offset


def test_mixed_batches_mix_source_types(corpus):
    batch = METHODS["msa_multi_mixed_batches"].sample(corpus, 32, np.random.default_rng(0))
    assert batch.source is None


def test_msa_without_sources_is_a_clear_error(tmp_path):
    corpus = make_corpus(tmp_path, sources=False)
    with pytest.raises(ValueError, match="separate"):
        METHODS["msa_multi"].sample(corpus, 4, np.random.default_rng(0))


def test_mws_changes_crops_but_not_shapes(corpus):
    plain = METHODS["cola"].sample(corpus, 16, np.random.default_rng(5))
    aug = METHODS["cola_mws"].sample(corpus, 16, np.random.default_rng(5))
    assert aug.anchors.shape == plain.anchors.shape
    assert (aug.anchors == 0).any()  # some crop got a mask or a shift filled with zeros


def test_the_separator_study_varies_only_the_separator_of_msa_multi():
    from methods import SEPARATOR_STUDY

    base = METHODS["msa_multi"].params()
    separators = set()
    for name in SEPARATOR_STUDY:
        params = METHODS[name].params()
        separators.add(params.pop("separator"))
        assert {k: v for k, v in params.items() if k != "name"} == {
            k: v for k, v in base.items() if k not in ("name", "separator")
        }
    assert separators == {"random_mask", "trained:0.25", "config", "oracle"}
