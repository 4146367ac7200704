"""Where this process stands among the ranks of a run, and the few collectives b2b needs outside DDP.

Every function works with or without an initialized process group (a single process is rank 0 of 1), so
the same code runs under ``python -m b2b.train``, ``torchrun``, ``accelerate launch`` and ``deepspeed``.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's global rank (0 without a process group)."""
    return dist.get_rank() if initialized() else 0


def world_size() -> int:
    """The number of ranks (1 without a process group)."""
    return dist.get_world_size() if initialized() else 1


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """In place: the element-wise sum over ranks."""
    if world_size() > 1:
        dist.all_reduce(tensor)
    return tensor


def broadcast(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """In place: rank ``src``'s values on every rank."""
    if world_size() > 1:
        dist.broadcast(tensor, src=src)
    return tensor


def any_true(flag: bool) -> bool:
    """Whether ``flag`` is true on any rank (a collective: every rank must call it)."""
    if world_size() == 1:
        return bool(flag)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def ensure_process_group(device_type: str) -> None:
    """A world of one when no launcher started a process group (DeepSpeed needs torch.distributed)."""
    os.environ.setdefault("LOCAL_RANK", "0")  # DeepSpeed reads it; every multi-process launcher sets it
    if not initialized():
        backend = dist.get_default_backend_for_device(device_type)
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
