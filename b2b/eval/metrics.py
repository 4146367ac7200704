"""Music metrics of binary multi-track piano rolls, after MuseGAN (Dong et al., AAAI 2018).

All metrics are computed from ``(N, C, T, P)`` bool rolls on a :class:`~b2b.spec.RollSpec` grid and are
pooled over every sample given. Definitions (a *bar* is ``spec.steps_per_bar`` consecutive steps of one
track of one sample; a *note* is a run of consecutive on-steps at one pitch, so a note that crosses a bar
line is one note; the pitch class of pitch column ``i`` is ``(spec.lowest_pitch + i) % 12``):

EB (empty-bar rate)
    Fraction of bars with no on-step. As MuseGAN.
UPC (used pitch classes)
    Number of distinct pitch classes with at least one on-step in a bar, averaged over the non-empty
    bars. Pitched tracks only (``None`` for drums, as MuseGAN's table). As MuseGAN's paper (its
    released code folds the pitch axis into groups of adjacent pitches instead of pitch classes).
QN (qualified-note rate)
    Fraction of notes at least a 32nd note long, i.e. 3 steps at MuseGAN's 96 steps per bar. At
    ``steps_per_bar`` steps a note qualifies when ``length * 96 / steps_per_bar >= 3``, i.e. when it
    lasts at least ``qn_min_steps(spec) = ceil(3 * steps_per_bar / 96)`` steps (exact, no rounding
    choice: lengths are whole steps). Pitched tracks only. MuseGAN's paper states the 3-step rule;
    its released code counts notes per bar (splitting notes at bar lines), uses 2 steps, and averages
    per-bar ratios; here notes are whole runs and the ratio is pooled over all notes.
DP (drum-pattern rate)
    Fraction of drum notes (onsets, summed over drum pitches) that start on the 16th-note grid of the
    bar, i.e. at a step ``t`` with ``(t mod steps_per_bar) * 16`` divisible by ``steps_per_bar``; the
    8th-note grid is a subset, so this is MuseGAN's "ratio of notes in 8- or 16-beat patterns". Drum
    tracks only. MuseGAN's code also gives 0.3 credit to onsets one 96th of a bar off the grid and
    searches the best grid phase per bar; here rolls are bar-aligned and the grid is strict.
pitches_used
    Number of distinct pitches with an on-step in a bar, averaged over non-empty bars (all tracks).
polyphony
    Mean number of pitches on at a time step, over the track's time steps with at least one pitch on.
density
    Share of the track's cells (steps × pitches) that are on. Compared to real as a ratio.
mono (voice leading)
    Share of the track's sounding steps with exactly one pitch on (pitched tracks only): 1 for a clean
    monophonic voice (a chorale's soprano), lower when a voice splits into clusters or stutters.
polyphonic_rate (overall)
    The seed notebook's "mean number of simultaneous notes per time step": the same mean pooled over
    every (sample, track, step) with at least one pitch on, drums included.
fragments, note_length, lengths, on_8th (pitched tracks), in_key (overall)
    How notes are built (:mod:`b2b.eval.structure`): the share of notes shorter than a 16th (one step
    where a 16th is one step), the mean note length in 16ths, the note-length histogram, the share of
    onsets on the eighth-note grid, and the mean over samples of the share of notes in the sample's
    best-fitting major or natural-minor scale (MusPy's scale consistency).
TD (tonal distance), for each pair of pitched tracks ``"A-B"``
    Per beat, each track's chroma (on-steps per pitch class, L1-normalized) is mapped to Harte et al.'s
    6-D tonal centroid (fifths, minor thirds, major thirds circles with radii 1, 1, 0.5); TD is the
    Euclidean distance between the two centroids, averaged over the beats where both tracks play. As
    MuseGAN's code, which also works per beat.

diversity (of the set)
    Mean pairwise Jaccard distance among the samples (:func:`b2b.eval.diversity.mean_pairwise_distance`), on a
    seeded uniform subset of at most ``diversity_n`` samples. Compared to real as a ratio.

A metric is ``None`` where it is undefined (UPC of a track that never plays, TD of tracks that never play
in the same beat). :func:`distance_to_real` folds a generated and a real metrics dict into one number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np

from b2b.errors import B2BError, ShapeError
from b2b.eval.diversity import mean_pairwise_distance
from b2b.eval.structure import N_LENGTH_BINS, steps_per_16th, structure_counts, total_variation
from b2b.spec import RollSpec

# Rates live in [0, 1]: their gap to real is absolute. Densities are compared by their ratio (half or
# twice the real density is fully wrong); the others relative to real.
RATE_METRICS = ("EB", "QN", "DP", "mono", "fragments", "on_8th", "in_key")
RATIO_METRICS = ("density",)
TRACK_METRICS = (
    "EB",
    "density",
    "UPC",
    "QN",
    "DP",
    "mono",
    "pitches_used",
    "polyphony",
    "fragments",
    "note_length",
    "on_8th",
)
DIVERSITY_N = 512  # samples kept for the pairwise diversity of a set
CHUNK = 128  # samples per vectorized pass: bounds memory for LPD-17-sized batches


def qn_min_steps(spec: RollSpec) -> int:
    """Steps a note needs to be *qualified*: a 32nd note (3 of 96 steps per bar) at this resolution."""
    return max(1, math.ceil(3 * spec.steps_per_bar / 96))


def pitch_class_matrix(spec: RollSpec) -> np.ndarray:
    """``(P, 12)`` one-hot float32 matrix mapping pitch column ``i`` to class ``(lowest + i) % 12``."""
    classes = (spec.lowest_pitch + np.arange(spec.n_pitches)) % 12
    return np.eye(12, dtype=np.float32)[classes]


def tonal_matrix() -> np.ndarray:
    """Harte et al.'s ``(6, 12)`` tonal-centroid projection (radii 1, 1, 0.5)."""
    k = np.arange(12)
    rows = []
    for radius, angle in ((1.0, 7 / 6), (1.0, 3 / 2), (0.5, 2 / 3)):
        rows += [radius * np.sin(k * angle * np.pi), radius * np.cos(k * angle * np.pi)]
    return np.array(rows, dtype=np.float64)


