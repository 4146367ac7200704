"""A network under training: the module, what its training forwards go through, its optimizer, its
learning-rate schedule and its loss scaling, saved and restored as one stateful part.

The trainer drives the generator and the critic through the same small interface, :class:`Network`, so
the plain DDP path (here, through accelerate) and the DeepSpeed ZeRO path (``zero.py``) share one loop.

Mixed precision is owned here rather than by accelerate: accelerate silently runs ``mixed_precision=fp16``
in fp32 on a CPU (no autocast, no scaler), which would make the fp16 path untestable on CPU. With our own
``torch.autocast`` and ``torch.amp.GradScaler`` the fp16 code is the same on every device.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from b2b.runtime import ranks

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def resolve_precision(name: str, device: torch.device) -> tuple[str, str]:
    """The precision ``train.precision`` means on ``device``, and why: ``auto`` is bf16 on a CUDA GPU with
    bf16 support, else fp32 (on a CPU bf16 autocast gains little speed for its lost precision)."""
    if name != "auto":
        return name, "as configured"
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16", "auto: this GPU has bf16"
    return "fp32", f"auto: no bf16 GPU ({device.type})"


@dataclass
class Precision:
    """Autocast settings for forward passes; the gradient penalty always runs in fp32 (losses.py)."""

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


def build_optimizer(
    module: nn.Module, lr: float, betas: Sequence[float], impl: str = "auto"
) -> torch.optim.Adam:
    """The Adam optimizer both paths use (DDP here, ZeRO in b2b/training/zero.py).

    ``impl``: ``fused`` (one kernel for all parameters), ``foreach`` (a few batched kernels), ``loop``
    (one parameter at a time), or ``auto``: fused where the parameters live on a GPU, else foreach.
    All compute the same update (tests/test_speed.py compares them).
    """
    if impl == "auto":
        on_gpu = next(module.parameters()).device.type == "cuda"
        impl = "fused" if on_gpu else "foreach"
    flags = {"fused": {"fused": True}, "foreach": {"foreach": True}, "loop": {"foreach": False}}[impl]
    return torch.optim.Adam(module.parameters(), lr=lr, betas=(betas[0], betas[1]), **flags)


class Network:
    """A network under training with DDP (or a single process).

    Parameters
    ----------
    module : nn.Module
        The bare network: used for ``requires_grad_``, the EMA, checkpoints and forwards that must not
        go through DDP (e.g. the critic inside the generator's step, whose gradients are not wanted).
    wrapped : nn.Module
        What forward passes that train this network go through (DDP, or ``module`` itself).
    optimizer : torch.optim.Optimizer
        Its learning rate is set by :meth:`set_lr` (the trainer's schedule).
    scaler : torch.amp.GradScaler
        Disabled unless the precision is fp16.
    """

    def __init__(
        self,
        module: nn.Module,
        wrapped: nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
    ):
        self.module = module
        self.wrapped = wrapped
        # what training forwards call: ``wrapped``, or it compiled (:meth:`compile`)
        self.fast: Callable[..., torch.Tensor] = wrapped
        self.optimizer = optimizer
        self.scaler = scaler
        self.skipped_steps = 0

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        return self.fast(*args, **kwargs)

    def release(self) -> None:
        """Drop the training wrapper before the process group goes: forwards go to ``module`` from now on.

        DDP's reducer holds the process group and its last all-reduce, and DDP sits in reference cycles.
        Left for the interpreter's exit it is freed after the process group, and gloo's worker thread
        then aborts the process (SIGABRT: "terminate called without an active exception").
        """
        self.wrapped = self.fast = self.module

    def compile(self) -> None:
        """Run training forwards through ``torch.compile(wrapped)``; ``wrapped`` stays eager for passes
        that differentiate twice (the gradient penalty)."""
        self.fast = torch.compile(self.wrapped)

    @contextlib.contextmanager
    def accumulating(self, sync: bool) -> Iterator[None]:
        """Skip the gradient all-reduce for micro-batches before the last one of a step."""
        if sync or not hasattr(self.wrapped, "no_sync"):
            yield
        else:
            with self.wrapped.no_sync():  # type: ignore[operator]  # DDP's (hasattr above), not nn.Module's
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

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def sync_buffers(self) -> None:
        """Copy rank 0's buffers (BatchNorm statistics) to every rank.

        The critic runs under DDP with ``broadcast_buffers=False`` (it is called on real, fake and
        interpolated batches before one backward, which in-place buffer broadcasts would break), so ranks'
        running statistics drift apart; syncing after each step keeps the EMA, snapshots and checkpoints
        independent of which rank they come from.
        """
        for buffer in self.module.buffers():
            ranks.broadcast(buffer)

    # Checkpoint state: identical on every rank under DDP (rank 0 writes it once).
    def state_dict(self) -> dict:
        return {
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "skipped_steps": self.skipped_steps,
        }

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
