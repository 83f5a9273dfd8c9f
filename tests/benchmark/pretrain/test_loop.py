"""The pre-training loop: determinism, exact resumption after SIGKILL, every method trains."""

import dataclasses
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from benchmark.config import resolve
from benchmark.pretrain.loop import is_complete, load_checkpoint, pretrain, pretrain_key
from methods import METHODS
from tests.fixtures import make_corpus

TINY = [
    "encoder.width_coefficient=0.1",
    "encoder.depth_coefficient=0.1",
    "pretrain.batch_size=4",
    "pretrain.num_workers=0",
    "pretrain.val_batches=1",
]

# Depth 0.5 (the default profile's) repeats blocks, so some MBConv blocks have a residual
# connection and therefore random drop connect: resumption must reproduce that randomness too
# (at depth 0.1 no block has a skip and drop connect never runs).
RESUMABLE = [*TINY, "encoder.depth_coefficient=0.5"]


def _has_drop_connect(cfg) -> bool:
    from benchmark.pretrain.loop import build_model

    blocks = build_model(cfg.encoder, 0, torch.device("cpu")).encoder.net._blocks
    return any(
        b.id_skip
        and b._block_args.stride in (1, [1])
        and b._block_args.input_filters == b._block_args.output_filters
        for b in blocks
    )


def _cfg(steps, *extra):
    return resolve("smoke", [*TINY, f"pretrain.steps={steps}", *extra])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"), num_clips=4)


def _weights(path):
    return torch.load(path, weights_only=True)


def test_same_seed_same_weights_and_workers_do_not_matter(tmp_path, corpus):
    m = METHODS["msa_multi"]
    runs = []
    for i, workers in enumerate([0, 2, 0]):
        cfg = _cfg(3, *RESUMABLE, f"pretrain.num_workers={workers}", "pretrain.checkpoint_every=3")
        assert _has_drop_connect(cfg)
        key = pretrain_key(cfg, m, 0, "fixture")
        res = pretrain(cfg, m, corpus, corpus, tmp_path / f"r{i}", key, seed=0, progress=False)
        runs.append(_weights(res.final_path))
    for name in runs[0]:
        torch.testing.assert_close(runs[0][name], runs[1][name], rtol=0, atol=0)
        torch.testing.assert_close(runs[0][name], runs[2][name], rtol=0, atol=0)
    cfg = _cfg(3, "pretrain.checkpoint_every=3")
    other = pretrain(
        cfg, m, corpus, None, tmp_path / "s1", pretrain_key(cfg, m, 1, "f"), seed=1, progress=False
    )
    assert any(not torch.equal(runs[0][k], v) for k, v in _weights(other.final_path).items())


