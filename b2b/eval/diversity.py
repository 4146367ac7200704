"""How a set of generated rolls relates to real ones: diversity, coverage and copies.

Music statistics (:mod:`b2b.eval.metrics`) can look right while every sample is the same (mode collapse) or a
copy of the training data (memorization). These measures look at samples as a set:

diversity
    The mean pairwise Jaccard distance among the samples of a set, ``1 - |a ∩ b| / |a ∪ b|`` over their
    on-cells (two empty rolls are at distance 0). Real corpora sit near 1 (two phrases rarely share many
    cells); a collapsed generator sits near 0. Reported for generated samples as a *ratio* to the real
    set's: 1 is as diverse as real.
precision and recall
    k-nearest-neighbour precision and recall (Kynkäänniemi et al., NeurIPS 2019) in a fixed feature space
    of per-sample music statistics (:func:`sample_features`, standardized by the real set). Precision:
    the share of generated samples inside the real set's k-NN balls (are they realistic); recall: the
    share of real samples inside the generated set's balls (is the real variety covered).
1-NN two-sample test
    The leave-one-out accuracy of a 1-nearest-neighbour classifier telling two equally large sets apart
    in a feature space (:func:`nn_accuracy`; Lopez-Paz & Oquab, ICLR 2017): 0.5 when they are
    indistinguishable, 1 when every sample's nearest neighbour is from its own set.
copies
    For each generated sample, the Jaccard distance to its nearest training sample: the share at distance
    0 (identical) and the share within :data:`NEAR_COPY` (a near-copy).

Distances are computed on sparse matrices: rolls are mostly empty, so even LPD-17-sized rolls compare fast.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy import sparse

from b2b.errors import ShapeError
from b2b.spec import RollSpec

NEAR_COPY = 0.1  # Jaccard distance within which a generated sample counts as a near-copy
KNN_K = 3  # Kynkäänniemi et al.'s default
_CHUNK = 512  # rows per block of a distance matrix: bounds memory


@dataclass(frozen=True)
class CellSets:
    """Rolls as sets of on-cells: a sparse ``(N, cells)`` matrix, one row per roll, and each row's size."""

    matrix: sparse.csr_matrix
    sizes: np.ndarray

    @classmethod
    def of(cls, rolls: np.ndarray) -> CellSets:
        rolls = np.asarray(rolls)
        if rolls.dtype != bool or rolls.ndim != 4:
            raise ShapeError(f"expected (N, tracks, time, pitch) bool rolls, got {rolls.dtype} {rolls.shape}")
        matrix = sparse.csr_matrix(rolls.reshape(len(rolls), -1), dtype=np.float32)
        return cls(matrix, np.asarray(matrix.sum(axis=1), dtype=np.float64).ravel())

    @classmethod
    def concat(cls, parts: list[CellSets]) -> CellSets:
        return cls(
            sparse.vstack([p.matrix for p in parts], format="csr"), np.concatenate([p.sizes for p in parts])
        )

    def __len__(self) -> int:
        return self.matrix.shape[0]


def jaccard_distances(a: np.ndarray | CellSets, b: np.ndarray | CellSets) -> np.ndarray:
    """``(len(a), len(b))`` Jaccard distances between the on-cells of two sets of bool rolls.

    Two empty rolls are at distance 0 (identical), an empty and a non-empty one at 1.
    """
    left = a if isinstance(a, CellSets) else CellSets.of(a)
    right = b if isinstance(b, CellSets) else CellSets.of(b)
    if left.matrix.shape[1] != right.matrix.shape[1]:
        raise ShapeError(f"cannot compare rolls of {left.matrix.shape[1]} and {right.matrix.shape[1]} cells")
    out = np.empty((len(left), len(right)), dtype=np.float64)
    right_t = right.matrix.T.tocsc()
    for start in range(0, len(left), _CHUNK):
        inter = (left.matrix[start : start + _CHUNK] @ right_t).toarray().astype(np.float64)
        union = left.sizes[start : start + _CHUNK, None] + right.sizes[None, :] - inter
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start : start + _CHUNK] = np.where(union > 0, 1.0 - inter / union, 0.0)
    return out


def mean_pairwise_distance(rolls: np.ndarray) -> float | None:
    """Mean Jaccard distance over all pairs of distinct samples (None for fewer than 2 samples)."""
    n = len(rolls)
    if n < 2:
        return None
    cells = CellSets.of(rolls)
    d = jaccard_distances(cells, cells)
    return float((d.sum() - np.trace(d)) / (n * (n - 1)))


