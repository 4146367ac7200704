"""Music metrics against values computed by hand on tiny constructed rolls, and against a loop oracle."""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import pytest

from b2b.errors import B2BError, ShapeError
from b2b.eval.metrics import (
    distance_to_real,
    metric_gaps,
    music_metrics,
    qn_min_steps,
    self_similarity,
    tonal_matrix,
)
from b2b.eval.structure import LENGTH_EDGES, MAJOR, NATURAL_MINOR
from b2b.spec import LPD17_TRACKS, RollSpec, Track

# Two bars of 48 steps (MuseGAN's 96 halved: QN needs 2 steps), beats of 12 steps. The pitch axis starts
# at D3 (50), not at a C, so pitch classes must come from lowest_pitch: column i is pitch 50 + i.
SPEC = RollSpec(
    tracks=(Track("Drums", 0, True), Track("Piano", 0), Track("Bass", 33), Track("Strings", 48)),
    n_bars=2,
    steps_per_bar=48,
    beats_per_bar=4,
    n_pitches=30,
    lowest_pitch=50,
)
DRUMS, PIANO, BASS, STRINGS = range(4)


def col(pitch: int) -> int:
    return pitch - SPEC.lowest_pitch


C4, E4, G4, C5, FS4, FS3 = 60, 64, 67, 72, 66, 54


def empty(n: int = 1) -> np.ndarray:
    return np.zeros((n, *SPEC.shape), bool)


def test_qn_threshold_is_a_32nd_note_at_any_resolution():
    assert [qn_min_steps(RollSpec(steps_per_bar=s)) for s in (96, 48, 24, 16, 192)] == [3, 2, 1, 1, 6]


def test_empty_bar_rate_and_undefined_metrics_of_silent_tracks():
    rolls = empty(2)
    rolls[0, PIANO, 3:5, col(C4)] = True  # sample 0, bar 0
    rolls[1, PIANO, 50:60, col(C4)] = True  # sample 1, bar 1
    rolls[1, PIANO, 10, col(E4)] = True  # sample 1, bar 0
    m = music_metrics(rolls, SPEC)
    assert m["n_samples"] == 2
    # Piano: 4 bars, 1 empty (sample 0 bar 1). Bass and Strings never play; Drums neither.
    assert m["tracks"]["Piano"]["EB"] == 0.25
    assert m["tracks"]["Bass"]["EB"] == 1.0
    assert m["tracks"]["Strings"] == {
        "EB": 1.0,
        "density": 0.0,
        "UPC": None,
        "QN": None,
        "mono": None,
        "fragments": None,
        "note_length": None,
        "on_8th": None,
        "lengths": None,
        "pitches_used": None,
        "polyphony": None,
    }
    assert m["tracks"]["Drums"] == {
        "EB": 1.0,
        "density": 0.0,
        "DP": None,
        "pitches_used": None,
        "polyphony": None,
    }
    assert m["TD"] == {"Piano-Bass": None, "Piano-Strings": None, "Bass-Strings": None}


def test_pitch_classes_fold_octaves_not_neighbours():
    rolls = empty(2)
    # Sample 0, bar 0: C4 + E4 -> 2 classes (pypianoroll 1.0.4 counts 1).
    rolls[0, PIANO, 0:12, col(C4)] = True
    rolls[0, PIANO, 0:12, col(E4)] = True
    # Sample 0, bar 1: C4 + C5 -> 1 class (pypianoroll counts 2); C4 twice in the bar is still 1.
    rolls[0, PIANO, 48:50, col(C4)] = True
    rolls[0, PIANO, 60:62, col(C4)] = True
    rolls[0, PIANO, 70:80, col(C5)] = True
    # Sample 1, bar 0: D3 (column 0), D4 (column 12), F#4 -> 2 classes, 3 pitches.
    rolls[1, PIANO, 5:8, 0] = True
    rolls[1, PIANO, 5:8, 12] = True
    rolls[1, PIANO, 5:8, col(FS4)] = True
    piano = music_metrics(rolls, SPEC)["tracks"]["Piano"]
    assert piano["UPC"] == pytest.approx((2 + 1 + 2) / 3)  # over the three non-empty bars
    assert piano["pitches_used"] == pytest.approx((2 + 2 + 3) / 3)
    assert piano["EB"] == 0.25


