"""Sharded, atomic checkpoints under ``<run>/checkpoints/step-<N>/`` and loading generators from them.

Layout of one checkpoint::

    step-<N>/
        models.pt                  generator, critic and EMA weights (rank 0; identical on all ranks)
        generator-training.pt      optimizer, scheduler, loss scaler (DDP: rank 0; ZeRO: per rank)
        critic-training.pt
        rank-<r>.pt                each rank's RNG states and data position
        meta.json                  step, epoch, world size, config, roll spec
        COMPLETE                   written last: the list of files; a folder without it is never used

A checkpoint is written as ``.step-<N>.partial`` and renamed when complete, so a kill at any moment
leaves either the old set of checkpoints or the old set plus the new one — never a damaged latest one.
Old checkpoints beyond ``keep`` are removed only after a newer one is complete.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from b2b.config import Config, config_from_dict
from b2b.errors import CheckpointError
from b2b.spec import RollSpec

COMPLETE = "COMPLETE"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoints_dir(run_path: str | Path) -> Path:
    return Path(run_path) / "checkpoints"


def is_complete(path: str | Path) -> bool:
    return (Path(path) / COMPLETE).is_file()


def complete_checkpoints(run_path: str | Path) -> list[tuple[int, Path]]:
    """``(step, folder)`` of every complete checkpoint of a run, oldest first."""
    root = checkpoints_dir(run_path)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and is_complete(child):
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(run_path: str | Path) -> Path | None:
    found = complete_checkpoints(run_path)
    return found[-1][1] if found else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A complete checkpoint folder from a checkpoint folder or a run folder (its latest one).

    Raises CheckpointError naming the path and what was expected.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint path {str(path)!r} does not exist")
    if (path / "meta.json").is_file() or _STEP_DIR.match(path.name) or path.name == "best":
        if not is_complete(path):
            raise CheckpointError(
                f"checkpoint {str(path)!r} is incomplete (no {COMPLETE} marker): it was interrupted "
                "while being written; use an earlier one"
            )
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise CheckpointError(
            f"{str(path)!r} is neither a checkpoint folder (…/checkpoints/step-N) nor a run folder with a "
            "complete checkpoint"
        )
    return latest


# ---------------------------------------------------------------------------------------------------
# RNG state: every source of randomness a step uses, per rank.


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def weights_digest(modules: Mapping[str, nn.Module]) -> str:
    """SHA-256 of every tensor of ``modules``' state dicts, in order: equal digests, equal weights.

    Each rank stores the digest of its own copy in its rank file, so a checkpoint shows that all ranks
    held the same model (a rank that drifted apart would be visible).
    """
    import hashlib

    digest = hashlib.sha256()
    for name, module in modules.items():
        for key, tensor in module.state_dict().items():
            digest.update(f"{name}.{key}".encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------
# Saving


def save_checkpoint(
    run_path: str | Path,
    step: int,
    *,
    rank: int,
    world_size: int,
    barrier: Callable[[], None],
    models: Mapping[str, nn.Module],
    nets: Mapping[str, Any],
    rank_state: Mapping[str, Any],
    meta: Mapping[str, Any],
    keep: int,
) -> Path:
    """Write checkpoint ``step`` collectively; every rank calls this with its own ``rank_state``.

    ``models`` are saved by rank 0 (their weights are identical on every rank); each of ``nets``
    (b2b.engine.Net or b2b.zero.ZeroNet) saves its own training state on every rank. Returns the final
    folder. An existing complete checkpoint of the same step is kept as it is.
    """
    root = checkpoints_dir(run_path)
    final = root / f"step-{step}"
    partial = root / f".step-{step}.partial"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        if partial.exists():
            shutil.rmtree(partial)  # left by a killed save
        if not is_complete(final):
            partial.mkdir()
    barrier()
    if is_complete(final):
        return final  # this step was already saved (e.g. a stop right after a resume)
    torch.save(dict(rank_state), partial / f"rank-{rank:05d}.pt")
    for name, net in nets.items():
        net.save_training_state(partial, name)
    if rank == 0:
        torch.save({name: m.state_dict() for name, m in models.items()}, partial / "models.pt")
        (partial / "meta.json").write_text(json.dumps(dict(meta), indent=2, default=str))
    barrier()
    if rank == 0:
        missing = [r for r in range(world_size) if not (partial / f"rank-{r:05d}.pt").is_file()]
        if missing:
            raise CheckpointError(
                f"ranks {missing} did not write their state into {partial}: is {root} on storage "
                "shared by all nodes?"
            )
        files = sorted(p.name for p in partial.iterdir())
        (partial / COMPLETE).write_text(json.dumps({"step": step, "files": files}) + "\n")
        if final.exists():
            shutil.rmtree(final)  # an incomplete leftover with the final name (never a complete one)
        os.replace(partial, final)
        prune(run_path, keep)
    barrier()
    return final


def prune(run_path: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` complete checkpoints (never the newest); return what went."""
    found = complete_checkpoints(run_path)
    doomed = [path for _, path in found[: max(0, len(found) - max(1, keep))]]
    for path in doomed:
        # Remove the marker first: a kill during rmtree then leaves an incomplete folder, never a
        # folder that claims to be complete but is missing files.
        (path / COMPLETE).unlink(missing_ok=True)
        shutil.rmtree(path, ignore_errors=True)
    return doomed


