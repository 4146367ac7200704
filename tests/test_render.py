"""Rolls to pictures, MIDI and audio: note runs, programs, drum channel, colours, synth output."""

from __future__ import annotations

import wave

import mido
import numpy as np
import pretty_midi
import pytest
from matplotlib.image import imread

from b2b.errors import B2BError, ShapeError
from b2b.eval.render import (
    fluidsynth_available,
    note_name,
    note_runs,
    roll_to_midi,
    save_midi,
    save_roll_grid,
    save_wav,
    synthesize,
    track_colours,
)
from b2b.spec import RollSpec, Track

SPEC = RollSpec(
    tracks=(Track("Drums", 0, True), Track("Piano", 0), Track("Bass", 33), Track("Strings", 48)),
    n_bars=2,
    steps_per_bar=16,
    beats_per_bar=4,
    n_pitches=24,
    lowest_pitch=48,
)


def test_note_names():
    assert [note_name(p) for p in (60, 61, 21, 127)] == ["C4", "C#4", "A0", "G9"]


def test_note_runs_split_at_off_steps_and_close_at_the_end():
    track = np.zeros((8, 3), bool)
    track[0:3, 1] = True  # one note of 3 steps from step 0
    track[4, 1] = True  # a second note at the same pitch after a gap
    track[6:8, 0] = True  # a note running to the last step
    pitch, start, end = note_runs(track)
    assert pitch.tolist() == [0, 1, 1]
    assert start.tolist() == [6, 0, 4]
    assert end.tolist() == [8, 3, 5]


def test_roll_to_midi_instruments_times_and_drum_channel(tmp_path):
    roll = np.zeros(SPEC.shape, bool)
    roll[0, 0, 12] = True  # drum hit at pitch 60 on step 0
    roll[0, 4:6, 12] = True  # a drum note of 2 steps
    roll[1, 2:10, 16] = True  # piano E4 (64), steps 2..9 (crosses no bar line; 8 steps)
    roll[2, 14:18, 0] = True  # bass C3 (48) across the bar line at step 16: ONE note
    # Strings stay empty: no instrument for it.
    tempo = 120.0  # 0.5 s per beat, 4 steps per beat: 0.125 s per step
    midi = roll_to_midi(roll, SPEC, tempo)
    assert [(i.name, i.program, i.is_drum) for i in midi.instruments] == [
        ("Drums", 0, True),
        ("Piano", 0, False),
        ("Bass", 33, False),
    ]
    notes = {i.name: [(n.pitch, n.start, n.end, n.velocity) for n in i.notes] for i in midi.instruments}
    assert notes["Drums"] == [(60, 0.0, 0.125, 100), (60, 0.5, 0.75, 100)]
    assert notes["Piano"] == [(64, 0.25, 1.25, 100)]
    assert notes["Bass"] == [(48, 1.75, 2.25, 100)]

    path = save_midi(roll, SPEC, tmp_path / "a" / "x.mid", tempo)
    assert path.is_file() and not list(path.parent.glob(".*tmp*"))
    back = pretty_midi.PrettyMIDI(str(path))
    assert [(i.program, i.is_drum, len(i.notes)) for i in back.instruments] == [
        (0, True, 2),
        (0, False, 1),
        (33, False, 1),
    ]
    assert back.get_tempo_changes()[1].tolist() == pytest.approx([120.0])
    # Drums on MIDI channel 10 (index 9), the others elsewhere: what a DAW needs to pick a drum kit.
    channels = {
        msg.channel for track in mido.MidiFile(str(path)).tracks for msg in track if msg.type == "note_on"
    }
    assert 9 in channels and len(channels) == 3


def test_roll_to_midi_rejects_float_and_wrong_shapes():
    with pytest.raises(B2BError, match="bool roll"):
        roll_to_midi(np.zeros(SPEC.shape, np.float32), SPEC)
    with pytest.raises(ShapeError, match=r"expected a roll of shape \(4, 32, 24\)"):
        roll_to_midi(np.zeros((4, 32, 25), bool), SPEC)


