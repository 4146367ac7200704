"""Starting a run: the start steps in their order, each registering how it is undone.

:func:`start_steps` is the one place where the order is written. Why this order:

1. *process group* first: every later step may need the device, and collectives need the group. The
   NCCL flight-recorder variables are set inside, before the group starts (they are read only then).
2. *speed switches* (TF32, cuDNN) before any network exists.
3. *signals*: from here on a Ctrl-C or SIGTERM is a stop request, acted on at the first step boundary.
4. *run lock* (rank 0) before anything in the run folder is read or moved.
5. *checkpoint choice*: rank 0 cleans leftovers and picks; a broadcast gives every rank its choice.
6. *loader*: its epoch length sets the run's length; its workers start only when batches are drawn.
7. *networks*: built identically on every rank, then each rank seeds its own stream.
8. *resume*: loads every Stateful part, the RNG streams included, then a barrier.
9. *monitor* and the trackers, at the resumed step.
10. *hardware figures*: FLOPs per step and the device's peak. The peak measurement runs after the RNG
    restore and with its own generator, so it cannot move the resumed streams.
11. *watchdog* last: the stall clock starts when training can.

Each step pushes its undo onto ``parts.resources`` (an ``ExitStack``): the trainer closes it on any exit,
and a failed start closes what was started before it.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from b2b.checkpoint.checkpointer import (
    Checkpointer,
    ModuleState,
    PerRank,
    RNGState,
    WeightsDigest,
    check_compatible,
)
from b2b.checkpoint.folder import check_checkpoints_writable, read_meta
from b2b.config import Config
from b2b.data.loader import TrainLoader
from b2b.errors import DataError
from b2b.model.generator import Generator
from b2b.runtime import ranks
from b2b.runtime.hardware import StepTimer, peak_tflops
from b2b.runtime.lock import RunLock
from b2b.runtime.stopping import StopFlag
from b2b.runtime.watchdog import StallWatchdog
from b2b.spec import RollSpec
from b2b.training import build
from b2b.training.describe import describe
from b2b.training.monitor import Monitor
from b2b.training.network import Network, Precision, resolve_precision
from b2b.training.phases import Phase, Progress
from b2b.training.schedule import StepBatches, announce_schedule
from b2b.training.trackers import flat_config, tracker_init_kwargs

if TYPE_CHECKING:
    from accelerate import Accelerator


class RunParts:
    """What a run is made of: the trainer's build values, and what each start step adds."""

    # built by the trainer, before any start step
    cfg: Config
    spec: RollSpec
    run_path: Path
    tracker: str | None
    stop: StopFlag
    progress: Progress
    resources: contextlib.ExitStack
    # added by the start steps, in this order
    accelerator: Accelerator
    device: torch.device
    precision: Precision
    precision_reason: str
    lock: RunLock | None = None
    source: Path | None = None  # the checkpoint to resume from
    meta: dict | None = None
    loader: TrainLoader
    step_batches: StepBatches
    steps_per_epoch: int
    total_steps: int
    ema: Generator
    g: Network
    d: Network
    phases: list[Phase]
    checkpointer: Checkpointer
    monitor: Monitor
    step_flops: int
    peak_tflops: float
    peak_source: str
    timer: StepTimer
    window_start: int
    watchdog: StallWatchdog
    saved_at: int = -1  # the step of the newest checkpoint this run holds
    training_ended: bool = False

    def build_phases(self) -> list[Phase]:
        raise NotImplementedError

    def end_training(self) -> None:
        """Finish the trackers and destroy the process group, once nothing holds it (``Network.release``).

        A DDP wrapper freed after its gloo group (at the interpreter's exit: wrappers sit in reference
        cycles) aborts the process, so the wrappers go first."""
        if self.training_ended:
            return
        self.training_ended = True
        for net in (getattr(self, "g", None), getattr(self, "d", None)):
            if net is not None:
                net.release()
        self.accelerator.free_memory()  # accelerate's own references to the wrappers
        gc.collect()  # the wrappers' reference cycles, now, while the process group is alive
        self.accelerator.end_training()


def start_steps(parts: RunParts) -> list[tuple[str, Callable[[], None]]]:
    """The start of a run, in order (the module docstring says why): ``(name, step)`` pairs."""
    return [
        ("process group", lambda: start_process_group(parts)),
        ("speed switches", lambda: build.apply_speed_switches(parts.cfg)),
        ("signals", lambda: take_signals(parts)),
        ("run lock", lambda: take_run_lock(parts)),
        ("checkpoint choice", lambda: choose_checkpoint(parts)),
        ("loader", lambda: open_loader(parts)),
        ("networks", lambda: build_networks(parts)),
        ("resume", lambda: resume(parts)),
        ("monitor", lambda: open_monitor(parts)),
        ("hardware figures", lambda: measure_hardware(parts)),
        ("watchdog", lambda: start_watchdog(parts)),
    ]


