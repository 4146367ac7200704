"""The trainer as users run it: real processes under `accelerate launch` and `torchrun`, gloo on CPU.

Every multi-process test starts real ranks (2 processes, or 2 "nodes" of one process on loopback) and
checks what they wrote: checkpoints, rank files, status.json, metrics.jsonl.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import free_port

from b2b.checkpoint.folder import complete_checkpoints, latest_checkpoint
from b2b.checkpoint.inference import load_generator

REPO = Path(__file__).resolve().parent.parent
TRAIN = str(REPO / "b2b" / "train.py")


def overrides(shards: Path, run_dir: Path, name: str, **extra: object) -> list[str]:
    """A tiny model on the tiny shards: a step takes milliseconds, so tests measure behaviour, not speed."""
    values = {
        "name": name,
        "run_dir": run_dir,
        "data.shards": shards,
        "data.batch_size": 4,
        "model.latent_dim": 16,
        "model.g_width": 4,
        "model.d_width": 4,
        "model.dropout": 0.3,
        "loss.n_critic": 2,
        "train.steps": 6,
        "train.precision": "fp32",
        "train.ema_beta": 0.9,
        "log.progress": "false",
        "log.every": 1,
        "log.snapshot_every": 0,
        "log.metrics_every": 0,
        "checkpoint.every": 2,
        "checkpoint.keep": 2,
    }
    values.update({k.replace("__", "."): v for k, v in extra.items()})
    return [f"{k}={v}" for k, v in values.items()]


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "WANDB_MODE": "disabled"}


def accelerate_cmd(
    args: list[str], nproc: int = 2, machines: int = 1, machine_rank: int = 0, port: int | None = None
) -> list[str]:
    # --multi_gpu starts real ranks on a CPU machine (gloo); --cpu would start only one.
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(nproc),
        "--num_machines",
        str(machines),
        "--machine_rank",
        str(machine_rank),
        "--main_process_ip",
        "127.0.0.1",
        "--main_process_port",
        str(port or free_port()),
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        TRAIN,
        *args,
    ]


def torchrun_cmd(args: list[str], nproc: int = 2) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(nproc),
        "--master-port",
        str(free_port()),
        "-m",
        "b2b.train",
        *args,
    ]


def run(cmd: list[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)


def checkpoint_state(folder: Path) -> dict:
    """Everything a checkpoint holds that must be identical between equivalent runs."""
    return {
        name: torch.load(folder / f"{name}.pt", weights_only=True) for name in ("generator", "critic", "ema")
    }


def assert_identical(a: object, b: object, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), f"differs at {where}"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"keys differ at {where}"
        for key in a:
            assert_identical(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"lengths differ at {where}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{a!r} != {b!r} at {where}"


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"process ended (rc {proc.returncode}) before {what}:\n{out[-3000:]}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def kill_tree(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Signal the launcher and every process under it (torch's launcher puts ranks in their own sessions,
    so signalling the launcher's process group alone would miss them)."""
    import psutil

    family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for p in family:
        try:
            p.send_signal(sig)
        except psutil.NoSuchProcess:
            pass


def start(cmd: list[str], cwd: Path) -> subprocess.Popen:
    # A session of its own, like a job started from a terminal: signals go to the whole group.
    return subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


