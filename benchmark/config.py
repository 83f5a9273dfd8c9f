"""Configuration: frozen dataclasses are the only source of defaults.

Every field carries a comment with its unit and origin:
  (paper)    the poster / paper, REFERENCE.md
  (code)     the authors' public code (cgaroufis/MSCOL_SMC23, built on Google's COLA code)
  (ours)     a choice of this harness

The dataclass defaults describe the paper's setting. Named profiles
(``benchmark/profiles/<name>.toml``) hold only differences from these defaults, and
``key=value`` overrides on the command line are applied last, e.g.
``pretrain.steps=300 encoder.width_coefficient=0.5``.

Unknown keys and values of the wrong type raise :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from benchmark.errors import ConfigError

PROFILE_DIR = Path(__file__).parent / "profiles"
# Top-level entries that name the profile or say where and what to run, never how a result
# is computed (profiles of the same settings, e.g. default and studies, share results).
PLACEMENT_SECTIONS = ("profile", "paths", "benchmark", "executor")
# Keys of other sections that change no result: how many processes do the work, and which
# snapshots a pre-training run keeps (the convergence study).
PLACEMENT_KEYS = {"tune": ("workers",), "pretrain": ("snapshot_fractions",)}
# Keys added after results were first keyed, at the value that gives the results of before:
# left out of the keys at that value, so that results computed before they existed (tuned
# parameters, plan records, MLflow runs found by key) stay valid. tune.lag = 0 is sequential
# TPE with a per-trial seed, the sampler of every study before tune.lag.
KEYED_SINCE = {"tune": {"lag": 0}}


@dataclass(frozen=True)
class PathsConfig:
    runs_dir: str = "runs"  # root of every generated artefact (ours); git-ignored
    tracking_uri: str = ""  # MLflow tracking URI; "" -> sqlite:///<runs_dir>/mlflow.db (ours)
    optuna_storage: str = ""  # SQLAlchemy URL; "" -> sqlite:///<runs_dir>/optuna.db (ours)
    # Where pre-training runs, tuned parameters and MLflow runs live: "" = the profile's own
    # folder and experiment; another profile's name shares that profile's, so that work of the
    # same config (content-keyed) is found there, not redone (ours; the studies profile uses
    # the default profile's). The plan's status and the report stay in the profile's folder.
    workspace: str = ""


@dataclass(frozen=True)
class DataConfig:
    source: str = "synthetic"  # "synthetic" (generated corpus) or "real" (roots below) (ours)
    synth_size: str = "default"  # synthetic corpus size: smoke | default | <clips per split> (ours)
    synth_seed: int = 0  # seed of the synthetic corpus generator (ours)
    # Pre-training corpus: "mtat" (the filtered MTAT train/valid split, paper), "folder" (every
    # audio file under pretrain_root) or "manifest" (the files a CSV lists) (ours)
    pretrain_source: str = "mtat"
    pretrain_root: str = ""  # folder: searched recursively; manifest: root of relative paths
    pretrain_manifest: str = ""  # manifest CSV: column path, optional split (train | valid)
    valid_fraction: float = 0.1  # folder/manifest: files held out for validation, by content hash
    mtat_split_dir: str = ""  # filtered-MTAT lists {train,valid,test}.txt; "" = shipped (paper)
    mtat_root: str = ""  # real MTAT: folder with annotations_final.csv and audio folders 0-f
    nsynth_root: str = ""  # real NSynth: folder with nsynth-{train,valid,test}/
    fma_root: str = ""  # real FMA: folder with fma_metadata/ and fma_<subset>/
    fma_subset: str = "small"  # FMA subset: small | medium (paper: small)
    max_bad_fraction: float = (
        0.01  # fail a feature build when more than this fraction is bad (ours)
    )
    num_workers: int = 2  # processes for decoding / feature extraction (ours; 2-core machine)


@dataclass(frozen=True)
class FrontEndConfig:
    sample_rate: int = 16000  # Hz (paper, code)
    win_length: int = 400  # samples = 25 ms (paper)
    hop_length: int = 160  # samples = 10 ms (paper)
    n_fft: int = 1024  # FFT size (code)
    n_mels: int = 64  # mel bands (paper)
    f_min: float = 60.0  # Hz (code)
    f_max: float = 7800.0  # Hz (code)
    log_offset: float = 1e-6  # log(mel + offset) (code)
    norm_eps: float = 1e-9  # whole-clip L2 normalisation epsilon (code)
    excerpt_frames: int = 392  # 4-s storage unit, frames (paper: 4-s excerpts)
    crop_frames: int = 98  # ~1-s training crop, frames (paper, code)


@dataclass(frozen=True)
class SeparationConfig:
    separator: str = "umx"  # umx | oracle | random_mask (paper: Open-Unmix)
    # The authors ran the `umx` command with openunmix's defaults (version not pinned; 1.2+,
    # current in 2022-23): the UMX-L weights and one EM step of the Wiener filter (code).
    umx_model: str = "umxl"  # umxhq | umxl (downloaded weights), a weights folder, or trained
    umx_sample_rate: int = 44100  # Hz, the rate Open-Unmix runs at (paper)
    wiener: bool = True  # one EM step of openunmix's multichannel Wiener filter (code)
    silence_threshold: float = (
        0.01  # mean |amplitude| over 4 s at or below which a source is silent (code)
    )
    batch_size: int = 4  # excerpts per separator forward pass (ours)
    mask_seed: int = 0  # seed of the random soft masks (ours)
    mask_time_smooth_frames: int = 25  # random-mask smoothness along time, STFT frames (ours)
    mask_freq_smooth_bins: int = 16  # random-mask smoothness along frequency, STFT bins (ours)
    train_steps: int = 2000  # train-separator: optimiser steps (ours; ~10 min on 2 free cores)
    train_batch_size: int = 16  # train-separator: excerpts per step (ours)
    train_seq_dur_s: float = 2.0  # train-separator: excerpt duration, seconds (ours)
    train_hidden_size: int = 128  # train-separator: OpenUnmix hidden size (ours; umxhq uses 512)
    train_lr: float = 1e-3  # train-separator: Adam learning rate (openunmix default)
    train_seed: int = 0  # train-separator seed (ours)


@dataclass(frozen=True)
class EncoderConfig:
    width_coefficient: float = 1.0  # EfficientNet width multiplier (paper: B0 = 1.0)
    depth_coefficient: float = 1.0  # EfficientNet depth multiplier (paper: B0 = 1.0)
    embedding_dim: int = 512  # contrastive head output (paper)
    similarity: str = "bilinear"  # bilinear | cosine (paper: bilinear, as COLA)
    temperature: float = 0.2  # cosine similarity temperature (COLA's alternative)
    bilinear_init_std: float = (
        0.05  # std of the bilinear W at init (COLA, code: Keras random_normal)
    )


@dataclass(frozen=True)
class PretrainConfig:
    steps: int = 10000  # optimiser steps (paper: 10,000 steps of batch 128)
    step_unit: str = "batch"  # what one step is: "batch" (poster) or "chunk64" (code: 64 batches)
    batch_size: int = 128  # anchor-positive pairs per batch (paper)
    lr: float = 1e-3  # Adam learning rate (paper)
    lr_decay_fraction: float = 0.5  # lr halved after this fraction of the steps (paper: at 5,000)
    # Pre-training runs per method, the unit of replication of every comparison (ours; the
    # paper reports one run): 3 is the least that estimates training randomness per method.
    seeds: tuple[int, ...] = (0, 1, 2)
    checkpoint_every: int = 500  # steps between checkpoints (ours)
    val_every: int = 500  # steps between validation contrastive loss/accuracy (ours)
    val_batches: int = 4  # batches of the validation split per validation (ours)
    # Fractions of the steps at which the loop keeps the encoder's weights (snapshot-<step>.pt,
    # beside checkpoint.pt) for the convergence study (ours; not part of the run's content key:
    # saving costs a fraction of a second, and a finished run of any profile serves the study).
    snapshot_fractions: tuple[float, ...] = (0.1, 0.25, 0.5)
    # "Precise BN" (ours; the code keeps Keras' running statistics, momentum 0.99): batch-norm
    # statistics of the evaluated encoder are re-estimated from this many batches of the
    # method's own training pairs (random_init: mixture crops), every method alike; 0 keeps
    # the running statistics. README, "Batch-norm statistics of the evaluated encoder".
    precise_bn_batches: int = 16
    # What a silent source's crop holds, in the log-mel domain: the authors' code pairs an
    # absent source with np.zeros((392, 64, 1)) of the stored log-mel (and finds silent
    # positives as all-zero inputs), the same 0.0 that MWS masks fill with (code).
    silent_value: float = 0.0
    num_workers: int = 2  # DataLoader workers (ours)


@dataclass(frozen=True)
class ProbeConfig:
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)  # probe seeds (paper: mean of 5 runs)
    batch_size: int = 128  # windows per probe step (code)
    max_epochs: int = 50  # (code)
    patience: int = 5  # early stopping on the validation primary metric, epochs (code)
    train_hop_frames: int = 49  # hop between cached training windows, frames (ours: half a crop)
    windows_per_clip: int = 0  # training windows drawn per clip per epoch; 0 -> 1 (code: one crop)
    params: str = "default"  # "default" (paper's lr) or "tuned" (best Optuna trial) (ours)
    embed_batch_size: int = 256  # windows per encoder forward pass when embedding (ours)
    standardize: bool = False  # standardise probe inputs on the training windows (paper: no)


@dataclass(frozen=True)
class TuneConfig:
    num_trials: int = 20  # Optuna trials per (method, task), equal for every method (ours)
    sampler_seed: int = 0  # TPE sampler seed, equal for every method (ours)
    probe_seed: int = 0  # probe seed used inside trials (ours)
    max_epochs: int = 20  # probe epochs per trial (ours)
    # Trial n's TPE sees the trials < n - lag; up to lag + 1 workers give the same trials (ours;
    # 0: sequential TPE, the tuning of every result made before the lag existed)
    lag: int = 0
    workers: int = 1  # processes sharing one study (needs lag >= workers - 1); placement (ours)


@dataclass(frozen=True)
class BenchmarkConfig:
    methods: tuple[str, ...] = (
        "random_init",
        "cola",
        "cola_mws",
        "cola_random_mask",
        "msa_bass",
        "msa_drums",
        "msa_vocals",
        "msa_other",
        "msa_multi",
        "cola_twin",
    )  # methods of the paper's tables (paper), the floor and the negative control (ours)
    tasks: tuple[str, ...] = ("mtat", "mtat_star", "nsynth", "fma")  # (paper)
    # Task files (TOML, see tasks/files.py) or folders of them; their tasks join `tasks` (ours)
    task_files: tuple[str, ...] = ()
    baseline: str = "cola"  # method every other is compared with (paper)
    tune: bool = False  # run Optuna even when probes use the paper's lrs (probe.params=tuned implies it) (ours)
    alpha: float = 0.05  # family-wise error rate after Holm correction within a family (ours)
    # "method:family" entries that put a method (e.g. your own) into a declared comparison
    # family (methods.FAMILIES: paper, ablations, controls); a method joins one family (ours).
    family_members: tuple[str, ...] = ()
    calibration_reps: int = 4000  # simulated A/A comparisons per task (ours; MC SE ~0.35%)
    # Methods whose snapshots (pretrain.snapshot_fractions) are probed on every task for the
    # report's convergence study (ours; the paper's claim is about MSA against MWS).
    convergence_methods: tuple[str, ...] = ()


@dataclass(frozen=True)
class ComputeConfig:
    # torch intra-op CPU threads of pre-training, separator training, separation and
    # embedding (ours). Results on the CPU depend on it: the same value gives the same numbers,
    # another value slightly different ones. One, because the DataLoader workers already use
    # the second core of the 2-core reference machine, and on a machine shared with other jobs
    # two OpenMP threads spinning against them ran separation ~50x slower (measured, load 12).
    # Feature extraction and probes use one thread each, whatever this says.
    torch_threads: int = 1


@dataclass(frozen=True)
class StageResources:
    """What one Slurm job of a plan stage asks for (``executor.<stage>.<field>``)."""

    partition: str = ""  # Slurm partition; "" -> the cluster's default partition (ours)
    gpus: int = 0  # GPUs per job (ours)
    cpus: int = 2  # CPUs per job (ours)
    mem_gb: float = 8.0  # memory per job, GB (ours)
    time_min: int = (
        60  # time limit per job, minutes; past it the job is requeued and resumes (ours)
    )


@dataclass(frozen=True)
class ExecutorConfig:
    """Where the plan's steps run; none of it shapes a result (see ``Config.results_hash``).

    The per-stage sections size a Slurm job for the ``paper`` profile on a GPU cluster
    (separation, pre-training and embedding ask for one GPU); the CPU profiles (``default``,
    ``smoke`` and those based on them) ask for none (README, "Running on a cluster")."""

    kind: str = "local"  # local (one process) | processes (a pool) | slurm (submitit) (ours)
    workers: int = 2  # processes: worker processes, each with its own GPU if any (ours)
    folder: str = ""  # slurm: submitit's folder (job pickles, logs); "" -> <profile_dir>/slurm
    array_parallelism: int = 64  # slurm: tasks of one job array running at once (ours)
    lock_heartbeat_s: float = 10.0  # a running step rewrites its lock's heartbeat this often, s
    lock_stale_s: float = 120.0  # a lock whose heartbeat stood still this long is stale, s (ours)
    data: StageResources = field(default_factory=lambda: StageResources(mem_gb=8.0, time_min=120))
    features: StageResources = field(
        default_factory=lambda: StageResources(cpus=8, mem_gb=16.0, time_min=240)
    )
    # Open-Unmix over every pre-training clip (paper: MTAT, ~19k clips at 44.1 kHz).
    separate: StageResources = field(
        default_factory=lambda: StageResources(gpus=1, cpus=8, mem_gb=32.0, time_min=720)
    )
    # 10,000 steps of 128 pairs on EfficientNet-B0 (paper); longer runs requeue and resume.
    pretrain: StageResources = field(
        default_factory=lambda: StageResources(gpus=1, cpus=8, mem_gb=32.0, time_min=720)
    )
    # The frozen encoder over every window of a corpus, once per (model, corpus).
    embed: StageResources = field(
        default_factory=lambda: StageResources(gpus=1, cpus=4, mem_gb=32.0, time_min=240)
    )
    tune: StageResources = field(
        default_factory=lambda: StageResources(cpus=2, mem_gb=16.0, time_min=240)
    )
    probe: StageResources = field(
        default_factory=lambda: StageResources(cpus=2, mem_gb=16.0, time_min=60)
    )
    report: StageResources = field(
        default_factory=lambda: StageResources(cpus=2, mem_gb=16.0, time_min=240)
    )

    def resources(self, stage: str) -> StageResources:
        """The Slurm resources of ``stage``; ``ValueError`` for a stage without a section."""
        value = getattr(self, stage, None)
        if not isinstance(value, StageResources):
            raise ValueError(f"no executor resources for stage {stage!r}")
        return value


@dataclass(frozen=True)
class Config:
    profile: str = "paper"  # name of the profile this config was resolved from
    paths: PathsConfig = field(default_factory=PathsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    frontend: FrontEndConfig = field(default_factory=FrontEndConfig)
    separation: SeparationConfig = field(default_factory=SeparationConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    compute: ComputeConfig = field(default_factory=ComputeConfig)

    # -- derived locations -------------------------------------------------------------
    @property
    def runs_dir(self) -> Path:
        return Path(self.paths.runs_dir)

    @property
    def profile_dir(self) -> Path:
        """Outputs of this profile (data, checkpoints, report)."""
        return self.runs_dir / self.profile

    @property
    def workspace_dir(self) -> Path:
        """Pre-training runs and tuned parameters (``paths.workspace``, default the profile's
        folder): content-keyed, so profiles of the same config may share one."""
        return self.runs_dir / (self.paths.workspace or self.profile)

    @property
    def experiment(self) -> str:
        """The MLflow experiment of this profile's tracked work (``paths.workspace``'s)."""
        return f"mscol-{self.paths.workspace or self.profile}"

    @property
    def cache_dir(self) -> Path:
        """Content-keyed caches shared by every profile (features, sources, embeddings)."""
        return self.runs_dir / "cache"

    @property
    def tracking_uri(self) -> str:
        return self.paths.tracking_uri or f"sqlite:///{(self.runs_dir / 'mlflow.db').as_posix()}"

    @property
    def optuna_storage(self) -> str:
        return self.paths.optuna_storage or f"sqlite:///{(self.runs_dir / 'optuna.db').as_posix()}"

    def to_dict(self) -> dict:
        return to_dict(self)

    def hash(self) -> str:
        return stable_hash(self.to_dict())

    def results_hash(self) -> str:
        """Hash of what shapes the results: everything but the profile's name, where outputs
        go (``paths``), which methods/tasks to run and how to report them (``benchmark``) and
        where the steps run (``executor``, ``tune.workers``: any placement gives the same
        numbers): profiles of the same settings (default, studies) share it."""
        return stable_hash(results_settings(self.to_dict()))


# -- helpers ---------------------------------------------------------------------------


def results_settings(d: dict) -> dict:
    """What of a config dict shapes the results, as result keys hash it: without what only
    places the work (:data:`PLACEMENT_SECTIONS`, :data:`PLACEMENT_KEYS`) and without the keys
    of :data:`KEYED_SINCE` at their old value."""
    return {
        k: {kk: vv for kk, vv in v.items() if _shapes_results(k, kk, vv)}
        if isinstance(v, dict)
        else v
        for k, v in d.items()
        if k not in PLACEMENT_SECTIONS
    }


def _shapes_results(section: str, key: str, value) -> bool:
    old = KEYED_SINCE.get(section, {})
    return key not in PLACEMENT_KEYS.get(section, ()) and not (key in old and old[key] == value)


def to_dict(obj) -> dict:
    """Plain, JSON-serialisable dict of a (nested) config dataclass; tuples become lists."""
    return json.loads(json.dumps(dataclasses.asdict(obj)))


def stable_hash(obj, length: int = 16) -> str:
    """A hash of a JSON-serialisable object that is stable across runs and machines."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def section_hash(*sections, extra: dict | None = None) -> str:
    """Hash of some config sections (and extra values): the content key of a stage's output."""
    payload = [to_dict(s) for s in sections]
    if extra:
        payload.append(extra)
    return stable_hash(payload)


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


