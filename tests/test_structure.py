"""Structure measures (fragments, note lengths, onsets on the grid, keys), the 1-NN two-sample test and its
real floor, each against values computed by hand on tiny constructed rolls."""

from __future__ import annotations

import math

import numpy as np
import pytest

from b2b.data.manifest import read_manifest, song_groups
from b2b.eval.diversity import nn_accuracy
from b2b.eval.metrics import distance_to_real, metric_gaps, music_metrics, separability
from b2b.eval.reference import RealReference, floor_samples, structure_rows
from b2b.eval.structure import (
    N_LENGTH_BINS,
    fragment_mask,
    in_key_shares,
    length_bins,
    notes_of,
    on_eighth_grid,
    structure_counts,
    structure_features,
    total_variation,
)
from b2b.spec import RollSpec, Track

DRUMS, LEAD, BASS = range(3)
TRACKS = (Track("Drums", 0, True), Track("Lead", 73), Track("Bass", 32))


def spec_at(steps_per_bar: int) -> RollSpec:
    """Two bars of 4 beats, 24 pitches from C4 (column i is pitch 60 + i, pitch class i % 12)."""
    return RollSpec(
        TRACKS, n_bars=2, steps_per_bar=steps_per_bar, beats_per_bar=4, n_pitches=24, lowest_pitch=60
    )


def rolls_with(spec: RollSpec, notes: list[tuple[int, int, int, int, int]], n: int = 1) -> np.ndarray:
    """``n`` empty rolls with the given notes ``(sample, track, pitch column, start, length)``."""
    rolls = np.zeros((n, *spec.shape), bool)
    for sample, track, pitch, start, length in notes:
        rolls[sample, track, start : start + length, pitch] = True
    return rolls


def test_notes_are_runs_of_one_pitch_in_one_track_in_order():
    spec = spec_at(16)
    rolls = rolls_with(
        spec, [(0, LEAD, 4, 0, 3), (0, LEAD, 4, 5, 1), (0, BASS, 0, 30, 2), (1, LEAD, 2, 31, 1)], n=2
    )
    rolls[0, LEAD, 3:5, 7] = True  # a second pitch beside the first: its own note
    notes = notes_of(rolls)
    assert list(zip(notes.sample, notes.track, notes.pitch, notes.start, notes.length, strict=True)) == [
        (0, LEAD, 4, 0, 3),
        (0, LEAD, 4, 5, 1),
        (0, LEAD, 7, 3, 2),
        (0, BASS, 0, 30, 2),
        (1, LEAD, 2, 31, 1),  # ends on the last step
    ]


def test_fragments_are_shorter_than_a_16th_or_one_step_on_a_16th_grid():
    lengths = np.array([1, 2, 3, 6])
    # 48 steps per bar: a 16th is 3 steps, so notes of 1 and 2 steps are fragments.
    assert fragment_mask(lengths, spec_at(48)).tolist() == [True, True, False, False]
    # 16 steps per bar: a 16th is one step, the shortest note there is: one-step notes are fragments.
    assert fragment_mask(lengths, spec_at(16)).tolist() == [True, False, False, False]
    # 8 steps per bar: the grid's shortest note (an 8th) still counts as a fragment.
    assert fragment_mask(lengths, spec_at(8)).tolist() == [True, False, False, False]


def test_length_bins_and_total_variation_by_hand():
    # 48 steps per bar: lengths in 16ths are steps / 3.
    lengths = np.array([1, 3, 5, 6, 12, 47, 48, 96, 200])  # 1/3, 1, 5/3, 2, 4, 15.7, 16, 32, 66.7 16ths
    assert length_bins(lengths, spec_at(48)).tolist() == [0, 1, 1, 2, 4, 7, 8, 9, 9]
    assert N_LENGTH_BINS == 10
    assert total_variation([1, 1, 0], [0, 1, 1]) == pytest.approx(0.5)  # ½ (½ + 0 + ½)
    assert total_variation([2, 0], [0, 5]) == 1.0 and total_variation([1, 3], [2, 6]) == 0.0


def test_onsets_on_the_eighth_note_grid():
    # 16 steps per bar: a beat is 4 steps, an 8th 2 steps: even steps are on the grid.
    assert on_eighth_grid(np.array([0, 2, 3, 5, 18]), spec_at(16)).tolist() == [
        True,
        True,
        False,
        False,
        True,
    ]
    # 48 steps per bar: a beat is 12 steps, an 8th 6.
    assert on_eighth_grid(np.array([0, 6, 3, 12, 50]), spec_at(48)).tolist() == [
        True,
        True,
        False,
        True,
        False,
    ]


