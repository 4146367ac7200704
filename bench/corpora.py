"""Write the ablation corpora: real music from music21's bundled corpus, in LPD's and MIDI's on-disk formats.

The recipe ablation (``bench/ablate_recipe.py``) trains on several real corpora of different shapes, so
that its defaults are not tuned to the Bach chorales alone. This script writes the sources; the ablation
then shards them with ``b2b shards build`` like any user's data. Nothing is downloaded: all of it ships
with music21 (installed with b2b's ``demo`` extra).

``madrigals``
    Monteverdi's five-voice madrigals (books 3-5, 49 works in 4/4), written as LPD-17 ``.npz`` files
    (pypianoroll, LPD's format): each voice on its own LPD-17 track (Pipe, Reed, Brass, Ensemble, Bass),
    the other 12 tracks silent.
``palestrina``
    Palestrina's mass movements (1,318 Humdrum files, 4-6 voices in 4/2), as LPD-17 ``.npz`` files with
    a "bar" of four quarter notes (half a written 4/2 bar); voices top to bottom on Pipe, Reed, Brass,
    Ensemble, Strings, and the lowest on Bass. Works with fewer voices leave tracks silent, so a track
    plays in only part of the corpus.
``folk``
    Folk melodies in 4/4 or 2/2 from the Essen collection, O'Neill's 1850 and Ryan's Mammoth, one ``.mid``
    file per tune (piano), monophonic: a MIDI-folder corpus.

    python bench/corpora.py --out corpora                 # all three (about 5 minutes on 2 cores)
    python bench/corpora.py --out corpora --only folk

Each corpus folder is written under a temporary name and renamed when complete; an existing complete
folder is kept (delete it to rebuild).
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

RESOLUTION = 24  # steps per quarter note, LPD's resolution
VOICE_PROGRAMS = (
    73,
    68,
    60,
    52,
    42,
)  # top to bottom: flute, oboe, horn, choir, cello (distinct LPD-17 tracks)
BASS_PROGRAM = 32  # the lowest voice: acoustic bass (LPD-17's Bass track)
FOLK_METERS = {"4/4", "2/2"}


def corpus_root() -> Path:
    import music21

    return Path(music21.__file__).parent / "corpus"


def _voice_notes(part) -> list[tuple[int, int, int]]:
    """(start, end, pitch) in steps of one part, ties merged."""
    notes = []
    for n in part.stripTies().flatten().notes:
        start = round(float(n.offset) * RESOLUTION)
        end = max(start + 1, round(float(n.offset + n.quarterLength) * RESOLUTION))
        for p in n.pitches:
            notes.append((start, end, int(p.midi)))
    return notes


def write_lpd17(parts: list[list[tuple[int, int, int]]], out: Path, bar_quarters: int = 4) -> bool:
    """Write voices (top to bottom) as an LPD-17 ``.npz`` with every one of LPD-17's 17 tracks."""
    import pypianoroll

    from b2b.spec import LPD17_TRACKS

    length = max((end for notes in parts for _, end, _ in notes), default=0)
    if length == 0:
        return False
    programs = list(VOICE_PROGRAMS[: len(parts) - 1]) + [BASS_PROGRAM]
    rolls = {i: np.zeros((length, 128), bool) for i in range(len(LPD17_TRACKS))}
    for notes, program in zip(parts, programs, strict=True):
        roll = rolls[program // 8 + 1]
        for start, end, pitch in notes:
            roll[start:end, pitch] = True
    tracks = [
        pypianoroll.BinaryTrack(name=t.name, program=t.program, is_drum=t.is_drum, pianoroll=rolls[i])
        for i, t in enumerate(LPD17_TRACKS)
    ]
    downbeat = np.zeros(length, bool)
    downbeat[:: bar_quarters * RESOLUTION] = True
    out.parent.mkdir(parents=True, exist_ok=True)
    pypianoroll.Multitrack(resolution=RESOLUTION, tracks=tracks, downbeat=downbeat).save(str(out))
    return True


def _score_to_lpd(args: tuple[str, str]) -> str | None:
    from music21 import converter

    src, out = args
    try:
        score = converter.parse(src)
        parts = [_voice_notes(p) for p in score.parts]
        parts = [p for p in parts if p]
        if len(parts) < 2:
            return f"{src}: fewer than 2 voices"
        return None if write_lpd17(parts, Path(out)) else f"{src}: no notes"
    except Exception as exc:  # a few corpus files do not parse; they are reported, not fatal
        return f"{src}: {type(exc).__name__}: {exc}"


def _opus_to_midi(args: tuple[str, str]) -> list[str]:
    from music21 import converter, meter

    src, out_dir = args
    written = []
    try:
        parsed = converter.parse(src)
    except Exception:
        return written
    scores = list(parsed.scores) if hasattr(parsed, "scores") and len(parsed.scores) else [parsed]
    stem = Path(src).stem
    for i, score in enumerate(scores):
        meters = {ts.ratioString for ts in score.recurse().getElementsByClass(meter.TimeSignature)}
        if not meters or not meters <= FOLK_METERS:
            continue
        path = Path(out_dir) / f"{stem}-{i:04d}.mid"
        try:
            score.write("midi", fp=str(path))
            written.append(path.name)
        except Exception:
            continue
    return written


def build(name: str, out: Path, workers: int) -> None:
    final = out / name
    if final.is_dir():
        print(f"{final} exists: kept")
        return
    tmp = out / f".{name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    root = corpus_root()
    with ProcessPoolExecutor(workers) as pool:
        if name in ("madrigals", "palestrina"):
            pattern = "monteverdi/*.mxl" if name == "madrigals" else "palestrina/*.krn"
            sources = sorted(glob.glob(str(root / pattern)))
            jobs = [(s, str(tmp / f"{Path(s).stem}.npz")) for s in sources]
            problems = [p for p in pool.map(_score_to_lpd, jobs, chunksize=4) if p]
            count = len(jobs) - len(problems)
            for problem in problems:
                print(f"  skipped {problem}", file=sys.stderr)
        else:
            sources = sorted(
                glob.glob(str(root / "essenFolksong/*.abc"))
                + glob.glob(str(root / "oneills1850/*.abc"))
                + glob.glob(str(root / "ryansMammoth/*.abc"))
            )
            count = sum(
                len(w) for w in pool.map(_opus_to_midi, [(s, str(tmp)) for s in sources], chunksize=8)
            )
    os.replace(tmp, final)
    print(f"wrote {final}: {count} files")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="corpora", help="folder to write the corpora into")
    parser.add_argument("--only", nargs="*", default=["madrigals", "palestrina", "folk"])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    for name in args.only:
        build(name, Path(args.out), args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
