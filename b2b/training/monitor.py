"""What a run shows its user, and what it decides from that.

The :class:`Monitor` owns, on rank 0: the progress bar (on a terminal) or plain log lines (in a cluster's
log file), ``metrics.jsonl``, the experiment tracker, snapshots from fixed latents, the in-training
music metrics, the election of the best checkpoint and ``status.json``. Other ranks get a Monitor whose
methods do nothing, so the trainer needs no ``if main process`` around each call.
"""

from __future__ import annotations

import datetime
import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from b2b.atomic import read_json_lines, write_text
from b2b.config import Config
from b2b.eval.reference import Comparison, structure_table, summary_line, voice_table
from b2b.eval.render import phrase_audio, save_midi, save_roll_grid, save_wav
from b2b.spec import RollSpec
from b2b.training.trackers import SAMPLE_RATE, flatten, log_media

# What each log line shows: (label, key in the step's values, format).
LINE_FIELDS = (
    ("D", "d_loss", "{:.3f}"),
    ("G", "g_loss", "{:.3f}"),
    ("W", "wasserstein", "{:.3f}"),
    ("GP", "penalty", "{:.3f}"),
    ("lr", "g_lr", "{:.1e}"),
    ("TFLOP/s", "tflops", "{:.3g}"),
    ("MFU", "mfu", "{:.1%}"),
    ("mem", "peak_memory_gb", "{:.2f} GB"),
    ("data", "data_wait", "{:.0%}"),  # the share of the step spent waiting for the next batch
)


def is_better(result: Comparison, best_distance: float) -> bool:
    """Whether in-training metrics elect their checkpoint as the new best: a generator that writes no
    note never is, whatever its distance."""
    return result.writes_notes and result.distance_to_real < best_distance