def copy_as(checkpoint: Path, name: str) -> Path:
    """Atomically replace ``checkpoints/<name>`` by a copy of ``checkpoint`` (hard links where possible)."""
    target = checkpoint.parent / name
    partial = checkpoint.parent / f".{name}.partial"
    if partial.exists():
        shutil.rmtree(partial)

    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(checkpoint, partial, copy_function=link_or_copy)
    old = checkpoint.parent / f".{name}.old"
    if target.exists():
        os.replace(target, old)
    os.replace(partial, target)
    shutil.rmtree(old, ignore_errors=True)
    return target


# ---------------------------------------------------------------------------------------------------
# Loading

# Config keys added since the first checkpoints, with the value those checkpoints were trained with (the
# current default may differ): a model saved before ``model.output`` existed had the seed's sigmoid.
_BEFORE_KEYS = {
    ("model", "output"): "sigmoid",
    ("model", "density_init"): False,
    ("model", "mbstd_group"): 0,
    ("model", "critic_norm_first"): True,
}


def saved_config(values: dict, where: str) -> Config:
    """The Config a checkpoint or export was trained with, from its saved dict (older ones included)."""
    values = {k: dict(v) if isinstance(v, dict) else v for k, v in values.items()}
    for (section, key), old in _BEFORE_KEYS.items():
        values.setdefault(section, {}).setdefault(key, old)
    return config_from_dict(values, where)


def read_meta(checkpoint: str | Path) -> dict:
    path = resolve_checkpoint(checkpoint)
    return json.loads((path / "meta.json").read_text())


# Config keys whose change makes a checkpoint unusable (the weights or states would not fit).
INCOMPATIBLE_SECTIONS = ("model",)
INCOMPATIBLE_KEYS = (("data", "shape"), ("deepspeed", "zero_stage"))


def check_compatible(meta: Mapping, cfg: Config, path: Path) -> None:
    """Refuse to resume ``path`` with a config that changes the networks or the checkpoint format."""
    saved = meta["config"]
    now = cfg.to_dict()
    diffs = []
    for section in INCOMPATIBLE_SECTIONS:
        for key, value in now[section].items():
            if saved[section].get(key) != value:
                diffs.append(f"{section}.{key}: checkpoint {saved[section].get(key)!r}, config {value!r}")
    for section, key in INCOMPATIBLE_KEYS:
        if saved[section].get(key) != now[section][key]:
            diffs.append(
                f"{section}.{key}: checkpoint {saved[section].get(key)!r}, config {now[section][key]!r}"
            )
    if diffs:
        raise CheckpointError(
            f"cannot resume from {path}: the config changes what the checkpoint holds ("
            + "; ".join(diffs)
            + "). Use the checkpoint's settings, or start a new run "
            "(another name= or checkpoint.resume=never)"
        )


def load_models(checkpoint: Path, models: Mapping[str, nn.Module]) -> None:
    state = torch.load(checkpoint / "models.pt", map_location="cpu", weights_only=True)
    for name, module in models.items():
        module.load_state_dict(state[name])


def load_rank_state(checkpoint: Path, rank: int, world_size: int, saved_world_size: int) -> dict:
    """This rank's saved state; on a different world size, rank 0's (RNG states are then not restored)."""
    if world_size == saved_world_size:
        return torch.load(checkpoint / f"rank-{rank:05d}.pt", map_location="cpu", weights_only=False)
    state = torch.load(checkpoint / "rank-00000.pt", map_location="cpu", weights_only=False)
    state.pop("rng", None)
    return state


def load_generator(path: str | Path, use_ema: bool = True) -> tuple[nn.Module, RollSpec, Config]:
    """A generator ready for sampling (eval mode, CPU) from a checkpoint, a run folder or a safetensors file.

    Returns ``(generator, spec, config)``.
    """
    from b2b.models import build_models

    path = Path(path)
    if path.suffix == ".safetensors":
        return _load_exported(path)
    checkpoint = resolve_checkpoint(path)
    meta = read_meta(checkpoint)
    cfg = saved_config(meta["config"], f" (config saved in {checkpoint})")
    spec = RollSpec.from_dict(meta["spec"])
    generator, _ = build_models(cfg, spec.shape)
    state = torch.load(checkpoint / "models.pt", map_location="cpu", weights_only=True)
    generator.load_state_dict(state["ema" if use_ema else "generator"])
    return generator.eval(), spec, cfg


def export_generator(checkpoint: str | Path, out: str | Path, use_ema: bool = True) -> Path:
    """Write the (EMA) generator of ``checkpoint`` with its config and spec as one safetensors file."""
    from safetensors.torch import save_file

    generator, spec, cfg = load_generator(checkpoint, use_ema)
    checkpoint = resolve_checkpoint(checkpoint)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    metadata = {
        "b2b_config": json.dumps(cfg.to_dict()),
        "b2b_spec": json.dumps(spec.to_dict()),
        "b2b_step": str(read_meta(checkpoint)["step"]),
        "b2b_weights": "ema" if use_ema else "generator",
    }
    tensors = {k: v.contiguous() for k, v in generator.state_dict().items()}
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, out)
    return out


def _load_exported(path: Path) -> tuple[nn.Module, RollSpec, Config]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    from b2b.models import build_models

    if not path.is_file():
        raise CheckpointError(f"exported generator {str(path)!r} does not exist")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if "b2b_config" not in metadata:
        raise CheckpointError(
            f"{path} is not a b2b export (no b2b_config metadata); make one with `b2b export`"
        )
    cfg = saved_config(json.loads(metadata["b2b_config"]), f" (config in {path})")
    spec = RollSpec.from_dict(json.loads(metadata["b2b_spec"]))
    generator, _ = build_models(cfg, spec.shape)
    generator.load_state_dict(load_file(str(path)))
    return generator.eval(), spec, cfg
