"""Configuration: profiles hold differences, overrides are typed, hashes are stable."""

import json
import subprocess
import sys

import pytest

from benchmark import config
from benchmark.config import Config, ConfigError, resolve


def test_defaults_are_the_papers():
    cfg = Config()
    assert (cfg.pretrain.steps, cfg.pretrain.batch_size, cfg.pretrain.lr) == (10000, 128, 1e-3)
    assert (cfg.frontend.win_length, cfg.frontend.hop_length, cfg.frontend.n_fft) == (
        400,
        160,
        1024,
    )
    assert (cfg.frontend.n_mels, cfg.frontend.f_min, cfg.frontend.f_max) == (64, 60.0, 7800.0)
    assert cfg.encoder.width_coefficient == cfg.encoder.depth_coefficient == 1.0
    assert cfg.probe.seeds == (0, 1, 2, 3, 4)


def test_paper_profile_changes_only_data_source():
    paper = resolve("paper")
    base = Config(profile="paper")
    assert paper.data.source == "real"
    assert paper.encoder == base.encoder and paper.pretrain == base.pretrain


@pytest.mark.parametrize("profile", config.available_profiles())
def test_every_profile_resolves(profile):
    assert resolve(profile).profile == profile


def test_overrides_are_typed():
    cfg = resolve(
        "smoke",
        [
            "pretrain.steps=7",
            "encoder.similarity=cosine",
            "probe.seeds=0-2",
            "benchmark.methods=cola,msa_multi",
            "benchmark.tune=false",
            "pretrain.lr=2e-4",
        ],
    )
    assert cfg.pretrain.steps == 7 and cfg.encoder.similarity == "cosine"
    assert cfg.probe.seeds == (0, 1, 2)
    assert cfg.benchmark.methods == ("cola", "msa_multi")
    assert cfg.benchmark.tune is False and cfg.pretrain.lr == 2e-4


@pytest.mark.parametrize(
    "override,match",
    [
        ("pretrain.stepz=3", "unknown config key 'pretrain.stepz'"),
        ("nosuch.x=1", "unknown config key 'nosuch'"),
        ("pretrain.steps=many", "pretrain.steps: expected an integer"),
        ("pretrain.lr=fast", "pretrain.lr: expected a number"),
        ("benchmark.tune=maybe", "benchmark.tune: expected true/false"),
        ("pretrain=3", "pretrain: is a section"),
        ("steps", "not of the form"),
    ],
)
def test_bad_overrides_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        resolve("smoke", [override])


def test_profile_with_wrong_type_is_rejected(tmp_path, monkeypatch):
    (tmp_path / "bad.toml").write_text("[pretrain]\nsteps = 'ten'\n")
    monkeypatch.setattr(config, "PROFILE_DIR", tmp_path)
    with pytest.raises(ConfigError, match="pretrain.steps: expected an integer"):
        resolve("bad")


def test_hash_is_stable_and_sensitive():
    a, b = resolve("smoke"), resolve("smoke")
    assert a.hash() == b.hash()
    assert resolve("smoke", ["pretrain.steps=99"]).hash() != a.hash()
    # the value is a pure function of the content: pinned across processes
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "from benchmark.config import resolve;print(resolve('smoke').hash())",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == a.hash()


def test_results_hash_ignores_where_outputs_go_and_what_is_listed():
    base = resolve("smoke")
    same = resolve("smoke", ["paths.runs_dir=/elsewhere", "benchmark.methods=cola"])
    assert same.results_hash() == base.results_hash() and same.hash() != base.hash()
    assert resolve("smoke", ["pretrain.steps=7"]).results_hash() != base.results_hash()
    kept = resolve("smoke", ["pretrain.snapshot_fractions=0.5"])
    assert kept.results_hash() == base.results_hash()  # snapshots change no result
    assert resolve("smoke", ["probe.standardize=false"]).results_hash() != base.results_hash()


