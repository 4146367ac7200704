"""The shape plan: how the generator's strides and the critic's mirror them fit a sample shape.

Every axis of a sample must be ``d0 × s2 × … × s6`` with ``d0 <= MAX_INITIAL`` and every stride in
``STRIDES``; :func:`layer_plan` finds the cheapest such factorization, and :func:`check_shape` refuses
a shape that has none, naming the axis and the nearest sizes that work.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

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
