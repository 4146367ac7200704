"""Layers shared by the generator and the critic: self-attention, the critic's normalizations, the
minibatch-deviation channel, and an autocast-off region for float32 passes.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn


def autocast_disabled(device_type: str) -> contextlib.AbstractContextManager:
    """A region where autocast is off (float32 compute), also inside an enclosing autocast region.

    Devices without autocast (``meta``, used to count parameters and FLOPs without allocating) get a
    no-op context.
    """
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


class SelfAttention(nn.Module):
    """Self-attention over the positions of a feature map (SAGAN), added to the input.

    The output is ``x + gamma * attention(x)`` with ``gamma`` starting at 0, so a fresh block is the
    identity and the network learns how much non-local context to mix in.

    Parameters
    ----------
    channels : int
        Channels of the input; query and key use ``max(1, channels // 8)``.
    """

    def __init__(self, channels: int):
        super().__init__()
        inner = max(1, channels // 8)
        self.query = nn.Conv2d(channels, inner, 1)
        self.key = nn.Conv2d(channels, inner, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(()))
        # Scaled as in the Transformer (SAGAN does not scale): wide models would otherwise saturate the
        # softmax at initialization.
        self.scale = inner**-0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q = self.query(x).flatten(2)  # (N, C', HW)
        k = self.key(x).flatten(2)
        v = self.value(x).flatten(2)  # (N, C, HW)
        # Explicit matmul + softmax rather than scaled_dot_product_attention: the fused kernels have no
        # double backward, which the gradient penalty needs.
        attn = torch.softmax(torch.bmm(q.transpose(1, 2), k) * self.scale, dim=-1)  # (N, HW, HW)
        out = torch.bmm(v, attn.transpose(1, 2)).view(n, c, h, w)
        return x + self.gamma * out


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "layer":
        # Normalizes each sample over (C, H, W), so one sample's score never depends on the others and
        # the per-sample gradient penalty stays valid (WGAN-GP §4).
        return nn.GroupNorm(1, channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"critic norm {kind!r} is not one of 'batch', 'layer', 'none'")


class MinibatchStd(nn.Module):
    """Appends one channel: the features' standard deviation across a group of samples (StyleGAN).

    A critic that sees how much a group of samples differs can tell a collapsed generator (near-identical
    samples) from real data, whose samples differ. Groups are consecutive samples; the group size is the
    largest divisor of the batch not above ``group``.
    """

    def __init__(self, group: int):
        super().__init__()
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g = next(k for k in range(min(self.group, n), 0, -1) if n % k == 0)
        y = x.reshape(g, n // g, c, h, w)
        std = (y - y.mean(dim=0)).square().mean(dim=0).add(1e-8).sqrt()  # (n/g, c, h, w)
        feature = std.mean(dim=(1, 2, 3)).reshape(1, n // g, 1, 1, 1).expand(g, n // g, 1, h, w)
        return torch.cat([x, feature.reshape(n, 1, h, w)], dim=1)
