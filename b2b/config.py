"""The run configuration: YAML files plus dotted ``key=value`` overrides, validated before any work.

Every field has a default, a type and (where it matters) a set of valid values. ``load_config`` reads a
YAML file, applies overrides such as ``train.precision=fp16``, checks types and values (NaN and
infinities are refused for every number), and returns a :class:`Config`. Errors name the key, the value
and what would be valid. This module is a leaf: checks that need the file system, the networks or
DeepSpeed live in :mod:`b2b.training.preflight`.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from b2b.atomic import write_text
from b2b.errors import ConfigError

SAFE_NAME = re.compile(r"[A-Za-z0-9._-]{1,100}")  # a run name is one folder: no '/', no shell or space


def _choice(*values: Any) -> dict:
    return {"choices": values}


def _at_least(low: float) -> dict:
    return {"min": low}


@dataclass
class DataConfig:
    shards: str = "shards/demo"  # folder with manifest.json and the tar shards
    shape: list[int] | None = None  # [tracks, time, pitch]; None: taken from the manifest
    batch_size: int = field(default=16, metadata=_at_least(1))  # per device and micro-batch
    num_workers: int = field(default=0, metadata=_at_least(0))  # DataLoader workers per rank
    shuffle_buffer: int = field(default=1024, metadata=_at_least(1))  # samples held for shuffling
    transpose: int = field(default=0, metadata=_at_least(0))  # random pitch shift of ± this many semitones


@dataclass
class ModelConfig:
    latent_dim: int = field(default=128, metadata=_at_least(1))
    g_width: int = field(default=32, metadata=_at_least(1))  # generator's last hidden channels
    d_width: int = field(default=32, metadata=_at_least(1))  # critic's first channels
    critic_norm: str = field(default="layer", metadata=_choice("batch", "layer", "none"))
    dropout: float = field(default=0.3, metadata={"min": 0.0, "max": 0.99})
    sync_batchnorm: bool = False
    # What the critic sees from the generator: probabilities, or binary notes (straight-through).
    output: str = field(default="binary_det", metadata=_choice("sigmoid", "binary_det", "binary_stoch"))
    pitch_bias: bool = True  # a learned output bias per track and pitch
    density_init: bool = True  # start the output bias at each track's (pitch's) share of on-cells in the data
    mbstd_group: int = field(default=0, metadata=_at_least(0))  # minibatch-std channel in the critic
    bar_gate: bool = True  # a per-track, per-bar on/off gate from the latent in front of the notes
    critic_norm_first: bool = False  # normalize the critic's first convolution too (false: bias, no norm)


@dataclass
class LossConfig:
    gp_lambda: float = field(default=10.0, metadata=_at_least(0.0))
    n_critic: int = field(default=5, metadata=_at_least(1))
    gp_every: int = field(default=1, metadata=_at_least(1))  # lazy penalty: every k critic steps, ×k


@dataclass
class OptimConfig:
    g_lr: float = field(default=1e-3, metadata=_at_least(0.0))
    d_lr: float = field(default=1e-3, metadata=_at_least(0.0))
    betas: list[float] = field(default_factory=lambda: [0.5, 0.9])
    lr_decay: float = field(
        default=0.75, metadata={"min": 0.0, "max": 1.0}
    )  # the learning rate's factor every lr_decay_every epochs
    lr_decay_every: int = field(default=25, metadata=_at_least(1))  # epochs between decays
    # the last share of the run's steps, over which both learning rates fall linearly to 0 (0: off)
    anneal: float = field(default=0.5, metadata={"min": 0.0, "max": 1.0})


@dataclass
class TrainConfig:
    # auto: bf16 on a GPU that has it, else fp32 (on a CPU bf16 gains little speed for its lost precision)
    precision: str = field(default="auto", metadata=_choice("auto", "bf16", "fp16", "fp32"))
    steps: int = field(default=1000, metadata=_at_least(0))  # generator steps; 0: run `epochs`
    epochs: int = field(default=0, metadata=_at_least(0))  # used when steps == 0
    grad_accum: int = field(default=1, metadata=_at_least(1))
    ema_beta: float = field(default=0.99, metadata={"min": 0.0, "max": 1.0})  # the EMA's longest memory
    # EMA ramp-up (StyleGAN2): its half-life is at most this share of the samples seen so far; 0: off
    ema_rampup: float = field(default=0.05, metadata={"min": 0.0, "max": 1.0})
    seed: int = 0
    threshold: float = field(default=0.5, metadata={"min": 0.0, "max": 1.0})  # binarize samples
    dist_timeout_s: int = field(default=300, metadata=_at_least(10))  # collective timeout
    stall_timeout_s: int = field(default=900, metadata=_at_least(0))  # dump every thread's stack; 0: off
    peak_tflops: float = field(default=0.0, metadata=_at_least(0.0))  # MFU reference; 0: the device's
    # Speed switches (docs/benchmarks.md measures each; results stay within the tested tolerances)
    channels_last: bool = False  # NHWC memory format for both networks and the batches
    tf32: bool = True  # TF32 tensor cores for fp32 matmuls and convolutions (Ampere and later GPUs)
    cudnn_benchmark: bool = True  # let cuDNN pick the fastest convolution algorithms (GPUs)
    adam: str = field(
        default="auto", metadata=_choice("auto", "fused", "foreach", "loop")
    )  # auto: fused on GPUs
    compile: bool = False  # torch.compile the forward passes (the penalty's double backward stays eager)


@dataclass
class LogConfig:
    tracker: str = field(default="none", metadata=_choice("wandb", "tensorboard", "none"))
    project: str = "b2b"
    every: int = field(default=10, metadata=_at_least(1))  # steps between metric lines
    progress: bool = True  # progress bar on rank 0
    snapshot_every: int = field(default=500, metadata=_at_least(0))  # 0: only at the end
    n_snapshot: int = field(default=8, metadata=_at_least(1))  # fixed latents in a snapshot
    metrics_every: int = field(default=500, metadata=_at_least(0))  # music metrics; 0: off
    metrics_n: int = field(default=256, metadata=_at_least(1))  # samples for music metrics


@dataclass
class CheckpointConfig:
    every: int = field(default=500, metadata=_at_least(0))  # 0: only at the end
    keep: int = field(default=3, metadata=_at_least(1))
    resume: str = "auto"  # auto: latest complete in the run dir; never; or a checkpoint path


@dataclass
class DeepSpeedConfig:
    zero_stage: int = field(default=0, metadata=_choice(0, 1, 2, 3))  # 0: plain DDP


@dataclass
class Config:
    name: str = "run"
    run_dir: str = "runs"  # the run lives in <run_dir>/<name>
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir) / self.name

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def dump(self, path: str | Path) -> None:
        """Write the resolved config as YAML (atomically: a reader never sees half a file)."""
        write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


# ---------------------------------------------------------------------------------------------------
# Reading and overriding


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def valid_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """All dotted keys a config accepts, e.g. ``train.precision``."""
    keys = []
    for name, tp in _hints(cls).items():
        if _is_section(tp):
            keys += valid_keys(tp, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def _describe_type(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(key: str, value: Any, tp: Any, meta: dict) -> Any:
    """Convert ``value`` to the field type ``tp`` or raise a ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        is_null = value is None or (isinstance(value, str) and value.strip() in ("null", "~"))
        if type(None) in args and is_null:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0], meta)
    if origin is list:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(f"{key}[{i}]", v, args[0], {}) for i, v in enumerate(value)]
    out: object
    try:
        if tp is bool:
            if isinstance(value, str):
                lowered = value.strip().lower()
                if lowered in ("true", "yes", "1", "on"):
                    return True
                if lowered in ("false", "no", "0", "off"):
                    return False
                raise ValueError
            if not isinstance(value, bool):
                raise ValueError
            out = value
        elif tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            out = int(value)
        elif tp is float:
            if isinstance(value, bool):
                raise ValueError
            out = float(value)
        elif tp is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            out = str(value)
        else:
            out = value
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: expected {_describe_type(tp)}, got {value!r}") from None
    if "choices" in meta and out not in meta["choices"]:
        valid = ", ".join(repr(c) for c in meta["choices"])
        raise ConfigError(f"{key}: {out!r} is not one of {valid}")
    if isinstance(out, float) and not math.isfinite(out):
        raise ConfigError(f"{key}: {value!r} is not a finite number")
    if "min" in meta and out < meta["min"]:
        raise ConfigError(f"{key}: {out!r} is below the minimum {meta['min']}")
    if "max" in meta and out > meta["max"]:
        raise ConfigError(f"{key}: {out!r} is above the maximum {meta['max']}")
    return out


