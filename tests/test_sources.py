"""Reading LPD .npz files, MIDI files and MusicXML chorales into songs, and putting songs on a grid."""

from __future__ import annotations

import io
import json
import zipfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import pretty_midi
import pypianoroll
import pytest
from lpd_fixtures import (
    BAR,
    msd_id,
    notes_to_midi,
    notes_to_multitrack,
    rasterize,
    save_lpd_npz,
    song_notes,
    write_lpd_tree,
)

from b2b.data.readers import _bar_starts, read_chorale, read_lpd_npz, read_midi
from b2b.data.sources import (
    LAYOUTS,
    Song,
    SongExcluded,
    SourceError,
    SourceTrack,
    channel_map,
    chorale_files,
    find_song_files,
    lpd_channel,
    read_ids,
    resample_steps,
    song_roll,
)
from b2b.errors import DataError
from b2b.spec import LPD5_TRACKS, LPD17_TRACKS, RollSpec

# A grid at LPD's own resolution (24 steps per beat): song_roll then only maps tracks and crops pitch.
NATIVE = RollSpec(LPD17_TRACKS, n_bars=4, steps_per_bar=96, n_pitches=84, lowest_pitch=24)


def expected_roll(notes, n_steps: int, tracks: str = "lpd17") -> np.ndarray:
    return rasterize(
        notes, n_steps, tracks=tracks, lowest_pitch=NATIVE.lowest_pitch, n_pitches=NATIVE.n_pitches
    )


def test_lpd_files_read_like_pypianoroll_with_new_and_old_resolution_key(tmp_path):
    paths = write_lpd_tree(tmp_path, 3, n_bars=(3, 6), old_key_every=2, uint8_every=3)
    keys, dtypes = [], []
    for path in paths:
        with zipfile.ZipFile(path) as zf:
            keys.append(sorted(k for k in json.loads(zf.read("info.json")) if "resolution" in k))
        song = read_lpd_npz(path.read_bytes())
        reference = pypianoroll.load(path)
        dtypes.append(reference.tracks[1].pianoroll.dtype)
        assert song.resolution == 24 and len(song.tracks) == 17
        lengths = [t.pianoroll.shape[0] for t in reference.tracks]
        assert 0 in lengths and len(set(lengths)) > 2  # empty tracks and tracks of different lengths
        assert song.length == reference.downbeat.size
        np.testing.assert_array_equal(song.bar_starts, np.arange(0, song.length, BAR))
        for mine, theirs in zip(song.tracks, reference.tracks, strict=True):
            t, p = np.nonzero(theirs.pianoroll > 0)
            mine_cells = zip(mine.times.tolist(), mine.pitches.tolist(), strict=True)
            assert sorted(mine_cells) == sorted(zip(t.tolist(), p.tolist(), strict=True))
            assert (mine.program, mine.is_drum, mine.name) == (theirs.program, theirs.is_drum, theirs.name)
    assert keys.count(["beat_resolution"]) == 2 and keys.count(["resolution"]) == 1
    assert sorted(map(str, dtypes)) == ["bool", "bool", "uint8"]  # one file holds velocities


def test_song_roll_at_native_resolution_is_the_notes(tmp_path):
    notes = song_notes(7, 5, melody=True)
    n_steps = 5 * BAR
    path = save_lpd_npz(tmp_path / "a.npz", notes_to_multitrack(notes, n_steps, binary=False))
    roll, bars = song_roll(read_lpd_npz(path.read_bytes()), NATIVE, "lpd17")
    np.testing.assert_array_equal(roll, expected_roll(notes, n_steps))
    np.testing.assert_array_equal(bars, np.arange(0, n_steps, BAR))