def start_process_group(parts: RunParts) -> None:
    parts.accelerator = build.make_accelerator(parts.cfg, parts.tracker)
    parts.resources.callback(parts.end_training)
    parts.device = parts.accelerator.device
    name, parts.precision_reason = resolve_precision(parts.cfg.train.precision, parts.device)
    parts.precision = Precision(name, parts.device.type)


def take_signals(parts: RunParts) -> None:
    parts.stop.install()
    parts.resources.callback(parts.stop.restore)


def take_run_lock(parts: RunParts) -> None:
    if ranks.rank() == 0:
        lock = parts.lock = RunLock(parts.run_path)
        parts.resources.callback(lock.release)
        check_checkpoints_writable(parts.run_path)


def choose_checkpoint(parts: RunParts) -> None:
    parts.source = build.choose_checkpoint(parts.cfg, parts.device)
    if parts.source is not None:
        parts.meta = read_meta(parts.source)
        check_compatible(parts.meta, parts.cfg, parts.source)


def open_loader(parts: RunParts) -> None:
    cfg = parts.cfg
    loader = parts.loader = TrainLoader(
        cfg.data.shards,
        batch_size=cfg.data.batch_size,
        rank=ranks.rank(),
        world_size=ranks.world_size(),
        seed=cfg.train.seed,
        num_workers=cfg.data.num_workers,
        shuffle_buffer=cfg.data.shuffle_buffer,
        transpose=cfg.data.transpose,
    )
    parts.resources.callback(loader.close)
    parts.step_batches = batches = StepBatches.of(cfg, ranks.world_size())
    parts.steps_per_epoch = loader.batches_per_epoch // batches.loader_batches_per_step
    if parts.steps_per_epoch < 1:
        raise DataError(
            f"{cfg.data.shards} gives each of {ranks.world_size()} ranks "
            f"{loader.batches_per_epoch} batches of {cfg.data.batch_size} per epoch, fewer than "
            f"one step needs ({batches.loader_batches_per_step} = loss.n_critic × train.grad_accum): lower "
            "data.batch_size or add data"
        )
    parts.total_steps = cfg.train.steps or cfg.train.epochs * parts.steps_per_epoch


def build_networks(parts: RunParts) -> None:
    cfg, meta = parts.cfg, parts.meta
    generator, critic = build.build_generator_and_critic(cfg, parts.spec, fresh=meta is None)
    parts.ema = build.make_ema(generator, parts.device)
    resharded = meta is not None and meta["world_size"] != ranks.world_size()
    parts.g, parts.d = build.build_networks(
        cfg, parts.accelerator, generator, critic, parts.precision, load_universal=resharded
    )
    build.seed_rank(cfg)
    parts.phases = parts.build_phases()
    parts.checkpointer = Checkpointer(
        parts.run_path,
        {
            "generator": parts.g,
            "critic": parts.d,
            "ema": ModuleState(parts.ema),
            "loader": parts.loader,
            "progress": parts.progress,
            "rng": PerRank(RNGState()),
            "weights": PerRank(WeightsDigest({"generator": parts.g.module, "critic": parts.d.module})),
        },
        keep=cfg.checkpoint.keep,
    )


def resume(parts: RunParts) -> None:
    if parts.source is None or parts.meta is None:
        return
    parts.checkpointer.load(parts.source)
    step = parts.progress.step
    build.announce_resume(parts.checkpointer, parts.source, step, parts.meta["world_size"])
    parts.saved_at = step  # that checkpoint exists
    announce_schedule(parts.cfg, parts.meta, parts.loader.epochs_done, step, parts.total_steps)
    ranks.barrier()


def open_monitor(parts: RunParts) -> None:
    cfg = parts.cfg
    main = ranks.rank() == 0
    monitor = parts.monitor = Monitor(
        cfg, parts.run_path, parts.accelerator, parts.total_steps, parts.progress.step, main
    )
    parts.resources.callback(monitor.close)
    if parts.tracker is not None and main:
        kwargs = tracker_init_kwargs(cfg, parts.run_path)
        parts.accelerator.init_trackers(cfg.log.project, config=flat_config(cfg), init_kwargs=kwargs)


def measure_hardware(parts: RunParts) -> None:
    cfg = parts.cfg
    report = describe(cfg, list(parts.spec.shape), parts.spec.n_bars)
    per_update = parts.step_batches.global_batch
    parts.step_flops = report["steps"]["train_step_flops"] * per_update
    parts.peak_tflops, parts.peak_source = peak_tflops(
        parts.device, parts.precision.name, cfg.train.tf32, cfg.train.peak_tflops
    )
    parts.timer = StepTimer()
    parts.window_start = parts.progress.step


def start_watchdog(parts: RunParts) -> None:
    watchdog = parts.watchdog = StallWatchdog(parts.cfg.train.stall_timeout_s, parts.run_path, ranks.rank())
    watchdog.start()
    parts.resources.callback(watchdog.stop)
