"""Readers of one source file's bytes into a :class:`~b2b.data.sources.Song`: LPD ``.npz``, MIDI (with
pretty_midi) and the demo's MusicXML chorales.
"""

from __future__ import annotations

import io
import json
import re
import xml.etree.ElementTree as ET
import zipfile
import zlib
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from b2b.data.sources import MIDI_RESOLUTION, Song, SongExcluded, SourceError, SourceTrack
from b2b.spec import CHORALE_TRACKS

_NPY_HEADER = re.compile(
    r"'descr':\s*'(?P<descr>[^']+)'.*'fortran_order':\s*(?P<fortran>True|False).*'shape':\s*\((?P<shape>[^)]*)\)",
    re.S,
)


def _npy_array(raw: bytes, name: str) -> np.ndarray:
    """Parse one ``.npy`` member. numpy's reader evaluates each header with ``ast``, which costs about a
    millisecond per array; an LPD-17 file holds 70 arrays, so this regex-based reader is several times
    faster. Only plain (non-object) dtypes are accepted: nothing is unpickled."""
    if raw[:6] != b"\x93NUMPY" or len(raw) < 10:
        raise SourceError(f"{name} is not a .npy array")
    if raw[6] == 1:
        header_len, start = int.from_bytes(raw[8:10], "little"), 10
    else:
        header_len, start = int.from_bytes(raw[8:12], "little"), 12
    match = _NPY_HEADER.search(raw[start : start + header_len].decode("latin1"))
    if match is None:
        raise SourceError(f"{name} has an unreadable .npy header")
    dtype = np.dtype(match["descr"])
    if dtype.hasobject:
        raise SourceError(f"{name} holds Python objects, not numbers")
    shape = tuple(int(x) for x in match["shape"].replace(",", " ").split())
    count = int(np.prod(shape))
    offset = start + header_len
    if len(raw) - offset != count * dtype.itemsize:
        raise SourceError(f"{name} is truncated ({len(raw) - offset} bytes for {count} values of {dtype})")
    array = np.frombuffer(raw, dtype, count, offset)
    return array.reshape(shape, order="F" if match["fortran"] == "True" else "C")


