"""Per-rank memory of DDP, ZeRO-1 and ZeRO-2 on a scaled-up b2b model (2 ranks over gloo, on CPU).

    python bench/bench_zero_memory.py                      # LPD-5 shape, width 128 (~30M parameters)
    python bench/bench_zero_memory.py --width 64 --steps 2

For each path a fresh pair of processes builds the generator and critic (same seed), wraps them as the
trainer does (Network over DDP, or b2b.training.zero.build_zero_networks), and runs ``--steps`` b2b steps
(critic update with the gradient penalty, then generator update). Per rank it reports:

- optimizer state: bytes of the Adam moments this rank holds (ZeRO: its partition), plus ZeRO's float32
  master copy of its partition (ZeRO keeps it beside the float32 parameters);
- peak RSS above the models: the process's peak resident memory (VmHWM, reset after the models are
  built) minus its resident memory at that point, so imports and the weights themselves are excluded and
  gradients, optimizer state, reduction buckets and activations are what is measured;
- RSS held above the models after the last step: what stays between steps (optimizer state, buffers);
- seconds per step (2 processes sharing the machine's cores: compare paths side by side only).

Prints a Markdown table. Linux only (reads /proc/self/status).
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: E402

from b2b.config import load_config  # noqa: E402
from b2b.model.networks import build_models  # noqa: E402
from b2b.training.losses import critic_loss, generator_loss  # noqa: E402
from b2b.training.network import Network, Precision, build_optimizer  # noqa: E402

PATHS = {"ddp": 0, "zero1": 1, "zero2": 2}
MB = 2**20


def _status_kb(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+)", text).group(1))


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def _config(args: argparse.Namespace, stage: int):
    return load_config(
        None,
        [
            f"deepspeed.zero_stage={stage}",
            "train.precision=fp32",
            f"data.batch_size={args.batch}",
            f"data.shape={list(args.shape)}",
            f"model.g_width={args.width}",
            f"model.d_width={args.width}",
            f"model.latent_dim={args.latent}",
            "model.dropout=0",
            "loss.n_critic=1",
        ],
    )


def _nets(cfg, generator, critic, precision: Precision):
    if cfg.deepspeed.zero_stage:
        from b2b.training.zero import build_zero_networks

        return build_zero_networks(cfg, generator, critic, precision)
    nets = []
    for module, lr in ((generator, cfg.optim.g_lr), (critic, cfg.optim.d_lr)):
        optimizer = build_optimizer(module, lr, cfg.optim.betas, cfg.train.adam)
        wrapped = DDP(module, forward_sync_buffers=False)  # the trainer's broadcast_buffers=False
        nets.append(Network(module, wrapped, optimizer, precision.make_scaler()))
    return nets[0], nets[1]


def _step(cfg, g, d, precision: Precision) -> None:
    """One b2b step, called the way b2b/train.py calls the nets."""
    batch, latent = cfg.data.batch_size, cfg.model.latent_dim
    g.module.requires_grad_(False)
    d.module.requires_grad_(True)
    real = (torch.rand(batch, *cfg.data.shape) > 0.9).float()
    with torch.no_grad(), precision.autocast():
        fake = g.module(torch.randn(batch, latent))
    with d.accumulating(sync=True):
        with precision.autocast():
            loss = critic_loss(d, real, fake, gp_lambda=cfg.loss.gp_lambda, loss_scale=d.loss_scale())
        d.backward(loss.total)
    d.step()
    d.module.requires_grad_(False)
    g.module.requires_grad_(True)
    with g.accumulating(sync=True):
        with precision.autocast():
            g_loss = generator_loss(d.module, g(torch.randn(batch, latent)))
        g.backward(g_loss)
    g.step()


def _optimizer_bytes(net) -> tuple[int, int]:
    """(Adam moments this rank holds, ZeRO's float32 master partition) in bytes."""
    moments = sum(
        t.numel() * t.element_size()
        for state in net.optimizer.state.values()
        for t in state.values()
        if torch.is_tensor(t) and t.dim() > 0
    )
    master = 0
    if hasattr(net, "engine"):
        master = sum(
            t.numel() * t.element_size() for t in net.engine.optimizer.single_partition_of_fp32_groups
        )
    return moments, master


def _worker(rank: int, world: int, port: int, path: str, args: argparse.Namespace, out: str) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // world))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    import deepspeed  # noqa: F401  (imported on every path, so the baselines match)

    cfg = _config(args, PATHS[path])
    precision = Precision("fp32", "cpu")
    torch.manual_seed(0)
    generator, critic = build_models(cfg, cfg.data.shape, n_bars=4)  # LPD's 4-bar windows
    n_params = sum(p.numel() for m in (generator, critic) for p in m.parameters())
    dist.barrier()
    base_kb = _status_kb("VmRSS")
    _reset_peak()
    g, d = _nets(cfg, generator, critic, precision)
    torch.manual_seed(1 + rank)
    _step(cfg, g, d, precision)  # Adam's state exists from the first step on
    dist.barrier()
    start = time.perf_counter()
    for _ in range(args.steps):
        _step(cfg, g, d, precision)
    dist.barrier()
    seconds = (time.perf_counter() - start) / args.steps
    peak_kb = _status_kb("VmHWM")
    end_kb = _status_kb("VmRSS")
    g_bytes, d_bytes = _optimizer_bytes(g), _optimizer_bytes(d)
    result = {
        "n_params": n_params,
        "moments": g_bytes[0] + d_bytes[0],
        "master": g_bytes[1] + d_bytes[1],
        "peak_above_models": (peak_kb - base_kb) * 1024,
        "held_above_models": (end_kb - base_kb) * 1024,
        "seconds": seconds,
    }
    torch.save(result, os.path.join(out, f"{path}-{rank}.pt"))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[5, 192, 84], help="tracks time pitch")
    parser.add_argument("--width", type=int, default=128, help="model.g_width and model.d_width")
    parser.add_argument("--latent", type=int, default=128)
    parser.add_argument("--batch", type=int, default=2, help="per rank")
    parser.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up step")
    parser.add_argument("--paths", default="ddp,zero1,zero2")
    args = parser.parse_args(argv)
    world = 2
    paths = args.paths.split(",")
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for path in paths:
            print(f"{path}: 2 ranks, {args.steps + 1} steps ...", file=sys.stderr, flush=True)
            mp.spawn(_worker, args=(world, _free_port(), path, args, out), nprocs=world, join=True)
            ranks = [torch.load(os.path.join(out, f"{path}-{r}.pt")) for r in range(world)]
            rows.append((path, ranks))
    n_params = rows[0][1][0]["n_params"]
    print(
        f"\nModel: shape {args.shape}, width {args.width}, latent {args.latent}: {n_params / 1e6:.1f}M "
        f"parameters (generator + critic), fp32, {world} ranks, batch {args.batch} per rank.\n"
    )
    print(
        "| path | Adam moments / rank (MB) | ZeRO fp32 master / rank (MB) | optimizer state / rank (MB) "
        "| peak RSS above models / rank (MB) | RSS held after the steps / rank (MB) | s / step |"
    )
    print("|---|---|---|---|---|---|---|")
    for path, ranks in rows:

        def cell(key: str, ranks=ranks) -> str:
            return " / ".join(f"{r[key] / MB:.0f}" for r in ranks)

        total = " / ".join(f"{(r['moments'] + r['master']) / MB:.0f}" for r in ranks)
        seconds = max(r["seconds"] for r in ranks)
        print(
            f"| {path} | {cell('moments')} | {cell('master')} | {total} | {cell('peak_above_models')} "
            f"| {cell('held_above_models')} | {seconds:.1f} |"
        )
    print("\n(values per rank: rank 0 / rank 1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
