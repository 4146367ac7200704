"""``b2b shards``: build WebDataset shards of fixed piano-roll windows , and inspect them.

b2b shards build --source midi --input my_midi/ --output shards/my-midi --tracks lpd5
b2b shards inspect shards/my-midi --verify
"""

from __future__ import annotations

import argparse
import json
import os
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np

from b2b.atomic import file_sha256
from b2b.data.codec import decode_roll
from b2b.data.manifest import MANIFEST, manifest_spec, read_manifest, shard_path
from b2b.data.shards import DEFAULTS, BuildOptions, build_shards
from b2b.data.sources import LAYOUTS
from b2b.data.windows import WindowParams
from b2b.errors import ConfigError, DataError
from b2b.eval.render import save_roll_grid
from b2b.spec import RollSpec

# ---------------------------------------------------------------------------------------------------
# Reading shards back (inspect)


def read_samples(
    shards_dir: str | Path, record: dict, shape: tuple[int, ...], limit: int | None = None
) -> np.ndarray:
    """Decode the samples of one shard (at most ``limit``) to a bool array ``(N, *shape)``."""
    rolls: list[np.ndarray] = []
    with tarfile.open(shard_path(shards_dir, record["name"])) as tar:
        for member in tar:
            if limit is not None and len(rolls) >= limit:
                break
            data = tar.extractfile(member)
            assert data is not None, f"{member.name} is not a file"  # b2b's shards hold only samples
            rolls.append(decode_roll(data.read(), shape))
    return np.stack(rolls) if rolls else np.zeros((0, *shape), bool)


def verify_shards(shards_dir: str | Path, manifest: dict) -> list[str]:
    """Problems found in the shards listed by ``manifest`` (empty when every file, hash and sample checks)."""
    problems = []
    shape = tuple(manifest["shape"])
    for record in manifest["shards"]:
        path = shard_path(shards_dir, record["name"])
        if not path.is_file():
            problems.append(f"{record['name']}: missing")
            continue
        if file_sha256(path) != record["sha256"]:
            problems.append(f"{record['name']}: sha256 differs from the manifest (changed or damaged)")
            continue
        member = None
        try:
            with tarfile.open(path) as tar:
                members = [m for m in tar if m.isfile()]
                for member in members:
                    data = tar.extractfile(member)
                    assert data is not None  # a file: extractfile gives None only for other members
                    decode_roll(data.read(), shape)
        except (tarfile.TarError, ValueError) as exc:
            where = f"sample {member.name.rsplit('.', 1)[0]!r}: " if member is not None else ""
            problems.append(f"{record['name']}: {where}{exc}")
            continue
        if len(members) != record["n"]:
            problems.append(
                f"{record['name']}: holds {len(members)} samples, the manifest says {record['n']}"
            )
    return problems


def summary(shards_dir: str | Path, manifest: dict) -> str:
    """A human-readable summary of a shards folder."""
    spec = manifest_spec(manifest, shards_dir)
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
    spec = manifest_spec(manifest, shards_dir)
    rolls = read_samples(shards_dir, records[0], spec.shape, limit=n)
    # Beside the user, not inside the data folder (which may be shared or read-only).
    path = Path(png) if png is not None else Path(f"{shards_dir.resolve().name}-{split}.png")
    if path.is_dir():
        raise DataError(
            f"--png {str(path)!r} is a folder; give the image's file name, e.g. {path / 'samples.png'}"
        )
    if path.suffix.lower() != ".png":
        raise DataError(f"--png {str(path)!r} must end in .png, e.g. {str(path.with_suffix('.png'))!r}")
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
    insp.add_argument("--png", type=Path, help="image path (default: ./<DIR name>-<split>.png)")
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