def test_in_key_share_is_musPys_scale_consistency_with_natural_minor():
    spec = spec_at(16)
    n = 4
    # Sample 0: C E G and C#: C major holds 3 of the 4 notes, and no scale holds all four.
    notes = [(0, LEAD, p, 2 * i, 1) for i, p in enumerate((0, 4, 7, 1))]
    # Sample 1: A harmonic minor (A B C D E F G#): its G# lies outside every major and natural-minor scale
    # that holds the other six, so 6 of 7 (harmonic minor would give 7 of 7).
    notes += [(1, LEAD, p, 2 * i, 1) for i, p in enumerate((9, 11, 12, 14, 16, 17, 8))]
    # Sample 2: the bass repeats one D three times (three notes, each counted) and the lead plays an Eb:
    # D major has no Eb, Bb major both (D Eb): 4 of 4.
    notes += [(2, BASS, 2, 4 * i, 2) for i in range(3)] + [(2, LEAD, 3, 20, 4)]
    # Sample 3: drums only: no pitched note, no share.
    notes += [(3, DRUMS, 0, 0, 1)]
    shares = in_key_shares(rolls_with(spec, notes, n), spec)
    assert shares[:3].tolist() == pytest.approx([3 / 4, 6 / 7, 1.0])
    assert math.isnan(shares[3])
    metrics = music_metrics(rolls_with(spec, notes, n), spec)
    assert metrics["in_key"] == pytest.approx(
        (3 / 4 + 6 / 7 + 1.0) / 3
    )  # the sample without notes is left out


