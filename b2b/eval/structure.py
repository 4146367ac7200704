"""How notes are built: fragments, note lengths, onsets on the grid, keys, and per-sample structure features.

The marginal statistics of :mod:`b2b.eval.metrics` (density, pitch classes, polyphony) can be right while
every voice is a spray of one-step notes. These measures look at the notes themselves. A *note* is a run
of consecutive on-steps at one pitch of one track (as everywhere in b2b); a *16th* is a quarter of a beat,
``steps_per_16th(spec) = steps_per_beat / 4`` steps (``steps_per_bar / 16`` in 4/4; a beat is a quarter
note, as in the MIDI the shards were built from). Only pitched tracks are measured: a drum hit is short by
nature.

fragments
    The share of notes shorter than a 16th, or, where a 16th is one step or less (16 or fewer steps per
    bar), one step long: the shortest notes the grid can write.
note_length
    The mean note length, in 16ths (so corpora of other grids compare).
lengths
    The histogram of note lengths over :data:`LENGTH_EDGES` (in 16ths); two sets compare by the total
    variation distance of their histograms (:func:`total_variation`).
on_8th
    The share of note onsets on an eighth-note position: at a step ``t`` where ``(t mod steps_per_beat) *
    2`` is a multiple of ``steps_per_beat``.
in_key
    Per sample, the share of its notes (all pitched tracks together, each note counted once, whatever its
    length) whose pitch class lies in the best-fitting of the 24 major and natural-minor scales: MusPy's
    ``scale_consistency`` (Dong et al., ISMIR 2020, after Mogren 2016). A natural minor scale holds the
    pitch classes of its relative major, so the 24 scales are 12 distinct pitch sets, as in MusPy.

:func:`structure_counts` gives the sums behind the pooled figures for
:class:`b2b.eval.metrics.MetricsAccumulator`; :func:`structure_features` the per-sample figures of the
two-sample test (:func:`b2b.eval.diversity.nn_accuracy`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from b2b.spec import RollSpec

# Note-length bins in 16ths: [0, 1) is shorter than a 16th, [1, 2) a 16th, ..., [16, 32) one to two bars
# of 4/4, [32, inf) longer.
LENGTH_EDGES = (0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 32.0, math.inf)
N_LENGTH_BINS = len(LENGTH_EDGES) - 1
MAJOR = (0, 2, 4, 5, 7, 9, 11)
NATURAL_MINOR = (0, 2, 3, 5, 7, 8, 10)
# Per pitched track, the per-sample structure features and the smallest difference that matters in each
# (the scale of a feature in the standardized space is the real set's standard deviation, never below it).
STRUCTURE_FLOORS = {
    "fragments": 0.05,  # share of notes
    "on_8th": 0.05,  # share of onsets
    "mono": 0.05,  # share of sounding steps with one pitch
    "upc": 0.25,  # pitch classes per bar
}
IN_KEY_FLOOR = 0.02  # share of notes in the best scale (one column per sample)


class Notes(NamedTuple):
    """Every note of a set of rolls, one entry per note, ordered by (sample, track, pitch, start)."""

    sample: np.ndarray
    track: np.ndarray
    pitch: np.ndarray
    start: np.ndarray  # step of the onset
    length: np.ndarray  # steps


def steps_per_16th(spec: RollSpec) -> float:
    """Steps in a 16th note: a quarter of a beat (``steps_per_bar / 16`` in 4/4)."""
    return spec.steps_per_beat / 4


def onsets_of(rolls: np.ndarray) -> np.ndarray:
    """``(N, C, T, P)`` bool: the first step of each note (an on-step whose previous step is off)."""
    x = np.asarray(rolls, dtype=bool)
    onsets = x.copy()
    onsets[:, :, 1:] &= ~x[:, :, :-1]
    return onsets


def notes_of(rolls: np.ndarray) -> Notes:
    """The notes of ``(N, C, T, P)`` bool rolls: runs of consecutive on-steps at one pitch."""
    x = np.asarray(rolls, dtype=bool).transpose(0, 1, 3, 2)  # (N, C, P, T)
    n, c, p, t = x.shape
    starts = x.copy()  # C-ordered copies: steps are contiguous, and the caller's rolls stay untouched
    starts[..., 1:] &= ~x[..., :-1]
    ends = x.copy()  # the last step of each note
    ends[..., :-1] &= ~x[..., 1:]
    # Flat positions in (sample, track, pitch, step) order: the k-th start and the k-th end belong to the
    # same note, as a note never crosses from one (sample, track, pitch) row into the next.
    first, last = np.flatnonzero(starts), np.flatnonzero(ends)
    row, step = np.divmod(first, t)
    sample, rest = np.divmod(row, c * p)
    track, pitch = np.divmod(rest, p)
    return Notes(sample, track, pitch, step, last - first + 1)


def fragment_mask(length: np.ndarray, spec: RollSpec) -> np.ndarray:
    """Which notes of these lengths (steps) are fragments: shorter than a 16th, or one step long where a
    16th is at most one step."""
    sixteenth = steps_per_16th(spec)
    short = length < sixteenth
    return short | (length == 1) if sixteenth <= 1 else short


def length_bins(length: np.ndarray, spec: RollSpec) -> np.ndarray:
    """The :data:`LENGTH_EDGES` bin of each note length (steps)."""
    return np.searchsorted(np.array(LENGTH_EDGES[1:-1]), length / steps_per_16th(spec), side="right")


def on_eighth_grid(start: np.ndarray, spec: RollSpec) -> np.ndarray:
    """Which onsets (steps) fall on an eighth-note position of their beat."""
    return ((start % spec.steps_per_beat) * 2) % spec.steps_per_beat == 0


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    """``½ Σ |p_i − q_i|`` of two histograms, each normalized to sum 1: 0 identical, 1 disjoint."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    return float(0.5 * np.abs(p / p.sum() - q / q.sum()).sum())


