"""Generators for sampling, from a checkpoint, a run folder or an exported safetensors file, and the
export itself. Checkpoints of older formats and configs load with the values they were trained with.
"""

from __future__ import annotations

import json
from pathlib import Path

from b2b.atomic import temporary_path
from b2b.checkpoint.folder import _load, read_meta, refuse_file_of_checkpoint, resolve_checkpoint, verify
from b2b.config import Config, config_from_dict
from b2b.errors import CheckpointError
from b2b.model.generator import Generator
from b2b.model.networks import build_models
from b2b.spec import RollSpec

# Config keys added since the first checkpoints, with the value those checkpoints were trained with (the
# current default may differ): a model saved before ``model.output`` existed had the original sigmoid.
_BEFORE_KEYS = {
    ("model", "output"): "sigmoid",
    ("model", "density_init"): False,
    ("model", "pitch_bias"): False,
    ("model", "mbstd_group"): 0,
    ("model", "critic_norm_first"): True,
    ("model", "bar_gate"): False,
}


def saved_config(values: dict, where: str) -> Config:
    """The Config a checkpoint or export was trained with, from its saved dict (older ones included)."""
    values = {k: dict(v) if isinstance(v, dict) else v for k, v in values.items()}
    for (section, key), old in _BEFORE_KEYS.items():
        values.setdefault(section, {}).setdefault(key, old)
    return config_from_dict(values, where)


def _generator_weights(checkpoint: Path, use_ema: bool) -> dict:
    if (checkpoint / "ema.pt").is_file():  # this format
        verify(checkpoint)
        return _load(checkpoint / "ema.pt") if use_ema else _load(checkpoint / "generator.pt")["model"]
    if (checkpoint / "models.pt").is_file():  # format 1: models.pt held all three
        return _load(checkpoint / "models.pt")["ema" if use_ema else "generator"]
    raise CheckpointError(f"{checkpoint} holds no generator weights (no ema.pt or models.pt)")


def load_generator(path: str | Path, use_ema: bool = True) -> tuple[Generator, RollSpec, Config]:
    """A generator ready for sampling (eval mode, CPU) from a checkpoint, a run folder or a safetensors file.

    Returns ``(generator, spec, config)``.
    """

    path = Path(path)
    refuse_file_of_checkpoint(path)
    if path.is_file() or path.suffix == ".safetensors":  # an export, whatever its file name
        return _load_exported(path)
    checkpoint = resolve_checkpoint(path)
    meta = read_meta(checkpoint)
    cfg = saved_config(meta["config"], f" (config saved in {checkpoint})")
    spec = RollSpec.from_dict(meta["spec"])
    generator, _ = build_models(cfg, spec.shape, spec.n_bars)
    try:
        generator.load_state_dict(_generator_weights(checkpoint, use_ema))
    except RuntimeError as exc:
        raise CheckpointError(f"{checkpoint}: the generator weights do not fit its config ({exc})") from None
    return generator.eval(), spec, cfg


def export_generator(checkpoint: str | Path, out: str | Path, use_ema: bool = True) -> Path:
    """Write the (EMA) generator of ``checkpoint`` with its config and spec as one safetensors file."""
    from safetensors.torch import save_file

    generator, spec, cfg = load_generator(checkpoint, use_ema)
    checkpoint = resolve_checkpoint(checkpoint)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "b2b_config": json.dumps(cfg.to_dict()),
        "b2b_spec": json.dumps(spec.to_dict()),
        "b2b_step": str(read_meta(checkpoint)["step"]),
        "b2b_weights": "ema" if use_ema else "generator",
    }
    tensors = {k: v.contiguous() for k, v in generator.state_dict().items()}
    with temporary_path(out) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return out


def _load_exported(path: Path) -> tuple[Generator, RollSpec, Config]:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError(f"exported generator {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        weights = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from None
    if "b2b_config" not in metadata:
        raise CheckpointError(
            f"{path} is not a b2b export (no b2b_config metadata); make one with `b2b export`"
        )
    cfg = saved_config(json.loads(metadata["b2b_config"]), f" (config in {path})")
    spec = RollSpec.from_dict(json.loads(metadata["b2b_spec"]))
    generator, _ = build_models(cfg, spec.shape, spec.n_bars)
    generator.load_state_dict(weights)
    return generator.eval(), spec, cfg
