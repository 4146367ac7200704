"""Throughput of the real trainer for a grid of speed switches: samples/s, FLOP/s, MFU and peak memory.

What runs. ``Trainer.train_step()``, the step a user's run takes: ``loss.n_critic`` critic
updates with the gradient penalty, one generator update, the EMA, the statistics all-reduce with its host
sync and the periodic log line, with the batches from the trainer's own ``TrainLoader``. The trainer is
built from a shipped config (model widths, batch size, ``n_critic``, ``data.num_workers``), with only the
switches under test overridden (``train.precision``, ``train.compile``, ``train.channels_last``,
``train.adam``) and the periodic work a benchmark must not time switched off (snapshots, music metrics,
checkpoints, trackers, the progress bar, the stall watchdog).

Shapes (``--shape``): ``demo`` is configs/demo.yaml at [4, 64, 48] (the chorale shards' shape); ``seed``
is configs/seed.yaml's model and batch at [17, 192, 84]; ``8gpu`` is configs/8gpu.yaml's at [17, 192, 84].

The data. No real LPD shards are needed: the bench writes synthetic shards of the shape into a temporary
folder with b2b's own writer (``ShardWriter``, ``b2b.data.codec.encode_roll``) and a manifest like
the one ``b2b shards build`` writes: 64 random sparse rolls (held notes at random pitches, a few percent of
cells on), repeated to four steps' worth of samples. So every step reads tars, inflates, unpacks and
copies to the device through the real loader with the config's workers, at about the cost real shards
of that shape would have (unpacking depends on the shape only; inflating a little on how sparse the rolls
are). Why not the real builder: it
makes only the LPD-5, LPD-17 and chorale layouts, from source files, and takes minutes for windows of
LPD-17's size. ``--data memory`` instead feeds each trainer a few pre-loaded batches in a cycle (as the
third loop of ``bench/bench_trainer.py``), which leaves the loader out and so shows its share.

How it is timed. Every variant (the product of the ``--precision``, ``--compile``, ``--channels-last`` and
``--adam`` lists) gets its own Trainer, all alive in this one process. Each is warmed up with
``--warmup`` steps (torch.compile compiles, cuDNN picks its algorithms, Adam allocates its state; variants
without compile first, so a time budget spent on compiling still leaves them measured). Then
``--repeats`` rounds: in each, every variant runs ``--steps`` steps, in an order rotated by one each round
(each goes first in turn), so drift of a shared machine hits all variants alike. Reported: the median over
rounds of samples/s (a sample is one real roll fed to the critic: ``n_critic × batch_size × grad_accum``
per step), the median of the per-round ratios to the first variant, the achieved FLOP/s (the step's
matmul and convolution FLOPs from ``b2b.training.describe``, penalty double backward included, the figure the
trainer logs) and MFU against ``b2b.runtime.hardware.peak_tflops`` for the device and precision (fp32 with
``train.tf32`` on: the TF32 peak); on a CPU against the fp32 GEMM peak measured once at start with the same
threads. On a CPU the samples/s by this process's CPU time are shown too: with one thread they are the
step's own cost, much less disturbed by other processes than the wall clock.

Peak memory (CUDA): the allocator's peak while a variant runs its block, less what was allocated when the
block began (every variant's weights live in this process), plus this variant's own resident tensors
(allocated during its build and warm-up): the peak it would have alone. On a CPU the process's peak RSS
is given once, for all variants together.

A variant that fails (torch.compile unsupported, out of memory, ...) is reported with its error instead of
figures, and the others go on. ``--budget-s`` bounds the whole run: no new warm-up or round starts after
it (one round always runs). SIGTERM (a time limit) does the same at once: the block under way finishes and
the tables of what ran are written.

``--compare-defaults`` (made for a CPU; demo shape by default): today's defaults (what
``b2b.config.Config()`` gives for the ``train`` switches) against the best switches: the fastest variant
(by CPU-time samples/s on a CPU) of a short search over the grid (``--search-repeats`` rounds; by default
``train.channels_last`` off/on × ``train.adam`` auto/fused at the defaults' precision; compile is left out
unless ``--compile off on`` is given, as its warm-up alone takes about 50 s per variant on one CPU
thread), or the set given with ``--best``; then fresh side-by-side rounds of just those two, so the
winner's luck in the search does not inflate the ratio. Reports the ratio of samples/s and each one's
GFLOP/s against the measured GEMM peak.

    python bench/bench_speed.py                                     # CPU: demo, fp32, the switches
    python bench/bench_speed.py --shape 8gpu seed --steps 10 --repeats 3 --out speed.md    # a GPU
    python bench/bench_speed.py --compare-defaults                   # CPU: ~1.5 min on 2 loaded cores
    python bench/bench_speed.py --compare-defaults --best channels_last=on,adam=fused
    python bench/bench_speed.py --recipe             # what each recipe knob costs per step (RECIPE_KNOBS)

Prints Markdown; ``--out FILE.md`` writes it too. Each row carries the command that reproduces it.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import io
import itertools
import json
import os
import resource
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"
BIG_STEPS = 10**9  # train.steps: the trainer must never reach its end (finish() would snapshot and save)
UNIQUE_ROLLS = 64  # distinct synthetic rolls; repeated to the needed count (decoding cost is per sample)
SWITCHES = ("precision", "compile", "channels_last", "adam")
# --recipe: what each knob of the training recipe (docs/recipe.md) costs per step, against the defaults.
RECIPE_KNOBS: dict[str, list[str]] = {
    "recipe": [],
    "probabilities-to-critic": ["model.output=sigmoid"],
    "stochastic-notes": ["model.output=binary_stoch"],
    "no-pitch-bias": ["model.pitch_bias=false", "model.density_init=false"],
    "no-bar-gate": ["model.bar_gate=false"],
    "critic-norm-first": ["model.critic_norm_first=true"],
    "minibatch-std": ["model.mbstd_group=4"],
    "transpose-5": ["data.transpose=5"],
    "no-ema": ["train.ema_beta=0"],
}
ON_OFF = {"on": True, "off": False}


# ---------------------------------------------------------------------------------------------------
# What is measured: shapes and variants


@dataclass(frozen=True)
class Preset:
    """A shipped config and the sample grid the bench writes synthetic shards for."""

    config: Path
    tracks: str  # "chorale" or "lpd17": the track layout of b2b.spec
    n_bars: int
    steps_per_bar: int
    n_pitches: int
    lowest_pitch: int

    @property
    def shape(self) -> tuple[int, int, int]:
        n_tracks = 4 if self.tracks == "chorale" else 17
        return (n_tracks, self.n_bars * self.steps_per_bar, self.n_pitches)


PRESETS = {
    "demo": Preset(CONFIGS / "demo.yaml", "chorale", 4, 16, 48, 36),
    "seed": Preset(CONFIGS / "seed.yaml", "lpd17", 4, 48, 84, 24),
    "8gpu": Preset(CONFIGS / "8gpu.yaml", "lpd17", 4, 48, 84, 24),
}


@dataclass(frozen=True)
class Variant:
    """One combination of the speed switches under test."""

    precision: str
    compile: bool
    channels_last: bool
    adam: str
    knob: str = ""  # --recipe: the name of a recipe knob changed from the defaults (RECIPE_KNOBS)

    def overrides(self) -> list[str]:
        """The config overrides that select this variant in a real run."""
        return [
            f"train.precision={self.precision}",
            f"train.compile={str(self.compile).lower()}",
            f"train.channels_last={str(self.channels_last).lower()}",
            f"train.adam={self.adam}",
            *RECIPE_KNOBS.get(self.knob, []),
        ]

    def flags(self) -> str:
        """This variant alone, as bench_speed.py options."""
        if self.knob:
            return f"--recipe {self.knob}"
        return (
            f"--precision {self.precision} --compile {'on' if self.compile else 'off'} "
            f"--channels-last {'on' if self.channels_last else 'off'} --adam {self.adam}"
        )

    def spec(self) -> str:
        """As ``--best`` takes it."""
        return (
            f"precision={self.precision},compile={'on' if self.compile else 'off'},"
            f"channels_last={'on' if self.channels_last else 'off'},adam={self.adam}"
        )

    def label(self) -> str:
        if self.knob:
            return f"{self.knob}: {' '.join(RECIPE_KNOBS[self.knob]) or 'the defaults'}"
        return " ".join(o.removeprefix("train.") for o in self.overrides())


def default_variant() -> Variant:
    """Today's defaults: the ``train`` switches of ``b2b.config.Config()``."""
    from b2b.config import Config

    train = Config().train
    return Variant(train.precision, train.compile, train.channels_last, train.adam)


