"""The real corpus's side of ``b2b eval``: its metrics streamed in chunks, the MuseGAN reference row, the
tables that set generated beside real, and the self-similarity picture.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tqdm import tqdm

from b2b.data.reading import iter_samples, load_split
from b2b.errors import DataError
from b2b.eval.metrics import (
    DIVERSITY_N,
    RATE_METRICS,
    MetricsAccumulator,
    metric_items,
    self_similarity,
)
from b2b.eval.render import save_figure
from b2b.spec import LPD5_TRACKS, RollSpec

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

    total = load_split(shards, split).n_samples
    total = total if limit is None else min(total, limit)
    accumulator = MetricsAccumulator(spec, diversity_n=kept)
    ssm_sum: np.ndarray | None = None
    first: np.ndarray | None = None
    with tqdm(total=total, desc=f"real {split} samples", unit="sample") as progress:
        for batch in _batches(iter_samples(shards, split=split, limit=limit), CHUNK):
            accumulator.update(batch)
            ssm = self_similarity(batch, spec)
            ssm_sum = ssm.sum(axis=0) if ssm_sum is None else ssm_sum + ssm.sum(axis=0)
            first = ssm[0] if first is None else first
            progress.update(len(batch))
    if first is None or ssm_sum is None:  # no sample was read (they are None together)
        raise DataError(f"the {split} split of {shards} holds no samples")
    return accumulator, ssm_sum / accumulator.n_samples, first


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


def table_rows(columns: Mapping[str, dict | None], gaps: dict[str, float] | None = None) -> list[list[str]]:
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
