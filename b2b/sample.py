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
import os
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from b2b.atomic import write_text
from b2b.errors import B2BError
from b2b.render import roll_to_midi, save_roll_grid, save_wav, synthesize, write_midi
from b2b.spec import RollSpec

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


def resolve_device(name: str) -> torch.device:
    """``auto`` → the first CUDA device when present, else CPU; any other name as torch spells it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise B2BError(f"--device {name!r} is not a torch device; use auto, cpu, cuda or cuda:N") from None


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
    generator : b2b.models.Generator
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
    parts = [generator.probabilities(z.to(device)).float().cpu() for z in latents.split(batch_size)]
    return torch.cat(parts).numpy()


def to_notes(
    probs: np.ndarray, output: str, threshold: float, seed: int, bernoulli: bool = False
) -> np.ndarray:
    """Bool rolls from probabilities, as ``output`` makes notes in training (:func:`b2b.models.binarize`),
    or Bernoulli draws with ``bernoulli``; draws are seeded by ``seed``."""
    from b2b.models import binarize

    mode = "binary_stoch" if bernoulli else output
    draws = torch.Generator().manual_seed(seed)
    return binarize(torch.from_numpy(probs), mode, threshold, draws).bool().numpy()


def _write_npz(path: Path, **arrays: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.npz")
    try:
        np.savez_compressed(tmp, **arrays)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def render_samples(
    probs: np.ndarray,
    rolls: np.ndarray,
    spec: RollSpec,
    out: str | Path,
    threshold: float,
    tempo: float = 100.0,
    sample_rate: int = 22050,
    synth: str = "auto",
) -> list[dict]:
    """Write MIDI, PNG, NPZ and WAV for each sample in ``out``; return one entry per sample.

    Each entry: ``{"name", "midi", "png", "npz", "wav", "notes", "synth"}`` (file names relative to
    ``out``). The ``.npz`` holds ``probs`` (float32, the generator's probabilities), ``roll`` (bool, the
    notes made from them), ``threshold`` and ``spec`` (the RollSpec as JSON).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    step_seconds = 60.0 / tempo / spec.steps_per_beat
    min_frames = int(np.ceil(spec.shape[1] * step_seconds * sample_rate))
    entries = []
    for i in tqdm(range(len(probs)), desc="rendering samples", unit="sample"):
        name = f"sample-{i:03d}"
        midi = roll_to_midi(rolls[i], spec, tempo)
        write_midi(midi, out / f"{name}.mid")
        save_roll_grid(rolls[i : i + 1], spec, out / f"{name}.png", title=name)
        _write_npz(
            out / f"{name}.npz",
            probs=probs[i].astype(np.float32),
            roll=rolls[i],
            threshold=np.float32(threshold),
            spec=np.array(json.dumps(spec.to_dict())),
        )
        audio, used = synthesize(midi, sample_rate, synth)
        # Silence and short endings are padded so every file lasts the whole phrase.
        audio = np.pad(audio, (0, max(0, min_frames - len(audio))))
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
    save_roll_grid(rolls, spec, out / "grid.png", title=f"{len(rolls)} samples (threshold {threshold})")
    return entries


def gallery_html(entries: list[dict], info: dict) -> str:
    """The ``index.html`` gallery: one card per sample with its piano roll, an audio player and links."""
    e = html.escape
    settings = ", ".join(
        f"{k} {e(str(info[k]))}" for k in ("checkpoint", "step", "weights", "seed", "threshold", "tempo")
    )
    cards = []
    for entry in entries:
        cards.append(
            f"""<figure class="sample" id="{e(entry["name"])}">
  <figcaption>{e(entry["name"])} · {entry["notes"]} notes</figcaption>
  <img src="{e(entry["png"])}" alt="piano roll of {e(entry["name"])}">
  <audio controls preload="metadata" src="{e(entry["wav"])}"></audio>
  <p><a href="{e(entry["midi"])}" download>MIDI</a> · <a href="{e(entry["npz"])}" download>roll (.npz)</a></p>
</figure>"""
        )
    synths = sorted({entry["synth"] for entry in entries})
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>b2b samples</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
.grid {{ display: flex; flex-wrap: wrap; gap: 1em; }}
figure {{ margin: 0; padding: 0.5em; border: 1px solid #ccc; border-radius: 6px; max-width: 440px; }}
figure img {{ width: 100%; display: block; }}
audio {{ width: 100%; }}
</style>
</head>
<body>
<h1>b2b samples</h1>
<p>{settings}. Audio: {e(", ".join(synths))}. All samples in one picture: <a href="grid.png">grid.png</a>.</p>
<div class="grid">
{chr(10).join(cards)}
</div>
</body>
</html>
"""


def run(args: argparse.Namespace) -> int:
    from b2b.checkpoint import load_generator

    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise B2BError(f"--threshold must be within [0, 1], got {args.threshold}")
    if args.tempo <= 0:
        raise B2BError(f"--tempo must be > 0 beats per minute, got {args.tempo}")
    generator, spec, cfg = load_generator(args.checkpoint, use_ema=not args.no_ema)
    threshold = cfg.train.threshold if args.threshold is None else args.threshold
    device = resolve_device(args.device)
    probs = generate(generator, args.n, args.seed, device)
    rolls = to_notes(probs, generator.output, threshold, args.seed, args.bernoulli)
    out = Path(args.out)
    entries = render_samples(probs, rolls, spec, out, threshold, args.tempo, args.sample_rate, args.synth)
    info = {
        "checkpoint": str(args.checkpoint),
        "step": _step_of(args.checkpoint),
        "weights": "raw" if args.no_ema else "EMA",
        "seed": args.seed,
        "threshold": threshold,
        "tempo": args.tempo,
        "sample_rate": args.sample_rate,
        "spec": spec.to_dict(),
        "samples": entries,
    }
    write_text(out / INFO_FILE, json.dumps(info, indent=2))
    write_text(out / "index.html", gallery_html(entries, info))
    synths = ", ".join(sorted({entry["synth"] for entry in entries}))
    print(f"wrote {len(entries)} samples to {out} (audio: {synths}); open {out / 'index.html'}")
    print(f"evaluate them with: b2b eval --samples {out} --data SHARDS")
    return 0


def _step_of(checkpoint: str | Path) -> int | None:
    """The training step of a checkpoint folder, run folder or export, when recorded."""
    path = Path(checkpoint)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            step = (handle.metadata() or {}).get("b2b_step")
        return int(step) if step is not None else None
    from b2b.checkpoint import read_meta

    return read_meta(path).get("step")


def load_samples(folder: str | Path) -> tuple[np.ndarray, RollSpec, dict]:
    """The binarized rolls, spec and info of a ``b2b sample`` output folder (for ``b2b eval --samples``)."""
    folder = Path(folder)
    info_path = folder / INFO_FILE
    if not info_path.is_file():
        raise B2BError(f"{info_path} does not exist: --samples needs a folder written by `b2b sample`")
    info = json.loads(info_path.read_text())
    spec = RollSpec.from_dict(info["spec"])
    rolls = []
    for entry in info["samples"]:
        path = folder / entry["npz"]
        if not path.is_file():
            raise B2BError(f"{path} is listed in {info_path} but missing; run `b2b sample` again")
        with np.load(path) as data:
            rolls.append(data["roll"])
    return np.stack(rolls), spec, info
