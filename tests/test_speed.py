"""Speed switches keep results correct, the hardware figures are right, and a stalled run says where.

Each switch is compared on and off on CPU: the losses and every gradient of a critic update with the
gradient penalty and of a generator update, within a stated tolerance (the same math in another memory
layout or another kernel rounds differently in the last bits).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_train import accelerate_cmd, overrides, wait_for

from b2b.config import load_config
from b2b.model.networks import build_models
from b2b.training.losses import critic_loss, generator_loss
from b2b.training.network import build_optimizer

SHAPE = (3, 32, 24)
TOLERANCE = 1e-5  # relative, for float32 math in another layout or kernel order
COMPILE_TOLERANCE = 1e-4  # inductor fuses and reorders float32 arithmetic


def _losses_and_grads(channels_last: bool = False, compiled: bool = False) -> dict[str, torch.Tensor]:
    cfg = load_config(None, ["model.g_width=4", "model.d_width=4", "model.latent_dim=8", "model.dropout=0"])
    torch.manual_seed(0)
    generator, critic = build_models(cfg, SHAPE, n_bars=2)  # the bar gate in two segments
    real = (torch.rand(4, *SHAPE, generator=torch.Generator().manual_seed(1)) > 0.9).float()
    z = torch.randn(4, 8, generator=torch.Generator().manual_seed(2))
    eps = torch.rand(4, generator=torch.Generator().manual_seed(3))
    if channels_last:
        generator.to(memory_format=torch.channels_last)
        critic.to(memory_format=torch.channels_last)
        real = real.contiguous(memory_format=torch.channels_last)
    g, d = (torch.compile(generator), torch.compile(critic)) if compiled else (generator, critic)
    out = {}
    fake = g(z).detach()
    loss = critic_loss(d, real, fake, gp_lambda=10.0, eps=eps, penalty_critic=critic)
    loss.total.backward()
    out["critic_loss"] = loss.total.detach()
    out.update({f"critic.{n}": p.grad.clone() for n, p in critic.named_parameters()})
    critic.zero_grad()
    g_loss = generator_loss(critic, g(z))
    g_loss.backward()
    out["generator_loss"] = g_loss.detach()
    out.update(
        {f"generator.{n}": p.grad.clone() for n, p in generator.named_parameters() if p.grad is not None}
    )
    return out


def _assert_close(a: dict, b: dict, tolerance: float) -> None:
    assert a.keys() == b.keys()
    for key in a:
        scale = max(float(b[key].abs().max()), 1e-6)
        error = float((a[key] - b[key]).abs().max()) / scale
        assert error <= tolerance, f"{key}: relative error {error:.2e}"


def test_channels_last_gives_the_same_losses_and_gradients() -> None:
    _assert_close(_losses_and_grads(channels_last=True), _losses_and_grads(), TOLERANCE)


def test_compiled_forward_passes_give_the_same_losses_and_gradients() -> None:
    """The penalty's pass stays eager (compiled graphs have no double backward); the rest is compiled."""
    _assert_close(_losses_and_grads(compiled=True), _losses_and_grads(), COMPILE_TOLERANCE)


@pytest.mark.parametrize("impl", ["foreach", "loop", "fused"])
def test_every_adam_implementation_makes_the_same_update(impl: str) -> None:
    def updated(which: str) -> list[torch.Tensor]:
        torch.manual_seed(0)
        layer = torch.nn.Linear(16, 8)
        optimizer = build_optimizer(layer, 1e-3, (0.5, 0.9), which)
        for step in range(3):
            layer(
                torch.randn(4, 16, generator=torch.Generator().manual_seed(step))
            ).square().mean().backward()
            optimizer.step()
            optimizer.zero_grad()
        return [p.detach() for p in layer.parameters()]

    for a, b in zip(updated(impl), updated("loop"), strict=True):
        torch.testing.assert_close(a, b, rtol=TOLERANCE, atol=1e-7)


