"""One song's part of a shard build, run in a worker: read the file, put it on the grid, cut and encode
its windows, and cache the result under the build's scratch folder (keyed by the file's content hash
and the window parameters) so a rerun after a kill skips the songs already done.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from b2b.atomic import temporary_path
from b2b.data.codec import encode_roll
from b2b.data.readers import read_song
from b2b.data.sources import (
    SongExcluded,
    SourceError,
    song_roll,
)
from b2b.data.windows import WindowParams, song_windows

CACHE_VERSION = 2  # bump when the windows a song yields change for the same file and parameters


@dataclass(frozen=True)
class _Task:
    kind: str
    path: str
    rel: str
    params: WindowParams
    cache_dir: str


@dataclass
class SongResult:
    """What one source file gave: encoded windows, or why it gave none."""

    rel: str
    samples: list[bytes] = field(default_factory=list)
    n_steps: int = 0  # song length on the target grid
    source_bytes: int = 0
    dropped_min_notes: int = 0
    dropped_irregular: int = 0
    error: str | None = None  # unreadable: listed in the manifest's `skipped`
    excluded: str | None = None  # readable but left out on purpose (demo works not in 4 voices / 4/4)
    warnings: list[str] = field(default_factory=list)  # what the reader (pretty_midi) warned about


def _cache_key(task: _Task, file_sha: str) -> str:
    params = {"version": CACHE_VERSION, "kind": task.kind, "file": file_sha, **_params_dict(task.params)}
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()


_META = ("n_steps", "source_bytes", "dropped_min_notes", "dropped_irregular", "error", "excluded", "warnings")


def _save_cached(path: Path, result: SongResult) -> None:
    lengths = np.array([len(s) for s in result.samples], dtype=np.int64)
    meta = json.dumps({k: getattr(result, k) for k in _META}).encode()
    with temporary_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(
            f,
            blob=np.frombuffer(b"".join(result.samples), np.uint8),
            lengths=lengths,
            meta=np.frombuffer(meta, np.uint8),
        )


def _load_cached(path: Path, rel: str) -> SongResult | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            blob, lengths, meta = z["blob"].tobytes(), z["lengths"], json.loads(z["meta"].tobytes())
    except (OSError, ValueError, KeyError, EOFError):
        return None  # a damaged cache entry is recomputed
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    samples = [blob[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return SongResult(rel, samples, **meta)


def process_song(task: _Task) -> SongResult:
    """Read one source file and return its encoded windows (from the cache when present)."""
    try:
        data = Path(task.path).read_bytes()
    except OSError as exc:
        return SongResult(task.rel, error=f"cannot read the file ({exc.strerror or exc})")
    cache = Path(task.cache_dir) / f"{_cache_key(task, hashlib.sha256(data).hexdigest())}.npz"
    if cache.is_file():
        cached = _load_cached(cache, task.rel)
        if cached is not None:
            return cached
    result = SongResult(task.rel, source_bytes=len(data))
    try:
        # A reader's warnings (pretty_midi: "Tempo, Key or Time signature change events found on non-zero
        # tracks") are kept and printed with the file's name by the main process.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            song = read_song(task.kind, data)
        result.warnings = sorted({str(w.message) for w in caught})
        roll, bars = song_roll(song, task.params.spec, task.params.layout)
    except SongExcluded as exc:
        result.excluded = str(exc)
    except SourceError as exc:
        result.error = str(exc)
    except Exception as exc:  # one odd file in a corpus of thousands must not end the build; it is listed
        result.error = f"unexpected error while reading it ({type(exc).__name__}: {exc})"
    else:
        windows, stats = song_windows(roll, bars, task.params)
        result.samples = [encode_roll(w) for w in windows]
        result.n_steps = roll.shape[1]
        result.dropped_min_notes = stats["dropped_min_notes"]
        result.dropped_irregular = stats["dropped_irregular"]
    _save_cached(cache, result)
    return result


def _params_dict(params: WindowParams) -> dict:
    spec = params.spec
    return {
        "n_bars": spec.n_bars,
        "steps_per_bar": spec.steps_per_bar,
        "beats_per_bar": spec.beats_per_bar,
        "lowest_pitch": spec.lowest_pitch,
        "n_pitches": spec.n_pitches,
        "hop_bars": params.hop_bars,
        "min_notes": params.min_notes,
        "tracks": params.layout,
        "resample": "any-overlap",
    }
