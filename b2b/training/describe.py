"""``b2b describe``: the resolved config, the sample shape, each network's layers, parameter counts and
FLOPs per sample (for MFU accounting).

The networks are built on the ``meta`` device: nothing is allocated, so a model of hundreds of millions
of parameters is described in a second. FLOPs are those torch's flop counter attributes to matrix
multiplies and convolutions (2 per multiply-add; element-wise operations are not counted), measured on a
batch of 2 and divided by 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import yaml
from torch import nn

from b2b.compat import TorchDispatchMode, op_flops
from b2b.config import Config, load_config
from b2b.data.manifest import read_manifest
from b2b.errors import ConfigError
from b2b.model.generator import GATE_LR_MULT, BarGate
from b2b.model.networks import build_models
from b2b.model.shape import layer_plan
from b2b.training.losses import critic_loss, generator_loss

_BATCH = 2  # FLOPs are linear in the batch; 2 keeps batch norm's training-mode statistics defined


class FlopCount(TorchDispatchMode):
    """Count matmul/convolution FLOPs of everything run inside, forward and backward.

    torch's ``FlopCounterMode`` cannot be used for the critic step: its module tracker raises inside
    ``torch.autograd.grad``, which the gradient penalty calls. This mode uses the same FLOP formulas
    (``b2b.compat.op_flops``) without module tracking.
    """

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.total += op_flops(func, args, kwargs, out)
        return out


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs (matmul and convolution, forward and backward) of calling ``fn()``."""
    with FlopCount() as counter:
        fn()
    return counter.total


def resolve_shape(cfg: Config) -> list[int]:
    """The sample shape: from the shards' manifest if ``cfg.data.shards`` has one, else ``cfg.data.shape``.

    Raises
    ------
    ConfigError
        If neither is available, or they disagree.
    """
    manifest_path = Path(cfg.data.shards) / "manifest.json"
    if manifest_path.is_file():
        shape = list(read_manifest(cfg.data.shards)["shape"])
        if cfg.data.shape is not None and list(cfg.data.shape) != shape:
            raise ConfigError(
                f"data.shape {cfg.data.shape} does not match the shards in {cfg.data.shards!r} "
                f"(shape {shape}); drop data.shape or point data.shards elsewhere"
            )
        return shape
    if cfg.data.shape is not None:
        return list(cfg.data.shape)
    raise ConfigError(
        f"no sample shape: {manifest_path} does not exist and data.shape is not set. Set "
        f"data.shape=[tracks,time,pitch] (e.g. data.shape=[4,64,48]) or build the shards first "
        f"(`b2b shards build --source demo --output {cfg.data.shards}`)"
    )


def _kind(module: nn.Module) -> str:
    """A short description of a row's module, e.g. ``Conv2d 4→32 k(4, 4) s(2, 2) + GroupNorm + PReLU``."""
    parts = list(module) if isinstance(module, nn.Sequential) else [module]
    words = []
    for part in parts:
        if isinstance(part, (nn.Conv2d, nn.ConvTranspose2d)):
            words.append(
                f"{type(part).__name__} {part.in_channels}→{part.out_channels} "
                f"k{tuple(part.kernel_size)} s{tuple(part.stride)}"
            )
        elif isinstance(part, nn.Linear):
            words.append(f"Linear {part.in_features}→{part.out_features}")
        elif isinstance(part, BarGate):
            out_features, in_features = part.weight.shape
            words.append(f"bar gate: Linear {in_features}→{out_features}, lr × {GATE_LR_MULT}")
        elif not isinstance(part, nn.Identity):
            words.append(type(part).__name__)
    return " + ".join(words)


def _rows(model: nn.Module, layers: list[tuple[str, nn.Module]], run: Callable[[], object]) -> list[dict]:
    """Per-layer output shape (per sample), parameter count and forward FLOPs per sample."""
    rows, hooks, counter = [], [], FlopCount()
    for name, module in layers:
        row = {"name": name, "kind": _kind(module), "params": sum(p.numel() for p in module.parameters())}
        rows.append(row)

        def before(mod, args, row=row):
            row["flops"] = -counter.total

        def after(mod, args, out, row=row):
            row["flops"] = (row["flops"] + counter.total) // _BATCH
            row["output"] = list(out.shape[1:])

        hooks += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    try:
        with counter:
            run()
    finally:
        for hook in hooks:
            hook.remove()
    return rows


