"""The Trainer: one rank's part of a run, its phases and its loop, top to bottom.

Building a trainer starts nothing. :meth:`Trainer.open` takes the start steps of
:meth:`Trainer.start_steps` in their order (process group, signals, run lock, checkpoint choice, loader,
networks, resume, monitor, hardware figures, watchdog); each registers how it is undone, and
:meth:`Trainer.close` undoes them in reverse, also when a start step fails.

A step is a list of phases run in order (StyleGAN2-ADA's phases as data): the critic phase,
``loss.n_critic`` updates with the gradient penalty on every ``loss.gp_every``-th (lazy
regularisation), then the generator phase, one update. Each update takes ``train.grad_accum``
micro-batches of ``data.batch_size`` samples per rank; the loop passes each its real batch and latents.
After the phases: the learning rates, the EMA, one all-reduce of the statistics the losses reported, and
the periodic work (log, snapshot, metrics, checkpoint), which the :class:`~b2b.training.monitor.Monitor`
and the :class:`~b2b.checkpoint.checkpointer.Checkpointer` own.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from collections.abc import Iterator

import numpy as np
import torch

from b2b.checkpoint.folder import latest_checkpoint
from b2b.config import Config
from b2b.data.manifest import manifest_spec
from b2b.errors import NonFiniteLoss
from b2b.eval.generate import generate_notes
from b2b.eval.reference import Comparison, RealReference
from b2b.model.ema import ema_beta, recalibrate_batchnorm, update_ema
from b2b.runtime import ranks
from b2b.runtime.hardware import peak_memory_gb
from b2b.runtime.stopping import StopFlag
from b2b.training import stats
from b2b.training.losses import critic_loss, generator_loss
from b2b.training.monitor import is_better
from b2b.training.phases import Phase, Progress
from b2b.training.schedule import learning_rates
from b2b.training.start import RunParts, start_steps
from b2b.training.trackers import tracker_kind


class Trainer(RunParts):
    """One rank's part of a training run: ``with Trainer(cfg, manifest) as t: t.run()``."""

    def __init__(self, cfg: Config, manifest: dict):
        # build: values only; nothing is started, opened or loaded here
        self.cfg, self.spec, self.run_path = cfg, manifest_spec(manifest, cfg.data.shards), cfg.run_path
        self.tracker = tracker_kind(cfg)
        self.stop = StopFlag()
        self.progress = Progress()
        self.resources = contextlib.ExitStack()
        self.fixed_latents = torch.randn(
            cfg.log.n_snapshot, cfg.model.latent_dim, generator=torch.Generator().manual_seed(cfg.train.seed)
        )
        self.ema_calibrated_at, self.opened = -1, False
        self.last_measured: tuple[int, Comparison | None] = (-1, None)
        self.reference: RealReference | None = None
        self.batches: Iterator[torch.Tensor] | None = None

    # ------------------------------------------------------------------------------------------------
    # Start and end

    def open(self) -> None:
        """Take every start step in order (once); on a failure, undo the steps already taken and raise."""
        if self.opened:
            return
        with self.resources as taking:
            for _, step in start_steps(self):
                step()
            self.resources = taking.pop_all()  # keep them: close() undoes them
        self.opened = True

    def close(self) -> None:
        """Undo every start step taken, in reverse (any exit path; a second call does nothing)."""
        self.batches = None
        self.resources.close()

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def build_phases(self) -> list[Phase]:
        n_critic, gp_every = self.cfg.loss.n_critic, self.cfg.loss.gp_every
        return [
            Phase(
                "critic", self.d, n_critic, self.critic_phase_loss, reads_real=True, penalty_every=gp_every
            ),
            Phase("generator", self.g, 1, self.generator_phase_loss),
        ]

    # ------------------------------------------------------------------------------------------------
    # One step: the phases, then the end of the step

    def next_real(self) -> torch.Tensor:
        # The loader yields bool rolls: one byte per cell crosses to the device, converted there.
        assert self.batches is not None, "begin() starts the batches"
        waited = time.perf_counter()
        batch = next(self.batches)
        self.timer.wait(time.perf_counter() - waited)
        real = batch.to(self.device, non_blocking=True).float()
        return real.contiguous(memory_format=torch.channels_last) if self.cfg.train.channels_last else real

    def latents(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.cfg.model.latent_dim, device=self.device)

    def critic_phase_loss(
        self, real: torch.Tensor | None, z: torch.Tensor, penalty_weight: float
    ) -> torch.Tensor:
        assert real is not None, "the critic phase reads real samples"
        with torch.no_grad(), self.precision.autocast():
            fake = self.g.module(z)
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

    def generator_phase_loss(self, _: torch.Tensor | None, z: torch.Tensor, __: float) -> torch.Tensor:
        # Through the bare critic: its gradients are not wanted, so DDP must not reduce them.
        with self.precision.autocast():
            return generator_loss(self.d.module, self.g(z))

    def run_phase(self, phase: Phase) -> None:
        for net in (self.g, self.d):
            net.module.requires_grad_(net is phase.network)
        accum = self.cfg.train.grad_accum
        for _ in range(phase.repeats):
            penalty_weight = self.progress.count_update(phase)
            for micro in range(accum):
                real = self.next_real() if phase.reads_real else None
                z = self.latents(self.cfg.data.batch_size if real is None else real.shape[0])
                with phase.network.accumulating(sync=micro == accum - 1):
                    phase.network.backward(phase.loss(real, z, penalty_weight) / accum)
            phase.network.step()

    def train_step(self) -> int:
        """One step and everything periodic after it; returns the stop signal number (0: go on)."""
        cfg = self.cfg
        rates = learning_rates(cfg, self.loader.epochs_done, self.progress.step, self.total_steps)
        for net, lr in zip((self.g, self.d), rates, strict=True):
            net.set_lr(lr)
        with stats.Collector(self.device) as collector:
            for phase in self.phases:
                self.run_phase(phase)
        for net in (self.g, self.d):
            net.sync_buffers()
        self.progress.step += 1
        self.watchdog.beat()
        batch = self.step_batches.global_batch  # samples per generator update
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
            last = latest_checkpoint(self.run_path) or "none (no checkpoint was written yet)"
            named = ", ".join(f"{k}={v}" for k, v in bad.items())
            raise NonFiniteLoss(
                f"non-finite loss at step {self.progress.step} ({named}); stopping without saving. The last "
                f"good checkpoint is {last}. Lower the learning rates (optim.g_lr, optim.d_lr) or use "
                "train.precision=bf16/fp32"
            )

    def _log(self, values: dict) -> None:
        """The step's statistics and how well the hardware was used since the last log line."""
        step = self.progress.step
        elapsed, waiting = self.timer.lap()
        steps, self.window_start = step - self.window_start, step
        tflops = self.step_flops * steps / max(elapsed, 1e-9) / 1e12
        peak = self.peak_tflops * (ranks.world_size() if self.device.type == "cuda" else 1)
        values = {
            **values,
            "g_lr": self.g.lr,
            "d_lr": self.d.lr,
            "samples_per_s": steps * self.step_batches.real_per_step / max(elapsed, 1e-9),
            "tflops": tflops,
            "mfu": tflops / peak if peak > 0 else None,
            "peak_memory_gb": peak_memory_gb(self.device),
            "data_wait": waiting,
            "global_batch": self.step_batches.global_batch,
            "skipped_g": self.g.skipped_steps,
            "skipped_d": self.d.skipped_steps,
            "epoch": self.loader.epoch,
        }
        self.monitor.log_step(step, {k: v for k, v in values.items() if v is not None})

    # ------------------------------------------------------------------------------------------------
    # The run

    def run(self) -> int:
        """Train to ``total_steps`` or until a stop signal; returns the process exit code."""
        self.open()
        if self.progress.step >= self.total_steps:  # e.g. the same command again after the run finished
            self.monitor.message(
                f"the run already reached step {self.progress.step} (it trains {self.total_steps} steps): "
                "nothing to train; raise train.steps to train on"
            )
            self.monitor.status("finished", self.progress.step)
            return 0
        self.begin()
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

    def begin(self) -> None:
        """The run's first actions, once every part is started: say what runs, measure, start the data."""
        cfg, world = self.cfg, ranks.world_size()
        if ranks.rank() == 0:
            cfg.dump(self.run_path / "config.yaml")
            self.monitor.message(
                f"b2b: {world} rank(s) on {self.device.type}, precision {self.precision.name} "
                f"({self.precision_reason}), "
                f"global batch {self.step_batches.global_batch} = {cfg.data.batch_size} per device × "
                f"{world} ranks × {cfg.train.grad_accum} accumulation; {self.steps_per_epoch} steps per "
                f"epoch, {self.total_steps} steps; run folder {self.run_path}"
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

    # ------------------------------------------------------------------------------------------------
    # Looking at the generator: snapshots from fixed latents, music metrics across ranks

    def calibrate_ema(self) -> None:
        """Give the EMA generator BatchNorm statistics of its own weights before it is looked at or saved
        (every rank, at the same steps, so the EMA stays identical everywhere)."""
        if self.ema_calibrated_at != self.progress.step:
            recalibrate_batchnorm(self.ema, self.cfg.data.batch_size, seed=self.cfg.train.seed + 3)
            self.ema_calibrated_at = self.progress.step

    def generate(self, latents: torch.Tensor) -> np.ndarray:
        self.calibrate_ema()
        # Bernoulli draws from their own seeded stream: looking at the generator must not move training's.
        draws = torch.Generator(self.device).manual_seed(self.cfg.train.seed + 2)
        threshold = self.cfg.train.threshold
        return generate_notes(self.ema, latents.to(self.device), threshold, draws, self.precision.autocast)

    def snapshot(self) -> None:
        self.monitor.snapshot(self.progress.step, self.generate(self.fixed_latents), self.spec)

    def measure(self) -> None:
        """The EMA generator on a fixed latent set, generated across ranks, measured against real data."""
        cfg, rank, world = self.cfg, ranks.rank(), ranks.world_size()
        if not cfg.log.metrics_every:
            return
        per_rank = math.ceil(cfg.log.metrics_n / world)
        seeded = torch.Generator().manual_seed(cfg.train.seed + 1)
        latents = torch.randn(per_rank * world, cfg.model.latent_dim, generator=seeded)
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
        best = False
        if ranks.rank() == 0 and at == step and result is not None:
            best = is_better(result, self.progress.best_distance)
            if best:
                self.progress.best_distance = result.distance_to_real
        spec = self.spec.to_dict()
        meta = {"step": step, "epoch": self.loader.epoch, "config": self.cfg.to_dict(), "spec": spec}
        folder = self.checkpointer.save(step, meta)
        self.saved_at = step
        if best:
            self.checkpointer.mark_best(folder)
            distance = self.progress.best_distance
            self.monitor.message(f"step {step}: new best checkpoint (distance to real {distance:.4f})")
