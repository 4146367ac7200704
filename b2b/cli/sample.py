"""``b2b sample``: generate music from a trained generator and write it in forms people can use.

Per sample ``sample-<i>``: a multi-track MIDI file (``.mid``), a piano-roll picture (``.png``), the raw
roll (``.npz``: the generator's probabilities and the binarized roll) and audio (``.wav``); for the set:
``grid.png`` with every sample, ``samples.json`` (what was generated, from which checkpoint, with which
settings) and ``index.html``, a gallery to open in a browser.

    b2b sample --checkpoint runs/demo --n 8 --out samples/demo
"""

from __future__ import annotations

import argparse
import html
import json
import math
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from b2b.atomic import temporary_path, write_text
from b2b.errors import B2BError
from b2b.eval.render import phrase_audio, roll_to_midi, save_roll_grid, save_wav, write_midi
from b2b.spec import RollSpec, spec_difference

INFO_FILE = "samples.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="a checkpoint folder, a run folder (its latest) or an exported .safetensors",
    )
    parser.add_argument("--n", type=int, default=8, help="number of samples (default 8)")
    parser.add_argument(
        "--out", required=True, help="output folder (created; files of the same names are replaced)"
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


def resolve_device(name: str) -> torch.device:
    """``auto`` → the first CUDA device when present, else CPU; any other name as torch spells it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise B2BError(f"--device {name!r} is not a torch device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise B2BError(
            f"--device {name}: this machine has no CUDA GPU torch can use; use --device cpu (or auto)"
        )
    return device


@torch.no_grad()
def generate(
    generator: torch.nn.Module, n: int, seed: int, device: str | torch.device = "cpu", batch_size: int = 64
) -> np.ndarray:
    """Generate ``n`` samples from latents drawn with ``seed``.

    Latents are drawn on the CPU in one call, so a seed gives the same latents on every device and for
    every ``batch_size``; the samples are bit-identical for the same seed, ``n``, ``batch_size`` and
    device (another batch size may change the last bits of the convolutions' rounding).

    Parameters
    ----------
    generator : b2b.model.generator.Generator
        Its ``probabilities`` map ``(B, latent_dim)`` to ``(B, C, T, P)``. Put in eval mode.
    n, seed : int
    device : str or torch.device
    batch_size : int
        Latents per forward pass.

    Returns
    -------
    np.ndarray
        ``(n, C, T, P)`` float32 probabilities.
    """
    if n < 1:
        raise B2BError(f"--n must be at least 1, got {n}")
    latents = torch.randn(n, generator.latent_dim, generator=torch.Generator().manual_seed(seed))
    generator = generator.eval().to(device)
    gates = torch.Generator(device).manual_seed(seed + 1)  # binary_stoch's bar gates: see probabilities()
    parts = [generator.probabilities(z.to(device), gates).float().cpu() for z in latents.split(batch_size)]
    return torch.cat(parts).numpy()


def to_notes(
    probs: np.ndarray, output: str, threshold: float, seed: int, bernoulli: bool = False
) -> np.ndarray:
    """Bool rolls from probabilities, as ``output`` makes notes in training (:func:`binarize`),
    or Bernoulli draws with ``bernoulli``; draws are seeded by ``seed``."""
    from b2b.model.generator import binarize

    mode = "binary_stoch" if bernoulli else output
    draws = torch.Generator().manual_seed(seed)
    return binarize(torch.from_numpy(probs), mode, threshold, draws).bool().numpy()


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    with temporary_path(path) as tmp, open(tmp, "wb") as handle:  # a handle: numpy adds no suffix
        np.savez_compressed(handle, **arrays)


def render_samples(
    rolls: np.ndarray,
    spec: RollSpec,
    out: str | Path,
    *,
    prefix: str = "sample",
    probs: np.ndarray | None = None,
    threshold: float | None = None,
    tempo: float = 100.0,
    sample_rate: int = 22050,
    synth: str = "auto",
    progress: bool = True,
) -> list[dict]:
    """Write MIDI, PNG, NPZ and WAV for each roll in ``out``; return one entry per roll.

    Each entry: ``{"name", "midi", "png", "npz", "wav", "notes", "synth"}`` (file names relative to
    ``out``, named ``<prefix>-<i>``). The ``.npz`` holds ``roll`` (bool), ``spec`` (the RollSpec as JSON)
    and, for generated rolls, ``probs`` (float32, the generator's probabilities) and ``threshold``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for i in tqdm(range(len(rolls)), desc=f"rendering {prefix}s", unit=prefix, disable=not progress):
        name = f"{prefix}-{i:03d}"
        midi = roll_to_midi(rolls[i], spec, tempo)
        write_midi(midi, out / f"{name}.mid")
        save_roll_grid(rolls[i : i + 1], spec, out / f"{name}.png", title=name)
        extra = {}
        if probs is not None:
            extra = {"probs": probs[i].astype(np.float32), "threshold": np.float32(threshold)}
        write_npz(out / f"{name}.npz", roll=rolls[i], spec=np.array(json.dumps(spec.to_dict())), **extra)
        audio, used = phrase_audio(midi, spec, tempo, sample_rate, synth)
        save_wav(audio, sample_rate, out / f"{name}.wav")
        entries.append(
            {
                "name": name,
                "midi": f"{name}.mid",
                "png": f"{name}.png",
                "npz": f"{name}.npz",
                "wav": f"{name}.wav",
                "notes": sum(len(inst.notes) for inst in midi.instruments),
                "synth": used,
            }
        )
    return entries


def save_comparison(real: np.ndarray, generated: np.ndarray, spec: RollSpec, path: Path, n: int = 4) -> Path:
    """One picture: a row of real samples above a row of generated ones, drawn alike and labelled."""
    n = min(n, len(real), len(generated))
    rolls = np.concatenate([real[:n], generated[:n]])
    labels = [f"real {i}" for i in range(n)] + [f"generated {i}" for i in range(n)]
    return save_roll_grid(rolls, spec, path, title="real (top) and generated (bottom)", labels=labels)


def _cards(entries: list[dict], kind: str) -> str:
    e = html.escape
    return "\n".join(
        f"""<figure class="sample {kind}" id="{e(entry["name"])}">
  <figcaption>{kind} · {e(entry["name"])} · {entry["notes"]} notes</figcaption>
  <img src="{e(entry["png"])}" alt="piano roll of {e(entry["name"])}">
  <audio controls preload="metadata" src="{e(entry["wav"])}"></audio>
  <p><a href="{e(entry["midi"])}" download>MIDI</a> · <a href="{e(entry["npz"])}" download>roll (.npz)</a></p>
</figure>"""
        for entry in entries
    )


def _figures_html(figures: dict | None) -> str:
    if figures is None:
        return (
            "<p>No real data to compare with: pass <code>--data SHARDS</code> to <code>b2b sample</code>.</p>"
        )
    from b2b.eval.reference import summary_line

    e = html.escape
    rows = []
    for r in figures["voices"]:
        if r["plays_real"] == 0 and r["ok"]:
            continue  # silent in the real data and here: nothing to show
        density = "-" if r["density_ratio"] is None else f"{r['density_ratio']:.2f}"
        cells = [
            e(r["track"]),
            f"{_pct(r['plays'])} ({_pct(r['plays_real'])})",
            density,
            f"{_pct(r['mono'])} ({_pct(r['mono_real'])})",
            "yes" if r["ok"] else "NO",
        ]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    rows = "".join(rows)
    return (
        f"<p>Measured on {figures['n']} generated samples against {e(figures['real'])}: "
        f"{e(summary_line(figures))}.</p>\n<table><tr><th>track</th><th>plays in bars (real)</th>"
        f"<th>density × real</th><th>one note per step (real)</th><th>as real</th></tr>{rows}</table>"
    )


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def gallery_html(entries: list[dict], info: dict, real_entries: list[dict] | None = None) -> str:
    """The ``index.html`` gallery: generated samples, real ones drawn alike, and the diversity figures."""
    e = html.escape
    settings = ", ".join(
        f"{k} {e(str(info[k]))}" for k in ("checkpoint", "step", "weights", "seed", "threshold", "tempo")
    )
    synths = sorted({entry["synth"] for entry in [*entries, *(real_entries or [])]})
    compare = '; real beside generated: <a href="compare.png">compare.png</a>' if real_entries else ""
    real_section = ""
    if real_entries:
        real_section = f"""<h2>Real samples ({e(info["real_source"])})</h2>
<div class="grid">
{_cards(real_entries, "real")}
</div>"""
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>b2b samples</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
.grid {{ display: flex; flex-wrap: wrap; gap: 1em; }}
figure {{ margin: 0; padding: 0.5em; border: 1px solid #ccc; border-radius: 6px; max-width: 440px; }}
figure.real {{ border-color: #7a7; }}
figure img {{ width: 100%; display: block; }}
audio {{ width: 100%; }}
table {{ border-collapse: collapse; }}
td, th {{ border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }}
</style>
</head>
<body>
<h1>b2b samples</h1>
<p>{settings}. Audio: {e(", ".join(synths))}. All generated samples in one picture:
<a href="grid.png">grid.png</a>{compare}.</p>
{_figures_html(info.get("figures"))}
<h2>Generated samples</h2>
<div class="grid">
{_cards(entries, "generated")}
</div>
{real_section}
</body>
</html>
"""


def _real_data(arg: str | None, cfg, spec: RollSpec) -> Path | None:
    """``--data``, else the run's own shards when they are still there and hold the generator's kind of
    sample (None: no real data to compare with)."""
    from b2b.cli.eval import shards_spec
    from b2b.errors import DataError

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
    from b2b.checkpoint.inference import load_generator

    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise B2BError(f"--threshold must be within [0, 1], got {args.threshold}")
    if not (math.isfinite(args.tempo) and 0 < args.tempo <= 1000):
        raise B2BError(f"--tempo must be a number of beats per minute in (0, 1000], got {args.tempo}")
    if not 1000 <= args.sample_rate <= 384000:
        raise B2BError(f"--sample-rate must be in 1000..384000 samples per second, got {args.sample_rate}")
    if args.n < 1:
        raise B2BError(f"--n must be at least 1, got {args.n}")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise B2BError(f"--out {args.out!r} is a file; give a folder for the samples")
    if args.measure < 0:
        raise B2BError(f"--measure must be 0 (off) or a number of samples, got {args.measure}")
    generator, spec, cfg = load_generator(args.checkpoint, use_ema=not args.no_ema)
    threshold = cfg.train.threshold if args.threshold is None else args.threshold
    data = _real_data(args.data, cfg, spec)
    measure = args.measure if data is not None else 0
    device = resolve_device(args.device)
    probs = generate(generator, max(args.n, measure), args.seed, device)
    rolls = to_notes(probs, generator.output, threshold, args.seed, args.bernoulli)
    out = Path(args.out)
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
    real_entries = None
    if data is not None:
        from b2b.eval.reference import RealReference

        reference = RealReference.from_shards(data, spec, kept=max(measure, args.n))
        info["real_source"] = f"{data} ({reference.source['split']} split)"
        real = reference.samples[: args.n]
        real_entries = render_samples(real, spec, out, prefix="real", **settings)
        save_comparison(real, rolls, spec, out / "compare.png")
        figures = reference.compare(rolls[:measure]) if measure >= 2 else None
        if figures is not None:
            figures.pop("metrics")
            info["figures"] = {**figures, "n": measure, "real": info["real_source"]}
        info["real_samples"] = real_entries
    write_text(out / INFO_FILE, json.dumps(info, indent=2))
    write_text(out / "index.html", gallery_html(entries, info, real_entries))
    synths = ", ".join(sorted({entry["synth"] for entry in entries}))
    print(f"wrote {len(entries)} samples to {out} (audio: {synths}); open {out / 'index.html'}")
    if "figures" in info:
        from b2b.eval.reference import summary_line

        print(f"{measure} samples against {info['figures']['real']}: {summary_line(info['figures'])}")
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
    from b2b.checkpoint.folder import read_meta

    return read_meta(path).get("step")


def load_samples(folder: str | Path) -> tuple[np.ndarray, RollSpec, dict]:
    """The binarized rolls, spec and info of a ``b2b sample`` output folder (for ``b2b eval --samples``)."""
    folder = Path(folder)
    info_path = folder / INFO_FILE
    if not info_path.is_file():
        raise B2BError(f"{info_path} does not exist: --samples needs a folder written by `b2b sample`")
    try:
        info = json.loads(info_path.read_text())
        spec = RollSpec.from_dict(info["spec"])
    except (ValueError, KeyError, TypeError) as exc:
        raise B2BError(
            f"{info_path} is not a `b2b sample` record ({type(exc).__name__}: {exc}); sample again"
        ) from None
    rolls = []
    for entry in info["samples"]:
        path = folder / entry["npz"]
        if not path.is_file():
            raise B2BError(f"{path} is listed in {info_path} but missing; run `b2b sample` again")
        with np.load(path) as data:
            rolls.append(data["roll"])
    return np.stack(rolls), spec, info