def _read_npz(data: bytes) -> dict[str, np.ndarray | bytes]:
    """Every member of an ``.npz`` archive: ``.npy`` ones as arrays (named without ``.npy``), others raw."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            members = {info.filename: zf.read(info) for info in zf.infolist()}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError) as exc:
        raise SourceError(f"not a readable .npz (zip) file ({type(exc).__name__}: {exc})") from None
    return {
        (name[:-4] if name.endswith(".npy") else name): (
            _npy_array(raw, name) if name.endswith(".npy") else raw
        )
        for name, raw in members.items()
    }


def _lpd_track(arrays: dict, idx: int, meta: dict) -> tuple[SourceTrack, int]:
    prefix = f"pianoroll_{idx}_csc_"
    try:
        values, rows, indptr, shape = (arrays[prefix + k] for k in ("data", "indices", "indptr", "shape"))
    except KeyError as exc:
        raise SourceError(f"track {idx} is listed in info.json but its array {exc} is missing") from None
    shape = tuple(int(s) for s in np.asarray(shape).ravel())
    if len(shape) != 2 or shape[1] != 128 or indptr.shape != (129,) or rows.shape != values.shape:
        raise SourceError(f"track {idx} is not a (time, 128) CSC piano roll (shape {shape})")
    if indptr[0] != 0 or indptr[-1] != rows.size or np.any(np.diff(indptr) < 0):
        raise SourceError(f"track {idx} has an inconsistent CSC index pointer")
    if rows.size and (rows.min() < 0 or rows.max() >= shape[0]):
        raise SourceError(f"track {idx} has time indices outside its length {shape[0]}")
    pitches = np.repeat(np.arange(128, dtype=np.int64), np.diff(indptr).astype(np.int64))
    on = values > 0  # bool and uint8 velocity rolls alike: any positive value is a note
    track = SourceTrack(
        program=int(meta.get("program", 0)),
        is_drum=bool(meta.get("is_drum", False)),
        name=str(meta.get("name", "")),
        times=rows[on].astype(np.int64),
        pitches=pitches[on],
    )
    return track, shape[0]


def read_lpd_npz(data: bytes) -> Song:
    """Parse the bytes of an LPD / pypianoroll ``.npz`` file.

    Per track ``pianoroll_<i>_csc_{data,indices,indptr,shape}`` (scipy CSC, time x 128), ``info.json``
    with ``resolution`` (or the older ``beat_resolution``) and per-track ``{program, is_drum, name}``;
    optional ``downbeat`` (bar starts) and ``tempo`` (unused: timing is symbolic). Tracks may differ in
    length or have length 0; the song is as long as the longest. Raises SourceError.
    """
    try:
        return _parse_lpd(_read_npz(data))
    except SourceError:
        raise
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, OverflowError) as exc:
        raise SourceError(f"corrupt LPD file ({type(exc).__name__}: {exc})") from None


def _parse_lpd(arrays: dict) -> Song:
    if "info.json" not in arrays:
        raise SourceError("no info.json inside: not an LPD/pypianoroll file")
    try:
        info = json.loads(arrays["info.json"])
    except ValueError as exc:
        raise SourceError(f"info.json is not valid JSON ({exc})") from None
    if not isinstance(info, dict):
        raise SourceError("info.json is not a JSON object")
    resolution = info.get("resolution", info.get("beat_resolution"))
    if not isinstance(resolution, int) or resolution < 1:
        raise SourceError(f"info.json has no valid 'resolution' or 'beat_resolution' ({resolution!r})")
    tracks, length, idx = [], 0, 0
    while str(idx) in info:
        track, track_length = _lpd_track(arrays, idx, info[str(idx)])
        tracks.append(track)
        length = max(length, track_length)
        idx += 1
    if not tracks:
        raise SourceError("info.json lists no tracks")
    if not any(t.times.size for t in tracks):
        raise SourceError("contains no notes")
    bar_starts = None
    downbeat = arrays.get("downbeat")
    if isinstance(downbeat, np.ndarray) and downbeat.any():
        downbeat = downbeat.ravel()
        length = max(length, downbeat.size)
        bar_starts = np.flatnonzero(downbeat).astype(np.int64)
    return Song(resolution, length, tracks, bar_starts)


def _quarters(times: np.ndarray, change_times: np.ndarray, change_qpm: np.ndarray) -> np.ndarray:
    """Seconds to quarter notes through a piecewise-constant tempo map (symbolic timing)."""
    change_quarters = np.concatenate([[0.0], np.cumsum(np.diff(change_times) * change_qpm[:-1] / 60.0)])
    idx = np.clip(np.searchsorted(change_times, times, side="right") - 1, 0, None)
    return change_quarters[idx] + (times - change_times[idx]) * change_qpm[idx] / 60.0


def _check_division(data: bytes) -> None:
    """Refuse the two timings of a MIDI header (bytes 12-13, the division) that have no beats: SMPTE
    frames (top bit set), where pretty_midi computes negative note lengths, and 0 ticks per quarter
    note, where it divides by zero."""
    if data[:4] != b"MThd" or len(data) < 14:
        return  # pretty_midi names what is wrong with such a file
    division = int.from_bytes(data[12:14], "big")
    if division & 0x8000:
        raise SourceError(
            "its timing is SMPTE (frames per second), not ticks per quarter note; b2b reads notes on beats: "
            "save the file with a beat-based resolution"
        )
    if division == 0:
        raise SourceError("its header gives 0 ticks per quarter note, so its notes have no time")


def read_midi(data: bytes) -> Song:
    """Parse the bytes of a MIDI file at :data:`MIDI_RESOLUTION` steps per quarter note.

    Timing is symbolic (through the file's tempo map, so tempo changes do not shift the grid). Drums
    keep only their onset step, as LPD stores them; other notes last at least one step. Bars come from
    the time signatures (4/4 from the start where there are none). Raises SourceError.

    Not ``pypianoroll.from_pretty_midi``: in 1.0.4 it sums overlapping velocities into uint8 (four
    overlapping notes of velocity 64 wrap to 0, a lost note) and indexes notes before its estimated
    first beat with negative steps (they wrap to the end of the song).
    """
    import pretty_midi

    _check_division(data)
    try:
        midi = pretty_midi.PrettyMIDI(io.BytesIO(data))
    except Exception as exc:  # mido and pretty_midi raise many types on malformed files
        raise SourceError(f"not a readable MIDI file ({type(exc).__name__}: {exc})") from None
    change_times, change_qpm = midi.get_tempo_changes()
    if change_times.size == 0:
        change_times, change_qpm = np.array([0.0]), np.array([120.0])
    res = MIDI_RESOLUTION
    tracks, length = [], 0
    for inst in midi.instruments:
        notes = [n for n in inst.notes if n.velocity > 0 and n.end >= n.start]
        if not notes:
            continue
        starts = np.round(_quarters(np.array([n.start for n in notes]), change_times, change_qpm) * res)
        ends = np.round(_quarters(np.array([n.end for n in notes]), change_times, change_qpm) * res)
        starts = np.clip(starts.astype(np.int64), 0, None)
        ends = starts + 1 if inst.is_drum else np.maximum(ends.astype(np.int64), starts + 1)
        pitches = np.array([n.pitch for n in notes], dtype=np.int64)
        times, cell_pitches = _expand(starts, ends, pitches)
        tracks.append(SourceTrack(int(inst.program), bool(inst.is_drum), inst.name, times, cell_pitches))
        length = max(length, int(ends.max()))
    if not tracks:
        raise SourceError("contains no notes")
    bar_starts = None
    signatures = sorted(midi.time_signature_changes, key=lambda ts: ts.time)
    if signatures:
        sig_q = _quarters(np.array([ts.time for ts in signatures]), change_times, change_qpm)
        bounds = list(sig_q[1:]) + [length / res]
        starts_q = [np.arange(0.0, sig_q[0], 4.0)]  # 4/4 before the first signature
        for ts, begin, end in zip(signatures, sig_q, bounds, strict=True):
            starts_q.append(np.arange(begin, end, ts.numerator * 4.0 / ts.denominator))
        bar_starts = np.unique(np.round(np.concatenate(starts_q) * res).astype(np.int64))
    return Song(res, length, tracks, bar_starts)


def _expand(starts: np.ndarray, ends: np.ndarray, pitches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Notes ``[start, end)`` to on-cells (time, pitch)."""
    spans = ends - starts
    offsets = np.arange(spans.sum()) - np.repeat(np.cumsum(spans) - spans, spans)
    return np.repeat(starts, spans) + offsets, np.repeat(pitches, spans)


_VOICES = ("soprano", "alto", "tenor", "bass")


_STEPS = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}