def test_qualified_notes_threshold_and_bar_crossing():
    rolls = empty()
    rolls[0, BASS, 0, col(C4)] = True  # 1 step: too short
    rolls[0, BASS, 4:6, col(C4)] = True  # 2 steps: exactly the threshold, qualified
    rolls[0, BASS, 46:50, col(E4)] = True  # crosses the bar line: ONE note of 4 steps, qualified
    rolls[0, BASS, 95, col(G4)] = True  # 1 step at the very end
    rolls[0, BASS, 20, col(G4)] = True  # 1 step
    rolls[0, BASS, 21, col(C5)] = True  # 1 step at another pitch, right after: separate notes
    m = music_metrics(rolls, SPEC)["tracks"]["Bass"]
    assert m["QN"] == pytest.approx(2 / 6)
    assert m["EB"] == 0.0
    # Bars: bar 0 has C4, E4, G4, C5 (4 pitches, 3 classes); bar 1 has E4, G4.
    assert m["UPC"] == pytest.approx((3 + 2) / 2)
    assert m["pitches_used"] == pytest.approx((4 + 2) / 2)


def test_drum_pattern_counts_onsets_on_the_16th_grid():
    rolls = empty()
    # On the grid means every 3 steps; no two hits touch (touching steps would make one note).
    hits = {0: True, 2: False, 6: True, 13: False, 45: True, 49: False, 51: True}
    for step in hits:
        rolls[0, DRUMS, step, col(C4)] = True
    rolls[0, DRUMS, 24:27, col(FS3)] = True  # one held note: one onset (on the grid), not three
    rolls[0, DRUMS, 48, col(FS3)] = True  # two pitches at one step: two notes
    drums = music_metrics(rolls, SPEC)["tracks"]["Drums"]
    n_on = sum(hits.values()) + 2
    assert drums["DP"] == pytest.approx(n_on / (len(hits) + 2))
    assert set(drums) == {"EB", "density", "DP", "pitches_used", "polyphony"}


def test_polyphony_over_sounding_steps_only():
    rolls = empty()
    rolls[0, PIANO, 0:2, col(C4)] = True
    rolls[0, PIANO, 0:2, col(E4)] = True
    rolls[0, PIANO, 0:2, col(G4)] = True  # steps 0-1: 3 notes
    rolls[0, PIANO, 2:6, col(C4)] = True  # steps 2-5: 1 note
    rolls[0, BASS, 0:4, col(C4)] = True  # 4 steps of 1 note
    m = music_metrics(rolls, SPEC)
    assert m["tracks"]["Piano"]["polyphony"] == pytest.approx((3 * 2 + 1 * 4) / 6)
    assert m["tracks"]["Bass"]["polyphony"] == 1.0
    # Pooled over (track, step) pairs that sound: 6 piano steps and 4 bass steps, 14 notes.
    assert m["polyphonic_rate"] == pytest.approx(14 / 10)


def _centroid(pitch_class: int) -> np.ndarray:
    k = pitch_class
    return np.array(
        [
            math.sin(k * 7 * math.pi / 6),
            math.cos(k * 7 * math.pi / 6),
            math.sin(k * 3 * math.pi / 2),
            math.cos(k * 3 * math.pi / 2),
            0.5 * math.sin(k * 2 * math.pi / 3),
            0.5 * math.cos(k * 2 * math.pi / 3),
        ]
    )


