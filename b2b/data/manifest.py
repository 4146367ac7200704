"""A shards folder's ``manifest.json``: what the shards hold (shape, spec, splits, files) and how they
were built.

``b2b shards build`` writes it last, so its presence marks a finished build; everything that reads shards
reads it first, through :func:`read_manifest`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from b2b.errors import DataError
from b2b.spec import RollSpec

MANIFEST = "manifest.json"
LPD_URL = "https://salu133445.github.io/lakh-pianoroll-dataset/"


def build_hint(shards: str | Path) -> str:
    """How to build the shards a config names: the demo corpus for a demo folder, else LPD or MIDI."""
    name = Path(shards).name.lower()
    if "demo" in name or "chorale" in name:
        return (
            f"build them with `b2b shards build --source demo --output {shards}` (Bach chorales, no download)"
        )
    if "lpd" in name:
        tracks = "lpd5" if "lpd5" in name else "lpd17"
        return (
            f"build them from the Lakh Pianoroll Dataset ({LPD_URL}; download lpd_17_cleansed), e.g. "
            f"`b2b shards build --source lpd --input lpd_17/lpd_17_cleansed --tracks {tracks} "
            f"--output {shards}`"
        )
    return (
        f"build them from your MIDI files with `b2b shards build --source midi --input MIDI_FOLDER --output "
        f"{shards}`, or from the Lakh Pianoroll Dataset ({LPD_URL}) with `--source lpd`"
    )


def read_manifest(shards: str | Path) -> dict:
    """Read ``<shards>/manifest.json`` or raise a DataError that says how to build it."""
    path = Path(shards) / MANIFEST
    if not path.is_file():
        raise DataError(f"no shards at {str(shards)!r}: {path} does not exist; {build_hint(shards)}")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not valid JSON ({exc}); rebuild the shards") from None
    if not isinstance(manifest, dict) or "shards" not in manifest or "shape" not in manifest:
        raise DataError(f"{path} is not a b2b shards manifest (no 'shards' or 'shape'); rebuild the shards")
    if not isinstance(manifest["shards"], list) or not all(isinstance(e, dict) for e in manifest["shards"]):
        raise DataError(f"{path}: 'shards' must be a list of shard entries; rebuild the shards")
    return manifest


def manifest_shape(manifest: dict, shards: str | Path) -> list[int]:
    """The manifest's sample shape ``[tracks, time, pitch]``, checked."""
    shape = manifest.get("shape")
    if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(s, int) and s > 0 for s in shape)):
        raise DataError(
            f"{Path(shards) / MANIFEST}: 'shape' must be [tracks, time, pitch] of positive integers, got "
            f"{shape!r}; rebuild the shards"
        )
    return list(shape)


def shard_path(shards: str | Path, name: object) -> Path:
    """The file of a shard the manifest names, which must lie inside the shards folder (no ``..``, no
    absolute path, no link out)."""
    root = Path(shards).resolve()
    if not isinstance(name, str) or not name or Path(name).is_absolute():
        raise DataError(
            f"{Path(shards) / MANIFEST} names a shard {name!r} that is not a file name in {shards}"
        )
    path = (root / name).resolve()
    if root not in path.parents:
        raise DataError(
            f"{Path(shards) / MANIFEST} names a shard {name!r} outside the shards folder {shards}; "
            "a manifest may only name files inside its own folder: rebuild the shards"
        )
    return path


def manifest_spec(manifest: dict, shards: str | Path):
    """The manifest's :class:`~b2b.spec.RollSpec` (tracks, grid), checked."""

    try:
        return RollSpec.from_dict(manifest["spec"])
    except (KeyError, TypeError, ValueError) as exc:
        where = Path(shards) / MANIFEST
        raise DataError(
            f"{where} has no valid 'spec' ({type(exc).__name__}: {exc}); rebuild the shards"
        ) from None


def reference_split(manifest: dict) -> str:
    """The split real data is measured on: ``val`` when the shards have one, else ``train``."""
    return "val" if manifest.get("n_val") else "train"


def shards_spec(shards: str | Path) -> RollSpec:
    """The RollSpec recorded in a shards folder's manifest."""

    return manifest_spec(read_manifest(shards), shards)


def song_groups(manifest: dict, split: str, indices: np.ndarray) -> np.ndarray | None:
    """The song group (a number, the same for every file of one song) of each sample of ``split`` at
    these positions (in shard order), from the manifest's ``songs``; None for shards built before b2b
    recorded them."""
    songs = manifest.get("songs", {}).get(split)
    if not songs or not songs.get("starts"):
        return None
    run = np.searchsorted(np.asarray(songs["starts"]), np.asarray(indices), side="right") - 1
    return np.asarray(songs["groups"])[run]


def pick_split(shards: str | Path, split: str) -> str:
    """``auto``: ``val`` when the shards have validation samples, else ``train``."""

    return reference_split(read_manifest(shards)) if split == "auto" else split