def nearest_distances(
    rolls: np.ndarray, reference: CellSets | Iterable[np.ndarray], chunk: int = 2048
) -> np.ndarray:
    """For each roll, the Jaccard distance to its nearest roll in ``reference`` (a CellSets, or rolls
    streamed in chunks of ``chunk``)."""
    cells = CellSets.of(rolls)
    if isinstance(reference, CellSets):
        return (
            jaccard_distances(cells, reference).min(axis=1) if len(reference) else np.full(len(rolls), np.inf)
        )
    best = np.full(len(rolls), np.inf)
    batch: list[np.ndarray] = []

    def flush() -> None:
        if batch:
            np.minimum(best, jaccard_distances(cells, np.stack(batch)).min(axis=1), out=best)
            batch.clear()

    for roll in reference:
        batch.append(roll)
        if len(batch) == chunk:
            flush()
    flush()
    return best


def copy_rates(nearest: np.ndarray) -> dict[str, float]:
    """``{"identical": share at distance 0, "near": share within NEAR_COPY}`` of nearest distances."""
    if not len(nearest) or not np.isfinite(nearest).all():
        raise ValueError("copy_rates needs one finite nearest distance per sample (an empty reference?)")
    return {"identical": float(np.mean(nearest == 0.0)), "near": float(np.mean(nearest <= NEAR_COPY))}


# ---------------------------------------------------------------------------------------------------
# Features and k-NN precision / recall

# Per-track features, each with the smallest difference that matters musically: a feature's scale in
# the standardized space is the real set's standard deviation, but never below this (voices that always
# play exactly one note would otherwise make any other polyphony infinitely far).
FEATURE_FLOORS = {
    "plays": 0.1,  # share of bars with a note
    "onsets": 0.5,  # notes per bar
    "note_length": 0.5,  # steps per note
    "polyphony": 0.1,  # pitches per sounding step
    "pitch_mean": 1.0,  # semitones
    "pitch_range": 1.0,  # semitones
}
FEATURES = tuple(FEATURE_FLOORS)
CHROMA_FLOOR = 0.05  # share of on-cells per pitch class


