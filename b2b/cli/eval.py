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
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tqdm import tqdm

from b2b.atomic import write_text
from b2b.errors import B2BError, DataError
from b2b.eval.metrics import (
    DIVERSITY_N,
    RATE_METRICS,
    MetricsAccumulator,
    metric_gaps,
    metric_items,
    self_similarity,
)
from b2b.eval.render import save_figure
from b2b.spec import LPD5_TRACKS, RollSpec, spec_difference

CHUNK = 256  # real samples per metrics update

# MuseGAN (Dong et al., AAAI 2018), training data row of Table 1 (EB, UPC, QN, DP) and Table 2 (TD),
# on LPD-5; rates as fractions.
MUSEGAN_LPD5_TRAINING: dict = {
    "tracks": {
        "Drums": {"EB": 0.0806, "DP": 0.886},
        "Piano": {"EB": 0.248, "UPC": 3.28, "QN": 0.884},
        "Guitar": {"EB": 0.194, "UPC": 3.08, "QN": 0.819},
        "Bass": {"EB": 0.0806, "UPC": 1.71, "QN": 0.900},
        "Strings": {"EB": 0.101, "UPC": 3.38, "QN": 0.896},
    },
    "TD": {
        frozenset(("Bass", "Guitar")): 1.57,
        frozenset(("Bass", "Strings")): 1.58,
        frozenset(("Bass", "Piano")): 1.51,
        frozenset(("Guitar", "Strings")): 1.10,
        frozenset(("Guitar", "Piano")): 1.02,
        frozenset(("Strings", "Piano")): 1.04,
    },
}


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
        "--device", default="auto", help="torch device for generating (default: cuda if present)"
    )


# ---------------------------------------------------------------------------------------------------
# Real data


def shards_spec(shards: str | Path) -> RollSpec:
    """The RollSpec recorded in a shards folder's manifest."""
    from b2b.data.manifest import manifest_spec, read_manifest

    return manifest_spec(read_manifest(shards), shards)


def pick_split(shards: str | Path, split: str) -> str:
    """``auto``: ``val`` when the shards have validation samples, else ``train``."""
    from b2b.data.manifest import read_manifest, reference_split

    return reference_split(read_manifest(shards)) if split == "auto" else split


def _batches(samples: Iterator[np.ndarray], size: int) -> Iterator[np.ndarray]:
    batch = []
    for sample in samples:
        batch.append(sample)
        if len(batch) == size:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)


def corpus_statistics(
    shards: str | Path, spec: RollSpec, split: str = "val", limit: int | None = None, kept: int = DIVERSITY_N
) -> tuple[MetricsAccumulator, np.ndarray, np.ndarray]:
    """Metrics of a split of the real corpus, streamed in chunks (the corpus need not fit in memory).

    Returns
    -------
    accumulator : MetricsAccumulator
        Over the samples read; ``result()`` gives :func:`b2b.eval.metrics.music_metrics`, ``kept`` a seeded
        uniform subset of ``kept`` samples (diversity, precision and recall).
    mean_ssm, first_ssm : np.ndarray
        The mean per-beat self-similarity matrix over those samples, and the first sample's.
    """
    from b2b.data.reading import iter_samples, load_split

    total = load_split(shards, split).n_samples
    total = total if limit is None else min(total, limit)
    accumulator = MetricsAccumulator(spec, diversity_n=kept)
    ssm_sum, first = None, None
    with tqdm(total=total, desc=f"real {split} samples", unit="sample") as progress:
        for batch in _batches(iter_samples(shards, split=split, limit=limit), CHUNK):
            accumulator.update(batch)
            ssm = self_similarity(batch, spec)
            ssm_sum = ssm.sum(axis=0) if ssm_sum is None else ssm_sum + ssm.sum(axis=0)
            first = ssm[0] if first is None else first
            progress.update(len(batch))
    if first is None:
        raise DataError(f"the {split} split of {shards} holds no samples")
    return accumulator, ssm_sum / accumulator.n_samples, first