def parse_variant(text: str, base: Variant) -> Variant:
    """``compile=on,channels_last=on,adam=fused`` (keys left out keep ``base``'s values)."""
    values = {
        "precision": base.precision,
        "compile": base.compile,
        "channels_last": base.channels_last,
        "adam": base.adam,
    }
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, _, value = item.partition("=")
        key = key.strip().replace("-", "_").removeprefix("train.")
        if key not in SWITCHES:
            raise SystemExit(f"--best: unknown switch {key!r}; use {', '.join(SWITCHES)}")
        value = value.strip().lower()
        if key in ("compile", "channels_last"):
            truth = {"on": True, "true": True, "off": False, "false": False}
            if value not in truth:
                raise SystemExit(f"--best: {key} must be on or off, got {value!r}")
            values[key] = truth[value]
        else:
            values[key] = value
    return Variant(**values)


def grid(args: argparse.Namespace) -> list[Variant]:
    """The product of the switch lists, first values first (the first variant is the ratios' reference);
    with ``--recipe``, the defaults' switches once per recipe knob."""
    if args.recipe:
        base = default_variant()
        return [
            Variant(base.precision, base.compile, base.channels_last, base.adam, knob) for knob in args.recipe
        ]
    return [
        Variant(p, ON_OFF[c], ON_OFF[cl], a)
        for p, c, cl, a in itertools.product(args.precision, args.compile, args.channels_last, args.adam)
    ]