def sample_features(rolls: np.ndarray, spec: RollSpec) -> np.ndarray:
    """Per-sample music statistics, ``(N, tracks * (len(FEATURES) + 12))`` float64.

    Per track: the share of bars that play, onsets per bar, the mean note length in steps, pitches per
    sounding step, the mean and range of the pitches used (semitones above the lowest), and the 12-bin
    pitch-class histogram of its on-cells (sums to 1). A silent track has all-zero features.
    """
    rolls = np.asarray(rolls, dtype=bool)
    if rolls.ndim != 4 or rolls.shape[1:] != spec.shape:
        raise ShapeError(f"sample_features: expected (N, *{spec.shape}) rolls, got {rolls.shape}")
    n, c, t, p = rolls.shape
    bars = rolls.reshape(n, c, spec.n_bars, t // spec.n_bars, p).any(axis=(3, 4)).mean(axis=2)
    cells = rolls.sum(axis=(2, 3), dtype=np.float64)
    onsets = rolls.copy()
    onsets[:, :, 1:] &= ~rolls[:, :, :-1]
    n_onsets = onsets.sum(axis=(2, 3), dtype=np.float64)
    pitch_on = np.asarray(rolls.any(axis=2))  # (n, c, p)
    used = pitch_on.sum(axis=2)
    pitch_cells = rolls.sum(axis=2, dtype=np.float64)  # (n, c, p)
    sounding = rolls.any(axis=3).sum(axis=2)
    some = cells > 0
    safe = np.maximum(cells, 1)
    mean_pitch = np.where(some, (pitch_cells * np.arange(p)).sum(axis=2) / safe, 0.0)
    low = np.argmax(pitch_on, axis=2)
    high = p - 1 - np.argmax(pitch_on[..., ::-1], axis=2)
    pitch_range = np.where(used > 0, high - low, 0)
    polyphony = np.where(some, cells / np.maximum(sounding, 1), 0.0)
    note_length = np.where(some, cells / np.maximum(n_onsets, 1), 0.0)
    classes = (spec.lowest_pitch + np.arange(p)) % 12
    chroma = np.zeros((n, c, 12))
    # numpy's stub for ufunc.at leaves out tuple indices, which it takes
    np.add.at(chroma, (slice(None), slice(None), classes), pitch_cells)  # type: ignore[arg-type]
    chroma /= safe[..., None]
    stats = {
        "plays": bars,
        "onsets": n_onsets / spec.n_bars,
        "note_length": note_length,
        "polyphony": polyphony,
        "pitch_mean": mean_pitch,
        "pitch_range": pitch_range,
    }
    per_track = np.concatenate([np.stack([stats[f] for f in FEATURES], axis=2), chroma], axis=2)
    return per_track.reshape(n, -1)


def feature_floors(n_tracks: int) -> np.ndarray:
    """The smallest scale of each column of :func:`sample_features` (see :data:`FEATURE_FLOORS`)."""
    per_track = [*FEATURE_FLOORS.values(), *([CHROMA_FLOOR] * 12)]
    return np.tile(np.array(per_track), n_tracks)


def standardize(features: np.ndarray, real: np.ndarray, floors: np.ndarray | None = None) -> np.ndarray:
    """Centre on the real set's mean and scale by its standard deviation, floored per feature (``floors``;
    default: :func:`feature_floors`, for :func:`sample_features`)."""
    if floors is None:
        floors = feature_floors(real.shape[1] // (len(FEATURES) + 12))
    return (features - real.mean(axis=0)) / np.maximum(real.std(axis=0), floors)


def _euclidean(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    squared = (a * a).sum(axis=1)[:, None] + (b * b).sum(axis=1)[None, :] - 2.0 * (a @ b.T)
    return np.sqrt(np.maximum(squared, 0.0))


def _radii(points: np.ndarray, k: int) -> np.ndarray:
    d = _euclidean(points, points)
    np.fill_diagonal(d, 0.0)
    return np.sort(d, axis=1)[:, min(k, len(points) - 1)]  # column 0 is the point itself


def knn_precision_recall(generated: np.ndarray, real: np.ndarray, k: int = KNN_K) -> dict[str, float]:
    """Kynkäänniemi et al.'s improved precision and recall of two feature sets ``(N, D)``.

    A sample of one set is *covered* by the other when it lies within the k-th-nearest-neighbour radius
    of some sample of the other set (radii computed within that set).
    """
    if len(generated) < 2 or len(real) < 2:
        raise ValueError("precision/recall need at least 2 samples on each side")
    cross = _euclidean(generated, real)  # (gen, real)
    precision = np.mean((cross <= _radii(real, k)[None, :]).any(axis=1))
    recall = np.mean((cross <= _radii(generated, k)[:, None]).any(axis=0))
    return {"precision": float(precision), "recall": float(recall)}


def nn_accuracy(
    a: np.ndarray,
    b: np.ndarray,
    groups_a: np.ndarray | None = None,
    groups_b: np.ndarray | None = None,
    seed: int = 0,
) -> float:
    """Leave-one-out 1-NN accuracy of telling feature set ``a`` ``(n, D)`` from ``b`` ``(m, D)``.

    The larger set is cut to the smaller one's size (a seeded uniform subset), so that chance is 0.5.
    Each sample of the pooled sets is classified by its nearest other sample (Euclidean), leaving out
    the samples of its own group in its own set (``groups_a``, ``groups_b``: e.g. the song of each real
    window, whose overlapping windows would otherwise find each other; None: each sample its own group).
    A sample whose nearest neighbours are tied counts the share of them from its own set, so the result
    does not depend on the order of the samples. 0.5: the sets are indistinguishable; 1: each sample's
    nearest neighbour is from its own set; below 0.5: closer across the sets than within them.
    """
    size = min(len(a), len(b))
    if size < 2:
        raise ValueError("the 1-NN test needs at least 2 samples on each side")
    rng = np.random.default_rng(seed)
    sides = []
    for features, groups in ((a, groups_a), (b, groups_b)):
        keep = np.arange(len(features))
        if len(features) > size:
            keep = np.sort(rng.choice(len(features), size, replace=False))
        sides.append((features[keep], keep if groups is None else np.asarray(groups)[keep]))
    points = np.concatenate([sides[0][0], sides[1][0]])
    label = np.repeat([0, 1], size)
    group = np.concatenate([sides[0][1], sides[1][1]])
    norms = (points * points).sum(axis=1)
    squared = norms[:, None] + norms[None, :] - 2.0 * (points @ points.T)
    own = label[:, None] == label[None, :]
    squared[own & (group[:, None] == group[None, :])] = np.inf  # itself and its own group
    # Distances within float noise of the expanded square (relative to the points' norms) are ties: two
    # copies of a sample must tie whatever their rounding.
    noise = 1e-9 * (norms[:, None] + norms[None, :] + 1.0)
    nearest = squared <= squared.min(axis=1, keepdims=True) + noise
    return float(np.mean((nearest & own).sum(axis=1) / nearest.sum(axis=1)))
