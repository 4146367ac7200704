"""The generator: latent → note probabilities through six transposed convolutions with self-attention
after the fourth, binary notes through a straight-through estimator, and a :class:`BarGate` that opens
or closes each track in each bar.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import cast

import numpy as np
import torch
from torch import nn

from b2b.model.layers import SelfAttention, autocast_disabled
from b2b.model.shape import layer_plan


def _generator_channels(width: int) -> list[int]:
    """Output channels of generator layers 1..5 (layer 6 outputs the tracks): the critic's, mirrored."""
    return [8 * width, 4 * width, 4 * width, 2 * width, width]


OUTPUTS = ("sigmoid", "binary_det", "binary_stoch")


GATE_LR_MULT = 0.1  # the bar gate learns this much slower than the rest (BarGate)


SILENT_MARGIN = 12.0  # logits below the threshold where the data has no note (init_output_bias)


def binarize(
    probs: torch.Tensor, output: str, threshold: float = 0.5, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Notes (0/1, the dtype of ``probs``) from note probabilities, the way ``output`` makes them.

    ``sigmoid`` and ``binary_det``: a cell is a note when its probability is at least ``threshold``;
    ``binary_stoch``: each cell is a Bernoulli draw with its probability, from ``generator`` (on the
    device of ``probs``) or the global torch RNG.
    """
    if output == "binary_stoch":
        noise = torch.rand(probs.shape, generator=generator, device=probs.device, dtype=probs.dtype)
        return (noise < probs).to(probs.dtype)
    if output in ("sigmoid", "binary_det"):
        return (probs >= threshold).to(probs.dtype)
    raise ValueError(f"generator output {output!r} is not one of {', '.join(OUTPUTS)}")


def straight_through(probs: torch.Tensor, output: str, threshold: float = 0.5) -> torch.Tensor:
    """Binary notes forward, the identity backward (BinaryMuseGAN's binary neurons, Dong & Yang 2018).

    The critic then sees exactly binary rolls, like the real ones, and cannot tell fakes by their
    in-between values; the generator still gets the gradient with respect to its probabilities.
    """
    return probs + (binarize(probs.detach(), output, threshold) - probs.detach())


class BarGate(nn.Module):
    """Latent → one logit per (track, bar): whether the track plays in the bar.

    A linear layer with StyleGAN's equalized learning rate and a learning-rate multiplier of
    :data:`GATE_LR_MULT`: parameters are stored ``1 / mult`` larger (the weights also ``sqrt(latent_dim)``
    larger) and scaled back in the forward pass, so that its logits have unit spread over normal latents
    and one Adam step moves the effective bias by ``mult * lr`` and each effective weight by ``mult * lr /
    sqrt(latent_dim)``, against ``lr`` for a plain layer. So the gate starts random in ``z``, calibrated to
    the data (:meth:`Generator.init_output_bias`), and moves slowly. Why: at the full learning rate the
    gates' bias drifted shut within a few hundred steps (silence is the critic's safest answer), and the
    voices played in 10-25 points fewer bars than the real ones.
    """

    def __init__(self, latent_dim: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, latent_dim) / GATE_LR_MULT)
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.weight_gain = GATE_LR_MULT / math.sqrt(latent_dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Gate logits ``(N, out_features)``, in float32 even under autocast: one flipped gate is a whole
        bar."""
        with autocast_disabled(z.device.type):
            return nn.functional.linear(z.float(), self.weight * self.weight_gain, self.bias * GATE_LR_MULT)

    @torch.no_grad()
    def set_bias(self, logits: torch.Tensor) -> None:
        """Make the effective bias ``logits``."""
        self.bias.copy_((logits / GATE_LR_MULT).to(self.bias.dtype))


class Generator(nn.Module):
    """Latent vector → piano roll: six transposed convolutions, attention after the fourth.

    Parameters
    ----------
    shape : sequence of int
        Sample shape ``(tracks, time, pitch)``; must pass :func:`check_shape`.
    latent_dim : int
        Size of the latent vector.
    width : int
        Channel multiplier; the last hidden layer has ``width`` channels, the first ``8 * width``.
    output : {"sigmoid", "binary_det", "binary_stoch"}
        What :meth:`forward` returns: note probabilities (the seed's sigmoid), or binary notes through a
        deterministic (``probs >= threshold``) or stochastic (Bernoulli) straight-through estimator.
    threshold : float
        Probability at which ``binary_det`` makes a note.
    pitch_bias : bool
        Add a learned bias per track and pitch to the output logits: the convolutions are the same at
        every pitch, so without it they must learn each voice's range from scratch.
    gate_segments : int
        With ``k > 0``, a :class:`BarGate` decides from the latent whether each track plays in each of ``k``
        equal time segments (the bars): notes sound only where the gate is open. 0: no gate.
    """

    def __init__(
        self,
        shape: Sequence[int],
        latent_dim: int,
        width: int,
        output: str = "sigmoid",
        threshold: float = 0.5,
        pitch_bias: bool = False,
        gate_segments: int = 0,
    ):
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"generator output {output!r} is not one of {', '.join(OUTPUTS)}")
        plan = layer_plan(shape)
        self.shape = plan.shape
        self.latent_dim = latent_dim
        self.output = output
        self.threshold = threshold
        channels = _generator_channels(width)
        layers: list[nn.Module] = [self._block(latent_dim, channels[0], plan.initial, (1, 1), 0)]
        ins = channels
        outs = channels[1:] + [plan.tracks]
        for i, (c_in, c_out, stride) in enumerate(zip(ins, outs, plan.strides, strict=True)):
            kernel = (stride[0] + 2, stride[1] + 2)
            last = i == len(plan.strides) - 1
            if last:
                layers.append(nn.Sequential(nn.ConvTranspose2d(c_in, c_out, kernel, stride, 1), nn.Sigmoid()))
            else:
                layers.append(self._block(c_in, c_out, kernel, stride, 1))
            if i == 2:  # after layer 4 (layers 2, 3, 4 are i = 0, 1, 2)
                layers.append(SelfAttention(c_out))
        self.net = nn.Sequential(*layers)
        self.pitch_bias = nn.Parameter(torch.zeros(plan.tracks, 1, plan.shape[2])) if pitch_bias else None
        if gate_segments and plan.shape[1] % gate_segments:
            raise ValueError(f"{plan.shape[1]} time steps do not split into {gate_segments} gate segments")
        self.gate_segments = gate_segments
        self.gate = BarGate(latent_dim, plan.tracks * gate_segments) if gate_segments else None
        if self.gate is not None:  # open everywhere until init_output_bias calibrates it to the data
            self.gate.set_bias(torch.full((plan.tracks * gate_segments,), SILENT_MARGIN))

    @staticmethod
    def _block(c_in: int, c_out: int, kernel, stride, padding: int) -> nn.Sequential:
        # No bias: BatchNorm's shift replaces it.
        return nn.Sequential(
            nn.ConvTranspose2d(c_in, c_out, kernel, stride, padding, bias=False),
            nn.BatchNorm2d(c_out),
            nn.PReLU(c_out),
        )

    def output_layer(self) -> nn.Sequential:
        """The last layer, ``Sequential(ConvTranspose2d, Sigmoid)``: its convolution makes the logits."""
        return cast(nn.Sequential, self.net[-1])

    def _output_bias(self) -> nn.Parameter:
        """The last convolution's bias: one per track."""
        return cast(nn.Parameter, self.output_layer()[0].bias)

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid outputs ``(N, tracks, time, pitch)`` for latents ``(N, latent_dim)``."""
        hidden = self.net[:-1](z.view(z.shape[0], self.latent_dim, 1, 1))
        out = self.output_layer()[0](hidden)
        return out if self.pitch_bias is None else out + self.pitch_bias

    def gate_probabilities(self, z: torch.Tensor) -> torch.Tensor:
        """The probability that each track plays in each segment, ``(N, tracks, segments, 1, 1)``."""
        assert self.gate is not None, "a generator without a bar gate has no gate probabilities"
        return torch.sigmoid(self.gate(z)).view(z.shape[0], -1, self.gate_segments, 1, 1)

    def _gated(self, notes: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        n, tracks, time, pitches = notes.shape
        per_segment = notes.view(n, tracks, self.gate_segments, time // self.gate_segments, pitches)
        return (per_segment * gate).view(n, tracks, time, pitches)

    def probabilities(self, z: torch.Tensor, draws: torch.Generator | None = None) -> torch.Tensor:
        """Note probabilities ``(N, tracks, time, pitch)`` in [0, 1) for latents ``(N, latent_dim)``.

        With a bar gate, the gates are decided as in training and closed bars are 0: ``binary_det`` opens
        a gate whose probability reaches the threshold, ``binary_stoch`` draws it (Bernoulli, from
        ``draws`` on the device of ``z``, or the global RNG), so that notes drawn from these probabilities
        silence whole bars as training's did; ``sigmoid`` scales the notes by the gate's probability.
        """
        probs = self.output_layer()[1](self.logits(z))
        if self.gate is None:
            return probs
        gate = self.gate_probabilities(z)
        if self.output != "sigmoid":
            gate = binarize(gate, self.output, self.threshold, draws)
        return self._gated(probs, gate)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """What the critic sees: probabilities (``sigmoid``) or straight-through binary notes (and gates)."""
        binary = self.output != "sigmoid"
        probs = self.output_layer()[1](self.logits(z))
        if binary:
            probs = straight_through(probs, self.output, self.threshold)
        if self.gate is None:
            return probs
        gate = self.gate_probabilities(z)
        if binary:
            gate = straight_through(gate, self.output, self.threshold)
        return self._gated(probs, gate)

    @torch.no_grad()
    def init_output_bias(
        self,
        density: np.ndarray | torch.Tensor,
        n_latents: int = 256,
        floor: float = 1e-6,
        activity: np.ndarray | None = None,
    ) -> None:
        """Start each track (or each track's pitch, with a pitch bias) at its share of on-cells in the data.

        ``density`` is ``(tracks, pitch)``: the share of steps each pitch of each track is on. Without a
        pitch bias the per-track mean sets the last convolution's bias; with one, the pitch bias is set.

        ``sigmoid`` and ``binary_stoch``: bias = logit(density), so the mean probability is about the
        density. ``binary_det``: the bias is calibrated so that the share of cells whose probability reaches
        ``threshold`` equals the density, on ``n_latents`` fixed latents (a cell starts at probability 0.5
        otherwise: half the cells on, or with logit(density) none). Where the data has no note at all, every
        logit starts :data:`SILENT_MARGIN` below the threshold. Densities are clipped to ``[floor, 1 -
        floor]``. The generator's state is otherwise unchanged (BatchNorm statistics included).

        With a bar gate, ``activity`` (``(tracks,)``, the share of bars each track plays in; all bars if
        None) opens each track's gate in that share of segments, and the notes start at the density within
        open segments (``density / activity``).
        """
        density = torch.as_tensor(np.asarray(density), dtype=torch.float64)
        tracks, pitches = self.shape[0], self.shape[2]
        if density.shape != (tracks, pitches):
            raise ValueError(
                f"density has shape {tuple(density.shape)}, the generator's output {(tracks, pitches)}"
            )
        conv_bias = self._output_bias()
        z = torch.randn(n_latents, self.latent_dim, generator=torch.Generator().manual_seed(0))
        if self.gate is not None:
            # The notes only sound where the gate is open: start them at the density within active segments.
            share = torch.ones(tracks, dtype=torch.float64) if activity is None else torch.as_tensor(activity)
            share = share.to(torch.float64)
            if share.shape != (tracks,):
                raise ValueError(
                    f"activity has shape {tuple(share.shape)}, the generator's tracks ({tracks},)"
                )
            density = torch.where(share[:, None] > 0, density / share.clamp(min=floor)[:, None], density)
            density = density.clamp(max=1.0)
            self._init_gate_bias(share, z, floor)
        if self.pitch_bias is None:
            density = density.mean(dim=1, keepdim=True)  # (tracks, 1): the convolution's bias
        silent = density <= 0
        clipped = density.clamp(floor, 1 - floor)
        if self.output != "binary_det":
            bias = torch.logit(clipped)
        else:
            probe = copy.deepcopy(self).train()  # batch statistics, as in training; self's buffers stay
            probe._output_bias().zero_()
            if probe.pitch_bias is not None:
                probe.pitch_bias.zero_()
            logits = probe.logits(z).double().transpose(0, 1)  # (tracks, n, time, pitch)
            if self.pitch_bias is None:
                rows = logits.reshape(tracks, 1, -1)
            else:
                rows = logits.permute(0, 3, 1, 2).reshape(tracks, pitches, -1)
            bias = self._calibrated_bias(rows, clipped, silent)
        if self.pitch_bias is None:
            conv_bias.copy_(bias[:, 0].to(conv_bias.dtype))
        else:
            conv_bias.zero_()
            self.pitch_bias.copy_(bias[:, None, :].to(self.pitch_bias.dtype))

    def _calibrated_bias(self, rows: torch.Tensor, share: torch.Tensor, silent: torch.Tensor) -> torch.Tensor:
        """The bias that puts a ``share`` of each row's logits at or above the threshold (``rows``:
        ``(..., samples)``); silent rows start :data:`SILENT_MARGIN` below their largest logit."""
        ordered = rows.sort(dim=-1).values
        last = ordered.shape[-1] - 1
        k = ((1 - share) * last).round().long().clamp(0, last)
        cut = ordered.gather(-1, k[..., None])[..., 0]
        # Where the data has no note, start far below the threshold: the shared layers' features grow in
        # training, and a margin of a few logits was seen to let stray notes into silent tracks.
        cut = torch.where(silent, ordered[..., -1] + SILENT_MARGIN, cut)
        target = math.log(self.threshold / (1 - self.threshold)) if 0 < self.threshold < 1 else 0.0
        return target - cut

    def _init_gate_bias(self, share: torch.Tensor, z: torch.Tensor, floor: float) -> None:
        """Open each track's gate in its ``share`` of segments (on the latents ``z``)."""
        assert self.gate is not None, "a generator without a bar gate has no gate bias"
        silent = share <= 0
        clipped = share.clamp(floor, 1 - floor)
        self.gate.bias.zero_()
        logits = self.gate(z).double().view(len(z), -1, self.gate_segments)  # (n, tracks, segments)
        rows = logits.permute(1, 0, 2).reshape(len(share), -1)
        if self.output == "binary_det":  # the share of gates at or above the threshold
            bias = self._calibrated_bias(rows, clipped, silent)
        else:  # the mean gate probability (a Bernoulli draw, or a soft gate): bisect, it grows with the bias
            low, high = torch.full_like(clipped, -30.0), torch.full_like(clipped, 30.0)
            for _ in range(60):
                mid = (low + high) / 2
                above = torch.sigmoid(rows + mid[:, None]).mean(dim=1) > clipped
                low, high = torch.where(above, low, mid), torch.where(above, mid, high)
            bias = torch.where(silent, rows.max(dim=1).values.neg() - SILENT_MARGIN, (low + high) / 2)
        self.gate.set_bias(bias.repeat_interleave(self.gate_segments))
