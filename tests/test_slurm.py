"""launch/submit.py: the sbatch script, bad input, and a real 2-node job preempted twice on loopback Slurm.

The cluster (tests/slurm_cluster.py) is real: munged, slurmctld and two slurmd on this host. Without
root or apt-get its tests skip and say why. There is no accounting: job states come from squeue.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import free_port
from slurm_cluster import SlurmCluster, slurm_cluster  # noqa: F401 - slurm_cluster is a fixture

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "launch"))  # launch/ is a folder of scripts, not a package

import slurm_job  # noqa: E402
import submit  # noqa: E402

DEMO = str(REPO / "configs" / "demo.yaml")


def tiny(shards: Path, run_dir: Path, steps: int = 6) -> list[str]:
    """The demo config shrunk to the tiny shards: a step takes milliseconds."""
    values = {
        "run_dir": run_dir,
        "data.shards": shards,
        "data.shape": "null",
        "data.batch_size": 4,
        "model.latent_dim": 16,
        "model.g_width": 4,
        "model.d_width": 4,
        "loss.n_critic": 2,
        "train.steps": steps,
        "log.progress": "false",
        "log.every": 1,
        "log.snapshot_every": 0,
        "log.metrics_every": 0,
        "checkpoint.every": 0,  # only the preemption saves and the final one: resuming needs them
    }
    return [f"{k}={v}" for k, v in values.items()]


# ---------------------------------------------------------------------------------------------------
# Without a cluster


def test_rendezvous_comes_from_the_slurm_allocation() -> None:
    slurm = {
        "SLURM_PROCID": "3",
        "SLURM_NTASKS": "8",
        "SLURM_LOCALID": "1",
        "SLURM_NODEID": "1",
        "SLURM_JOB_NUM_NODES": "4",
        "SLURM_JOB_ID": "1234",
        "SLURM_RESTART_COUNT": "2",
    }
    env = slurm_job.rendezvous_env(slurm, "gpu01")
    # port: 15000 + (1234 * 16 + 2) % 15000 = 15000 + 4746
    assert env == {
        "RANK": "3",
        "WORLD_SIZE": "8",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "2",
        "NODE_RANK": "1",
        "MASTER_ADDR": "gpu01",
        "MASTER_PORT": "19746",
    }
    # a requeued job (same id, next restart) rendezvouses on a fresh port; a first run has no count
    assert slurm_job.master_port(1234, 3) == 19747
    assert slurm_job.master_port(1234) == 15000 + 1234 * 16 % 15000
    assert slurm_job.run_name(None, "demo", "77") == "demo-77"
    assert slurm_job.run_name("mine", "demo", "77") == "mine"


def test_slurm_fields_are_read_right() -> None:
    assert submit.slurm_minutes("UNLIMITED") is None
    assert submit.slurm_minutes("30") == 30
    assert submit.slurm_minutes("02:00:00") == 120
    assert submit.slurm_minutes("1-02:03:30") == 1440 + 123.5
    assert submit.slurm_minutes("2-00") == 2880
    assert submit.gres_gpus("(null)") == 0
    assert submit.gres_gpus("gpu:a100:8(S:0-1)") == 8
    assert submit.gres_gpus("gpu:4(S:0,1),gpu:v100:2,shard:8") == 6


def test_a_starting_trainer_ignores_sigusr2_until_it_installs_its_handler() -> None:
    """The trainer child ignores SIGUSR2 until ready (it cannot die of it); /proc tells when it is ready."""
    script = (
        "import signal, sys\n"
        "sys.stdin.readline()\n"
        "signal.signal(signal.SIGUSR2, lambda *a: print('flag', flush=True))\n"
        "print('ready', flush=True)\n"
        "sys.stdin.readline()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=slurm_job._ignore_usr2,
    )
    try:
        time.sleep(0.5)
        assert not slurm_job.catches(child.pid, signal.SIGUSR2)
        os.kill(child.pid, signal.SIGUSR2)  # ignored: the child must survive it
        time.sleep(0.2)
        assert child.poll() is None
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline() == "ready\n"
        assert slurm_job.catches(child.pid, signal.SIGUSR2)
        os.kill(child.pid, signal.SIGUSR2)
        assert child.stdout.readline() == "flag\n"
        child.stdin.write("end\n")
        child.stdin.flush()
        assert child.wait(timeout=10) == 0
    finally:
        child.kill()


def test_dry_run_prints_the_sbatch_script(
    tiny_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    runs = tmp_path / "runs"
    argv = ["--config", DEMO, *tiny(tiny_shards, runs), "--nodes", "3", "--gpus-per-node", "4"]
    argv += ["--partition", "gpu", "--time", "90", "--account", "acct", "--qos", "high"]
    argv += ["--constraint", "a100", "--cpus-per-task", "6", "--dry-run"]
    assert submit.main(argv) == 0
    script = capsys.readouterr().out
    folder = runs / "demo-%j" / "slurm"
    flags = set(re.findall(r"^#SBATCH (\S+)$", script, re.M))
    assert {
        "--nodes=3",
        "--ntasks-per-node=4",  # one task per GPU
        "--gpus-per-node=4",
        "--cpus-per-task=6",
        "--time=90",
        "--signal=USR2@120",
        "--partition=gpu",
        "--account=acct",
        "--qos=high",
        "--constraint=a100",
        "--job-name=demo",
        "--hold",
        f"--output={folder}/%j_0_log.out",
    } <= flags
    srun = [line for line in script.splitlines() if line.startswith("srun ")]
    assert len(srun) == 1
    assert f"--output {folder}/%j_%t_log.out" in srun[0] and "--kill-on-bad-exit=1" in srun[0]
    assert "--cpus-per-task=6" in srun[0]  # srun no longer inherits it from sbatch (Slurm >= 22.05)
    assert srun[0].endswith(f"-m submitit.core._submit {folder}")
    assert "trap " in script and " USR2" in script  # the batch shell survives scancel --full
    assert not runs.exists()  # nothing written

    # CPU ranks: one task per node and no GPU request; an explicit name= is the run folder as is
    argv = ["--config", DEMO, *tiny(tiny_shards, runs), "name=mine", "--nodes", "2", "--gpus-per-node", "0"]
    assert submit.main([*argv, "--dry-run"]) == 0
    script = capsys.readouterr().out
    assert "#SBATCH --ntasks-per-node=1" in script and "gpus" not in script
    assert f"-m submitit.core._submit {runs / 'mine' / 'slurm'}" in script
    assert "#SBATCH --time=60" in script and "--partition" not in script  # defaults


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--config", "/nonexistent/b2b.yaml"], "config file '/nonexistent/b2b.yaml' does not exist"),
        (["train.precision=fp64"], "train.precision: 'fp64' is not one of"),
        (["data.shards=/nonexistent/shards"], "no shards at '/nonexistent/shards'"),
        (["--nodes", "0"], "--nodes 0: must be at least 1"),
        (["--time", "1", "--signal-delay", "90"], "--signal-delay 90 s must be shorter than --time 1 min"),
        # Nothing a user types can add a line to the sbatch script (a shell line would run).
        (["name=x\ntouch /tmp/pwned"], "name: 'x\\ntouch /tmp/pwned' is not a safe folder name"),
        (["name=.."], "name: '..' is not a safe folder name"),
        (
            ["--partition", "gpu\n#SBATCH --uid=0"],
            "--partition 'gpu\\n#SBATCH --uid=0': not a Slurm partition",
        ),
        (["--account", "a b"], "--account 'a b': not a Slurm account"),
        (["--constraint", "a100'"], '--constraint "a100\'": not a Slurm constraint'),
    ],
)
def test_bad_config_or_numbers_are_refused_before_slurm(
    tiny_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str], message: str
) -> None:
    argv = ["--config", DEMO, *tiny(tiny_shards, tmp_path / "runs"), "--nodes", "2", "--gpus-per-node", "0"]
    assert submit.main([*argv, *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("submit: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------------------------------
# Against the real cluster


@pytest.mark.slurm
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--partition", "nosuch"],
            "--partition 'nosuch': no such partition; this cluster has: debug, short",
        ),
        (["--nodes", "3"], "--nodes 3: partition 'debug' has only 2 nodes"),
        (
            ["--gpus-per-node", "1"],
            "only 0 node(s) of partition 'debug' do; its nodes have 2 CPUs and 0 GPUs",
        ),
        (["--cpus-per-task", "3"], "each node must have 0 GPUs and 3 CPUs"),
        (["--partition", "short", "--time", "10"], "--time 10: partition 'short' allows at most 00:05:00"),
    ],
)
def test_what_the_cluster_cannot_give_is_refused_before_submission(
    slurm_cluster: SlurmCluster,  # noqa: F811
    tiny_shards: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    message: str,
) -> None:
    monkeypatch.setenv("SLURM_CONF", slurm_cluster.env["SLURM_CONF"])
    jobs_before = slurm_cluster.job_ids()
    argv = ["--config", DEMO, *tiny(tiny_shards, tmp_path / "runs"), "--nodes", "2", "--gpus-per-node", "0"]
    # the last --nodes/--gpus-per-node given wins (argparse), so a case can replace the defaults
    assert submit.main([*argv, *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("submit: error: ") and message in err and err.count("\n") == 1
    assert slurm_cluster.job_ids() == jobs_before  # nothing submitted
    assert not (tmp_path / "runs").exists()


def _status(run: Path) -> dict:
    try:
        return json.loads((run / "status.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _last_step(run: Path) -> int:
    """The last step in metrics.jsonl (log.every=1: the step the run has reached)."""
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return -1
    return json.loads(lines[-1])["step"] if lines else -1


def _wait(predicate, timeout_s: float, what: str, logs) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}\n{logs()}")


def _job_logs(cluster: SlurmCluster, job: str, run: Path) -> str:
    tails = [cluster.describe(job), f"status {_status(run)}"]
    for path in sorted((run / "slurm").glob("*_log.out")):
        tails.append(f"--- {path.name}\n" + "\n".join(path.read_text().splitlines()[-25:]))
    return "\n".join(tails) + "\n" + cluster.logs()


def _models(run: Path, step: int) -> dict:
    folder = run / "checkpoints" / f"step-{step}"
    nets = {
        name: torch.load(folder / f"{name}.pt", weights_only=True)["model"]
        for name in ("generator", "critic")
    }
    return {**nets, "ema": torch.load(folder / "ema.pt", weights_only=True)}


@pytest.mark.slow
@pytest.mark.slurm
def test_a_job_preempted_three_times_requeues_resumes_and_matches_an_uninterrupted_run(
    slurm_cluster: SlurmCluster,  # noqa: F811
    tiny_shards: Path,
    tmp_path: Path,
) -> None:
    # Enough steps that no segment finishes before its signal lands: a tiny step takes ~15 ms on a fast
    # CI machine, and polling plus scancel's delivery take up to ~1.5 s (~100 steps) per preemption.
    steps = 400
    runs = tmp_path / "runs"
    args = tiny(tiny_shards, runs, steps)
    env = {
        **slurm_cluster.env,
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "disabled",
        "PYTHONUNBUFFERED": "1",
        "GLOO_SOCKET_IFNAME": "lo",  # sbatch exports this environment to the job
    }
    # The uninterrupted reference: the same world (2 ranks) on loopback, started alongside the job.
    reference = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
         str(free_port()), "-m", "b2b.train", "--config", DEMO, *args, "name=reference"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    submitted = subprocess.run(
        [sys.executable, "launch/submit.py", "--config", "configs/demo.yaml", *args, "--nodes", "2",
         "--gpus-per-node", "0", "--time", "10"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job = re.search(r"^submitted job (\d+):", submitted.stdout, re.M).group(1)
    run = runs / f"demo-{job}"
    log0 = run / "slurm" / f"{job}_0_log.out"
    assert f"run directory: {run}\n" in submitted.stdout
    assert f"tail -f {log0}\n" in submitted.stdout

    def logs() -> str:
        return _job_logs(slurm_cluster, job, run)

    def progressed(since: int) -> bool:
        slurm_cluster.lift_requeue_hold(job)  # no-op unless the job waits out its requeue hold
        return _last_step(run) >= since + 3

    def finished() -> bool:
        slurm_cluster.lift_requeue_hold(job)
        return slurm_cluster.job_state(job) == "COMPLETED"

    try:
        interrupted: list[int] = []
        # twice as a preemption test does it (--full: the batch shell gets it too), then as at a time
        # limit (sbatch --signal=USR2@...: the job step only)
        for scope in (["--full"], ["--full"], []):
            since = interrupted[-1] if interrupted else 0
            _wait(lambda s=since: progressed(s), 150, "training progress", logs)
            seen = _last_step(run)
            slurm_cluster.run("scancel", "--signal=USR2", *scope, job)
            _wait(
                lambda: (
                    slurm_cluster.job_state(job) == "PENDING" and _status(run).get("state") == "interrupted"
                ),
                90,
                "the save and the requeue",
                logs,
            )
            status = _status(run)
            assert status["signal"] == "SIGUSR2" and seen <= status["step"] < steps, logs()
            assert (run / "checkpoints" / f"step-{status['step']}" / "COMPLETE").is_file()
            interrupted.append(status["step"])
        _wait(finished, 200, "the job to finish", logs)
        assert _status(run)["state"] == "finished" and _status(run)["step"] == steps, logs()
        log = log0.read_text()
        for restart, step in enumerate(interrupted, start=1):
            # the requeued job (same id, same run folder) resumed exactly where it was stopped
            assert f"job {job} (restart {restart})" in log
            assert f"resumed from {run / 'checkpoints' / f'step-{step}'} at step {step}\n" in log
        assert interrupted == sorted(set(interrupted))

        out, _ = reference.communicate(timeout=300)
        assert reference.returncode == 0, out[-3000:]
        expected = _models(runs / "reference", steps)
        got = _models(run, steps)
        assert sorted(got) == sorted(expected) == ["critic", "ema", "generator"]
        for net in expected:
            assert got[net].keys() == expected[net].keys()
            for key, tensor in expected[net].items():
                assert torch.equal(got[net][key], tensor), f"{net}.{key} differs from the uninterrupted run"
    finally:
        if reference.poll() is None:
            reference.kill()
            reference.wait()
        slurm_cluster.run("scancel", job, check=False)


@pytest.mark.slow
@pytest.mark.slurm
def test_a_cancelled_job_saves_and_a_resubmission_with_its_name_resumes(
    slurm_cluster: SlurmCluster,  # noqa: F811
    tiny_shards: Path,
    tmp_path: Path,
) -> None:
    runs = tmp_path / "runs"
    env = {**slurm_cluster.env, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "GLOO_SOCKET_IFNAME": "lo"}
    steps = 300  # far more than the ~100 a fast machine runs between the poll and the SIGTERM
    cmd = [
        sys.executable,
        "launch/submit.py",
        "--config",
        "configs/demo.yaml",
        *tiny(tiny_shards, runs, steps),
    ]
    cmd += ["--nodes", "2", "--gpus-per-node", "0", "--time", "10"]
    first = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert first.returncode == 0, first.stderr
    job = re.search(r"^submitted job (\d+):", first.stdout, re.M).group(1)
    run = runs / f"demo-{job}"
    resume = re.search(r"^resume later: +(.*)$", first.stdout, re.M).group(1)
    assert resume.endswith(f" name=demo-{job}")

    def logs() -> str:
        return _job_logs(slurm_cluster, second, run)

    second = job
    try:
        _wait(lambda: _last_step(run) >= 3, 150, "training progress", logs)
        slurm_cluster.run("scancel", job)  # SIGTERM to every process, SIGKILL after KillWait
        _wait(lambda: slurm_cluster.job_state(job) == "CANCELLED", 60, "the cancellation", logs)
        status = _status(run)
        assert status["state"] == "interrupted" and status["signal"] == "SIGTERM", logs()
        stopped = status["step"]
        assert 3 <= stopped < steps and (run / "checkpoints" / f"step-{stopped}" / "COMPLETE").is_file()

        # the printed command, with the run's name: a new job, the same run folder, resumed
        again = subprocess.run(
            [sys.executable, *shlex.split(resume)[1:]],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert again.returncode == 0, again.stderr
        second = re.search(r"^submitted job (\d+):", again.stdout, re.M).group(1)
        assert second != job and f"run directory: {run}\n" in again.stdout
        _wait(lambda: slurm_cluster.job_state(second) == "COMPLETED", 150, "the resubmitted job", logs)
        assert _status(run)["state"] == "finished" and _status(run)["step"] == steps, logs()
        log = (run / "slurm" / f"{second}_0_log.out").read_text()
        assert f"resumed from {run / 'checkpoints' / f'step-{stopped}'} at step {stopped}\n" in log
    finally:
        slurm_cluster.run("scancel", job, second, check=False)
