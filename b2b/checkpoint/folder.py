"""The checkpoint folder protocol: where a run's checkpoints live, which are complete, reading one's
meta and verifying its digests before anything is loaded.

A checkpoint is written as ``.step-<N>.partial``; every file and the folder are fsynced; ``COMPLETE``
lists each file with its sha256 and is written last; then the folder is renamed to ``step-<N>``. A kill
at any moment leaves the old set of checkpoints, or the old set plus the new one.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from b2b.atomic import cannot_write_in, file_sha256
from b2b.errors import CheckpointError

FORMAT = "b2b-checkpoint/2"


COMPLETE = "COMPLETE"


META = "meta.json"


_STEP_DIR = re.compile(r"^step-(\d+)$")


ABANDONED = "abandoned"


ZERO_FILES = "zero"  # DeepSpeed's own partition files, which DeepSpeed loads (b2b/training/zero.py)


BEST = "best"


def checkpoints_dir(run_path: str | Path) -> Path:
    return Path(run_path) / "checkpoints"


def check_checkpoints_writable(run_path: str | Path) -> None:
    """Raise CheckpointError when the run's ``checkpoints/`` (or, before it exists, the run folder) cannot
    take a new file: found before step 1, not at the first save."""
    folder = checkpoints_dir(run_path)
    target = folder if folder.is_dir() else folder.parent
    reason = cannot_write_in(target)
    if reason is not None:
        raise CheckpointError(
            f"cannot write in {target} ({reason}): checkpoints are saved in {folder}; fix its "
            "permissions or choose another run_dir"
        )


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


def enclosing_checkpoint(path: str | Path) -> Path | None:
    """The checkpoint folder (or a run's ``checkpoints/`` folder) that ``path`` is or lies in, if any.

    A checkpoint holds exactly what training wrote (its ``COMPLETE`` lists every file's digest), so no
    command writes inside one.
    """
    path = Path(os.path.abspath(path))
    for folder in (path, *path.parents):
        in_checkpoints = folder.parent.name == "checkpoints"
        if (folder / META).is_file() or (folder / COMPLETE).is_file():
            return folder
        if in_checkpoints and (_STEP_DIR.match(folder.name) or folder.name == BEST):
            return folder
        if folder.name == "checkpoints" and complete_checkpoints(folder.parent):
            return folder
    return None


def refuse_file_of_checkpoint(path: Path) -> None:
    """Raise CheckpointError when ``path`` is one file of a checkpoint: the checkpoint is its folder."""
    folder = enclosing_checkpoint(path) if path.is_file() else None
    if folder is not None:
        raise CheckpointError(
            f"{str(path)!r} is a file of the checkpoint {str(folder)!r}; give the folder itself "
            f"(--checkpoint {folder}), or its run folder for the latest checkpoint"
        )


def resolve_checkpoint(path: str | Path) -> Path:
    """A complete checkpoint folder from a checkpoint folder or a run folder (its latest one).

    Raises CheckpointError naming the path and what was expected.
    """
    path = Path(path)
    if not path.exists():
        message = f"checkpoint path {str(path)!r} does not exist"
        if path.parent.name == "checkpoints":  # a step folder that was renamed or removed: what is there
            found = [folder.name for _, folder in complete_checkpoints(path.parent.parent)]
            there = f"the complete ones of {str(path.parent)!r} are {', '.join(found)}"
            if not found:
                there = f"{str(path.parent)!r} holds no complete checkpoint"
            message += f"; {there} (give one, or the run folder for the latest)"
        raise CheckpointError(message)
    refuse_file_of_checkpoint(path)
    if (path / META).is_file() or _STEP_DIR.match(path.name) or path.name == BEST:
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


def read_meta(checkpoint: str | Path) -> dict:
    path = resolve_checkpoint(checkpoint)
    try:
        meta = json.loads((path / META).read_text())
    except (OSError, ValueError) as exc:
        message = f"{path / META} is not readable JSON ({exc}); the checkpoint is damaged"
        raise CheckpointError(message) from None
    if not isinstance(meta, dict) or "step" not in meta or "config" not in meta:
        raise CheckpointError(f"{path / META} lacks 'step' or 'config'; the checkpoint is damaged")
    return meta


def verify(folder: Path) -> None:
    """Check every file listed in ``COMPLETE`` against its sha256; raise CheckpointError naming the first
    missing or damaged file (a checkpoint of the old format, without digests, is refused too)."""
    try:
        listing = json.loads((folder / COMPLETE).read_text())
    except (OSError, ValueError) as exc:
        message = f"{folder / COMPLETE} is not readable ({exc}); the checkpoint is damaged"
        raise CheckpointError(message) from None
    digests = listing.get("sha256") if isinstance(listing, dict) else None
    if not isinstance(digests, dict):
        raise CheckpointError(
            f"{folder} was written by an older b2b (checkpoint format 1, without file digests) and cannot "
            "be resumed by this version; sample from it (b2b sample still reads it) or start a new run"
        )
    for name, expected in sorted(digests.items()):
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{path} is missing from checkpoint {folder} (listed in {COMPLETE})")
        if file_sha256(path) != expected:
            raise CheckpointError(f"{path} is damaged: its sha256 differs from the one in {COMPLETE}")
        if path.suffix == ".pt" and ZERO_FILES not in path.parts:
            _load(path, mmap=True)  # holds tensors and plain types only (memory-mapped: cheap)


def _load(path: Path, mmap: bool = False) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:  # an object other than tensors and plain values: refused
        lines = [x.strip() for x in str(exc).splitlines() if "GLOBAL" in x or "global" in x]
        what = f" ({lines[0]})" if lines else ""
        raise CheckpointError(
            f"{path} cannot be loaded safely: it holds objects other than tensors and plain values{what}; "
            "b2b never unpickles those (a checkpoint from elsewhere could run code)"
        ) from None
    except Exception as exc:  # torch raises many types on a damaged or truncated file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path} cannot be loaded: it is damaged or not a checkpoint file ({first})"
        ) from None


def _best_step(best: Path) -> int:
    """The step of the checkpoint ``best`` links to (from its folder name, ``.best-step-N``)."""
    match = re.search(r"step-(\d+)$", os.readlink(best))
    return int(match.group(1)) if match else -1
