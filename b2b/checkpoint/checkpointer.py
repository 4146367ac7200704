"""Atomic, verified checkpoints of every stateful part of a run, and loading generators from them.

A run's stateful parts are registered once, by name, with a :class:`Checkpointer` (as torchtitan's
``CheckpointManager(states={...})``): each has ``state_dict()`` / ``load_state_dict()``, holding tensors
and plain types only, so every file loads with ``torch.load(weights_only=True)``. Parts are stored by
scope:

- *replicated* parts (identical on every rank: networks with their optimizers, the EMA, the data
  position, the counters) are written once, by rank 0, as ``<name>.pt``;
- *per-rank* parts (the RNG streams) go into each rank's ``rank-<r>.pt``;
- parts with ``save_files`` / ``load_files`` (ZeRO's optimizer partitions) write their own files.

Layout of one checkpoint::

    step-<N>/
        generator.pt  critic.pt  ema.pt  loader.pt  progress.pt   replicated parts (rank 0)
        rank-<r>.pt                                                  per-rank parts (every rank)
        zero/<name>/...                                              ZeRO partitions (ZeRO only)
        meta.json                                                    step, world size, config, roll spec
        COMPLETE                                                     written last: every file's sha256

The folder protocol: a checkpoint is written as ``.step-<N>.partial``; every file and the folder are
fsynced; ``COMPLETE`` lists each file with its sha256 and is written last; then the folder is renamed to
``step-<N>``. A kill at any moment leaves the old set of checkpoints, or the old set plus the new one.
Loading checks every digest first, so a damaged file is named before anything is read from it. Old
checkpoints beyond ``keep`` are removed only after a newer one is complete.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from b2b.atomic import file_sha256, fsync_dir, save_torch, write_text
from b2b.checkpoint.folder import (
    ABANDONED,
    BEST,
    COMPLETE,
    FORMAT,
    META,
    _best_step,
    _load,
    checkpoints_dir,
    complete_checkpoints,
    is_complete,
    latest_checkpoint,
    read_meta,
    resolve_checkpoint,
    verify,
)
from b2b.checkpoint.inference import saved_config
from b2b.config import Config
from b2b.errors import CheckpointError
from b2b.runtime import ranks


@runtime_checkable
class Stateful(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class PerRank:
    """Marks a stateful part whose state differs between ranks (each rank saves and restores its own)."""

    def __init__(self, part: Stateful):
        self.part = part


class RNGState:
    """Every random stream a step draws from, on this rank: torch (CPU and CUDA), numpy, Python."""

    def state_dict(self) -> dict:
        legacy = np.random.get_state()
        assert isinstance(legacy, tuple)  # numpy's global RNG is an MT19937: its state is this tuple
        kind, keys, pos, has_gauss, cached = legacy
        state = {
            "torch": torch.get_rng_state(),
            "numpy": {
                "keys": torch.from_numpy(keys.astype(np.int64)),
                "pos": int(pos),
                "has_gauss": int(has_gauss),
                "cached_gaussian": float(cached),
            },
            "python": list(random.getstate()[1]),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict) -> None:
        torch.set_rng_state(state["torch"])
        n = state["numpy"]
        keys = n["keys"].numpy().astype(np.uint32)
        np.random.set_state(("MT19937", keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
        random.setstate((3, tuple(state["python"]), None))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


class ModuleState:
    """A module's weights and buffers as a stateful part (the EMA generator)."""

    def __init__(self, module: nn.Module):
        self.module = module

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state)


