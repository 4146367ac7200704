"""``b2b shards``: build WebDataset shards of fixed piano-roll windows, and inspect them.

How a build runs: the source files are listed and sorted; each song gets its split from a hash of its
group (MSD id or path) and a place in a seeded order; a pool of workers reads each song, puts it on the
grid (:func:`b2b.sources.song_roll`), cuts windows and encodes them; the main process takes the results
in that fixed order and appends each song's windows to its split's current shard. So shard contents do
not depend on the number of workers or on which finishes first.

Why a rerun is byte-identical and resumable: tars are written with fixed headers (mtime 0, uid/gid 0,
no user names) under a temporary name then renamed, so no partial tar ever has a final name; a shard
whose file
already holds exactly the expected bytes is left untouched; each song's windows are cached under
``OUTPUT/.cache/`` (keyed by the file's content hash and the window parameters) so a rerun after a kill
skips the songs already done; ``manifest.json`` is written last, atomically, and marks a finished build.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from b2b.atomic import temporary_path, write_bytes, write_text
from b2b.codec import ENCODING, SUFFIX, decode_roll, encode_roll
from b2b.errors import B2BError, ConfigError, DataError
from b2b.sources import (
    LAYOUTS,
    SongExcluded,
    SongFile,
    SourceError,
    chorale_files,
    find_song_files,
    read_ids,
    read_song,
    song_roll,
)
from b2b.spec import RollSpec

FORMAT = "b2b-shards/1"
CACHE_VERSION = 1  # bump when the windows a song yields change for the same file and parameters
MANIFEST = "manifest.json"

# Per-source defaults: MuseGAN's grid for LPD/MIDI; a smaller, overlapping grid for the small demo corpus.
DEFAULTS = {
    "lpd": {"n_bars": 4, "steps_per_bar": 48, "lowest_pitch": 24, "n_pitches": 84, "hop_bars": None},
    "midi": {"n_bars": 4, "steps_per_bar": 48, "lowest_pitch": 24, "n_pitches": 84, "hop_bars": None},
    "demo": {"n_bars": 4, "steps_per_bar": 16, "lowest_pitch": 36, "n_pitches": 48, "hop_bars": 1},
}


@dataclass(frozen=True)
class WindowParams:
    """Everything one song's windows depend on (with the file's content)."""

    spec: RollSpec
    layout: str
    hop_bars: int
    min_notes: int


@dataclass
class BuildOptions:
    """A shard build; see ``b2b shards build --help`` for each field."""

    source: str
    output: Path
    params: WindowParams
    input: Path | None = None
    val_fraction: float = 0.05
    shard_size: int = 1000
    seed: int = 0
    workers: int = 1
    limit: int | None = None
    ids: Path | None = None
    overwrite: bool = False
    progress: bool = True


# ---------------------------------------------------------------------------------------------------
# Windows of one song


def window_starts(bars: np.ndarray, n_steps: int, spec: RollSpec, hop_bars: int) -> tuple[np.ndarray, int]:
    """Where windows start: every ``hop_bars``-th bar start whose ``n_bars`` bars are whole bars of the
    spec's length and lie inside the song.

    Returns the starts and how many windows inside the song were dropped because their bars are
    irregular (a pickup, a time signature other than the spec's, a short last bar).
    """
    width = spec.n_bars * spec.steps_per_bar
    index = np.arange(0, bars.size, hop_bars)
    starts = bars[index]
    inside = starts + width <= n_steps
    regular = np.ones(index.size, dtype=bool)
    for i in range(1, spec.n_bars + 1):
        k = index + i
        exists = k < bars.size
        following = np.where(exists, bars[np.minimum(k, bars.size - 1)], np.iinfo(np.int64).max)
        if i < spec.n_bars:  # bar i of the window must start exactly i bars in
            regular &= exists & (following == starts + i * spec.steps_per_bar)
        else:  # and no bar may start before the window ends
            regular &= following >= starts + width
    return starts[inside & regular], int(np.count_nonzero(inside & ~regular))


def count_onsets(windows: np.ndarray) -> np.ndarray:
    """Note onsets per window of ``(N, C, T, P)``: cells on whose previous step (within the window) is off."""
    previous = np.zeros_like(windows)
    previous[:, :, 1:] = windows[:, :, :-1]
    return np.count_nonzero(windows & ~previous, axis=(1, 2, 3))


def song_windows(
    roll: np.ndarray, bars: np.ndarray, params: WindowParams
) -> tuple[np.ndarray, dict[str, int]]:
    """Cut a song's grid roll into windows ``(N, C, T, P)``; return them and counts of dropped windows."""
    spec = params.spec
    width = spec.n_bars * spec.steps_per_bar
    starts, irregular = window_starts(bars, roll.shape[1], spec, params.hop_bars)
    windows = (
        np.stack([roll[:, s : s + width] for s in starts])
        if starts.size
        else np.zeros((0, *spec.shape), bool)
    )
    keep = count_onsets(windows) >= params.min_notes
    stats = {"dropped_min_notes": int(np.count_nonzero(~keep)), "dropped_irregular": irregular}
    return windows[keep], stats


# ---------------------------------------------------------------------------------------------------
# Per-song work (runs in the worker processes)


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


def _cache_key(task: _Task, file_sha: str) -> str:
    params = {"version": CACHE_VERSION, "kind": task.kind, "file": file_sha, **_params_dict(task.params)}
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()


_META = ("n_steps", "source_bytes", "dropped_min_notes", "dropped_irregular", "error", "excluded")


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
        song = read_song(task.kind, data)
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


# ---------------------------------------------------------------------------------------------------
# Split, order, tars


def _unit_hash(text: str) -> float:
    """A uniform number in [0, 1) from ``text`` (stable across machines and Python versions)."""
    return int(hashlib.sha256(text.encode()).hexdigest()[:15], 16) / 16**15


def assign_splits(groups: list[str], val_fraction: float, seed: int) -> dict[str, str]:
    """``train`` or ``val`` for each group (song), from a hash of (seed, group) against ``val_fraction``.

    A song's split does not change when others are added. With two or more songs and a positive
    fraction, each split gets at least one song (the song hashing lowest goes to val, highest to train).
    """
    score = {g: _unit_hash(f"b2b-split:{seed}:{g}") for g in sorted(set(groups))}
    split = {g: "val" if s < val_fraction else "train" for g, s in score.items()}
    if len(split) >= 2 and val_fraction > 0:
        if "val" not in split.values():
            split[min(score, key=score.get)] = "val"
        if "train" not in split.values():
            split[max(score, key=score.get)] = "train"
    return split


def song_order(files: list[SongFile], seed: int) -> list[SongFile]:
    """Songs in a seeded pseudo-random order, so each shard mixes songs from across the corpus."""
    return sorted(files, key=lambda f: (hashlib.sha256(f"b2b-order:{seed}:{f.rel}".encode()).digest(), f.rel))


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    """A tar archive of ``(name, data)`` members with fixed headers, so equal content gives equal bytes."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class ShardWriter:
    """Appends samples of one split to ``<split>-00000.tar``, ``<split>-00001.tar``, ... in ``out``.

    A shard whose file already holds exactly the bytes it would get is left as it is (a resumed or
    repeated build); ``before_write(path)`` runs before a tar is written.
    """

    def __init__(self, out: Path, split: str, shard_size: int, before_write: Callable[[Path], None]):
        self.out, self.split, self.shard_size, self.before_write = out, split, shard_size, before_write
        self.records: list[dict] = []
        self.buffer: list[tuple[str, bytes]] = []
        self.count = 0
        self.reused = 0

    def add(self, sample: bytes) -> None:
        self.buffer.append((f"{self.count:09d}.{SUFFIX}", sample))
        self.count += 1
        if len(self.buffer) == self.shard_size:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        name = f"{self.split}-{len(self.records):05d}.tar"
        data = tar_bytes(self.buffer)
        sha = hashlib.sha256(data).hexdigest()
        path = self.out / name
        if path.is_file() and path.stat().st_size == len(data) and file_sha256(path) == sha:
            self.reused += 1
        else:
            self.before_write(path)
            write_bytes(path, data)
        self.records.append(
            {"name": name, "split": self.split, "n": len(self.buffer), "bytes": len(data), "sha256": sha}
        )
        self.buffer = []


# ---------------------------------------------------------------------------------------------------
# The build


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


def _source_files(opts: BuildOptions) -> tuple[list[SongFile], dict]:
    if opts.source == "demo":
        import music21

        files = chorale_files()
        files = files[: opts.limit] if opts.limit else files
        return files, {"kind": "demo", "input": "music21 corpus: bach", "music21": music21.__version__}
    ids = read_ids(opts.ids) if opts.ids is not None else None
    files = find_song_files(opts.source, opts.input, ids, opts.limit)
    source = {"kind": opts.source, "input": str(opts.input)}
    if opts.ids is not None:
        source["ids"] = {"file": str(opts.ids), "n_ids": len(ids), "sha256": file_sha256(Path(opts.ids))}
    return files, source


def _validate(opts: BuildOptions) -> None:
    opts.params.spec.check()
    checks = [
        ("--hop-bars", opts.params.hop_bars, opts.params.hop_bars >= 1, "an integer >= 1"),
        ("--min-notes", opts.params.min_notes, opts.params.min_notes >= 0, "an integer >= 0"),
        ("--val-fraction", opts.val_fraction, 0.0 <= opts.val_fraction < 1.0, "a number in [0, 1)"),
        ("--shard-size", opts.shard_size, opts.shard_size >= 1, "an integer >= 1"),
        ("--workers", opts.workers, opts.workers >= 1, "an integer >= 1"),
        ("--limit", opts.limit, opts.limit is None or opts.limit >= 1, "an integer >= 1"),
    ]
    for name, value, ok, valid in checks:
        if not ok:
            raise ConfigError(f"{name} {value!r} is invalid: expected {valid}")
    if opts.source not in DEFAULTS:
        raise ConfigError(f"--source {opts.source!r} is not one of {', '.join(DEFAULTS)}")
    if opts.source == "demo" and (opts.input is not None or opts.ids is not None):
        raise ConfigError("--source demo takes no --input or --ids (it reads music21's bundled Bach corpus)")
    if opts.source != "demo" and opts.input is None:
        raise ConfigError(f"--source {opts.source} needs --input DIR (a folder of source files)")
    if opts.output.exists() and not opts.output.is_dir():
        raise DataError(f"--output {str(opts.output)!r} exists and is not a folder")


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _describe_change(old: dict, new: dict) -> str:
    keys = sorted(set(old) | set(new))
    return ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k))


class _OutputFolder:
    """The output folder: its lock, the manifest of a previous build, and clean-up after success."""

    def __init__(self, out: Path):
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self._lock = open(out / ".lock", "w")  # held (and flock-ed) for the whole build
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            raise DataError(
                f"another `b2b shards build` is writing to {str(out)!r}; wait for it to finish"
            ) from None
        self.manifest_path = out / MANIFEST

    def check_previous(self, params: dict, source: dict, overwrite: bool) -> None:
        """Refuse to mix with shards of other options (unless ``overwrite``: then drop their manifest)."""
        old = _read_json(self.manifest_path) if self.manifest_path.exists() else None
        if old is not None:
            old_head = {
                **old.get("params", {}),
                "source": old.get("source", {}).get("kind"),
                "input": old.get("source", {}).get("input"),
            }
            new_head = {**params, "source": source["kind"], "input": source["input"]}
            if old_head != new_head:
                if not overwrite:
                    raise DataError(
                        f"{str(self.out)!r} already holds shards built with other options "
                        f"({_describe_change(old_head, new_head)}); pass --overwrite to replace them, "
                        f"or choose another --output"
                    )

    def invalidate(self, path: Path | None = None) -> None:
        """Remove the manifest before the first tar is written, so no reader sees old and new mixed
        (a rerun that finds every shard complete writes none and keeps it)."""
        if self.manifest_path.exists():
            self.manifest_path.unlink()

    def finish(self, manifest: dict) -> None:
        """Write the manifest (if it changed), then remove leftovers: old shards, temporaries, the cache."""
        text = json.dumps(manifest, indent=1) + "\n"
        if not (self.manifest_path.is_file() and self.manifest_path.read_text() == text):
            write_text(self.manifest_path, text)
        listed = {s["name"] for s in manifest["shards"]}
        for path in self.out.iterdir():
            stale_tar = (
                path.suffix == ".tar"
                and path.name.split("-")[0] in ("train", "val")
                and path.name not in listed
            )
            if stale_tar or (path.name.startswith(".") and ".tmp-" in path.name):
                path.unlink()
        shutil.rmtree(self.out / ".cache", ignore_errors=True)

    def close(self) -> None:
        self._lock.close()
        (self.out / ".lock").unlink(missing_ok=True)


def _results(tasks: list[_Task], workers: int) -> Iterator[SongResult]:
    """Results in task order from ``workers`` spawned processes (spawn: safe in a process with threads).

    At most a few tasks per worker are in flight, so memory stays bounded when the main process (which
    writes the tars) falls behind; a worker that dies raises instead of hanging the build.
    """
    if workers == 1 or len(tasks) <= 1:
        yield from map(process_song, tasks)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    workers = min(workers, len(tasks))
    pending: deque = deque()
    todo = iter(tasks)
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for task in todo:
                pending.append(pool.submit(process_song, task))
                if len(pending) >= 4 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
    except BrokenProcessPool:
        raise B2BError(
            "a shard-building worker process died (out of memory or killed); run the same command "
            "again to resume, or use fewer --workers"
        ) from None


def _warn(message: str, progress) -> None:
    if progress is not None:
        progress.write(message, file=sys.stderr)
    else:
        print(message, file=sys.stderr)


@dataclass
class BuildReport:
    """A finished build: its manifest, and how many shards were already complete on disk."""

    manifest: dict
    reused: int
    skipped: int


def build_shards(opts: BuildOptions) -> BuildReport:
    """Build (or finish, or verify by rebuilding) the shards in ``opts.output``.

    Raises ConfigError/ShapeError for impossible options, DataError for missing or unusable input.
    Nothing already in the output folder is deleted before the new manifest has been written.
    """
    from tqdm import tqdm

    _validate(opts)
    files, source = _source_files(opts)
    params = {
        **_params_dict(opts.params),
        "val_fraction": opts.val_fraction,
        "seed": opts.seed,
        "shard_size": opts.shard_size,
        "limit": opts.limit,
    }
    folder = _OutputFolder(opts.output)
    try:
        folder.check_previous(params, source, opts.overwrite)
        cache = opts.output / ".cache"
        cache.mkdir(exist_ok=True)
        splits = assign_splits([f.group for f in files], opts.val_fraction, opts.seed)
        ordered = song_order(files, opts.seed)
        tasks = [_Task(opts.source, str(f.path), f.rel, opts.params, str(cache)) for f in ordered]
        writers = {
            s: ShardWriter(opts.output, s, opts.shard_size, folder.invalidate) for s in ("train", "val")
        }
        skipped, excluded, used = [], Counter(), Counter()
        totals = Counter()
        longest = (0, "")
        progress = tqdm(
            total=len(tasks),
            unit="song",
            desc="shards",
            disable=not opts.progress,
            file=sys.stderr,
            mininterval=0.5 if sys.stderr.isatty() else 10.0,  # keep batch logs (Slurm) short
        )
        for file, result in zip(ordered, _results(tasks, opts.workers), strict=True):
            progress.update(1)
            if result.error is not None:
                skipped.append({"path": str(file.path), "reason": result.error})
                _warn(f"warning: skipped {file.path}: {result.error}", progress if opts.progress else None)
                continue
            if result.excluded is not None:
                excluded[result.excluded.split(" (")[0]] += 1
                continue
            longest = max(longest, (result.n_steps, file.rel))
            totals["dropped_min_notes"] += result.dropped_min_notes
            totals["dropped_irregular"] += result.dropped_irregular
            if not result.samples:
                totals["songs_without_windows"] += 1
                continue
            split = splits[file.group]
            used[split] += 1
            totals["source_bytes"] += result.source_bytes
            for sample in result.samples:
                writers[split].add(sample)
            progress.set_postfix(samples=writers["train"].count + writers["val"].count, refresh=False)
        progress.close()
        for writer in writers.values():
            writer.flush()
        n_samples = writers["train"].count + writers["val"].count
        if n_samples == 0:
            shutil.rmtree(cache, ignore_errors=True)  # holds nothing worth resuming from
            raise _nothing_usable(opts, files, skipped, excluded, totals, longest)
        if writers["val"].count == 0 and opts.val_fraction > 0:
            _warn(
                "warning: no validation samples (too few songs for --val-fraction); all went to train", None
            )
        records = writers["train"].records + writers["val"].records
        shard_bytes = sum(r["bytes"] for r in records)
        manifest = {
            "format": FORMAT,
            "shape": list(opts.params.spec.shape),
            "spec": opts.params.spec.to_dict(),
            "encoding": ENCODING,
            "params": params,
            "source": {
                **source,
                "n_files": len(files),
                "n_songs": sum(used.values()),
                "n_songs_train": used["train"],
                "n_songs_val": used["val"],
                "excluded": dict(sorted(excluded.items())),
                "songs_without_windows": totals["songs_without_windows"],
                "windows_dropped_min_notes": totals["dropped_min_notes"],
                "windows_dropped_irregular_bars": totals["dropped_irregular"],
            },
            "n_train": writers["train"].count,
            "n_val": writers["val"].count,
            "shards": records,
            "skipped": skipped,
            "bytes_per_sample": round(shard_bytes / n_samples, 1),
            "source_bytes_per_sample": round(totals["source_bytes"] / n_samples, 1),
            "content_hash": hashlib.sha256("".join(r["sha256"] for r in records).encode()).hexdigest(),
        }
        folder.finish(manifest)
        return BuildReport(manifest, writers["train"].reused + writers["val"].reused, len(skipped))
    finally:
        folder.close()


def _nothing_usable(opts, files, skipped, excluded, totals, longest) -> DataError:
    where = str(opts.input) if opts.input is not None else "the demo corpus"
    if len(skipped) == len(files):
        reasons = Counter(s["reason"] for s in skipped).most_common(1)[0][0]
        return DataError(
            f"nothing usable: all {len(files)} source files under {where} were skipped "
            f"(most common reason: {reasons}); see the warnings above"
        )
    spec = opts.params.spec
    width = spec.n_bars * spec.steps_per_bar
    if longest[0] < width:
        return DataError(
            f"the window ({spec.n_bars} bars x {spec.steps_per_bar} steps = {width} steps) is longer than "
            f"every song: the longest, {longest[1]!r}, has {longest[0]} steps "
            f"({longest[0] / spec.steps_per_bar:.1f} bars); lower --n-bars"
        )
    return DataError(
        f"nothing usable: no window of {spec.n_bars} bars passed the filters in {where} "
        f"({totals['dropped_min_notes']} had fewer than --min-notes {opts.params.min_notes} note onsets, "
        f"{totals['dropped_irregular']} covered bars of another length than {spec.steps_per_bar} steps; "
        f"{sum(excluded.values())} works excluded, {len(skipped)} files skipped)"
    )


# ---------------------------------------------------------------------------------------------------
# Reading shards back (inspect)


def read_samples(
    shards_dir: str | Path, record: dict, shape: tuple[int, ...], limit: int | None = None
) -> np.ndarray:
    """Decode the samples of one shard (at most ``limit``) to a bool array ``(N, *shape)``."""
    rolls = []
    with tarfile.open(Path(shards_dir) / record["name"]) as tar:
        for member in tar:
            if limit is not None and len(rolls) >= limit:
                break
            rolls.append(decode_roll(tar.extractfile(member).read(), shape))
    return np.stack(rolls) if rolls else np.zeros((0, *shape), bool)


def verify_shards(shards_dir: str | Path, manifest: dict) -> list[str]:
    """Problems found in the shards listed by ``manifest`` (empty when every file, hash and sample checks)."""
    problems = []
    shape = tuple(manifest["shape"])
    for record in manifest["shards"]:
        path = Path(shards_dir) / record["name"]
        if not path.is_file():
            problems.append(f"{record['name']}: missing")
            continue
        if file_sha256(path) != record["sha256"]:
            problems.append(f"{record['name']}: sha256 differs from the manifest (changed or damaged)")
            continue
        try:
            with tarfile.open(path) as tar:
                members = [m for m in tar if m.isfile()]
                for m in members:
                    decode_roll(tar.extractfile(m).read(), shape)
        except (tarfile.TarError, ValueError) as exc:
            problems.append(f"{record['name']}: {exc}")
            continue
        if len(members) != record["n"]:
            problems.append(
                f"{record['name']}: holds {len(members)} samples, the manifest says {record['n']}"
            )
    return problems


def summary(shards_dir: str | Path, manifest: dict) -> str:
    """A human-readable summary of a shards folder."""
    spec = RollSpec.from_dict(manifest["spec"])
    counts = Counter(r["split"] for r in manifest["shards"])
    source = manifest.get("source", {})
    low, high = spec.lowest_pitch, spec.lowest_pitch + spec.n_pitches - 1
    songs = f"{source.get('n_songs')} songs used of {source.get('n_files')} files"
    lines = [
        f"shards: {shards_dir} ({manifest.get('format')}, {manifest.get('encoding')})",
        f"shape: {manifest['shape']} [tracks, time, pitch]; {spec.n_bars} bars x {spec.steps_per_bar} "
        f"steps ({spec.steps_per_beat} per beat), MIDI pitches {low}..{high}",
        f"tracks: {', '.join(t.name for t in spec.tracks)}",
        f"source: {source.get('kind')} {source.get('input')} ({songs}; "
        f"{source.get('n_songs_train')} train, {source.get('n_songs_val')} val)",
        f"params: {json.dumps(manifest.get('params', {}))}",
        f"samples: {manifest['n_train']} train in {counts['train']} shards, "
        f"{manifest['n_val']} val in {counts['val']} shards",
        f"bytes per sample: {manifest.get('bytes_per_sample')} in shards, "
        f"{manifest.get('source_bytes_per_sample')} in the source files",
        f"dropped windows: {source.get('windows_dropped_min_notes')} below --min-notes, "
        f"{source.get('windows_dropped_irregular_bars')} over irregular bars; "
        f"excluded works: {source.get('excluded')}",
        f"content hash: {manifest.get('content_hash')}",
        f"skipped files: {len(manifest.get('skipped', []))}",
    ]
    lines += [f"  {s['path']}: {s['reason']}" for s in manifest.get("skipped", [])[:10]]
    if len(manifest.get("skipped", [])) > 10:
        lines.append(f"  ... and {len(manifest['skipped']) - 10} more (see {MANIFEST})")
    return "\n".join(lines)


def inspect_shards(
    shards_dir: str | Path,
    n: int = 8,
    split: str = "train",
    png: str | Path | None = None,
    verify: bool = False,
) -> tuple[str, Path | None]:
    """Summarise a shards folder, render its first ``n`` samples of ``split`` to a PNG; return both.

    With ``verify``, check every shard's hash and samples and raise DataError listing the problems.
    """
    from b2b.manifest import read_manifest
    from b2b.render import save_roll_grid

    shards_dir = Path(shards_dir)
    manifest = read_manifest(shards_dir)
    text = summary(shards_dir, manifest)
    if verify:
        problems = verify_shards(shards_dir, manifest)
        if problems:
            raise DataError(f"{len(problems)} problem(s) in {shards_dir}: " + "; ".join(problems))
        n_shards = len(manifest["shards"])
        text += f"\nverified: {n_shards} shards match their sha256 and decode to {manifest['shape']}"
    records = [r for r in manifest["shards"] if r["split"] == split]
    if not records or n < 1:
        return text, None
    spec = RollSpec.from_dict(manifest["spec"])
    rolls = read_samples(shards_dir, records[0], spec.shape, limit=n)
    path = Path(png) if png is not None else shards_dir / f"inspect-{split}.png"
    save_roll_grid(
        rolls,
        spec,
        path,
        title=f"{shards_dir.name}: first {len(rolls)} {split} samples of {records[0]['name']}",
    )
    return text, path


# ---------------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    build = actions.add_parser(
        "build", help="build shards from LPD .npz files, MIDI files or the demo corpus"
    )
    build.add_argument(
        "--source",
        choices=list(DEFAULTS),
        default="demo",
        help="lpd: LPD .npz files; midi: .mid/.midi files; demo: music21's Bach chorales (default)",
    )
    build.add_argument(
        "--input", type=Path, help="folder of source files (searched recursively); lpd and midi"
    )
    build.add_argument("--output", type=Path, help="shards folder (default: shards/<source>)")
    build.add_argument(
        "--tracks",
        choices=["lpd17", "lpd5"],
        help="track layout for lpd/midi (default lpd17; LPD-17 input merges down to lpd5 as LPD does)",
    )
    build.add_argument("--ids", type=Path, help="keep only songs whose MSD id is listed in this file")
    build.add_argument("--limit", type=int, help="use only the first N source files (sorted by path)")
    grid = build.add_argument_group(
        "window (defaults: MuseGAN's 4 x 48 x 84 from pitch 24; demo: 4 x 16 x 48 from 36)"
    )
    grid.add_argument("--n-bars", type=int, help="bars per sample")
    grid.add_argument("--steps-per-bar", type=int, help="time steps per 4/4 bar (LPD has 96)")
    grid.add_argument("--lowest-pitch", type=int, help="MIDI pitch of the lowest row")
    grid.add_argument("--n-pitches", type=int, help="number of pitch rows")
    grid.add_argument("--hop-bars", type=int, help="bars between window starts (default: n_bars; demo: 1)")
    grid.add_argument(
        "--min-notes",
        type=int,
        default=1,
        help="drop windows with fewer note onsets than this (default 1: drop empty windows)",
    )
    build.add_argument("--val-fraction", type=float, default=0.05, help="fraction of songs for validation")
    build.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    build.add_argument("--seed", type=int, default=0, help="seeds the split and the song order")
    build.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes")
    build.add_argument(
        "--overwrite",
        action="store_true",
        help="replace shards in --output that were built with other options",
    )
    build.add_argument("--no-progress", action="store_true", help="no progress bar")

    insp = actions.add_parser("inspect", help="summarise a shards folder and render a few samples as a PNG")
    insp.add_argument("dir", type=Path, help="shards folder (holds manifest.json)")
    insp.add_argument("--n", type=int, default=8, help="samples to render (0: none)")
    insp.add_argument("--split", choices=["train", "val"], default="train")
    insp.add_argument("--png", type=Path, help="image path (default: DIR/inspect-<split>.png)")
    insp.add_argument(
        "--verify", action="store_true", help="check every shard's sha256 and decode every sample"
    )


def options_from_args(args: argparse.Namespace) -> BuildOptions:
    """Resolve per-source defaults into :class:`BuildOptions`."""
    d = DEFAULTS[args.source]

    def pick(name: str):
        value = getattr(args, name)
        return d[name] if value is None else value

    if args.source == "demo" and args.tracks is not None:
        raise ConfigError("--tracks applies to --source lpd and midi; the demo's tracks are its four voices")
    layout = "chorale" if args.source == "demo" else (args.tracks or "lpd17")
    n_bars = pick("n_bars")
    spec = RollSpec(
        tracks=LAYOUTS[layout],
        n_bars=n_bars,
        steps_per_bar=pick("steps_per_bar"),
        n_pitches=pick("n_pitches"),
        lowest_pitch=pick("lowest_pitch"),
    )
    hop = args.hop_bars if args.hop_bars is not None else (d["hop_bars"] or n_bars)
    return BuildOptions(
        source=args.source,
        output=args.output or Path("shards") / args.source,
        params=WindowParams(spec, layout, hop, args.min_notes),
        input=args.input,
        val_fraction=args.val_fraction,
        shard_size=args.shard_size,
        seed=args.seed,
        workers=args.workers,
        limit=args.limit,
        ids=args.ids,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )


def run(args: argparse.Namespace) -> int:
    if args.action == "inspect":
        text, png = inspect_shards(args.dir, n=args.n, split=args.split, png=args.png, verify=args.verify)
        print(text)
        if png is not None:
            print(f"samples rendered to {png}")
        return 0
    opts = options_from_args(args)
    report = build_shards(opts)
    manifest = report.manifest
    print(
        f"wrote {opts.output}: {manifest['n_train']} train + {manifest['n_val']} val samples of shape "
        f"{manifest['shape']} in {len(manifest['shards'])} shards ({report.reused} already complete), "
        f"{manifest['bytes_per_sample']} bytes/sample; {len(manifest['skipped'])} files skipped"
    )
    return 0
