"""DeepSpeed ZeRO stages 1 and 2 for the generator and the critic, behind :class:`Network`'s
interface.

``deepspeed.zero_stage`` selects it (0 is plain DDP). Each network gets its own DeepSpeed engine, driven
directly (one accelerate ``Accelerator`` takes only one DeepSpeed model), so the trainer keeps one loop.

Design, and why:

- **Forwards go through ``engine.module``, never ``engine(...)``.** Calling the engine registers backward
  hooks on its output; the gradient penalty's ``torch.autograd.grad`` over such an output fires
  DeepSpeed's backward epilogue (it fails on stages 0-2). ``engine.forward`` would also
  switch off the trainer's autocast (DeepSpeed keeps its own). The ZeRO-2 gradient hooks sit on the
  parameters' gradient accumulation, which ``autograd.grad`` with respect to the input never runs, so
  they fire once, in :meth:`ZeroNetwork.backward` (``engine.backward``), like DDP's single reduction.
- **Weights stay float32; the trainer owns autocast** (:class:`b2b.training.network.Precision`). DeepSpeed's
  ``bf16``/``fp16`` modes cast the module to half precision, so the penalty's ``full_precision`` pass
  would run on rounded weights; its ``torch_autocast`` mode reduces Linear/Conv gradients in bf16. Here
  gradients are reduced and optimizer states kept in float32, exactly as on the DDP path, and ZeRO
  partitions them. fp16 uses a dynamic loss scale with torch's GradScaler rules, handed to the ZeRO
  optimizer (which unscales, and skips the step when the gradient norm is not finite).
- **Unmanaged gradient accumulation** (``managed_gradient_accumulation: false``): ``backward``
  accumulates, ``step`` is the boundary. ZeRO-1 reduces once in ``step`` (like DDP under ``no_sync``);
  ZeRO-2 reduce-scatters in every backward, which is how it partitions gradients.
- **No gradient clipping**: DeepSpeed's default ``gradient_clipping`` is 1.0; b2b does not clip.

Checkpoints: the network's replicated state (weights, skipped steps, loss scale, world size) is saved
by the checkpointer from :meth:`ZeroNetwork.state_dict`, and every rank writes its partition through
``engine.save_checkpoint`` into ``zero/<name>/`` of the same atomic checkpoint folder
(:meth:`ZeroNetwork.save_files`). Resuming on another world size converts the partitions to
DeepSpeed's universal checkpoint (rank 0, into a hidden folder next to the checkpoint) and loads that.

ZeRO-3 is refused: the penalty's double backward fails on the weights ZeRO-3 partitions away after the
first backward (measured, see tests/test_zero.py), and the trainer reads whole parameters outside the
engines (EMA update, rank-0 weight checkpoints, snapshots).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from b2b.compat import convert_to_universal, override_loss_scale, universal_checkpoint_client_state
from b2b.config import Config
from b2b.errors import CheckpointError, ConfigError
from b2b.runtime import ranks
from b2b.training.network import Network, Precision, build_optimizer
from b2b.training.preflight import check_zero

CHECKPOINT_FORMAT = "b2b-zero/1"
ZERO_DIR = "zero"  # sub-folder of a checkpoint with DeepSpeed's per-rank files
# Gradient bucket (elements) for ZeRO's reductions: a quarter of the model, at least 2^16, at most 2^29
# (about DeepSpeed's default, 5e8). DeepSpeed allocates a bucket of this size; its default (2 GB of fp32)
# would outweigh what ZeRO-2 saves on a model of this kind.
MIN_BUCKET, MAX_BUCKET = 2**16, 2**29


def deepspeed_config(cfg: Config, n_params: int, load_universal: bool = False) -> dict:
    """The DeepSpeed config for one network (see the module docstring for each choice).

    Parameters
    ----------
    cfg : Config
        Uses ``deepspeed.zero_stage``, ``data.batch_size`` and ``train.grad_accum``.
    n_params : int
        Elements of the network's trainable parameters (sizes the reduction buckets).
    load_universal : bool
        Read checkpoints as DeepSpeed universal checkpoints (another world size, see ZeroNetwork).

    Returns
    -------
    dict
    """
    bucket = min(MAX_BUCKET, max(MIN_BUCKET, n_params // 4))
    # A multiple of 1024 elements: ZeRO asserts it is a multiple of its (power-of-two) alignment factor.
    bucket = -(-bucket // 1024) * 1024
    return {
        "train_micro_batch_size_per_gpu": cfg.data.batch_size,
        "gradient_accumulation_steps": cfg.train.grad_accum,
        "managed_gradient_accumulation": False,
        "gradient_clipping": 0.0,
        "zero_optimization": {
            "stage": cfg.deepspeed.zero_stage,
            "overlap_comm": False,
            "contiguous_gradients": True,
            "reduce_scatter": True,
            "reduce_bucket_size": bucket,
            "allgather_bucket_size": bucket,
        },
        "checkpoint": {"load_universal": load_universal},
        "steps_per_print": 2**62,  # b2b logs progress itself
        "wall_clock_breakdown": False,
    }


class LossScale:
    """Dynamic fp16 loss scale with torch.amp.GradScaler's default rules (so ZeRO and DDP agree).

    The scale halves after a step with a non-finite gradient norm and doubles after ``interval``
    consecutive good steps.
    """

    def __init__(
        self, init: float = 2.0**16, growth: float = 2.0, backoff: float = 0.5, interval: int = 2000
    ):
        self.scale = init
        self.growth = growth
        self.backoff = backoff
        self.interval = interval
        self.good_steps = 0

    def update(self, applied: bool) -> None:
        if not applied:
            self.scale *= self.backoff
            self.good_steps = 0
            return
        self.good_steps += 1
        if self.good_steps == self.interval:
            self.scale *= self.growth
            self.good_steps = 0

    def state_dict(self) -> dict:
        return {"scale": self.scale, "good_steps": self.good_steps}

    def load_state_dict(self, state: dict) -> None:
        self.scale = float(state["scale"])
        self.good_steps = int(state["good_steps"])


class ZeroNetwork(Network):
    """A network trained by a DeepSpeed ZeRO-1/2 engine, with :class:`Network`'s interface.

    ``module`` is the bare network (``engine.module``: its parameters are views into ZeRO's flat
    buffer, whole on every rank); calls go to it directly (see the module docstring). ``optimizer`` is
    the torch Adam that ZeRO steps on this rank's partition; :meth:`set_lr` sets its learning rate.

    Parameters
    ----------
    engine : deepspeed.DeepSpeedEngine
        Built by :func:`build_zero_networks`.
    optimizer : torch.optim.Optimizer
        The client optimizer inside ``engine.optimizer``.
    loss_scale : LossScale, optional
        fp16 only.
    scalar_parameters : list of nn.Parameter, optional
        The module's 0-dim parameters, set up as shape (1,) for DeepSpeed (build_zero_networks).
    """

    def __init__(
        self,
        engine,
        optimizer: torch.optim.Optimizer,
        loss_scale: LossScale | None = None,
        scalar_parameters: list[nn.Parameter] | None = None,
    ):
        no_scaler = torch.amp.GradScaler(engine.device.type, enabled=False)  # ZeRO scales (fp16: self.scale)
        super().__init__(engine.module, engine.module, optimizer, no_scaler)
        self.engine = engine
        self.stage = engine.zero_optimization_stage()
        self.scale = loss_scale
        self._scalars = list(scalar_parameters or [])
        self._restore_scalar_shapes()
        self._hand_scale_to_zero()

    def _restore_scalar_shapes(self) -> None:
        # ZeRO re-points every parameter at its flat buffer after each step and load, with the shape it
        # saw at set-up; 0-dim parameters are set up as (1,) (see _scalar_parameters_as_vectors). View
        # them as 0-dim again so the module's state dict (checkpoints, EMA) matches the DDP path's.
        for p in self._scalars:
            p.data = p.data.view(())

    @contextlib.contextmanager
    def _as_deepspeed_sees_it(self) -> Iterator[None]:
        """0-dim parameters as (1,) while DeepSpeed saves or loads (its converter cannot merge 0-dim)."""
        for p in self._scalars:
            p.data = p.data.view(1)
        try:
            yield
        finally:
            self._restore_scalar_shapes()

    def _hand_scale_to_zero(self) -> None:
        # ZeRO multiplies the loss by this scale in backward and divides the gradients by it in step.
        if self.scale is not None:
            override_loss_scale(self.engine, self.scale.scale)

    @contextlib.contextmanager
    def accumulating(self, sync: bool) -> Iterator[None]:
        """Nothing to switch: with unmanaged accumulation ``step`` is the reduction boundary."""
        yield

    def loss_scale(self) -> float | None:
        return self.scale.scale if self.scale is not None else None

    def backward(self, loss: torch.Tensor) -> None:
        # scale_wrt_gas=False: the trainer already divides by train.grad_accum (as on the DDP path).
        self.engine.backward(loss, scale_wrt_gas=False)

    def step(self) -> tuple[bool, float]:
        """Reduce (ZeRO-1) or finish reducing (ZeRO-2), then apply unless the gradient norm is not finite.

        Returns ``(applied, grad_norm)``; the norm is of the unscaled, averaged gradients, computed by
        ZeRO across all partitions, so every rank makes the same decision.
        """
        self.engine.step()
        self._restore_scalar_shapes()
        applied = bool(self.engine.was_step_applied())
        norm = self.engine.get_global_grad_norm()
        norm = float(norm) if norm is not None else float("nan")
        if not applied:
            self.skipped_steps += 1
        if self.scale is not None:
            self.scale.update(applied)
            self._hand_scale_to_zero()
        return applied, norm

    # Checkpoint state: the replicated part here; each rank's partition through save_files/load_files.
    def state_dict(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "model": self.module.state_dict(),
            "zero_stage": self.stage,
            "world_size": ranks.world_size(),
            "skipped_steps": self.skipped_steps,
            "loss_scale": self.scale.state_dict() if self.scale is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        """Check that the state is ZeRO state of this stage and restore the replicated part; the
        partitions (optimizer states and master weights) come from :meth:`load_files`."""
        if state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(
                "the checkpoint was written by the DDP path (deepspeed.zero_stage=0), not by ZeRO; resume "
                "it with deepspeed.zero_stage=0"
            )
        if state["zero_stage"] != self.stage:
            raise CheckpointError(
                f"the checkpoint holds ZeRO-{state['zero_stage']} state but this run uses "
                f"deepspeed.zero_stage={self.stage}; resume with deepspeed.zero_stage={state['zero_stage']}"
            )
        self._saved_world = int(state["world_size"])
        self.skipped_steps = int(state["skipped_steps"])
        if self.scale is not None and state.get("loss_scale"):
            self.scale.load_state_dict(state["loss_scale"])
            self._hand_scale_to_zero()

    def save_files(self, folder: Path, name: str) -> None:
        """Write this rank's ZeRO partition to ``folder/zero/<name>/`` (a collective)."""
        # The universal-checkpoint info lets ds_to_universal re-partition this for another world size.
        client_state = universal_checkpoint_client_state()
        with self._as_deepspeed_sees_it():
            self.engine.save_checkpoint(
                str(Path(folder) / ZERO_DIR), tag=name, client_state=client_state, save_latest=False
            )

    def load_files(self, folder: Path, name: str) -> None:
        """Restore the partitions :meth:`save_files` wrote, after :meth:`load_state_dict` (a collective).

        On the world size it was saved with, each rank reads its own partition. On another one, rank 0
        converts the partitions to DeepSpeed's universal checkpoint and every rank takes its new
        partition from that. Raises CheckpointError if the conversion fails.
        """
        folder = Path(folder)
        saved_world = getattr(self, "_saved_world", ranks.world_size())
        if saved_world == ranks.world_size():
            with self._as_deepspeed_sees_it():
                loaded, _ = self.engine.load_checkpoint(
                    str(folder / ZERO_DIR),
                    tag=name,
                    load_optimizer_states=True,
                    load_lr_scheduler_states=False,
                )
            if loaded is None:
                raise CheckpointError(f"{folder / ZERO_DIR / name} holds no DeepSpeed checkpoint for {name}")
        else:
            self._load_resharded(folder, name, saved_world)

    def _load_resharded(self, folder: Path, name: str, saved_world: int) -> None:
        world = ranks.world_size()
        source = folder / ZERO_DIR / name
        if not self.engine.load_universal_checkpoint():
            raise CheckpointError(
                f"cannot resume {source} (saved by {saved_world} ranks) on {world} ranks: the engines were "
                "built for the same world size (build_zero_networks(..., load_universal=True) re-partitions)"
            )
        # Next to the checkpoint, hidden (checkpoint listings skip dot-folders), on the storage every
        # rank already reads the checkpoint from.
        universal = folder.parent / f".{folder.name}-{name}-universal"
        error = ""
        if ranks.rank() == 0:
            try:
                shutil.rmtree(universal, ignore_errors=True)
                convert_to_universal(source, universal / name)
            except Exception as exc:  # reported on every rank below as one CheckpointError
                error = f": {type(exc).__name__}: {exc}"
        if ranks.any_true(bool(error)):
            raise CheckpointError(
                f"cannot resume {source} (saved by {saved_world} ranks) on {world} ranks: converting it to "
                f"DeepSpeed's universal checkpoint failed{error}. Resume with {saved_world} ranks"
            )
        with self._as_deepspeed_sees_it():
            loaded, _ = self.engine.load_checkpoint(
                str(universal), tag=name, load_optimizer_states=True, load_lr_scheduler_states=False
            )
        ranks.barrier()
        if ranks.rank() == 0:
            shutil.rmtree(universal, ignore_errors=True)
        if loaded is None:
            raise CheckpointError(
                f"cannot resume {source} on {world} ranks: the universal conversion is empty"
            )