class Monitor:
    """Rank 0's view of a run (see the module docstring).

    Parameters
    ----------
    cfg : Config
    run_path : Path
    accelerator : accelerate.Accelerator
        Holds the tracker, when ``log.tracker`` is not ``none``.
    total_steps, start_step : int
        For the bar, the ETA, and to cut ``metrics.jsonl`` back to where a resumed run starts.
    enabled : bool
        False on every rank but 0.
    """

    def __init__(
        self, cfg: Config, run_path: Path, accelerator: Any, total_steps: int, start_step: int, enabled: bool
    ):
        self.cfg = cfg
        self.run_path = run_path
        self.accelerator = accelerator
        self.total_steps = total_steps
        self.enabled = enabled
        self.metrics_path = run_path / "metrics.jsonl"
        self.bar: tqdm | None = None
        self._clock = (time.perf_counter(), start_step)
        if not enabled:
            return
        _truncate_after(self.metrics_path, start_step)
        # A bar on a terminal; in a log file (Slurm, nohup) plain lines, which read well and stay small.
        if cfg.log.progress and sys.stderr.isatty():
            self.bar = tqdm(
                total=total_steps, initial=start_step, desc=cfg.name, unit="step", dynamic_ncols=True
            )

    # -- lines, metrics.jsonl, tracker ---------------------------------------------------------------

    def write(self, step: int, values: Mapping[str, Any]) -> None:
        """Append one line to metrics.jsonl and send its numbers to the tracker."""
        if not self.enabled:
            return
        row = {"step": step, **{k: _plain(v) for k, v in values.items()}}
        with self.metrics_path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        if self.cfg.log.tracker != "none":
            numbers = {
                k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            }
            self.accelerator.log(numbers, step=step)

    def log_step(self, step: int, values: Mapping[str, Any]) -> None:
        """A step's statistics: metrics.jsonl and the tracker, then the bar's postfix or a plain line
        ``step N/M | D | G | W | GP | lr | TFLOP/s | MFU | mem | data | samples/s | ETA``."""
        if not self.enabled:
            return
        self.write(step, values)
        shown = {
            label: fmt.format(values[key]) for label, key, fmt in LINE_FIELDS if values.get(key) is not None
        }
        shown["smp/s"] = f"{values.get('samples_per_s', 0.0):.0f}"
        if self.bar is not None:
            self.bar.set_postfix(shown, refresh=False)
            return
        fields = " | ".join(f"{k} {v}" for k, v in shown.items() if k != "smp/s")
        print(
            f"step {step}/{self.total_steps} | {fields} | {shown['smp/s']} samples/s | ETA {self.eta(step)}",
            flush=True,
        )

    def eta(self, step: int) -> str:
        start, first = self._clock
        done = step - first
        if done <= 0:
            return "-"
        left = (time.perf_counter() - start) / done * (self.total_steps - step)
        return str(datetime.timedelta(seconds=round(left)))

    def advance(self, steps: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(steps)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    # -- looking at the generator --------------------------------------------------------------------

    def snapshot(self, step: int, rolls: np.ndarray, spec: RollSpec) -> Path | None:
        """Save a piano-roll grid PNG and one MIDI file per sample; log image and audio to the tracker."""
        if not self.enabled:
            return None
        import pretty_midi

        folder = self.run_path / "samples"
        png = save_roll_grid(rolls, spec, folder / f"step-{step}.png", title=f"{self.cfg.name} · step {step}")
        midi_dir = folder / f"step-{step}"
        midi_dir.mkdir(parents=True, exist_ok=True)
        midis = [save_midi(roll, spec, midi_dir / f"sample-{i:02d}.mid") for i, roll in enumerate(rolls)]
        if self.cfg.log.tracker != "none":
            # The first sample as audio, kept beside the PNG (W&B takes the file: no soundfile needed).
            audio, _ = phrase_audio(pretty_midi.PrettyMIDI(str(midis[0])), spec, sample_rate=SAMPLE_RATE)
            wav = save_wav(audio, SAMPLE_RATE, folder / f"step-{step}.wav")
            log_media(self.accelerator, self.cfg.log.tracker, step, png, audio, wav)
        return png

    def measure(self, step: int, result: Comparison) -> None:
        """Log in-training metrics (``b2b.eval.reference.RealReference.compare``) and print their summary,
        the table of voices and the table of how their notes are built."""
        if not self.enabled:
            return

        copies = result.copies or {}
        values = {
            "distance_to_real": result.distance_to_real,
            "diversity_ratio": result.diversity_ratio,
            "precision": result.precision,
            "recall": result.recall,
            "nn_accuracy": result.nn_accuracy,
            "nn_floor": result.nn_floor,
            **{f"copies_{k}": v for k, v in copies.items()},
            **{k: v for k, v in flatten(result.metrics, "music").items() if _is_number(v)},
        }
        self.write(step, values)
        self.message(f"step {step}: {summary_line(result)}\n{voice_table(result)}\n{structure_table(result)}")

    # -- status ----------------------------------------------------------------------------------------

    def status(self, state: str, step: int, **extra: object) -> None:
        """Write ``status.json``: running, interrupted, finished or failed, at which step, and why."""
        if self.enabled:
            write_status(self.run_path, state, step, **extra)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def write_status(run_path: Path, state: str, step: int | None, **extra: object) -> None:
    """Write ``<run>/status.json`` (an existing run folder only); a failure to write it (a full disk) is
    reported, never raised, so it cannot hide the error being reported."""
    if not run_path.is_dir():
        return
    text = json.dumps({"state": state, "step": step, "time": time.time(), **extra}) + "\n"
    try:
        write_text(run_path / "status.json", text)
    except OSError as exc:
        print(f"b2b train: warning: cannot write {run_path / 'status.json'} ({exc})", file=sys.stderr)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _truncate_after(path: Path, step: int) -> None:
    """Drop metrics.jsonl lines past ``step``: a resumed run rewrites them, so each step appears once.

    A line that is not a whole record (an append cut off by a kill or a full disk) is dropped too, with
    one warning: the steps it recorded are rerun from the checkpoint and logged again.
    """
    if not path.is_file():
        return
    log = read_json_lines(path)
    if log.dropped:
        where = ", ".join(map(str, log.dropped[:5])) + (" ..." if len(log.dropped) > 5 else "")
        last = " (the last: a write cut off by a kill or a full disk)" if log.dropped[-1] == log.total else ""
        print(
            f"b2b train: warning: {path}: dropped {len(log.dropped)} of {log.total} lines that are not a "
            f"whole JSON record, line {where}{last}; the run goes on",
            file=sys.stderr,
        )
    kept = [
        line
        for line, row in zip(log.lines, log.rows, strict=True)
        if not isinstance(row.get("step"), int) or row["step"] <= step
    ]
    write_text(path, "".join(line + "\n" for line in kept))