def describe(cfg: Config, shape: list[int], n_bars: int) -> dict:
    """Everything ``b2b describe`` prints, as a JSON-ready dict.

    Parameters
    ----------
    cfg : Config
        The resolved config (model and loss sections are used).
    shape : list of int
        ``[tracks, time, pitch]``; must pass :func:`b2b.model.shape.check_shape`.
    n_bars : int
        Bars per sample (the bar gate's segments, with ``model.bar_gate``).

    Returns
    -------
    dict
        ``config``, ``shape``, ``plan``, ``generator`` and ``critic`` (``params``, ``forward_flops``
        per sample, ``layers``), and ``steps``: FLOPs per batch element of a critic step (with and
        without the penalty), a generator step, and a whole training step (``loss.n_critic`` critic
        steps, each generating its fakes, then one generator step).
    """
    plan = layer_plan(shape)
    with torch.device("meta"):
        generator, critic = build_models(cfg, shape, n_bars)
        z = torch.randn(_BATCH, cfg.model.latent_dim)
        real = torch.rand(_BATCH, *shape)
    fake = generator(z).detach()

    g_layers = [(f"net.{i}", m) for i, m in enumerate(generator.net)]
    # The last block runs as its convolution (then the pitch bias and the sigmoid): hook the convolution.
    g_layers[-1] = (g_layers[-1][0], generator.output_layer()[0])
    if generator.gate is not None:
        g_layers.append(("gate", generator.gate))
    d_layers = [(f"body.{i}", m) for i, m in enumerate(critic.body)] + [("head", critic.head)]
    g_rows = _rows(generator, g_layers, lambda: generator(z))
    if generator.pitch_bias is not None:  # a parameter, not a module: its own row
        bias = {"name": "pitch_bias", "kind": "learned bias per track and pitch", "flops": 0}
        output = g_rows[len(generator.net) - 1]["output"]  # the last convolution's
        g_rows.append({**bias, "params": generator.pitch_bias.numel(), "output": output})
    d_rows = _rows(critic, d_layers, lambda: critic(real))

    def critic_step(gp_lambda: float) -> int:
        return count_flops(lambda: critic_loss(critic, real, fake, gp_lambda=gp_lambda).total.backward())

    g_forward = count_flops(lambda: generator(z)) // _BATCH
    with_penalty = critic_step(max(cfg.loss.gp_lambda, 1.0)) // _BATCH
    without_penalty = critic_step(0.0) // _BATCH
    g_step = count_flops(lambda: generator_loss(critic, generator(z)).backward()) // _BATCH
    # Lazy penalty: computed on one critic step in gp_every.
    mean_critic = without_penalty + (with_penalty - without_penalty) / cfg.loss.gp_every
    if cfg.loss.gp_lambda == 0:
        mean_critic = without_penalty
    train_step = cfg.loss.n_critic * (g_forward + mean_critic) + g_step
    return {
        "config": cfg.to_dict(),
        "shape": list(plan.shape),
        "plan": {
            "initial": list(plan.initial),
            "time_strides": list(plan.time.strides),
            "pitch_strides": list(plan.pitch.strides),
            "generator_grids": [list(g) for g in plan.generator_grids()],
        },
        "generator": {
            "params": sum(p.numel() for p in generator.parameters()),
            "forward_flops": g_forward,
            "layers": g_rows,
        },
        "critic": {
            "params": sum(p.numel() for p in critic.parameters()),
            "forward_flops": count_flops(lambda: critic(real)) // _BATCH,
            "layers": d_rows,
        },
        "memory": memory_estimate(cfg, plan, generator, critic, g_rows, d_rows),
        "steps": {
            "critic_step_flops": with_penalty,
            "critic_step_flops_without_penalty": without_penalty,
            "penalty_extra": with_penalty / without_penalty - 1,
            "generator_step_flops": g_step,
            "train_step_flops": int(train_step),
        },
    }


