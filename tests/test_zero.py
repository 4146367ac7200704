"""DeepSpeed ZeRO-1/2 (zero.py) against the DDP path (b2b/training/network.py), on two gloo processes.

One spawned pair of ranks runs every scenario (DeepSpeed's import and engine set-up dominate the time):

- the trainer's step (n_critic critic updates with the gradient penalty, then one generator update
  through the frozen critic, grad_accum micro-batches each; the learning rate decaying; buffer sync) for
  3 steps on the
  DDP path and on ZeRO-1 and ZeRO-2, in fp32, bf16 and fp16 autocast, from the same seeds and data;
- save after 2 steps, then 1 more step, against: fresh nets, load, the same 1 step (ZeRO-1 and ZeRO-2);
- one critic update on a raw ZeRO-3 engine (the measurement behind refusing stage 3).

A second spawn with ONE rank resumes the 2-rank ZeRO-2 checkpoint (DeepSpeed's universal checkpoint).

The critic uses the per-sample "layer" norm and no dropout, so it is deterministic and each rank's
gradient is a function of its own batch only (what both paths average). The generator keeps BatchNorm
(per-rank batch statistics on both paths, synced after each step).

Tolerances. ZeRO and DDP average the same float32 gradients through different code (ZeRO's flat
buffers and partitions, DDP's buckets), so they may differ by float32 rounding, ~1e-7 relative. The gradient
itself is checked where both paths start from the same weights: Adam's moments after the first applied
update of each network, (1 - beta1) g and (1 - beta2) g^2, agree to 1e-5 (measured <= 9e-7); a wrong
gradient (a missing or doubled penalty term, DeepSpeed's default clipping at norm 1, a sum instead of a
mean) is off by far more. Weights after 3 steps are not a gradient check (Adam's step barely depends on
the gradient's scale) and are compared in fp32 only (1e-5; measured 1.6e-6). Losses after 3 steps: fp32
1e-5 (measured 1.5e-6); under autocast, rounding-level weight differences after the first update flip
bf16/fp16 roundings (2^-8 / 2^-11 relative each), so 1e-1 and 1e-2 (measured 2.3e-2 and 8.5e-4). For the
same reason the generator's first update (after two critic updates) is compared in fp32 only. Resuming
on the same ranks is asserted bit for bit: the same float32 partitions and RNG states are restored.
"""

from __future__ import annotations

import copy
import gc
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

from b2b.checkpoint.checkpointer import Checkpointer, PerRank, RNGState
from b2b.config import load_config
from b2b.errors import ConfigError
from b2b.model.critic import Critic
from b2b.model.generator import Generator
from b2b.training.losses import critic_loss, generator_loss
from b2b.training.network import Network, Precision, build_optimizer
from b2b.training.schedule import step_decay

SHAPE = (2, 8, 12)
LATENT = 8
BATCH = 4  # per rank and micro-batch
STEPS = 3
DECAY_EVERY = 2  # generator steps between learning-rate decays: the rate decays inside the run
PRECISIONS = ("fp32", "bf16", "fp16")
TOLERANCE = 1e-5  # float32 rounding of differently ordered sums (see the module docstring)
# Losses after STEPS steps under autocast: bf16 keeps 8 bits, so rounding-level weight differences flip
# roundings of 2^-8 = 4e-3 each (measured here: 2.3e-2 bf16, 8.5e-4 fp16, 1.6e-6 fp32).
STEP_TOLERANCE = {"fp32": TOLERANCE, "bf16": 1e-1, "fp16": 1e-2}


def _cfg(stage: int, precision: str = "fp32"):
    return load_config(
        None,
        [
            f"deepspeed.zero_stage={stage}",
            f"train.precision={precision}",
            f"data.batch_size={BATCH}",
            "train.grad_accum=2",
            "loss.n_critic=2",
            "loss.gp_lambda=10",
            "optim.g_lr=0.001",
            "optim.d_lr=0.001",
            "optim.lr_decay=0.5",
        ],
    )


def _models() -> tuple[Generator, Critic]:
    torch.manual_seed(0)
    generator = Generator(SHAPE, LATENT, width=2)
    critic = Critic(SHAPE, width=2, norm="layer", dropout=0.0)
    with torch.no_grad():
        critic.body[3].gamma.fill_(0.5)  # open the attention path (gamma = 0 would give it no gradient)
    return generator, critic


