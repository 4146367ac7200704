"""Train the b2b WGAN-GP on one process, one node or many.

    accelerate launch --multi_gpu --num_processes 8 b2b/train.py --config configs/8gpu.yaml
    torchrun --nproc-per-node 8 -m b2b.train --config configs/8gpu.yaml key=value ...
    python -m b2b.train --config configs/demo.yaml              # a single process

One step is ``loss.n_critic`` critic updates followed by one generator update; each update takes
``train.grad_accum`` micro-batches of ``data.batch_size`` samples per rank. The file reads top to bottom
as the story of a run: setup, resume, then for each step the critic phase, the generator phase and the
bookkeeping (schedulers, EMA, stop checks, logging, snapshots, metrics, checkpoints).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import signal
import sys
import time
import warnings
from datetime import timedelta
from pathlib import Path

if __name__ == "__main__":  # run as a file (accelerate launch b2b/train.py): import b2b, not b2b/'s modules
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import numpy as np
import torch
import torch.distributed as dist

from b2b import checkpoint as ckpt
from b2b.atomic import write_text
from b2b.config import Config, load_config, validate_for_training
from b2b.data import TrainLoader, track_density
from b2b.engine import Net, Precision
from b2b.errors import B2BError, DataError
from b2b.losses import critic_loss, generator_loss
from b2b.models import binarize, build_models, recalibrate_batchnorm
from b2b.spec import RollSpec
from b2b.tracking import RunLog, flat_config, tracker_settings
from b2b.zero import take_accelerate_deepspeed_settings

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)

# Under fp16 the loss scaler skips the first optimizer steps (scale too high) by design; torch then warns
# that the scheduler stepped before the optimizer. Skipped steps are counted and logged instead.
warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
# accelerate passes DDP `broadcast_buffers`, which torch 2.13 renamed; the behaviour asked for is unchanged.
warnings.filterwarnings("ignore", message="`broadcast_buffers` is deprecated", category=FutureWarning)


class NonFiniteLoss(B2BError):
    """A loss became NaN or inf: the run stops, keeping its last good checkpoint."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="b2b/train.py", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="YAML config (see configs/); defaults when omitted")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. train.precision=fp16")
    return parser.parse_args(argv)


def rank_seed(seed: int, rank: int) -> int:
    """Each rank draws its own latents, dropout masks and interpolation weights."""
    return seed * 1_000_003 + rank


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, beta: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p, 1.0 - beta)
    for e, b in zip(ema.buffers(), model.buffers(), strict=True):
        e.copy_(b)


class StopFlag:
    """Set by SIGTERM / SIGINT / SIGUSR2; acted on at the next step boundary by every rank together."""

    def __init__(self) -> None:
        self.signal: int = 0

    def install(self) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        self.signal = signum


