"""The parts a training run is built from, before its first step: the process group (through accelerate),
the speed switches, the networks under DDP or DeepSpeed ZeRO, the EMA generator, the checkpoint to
resume from, and the announcements a resume owes the user.

:class:`b2b.training.trainer.Trainer` assembles them; each function here does one piece and says why.
"""

from __future__ import annotations

import copy
import sys
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch

from b2b.checkpoint.checkpointer import Checkpointer, choose_resume
from b2b.checkpoint.folder import complete_checkpoints, read_meta, resolve_checkpoint
from b2b.config import Config
from b2b.data.reading import note_statistics
from b2b.model.critic import Critic
from b2b.model.generator import Generator
from b2b.model.networks import build_models
from b2b.runtime import ranks
from b2b.runtime.watchdog import enable_nccl_flight_recorder
from b2b.spec import RollSpec
from b2b.training.network import Network, Precision, build_optimizer
from b2b.training.zero import build_zero_networks


def warn(message: str) -> None:
    print(f"b2b train: {message}", file=sys.stderr, flush=True)


def make_accelerator(cfg: Config, log_with: str | None):
    """The ``Accelerator``: starts the process group (gloo on CPUs, NCCL on GPUs) and the tracker."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

    if torch.cuda.is_available():
        enable_nccl_flight_recorder(cfg.run_path)  # before the process group starts
    return Accelerator(
        # Without cpu=True accelerate gives every rank of a launch on a machine with no accelerator
        # its own world of one (DistributedType.NO) instead of gloo; this is device selection only.
        cpu=not torch.accelerator.is_available(),
        mixed_precision="no",  # b2b owns autocast and loss scaling: see b2b/training/network.py
        log_with=log_with,
        project_dir=str(cfg.run_path),
        kwargs_handlers=[
            # The critic runs on real, fake and interpolated batches before one backward; DDP's
            # in-place buffer broadcast at each forward would break that backward. Buffers are synced
            # after each step instead (Network.sync_buffers).
            DistributedDataParallelKwargs(broadcast_buffers=False),
            InitProcessGroupKwargs(timeout=timedelta(seconds=cfg.train.dist_timeout_s)),
        ],
    )


def apply_speed_switches(cfg: Config) -> None:
    """TF32 and cuDNN's algorithm search (GPU-only switches; harmless on a CPU)."""
    torch.backends.cuda.matmul.allow_tf32 = cfg.train.tf32
    torch.backends.cudnn.allow_tf32 = cfg.train.tf32
    torch.backends.cudnn.benchmark = cfg.train.cudnn_benchmark


def build_generator_and_critic(cfg: Config, spec: RollSpec, fresh: bool) -> tuple[Generator, Critic]:
    """Both networks, identical on every rank (seeded by ``train.seed``); a fresh run starts the output
    bias at the data's note density and the bar gates at each track's share of bars in the data;
    ``train.channels_last`` stores their activations as NHWC."""
    torch.manual_seed(cfg.train.seed)
    generator, critic = build_models(cfg, spec.shape, spec.n_bars)
    if cfg.model.density_init and fresh:
        density, activity = note_statistics(cfg.data.shards, spec.n_bars)
        generator.init_output_bias(density, activity=activity if cfg.model.bar_gate else None)
    if cfg.train.channels_last:  # torch's stub of Module.to leaves out memory_format, which it takes
        generator.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        critic.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return generator, critic


def make_ema(generator: Generator, device: torch.device) -> Generator:
    return copy.deepcopy(generator).requires_grad_(False).eval().to(device)


def build_networks(
    cfg: Config, accelerator, generator, critic, precision: Precision, load_universal: bool
) -> tuple[Network, Network]:
    """The generator and critic with their optimizers, under DDP (through accelerate) or ZeRO."""
    if cfg.deepspeed.zero_stage > 0:
        nets: list[Network] = list(build_zero_networks(cfg, generator, critic, precision, load_universal))
    else:
        nets = []
        for module, lr in ((generator, cfg.optim.g_lr), (critic, cfg.optim.d_lr)):
            wrapped = accelerator.prepare_model(module)
            optimizer = build_optimizer(module, lr, cfg.optim.betas, cfg.train.adam)
            nets.append(Network(module, wrapped, optimizer, precision.make_scaler()))
    if cfg.train.compile:
        for net in nets:
            net.compile()
    return nets[0], nets[1]


def seed_rank(cfg: Config) -> None:
    """Each rank draws its own latents, dropout masks and interpolation weights."""
    seed = cfg.train.seed * 1_000_003 + ranks.rank()
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def choose_checkpoint(cfg: Config, device: torch.device) -> Path | None:
    """Rank 0 picks the checkpoint to resume from (verifying digests, passing over damaged ones, after
    removing leftovers of killed saves); every rank takes its choice, so all load the same one."""
    choice = None
    if ranks.rank() == 0:
        checkpointer = Checkpointer(cfg.run_path, {}, keep=1)
        for path in checkpointer.remove_leftovers():
            warn(f"removed {path}, left by an interrupted save")
        if cfg.checkpoint.resume == "never" and (moved := checkpointer.abandon_after(-1)):
            print(
                f"checkpoint.resume=never: a new run; moved {', '.join(p.name for p in moved)} to "
                f"{moved[0].parent}",
                flush=True,
            )
        choice = choose_resume(cfg.run_path, cfg.checkpoint.resume, warn=warn)
    step = torch.tensor([-1 if choice is None else int(read_meta(choice)["step"])], device=device)
    ranks.broadcast(step)
    if step.item() < 0:
        return None
    if cfg.checkpoint.resume == "auto":
        return cfg.run_path / "checkpoints" / f"step-{int(step.item())}"
    return choice if choice is not None else resolve_checkpoint(cfg.checkpoint.resume)


def announce_resume(checkpointer: Checkpointer, source: Path, step: int, saved_world: int) -> None:
    """Move a later trajectory's checkpoints aside (rank 0) and say where the run resumes."""

    if ranks.rank() != 0:
        return
    if any(s > step for s, _ in complete_checkpoints(checkpointer.run_path)):
        moved = checkpointer.abandon_after(step)
        names = ", ".join(p.name for p in moved)
        print(
            f"resuming from step {step}, before the newest checkpoints: moved {names} to {moved[0].parent} "
            "(a new trajectory starts here)",
            flush=True,
        )
    now = ranks.world_size()
    note = "" if saved_world == now else f" (saved with {saved_world} ranks, now {now}: RNG streams restart)"
    print(f"resumed from {source} at step {step}{note}", flush=True)