def _nets(stage: int, precision: Precision, load_universal: bool = False):
    """Generator and critic networks as the trainer builds them (b2b/train.py, Trainer._build_networks)."""
    cfg = _cfg(stage, precision.name)
    generator, critic = _models()
    if stage > 0:
        from b2b.training.zero import build_zero_networks

        return build_zero_networks(cfg, generator, critic, precision, load_universal)
    nets = []
    for module, lr in ((generator, cfg.optim.g_lr), (critic, cfg.optim.d_lr)):
        optimizer = build_optimizer(module, lr, cfg.optim.betas)
        # No buffer broadcast at each forward (the trainer's broadcast_buffers=False).
        wrapped = DDP(module, forward_sync_buffers=False)
        nets.append(Network(module, wrapped, optimizer, precision.make_scaler()))
    return nets[0], nets[1]


def _real(rank: int, step: int, update: int, micro: int) -> torch.Tensor:
    seed = ((rank * 100 + step) * 10 + update) * 10 + micro
    return (torch.rand(BATCH, *SHAPE, generator=torch.Generator().manual_seed(seed)) > 0.8).float()


def _train_step(g, d, precision: Precision, step: int, rank: int, first: dict | None = None) -> dict:
    """One b2b step, calling the nets exactly as Trainer.critic_phase / generator_phase do.

    ``first`` receives each network's whole Adam state after its first applied update.
    """
    first = {} if first is None else first
    cfg = _cfg(0)
    accum = cfg.train.grad_accum
    for net, base in ((g, cfg.optim.g_lr), (d, cfg.optim.d_lr)):  # the trainer's schedule, in steps here
        net.set_lr(step_decay(base, step, cfg.optim.lr_decay, DECAY_EVERY))
    out = {"d_loss": [], "penalty": [], "wasserstein": [], "d_norm": []}
    g.module.requires_grad_(False)
    d.module.requires_grad_(True)
    for update in range(cfg.loss.n_critic):
        for micro in range(accum):
            real = _real(rank, step, update, micro)
            with torch.no_grad(), precision.autocast():
                fake = g.module(torch.randn(BATCH, LATENT))
            with d.accumulating(sync=micro == accum - 1):
                with precision.autocast():
                    loss = critic_loss(d, real, fake, gp_lambda=cfg.loss.gp_lambda, loss_scale=d.loss_scale())
                d.backward(loss.total / accum)
            out["d_loss"].append(float(loss.total))
            out["penalty"].append(float(loss.penalty))
            out["wasserstein"].append(float(loss.wasserstein))
        applied, norm = d.step()
        out["d_norm"].append(norm)
        if applied and "d_adam" not in first:
            first["d_adam"] = _adam_state(d)
    d.module.requires_grad_(False)
    g.module.requires_grad_(True)
    critic_before = [p.detach().clone() for p in d.module.parameters()]
    g_loss = 0.0
    for micro in range(accum):
        with g.accumulating(sync=micro == accum - 1):
            with precision.autocast():
                fake = g(torch.randn(BATCH, LATENT))
                loss = generator_loss(d.module, fake)
            g.backward(loss / accum)
        g_loss += float(loss) / accum
    applied, out["g_norm"] = g.step()
    if applied and "g_adam" not in first:
        first["g_adam"] = _adam_state(g)
    out["g_loss"] = g_loss
    out["g_applied"] = applied
    out["critic_unchanged"] = all(
        torch.equal(a, b) for a, b in zip(critic_before, d.module.parameters(), strict=True)
    )
    g.sync_buffers()
    d.sync_buffers()
    return out


def _adam_state(net) -> dict:
    """Adam's moments over all parameters, flat in parameter order (ZeRO: its partitions gathered)."""
    if not hasattr(net, "engine"):
        states = [net.optimizer.state[p] for p in net.module.parameters()]
        return {key: torch.cat([s[key].flatten() for s in states]) for key in ("exp_avg", "exp_avg_sq")}
    (state,) = net.optimizer.state.values()  # ZeRO: one flat partition per parameter group
    n_params = sum(p.numel() for p in net.module.parameters())
    whole = {}
    for key in ("exp_avg", "exp_avg_sq"):
        parts = [torch.empty_like(state[key]) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, state[key])
        whole[key] = torch.cat(parts)[:n_params]
    return whole


def _weights(g, d) -> dict:
    return {
        "generator": copy.deepcopy(g.module.state_dict()),
        "critic": copy.deepcopy(d.module.state_dict()),
    }


