"""What only a CUDA GPU can show: the penalty under TF32, bitwise resume with deterministic kernels,
ZeRO-2 on one GPU, and NCCL between two GPUs. (The penalty's float32 pass under bf16/fp16 autocast and
its tolerances are tests/test_losses.py's, run on the CPU and, marked ``gpu``, on CUDA.)

Every test is marked ``gpu`` and skips, saying why, where ``torch.cuda.is_available()`` is false; run them
with ``pytest -m gpu`` (``bash bench/gpu_check.sh`` does, and records the counts).

Under TF32 (the trainer's default, ``train.tf32``) the "float32" penalty pass is TF32-rounded: its
input-gradient norms stay within 1e-2 of true float32 (``true_fp32``: TF32 off, from conftest.py).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_train import accelerate_cmd, assert_identical, checkpoint_state, env, overrides

from b2b.checkpoint.folder import latest_checkpoint
from b2b.model.critic import Critic
from b2b.training.losses import gradient_penalty

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"
    ),
]

SHAPE = (2, 16, 12)
TF32_TOLERANCE = 1e-2  # the penalty pass's input-gradient norm under TF32 against true float32, relative

# The trainer has no switch for deterministic algorithms (train.cudnn_benchmark=false only stops cuDNN's
# search), so the resume test starts it through this launcher, which asks torch for deterministic kernels
# first. CUBLAS_WORKSPACE_CONFIG (in the environment) makes cuBLAS deterministic as torch requires.
DETERMINISTIC_TRAIN = (
    "import sys, torch\n"
    "torch.use_deterministic_algorithms(True)\n"
    "torch.backends.cudnn.deterministic = True\n"
    "torch.backends.cudnn.benchmark = False\n"
    "from b2b.train import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def _critic() -> Critic:
    torch.manual_seed(0)
    return Critic(SHAPE, 4, dropout=0.0).cuda()  # no dropout: every pass sees the same network


def _inputs(n: int = 6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    draws = torch.Generator().manual_seed(1)
    real = (torch.rand(n, *SHAPE, generator=draws) > 0.8).float()
    fake, eps = torch.rand(n, *SHAPE, generator=draws), torch.rand(n, generator=draws)
    return real.cuda(), fake.cuda(), eps.cuda()


def test_penalty_under_tf32_stays_near_true_fp32(true_fp32: None) -> None:
    """The trainer's default (train.tf32=true) lets the penalty's "float32" convolutions and matmuls use
    TF32 tensor cores (Ampere and later; elsewhere the switch does nothing): this bounds what that costs.
    The input-gradient norms are compared, not the penalty: (norm - 1)² amplifies any relative error of a
    norm near 1 without bound."""
    critic = _critic()
    real, fake, eps = _inputs()
    _, reference = gradient_penalty(critic, real, fake, eps=eps)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # the fixture restores
    with torch.autocast("cuda", dtype=torch.bfloat16):
        _, norm = gradient_penalty(critic, real, fake, eps=eps)
    assert abs(float(norm / reference) - 1) <= TF32_TOLERANCE


# ---------------------------------------------------------------------------------------------------
# Whole runs, in their own processes


def _run(cmd: list[str], cwd: Path, timeout: float = 300, **extra_env: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        cmd, cwd=cwd, env={**env(), **extra_env}, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _deterministic_train(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-c", DETERMINISTIC_TRAIN, *args], cwd, CUBLAS_WORKSPACE_CONFIG=":4096:8")


def test_resume_on_cuda_is_bitwise_identical_with_deterministic_kernels(
    tiny_shards: Path, tmp_path: Path
) -> None:
    """8 steps in one go == 4 steps, then a resume to 8: generator, critic and EMA bit for bit."""
    steps, half = 8, 4

    def args(name: str, total: int) -> list[str]:
        return overrides(
            tiny_shards,
            tmp_path,
            name,
            train__steps=total,
            checkpoint__every=half,
            train__cudnn_benchmark="false",
        )

    first = _deterministic_train(args("whole", steps), tmp_path)
    assert "rank(s) on cuda" in first.stdout
    _deterministic_train(args("split", half), tmp_path)
    resumed = _deterministic_train(args("split", steps), tmp_path)
    assert f"resumed from {tmp_path / 'split' / 'checkpoints' / f'step-{half}'}" in resumed.stdout
    assert_identical(
        checkpoint_state(tmp_path / "whole" / "checkpoints" / f"step-{steps}"),
        checkpoint_state(tmp_path / "split" / "checkpoints" / f"step-{steps}"),
    )


@pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None, reason="needs DeepSpeed (pip install 'b2b[deepspeed]')"
)
def test_zero2_trains_on_one_gpu(tiny_shards: Path, tmp_path: Path) -> None:
    """One process, no launcher: b2b starts a world of one (NCCL) for DeepSpeed itself."""
    args = overrides(
        tiny_shards, tmp_path, "zero", train__steps=3, checkpoint__every=3, deepspeed__zero_stage=2
    )
    result = _run([sys.executable, "-m", "b2b.train", *args], tmp_path)
    assert "1 rank(s) on cuda" in result.stdout
    run = tmp_path / "zero"
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3]
    assert all(x["skipped_d"] == 0 and x["skipped_g"] == 0 for x in lines)
    final = run / "checkpoints" / "step-3"
    assert latest_checkpoint(run) == final
    for name in ("generator", "critic"):
        assert torch.load(final / f"{name}.pt", weights_only=True)["zero_stage"] == 2
        assert any((final / "zero" / name).iterdir())  # this rank's partition, written by DeepSpeed


@pytest.mark.skipif(
    torch.cuda.device_count() < 2, reason=f"needs 2 CUDA GPUs, {torch.cuda.device_count()} visible"
)
def test_two_ranks_over_nccl_agree(tiny_shards: Path, tmp_path: Path) -> None:
    """accelerate launch, 2 processes on 2 GPUs (NCCL): both finish holding bit-identical weights."""
    args = overrides(tiny_shards, tmp_path, "nccl", train__steps=4, checkpoint__every=4)
    result = _run(accelerate_cmd(args, nproc=2), tmp_path)
    assert "2 rank(s) on cuda" in result.stdout
    final = tmp_path / "nccl" / "checkpoints" / "step-4"
    assert json.loads((final / "meta.json").read_text())["world_size"] == 2
    ranks = [torch.load(final / f"rank-{r:05d}.pt", weights_only=True) for r in range(2)]
    assert ranks[0]["weights"]["sha256"] == ranks[1]["weights"]["sha256"]
    assert not torch.equal(ranks[0]["rng"]["torch"], ranks[1]["rng"]["torch"])  # each drew its own