def scale_matrix() -> np.ndarray:
    """``(24, 12)`` bool: row ``k`` (``k < 12``) is the major scale on pitch class ``k``, row ``12 + k``
    the natural minor scale on ``k``."""
    rows = np.zeros((24, 12), dtype=bool)
    for root in range(12):
        rows[root, [(root + i) % 12 for i in MAJOR]] = True
        rows[12 + root, [(root + i) % 12 for i in NATURAL_MINOR]] = True
    return rows


def _pitched(spec: RollSpec) -> np.ndarray:
    return np.array([not t.is_drum for t in spec.tracks], dtype=bool)


def in_key_shares(rolls: np.ndarray, spec: RollSpec) -> np.ndarray:
    """Per sample, the share of its pitched notes in its best-fitting major or natural-minor scale
    (NaN for a sample without a pitched note)."""
    onsets = onsets_of(rolls)[:, _pitched(spec)]
    per_pitch = onsets.sum(axis=(1, 2), dtype=np.int64).astype(np.float64)  # (N, P) notes per pitch
    one_hot = np.eye(12)[(spec.lowest_pitch + np.arange(spec.n_pitches)) % 12]
    counts = per_pitch @ one_hot  # (N, 12) notes per pitch class
    total = counts.sum(axis=1)
    best = (counts @ scale_matrix().T.astype(np.float64)).max(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, best / total, np.nan)


def structure_counts(rolls: np.ndarray, spec: RollSpec) -> dict[str, np.ndarray]:
    """The sums behind the pooled structure figures of a set of ``(N, C, T, P)`` bool rolls.

    Returns
    -------
    dict
        Per track (``(C,)`` int64): ``notes``, ``fragments``, ``on_8th``; ``lengths``, ``(C,
        N_LENGTH_BINS)`` int64 note counts; and over the samples: ``in_key_sum`` (summed per-sample
        in-key shares) and ``in_key_samples`` (samples with a pitched note), both shape ``(1,)``.
    """
    c = len(spec.tracks)
    notes = notes_of(rolls)

    def per_track(weights: np.ndarray | None = None) -> np.ndarray:
        return np.bincount(notes.track, weights=weights, minlength=c).astype(np.int64)

    binned = notes.track * N_LENGTH_BINS + length_bins(notes.length, spec)
    shares = in_key_shares(rolls, spec)
    measured = ~np.isnan(shares)
    return {
        "notes": per_track(),
        "fragments": per_track(fragment_mask(notes.length, spec).astype(np.float64)),
        "on_8th": per_track(on_eighth_grid(notes.start, spec).astype(np.float64)),
        "lengths": np.bincount(binned, minlength=c * N_LENGTH_BINS)
        .reshape(c, N_LENGTH_BINS)
        .astype(np.int64),
        "in_key_sum": np.array([shares[measured].sum()]),
        "in_key_samples": np.array([np.count_nonzero(measured)], dtype=np.int64),
    }


def structure_features(rolls: np.ndarray, spec: RollSpec) -> np.ndarray:
    """Per-sample structure figures, ``(N, pitched tracks * 4 + 1)`` float64.

    Per pitched track, in :data:`STRUCTURE_FLOORS` order: the share of its notes that are fragments, the
    share of its onsets on the eighth-note grid, the share of its sounding steps with one pitch, and its
    pitch classes per non-empty bar; then the sample's in-key share. A figure with nothing to average
    over (a silent track, a sample without pitched notes) is 0.
    """
    rolls = np.asarray(rolls, dtype=bool)
    n, c, t, p = rolls.shape
    notes = notes_of(rolls)
    slot = notes.sample * c + notes.track

    def per_sample_track(weights: np.ndarray | None = None) -> np.ndarray:
        return np.bincount(slot, weights=weights, minlength=n * c).reshape(n, c)

    counts = per_sample_track()
    with np.errstate(invalid="ignore", divide="ignore"):
        fragments = per_sample_track(fragment_mask(notes.length, spec).astype(np.float64)) / counts
        on_8th = per_sample_track(on_eighth_grid(notes.start, spec).astype(np.float64)) / counts
        per_step = rolls.sum(axis=3)  # (n, c, t)
        mono = (per_step == 1).sum(axis=2) / (per_step > 0).sum(axis=2)
        one_hot = np.eye(12, dtype=np.float32)[(spec.lowest_pitch + np.arange(p)) % 12]  # (p, 12)
        bar_pitches = rolls.reshape(n, c, spec.n_bars, spec.steps_per_bar, p).any(axis=3)  # (n, c, bars, p)
        used = np.count_nonzero(bar_pitches.astype(np.float32) @ one_hot, axis=3)  # classes per bar
        upc = used.sum(axis=2) / (used > 0).sum(axis=2)
    per_track = np.stack([fragments, on_8th, mono, upc], axis=2)[:, _pitched(spec)]  # (n, pitched, 4)
    in_key = in_key_shares(rolls, spec)[:, None]
    return np.nan_to_num(np.concatenate([per_track.reshape(n, -1), in_key], axis=1), nan=0.0)


def structure_floors(spec: RollSpec) -> np.ndarray:
    """The smallest scale of each column of :func:`structure_features`."""
    per_track = np.tile(np.array(list(STRUCTURE_FLOORS.values())), int(_pitched(spec).sum()))
    return np.append(per_track, IN_KEY_FLOOR)
