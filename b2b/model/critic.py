"""The critic: piano roll → one unbounded score per sample, five convolutions with self-attention after
the third, dropout and a linear head.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from b2b.model.layers import MinibatchStd, SelfAttention, _norm, autocast_disabled
from b2b.model.shape import layer_plan


def _critic_channels(width: int) -> list[int]:
    """Output channels of critic convolutions 1..5."""
    return [width, 2 * width, 4 * width, 4 * width, 8 * width]


class Critic(nn.Module):
    """Piano roll → one unbounded score per sample: five convolutions, attention after the third.

    Parameters
    ----------
    shape : sequence of int
        Sample shape ``(tracks, time, pitch)``; must pass :func:`check_shape`.
    width : int
        Channels of the first convolution; the last has ``8 * width``.
    norm : {"batch", "layer", "none"}
        Normalization after each convolution. "batch" is the seed's, but it makes a sample's score
        depend on the rest of its batch, which the per-sample gradient penalty assumes it does not.
    dropout : float
        Dropout before the final linear layer.
    mbstd_group : int
        Group size of a :class:`MinibatchStd` channel before the head; 0 leaves it out (the seed's).
    norm_first : bool
        Normalize the first convolution too (the seed's). Without it the first convolution has a bias and
        no normalization (as DCGAN's discriminator): with a bias-free first convolution followed by a
        normalization, the critic cannot tell a roll from the same roll scaled, so on the segment from a
        silent fake to a real roll it is constant and its gradient grows as 1/ε, which the gradient
        penalty then fights.
    """

    def __init__(
        self,
        shape: Sequence[int],
        width: int,
        norm: str = "layer",
        dropout: float = 0.3,
        mbstd_group: int = 0,
        norm_first: bool = True,
    ):
        super().__init__()
        plan = layer_plan(shape)
        self.shape = plan.shape
        self.norm = norm
        channels = _critic_channels(width)
        layers: list[nn.Module] = []
        c_in = plan.tracks
        for i, (c_out, stride) in enumerate(zip(channels, plan.strides[::-1], strict=True)):
            kernel = (stride[0] + 2, stride[1] + 2)
            kind = norm if norm_first or i > 0 else "none"
            conv = nn.Conv2d(c_in, c_out, kernel, stride, 1, bias=kind == "none")  # norms have a shift
            layers.append(nn.Sequential(conv, _norm(kind, c_out), nn.PReLU(c_out)))
            if i == 2:
                layers.append(SelfAttention(c_out))
            c_in = c_out
        if mbstd_group:
            layers.append(MinibatchStd(mbstd_group))
            c_in += 1
        self.body = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(c_in * plan.initial[0] * plan.initial[1], 1)

    def _score(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.body(x).flatten(1))).squeeze(1)

    def forward(self, x: torch.Tensor, full_precision: bool = False) -> torch.Tensor:
        """Score ``x`` of shape ``(N, tracks, time, pitch)``; returns ``(N,)``.

        With ``full_precision=True`` the critic runs in float32 even inside an autocast region (the
        gradient penalty's pass). The inner ``autocast(enabled=False)`` is needed because wrappers such
        as accelerate's ``prepare()`` enter autocast inside ``forward``, where an outer disable is lost.
        """
        if not full_precision:
            return self._score(x)
        with autocast_disabled(x.device.type):
            return self._score(x.float())
