"""What ``b2b sample`` writes for people: per-sample MIDI, PNG, NPZ and WAV, a real-beside-generated
picture, and an HTML gallery of both.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from b2b.atomic import temporary_path
from b2b.eval.reference import Comparison, summary_line
from b2b.eval.render import phrase_audio, roll_to_midi, save_roll_grid, save_wav, write_midi
from b2b.spec import RollSpec


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    with temporary_path(path) as tmp, open(tmp, "wb") as handle:  # a handle: numpy adds no suffix
        # numpy's stub types **arrays against its allow_pickle flag: a key could be "allow_pickle"
        np.savez_compressed(handle, **arrays)  # type: ignore[arg-type]


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


def _figures_html(figures: Comparison | None, n: int, real: str) -> str:
    if figures is None:
        return (
            "<p>No real data to compare with: pass <code>--data SHARDS</code> to <code>b2b sample</code>.</p>"
        )

    e = html.escape
    rows = []
    for r in figures.voices:
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
    body = "".join(rows)
    return (
        f"<p>Measured on {n} generated samples against {e(real)}: "
        f"{e(summary_line(figures))}.</p>\n<table><tr><th>track</th><th>plays in bars (real)</th>"
        f"<th>density × real</th><th>one note per step (real)</th><th>as real</th></tr>{body}</table>"
    )


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def gallery_html(
    entries: list[dict],
    info: dict,
    real_entries: list[dict] | None = None,
    figures: Comparison | None = None,
) -> str:
    """The ``index.html`` gallery: generated samples, real ones drawn alike, and the figures of
    ``figures``, measured on ``info["figures"]["n"]`` samples against ``info["real_source"]``."""
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
{_figures_html(figures, info.get("figures", {}).get("n", 0), info.get("real_source", ""))}
<h2>Generated samples</h2>
<div class="grid">
{_cards(entries, "generated")}
</div>
{real_section}
</body>
</html>
"""