def pitched_pairs(spec: RollSpec) -> list[tuple[int, int]]:
    """Track index pairs that get a tonal distance: every pair of non-drum tracks, in track order."""
    pitched = [i for i, t in enumerate(spec.tracks) if not t.is_drum]
    return list(combinations(pitched, 2))


def _on_grid(spec: RollSpec) -> np.ndarray:
    step_in_bar = np.arange(spec.shape[1]) % spec.steps_per_bar
    return (step_in_bar * 16) % spec.steps_per_bar == 0


@dataclass
class MetricsAccumulator:
    """Sums behind :func:`music_metrics`, so large sets can be fed in chunks (e.g. a whole corpus).

    Call :meth:`update` with ``(n, C, T, P)`` bool rolls any number of times, then :meth:`result`.
    """

    spec: RollSpec
    diversity_n: int = DIVERSITY_N
    n_samples: int = 0
    sums: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.spec.check()
        c = len(self.spec.tracks)
        self.pairs = pitched_pairs(self.spec)
        # A uniform, seeded subset of the samples seen (reservoir sampling) for the pairwise diversity.
        self.kept: list[np.ndarray] = []
        self.kept_index: list[int] = []  # each kept sample's position among the samples fed in
        self._reservoir = np.random.default_rng(0)
        names = ("bars", "empty_bars", "pc_sum", "pitch_sum", "notes", "qualified", "on_grid")
        for name in (*names, "poly_notes", "poly_steps", "mono_steps", "fragments", "on_8th"):
            self.sums[name] = np.zeros(c, dtype=np.int64)
        self.sums["lengths"] = np.zeros((c, N_LENGTH_BINS), dtype=np.int64)
        self.sums["in_key_sum"] = np.zeros(1, dtype=np.float64)
        self.sums["in_key_samples"] = np.zeros(1, dtype=np.int64)
        self.sums["td_sum"] = np.zeros(len(self.pairs), dtype=np.float64)
        self.sums["td_beats"] = np.zeros(len(self.pairs), dtype=np.int64)
        self._pc = pitch_class_matrix(self.spec)
        self._tonal = tonal_matrix().T
        self._grid = _on_grid(self.spec)
        self._min_steps = qn_min_steps(self.spec)

    def update(self, rolls: np.ndarray) -> MetricsAccumulator:
        """Add ``(n, C, T, P)`` bool rolls; return ``self``."""
        rolls = np.asarray(rolls)
        if rolls.ndim != 4 or rolls.shape[1:] != self.spec.shape:
            raise ShapeError(
                f"music metrics: expected rolls of shape (N, *{self.spec.shape}), got {rolls.shape}"
            )
        if rolls.dtype != bool:
            raise B2BError(
                f"music metrics need bool rolls, got dtype {rolls.dtype}; binarize first (rolls >= threshold)"
            )
        for start in range(0, len(rolls), CHUNK):
            self._update_chunk(rolls[start : start + CHUNK])
        for roll in rolls:
            self._keep(roll)
        return self

    def _keep(self, roll: np.ndarray) -> None:
        self.n_samples += 1
        if len(self.kept) < self.diversity_n:
            self.kept.append(roll.copy())
            self.kept_index.append(self.n_samples - 1)
        else:
            slot = int(self._reservoir.integers(self.n_samples))
            if slot < self.diversity_n:
                self.kept[slot] = roll.copy()
                self.kept_index[slot] = self.n_samples - 1

    def _update_chunk(self, x: np.ndarray) -> None:
        # Counts are summed as uint8/uint16 views of the bool roll: numpy's default bool sums go
        # through int64 and were 3x slower on LPD-17-sized chunks.
        spec, s = self.spec, self.sums
        n, c, t, p = x.shape
        n_beats, beat = t // spec.steps_per_beat, spec.steps_per_beat
        count = np.uint8 if max(beat, p) < 256 else np.uint16
        u = x.view(np.uint8)

        # Per beat: how many steps each pitch is on. Bars and tonal distance are built from it.
        beat_pitch = u.reshape(n, c, n_beats, beat, p).sum(axis=3, dtype=count)  # (n, c, beats, p)
        pitch_on = beat_pitch.reshape(n, c, spec.n_bars, spec.beats_per_bar, p).any(axis=3)
        nonempty = pitch_on.any(axis=3)  # (n, c, bars)
        s["bars"] += n * spec.n_bars
        s["empty_bars"] += np.count_nonzero(~nonempty, axis=(0, 2))
        s["pitch_sum"] += np.count_nonzero(pitch_on, axis=(0, 2, 3))
        s["pc_sum"] += np.count_nonzero(pitch_on.astype(np.float32) @ self._pc, axis=(0, 2, 3))

        # Polyphony: pitches on per step, over steps with at least one.
        per_step = u.sum(axis=3, dtype=count)  # (n, c, t)
        s["poly_notes"] += per_step.sum(axis=(0, 2), dtype=np.int64)
        s["poly_steps"] += np.count_nonzero(per_step, axis=(0, 2))
        s["mono_steps"] += np.count_nonzero(per_step == 1, axis=(0, 2))

        # Notes: an onset is an on-step whose previous step (if any) is off.
        onsets = np.empty_like(x)
        onsets[:, :, 0] = x[:, :, 0]
        np.greater(x[:, :, 1:], x[:, :, :-1], out=onsets[:, :, 1:])
        onsets_per_step = onsets.view(np.uint8).sum(axis=3, dtype=count)  # (n, c, t)
        s["notes"] += onsets_per_step.sum(axis=(0, 2), dtype=np.int64)
        s["on_grid"] += onsets_per_step[:, :, self._grid].sum(axis=(0, 2), dtype=np.int64)
        # A note lasts >= k steps iff its onset and the k-1 steps after it are all on.
        k = self._min_steps
        qualified = onsets[:, :, : t - k + 1]
        for lag in range(1, k):
            qualified = qualified & x[:, :, lag : t - k + 1 + lag]
        s["qualified"] += np.count_nonzero(qualified, axis=(0, 2, 3))

        structure = structure_counts(x, spec)
        for name in ("fragments", "on_8th", "lengths", "in_key_sum", "in_key_samples"):
            s[name] += structure[name]

        # Tonal distance per beat between pitched track pairs.
        if self.pairs:
            chroma = beat_pitch.astype(np.float32) @ self._pc  # (n, c, beats, 12) on-steps per class
            total = chroma.sum(axis=3, keepdims=True)
            centroid = (chroma / np.maximum(total, 1)) @ self._tonal  # (n, c, beats, 6)
            i, j = np.array(self.pairs).T
            playing = total[..., 0] > 0
            both = playing[:, i] & playing[:, j]  # (n, pairs, beats)
            dist = np.linalg.norm(centroid[:, i] - centroid[:, j], axis=3)
            s["td_sum"] += np.where(both, dist, 0.0).sum(axis=(0, 2))
            s["td_beats"] += np.count_nonzero(both, axis=(0, 2))

    def _structure(self, i: int) -> dict:
        """Track ``i``'s fragments, mean note length (16ths), on-8th share and length histogram (shares)."""
        s, notes = self.sums, int(self.sums["notes"][i])
        if not notes:
            return dict.fromkeys(("fragments", "note_length", "on_8th", "lengths"))
        return {
            "fragments": float(s["fragments"][i] / notes),
            # Every on-cell belongs to exactly one note: the summed lengths are the cells.
            "note_length": float(s["poly_notes"][i] / notes / steps_per_16th(self.spec)),
            "on_8th": float(s["on_8th"][i] / notes),
            "lengths": (s["lengths"][i] / notes).tolist(),
        }

    def result(self) -> dict:
        """The metrics dict described in :func:`music_metrics`."""
        s = self.sums

        def ratio(num: np.ndarray, den: np.ndarray, i: int) -> float | None:
            return float(num[i] / den[i]) if den[i] > 0 else None

        nonempty = s["bars"] - s["empty_bars"]
        cells = np.full(len(self.spec.tracks), self.n_samples * self.spec.shape[1] * self.spec.shape[2])
        tracks = {}
        for i, track in enumerate(self.spec.tracks):
            values = {"EB": ratio(s["empty_bars"], s["bars"], i), "density": ratio(s["poly_notes"], cells, i)}
            if track.is_drum:
                values["DP"] = ratio(s["on_grid"], s["notes"], i)
            else:
                values["UPC"] = ratio(s["pc_sum"], nonempty, i)
                values["QN"] = ratio(s["qualified"], s["notes"], i)
                values["mono"] = ratio(s["mono_steps"], s["poly_steps"], i)
                values.update(self._structure(i))
            values["pitches_used"] = ratio(s["pitch_sum"], nonempty, i)
            values["polyphony"] = ratio(s["poly_notes"], s["poly_steps"], i)
            tracks[track.name] = values
        steps = int(s["poly_steps"].sum())
        names = [t.name for t in self.spec.tracks]
        measured = int(s["in_key_samples"][0])
        return {
            "n_samples": self.n_samples,
            "tracks": tracks,
            "polyphonic_rate": float(s["poly_notes"].sum() / steps) if steps else None,
            "in_key": float(s["in_key_sum"][0] / measured) if measured else None,
            "TD": {
                f"{names[a]}-{names[b]}": ratio(s["td_sum"], s["td_beats"], k)
                for k, (a, b) in enumerate(self.pairs)
            },
            "diversity": mean_pairwise_distance(np.stack(self.kept)) if len(self.kept) > 1 else None,
        }