def test_resample_steps_hand_computed():
    # 3 -> 2 steps per beat: source step i covers [i/3, (i+1)/3) of a beat, target j covers [j/2, (j+1)/2).
    times, index = resample_steps(np.array([0, 1, 2]), 3, 2)
    assert times.tolist() == [0, 0, 1, 1] and index.tolist() == [0, 1, 1, 2]
    assert resample_steps(np.array([5, 6, 7]), 24, 12)[0].tolist() == [2, 3, 3]
    assert resample_steps(np.array([3]), 1, 2)[0].tolist() == [6, 7]  # upsampling fills both halves
    # 24 -> 16 per beat (ratio 1.5): step 5 = [0.208, 0.25) beat -> target 3 = [0.1875, 0.25);
    # step 6 = [0.25, 0.292) -> target 4 = [0.25, 0.3125).
    assert resample_steps(np.array([5, 6]), 24, 16)[0].tolist() == [3, 4]


def test_song_roll_resamples_without_losing_short_notes():
    # Piano C4 over source steps 5..6 and a one-step drum hit at step 7, at 24 steps per beat.
    song = Song(
        24,
        96,
        [
            SourceTrack(0, False, "p", np.array([5, 6]), np.array([60, 60])),
            SourceTrack(0, True, "d", np.array([7]), np.array([36])),
        ],
    )
    spec = RollSpec(LPD17_TRACKS, n_bars=1, steps_per_bar=48, n_pitches=84, lowest_pitch=24)  # 12 per beat
    roll, bars = song_roll(song, spec, "lpd17")
    assert roll.shape == (17, 48, 84) and bars.tolist() == [0]
    assert np.flatnonzero(roll[1, :, 60 - 24]).tolist() == [2, 3]
    assert np.flatnonzero(roll[0, :, 36 - 24]).tolist() == [3]  # the drum hit is one target step
    assert roll.sum() == 3
    spec16 = RollSpec(LPD17_TRACKS, n_bars=1, steps_per_bar=64, n_pitches=84, lowest_pitch=24)  # 16 per beat
    roll16, _ = song_roll(song, spec16, "lpd17")
    assert np.flatnonzero(roll16[1, :, 36]).tolist() == [3, 4]
    # step 7 = [7/24, 8/24) of a beat overlaps sixteenths 4 = [4/16, 5/16) and 5 = [5/16, 6/16)
    assert np.flatnonzero(roll16[0, :, 12]).tolist() == [4, 5]


def test_lpd_channel_follows_lpd_merger_5_and_merger_17():
    expected5 = {**dict.fromkeys(range(0, 8), 1), **dict.fromkeys(range(8, 24), 4)}
    expected5 |= dict.fromkeys(range(24, 32), 2) | dict.fromkeys(range(32, 40), 3)
    expected5 |= dict.fromkeys(range(40, 96), 4) | dict.fromkeys(range(96, 104), None)
    expected5 |= dict.fromkeys(range(104, 112), 4) | dict.fromkeys(range(112, 128), None)
    assert {p: lpd_channel(p, False, "lpd5") for p in range(128)} == expected5
    assert [lpd_channel(p, False, "lpd17") for p in (0, 7, 8, 33, 65, 127)] == [1, 1, 2, 5, 9, 16]
    assert lpd_channel(57, True, "lpd5") == 0 and lpd_channel(57, True, "lpd17") == 0


def test_lpd17_file_merges_down_to_lpd5_like_an_lpd5_file(tmp_path):
    notes = song_notes(3, 4, melody=True)  # the melody is a reed (LPD-17 "Reed"), LPD-5 "Strings"
    n_steps = 4 * BAR
    lpd17 = read_lpd_npz(save_lpd_npz(tmp_path / "17.npz", notes_to_multitrack(notes, n_steps)).read_bytes())
    lpd5 = read_lpd_npz(
        save_lpd_npz(tmp_path / "5.npz", notes_to_multitrack(notes, n_steps, tracks="lpd5")).read_bytes()
    )
    spec5 = RollSpec(LPD5_TRACKS, n_bars=4, steps_per_bar=96, n_pitches=84, lowest_pitch=24)
    merged, _ = song_roll(lpd17, spec5, "lpd5")
    np.testing.assert_array_equal(merged, song_roll(lpd5, spec5, "lpd5")[0])
    full, _ = song_roll(lpd17, NATIVE, "lpd17")
    groups = [[0], [1], [4], [5], [2, 3, 6, 7, 8, 9, 10, 11, 12, 14]]  # LPD-17 channels per LPD-5 track
    np.testing.assert_array_equal(merged, np.stack([full[g].any(axis=0) for g in groups]))
    assert merged[4].any() and full[9].any()
    with pytest.raises(SourceError, match="LPD-5 file.*--tracks lpd5"):
        channel_map(lpd5, "lpd17")


