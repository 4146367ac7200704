"""Reading shards outside the training loop: the members of one split as the manifest lists them,
sample by sample (:func:`iter_samples`), the note statistics the generator starts from, and the
transposition the loader applies.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from b2b.compat import tar_file_iterator
from b2b.data.codec import ENCODING, SUFFIX, inflate_roll, unpack_rolls
from b2b.data.manifest import manifest_shape, read_manifest, shard_path
from b2b.errors import DataError


@dataclass(frozen=True)
class ShardSplit:
    """The shards of one split: file paths, sample counts and the global position of each shard's first
    sample (``offsets[i]``; ``offsets[-1]`` is the number of samples)."""

    root: Path
    split: str
    paths: tuple[Path, ...]
    counts: np.ndarray
    offsets: np.ndarray
    shape: tuple[int, ...]
    content_hash: str

    @property
    def n_samples(self) -> int:
        return int(self.offsets[-1])


def load_split(shards: str | Path, split: str) -> ShardSplit:
    """Read the manifest in ``shards`` and check the files of ``split`` against it.

    Raises
    ------
    DataError
        The manifest is missing or malformed, the split has no shards, a shard file is missing or its size
        differs from the manifest's, or the shard counts do not add up to ``n_<split>``.
    """
    root = Path(shards)
    manifest = read_manifest(root)
    where = root / "manifest.json"
    if manifest.get("encoding", ENCODING) != ENCODING:
        raise DataError(f"{where}: encoding {manifest['encoding']!r} is not {ENCODING!r}; rebuild the shards")
    shape = manifest_shape(manifest, root)
    entries = [s for s in manifest.get("shards", []) if s.get("split") == split]
    if not entries:
        splits = sorted({s.get("split") for s in manifest.get("shards", [])})
        raise DataError(
            f"{where} lists no shards for split {split!r}; "
            f"it has shards for: {', '.join(splits) or 'nothing'}"
        )
    try:
        counts = np.array([int(e["n"]) for e in entries], dtype=np.int64)
        names = [str(e["name"]) for e in entries]
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(
            f"{where}: a {split} shard entry lacks a valid 'name' or 'n' ({exc}); rebuild the shards"
        ) from None
    paths = []
    for entry, name in zip(entries, names, strict=True):
        path = shard_path(root, name)
        if not path.is_file():
            raise DataError(f"shard {path} is listed in {where} but does not exist; rebuild the shards")
        size = path.stat().st_size
        if "bytes" in entry and size != entry["bytes"]:
            raise DataError(
                f"shard {path} is {size} bytes but {where} says {entry['bytes']}: the file is truncated or "
                f"was rewritten after the manifest; rebuild the shards"
            )
        paths.append(path)
    declared = manifest.get(f"n_{split}")
    if declared is not None and int(declared) != int(counts.sum()):
        raise DataError(
            f"{where}: n_{split} is {declared} but its {split} shards list {int(counts.sum())} samples; "
            f"rebuild the shards"
        )
    return ShardSplit(
        root=root,
        split=split,
        paths=tuple(paths),
        counts=counts,
        offsets=np.concatenate([[0], np.cumsum(counts)]),
        shape=tuple(shape),
        content_hash=str(manifest.get("content_hash", "")),
    )


class _Member(NamedTuple):
    data: bytes
    shard: Path
    name: str


class _Picker:
    """``select_files`` for webdataset's tar iterator: picks members by their index in the tar."""

    def __init__(self, wanted: np.ndarray):
        self.wanted = wanted.tolist()
        self.found = 0
        self.seen = 0
        self.last: str | None = None  # name of the member being read, for error messages
        self.stray: str | None = None  # a member that is not a sample

    def __call__(self, name: str) -> bool:
        index, self.last = self.seen, name
        self.seen += 1
        if not name.endswith("." + SUFFIX):
            self.stray = self.stray or name
            return False
        if self.found < len(self.wanted) and self.wanted[self.found] == index:
            self.found += 1
            return True
        return False


def read_members(path: Path, wanted: np.ndarray, expected: int) -> Iterator[_Member]:
    """Yield the members of the tar ``path`` with indices ``wanted`` (ascending), without decoding them.

    ``expected`` is the manifest's sample count for this tar; when the last member is wanted the tar is
    read to its end and its count checked. Raises DataError naming the file and member on any problem.
    """
    if len(wanted) and not 0 <= wanted[0] <= wanted[-1] < expected:
        raise DataError(f"shard {path}: members {wanted[0]}..{wanted[-1]} asked for, it holds {expected}")
    picker = _Picker(wanted)
    read_to_end = len(wanted) == 0 or wanted[-1] == expected - 1
    try:
        with open(path, "rb") as stream:
            for item in tar_file_iterator(stream, select_files=picker):
                _check_stray(path, picker)
                yield _Member(item["data"], path, item["fname"])
                if picker.found == len(picker.wanted) and not read_to_end:
                    return
    except (tarfile.TarError, OSError, EOFError) as exc:
        reason = str(exc.args[0] if exc.args else exc).split(" @ ")[0]
        where = f"while reading member {picker.last!r}" if picker.last else "at its start"
        raise DataError(
            f"shard {path} is truncated or corrupt: {reason} {where}; rebuild the shards"
        ) from None
    _check_stray(path, picker)
    if picker.found < len(picker.wanted) or (read_to_end and picker.seen != expected):
        raise DataError(
            f"shard {path} holds {picker.seen} members but the manifest lists {expected}: the tar is "
            f"truncated or corrupt (its last readable member is {picker.last!r}); rebuild the shards"
        )