@dataclass
class _Part:
    """One part of a MusicXML score, in quarter notes: notes ``[start, end, pitch]`` (ties merged),
    measures ``(offset, duration)`` and the time signatures met."""

    name: str
    notes: list[list]
    measures: list[tuple[Fraction, Fraction]]
    signatures: set[str]


def _musicxml_root(data: bytes) -> ET.Element:
    """The ``<score-partwise>`` element of a MusicXML file, compressed (``.mxl``) or not."""
    if data[:2] == b"PK":
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            names = zf.namelist()
            target = None
            if "META-INF/container.xml" in names:
                rootfile = ET.fromstring(zf.read("META-INF/container.xml")).find(".//rootfile")
                target = rootfile.get("full-path") if rootfile is not None else None
            if target is None:
                target = next(
                    (n for n in names if n.endswith((".xml", ".musicxml")) and "META-INF" not in n), None
                )
            if target is None:
                raise SourceError("a .mxl archive without a MusicXML file")
            data = zf.read(target)
    root = ET.fromstring(data)
    if root.tag != "score-partwise":
        raise SourceError(f"not a part-wise MusicXML score (root element <{root.tag}>)")
    return root


def _read_part(name: str, part: ET.Element) -> _Part:
    """Walk a part's measures keeping a time cursor (``<backup>``/``<forward>``/``<chord/>`` aware);
    a note tied from the previous note of the same pitch extends it instead of starting a new one."""
    divisions, offset = 1, Fraction(0)
    notes: list[list] = []
    measures, signatures = [], set()
    open_ties: dict[int, int] = {}  # pitch -> index in notes of the note tied to the next one
    for measure in part.findall("measure"):
        pos = last_onset = length = Fraction(0)
        for el in measure:
            if el.tag == "attributes":
                divisions = int(el.findtext("divisions") or divisions)
                signatures |= {f"{t.findtext('beats')}/{t.findtext('beat-type')}" for t in el.findall("time")}
            elif el.tag in ("backup", "forward"):
                step = Fraction(int(el.findtext("duration") or 0), divisions)
                pos += step if el.tag == "forward" else -step
                length = max(length, pos)
            elif el.tag == "note" and el.find("grace") is None:
                duration = Fraction(int(el.findtext("duration") or 0), divisions)
                if el.find("chord") is None:
                    last_onset, pos = pos, pos + duration
                length = max(length, last_onset + duration)
                pitch = el.find("pitch")
                if pitch is None or el.find("cue") is not None:
                    continue  # rests, unpitched and cue notes take time but sound nothing here
                # A missing <octave> or <step> raises (TypeError, KeyError): read_musicxml names the file.
                octave, letter = pitch.findtext("octave"), pitch.findtext("step")
                midi = 12 * (int(octave) + 1) + _STEPS[letter]  # type: ignore[arg-type, index]
                midi += round(float(pitch.findtext("alter") or 0))
                start = offset + last_onset
                ties = {t.get("type") for t in el.findall("tie")}
                held = open_ties.get(midi)
                if "stop" in ties and held is not None and notes[held][1] == start:
                    notes[held][1] = start + duration
                else:
                    notes.append([start, start + duration, midi])
                    held = len(notes) - 1
                if "start" in ties:
                    open_ties[midi] = held
                else:
                    open_ties.pop(midi, None)
        measures.append((offset, length))
        offset += length
    return _Part(name, notes, measures, signatures)