def _zero_partition(net) -> dict:
    """This rank's ZeRO-2 optimizer partition, unpadded: Adam moments and the float32 master weights."""
    zero = net.engine.optimizer
    (state,) = net.optimizer.state.values()  # one flat partition per parameter group
    size = zero.single_partition_of_fp32_groups[0].numel() - zero.groups_padding[0]
    return {
        "exp_avg": state["exp_avg"][:size].clone(),
        "exp_avg_sq": state["exp_avg_sq"][:size].clone(),
        "step": float(state["step"]),
        "master": zero.single_partition_of_fp32_groups[0][:size].clone(),
    }


def _checkpointer(g, d, run: str) -> Checkpointer:
    return Checkpointer(run, {"generator": g, "critic": d, "rng": PerRank(RNGState())}, keep=1)


def _save(g, d, run: str, step: int) -> None:
    meta = {"step": step, "config": _cfg(2).to_dict(), "spec": {}}
    _checkpointer(g, d, run).save(step, meta)


def _load(g, d, run: str, step: int) -> None:
    _checkpointer(g, d, run).load(os.path.join(run, "checkpoints", f"step-{step}"))


def _train_job(rank: int, out: str) -> dict:
    results: dict = {}
    for name in PRECISIONS:
        precision = Precision(name, "cpu")
        for stage in (0, 1, 2):
            torch.manual_seed(1000 + rank)  # latents and interpolation weights: per rank, same per path
            g, d = _nets(stage, precision)
            first: dict = {}
            steps = [_train_step(g, d, precision, step, rank, first) for step in range(STEPS)]
            results[(name, stage)] = {"steps": steps, "weights": _weights(g, d), "first_update": first}
    for stage in (1, 2):
        precision = Precision("fp32", "cpu")
        folder = os.path.join(out, f"ckpt-zero{stage}")
        torch.manual_seed(1000 + rank)
        g, d = _nets(stage, precision)
        for step in range(2):
            _train_step(g, d, precision, step, rank)
        _save(g, d, folder, 2)
        saved = {"critic": _zero_partition(d)}
        uninterrupted = _train_step(g, d, precision, 2, rank)
        expected = _weights(g, d)
        g, d = _nets(stage, precision)
        torch.manual_seed(1)  # anything: _load must restore the RNG state
        _load(g, d, folder, 2)
        resumed = _train_step(g, d, precision, 2, rank)
        results[("resume", stage)] = {
            "saved": saved,
            "uninterrupted": uninterrupted,
            "resumed": resumed,
            "expected": expected,
            "weights": _weights(g, d),
        }
    results["zero3"] = _zero3_penalty_update(rank)
    return results


def _zero3_penalty_update(rank: int) -> str:
    """Try one critic update with the penalty on a raw ZeRO-3 engine; return the error it raises.

    b2b refuses stage 3 because of this: the penalty's double backward reaches convolution weights that
    ZeRO-3 has already released (partitioned) after the first backward.
    """
    import deepspeed

    real = _real(rank, 0, 0, 0)
    fake = torch.rand(BATCH, *SHAPE, generator=torch.Generator().manual_seed(7 + rank))
    _, critic = _models()
    gamma = critic.body[3].gamma
    gamma.data = gamma.data.view(1)  # DeepSpeed's initial broadcast cannot view a 0-dim tensor as bytes
    config = {
        "train_micro_batch_size_per_gpu": BATCH,
        "gradient_clipping": 0.0,
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
    }
    optimizer = torch.optim.Adam(critic.parameters(), lr=1e-3)
    engine, *_ = deepspeed.initialize(
        model=critic, optimizer=optimizer, config=config, dist_init_required=False
    )
    try:
        # Forwards through engine.module, as ZeroNetwork does; ZeRO-3's module hooks gather the weights.
        loss = critic_loss(engine.module, real, fake, gp_lambda=10.0)
        engine.backward(loss.total)
        engine.step()
    except RuntimeError as exc:
        return str(exc)
    return ""


def _one_rank_resume_job(rank: int, out: str) -> dict:
    """Resume the 2-rank ZeRO-2 checkpoint on one rank: a world size of 1 holds the whole state."""
    precision = Precision("fp32", "cpu")
    g, d = _nets(2, precision, load_universal=True)
    _load(g, d, os.path.join(out, "ckpt-zero2"), 2)
    checkpoints = os.path.join(out, "ckpt-zero2", "checkpoints")
    leftovers = sorted(p for p in os.listdir(checkpoints) if p.startswith("."))
    return {"critic": _zero_partition(d), "leftovers": leftovers}