# ---------------------------------------------------------------------------------------------------
# Synthetic shards


def random_roll(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    """A sparse bool roll: in about two thirds of the tracks, held notes at random pitches and times."""
    n_tracks, n_steps, n_pitches = shape
    roll = np.zeros(shape, dtype=bool)
    for track in range(n_tracks):
        if rng.random() < 1 / 3:
            continue  # silent tracks, as most of LPD-17's are in a given window
        n_notes = max(1, n_steps // 4)
        starts = rng.integers(0, n_steps, n_notes)
        lengths = rng.integers(1, max(2, n_steps // 8), n_notes)
        pitches = rng.integers(0, n_pitches, n_notes)
        for start, length, pitch in zip(starts, lengths, pitches, strict=True):
            roll[track, start : start + length, pitch] = True
    return roll


def write_synthetic_shards(folder: Path, preset: Preset, n_samples: int, seed: int = 0) -> Path:
    """A train split of ``n_samples`` random rolls of ``preset``'s shape, written as ``b2b shards build``
    writes shards (tars of ``<key>.roll`` members and a manifest); returns ``folder``."""
    from b2b.atomic import write_text
    from b2b.data.codec import ENCODING, encode_roll
    from b2b.data.shards import FORMAT, ShardWriter
    from b2b.spec import CHORALE_TRACKS, LPD17_TRACKS, RollSpec

    spec = RollSpec(
        tracks=CHORALE_TRACKS if preset.tracks == "chorale" else LPD17_TRACKS,
        n_bars=preset.n_bars,
        steps_per_bar=preset.steps_per_bar,
        n_pitches=preset.n_pitches,
        lowest_pitch=preset.lowest_pitch,
    ).check()
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    unique = [encode_roll(random_roll(rng, spec.shape)) for _ in range(min(UNIQUE_ROLLS, n_samples))]
    writer = ShardWriter(folder, "train", shard_size=1000, before_write=lambda path: None)
    for i in range(n_samples):
        writer.add(unique[i % len(unique)])
    writer.flush()
    records = writer.records
    manifest = {
        "format": FORMAT,
        "shape": list(spec.shape),
        "spec": spec.to_dict(),
        "encoding": ENCODING,
        "params": {"synthetic": True, "seed": seed, "unique_rolls": len(unique)},
        "source": {"kind": "synthetic", "input": "bench/bench_speed.py"},
        "n_train": n_samples,
        "n_val": 0,
        "shards": records,
        "skipped": [],
        "bytes_per_sample": round(sum(r["bytes"] for r in records) / n_samples, 1),
        "content_hash": hashlib.sha256("".join(r["sha256"] for r in records).encode()).hexdigest(),
    }
    write_text(folder / "manifest.json", json.dumps(manifest, indent=2))
    return folder


# ---------------------------------------------------------------------------------------------------
# One variant's trainer


def on_cuda() -> bool:
    return torch.cuda.is_available()


def synchronize() -> None:
    # CUDA kernels run asynchronously: a block's time ends when its last kernel has finished.
    if on_cuda():
        torch.cuda.synchronize()


def allocated() -> int:
    return torch.cuda.memory_allocated() if on_cuda() else 0


def describe_error(exc: BaseException) -> str:
    """The first line of an exception, short enough for a table cell."""
    first = next((line for line in str(exc).splitlines() if line.strip()), "")
    text = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


@dataclass
class Result:
    """One variant's figures: per round (None where it had stopped), and why it stopped if it did."""

    variant: Variant
    wall: list[float | None] = field(default_factory=list)  # samples/s by the wall clock
    cpu: list[float | None] = field(default_factory=list)  # samples/s by this process's CPU time
    peak_bytes: list[int] = field(default_factory=list)
    error: str | None = None
    warmup_s: float = 0.0
    step_flops: int = 0
    peak_tflops: float = 0.0
    peak_source: str = ""
    samples_per_step: int = 0


class Runner:
    """A trainer for one variant, built, warmed up and timed block by block."""

    def __init__(
        self, variant: Variant, preset: Preset, shards: Path, run_dir: Path, args: argparse.Namespace
    ):
        self.variant = variant
        self.preset = preset
        self.shards = shards
        self.run_dir = run_dir
        self.args = args
        self.trainer = None
        self.resident = 0  # bytes of device memory this variant's build and warm-up left allocated
        self.result = Result(variant)

    def overrides(self, name: str) -> list[str]:
        args = self.args
        extra = [
            f"name={name}",
            f"run_dir={self.run_dir}",
            f"data.shards={self.shards}",
            f"train.steps={BIG_STEPS}",
            "log.tracker=none",
            "log.progress=false",
            "log.snapshot_every=0",  # 0: only at the end, which the bench never reaches
            "log.metrics_every=0",
            "checkpoint.every=0",
            "checkpoint.resume=never",
            # Idle trainers wait while the others run (and compile): their watchdogs must not fire.
            "train.stall_timeout_s=0",
        ]
        if args.workers is not None:
            extra.append(f"data.num_workers={args.workers}")
        if args.batch_size is not None:
            extra.append(f"data.batch_size={args.batch_size}")
        return extra + self.variant.overrides()

    def build(self, name: str) -> None:
        """Build the trainer and run its warm-up steps; raises what the variant raises."""
        from b2b.config import load_config
        from b2b.training.preflight import validate_for_training
        from b2b.training.trainer import Trainer

        synchronize()
        before = allocated()
        started = time.perf_counter()
        cfg = load_config(self.preset.config, self.overrides(name))
        manifest = validate_for_training(cfg)
        with contextlib.redirect_stdout(io.StringIO()):  # the start-up message
            self.trainer = Trainer(cfg, manifest)
            self.trainer.open()
            self.trainer.begin()
        # The trainer turns Ctrl-C and SIGTERM into a stop at its next step, with a checkpoint. A benchmark
        # should stop whichever variant runs: Ctrl-C at once, SIGTERM (a time limit) after the block under
        # way, still writing its tables.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, Clock.request_stop)
        if self.args.data == "memory":
            preloaded = list(itertools.islice(self.trainer.batches, 4 * cfg.loss.n_critic))
            self.trainer.batches = itertools.cycle(preloaded)
            self.trainer.loader.close()  # its workers are not needed any more
        self.steps(self.args.warmup)
        synchronize()
        self.resident = allocated() - before
        self.result.warmup_s = time.perf_counter() - started
        self.result.step_flops = self.trainer.step_flops
        self.result.peak_tflops, self.result.peak_source = self.trainer.peak_tflops, self.trainer.peak_source
        self.result.samples_per_step = cfg.loss.n_critic * cfg.data.batch_size * cfg.train.grad_accum

    def fresh_result(self) -> None:
        """Start a new series of rounds (the build's figures stay)."""
        old = self.result
        self.result = Result(
            old.variant,
            error=old.error,
            warmup_s=old.warmup_s,
            step_flops=old.step_flops,
            peak_tflops=old.peak_tflops,
            peak_source=old.peak_source,
            samples_per_step=old.samples_per_step,
        )

    def steps(self, n: int) -> None:
        # The periodic log line prints; the bench's own output stays readable.
        with contextlib.redirect_stdout(io.StringIO()):
            for _ in range(n):
                if self.trainer.train_step():
                    raise KeyboardInterrupt("stop signal")

    def block(self, n: int) -> None:
        """Time ``n`` steps; append samples/s (wall and CPU time) and the variant's peak memory."""
        if on_cuda():
            synchronize()
            torch.cuda.reset_peak_memory_stats()
        start_bytes = allocated()
        wall, cpu = time.perf_counter(), time.process_time()
        self.steps(n)
        synchronize()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        samples = n * self.result.samples_per_step
        self.result.wall.append(samples / wall)
        self.result.cpu.append(samples / cpu if cpu > 0 else None)
        if on_cuda():
            self.result.peak_bytes.append(self.resident + torch.cuda.max_memory_allocated() - start_bytes)

    def close(self) -> None:
        if self.trainer is not None:
            with contextlib.suppress(Exception):
                self.trainer.close()
        self.trainer = None
        gc.collect()
        if on_cuda():
            torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------------
# Rounds


class Clock:
    """The time budget of the whole run (0: none), and whether a SIGTERM asked the run to end early."""

    stop_requested = False

    def __init__(self, budget_s: float):
        self.start, self.budget_s = time.monotonic(), budget_s

    @classmethod
    def request_stop(cls, signum: int, frame: object) -> None:
        cls.stop_requested = True

    def spent(self) -> bool:
        over = self.budget_s > 0 and time.monotonic() - self.start > self.budget_s
        return over or Clock.stop_requested


def shard_folder(preset_name: str, args: argparse.Namespace, tmp: Path, cache: dict) -> Path:
    """Synthetic shards for a preset, written once per run: four steps' worth of samples at least."""
    if preset_name not in cache:
        from b2b.config import load_config

        cfg = load_config(PRESETS[preset_name].config)
        batch = args.batch_size or cfg.data.batch_size
        n_samples = max(256, 4 * cfg.loss.n_critic * batch * cfg.train.grad_accum)
        cache[preset_name] = write_synthetic_shards(
            tmp / f"shards-{preset_name}", PRESETS[preset_name], n_samples
        )
    return cache[preset_name]


def measure(
    preset_name: str,
    variants: list[Variant],
    args: argparse.Namespace,
    tmp: Path,
    clock: Clock,
    shards_cache: dict,
    repeats: int,
    runners: dict[Variant, Runner] | None = None,
    progress: str = "",
) -> tuple[list[Result], dict[Variant, Runner]]:
    """Warm up each variant (reusing ``runners`` already warm), then ``repeats`` interleaved rounds.

    Returns the results in ``variants``' order and the runners (still open: the caller closes them).
    """
    preset = PRESETS[preset_name]
    shards = shard_folder(preset_name, args, tmp, shards_cache)
    runners = dict(runners or {})
    # Without compile first: if compiling eats the budget, the cheap variants are still measured.
    for index, variant in sorted(enumerate(variants), key=lambda iv: (iv[1].compile, iv[0])):
        if variant in runners:
            continue
        runner = Runner(variant, preset, shards, tmp / "runs", args)
        runners[variant] = runner
        if clock.spent():
            runner.result.error = "skipped: time budget spent before its warm-up"
            continue
        print(f"{progress}warming up {preset_name}: {variant.label()}", file=sys.stderr, flush=True)
        try:
            runner.build(f"{preset_name}-{index}-{os.getpid()}-{len(runners)}")
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # a variant that cannot run is a result, not the end of the bench
            runner.result.error = describe_error(exc)
            runner.close()
    live = [v for v in variants if runners[v].result.error is None]
    for rep in range(repeats):
        if rep > 0 and clock.spent():
            break
        order = live[rep % len(live) :] + live[: rep % len(live)] if live else []
        print(f"{progress}{preset_name}: round {rep + 1}/{repeats}", file=sys.stderr, flush=True)
        for variant in order:
            runner = runners[variant]
            if runner.result.error is not None:
                continue
            try:
                runner.block(args.steps)
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as exc:
                runner.result.error = f"failed in round {rep + 1}: {describe_error(exc)}"
                runner.close()
        for variant in variants:  # keep rounds aligned: None where a variant did not run this round
            result = runners[variant].result
            for rates in (result.wall, result.cpu):
                while len(rates) < rep + 1:
                    rates.append(None)
    return [runners[v].result for v in variants], runners


def close_all(runners: dict[Variant, Runner]) -> None:
    for runner in runners.values():
        runner.close()
    # Compiled graphs of closed trainers stay cached per code object; start the next shape afresh.
    torch.compiler.reset()


# ---------------------------------------------------------------------------------------------------
# Figures and tables


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def ratio(a: list[float | None], b: list[float | None]) -> float | None:
    """Median over rounds of a / b, rounds where both ran."""
    pairs = [x / y for x, y in zip(a, b, strict=False) if x is not None and y is not None and y > 0]
    return statistics.median(pairs) if pairs else None


def flops_unit() -> tuple[str, float]:
    return ("TFLOP/s", 1e12) if on_cuda() else ("GFLOP/s", 1e9)


def command(args: argparse.Namespace, shape: str, variant_flags: str, repeats: int | None = None) -> str:
    """The bench_speed.py command that measures this again."""
    parts = [f"python bench/bench_speed.py --shape {shape}", variant_flags]
    parts.append(f"--steps {args.steps} --warmup {args.warmup} --repeats {repeats or args.repeats}")
    if args.threads is not None:
        parts.append(f"--threads {args.threads}")
    if args.workers is not None:
        parts.append(f"--workers {args.workers}")
    if args.batch_size is not None:
        parts.append(f"--batch-size {args.batch_size}")
    if args.data != "loader":
        parts.append(f"--data {args.data}")
    return " ".join(p for p in parts if p)


def format_rate(values: list[float | None]) -> str:
    present = [v for v in values if v is not None]
    if not present:
        return "—"
    return f"{statistics.median(present):.1f} ({min(present):.1f}–{max(present):.1f})"


def result_table(shape: str, results: list[Result], args: argparse.Namespace, gemm_peak: float | None) -> str:
    """The Markdown table of one shape's variants, each row with the command that reproduces it."""
    unit, scale = flops_unit()
    cpu = not on_cuda()
    head = ["variant (train.* overrides)", "samples/s, median (min–max)", "× row 1"]
    if cpu:
        head += ["samples/s by CPU time", "× row 1, CPU time"]
    head += [
        f"achieved {unit}",
        "MFU",
        "peak memory GB" if not cpu else "peak memory",
        "warm-up s",
        "reproduce",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    reference = next((r for r in results if r.error is None), None)
    for result in results:
        flags = command(args, shape, result.variant.flags())
        cells = [f"`{result.variant.label()}`"]
        if result.error is not None and not any(v is not None for v in result.wall):
            note = result.error.replace("|", "\\|")
            cells += [f"**{note}**", "—"] + (["—", "—"] if cpu else []) + ["—", "—", "—", "—", f"`{flags}`"]
            lines.append("| " + " | ".join(cells) + " |")
            continue
        wall = median(result.wall)
        cells.append(format_rate(result.wall) + (f" (then {result.error})" if result.error else ""))
        rel = ratio(result.wall, reference.wall) if reference else None
        cells.append(f"{rel:.2f}×" if rel is not None else "—")
        if cpu:
            cells.append(format_rate(result.cpu))
            rel_cpu = ratio(result.cpu, reference.cpu) if reference else None
            cells.append(f"{rel_cpu:.2f}×" if rel_cpu is not None else "—")
        steps_per_s = wall / result.samples_per_step if wall else None
        achieved = result.step_flops * steps_per_s if steps_per_s else None
        peak = gemm_peak if cpu and gemm_peak else result.peak_tflops
        cells.append(f"{achieved / scale:.2f}" if achieved else "—")
        cells.append(f"{100 * achieved / (peak * 1e12):.1f}%" if achieved and peak else "—")
        if cpu:
            cells.append("see below")
        else:
            cells.append(f"{max(result.peak_bytes) / 1e9:.2f}" if result.peak_bytes else "—")
        cells.append(f"{result.warmup_s:.0f}")
        cells.append(f"`{flags}`")
        lines.append("| " + " | ".join(cells) + " |")
    if not cpu:  # what MFU is measured against, per precision
        peaks = {(r.peak_source, r.peak_tflops) for r in results if r.peak_source}
        listed = "; ".join(f"{source}: {peak:g} TFLOP/s" for source, peak in sorted(peaks))
        lines.append(
            f"\nMFU against the dense peak of {listed or 'no variant that ran'} (b2b.runtime.hardware)."
        )
    return "\n".join(lines)


def environment(args: argparse.Namespace, gemm_peak: float | None) -> str:
    """Where the figures come from: device, versions, threads, load, commit."""
    try:
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    lines = [f"- commit {commit}; torch {torch.__version__}"]
    if on_cuda():
        name = torch.cuda.get_device_name()
        lines.append(
            f"- device: {name} (1 of {torch.cuda.device_count()} visible), CUDA {torch.version.cuda}, "
            f"cuDNN {torch.backends.cudnn.version()}; TF32 and cudnn.benchmark as the config says "
            "(on by default); deterministic algorithms off"
        )
    else:
        lines.append(
            f"- device: CPU, {torch.get_num_threads()} torch thread(s) of {os.cpu_count()} CPUs; load "
            f"average {os.getloadavg()[0]:.2f} now (figures from a loaded machine are lower and noisier)"
        )
        if gemm_peak:
            lines.append(f"- peak for MFU: fp32 GEMM measured here, {gemm_peak * 1e3:.1f} GFLOP/s")
    data = "synthetic shards through the trainer's loader" if args.data == "loader" else "pre-loaded batches"
    lines.append(
        f"- data: {data}; {args.warmup} warm-up steps, then rounds of {args.steps} steps per variant, the "
        "order rotated each round"
    )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# Modes


def run_grid(args: argparse.Namespace, tmp: Path, gemm_peak: float | None) -> str:
    clock = Clock(args.budget_s)
    variants = grid(args)
    out = [f"## Trainer throughput\n\nCommand: `{invocation()}`\n"]
    out.append(environment(args, gemm_peak))
    cache: dict = {}
    for shape in args.shape:
        results, runners = measure(shape, variants, args, tmp, clock, cache, args.repeats)
        close_all(runners)
        rounds = max((sum(v is not None for v in r.wall) for r in results), default=0)
        cfg_name = PRESETS[shape].config.name
        out.append(
            f"\n### {shape}: configs/{cfg_name} at {list(PRESETS[shape].shape)}, batch "
            f"{args.batch_size or 'as configured'}; {rounds} round(s)\n"
        )
        out.append(result_table(shape, results, args, gemm_peak))
    return "\n".join(out + footer()) + "\n"


def footer() -> list[str]:
    """Notes under the tables: the CPU's memory figure, and an early stop."""
    notes = []
    if not on_cuda():
        notes.append(f"\nProcess peak RSS (all variants together): {peak_rss_gb():.2f} GB.")
    if Clock.stop_requested:
        notes.append("\n**Stopped early by SIGTERM**: the rounds and variants above are all that ran.")
    return notes


def run_compare_defaults(args: argparse.Namespace, tmp: Path, gemm_peak: float | None) -> str:
    """Defaults against the best switches found (or given), side by side."""
    clock = Clock(args.budget_s)
    shape = args.shape[0]
    defaults = default_variant()
    cache: dict = {}
    out = [
        f"## Today's defaults against the best switches\n\nCommand: `{invocation()}`\n",
        environment(args, gemm_peak),
    ]
    runners: dict[Variant, Runner] = {}
    try:
        if args.best:
            best = parse_variant(args.best, defaults)
            out.append(f"\nBest switches given: `{best.label()}`.")
        else:
            candidates = [defaults] + [v for v in grid(args) if v != defaults]
            results, runners = measure(
                shape, candidates, args, tmp, clock, cache, args.search_repeats, progress="search: "
            )
            ranked = [r for r in results if median(r.cpu if not on_cuda() else r.wall) is not None]
            key = (lambda r: median(r.cpu)) if not on_cuda() else (lambda r: median(r.wall))
            best = max(ranked, key=key).variant if ranked else defaults
            out.append(
                f"\n### Search: {len(candidates)} variants, {args.search_repeats} round(s) of {args.steps} "
                f"steps (picked by {'CPU-time' if not on_cuda() else 'wall'} samples/s)\n"
            )
            out.append(result_table(shape, results, args, gemm_peak))
        # Fresh rounds of just the two: the search's winner was picked on its own rounds' luck.
        pair = [defaults] if best == defaults else [defaults, best]
        for variant in [v for v in runners if v not in pair]:
            runners.pop(variant).close()
        for runner in runners.values():
            runner.fresh_result()
        results, runners = measure(
            shape, pair, args, tmp, clock, cache, args.repeats, runners=runners, progress="side by side: "
        )
    finally:
        close_all(runners)
    out.append(f"\n### Side by side: defaults (row 1) against the best (row 2), {args.repeats} rounds\n")
    out.append(result_table(shape, results, args, gemm_peak))
    reproduce = command(args, shape, f"--compare-defaults --best {best.spec()}")
    if best == defaults:
        out.append(f"\nThe defaults are the fastest variant found. Reproduce: `{reproduce}`")
    else:
        wall = ratio(results[1].wall, results[0].wall)
        cpu = ratio(results[1].cpu, results[0].cpu)
        parts = [f"{wall:.2f}× by the wall clock" if wall else "no wall-clock ratio"]
        if not on_cuda():
            parts.append(f"{cpu:.2f}× by CPU time" if cpu else "no CPU-time ratio")
        out.append(
            f"\nBest switches `{best.label()}` against the defaults `{defaults.label()}`: "
            f"{', '.join(parts)} (median of per-round ratios). Reproduce: `{reproduce}`"
        )
    return "\n".join(out + footer()) + "\n"


def invocation() -> str:
    """This run's command line, as a user would type it from the repository root."""
    return shlex.join(["python", "bench/bench_speed.py", *sys.argv[1:]])


def peak_rss_gb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss * (1 if sys.platform == "darwin" else 1024) / 1e9


# ---------------------------------------------------------------------------------------------------
# Command line


def unique(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    listed = {"nargs": "+", "action": "extend"}  # --x a b, or --x a --x b
    parser.add_argument(
        "--shape",
        choices=list(PRESETS),
        **listed,
        help="presets to measure (default: 8gpu on CUDA, demo on CPU)",
    )
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16", "fp16", "auto"),
        **listed,
        help="train.precision values (default: fp32 bf16 on CUDA, fp32 on CPU)",
    )
    parser.add_argument("--compile", choices=("off", "on"), **listed, help="train.compile (default: off on)")
    parser.add_argument(
        "--channels-last", choices=("off", "on"), **listed, help="train.channels_last (default: off on)"
    )
    parser.add_argument(
        "--adam",
        choices=("auto", "fused", "foreach", "loop"),
        **listed,
        help="train.adam (default: auto; --compare-defaults on CPU: auto fused)",
    )
    parser.add_argument("--steps", type=int, default=10, help="steps per timed block")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up steps per variant")
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed rounds (default 5; --compare-defaults: 7)"
    )
    parser.add_argument("--budget-s", type=float, default=0.0, help="no new warm-up or round after this")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: 1 on CPU, torch's default on CUDA)"
    )
    parser.add_argument("--workers", type=int, default=None, help="data.num_workers (default: the config's)")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="data.batch_size (default: the config's)"
    )
    parser.add_argument(
        "--data",
        choices=("loader", "memory"),
        default="loader",
        help="loader: synthetic shards through TrainLoader; memory: pre-loaded batches",
    )
    parser.add_argument("--out", type=Path, help="also write the Markdown here")
    parser.add_argument(
        "--compare-defaults",
        action="store_true",
        help="today's defaults against the best switches (searched over the grid, or --best)",
    )
    parser.add_argument(
        "--best", help="with --compare-defaults: e.g. compile=off,channels_last=on,adam=fused"
    )
    parser.add_argument(
        "--search-repeats", type=int, default=3, help="with --compare-defaults: rounds of the search"
    )
    parser.add_argument(
        "--recipe",
        nargs="*",
        choices=list(RECIPE_KNOBS),
        help="what each recipe knob costs per step at the defaults' switches (no names: all of them)",
    )
    args = parser.parse_args(argv)
    cuda = on_cuda()
    args.shape = unique(args.shape or (["8gpu"] if cuda and not args.compare_defaults else ["demo"]))
    if args.compare_defaults:  # the defaults' own precision, so the search holds the defaults themselves
        args.precision = unique(args.precision or [default_variant().precision])
    else:
        args.precision = unique(args.precision or (["fp32", "bf16"] if cuda else ["fp32"]))
    args.compile = unique(args.compile or (["off"] if args.compare_defaults and not cuda else ["off", "on"]))
    args.channels_last = unique(args.channels_last or ["off", "on"])
    args.adam = unique(args.adam or (["auto", "fused"] if args.compare_defaults and not cuda else ["auto"]))
    args.repeats = args.repeats or (7 if args.compare_defaults else 5)
    if min(args.steps, args.repeats) < 1 or args.warmup < 0:
        parser.error("--steps and --repeats must be at least 1, --warmup at least 0")
    if args.best and not args.compare_defaults:
        parser.error("--best goes with --compare-defaults")
    if args.recipe is not None:
        if args.compare_defaults:
            parser.error("--recipe and --compare-defaults measure different things: give one")
        args.recipe = unique(["recipe", *(args.recipe or RECIPE_KNOBS)])
    if args.best:
        parse_variant(args.best, default_variant())  # a typo fails now, not after the GEMM measurement
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "disabled")
    if args.threads is None and not on_cuda():
        args.threads = 1
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    signal.signal(signal.SIGTERM, Clock.request_stop)  # a time limit: finish the block, write the tables
    if on_cuda():
        # Speed, not reproducibility: the fastest kernels, whatever their summation order.
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
    # On a CPU, MFU is against what this process's threads reach on a float32 GEMM (measured once, so all
    # variants share one reference).
    from b2b.runtime.hardware import cpu_peak_tflops

    gemm_peak = None if on_cuda() else cpu_peak_tflops()
    with tempfile.TemporaryDirectory(prefix="b2b-bench-speed-") as tmp:
        run = run_compare_defaults if args.compare_defaults else run_grid
        report = run(args, Path(tmp), gemm_peak)
    print(report)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
        print(f"written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