# numeric field type -> (what the error says it expected, value types taken as they are)
_NUMBERS: dict[type, tuple[str, tuple[type, ...]]] = {
    int: ("an integer", (int,)),
    float: ("a number", (int, float)),
}


def _coerce(key: str, value, tp):
    """Check or convert ``value`` to the field type ``tp``; raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin is tuple:
        (elem, *_rest) = typing.get_args(tp)
        if isinstance(value, str):
            value = _parse_sequence(key, value, elem)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list of {_type_name(elem)}, got {value!r}")
        return tuple(_coerce(key, v, elem) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp in _NUMBERS:
        what, accepted = _NUMBERS[tp]
        # bool is an int to Python, never a number in a profile; strings come from overrides.
        if not isinstance(value, bool):
            if isinstance(value, accepted):
                return tp(value)
            if isinstance(value, str):
                try:
                    return tp(value)
                except ValueError:
                    pass
        raise ConfigError(f"{key}: expected {what}, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported field type {tp!r}")


def _parse_sequence(key: str, text: str, elem) -> list:
    """Parse "0-4", "0,1,2" or "a,b" into a list (ranges only for integers)."""
    text = text.strip()
    if not text:
        return []
    items: list = []
    for part in text.split(","):
        part = part.strip()
        match = re.fullmatch(r"(\d+)-(\d+)", part) if elem is int else None
        if match:
            items.extend(range(int(match[1]), int(match[2]) + 1))
        else:
            items.append(part)
    return items


def _field_types(cls) -> dict[str, object]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _apply(obj, updates: dict, prefix: str = ""):
    """Return a copy of dataclass ``obj`` with nested ``updates`` applied, type-checked."""
    types_ = _field_types(type(obj))
    changes = {}
    for name, value in updates.items():
        key = f"{prefix}{name}"
        if name not in types_:
            known = ", ".join(sorted(types_))
            raise ConfigError(f"unknown config key '{key}' (known here: {known})")
        tp = types_[name]
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{key}: is a section; set its fields, e.g. {key}.<field>=...")
            changes[name] = _apply(current, value, prefix=f"{key}.")
        else:
            if isinstance(tp, types.UnionType):
                raise ConfigError(f"{key}: unsupported union type")
            changes[name] = _coerce(key, value, tp)
    return dataclasses.replace(obj, **changes)


def parse_overrides(items: list[str]) -> dict:
    """Turn ``["a.b=1", "c=x"]`` into a nested dict of strings (types are checked later)."""
    nested: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form section.key=value")
        dotted, _, value = item.partition("=")
        parts = dotted.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override '{item}' has an empty key")
        node = nested
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}' conflicts with another override")
        node[parts[-1]] = value.strip()
    return nested


def _read_toml(path: Path) -> dict:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def _merge(base: dict, top: dict) -> dict:
    """``top``'s keys over ``base``'s, section by section."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def profile_name(profile: str) -> str:
    """The name a profile's outputs go under: a shipped profile's name, a profile file's stem."""
    return Path(profile).stem if profile.endswith(".toml") else profile


