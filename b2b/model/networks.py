"""The seed's networks: a transposed-convolution generator and a convolutional critic, both with
self-attention, sized by a :class:`LayerPlan` that fits any producible sample shape.

Geometry. A sample is ``(tracks, time, pitch)``; tracks are channels. The generator's first layer maps
the latent vector (as a 1×1 image) to an initial grid ``(t0, p0)`` with a kernel of that size; layers
2–6 each scale an axis by a stride ``s`` in {1, 2, 3, 4} (kernel ``s + 2``, padding 1, so the output is
exactly ``input × s``). So every axis must be ``d0 × s2 × … × s6`` with ``d0 <= MAX_INITIAL``. The
critic mirrors this with five convolutions (stride ``s``, kernel ``s + 2``, padding 1: ``in → in / s``)
that end on the same initial grid, then flatten, dropout and a linear layer to one score.

Output. The last layer's logits, plus a learned bias per track and pitch, give note probabilities; what
the critic sees is set by ``model.output`` (probabilities, or binary notes through a straight-through
estimator). A :class:`BarGate` from the latent opens or closes each track in each bar in front of them.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from b2b.model.critic import Critic
from b2b.model.generator import Generator
from b2b.model.shape import check_shape


def build_models(cfg, shape: Sequence[int], n_bars: int) -> tuple[Generator, Critic]:
    """Build the generator and critic for ``shape`` from ``cfg.model``.

    Parameters
    ----------
    cfg : b2b.config.Config
        Uses ``model.latent_dim``, ``g_width``, ``d_width``, ``output``, ``pitch_bias``, ``bar_gate``,
        ``critic_norm``, ``critic_norm_first``, ``mbstd_group``, ``dropout`` and ``sync_batchnorm``
        (BatchNorm layers become SyncBatchNorm; the config refuses it for a critic with the gradient
        penalty), and ``train.threshold``.
    shape : sequence of int
        ``(tracks, time, pitch)``.
    n_bars : int
        Bars per sample: the bar gate's segments (``model.bar_gate``).

    Returns
    -------
    (Generator, Critic)
    """
    m = cfg.model
    check_shape(shape)
    generator = Generator(
        shape,
        m.latent_dim,
        m.g_width,
        output=m.output,
        threshold=cfg.train.threshold,
        pitch_bias=m.pitch_bias,
        gate_segments=n_bars if m.bar_gate else 0,
    )
    critic = Critic(
        shape,
        m.d_width,
        norm=m.critic_norm,
        dropout=m.dropout,
        mbstd_group=m.mbstd_group,
        norm_first=m.critic_norm_first,
    )
    if m.sync_batchnorm:
        generator = nn.SyncBatchNorm.convert_sync_batchnorm(generator)
        critic = nn.SyncBatchNorm.convert_sync_batchnorm(critic)
    return generator, critic
