"""Training statistics that the code computing them reports, averaged over a step and all ranks.

As StyleGAN2-ADA's ``training_stats``: a loss calls :func:`report` with what it wants logged (the
Wasserstein estimate, the penalty, ...) and the loop calls :meth:`Collector.collect` once per step. A
statistic reported on some micro-batches only (the penalty under a lazy schedule) is averaged over the
times it was reported. Values stay on the device until ``collect``, which makes one all-reduce and one
host transfer for all of them.
"""

from __future__ import annotations

import math

import torch

from b2b.runtime import ranks

_active: Collector | None = None


def report(name: str, value: torch.Tensor | float, weight: float = 1.0) -> None:
    """Add ``value`` (a scalar, detached here) under ``name`` to the active collector, if any."""
    if _active is not None:
        _active.add(name, value, weight)


class Collector:
    """Sums of reported values per name for one step; :meth:`collect` averages them over all ranks.

    Every rank must report the same names in the same step (they run the same phases), so the
    all-reduce lines up.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}
        self.weights: dict[str, float] = {}

    def __enter__(self) -> Collector:
        global _active
        self._previous, _active = _active, self
        return self

    def __exit__(self, *exc: object) -> None:
        global _active
        _active = self._previous

    def add(self, name: str, value: torch.Tensor | float, weight: float = 1.0) -> None:
        value = torch.as_tensor(value, device=self.device).detach().float().reshape(())
        self.sums[name] = self.sums.get(name, 0.0) + value * weight
        self.weights[name] = self.weights.get(name, 0.0) + weight

    def collect(self, extra: dict[str, float] | None = None) -> dict[str, float]:
        """Mean of each statistic over its reports and over ranks; ``extra`` values are summed over
        ranks (flags, counts). Resets the collector."""
        names = sorted(self.sums)
        extra = dict(extra or {})
        values = [self.sums[n] / self.weights[n] for n in names]
        values += [torch.tensor(float(v), device=self.device) for v in extra.values()]
        if not values:
            return {}
        packed = ranks.all_reduce_sum(torch.stack(values).double()).tolist()  # one host transfer
        n = ranks.world_size()
        out = {name: v / n for name, v in zip(names, packed, strict=False)}
        out.update(zip(extra, packed[len(names) :], strict=True))
        self.sums, self.weights = {}, {}
        return out


def non_finite(values: dict[str, float]) -> dict[str, float]:
    """The entries of ``values`` that are NaN or infinite."""
    return {k: v for k, v in values.items() if not math.isfinite(v)}