def music_metrics(rolls: np.ndarray, spec: RollSpec) -> dict:
    """MuseGAN-style metrics of a set of rolls (definitions in this module's docstring).

    Parameters
    ----------
    rolls : np.ndarray
        ``(N, C, T, P)`` bool, on ``spec``'s grid. Processed in chunks of 128 samples.
    spec : RollSpec
        Track names and drum flags, bar and beat lengths, lowest pitch.

    Returns
    -------
    dict
        JSON-able: ``{"n_samples": N, "tracks": {name: {...}}, "polyphonic_rate": float, "in_key":
        float, "TD": {"A-B": float}, "diversity": float}``. A pitched track has ``EB, density, UPC, QN,
        mono, pitches_used, polyphony, fragments, note_length, on_8th, lengths`` (the note-length
        histogram as shares over :data:`b2b.eval.structure.LENGTH_EDGES`); a drum track ``EB, density, DP,
        pitches_used, polyphony``. A value is ``None`` where it is undefined (no bar, note or beat to
        average over).
    """
    return MetricsAccumulator(spec).update(rolls).result()


def metric_items(metrics: dict) -> dict[str, float | None]:
    """Flatten a metrics dict into ``{"EB/Piano": ..., "TD/Piano-Bass": ..., "polyphonic_rate": ...}``."""
    items: dict[str, float | None] = {}
    for metric in TRACK_METRICS:  # metric by metric, as MuseGAN's tables
        for name, values in metrics["tracks"].items():
            if metric in values:
                items[f"{metric}/{name}"] = values[metric]
    items["polyphonic_rate"] = metrics.get("polyphonic_rate")
    items["in_key"] = metrics.get("in_key")
    for pair, value in metrics.get("TD", {}).items():
        items[f"TD/{pair}"] = value
    return items


