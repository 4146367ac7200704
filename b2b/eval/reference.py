"""The real data a generator is measured against, and one comparison of a generated set with it.

:class:`RealReference` reads a shards folder once (the validation split for statistics and diversity, the
training split for the copy check) and :meth:`RealReference.compare` puts a generated set beside it: the
music statistics, the distance to real, the diversity ratio, k-NN precision and recall, and the share of
copies of training samples. The trainer (in-training metrics), ``b2b eval`` and the recipe ablation all
use it, so every figure means the same everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np

from b2b.data.manifest import read_manifest, reference_split
from b2b.data.reading import iter_samples
from b2b.eval.diversity import (
    CellSets,
    copy_rates,
    knn_precision_recall,
    nearest_distances,
    sample_features,
    standardize,
)
from b2b.eval.metrics import MetricsAccumulator, distance_to_real, diversity_ratio, music_metrics
from b2b.spec import RollSpec

TRAIN_REFERENCE_N = 8192  # training samples held for the copy check during training
PLAYS_TOLERANCE = 0.10  # a voice plays in its real share of bars within this many points
DENSITY_RANGE = (0.5, 2.0)  # ... at this range of its real density


@dataclass
class RealReference:
    """Real statistics and samples to compare generated sets with.

    Attributes
    ----------
    spec : RollSpec
    metrics : dict
        :func:`b2b.eval.metrics.music_metrics` of the real samples read (diversity on a seeded subset).
    samples : np.ndarray
        That subset, ``(kept, tracks, time, pitch)`` bool: real samples to show beside generated ones.
    features : np.ndarray
        :func:`b2b.eval.diversity.sample_features` of that subset: the real side of precision and recall.
    train : CellSets or None
        Training samples for the copy check (None: not checked).
    source : dict
        Where the real samples came from (shards, split, counts).
    """

    spec: RollSpec
    metrics: dict
    samples: np.ndarray
    features: np.ndarray
    train: CellSets | None
    source: dict

    @classmethod
    def from_shards(
        cls,
        shards: str | Path,
        spec: RollSpec,
        *,
        split: str = "auto",
        limit: int | None = None,
        kept: int = 256,
        train_n: int | None = TRAIN_REFERENCE_N,
    ) -> RealReference:
        """Read the real side from a shards folder.

        Parameters
        ----------
        shards : str or Path
        spec : RollSpec
            The shards' spec.
        split : {"auto", "val", "train"}
            Real samples for statistics; ``auto``: ``val`` when the shards have one, else ``train``.
        limit : int, optional
            Read at most this many real samples (default: the whole split).
        kept : int
            Size of the seeded uniform subset used for diversity and precision/recall; match it to the
            generated set's size (the k-NN radii depend on the set size).
        train_n : int or None
            Training samples (the first, in shard order) held for the copy check; None: all of them;
            0: no check.
        """

        if split == "auto":
            split = reference_split(read_manifest(shards))
        accumulator = MetricsAccumulator(spec, diversity_n=kept)
        batch: list[np.ndarray] = []
        for roll in iter_samples(shards, split=split, limit=limit):
            batch.append(roll)
            if len(batch) == 256:
                accumulator.update(np.stack(batch))
                batch = []
        if batch:
            accumulator.update(np.stack(batch))
        train = train_cells(shards, train_n) if train_n != 0 else None
        return cls.from_accumulator(accumulator, train, {"shards": str(shards), "split": split})

    @classmethod
    def from_accumulator(
        cls, accumulator: MetricsAccumulator, train: CellSets | None, source: dict
    ) -> RealReference:
        """From the real samples' :class:`~b2b.eval.metrics.MetricsAccumulator` (its kept subset) and the
        training samples for the copy check."""
        samples = np.stack(accumulator.kept)
        source = {**source, "n": accumulator.n_samples, "train_n": 0 if train is None else len(train)}
        return cls(
            accumulator.spec,
            accumulator.result(),
            samples,
            sample_features(samples, accumulator.spec),
            train,
            source,
        )

    def compare(self, rolls: np.ndarray) -> dict:
        """Measure a generated set of bool rolls against the real one.

        Returns
        -------
        dict
            ``metrics`` (music statistics), ``distance_to_real``, ``diversity_ratio``, ``precision``,
            ``recall``, ``copies`` (``{"identical", "near"}`` shares, or None without training samples)
            and ``voices`` (:func:`voice_rows`).
        """
        generated = music_metrics(rolls, self.spec)
        real_features = standardize(self.features, self.features)
        coverage = knn_precision_recall(
            standardize(sample_features(rolls, self.spec), self.features), real_features
        )
        copies = (
            copy_rates(nearest_distances(rolls, self.train))
            if self.train is not None and len(self.train)
            else None
        )
        return {
            "metrics": generated,
            "distance_to_real": distance_to_real(generated, self.metrics),
            "diversity_ratio": diversity_ratio(generated, self.metrics),
            **coverage,
            "copies": copies,
            "voices": voice_rows(generated, self.metrics),
        }


def train_cells(shards: str | Path, limit: int | None = None, chunk: int = 1024) -> CellSets:
    """The first ``limit`` training samples (None: all) as sparse cell sets, read chunk by chunk."""

    parts, batch = [], []
    for roll in islice(iter_samples(shards, split="train"), limit):
        batch.append(roll)
        if len(batch) == chunk:
            parts.append(CellSets.of(np.stack(batch)))
            batch = []
    if batch:
        parts.append(CellSets.of(np.stack(batch)))
    return CellSets.concat(parts)


def voice_rows(generated: dict, real: dict) -> list[dict]:
    """Per track: the share of bars it plays in, its density and its one-note share, generated beside real.

    Each row: ``track``, ``plays`` and ``plays_real`` (1 − EB), ``density_ratio`` (generated over real
    density; None where the real track is silent), ``mono`` and ``mono_real``, and ``ok``: the track plays in
    its real share of bars within :data:`PLAYS_TOLERANCE` at :data:`DENSITY_RANGE` times the real
    density, or, silent in the real set, is silent here too.
    """
    rows = []
    for name, real_values in real["tracks"].items():
        gen_values = generated["tracks"][name]
        plays, plays_real = 1.0 - gen_values["EB"], 1.0 - real_values["EB"]
        density, density_real = gen_values["density"] or 0.0, real_values["density"] or 0.0
        ratio = density / density_real if density_real else None
        if ratio is None:
            ok = density == 0.0
        else:
            ok = abs(plays - plays_real) <= PLAYS_TOLERANCE and DENSITY_RANGE[0] <= ratio <= DENSITY_RANGE[1]
        rows.append(
            {
                "track": name,
                "plays": plays,
                "plays_real": plays_real,
                "density_ratio": ratio,
                "mono": gen_values.get("mono"),
                "mono_real": real_values.get("mono"),
                "ok": ok,
            }
        )
    return rows


def summary_line(result: dict) -> str:
    """One line: distance, diversity, precision/recall, copies, and how many voices play as they should."""
    rows = result["voices"]
    playing = [r for r in rows if r["plays_real"] > 0]
    ok_voices = sum(r["ok"] for r in playing)
    wrong_silent = sum(not r["ok"] for r in rows if r["plays_real"] == 0)
    copies = result["copies"]
    ratio = result["diversity_ratio"]
    parts = [
        f"distance to real {result['distance_to_real']:.3f}",
        f"diversity {'-' if ratio is None else f'{ratio:.2f}'} of real",
        f"precision {result['precision']:.2f} recall {result['recall']:.2f}",
        "copies -" if copies is None else f"copies {100 * copies['near']:.1f}%",
        f"voices right {ok_voices}/{len(playing)}",
    ]
    if wrong_silent:
        parts.append(f"{wrong_silent} silent track(s) playing")
    return "; ".join(parts)


def voice_table(result: dict) -> str:
    """The per-track rows of :func:`voice_rows` as an aligned text table (tracks that play in real data,
    and silent ones that play here)."""
    lines = [f"{'track':<22}{'plays (real)':>16}{'density × real':>16}{'one note (real)':>18}  ok"]
    for r in result["voices"]:
        if r["plays_real"] == 0 and r["ok"]:
            continue
        density = "-" if r["density_ratio"] is None else f"{r['density_ratio']:.2f}"
        mono = (
            "-"
            if r["mono"] is None and r["mono_real"] is None
            else (f"{_pct(r['mono'])} ({_pct(r['mono_real'])})")
        )
        plays = f"{_pct(r['plays'])} ({_pct(r['plays_real'])})"
        ok = "yes" if r["ok"] else "NO"
        lines.append(f"{r['track'][:21]:<22}{plays:>16}{density:>16}{mono:>18}  {ok}")
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"