def load_profile(name: str, _seen: tuple[str, ...] = ()) -> dict:
    """A shipped profile (``benchmark/profiles/<name>.toml``) or a profile file of your own
    (a path ending in ``.toml``); either may start from a shipped one with ``base = "<name>"``
    (its keys override the base's, section by section).

    Raises :class:`ConfigError` for an unknown profile, a missing file, invalid TOML or a
    cycle of bases."""
    if name.endswith(".toml"):
        path = Path(name).expanduser()
        if not path.is_file():
            raise ConfigError(f"profile file {path} not found")
    else:
        path = PROFILE_DIR / f"{name}.toml"
        if not path.is_file():
            raise ConfigError(
                f"unknown profile '{name}' (available: {', '.join(available_profiles())}, or a "
                "profile file of your own: --profile path/to/mine.toml)"
            )
    data = _read_toml(path)
    base = data.pop("base", None)
    if base is not None:
        if not isinstance(base, str) or base.endswith(".toml"):
            raise ConfigError(f"{path}: base must name a shipped profile, got {base!r}")
        if base in (*_seen, name):
            raise ConfigError(f"{path}: base {base!r} makes a cycle of profiles")
        data = _merge(load_profile(base, (*_seen, name)), data)
    return data


def resolve(profile: str = "default", overrides: list[str] | dict | None = None) -> Config:
    """Build the configuration: dataclass defaults <- profile TOML <- overrides.

    ``profile``: a shipped profile's name or a profile file (``*.toml``, see
    :func:`load_profile`); the config's ``profile`` is then the file's stem."""
    cfg = Config(profile=profile_name(profile))
    data = load_profile(profile)
    if "profile" in data:
        raise ConfigError(f"profile {profile}.toml must not set 'profile'")
    cfg = _apply(cfg, data)
    if overrides:
        if isinstance(overrides, list):
            overrides = parse_overrides(overrides)
        if "profile" in overrides:
            raise ConfigError("choose the profile with --profile, not an override")
        cfg = _apply(cfg, overrides)
    check(cfg)
    return cfg