# ---------------------------------------------------------------------------------------------------
# Tables


def musegan_reference(spec: RollSpec) -> dict | None:
    """MuseGAN's training-data row as a metrics dict keyed like ours, when ``spec`` has LPD-5's tracks."""
    names = [t.name for t in spec.tracks]
    if sorted(names) != sorted(t.name for t in LPD5_TRACKS):
        return None
    pitched = [t.name for t in spec.tracks if not t.is_drum]
    td = {}
    for i, a in enumerate(pitched):
        for b in pitched[i + 1 :]:
            td[f"{a}-{b}"] = MUSEGAN_LPD5_TRAINING["TD"][frozenset((a, b))]
    return {"tracks": MUSEGAN_LPD5_TRAINING["tracks"], "polyphonic_rate": None, "TD": td}


def _format(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}%" if metric in RATE_METRICS else f"{value:.3f}"  # rates in %, as MuseGAN


def table_rows(columns: dict[str, dict | None], gaps: dict[str, float] | None = None) -> list[list[str]]:
    """Rows ``[metric, track or pair, value per column..., (gap)]`` for every entry some column defines."""
    items = {name: metric_items(m) for name, m in columns.items() if m is not None}
    keys = list(next(iter(items.values())))
    rows = []
    for key in keys:
        values = [items[name].get(key) for name in items]
        if all(v is None for v in values):
            continue
        metric, _, what = key.partition("/")
        row = [metric, what or "all tracks", *(_format(metric, v) for v in values)]
        if gaps is not None:
            row.append(f"{gaps[key]:.3f}" if key in gaps else "-")
        rows.append(row)
    return rows


def render_table(header: list[str], rows: list[list[str]], markdown: bool) -> str:
    """A plain aligned table for the console, or a Markdown pipe table."""
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------
# Self-similarity plot


