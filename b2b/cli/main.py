"""The ``b2b`` command. Each subcommand lives in its own module, imported only when it is used.

A command module provides ``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from b2b.errors import B2BError

DESCRIPTION = (
    "b2b (Bytes to Beats) trains a music-generating GAN on multi-track piano rolls: build shards from "
    "MIDI or the Lakh Pianoroll Dataset, train on one process, many GPUs or Slurm, then sample, listen "
    "and evaluate. Run `b2b COMMAND --help` for a command's options."
)

COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("b2b.train", "train (one process; under accelerate launch or torchrun, one rank of many)"),
    "shards": ("b2b.cli.shards", "build WebDataset shards from LPD, MIDI or the demo corpus; inspect them"),
    "describe": ("b2b.training.describe", "print the resolved config, layers, parameter counts and FLOPs"),
    "sample": ("b2b.cli.sample", "generate MIDI, piano-roll PNGs, WAV audio and an HTML gallery"),
    "eval": ("b2b.cli.eval", "music metrics of generated and real samples"),
    "export": ("b2b.cli.export", "write the (EMA) generator and its config as safetensors"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="b2b", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"b2b {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] not in COMMANDS:
        parser.print_help() if not argv or argv[0] in ("-h", "--help") else parser.parse_args(argv)
        return 0 if argv else 2
    name = argv[0]
    try:  # a Ctrl-C while the command's modules (torch: seconds) load is one line too
        if name == "train":  # its own entry point: exit codes and errors are the trainer's
            from b2b.train import main as train_main

            return train_main(argv[1:])
        module = importlib.import_module(COMMANDS[name][0])
        command_parser = argparse.ArgumentParser(prog=f"b2b {name}", description=COMMANDS[name][1])
        module.add_arguments(command_parser)
        args = command_parser.parse_args(argv[1:])
        return int(module.run(args) or 0)
    except B2BError as exc:
        print(f"b2b {name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"b2b {name}: interrupted", file=sys.stderr)
        return 130


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("b2b")
    except PackageNotFoundError:
        return "(not installed)"


if __name__ == "__main__":
    sys.exit(main())