def test_optional_tempo_and_downbeat_and_empty_tracks(tmp_path):
    roll = np.zeros((300, 128), bool)
    roll[250:260, 60] = True
    tracks = [
        pypianoroll.BinaryTrack(name="Drums", program=0, is_drum=True, pianoroll=np.zeros((0, 128), bool)),
        pypianoroll.BinaryTrack(name="Piano", program=0, pianoroll=roll),
        pypianoroll.BinaryTrack(name="Guitar", program=24, pianoroll=roll[:100]),
    ]
    path = save_lpd_npz(
        tmp_path / "x.npz", pypianoroll.Multitrack(resolution=24, tracks=tracks), old_key=True
    )
    song = read_lpd_npz(path.read_bytes())
    assert song.length == 300 and song.bar_starts is None
    grid, bars = song_roll(song, NATIVE, "lpd17")
    assert grid.shape == (17, 300, 84) and bars.tolist() == [0, 96, 192, 288]
    assert np.flatnonzero(grid[1, :, 36]).tolist() == list(range(250, 260)) and not grid[4].any()


def test_midi_reads_with_symbolic_timing_like_the_notes(tmp_path):
    notes = song_notes(5, 4, melody=True)
    n_steps = 4 * BAR
    rolls = []
    for tempo in (73.0, 150.0):
        song = read_midi(notes_to_midi(notes, tmp_path / f"{tempo}.mid", tempo=tempo).read_bytes())
        assert song.resolution == 24 and song.bar_starts.tolist() == list(range(0, song.length, BAR))
        rolls.append(song_roll(song, NATIVE, "lpd17")[0][:, :n_steps])
    np.testing.assert_array_equal(rolls[0], expected_roll(notes, n_steps))
    np.testing.assert_array_equal(rolls[0], rolls[1])


def test_midi_programs_map_to_families_and_time_signatures_give_bars(tmp_path):
    midi = pretty_midi.PrettyMIDI(initial_tempo=120)
    midi.time_signature_changes.append(pretty_midi.TimeSignature(3, 4, 0.0))
    for program, pitch in ((29, 50), (30, 52), (81, 70), (100, 71), (118, 40)):
        inst = pretty_midi.Instrument(program=program)
        inst.notes.append(pretty_midi.Note(90, pitch, 0.5, 1.0))  # beat 1 to 2 at 120 bpm
        midi.instruments.append(inst)
    drums = pretty_midi.Instrument(program=5, is_drum=True)
    drums.notes.append(pretty_midi.Note(90, 38, 3.0, 3.4))
    midi.instruments.append(drums)
    path = tmp_path / "waltz.mid"
    midi.write(str(path))
    song = read_midi(path.read_bytes())
    assert song.bar_starts.tolist() == [0, 72, 144]  # 3/4: bars of 72 steps; the drum hit is in bar 3
    spec = RollSpec(LPD5_TRACKS, n_bars=1, steps_per_bar=96, n_pitches=128, lowest_pitch=0)
    roll, _ = song_roll(song, spec, "lpd5")
    on = {(c, p): np.flatnonzero(roll[c, :, p]).tolist() for c, t, p in zip(*np.nonzero(roll), strict=True)}
    # guitars 29 and 30 -> Guitar; synth lead 81 -> Strings; synth effects 100 and sound effects 118 dropped
    assert on == {
        (2, 50): list(range(24, 48)),
        (2, 52): list(range(24, 48)),
        (4, 70): list(range(24, 48)),
        (0, 38): [144],
    }