def weights_digest(modules: Mapping[str, nn.Module]) -> str:
    """SHA-256 of every tensor of ``modules``' state dicts, in order: equal digests, equal weights."""
    digest = hashlib.sha256()
    for name, module in modules.items():
        for key, tensor in module.state_dict().items():
            digest.update(f"{name}.{key}".encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class WeightsDigest:
    """A per-rank part: the digest of the weights this rank held when saving.

    Equal digests in every rank file show that all ranks trained one model; on load, the weights just
    restored must have the saved digest, or the checkpoint is refused.
    """

    def __init__(self, modules: Mapping[str, nn.Module]):
        self.modules = modules

    def state_dict(self) -> dict:
        return {"sha256": weights_digest(self.modules)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("sha256") != weights_digest(self.modules):
            raise CheckpointError(
                "the weights restored from the checkpoint do not have the digest saved with them: the "
                "checkpoint is damaged or was modified; resume from an earlier one"
            )


class Checkpointer:
    """Saves and restores every stateful part of a run by name.

    Parameters
    ----------
    run_path : Path
        The run folder; checkpoints go to ``<run_path>/checkpoints``.
    states : mapping of name to part
        A :class:`Stateful` (replicated: rank 0 writes it), a :class:`PerRank` around one, or a part that
        also has ``save_files(folder, name)`` / ``load_files(folder, name)`` (called on every rank).
    keep : int
        Complete checkpoints kept.
    """

    def __init__(self, run_path: Path, states: Mapping[str, Any], keep: int):
        self.run_path = Path(run_path)
        self.root = checkpoints_dir(run_path)
        self.states = dict(states)
        self.keep = keep

    def _replicated(self) -> dict[str, Stateful]:
        return {k: v for k, v in self.states.items() if not isinstance(v, PerRank)}

    def _per_rank(self) -> dict[str, Stateful]:
        return {k: v.part for k, v in self.states.items() if isinstance(v, PerRank)}

    def _with_files(self) -> dict[str, Any]:
        return {k: v for k, v in self._replicated().items() if hasattr(v, "save_files")}

    # -- saving ---------------------------------------------------------------------------------------

    def save(self, step: int, meta: Mapping[str, Any]) -> Path:
        """Write checkpoint ``step`` collectively (every rank calls it); return its folder.

        Raises CheckpointError when a rank cannot write its part; for a full disk the message names the
        folder and the bytes needed. The partial folder is then removed and earlier checkpoints stay intact.
        """
        final = self.root / f"step-{step}"
        partial = self.root / f".step-{step}.partial"
        rank = ranks.rank()

        def prepare() -> None:
            self.root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(partial, ignore_errors=True)  # left by a killed save
            if is_complete(final):
                # A resume moves later checkpoints away (abandon_after), so this is another trainer's.
                raise CheckpointError(f"{final} already exists: another run wrote to {self.run_path}")
            if final.exists():
                shutil.rmtree(final)  # an incomplete leftover with the final name
            partial.mkdir()

        def write() -> None:
            states = {n: p.state_dict() for n, p in self._per_rank().items()}
            save_torch(states, partial / f"rank-{rank:05d}.pt")
            for name, part in self._with_files().items():
                part.save_files(partial, name)
            if rank == 0:
                for name, part in self._replicated().items():
                    save_torch(part.state_dict(), partial / f"{name}.pt")
                values = {"format": FORMAT, **meta, "world_size": ranks.world_size(), "time": time.time()}
                write_text(partial / META, json.dumps(values, indent=2, default=str))

        self._together(prepare if rank == 0 else None, partial)
        self._together(write, partial)
        self._together((lambda: self._complete(partial, final, step)) if rank == 0 else None, partial)
        return final

    def _together(self, work: Callable[[], None] | None, partial: Path) -> None:
        """Run ``work`` on this rank, then agree across ranks: if any rank failed, all raise (a barrier)."""
        error = None
        try:
            if work is not None:
                work()
        except OSError as exc:
            error = self._disk_error(exc, partial)
        except CheckpointError as exc:
            error = str(exc)
        if ranks.any_true(error is not None):
            if ranks.rank() == 0:
                shutil.rmtree(partial, ignore_errors=True)
            raise CheckpointError(error or f"another rank failed to write its part of {partial}")

    def _disk_error(self, exc: OSError, partial: Path) -> str:
        if exc.errno != errno.ENOSPC:
            return f"cannot write checkpoint {partial}: {exc}"
        previous = latest_checkpoint(self.run_path)
        need = sum(p.stat().st_size for p in previous.rglob("*") if p.is_file()) if previous else None
        size = (
            f"about {need / 1e6:.1f} MB (the size of {previous.name})" if need and previous else "more room"
        )
        kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
        return (
            f"no space left on the device of {self.root}: a checkpoint needs {size}; {kept}. "
            "Free space and run the same command again to resume"
        )

    def _complete(self, partial: Path, final: Path, step: int) -> None:
        missing = [r for r in range(ranks.world_size()) if not (partial / f"rank-{r:05d}.pt").is_file()]
        if missing:
            raise CheckpointError(
                f"ranks {missing} did not write their state into {partial}: is {self.root} on storage "
                "shared by all nodes?"
            )
        files = sorted(p for p in partial.rglob("*") if p.is_file())
        for folder in {p.parent for p in files} | {partial}:
            fsync_dir(folder)
        digests = {str(p.relative_to(partial)): file_sha256(p) for p in files}
        write_text(partial / COMPLETE, json.dumps({"step": step, "sha256": digests}, indent=1) + "\n")
        fsync_dir(partial)
        os.replace(partial, final)
        fsync_dir(self.root)
        self.prune()

    def prune(self) -> list[Path]:
        """Delete all but the newest ``keep`` complete checkpoints (never the newest); return what went."""
        found = complete_checkpoints(self.run_path)
        doomed = [path for _, path in found[: max(0, len(found) - max(1, self.keep))]]
        for path in doomed:
            # Remove the marker first: a kill during rmtree then leaves an incomplete folder, never a
            # folder that claims to be complete but is missing files.
            (path / COMPLETE).unlink(missing_ok=True)
            shutil.rmtree(path, ignore_errors=True)
        return doomed

    def mark_best(self, checkpoint: Path) -> Path:
        """Make ``checkpoints/best`` the given checkpoint, with one atomic rename (rank 0).

        ``best`` is a symbolic link to a hidden copy (hard links where possible) that pruning leaves alone.
        """
        copy = self.root / f".best-{checkpoint.name}"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(checkpoint, copy, copy_function=_link_or_copy)
        link = self.root / f".{BEST}.link"
        link.unlink(missing_ok=True)
        link.symlink_to(copy.name)
        old = (self.root / BEST).resolve() if (self.root / BEST).is_symlink() else None
        if (self.root / BEST).is_dir() and not (self.root / BEST).is_symlink():
            shutil.rmtree(self.root / BEST)  # a best folder of the old format
        os.replace(link, self.root / BEST)
        fsync_dir(self.root)
        if old is not None and old != copy.resolve():
            shutil.rmtree(old, ignore_errors=True)
        return self.root / BEST

    # -- loading ---------------------------------------------------------------------------------------

    def load(self, folder: Path) -> dict:
        """Restore every part from ``folder`` (verified beforehand with :func:`verify`); return its meta.

        Per-rank parts are restored only on the world size they were saved with (on another, each rank
        keeps its fresh streams).
        """
        folder = Path(folder)
        meta = read_meta(folder)
        same_world = meta.get("world_size") == ranks.world_size()
        for name, part in self._replicated().items():
            path = folder / f"{name}.pt"
            if not path.is_file():
                raise CheckpointError(f"{path} is missing: checkpoint {folder} does not hold {name!r}")
            part.load_state_dict(_load(path))
        for name, part in self._with_files().items():
            part.load_files(folder, name)
        if same_world:
            path = folder / f"rank-{ranks.rank():05d}.pt"
            mine = _load(path)
            for name, part in self._per_rank().items():
                if name in mine:
                    try:
                        part.load_state_dict(mine[name])
                    except CheckpointError as exc:
                        raise CheckpointError(f"{path}: {exc}") from None
        return meta

    def abandon_after(self, step: int) -> list[Path]:
        """Move the checkpoints after ``step`` (and a ``best`` among them) to ``checkpoints/abandoned/``:
        a run resumed from an earlier checkpoint starts a new trajectory, whose checkpoints replace them."""
        moved = []
        target = self.root / ABANDONED / time.strftime("%Y%m%d-%H%M%S")
        best = self.root / BEST
        candidates = [path for s, path in complete_checkpoints(self.run_path) if s > step]
        if best.is_symlink() and _best_step(best) > step:
            candidates.append(best)
        for path in candidates:
            target.mkdir(parents=True, exist_ok=True)
            destination = target / path.name
            if path.is_symlink():
                shutil.copytree(path.resolve(), destination, copy_function=_link_or_copy)
                shutil.rmtree(path.resolve(), ignore_errors=True)
                path.unlink()
            else:
                os.replace(path, destination)
            moved.append(destination)
        if moved:
            fsync_dir(self.root)
        return moved

    def remove_leftovers(self) -> list[Path]:
        """Delete what killed saves and resumes left: ``.step-N.partial`` folders, DeepSpeed universal
        conversions (``.step-N-<name>-universal``) and stray best copies (rank 0)."""
        if not self.root.is_dir():
            return []
        best = (self.root / BEST).resolve() if (self.root / BEST).is_symlink() else None
        gone = []
        for path in self.root.iterdir():
            stale = (path.name.startswith(".step-") and path.name.endswith((".partial", "-universal"))) or (
                path.name.startswith(".best-") and path.resolve() != best
            )
            if stale or path.name == f".{BEST}.link":
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
                gone.append(path)
        return gone


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def choose_resume(run_path: Path, resume: str, warn: Callable[[str], None]) -> Path | None:
    """The checkpoint a run resumes from: ``auto`` (the newest that verifies, falling back to older ones
    with a warning for each damaged one), ``never``, or a given path (which must verify)."""
    if resume == "never":
        return None
    if resume != "auto":
        folder = resolve_checkpoint(resume)
        verify(folder)
        read_meta(folder)
        return folder
    for _, folder in reversed(complete_checkpoints(run_path)):
        try:
            verify(folder)
            read_meta(folder)
            return folder
        except CheckpointError as exc:
            warn(f"warning: {exc}; falling back to the previous checkpoint")
    return None


# Config keys whose change makes a checkpoint unusable (the weights or states would not fit).
INCOMPATIBLE_SECTIONS = ("model",)


INCOMPATIBLE_KEYS = (("data", "shape"), ("deepspeed", "zero_stage"))


COMPATIBLE_MODEL_KEYS = ("density_init",)  # initialisation only: irrelevant once weights exist


def check_compatible(meta: Mapping, cfg: Config, path: Path) -> None:
    """Refuse to resume ``path`` with a config that changes the networks or the checkpoint format."""
    saved = saved_config(meta["config"], f" (config saved in {path})").to_dict()
    now = cfg.to_dict()
    diffs = []
    keys = [(s, k) for s in INCOMPATIBLE_SECTIONS for k in now[s] if k not in COMPATIBLE_MODEL_KEYS]
    for section, key in [*keys, *INCOMPATIBLE_KEYS]:
        if saved[section].get(key) != now[section][key]:
            was, now_value = saved[section].get(key), now[section][key]
            diffs.append(f"{section}.{key}: checkpoint {was!r}, config {now_value!r}")
    if diffs:
        raise CheckpointError(
            f"cannot resume from {path}: the config changes what the checkpoint holds ("
            + "; ".join(diffs)
            + "). Use the checkpoint's settings, or start a new run "
            "(another name= or checkpoint.resume=never)"
        )
