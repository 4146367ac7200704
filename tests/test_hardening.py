"""Faults and bad input, tried as a user would meet them: real training processes, real files, real signals.

Each test names the fault in its title and checks what the user sees (one line naming the file, key or
value) and what is left on disk (the previous checkpoint intact, no half-written file, a truthful
status.json, no process left behind).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_train import assert_identical, checkpoint_state, env, overrides, start, wait_for

from b2b.atomic import file_sha256
from b2b.checkpoint.folder import complete_checkpoints, is_complete, verify

REPO = Path(__file__).resolve().parent.parent


def train(args: list[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "b2b.train", *args], cwd=cwd, env=env(), capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def tiny_run(shards: Path, root: Path, name: str, steps: int = 3, **extra: object) -> Path:
    """A finished tiny run with a checkpoint at every step (keep 10)."""
    args = overrides(
        shards, root, name, train__steps=steps, checkpoint__every=1, checkpoint__keep=10, **extra
    )
    result = train(args, root)
    assert result.returncode == 0, result.stderr[-3000:]
    return root / name


def status(run: Path) -> dict:
    return json.loads((run / "status.json").read_text())


def rewrite_digest(folder: Path, name: str) -> None:
    """What an attacker (or a careless tool) would do too: make COMPLETE agree with a replaced file."""
    listing = json.loads((folder / "COMPLETE").read_text())
    listing["sha256"][name] = file_sha256(folder / name)
    (folder / "COMPLETE").write_text(json.dumps(listing))


class Payload:
    """Unpickling this runs a command: what a crafted checkpoint file would do with weights_only=False."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ---------------------------------------------------------------------------------------------------
# Security


def test_a_crafted_checkpoint_file_runs_nothing_and_is_refused(tiny_shards: Path, tmp_path: Path) -> None:
    run = tiny_run(tiny_shards, tmp_path, "evil", steps=2)
    latest = run / "checkpoints" / "step-2"
    marker = tmp_path / "pwned"
    torch.save({"rng": Payload(marker)}, latest / "rank-00000.pt")
    rewrite_digest(latest, "rank-00000.pt")
    args = overrides(tiny_shards, tmp_path, "evil", train__steps=3, checkpoint__every=1, checkpoint__keep=10)
    explicit = train([*args, f"checkpoint.resume={latest}"], tmp_path)
    assert explicit.returncode == 1 and not marker.exists()
    assert f"{latest / 'rank-00000.pt'} cannot be loaded safely" in explicit.stderr
    assert status(run)["state"] == "failed" and "cannot be loaded safely" in status(run)["error"]
    # In auto mode the damaged checkpoint is passed over for the previous one, with a warning.
    auto = train(args, tmp_path)
    assert auto.returncode == 0, auto.stderr[-2000:]
    assert not marker.exists()
    assert "resumed from" in auto.stdout and "step-1" in auto.stdout


def test_every_checkpoint_file_loads_with_weights_only(tiny_shards: Path, tmp_path: Path) -> None:
    run = tiny_run(tiny_shards, tmp_path, "plain", steps=1)
    folder = run / "checkpoints" / "step-1"
    files = [p for p in folder.iterdir() if p.suffix == ".pt"]
    assert {p.name for p in files} == {
        "generator.pt", "critic.pt", "ema.pt", "loader.pt", "progress.pt", "rank-00000.pt"
    }  # fmt: skip
    for path in files:
        torch.load(path, weights_only=True)  # raises on anything but tensors and plain types


def test_a_manifest_cannot_point_outside_its_folder(tiny_shards: Path, tmp_path: Path, capsys) -> None:
    from b2b.train import main

    shards = tmp_path / "shards"
    shutil.copytree(tiny_shards, shards)
    manifest = json.loads((shards / "manifest.json").read_text())
    manifest["shards"][0]["name"] = "../../etc/passwd"
    (shards / "manifest.json").write_text(json.dumps(manifest))
    assert main(overrides(shards, tmp_path, "escape")) == 1
    assert "names a shard '../../etc/passwd' outside the shards folder" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------
# One trainer per run folder