def test_tonal_matrix_is_harte_centroid():
    assert np.allclose(tonal_matrix()[:, 0], [0, 1, 0, 1, 0, 0.5])
    assert np.allclose(tonal_matrix()[:, 6], _centroid(6))


def test_tonal_distance_by_hand():
    rolls = empty()
    # Beat 0: piano C4, bass C5: same class, distance 0.
    rolls[0, PIANO, 0:12, col(C4)] = True
    rolls[0, BASS, 0:12, col(C5)] = True
    # Beat 1: piano C4, bass F#4 (the tritone): centroids (0,1,0,1,0,.5) and (0,-1,0,-1,0,.5): 2*sqrt(2).
    rolls[0, PIANO, 12:24, col(C4)] = True
    rolls[0, BASS, 12:24, col(FS4)] = True
    # Beat 2: piano C4 and F#4 equally (centroid (0,0,0,0,0,.5)), bass C4 for 1 step: sqrt(2).
    rolls[0, PIANO, 24:36, col(C4)] = True
    rolls[0, PIANO, 24:36, col(FS4)] = True
    rolls[0, BASS, 30, col(C4)] = True
    # Beat 3: piano 3 steps of C4 and 1 of E4 (weights 3/4, 1/4), bass E4.
    rolls[0, PIANO, 36:39, col(C4)] = True
    rolls[0, PIANO, 40, col(E4)] = True
    rolls[0, BASS, 36:48, col(E4)] = True
    # Beat 4: only piano plays: not counted. Drums never enter TD.
    rolls[0, PIANO, 48:60, col(C4)] = True
    rolls[0, DRUMS, :, col(FS4)] = True
    td = music_metrics(rolls, SPEC)["TD"]
    beat3 = np.linalg.norm(0.75 * _centroid(0) + 0.25 * _centroid(4) - _centroid(4))
    expected = (0.0 + 2 * math.sqrt(2) + math.sqrt(2) + beat3) / 4
    assert td["Piano-Bass"] == pytest.approx(expected)
    assert td["Piano-Strings"] is None and td["Bass-Strings"] is None
    assert set(td) == {"Piano-Bass", "Piano-Strings", "Bass-Strings"}


