"""Windows of one song: where fixed-length piano-roll samples start, and cutting them out.

A window covers ``n_bars`` whole bars of the spec's length and starts on a bar line; windows whose bars
are irregular (a pickup, another time signature, a short last bar) are dropped and counted, and so are
windows with fewer note onsets than ``min_notes``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from b2b.spec import RollSpec


@dataclass(frozen=True)
class WindowParams:
    """Everything one song's windows depend on (with the file's content)."""

    spec: RollSpec
    layout: str
    hop_bars: int
    min_notes: int


def window_starts(bars: np.ndarray, n_steps: int, spec: RollSpec, hop_bars: int) -> tuple[np.ndarray, int]:
    """Where windows start: every ``hop_bars``-th bar start whose ``n_bars`` bars are whole bars of the
    spec's length and lie inside the song.

    Returns the starts and how many windows inside the song were dropped because their bars are
    irregular (a pickup, a time signature other than the spec's, a short last bar).
    """
    width = spec.n_bars * spec.steps_per_bar
    index = np.arange(0, bars.size, hop_bars)
    starts = bars[index]
    inside = starts + width <= n_steps
    regular = np.ones(index.size, dtype=bool)
    for i in range(1, spec.n_bars + 1):
        k = index + i
        exists = k < bars.size
        following = np.where(exists, bars[np.minimum(k, bars.size - 1)], np.iinfo(np.int64).max)
        if i < spec.n_bars:  # bar i of the window must start exactly i bars in
            regular &= exists & (following == starts + i * spec.steps_per_bar)
        else:  # and no bar may start before the window ends
            regular &= following >= starts + width
    return starts[inside & regular], int(np.count_nonzero(inside & ~regular))


def count_onsets(windows: np.ndarray) -> np.ndarray:
    """Note onsets per window of ``(N, C, T, P)``: cells on whose previous step (within the window) is off."""
    previous = np.zeros_like(windows)
    previous[:, :, 1:] = windows[:, :, :-1]
    return np.count_nonzero(windows & ~previous, axis=(1, 2, 3))


def song_windows(
    roll: np.ndarray, bars: np.ndarray, params: WindowParams
) -> tuple[np.ndarray, dict[str, int]]:
    """Cut a song's grid roll into windows ``(N, C, T, P)``; return them and counts of dropped windows."""
    spec = params.spec
    width = spec.n_bars * spec.steps_per_bar
    starts, irregular = window_starts(bars, roll.shape[1], spec, params.hop_bars)
    windows = (
        np.stack([roll[:, s : s + width] for s in starts])
        if starts.size
        else np.zeros((0, *spec.shape), bool)
    )
    keep = count_onsets(windows) >= params.min_notes
    stats = {"dropped_min_notes": int(np.count_nonzero(~keep)), "dropped_irregular": irregular}
    return windows[keep], stats
