"""Critic-step time: with the gradient penalty against without, and bf16 autocast against fp32.

One critic step = forward on real and fake (and the interpolates, with the penalty), the loss, one
backward and an Adam step, as the trainer runs it. All variants are interleaved in one run (one step of
each in turn, after warm-up) and the median of the repeats is reported, so the ratios compare steps
taken under the same machine load.

    python bench/bench_critic_step.py --repeats 7 --threads 2

Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from tqdm import tqdm

from b2b.model.critic import Critic
from b2b.training.losses import critic_loss

SIZES = {
    # name: (shape, width, batch)
    "demo": ((4, 64, 48), 32, 16),
    "lpd5": ((5, 192, 84), 32, 16),
    "lpd5-wide": ((5, 192, 84), 64, 16),
}
VARIANTS = [(penalty, precision) for precision in ("fp32", "bf16") for penalty in (True, False)]


def _step(critic, opt, real, fake, device, penalty: bool, precision: str) -> None:
    opt.zero_grad(set_to_none=True)
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss = critic_loss(critic, real, fake, gp_lambda=10.0, gp_weight=1.0 if penalty else 0.0)
    loss.total.backward()
    opt.step()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench(name: str, repeats: int, warmup: int, device: torch.device) -> list[dict]:
    shape, width, batch = SIZES[name]
    torch.manual_seed(0)
    critic = Critic(shape, width, norm="layer").to(device)
    opt = torch.optim.Adam(critic.parameters(), lr=1e-4, betas=(0.5, 0.9))
    real = (torch.rand(batch, *shape, device=device) > 0.9).float()
    fake = torch.rand(batch, *shape, device=device)
    times: dict[tuple, list[float]] = {v: [] for v in VARIANTS}
    for i in tqdm(range(warmup + repeats), desc=name, leave=False):
        for variant in VARIANTS:
            _sync(device)
            start = time.perf_counter()
            _step(critic, opt, real, fake, device, *variant)
            _sync(device)
            if i >= warmup:
                times[variant].append(time.perf_counter() - start)
    med = {v: statistics.median(t) for v, t in times.items()}
    params = sum(p.numel() for p in critic.parameters())
    return [
        {
            "size": f"{name} {list(shape)} w={width} b={batch} ({params / 1e6:.2f}M)",
            "precision": precision,
            "with_gp": med[(True, precision)],
            "without_gp": med[(False, precision)],
            "vs_fp32": med[(True, precision)] / med[(True, "fp32")],
        }
        for precision in ("fp32", "bf16")
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="demo,lpd5", help=f"comma-separated, from {', '.join(SIZES)}")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = [row for name in args.sizes.split(",") for row in bench(name, args.repeats, args.warmup, device)]
    print(
        f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"median of {args.repeats} interleaved steps\n"
    )
    print(
        "| critic | precision | step with GP (ms) | step without GP (ms) | GP / no GP | vs fp32 (with GP) |"
    )
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['size']} | {r['precision']} | {1e3 * r['with_gp']:.1f} | {1e3 * r['without_gp']:.1f} "
            f"| {r['with_gp'] / r['without_gp']:.2f}× | {r['vs_fp32']:.2f}× |"
        )


if __name__ == "__main__":
    main()