PARALLEL = ["tune.lag=3", "paths.optuna_storage=postgresql://db-host/optuna"]


def test_tuning_workers_are_placement_and_the_lag_is_not():
    from benchmark.pipeline.probing import tune_key

    base = resolve("smoke", PARALLEL)
    four = resolve("smoke", [*PARALLEL, "tune.workers=4"])
    assert four.results_hash() == base.results_hash()
    # ... and a tuning result of one worker is found by a plan with four.
    assert tune_key(four, "fma", "emb") == tune_key(base, "fma", "emb")
    lag_2 = resolve("smoke", [*PARALLEL, "tune.lag=2"])
    assert lag_2.results_hash() != base.results_hash()
    assert tune_key(lag_2, "fma", "emb") != tune_key(base, "fma", "emb")


def test_the_default_lag_keeps_the_keys_of_results_made_before_it():
    """tune.lag=0 (the default) is the tuning of every result made before the lag existed:
    the results hash and the tune key are those of the settings without it, so a cache of
    then (tuned parameters, plan records, MLflow runs) is found, not redone."""
    from benchmark.config import stable_hash
    from benchmark.pipeline.probing import _training, tune_key

    for profile in ("default", "smoke", "paper"):
        cfg = resolve(profile)
        assert cfg.tune.lag == 0
        before = cfg.to_dict()
        for section in ("profile", "paths", "benchmark", "executor"):
            before.pop(section)
        before["pretrain"].pop("snapshot_fractions")
        before["tune"] = {k: v for k, v in before["tune"].items() if k not in ("lag", "workers")}
        assert cfg.results_hash() == stable_hash(before)
        keyed = {"tune": before["tune"], "emb": "e", "task": "fma", "probe": _training(cfg)}
        assert tune_key(cfg, "fma", "e") == stable_hash(keyed)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["tune.workers=2"], "tune.workers=2 needs tune.lag >= 1"),
        (["tune.workers=3", "tune.lag=1"], "tune.workers=3 needs tune.lag >= 2"),
        (["tune.workers=2", "tune.lag=1"], "tune.workers=2 needs a database server"),
        (["tune.lag=-1"], "tune.lag >= 0"),
    ],
)
def test_parallel_tuning_needs_a_lag_and_a_database_server(overrides, message):
    with pytest.raises(ConfigError, match=message) as caught:
        resolve("smoke", overrides)
    assert "\n" not in str(caught.value)
    resolve("smoke", ["tune.workers=2", *PARALLEL])  # a lag of 3 and PostgreSQL: fine


@pytest.mark.parametrize("profile", ["paper", "default", "smoke", "studies"])
def test_only_the_paper_profile_asks_slurm_for_gpus(profile):
    """sbatch rejects a GPU request on a CPU-only cluster: the CPU profiles ask for none."""
    e = resolve(profile).executor
    stages = ("data", "features", "separate", "pretrain", "embed", "tune", "probe", "report")
    gpus = {stage: e.resources(stage).gpus for stage in stages}
    wanted = {"separate", "pretrain", "embed"} if profile == "paper" else set()
    assert gpus == {stage: int(stage in wanted) for stage in gpus}
    assert e.pretrain.cpus == 8 and e.pretrain.mem_gb == 32.0  # the rest of the section kept


def test_executor_section_is_typed_and_shapes_no_result():
    base = resolve("smoke")
    assert base.executor.kind == "local"
    slurm = resolve(
        "smoke", ["executor.kind=slurm", "executor.pretrain.gpus=0", "executor.probe.mem_gb=1.5"]
    )
    assert slurm.executor.pretrain.gpus == 0 and slurm.executor.probe.mem_gb == 1.5
    assert slurm.executor.resources("probe") is slurm.executor.probe
    assert slurm.results_hash() == base.results_hash()
    assert config.from_dict(slurm.to_dict()) == slurm
    with pytest.raises(ConfigError, match="executor.pretrain.gpus: expected an integer"):
        resolve("smoke", ["executor.pretrain.gpus=one"])
    with pytest.raises(ValueError, match="no executor resources for stage 'kind'"):
        base.executor.resources("kind")


