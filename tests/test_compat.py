"""Each private or semi-private API that ``b2b.compat`` names, on a tiny input: an upgrade of torch,
webdataset, DeepSpeed or submitit that renames one, changes its signature or what it does fails here."""

from __future__ import annotations

import inspect
import io
import sys
import tarfile
import types
from pathlib import Path

import pytest
import torch

from b2b.compat import (
    offline_slurm_executor,
    op_flops,
    override_loss_scale,
    sbatch_script,
    tar_file_iterator,
    universal_checkpoint_client_state,
    universal_conversion_args,
)

# ---------------------------------------------------------------------------------------------------
# torch


def test_flop_count_matches_hand_computed_figures_through_a_double_backward() -> None:
    """``b2b.training.describe.count_flops`` rests on torch's private dispatch-mode base class (the public
    ``FlopCounterMode`` raises inside the penalty's ``autograd.grad``): this fails loudly if an upgrade
    changes what it counts. A linear layer y = xW costs 2·B·in·out FLOPs forward and twice that backward
    (input and weight gradients)."""
    from b2b.training.describe import count_flops

    layer = torch.nn.Linear(16, 8, bias=False)
    x = torch.randn(4, 16, requires_grad=True)
    assert count_flops(lambda: layer(x)) == 2 * 4 * 16 * 8
    assert count_flops(lambda: layer(x).sum().backward()) == 3 * (2 * 4 * 16 * 8)

    conv = torch.nn.Conv2d(2, 3, kernel_size=3, padding=1, bias=False)
    image = torch.randn(1, 2, 5, 5, requires_grad=True)
    forward = 2 * (5 * 5) * 3 * (2 * 3 * 3)  # 2 · output positions · out channels · (in · kernel) MACs
    assert count_flops(lambda: conv(image)) == forward

    def penalty() -> None:  # what the critic step does: a gradient of the gradient's norm
        (grad,) = torch.autograd.grad(conv(image).square().sum(), image, create_graph=True)
        grad.square().sum().backward()

    assert count_flops(penalty) > 3 * forward  # forward, backward, and the backward of the backward


def test_op_flops_gives_the_flop_counters_formula_for_one_aten_call() -> None:
    a, b = torch.randn(4, 16), torch.randn(16, 8)
    out = torch.ops.aten.mm.default(a, b)
    assert op_flops(torch.ops.aten.mm.default, (a, b), {}, out) == 2 * 4 * 16 * 8
    added = torch.ops.aten.add.Tensor(a, a)
    assert op_flops(torch.ops.aten.add.Tensor, (a, a), {}, added) == 0  # element-wise: not counted


# ---------------------------------------------------------------------------------------------------
# webdataset


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_tar_file_iterator_offers_each_member_name_in_order_and_yields_the_chosen_ones() -> None:
    """read_members counts members by the calls to ``select_files``: one per member, in tar order."""
    raw = _tar([("0.roll", b"aa"), ("notes.txt", b"t"), ("1.roll", b"bbbb"), ("2.roll", b"c")])
    offered: list[str] = []

    def choose(name: str) -> bool:
        offered.append(name)
        return name != "1.roll"

    items = list(tar_file_iterator(io.BytesIO(raw), select_files=choose))
    assert offered == ["0.roll", "notes.txt", "1.roll", "2.roll"]
    assert items == [
        {"fname": "0.roll", "data": b"aa"},
        {"fname": "notes.txt", "data": b"t"},
        {"fname": "2.roll", "data": b"c"},
    ]


def test_tar_file_iterator_marks_a_members_read_error_with_the_stream() -> None:
    """read_members strips the `` @ <stream>`` the iterator appends, to name the shard itself."""
    raw = _tar([("0.roll", b"a" * 600)])
    stream = io.BytesIO(raw[:513])  # the member's header and 1 of its 600 bytes
    with pytest.raises(tarfile.ReadError) as caught:
        list(tar_file_iterator(stream, select_files=lambda name: True))
    assert caught.value.args == (f"unexpected end of data @ {stream}",)


# ---------------------------------------------------------------------------------------------------
# DeepSpeed


def test_universal_checkpoint_client_state_holds_the_key_ds_to_universal_reads() -> None:
    pytest.importorskip("deepspeed")
    from deepspeed.checkpoint import constants, ds_to_universal

    state = universal_checkpoint_client_state()
    assert list(state) == [ds_to_universal.UNIVERSAL_CHECKPOINT_INFO] == ["universal_checkpoint_info"]
    assert state[constants.UNIVERSAL_CHECKPOINT_INFO] == {
        constants.UNIVERSAL_CHECKPOINT_VERSION_KEY: constants.UNIVERSAL_CHECKPOINT_VERSION_VALUE
    }


def test_universal_conversion_args_are_those_its_command_line_gives(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``ds_to_universal.main`` reads what its parser gives: the same names, defaults where b2b keeps them.
    The real conversion runs in tests/test_zero.py (a 2-rank ZeRO-2 checkpoint resumed on one rank)."""
    pytest.importorskip("deepspeed")
    from deepspeed.checkpoint import ds_to_universal

    assert list(inspect.signature(ds_to_universal.main).parameters) == ["args"]
    source, target = tmp_path / "zero" / "latest", tmp_path / "universal" / "latest"
    argv = ["ds_to_universal", "--input_folder", str(source), "--output_folder", str(target)]
    monkeypatch.setattr(sys, "argv", argv)  # its parser reads sys.argv
    parsed = vars(ds_to_universal.parse_arguments())
    built = vars(universal_conversion_args(source, target))
    assert sorted(built) == sorted(parsed)
    assert built == {**parsed, "num_extract_workers": 1, "num_merge_workers": 1}


def test_override_loss_scale_sets_the_scale_zero_multiplies_the_loss_by() -> None:
    """On DeepSpeed's ZeRO-1/2 optimizer class, not set up: a real one needs a process group and an
    engine (tests/test_zero.py trains through it in fp16)."""
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    optimizer = DeepSpeedZeroOptimizer.__new__(DeepSpeedZeroOptimizer)
    optimizer.custom_loss_scaler, optimizer.external_loss_scale = False, None  # as its __init__ sets them
    override_loss_scale(types.SimpleNamespace(optimizer=optimizer), 1024.0)
    assert optimizer.loss_scale == 1024.0  # what step divides the gradients by
    loss = torch.tensor(3.0, requires_grad=True) * 1
    assert optimizer.scale_if_loss(loss).item() == 3.0 * 1024.0  # what backward differentiates


# ---------------------------------------------------------------------------------------------------
# submitit


def test_sbatch_script_renders_one_without_slurm(tmp_path: Path) -> None:
    """submitit's private ``_make_submission_file_text``, on an executor that needs no srun."""
    pytest.importorskip("submitit")
    executor = offline_slurm_executor(tmp_path / "%j", max_num_timeout=1)
    executor.update_parameters(job_name="check", nodes=1, ntasks_per_node=1, time=5)
    script = sbatch_script(executor)
    assert script.startswith("#!/bin/bash") and "#SBATCH --job-name=check" in script
    assert f"-m submitit.core._submit {tmp_path}/%j" in script