def test_a_second_trainer_is_refused_and_a_dead_holder_does_not_block(
    tiny_shards: Path, tmp_path: Path
) -> None:
    args = overrides(tiny_shards, tmp_path, "busy", train__steps=100000, checkpoint__every=1000)
    first = start([sys.executable, "-m", "b2b.train", *args], tmp_path)
    try:
        wait_for(lambda: (tmp_path / "busy" / "metrics.jsonl").is_file(), 120, "training to start", first)
        second = train(args, tmp_path)
        assert second.returncode == 2
        assert f"is in use by another trainer (pid {first.pid} on host " in second.stderr
        assert status(tmp_path / "busy")["state"] == "running"  # the holder's status is untouched
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # The kernel released the dead holder's lock: the same command resumes.
    third = train([*args[:-2], "train.steps=2"], tmp_path)
    assert third.returncode == 0, third.stderr[-2000:]


def test_ctrl_c_while_starting_is_one_line_and_leaves_no_run_folder(
    tiny_shards: Path, tmp_path: Path
) -> None:
    """SIGINT (what Ctrl-C sends) in the first seconds, while torch and accelerate load, before the
    trainer's own handler (which stops at the end of a step and saves) takes over."""
    for delay in (0.3, 1.0):
        name = f"interrupt-{delay}"
        args = overrides(tiny_shards, tmp_path, name, train__steps=100000, checkpoint__every=1000)
        process = start([sys.executable, "-m", "b2b.train", *args], tmp_path)
        time.sleep(delay)
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=120)
        assert process.returncode == 130 and "Traceback" not in output, output[-3000:]
        assert output.strip().splitlines()[-1] == "b2b train: interrupted while starting; nothing was trained"
        assert not (tmp_path / name).exists()  # nothing left behind


# ---------------------------------------------------------------------------------------------------
# Resume


def test_resuming_from_an_older_checkpoint_abandons_the_later_ones(tiny_shards: Path, tmp_path: Path) -> None:
    run = tiny_run(tiny_shards, tmp_path, "branch", steps=4)
    old_step4 = checkpoint_state(run / "checkpoints" / "step-4")
    args = overrides(
        tiny_shards, tmp_path, "branch", train__steps=4, checkpoint__every=1, checkpoint__keep=10,
        optim__g_lr="0.01", checkpoint__resume=run / "checkpoints" / "step-2",
    )  # fmt: skip
    result = train(args, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "moved step-3, step-4 to" in result.stdout and "a new trajectory starts here" in result.stdout
    (abandoned,) = (run / "checkpoints" / "abandoned").iterdir()
    assert sorted(p.name for p in abandoned.iterdir()) == ["step-3", "step-4"]
    assert_identical(old_step4, checkpoint_state(abandoned / "step-4"))
    new_step4 = checkpoint_state(run / "checkpoints" / "step-4")  # written by the new trajectory
    assert not torch.equal(
        new_step4["generator"]["model"]["net.0.0.weight"], old_step4["generator"]["model"]["net.0.0.weight"]
    )
    first_lr = json.loads((abandoned / "step-4" / "meta.json").read_text())["config"]["optim"]["g_lr"]
    assert f"optim.g_lr {first_lr} -> 0.01" in result.stdout


def test_the_anneal_falls_linearly_over_the_last_share_and_follows_a_longer_run(
    tiny_shards: Path, tmp_path: Path
) -> None:
    # optim.anneal=0.5 over 8 steps: factor min(1, (8 - step) / 4) for steps 0..7; no epoch decay.
    fixed = {"optim__g_lr": "0.001", "optim__d_lr": "0.002", "optim__lr_decay": "1.0", "optim__anneal": "0.5"}
    run = tiny_run(tiny_shards, tmp_path, "anneal", steps=8, **fixed)
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["g_lr"] for x in lines] == pytest.approx([1e-3] * 5 + [7.5e-4, 5e-4, 2.5e-4])
    assert [x["d_lr"] for x in lines] == pytest.approx([2e-3] * 5 + [1.5e-3, 1e-3, 5e-4])
    # The same run extended to 12 steps: the anneal now spans 12 steps, from step 8: (12 - step) / 6.
    args = overrides(
        tiny_shards, tmp_path, "anneal", train__steps=12, checkpoint__every=1, checkpoint__keep=10, **fixed
    )
    result = train(args, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "train.steps 8 -> 12 (the anneal spans the run's steps)" in result.stdout
    assert "at step 8 (epoch" in result.stdout and "the rates are now G 0.000667, D 0.00133" in result.stdout
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["g_lr"] for x in lines[8:]] == pytest.approx([1e-3 * k / 6 for k in (4, 3, 2, 1)])