def test_saved_config_round_trips(tmp_path):
    cfg = resolve("smoke", ["pretrain.steps=5"])
    config.save(cfg, tmp_path / "config.json")
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["hash"] == cfg.hash()
    assert config.from_dict(saved["config"]) == cfg


def test_cli_reports_user_errors_in_one_line():
    out = subprocess.run(
        [sys.executable, "-m", "benchmark", "config", "pretrain.stepz=1"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert (
        out.stderr.strip().splitlines() == [out.stderr.strip().splitlines()[0]]
        and "unknown config key 'pretrain.stepz'" in out.stderr
    )
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize(
    "overrides, message",
    [
        # a real-data root without data.source=real used to be silently ignored
        (["data.mtat_root=/data/mtat"], r"data\.mtat_root is set but data\.source=synthetic"),
        (["data.mtat_split_dir=/lists"], r"data\.mtat_split_dir is set .* add data\.source=real"),
        (["data.pretrain_source=folder"], r"pretrain_source=folder needs data\.pretrain_root"),
        (["data.pretrain_source=manifest"], r"needs data\.pretrain_manifest"),
        (["data.pretrain_root=/music"], r"pretrain_source=mtat would ignore it: add data\.pre"),
        (["data.pretrain_source=tape"], r"data\.pretrain_source must be one of mtat, folder"),
        (["data.source=disk"], r"data\.source must be one of synthetic, real"),
        (["data.valid_fraction=1.5"], r"data\.valid_fraction must lie in \(0, 1\)"),
    ],
)
def test_data_settings_that_would_be_ignored_or_cannot_work_are_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        resolve("smoke", overrides)
    # with what the message asks for, the same settings resolve
    resolve("smoke", ["data.source=real", "data.mtat_root=/data/mtat"])
    resolve("smoke", ["data.pretrain_source=folder", "data.pretrain_root=/music"])


def test_config_says_which_data_is_used(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "benchmark", "config", "--profile", "smoke",
         "data.pretrain_source=folder", f"data.pretrain_root={tmp_path}",
         f"paths.runs_dir={tmp_path / 'runs'}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    text = out.stdout
    assert f"pre-training: every audio file under {tmp_path} (recursive)" in text
    assert "task mtat: mtat of the synthetic corpus (smoke, seed 0)" in text
    assert "separated sources (config separator): Open-Unmix trained here" in text
    assert not (tmp_path / "runs").exists()  # describing the data generates nothing


def test_profiles_start_from_a_base_and_a_cycle_is_refused(tmp_path, monkeypatch):
    import benchmark.config as config_module

    # The shipped studies profile is the default profile plus its methods.
    studies, default = resolve("studies"), resolve("default")
    for section in ("data", "encoder", "pretrain", "probe", "tune", "separation"):
        assert getattr(studies, section) == getattr(default, section), section
    assert set(default.benchmark.methods) < set(studies.benchmark.methods)
    # A file of one's own over a shipped profile, key by key.
    mine = tmp_path / "mine.toml"
    mine.write_text('base = "smoke"\n[pretrain]\nsteps = 3\n')
    cfg = resolve(str(mine))
    assert cfg.profile == "mine" and cfg.pretrain.steps == 3
    assert cfg.pretrain.batch_size == resolve("smoke").pretrain.batch_size
    # Shipped profiles that name each other as base.
    (tmp_path / "a.toml").write_text('base = "b"\n')
    (tmp_path / "b.toml").write_text('base = "a"\n')
    monkeypatch.setattr(config_module, "PROFILE_DIR", tmp_path)
    with pytest.raises(ConfigError, match="cycle"):
        resolve("a")
    mine.write_text('base = "other.toml"\n')
    with pytest.raises(ConfigError, match="must name a shipped profile"):
        resolve(str(mine))
