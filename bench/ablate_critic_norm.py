"""Critic normalization ablation on the demo corpus: ``model.critic_norm`` = batch, layer, none.

Trains ``configs/demo.yaml`` once per (seed, norm) with everything else equal (same seed, steps, data
order), one run after another with the norms interleaved within each seed, and reads what the trainer
logged in each run's ``metrics.jsonl``: the music distance to real (every ``--metrics-every`` steps, on the
EMA generator), the polyphonic rate against the real one, the Wasserstein estimate and the gradient
penalty, and the time per step (from the logged samples/s).

    python bench/ablate_critic_norm.py --steps 240 --seeds 0 1 --metrics-every 40 --nproc 2
    python bench/ablate_critic_norm.py --report-only          # re-print the tables from the run folders

Runs go to ``runs/ablate-critic-norm/<norm>-s<seed>/`` (deleted and rewritten by each run). Prints
Markdown tables: one row per run, then the mean over seeds per norm.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml
from tqdm import tqdm

from b2b.atomic import read_json_lines
from b2b.checkpoint.folder import read_meta

REPO = Path(__file__).resolve().parent.parent
NORMS = ("batch", "layer", "none")
# No cell of the generated rolls reached train.threshold: every metric is undefined, the distance is 1.
NO_NOTES = "no notes"


def run_dir(root: Path, norm: str, seed: int) -> Path:
    return root / f"{norm}-s{seed}"


def train(root: Path, norm: str, seed: int, args: argparse.Namespace) -> float:
    """One demo run with ``norm`` and ``seed``; returns its wall time in seconds."""
    folder = run_dir(root, norm, seed)
    shutil.rmtree(folder, ignore_errors=True)  # a fresh run, never a resume of an older one
    overrides = [
        f"name={folder.name}",
        f"run_dir={root}",
        f"data.shards={args.shards}",
        f"model.critic_norm={norm}",
        f"train.seed={seed}",
        f"train.steps={args.steps}",
        f"log.metrics_every={args.metrics_every}",
        "log.snapshot_every=0",  # one snapshot at the end
        "log.progress=false",
        "checkpoint.every=0",  # one checkpoint at the end
        "checkpoint.resume=never",
    ]
    if args.nproc == 1:
        cmd = [sys.executable, "-m", "b2b.train"]
    else:
        cmd = [
            *(sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"),
            *("--num_processes", str(args.nproc), "--num_machines", "1", "--mixed_precision", "no"),
            *("--dynamo_backend", "no", "--main_process_port", str(args.port)),
            str(REPO / "b2b" / "train.py"),
        ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    start = time.perf_counter()
    result = subprocess.run(
        [*cmd, "--config", str(REPO / "configs" / "demo.yaml"), *overrides],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise SystemExit(f"run {folder} failed (rc {result.returncode}):\n{result.stderr[-3000:]}")
    return time.perf_counter() - start


def summarize(folder: Path) -> dict:
    """What one run's metrics.jsonl and real_metrics.json say about it."""
    rows = read_json_lines(folder / "metrics.jsonl").rows
    config = yaml.safe_load((folder / "config.yaml").read_text())
    samples_per_step = (
        config["loss"]["n_critic"] * config["data"]["batch_size"] * config["train"]["grad_accum"]
    )
    music = [r for r in rows if "distance_to_real" in r]
    train_rows = [r for r in rows if "d_loss" in r]
    real = json.loads((folder / "real_metrics.json").read_text())
    best = min(music, key=lambda r: r["distance_to_real"])
    tail = train_rows[-5:]  # the last 5 logged steps: the end of the run, less noisy than one line
    # Per-step time from each log window's samples/s (global samples over the ranks): the median drops the
    # windows that also held the music metrics or the first steps' warm-up.
    world = read_meta(folder)["world_size"]
    seconds = [samples_per_step * world / r["samples_per_s"] for r in train_rows]
    return {
        "final_distance": music[-1]["distance_to_real"],
        "final_step": music[-1]["step"],
        "best_distance": best["distance_to_real"],
        "best_step": best["step"],
        "distance_curve": [(r["step"], r["distance_to_real"]) for r in music],
        "poly_final": music[-1].get("music/polyphonic_rate"),
        "poly_real": real.get("polyphonic_rate"),
        "w_final": statistics.fmean(r["wasserstein"] for r in tail),
        "w_max": max(r["wasserstein"] for r in train_rows),
        "penalty_mean": statistics.fmean(r["penalty"] for r in train_rows),
        "grad_norm_final": statistics.fmean(r["grad_norm_x"] for r in tail),
        "s_per_step": statistics.median(seconds),
    }


