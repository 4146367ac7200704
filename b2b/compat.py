"""Every private or semi-private API of another library that b2b uses, named once.

Each entry says what it is, why b2b needs it and what would replace it. ``tests/test_compat.py`` pins
each one (its presence, its signature, its behaviour on a tiny input), so a library upgrade that changes
one fails there, not in a run. The rest of b2b, and ``launch/submit.py``, import them from here; this
module imports no other b2b module.

torch and webdataset are dependencies and are imported with this module (``b2b describe`` subclasses
``TorchDispatchMode``). DeepSpeed and submitit are optional extras, imported by the functions that use
them.

Not routed through here: ``launch/slurm_job.py`` wraps the SIGUSR2 handler that submitit installs before
it calls the task (``signal.getsignal``). That file is pickled by value into the job and imports only
the standard library and submitit; the preemption tests of ``tests/test_slurm.py`` run it on a real
cluster.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch.utils import _python_dispatch, flop_counter
from webdataset import tariterators

if TYPE_CHECKING:
    from submitit.slurm.slurm import SlurmExecutor

# ---------------------------------------------------------------------------------------------------
# torch

TorchDispatchMode = _python_dispatch.TorchDispatchMode
"""torch's base class for dispatch modes (``torch.utils._python_dispatch``, private): every aten call
inside the mode goes through ``__torch_dispatch__``. ``b2b describe`` counts FLOPs with one
(``b2b.training.describe.FlopCount``) because the public ``FlopCounterMode`` raises inside the gradient
penalty's ``torch.autograd.grad`` (its module tracker). Replace with ``FlopCounterMode`` once it counts
through ``autograd.grad``."""


def op_flops(func: Any, args: tuple, kwargs: dict, out: object) -> int:
    """FLOPs torch's flop counter attributes to one aten call (0 for an operation it does not count).

    ``flop_counter.flop_registry`` (not in that module's ``__all__``), keyed by the call's overload
    packet and called as ``FlopCounterMode`` calls it (``out_val=``), gives the same formulas as the
    public mode, for a dispatch mode that cannot be ``FlopCounterMode`` (see ``TorchDispatchMode``).
    Replace with ``FlopCounterMode.get_total_flops()`` along with it.
    """
    formula = flop_counter.flop_registry.get(func.overloadpacket)
    return 0 if formula is None else int(formula(*args, **kwargs, out_val=out))


# ---------------------------------------------------------------------------------------------------
# webdataset

tar_file_iterator: Callable[..., Iterator[dict[str, Any]]] = tariterators.tar_file_iterator
"""webdataset's member-by-member reader of one tar stream (``webdataset.tariterators``, not exported by
``webdataset``): yields ``{"fname", "data"}`` for each regular member that ``select_files(name)``
accepts, calling it once per member in order, and appends `` @ <stream>`` to the first argument of any
error. ``b2b.data.reading.read_members`` counts members through ``select_files`` and strips that suffix
from its messages. Replace with the standard library's ``tarfile.open(fileobj=..., mode="r|*")``, which
it wraps."""


# ---------------------------------------------------------------------------------------------------
# DeepSpeed (the deepspeed extra)


def universal_checkpoint_client_state() -> dict[str, dict[str, object]]:
    """The client state that lets DeepSpeed's ``ds_to_universal`` re-partition a ZeRO checkpoint.

    Its keys come from ``deepspeed.checkpoint.constants`` (undocumented); ``ds_to_universal`` refuses a
    checkpoint saved without them. ``b2b.training.zero.ZeroNetwork.save_files`` passes it to
    ``engine.save_checkpoint``. Replace with a public DeepSpeed call that writes it, if one appears.
    """
    from deepspeed.checkpoint.constants import (
        UNIVERSAL_CHECKPOINT_INFO,
        UNIVERSAL_CHECKPOINT_VERSION_KEY,
        UNIVERSAL_CHECKPOINT_VERSION_VALUE,
    )

    return {UNIVERSAL_CHECKPOINT_INFO: {UNIVERSAL_CHECKPOINT_VERSION_KEY: UNIVERSAL_CHECKPOINT_VERSION_VALUE}}


def universal_conversion_args(source: Path, target: Path) -> argparse.Namespace:
    """The arguments ``ds_to_universal``'s command line would give ``main`` for ``source`` -> ``target``.

    Built by hand: its parser reads ``sys.argv``. One extract and one merge worker, so the conversion
    runs in the calling process (no pool of workers inside a training rank).
    """
    return argparse.Namespace(
        input_folder=str(source),
        output_folder=str(target),
        num_extract_workers=1,
        num_merge_workers=1,
        keep_temp_folder=False,
        strict=True,
        inject_missing_state=False,
    )


def convert_to_universal(source: Path, target: Path) -> None:
    """Convert the ZeRO checkpoint in ``source`` to DeepSpeed's universal checkpoint in ``target``.

    ``deepspeed.checkpoint.ds_to_universal.main`` is the ``main`` of DeepSpeed's conversion script
    (``python -m deepspeed.checkpoint.ds_to_universal``), called in this process with
    :func:`universal_conversion_args`. ``b2b.training.zero`` needs it to resume a ZeRO checkpoint on
    another number of ranks. Replace with that command in a subprocess, or a public conversion function.
    """
    from deepspeed.checkpoint import ds_to_universal

    ds_to_universal.main(universal_conversion_args(source, target))


def override_loss_scale(engine: Any, scale: float) -> None:
    """Make the ZeRO optimizer of ``engine`` scale the loss by ``scale`` (its ``override_loss_scale``).

    ``DeepSpeedZeroOptimizer.override_loss_scale`` is undocumented. b2b's fp16 loss scale is its own
    (the DDP path's ``LossScale``, checkpointed the same way on both paths); ZeRO multiplies the loss by
    this scale in backward and divides the gradients by it in step. Replace with DeepSpeed's own fp16
    loss scaler, at the cost of the ZeRO and DDP paths scaling differently.
    """
    engine.optimizer.override_loss_scale(scale)


# ---------------------------------------------------------------------------------------------------
# submitit (the slurm extra)


def offline_slurm_executor(folder: Path, max_num_timeout: int) -> SlurmExecutor:
    """A submitit ``SlurmExecutor`` that can be built where there is no Slurm (``--dry-run`` anywhere).

    ``SlurmExecutor`` refuses to start unless its ``affinity()`` is positive, which it is only where
    ``srun`` is on the PATH; this subclass says 1. Only :func:`sbatch_script` may use it: it cannot
    submit. Replace along with :func:`sbatch_script`.
    """
    from submitit.slurm.slurm import SlurmExecutor

    class OfflineSlurmExecutor(SlurmExecutor):
        @classmethod
        def affinity(cls) -> int:
            return 1

    return OfflineSlurmExecutor(folder, max_num_timeout=max_num_timeout)


def sbatch_script(executor: SlurmExecutor) -> str:
    """The sbatch script ``executor`` would submit, rendered without submitting it.

    submitit has no public call for this: its private ``_make_submission_file_text`` and
    ``_submitit_command_str`` render it. ``launch/submit.py --dry-run`` prints it. Replace with a
    public rendering call, if submitit adds one.
    """
    return executor._make_submission_file_text(executor._submitit_command_str, "dry-run")
