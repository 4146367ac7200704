"""Music sources read into songs, and songs put onto a :class:`~b2b.spec.RollSpec`'s grid.

Three sources give :class:`Song` objects: the Lakh Pianoroll Dataset's ``.npz`` files (read directly
with numpy, no pypianoroll round trip), any MIDI file (via pretty_midi), and the demo corpus (the Bach
chorales bundled with music21, one track per voice). A song holds the on-cells of each source track at
the source's resolution and, where known, where its bars start. :func:`song_roll` maps its tracks to
the layout's channels, crops the pitch range and resamples time; the shard builder cuts the result
into windows.

Time resampling rule ("any overlap"): a target step is on when any source step it overlaps in time
is on. So no note is lost, a note shorter than a target step becomes one step, and non-integer
ratios (e.g. 24 -> 16 steps per beat) are handled exactly: source step ``i`` covers target steps
``floor(i * dst / src)`` to ``ceil((i + 1) * dst / src) - 1``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np

from b2b.errors import DataError
from b2b.spec import CHORALE_TRACKS, LPD5_TRACKS, LPD17_TRACKS, RollSpec, Track

MIDI_RESOLUTION = 24  # steps per beat at which MIDI and the chorales are read: LPD's resolution


MSD_ID = re.compile(r"\bTR[A-Z0-9]{16}\b")  # a Million Song Dataset track id


SUFFIXES = {"lpd": (".npz",), "midi": (".mid", ".midi")}


# Track layouts a build can produce; "chorale" is the demo's four voices, mapped by position.
LAYOUTS: dict[str, tuple[Track, ...]] = {
    "lpd17": LPD17_TRACKS,
    "lpd5": LPD5_TRACKS,
    "chorale": CHORALE_TRACKS,
}


class SourceError(Exception):
    """A source file cannot be used as music; the message says why (the caller names the file)."""


class SongExcluded(SourceError):
    """A readable work that the source deliberately leaves out (e.g. a chorale without four voices)."""


@dataclass
class SourceTrack:
    """The on-cells of one track: parallel arrays of time step and MIDI pitch."""

    program: int
    is_drum: bool
    name: str
    times: np.ndarray
    pitches: np.ndarray


@dataclass
class Song:
    """A multi-track piano roll at ``resolution`` steps per beat, ``length`` steps long.

    ``bar_starts`` lists the steps at which bars start (from LPD's ``downbeat``, MIDI time signatures or
    the score's measures); None means 4/4 from step 0.
    """

    resolution: int
    length: int
    tracks: list[SourceTrack]
    bar_starts: np.ndarray | None = None


@dataclass(frozen=True)
class SongFile:
    """One source file: ``rel`` (its path under the input folder) names the song in the shards;
    ``group`` is what the train/validation split keys on (the MSD id where there is one)."""

    path: Path
    rel: str
    group: str


def read_ids(path: str | Path) -> set[str]:
    """MSD track ids listed in ``path``.

    Accepts LPD's label lists (``id_list_rock.txt``: one id a line), LPD's ``cleansed_ids.txt``
    (``<md5> <MSD id>``) and tagtraum/MSD-benchmark ``.cls`` files (``<MSD id>\\t<genre>``, ``#``
    comments): on each line, the first token shaped like an MSD id (``TR`` + 16 letters/digits) is taken.
    Filter a multi-genre file first, e.g. ``grep -w Rock msd_tagtraum_cd1.cls > rock.txt``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--ids file {str(path)!r} does not exist")
    ids = set()
    for line in path.read_text(errors="replace").splitlines():
        if line.lstrip().startswith("#"):
            continue
        match = MSD_ID.search(line)
        if match:
            ids.add(match.group(0))
    if not ids:
        raise DataError(
            f"--ids file {str(path)!r} lists no MSD track ids (expected lines such as "
            f"'TRAAAGR128F425B14B', optionally with other columns)"
        )
    return ids


def _group(rel: Path) -> str:
    """The MSD id of an LPD/LMD-matched file is the name of its folder; other files stand alone."""
    parent = rel.parent.name
    return parent if MSD_ID.fullmatch(parent) else rel.with_suffix("").as_posix()


def find_song_files(
    kind: str, input_dir: str | Path, ids: set[str] | None = None, limit: int | None = None
) -> list[SongFile]:
    """The ``.npz`` (kind ``lpd``) or ``.mid/.midi`` (kind ``midi``) files under ``input_dir``, sorted.

    ``ids`` keeps songs whose MSD id (the name of the folder holding the file) is listed; ``limit``
    keeps the first ``limit`` of the sorted list. Raises DataError when nothing is found.
    """
    root = Path(input_dir)
    if not root.exists():
        raise DataError(f"--input {str(root)!r} does not exist")
    suffixes = SUFFIXES[kind]
    if root.is_file():
        candidates = [root] if root.suffix.lower() in suffixes else []
        root = root.parent
    else:
        candidates = [p for p in root.rglob("*") if p.suffix.lower() in suffixes and p.is_file()]
    if not candidates:
        raise DataError(f"no {'/'.join(suffixes)} files under {str(input_dir)!r} (searched all subfolders)")
    files = sorted(
        (SongFile(p, p.relative_to(root).as_posix(), _group(p.relative_to(root))) for p in candidates),
        key=lambda f: f.rel,
    )
    if ids is not None:
        kept = [f for f in files if f.group in ids]
        if not kept:
            raise DataError(
                f"none of the {len(ids)} listed MSD ids matches any of the {len(files)} files under "
                f"{str(input_dir)!r} (a song's MSD id is the name of the folder holding it, e.g. "
                f"{files[0].rel!r} has {files[0].group!r})"
            )
        files = kept
    return files[:limit] if limit else files


def chorale_files() -> list[SongFile]:
    """The Bach works in music21's bundled corpus stored as MusicXML (not the few Humdrum files or the
    roman-numeral analyses)."""
    try:
        from music21 import corpus
    except ImportError:
        raise DataError("--source demo needs music21: pip install 'b2b[demo]'") from None

    paths = sorted(p for p in corpus.getComposer("bach") if Path(p).suffix in (".mxl", ".xml", ".musicxml"))
    if not paths:
        raise DataError("music21's corpus holds no Bach scores; reinstall music21 (its corpus ships with it)")
    out = []
    for p in paths:
        rel = f"bach/{Path(p).name}"
        out.append(SongFile(Path(p), rel, rel))
    return out


def lpd_channel(program: int, is_drum: bool, layout: str) -> int | None:
    """The channel of a track with this General MIDI program in an LPD layout; None if dropped.

    LPD-17 (LPD's ``src/merger_17.py``): drums, then one track per program family ``program // 8``.
    LPD-5 (LPD's ``src/merger_5.py``, salu133445/lakh-pianoroll-dataset): drums; piano = family 0;
    guitar = family 3; bass = family 4; strings = every other program below 96 or in 104..111
    (ethnic); synth effects (96..103), percussive and sound effects (112..127) are dropped.
    """
    if is_drum:
        return 0
    family = program // 8
    if layout == "lpd17":
        return family + 1
    if family in (0, 3, 4):
        return {0: 1, 3: 2, 4: 3}[family]
    return 4 if program < 96 or 104 <= program < 112 else None


def channel_map(song: Song, layout: str) -> list[int | None]:
    """Each source track's channel in ``layout`` (``lpd17``, ``lpd5`` or ``chorale``)."""
    if layout == "chorale":
        return list(range(len(song.tracks)))
    lpd5 = [(t.name, t.program, t.is_drum) for t in LPD5_TRACKS]
    if layout == "lpd17" and [(t.name, t.program, t.is_drum) for t in song.tracks] == lpd5:
        raise SourceError(
            "an LPD-5 file (tracks Drums, Piano, Guitar, Bass, Strings): its Strings track merges many "
            "instrument families and cannot be split into LPD-17's tracks; build with --tracks lpd5"
        )
    return [lpd_channel(t.program, t.is_drum, layout) for t in song.tracks]


def resample_steps(times: np.ndarray, src: int, dst: int) -> tuple[np.ndarray, np.ndarray]:
    """Map on-cells at ``src`` steps per beat to ``dst`` (the "any overlap" rule of the module doc).

    Returns ``(target_times, source_index)``: one entry per target cell a source cell turns on, with
    the index of that source cell (to carry its pitch along).
    """
    g = gcd(src, dst)
    src, dst = src // g, dst // g
    lo = (times * dst) // src
    hi = -((-(times + 1) * dst) // src)  # ceil((i + 1) * dst / src), exclusive
    spans = hi - lo
    index = np.arange(times.size)
    if times.size == 0 or spans.max() == 1:
        return lo, index
    offsets = np.arange(spans.sum()) - np.repeat(np.cumsum(spans) - spans, spans)
    return np.repeat(lo, spans) + offsets, np.repeat(index, spans)


def song_roll(song: Song, spec: RollSpec, layout: str) -> tuple[np.ndarray, np.ndarray]:
    """The whole song on the spec's grid: a ``(channels, steps, n_pitches)`` bool roll and bar starts.

    Tracks mapping to the same channel are merged with OR; pitches outside ``lowest_pitch ..
    lowest_pitch + n_pitches - 1`` are dropped; time is resampled to ``spec.steps_per_beat``. Bar starts
    are in target steps (every ``steps_per_bar`` from 0 when the song has none).
    """
    src, dst = song.resolution, spec.steps_per_beat
    n_steps = -((-song.length * dst) // src)
    roll = np.zeros((len(LAYOUTS[layout]), n_steps, spec.n_pitches), dtype=bool)
    for track, channel in zip(song.tracks, channel_map(song, layout), strict=True):
        if channel is None or channel >= roll.shape[0]:
            continue
        keep = (track.pitches >= spec.lowest_pitch) & (track.pitches < spec.lowest_pitch + spec.n_pitches)
        times, index = resample_steps(track.times[keep], src, dst)
        roll[channel, times, track.pitches[keep][index] - spec.lowest_pitch] = True
    if song.bar_starts is None:
        bars = np.arange(0, n_steps, spec.steps_per_bar, dtype=np.int64)
    else:
        bars = np.unique((song.bar_starts * dst) // src)
    return roll, bars