_KILL_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from benchmark.config import resolve
    from benchmark.pretrain.loop import pretrain, pretrain_key
    from methods import METHODS
    from tests.fixtures import make_corpus

    tmp, run_dir = Path(sys.argv[1]), Path(sys.argv[2])
    corpus = make_corpus(tmp / "corpus", num_clips=4)
    cfg = resolve("smoke", sys.argv[3:])
    m = METHODS["cola_mws"]
    pretrain(cfg, m, corpus, None, run_dir, pretrain_key(cfg, m, 0, "fixture"), seed=0, progress=False)
    """
)


def test_resume_in_process_gives_the_uninterrupted_weights(tmp_path, corpus):
    m = METHODS["cola_mws"]
    cfg = _cfg(4, *RESUMABLE, "pretrain.checkpoint_every=2")
    assert _has_drop_connect(cfg)
    key = pretrain_key(cfg, m, 0, "fixture")
    ref = pretrain(cfg, m, corpus, None, tmp_path / "ref", key, seed=0, progress=False)
    first = pretrain(cfg, m, corpus, None, tmp_path / "cut", key, 0, progress=False, stop_after=2)
    assert first.steps_done == 2 and not first.final_path.exists()
    torch.manual_seed(123)  # whatever the global generator holds now must not matter
    resumed = pretrain(cfg, m, corpus, None, tmp_path / "cut", key, seed=0, progress=False)
    assert resumed.resumed_from == 2
    want, got = _weights(ref.final_path), _weights(resumed.final_path)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0)


def test_sigkill_and_resume_gives_the_uninterrupted_weights(tmp_path):
    overrides = [*RESUMABLE, "pretrain.steps=10", "pretrain.checkpoint_every=2"]
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    # Uninterrupted reference.
    subprocess.run(
        [sys.executable, "-c", _KILL_SCRIPT, str(tmp_path), str(tmp_path / "ref"), *overrides],
        check=True,
        env=env,
    )
    # Killed with SIGKILL once a mid-run checkpoint exists, then resumed.
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILL_SCRIPT, str(tmp_path), str(run_dir), *overrides], env=env
    )
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        ckpt = run_dir / "checkpoint.pt"
        if ckpt.is_file():
            try:
                if 2 <= load_checkpoint(ckpt)["step"] < 10:
                    break
            except Exception:  # being replaced right now; the rename is atomic, so retry
                pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step_at_kill = load_checkpoint(run_dir / "checkpoint.pt")["step"]
    assert step_at_kill < 10 and not (run_dir / "final.pt").exists(), (
        "the run finished before the kill"
    )
    subprocess.run(
        [sys.executable, "-c", _KILL_SCRIPT, str(tmp_path), str(run_dir), *overrides],
        check=True,
        env=env,
    )
    ref, resumed = _weights(tmp_path / "ref" / "final.pt"), _weights(run_dir / "final.pt")
    for name in ref:
        torch.testing.assert_close(resumed[name], ref[name], rtol=0, atol=0)


def _cola(cfg, corpus, run_dir, data: str = "a", **kwargs):
    """COLA seed 0 on ``corpus`` into ``run_dir``, keyed with the data identity ``data``."""
    m = METHODS["cola"]
    key = pretrain_key(cfg, m, 0, data)
    return pretrain(cfg, m, corpus, None, run_dir, key, seed=0, progress=False, **kwargs)


def test_checkpoint_of_another_config_is_refused(tmp_path, corpus):
    cfg = _cfg(2, "pretrain.checkpoint_every=1")
    _cola(cfg, corpus, tmp_path, stop_after=1)
    with pytest.raises(RuntimeError, match="another configuration"):
        _cola(cfg, corpus, tmp_path, data="b")


def test_lr_is_halved_at_half_the_steps(tmp_path, corpus):
    cfg = _cfg(4, "pretrain.checkpoint_every=2")
    seen = {}
    _cola(cfg, corpus, tmp_path, stop_after=2)
    seen[2] = load_checkpoint(tmp_path / "checkpoint.pt")["scheduler"]["_last_lr"][0]
    _cola(cfg, corpus, tmp_path)
    seen[4] = load_checkpoint(tmp_path / "checkpoint.pt")["scheduler"]["_last_lr"][0]
    assert seen == {2: 5e-4, 4: 5e-4} and cfg.pretrain.lr == 1e-3


def test_chunk64_step_unit_means_64_updates_per_step(tmp_path, corpus):
    from benchmark.pretrain.loop import num_updates

    assert num_updates(_cfg(3).pretrain) == 3
    assert num_updates(_cfg(3, "pretrain.step_unit=chunk64").pretrain) == 192
    with pytest.raises(ValueError, match="step_unit"):
        num_updates(dataclasses.replace(_cfg(3).pretrain, step_unit="epoch"))


@pytest.mark.parametrize("name", [n for n, m in METHODS.items() if m.pretrained])
def test_every_method_trains(tmp_path, corpus, name):
    m = METHODS[name]
    cfg = _cfg(2, "pretrain.checkpoint_every=1", "pretrain.val_every=2")
    metrics = []
    key = pretrain_key(cfg, m, 0, "fixture")
    init = {
        k: v.clone()
        for k, v in __import__("benchmark.pretrain.loop", fromlist=["x"])
        .build_model(cfg.encoder, 0, torch.device("cpu"))
        .state_dict()
        .items()
    }
    res = pretrain(
        cfg,
        m,
        corpus,
        corpus,
        tmp_path,
        key,
        seed=0,
        progress=False,
        on_metrics=lambda d, s: metrics.append(d),
    )
    assert is_complete(tmp_path, key)
    final = _weights(res.final_path)
    assert any(not torch.equal(init[k], final[k]) for k in final if final[k].is_floating_point())
    losses = [d["loss"] for d in metrics if "loss" in d] + [
        d["val_loss"] for d in metrics if "val_loss" in d
    ]
    assert losses and all(torch.isfinite(torch.tensor(v)) for v in losses)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="page-locked memory needs CUDA")
def test_batches_are_pinned_for_cuda(corpus):
    from benchmark.pretrain.loop import batches

    loader = batches(METHODS["msa_multi"], corpus, 4, 0, 0, 2, 1, pin_memory=True)
    for _, batch in loader:
        assert batch.anchors.is_pinned() and batch.positives.is_pinned()
        assert batch.silent.is_pinned()


def test_snapshot_steps_from_fractions():
    from benchmark.pretrain.loop import snapshot_steps

    p = _cfg(100, "pretrain.snapshot_fractions=0.1,0.25,0.5,1.0").pretrain
    assert snapshot_steps(p) == [10, 25, 50]  # the last update is final.pt's
    assert snapshot_steps(_cfg(6, "pretrain.snapshot_fractions=0.1,0.12").pretrain) == [1]
    with pytest.raises(ValueError, match="snapshot_fractions"):
        snapshot_steps(_cfg(6, "pretrain.snapshot_fractions=0").pretrain)


def test_snapshots_are_kept_outside_the_key_and_replayed_when_missing(tmp_path, corpus):
    """A run keeps its weights at the snapshot steps; the evaluated snapshot is those weights
    with precise-BN statistics; a run that kept none (e.g. one that finished before) replays
    to the step and gets the very same encoder."""
    from benchmark.pretrain.loop import SNAPSHOT, evaluated_snapshot, precise_bn

    m = METHODS["msa_multi"]
    cfg = _cfg(4, *RESUMABLE, "pretrain.snapshot_fractions=0.5")
    other = _cfg(4, *RESUMABLE, "pretrain.snapshot_fractions=0.25")
    key = pretrain_key(cfg, m, 0, "fixture")
    assert pretrain_key(other, m, 0, "fixture") == key  # snapshots do not change the run
    pretrain(cfg, m, corpus, None, tmp_path / "kept", key, seed=0, progress=False)
    pretrain(other, m, corpus, None, tmp_path / "none", key, seed=0, progress=False)
    assert (tmp_path / "kept" / SNAPSHOT.format(step=2)).is_file()
    assert not (tmp_path / "none" / SNAPSHOT.format(step=2)).is_file()
    kept = evaluated_snapshot(cfg, m, corpus, tmp_path / "kept", key, 0, 2, torch.device("cpu"))
    replayed = evaluated_snapshot(cfg, m, corpus, tmp_path / "none", key, 0, 2, torch.device("cpu"))
    a, b = _weights(kept), _weights(replayed)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)
    assert not (tmp_path / "none" / "replay").exists()
    # the evaluated snapshot is the raw one with re-estimated batch-norm statistics
    from benchmark.pretrain.encoder import ContrastiveModel

    model = ContrastiveModel(cfg.encoder)
    model.load_state_dict(_weights(tmp_path / "kept" / SNAPSHOT.format(step=2)))
    from benchmark.io import torch_threads

    with torch_threads(cfg.compute.torch_threads):  # the statistics depend on the threads
        precise_bn(model, m, corpus, cfg.pretrain, 0, torch.device("cpu"))
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, a[name], rtol=0, atol=0)
    final = _weights(tmp_path / "kept" / "final.pt")
    assert any(not torch.equal(final[k], a[k]) for k in a if k.endswith("weight"))


def _generator_states():
    return torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()


def _same_generator_states(a, b) -> bool:
    return torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_build_model_leaves_the_callers_generators_and_keeps_its_weights():
    """Issue #13: model initialisation seeded the global generators (Python, NumPy, torch)
    behind the caller's back. The weights stay those of ``torch.manual_seed(seed)``."""
    from benchmark.pretrain.encoder import ContrastiveModel
    from benchmark.pretrain.loop import build_model

    cfg = _cfg(2)
    torch.manual_seed(7)
    before = _generator_states()
    model = build_model(cfg.encoder, 3, torch.device("cpu"))
    assert _same_generator_states(before, _generator_states())
    torch.manual_seed(3)
    reference = ContrastiveModel(cfg.encoder).state_dict()
    for name, value in model.state_dict().items():
        assert torch.equal(value, reference[name]), name


