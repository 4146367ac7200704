"""Recipe ablation: which training defaults learn music on several real corpora, not one.

Trains a config (``configs/demo.yaml`` by default) changed only in its data and in one variant's
overrides, for every (corpus, variant, seed), then generates 256 samples from the final EMA generator and
measures them against the corpus (``b2b.eval.reference``: music statistics, diversity, precision/recall,
copies, per-voice playing share and density). A run *passes* when every track that plays in the corpus
plays in its real share of bars within ``--plays-tol`` points at 0.5-2x the real density, every track
silent in the corpus stays silent, the diversity is at least ``--min-diversity`` of real and no sample is a
near-copy of a training sample.

    python bench/corpora.py --out corpora        # the sources, once (see its docstring)
    python bench/ablate_recipe.py --build-shards corpora       # shard them, once
    python bench/ablate_recipe.py --variants default no-binary --seeds 0 1
    python bench/ablate_recipe.py --report-only  # re-print the tables from the run folders

Corpora (``--corpora NAME=SHARDS ...``; the default set is below) are shards folders. Each run goes to
``runs/ablate-recipe/<corpus>/<variant>-s<seed>/`` and is skipped when its ``eval.json`` exists (delete the
folder to redo it), so an interrupted ablation continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# name -> (b2b shards build arguments, shards folder name). Sources come from bench/corpora.py.
CORPORA_BUILD = {
    "chorales": ["--source", "demo"],
    "madrigals": ["--source", "lpd", "--input", "{src}/madrigals", "--hop-bars", "1"],
    "palestrina": ["--source", "lpd", "--input", "{src}/palestrina", "--hop-bars", "2"],
    "folk": [
        *("--source", "midi", "--input", "{src}/folk", "--tracks", "lpd5", "--hop-bars", "2"),
        *("--lowest-pitch", "24", "--n-pitches", "84"),
    ],
}
GRID = ["--n-bars", "4", "--steps-per-bar", "16"]
DEFAULT_CORPORA = [f"{name}=shards/ablate-{name}" for name in CORPORA_BUILD]

# Each variant changes the config under test in a few keys; "default" is the config as it is.
VARIANTS: dict[str, list[str]] = {
    "default": [],
    # The demo as it was before this recipe (it collapsed): probabilities to the critic, no output bias
    # from the data, no bar gate, every critic layer normalized, a plain EMA.
    "before": [
        *("model.output=sigmoid", "model.density_init=false", "model.pitch_bias=false"),
        "model.bar_gate=false",
        *("model.critic_norm_first=true", "train.ema_rampup=0", "optim.anneal=0"),
    ],
    # The seed project's recipe on the same networks (configs/seed.yaml): also its learning rates, its
    # batch-normalized critic, its 0.9 threshold and no EMA (samples from the raw generator).
    "seed-recipe": [
        *("model.output=sigmoid", "model.density_init=false", "model.pitch_bias=false"),
        "model.bar_gate=false",
        *(
            "model.critic_norm=batch",
            "model.critic_norm_first=true",
            "train.ema_beta=0",
            "train.ema_rampup=0",
        ),
        *("optim.g_lr=0.0003", "optim.d_lr=0.0006", "optim.anneal=0", "train.threshold=0.9"),
    ],
    "sigmoid": ["model.output=sigmoid"],
    "binary-stoch": ["model.output=binary_stoch"],
    "no-density-init": ["model.density_init=false"],
    "no-bar-gate": ["model.bar_gate=false"],
    "lr-3e-4": ["optim.g_lr=0.0003", "optim.d_lr=0.0003"],
    "ttur": ["optim.g_lr=0.0005", "optim.d_lr=0.002"],
    "n-critic-2": ["loss.n_critic=2"],
    "mbstd": ["model.mbstd_group=4"],
    "norm-first": ["model.critic_norm_first=true"],
    "transpose": ["data.transpose=5"],
    "ema-0.999": ["train.ema_beta=0.999"],
    "no-ema-rampup": ["train.ema_rampup=0"],
    "no-ema": ["train.ema_beta=0"],
    "no-anneal": ["optim.anneal=0"],
    "anneal-1": ["optim.anneal=1.0"],
}


def parse_corpora(items: list[str]) -> dict[str, Path]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            raise SystemExit(f"--corpora takes NAME=SHARDS, got {item!r}")
        out[name] = Path(path)
    return out


def build_shards(src: Path, corpora: dict[str, Path]) -> None:
    for name, shards in corpora.items():
        if (shards / "manifest.json").is_file():
            continue
        args = [a.format(src=src) for a in CORPORA_BUILD[name]]
        grid = (
            []
            if name == "chorales"
            else GRID + (["--lowest-pitch", "36", "--n-pitches", "48"] if name != "folk" else [])
        )
        subprocess.run(["b2b", "shards", "build", *args, *grid, "--output", str(shards)], check=True)


def train(run: Path, shards: Path, variant: str, seed: int, args: argparse.Namespace) -> float:
    shutil.rmtree(run, ignore_errors=True)
    overrides = [
        f"name={run.name}",
        f"run_dir={run.parent}",
        f"data.shards={shards}",
        f"train.seed={seed}",
        *VARIANTS[variant],
        *args.set,
        "log.progress=false",
        f"log.metrics_every={args.metrics_every}",
        "log.snapshot_every=0",
        "checkpoint.every=0",
        "checkpoint.resume=never",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if args.nproc > 1:
        launcher = [
            *(
                "accelerate",
                "launch",
                "--multi_gpu",
                "--num_processes",
                str(args.nproc),
                "--num_machines",
                "1",
            ),
            *("--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(args.port)),
            str(REPO / "b2b" / "train.py"),
        ]
    else:
        launcher = [sys.executable, "-m", "b2b.train"]
    run.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(run.parent / f"{run.name}.log", "w") as log:
        subprocess.run(
            [*launcher, "--config", args.config, *overrides], check=True, stdout=log, stderr=log, env=env
        )
    return time.perf_counter() - start


def evaluate(run: Path, shards: Path, wall: float, split: str = "train") -> dict:
    import numpy as np

    from b2b.checkpoint.folder import read_meta
    from b2b.checkpoint.inference import load_generator
    from b2b.eval.generate import generate, to_notes
    from b2b.eval.reference import RealReference

    generator, spec, cfg = load_generator(run)
    rolls = to_notes(generate(generator, 256, 0), generator.output, cfg.train.threshold, 0)
    # Against the training split: a corpus's few validation songs can miss a voice the model learned.
    result = RealReference.from_shards(shards, spec, split=split, kept=len(rolls)).compare(rolls).to_dict()
    result["steps"] = read_meta(run)["step"]
    result["wall_s"] = wall
    result["samples_per_note_cell"] = float(np.mean(rolls))
    return result


def verdict(result: dict, plays_tol: float, min_diversity: float) -> dict:
    voices = [r for r in result["voices"] if r["plays_real"] > 0]
    silent = [r for r in result["voices"] if r["plays_real"] == 0]
    plays_gap = max(abs(r["plays"] - r["plays_real"]) for r in voices)
    ratios = [r["density_ratio"] for r in voices]
    copies = result["copies"]["near"] if result["copies"] else 0.0
    mono = [
        (r["mono"] or 0.0, r["mono_real"])
        for r in voices
        if r["mono_real"] is not None and r["mono_real"] >= 0.9
    ]
    checks = {
        "plays": plays_gap <= plays_tol,
        "density": all(0.5 <= x <= 2.0 for x in ratios),
        "silent": all(r["ok"] for r in silent),
        "diversity": (result["diversity_ratio"] or 0.0) >= min_diversity,
        "copies": copies == 0.0,
    }
    return {
        "plays_gap": plays_gap,
        "density_min": min(ratios),
        "density_max": max(ratios),
        "silent_playing": sum(not r["ok"] for r in silent),
        "mono": statistics.mean(m for m, _ in mono) if mono else None,
        "mono_real": statistics.mean(r for _, r in mono) if mono else None,
        "copies": copies,
        "checks": checks,
        "pass": all(checks.values()),
    }


def report(root: Path, corpora: dict[str, Path], variants: list[str], seeds: list[int], args) -> None:
    rows, summary = [], {}
    for variant in variants:
        for name in corpora:
            for seed in seeds:
                path = root / name / f"{variant}-s{seed}" / "eval.json"
                if not path.is_file():
                    continue
                result = json.loads(path.read_text())
                v = verdict(result, args.plays_tol, args.min_diversity)
                summary.setdefault(variant, []).append((name, v, result))
                failed = ", ".join(k for k, ok in v["checks"].items() if not ok) or "-"
                mono = "-" if v["mono"] is None else f"{100 * v['mono']:.0f}% ({100 * v['mono_real']:.0f}%)"
                rows.append(
                    f"| {name} | {variant} | {seed} | {result['distance_to_real']:.3f} | "
                    f"{result['diversity_ratio'] or 0:.2f} | {result['precision']:.2f} | "
                    f"{result['recall']:.2f} | "
                    f"{100 * v['plays_gap']:.0f} | {v['density_min']:.2f}–{v['density_max']:.2f} | "
                    f"{v['silent_playing']} | {mono} | {100 * v['copies']:.1f}% | "
                    f"{'**pass**' if v['pass'] else 'fail: ' + failed} | {result['wall_s']:.0f} |"
                )
    print(
        "| corpus | variant | seed | distance | diversity | precision | recall | worst plays gap (pts) | "
        "density × real | silent tracks playing | one note (real) | near-copies | verdict | wall s |"
    )
    print("|" + "---|" * 14)
    print("\n".join(rows))
    print()
    print(
        "| variant | runs | passed | mean distance | mean diversity | mean recall | worst plays gap (pts) |"
    )
    print("|---|---|---|---|---|---|---|")
    for variant, entries in summary.items():
        passed = sum(v["pass"] for _, v, _ in entries)
        print(
            f"| {variant} | {len(entries)} | {passed} | "
            f"{statistics.mean(r['distance_to_real'] for _, _, r in entries):.3f} | "
            f"{statistics.mean(r['diversity_ratio'] or 0 for _, _, r in entries):.2f} | "
            f"{statistics.mean(r['recall'] for _, _, r in entries):.2f} | "
            f"{100 * max(v['plays_gap'] for _, v, _ in entries):.0f} |"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    parser.add_argument("--corpora", nargs="*", default=DEFAULT_CORPORA, help="NAME=SHARDS ...")
    parser.add_argument("--variants", nargs="*", default=["default"], choices=sorted(VARIANTS))
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1])
    parser.add_argument("--set", nargs="*", default=[], help="extra key=value overrides for every run")
    parser.add_argument("--root", default="runs/ablate-recipe")
    parser.add_argument("--nproc", type=int, default=2, help="ranks per run (the demo uses 2)")
    parser.add_argument("--port", type=int, default=29533)
    parser.add_argument(
        "--metrics-every", type=int, default=0, help="in-training metrics (0: only at the end)"
    )
    parser.add_argument("--plays-tol", type=float, default=0.15)
    parser.add_argument("--min-diversity", type=float, default=0.7)
    parser.add_argument(
        "--build-shards", metavar="SOURCES", help="shard the corpora from bench/corpora.py's folder"
    )
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    corpora = parse_corpora(args.corpora)
    root = Path(args.root)
    if args.build_shards:
        build_shards(Path(args.build_shards), corpora)
        return 0
    if not args.report_only:
        for seed in args.seeds:
            for name, shards in corpora.items():
                for variant in args.variants:
                    run = root / name / f"{variant}-s{seed}"
                    if (run / "eval.json").is_file():
                        continue
                    wall = train(run, shards, variant, seed, args)
                    result = evaluate(run, shards, wall)
                    (run / "eval.json").write_text(json.dumps(result, indent=2))
                    v = verdict(result, args.plays_tol, args.min_diversity)
                    print(
                        f"{name} {variant} s{seed}: distance {result['distance_to_real']:.3f}, diversity "
                        f"{result['diversity_ratio'] or 0:.2f}, plays gap {100 * v['plays_gap']:.0f} pts, "
                        "density "
                        f"{v['density_min']:.2f}-{v['density_max']:.2f}, {'pass' if v['pass'] else 'fail'} "
                        f"({wall:.0f} s)",
                        flush=True,
                    )
    report(root, corpora, args.variants, args.seeds, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
