"""The EMA generator: its decay schedule, its update, and standing BatchNorm statistics for it."""

from __future__ import annotations

import torch
from torch import nn

from b2b.model.generator import Generator


def ema_beta(beta: float, rampup: float, samples_seen: int, batch: int) -> float:
    """The EMA decay for one step: ``beta``, or shorter early in training (StyleGAN2's ramp-up).

    With ``rampup`` the EMA's half-life is at most ``rampup * samples_seen`` samples, so it does not
    average weights from far back in a short or young run: ``min(beta, 0.5 ** (batch / half_life))``.
    """
    if rampup <= 0 or samples_seen <= 0:
        return beta
    return min(beta, 0.5 ** (batch / (rampup * samples_seen)))


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, beta: float) -> None:
    """Move the EMA generator's weights toward ``model``'s: ``ema = beta * ema + (1 - beta) * model``."""
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p, 1.0 - beta)
    for ema_buffer, buffer in zip(ema.buffers(), model.buffers(), strict=True):
        ema_buffer.copy_(buffer)


@torch.no_grad()
def recalibrate_batchnorm(generator: Generator, batch_size: int, n_batches: int = 16, seed: int = 0) -> None:
    """Re-estimate the generator's BatchNorm statistics from its own weights ("standing statistics",
    BigGAN): the running mean and variance become the average over ``n_batches`` batches of
    ``batch_size`` fixed latents, taken in training mode. Leaves the generator in eval mode.

    An EMA generator needs this: its weights are an average, but the statistics it would otherwise
    carry belong to the raw generator's weights, and a note is a probability crossing a threshold, so
    the mismatch can silence a track or double it. Deterministic: the same weights give the same
    statistics, on every rank and after a resume.
    """
    norms = [m for m in generator.modules() if isinstance(m, nn.BatchNorm2d | nn.SyncBatchNorm)]
    momenta = [m.momentum for m in norms]
    device = next(generator.parameters()).device
    latents = torch.randn(
        n_batches, batch_size, generator.latent_dim, generator=torch.Generator().manual_seed(seed)
    )
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches below
    generator.train()
    for z in latents:
        generator.logits(z.to(device))  # the statistics live in the convolutions: the output is not needed
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    generator.eval()