def test_inline_batches_leave_the_callers_torch_threads(corpus):
    """Issue #13: with ``num_workers=0`` the batch iterator set one thread in the caller's
    process."""
    from benchmark.pretrain.loop import batches

    previous = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        for _ in batches(METHODS["cola"], corpus, 4, 0, 0, 2, num_workers=0):
            pass
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(previous)


def test_weights_do_not_depend_on_the_callers_threads_or_generators(tmp_path, corpus):
    """Issue #13: pre-training on the caller's thread count gave other weights after a step
    that had changed it; it now runs on ``compute.torch_threads`` and restores the caller's
    threads and generators."""
    cfg = _cfg(
        2, *RESUMABLE, "pretrain.checkpoint_every=2", "pretrain.num_workers=2",
        "compute.torch_threads=2",
    )  # fmt: skip
    previous = torch.get_num_threads()
    finals = []
    try:
        for i, threads in enumerate([1, 3]):
            torch.set_num_threads(threads)
            torch.manual_seed(100 + i)
            before = _generator_states()
            finals.append(_weights(_cola(cfg, corpus, tmp_path / f"t{threads}").final_path))
            assert torch.get_num_threads() == threads
            assert _same_generator_states(before, _generator_states())
    finally:
        torch.set_num_threads(previous)
    for name in finals[0]:
        torch.testing.assert_close(finals[1][name], finals[0][name], rtol=0, atol=0)


