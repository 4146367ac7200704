"""Trainer throughput: its overhead over a bare PyTorch loop, and 2 processes against 1.

1. Overhead (one process, one thread). The real ``Trainer.train_step()`` on the demo config (snapshots,
   music metrics and periodic checkpoints off; ``log.every`` and the progress bar as in the demo) against
   a bare loop written here: the same ``build_models``, ``critic_loss``, ``generator_loss``, Adam
   settings, batch size, ``n_critic``, precision and EMA update, on real demo batches pre-loaded as
   float tensors. The bare loop has no data loader, no DDP wrapper, no loss scaler or gradient-norm check,
   no LR schedulers, no per-step statistics, all-reduce or host sync, no logging. Both run in this
   process, interleaved block by block (each goes first in turn) after warm-up, timed by the wall clock
   and by this process's CPU time (with one thread, the step's own cost, less disturbed by other
   processes). A third loop is the trainer fed the same in-memory batches as the bare loop, which
   separates the data loader's share (``data.num_workers: 0`` in the demo: it reads in the training
   process) from the rest. The overhead is ``bare samples/s / loop samples/s - 1``, per round, median
   over rounds; a second, identical bare loop shows the noise floor of that figure. ``--profile`` then
   profiles trainer and bare steps with cProfile and lists the functions by how much more time they take
   in the trainer.
2. Processes. ``accelerate launch --multi_gpu --num_processes 2`` (gloo on CPU) against one
   ``python -m b2b.train`` process, one thread each, same per-process batch; samples/s (global, all
   ranks) from metrics.jsonl over the log windows after the first, runs interleaved.

    python bench/bench_trainer.py                      # both tables
    python bench/bench_trainer.py --only overhead --repeats 9 --block 10 --profile
    python bench/bench_trainer.py --only processes --mp-steps 60 --mp-repeats 2

Prints Markdown tables. A sample is one real roll fed to the critic: a step takes
``n_critic × batch_size`` of them per process.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import cProfile
import io
import itertools
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from tqdm import tqdm

from b2b.atomic import read_json_lines

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "configs" / "demo.yaml"
BARE, BARE_AGAIN = "bare loop", "bare loop, a second copy (noise floor)"
TRAINER, TRAINER_IN_MEMORY = "Trainer.train_step", "Trainer.train_step, batches in memory"
CLOCKS = ("wall", "cpu")


def demo_overrides(shards: str, run_dir: Path, name: str, precision: str, steps: int) -> list[str]:
    return [
        f"name={name}",
        f"run_dir={run_dir}",
        f"data.shards={shards}",
        f"train.precision={precision}",
        f"train.steps={steps}",
        "log.tracker=none",
        "log.snapshot_every=0",  # 0: only at the end (which the overhead bench never reaches)
        "log.metrics_every=0",
        "checkpoint.every=0",
        "checkpoint.resume=never",
    ]


# ---------------------------------------------------------------------------------------------------
# 1. The trainer against a bare loop


class BareLoop:
    """The WGAN-GP step and nothing else: same networks, losses, optimizers, batch, n_critic and EMA."""

    def __init__(self, cfg, shape: list[int], n_bars: int, batches: list[torch.Tensor]):
        from b2b.model.networks import build_models
        from b2b.training.network import Precision, build_optimizer, resolve_precision

        self.cfg = cfg
        torch.manual_seed(cfg.train.seed)
        self.g, self.d = build_models(cfg, shape, n_bars)
        self.ema = copy.deepcopy(self.g).requires_grad_(False).eval()
        self.opt_g = build_optimizer(self.g, cfg.optim.g_lr, cfg.optim.betas, cfg.train.adam)
        self.opt_d = build_optimizer(self.d, cfg.optim.d_lr, cfg.optim.betas, cfg.train.adam)
        self.batches = itertools.cycle(batches)
        self.autocast = Precision(
            resolve_precision(cfg.train.precision, torch.device("cpu"))[0], "cpu"
        ).autocast

    def step(self) -> None:
        from b2b.model.ema import update_ema
        from b2b.training.losses import critic_loss, generator_loss

        cfg = self.cfg
        self.g.requires_grad_(False)
        self.d.requires_grad_(True)
        for _ in range(cfg.loss.n_critic):
            real = next(self.batches)
            with torch.no_grad(), self.autocast():
                fake = self.g(torch.randn(real.shape[0], cfg.model.latent_dim))
            with self.autocast():
                loss = critic_loss(self.d, real, fake, gp_lambda=cfg.loss.gp_lambda)
            loss.total.backward()
            self.opt_d.step()
            self.opt_d.zero_grad(set_to_none=True)
        self.d.requires_grad_(False)
        self.g.requires_grad_(True)
        with self.autocast():
            g_loss = generator_loss(self.d, self.g(torch.randn(cfg.data.batch_size, cfg.model.latent_dim)))
        g_loss.backward()
        self.opt_g.step()
        self.opt_g.zero_grad(set_to_none=True)
        update_ema(self.ema, self.g, cfg.train.ema_beta)


def build_trainer(shards: str, run_dir: Path, precision: str):
    from b2b.config import load_config
    from b2b.training.preflight import validate_for_training
    from b2b.training.trainer import Trainer

    cfg = load_config(DEMO, demo_overrides(shards, run_dir, "bench-trainer", precision, 10**9))
    manifest = validate_for_training(cfg)
    # The progress bar stays on as in the demo (its cost is part of the overhead); it draws into a buffer.
    with contextlib.redirect_stderr(io.StringIO()):
        trainer = Trainer(cfg, manifest)
    with contextlib.redirect_stdout(io.StringIO()):
        trainer.open()
        trainer.begin()
    return trainer


def preload_batches(cfg, n: int) -> list[torch.Tensor]:
    from b2b.data.loader import TrainLoader

    loader = TrainLoader(cfg.data.shards, batch_size=cfg.data.batch_size, rank=0, world_size=1, seed=1)
    return list(itertools.islice(iter(loader), n))


def bench_overhead(args: argparse.Namespace, run_dir: Path) -> dict:
    trainer = build_trainer(args.shards, run_dir, args.precision)
    cfg = trainer.cfg
    preloaded = preload_batches(cfg, 4 * cfg.loss.n_critic)
    bare = BareLoop(cfg, cfg.data.shape, trainer.spec.n_bars, [b.float() for b in preloaded])
    # An identical second bare loop: its "overhead" over the first is the measurement's noise floor.
    bare_again = BareLoop(cfg, cfg.data.shape, trainer.spec.n_bars, [b.float() for b in preloaded])
    samples_per_step = cfg.loss.n_critic * cfg.data.batch_size * cfg.train.grad_accum
    from_loader = trainer.batches
    in_memory = itertools.cycle(preloaded)  # bool, as the loader yields them: next_real still converts

    def trainer_step(batches) -> None:
        trainer.batches = batches
        if trainer.train_step():
            raise SystemExit("interrupted")

    variants = {
        BARE: bare.step,
        BARE_AGAIN: bare_again.step,
        TRAINER: lambda: trainer_step(from_loader),
        TRAINER_IN_MEMORY: lambda: trainer_step(in_memory),
    }
    # Wall-clock and this process's CPU time per block: with one thread, CPU time is what the step itself
    # costs, much less disturbed by other processes on a shared machine than the wall clock.
    rates: dict[str, dict[str, list[float]]] = {clock: {name: [] for name in variants} for clock in CLOCKS}
    for rep in tqdm(range(args.warmup + args.repeats), desc="overhead", unit="round"):
        names = list(variants)
        order = names[rep % len(names) :] + names[: rep % len(names)]  # each goes first in turn
        for name in order:
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(args.block):
                variants[name]()
            elapsed = {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}
            if rep >= args.warmup:
                for clock in CLOCKS:
                    rates[clock][name].append(args.block * samples_per_step / elapsed[clock])
    result = {"rates": rates, "samples_per_step": samples_per_step, "loader_ms": loader_cpu_ms(cfg)}
    if args.profile:
        trainer.batches = from_loader
        result["profile"] = profile_steps(trainer, bare, args.profile_steps)
    trainer.close()
    return result


def loader_cpu_ms(cfg, batches: int = 200) -> float:
    """CPU milliseconds per batch of the loader in the training process (num_workers 0), ``.float()``
    included."""
    from b2b.data.loader import TrainLoader

    loader = TrainLoader(cfg.data.shards, batch_size=cfg.data.batch_size, rank=0, world_size=1, seed=2)
    stream = iter(loader)
    next(stream)
    start = time.process_time()
    for batch in itertools.islice(stream, batches):
        batch.float()
    return 1000 * (time.process_time() - start) / batches


def profile_steps(trainer, bare: BareLoop, steps: int) -> str:
    """cProfile ``steps`` steps of each; list the functions by own time, trainer and bare side by side."""
    stats = {}
    for name, fn in (("trainer", trainer.train_step), ("bare", bare.step)):
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(steps):
            fn()
        profiler.disable()
        stats[name] = pstats.Stats(
            profiler
        ).stats  # {(file, line, func): (cc, nc, tottime, cumtime, callers)}
    out = io.StringIO()
    total = {name: sum(v[2] for v in s.values()) for name, s in stats.items()}
    out.write(f"cProfile of {steps} steps: trainer {total['trainer']:.2f} s, bare {total['bare']:.2f} s\n\n")
    out.write(
        "| function (file:line) | trainer tottime s | bare tottime s | trainer calls |\n|---|---|---|---|\n"
    )
    keys = sorted(
        stats["trainer"],
        key=lambda k: stats["trainer"][k][2] - stats["bare"].get(k, (0, 0, 0.0))[2],
        reverse=True,
    )
    for key in keys[:25]:
        file, line, func = key
        mine = stats["trainer"][key]
        theirs = stats["bare"].get(key, (0, 0, 0.0, 0.0))
        where = f"{os.path.relpath(file, REPO) if file.startswith('/') else file}:{line} {func}"
        out.write(f"| `{where}` | {mine[2]:.3f} | {theirs[2]:.3f} | {mine[1]} |\n")
    out.write(
        "\nb2b functions by cumulative time (trainer):\n\n| function | cumtime s | calls |\n|---|---|---|\n"
    )
    b2b = [(k, v) for k, v in stats["trainer"].items() if f"{os.sep}b2b{os.sep}" in k[0]]
    for (file, line, func), v in sorted(b2b, key=lambda kv: kv[1][3], reverse=True)[:20]:
        out.write(f"| `{os.path.relpath(file, REPO)}:{line} {func}` | {v[3]:.3f} | {v[1]} |\n")
    return out.getvalue()


def print_overhead(result: dict, args: argparse.Namespace) -> None:
    rates, per_step = result["rates"], result["samples_per_step"]
    print(
        f"\n### Trainer overhead (demo config, {args.precision}, 1 process, 1 thread; "
        f"{args.repeats} rounds of interleaved blocks of {args.block} steps after {args.warmup} warm-up "
        f"rounds; {per_step} samples per step)\n"
    )
    print(
        "| loop | samples/s, wall (median, min–max) | samples/s, CPU time (median) | CPU s/step "
        "| overhead, wall | overhead, CPU |"
    )
    print("|---|---|---|---|---|---|")
    for name in rates["wall"]:
        wall, cpu = rates["wall"][name], rates["cpu"][name]
        overhead = {}
        for clock in CLOCKS:
            # Per round, bare rate / this rate - 1; the median over rounds (pairs measured side by side).
            ratios = [b / t - 1 for b, t in zip(rates[clock][BARE], rates[clock][name], strict=True)]
            overhead[clock] = f"{100 * statistics.median(ratios):+.1f}%" if name != BARE else "—"
        print(
            f"| {name} | {statistics.median(wall):.1f} ({min(wall):.1f}–{max(wall):.1f}) "
            f"| {statistics.median(cpu):.1f} | {per_step / statistics.median(cpu):.3f} "
            f"| {overhead['wall']} | {overhead['cpu']} |"
        )
    print("\nOverhead = bare samples/s ÷ loop samples/s − 1, median over rounds; goal ≤ 5%.")
    bare_step_ms = 1000 * per_step / statistics.median(rates["cpu"][BARE])
    n_batches = per_step // args.batch_size
    print(
        f"The loader alone (in the training process, as data.num_workers: 0): {result['loader_ms']:.2f} "
        f"CPU ms per batch, {n_batches} batches per step = "
        f"{100 * n_batches * result['loader_ms'] / bare_step_ms:.1f}% of a bare step "
        f"({bare_step_ms:.0f} CPU ms)."
    )
    if "profile" in result:
        print("\n" + result["profile"])


# ---------------------------------------------------------------------------------------------------
# 2. Two processes against one


def launch(nproc: int, args: argparse.Namespace, run_dir: Path, port: int) -> list[float]:
    """Run the demo config on ``nproc`` processes; return each logged window's global samples/s."""
    name = f"procs-{nproc}"
    overrides = demo_overrides(args.shards, run_dir, name, args.precision, args.mp_steps)
    overrides += ["log.progress=false", f"log.every={args.mp_log_every}"]
    if nproc == 1:
        cmd = [sys.executable, "-m", "b2b.train"]
    else:
        cmd = [
            *(sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"),
            *("--num_processes", str(nproc), "--num_machines", "1", "--mixed_precision", "no"),
            *("--dynamo_backend", "no", "--main_process_ip", "127.0.0.1", "--main_process_port", str(port)),
            str(REPO / "b2b" / "train.py"),
        ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    result = subprocess.run(
        [*cmd, "--config", str(DEMO), *overrides], cwd=REPO, env=env, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise SystemExit(f"{nproc}-process run failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    lines = read_json_lines(run_dir / name / "metrics.jsonl").rows
    return [x["samples_per_s"] for x in lines if "samples_per_s" in x]


def bench_processes(args: argparse.Namespace, run_dir: Path) -> dict:
    windows: dict[int, list[float]] = {1: [], 2: []}
    plan = [n for _ in range(args.mp_repeats) for n in (1, 2)]
    for i, nproc in enumerate(tqdm(plan, desc="processes", unit="run")):
        rates = launch(nproc, args, run_dir / f"r{i}", args.port + i)
        windows[nproc] += rates[args.mp_warmup_windows :]  # the first windows hold warm-up
    # Windows of equal step counts: total samples / total time is the harmonic mean of their rates.
    return {n: statistics.harmonic_mean(w) for n, w in windows.items()} | {"windows": windows}


def print_processes(result: dict, args: argparse.Namespace) -> None:
    one, two = result[1], result[2]
    print(
        f"\n### 2 processes against 1 (demo config, {args.precision}, CPU, gloo, 1 thread per process, "
        f"{args.mp_steps} steps per run, {args.mp_repeats} runs each interleaved; samples/s over the log "
        f"windows of {args.mp_log_every} steps after the first {args.mp_warmup_windows})\n"
    )
    print(
        "| processes | global batch | samples/s (all ranks) | per process | speed-up | scaling efficiency |"
    )
    print("|---|---|---|---|---|---|")
    batch = args.batch_size
    print(f"| 1 | {batch} | {one:.1f} | {one:.1f} | 1.00× | 100% |")
    print(
        f"| 2 | {2 * batch} | {two:.1f} | {two / 2:.1f} | {two / one:.2f}× | {100 * two / (2 * one):.0f}% |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("overhead", "processes"), help="run one of the two benchmarks")
    parser.add_argument("--shards", default="shards/demo")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--warmup", type=int, default=2, help="warm-up blocks per loop")
    parser.add_argument("--repeats", type=int, default=7, help="timed blocks per loop")
    parser.add_argument("--block", type=int, default=10, help="steps per block (a multiple of log.every)")
    parser.add_argument("--profile", action="store_true", help="cProfile trainer and bare steps afterwards")
    parser.add_argument("--profile-steps", type=int, default=20)
    parser.add_argument("--mp-steps", type=int, default=60)
    parser.add_argument("--mp-log-every", type=int, default=10)
    parser.add_argument("--mp-warmup-windows", type=int, default=1)
    parser.add_argument("--mp-repeats", type=int, default=2)
    parser.add_argument("--port", type=int, default=29561)
    args = parser.parse_args()
    os.chdir(REPO)  # shards paths in configs are relative to the repository
    torch.set_num_threads(1)
    from b2b.config import load_config

    args.batch_size = load_config(DEMO).data.batch_size
    load = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average {load:.2f} at start")
    with tempfile.TemporaryDirectory(prefix="b2b-bench-trainer-") as tmp:
        if args.only in (None, "overhead"):
            print_overhead(bench_overhead(args, Path(tmp) / "overhead"), args)
        if args.only in (None, "processes"):
            print_processes(bench_processes(args, Path(tmp) / "procs"), args)
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
