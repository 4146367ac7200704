"""The one way b2b turns a generator into rolls: seeded latents, note probabilities in batches, notes as
training makes them. ``b2b sample``, ``b2b eval``, the trainer's snapshots and its in-training metrics
all generate through here; and reading back what ``b2b sample`` wrote.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from b2b.errors import B2BError
from b2b.model.generator import Generator, binarize
from b2b.spec import RollSpec

INFO_FILE = "samples.json"


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
    generator: Generator, n: int, seed: int, device: str | torch.device = "cpu", batch_size: int = 64
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
    return probabilities(generator, latents, gates, batch_size).cpu().numpy()


@torch.no_grad()
def probabilities(
    generator: Generator,
    latents: torch.Tensor,
    draws: torch.Generator,
    batch_size: int | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> torch.Tensor:
    """Note probabilities (float32, on the generator's device) of ``latents``, ``batch_size`` at a time
    (all at once: None), under ``autocast``; ``draws`` seeds what the generator samples (bar gates)."""
    device = next(generator.parameters()).device
    chunks = latents.split(batch_size) if batch_size else [latents]
    with autocast():
        return torch.cat([generator.probabilities(z.to(device), draws).float() for z in chunks])


def notes(probs: torch.Tensor, output: str, threshold: float, draws: torch.Generator) -> np.ndarray:
    """Bool rolls from probabilities, as ``output`` makes notes in training (:func:`binarize`); Bernoulli
    draws (``binary_stoch``) come from ``draws``, on the device of ``probs``."""
    return binarize(probs, output, threshold, draws).bool().cpu().numpy()


def generate_notes(
    generator: Generator,
    latents: torch.Tensor,
    threshold: float,
    draws: torch.Generator,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> np.ndarray:
    """Bool rolls of ``latents`` in one pass, gates and notes drawn from one stream (the trainer's
    snapshots and in-training metrics)."""
    return notes(
        probabilities(generator, latents, draws, autocast=autocast), generator.output, threshold, draws
    )


def to_notes(
    probs: np.ndarray, output: str, threshold: float, seed: int, bernoulli: bool = False
) -> np.ndarray:
    """Bool rolls from probabilities, as ``output`` makes notes in training, or Bernoulli draws with
    ``bernoulli``; draws are seeded by ``seed`` (``b2b sample`` and ``b2b eval``)."""
    mode = "binary_stoch" if bernoulli else output
    return notes(torch.from_numpy(probs), mode, threshold, torch.Generator().manual_seed(seed))


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