def test_the_learning_rate_follows_the_config_after_a_resume(tiny_shards: Path, tmp_path: Path) -> None:
    # Batches of 16 and 4 critic updates: an epoch (10 batches of the 165 samples) lasts 2.5 steps. The
    # step decay alone (no anneal), so each rate shows which schedule made it.
    short = {"data__batch_size": 16, "loss__n_critic": 4, "optim__g_lr": "0.001", "optim__d_lr": "0.001"}
    short["optim__anneal"] = "0"
    run = tiny_run(
        tiny_shards, tmp_path, "lr", steps=4, optim__lr_decay="0.5", optim__lr_decay_every=1, **short
    )
    args = overrides(
        tiny_shards, tmp_path, "lr", train__steps=12, checkpoint__every=1, checkpoint__keep=10,
        optim__lr_decay="0.1", optim__lr_decay_every=2, **short,
    )  # fmt: skip
    result = train(args, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "optim.lr_decay 0.5 -> 0.1; optim.lr_decay_every 1 -> 2" in result.stdout
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    before, after = [x["g_lr"] for x in lines[:4]], [x["g_lr"] for x in lines[4:]]
    assert before == [0.001, 0.001, 0.001, 0.0005]  # the first run's schedule: halved after one epoch
    # After the resume, the new schedule from the same data position (1.6 epochs): 0.001 until epoch 2,
    # then 0.0001; never the old rates (0.0005, 0.00025), which a restored scheduler would have continued.
    assert after[:2] == [0.001, pytest.approx(0.0001)]
    assert all(
        x == pytest.approx(0.001) or x == pytest.approx(0.0001) or x == pytest.approx(1e-5) for x in after
    )


def test_a_torn_last_line_of_metrics_jsonl_is_dropped_and_the_run_resumes(
    tiny_shards: Path, tmp_path: Path
) -> None:
    """A run killed while appending step 4's line (before step 4's checkpoint): the part of the line on
    disk is stood in for by cutting the last 40 bytes off (what ``truncate -s -40`` does; a kill or a full
    disk can leave any prefix of a line, which test_tracking checks byte by byte). The same command
    resumes from step 3, says in one line what it dropped, and logs step 4 again, as the first run did."""
    args = overrides(tiny_shards, tmp_path, "torn", train__steps=4, checkpoint__every=1, checkpoint__keep=10)
    first = train(args, tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    run = tmp_path / "torn"
    metrics = run / "metrics.jsonl"
    whole = metrics.read_text()
    shutil.rmtree(run / "checkpoints" / "step-4")
    metrics.write_text(whole[:-40])
    second = train(args, tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    warnings = [line for line in second.stderr.splitlines() if "metrics.jsonl" in line]
    assert warnings == [
        f"b2b train: warning: {metrics}: dropped 1 of 4 lines that are not a whole JSON record, line 4 (the "
        "last: a write cut off by a kill or a full disk); the run goes on"
    ]
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3, 4]
    assert [row["d_loss"] for row in rows] == [json.loads(line)["d_loss"] for line in whole.splitlines()]
    assert status(run)["state"] == "finished"


# ---------------------------------------------------------------------------------------------------
# Damaged checkpoints


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        (
            lambda f: (f / "generator.pt").write_bytes((f / "generator.pt").read_bytes()[:1000]),
            "generator.pt is damaged",
        ),
        (lambda f: (f / "meta.json").write_text("{not json"), "meta.json is damaged"),
        (lambda f: (f / "rank-00000.pt").unlink(), "rank-00000.pt is missing"),
        (lambda f: (f / "COMPLETE").write_text("garbage"), "COMPLETE is not readable"),
    ],
    ids=["truncated-weights", "garbage-meta", "missing-rank-file", "garbage-marker"],
)
def test_a_damaged_latest_checkpoint_is_named_and_passed_over(
    tiny_shards: Path, tmp_path: Path, damage, named
) -> None:
    run = tiny_run(tiny_shards, tmp_path, "dmg", steps=2)
    latest = run / "checkpoints" / "step-2"
    damage(latest)
    args = overrides(tiny_shards, tmp_path, "dmg", train__steps=3, checkpoint__every=1, checkpoint__keep=10)
    explicit = train([*args, f"checkpoint.resume={latest}"], tmp_path)
    assert explicit.returncode == 1 and explicit.stderr.count("\n") == 1, explicit.stderr
    assert named in explicit.stderr and "Traceback" not in explicit.stderr
    assert status(run)["state"] == "failed"
    auto = train(args, tmp_path)
    assert auto.returncode == 0, auto.stderr[-2000:]
    assert named in auto.stderr and "falling back to the previous checkpoint" in auto.stderr
    assert f"resumed from {run / 'checkpoints' / 'step-1'}" in auto.stdout
    assert status(run)["state"] == "finished" and status(run)["step"] == 3