def memory_estimate(cfg: Config, plan, generator: nn.Module, critic: nn.Module, g_rows, d_rows) -> dict:
    """Expected device memory per rank, in bytes (an estimate; ``bench/gpu_check.sh`` measures it).

    State: float32 weights, gradients and Adam's two moments of both networks, and the EMA copy.
    Activations of one micro-batch: every generator layer's output (kept for its backward), and the
    critic's layer outputs for the real, fake and interpolated batches, the last twice (the penalty's
    double backward), plus both attention maps (positions × positions per sample); 2 bytes per value
    under bf16/fp16 autocast, 4 in fp32.
    """
    n_g = sum(p.numel() for p in generator.parameters())
    n_d = sum(p.numel() for p in critic.parameters())
    state = 4 * (4 * n_g + 4 * n_d + n_g)

    def outputs(rows) -> int:
        return sum(math.prod(row["output"]) for row in rows)

    g_hw = math.prod(plan.generator_grids()[3])
    d_hw = math.prod(plan.critic_grids()[2])
    per_sample = outputs(g_rows) + g_hw * g_hw + 4 * (outputs(d_rows) + d_hw * d_hw)
    value_bytes = 4 if cfg.train.precision == "fp32" else 2
    activations = value_bytes * cfg.data.batch_size * per_sample
    return {"state_bytes": state, "activation_bytes": activations, "total_bytes": state + activations}


def _si(n: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} "


def format_text(report: dict) -> str:
    """The human-readable form of :func:`describe`'s report."""
    plan = report["plan"]
    lines = [
        "config:",
        *("  " + line for line in yaml.safe_dump(report["config"], sort_keys=False).splitlines()),
        "",
        f"sample shape: {report['shape']} (tracks, time, pitch)",
        f"layer plan: initial grid {plan['initial'][0]}×{plan['initial'][1]}, "
        f"time strides {plan['time_strides']}, pitch strides {plan['pitch_strides']}",
    ]
    for title in ("generator", "critic"):
        net = report[title]
        lines += [
            "",
            f"{title}: {net['params']:,} parameters, {_si(net['forward_flops'])}FLOP forward per sample",
            f"  {'layer':<8} {'output':<16} {'params':>12} {'FLOP/sample':>14}  kind",
        ]
        for row in net["layers"]:
            out = "×".join(str(d) for d in row["output"])
            flops = _si(row["flops"]) + "FLOP"
            lines.append(f"  {row['name']:<8} {out:<16} {row['params']:>12,} {flops:>14}  {row['kind']}")
    steps = report["steps"]
    per_rank = report["config"]["data"]["batch_size"] * report["config"]["train"]["grad_accum"]
    lines += [
        "",
        "FLOPs per batch element (matmul + convolution, forward + backward):",
        f"  critic step:               {_si(steps['critic_step_flops'])}FLOP "
        f"(penalty adds {100 * steps['penalty_extra']:.0f}% to "
        f"{_si(steps['critic_step_flops_without_penalty'])}FLOP)",
        f"  generator step:            {_si(steps['generator_step_flops'])}FLOP",
        f"  training step (n_critic):  {_si(steps['train_step_flops'])}FLOP",
        f"FLOPs per training step and rank (× data.batch_size × train.grad_accum = {per_rank}): "
        f"{_si(steps['train_step_flops'] * per_rank)}FLOP",
        "",
        f"expected memory per rank: {report['memory']['total_bytes'] / 1e9:.2f} GB "
        f"({report['memory']['state_bytes'] / 1e9:.2f} GB weights, gradients, Adam and EMA; "
        f"{report['memory']['activation_bytes'] / 1e9:.2f} GB activations of a micro-batch)",
    ]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``b2b describe``."""
    parser.add_argument("--config", metavar="FILE", help="YAML config (default: the built-in defaults)")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. model.g_width=64"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    """Print the description; errors (bad config, unknown shape) reach the CLI as B2BError."""
    cfg = load_config(args.config, args.overrides)
    shape = resolve_shape(cfg)
    manifest = read_manifest(cfg.data.shards) if (Path(cfg.data.shards) / "manifest.json").is_file() else {}
    n_bars = manifest.get("spec", {}).get("n_bars")  # the bar gate's segments
    report = describe(cfg, shape, n_bars or 1)
    if n_bars is None and cfg.model.bar_gate:  # after the report: an error stays the only line
        note = f"note: no shards spec in {cfg.data.shards}: the bar gate is counted for 1 bar per sample"
        print(note, file=sys.stderr)
    print(json.dumps(report, indent=2) if args.json else format_text(report))
    return 0
