"""The Trainer: one rank's part of a run, its phases and its loop, top to bottom.

A step is a list of phases run in order (StyleGAN2-ADA's phases as data): the critic phase,
``loss.n_critic`` updates with the gradient penalty on every ``loss.gp_every``-th (lazy
regularisation), then the generator phase, one update. Each update takes ``train.grad_accum``
micro-batches of ``data.batch_size`` samples per rank. After the phases: the learning rates, the EMA, one
all-reduce of the statistics the losses reported, and the periodic work (log, snapshot, metrics,
checkpoint), which the :class:`~b2b.training.monitor.Monitor` and the
:class:`~b2b.checkpoint.checkpointer.Checkpointer` own.
"""

from __future__ import annotations

import gc
import math
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from b2b.checkpoint.checkpointer import (
    Checkpointer,
    ModuleState,
    PerRank,
    RNGState,
    WeightsDigest,
    check_compatible,
)
from b2b.checkpoint.folder import latest_checkpoint, read_meta
from b2b.config import Config
from b2b.data.loader import TrainLoader
from b2b.data.manifest import manifest_spec
from b2b.errors import B2BError, DataError
from b2b.eval.reference import RealReference
from b2b.model.ema import ema_beta, recalibrate_batchnorm, update_ema
from b2b.model.generator import Generator, binarize
from b2b.runtime import ranks
from b2b.runtime.hardware import StepTimer, peak_memory_gb, peak_tflops
from b2b.runtime.lock import RunLock
from b2b.runtime.stopping import StopFlag
from b2b.runtime.watchdog import StallWatchdog
from b2b.spec import RollSpec
from b2b.training import build as parts
from b2b.training import stats
from b2b.training.describe import describe
from b2b.training.losses import critic_loss, generator_loss
from b2b.training.monitor import Monitor, is_better
from b2b.training.network import Network, Precision, resolve_precision
from b2b.training.trackers import flat_config, tracker_init_kwargs, tracker_kind


class NonFiniteLoss(B2BError):
    """A loss became NaN or inf: the run stops, keeping its last good checkpoint."""


@dataclass
class Phase:
    """One kind of update in a step: the network it trains, how many updates, the lazy penalty's interval
    (the penalty on every ``penalty_every``-th update, weighted by that interval; 0: never)."""

    name: str
    network: Network
    repeats: int
    loss: Callable[[float], torch.Tensor]
    penalty_every: int = 0


@dataclass
class Progress:
    """The run's counters, saved in every checkpoint."""

    step: int = 0
    critic_updates: int = 0
    best_distance: float = math.inf

    def state_dict(self) -> dict:
        return {"step": self.step, "critic_updates": self.critic_updates, "best_distance": self.best_distance}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.critic_updates = int(state["step"]), int(state["critic_updates"])
        self.best_distance = float(state["best_distance"])


