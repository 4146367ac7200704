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


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shards built by the real builder from 12 LPD-format songs written with pypianoroll."""
    from lpd_fixtures import write_lpd_tree

    from b2b.cli.main import main

    root = tmp_path_factory.mktemp("tiny")
    write_lpd_tree(root / "lpd", 12, seed=3, n_bars=16, tracks="lpd5")
    out = root / "shards"
    code = main(
        [
            "shards",
            "build",
            "--source",
            "lpd",
            "--input",
            str(root / "lpd"),
            "--output",
            str(out),
            "--workers",
            "1",
            *TINY_SHARDS_ARGS,
        ]
    )
    assert code == 0
    return out