DATA_SOURCES = ("synthetic", "real")
PRETRAIN_SOURCES = ("mtat", "folder", "manifest")
_REAL_ROOTS = ("mtat_root", "nsynth_root", "fma_root", "mtat_split_dir")


def check(cfg: Config) -> None:
    """Reject settings that would be ignored or cannot work, naming the fix.

    Raises :class:`ConfigError` for an unknown ``data.source`` or ``data.pretrain_source``, a
    real-data root set while ``data.source=synthetic`` (it would be silently ignored), a
    folder or manifest corpus without its path (or a path set for another source), and a
    ``data.valid_fraction`` outside (0, 1), and parallel tuning (``tune.workers`` > 1) with a
    ``tune.lag`` below ``tune.workers - 1`` or an SQLite Optuna storage.
    """
    _check_tune(cfg)
    d = cfg.data
    if d.source not in DATA_SOURCES:
        raise ConfigError(f"data.source must be one of {', '.join(DATA_SOURCES)}, got {d.source!r}")
    if d.pretrain_source not in PRETRAIN_SOURCES:
        raise ConfigError(
            f"data.pretrain_source must be one of {', '.join(PRETRAIN_SOURCES)}, "
            f"got {d.pretrain_source!r}"
        )
    if d.source == "synthetic":
        ignored = [k for k in _REAL_ROOTS if getattr(d, k)]
        if ignored:
            raise ConfigError(
                f"data.{ignored[0]} is set but data.source=synthetic would ignore it: add "
                "data.source=real to read the real datasets (to pre-train on your own audio "
                "instead, use data.pretrain_source=folder data.pretrain_root=/path)"
            )
    needs = {"folder": "pretrain_root", "manifest": "pretrain_manifest"}
    if d.pretrain_source in needs and not getattr(d, needs[d.pretrain_source]):
        key = needs[d.pretrain_source]
        raise ConfigError(f"data.pretrain_source={d.pretrain_source} needs data.{key}=/path")
    if d.pretrain_source == "mtat" and (d.pretrain_root or d.pretrain_manifest):
        key = "pretrain_root" if d.pretrain_root else "pretrain_manifest"
        raise ConfigError(
            f"data.{key} is set but data.pretrain_source=mtat would ignore it: add "
            f"data.pretrain_source={'folder' if d.pretrain_root else 'manifest'}"
        )
    if d.pretrain_source == "folder" and d.pretrain_manifest:
        raise ConfigError(
            "data.pretrain_manifest is set but data.pretrain_source=folder ignores it"
        )
    if not 0.0 < d.valid_fraction < 1.0:
        raise ConfigError(f"data.valid_fraction must lie in (0, 1), got {d.valid_fraction}")


