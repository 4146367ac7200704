"""``b2b shards``: build WebDataset shards of fixed piano-roll windows, and inspect them.

How a build runs: the source files are listed and sorted; each song gets its split from a hash of its
group (MSD id or path) and a place in a seeded order; a pool of workers reads each song, puts it on the
grid (:func:`b2b.data.sources.song_roll`), cuts windows and encodes them; the main process takes the results
in that fixed order and appends each song's windows to its split's current shard. So shard contents do
not depend on the number of workers or on which finishes first.

Why a rerun is byte-identical and resumable: tars are written with fixed headers (mtime 0, uid/gid 0,
no user names) under a temporary name then renamed, so no partial tar ever has a final name; a shard
whose file already holds exactly the expected bytes is left untouched; each song's windows are cached
under ``OUTPUT/.b2b-build/cache/`` (keyed by the file's content hash and the window parameters) so a
rerun after a kill skips the songs already done; ``manifest.json`` is written last, atomically, and
marks a finished build.

What a build may remove: only what it wrote (:class:`b2b.data.output_folder.OutputFolder`); it refuses
an ``--output`` that holds files but no b2b shards.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import sys
import tarfile
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from b2b.atomic import file_sha256, write_bytes
from b2b.data.codec import ENCODING, SUFFIX
from b2b.data.output_folder import OutputFolder
from b2b.data.song_task import SongResult, _params_dict, _Task, process_song
from b2b.data.sources import (
    SongFile,
    chorale_files,
    find_song_files,
    read_ids,
)
from b2b.data.windows import WindowParams
from b2b.errors import B2BError, ConfigError, DataError
from b2b.runtime.stopping import die_with_parent

FORMAT = "b2b-shards/1"


# Per-source defaults: MuseGAN's grid for LPD/MIDI; a smaller, overlapping grid for the small demo corpus.
DEFAULTS: dict[str, dict[str, int | None]] = {
    "lpd": {"n_bars": 4, "steps_per_bar": 48, "lowest_pitch": 24, "n_pitches": 84, "hop_bars": None},
    "midi": {"n_bars": 4, "steps_per_bar": 48, "lowest_pitch": 24, "n_pitches": 84, "hop_bars": None},
    "demo": {"n_bars": 4, "steps_per_bar": 16, "lowest_pitch": 36, "n_pitches": 48, "hop_bars": 1},
}


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
            split[min(score, key=score.__getitem__)] = "val"
        if "train" not in split.values():
            split[max(score, key=score.__getitem__)] = "train"
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


def _source_files(opts: BuildOptions) -> tuple[list[SongFile], dict]:
    if opts.source == "demo":
        files = chorale_files()  # first: says which extra to install when music21 is missing
        import music21

        files = files[: opts.limit] if opts.limit else files
        return files, {"kind": "demo", "input": "music21 corpus: bach", "music21": music21.__version__}
    assert opts.input is not None  # _validate refuses lpd and midi without --input
    ids = read_ids(opts.ids) if opts.ids is not None else None
    files = find_song_files(opts.source, opts.input, ids, opts.limit)
    source: dict[str, object] = {"kind": opts.source, "input": str(opts.input)}
    if opts.ids is not None and ids is not None:  # the two are None together
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
    blocking = next((p for p in opts.output.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise DataError(f"--output {str(opts.output)!r} cannot be created: {str(blocking)!r} is a file")


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
        # die_with_parent: a killed build leaves no worker behind (the pool's own clean-up never runs then).
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            workers, mp_context=context, initializer=die_with_parent, initargs=(os.getpid(),)
        ) as pool:
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
    folder = OutputFolder(opts.output)
    try:
        folder.check_previous(params, source, opts.overwrite)
        cache = folder.cache
        splits = assign_splits([f.group for f in files], opts.val_fraction, opts.seed)
        ordered = song_order(files, opts.seed)
        tasks = [_Task(opts.source, str(f.path), f.rel, opts.params, str(cache)) for f in ordered]
        writers = {
            s: ShardWriter(opts.output, s, opts.shard_size, folder.before_write) for s in ("train", "val")
        }
        skipped: list[dict] = []
        excluded: Counter[str] = Counter()
        used: Counter[str] = Counter()
        # Where each song's windows start in its split, and its group's number: evaluation keeps the
        # windows of one song (overlapping, near-identical) from standing in for each other.
        songs: dict[str, dict[str, list[int]]] = {s: {"starts": [], "groups": []} for s in ("train", "val")}
        group_ids: dict[str, int] = {}
        totals: Counter[str] = Counter()
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
            for message in result.warnings:
                _warn(f"warning: {file.path}: {message}", progress if opts.progress else None)
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
            songs[split]["starts"].append(writers[split].count)
            songs[split]["groups"].append(group_ids.setdefault(file.group, len(group_ids)))
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
            "songs": songs,
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
