"""Loader throughput: b2b's TrainLoader over shards against a naive per-song ``.npz`` loader (not a test).

The data: an LPD-17-shaped corpus in LPD's real on-disk format (``<A>/<B>/<C>/<MSD id>/<md5>.npz``
written with pypianoroll by ``tests/lpd_fixtures.py``), sharded with ``b2b shards build --source lpd``.

The naive loader does what notebook code does: for each song, ``pypianoroll.load`` the ``.npz``,
binarize, ``set_resolution(12)`` (LPD's 24 steps per beat down to the model's 12), pad the tracks to one
length, stack, crop pitches 24..107, slice 4-bar windows (192 steps) and stack them into batches.

Both loaders produce the same thing: bool tensors of shape (batch, 17, 192, 84). Runs are interleaved
(naive, b2b with 0 workers, b2b with 1 worker, repeated) and the median of each is reported. Every
process is limited to one thread, so samples/s is per core (with 1 worker: per worker process).

Usage::

    python bench/bench_loader.py                 # ~2 minutes on 2 cores
    python bench/bench_loader.py --songs 120 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import pypianoroll  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from lpd_fixtures import write_lpd_tree  # noqa: E402

from b2b.cli.main import main as b2b_main  # noqa: E402
from b2b.data.loader import TrainLoader  # noqa: E402

STEPS_PER_BEAT = 12
WINDOW = 4 * 4 * STEPS_PER_BEAT  # 4 bars of 4 beats
LOW, HIGH = 24, 108  # pitch rows kept (84)


def naive_batches(paths: list[Path], batch_size: int, seed: int):
    """Batches the way a notebook makes them: whole songs loaded with pypianoroll, windows sliced."""
    rng = np.random.default_rng(seed)
    pending: list[np.ndarray] = []
    while True:
        for i in rng.permutation(len(paths)):
            song = pypianoroll.load(paths[i]).binarize().set_resolution(STEPS_PER_BEAT).pad_to_same()
            roll = song.stack()[:, :, LOW:HIGH] > 0
            for start in range(0, roll.shape[1] - WINDOW + 1, WINDOW):
                pending.append(roll[:, start : start + WINDOW])
                if len(pending) == batch_size:
                    yield torch.from_numpy(np.stack(pending))
                    pending = []


def _cpu_seconds() -> tuple[float, float]:
    """CPU seconds used so far by this process and by its children (the DataLoader workers)."""
    me = psutil.Process()
    used = []
    for proc in [me, *me.children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        used.append(times.user + times.system)
    return used[0], sum(used[1:])


def measure(batches, n_batches: int) -> tuple[float, float, float, float]:
    """Samples per wall-clock second and per CPU second; CPU µs per sample in the main process and in
    the workers.

    Counted over ``n_batches`` after the first, which pays for start-up (worker fork, epoch plan). CPU
    seconds add up every process of the loader: with one worker, the worker's and the main process's.
    """
    first = next(batches)
    wall, (main, workers) = time.perf_counter(), _cpu_seconds()
    for _ in range(n_batches):
        batch = next(batches)
    end_main, end_workers = _cpu_seconds()
    wall, main, workers = time.perf_counter() - wall, end_main - main, end_workers - workers
    assert batch.dtype == torch.bool and batch.shape == first.shape
    samples = n_batches * batch.shape[0]
    return samples / wall, samples / (main + workers), main / samples * 1e6, workers / samples * 1e6


def build(workdir: Path, n_songs: int) -> tuple[list[Path], Path]:
    lpd = workdir / "lpd_17_cleansed"
    shards = workdir / "shards"
    if not (shards / "manifest.json").is_file():
        shutil.rmtree(workdir, ignore_errors=True)
        print(f"writing {n_songs} LPD-17 songs to {lpd} ...", flush=True)
        write_lpd_tree(lpd, n_songs, seed=1, n_bars=(64, 128))
        code = b2b_main(
            ["shards", "build", "--source", "lpd", "--input", str(lpd), "--output", str(shards),
             "--val-fraction", "0", "--shard-size", "500", "--workers", "2"]
        )  # fmt: skip
        if code:
            raise SystemExit(f"b2b shards build failed with exit code {code}")
    return sorted(lpd.rglob("*.npz")), shards


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "b2b-bench-loader")
    parser.add_argument("--songs", type=int, default=80, help="songs in the corpus (64..128 bars each)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions of each run")
    parser.add_argument("--naive-batches", type=int, default=20)
    parser.add_argument("--b2b-batches", type=int, default=150)
    args = parser.parse_args()
    torch.set_num_threads(1)

    paths, shards = build(args.workdir, args.songs)
    manifest = json.loads((shards / "manifest.json").read_text())
    n_samples = manifest["n_train"] + manifest["n_val"]
    shard_bytes = sum((shards / s["name"]).stat().st_size for s in manifest["shards"]) / n_samples
    source_bytes = sum(p.stat().st_size for p in paths) / n_samples
    dense_bytes = int(np.prod(manifest["shape"]))

    names = ("naive: pypianoroll.load per song", "b2b TrainLoader, 0 workers", "b2b TrainLoader, 1 worker")
    runs: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in names}
    for r in range(args.rounds):
        runs[names[0]].append(measure(naive_batches(paths, args.batch_size, seed=r), args.naive_batches))
        for workers, name in ((0, names[1]), (1, names[2])):
            loader = TrainLoader(
                shards, batch_size=args.batch_size, rank=0, world_size=1, seed=r, num_workers=workers
            )
            batches = iter(loader)
            runs[name].append(measure(batches, args.b2b_batches))
            batches.close()  # stops the worker before the next run
        done = ", ".join(f"{v[-1][1]:.0f}" for v in runs.values())
        print(f"round {r + 1}/{args.rounds}, samples per CPU-second: {done}", flush=True)

    wall, cpu, main, worker = (
        {name: statistics.median(v[i] for v in values) for name, values in runs.items()} for i in range(4)
    )
    print(
        f"\n{len(paths)} songs, {n_samples} windows of shape {tuple(manifest['shape'])}, "
        f"batch {args.batch_size}, medians of {args.rounds} interleaved rounds, 1 thread per process\n"
    )
    print(
        "| loader | samples per CPU-second | vs naive | CPU per sample: main process | CPU per sample: "
        "worker | samples/s (wall) | vs naive |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in names:
        in_worker = f"{worker[name]:,.0f} µs" if worker[name] > 0 else "-"
        print(
            f"| {name} | {cpu[name]:,.0f} | {cpu[name] / cpu[names[0]]:.1f}× | {main[name]:,.0f} µs "
            f"| {in_worker} | {wall[name]:,.0f} | {wall[name] / wall[names[0]]:.1f}× |"
        )
    print("\n| storage | bytes per sample |")
    print("| --- | ---: |")
    print(f"| LPD `.npz` source (pypianoroll, compressed sparse) | {source_bytes:,.0f} |")
    print(f"| b2b shards (`packbits+zlib` members in tar) | {shard_bytes:,.0f} |")
    print(f"| dense bool array | {dense_bytes:,} |")


if __name__ == "__main__":
    main()
