"""The experiment trackers a run can log to besides ``metrics.jsonl``: Weights & Biases and TensorBoard.

Accelerate starts them (``Accelerator(log_with=...)``); this module chooses their settings (W&B offline
without credentials, one W&B run id per run folder across resumes), flattens the config for them, and
logs snapshot media (a piano-roll image and its audio) the way each one takes them.
"""

from __future__ import annotations

import os
import re
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from b2b.atomic import write_text
from b2b.config import Config

SAMPLE_RATE = 22050  # snapshot audio


# What W&B accepts as a run id (it refuses / \\ # ? % : and whitespace); b2b writes 12 hex digits.
WANDB_ID = re.compile(r"[A-Za-z0-9_.-]{1,128}")


def wandb_run_id(run_path: Path) -> str:
    """The W&B run id of this run folder, created once, so a resumed or requeued run continues it.

    The file is written atomically, so only something else can damage it (an empty or edited file); such
    a file is replaced by a new id, with one warning, and the run goes on as a new W&B run.
    """
    path = run_path / "wandb_id.txt"
    stored = path.read_bytes().decode("utf-8", errors="replace").strip() if path.is_file() else None
    if stored is not None and WANDB_ID.fullmatch(stored):
        return stored
    run_id = uuid.uuid4().hex[:12]
    if stored is not None:
        print(
            f"b2b train: warning: {path} holds no W&B run id ({stored[:40]!r}); continuing as the new W&B "
            f"run {run_id}",
            file=sys.stderr,
        )
    write_text(path, run_id + "\n")
    return run_id


def _wandb_has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def tracker_kind(cfg: Config) -> str | None:
    """``log_with`` for the ``Accelerator`` (every rank); W&B falls back to offline mode when no API key
    is configured (runs can be synced later with ``wandb sync``)."""
    if cfg.log.tracker == "wandb":
        if "WANDB_MODE" not in os.environ and not _wandb_has_credentials():
            os.environ["WANDB_MODE"] = "offline"
        return "wandb"
    return None if cfg.log.tracker == "none" else cfg.log.tracker


def tracker_init_kwargs(cfg: Config, run_path: Path) -> dict:
    """``init_kwargs`` for ``init_trackers`` (rank 0, in the run folder it holds): W&B continues the run
    folder's W&B run across resumes."""
    if cfg.log.tracker != "wandb":
        return {}
    return {
        "wandb": {"id": wandb_run_id(run_path), "resume": "allow", "name": cfg.name, "dir": str(run_path)}
    }


def flatten(value: object, prefix: str = "", sep: str = "/") -> dict[str, Any]:
    """``{"a/b": 1, ...}`` from nested dicts: every leaf under its joined path."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, inner in value.items():
            out.update(flatten(inner, f"{prefix}{sep}{key}" if prefix else str(key), sep))
        return out
    return {prefix: value}


def flat_config(cfg: Config) -> dict[str, int | float | str | bool]:
    """``{"train.precision": "bf16", "data.shape": "[4, 64, 48]", ...}``: the config as trackers take it
    (TensorBoard's hparams accept scalars only)."""
    return {
        key: value if isinstance(value, (int, float, str, bool)) else str(value)
        for key, value in flatten(cfg.to_dict(), sep=".").items()
    }


def log_media(accelerator: Any, tracker: str, step: int, png: Path, audio: np.ndarray, wav: Path) -> None:
    """Log a snapshot's piano-roll image and its audio to the run's tracker.

    W&B takes the files; TensorBoard takes arrays (its ``add_audio`` fails on an empty clip: the audio
    is padded to the phrase's length, see :func:`b2b.eval.render.phrase_audio`).
    """
    handle = accelerator.get_tracker(tracker, unwrap=True)
    if tracker == "wandb":
        import wandb

        handle.log({"snapshot": wandb.Image(str(png)), "snapshot_audio": wandb.Audio(str(wav))}, step=step)
        return
    from PIL import Image

    handle.add_image("snapshot", np.asarray(Image.open(png).convert("RGB")), step, dataformats="HWC")
    handle.add_audio(
        "snapshot_audio", np.asarray(audio, dtype=np.float32)[None], step, sample_rate=SAMPLE_RATE
    )