class Trainer:
    """One rank's part of a training run."""

    cfg: Config
    spec: RollSpec
    run_path: Path
    accelerator: object
    device: torch.device
    precision: Precision
    precision_reason: str
    stop: StopFlag
    lock: RunLock | None
    loader: TrainLoader
    steps_per_epoch: int
    total_steps: int
    ema: Generator
    g: Network
    d: Network
    phases: list[Phase]
    progress: Progress
    checkpointer: Checkpointer
    monitor: Monitor
    reference: RealReference | None = None
    fixed_latents: torch.Tensor
    ema_calibrated_at: int = -1
    batches: Iterator[torch.Tensor] | None = None
    step_flops: int
    peak_tflops: float
    peak_source: str
    timer: StepTimer
    window_start: int
    watchdog: StallWatchdog
    last_measured: tuple[int, dict | None] = (-1, None)
    saved_at: int = -1

    def __init__(self, cfg: Config, manifest: dict):
        self.cfg, self.spec, self.run_path = cfg, manifest_spec(manifest, cfg.data.shards), cfg.run_path
        log_with = tracker_kind(cfg)
        self.accelerator = parts.make_accelerator(cfg, log_with)
        self.device = self.accelerator.device
        name, self.precision_reason = resolve_precision(cfg.train.precision, self.device)
        self.precision = Precision(name, self.device.type)
        parts.apply_speed_switches(cfg)
        self.stop = StopFlag()
        self.stop.install()
        self.lock = RunLock(self.run_path) if ranks.rank() == 0 else None
        source = parts.choose_checkpoint(cfg, self.device)
        meta = read_meta(source) if source is not None else None
        if meta is not None:
            check_compatible(meta, cfg, source)

        self.loader = TrainLoader(
            cfg.data.shards,
            batch_size=cfg.data.batch_size,
            rank=ranks.rank(),
            world_size=ranks.world_size(),
            seed=cfg.train.seed,
            num_workers=cfg.data.num_workers,
            shuffle_buffer=cfg.data.shuffle_buffer,
            transpose=cfg.data.transpose,
        )
        batches_per_step = cfg.loss.n_critic * cfg.train.grad_accum
        self.steps_per_epoch = self.loader.batches_per_epoch // batches_per_step
        if self.steps_per_epoch < 1:
            raise DataError(
                f"{cfg.data.shards} gives each of {ranks.world_size()} ranks "
                f"{self.loader.batches_per_epoch} batches of {cfg.data.batch_size} per epoch, fewer than "
                f"one step needs ({batches_per_step} = loss.n_critic × train.grad_accum): lower "
                "data.batch_size or add data"
            )
        self.total_steps = cfg.train.steps or cfg.train.epochs * self.steps_per_epoch

        generator, critic = parts.build_generator_and_critic(cfg, self.spec, fresh=meta is None)
        self.ema = parts.make_ema(generator, self.device)
        resharded = meta is not None and meta["world_size"] != ranks.world_size()
        self.g, self.d = parts.build_networks(
            cfg, self.accelerator, generator, critic, self.precision, load_universal=resharded
        )
        parts.seed_rank(cfg)
        self.phases = [
            Phase("critic", self.d, cfg.loss.n_critic, self.critic_loss, penalty_every=cfg.loss.gp_every),
            Phase("generator", self.g, 1, self.generator_loss),
        ]

        self.progress = Progress()
        self.checkpointer = Checkpointer(
            self.run_path,
            {
                "generator": self.g,
                "critic": self.d,
                "ema": ModuleState(self.ema),
                "loader": self.loader,
                "progress": self.progress,
                "rng": PerRank(RNGState()),
                "weights": PerRank(WeightsDigest({"generator": self.g.module, "critic": self.d.module})),
            },
            keep=cfg.checkpoint.keep,
        )
        if meta is not None:
            self.checkpointer.load(source)
            parts.announce_resume(self.checkpointer, source, self.progress.step, meta["world_size"])
            self.saved_at = self.progress.step  # that checkpoint exists
            parts.announce_schedule(cfg, meta, self.loader.epochs_done, self.progress.step, self.total_steps)
            ranks.barrier()
        self.monitor = Monitor(
            cfg, self.run_path, self.accelerator, self.total_steps, self.progress.step, ranks.rank() == 0
        )
        if log_with is not None and ranks.rank() == 0:
            kwargs = tracker_init_kwargs(cfg, self.run_path)
            self.accelerator.init_trackers(cfg.log.project, config=flat_config(cfg), init_kwargs=kwargs)
        self.fixed_latents = torch.randn(
            cfg.log.n_snapshot, cfg.model.latent_dim, generator=torch.Generator().manual_seed(cfg.train.seed)
        )
        report = describe(cfg, list(self.spec.shape), self.spec.n_bars)
        self.step_flops = report["steps"]["train_step_flops"] * (
            cfg.data.batch_size * cfg.train.grad_accum * ranks.world_size()
        )
        self.peak_tflops, self.peak_source = peak_tflops(
            self.device, self.precision.name, cfg.train.tf32, cfg.train.peak_tflops
        )
        self.timer = StepTimer()
        self.window_start = self.progress.step
        self.watchdog = StallWatchdog(cfg.train.stall_timeout_s, self.run_path, ranks.rank())

    # ------------------------------------------------------------------------------------------------
    # One step: the phases, then the end of the step

    def next_real(self) -> torch.Tensor:
        # The loader yields bool rolls: one byte per cell crosses to the device, converted there.
        waited = time.perf_counter()
        batch = next(self.batches)
        self.timer.wait(time.perf_counter() - waited)
        real = batch.to(self.device, non_blocking=True).float()
        return real.contiguous(memory_format=torch.channels_last) if self.cfg.train.channels_last else real

    def latents(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.cfg.model.latent_dim, device=self.device)

    def critic_loss(self, penalty_weight: float) -> torch.Tensor:
        real = self.next_real()
        with torch.no_grad(), self.precision.autocast():
            fake = self.g.module(self.latents(real.shape[0]))
        with self.precision.autocast():
            loss = critic_loss(
                self.d,
                real,
                fake,
                gp_lambda=self.cfg.loss.gp_lambda,
                gp_weight=penalty_weight,
                loss_scale=self.d.loss_scale(),
                penalty_critic=self.d.wrapped,  # eager: a compiled critic has no double backward
            )
        return loss.total

    def generator_loss(self, _: float) -> torch.Tensor:
        # Through the bare critic: its gradients are not wanted, so DDP must not reduce them.
        with self.precision.autocast():
            return generator_loss(self.d.module, self.g(self.latents(self.cfg.data.batch_size)))

    def run_phase(self, phase: Phase) -> None:
        for net in (self.g, self.d):
            net.module.requires_grad_(net is phase.network)
        accum = self.cfg.train.grad_accum
        for _ in range(phase.repeats):
            weight = 0.0
            if phase.penalty_every:
                self.progress.critic_updates += 1
                due = self.progress.critic_updates % phase.penalty_every == 0
                weight = float(phase.penalty_every) if due else 0.0
            for micro in range(accum):
                with phase.network.accumulating(sync=micro == accum - 1):
                    phase.network.backward(phase.loss(weight) / accum)
            phase.network.step()

    def train_step(self) -> int:
        """One step and everything periodic after it; returns the stop signal number (0: go on)."""
        cfg = self.cfg
        rates = parts.learning_rates(cfg, self.loader.epochs_done, self.progress.step, self.total_steps)
        for net, lr in zip((self.g, self.d), rates, strict=True):
            net.set_lr(lr)
        with stats.Collector(self.device) as collector:
            for phase in self.phases:
                self.run_phase(phase)
        for net in (self.g, self.d):
            net.sync_buffers()
        self.progress.step += 1
        self.watchdog.beat()
        batch = cfg.data.batch_size * ranks.world_size() * cfg.train.grad_accum  # samples per G update
        beta = ema_beta(cfg.train.ema_beta, cfg.train.ema_rampup, self.progress.step * batch, batch)
        update_ema(self.ema, self.g.module, beta)
        step = self.progress.step
        values = collector.collect(extra={"stop": self.stop.signal})
        stop = (self.stop.signal or int(signal.SIGTERM)) if values.pop("stop") > 0 else 0
        self._check_finite(values)
        if step % cfg.log.every == 0 or step == self.total_steps:
            self._log(values)
        self.monitor.advance()
        if cfg.log.snapshot_every and step % cfg.log.snapshot_every == 0:
            self.snapshot()
        if cfg.log.metrics_every and step % cfg.log.metrics_every == 0:
            self.measure()
        if stop or (cfg.checkpoint.every and step % cfg.checkpoint.every == 0):
            self.save()
        return stop

    def _check_finite(self, values: dict) -> None:
        bad = stats.non_finite(values)
        if bad:
            last = latest_checkpoint(self.run_path)
            values = ", ".join(f"{k}={v}" for k, v in bad.items())
            last = last or "none (no checkpoint was written yet)"
            raise NonFiniteLoss(
                f"non-finite loss at step {self.progress.step} ({values}); stopping without saving. The last "
                f"good checkpoint is {last}. Lower the learning rates (optim.g_lr, optim.d_lr) or use "
                "train.precision=bf16/fp32"
            )

    def _log(self, values: dict) -> None:
        """The step's statistics and how well the hardware was used since the last log line."""
        cfg, step = self.cfg, self.progress.step
        elapsed, waiting = self.timer.lap()
        steps, self.window_start = step - self.window_start, step
        samples = steps * cfg.loss.n_critic * cfg.train.grad_accum * cfg.data.batch_size * ranks.world_size()
        tflops = self.step_flops * steps / max(elapsed, 1e-9) / 1e12
        peak = self.peak_tflops * (ranks.world_size() if self.device.type == "cuda" else 1)
        values = {
            **values,
            "g_lr": self.g.lr,
            "d_lr": self.d.lr,
            "samples_per_s": samples / max(elapsed, 1e-9),
            "tflops": tflops,
            "mfu": tflops / peak if peak > 0 else None,
            "peak_memory_gb": peak_memory_gb(self.device),
            "data_wait": waiting,
            "global_batch": cfg.data.batch_size * ranks.world_size() * cfg.train.grad_accum,
            "skipped_g": self.g.skipped_steps,
            "skipped_d": self.d.skipped_steps,
            "epoch": self.loader.epoch,
        }
        self.monitor.log_step(step, {k: v for k, v in values.items() if v is not None})

    # ------------------------------------------------------------------------------------------------
    # The run

    def run(self) -> int:
        """Train to ``total_steps`` or until a stop signal; returns the process exit code."""
        if self.progress.step >= self.total_steps:  # e.g. the same command again after the run finished
            self.monitor.message(
                f"the run already reached step {self.progress.step} (it trains {self.total_steps} steps): "
                "nothing to train; raise train.steps to train on"
            )
            self.monitor.status("finished", self.progress.step)
            return 0
        self.start()
        while self.progress.step < self.total_steps:
            stopped_by = self.train_step()
            if stopped_by:
                name = signal.Signals(stopped_by).name
                self.monitor.message(
                    f"stopped by {name} at step {self.progress.step}; checkpoint saved. "
                    "Resume by running the same command again."
                )
                self.monitor.status("interrupted", self.progress.step, signal=name)
                self.end_training()
                return 0
        self.finish()
        return 0

    def start(self) -> None:
        cfg = self.cfg
        if ranks.rank() == 0:
            cfg.dump(self.run_path / "config.yaml")
            batch = cfg.data.batch_size * ranks.world_size() * cfg.train.grad_accum
            self.monitor.message(
                f"b2b: {ranks.world_size()} rank(s) on {self.device.type}, precision {self.precision.name} "
                f"({self.precision_reason}), "
                f"global batch {batch} = {cfg.data.batch_size} per device × {ranks.world_size()} ranks × "
                f"{cfg.train.grad_accum} accumulation; {self.steps_per_epoch} steps per epoch, "
                f"{self.total_steps} steps; run folder {self.run_path}"
            )
        self.monitor.status("running", self.progress.step)
        if self.progress.step == 0:
            self.measure()
        self.batches = iter(self.loader)

    def finish(self) -> None:
        cfg, step = self.cfg, self.progress.step
        if not cfg.log.snapshot_every or step % cfg.log.snapshot_every:
            self.snapshot()
        if not cfg.log.metrics_every or step % cfg.log.metrics_every:
            self.measure()
        self.save()  # after the final metrics, so the final state can be elected best
        self.monitor.status("finished", step)
        self.end_training()

    def end_training(self) -> None:
        """Finish the trackers and destroy the process group, once nothing holds it (``Network.release``)."""
        for net in (self.g, self.d):
            net.release()
        self.accelerator.free_memory()  # accelerate's own references to the wrappers
        gc.collect()  # the wrappers' reference cycles, now, while the process group is alive
        self.accelerator.end_training()

    def close(self) -> None:
        """Stop the loader's workers and the progress bar; release the run folder (any exit path)."""
        self.batches = None
        self.loader.close()
        if hasattr(self, "monitor"):
            self.monitor.close()
        if self.lock is not None:
            self.lock.release()

    # ------------------------------------------------------------------------------------------------
    # Looking at the generator: snapshots from fixed latents, music metrics across ranks

    def calibrate_ema(self) -> None:
        """Give the EMA generator BatchNorm statistics of its own weights before it is looked at or saved
        (every rank, at the same steps, so the EMA stays identical everywhere)."""
        if self.ema_calibrated_at != self.progress.step:
            recalibrate_batchnorm(self.ema, self.cfg.data.batch_size, seed=self.cfg.train.seed + 3)
            self.ema_calibrated_at = self.progress.step

    @torch.no_grad()
    def generate(self, latents: torch.Tensor) -> np.ndarray:
        self.calibrate_ema()
        # Bernoulli draws from their own seeded stream: looking at the generator must not move training's.
        draws = torch.Generator(self.device).manual_seed(self.cfg.train.seed + 2)
        with self.precision.autocast():
            probs = self.ema.probabilities(latents.to(self.device), draws).float()
        return binarize(probs, self.ema.output, self.cfg.train.threshold, draws).bool().cpu().numpy()

    def snapshot(self) -> None:
        rolls = self.generate(self.fixed_latents)
        self.monitor.snapshot(self.progress.step, rolls, self.spec)

    def measure(self) -> None:
        """The EMA generator on a fixed latent set, generated across ranks, measured against real data."""
        cfg = self.cfg
        if not cfg.log.metrics_every:
            return
        per_rank = math.ceil(cfg.log.metrics_n / ranks.world_size())
        latents = torch.randn(
            per_rank * ranks.world_size(),
            cfg.model.latent_dim,
            generator=torch.Generator().manual_seed(cfg.train.seed + 1),
        )
        rank = ranks.rank()
        mine = torch.from_numpy(self.generate(latents[rank * per_rank : (rank + 1) * per_rank]))
        rolls = self.accelerator.gather(mine.to(self.device)).cpu().numpy()
        if rank != 0:
            return
        if self.reference is None:
            self.reference = RealReference.from_shards(cfg.data.shards, self.spec, kept=len(rolls))
        result = self.reference.compare(rolls)
        self.monitor.measure(self.progress.step, result)
        self.last_measured = (self.progress.step, result)

    # ------------------------------------------------------------------------------------------------
    # Checkpoints

    def save(self) -> None:
        step = self.progress.step
        if self.saved_at == step:
            return  # the final save of a run that just saved this step
        self.calibrate_ema()
        # Only metrics measured on this very state may elect it, and never a generator writing no notes.
        at, result = self.last_measured
        best = ranks.rank() == 0 and at == step and is_better(result, self.progress.best_distance)
        if best:
            self.progress.best_distance = result["distance_to_real"]
        spec = self.spec.to_dict()
        meta = {"step": step, "epoch": self.loader.epoch, "config": self.cfg.to_dict(), "spec": spec}
        folder = self.checkpointer.save(step, meta)
        self.saved_at = step
        if best:
            self.checkpointer.mark_best(folder)
            distance = self.progress.best_distance
            self.monitor.message(f"step {step}: new best checkpoint (distance to real {distance:.4f})")
