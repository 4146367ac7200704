"""``b2b eval``: music metrics of generated samples beside the real corpus's, and one distance to real.

    b2b eval --checkpoint runs/demo --data shards/demo --n 256     # generate, then compare
    b2b eval --samples samples/demo --data shards/demo             # compare what `b2b sample` wrote
    b2b eval --data shards/demo --real-only                        # the corpus's own statistics

Writes ``metrics.json``, ``metrics.md`` and ``ssm.png`` (per-beat self-similarity matrices) to ``--out``
and prints the table and the distance to real. The metrics are defined in :mod:`b2b.eval.metrics`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from b2b.atomic import write_text
from b2b.checkpoint.folder import read_meta, resolve_checkpoint
from b2b.checkpoint.inference import load_generator
from b2b.cli.outputs import claim_output
from b2b.data.manifest import pick_split, read_manifest, shards_spec, song_groups
from b2b.errors import B2BError, DataError
from b2b.eval.corpus import corpus_statistics, musegan_reference, render_table, save_ssm_plot, table_rows
from b2b.eval.diversity import NEAR_COPY, copy_rates, nearest_distances
from b2b.eval.generate import generate, load_samples, resolve_device, to_notes
from b2b.eval.metrics import (
    DIVERSITY_N,
    metric_gaps,
    self_similarity,
)
from b2b.eval.reference import (
    Comparison,
    RealReference,
    floor_samples,
    nn_text,
    structure_table,
    summary_line,
    train_cells,
    voice_table,
)
from b2b.spec import RollSpec, spec_difference


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--checkpoint", help="generate from this checkpoint, run folder or .safetensors export"
    )
    source.add_argument("--samples", help="a folder written by `b2b sample`")
    source.add_argument("--real-only", action="store_true", help="only the statistics of the real corpus")
    parser.add_argument(
        "--data",
        help="shards folder of the real corpus (default with --checkpoint: the run's own data.shards)",
    )
    parser.add_argument(
        "--n", type=int, default=256, help="samples to generate with --checkpoint (default 256)"
    )
    parser.add_argument("--threshold", type=float, help="binarize at this probability (default: the run's)")
    parser.add_argument("--seed", type=int, default=0, help="latent seed with --checkpoint (default 0)")
    parser.add_argument("--no-ema", action="store_true", help="evaluate the raw generator instead of its EMA")
    parser.add_argument(
        "--split",
        choices=("auto", "val", "train"),
        default="auto",
        help="real split (auto: val if any, else train)",
    )
    parser.add_argument(
        "--real-n", type=int, help="use at most this many real samples (default: the whole split)"
    )
    parser.add_argument(
        "--train-n",
        type=int,
        help="compare with at most this many training samples for copies (default: the whole train split)",
    )
    parser.add_argument("--out", help="output folder (default: next to the samples, checkpoint or shards)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the report files of an earlier eval in --out"
    )
    parser.add_argument(
        "--device", default="auto", help="torch device for generating (default: cuda if present)"
    )


REPORT_FILES = ("metrics.json", "metrics.md", "ssm.png")
# The set measures (diversity, k-NN precision and recall, the 1-NN test) compare each sample with others.
MIN_SET = 2


def _default_out(args: argparse.Namespace, data: str) -> Path:
    if args.samples:
        return Path(args.samples)
    if args.real_only:
        return Path(f"{Path(data).resolve().name}-real-stats")  # beside the user, not in the data folder
    path = Path(args.checkpoint)
    if path.is_file():  # an export
        return path.with_name(f"{path.stem}-eval")

    checkpoint = resolve_checkpoint(path)
    return checkpoint.parent.parent / "eval" / checkpoint.name


def _generated(args: argparse.Namespace) -> tuple[np.ndarray, RollSpec, dict]:
    """Binarized generated rolls, their spec and a description of where they came from."""
    if args.samples:
        rolls, spec, info = load_samples(args.samples)
        return (
            rolls,
            spec,
            {"samples": str(args.samples), "checkpoint": info.get("checkpoint"), "n": len(rolls)},
        )

    generator, spec, cfg = load_generator(args.checkpoint, use_ema=not args.no_ema)
    threshold = cfg.train.threshold if args.threshold is None else args.threshold
    probs = generate(generator, args.n, args.seed, resolve_device(args.device))
    source = {"checkpoint": str(args.checkpoint), "n": args.n, "seed": args.seed, "threshold": threshold}
    rolls = to_notes(probs, generator.output, threshold, args.seed)
    return rolls, spec, {**source, "weights": "raw" if args.no_ema else "EMA"}


def _data_of(args: argparse.Namespace) -> str:
    """``--data``, or the shards the checkpoint's run trained on."""
    if args.data:
        return args.data
    if args.checkpoint and not Path(args.checkpoint).is_file():
        shards = read_meta(args.checkpoint)["config"]["data"]["shards"]
        if (Path(shards) / "manifest.json").is_file():
            return shards
        raise DataError(
            f"the run of {args.checkpoint} trained on {shards!r}, which holds no shards here; "
            "pass --data SHARDS"
        )
    raise B2BError("b2b eval needs --data SHARDS (the real corpus to compare with)")


