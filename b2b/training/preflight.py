"""Everything checked before a training run starts any process group: the launcher's settings, the
config against the shards on disk, the sample shape against the networks, ZeRO against DeepSpeed.

A mistake found here costs the user one clear line (``b2b train: error: ...``) instead of a traceback
from every rank of a job that waited in a queue.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import MutableMapping

from b2b.config import Config
from b2b.data.manifest import manifest_shape, read_manifest
from b2b.errors import ConfigError
from b2b.model.shape import check_shape

STAGE3_REFUSAL = (
    "deepspeed.zero_stage=3 is not supported: under ZeRO-3 the gradient penalty's double backward reaches "
    "convolution weights that ZeRO-3 has already released to their partitions (measured with DeepSpeed "
    "0.19.8: 'expected stride to be a single integer value...'), and b2b also reads whole parameters "
    "outside the engines (EMA, rank-0 weight checkpoints). Use deepspeed.zero_stage=2: it partitions "
    "gradients and optimizer states. Valid values: 0 (DDP), 1, 2"
)

# What `accelerate launch` exports for a config file with `distributed_type: DEEPSPEED` that b2b uses;
# mixed_precision is always listed, and b2b's own train.precision decides it.
ACCELERATE_FIELDS_TAKEN = {"zero_stage", "mixed_precision"}


def check_zero(cfg: Config) -> None:
    """Refuse ZeRO settings that cannot run.

    Raises
    ------
    ConfigError
        For ``deepspeed.zero_stage=3`` (see STAGE3_REFUSAL), or stages 1-2 without DeepSpeed installed.
    """
    stage = cfg.deepspeed.zero_stage
    if stage == 0:
        return
    if stage == 3:
        raise ConfigError(STAGE3_REFUSAL)
    if stage not in (1, 2):
        raise ConfigError(f"deepspeed.zero_stage={stage} is not one of 0 (DDP), 1, 2")
    if importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(
            f"deepspeed.zero_stage={stage} needs DeepSpeed: pip install 'b2b[deepspeed]' "
            "(or set deepspeed.zero_stage=0 for plain DDP)"
        )


def take_accelerate_deepspeed_settings(cfg: Config, environ: MutableMapping[str, str] = os.environ) -> None:
    """Take ``deepspeed.zero_stage`` from an accelerate DeepSpeed config (configs/accelerate/zero2.yaml).

    Call before the Accelerator is created. b2b drives DeepSpeed itself, so the variable that would
    make accelerate build its own DeepSpeed plugin is removed; accelerate then only starts the ranks
    and their process group.

    Parameters
    ----------
    cfg : Config
        ``deepspeed.zero_stage`` is set from the launcher (it may already say the same).
    environ : mapping
        The process environment.

    Raises
    ------
    ConfigError
        If the launcher's stage contradicts ``deepspeed.zero_stage``, is not supported, or its config
        sets DeepSpeed options b2b does not take from it (offload, a DeepSpeed JSON file, ...).
    """
    if environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true":
        return
    fields = {f for f in environ.get("ACCELERATE_CONFIG_DS_FIELDS", "").split(",") if f}
    others = sorted(fields - ACCELERATE_FIELDS_TAKEN)
    if others:
        raise ConfigError(
            f"the accelerate config sets DeepSpeed options b2b does not take from it: {', '.join(others)}. "
            "b2b builds DeepSpeed's config itself (b2b/training/zero.py); keep only "
            "deepspeed_config.zero_stage "
            "(see configs/accelerate/zero2.yaml), or launch with --multi_gpu and deepspeed.zero_stage=N"
        )
    raw = environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "")
    if not raw.isdigit():
        raise ConfigError(f"the accelerate config's deepspeed_config.zero_stage is {raw!r}; use 1 or 2")
    stage = int(raw)
    if cfg.deepspeed.zero_stage not in (0, stage):
        raise ConfigError(
            f"deepspeed.zero_stage={cfg.deepspeed.zero_stage} contradicts the accelerate config's "
            f"zero_stage {stage}: set one of them"
        )
    cfg.deepspeed.zero_stage = stage
    check_zero(cfg)
    environ.pop("ACCELERATE_USE_DEEPSPEED")


EXTRAS = {"wandb": "wandb", "tensorboard": "tensorboard"}


def check_tracker(cfg: Config) -> None:
    """Refuse a tracker whose package is not installed, naming the extra that brings it."""
    package = EXTRAS.get(cfg.log.tracker)
    if package is not None and importlib.util.find_spec(package) is None:
        raise ConfigError(
            f"log.tracker={cfg.log.tracker} needs {package}: pip install 'b2b[{package}]' "
            "(or log.tracker=none; metrics.jsonl is always written)"
        )


def validate_for_training(cfg: Config) -> dict:
    """Check what training needs from disk and from the networks; return the shards' manifest.

    Sets ``data.shape`` from the manifest when it is not given. Raises ConfigError / DataError /
    ShapeError before any process group is started.
    """

    check_zero(cfg)
    check_tracker(cfg)
    manifest = read_manifest(cfg.data.shards)
    shape = manifest_shape(manifest, cfg.data.shards)
    if cfg.data.shape is not None and list(cfg.data.shape) != shape:
        raise ConfigError(
            f"data.shape {cfg.data.shape} does not match the shards in {cfg.data.shards!r}, "
            f"which hold samples of shape {shape}; drop data.shape or rebuild the shards"
        )
    cfg.data.shape = shape
    check_shape(shape)
    return manifest