def _oracle(rolls: np.ndarray, spec: RollSpec) -> dict:
    """The same definitions, written as plain loops over samples, tracks, bars, pitches and steps."""
    k = qn_min_steps(spec)
    spb, beat = spec.steps_per_bar, spec.steps_per_beat
    sixteenth = beat / 4
    tracks = {}
    sample_pcs = [[] for _ in rolls]  # pitch class of each pitched note, per sample
    for c, track in enumerate(spec.tracks):
        bars = empty_bars = pcs = pitches = notes = qualified = grid = poly_notes = poly_steps = mono = 0
        fragments = on_8th = 0
        lengths = [0] * (len(LENGTH_EDGES) - 1)
        for i, roll in enumerate(rolls[:, c]):
            for b in range(spec.n_bars):
                bar = roll[b * spb : (b + 1) * spb]
                used = [p for p in range(spec.n_pitches) if bar[:, p].any()]
                bars += 1
                empty_bars += not used
                pitches += len(used)
                pcs += len({(spec.lowest_pitch + p) % 12 for p in used})
            for p in range(spec.n_pitches):
                t = 0
                while t < len(roll):
                    if roll[t, p]:
                        start = t
                        while t < len(roll) and roll[t, p]:
                            t += 1
                        notes += 1
                        qualified += t - start >= k
                        grid += ((start % spb) * 16) % spb == 0
                        length = t - start
                        fragments += length < sixteenth or (sixteenth <= 1 and length == 1)
                        on_8th += ((start % beat) * 2) % beat == 0
                        lengths[
                            next(j for j in range(len(lengths)) if length / sixteenth < LENGTH_EDGES[j + 1])
                        ] += 1
                        if not track.is_drum:
                            sample_pcs[i].append((spec.lowest_pitch + p) % 12)
                    else:
                        t += 1
            for step in roll:
                poly_notes += int(step.sum())
                poly_steps += bool(step.any())
                mono += int(step.sum()) == 1
        nonempty = bars - empty_bars
        values = {"EB": empty_bars / bars, "density": poly_notes / rolls[:, c].size}
        if track.is_drum:
            values["DP"] = grid / notes if notes else None
        else:
            values["UPC"] = pcs / nonempty if nonempty else None
            values["QN"] = qualified / notes if notes else None
            values["mono"] = mono / poly_steps if poly_steps else None
            values["fragments"] = fragments / notes if notes else None
            values["note_length"] = poly_notes / notes / sixteenth if notes else None
            values["on_8th"] = on_8th / notes if notes else None
            values["lengths"] = [n / notes for n in lengths] if notes else None
        values["pitches_used"] = pitches / nonempty if nonempty else None
        values["polyphony"] = poly_notes / poly_steps if poly_steps else None
        tracks[track.name] = values
    tm = tonal_matrix()
    td = {}
    pitched = [i for i, t in enumerate(spec.tracks) if not t.is_drum]
    for a, b in combinations(pitched, 2):
        dists = []
        for roll in rolls:
            for s in range(0, roll.shape[1], beat):
                chroma = np.zeros((2, 12))
                for row, c in enumerate((a, b)):
                    for p in range(spec.n_pitches):
                        chroma[row, (spec.lowest_pitch + p) % 12] += roll[c, s : s + beat, p].sum()
                if chroma[0].sum() and chroma[1].sum():
                    centroids = tm @ (chroma / chroma.sum(axis=1, keepdims=True)).T
                    dists.append(np.linalg.norm(centroids[:, 0] - centroids[:, 1]))
        td[f"{spec.tracks[a].name}-{spec.tracks[b].name}"] = float(np.mean(dists)) if dists else None
    scales = [{(root + i) % 12 for i in steps} for steps in (MAJOR, NATURAL_MINOR) for root in range(12)]
    in_key = [max(sum(pc in scale for pc in pcs) for scale in scales) / len(pcs) for pcs in sample_pcs if pcs]
    return {"tracks": tracks, "TD": td, "in_key": float(np.mean(in_key)) if in_key else None}


@pytest.mark.parametrize("steps_per_bar", [48, 96, 24])
def test_vectorized_metrics_match_a_loop_oracle(steps_per_bar):
    spec = RollSpec(SPEC.tracks, n_bars=2, steps_per_bar=steps_per_bar, n_pitches=26, lowest_pitch=41)
    rng = np.random.default_rng(steps_per_bar)
    # Sparse notes of random lengths, and one silent track in some samples.
    rolls = np.zeros((6, *spec.shape), bool)
    for n, c, t, p in zip(*(rng.integers(0, s, 120) for s in rolls.shape), strict=True):
        rolls[n, c, t : t + rng.integers(1, 5), p] = True
    for n, c, t, p in zip(*(rng.integers(0, s, 20) for s in rolls.shape), strict=True):
        rolls[n, c, t : t + rng.integers(5, 40), p] = True  # longer notes: every length bin up to a bar
    rolls[:3, STRINGS] = False
    got = music_metrics(rolls, spec)
    want = _oracle(rolls, spec)
    for name, values in want["tracks"].items():
        values, lengths = dict(values), values.get("lengths")
        got_values = dict(got["tracks"][name])
        assert (got_values.pop("lengths", None) is None) == (values.pop("lengths", None) is None), name
        assert got_values == pytest.approx(values), name
        if lengths is not None:
            assert got["tracks"][name]["lengths"] == pytest.approx(lengths), name
    assert got["TD"] == pytest.approx(want["TD"])
    assert got["in_key"] == pytest.approx(want["in_key"])


