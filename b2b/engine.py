"""How one network is trained across ranks: its wrapper, optimizer, scheduler and loss scaling.

The trainer drives the generator and the critic through the same small interface, :class:`Net`, so the
plain DDP path (here, through accelerate) and the DeepSpeed ZeRO path (``b2b/zero.py``) share one loop.

Mixed precision is owned here rather than by accelerate: accelerate silently runs ``mixed_precision=fp16``
in fp32 on a CPU (no autocast, no scaler), which would make the fp16 path untestable on CPU. With our own
``torch.autocast`` and ``torch.amp.GradScaler`` the fp16 code is the same on every device.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


@dataclass
class Precision:
    """Autocast settings for forward passes; the gradient penalty always runs in fp32 (b2b.losses)."""

    name: str
    device_type: str

    @property
    def dtype(self) -> torch.dtype | None:
        return AUTOCAST_DTYPES[self.name]

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def make_scaler(self) -> torch.amp.GradScaler:
        # Loss scaling only for fp16: bf16 has fp32's exponent range.
        return torch.amp.GradScaler(self.device_type, enabled=self.name == "fp16")


class Net:
    """A network under training with DDP (or a single process).

    Parameters
    ----------
    module : nn.Module
        The bare network: used for ``requires_grad_``, the EMA, checkpoints and forwards that must not
        go through DDP (e.g. the critic inside the generator's step, whose gradients are not wanted).
    wrapped : nn.Module
        What forward passes that train this network go through (DDP, or ``module`` itself).
    optimizer, scheduler
        Plain torch objects; the scheduler steps once per generator step.
    scaler : torch.amp.GradScaler
        Disabled unless the precision is fp16.
    """

    def __init__(
        self,
        module: nn.Module,
        wrapped: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        scaler: torch.amp.GradScaler,
    ):
        self.module = module
        self.wrapped = wrapped
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.scaler = scaler
        self.skipped_steps = 0

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        return self.wrapped(*args, **kwargs)

    @contextlib.contextmanager
    def accumulating(self, sync: bool) -> Iterator[None]:
        """Skip the gradient all-reduce for micro-batches before the last one of a step."""
        if sync or not hasattr(self.wrapped, "no_sync"):
            yield
        else:
            with self.wrapped.no_sync():
                yield

    def loss_scale(self) -> float | None:
        """The fp16 loss scale (for the penalty's scaled ``autograd.grad``), or None."""
        return self.scaler.get_scale() if self.scaler.is_enabled() else None

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def step(self) -> tuple[bool, float]:
        """Apply the accumulated gradients unless any is inf/NaN.

        Returns ``(applied, grad_norm)``. Gradients are all-reduced before this, so every rank makes the
        same decision. A skipped step is counted in ``skipped_steps`` and never applied.
        """
        self.scaler.unscale_(self.optimizer)
        params = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        norm = float(torch.nn.utils.get_total_norm([p.grad for p in params])) if params else 0.0
        applied = math.isfinite(norm)
        if self.scaler.is_enabled():
            self.scaler.step(self.optimizer)  # skips by itself on inf/NaN, consistent with `applied`
            self.scaler.update()
        elif applied:
            self.optimizer.step()
        if not applied:
            self.skipped_steps += 1
        self.optimizer.zero_grad(set_to_none=True)
        return applied, norm

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def sync_buffers(self) -> None:
        """Copy rank 0's buffers (BatchNorm statistics) to every rank.

        The critic runs under DDP with ``broadcast_buffers=False`` (it is called on real, fake and
        interpolated batches before one backward, which in-place buffer broadcasts would break), so ranks'
        running statistics drift apart; syncing after each step keeps the EMA, snapshots and checkpoints
        independent of which rank they come from.
        """
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            for buffer in self.module.buffers():
                dist.broadcast(buffer, src=0)

    # Checkpoint state. Model weights are saved by the trainer from ``module``; this is the rest.
    def save_training_state(self, folder: Path, name: str) -> None:
        """Write optimizer, scheduler and scaler state to ``folder/<name>-training.pt``.

        Called on every rank. Under DDP the state is identical on every rank, so rank 0 writes it once;
        ZeRO (b2b/zero.py) writes one partition per rank instead.
        """
        if _rank() == 0:
            torch.save(
                {
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "scaler": self.scaler.state_dict(),
                    "skipped_steps": self.skipped_steps,
                },
                folder / f"{name}-training.pt",
            )

    def load_training_state(self, folder: Path, name: str) -> None:
        state = torch.load(folder / f"{name}-training.pt", map_location="cpu", weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.skipped_steps = int(state.get("skipped_steps", 0))


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