@pytest.fixture(scope="module")
def reference(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted 2-rank run of 40 steps under `accelerate launch`."""
    runs = tmp_path_factory.mktemp("runs")
    result = run(
        accelerate_cmd(overrides(tiny_shards, runs, "ref", train__steps=40, checkpoint__every=10)), runs
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return runs / "ref"


@pytest.mark.slow
def test_two_ranks_train_one_model(reference: Path) -> None:
    final = reference / "checkpoints" / "step-40"
    meta = json.loads((final / "meta.json").read_text())
    assert meta["world_size"] == 2 and meta["step"] == 40
    ranks = [torch.load(final / f"rank-{r:05d}.pt", weights_only=True) for r in range(2)]
    # Both ranks hold bit-identical G and D after 40 steps of DDP, and drew their own random numbers.
    assert ranks[0]["weights"]["sha256"] == ranks[1]["weights"]["sha256"]
    assert not torch.equal(ranks[0]["rng"]["torch"], ranks[1]["rng"]["torch"])
    # One data position for all ranks (each rank reads its own block of every epoch).
    assert torch.load(final / "loader.pt", weights_only=True)["epoch"] == meta["epoch"]
    # keep=2: only the last two periodic checkpoints remain.
    assert [s for s, _ in complete_checkpoints(reference)] == [30, 40]
    lines = [json.loads(x) for x in (reference / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(1, 41))
    assert all(x["skipped_d"] == 0 and x["skipped_g"] == 0 for x in lines)
    assert json.loads((reference / "status.json").read_text())["state"] == "finished"


@pytest.mark.slow
def test_kill_and_resume_is_bitwise_identical(reference: Path, tiny_shards: Path, tmp_path: Path) -> None:
    """40 steps uninterrupted == kill -9 after a checkpoint, then resume (under torchrun) to 40."""
    args = overrides(tiny_shards, tmp_path, "resumed", train__steps=40, checkpoint__every=10)
    proc = start(accelerate_cmd(args), tmp_path)
    try:
        wait_for(lambda: latest_checkpoint(tmp_path / "resumed") is not None, 180, "a checkpoint", proc)
    finally:
        kill_tree(proc)
        proc.wait()
    killed_at = complete_checkpoints(tmp_path / "resumed")[-1][0]
    assert killed_at < 40, "the run finished before it could be killed"
    result = run(torchrun_cmd(args), tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "resumed from" in result.stdout + result.stderr
    assert_identical(
        checkpoint_state(reference / "checkpoints" / "step-40"),
        checkpoint_state(tmp_path / "resumed" / "checkpoints" / "step-40"),
    )


@pytest.mark.slow
def test_two_nodes_on_loopback(tiny_shards: Path, tmp_path: Path) -> None:
    """Two "nodes" of one process each (accelerate's --num_machines/--machine_rank) train one model."""
    port = free_port()
    args = overrides(tiny_shards, tmp_path, "nodes", train__steps=4)
    nodes = [
        start(accelerate_cmd(args, nproc=2, machines=2, machine_rank=r, port=port), tmp_path)
        for r in range(2)
    ]
    outputs = [p.communicate(timeout=240)[0] for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    final = tmp_path / "nodes" / "checkpoints" / "step-4"
    assert json.loads((final / "meta.json").read_text())["world_size"] == 2
    digests = [
        torch.load(final / f"rank-{r:05d}.pt", weights_only=True)["weights"]["sha256"] for r in range(2)
    ]
    assert digests[0] == digests[1]


@pytest.mark.slow
def test_ctrl_c_saves_on_all_ranks_then_exits(tiny_shards: Path, tmp_path: Path) -> None:
    proc = start(
        accelerate_cmd(overrides(tiny_shards, tmp_path, "sig", train__steps=100000, checkpoint__every=1000)),
        tmp_path,
    )
    status = tmp_path / "sig" / "status.json"
    wait_for(lambda: (tmp_path / "sig" / "metrics.jsonl").is_file(), 180, "training to start", proc)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    proc.communicate(timeout=60)
    state = json.loads(status.read_text())
    assert state["state"] == "interrupted" and state["signal"] in ("SIGINT", "SIGTERM")
    folder = latest_checkpoint(tmp_path / "sig")
    assert folder is not None and json.loads((folder / "meta.json").read_text())["step"] == state["step"]
    assert state["step"] % 1000 != 0  # saved because of the signal, not by the schedule
    assert (folder / "rank-00000.pt").is_file() and (folder / "rank-00001.pt").is_file()


@pytest.mark.slow
def test_a_dead_rank_stops_every_rank_within_a_minute(tiny_shards: Path, tmp_path: Path) -> None:
    import psutil

    proc = start(
        accelerate_cmd(overrides(tiny_shards, tmp_path, "dead", train__steps=100000, checkpoint__every=1000)),
        tmp_path,
    )
    wait_for(lambda: (tmp_path / "dead" / "metrics.jsonl").is_file(), 180, "training to start", proc)
    ranks = [p for p in psutil.Process(proc.pid).children(recursive=True) if TRAIN in " ".join(p.cmdline())]
    assert len(ranks) == 2
    victim = next(p for p in ranks if p.environ().get("RANK") == "1")
    victim.kill()
    killed = time.monotonic()
    proc.communicate(timeout=90)
    assert proc.returncode != 0
    assert time.monotonic() - killed < 60
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in ranks)


def test_nonfinite_loss_stops_with_last_good_checkpoint_intact(tiny_shards: Path, tmp_path: Path) -> None:
    # No normalization in the critic, so an absurd learning rate overflows fp32 within a step or two.
    good = overrides(
        tiny_shards, tmp_path, "nan", train__steps=2, checkpoint__every=2, model__critic_norm="none"
    )
    first = run([sys.executable, "-m", "b2b.train", *good], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    before = checkpoint_state(tmp_path / "nan" / "checkpoints" / "step-2")
    bad = overrides(
        tiny_shards,
        tmp_path,
        "nan",
        train__steps=50,
        checkpoint__every=1000,
        optim__d_lr="1e30",
        optim__g_lr="1e30",
        model__critic_norm="none",
    )
    second = run([sys.executable, "-m", "b2b.train", *bad], tmp_path)
    assert second.returncode == 1
    assert "non-finite loss" in second.stderr and "step-2" in second.stderr
    assert json.loads((tmp_path / "nan" / "status.json").read_text())["state"] == "failed"
    assert [s for s, _ in complete_checkpoints(tmp_path / "nan")] == [2]
    assert_identical(before, checkpoint_state(tmp_path / "nan" / "checkpoints" / "step-2"))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["train.precison=fp16"],
            "unknown config key 'train.precison' in the command-line overrides: did you "
            "mean 'train.precision'?",
        ),
        (["data.batch_size=four"], "data.batch_size: expected int, got 'four'"),
        (["data.shards=/nonexistent/shards"], "no shards at '/nonexistent/shards'"),
        (["data.shape=[5,16,50]"], "data.shape [5, 16, 50] does not match the shards"),
    ],
)
def test_bad_config_is_refused_before_any_process_group(
    tiny_shards: Path, tmp_path: Path, extra: list[str], message: str, capsys: pytest.CaptureFixture
) -> None:
    from b2b.train import main

    assert main([*overrides(tiny_shards, tmp_path, "bad"), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()  # nothing was started or written


def test_shape_the_networks_cannot_make_is_refused(
    tiny_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from b2b.train import main

    odd = tmp_path / "odd"
    odd.mkdir()
    manifest = json.loads((tiny_shards / "manifest.json").read_text())
    manifest["shape"] = [5, 16, 97]  # 97 is prime: no initial size × strides gives it
    (odd / "manifest.json").write_text(json.dumps(manifest))
    assert main(overrides(odd, tmp_path, "odd")) == 2
    assert "97" in capsys.readouterr().err


def test_resume_with_a_different_model_is_refused(reference: Path, tiny_shards: Path, tmp_path: Path) -> None:
    args = overrides(tiny_shards, tmp_path, "other", **{"model.g_width": 8, "checkpoint.resume": reference})
    result = run([sys.executable, "-m", "b2b.train", *args], tmp_path)
    assert result.returncode == 1
    assert "model.g_width: checkpoint 4, config 8" in result.stderr


def test_export_matches_the_checkpoint_ema(reference: Path, tmp_path: Path) -> None:
    from b2b.cli.main import main

    out = tmp_path / "g.safetensors"
    assert main(["export", "--checkpoint", str(reference), "--out", str(out)]) == 0
    exported, spec_a, _ = load_generator(out)
    original, spec_b, _ = load_generator(reference)
    z = torch.randn(3, exported.latent_dim, generator=torch.Generator().manual_seed(0))
    assert spec_a == spec_b
    assert torch.equal(exported(z), original(z))
    # The EMA differs from the raw generator (it averages), so the export really chose the EMA.
    raw, _, _ = load_generator(reference, use_ema=False)
    assert not torch.equal(raw(z), original(z))


def test_generator_step_leaves_the_critic_unchanged(tiny_shards: Path, tmp_path: Path) -> None:
    """The trainer's own phases, in this process (one rank): requires_grad_ is toggled per phase."""
    from accelerate.state import AcceleratorState

    from b2b.config import load_config
    from b2b.training.preflight import validate_for_training
    from b2b.training.trainer import Trainer

    cfg = load_config(None, overrides(tiny_shards, tmp_path, "phases"))
    trainer = Trainer(cfg, validate_for_training(cfg))
    try:
        trainer.open()
        trainer.batches = iter(trainer.loader)
        critic_phase, generator_phase = trainer.phases
        trainer.run_phase(critic_phase)
        critic_before = {k: v.clone() for k, v in trainer.d.module.state_dict().items()}
        gen_before = {k: v.clone() for k, v in trainer.g.module.state_dict().items()}
        trainer.run_phase(generator_phase)
        assert all(not p.requires_grad for p in trainer.d.module.parameters())
        assert all(p.grad is None for p in trainer.d.module.parameters())
        assert_identical(critic_before, trainer.d.module.state_dict())
        changed = [k for k, v in trainer.g.module.state_dict().items() if not torch.equal(v, gen_before[k])]
        assert any("weight" in k for k in changed)
        # and the critic phase trains the critic while the generator stays frozen
        gen_before = {k: v.clone() for k, v in trainer.g.module.named_parameters()}
        trainer.run_phase(critic_phase)
        assert all(torch.equal(p, gen_before[k]) for k, p in trainer.g.module.named_parameters())
        assert all(not p.requires_grad for p in trainer.g.module.parameters())
    finally:
        AcceleratorState._reset_state(True)


def _finish_a_run(rank: int, port: int, args: list[str], out: str) -> None:
    import gc

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from b2b.config import load_config
    from b2b.training.preflight import validate_for_training
    from b2b.training.trainer import Trainer

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # fmt: skip
    cfg = load_config(None, args)
    trainer = Trainer(cfg, validate_for_training(cfg))
    trainer.open()
    wrapped = type(trainer.g.wrapped).__name__, type(trainer.d.wrapped).__name__
    trainer.run()
    trainer.close()
    gc.collect()
    ddp_alive = sum(isinstance(o, DDP) for o in gc.get_objects())
    torch.save({"wrapped": wrapped, "ddp_alive": ddp_alive, "pg": dist.is_initialized()}, f"{out}/{rank}.pt")


@pytest.mark.slow
def test_a_finished_run_frees_ddp_before_the_process_group(tiny_shards: Path, tmp_path: Path) -> None:
    """A DDP wrapper freed at the interpreter's exit, after its process group, aborted 1 in 3 finished
    2-rank runs (SIGABRT in gloo's worker thread). The trainer drops them before it destroys the group."""
    import torch.multiprocessing as mp

    args = overrides(tiny_shards, tmp_path / "runs", "finish", train__steps=2)
    mp.spawn(_finish_a_run, args=(free_port(), args, str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        result = torch.load(tmp_path / f"{rank}.pt")
        assert result["wrapped"] == ("DistributedDataParallel", "DistributedDataParallel")
        assert result["ddp_alive"] == 0, "a DDP wrapper outlived end_training"
        assert not result["pg"]