def test_unreadable_files_raise_source_error_naming_the_problem(tmp_path):
    good = save_lpd_npz(tmp_path / "g.npz", notes_to_multitrack(song_notes(1, 2), 2 * BAR)).read_bytes()
    with pytest.raises(SourceError, match="not a readable .npz"):
        read_lpd_npz(good[: len(good) // 2])  # truncated: the zip directory is gone
    with pytest.raises(SourceError, match="not a readable .npz"):
        read_lpd_npz(b"this is a text file\n" * 10)
    damaged = bytearray(good)
    damaged[200:260] = b"\x00" * 60  # inside the first compressed member
    with pytest.raises(SourceError):
        read_lpd_npz(bytes(damaged))
    buf = io.BytesIO()
    np.savez(buf, tempo=np.ones(3))
    with pytest.raises(SourceError, match="no info.json"):
        read_lpd_npz(buf.getvalue())
    with pytest.raises(SourceError, match="contains no notes"):
        read_lpd_npz(save_lpd_npz(tmp_path / "e.npz", notes_to_multitrack([], 96)).read_bytes())
    midi = notes_to_midi(song_notes(1, 2), tmp_path / "m.mid").read_bytes()
    with pytest.raises(SourceError, match="not a readable MIDI file"):
        read_midi(b"RIFF....WAVEfmt " + bytes(100))
    with pytest.raises(SourceError, match="not a readable MIDI file"):
        read_midi(midi[: len(midi) // 2])


def test_read_ids_accepts_lpd_and_tagtraum_formats(tmp_path):
    a, b, c = msd_id(1), msd_id(2), msd_id(3)
    (tmp_path / "id_list_rock.txt").write_text(f"{a}\n{b}\n")
    (tmp_path / "cleansed_ids.txt").write_text(f"0a1b2c3d4e5f60718293a4b5c6d7e8f9    {c}\n")
    (tmp_path / "tagtraum.cls").write_text(f"# MSD tagtraum genre list\n{a}\tRock\n{c}\tRock\tPop\n")
    assert read_ids(tmp_path / "id_list_rock.txt") == {a, b}
    assert read_ids(tmp_path / "cleansed_ids.txt") == {c}
    assert read_ids(tmp_path / "tagtraum.cls") == {a, c}
    (tmp_path / "none.txt").write_text("rock\npop\n")
    with pytest.raises(DataError, match="lists no MSD track ids"):
        read_ids(tmp_path / "none.txt")
    with pytest.raises(DataError, match="does not exist"):
        read_ids(tmp_path / "missing.txt")


def test_find_song_files_sorted_filtered_limited_and_clear_when_empty(tmp_path):
    paths = write_lpd_tree(tmp_path / "lpd", 4, n_bars=2)
    files = find_song_files("lpd", tmp_path / "lpd")
    assert [f.path for f in files] == paths and all(f.group == f.path.parent.name for f in files)
    keep = {files[1].group, files[3].group}
    assert [f.group for f in find_song_files("lpd", tmp_path / "lpd", ids=keep)] == [
        files[1].group,
        files[3].group,
    ]
    assert len(find_song_files("lpd", tmp_path / "lpd", limit=2)) == 2
    with pytest.raises(DataError, match="none of the 1 listed MSD ids"):
        find_song_files("lpd", tmp_path / "lpd", ids={msd_id(99, 5)})
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no \.npz files under"):
        find_song_files("lpd", tmp_path / "empty")
    with pytest.raises(DataError, match=r"no \.mid/\.midi files"):
        find_song_files("midi", tmp_path / "lpd")
    with pytest.raises(DataError, match="does not exist"):
        find_song_files("lpd", tmp_path / "nowhere")


def test_bar_starts_skip_pickups_and_join_split_measures():
    q = [Fraction(x) for x in (0, 1, 1, 4, 5, 3, 8, 1, 9, 4, 13, 3)]
    measures = list(zip(q[::2], q[1::2], strict=True))  # pickup, full, 3 + 1 around a repeat, full, short end
    assert _bar_starts(measures, Fraction(4)) == [1, 5, 9]


def test_chorale_from_musicxml_with_pickup_and_tie(tmp_path):
    from music21 import meter, note, stream, tie

    score = stream.Score()
    for name, pitch in (("Soprano", 72), ("Alto", 67), ("Tenor", 64), ("Bass", 48)):
        part = stream.Part()
        part.partName = name
        pickup = stream.Measure(number=0)
        pickup.timeSignature = meter.TimeSignature("4/4")
        pickup.append(note.Note(pitch, quarterLength=1))
        pickup.paddingLeft = 3
        bars = [stream.Measure(number=i) for i in (1, 2, 3)]
        if name == "Soprano":  # C5 D5 | E5 (half, tied) -> E5 (half) F5 | G5 (whole)
            tied_a, tied_b = note.Note(76, quarterLength=2), note.Note(76, quarterLength=2)
            tied_a.tie, tied_b.tie = tie.Tie("start"), tie.Tie("stop")
            bars[0].append([note.Note(72), note.Note(74), tied_a])
            bars[1].append([tied_b, note.Note(77, quarterLength=2)])
        else:
            bars[0].append(note.Note(pitch, quarterLength=4))
            bars[1].append(note.Note(pitch, quarterLength=4))
        bars[2].append(note.Note(pitch + 7, quarterLength=4))
        part.append([pickup, *bars])
        score.insert(0, part)
    path = Path(score.write("musicxml", fp=tmp_path / "c.musicxml"))
    song = read_chorale(path.read_bytes())
    assert [t.name for t in song.tracks] == ["Soprano", "Alto", "Tenor", "Bass"]
    assert song.bar_starts.tolist() == [24, 120, 216] and song.length == 312
    soprano = sorted(zip(song.tracks[0].times.tolist(), song.tracks[0].pitches.tolist(), strict=True))
    notes = [(0, 24, 72), (24, 48, 72), (48, 72, 74), (72, 168, 76), (168, 216, 77), (216, 312, 79)]
    assert soprano == sorted((t, p) for a, b, p in notes for t in range(a, b))
    spec = RollSpec(LAYOUTS["chorale"], n_bars=1, steps_per_bar=16, n_pitches=48, lowest_pitch=36)
    roll, bars = song_roll(song, spec, "chorale")
    assert bars.tolist() == [4, 20, 36] and np.flatnonzero(roll[0, :, 76 - 36]).tolist() == list(
        range(12, 28)
    )


def test_chorale_reader_agrees_with_music21_on_the_corpus():
    from music21 import converter

    files = {f.rel: f for f in chorale_files()}
    assert len(files) > 300
    for rel in ("bach/bwv10.7.mxl", "bach/bwv103.6.mxl"):
        song = read_chorale(files[rel].path.read_bytes())
        parts = {p.partName: p for p in converter.parse(str(files[rel].path), forceSource=True).parts}
        for track in song.tracks:
            cells = set()
            for n in parts[track.name].stripTies().flatten().notes:
                start = round(float(n.offset) * 24)
                end = max(start + 1, round(float(n.offset + n.quarterLength) * 24))
                cells |= {(t, p.midi) for p in n.pitches for t in range(start, end)}
            assert set(zip(track.times.tolist(), track.pitches.tolist(), strict=True)) == cells
    with pytest.raises(SongExcluded, match="not in 4/4"):
        read_chorale(files["bach/bwv120.8-a.mxl"].path.read_bytes())
