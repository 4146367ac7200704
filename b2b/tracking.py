"""What a run shows its user: a progress bar, ``metrics.jsonl``, W&B or TensorBoard, and snapshots.

Only rank 0 writes; other ranks get a :class:`RunLog` whose methods do nothing, so the trainer needs no
``if main_process`` around each call.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from b2b.atomic import write_text
from b2b.config import Config
from b2b.spec import RollSpec

SAMPLE_RATE = 22050  # snapshot audio


def wandb_run_id(run_path: Path) -> str:
    """The W&B run id of this run folder, created once, so a resumed or requeued run continues it."""
    path = run_path / "wandb_id.txt"
    if path.is_file():
        return path.read_text().strip()
    run_id = uuid.uuid4().hex[:12]
    write_text(path, run_id + "\n")
    return run_id


def _wandb_has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def tracker_settings(cfg: Config, run_path: Path) -> tuple[str | None, dict]:
    """``(log_with, init_kwargs)`` for ``Accelerator``/``init_trackers``; W&B falls back to offline mode
    when no API key is configured (runs can be synced later with ``wandb sync``)."""
    if cfg.log.tracker == "wandb":
        if "WANDB_MODE" not in os.environ and not _wandb_has_credentials():
            os.environ["WANDB_MODE"] = "offline"
        init = {"id": wandb_run_id(run_path), "resume": "allow", "name": cfg.name, "dir": str(run_path)}
        return "wandb", {"wandb": init}
    if cfg.log.tracker == "tensorboard":
        return "tensorboard", {}
    return None, {}


def flat_config(cfg: Config) -> dict[str, int | float | str | bool]:
    """``{"train.precision": "bf16", "data.shape": "[4, 64, 48]", ...}``: the config as trackers take it
    (TensorBoard's hparams accept scalars only)."""
    flat = {}
    for section, values in cfg.to_dict().items():
        for key, value in values.items() if isinstance(values, dict) else [("", values)]:
            name = f"{section}.{key}" if key else section
            flat[name] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


class RunLog:
    """Rank 0's view of a run: progress bar, metrics.jsonl and the experiment tracker."""

    def __init__(
        self, cfg: Config, run_path: Path, accelerator: Any, total_steps: int, start_step: int, enabled: bool
    ):
        self.enabled = enabled
        self.cfg = cfg
        self.run_path = run_path
        self.accelerator = accelerator
        self.bar = None
        if not enabled:
            return
        self.metrics_path = run_path / "metrics.jsonl"
        _truncate_after(self.metrics_path, start_step)
        self.bar = tqdm(
            total=total_steps,
            initial=start_step,
            desc=cfg.name,
            unit="step",
            disable=not cfg.log.progress,
            dynamic_ncols=True,
        )

    def write(self, step: int, values: Mapping[str, float], show: Mapping[str, str] | None = None) -> None:
        """Append one line to metrics.jsonl, send it to the tracker, and refresh the progress bar."""
        if not self.enabled:
            return
        row = {"step": step, **{k: _plain(v) for k, v in values.items()}}
        with self.metrics_path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        if self.cfg.log.tracker != "none":
            self.accelerator.log({k: v for k, v in row.items() if isinstance(v, (int, float))}, step=step)
        if self.bar is not None and show:
            self.bar.set_postfix(show, refresh=False)

    def advance(self, steps: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(steps)

    def message(self, text: str) -> None:
        if self.enabled:
            (self.bar.write if self.bar is not None else print)(text)

    def snapshot(self, step: int, rolls: np.ndarray, spec: RollSpec) -> Path | None:
        """Save a piano-roll grid PNG and one MIDI file per sample; log image and audio to the tracker."""
        if not self.enabled:
            return None
        from b2b.render import save_midi, save_roll_grid, save_wav, synthesize

        folder = self.run_path / "samples"
        png = save_roll_grid(rolls, spec, folder / f"step-{step}.png", title=f"{self.cfg.name} · step {step}")
        midi_dir = folder / f"step-{step}"
        midi_dir.mkdir(parents=True, exist_ok=True)
        midis = [save_midi(roll, spec, midi_dir / f"sample-{i:02d}.mid") for i, roll in enumerate(rolls)]
        if self.cfg.log.tracker != "none":
            import pretty_midi

            # The first sample as audio, kept beside the PNG (W&B takes the file: no soundfile needed).
            audio, _ = synthesize(pretty_midi.PrettyMIDI(str(midis[0])), SAMPLE_RATE)
            wav = save_wav(audio, SAMPLE_RATE, folder / f"step-{step}.wav")
            self._log_media(step, png, audio, wav)
        return png

    def _log_media(self, step: int, png: Path, audio: np.ndarray, wav: Path) -> None:
        tracker = self.accelerator.get_tracker(self.cfg.log.tracker, unwrap=True)
        if self.cfg.log.tracker == "wandb":
            import wandb

            tracker.log(
                {"snapshot": wandb.Image(str(png)), "snapshot_audio": wandb.Audio(str(wav))}, step=step
            )
        else:
            from PIL import Image

            tracker.add_image("snapshot", np.asarray(Image.open(png).convert("RGB")), step, dataformats="HWC")
            tracker.add_audio("snapshot_audio", audio[None], step, sample_rate=SAMPLE_RATE)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return value


def _truncate_after(path: Path, step: int) -> None:
    """Drop metrics.jsonl lines past ``step``: a resumed run rewrites them, so each step appears once."""
    if not path.is_file():
        return
    kept = [
        line for line in path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= step
    ]
    write_text(path, "".join(line + "\n" for line in kept))
