"""How well a run uses its hardware: FLOP/s against the device's peak (MFU), peak memory, data waits.

The FLOPs of a step come from ``describe()`` (matmul and convolution FLOPs of every pass:
the critic on real, fake and interpolated batches, the penalty's double backward, the generator's
passes), counted once at start on the ``meta`` device. The peak is the device's dense tensor throughput
for the precision in use, from :data:`PEAK_TFLOPS` (or ``train.peak_tflops``); on a CPU it is measured
once at start with a float32 matrix multiply, the best this machine reaches.
"""

from __future__ import annotations

import resource
import sys
import time

import torch

# Dense peak TFLOP/s per GPU (vendor data sheets; SXM parts where there are several): bf16/fp16 tensor
# cores, TF32 tensor cores, and plain fp32.
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H200": {"bf16": 989.0, "fp16": 989.0, "tf32": 494.0, "fp32": 67.0},
    "H100": {"bf16": 989.0, "fp16": 989.0, "tf32": 494.0, "fp32": 67.0},
    "A100": {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5},
    "L40S": {"bf16": 362.0, "fp16": 362.0, "tf32": 183.0, "fp32": 91.6},
    "T4": {"bf16": 65.0, "fp16": 65.0, "tf32": 8.1, "fp32": 8.1},  # no bf16 units: fp16's figure
}


def gpu_peak_tflops(name: str, precision: str, tf32: bool) -> float | None:
    """The table's peak for a GPU named ``name`` (e.g. ``NVIDIA H100 80GB HBM3``), or None if unknown."""
    for model, peaks in PEAK_TFLOPS.items():
        if model in name.upper().replace("-", ""):
            kind = precision if precision in ("bf16", "fp16") else ("tf32" if tf32 else "fp32")
            return peaks[kind]
    return None


def cpu_peak_tflops(size: int = 1024, repeats: int = 5) -> float:
    """Measured float32 GEMM throughput of this process's threads: the best of ``repeats`` products."""
    # A private generator: the global RNG is part of a run's state, and drawing from it here would shift
    # a resumed run's random stream (it is measured after the checkpoint's RNG state is restored).
    draws = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=draws)
    b = torch.randn(size, size, generator=draws)
    torch.mm(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e12


def peak_tflops(device: torch.device, precision: str, tf32: bool, override: float = 0.0) -> tuple[float, str]:
    """The peak to measure MFU against, and where it comes from."""
    if override > 0:
        return override, "train.peak_tflops"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = gpu_peak_tflops(name, precision, tf32)
        if peak is not None:
            return peak, f"{name}, {precision}{' (TF32)' if precision == 'fp32' and tf32 else ''}"
        return 0.0, f"{name} is not in b2b.runtime.hardware.PEAK_TFLOPS: set train.peak_tflops"
    return cpu_peak_tflops(), "measured fp32 GEMM on this CPU"


def peak_memory_gb(device: torch.device) -> float:
    """Peak memory so far: the device's allocator on CUDA, the process's peak RSS on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss * (1 if sys.platform == "darwin" else 1024) / 1e9


class StepTimer:
    """Wall time between log lines and the part of it spent waiting for data."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.waiting = 0.0

    def wait(self, seconds: float) -> None:
        self.waiting += seconds

    def lap(self) -> tuple[float, float]:
        """``(elapsed, share waiting for data)`` since the last lap; starts the next one."""
        now = time.perf_counter()
        elapsed, waiting = now - self.start, self.waiting
        self.start, self.waiting = now, 0.0
        return elapsed, waiting / elapsed if elapsed > 0 else 0.0
