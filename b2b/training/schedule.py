"""What each step of a run takes and at which rates: the batch arithmetic, written once, and the
learning rates, pure functions of where the run stands (so a resumed run needs no schedule state and
follows the current config).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from b2b.config import Config
from b2b.runtime import ranks


@dataclass(frozen=True)
class StepBatches:
    """The samples of one step.

    Each update (of the critic ``n_critic`` times, then of the generator once) takes ``grad_accum``
    micro-batches of ``per_device`` samples on each of ``world_size`` ranks.
    """

    per_device: int
    world_size: int
    grad_accum: int
    n_critic: int

    @classmethod
    def of(cls, cfg: Config, world_size: int) -> StepBatches:
        return cls(cfg.data.batch_size, world_size, cfg.train.grad_accum, cfg.loss.n_critic)

    @property
    def global_batch(self) -> int:
        """Samples per update, over all ranks: per device × ranks × accumulation."""
        return self.per_device * self.world_size * self.grad_accum

    @property
    def real_per_step(self) -> int:
        """Real samples a step reads, over all ranks (the critic's updates)."""
        return self.global_batch * self.n_critic

    @property
    def loader_batches_per_step(self) -> int:
        """Batches each rank's loader yields per step."""
        return self.n_critic * self.grad_accum


def step_decay(base_lr: float, epochs: float, decay: float, every: int) -> float:
    """The learning rate after ``epochs`` epochs of data: ``base_lr * decay ** floor(epochs / every)``.

    A pure function of the data position, so a resumed run follows the current config (and any change of
    world size or batch size) without schedule state of its own.
    """
    return base_lr * decay ** math.floor(epochs / every + 1e-9)


def anneal_factor(step: int, total_steps: int, share: float) -> float:
    """The learning rate's factor at ``step`` (0-based) of ``total_steps``: 1, then a linear fall to 0
    over the last ``share`` of the steps (``share`` 0: always 1).

    Like :func:`step_decay`, a pure function of where the run stands: resuming needs no state.
    """
    if share <= 0:
        return 1.0
    return min(1.0, (total_steps - step) / (share * total_steps))


def learning_rates(cfg: Config, epochs_done: float, step: int, total_steps: int) -> tuple[float, float]:
    """The generator's and the critic's learning rates at this data position and step."""
    o = cfg.optim
    factor = anneal_factor(step, total_steps, o.anneal)
    return (
        factor * step_decay(o.g_lr, epochs_done, o.lr_decay, o.lr_decay_every),
        factor * step_decay(o.d_lr, epochs_done, o.lr_decay, o.lr_decay_every),
    )


def announce_schedule(cfg: Config, meta: dict, epochs_done: float, step: int, total_steps: int) -> None:
    """Say which learning-rate settings differ from the checkpoint's: the schedule follows the config."""
    if ranks.rank() != 0:
        return
    saved = meta["config"]["optim"]
    keys = ("g_lr", "d_lr", "lr_decay", "lr_decay_every", "anneal")
    changed = [
        f"optim.{k} {saved.get(k, 0.0)} -> {getattr(cfg.optim, k)}"
        for k in keys
        if saved.get(k, 0.0) != getattr(cfg.optim, k)  # checkpoints older than optim.anneal had none
    ]
    saved_batch = meta["world_size"] * meta["config"]["data"]["batch_size"]
    if saved_batch != ranks.world_size() * cfg.data.batch_size:
        changed.append("global batch size (epochs now take another number of steps)")
    for key in ("steps", "epochs"):  # what sets the run's length, which the anneal spans
        saved_value, value = meta["config"]["train"].get(key), getattr(cfg.train, key)
        if cfg.optim.anneal > 0 and saved_value != value:
            changed.append(f"train.{key} {saved_value} -> {value} (the anneal spans the run's steps)")
    if changed:
        g_lr, d_lr = learning_rates(cfg, epochs_done, step, total_steps)
        print(
            f"learning-rate schedule changed since the checkpoint: {'; '.join(changed)}; at step {step} "
            f"(epoch {epochs_done:.2f}) the rates are now G {g_lr:.3g}, D {d_lr:.3g}",
            flush=True,
        )