def fmt(value: float | None, digits: int = 3, missing: str = "n/a") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    return f"{value:.{digits}f}"


def print_tables(results: dict[tuple[str, int], dict], walls: dict[tuple[str, int], float]) -> None:
    print(
        "| critic_norm | seed | final distance to real | best distance (step) | polyphonic rate (real) "
        "| W estimate, last 5 logs | W max | mean penalty | ‖∇D(x̂)‖ at end | s/step | run wall s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for (norm, seed), r in sorted(results.items(), key=lambda kv: (kv[0][1], NORMS.index(kv[0][0]))):
        wall = walls.get((norm, seed))
        print(
            f"| {norm} | {seed} | {fmt(r['final_distance'])} | {fmt(r['best_distance'])} ({r['best_step']}) "
            f"| {fmt(r['poly_final'], missing=NO_NOTES)} ({fmt(r['poly_real'])}) | {fmt(r['w_final'], 2)} "
            f"| {fmt(r['w_max'], 2)} "
            f"| {fmt(r['penalty_mean'])} | {fmt(r['grad_norm_final'], 2)} | {fmt(r['s_per_step'])} "
            f"| {fmt(wall, 0) if wall else 'n/a'} |"
        )
    seeds = sorted({seed for _, seed in results})
    print()
    print(f"Mean over seeds {seeds}:")
    print()
    print(
        "| critic_norm | final distance | best distance | polyphonic rate | W estimate | mean penalty "
        "| s/step |"
    )
    print("|---|---|---|---|---|---|---|")
    for norm in NORMS:
        runs = [r for (n, _), r in results.items() if n == norm]
        if not runs:
            continue

        def mean(key: str, runs: list[dict] = runs) -> float | None:
            values = [r[key] for r in runs if r[key] is not None]
            return statistics.fmean(values) if values else None

        print(
            f"| {norm} | {fmt(mean('final_distance'))} | {fmt(mean('best_distance'))} "
            f"| {fmt(mean('poly_final'), missing=NO_NOTES)} | {fmt(mean('w_final'), 2)} "
            f"| {fmt(mean('penalty_mean'))} "
            f"| {fmt(mean('s_per_step'))} |"
        )
    print()
    print("Distance to real over training (step: distance; 1.000 when the rolls hold no note at all):")
    print()
    for (norm, seed), r in sorted(results.items(), key=lambda kv: (kv[0][1], NORMS.index(kv[0][0]))):
        curve = ", ".join(f"{step}: {d:.3f}" for step, d in r["distance_curve"])
        print(f"- {norm}, seed {seed}: {curve}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=240, help="the demo's train.steps")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--metrics-every", type=int, default=40)
    parser.add_argument("--norms", nargs="+", default=list(NORMS), choices=NORMS)
    parser.add_argument(
        "--nproc", type=int, default=2, help="processes per run (the demo's 2: accelerate, gloo)"
    )
    parser.add_argument("--port", type=int, default=29531)
    parser.add_argument("--shards", default="shards/demo")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "ablate-critic-norm")
    parser.add_argument("--report-only", action="store_true", help="summarize existing run folders")
    args = parser.parse_args()
    if (
        not (REPO / args.shards / "manifest.json").is_file()
        and not (Path(args.shards) / "manifest.json").is_file()
    ):
        raise SystemExit(f"no shards at {args.shards}: build them with `b2b shards build --source demo`")

    walls_path = args.out / "walls.json"
    walls: dict[tuple[str, int], float] = {}
    if walls_path.is_file():
        walls = {(n, int(s)): w for n, s, w in json.loads(walls_path.read_text())}
    if not args.report_only:
        args.out.mkdir(parents=True, exist_ok=True)
        plan = [(norm, seed) for seed in args.seeds for norm in args.norms]
        for norm, seed in tqdm(plan, desc="ablation runs", unit="run"):
            walls[(norm, seed)] = train(args.out, norm, seed, args)
            walls_path.write_text(json.dumps([[n, s, w] for (n, s), w in walls.items()]))
    results = {}
    for norm in args.norms:
        for seed in args.seeds:
            folder = run_dir(args.out, norm, seed)
            if (folder / "metrics.jsonl").is_file() and (folder / "real_metrics.json").is_file():
                results[(norm, seed)] = summarize(folder)
    if not results:
        raise SystemExit(f"no finished runs under {args.out}")
    print(f"\nDemo config, {args.steps} steps, {args.nproc} process(es), seeds {args.seeds}\n")
    print_tables(results, walls)


if __name__ == "__main__":
    main()
