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

import contextlib
import copy
import functools
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from b2b.errors import ShapeError

# Largest initial grid size per axis. Layer 1 is a dense map from the latent to C × t0 × p0 values (and
# the critic's last layer a dense map from C × t0 × p0 to one score); a kernel larger than this is a
# fully-connected layer in disguise whose parameters grow with the sample instead of with the width,
# and it leaves the convolutions too little upsampling to learn local structure.
MAX_INITIAL = 16
STRIDES = (1, 2, 3, 4)
N_UPSAMPLE = 5  # generator layers 2-6 / critic convs 1-5
LARGEST_AXIS = MAX_INITIAL * max(STRIDES) ** N_UPSAMPLE
SHAPE_RULE = (
    f"each of time and pitch must equal d0 × s1 × … × s{N_UPSAMPLE} with an initial size d0 <= {MAX_INITIAL} "
    f"and every stride s_i in {{1, 2, 3, 4}} "
    f"(any size up to {MAX_INITIAL} works; the largest is {LARGEST_AXIS})"
)


@dataclass(frozen=True)
class AxisPlan:
    """How one axis is built: initial size, then one stride per upsampling layer (generator order)."""

    size: int
    initial: int
    strides: tuple[int, ...]

    def sizes(self) -> list[int]:
        """Size after generator layers 1..6."""
        out = [self.initial]
        for s in self.strides:
            out.append(out[-1] * s)
        return out


@dataclass(frozen=True)
class LayerPlan:
    """The grid of every layer for a sample shape ``(tracks, time, pitch)``."""

    shape: tuple[int, int, int]
    time: AxisPlan
    pitch: AxisPlan

    @property
    def tracks(self) -> int:
        return self.shape[0]

    @property
    def initial(self) -> tuple[int, int]:
        return (self.time.initial, self.pitch.initial)

    @property
    def strides(self) -> list[tuple[int, int]]:
        """(time, pitch) stride of generator layers 2..6; the critic uses them in reverse order."""
        return list(zip(self.time.strides, self.pitch.strides, strict=True))

    def generator_grids(self) -> list[tuple[int, int]]:
        """(time, pitch) after each of the generator's six layers."""
        return list(zip(self.time.sizes(), self.pitch.sizes(), strict=True))

    def critic_grids(self) -> list[tuple[int, int]]:
        """(time, pitch) after each of the critic's five convolutions."""
        return self.generator_grids()[-2::-1]


def _cost(strides: tuple[int, ...], initial: int) -> tuple[int, int, int]:
    # Prefer stride 2 (kernel 4 overlaps evenly), then 3; strides 1 (no upsampling) and 4 (kernel 6,
    # least overlap) come last; then the smaller initial grid (more of the axis built by convolutions).
    return (strides.count(1) + strides.count(4), strides.count(3), initial)


@functools.lru_cache(maxsize=4096)
def _plan_axis(size: int) -> AxisPlan | None:
    best = None
    for combo in itertools.combinations_with_replacement(STRIDES, N_UPSAMPLE):
        product = math.prod(combo)
        if size % product or size // product > MAX_INITIAL:
            continue
        candidate = (_cost(combo, size // product), combo)
        if best is None or candidate < best:
            best = candidate
    if best is None:
        return None
    # Ascending strides in the generator: the cheap stride-1 layers run on the small grids, and the
    # grid at the attention layer (after layer 4) stays small (attention is quadratic in positions).
    strides = tuple(sorted(best[1]))
    return AxisPlan(size=size, initial=size // math.prod(strides), strides=strides)


def _nearest(size: int) -> tuple[int | None, int | None]:
    below = next((n for n in range(min(size, LARGEST_AXIS + 1) - 1, 0, -1) if _plan_axis(n)), None)
    above = next((n for n in range(size + 1, LARGEST_AXIS + 1) if _plan_axis(n)), None)
    return below, above


def layer_plan(shape: Sequence[int]) -> LayerPlan:
    """Plan the networks' layers for a sample shape.

    Parameters
    ----------
    shape : sequence of int
        ``(tracks, time, pitch)``.

    Returns
    -------
    LayerPlan
        Initial grid and per-layer strides for both axes.

    Raises
    ------
    ShapeError
        If the shape is not three positive sizes or an axis cannot be produced; the message names the
        axis, the size, the rule and the nearest producible sizes.
    """
    try:
        dims = tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        raise ShapeError(f"sample shape {shape!r} is not [tracks, time, pitch] of integers") from None
    if len(dims) != 3 or min(dims) < 1:
        raise ShapeError(f"sample shape {list(dims)} is not [tracks, time, pitch] of positive sizes")
    plans = {}
    for axis, size in zip(("time", "pitch"), dims[1:], strict=True):
        plan = _plan_axis(size)
        if plan is None:
            below, above = _nearest(size)
            near = " and ".join(str(n) for n in (below, above) if n is not None)
            raise ShapeError(
                f"sample shape {list(dims)}: the networks cannot produce {axis} size {size}; {SHAPE_RULE}. "
                f"Nearest producible {axis} sizes: {near}"
            )
        plans[axis] = plan
    return LayerPlan(shape=dims, time=plans["time"], pitch=plans["pitch"])


def check_shape(shape: Sequence[int]) -> None:
    """Raise :class:`ShapeError` (saying which sizes work) if the networks cannot handle ``shape``.

    Parameters
    ----------
    shape : sequence of int
        ``(tracks, time, pitch)``.
    """
    layer_plan(shape)


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


def _generator_channels(width: int) -> list[int]:
    """Output channels of generator layers 1..5 (layer 6 outputs the tracks): the critic's, mirrored."""
    return [8 * width, 4 * width, 4 * width, 2 * width, width]


def _critic_channels(width: int) -> list[int]:
    """Output channels of critic convolutions 1..5."""
    return [width, 2 * width, 4 * width, 4 * width, 8 * width]


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

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid outputs ``(N, tracks, time, pitch)`` for latents ``(N, latent_dim)``."""
        hidden = self.net[:-1](z.view(z.shape[0], self.latent_dim, 1, 1))
        out = self.net[-1][0](hidden)
        return out if self.pitch_bias is None else out + self.pitch_bias

    def gate_probabilities(self, z: torch.Tensor) -> torch.Tensor:
        """The probability that each track plays in each segment, ``(N, tracks, segments, 1, 1)``."""
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
        probs = self.net[-1][1](self.logits(z))
        if self.gate is None:
            return probs
        gate = self.gate_probabilities(z)
        if self.output != "sigmoid":
            gate = binarize(gate, self.output, self.threshold, draws)
        return self._gated(probs, gate)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """What the critic sees: probabilities (``sigmoid``) or straight-through binary notes (and gates)."""
        binary = self.output != "sigmoid"
        probs = self.net[-1][1](self.logits(z))
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
        density: np.ndarray,
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
        conv = self.net[-1][0]
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
            probe.net[-1][0].bias.zero_()
            if probe.pitch_bias is not None:
                probe.pitch_bias.zero_()
            logits = probe.logits(z).double().transpose(0, 1)  # (tracks, n, time, pitch)
            if self.pitch_bias is None:
                rows = logits.reshape(tracks, 1, -1)
            else:
                rows = logits.permute(0, 3, 1, 2).reshape(tracks, pitches, -1)
            bias = self._calibrated_bias(rows, clipped, silent)
        if self.pitch_bias is None:
            conv.bias.copy_(bias[:, 0].to(conv.bias.dtype))
        else:
            conv.bias.zero_()
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
    for e, b in zip(ema.buffers(), model.buffers(), strict=True):
        e.copy_(b)


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