def test_chunks_add_up_and_bad_input_is_refused():
    spec = RollSpec(LPD17_TRACKS, n_bars=1, steps_per_bar=16, n_pitches=12, lowest_pitch=60)
    rolls = np.random.default_rng(0).random((300, *spec.shape)) > 0.9  # three chunks of 128
    whole = music_metrics(rolls, spec)
    assert whole["n_samples"] == 300 and len(whole["TD"]) == 16 * 15 // 2
    parts = [music_metrics(rolls[i : i + 100], spec) for i in (0, 100, 200)]
    piano_eb = np.mean([p["tracks"]["Piano"]["EB"] for p in parts])  # equal-sized parts: mean of means
    assert whole["tracks"]["Piano"]["EB"] == pytest.approx(piano_eb)
    with pytest.raises(B2BError, match="bool rolls, got dtype float64"):
        music_metrics(rolls.astype(float), spec)
    with pytest.raises(ShapeError, match=r"expected rolls of shape \(N, \*\(17, 16, 12\)\)"):
        music_metrics(rolls[0], spec)


REAL = {
    "n_samples": 10,
    "tracks": {
        "Drums": {"EB": 0.1, "DP": 0.8, "pitches_used": 2.0, "polyphony": 1.0},
        "Piano": {"EB": 0.5, "UPC": 2.0, "QN": 0.9, "pitches_used": 4.0, "polyphony": 2.0},
    },
    "polyphonic_rate": 1.5,
    "TD": {"Piano-Bass": 1.0, "Piano-Strings": None},
}


def test_distance_to_real_by_hand():
    assert distance_to_real(REAL, REAL) == 0.0
    gen = {
        "n_samples": 3,
        "tracks": {
            "Drums": {"EB": 0.3, "DP": 0.8, "pitches_used": 3.0, "polyphony": 1.0},  # .2, 0, .5, 0
            "Piano": {
                "EB": 0.5,
                "UPC": 10.0,
                "QN": None,
                "pitches_used": 4.0,
                "polyphony": 1.0,
            },  # 0, 1, 1, 0, .5
        },
        "polyphonic_rate": 1.2,  # 0.3 / 1.5 = .2
        "TD": {"Piano-Bass": 0.0, "Piano-Strings": None},  # 1 (relative gap 100%); both None: left out
    }
    gaps = metric_gaps(gen, REAL)
    assert gaps["UPC/Piano"] == 1.0  # |10 - 2| / 2 = 4, capped
    assert gaps["QN/Piano"] == 1.0  # undefined on one side only
    assert "TD/Piano-Strings" not in gaps and len(gaps) == 11
    expected = (0.2 + 0 + 0.5 + 0 + 0 + 1 + 1 + 0 + 0.5 + 0.2 + 1) / 11
    assert distance_to_real(gen, REAL) == pytest.approx(expected)


def test_self_similarity_per_beat():
    spec = RollSpec(
        (Track("A"), Track("B")), n_bars=1, steps_per_bar=8, beats_per_bar=4, n_pitches=4, lowest_pitch=60
    )
    roll = np.zeros(spec.shape, bool)
    roll[0, 0:2, 0] = True  # beat 0: A pitch 0
    roll[0, 4:6, 0] = True  # beat 2: the same
    roll[0, 6:8, 0] = True  # beat 3: A pitch 0 and B pitch 1 for 2 steps each: cosine 1/sqrt(2) with beat 0
    roll[1, 6:8, 1] = True
    # beat 1: silent
    ssm = self_similarity(roll, spec)
    s = 1 / math.sqrt(2)
    assert ssm == pytest.approx(np.array([[1, 0, 1, s], [0, 1, 0, 0], [1, 0, 1, s], [s, 0, s, 1]]), abs=1e-6)
    batch = self_similarity(np.stack([roll, np.zeros_like(roll)]), spec)
    assert batch.shape == (2, 4, 4) and np.array_equal(batch[1], np.ones((4, 4)))
    with pytest.raises(ShapeError, match="self_similarity"):
        self_similarity(roll[:, :7], spec)
