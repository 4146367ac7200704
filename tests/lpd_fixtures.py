"""Small, realistic test inputs in the Lakh Pianoroll Dataset's real on-disk format, and real MIDI files.

Other tests and benchmarks reuse these helpers:

- :func:`song_notes` makes a deterministic pop-style song as a list of :class:`Note` (drums, piano,
  guitar, bass, strings and sometimes a reed melody over a chord progression: sparse, like real music).
- :func:`write_lpd_tree` writes such songs as LPD ``.npz`` files with pypianoroll, laid out like LPD
  (``<A>/<B>/<C>/<MSD id>/<md5>.npz``), mixing the new ``resolution`` and the old ``beat_resolution``
  key, bool and uint8 rolls, empty (length-0) tracks and tracks of different lengths.
- :func:`write_midi_folder` writes the same kind of songs as ``.mid`` files with pretty_midi.
- :func:`rasterize` draws notes into the roll a correct reader must produce (a test oracle).

Steps are counted at ``RESOLUTION`` (24) steps per beat, LPD's resolution; a bar is 4 beats.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pretty_midi
import pypianoroll

from b2b.spec import LPD5_TRACKS, LPD17_TRACKS

RESOLUTION = 24  # LPD's steps per beat
BAR = 4 * RESOLUTION  # steps per 4/4 bar

# Triads (root position, MIDI pitches around C4) of a I-V-vi-IV style progression in C major.
_CHORDS = ((60, 64, 67), (67, 71, 74), (57, 60, 64), (65, 69, 72), (62, 65, 69))
_SCALE = (60, 62, 64, 65, 67, 69, 71, 72)


@dataclass(frozen=True)
class Note:
    """One note; ``start``/``end`` in steps at 24 per beat (end exclusive)."""

    program: int
    is_drum: bool
    pitch: int
    start: int
    end: int
    velocity: int = 80


def msd_id(index: int, seed: int = 0) -> str:
    """A deterministic Million-Song-Dataset-style track id: ``TR`` + 16 characters of [0-9A-F]."""
    return "TR" + hashlib.sha1(f"msd-{seed}-{index}".encode()).hexdigest()[:16].upper()


def song_notes(seed: int, n_bars: int = 16, *, melody: bool | None = None) -> list[Note]:
    """A deterministic, sparse multi-instrument song of ``n_bars`` 4/4 bars.

    Drums are onsets only (one step, as LPD stores them); pitched parts hold their notes.
    Programs are real General MIDI programs (piano 0, guitar 25, bass 33, strings 48, reed 65).
    """
    rng = np.random.default_rng(seed)
    beat = RESOLUTION
    notes: list[Note] = []
    with_melody = bool(rng.integers(2)) if melody is None else melody
    for bar in range(n_bars):
        t0 = bar * BAR
        chord = _CHORDS[int(rng.integers(len(_CHORDS)))]
        for b in range(4):  # drums: kick on 1 and 3, snare on 2 and 4, closed hi-hat on eighths
            notes.append(Note(0, True, 36 if b % 2 == 0 else 38, t0 + b * beat, t0 + b * beat + 1, 100))
            for half in (0, beat // 2):
                notes.append(Note(0, True, 42, t0 + b * beat + half, t0 + b * beat + half + 1, 70))
        for half in (0, 2 * beat):  # piano: the chord held for two beats, twice a bar
            notes += [Note(0, False, p, t0 + half, t0 + half + 2 * beat - 2, 70) for p in chord]
        for b in range(4):  # guitar: the chord an octave down, struck on every beat
            notes += [Note(25, False, p - 12, t0 + b * beat, t0 + b * beat + beat // 2, 60) for p in chord]
        for e in range(8):  # bass: the root two octaves down, in eighths
            notes.append(Note(33, False, chord[0] - 24, t0 + e * beat // 2, t0 + (e + 1) * beat // 2 - 1, 90))
        notes += [Note(48, False, p + 12, t0, t0 + BAR, 50) for p in chord[1:]]  # strings: whole bar
        if with_melody:
            t = t0
            while t < t0 + BAR:
                length = int(rng.choice([beat // 2, beat, 2 * beat]))
                if rng.random() < 0.8:
                    pitch = int(rng.choice(_SCALE)) + 12
                    notes.append(Note(65, False, pitch, t, min(t + length, t0 + BAR), 85))
                t += length
    return notes


def _layout(tracks: str) -> tuple:
    if tracks not in ("lpd17", "lpd5"):
        raise ValueError(f"tracks must be 'lpd17' or 'lpd5', got {tracks!r}")
    return LPD17_TRACKS if tracks == "lpd17" else LPD5_TRACKS


def lpd_track_index(program: int, is_drum: bool, tracks: str = "lpd17") -> int | None:
    """The LPD track a note goes to (LPD's merger_17 / merger_5 rules), None if LPD-5 drops it."""
    if tracks == "lpd17":
        return 0 if is_drum else program // 8 + 1
    family = program // 8
    if is_drum:
        return 0
    if family in (0, 3, 4):
        return {0: 1, 3: 2, 4: 3}[family]
    return 4 if program < 96 or 104 <= program < 112 else None


def rasterize(
    notes: list[Note], n_steps: int, *, tracks: str = "lpd17", lowest_pitch: int = 0, n_pitches: int = 128
) -> np.ndarray:
    """The notes drawn straight into a bool ``(tracks, n_steps, n_pitches)`` roll at 24 steps per beat
    (a test oracle that shares no code with b2b)."""
    roll = np.zeros((len(_layout(tracks)), n_steps, n_pitches), bool)
    for n in notes:
        index = lpd_track_index(n.program, n.is_drum, tracks)
        if index is not None and lowest_pitch <= n.pitch < lowest_pitch + n_pitches:
            roll[index, n.start : n.end, n.pitch - lowest_pitch] = True
    return roll


def notes_to_multitrack(
    notes: list[Note],
    n_steps: int,
    *,
    tracks: str = "lpd17",
    binary: bool = True,
    trim: bool = True,
    name: str = "",
) -> pypianoroll.Multitrack:
    """Rasterize ``notes`` into an LPD-17 or LPD-5 multitrack like LPD's files.

    Empty tracks get length 0 (as LPD's mergers write them); with ``trim`` each non-empty track ends at
    its last note, so tracks have different lengths. ``binary`` gives bool rolls, else uint8 velocities.
    """
    layout = _layout(tracks)
    rolls = [np.zeros((n_steps, 128), np.uint8) for _ in layout]
    for n in notes:
        index = lpd_track_index(n.program, n.is_drum, tracks)
        if index is not None:
            roll = rolls[index][n.start : min(n.end, n_steps), n.pitch]
            np.maximum(roll, n.velocity, out=roll)
    out = []
    for track, roll in zip(layout, rolls, strict=True):
        on = np.flatnonzero(roll.any(axis=1))
        length = 0 if on.size == 0 else (on[-1] + 1 if trim else n_steps)
        roll = roll[:length]
        cls = pypianoroll.BinaryTrack if binary else pypianoroll.StandardTrack
        out.append(
            cls(
                name=track.name,
                program=track.program,
                is_drum=track.is_drum,
                pianoroll=roll > 0 if binary else roll,
            )
        )
    downbeat = np.zeros(n_steps, bool)
    downbeat[::BAR] = True
    tempo = np.full(n_steps, 120.0)
    return pypianoroll.Multitrack(
        name=name, resolution=RESOLUTION, tempo=tempo, downbeat=downbeat, tracks=out
    )


def save_lpd_npz(path: str | Path, multitrack: pypianoroll.Multitrack, *, old_key: bool = False) -> Path:
    """Save with ``pypianoroll.save``; with ``old_key`` rename ``resolution`` to ``beat_resolution``
    in ``info.json``, as files written by pypianoroll < 1.0 (LPD itself) have it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pypianoroll.save(path, multitrack)
    if old_key:
        with zipfile.ZipFile(path) as zf:
            members = [(info, zf.read(info.filename)) for info in zf.infolist()]
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            for info, data in members:
                if info.filename == "info.json":
                    d = json.loads(data)
                    d["beat_resolution"] = d.pop("resolution")
                    data = json.dumps(d).encode()
                zf.writestr(info.filename, data)
    return path


def lpd_path(root: str | Path, song_id: str, md5: str) -> Path:
    """``root/<A>/<B>/<C>/<MSD id>/<md5>.npz`` with A, B, C the 3rd to 5th characters of the id."""
    return Path(root, song_id[2], song_id[3], song_id[4], song_id, md5 + ".npz")


def write_lpd_tree(
    root: str | Path,
    n_songs: int = 6,
    *,
    seed: int = 0,
    n_bars: int | tuple[int, int] = 16,
    tracks: str = "lpd17",
    old_key_every: int = 2,
    uint8_every: int = 3,
) -> list[Path]:
    """Write ``n_songs`` songs as an LPD-style tree of ``.npz`` files; return their paths (sorted).

    Song ``i`` uses :func:`song_notes` with seed ``seed * 1000 + i``; every ``old_key_every``-th file
    (0: none) uses the old ``beat_resolution`` key and every ``uint8_every``-th (0: none) uint8
    velocities instead of bool. ``n_bars`` may be a (low, high) range drawn per song.
    """
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n_songs):
        bars = n_bars if isinstance(n_bars, int) else int(rng.integers(n_bars[0], n_bars[1] + 1))
        sid = msd_id(i, seed)
        md5 = hashlib.md5(f"{sid}-{seed}".encode()).hexdigest()
        binary = not (uint8_every and i % uint8_every == uint8_every - 1)
        notes = song_notes(seed * 1000 + i, bars)
        mt = notes_to_multitrack(notes, bars * BAR, tracks=tracks, binary=binary, name=sid)
        old = bool(old_key_every) and i % old_key_every == 0
        paths.append(save_lpd_npz(lpd_path(root, sid, md5), mt, old_key=old))
    return sorted(paths)


def notes_to_midi(
    notes: list[Note],
    path: str | Path,
    *,
    tempo: float = 120.0,
    time_signature: tuple[int, int] | None = (4, 4),
) -> Path:
    """Write ``notes`` as a MIDI file with pretty_midi: one instrument per (program, is_drum)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    midi = pretty_midi.PrettyMIDI(initial_tempo=tempo)
    if time_signature is not None:
        midi.time_signature_changes.append(pretty_midi.TimeSignature(*time_signature, 0.0))
    seconds_per_step = 60.0 / tempo / RESOLUTION
    instruments: dict[tuple[int, bool], pretty_midi.Instrument] = {}
    for n in notes:
        key = (n.program, n.is_drum)
        if key not in instruments:
            instruments[key] = pretty_midi.Instrument(program=n.program, is_drum=n.is_drum)
        instruments[key].notes.append(
            pretty_midi.Note(n.velocity, n.pitch, n.start * seconds_per_step, n.end * seconds_per_step)
        )
    midi.instruments = [instruments[k] for k in sorted(instruments)]
    midi.write(str(path))
    return path


def write_midi_folder(
    root: str | Path, n_songs: int = 4, *, seed: int = 0, n_bars: int = 16, tempo: float = 120.0
) -> list[Path]:
    """Write ``n_songs`` songs of :func:`song_notes` as ``root/song_<i>.mid``; return the paths."""
    return [
        notes_to_midi(song_notes(seed * 1000 + i, n_bars), Path(root, f"song_{i:03d}.mid"), tempo=tempo)
        for i in range(n_songs)
    ]