def save_ssm_plot(panels: dict[str, np.ndarray], spec: RollSpec, path: str | Path) -> Path:
    """One heat map per ``{title: (B, B) matrix}``, beats on both axes, bar lines marked."""
    fig = Figure(figsize=(3.2 * len(panels) + 1.0, 3.4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, ssm) in zip(axes, panels.items(), strict=True):
        image = ax.imshow(ssm, vmin=0.0, vmax=1.0, cmap="viridis", origin="upper", interpolation="nearest")
        for bar in range(1, spec.n_bars):
            edge = bar * spec.beats_per_bar - 0.5
            ax.axvline(edge, color="white", linewidth=0.6)
            ax.axhline(edge, color="white", linewidth=0.6)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("beat", fontsize=8)
        ax.set_ylabel("beat", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="cosine similarity")
    return save_figure(fig, path)


# ---------------------------------------------------------------------------------------------------
# The command


def _default_out(args: argparse.Namespace, data: str) -> Path:
    if args.samples:
        return Path(args.samples)
    if args.real_only:
        return Path(f"{Path(data).resolve().name}-real-stats")  # beside the user, not in the data folder
    path = Path(args.checkpoint)
    if path.is_file():  # an export
        return path.with_name(f"{path.stem}-eval")
    from b2b.checkpoint.folder import resolve_checkpoint

    checkpoint = resolve_checkpoint(path)
    return checkpoint.parent.parent / "eval" / checkpoint.name


def _generated(args: argparse.Namespace) -> tuple[np.ndarray, RollSpec, dict]:
    """Binarized generated rolls, their spec and a description of where they came from."""
    if args.samples:
        from b2b.cli.sample import load_samples

        rolls, spec, info = load_samples(args.samples)
        return (
            rolls,
            spec,
            {"samples": str(args.samples), "checkpoint": info.get("checkpoint"), "n": len(rolls)},
        )
    from b2b.checkpoint.inference import load_generator
    from b2b.cli.sample import generate, resolve_device, to_notes

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
        from b2b.checkpoint.folder import read_meta

        shards = read_meta(args.checkpoint)["config"]["data"]["shards"]
        if (Path(shards) / "manifest.json").is_file():
            return shards
        raise DataError(
            f"the run of {args.checkpoint} trained on {shards!r}, which holds no shards here; "
            "pass --data SHARDS"
        )
    raise B2BError("b2b eval needs --data SHARDS (the real corpus to compare with)")


def set_lines(result: dict, real_copies: dict | None) -> list[str]:
    """The set measures as lines: diversity, precision/recall, copies (with the real baseline)."""
    from b2b.eval.diversity import NEAR_COPY

    ratio = result["diversity_ratio"]
    lines = [
        f"diversity: {'-' if ratio is None else f'{ratio:.2f}'} of real (mean pairwise Jaccard distance "
        f"{result['metrics']['diversity'] or 0:.3f} generated, {result['real_diversity'] or 0:.3f} real)",
        f"precision {result['precision']:.2f}, recall {result['recall']:.2f} "
        "(k-NN in music-statistics space)",
    ]
    if result["copies"] is not None:
        copies = result["copies"]
        baseline = ""
        if real_copies is not None:
            baseline = f"; real held-out samples: {100 * real_copies['near']:.1f}%"
        lines.append(
            f"copies of training samples: {100 * copies['identical']:.1f}% identical, "
            f"{100 * copies['near']:.1f}% within Jaccard distance {NEAR_COPY}{baseline}"
        )
    return lines


def run(args: argparse.Namespace) -> int:
    from b2b.eval.diversity import copy_rates, nearest_distances
    from b2b.eval.reference import RealReference, summary_line, train_cells, voice_table

    if not (args.checkpoint or args.samples or args.real_only):
        raise B2BError("b2b eval needs one of --checkpoint PATH, --samples DIR or --real-only")
    for name in ("n", "real_n", "train_n"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise B2BError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    data = _data_of(args)
    real_spec = shards_spec(data)
    split = pick_split(data, args.split)
    out = Path(args.out) if args.out else _default_out(args, data)

    rolls = None
    if not args.real_only:
        rolls, spec, source = _generated(args)
        if spec != real_spec:
            raise DataError(
                f"the generated samples differ from the samples in {data} "
                f"({spec_difference(spec, real_spec)}, generated vs real): compare with the corpus the model "
                "was trained on"
            )
        gen_ssm = self_similarity(rolls, spec)
    kept = len(rolls) if rolls is not None else DIVERSITY_N
    accumulator, real_ssm, real_first = corpus_statistics(data, real_spec, split, args.real_n, kept)
    real = accumulator.result()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        message = f"cannot create the output folder {str(out)!r} ({exc.strerror}); choose another with --out"
        raise B2BError(message) from None
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
        comparison = RealReference.from_accumulator(accumulator, train, report["real_source"])
        result = comparison.compare(rolls)
        result["real_diversity"] = real.get("diversity")
        real_copies = None
        if split != "train":  # how close held-out real samples come to the training set: the baseline
            real_copies = copy_rates(nearest_distances(comparison.samples, train))
        gaps = metric_gaps(result["metrics"], real)
        report.update(
            {
                "generated": result["metrics"],
                "generated_source": source,
                "distance_to_real": result["distance_to_real"],
                "diversity_ratio": result["diversity_ratio"],
                "precision": result["precision"],
                "recall": result["recall"],
                "copies": result["copies"],
                "real_copies": real_copies,
                "voices": result["voices"],
                "gaps": gaps,
            }
        )
        columns = {
            f"generated (n={len(rolls)})": result["metrics"],
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
            f"distance to real: {result['distance_to_real']:.4f} (0 = identical statistics and diversity; "
            f"mean gap over {len(gaps)} metrics, times how close the diversity is to real)",
            *set_lines(result, real_copies),
            voice_table(result),
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