class Trainer:
    """One rank's part of a training run."""

    def __init__(self, cfg: Config, manifest: dict):
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

        self.cfg = cfg
        self.manifest = manifest
        self.spec = RollSpec.from_dict(manifest["spec"])
        self.run_path = cfg.run_path
        self.run_path.mkdir(parents=True, exist_ok=True)
        log_with, self.tracker_init = tracker_settings(cfg, self.run_path)
        # broadcast_buffers=False: the critic is called on real, fake and interpolated batches before one
        # backward; DDP's in-place buffer broadcast at each forward would break that backward
        # (PITFALLS.md). Buffers are synced explicitly after each step instead (Net.sync_buffers).
        self.accelerator = Accelerator(
            # Without cpu=True accelerate gives every rank of a launch on a machine with no accelerator
            # its own world of one (DistributedType.NO) instead of gloo; this is device selection only.
            cpu=not torch.accelerator.is_available(),
            mixed_precision="no",  # b2b owns autocast and loss scaling: see b2b/engine.py
            log_with=log_with,
            project_dir=str(self.run_path),
            kwargs_handlers=[
                DistributedDataParallelKwargs(broadcast_buffers=False),
                InitProcessGroupKwargs(timeout=timedelta(seconds=cfg.train.dist_timeout_s)),
            ],
        )
        self.rank = self.accelerator.process_index
        self.world_size = self.accelerator.num_processes
        self.is_main = self.accelerator.is_main_process
        self.device = self.accelerator.device
        self.precision = Precision(cfg.train.precision, self.device.type)
        self.stop = StopFlag()
        self.stop.install()

        self.loader = TrainLoader(
            cfg.data.shards,
            batch_size=cfg.data.batch_size,
            rank=self.rank,
            world_size=self.world_size,
            seed=cfg.train.seed,
            num_workers=cfg.data.num_workers,
            shuffle_buffer=cfg.data.shuffle_buffer,
            transpose=cfg.data.transpose,
        )
        batches_per_step = cfg.loss.n_critic * cfg.train.grad_accum
        self.steps_per_epoch = self.loader.batches_per_epoch // batches_per_step
        if self.steps_per_epoch < 1:
            raise DataError(
                f"{cfg.data.shards} gives each of {self.world_size} ranks {self.loader.batches_per_epoch} "
                f"batches of {cfg.data.batch_size} per epoch, fewer than one step needs "
                f"({batches_per_step} = loss.n_critic × train.grad_accum): lower data.batch_size or add data"
            )
        self.total_steps = cfg.train.steps or cfg.train.epochs * self.steps_per_epoch

        # Identical initial weights on every rank, then per-rank randomness.
        torch.manual_seed(cfg.train.seed)
        generator, critic = build_models(cfg, self.spec.shape)
        if cfg.model.density_init:
            generator.init_output_bias(track_density(cfg.data.shards))
        self.ema = copy.deepcopy(generator).requires_grad_(False).eval()
        self.g, self.d = self._build_nets(generator, critic)
        self.ema.to(self.device)
        torch.manual_seed(rank_seed(cfg.train.seed, self.rank))
        np.random.seed(rank_seed(cfg.train.seed, self.rank) % 2**32)

        self.step = 0
        self.critic_updates = 0
        self.best_distance = math.inf
        self._resume()
        self.log = RunLog(cfg, self.run_path, self.accelerator, self.total_steps, self.step, self.is_main)
        if log_with is not None:
            self.accelerator.init_trackers(
                cfg.log.project, config=flat_config(cfg), init_kwargs=self.tracker_init
            )
        self.fixed_latents = torch.randn(
            cfg.log.n_snapshot, cfg.model.latent_dim, generator=torch.Generator().manual_seed(cfg.train.seed)
        )
        self.reference = None
        self.ema_calibrated_at = -1

    # ------------------------------------------------------------------------------------------------
    # Setup

    def _build_nets(self, generator: torch.nn.Module, critic: torch.nn.Module) -> tuple[Net, Net]:
        cfg = self.cfg
        decay_steps = max(1, cfg.optim.lr_decay_every * self.steps_per_epoch)
        if cfg.deepspeed.zero_stage > 0:
            from b2b.zero import build_zero_nets

            return build_zero_nets(cfg, generator, critic, self.precision, decay_steps)
        nets = []
        for module, lr in ((generator, cfg.optim.g_lr), (critic, cfg.optim.d_lr)):
            optimizer = torch.optim.Adam(module.parameters(), lr=lr, betas=tuple(cfg.optim.betas))
            scheduler = torch.optim.lr_scheduler.StepLR(
                optimizer, step_size=decay_steps, gamma=cfg.optim.lr_decay
            )
            wrapped = self.accelerator.prepare_model(module)
            nets.append(Net(module, wrapped, optimizer, scheduler, self.precision.make_scaler()))
        return nets[0], nets[1]

    def _resume(self) -> None:
        cfg = self.cfg
        if cfg.checkpoint.resume == "never":
            return
        source = (
            ckpt.latest_checkpoint(self.run_path)
            if cfg.checkpoint.resume == "auto"
            else ckpt.resolve_checkpoint(cfg.checkpoint.resume)
        )
        if source is None:
            return
        meta = ckpt.read_meta(source)
        ckpt.check_compatible(meta, cfg, source)
        ckpt.load_models(source, {"generator": self.g.module, "critic": self.d.module, "ema": self.ema})
        self.g.load_training_state(source, "generator")
        self.d.load_training_state(source, "critic")
        self._apply_new_learning_rates(meta["config"]["optim"])
        state = ckpt.load_rank_state(source, self.rank, self.world_size, meta["world_size"])
        self.loader.load_state_dict(state["data"])
        if "rng" in state:
            ckpt.set_rng_state(state["rng"])
        self.step = meta["step"]
        self.critic_updates = meta["critic_updates"]
        self.best_distance = meta.get("best_distance") or math.inf
        if self.is_main:
            note = (
                ""
                if meta["world_size"] == self.world_size
                else f" (saved with {meta['world_size']} ranks, now {self.world_size}: RNG streams restart)"
            )
            print(f"resumed from {source} at step {self.step}{note}", flush=True)

    def _apply_new_learning_rates(self, saved: dict) -> None:
        """A resumed run takes optim.g_lr / optim.d_lr from its config (e.g. lowered after a divergence);
        the schedule's progress (decays so far) is kept."""
        for net, key in ((self.g, "g_lr"), (self.d, "d_lr")):
            new = getattr(self.cfg.optim, key)
            if saved.get(key) == new:
                continue
            net.scheduler.base_lrs = [new for _ in net.optimizer.param_groups]
            for group, lr in zip(
                net.optimizer.param_groups, net.scheduler._get_closed_form_lr(), strict=True
            ):
                group["initial_lr"] = new
                group["lr"] = lr
            if self.is_main:
                print(f"optim.{key}: {saved.get(key)} in the checkpoint, {new} from the config: using {new}")

    # ------------------------------------------------------------------------------------------------
    # One step

    def next_real(self) -> torch.Tensor:
        # The loader yields bool rolls: one byte per cell crosses to the device, converted there.
        return next(self.batches).to(self.device, non_blocking=True).float()

    def latents(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.cfg.model.latent_dim, device=self.device)

    def critic_phase(self) -> dict:
        """``n_critic`` critic updates against fakes from the frozen generator."""
        cfg = self.cfg
        self.g.module.requires_grad_(False)
        self.d.module.requires_grad_(True)
        # Statistics stay on the device until the one all-reduce per step (no host sync per micro-batch).
        sums: dict[str, torch.Tensor] = {}
        for _ in range(cfg.loss.n_critic):
            self.critic_updates += 1
            # Lazy penalty (StyleGAN2): every k-th update, weighted by k, so its average weight is unchanged.
            k = cfg.loss.gp_every
            gp_weight = float(k) if self.critic_updates % k == 0 else 0.0
            for micro in range(cfg.train.grad_accum):
                real = self.next_real()
                with torch.no_grad(), self.precision.autocast():
                    fake = self.g.module(self.latents(real.shape[0]))
                with self.d.accumulating(sync=micro == cfg.train.grad_accum - 1):
                    with self.precision.autocast():
                        loss = critic_loss(
                            self.d,
                            real,
                            fake,
                            gp_lambda=cfg.loss.gp_lambda,
                            gp_weight=gp_weight,
                            loss_scale=self.d.loss_scale(),
                        )
                    self.d.backward(loss.total / cfg.train.grad_accum)
                terms = [("d_loss", loss.total), ("wasserstein", loss.wasserstein)]
                if gp_weight:  # the penalty and the input-gradient norm exist only on penalty updates
                    terms += [("penalty", loss.penalty), ("grad_norm_x", loss.grad_norm)]
                for key, value in terms:
                    sums[key] = sums.get(key, 0.0) + value.detach().float() / cfg.train.grad_accum
            self.d.step()
        penalty_updates = sum(
            1
            for u in range(self.critic_updates - cfg.loss.n_critic + 1, self.critic_updates + 1)
            if u % cfg.loss.gp_every == 0
        )
        stats = {k: v / cfg.loss.n_critic for k, v in sums.items() if k in ("d_loss", "wasserstein")}
        for key in ("penalty", "grad_norm_x"):
            # Steps with no penalty update (gp_every > n_critic) report 0 rather than a made-up value.
            stats[key] = sums[key] / penalty_updates if key in sums else torch.zeros((), device=self.device)
        return stats

    def generator_phase(self) -> dict:
        """One generator update through the frozen critic (its bare module: no DDP sync for D)."""
        cfg = self.cfg
        self.d.module.requires_grad_(False)
        self.g.module.requires_grad_(True)
        g_loss = torch.zeros((), device=self.device)
        for micro in range(cfg.train.grad_accum):
            with self.g.accumulating(sync=micro == cfg.train.grad_accum - 1):
                with self.precision.autocast():
                    fake = self.g(self.latents(cfg.data.batch_size))
                    loss = generator_loss(self.d.module, fake)
                self.g.backward(loss / cfg.train.grad_accum)
            g_loss += loss.detach().float() / cfg.train.grad_accum
        self.g.step()
        return {"g_loss": g_loss}

    def bookkeeping(self) -> None:
        self.g.scheduler.step()
        self.d.scheduler.step()
        self.g.sync_buffers()
        self.d.sync_buffers()
        update_ema(self.ema, self.g.module, self.cfg.train.ema_beta)
        self.step += 1

    # ------------------------------------------------------------------------------------------------
    # The run

    def run(self) -> int:
        """Train to ``total_steps`` or until a stop signal; returns the process exit code."""
        self.start()
        while self.step < self.total_steps:
            stopped_by = self.train_step()
            if stopped_by:
                name = signal.Signals(stopped_by).name
                self.log.message(
                    f"stopped by {name} at step {self.step}; checkpoint saved. "
                    "Resume by running the same command again."
                )
                self._write_status("interrupted", signal=name)
                self.log.close()
                return 0
        self.finish()
        return 0

    def start(self) -> None:
        cfg = self.cfg
        if self.is_main:
            cfg.dump(self.run_path / "config.yaml")
            global_batch = cfg.data.batch_size * self.world_size * cfg.train.grad_accum
            self.log.message(
                f"b2b: {self.world_size} rank(s) on {self.device.type}, precision {cfg.train.precision}, "
                f"global batch {global_batch} = {cfg.data.batch_size} per device × {self.world_size} ranks × "
                f"{cfg.train.grad_accum} accumulation; {self.steps_per_epoch} steps per epoch, "
                f"{self.total_steps} steps; run folder {self.run_path}"
            )
        self._write_status("running")
        if self.step == 0:
            self.music_metrics()
        self.batches = iter(self.loader)
        self._window = (time.perf_counter(), 0)

    def train_step(self) -> int:
        """One step and everything periodic after it; returns the stop signal number (0: go on)."""
        cfg = self.cfg
        stats = self.critic_phase()
        stats.update(self.generator_phase())
        self.bookkeeping()
        stopped_by, stats = self._agree(stats)
        window_start, window_steps = self._window
        window_steps += 1
        if self.step % cfg.log.every == 0 or self.step == self.total_steps:
            elapsed = time.perf_counter() - window_start
            samples = window_steps * cfg.loss.n_critic * cfg.train.grad_accum * cfg.data.batch_size
            self.last_logged = self._log_step(stats, samples * self.world_size / max(elapsed, 1e-9))
            window_start, window_steps = time.perf_counter(), 0
        self._window = (window_start, window_steps)
        self.log.advance()  # after the postfix is set, so the bar shows this step's values
        if cfg.log.snapshot_every and self.step % cfg.log.snapshot_every == 0:
            self.snapshot()
        if cfg.log.metrics_every and self.step % cfg.log.metrics_every == 0:
            self.music_metrics()
        if stopped_by or (cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0):
            self.save()
        return stopped_by

    def finish(self) -> None:
        cfg = self.cfg
        if not cfg.log.snapshot_every or self.step % cfg.log.snapshot_every:
            self.snapshot()
        if not cfg.log.metrics_every or self.step % cfg.log.metrics_every:
            self.music_metrics()
        self.save()  # after the final metrics, so the final state can be elected best
        last = getattr(self, "last_logged", {})
        self._write_status(
            "finished", **{k: v for k, v in last.items() if k in ("wasserstein", "d_loss", "g_loss")}
        )
        self.log.close()
        self.accelerator.end_training()

    def _agree(self, stats: dict) -> tuple[int, dict]:
        """One all-reduce per step: mean losses across ranks, any rank's stop signal, any non-finite loss."""
        keys = sorted(stats)
        stop = torch.tensor(float(self.stop.signal), device=self.device)
        values = torch.stack([stop, *(stats[k].reshape(()) for k in keys)]).double()
        if self.world_size > 1:
            dist.all_reduce(values)
        values = values.tolist()  # the statistics cross to the host once per step
        # Ranks that got no signal themselves stop too, reporting SIGTERM.
        stop_signal = (self.stop.signal or int(signal.SIGTERM)) if values[0] > 0 else 0
        mean = {k: v / self.world_size for k, v in zip(keys, values[1:], strict=True)}
        if not all(math.isfinite(v) for v in mean.values()):
            bad = ", ".join(f"{k}={v}" for k, v in mean.items() if not math.isfinite(v))
            last = ckpt.latest_checkpoint(self.run_path)
            raise NonFiniteLoss(
                f"non-finite loss at step {self.step} ({bad}); stopping without saving. The last good "
                f"checkpoint is {last or 'none (no checkpoint was written yet)'}. Lower the learning rates "
                f"(optim.g_lr, optim.d_lr) or use train.precision=bf16/fp32"
            )
        return stop_signal, mean

    def _log_step(self, stats: dict, samples_per_s: float) -> dict:
        values = {
            **stats,
            "g_lr": self.g.lr,
            "d_lr": self.d.lr,
            "samples_per_s": samples_per_s,
            "global_batch": self.cfg.data.batch_size * self.world_size * self.cfg.train.grad_accum,
            "skipped_g": self.g.skipped_steps,
            "skipped_d": self.d.skipped_steps,
            "epoch": self.loader.epoch,
        }
        show = {
            "D": f"{stats['d_loss']:.3f}",
            "G": f"{stats['g_loss']:.3f}",
            "W": f"{stats['wasserstein']:.3f}",
            "GP": f"{stats['penalty']:.3f}",
            "lr": f"{self.g.lr:.1e}",
            "smp/s": f"{samples_per_s:.0f}",
        }
        self.log.write(self.step, values, show)
        return values

    # ------------------------------------------------------------------------------------------------
    # Looking at the generator: snapshots from fixed latents, music metrics across ranks

    def calibrate_ema(self) -> None:
        """Give the EMA generator BatchNorm statistics of its own weights before it is looked at or saved
        (every rank, at the same steps, so the EMA stays identical everywhere)."""
        if self.ema_calibrated_at != self.step:
            recalibrate_batchnorm(self.ema, self.cfg.data.batch_size, seed=self.cfg.train.seed + 3)
            self.ema_calibrated_at = self.step

    @torch.no_grad()
    def generate(self, latents: torch.Tensor) -> np.ndarray:
        self.calibrate_ema()
        with self.precision.autocast():
            probs = self.ema.probabilities(latents.to(self.device)).float()
        # Bernoulli draws from their own seeded stream: looking at the generator must not move training's.
        draws = torch.Generator(self.device).manual_seed(self.cfg.train.seed + 2)
        return binarize(probs, self.ema.output, self.cfg.train.threshold, draws).bool().cpu().numpy()

    def snapshot(self) -> None:
        self.calibrate_ema()
        if self.is_main:
            self.log.snapshot(self.step, self.generate(self.fixed_latents), self.spec)

    def music_metrics(self) -> None:
        """The EMA generator on a fixed latent set, generated across ranks, measured against real data."""
        from b2b.reference import summary_line, voice_table

        cfg = self.cfg
        if not cfg.log.metrics_every:
            return
        per_rank = math.ceil(cfg.log.metrics_n / self.world_size)
        latents = torch.randn(
            per_rank * self.world_size,
            cfg.model.latent_dim,
            generator=torch.Generator().manual_seed(cfg.train.seed + 1),
        )
        mine = torch.from_numpy(self.generate(latents[self.rank * per_rank : (self.rank + 1) * per_rank]))
        rolls = self.accelerator.gather(mine.to(self.device)).cpu().numpy()
        if not self.is_main:
            return
        if self.reference is None:
            self.reference = self._real_reference(len(rolls))
        result = self.reference.compare(rolls)
        copies = result["copies"] or {}
        values = {
            "distance_to_real": result["distance_to_real"],
            "diversity_ratio": result["diversity_ratio"],
            "precision": result["precision"],
            "recall": result["recall"],
            **{f"copies_{k}": v for k, v in copies.items()},
            **_flatten("music", result["metrics"]),
        }
        self.log.write(self.step, values)
        self.log.message(f"step {self.step}: {summary_line(result)}\n{voice_table(result)}")
        self.last_measured = (self.step, result)

    def _real_reference(self, n_generated: int):
        from b2b.reference import RealReference

        reference = RealReference.from_shards(self.cfg.data.shards, self.spec, kept=n_generated)
        write_text(self.run_path / "real_metrics.json", json.dumps(reference.metrics, indent=2))
        return reference

    # ------------------------------------------------------------------------------------------------
    # Checkpoints and status

    def save(self) -> None:
        cfg = self.cfg
        self.calibrate_ema()
        # Only metrics measured on this very state may elect it as the best checkpoint, and never a generator
        # that writes no notes.
        measured = getattr(self, "last_measured", (None, None))
        result = measured[1] if measured[0] == self.step else None
        distance = None
        if result is not None and result["metrics"]["polyphonic_rate"] is not None:
            distance = result["distance_to_real"]
        is_best = distance is not None and distance < self.best_distance and self.is_main
        if is_best:
            self.best_distance = distance
        meta = {
            "step": self.step,
            "epoch": self.loader.epoch,
            "critic_updates": self.critic_updates,
            "world_size": self.world_size,
            "best_distance": self.best_distance if math.isfinite(self.best_distance) else None,
            "config": cfg.to_dict(),
            "spec": self.spec.to_dict(),
            "time": time.time(),
        }
        models = {"generator": self.g.module, "critic": self.d.module, "ema": self.ema}
        folder = ckpt.save_checkpoint(
            self.run_path,
            self.step,
            rank=self.rank,
            world_size=self.world_size,
            barrier=self.accelerator.wait_for_everyone,
            models=models,
            nets={"generator": self.g, "critic": self.d},
            rank_state={
                "rng": ckpt.rng_state(),
                "data": self.loader.state_dict(),
                "weights_sha256": ckpt.weights_digest(models),
            },
            meta=meta,
            keep=cfg.checkpoint.keep,
        )
        if is_best:
            ckpt.copy_as(folder, "best")
            self.log.message(f"step {self.step}: new best checkpoint (distance to real {distance:.4f})")

    def _write_status(self, state: str, **extra: object) -> None:
        if not self.is_main:
            return
        path = self.run_path / "status.json"
        write_text(path, json.dumps({"state": state, "step": self.step, "time": time.time(), **extra}) + "\n")