def _unknown_key(key: str, where: str) -> ConfigError:
    import difflib

    keys = valid_keys()
    close = difflib.get_close_matches(key, keys, n=1)
    if close:
        return ConfigError(f"unknown config key {key!r}{where}: did you mean {close[0]!r}? (docs/config.md)")
    return ConfigError(f"unknown config key {key!r}{where}; valid keys are: {', '.join(keys)}")


def _build(cls: type, values: dict, prefix: str, where: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}{where}: expected a mapping, got {values!r}")
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in values.items():
        if name not in hints:
            raise _unknown_key(prefix + name, where)
        tp = hints[name]
        if _is_section(tp):
            kwargs[name] = _build(tp, value or {}, f"{prefix}{name}.", where)
        else:
            kwargs[name] = _coerce(prefix + name, value, tp, dict(fields[name].metadata))
    return cls(**kwargs)


def parse_overrides(overrides: list[str]) -> dict:
    """Turn ``["train.precision=fp16", "data.batch_size=8"]`` into a nested dict of strings."""
    nested: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. train.precision=fp16)")
        key, raw = item.split("=", 1)
        key = key.strip()
        if key not in valid_keys():
            raise _unknown_key(key, " in the command-line overrides")
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = raw  # typed by _coerce against the field (so "none" stays a string where valid)
    return nested


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def config_from_dict(values: dict, where: str = "") -> Config:
    return _build(Config, values, "", where)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read ``path`` (YAML; None for the defaults), apply ``overrides``, validate types and values."""
    values: dict = {}
    where = ""
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"config file {str(path)!r} is a folder; give a YAML file (see configs/)")
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            values = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {problem}{where}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {str(path)!r} cannot be read ({exc})") from None
        if values is None:
            raise ConfigError(
                f"config file {str(path)!r} is empty: give it settings (see configs/) or leave out --config "
                "to train with the defaults"
            )
        where = f" in {path}"
        config_from_dict(values, where)  # report file errors against the file
    cfg = config_from_dict(_merge(values, parse_overrides(overrides or [])), where)
    _check_consistency(cfg)
    return cfg


def _check_consistency(cfg: Config) -> None:
    if len(cfg.optim.betas) != 2 or not all(0.0 <= b < 1.0 for b in cfg.optim.betas):
        raise ConfigError(f"optim.betas: expected two numbers in [0, 1), got {cfg.optim.betas}")
    if cfg.data.shape is not None and (len(cfg.data.shape) != 3 or min(cfg.data.shape) < 1):
        raise ConfigError(
            f"data.shape: expected [tracks, time, pitch] of positive sizes, got {cfg.data.shape}"
        )
    if cfg.train.steps == 0 and cfg.train.epochs == 0:
        raise ConfigError("train.steps and train.epochs are both 0: set one of them to the length of the run")
    if cfg.model.sync_batchnorm and cfg.model.critic_norm == "batch" and cfg.loss.gp_lambda > 0:
        raise ConfigError(
            "model.sync_batchnorm=true with model.critic_norm=batch cannot be used with the gradient "
            "penalty: SyncBatchNorm has no double backward (pytorch#61222). Use model.critic_norm=layer "
            "(recommended for WGAN-GP) or none, or sync_batchnorm=false"
        )
    for key in ("run_dir", "data.shards", "log.project", "checkpoint.resume"):
        section, _, field_name = key.rpartition(".")
        value = getattr(getattr(cfg, section) if section else cfg, field_name)
        if any(ord(ch) < 32 for ch in value):
            raise ConfigError(f"{key}: {value!r} contains a newline or control character")
    for key, example in (("data.shards", "data.shards=shards/demo"), ("run_dir", "run_dir=runs")):
        section, _, field_name = key.rpartition(".")
        if not getattr(getattr(cfg, section) if section else cfg, field_name).strip():
            raise ConfigError(f"{key} is empty: give a folder, e.g. {example}")
    if not SAFE_NAME.fullmatch(cfg.name) or cfg.name in (".", ".."):
        raise ConfigError(
            f"name: {cfg.name!r} is not a safe folder name: use letters, digits, '.', '_' and '-' "
            "(at most 100 characters, not '.' or '..'), e.g. name=lpd17-run1"
        )