def set_lines(result: Comparison, real_copies: dict | None, floor_source: str | None) -> list[str]:
    """The set measures as lines: diversity, precision/recall, the 1-NN test beside its real floor,
    copies (with the real baseline)."""

    ratio = result.diversity_ratio
    floor = (
        f"; the real floor: {floor_source}" if floor_source else "; no real floor: the shards have one split"
    )
    lines = [
        f"diversity: {'-' if ratio is None else f'{ratio:.2f}'} of real (mean pairwise Jaccard distance "
        f"{result.metrics['diversity'] or 0:.3f} generated, {result.real_diversity or 0:.3f} real)",
        f"precision {result.precision:.2f}, recall {result.recall:.2f} (k-NN in music-statistics space)",
        f"{nn_text(result)}: leave-one-out 1-NN accuracy telling generated from real samples, "
        f"{result.nn_n} of each (0.5 = indistinguishable){floor}",
    ]
    if result.copies is not None:
        copies = result.copies
        baseline = ""
        if real_copies is not None:
            baseline = f"; real held-out samples: {100 * real_copies['near']:.1f}%"
        lines.append(
            f"copies of training samples: {100 * copies['identical']:.1f}% identical, "
            f"{100 * copies['near']:.1f}% within Jaccard distance {NEAR_COPY}{baseline}"
        )
    return lines


def run(args: argparse.Namespace) -> int:

    if not (args.checkpoint or args.samples or args.real_only):
        raise B2BError("b2b eval needs one of --checkpoint PATH, --samples DIR or --real-only")
    for name in ("n", "real_n", "train_n"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise B2BError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    for name in ("n", "real_n") if not args.real_only else ():
        value = getattr(args, name)
        if value is not None and value < MIN_SET:
            raise B2BError(
                f"--{name.replace('_', '-')} must be at least {MIN_SET} to compare generated with real "
                f"samples (diversity, precision/recall and the 1-NN test need pairs), got {value}"
            )
    data = _data_of(args)
    real_spec = shards_spec(data)
    split = pick_split(data, args.split)
    out = Path(args.out) if args.out else _default_out(args, data)
    claim_output(out, folder=True, overwrite=args.overwrite, names=REPORT_FILES)

    rolls = None
    if not args.real_only:
        rolls, spec, source = _generated(args)
        if spec != real_spec:
            raise DataError(
                f"the generated samples differ from the samples in {data} "
                f"({spec_difference(spec, real_spec)}, generated vs real): compare with the corpus the model "
                "was trained on"
            )
        if len(rolls) < MIN_SET:
            raise DataError(
                f"{args.samples} holds {len(rolls)} sample; eval compares sets of at least {MIN_SET}: "
                f"run `b2b sample --n {MIN_SET}` or more"
            )
        gen_ssm = self_similarity(rolls, spec)
    kept = len(rolls) if rolls is not None else DIVERSITY_N
    accumulator, real_ssm, real_first = corpus_statistics(data, real_spec, split, args.real_n, kept)
    real = accumulator.result()
    if rolls is not None and real["n_samples"] < MIN_SET:
        raise DataError(
            f"the {split} split of {data} holds {real['n_samples']} sample; eval compares sets of at least "
            f"{MIN_SET}: use --split train or build the shards with more songs"
        )
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"real": real, "real_source": {"shards": str(data), "split": split}}

    if rolls is None:
        reference = musegan_reference(real_spec)
        columns = {f"corpus ({split}, n={real['n_samples']})": real}
        if reference is not None:
            columns["MuseGAN LPD-5 training data"] = reference
            report["musegan_lpd5_training"] = reference
        header = ["metric", "track", *columns]
        rows = table_rows(columns)
        panels = {"real: mean": real_ssm, "real: first sample": real_first}
        summary = [f"real corpus statistics of {data} ({split} split, {real['n_samples']} samples)"]
    else:
        train = train_cells(data, args.train_n)
        groups = song_groups(read_manifest(data), split, np.array(accumulator.kept_index))
        other = floor_samples(data, split, kept)
        comparison = RealReference.from_accumulator(accumulator, train, report["real_source"], other, groups)
        result = comparison.compare(rolls)
        real_copies = None
        if split != "train":  # how close held-out real samples come to the training set: the baseline
            real_copies = copy_rates(nearest_distances(comparison.samples, train))
        gaps = metric_gaps(result.metrics, real)
        report["real_source"] = comparison.source
        report.update(
            {
                "generated": result.metrics,
                "generated_source": source,
                "distance_to_real": result.distance_to_real,
                "diversity_ratio": result.diversity_ratio,
                "precision": result.precision,
                "recall": result.recall,
                "nn_accuracy": result.nn_accuracy,
                "nn_floor": result.nn_floor,
                "nn_n": result.nn_n,
                "in_key": result.in_key,
                "in_key_real": result.in_key_real,
                "copies": result.copies,
                "real_copies": real_copies,
                "voices": result.voices,
                "structure": result.structure,
                "gaps": gaps,
            }
        )
        columns = {
            f"generated (n={len(rolls)})": result.metrics,
            f"real (n={real['n_samples']})": real,
        }
        header = ["metric", "track", *columns, "gap"]
        rows = table_rows(columns, gaps)
        panels = {
            "generated: mean": gen_ssm.mean(axis=0),
            "generated: first sample": gen_ssm[0],
            "real: mean": real_ssm,
            "real: first sample": real_first,
        }
        summary = [
            f"distance to real: {result.distance_to_real:.4f} (0 = identical; 1 - (1 - mean gap over "
            f"{len(gaps)} metrics) x how close the diversity is to real, + the 1-NN accuracy's excess over "
            "the real floor)",
            *set_lines(result, real_copies, comparison.source.get("floor")),
            voice_table(result),
            structure_table(result),
            summary_line(result),
        ]

    write_text(out / "metrics.json", json.dumps(report, indent=2))
    text = "\n".join(summary)
    write_text(out / "metrics.md", f"{render_table(header, rows, markdown=True)}\n```\n{text}\n```\n")
    save_ssm_plot(panels, real_spec, out / "ssm.png")
    print(render_table(header, rows, markdown=False))
    print(text)
    print(f"wrote {out / 'metrics.json'}, {out / 'metrics.md'} and {out / 'ssm.png'}")
    return 0