def test_roll_grid_draws_each_track_in_its_colour(tmp_path):
    rolls = np.zeros((5, *SPEC.shape), np.float32)
    rolls[0, 1, :, 5] = 1.0  # a long piano note: a line of the piano colour
    rolls[3, 2, :, 20] = 1.0  # a bass line in another panel
    path = save_roll_grid(rolls, SPEC, tmp_path / "grid.png", title="five")
    image = imread(path)[..., :3]
    colours = track_colours(4)
    for track in (1, 2):
        distance = np.abs(image - colours[track]).sum(axis=2)
        assert (distance < 0.02).sum() > 100, f"no pixels in track {track}'s colour"
    # Strings play nothing; its colour only appears as the legend swatch (a few hundred pixels).
    strings = (np.abs(image - colours[3]).sum(axis=2) < 0.02).sum()
    piano = (np.abs(image - colours[1]).sum(axis=2) < 0.02).sum()
    assert strings < piano
    # Five panels: four columns, two rows.
    one = imread(save_roll_grid(rolls[:1], SPEC, tmp_path / "one.png"))
    assert image.shape[1] > 3 * one.shape[1] and image.shape[0] > one.shape[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png", "one.png"]


def test_roll_grid_rejects_wrong_shape(tmp_path):
    with pytest.raises(ShapeError, match="save_roll_grid"):
        save_roll_grid(np.zeros(SPEC.shape, bool), SPEC, tmp_path / "x.png")
    assert not list(tmp_path.iterdir())


def _a4_midi(drums: bool = False) -> pretty_midi.PrettyMIDI:
    midi = pretty_midi.PrettyMIDI()
    piano = pretty_midi.Instrument(0)
    piano.notes.append(pretty_midi.Note(100, 69, 0.0, 1.0))
    midi.instruments.append(piano)
    if drums:
        kit = pretty_midi.Instrument(0, is_drum=True)
        kit.notes.append(pretty_midi.Note(100, 38, 1.2, 1.3))
        midi.instruments.append(kit)
    return midi


def _peak_hz(audio: np.ndarray, sample_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio))
    return float(np.fft.rfftfreq(len(audio), 1 / sample_rate)[spectrum.argmax()])


def test_fallback_synth_plays_pitch_and_drums(monkeypatch):
    monkeypatch.setenv("B2B_SYNTH", "fallback")
    audio, used = synthesize(_a4_midi(drums=True), 8000)
    assert used == "fallback" and audio.dtype == np.float32
    assert np.abs(audio).max() == pytest.approx(0.9, abs=1e-6)
    assert abs(_peak_hz(audio[:8000], 8000) - 440.0) < 2.0  # the first second: A4
    assert np.abs(audio[int(1.25 * 8000) : int(1.3 * 8000)]).max() > 0.05  # the snare hit sounds
    assert len(audio) == int(np.ceil((1.3 + 0.3) * 8000))
    again, _ = synthesize(_a4_midi(drums=True), 8000)
    assert np.array_equal(audio, again)  # deterministic
    silent, _ = synthesize(pretty_midi.PrettyMIDI(), 8000)
    assert silent.size == 0


def test_unknown_synth_is_refused(monkeypatch):
    monkeypatch.setenv("B2B_SYNTH", "sine")
    with pytest.raises(B2BError, match="must be auto, fluidsynth or fallback, got 'sine'"):
        synthesize(_a4_midi(), 8000)


@pytest.mark.skipif(not fluidsynth_available(), reason="pyfluidsynth or libfluidsynth3 not installed")
def test_fluidsynth_is_used_when_available(monkeypatch):
    monkeypatch.delenv("B2B_SYNTH", raising=False)
    audio, used = synthesize(_a4_midi(), 22050)
    assert used == "fluidsynth"
    assert np.abs(audio).max() == pytest.approx(0.9, abs=1e-6)
    # The soundfont's piano has partials at multiples of 440 Hz; its strongest one is one of them.
    peak = _peak_hz(audio[:22050], 22050)
    assert min(abs(peak - 440.0 * k) for k in range(1, 6)) < 5.0


def test_save_wav_writes_16_bit_pcm(tmp_path):
    audio = np.array([0.0, 0.5, -0.5, 1.0, -1.0, 2.0], np.float32)
    path = save_wav(audio, 8000, tmp_path / "x.wav")
    with wave.open(str(path)) as f:
        assert (f.getnchannels(), f.getsampwidth(), f.getframerate(), f.getnframes()) == (1, 2, 8000, 6)
        pcm = np.frombuffer(f.readframes(6), "<i2")
    assert pcm.tolist() == [0, 16384, -16384, 32767, -32767, 32767]  # 0.5*32767 rounds to 16384