def _bar_starts(measures: list[tuple[Fraction, Fraction]], bar: Fraction) -> list[Fraction]:
    """Offsets at which whole bars start. A pickup or a short last measure starts no bar; a bar
    notated as two incomplete measures (e.g. 3 + 1 beats around a repeat sign) starts at the first."""
    starts, i = [], 0
    while i < len(measures):
        offset, total = measures[i]
        j = i
        while total < bar and j + 1 < len(measures) and measures[j + 1][1] != bar:
            j += 1
            total += measures[j][1]
        if total == bar:
            starts.append(offset)
            i = j + 1
        else:
            i += 1
    return starts


def _voice_parts(parts: list[_Part]) -> list[_Part]:
    """The soprano, alto, tenor and bass parts, in that order (instrumental parts are left out)."""
    named = {}
    for part in parts:
        for voice in _VOICES:
            if part.name.strip().lower().startswith(voice) and voice not in named:
                named[voice] = part
    if len(named) == 4:
        return [named[v] for v in _VOICES]
    if len(parts) == 4:  # unnamed four-part score: top to bottom is SATB
        return parts
    raise SongExcluded(f"not four voices ({len(parts)} parts: {', '.join(p.name or '?' for p in parts)})")


def read_chorale(data: bytes) -> Song:
    """A four-voice chorale from a MusicXML file (``.mxl`` or ``.xml``): one track per voice (SATB).

    music21's own parser takes about 0.25 s per chorale (twice that with ``stripTies``), most of the
    demo build; this reader walks the MusicXML directly in milliseconds and gives the same notes
    (tested against music21 on corpus files). Tied notes become one note; bars start at whole
    measures, so a pickup is skipped and windows start on downbeats. Works not in 4/4 or without four
    voices raise :class:`SongExcluded`; unparsable files raise SourceError.
    """
    try:
        root = _musicxml_root(data)
        names = {sp.get("id"): (sp.findtext("part-name") or "") for sp in root.iter("score-part")}
        parts = [_read_part(names.get(p.get("id"), ""), p) for p in root.findall("part")]
    except SourceError:
        raise
    except (ET.ParseError, zipfile.BadZipFile, KeyError, ValueError, TypeError, zlib.error, EOFError) as exc:
        raise SourceError(f"not a readable MusicXML file ({type(exc).__name__}: {exc})") from None
    signatures = set().union(*(p.signatures for p in parts)) if parts else set()
    if signatures != {"4/4"}:
        raise SongExcluded(f"not in 4/4 ({', '.join(sorted(signatures)) or 'no time signature'})")
    res = MIDI_RESOLUTION
    tracks, length = [], 0
    voices = _voice_parts(parts)
    for part in voices:
        cells = np.array([[round(a * res), round(b * res), p] for a, b, p in part.notes if b > a], np.int64)
        cells = cells.reshape(-1, 3)
        ends = np.maximum(cells[:, 1], cells[:, 0] + 1)
        times, pitches = _expand(cells[:, 0], ends, cells[:, 2])
        tracks.append(SourceTrack(CHORALE_TRACKS[0].program, False, part.name, times, pitches))
        length = max(length, int(ends.max(initial=0)))
    if not any(t.times.size for t in tracks):
        raise SourceError("contains no notes")
    bars = _bar_starts(voices[0].measures, Fraction(4))
    return Song(res, length, tracks, np.array([round(b * res) for b in bars], dtype=np.int64))


def read_song(kind: str, data: bytes) -> Song:
    """Dispatch on the source kind (``lpd``, ``midi``, ``demo``); raises SourceError."""
    if kind == "lpd":
        return read_lpd_npz(data)
    if kind == "midi":
        return read_midi(data)
    return read_chorale(data)
