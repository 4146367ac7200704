"""Building a trainer starts nothing, and a start that fails at any step leaves nothing behind.

Two real ranks over gloo. For each start step in turn (the list in b2b/training/start.py), a planted
error makes that step fail; each rank then checks that no process group, watchdog thread, loader worker,
signal handler or run lock of the failed start is left. A last round starts every step and closes.
"""

from __future__ import annotations

import fcntl
import gc
import multiprocessing
import os
import signal
import threading
from pathlib import Path

import pytest
import torch
from conftest import free_port
from test_train import overrides

STEPS = [
    "process group", "speed switches", "signals", "run lock", "checkpoint choice", "loader", "networks",
    "resume", "monitor", "hardware figures", "watchdog",
]  # fmt: skip


class Planted(Exception):
    pass


def leftovers(run_path: Path, handlers: dict) -> list[str]:
    """What a closed trainer must not leave: each entry names one thing still there."""
    import torch.distributed as dist

    found = []
    if dist.is_initialized():
        found.append("process group")
    if any(t.name == "b2b-stall-watchdog" and t.is_alive() for t in threading.enumerate()):
        found.append("watchdog thread")
    if multiprocessing.active_children():
        found.append("loader workers")
    if {s: signal.getsignal(s) for s in handlers} != handlers:
        found.append("signal handlers")
    lock = run_path / ".lock"
    if lock.exists():
        with open(lock) as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                found.append("run lock")
    return found


def _rank(rank: int, ports: list[int], args: list[str], out: str) -> None:
    from accelerate.state import AcceleratorState

    from b2b.config import load_config
    from b2b.training import trainer as trainer_module
    from b2b.training.preflight import validate_for_training
    from b2b.training.start import start_steps

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1")  # fmt: skip
    cfg = load_config(None, args)
    manifest = validate_for_training(cfg)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)}
    report = {}
    for round_, failing in enumerate([*STEPS, None]):
        os.environ["MASTER_PORT"] = str(ports[round_])

        def planted_steps(parts, failing=failing):
            steps = start_steps(parts)
            assert [name for name, _ in steps] == STEPS, "the start steps changed: update STEPS"

            def fail():
                raise Planted(failing)

            return [(name, fail if name == failing else step) for name, step in steps]

        trainer_module.start_steps = planted_steps
        trainer = trainer_module.Trainer(cfg, manifest)
        built = leftovers(cfg.run_path, handlers)  # building alone must start nothing
        try:
            trainer.open()
            opened = True
        except Planted:
            opened = False
        if opened:
            trainer.batches = iter(trainer.loader)  # start the loader's workers too
            next(trainer.batches)
        trainer.close()
        del trainer
        gc.collect()
        report[str(failing)] = {"built": built, "opened": opened, "left": leftovers(cfg.run_path, handlers)}
        AcceleratorState._reset_state(True)  # accelerate's singleton: the next round builds a new one
    torch.save(report, f"{out}/{rank}.pt")


@pytest.mark.slow
def test_a_failed_start_leaves_nothing_behind(tiny_shards: Path, tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    args = overrides(tiny_shards, tmp_path / "runs", "start", **{"data.num_workers": 1,
                     "train.stall_timeout_s": 60})  # fmt: skip
    ports = [free_port() for _ in range(len(STEPS) + 1)]
    mp.spawn(_rank, args=(ports, args, str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        report = torch.load(tmp_path / f"{rank}.pt")
        for failing, result in report.items():
            assert result["built"] == [], f"rank {rank}: building the trainer started {result['built']}"
            assert result["opened"] == (failing == "None"), f"rank {rank}: {failing}"
            assert result["left"] == [], f"rank {rank}: a start failing at {failing!r} left {result['left']}"