def _flatten(prefix: str, value: object) -> dict:
    """``{"music/Piano/EB": 0.1, ...}`` from nested metric dicts (numbers only)."""
    if isinstance(value, dict):
        out = {}
        for key, inner in value.items():
            out.update(_flatten(f"{prefix}/{key}", inner))
        return out
    return {prefix: value} if isinstance(value, (int, float)) and not isinstance(value, bool) else {}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        # Everything that can be wrong with the config or the data is found before any process group.
        cfg = load_config(args.config, args.overrides)
        # `accelerate launch --config_file configs/accelerate/zero2.yaml`: take its ZeRO stage; b2b drives
        # DeepSpeed itself (b2b/zero.py), so accelerate must not build a DeepSpeed plugin of its own.
        take_accelerate_deepspeed_settings(cfg)
        manifest = validate_for_training(cfg)
    except B2BError as exc:
        print(f"b2b train: error: {exc}", file=sys.stderr)
        return 2
    trainer = None
    try:
        trainer = Trainer(cfg, manifest)
        return trainer.run()
    except B2BError as exc:  # a non-finite loss, a bad checkpoint or shard, a refused setting
        print(f"b2b train: error: {exc}", file=sys.stderr)
        if trainer is not None:
            trainer._write_status("failed", error=str(exc))
        return 1
    except BaseException as exc:  # unexpected: keep the traceback, but leave a truthful status behind
        if trainer is not None:
            trainer._write_status("failed", error=repr(exc))
        raise


if __name__ == "__main__":
    sys.exit(main())
