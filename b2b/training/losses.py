"""WGAN-GP losses: critic loss with a per-sample gradient penalty kept in float32, generator loss.

The critic minimizes ``E[D(fake)] - E[D(real)] + λ · E[(‖∇D(x̂)‖₂ - 1)²]`` with ``x̂`` drawn per sample
on the segment between a real and a fake sample (Gulrajani et al. 2017); the generator minimizes
``-E[D(fake)]``. The penalty is a second-order quantity (its backward differentiates a gradient), so it
is computed in float32 even when the rest of the step runs under bf16/fp16 autocast.

Distributed use: the penalty takes gradients with respect to the *input* only
(``torch.autograd.grad(..., x̂, create_graph=True)``), and the caller runs one ordinary backward of
``CriticLoss.total``, so DDP reduces the parameter gradients exactly once.

Each loss reports its own statistics (``d_loss``, ``wasserstein``, ``penalty``, ``grad_norm_x``,
``g_loss``) to the active :class:`Collector`, which averages them over a step and all ranks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from b2b.model.layers import autocast_disabled
from b2b.training.stats import report


@dataclass
class CriticLoss:
    """One critic update's loss and its estimates (detached).

    Attributes
    ----------
    total : Tensor
        The differentiable loss to back-propagate.
    wasserstein : Tensor
        Estimate of the Wasserstein distance, ``E[D(real)] - E[D(fake)]`` (detached).
    penalty : Tensor or None
        ``E[(‖∇D(x̂)‖ - 1)²]`` before the factor λ·k (detached); None on updates without the penalty.
    """

    total: torch.Tensor
    wasserstein: torch.Tensor
    penalty: torch.Tensor | None


def _as_float(x: torch.Tensor) -> torch.Tensor:
    # Rolls may arrive as bool/uint8 from the loader.
    return x if x.is_floating_point() else x.float()


def gradient_penalty(
    critic: Callable[..., torch.Tensor],
    real: torch.Tensor,
    fake: torch.Tensor,
    *,
    eps: torch.Tensor | None = None,
    loss_scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient penalty ``E[(‖∇D(x̂)‖₂ - 1)²]``, all in float32.

    Float32 tensors and no autocast; on GPUs with TF32 (``train.tf32``, Ampere and later) cuDNN and
    cuBLAS run its convolutions and matmuls on TF32 tensor cores, as every float32 operation then is.

    Parameters
    ----------
    critic : nn.Module
        Called as ``critic(x_hat, full_precision=True)``; may be wrapped (DDP, accelerate).
    real, fake : Tensor
        ``(N, tracks, time, pitch)``; ``fake`` is detached (the penalty trains only the critic).
    eps : Tensor, optional
        Interpolation weight per sample, ``N`` values in [0, 1]; drawn uniformly from the global torch
        RNG when omitted.
    loss_scale : float, optional
        fp16 loss scale. The critic output is multiplied by it before differentiating and the gradient
        divided by it afterwards (PyTorch AMP's gradient-penalty recipe), so small gradients do not
        underflow in the scaled backward of the total loss.

    Returns
    -------
    (penalty, grad_norm) : (Tensor, Tensor)
        The differentiable penalty (0-dim float32) and the detached mean gradient norm.
    """
    n = real.shape[0]
    with autocast_disabled(real.device.type):
        if eps is None:
            eps = torch.rand(n, device=real.device)
        eps = eps.to(device=real.device, dtype=torch.float32).reshape(n, *([1] * (real.dim() - 1)))
        real32 = _as_float(real).detach().float()
        fake32 = fake.detach().float()
        x_hat = (eps * real32 + (1 - eps) * fake32).requires_grad_(True)
        scores = critic(x_hat, full_precision=True).float()
        scale = 1.0 if loss_scale is None else float(loss_scale)
        (grads,) = torch.autograd.grad(scores.sum() * scale, x_hat, create_graph=True)
        if loss_scale is not None:
            grads = grads / scale
        norms = grads.flatten(1).norm(2, dim=1)
        penalty = ((norms - 1) ** 2).mean()
    return penalty, norms.mean().detach()


def critic_loss(
    critic: Callable[..., torch.Tensor],  # a module, or a Network that calls its wrapped module
    real: torch.Tensor,
    fake: torch.Tensor,
    *,
    gp_lambda: float,
    gp_weight: float = 1.0,
    eps: torch.Tensor | None = None,
    loss_scale: float | None = None,
    penalty_critic: nn.Module | None = None,
) -> CriticLoss:
    """Critic loss ``E[D(fake)] - E[D(real)] + λ · k · GP``.

    Parameters
    ----------
    critic : nn.Module
        The (possibly wrapped) critic; called on ``real``, ``fake`` and the interpolates before the
        caller's single backward of ``total``.
    real, fake : Tensor
        ``(N, tracks, time, pitch)``; ``fake`` is detached.
    gp_lambda : float
        λ, the penalty weight (10 in the paper).
    gp_weight : float
        Extra factor k for a lazy penalty computed every k critic steps (StyleGAN2): k on penalty steps,
        0 on the others (the penalty is then not computed at all).
    eps, loss_scale
        Passed to :func:`gradient_penalty`.
    penalty_critic : nn.Module, optional
        The same critic for the penalty's pass, when ``critic`` cannot differentiate twice (a
        ``torch.compile``-d critic: compiled graphs have no double backward); default ``critic``.

    Returns
    -------
    CriticLoss
    """
    d_real = critic(_as_float(real)).float().mean()
    d_fake = critic(fake.detach()).float().mean()
    total = d_fake - d_real
    wasserstein = (d_real - d_fake).detach()
    penalty = None
    if gp_weight > 0 and gp_lambda > 0:
        penalty, grad_norm = gradient_penalty(
            penalty_critic or critic, real, fake, eps=eps, loss_scale=loss_scale
        )
        total = total + (gp_lambda * gp_weight) * penalty
        penalty = penalty.detach()
        report("penalty", penalty)
        report("grad_norm_x", grad_norm)
    report("d_loss", total)
    report("wasserstein", wasserstein)
    return CriticLoss(total=total, wasserstein=wasserstein, penalty=penalty)


def generator_loss(critic: nn.Module, fake: torch.Tensor) -> torch.Tensor:
    """Generator loss ``-E[D(fake)]`` (float32, differentiable through ``fake``).

    Parameters
    ----------
    critic : nn.Module
        The critic; its parameters receive gradients too unless the caller freezes them, so the caller
        steps only the generator's optimizer.
    fake : Tensor
        Generated samples, attached to the generator's graph.
    """
    loss = -critic(fake).float().mean()
    report("g_loss", loss)
    return loss
