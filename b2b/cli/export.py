"""``b2b export``: the (EMA) generator and its config as one safetensors file, for sampling elsewhere."""

from __future__ import annotations

import argparse

from b2b.checkpoint.folder import read_meta, resolve_checkpoint
from b2b.checkpoint.inference import export_generator
from b2b.cli.outputs import claim_output


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint", required=True, help="a checkpoint folder or a run folder (its latest)"
    )
    parser.add_argument("--out", required=True, help="output file, e.g. generator.safetensors")
    parser.add_argument("--no-ema", action="store_true", help="export the raw generator instead of the EMA")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing --out file (default: refuse)"
    )


def run(args: argparse.Namespace) -> int:
    source = resolve_checkpoint(args.checkpoint)
    claim_output(args.out, folder=False, overwrite=args.overwrite)
    out = export_generator(source, args.out, use_ema=not args.no_ema)
    weights = "raw" if args.no_ema else "EMA"
    print(f"wrote {out} ({weights} generator of {source}, step {read_meta(source)['step']})")
    print(f"sample from it with: b2b sample --checkpoint {out} --n 8 --out samples/")
    return 0
