"""Speed of the music metrics and of rendering samples (not a test).

1. Metrics: ``b2b.eval.metrics.music_metrics`` on N LPD-17-shaped rolls (17 x 192 x 84, notes of 1-12 steps
   at about 2% density), side by side with a per-sample, per-track loop over pypianoroll 1.0.4's metric
   functions (``empty_beat_rate``, ``n_pitch_classes_used``, ``polyphonic_rate``, ``qualified_note_rate``;
   only for speed: their values are wrong, see docs/evaluation.md). Median of the rounds.
2. Rendering one LPD-5 sample (5 x 192 x 84): MIDI, piano-roll PNG, FluidSynth and the fallback synth.

One thread (OMP_NUM_THREADS=1). Usage::

    python bench/bench_eval.py               # about a minute on 2 cores
    python bench/bench_eval.py --n 4000 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pypianoroll  # noqa: E402

from b2b.eval.metrics import music_metrics  # noqa: E402
from b2b.eval.render import fluidsynth_available, roll_to_midi, save_roll_grid, synthesize  # noqa: E402
from b2b.spec import LPD5_TRACKS, LPD17_TRACKS, RollSpec  # noqa: E402


def random_rolls(n: int, spec: RollSpec, seed: int = 0, onset_rate: float = 0.004) -> np.ndarray:
    """Rolls with notes of 1 to 12 steps starting at random cells (chunked: bounded memory)."""
    rng = np.random.default_rng(seed)
    rolls = np.zeros((n, *spec.shape), bool)
    for start in range(0, n, 128):
        onsets = rng.random((min(128, n - start), *spec.shape), dtype=np.float32) < onset_rate
        lengths = rng.integers(1, 13, onsets.shape, dtype=np.int8)
        chunk = onsets.copy()
        for lag in range(1, 12):
            chunk[:, :, lag:] |= onsets[:, :, :-lag] & (lengths[:, :, :-lag] > lag)
        rolls[start : start + len(chunk)] = chunk
    return rolls


def pypianoroll_loop(rolls: np.ndarray, spec: RollSpec) -> None:
    # pypianoroll wants all 128 MIDI pitches.
    pad = ((0, 0), (spec.lowest_pitch, 128 - spec.lowest_pitch - spec.n_pitches))
    for sample in rolls:
        for track in sample:
            track = np.pad(track, pad)
            pypianoroll.empty_beat_rate(track, spec.steps_per_beat)
            pypianoroll.n_pitch_classes_used(track)
            pypianoroll.polyphonic_rate(track)
            pypianoroll.qualified_note_rate(track.astype(np.int8), 2)  # bool and uint8 find no offsets


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="LPD-17 samples for the metrics (default 2000)")
    parser.add_argument(
        "--loop-n", type=int, default=200, help="samples for the pypianoroll loop (default 200)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    spec17 = RollSpec(LPD17_TRACKS)
    rolls = random_rolls(args.n, spec17)
    print(f"{args.n} LPD-17 rolls, {rolls.nbytes / 2**20:.0f} MiB as bool, {rolls.mean():.2%} of cells on")
    ours, theirs = [], []
    for _ in range(args.rounds):
        ours.append(timed(music_metrics, rolls, spec17) / args.n)
        theirs.append(timed(pypianoroll_loop, rolls[: args.loop_n], spec17) / args.loop_n)
    ours_ms, theirs_ms = 1000 * statistics.median(ours), 1000 * statistics.median(theirs)
    print("| metrics on LPD-17 rolls | ms per sample | samples/s |")
    print("|---|---|---|")
    print(f"| b2b music_metrics (all metrics, 120 TD pairs) | {ours_ms:.2f} | {1000 / ours_ms:.0f} |")
    print(f"| pypianoroll 1.0.4 loop (4 metrics, no TD) | {theirs_ms:.2f} | {1000 / theirs_ms:.0f} |")
    print(f"ratio: b2b is {theirs_ms / ours_ms:.1f}x faster per sample")

    spec5 = RollSpec(LPD5_TRACKS)
    roll = random_rolls(1, spec5, seed=1)[0]
    midi = roll_to_midi(roll, spec5)
    n_notes = sum(len(i.notes) for i in midi.instruments)
    rows = {"MIDI (roll_to_midi)": lambda: roll_to_midi(roll, spec5)}
    with tempfile.TemporaryDirectory() as tmp:
        rows["piano-roll PNG"] = lambda: save_roll_grid(roll[None], spec5, Path(tmp) / "x.png")
        if fluidsynth_available():
            rows["FluidSynth, 22050 Hz"] = lambda: synthesize(midi, 22050, "fluidsynth")
        rows["fallback synth, 22050 Hz"] = lambda: synthesize(midi, 22050, "fallback")
        print(f"\none LPD-5 sample: {n_notes} notes, {midi.get_end_time():.1f} s at 100 bpm")
        print("| rendering step | s per sample |")
        print("|---|---|")
        for name, fn in rows.items():
            seconds = statistics.median(timed(fn) for _ in range(args.rounds))
            print(f"| {name} | {seconds:.3f} |")


if __name__ == "__main__":
    main()