def test_a_damaged_export_or_checkpoint_is_refused_by_sample(
    tiny_shards: Path, tmp_path: Path, capsys
) -> None:
    from b2b.cli.main import main

    run = tiny_run(tiny_shards, tmp_path, "exp", steps=1)
    garbage = tmp_path / "g.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    assert main(["sample", "--checkpoint", str(garbage), "--out", str(tmp_path / "s")]) == 2
    assert f"{garbage} is not a readable safetensors file" in capsys.readouterr().err
    ema = run / "checkpoints" / "step-1" / "ema.pt"
    data = bytearray(ema.read_bytes())
    data[-100] ^= 0xFF
    ema.write_bytes(bytes(data))
    assert main(["sample", "--checkpoint", str(run), "--out", str(tmp_path / "s")]) == 2
    assert f"{ema} is damaged: its sha256 differs" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_leftovers_of_killed_saves_are_removed_and_best_is_one_link(
    tiny_shards: Path, tmp_path: Path
) -> None:
    run = tiny_run(tiny_shards, tmp_path, "left", steps=2, log__metrics_every=1, log__metrics_n=8)
    root = run / "checkpoints"
    assert (root / "best").is_symlink() and is_complete(root / "best")
    assert len(list(root.glob(".best-*"))) == 1  # the one copy the link points at
    (root / ".step-9.partial").mkdir()
    (root / ".step-9.partial" / "generator.pt").write_bytes(b"")
    args = overrides(tiny_shards, tmp_path, "left", train__steps=3, checkpoint__every=1, checkpoint__keep=10)
    result = train(args, tmp_path)
    assert result.returncode == 0 and "left by an interrupted save" in result.stderr
    assert not (root / ".step-9.partial").exists()


def test_a_failed_start_leaves_no_empty_run_folder(tiny_shards: Path, tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    shutil.copytree(tiny_shards, shards)
    for tar in shards.glob("train-*.tar"):
        tar.unlink()
    result = train(overrides(shards, tmp_path, "gone"), tmp_path)
    assert result.returncode == 1 and "does not exist; rebuild the shards" in result.stderr
    assert not (tmp_path / "gone").exists()


# ---------------------------------------------------------------------------------------------------
# A full disk


def _tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    return (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
        ).returncode
        == 0
    )


def test_a_full_disk_names_the_folder_and_keeps_the_previous_checkpoint(
    tiny_shards: Path, tmp_path: Path
) -> None:
    measure = tiny_run(tiny_shards, tmp_path, "measure", steps=1)
    size = sum(p.stat().st_size for p in (measure / "checkpoints" / "step-1").iterdir())
    disk = tmp_path / "disk"
    if not _tmpfs(disk, f"{int(size * 1.6) // 1024 + 64}k"):
        if os.environ.get("CI"):
            pytest.fail("CI runs as root and must be able to mount a tmpfs")
        pytest.skip("mounting a tmpfs needs root")
    try:
        args = overrides(tiny_shards, disk, "full", train__steps=5, checkpoint__every=1, checkpoint__keep=10)
        result = train(args, tmp_path)
        run = disk / "full"
        assert result.returncode == 1, result.stderr[-2000:]
        assert (
            f"no space left on the device of {run / 'checkpoints'}: a checkpoint needs about" in result.stderr
        )
        assert "the previous checkpoint" in result.stderr and "Traceback" not in result.stderr
        kept = complete_checkpoints(run)
        assert kept and all(verify(folder) is None for _, folder in kept)
        assert not [p for p in run.rglob("*") if p.is_file() and p.stat().st_size == 0 and p.name != ".lock"]
        assert not list((run / "checkpoints").glob(".step-*"))  # the partial folder is gone
        assert status(run)["state"] == "failed" and "no space left" in status(run)["error"]
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_a_read_only_checkpoints_folder_is_found_before_step_1(tiny_shards: Path, tmp_path: Path) -> None:
    """``checkpoints/`` on a read-only mount (root ignores permission bits, so a mode would not do)."""
    run = tmp_path / "ro"
    run.mkdir()
    if not _tmpfs(run / "checkpoints", "1m"):
        if os.environ.get("CI"):
            pytest.fail("CI runs as root and must be able to mount a tmpfs")
        pytest.skip("mounting a tmpfs needs root")
    try:
        assert subprocess.run(["mount", "-o", "remount,ro", str(run / "checkpoints")]).returncode == 0
        args = overrides(tiny_shards, tmp_path, "ro", train__steps=3, checkpoint__every=1)
        result = train(args, tmp_path)
        assert result.returncode != 0 and "Traceback" not in result.stderr
        assert result.stderr.strip().splitlines()[-1] == (
            f"b2b train: error: cannot write in {run / 'checkpoints'} (Read-only file system): checkpoints "
            f"are saved in {run / 'checkpoints'}; fix its permissions or choose another run_dir"
        )
        assert not (run / "metrics.jsonl").exists()  # no step was spent
        assert status(run)["state"] == "failed"
    finally:
        subprocess.run(["umount", str(run / "checkpoints")], capture_output=True)