def _gap(metric: str, generated: float | None, real: float | None) -> float | None:
    if generated is None and real is None:
        return None
    if generated is None or real is None:
        return 1.0
    if metric in RATE_METRICS:
        gap = abs(generated - real)
    elif real == 0 or generated == 0:
        gap = 0.0 if generated == real else 1.0
    elif metric in RATIO_METRICS:
        gap = abs(math.log2(generated / real))
    else:
        gap = abs(generated - real) / abs(real)
    return min(gap, 1.0)


def silent_tracks(metrics: dict) -> set[str]:
    """Names of the tracks with no note in any bar of the set."""
    return {name for name, values in metrics["tracks"].items() if values.get("EB") == 1.0}


def metric_gaps(generated: dict, real: dict) -> dict[str, float]:
    """Gap to real per metric (see :func:`distance_to_real`), keyed as :func:`metric_items`."""
    gen_items, real_items = metric_items(generated), metric_items(real)
    # A track that plays in the real set but not at all in the generated one is wholly wrong: every entry
    # that involves it and is defined for real data counts 1, also those (as the note-length rate QN) that
    # a silent track leaves undefined.
    muted = silent_tracks(generated) - silent_tracks(real) if generated.get("tracks") else set()
    gaps = {}
    for key in real_items.keys() | gen_items.keys():
        metric, _, what = key.partition("/")
        if muted & set(what.split("-")) and real_items.get(key) is not None:
            gaps[key] = 1.0
            continue
        gap = _gap(metric, gen_items.get(key), real_items.get(key))
        if gap is not None:
            gaps[key] = gap
    for name, values in real.get("tracks", {}).items():
        real_lengths = values.get("lengths")
        gen_lengths = generated.get("tracks", {}).get(name, {}).get("lengths")
        if real_lengths is None and gen_lengths is None:
            continue
        defined = real_lengths is not None and gen_lengths is not None and name not in muted
        gaps[f"lengths/{name}"] = total_variation(gen_lengths, real_lengths) if defined else 1.0
    return dict(sorted(gaps.items()))


