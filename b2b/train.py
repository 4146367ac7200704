"""Train the b2b WGAN-GP on one process, one node or many.

    b2b train --config configs/demo.yaml                         # one process
    accelerate launch --multi_gpu --num_processes 8 b2b/train.py --config configs/8gpu.yaml
    torchrun --nproc-per-node 8 -m b2b.train --config configs/8gpu.yaml key=value ...

The Trainer, its phases and its loop are in :mod:`b2b.training.trainer`; this module is the entry point.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import warnings
from pathlib import Path

if __name__ == "__main__":  # run as a file (accelerate launch b2b/train.py): import b2b, not b2b/'s modules
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

INTERRUPTED = "b2b train: interrupted while starting; nothing was trained"

try:  # torch, accelerate: seconds, in which a Ctrl-C must not print a traceback
    from b2b.config import Config, load_config
    from b2b.errors import B2BError
    from b2b.runtime import ranks
    from b2b.runtime.lock import RunInUse
    from b2b.training.monitor import write_status
    from b2b.training.preflight import take_accelerate_deepspeed_settings, validate_for_training
    from b2b.training.trainer import Trainer
except KeyboardInterrupt:
    print(INTERRUPTED, file=sys.stderr, flush=True)
    # Not sys.exit: a half-imported torch can turn the interpreter's exit into a death by SIGINT (-2).
    os._exit(130)

# accelerate passes DDP `broadcast_buffers`, which torch 2.13 renamed; the behaviour asked for is unchanged.
warnings.filterwarnings("ignore", message="`broadcast_buffers` is deprecated", category=FutureWarning)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="b2b train", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return parser.parse_args(argv)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config (see configs/); defaults when omitted")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. train.precision=fp16")


def run(args: argparse.Namespace) -> int:
    """``b2b train``: this process trains (one rank, or one of the ranks a launcher started)."""
    try:
        # Everything that can be wrong with the config or the data is found before any process group.
        cfg = load_config(args.config, args.overrides)
        # `accelerate launch --config_file configs/accelerate/zero2.yaml`: take its ZeRO stage; b2b drives
        # DeepSpeed itself (b2b/training/zero.py), so accelerate must not build a DeepSpeed plugin of its own.
        take_accelerate_deepspeed_settings(cfg)
        manifest = validate_for_training(cfg)
    except B2BError as exc:
        print(f"b2b train: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return 130
    created = not cfg.run_path.exists()
    trainer = None
    try:
        trainer = Trainer(cfg, manifest)
        return trainer.run()
    except RunInUse as exc:  # another trainer holds the run folder: refused, like a bad config
        print(f"b2b train: error: {exc}", file=sys.stderr)
        return 2
    except B2BError as exc:  # a non-finite loss, a bad checkpoint or shard, a refused setting
        print(f"b2b train: error: {exc}", file=sys.stderr)
        _failed(cfg, trainer, str(exc))
        return 1
    except KeyboardInterrupt:
        # Before the trainer's own SIGINT handler (which stops at the end of a step and saves): nothing
        # ran, and status.json still tells the state of the run's last trainer.
        print(INTERRUPTED, file=sys.stderr)
        return 130
    except BaseException as exc:  # unexpected: keep the traceback, but leave a truthful status behind
        _failed(cfg, trainer, repr(exc))
        raise
    finally:
        if trainer is not None:
            trainer.close()
        _remove_if_only_leftovers(cfg.run_path, created)


def _remove_if_only_leftovers(folder: Path, created: bool) -> None:
    """A start that failed before training leaves no run folder behind (only the lock and status)."""
    leftovers = {".lock", "status.json"}
    if (
        created
        and ranks.rank() == 0
        and folder.is_dir()
        and all(p.name in leftovers for p in folder.iterdir())
    ):
        shutil.rmtree(folder, ignore_errors=True)


def _failed(cfg: Config, trainer: Trainer | None, error: str) -> None:
    """status.json says the run failed, and why (rank 0; also when it failed while starting)."""
    if ranks.rank() == 0:
        step = trainer.progress.step if trainer is not None else None
        write_status(cfg.run_path, "failed", step, error=error)


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