def build_zero_networks(
    cfg: Config,
    generator: nn.Module,
    critic: nn.Module,
    precision: Precision,
    load_universal: bool = False,
) -> tuple[ZeroNetwork, ZeroNetwork]:
    """Wrap both networks in DeepSpeed ZeRO engines with the DDP path's Adam (build_optimizer).

    Parameters
    ----------
    cfg : Config
        ``deepspeed.zero_stage`` (1 or 2), ``optim.*``, ``data.batch_size``, ``train.grad_accum``.
    generator, critic : nn.Module
        Freshly built, identical on every rank, all parameters trainable.
    precision : Precision
        The trainer's autocast settings; fp16 adds a dynamic loss scale.
    load_universal : bool
        The run resumes from partitions saved by another number of ranks: the engines then read
        DeepSpeed's universal checkpoint (its config's ``checkpoint.load_universal``).

    Returns
    -------
    (ZeroNetwork, ZeroNetwork)
        Generator and critic.

    Raises
    ------
    ConfigError
        For a stage other than 1 or 2, or when DeepSpeed is not installed.
    """
    if cfg.deepspeed.zero_stage == 0:
        raise ConfigError(
            "deepspeed.zero_stage=0 is the DDP path (b2b.training.network.Network); "
            "build_zero_networks takes 1 or 2"
        )
    check_zero(cfg)
    import deepspeed
    from deepspeed.utils import logger as deepspeed_logger

    deepspeed_logger.setLevel(logging.WARNING)  # its per-rank INFO lines would drown b2b's log
    ranks.ensure_process_group(precision.device_type)
    deepspeed.init_distributed(dist_backend=dist.get_backend(), dist_init_required=False)
    nets = []
    for module, lr in ((generator, cfg.optim.g_lr), (critic, cfg.optim.d_lr)):
        optimizer = build_optimizer(module, lr, cfg.optim.betas, cfg.train.adam)
        n_params = sum(p.numel() for p in module.parameters() if p.requires_grad)
        config = deepspeed_config(cfg, n_params, load_universal)
        with _scalar_parameters_as_vectors(module) as scalars:
            engine, *_ = deepspeed.initialize(
                model=module, optimizer=optimizer, config=config, dist_init_required=False
            )
        scale = LossScale() if precision.name == "fp16" else None
        nets.append(ZeroNetwork(engine, optimizer, scale, scalars))
    return nets[0], nets[1]


@contextlib.contextmanager
def _scalar_parameters_as_vectors(module: nn.Module) -> Iterator[list[nn.Parameter]]:
    """Give 0-dim parameters (SelfAttention's gamma) shape (1,) while DeepSpeed sets the engine up.

    DeepSpeed 0.19's initial broadcast views each parameter as bytes, which fails on a 0-dim tensor.
    Only the view changes: ZeRO flattens the same element. Yields the parameters, which ZeroNetwork views
    as 0-dim again whenever ZeRO re-points them.
    """
    scalars = [p for p in module.parameters() if p.dim() == 0]
    for p in scalars:
        p.data = p.data.view(1)
    yield scalars