def diversity_ratio(generated: dict, real: dict) -> float | None:
    """Generated diversity over real diversity (1: as diverse as real), None where undefined."""
    g, r = generated.get("diversity"), real.get("diversity")
    if g is None or not r:
        return None
    return g / r


def separability(nn_accuracy: float | None, nn_floor: float | None = None) -> float:
    """How much better than on real data a 1-NN classifier tells generated from real samples, in [0, 1]:
    ``clip((A - F) / (1 - F), 0, 1)`` for accuracy ``A`` and real floor ``F`` (0.5, chance, without a
    floor); 0 without an accuracy."""
    if nn_accuracy is None:
        return 0.0
    floor = 0.5 if nn_floor is None else min(nn_floor, 0.99)
    return float(np.clip((nn_accuracy - floor) / (1.0 - floor), 0.0, 1.0))


def distance_to_real(
    generated: dict, real: dict, nn_accuracy: float | None = None, nn_floor: float | None = None
) -> float:
    """One number for how far a generated set is from a real one: lower is better, 0 = identical.

    ``1 - (1 - S) * D + N``, in [0, 2]. ``S`` is the mean gap of the music statistics, ``D`` how close the
    set's diversity is to real (``min(ratio, 1 / ratio)``; 0 for a set whose diversity is 0, e.g. a
    silent or fully collapsed generator; 1 where a set is too small to measure it), so a collapsed
    generator scores at least 1 however right its statistics. ``N`` is :func:`separability`: how far
    above the real floor a 1-NN classifier tells the generated samples from real ones (0 when no
    accuracy is given). The two parts are added, not multiplied, so that the statistics still rank two
    generators that the classifier tells apart equally well (early in training, both at 1.0).

    ``S`` is the mean, over every metric entry (each track's EB, density, UPC, QN, DP, mono, pitches used,
    polyphony, fragments, note length, on-8th share and note-length histogram, every TD pair, the overall
    polyphonic rate and in-key share), of its gap:

    - rates in [0, 1] (EB, QN, DP, mono, fragments, on_8th, in_key): ``|g - r|``;
    - density: ``|log2(g / r)|`` (half or twice the real density is fully wrong);
    - the note-length histogram: the total variation distance ``½ Σ |g_i - r_i|`` over its bins;
    - the others (UPC, pitches used, polyphony, note length, polyphonic rate, TD): ``|g - r| / r``;
    - where ``r`` or ``g`` is 0, the gap is 0 if both are, else 1;
    - each gap capped at 1; an entry undefined on one side only counts 1; undefined on both sides, it is
      left out;
    - every entry of a track that plays in the real set but is silent in the generated one counts 1.

    It is meant to compare runs and checkpoints on the same corpus and spec (the set of entries depends
    on the tracks).

    Parameters
    ----------
    generated, real : dict
        Outputs of :func:`music_metrics` (or the same loaded back from JSON).
    nn_accuracy, nn_floor : float, optional
        The 1-NN two-sample accuracy of generated against real samples, and the same between two real
        sets of disjoint songs (:meth:`b2b.eval.reference.RealReference.compare`).

    Returns
    -------
    float
    """
    gaps = metric_gaps(generated, real)
    if not gaps:
        raise B2BError("distance_to_real: the metrics dicts have no metric in common")
    statistics = float(np.mean(list(gaps.values())))
    ratio = diversity_ratio(generated, real)
    closeness = 1.0 if ratio is None else min(ratio, 1.0 / ratio) if ratio > 0 else 0.0
    return 1.0 - (1.0 - statistics) * closeness + separability(nn_accuracy, nn_floor)


