"""A step's phases as data (StyleGAN2-ADA's ``name, module, opt, interval``) and the run's counters."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from b2b.training.network import Network

# A phase's loss: (real batch or None, latents, lazy-penalty weight) -> the loss to back-propagate.
PhaseLoss = Callable[[torch.Tensor | None, torch.Tensor, float], torch.Tensor]


@dataclass
class Phase:
    """One kind of update in a step.

    ``repeats`` updates of ``network``, each over ``train.grad_accum`` micro-batches; ``reads_real``: each
    micro-batch takes a batch of real samples from the loader. The lazy penalty comes on every
    ``penalty_every``-th update of the phase, weighted by that interval (0: never).
    """

    name: str
    network: Network
    repeats: int
    loss: PhaseLoss
    reads_real: bool = False
    penalty_every: int = 0


@dataclass
class Progress:
    """The run's counters, saved in every checkpoint: steps, updates per phase, the best distance."""

    step: int = 0
    updates: dict[str, int] = field(default_factory=dict)
    best_distance: float = math.inf

    def count_update(self, phase: Phase) -> float:
        """Count one update of ``phase``; returns its lazy-penalty weight (0 when none is due)."""
        done = self.updates[phase.name] = self.updates.get(phase.name, 0) + 1
        due = phase.penalty_every and done % phase.penalty_every == 0
        return float(phase.penalty_every) if due else 0.0

    def state_dict(self) -> dict:
        counts = {f"{name}_updates": n for name, n in self.updates.items()}
        return {"step": self.step, **counts, "best_distance": self.best_distance}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.best_distance = float(state["best_distance"])
        # Checkpoints before per-phase counts held the critic's only; the generator updates once a step.
        self.updates = {"generator": self.step}
        self.updates.update(
            {k[: -len("_updates")]: int(v) for k, v in state.items() if k.endswith("_updates")}
        )