class _NotATensor:
    """A picklable object that is not a tensor: ``weights_only=True`` refuses it."""


def test_weights_with_code_are_refused_in_one_line(tmp_path, corpus):
    """Issue #13: a checkpoint holding pickled code was refused with torch's raw
    UnpicklingError, whose text suggests ``weights_only=False``, the unsafe choice."""
    from benchmark.errors import EXPECTED_FAILURES
    from benchmark.pretrain.loop import load_encoder

    cfg = _cfg(2, "pretrain.checkpoint_every=1")
    _cola(cfg, corpus, tmp_path, stop_after=1)
    ckpt = tmp_path / "checkpoint.pt"
    state = torch.load(ckpt, weights_only=True)
    torch.save({**state, "extra": _NotATensor()}, ckpt)
    torch.save({"extra": _NotATensor()}, tmp_path / "final.pt")
    for load in (
        lambda: _cola(cfg, corpus, tmp_path),
        lambda: load_encoder(cfg.encoder, tmp_path / "final.pt"),
    ):
        with pytest.raises(Exception) as info:
            load()
        message = str(info.value)
        # the CLI prints expected failures as one line (exit status 1), not a traceback
        assert isinstance(info.value, EXPECTED_FAILURES), type(info.value)
        assert "\n" not in message and "pickled code" in message
        assert "weights_only=False" not in message and str(tmp_path) in message


def test_random_init_statistics_run_on_compute_threads(tmp_path, corpus, monkeypatch):
    """random_init's batch-norm statistics (precise BN over the corpus) are a forward pass
    like any other: on ``compute.torch_threads``, the caller's count restored."""
    import benchmark.pretrain.loop as loop

    cfg = _cfg(2, "compute.torch_threads=2", "pretrain.precise_bn_batches=1")
    seen: list[int] = []
    real = loop.precise_bn

    def counting(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "precise_bn", counting)
    previous = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        final = loop.materialize_untrained(cfg, METHODS["random_init"], corpus, tmp_path, "k", 0)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(previous)
    assert seen == [2] and final.is_file()
