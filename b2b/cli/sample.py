"""``b2b sample``: generate music from a trained generator and write it in forms people can use.

Per sample ``sample-<i>``: a multi-track MIDI file (``.mid``), a piano-roll picture (``.png``), the raw
roll (``.npz``: the generator's probabilities and the binarized roll) and audio (``.wav``); for the set:
``grid.png`` with every sample, ``samples.json`` (what was generated, from which checkpoint, with which
settings) and ``index.html``, a gallery to open in a browser.

    b2b sample --checkpoint runs/demo --n 8 --out samples/demo
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from b2b.atomic import write_text
from b2b.checkpoint.folder import read_meta
from b2b.checkpoint.inference import load_generator
from b2b.cli.outputs import claim_output
from b2b.data.manifest import shards_spec
from b2b.errors import B2BError, DataError
from b2b.eval.gallery import gallery_html, render_samples, save_comparison
from b2b.eval.generate import INFO_FILE, generate, resolve_device, to_notes
from b2b.eval.reference import RealReference, summary_line
from b2b.eval.render import save_roll_grid
from b2b.spec import RollSpec, spec_difference


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="a checkpoint folder, a run folder (its latest) or an exported .safetensors",
    )
    parser.add_argument("--n", type=int, default=8, help="number of samples (default 8)")
    parser.add_argument("--out", required=True, help="output folder (created; an existing one must be empty)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a non-empty --out, replacing files of the same names (default: refuse)",
    )
    parser.add_argument(
        "--threshold", type=float, help="a cell is a note from this probability on (default: the run's)"
    )
    parser.add_argument(
        "--bernoulli",
        action="store_true",
        help="draw each cell as a note with its probability (default: as trained: the threshold, or "
        "Bernoulli draws for model.output=binary_stoch)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="latent seed: same seed, same samples (default 0)"
    )
    parser.add_argument("--no-ema", action="store_true", help="sample the raw generator instead of its EMA")
    parser.add_argument(
        "--tempo", type=float, default=100.0, help="beats per minute of MIDI and audio (default 100)"
    )
    parser.add_argument("--sample-rate", type=int, default=22050, help="audio sample rate (default 22050)")
    parser.add_argument(
        "--synth",
        choices=("auto", "fluidsynth", "fallback"),
        default="auto",
        help="audio synth: FluidSynth when installed (auto), or the built-in fallback",
    )
    parser.add_argument(
        "--device", default="auto", help="torch device for the generator (default: cuda if present)"
    )
    parser.add_argument(
        "--data",
        help="shards of the real corpus, drawn beside the samples and measured against "
        "(default: the run's data.shards when present)",
    )
    parser.add_argument(
        "--measure",
        type=int,
        default=256,
        help="samples generated to measure diversity, precision/recall and copies against the real "
        "data (default 256; 0: off)",
    )
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def _real_data(arg: str | None, cfg, spec: RollSpec) -> Path | None:
    """``--data``, else the run's own shards when they are still there and hold the generator's kind of
    sample (None: no real data to compare with)."""

    if arg is not None:
        data_spec = shards_spec(arg)
        if data_spec != spec:
            raise DataError(
                f"--data {arg!r} holds another kind of sample than the generator makes "
                f"({spec_difference(data_spec, spec)}): compare with the corpus the model was trained on"
            )
        return Path(arg)
    path = Path(cfg.data.shards)
    if not (path / "manifest.json").is_file():
        return None
    try:
        return path if shards_spec(path) == spec else None
    except B2BError:
        return None


def run(args: argparse.Namespace) -> int:

    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise B2BError(f"--threshold must be within [0, 1], got {args.threshold}")
    if not (math.isfinite(args.tempo) and 0 < args.tempo <= 1000):
        raise B2BError(f"--tempo must be a number of beats per minute in (0, 1000], got {args.tempo}")
    if not 1000 <= args.sample_rate <= 384000:
        raise B2BError(f"--sample-rate must be in 1000..384000 samples per second, got {args.sample_rate}")
    if args.n < 1:
        raise B2BError(f"--n must be at least 1, got {args.n}")
    if args.measure < 0:
        raise B2BError(f"--measure must be 0 (off) or a number of samples, got {args.measure}")
    out = claim_output(args.out, folder=True, overwrite=args.overwrite)
    generator, spec, cfg = load_generator(args.checkpoint, use_ema=not args.no_ema)
    threshold = cfg.train.threshold if args.threshold is None else args.threshold
    data = _real_data(args.data, cfg, spec)
    measure = args.measure if data is not None else 0
    device = resolve_device(args.device)
    probs = generate(generator, max(args.n, measure), args.seed, device)
    rolls = to_notes(probs, generator.output, threshold, args.seed, args.bernoulli)
    settings = dict(tempo=args.tempo, sample_rate=args.sample_rate, synth=args.synth, progress=args.progress)
    entries = render_samples(
        rolls[: args.n], spec, out, probs=probs[: args.n], threshold=threshold, **settings
    )
    save_roll_grid(rolls[: args.n], spec, out / "grid.png", title=f"{args.n} generated samples")
    info = {
        "checkpoint": str(args.checkpoint),
        "step": _step_of(args.checkpoint),
        "weights": "raw" if args.no_ema else "EMA",
        "seed": args.seed,
        "threshold": threshold,
        "binarize": "bernoulli" if args.bernoulli else generator.output,
        "tempo": args.tempo,
        "sample_rate": args.sample_rate,
        "spec": spec.to_dict(),
        "samples": entries,
    }
    real_entries, figures = None, None
    if data is not None:
        reference = RealReference.from_shards(data, spec, kept=max(measure, args.n))
        info["real_source"] = f"{data} ({reference.source['split']} split)"
        real = reference.samples[: args.n]
        real_entries = render_samples(real, spec, out, prefix="real", **settings)
        save_comparison(real, rolls, spec, out / "compare.png")
        figures = reference.compare(rolls[:measure]) if measure >= 2 else None
        if figures is not None:
            info["figures"] = {**figures.to_dict(metrics=False), "n": measure, "real": info["real_source"]}
        info["real_samples"] = real_entries
    write_text(out / INFO_FILE, json.dumps(info, indent=2))
    write_text(out / "index.html", gallery_html(entries, info, real_entries, figures))
    synths = ", ".join(sorted({entry["synth"] for entry in entries}))
    print(f"wrote {len(entries)} samples to {out} (audio: {synths}); open {out / 'index.html'}")
    if figures is not None:
        print(f"{measure} samples against {info['figures']['real']}: {summary_line(figures)}")
    else:
        print("no real data found for comparison (the run's shards are gone): pass --data SHARDS")
    print(f"evaluate them with: b2b eval --samples {out} --data {data or 'SHARDS'}")
    return 0


def _step_of(checkpoint: str | Path) -> int | None:
    """The training step of a checkpoint folder, run folder or export, when recorded."""
    path = Path(checkpoint)
    if path.is_file():  # an export, whatever its name
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            step = (handle.metadata() or {}).get("b2b_step")
        return int(step) if step is not None else None

    return read_meta(path).get("step")
