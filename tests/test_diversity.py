"""Measures that see collapse, copies and silence, each on a set whose answer is computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from b2b.errors import ShapeError
from b2b.eval.diversity import (
    NEAR_COPY,
    CellSets,
    copy_rates,
    jaccard_distances,
    knn_precision_recall,
    mean_pairwise_distance,
    nearest_distances,
    sample_features,
)
from b2b.eval.metrics import distance_to_real, metric_gaps, music_metrics, separability
from b2b.eval.reference import RealReference, voice_rows
from b2b.spec import RollSpec, Track

SPEC = RollSpec(
    tracks=(Track("Lead", 73), Track("Bass", 32), Track("Pad", 88)),
    n_bars=2,
    steps_per_bar=8,
    beats_per_bar=4,
    n_pitches=12,
    lowest_pitch=60,
)
LEAD, BASS, PAD = range(3)


def melody(notes: list[int], track: int = LEAD) -> np.ndarray:
    """One sample: ``notes[t]`` is the pitch column of step t on ``track`` (-1: rest)."""
    roll = np.zeros(SPEC.shape, bool)
    for t, p in enumerate(notes):
        if p >= 0:
            roll[track, t, p] = True
    return roll


def test_jaccard_distances_by_hand():
    a = melody([0, 0, 1, 1, -1, -1, -1, -1])  # cells {(0,0), (1,0), (2,1), (3,1)}
    b = melody([0, 0, 2, 2, -1, -1, -1, -1])  # shares 2 cells of a union of 6
    empty = np.zeros(SPEC.shape, bool)
    d = jaccard_distances(np.stack([a, b, empty]), np.stack([a, b, empty]))
    assert d == pytest.approx(np.array([[0, 2 / 3, 1], [2 / 3, 0, 1], [1, 1, 0]]))
    # The mean over the 6 ordered pairs of distinct samples: (2/3 + 1 + 1) * 2 / 6.
    assert mean_pairwise_distance(np.stack([a, b, empty])) == pytest.approx((2 / 3 + 2) / 3)
    assert mean_pairwise_distance(a[None]) is None
    with pytest.raises(ShapeError, match="bool rolls"):
        jaccard_distances(a[None].astype(float), a[None])


def test_a_collapsed_set_has_no_diversity_and_a_silent_track_is_wholly_wrong():
    rng = np.random.default_rng(0)
    real = np.zeros((40, *SPEC.shape), bool)
    for i in range(40):  # a different 8-step melody and bass line in every sample; the pad never plays
        real[i, LEAD, np.arange(16), rng.integers(0, 12, 16)] = True
        real[i, BASS, np.arange(0, 16, 4), rng.integers(0, 12, 4)] = True
    collapsed = np.repeat(real[:1], 40, axis=0)  # one real sample, forty times
    real_m, collapsed_m = music_metrics(real, SPEC), music_metrics(collapsed, SPEC)
    assert collapsed_m["diversity"] == 0.0
    assert real_m["diversity"] > 0.8
    # Diversity 0 makes the distance 1 however right the statistics of the one sample are.
    assert distance_to_real(collapsed_m, real_m) == 1.0
    # The bass made silent: each of its entries counts 1, also QN, which a silent track leaves undefined.
    muted = real.copy()
    muted[:, BASS] = False
    gaps = metric_gaps(music_metrics(muted, SPEC), real_m)
    assert {k: v for k, v in gaps.items() if "Bass" in k} == {
        "EB/Bass": 1.0,
        "density/Bass": 1.0,
        "UPC/Bass": 1.0,
        "QN/Bass": 1.0,
        "mono/Bass": 1.0,
        "pitches_used/Bass": 1.0,
        "polyphony/Bass": 1.0,
        "fragments/Bass": 1.0,
        "note_length/Bass": 1.0,
        "on_8th/Bass": 1.0,
        "lengths/Bass": 1.0,
        "TD/Lead-Bass": 1.0,  # TD/Bass-Pad is undefined for real data (the pad never plays): left out
    }
    # The pad is silent in both: its density gap is 0, its other entries undefined on both sides.
    assert gaps["density/Pad"] == 0.0 and "QN/Pad" not in gaps


def test_density_and_one_note_share_by_hand():
    roll = melody([0, 0, 1, -1, -1, -1, -1, -1, 2, 2, 2, 2, -1, -1, -1, -1])
    roll[LEAD, 1, 5] = True  # step 1 sounds two pitches: 6 of the 7 sounding steps have one note
    m = music_metrics(roll[None], SPEC)["tracks"]["Lead"]
    assert m["density"] == pytest.approx(8 / (16 * 12))
    assert m["mono"] == pytest.approx(6 / 7)
    # Density is compared by ratio: half or double the real density is fully wrong, 1.5x is log2(1.5).
    real = {"tracks": {"Lead": {"density": 0.1}}, "TD": {}}
    for value, gap in ((0.05, 1.0), (0.2, 1.0), (0.15, np.log2(1.5)), (0.1, 0.0)):
        assert metric_gaps({"tracks": {"Lead": {"density": value}}, "TD": {}}, real)["density/Lead"] == (
            pytest.approx(gap)
        )


def test_copies_identical_and_near():
    train = np.stack([melody([i, i, -1, 3, 3, 3, 3, 3, 3, 3, 3, 3]) for i in range(5)])
    copy = train[2].copy()
    near = train[3].copy()
    near[BASS, 15, 0] = True  # one cell more than a training sample of 11: distance 1/12
    far = melody([7, -1, 8, -1, 9, -1, 10, -1])
    nearest = nearest_distances(np.stack([copy, near, far]), iter(train), chunk=2)
    assert nearest == pytest.approx([0.0, 1 / 12, 1.0])
    assert 1 / 12 <= NEAR_COPY
    assert copy_rates(nearest) == {"identical": pytest.approx(1 / 3), "near": pytest.approx(2 / 3)}
    # The same against a precomputed sparse reference.
    assert nearest_distances(np.stack([copy, near, far]), CellSets.of(train)) == pytest.approx(nearest)


def test_features_of_one_sample_by_hand():
    roll = melody([0, 0, 0, 0, 4, 4, -1, -1, 7, -1, -1, -1, -1, -1, -1, -1])  # C4 x4, E4 x2, G4 x1
    f = sample_features(roll[None], SPEC).reshape(3, -1)
    plays, onsets, note_length, polyphony, pitch_mean, pitch_range = f[LEAD, :6]
    assert plays == 1.0  # both bars play
    assert onsets == pytest.approx(3 / 2)  # three notes over two bars
    assert note_length == pytest.approx(7 / 3) and polyphony == 1.0
    assert pitch_mean == pytest.approx((0 * 4 + 4 * 2 + 7) / 7) and pitch_range == 7
    chroma = f[LEAD, 6:]
    assert chroma[0] == pytest.approx(4 / 7) and chroma[4] == pytest.approx(2 / 7) and chroma.sum() == 1.0
    assert not f[BASS].any()  # silent: all zeros


def test_knn_precision_recall_by_hand():
    real = np.array([[0.0], [1.0], [2.0], [10.0]])
    # k=1 radii of the real points: 1, 1, 1, 8. Generated 0.5 and 9 are inside; 30 is not.
    generated = np.array([[0.5], [9.0], [30.0]])
    # Generated radii (k=1): 8.5, 8.5, 21; every real point lies within 8.5 of 0.5 or 9.
    assert knn_precision_recall(generated, real, k=1) == {
        "precision": pytest.approx(2 / 3),
        "recall": 1.0,
    }
    # A generator collapsed on one real point covers only what its (zero) radius reaches.
    collapsed = np.array([[1.0], [1.0], [1.0]])
    assert knn_precision_recall(collapsed, real, k=1) == {"precision": 1.0, "recall": pytest.approx(1 / 4)}


def test_voice_rows_flag_a_silent_voice_a_sparse_voice_and_a_playing_silent_track():
    real = music_metrics(
        np.stack([melody([0] * 16) | melody([2, -1] * 8, track=BASS) for _ in range(4)]), SPEC
    )
    generated = music_metrics(np.stack([melody([0] * 6 + [-1] * 10) | melody([1] * 16, track=PAD)]), SPEC)
    rows = {r["track"]: r for r in voice_rows(generated, real)}
    assert rows["Lead"]["plays"] == 0.5 and rows["Lead"]["plays_real"] == 1.0 and not rows["Lead"]["ok"]
    assert rows["Lead"]["density_ratio"] == pytest.approx(6 / 16)
    assert rows["Bass"]["plays"] == 0.0 and not rows["Bass"]["ok"]
    assert rows["Pad"]["density_ratio"] is None and not rows["Pad"]["ok"]  # plays, but silent in real data


def test_real_reference_from_shards_flags_copies(tiny_shards):
    from b2b.data.manifest import shards_spec
    from b2b.data.reading import iter_samples

    spec = shards_spec(tiny_shards)
    reference = RealReference.from_shards(tiny_shards, spec, kept=8, train_n=64)
    train = np.stack(list(iter_samples(tiny_shards, "train", limit=8)))
    result = reference.compare(train)
    assert result.copies == {"identical": 1.0, "near": 1.0}
    assert reference.source["split"] == "val" and reference.source["train_n"] == 64
    silent = reference.compare(np.zeros((8, *spec.shape), bool))
    assert silent.diversity_ratio == 0.0 and not silent.writes_notes
    # Diversity 0: the statistics part is 1; the 1-NN test adds how far above the real floor it is.
    assert silent.distance_to_real == 1.0 + separability(silent.nn_accuracy, silent.nn_floor)
    assert silent.copies["identical"] == 0.0
