"""The gradient penalty under DDP: two real processes over gloo give the single-process union-batch grads.

Each rank calls the DDP critic on its half of real, fake and the interpolates x̂ (the penalty's
``autograd.grad`` is taken with respect to x̂ only) and then runs ONE backward of the total loss, so DDP
reduces parameter gradients exactly once. DDP averages gradients over ranks; with equal halves the mean
of the per-rank mean losses is the union-batch mean loss, so the averaged gradients must equal those of
one process on the union batch (with the same eps per sample).

The critic uses the per-sample "layer" norm and no dropout: BatchNorm would normalize each rank's half
with that half's statistics (a different function from the union batch's), and dropout would draw
different masks, so neither would give the union-batch gradients even when everything is right.
"""

import gc
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

from b2b.model.critic import Critic
from b2b.training.losses import critic_loss

SHAPE = (3, 16, 12)
BATCH = 8  # union batch; 4 per rank
GP_LAMBDA = 10.0


def _inputs():
    g = torch.Generator().manual_seed(1)
    real = (torch.rand(BATCH, *SHAPE, generator=g) > 0.8).float()
    fake = torch.rand(BATCH, *SHAPE, generator=g)
    eps = torch.rand(BATCH, generator=g)
    return real, fake, eps


def _critic() -> Critic:
    torch.manual_seed(0)
    critic = Critic(SHAPE, width=4, norm="layer", dropout=0.0)
    with torch.no_grad():
        critic.body[3].gamma.fill_(0.5)  # open the attention path (gamma = 0 would give it no gradient)
    return critic


def _rank_grads(rank: int, world: int) -> dict[str, torch.Tensor]:
    # No buffer broadcast at each forward (torch 2.13's name for broadcast_buffers=False, now
    # deprecated): with BatchNorm it would modify buffers in place between the three forwards.
    critic = DDP(_critic(), forward_sync_buffers=False)
    real, fake, eps = _inputs()
    half = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
    loss = critic_loss(critic, real[half], fake[half], gp_lambda=GP_LAMBDA, eps=eps[half])
    loss.total.backward()
    return {name: p.grad for name, p in critic.module.named_parameters() if p.grad is not None}


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.save(_rank_grads(rank, world), os.path.join(out_dir, f"grads{rank}.pt"))
    finally:
        gc.collect()  # the DDP wrapper's cycles before the process group (Network.release)
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_critic_step_matches_the_union_batch(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    rank0 = torch.load(tmp_path / "grads0.pt")
    rank1 = torch.load(tmp_path / "grads1.pt")

    critic = _critic()
    real, fake, eps = _inputs()
    critic_loss(critic, real, fake, gp_lambda=GP_LAMBDA, eps=eps).total.backward()
    expected = {name: p.grad for name, p in critic.named_parameters() if p.grad is not None}

    assert rank0.keys() == expected.keys() == rank1.keys()
    for name in expected:
        assert torch.equal(rank0[name], rank1[name]), name  # all-reduce leaves both ranks identical
        # Float32 sums taken in a different order (per half, then averaged): the relative error of each
        # gradient tensor is ~1e-7 (float32 epsilon); 1e-6 is tight and any real mismatch is >> 1e-3.
        # The floor of 1e-2 on the norm covers the key's bias, whose true gradient is exactly 0 (softmax
        # ignores a constant added to all of a query's logits) and holds only rounding noise (~1e-9).
        error = (rank0[name] - expected[name]).norm() / expected[name].norm().clamp(min=1e-2)
        assert float(error) < 1e-6, (name, float(error))
    # The penalty contributes: without it the gradients would be different.
    critic.zero_grad()
    critic_loss(critic, real, fake, gp_lambda=0.0).total.backward()
    assert not torch.allclose(critic.body[0][0].weight.grad, expected["body.0.0.weight"], rtol=1e-3)