# ---------------------------------------------------------------------------------------------------
# No process outlives a failure


def test_a_rank_with_loader_workers_exits_soon_after_an_unexpected_error(
    tiny_shards: Path, tmp_path: Path
) -> None:
    import psutil

    shards = tmp_path / "shards"
    shutil.copytree(tiny_shards, shards)
    args = overrides(
        shards, tmp_path, "workers", train__steps=100000, checkpoint__every=1000, data__num_workers=2
    )
    proc = start([sys.executable, "-m", "b2b.train", *args], tmp_path)
    try:
        wait_for(lambda: (tmp_path / "workers" / "metrics.jsonl").is_file(), 120, "training to start", proc)
        family = psutil.Process(proc.pid).children(recursive=True)
        assert len(family) >= 2  # the loader's workers
        for tar in shards.glob("train-*.tar"):  # the data vanishes under the running job
            tar.unlink()
        failed = time.monotonic()
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode not in (0, None), out[-2000:]
        assert time.monotonic() - failed < 30
        time.sleep(1)
        assert not [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert status(tmp_path / "workers")["state"] == "failed"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_killed_shard_build_leaves_no_workers(tmp_path: Path) -> None:
    import psutil
    from lpd_fixtures import write_lpd_tree

    write_lpd_tree(tmp_path / "src", 40, n_bars=24)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "b2b.cli", "shards", "build", "--source", "lpd",
           "--input", str(tmp_path / "src"), "--output", str(out),
           "--workers", "2", "--shard-size", "4", "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        workers = [
            p for p in psutil.Process(proc.pid).children(recursive=True) if "spawn" in " ".join(p.cmdline())
        ]
        if len(workers) >= 2:
            break
        time.sleep(0.05)
    assert len(workers) >= 2, "the build finished before its workers could be seen"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, f"orphaned workers: {[p.pid for p in alive]}"


# ---------------------------------------------------------------------------------------------------
# Config validation


def test_nan_and_inf_are_refused_for_every_float_key() -> None:
    import typing

    from b2b.config import Config, load_config, valid_keys
    from b2b.errors import ConfigError

    float_keys = []
    for key in valid_keys():
        section, field = key.split(".") if "." in key else ("", key)
        cls = typing.get_type_hints(Config)[section] if section else Config
        if typing.get_type_hints(cls).get(field) is float:
            float_keys.append(key)
    assert len(float_keys) >= 7
    for key in float_keys:
        for bad in ("nan", "inf", "-inf"):
            with pytest.raises(ConfigError, match=f"{key}: '{bad}' is not a finite number"):
                load_config(None, [f"{key}={bad}"])
    with pytest.raises(ConfigError, match=r"optim.betas\[1\]: 'nan' is not a finite number"):
        load_config(None, ["optim.betas=[0.5, nan]"])


def test_an_empty_config_file_is_an_error(tmp_path: Path) -> None:
    from b2b.config import load_config
    from b2b.errors import ConfigError

    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing here\n")
    with pytest.raises(ConfigError, match="config file '.*empty.yaml' is empty"):
        load_config(empty)