def _check_stray(path: Path, picker: _Picker) -> None:
    if picker.stray:
        raise DataError(f"shard {path} holds {picker.stray!r}, which is not a sample (<key>.{SUFFIX})")


def inflate_member(member: _Member, shape: tuple[int, ...]) -> np.ndarray:
    """The bit-packed roll in ``member`` (``codec.inflate_roll``), or a DataError naming shard and key.

    Workers inflate and ship batches still packed; the main process unpacks a whole batch in one call
    (``codec.unpack_rolls``). Shipping unpacked bool batches cost more CPU than decoding them: 8× the
    bytes in fresh shared-memory pages, faulted in by the worker and again by the main process.
    """
    try:
        return inflate_roll(member.data, shape)
    except ValueError as exc:
        key = member.name.rsplit(".", 1)[0]
        raise DataError(
            f"shard {member.shard}: sample {key!r} does not decode to the manifest's shape {list(shape)} "
            f"({exc}); rebuild the shards"
        ) from None


def decode_member(member: _Member, shape: tuple[int, ...]) -> np.ndarray:
    """Decode one member to a bool array of ``shape`` or raise a DataError naming the shard and key."""
    return unpack_rolls(inflate_member(member, shape)[None], shape)[0]


def iter_samples(shards: str | Path, split: str = "val", limit: int | None = None) -> Iterator[np.ndarray]:
    """Every sample of ``split`` in shard order, as bool arrays of the manifest's shape (for evaluation).

    Parameters
    ----------
    shards : str or Path
        Folder with ``manifest.json`` and the tars.
    split : str
        ``"train"`` or ``"val"``.
    limit : int, optional
        Stop after this many samples.
    """
    data = load_split(shards, split)
    produced = 0
    for path, count in zip(data.paths, data.counts, strict=True):
        for member in read_members(path, np.arange(count), int(count)):
            if limit is not None and produced >= limit:
                return
            yield decode_member(member, data.shape)
            produced += 1


def note_statistics(
    shards: str | Path, n_bars: int, split: str = "train", limit: int = 2048
) -> tuple[np.ndarray, np.ndarray]:
    """What the generator's output bias and bar gates start from, in one read of the first ``limit``
    samples of ``split``.

    Returns
    -------
    density : np.ndarray
        The share of steps each pitch of each track is on: ``(tracks, pitch)`` float64.
    activity : np.ndarray
        The share of bars in which each track plays (has at least one note): ``(tracks,)`` float64.

    Both are the same on every rank (shard order, no shuffling), so networks initialised from them start
    identical everywhere.
    """
    density: np.ndarray | None = None
    played: np.ndarray | None = None
    count = 0
    for roll in iter_samples(shards, split=split, limit=limit):
        per_cell = roll.mean(axis=1, dtype=np.float64)
        bars = roll.reshape(roll.shape[0], n_bars, -1).any(axis=2).sum(axis=1, dtype=np.float64)
        density = per_cell if density is None else density + per_cell
        played = bars if played is None else played + bars
        count += 1
    if density is None or played is None:  # no sample was read (they are None together)
        raise DataError(f"the {split} split of {shards} holds no samples")
    return density / count, played / (count * n_bars)


def transpose_shifts(
    rolls: np.ndarray, pitched: np.ndarray, limit: int, rng: np.random.Generator
) -> np.ndarray:
    """A shift in semitones per sample, uniform over ``-limit..limit`` cut to the sample's free room, so
    no note leaves the pitch range (an empty sample is not shifted)."""
    sounding = np.asarray(rolls[:, pitched].any(axis=(1, 2)))  # (n, pitch)
    n_pitches = rolls.shape[-1]
    shifts = np.zeros(len(rolls), dtype=np.int64)
    for i, row in enumerate(sounding):
        on = np.flatnonzero(row)
        if on.size:
            low, high = max(-limit, -int(on[0])), min(limit, n_pitches - 1 - int(on[-1]))
            shifts[i] = rng.integers(low, high + 1)
    return shifts


def transpose(rolls: np.ndarray, pitched: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """``rolls`` ``(n, tracks, time, pitch)`` with the ``pitched`` tracks of sample ``i`` moved up by
    ``shifts[i]`` semitones (drum tracks stay); in place, returned."""
    for i, shift in enumerate(shifts.tolist()):
        if shift:
            tracks = rolls[i, pitched]
            rolls[i, pitched] = np.roll(tracks, shift, axis=-1)  # the room was checked: nothing wraps
    return rolls
