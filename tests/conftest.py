"""Shared test settings: one thread per process (the CI machine has 2 cores and tests spawn ranks)."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

torch.set_num_threads(1)

import socket  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))  # tests/ helpers (lpd_fixtures, slurm_cluster)

# The shape of the small training set the trainer, Slurm and DeepSpeed tests share: LPD-5 tracks,
# 2 bars of 8 steps, 48 pitches — (5, 16, 48), which the networks produce.
TINY_SHARDS_ARGS = [
    "--tracks",
    "lpd5",
    "--n-bars",
    "2",
    "--steps-per-bar",
    "8",
    "--lowest-pitch",
    "36",
    "--n-pitches",
    "48",
    "--hop-bars",
    "1",
    "--shard-size",
    "40",
    "--val-fraction",
    "0.15",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def true_fp32():
    """Float32 matmuls and convolutions without TF32 on a GPU for the test, restored afterwards."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def write_tiny_lpd(folder: Path) -> Path:
    """The 12 LPD-5 songs of 16 bars (LPD ``.npz`` files written with pypianoroll) the tiny shards hold."""
    from lpd_fixtures import write_lpd_tree

    write_lpd_tree(folder, 12, seed=3, n_bars=16, tracks="lpd5")
    return folder


def build_tiny_shards(lpd: Path, out: Path) -> Path:
    """The tiny shards of ``lpd`` (see write_tiny_lpd) built by the real builder into ``out``."""
    from b2b.cli.main import main

    argv = ["shards", "build", "--source", "lpd", "--input", str(lpd), "--output", str(out), "--workers", "1"]
    assert main([*argv, *TINY_SHARDS_ARGS]) == 0
    return out


@pytest.fixture(scope="session")
def tiny_lpd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 LPD-format songs written with pypianoroll (the source of tiny_shards)."""
    return write_tiny_lpd(tmp_path_factory.mktemp("tiny") / "lpd")


@pytest.fixture(scope="session")
def tiny_shards(tiny_lpd: Path) -> Path:
    """Shards built by the real builder from 12 LPD-format songs written with pypianoroll."""
    return build_tiny_shards(tiny_lpd, tiny_lpd.parent / "shards")
