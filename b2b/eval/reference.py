"""The real data a generator is measured against, and one comparison of a generated set with it.

:class:`RealReference` reads a shards folder once (the validation split for statistics and diversity, the
training split for the copy check) and :meth:`RealReference.compare` puts a generated set beside it, in a
:class:`Comparison`: the music and structure statistics, the distance to real, the diversity ratio, k-NN
precision and recall, the 1-NN two-sample accuracy beside its real floor, and the share of copies of
training samples. The trainer (in-training metrics), ``b2b eval``, ``b2b sample`` and the recipe
ablation all use it, so every figure means the same everywhere.

The real floor of the 1-NN test compares the reference split with the other split of the same shards
(``val`` against ``train``): a build gives each song (its group) one split, so the two sets share no
song, and overlapping windows of one song cannot pair up across them. Within a real set, the test leaves
a window's own song out of its neighbours (the manifest's ``songs``), so that they cannot pair up there
either.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import NamedTuple

import numpy as np

from b2b.data.manifest import read_manifest, reference_split, song_groups
from b2b.data.reading import iter_samples
from b2b.eval.diversity import (
    CellSets,
    copy_rates,
    feature_floors,
    knn_precision_recall,
    nearest_distances,
    nn_accuracy,
    sample_features,
    standardize,
)
from b2b.eval.metrics import MetricsAccumulator, distance_to_real, diversity_ratio, music_metrics
from b2b.eval.structure import structure_features, structure_floors, total_variation
from b2b.spec import RollSpec

TRAIN_REFERENCE_N = 8192  # training samples held for the copy check during training
FLOOR_READ_N = 8192  # samples of the other split read (in shard order) for the 1-NN floor's second set
PLAYS_TOLERANCE = 0.10  # a voice plays in its real share of bars within this many points
DENSITY_RANGE = (0.5, 2.0)  # ... at this range of its real density


class RealSet(NamedTuple):
    """Real samples of one split and the song group of each (None: not recorded in the manifest)."""

    split: str
    samples: np.ndarray
    groups: np.ndarray | None


@dataclass(frozen=True)
class Comparison:
    """A generated set measured against the real one (:meth:`RealReference.compare`).

    Attributes
    ----------
    metrics : dict
        :func:`b2b.eval.metrics.music_metrics` of the generated set.
    distance_to_real : float
        :func:`b2b.eval.metrics.distance_to_real`, the 1-NN accuracy and floor included: 0 = identical.
    diversity_ratio : float or None
        Generated diversity over real (None where undefined).
    real_diversity : float or None
        The real set's mean pairwise Jaccard distance.
    precision, recall : float
        k-NN precision and recall in the space of per-sample statistics.
    nn_accuracy : float or None
        Leave-one-out 1-NN accuracy of telling generated from real samples (0.5: indistinguishable).
    nn_floor : float or None
        The same between two real sets of disjoint songs (None: the shards have one split only).
    nn_n : int
        Samples per side of the generated test (the larger side cut to the smaller).
    copies : dict or None
        ``{"identical", "near"}`` shares of copies of training samples (None: not checked).
    voices : list of dict
        :func:`voice_rows`.
    structure : list of dict
        :func:`structure_rows`.
    in_key, in_key_real : float or None
        Mean in-key share of the generated and the real samples.
    """

    metrics: dict
    distance_to_real: float
    diversity_ratio: float | None
    real_diversity: float | None
    precision: float
    recall: float
    nn_accuracy: float | None
    nn_floor: float | None
    nn_n: int
    copies: dict[str, float] | None
    voices: list[dict]
    structure: list[dict]
    in_key: float | None
    in_key_real: float | None

    @property
    def writes_notes(self) -> bool:
        """Whether the generated set has any note."""
        return self.metrics["polyphonic_rate"] is not None

    def to_dict(self, metrics: bool = True) -> dict:
        """The comparison as a JSON-able dict (``metrics=False``: without the generated set's metrics)."""
        out = asdict(self)
        if not metrics:
            del out["metrics"]
        return out


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
        Where the real samples came from (shards, split, counts, and what the floor compared).
    two_sample : np.ndarray
        :func:`two_sample_features` of the subset: the real side of the 1-NN test.
    groups : np.ndarray or None
        The song group of each sample of the subset (None: the shards do not record songs).
    nn_floor : float or None
        The 1-NN accuracy between the subset and real samples of other songs (None: none to compare).
    """

    spec: RollSpec
    metrics: dict
    samples: np.ndarray
    features: np.ndarray
    train: CellSets | None
    source: dict
    two_sample: np.ndarray
    groups: np.ndarray | None
    nn_floor: float | None

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

        manifest = read_manifest(shards)
        if split == "auto":
            split = reference_split(manifest)
        other = floor_samples(shards, split, kept)
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
        groups = song_groups(manifest, split, np.array(accumulator.kept_index))
        source = {"shards": str(shards), "split": split}
        return cls.from_accumulator(accumulator, train, source, other, groups)

    @classmethod
    def from_accumulator(
        cls,
        accumulator: MetricsAccumulator,
        train: CellSets | None,
        source: dict,
        other: RealSet | None = None,
        groups: np.ndarray | None = None,
    ) -> RealReference:
        """From the real samples' :class:`~b2b.eval.metrics.MetricsAccumulator` (its kept subset), the
        training samples for the copy check, real samples of other songs for the 1-NN floor
        (:func:`floor_samples`; None: no floor) and the song group of each kept sample (None: unknown)."""
        spec = accumulator.spec
        samples = np.stack(accumulator.kept)
        two_sample = two_sample_features(samples, spec)
        source = {**source, "n": accumulator.n_samples, "train_n": 0 if train is None else len(train)}
        floor = None
        if other is not None and min(len(other.samples), len(samples)) >= 2:
            real = _scaled(two_sample, two_sample, spec)
            theirs = _scaled(two_sample_features(other.samples, spec), two_sample, spec)
            floor = nn_accuracy(theirs, real, other.groups, groups)
            size = min(len(other.samples), len(samples))
            source["floor"] = f"{size} {source.get('split', 'real')} against {size} {other.split} samples"
        if groups is None:
            source["songs"] = "not in the manifest: one song's windows may pair up; rerun `b2b shards build`"
        features = sample_features(samples, spec)
        return cls(spec, accumulator.result(), samples, features, train, source, two_sample, groups, floor)

    def compare(self, rolls: np.ndarray) -> Comparison:
        """Measure a generated set of bool rolls against the real one."""
        generated = music_metrics(rolls, self.spec)
        real_features = standardize(self.features, self.features)
        features = sample_features(rolls, self.spec)
        coverage = knn_precision_recall(standardize(features, self.features), real_features)
        accuracy = None
        if min(len(rolls), len(self.samples)) >= 2:
            real = _scaled(self.two_sample, self.two_sample, self.spec)
            mine = _scaled(two_sample_features(rolls, self.spec, features), self.two_sample, self.spec)
            accuracy = nn_accuracy(mine, real, None, self.groups)
        copies = (
            copy_rates(nearest_distances(rolls, self.train))
            if self.train is not None and len(self.train)
            else None
        )
        return Comparison(
            metrics=generated,
            distance_to_real=distance_to_real(generated, self.metrics, accuracy, self.nn_floor),
            diversity_ratio=diversity_ratio(generated, self.metrics),
            real_diversity=self.metrics.get("diversity"),
            precision=coverage["precision"],
            recall=coverage["recall"],
            nn_accuracy=accuracy,
            nn_floor=self.nn_floor,
            nn_n=min(len(rolls), len(self.samples)),
            copies=copies,
            voices=voice_rows(generated, self.metrics),
            structure=structure_rows(generated, self.metrics),
            in_key=generated.get("in_key"),
            in_key_real=self.metrics.get("in_key"),
        )


def two_sample_features(rolls: np.ndarray, spec: RollSpec, base: np.ndarray | None = None) -> np.ndarray:
    """The per-sample feature space of the 1-NN test: :func:`b2b.eval.diversity.sample_features` (what
    each track plays: bars, onsets, note length, polyphony, pitch height and range, pitch classes) beside
    :func:`b2b.eval.structure.structure_features` (how its notes are built: fragments, onsets on the
    eighth-note grid, one note at a time, pitch classes per bar, and the sample's in-key share).
    ``base``: the rolls' ``sample_features`` when already computed."""
    base = sample_features(rolls, spec) if base is None else base
    return np.concatenate([base, structure_features(rolls, spec)], axis=1)


def _scaled(features: np.ndarray, real: np.ndarray, spec: RollSpec) -> np.ndarray:
    """:func:`two_sample_features` standardized on the real set, floored per column."""
    floors = np.concatenate([feature_floors(len(spec.tracks)), structure_floors(spec)])
    return standardize(features, real, floors)


def seeded_subset(samples: Iterable[np.ndarray], n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A uniform subset of at most ``n`` of the samples (seeded reservoir sampling) and the position of
    each in the stream."""
    rng = np.random.default_rng(seed)
    kept: list[np.ndarray] = []
    index: list[int] = []
    for seen, sample in enumerate(samples):
        if len(kept) < n:
            kept.append(sample)
            index.append(seen)
        else:
            slot = int(rng.integers(seen + 1))
            if slot < n:
                kept[slot], index[slot] = sample, seen
    return (np.stack(kept) if kept else np.zeros((0,), dtype=bool)), np.array(index, dtype=np.int64)


def floor_samples(shards: str | Path, split: str, n: int) -> RealSet | None:
    """Real samples of other songs than ``split``'s, for the 1-NN floor: a seeded uniform subset of ``n``
    of the first :data:`FLOOR_READ_N` samples (in shard order) of the other split, with their song
    groups; None when the shards have no other split. A build puts every window of a song in its song's
    split, so no song has windows on both sides."""
    manifest = read_manifest(shards)
    other = "train" if split == "val" else "val"
    if not manifest.get(f"n_{other}"):
        return None
    samples, index = seeded_subset(iter_samples(shards, split=other, limit=FLOOR_READ_N), n)
    return RealSet(other, samples, song_groups(manifest, other, index)) if len(samples) else None


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


def structure_rows(generated: dict, real: dict) -> list[dict]:
    """Per pitched track that plays in either set: how its notes are built, generated beside real.

    Each row: ``track``, then for ``fragments``, ``on_8th``, ``mono`` (shares) and ``note_length`` (16ths)
    and ``UPC`` the generated value and the real one (``<name>_real``), and ``lengths_tv``, the total
    variation distance between the two note-length histograms (None where either set has no note).
    """
    rows = []
    for name, real_values in real["tracks"].items():
        gen_values = generated["tracks"][name]
        if "UPC" not in real_values or (real_values["UPC"] is None and gen_values["UPC"] is None):
            continue  # a drum track, or silent in both sets
        row: dict = {"track": name}
        for metric in ("fragments", "note_length", "on_8th", "mono", "UPC"):
            row[metric], row[f"{metric}_real"] = gen_values.get(metric), real_values.get(metric)
        lengths, lengths_real = gen_values.get("lengths"), real_values.get("lengths")
        row["lengths_tv"] = (
            None if lengths is None or lengths_real is None else total_variation(lengths, lengths_real)
        )
        rows.append(row)
    return rows


def nn_text(result: Comparison) -> str:
    """``1-NN 0.97 (real 0.54)``: the 1-NN accuracy beside its real floor."""
    accuracy = "-" if result.nn_accuracy is None else f"{result.nn_accuracy:.2f}"
    floor = "-" if result.nn_floor is None else f"{result.nn_floor:.2f}"
    return f"1-NN {accuracy} (real {floor})"


def summary_line(result: Comparison) -> str:
    """One line: distance, diversity, precision/recall, the 1-NN test beside its real floor, in-key
    share, copies, and how many voices play as they should."""
    rows = result.voices
    playing = [r for r in rows if r["plays_real"] > 0]
    ok_voices = sum(r["ok"] for r in playing)
    wrong_silent = sum(not r["ok"] for r in rows if r["plays_real"] == 0)
    copies = result.copies
    ratio = result.diversity_ratio
    parts = [
        f"distance to real {result.distance_to_real:.3f}",
        f"diversity {'-' if ratio is None else f'{ratio:.2f}'} of real",
        f"precision {result.precision:.2f} recall {result.recall:.2f}",
        nn_text(result),
        f"in key {_pct(result.in_key)} (real {_pct(result.in_key_real)})",
        "copies -" if copies is None else f"copies {100 * copies['near']:.1f}%",
        f"voices right {ok_voices}/{len(playing)}",
    ]
    if wrong_silent:
        parts.append(f"{wrong_silent} silent track(s) playing")
    return "; ".join(parts)


def voice_table(result: Comparison) -> str:
    """The per-track rows of :func:`voice_rows` as an aligned text table (tracks that play in real data,
    and silent ones that play here)."""
    lines = [f"{'track':<22}{'plays (real)':>16}{'density × real':>16}{'one note (real)':>18}  ok"]
    for r in result.voices:
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


def structure_table(result: Comparison) -> str:
    """The rows of :func:`structure_rows` as an aligned text table: fragments, mean note length over
    real, onsets on the eighth-note grid, one note at a time, pitch classes per bar over real, and the
    distance between the note-length histograms."""
    header = ("track", "fragments (real)", "length × real", "on 8ths (real)", "one note (real)", "UPC × real")
    lines = [f"{header[0]:<22}" + "".join(f"{h:>18}" for h in header[1:]) + f"{'lengths TV':>12}"]
    for r in result.structure:
        cells = [
            f"{_pct(r['fragments'])} ({_pct(r['fragments_real'])})",
            _times(r["note_length"], r["note_length_real"]),
            f"{_pct(r['on_8th'])} ({_pct(r['on_8th_real'])})",
            f"{_pct(r['mono'])} ({_pct(r['mono_real'])})",
            _times(r["UPC"], r["UPC_real"]),
        ]
        tv = "-" if r["lengths_tv"] is None else f"{r['lengths_tv']:.2f}"
        lines.append(f"{r['track'][:21]:<22}" + "".join(f"{c:>18}" for c in cells) + f"{tv:>12}")
    return "\n".join(lines)


def _times(value: float | None, real: float | None) -> str:
    return "-" if value is None or not real else f"{value / real:.2f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"