def _check_tune(cfg: Config) -> None:
    t = cfg.tune
    if t.workers < 1 or t.lag < 0:
        raise ConfigError(f"need tune.workers >= 1 and tune.lag >= 0, got {t.workers}, {t.lag}")
    if t.workers > 1 and t.lag < t.workers - 1:
        raise ConfigError(
            f"tune.workers={t.workers} needs tune.lag >= {t.workers - 1}: trial n is drawn "
            "from the trials below n - tune.lag, so with a smaller lag the workers wait for "
            "each other (a larger lag changes the tuned parameters, see the README)"
        )
    if t.workers > 1 and cfg.optuna_storage.startswith("sqlite"):
        raise ConfigError(
            f"tune.workers={t.workers} needs a database server as paths.optuna_storage (e.g. "
            "postgresql://host/db), not SQLite: SQLite lets one process write at a time, and "
            "the workers' heartbeats and trials would wait on its lock"
        )


def from_dict(data: dict) -> Config:
    """Rebuild a Config from :func:`to_dict` output (e.g. a saved ``config.json``)."""
    data = dict(data)
    profile = data.pop("profile", "paper")
    return _apply(Config(profile=profile), data)


def save(cfg: Config, path: Path) -> None:
    """Write the resolved config and its hash as JSON (atomically)."""
    from benchmark.io import atomic_write_text

    payload = {"hash": cfg.hash(), "config": cfg.to_dict()}
    atomic_write_text(Path(path), json.dumps(payload, indent=2, sort_keys=True))