def self_similarity(roll: np.ndarray, spec: RollSpec) -> np.ndarray:
    """Per-beat self-similarity matrix of one roll, or of each of a batch.

    Each beat is described by how many steps each (track, pitch) is on during it; two beats' similarity
    is the cosine of their descriptions. Two silent beats count as identical (1), a silent beat and a
    sounding one as unrelated (0).

    Parameters
    ----------
    roll : np.ndarray
        ``(C, T, P)`` or ``(N, C, T, P)``, bool or float.
    spec : RollSpec

    Returns
    -------
    np.ndarray
        ``(B, B)`` or ``(N, B, B)`` float32 in [0, 1] (for non-negative rolls), ``B = T / steps_per_beat``.
    """
    roll = np.asarray(roll)
    single = roll.ndim == 3
    batch = roll[None] if single else roll
    if batch.ndim != 4 or batch.shape[1:] != spec.shape:
        raise ShapeError(
            f"self_similarity: expected a roll of shape {spec.shape} or (N, *{spec.shape}), got {roll.shape}"
        )
    n, c, t, p = batch.shape
    n_beats = t // spec.steps_per_beat
    beats = batch.reshape(n, c, n_beats, spec.steps_per_beat, p).astype(np.float32).sum(axis=3)
    features = beats.transpose(0, 2, 1, 3).reshape(n, n_beats, c * p)
    norm = np.linalg.norm(features, axis=2)
    unit = features / np.maximum(norm, 1e-12)[..., None]
    ssm = unit @ unit.transpose(0, 2, 1)
    silent = norm == 0
    ssm[silent[:, :, None] & silent[:, None, :]] = 1.0
    return ssm[0] if single else ssm