def _worker(rank: int, world: int, port: int, out: str, job: str) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results = _train_job(rank, out) if job == "train" else _one_rank_resume_job(rank, out)
        torch.save(results, os.path.join(out, f"{job}-{rank}.pt"))
    finally:
        gc.collect()  # the engines' cycles before the process group (b2b.training.network.Network.release)
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(job: str, world: int, out) -> list[dict]:
    mp.spawn(_worker, args=(world, _free_port(), str(out), job), nprocs=world, join=True)
    return [torch.load(out / f"{job}-{rank}.pt", weights_only=False) for rank in range(world)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("zero")
    return {"out": out, "ranks": _spawn("train", 2, out)}


@pytest.fixture(scope="module")
def one_rank(runs):
    return _spawn("one-rank", 1, runs["out"])[0]


def _close(a, b, what: str, tolerance: float = TOLERANCE) -> None:
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    finite = torch.isfinite(b)
    assert torch.equal(torch.isfinite(a), finite), f"{what}: non-finite values differ: {a} vs {b}"
    a, b = a[finite], b[finite]  # fp16: the norm of an overflowing (skipped) step is inf on both paths
    error = float((a - b).abs().max()) / max(float(b.abs().max()), 1e-3) if b.numel() else 0.0
    assert error <= tolerance, f"{what}: relative error {error:.2e}"


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("stage", [1, 2])
@pytest.mark.slow
def test_first_critic_update_has_the_ddp_gradients(runs, stage, precision):
    """Penalty gradients: after the first applied critic update (both paths from the same weights and data),
    Adam's moments are (1 - beta) g and (1 - beta2) g^2 of the averaged gradient g, penalty included."""
    for results in runs["ranks"]:
        ddp, zero = results[(precision, 0)]["first_update"], results[(precision, stage)]["first_update"]
        for key in ("exp_avg", "exp_avg_sq"):
            _close(zero["d_adam"][key], ddp["d_adam"][key], f"critic {key}")
            if precision == "fp32":  # under autocast the critic has moved by rounding by then (see top)
                _close(zero["g_adam"][key], ddp["g_adam"][key], f"generator {key}")


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("stage", [1, 2])
@pytest.mark.slow
def test_losses_and_penalty_after_k_steps_match_ddp(runs, stage, precision):
    tolerance = STEP_TOLERANCE[precision]
    for rank, results in enumerate(runs["ranks"]):
        ddp, zero = results[(precision, 0)], results[(precision, stage)]
        for step, (a, b) in enumerate(zip(zero["steps"], ddp["steps"], strict=True)):
            for key in ("d_loss", "penalty", "wasserstein", "d_norm", "g_loss", "g_norm"):
                _close(a[key], b[key], f"rank {rank} step {step} {key}", tolerance)
            assert a["g_applied"] == b["g_applied"]  # fp16: the same overflow skips, same loss scale
        assert min(min(s["penalty"]) for s in ddp["steps"]) > 0  # the penalty is in play
        if precision == "fp32":
            for net in ("generator", "critic"):
                for key, tensor in ddp["weights"][net].items():
                    _close(zero["weights"][net][key], tensor, f"rank {rank} {net}.{key} after {STEPS} steps")
    # Weights stay identical across ranks (ZeRO all-gathers its updated partitions).
    for net in ("generator", "critic"):
        for key, tensor in runs["ranks"][0][(precision, stage)]["weights"][net].items():
            assert torch.equal(tensor, runs["ranks"][1][(precision, stage)]["weights"][net][key])


@pytest.mark.slow
def test_training_moved_the_weights(runs):
    """The equality above compares trained networks, not two untouched copies."""
    generator, critic = _models()
    trained = runs["ranks"][0][("fp32", 2)]["weights"]
    assert not torch.allclose(trained["critic"]["head.weight"], critic.head.weight, atol=1e-3)
    first_conv = "net.0.0.weight"
    assert not torch.allclose(trained["generator"][first_conv], generator.state_dict()[first_conv], atol=1e-3)


@pytest.mark.parametrize("stage", [0, 1, 2])
@pytest.mark.slow
def test_generator_step_leaves_the_critic_unchanged(runs, stage):
    for results in runs["ranks"]:
        for precision in PRECISIONS:
            assert all(s["critic_unchanged"] for s in results[(precision, stage)]["steps"])


@pytest.mark.parametrize("stage", [1, 2])
@pytest.mark.slow
def test_resume_on_the_same_ranks_is_exact(runs, stage):
    for results in runs["ranks"]:
        run = results[("resume", stage)]
        assert run["resumed"] == run["uninterrupted"]  # every loss, norm and flag, bit for bit
        for net in ("generator", "critic"):
            for key, tensor in run["expected"][net].items():
                assert torch.equal(run["weights"][net][key], tensor), f"{net}.{key}"


@pytest.mark.slow
def test_zero2_checkpoint_holds_one_partition_per_rank(runs):
    folder = runs["out"] / "ckpt-zero2" / "checkpoints" / "step-2"
    for name in ("generator", "critic"):
        files = sorted(p.name for p in (folder / "zero" / name).iterdir())
        assert files == [
            "mp_rank_00_model_states.pt",
            "zero_pp_rank_0_mp_rank_00_optim_states.pt",
            "zero_pp_rank_1_mp_rank_00_optim_states.pt",
        ]
        state = torch.load(folder / f"{name}.pt", weights_only=True)  # the replicated part
        assert state["zero_stage"] == 2 and state["world_size"] == 2
    rank0, rank1 = (r[("resume", 2)]["saved"]["critic"] for r in runs["ranks"])
    n_critic = sum(p.numel() for p in _models()[1].parameters())
    # Each rank holds about half of the critic's Adam moments, together exactly all of them.
    assert rank0["exp_avg"].numel() + rank1["exp_avg"].numel() == n_critic
    assert abs(rank0["exp_avg"].numel() - rank1["exp_avg"].numel()) <= n_critic // 10


@pytest.mark.slow
def test_resume_on_one_rank_reassembles_the_partitions(runs, one_rank):
    rank0, rank1 = (r[("resume", 2)]["saved"] for r in runs["ranks"])
    whole = one_rank["critic"]
    for key in ("exp_avg", "exp_avg_sq", "master"):
        assert torch.equal(whole[key], torch.cat([rank0["critic"][key], rank1["critic"][key]])), key
    assert whole["step"] == rank0["critic"]["step"] == 4.0  # 2 steps × n_critic 2 updates
    assert one_rank["leftovers"] == []  # the universal conversion is removed after loading


@pytest.mark.slow
def test_zero3_breaks_the_penalty_measured(runs):
    """Backs the refusal of stage 3: the penalty's backward fails on ZeRO-3's released conv weights."""
    for results in runs["ranks"]:
        assert "expected stride" in results["zero3"], results["zero3"]


def test_stage3_and_bad_stages_are_refused():
    precision = Precision("fp32", "cpu")
    from b2b.training.zero import build_zero_networks

    generator, critic = _models()
    with pytest.raises(ConfigError, match=r"zero_stage=3 is not supported.*Use deepspeed.zero_stage=2"):
        build_zero_networks(_cfg(3), generator, critic, precision)
    with pytest.raises(ConfigError, match=r"zero_stage=0 is the DDP path"):
        build_zero_networks(_cfg(0), generator, critic, precision)


def _launcher_env(**extra: str) -> dict:
    """What `accelerate launch --config_file configs/accelerate/zero2.yaml` exports (accelerate 1.15)."""
    env = {
        "ACCELERATE_USE_DEEPSPEED": "true",
        "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2",
        "ACCELERATE_CONFIG_DS_FIELDS": "zero_stage,mixed_precision",
        "ACCELERATE_MIXED_PRECISION": "no",
    }
    env.update(extra)
    return env


def test_accelerate_deepspeed_config_sets_the_stage_and_leaves_deepspeed_to_b2b():
    from b2b.training.preflight import take_accelerate_deepspeed_settings

    cfg, env = _cfg(0), _launcher_env()
    take_accelerate_deepspeed_settings(cfg, env)
    assert cfg.deepspeed.zero_stage == 2
    assert "ACCELERATE_USE_DEEPSPEED" not in env  # accelerate must not build its own DeepSpeed plugin
    cfg, env = _cfg(1), {"ACCELERATE_MIXED_PRECISION": "no"}  # a --multi_gpu launch: the key rules
    take_accelerate_deepspeed_settings(cfg, env)
    assert cfg.deepspeed.zero_stage == 1


@pytest.mark.parametrize(
    ("stage", "env", "message"),
    [
        (1, _launcher_env(), r"deepspeed.zero_stage=1 contradicts the accelerate config's zero_stage 2"),
        (0, _launcher_env(ACCELERATE_DEEPSPEED_ZERO_STAGE="3"), r"zero_stage=3 is not supported"),
        (
            0,
            _launcher_env(ACCELERATE_CONFIG_DS_FIELDS="zero_stage,offload_optimizer_device,mixed_precision"),
            r"options b2b does not take from it: offload_optimizer_device",
        ),
    ],
)
def test_accelerate_deepspeed_config_errors_name_the_conflict(stage, env, message):
    from b2b.training.preflight import take_accelerate_deepspeed_settings

    with pytest.raises(ConfigError, match=message):
        take_accelerate_deepspeed_settings(_cfg(stage), env)