def test_gpu_switches_set_the_backends() -> None:
    from b2b.training.build import apply_speed_switches

    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark)
    try:
        apply_speed_switches(load_config(None, ["train.tf32=false", "train.cudnn_benchmark=true"]))
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert torch.backends.cudnn.benchmark
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark = before


# ---------------------------------------------------------------------------------------------------
# Hardware figures


def test_peak_table_and_mfu_figures(tiny_shards: Path, tmp_path: Path) -> None:
    from b2b.runtime.hardware import gpu_peak_tflops
    from b2b.training.describe import describe

    assert gpu_peak_tflops("NVIDIA H100 80GB HBM3", "bf16", tf32=True) == 989.0
    assert gpu_peak_tflops("NVIDIA A100-SXM4-80GB", "fp32", tf32=True) == 156.0  # TF32 tensor cores
    assert gpu_peak_tflops("NVIDIA A100-SXM4-80GB", "fp32", tf32=False) == 19.5
    assert gpu_peak_tflops("Tesla T4", "fp16", tf32=False) == 65.0
    assert gpu_peak_tflops("NVIDIA GeForce GTX 1080", "bf16", tf32=False) is None
    args = overrides(tiny_shards, tmp_path, "mfu", train__steps=4, log__every=2, train__peak_tflops=0.5)
    result = subprocess.run(
        [sys.executable, "-m", "b2b.train", *args], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [json.loads(x) for x in (tmp_path / "mfu" / "metrics.jsonl").read_text().splitlines()]
    cfg = load_config(None, args)
    flops = describe(cfg, [5, 16, 48], n_bars=2)["steps"]["train_step_flops"] * cfg.data.batch_size
    for line in lines:
        # TFLOP/s = step FLOPs × steps per line / seconds; seconds from the logged samples/s.
        seconds = 2 * cfg.loss.n_critic * cfg.data.batch_size / line["samples_per_s"]
        assert line["tflops"] == pytest.approx(flops * 2 / seconds / 1e12, rel=1e-6)
        assert line["mfu"] == pytest.approx(line["tflops"] / 0.5, rel=1e-9)  # train.peak_tflops
        assert 0 < line["data_wait"] < 1 and line["peak_memory_gb"] > 0.05


# ---------------------------------------------------------------------------------------------------
# The stall watchdog


def test_a_stalled_rank_dumps_every_threads_stack(tiny_shards: Path, tmp_path: Path) -> None:
    """Two ranks; rank 1 is frozen (SIGSTOP): rank 0 waits in a collective, and within the timeout
    writes its threads' stacks to the run folder and says where."""
    import psutil

    args = overrides(tiny_shards, tmp_path, "stall", train__steps=100000, train__stall_timeout_s=3)
    proc = subprocess.Popen(
        accelerate_cmd(args), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        wait_for(lambda: (tmp_path / "stall" / "metrics.jsonl").is_file(), 180, "training to start", proc)
        ranks = [
            p
            for p in psutil.Process(proc.pid).children(recursive=True)
            if "b2b/train.py" in " ".join(p.cmdline())
        ]
        frozen = next(p for p in ranks if p.environ().get("RANK") == "1")
        frozen.suspend()
        stalled = time.monotonic()
        wait_for(lambda: list((tmp_path / "stall").glob("stall-rank0-*.txt")), 60, "a stack dump", proc)
        assert time.monotonic() - stalled < 30
        (dump,) = (tmp_path / "stall").glob("stall-rank0-*.txt")
        text = dump.read_text()
        assert text.startswith("rank 0: no training step completed for")
        assert "Thread" in text and "train.py" in text  # the main thread, stuck in the training loop
        frozen.resume()
    finally:
        for p in psutil.Process(proc.pid).children(recursive=True):
            p.send_signal(signal.SIGKILL)
        proc.kill()
    out = proc.communicate(timeout=60)[0]
    assert f"the stack of every thread is in {dump}" in out