def test_pooled_structure_figures_by_hand():
    spec = spec_at(48)  # a 16th is 3 steps, an 8th 6
    # Lead: 1 step at 0 (fragment, on grid), 2 steps at 7 (fragment, off), 6 steps at 12 (on), 12 at 50 (off).
    # Bass: one 24-step note at 0. Drums: 1-step hits (not measured).
    notes = [(0, LEAD, 0, 0, 1), (0, LEAD, 0, 7, 2), (0, LEAD, 1, 12, 6), (0, LEAD, 2, 50, 12)]
    notes += [(0, BASS, 0, 0, 24), (0, DRUMS, 0, 0, 1), (0, DRUMS, 0, 3, 1)]
    rolls = rolls_with(spec, notes)
    counts = structure_counts(rolls, spec)
    assert counts["notes"].tolist() == [2, 4, 1]
    assert counts["fragments"].tolist() == [2, 2, 0] and counts["on_8th"].tolist() == [1, 2, 1]
    lead = music_metrics(rolls, spec)["tracks"]["Lead"]
    assert lead["fragments"] == 0.5 and lead["on_8th"] == 0.5
    assert lead["note_length"] == pytest.approx((1 + 2 + 6 + 12) / 4 / 3)  # 1.75 16ths
    # In 16ths: 1/3, 2/3 (bin 0), 2 (bin 2), 4 (bin 4).
    assert lead["lengths"] == [0.5, 0.0, 0.25, 0.0, 0.25, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert "fragments" not in music_metrics(rolls, spec)["tracks"]["Drums"]


def test_per_sample_structure_features_by_hand():
    spec = spec_at(16)
    # Sample 0, lead: C for 1 step at 0 (fragment, on grid), D for 2 steps at 3 (off grid), and C+E together
    # at 8-9 (two notes, on grid): 4 notes; sounding steps 0, 3, 4, 8, 9 of which 8 and 9 hold two pitches.
    # Bar 0 uses classes C, D, E; bar 1 is empty. The bass is silent. In key: C, D, C, E all in C major.
    notes = [(0, LEAD, 0, 0, 1), (0, LEAD, 2, 3, 2), (0, LEAD, 0, 8, 2), (0, LEAD, 4, 8, 2)]
    features = structure_features(rolls_with(spec, notes, 2), spec)
    assert features.shape == (2, 2 * 4 + 1)  # two pitched tracks × 4, then the in-key share
    assert features[0].tolist() == pytest.approx([1 / 4, 3 / 4, 3 / 5, 3.0, 0, 0, 0, 0, 1.0])
    assert features[1].tolist() == [0.0] * 9  # an empty sample: nothing to average, all 0


def test_one_nn_accuracy_by_hand():
    far = nn_accuracy(np.array([[0.0], [1.0]]), np.array([[10.0], [11.0]]))
    interleaved = nn_accuracy(np.array([[0.0], [2.0]]), np.array([[1.0], [3.0]]))
    # Four copies of one point: each one's nearest neighbours are the three others, tied; one is its own.
    tied = nn_accuracy(np.zeros((2, 3)), np.zeros((2, 3)))
    assert (far, interleaved, tied) == (1.0, 0.0, pytest.approx(1 / 3))
    # Two windows of one song (group 7) find each other unless the group is left out.
    a, b = np.array([[0.0], [0.1]]), np.array([[0.3], [10.0]])
    assert nn_accuracy(a, b) == 0.75  # a0 -> a1, a1 -> a0, b0 -> a1 (wrong), b1 -> b0
    assert nn_accuracy(a, b, np.array([7, 7])) == 0.25  # a0 -> b0, a1 -> b0: both wrong now
    # The larger set is cut to the smaller one's size, so chance stays 0.5.
    assert nn_accuracy(np.array([[0.0], [1.0], [2.0], [3.0]]), np.array([[10.0], [11.0]])) == 1.0
    with pytest.raises(ValueError, match="at least 2 samples on each side"):
        nn_accuracy(np.zeros((1, 2)), np.zeros((5, 2)))


def test_distance_adds_the_length_histograms_and_the_excess_over_the_real_floor():
    assert separability(0.8, 0.6) == pytest.approx(0.5)  # (0.8 - 0.6) / (1 - 0.6)
    assert separability(0.55, 0.6) == 0.0 and separability(1.0, None) == 1.0 and separability(None) == 0.0
    real = {"tracks": {"Lead": {"EB": 0.0, "lengths": [0.0, 1.0, 0.0]}}, "diversity": 0.5}
    gen = {"tracks": {"Lead": {"EB": 0.2, "lengths": [0.5, 0.5, 0.0]}}, "diversity": 0.5}
    assert metric_gaps(gen, real) == {"EB/Lead": pytest.approx(0.2), "lengths/Lead": pytest.approx(0.5)}
    # 1 - (1 - mean(0.2, 0.5)) * 1 + (0.9 - 0.5) / 0.5
    assert distance_to_real(gen, real, 0.9, 0.5) == pytest.approx(0.35 + 0.8)
    assert distance_to_real(real, real, 0.5, 0.5) == 0.0


def test_structure_rows_set_each_voice_beside_real():
    spec = spec_at(16)
    real = music_metrics(rolls_with(spec, [(0, LEAD, 0, 0, 4), (0, LEAD, 2, 4, 4)]), spec)
    generated = music_metrics(rolls_with(spec, [(0, LEAD, 0, t, 1) for t in range(0, 8, 2)]), spec)
    [lead] = structure_rows(generated, real)  # the bass is silent in both: no row; drums never get one
    assert (lead["fragments"], lead["fragments_real"]) == (1.0, 0.0)
    assert (lead["note_length"], lead["note_length_real"]) == (1.0, 4.0)
    assert lead["lengths_tv"] == 1.0  # every generated note in bin [1, 2), every real one in [4, 6)


def test_the_build_records_songs_and_the_floor_compares_disjoint_songs(tiny_shards):
    manifest = read_manifest(tiny_shards)
    songs = manifest["songs"]
    assert len(songs["train"]["starts"]) == manifest["source"]["n_songs_train"]
    assert len(songs["val"]["starts"]) == manifest["source"]["n_songs_val"]
    assert songs["train"]["starts"][0] == 0 and songs["train"]["starts"] == sorted(songs["train"]["starts"])
    assert not set(songs["train"]["groups"]) & set(songs["val"]["groups"])  # one split per song
    # The group of each sample: the song whose first window is at or before it.
    starts, groups = songs["train"]["starts"], songs["train"]["groups"]
    assert song_groups(manifest, "train", np.array([0, starts[1] - 1, starts[1]])).tolist() == [
        groups[0],
        groups[0],
        groups[1],
    ]
    assert (
        song_groups({"n_train": 3}, "train", np.arange(3)) is None
    )  # shards built before b2b recorded songs
    spec = RollSpec.from_dict(manifest["spec"])
    other = floor_samples(tiny_shards, "val", 8)
    assert other is not None and other.split == "train" and len(other.samples) == 8
    assert set(other.groups) <= set(songs["train"]["groups"])
    reference = RealReference.from_shards(tiny_shards, spec, kept=8, train_n=16)
    assert set(reference.groups) <= set(songs["val"]["groups"])
    assert reference.nn_floor is not None and 0.0 <= reference.nn_floor <= 1.0
    n_val = min(8, manifest["n_val"])
    assert reference.source["floor"] == f"{n_val} val against {n_val} train samples"
    assert floor_samples(tiny_shards, "train", 8).split == "val"  # a train reference: val is the other


def test_no_floor_without_a_second_split(tmp_path):
    (tmp_path / "manifest.json").write_text('{"shards": [], "shape": [1, 16, 12], "n_train": 40, "n_val": 0}')
    assert floor_samples(tmp_path, "train", 8) is None
