"""The job side of ``launch/submit.py``: one Slurm task per rank, each running the trainer as a child.

Why a child process: Slurm signals every process of the job step, and submitit answers the preemption
signal (SIGUSR2) on global rank 0 only, inside a signal handler that calls ``checkpoint()``, requeues
the job and exits. A collective save cannot run inside that handler (the other ranks would wait for
rank 0 at the next collective while it sits in the handler). So the trainer runs in a child process
that receives the signal itself, sets a flag, and saves collectively with the other ranks at the next
step boundary; the task process only supervises it. On rank 0, ``checkpoint()`` waits (bounded) for
its child to finish that save and then lets submitit requeue the job; the requeued job has the same
job id, so it finds the same run directory (and W&B run id) and the trainer resumes from the latest
complete checkpoint.

This file is pickled by value (cloudpickle) into the job, so it imports only the standard library and
submitit, and must not import other files of ``launch/``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import submitit

PORT_BASE = 15000  # below Linux's ephemeral port range (32768-60999), so no client socket holds it
PORT_SPAN = 15000
STATUS_FILE = "status.json"
POLL_S = 0.5  # how often a waiting task checks whether its trainer is ready for a pending SIGUSR2


def _log(rank: int | str, message: str) -> None:
    print(f"[b2b-slurm rank {rank}] {message}", flush=True)


def master_port(job_id: int, restart_count: int = 0) -> int:
    """The rendezvous port of a job: derived from its id, and new at every restart of the job.

    A requeued job keeps its id; moving the port on each restart keeps the new rendezvous clear of
    sockets the previous run left in TIME_WAIT on the same host.
    """
    return PORT_BASE + (job_id * 16 + restart_count % 16) % PORT_SPAN


def first_host_address(nodelist: str) -> str:
    """The address of the first node of ``nodelist`` (Slurm's compressed form, e.g. ``gpu[01-04]``).

    The node name is used when it resolves; otherwise Slurm's NodeAddr for it (node names need not
    be host names, e.g. on the loopback test cluster).
    """
    hosts = subprocess.run(
        ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True
    ).stdout.split()
    first = hosts[0]
    try:
        socket.getaddrinfo(first, None)
        return first
    except socket.gaierror:
        pass
    line = subprocess.run(
        ["scontrol", "show", "node", "-o", first], capture_output=True, text=True, check=True
    ).stdout
    fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
    return fields.get("NodeAddr", first)


def rendezvous_env(slurm: dict[str, str], master_addr: str) -> dict[str, str]:
    """torch.distributed's variables for this task, read from Slurm's (one task per rank).

    Parameters
    ----------
    slurm
        The task's environment (``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``,
        ``SLURM_NODEID``, ``SLURM_JOB_NUM_NODES``, ``SLURM_JOB_ID``, ``SLURM_RESTART_COUNT``).
    master_addr
        Address of the job's first node, where global rank 0 runs.
    """
    world = int(slurm["SLURM_NTASKS"])
    nodes = int(slurm["SLURM_JOB_NUM_NODES"])
    return {
        "RANK": slurm["SLURM_PROCID"],
        "WORLD_SIZE": str(world),
        "LOCAL_RANK": slurm["SLURM_LOCALID"],
        "LOCAL_WORLD_SIZE": str(world // nodes),
        "NODE_RANK": slurm["SLURM_NODEID"],
        "MASTER_ADDR": master_addr,
        "MASTER_PORT": str(master_port(int(slurm["SLURM_JOB_ID"]), int(slurm.get("SLURM_RESTART_COUNT", 0)))),
    }


def run_name(explicit: str | None, base: str, job_id: str) -> str:
    """The run's folder name: the one the user set, else ``<config name>-<job id>``."""
    return explicit if explicit else f"{base}-{job_id}"


def _ignore_usr2() -> None:
    # Runs in the child between fork and exec. An ignored signal stays ignored across exec, so a
    # SIGUSR2 that lands while the trainer is still importing cannot kill it; the parent delivers
    # the signal again once the trainer has installed its own handler (see ``catches``).
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


def catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler for ``signum`` (Linux: the SigCgt mask in /proc).

    A Python trainer catches SIGUSR2 only between installing its handler and interpreter shutdown
    (which restores the default action, to die): the window in which sending it is safe.
    """
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True  # no /proc: assume the trainer is ready
    for line in status.splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return True


@dataclasses.dataclass
class TrainerTask:
    """The callable submitit runs in every task: start the trainer for this rank and supervise it."""

    config: str  # absolute path of the config file
    overrides: list[str]  # key=value overrides from the command line
    workdir: str  # the folder submit.py ran in: relative paths in the config are relative to it
    run_root: str  # absolute <run_dir> of the config
    name: str | None  # the name the user set, or None for <base_name>-<job id>
    base_name: str
    save_timeout_s: float  # how long rank 0 waits for the trainer's save before requeueing anyway

    def __post_init__(self) -> None:
        self._child: subprocess.Popen | None = None
        self._preempted = False  # this task got SIGUSR2
        self._delivered = False  # ... and passed it on to the trainer

    def _run_path(self) -> Path:
        return Path(self.run_root) / run_name(self.name, self.base_name, os.environ["SLURM_JOB_ID"])

    def _status(self) -> dict:
        try:
            return json.loads((self._run_path() / STATUS_FILE).read_text())
        except (OSError, json.JSONDecodeError):
            return {}

    def _deliver_usr2(self) -> None:
        """Pass SIGUSR2 on to the trainer once, as soon as it catches it.

        Slurm signals the trainer itself too (every process of the step); this covers a trainer
        that was still starting (ignoring the signal) and process trackers that signal only tasks.
        """
        child = self._child
        if self._delivered or child is None or child.poll() is not None:
            return
        if catches(child.pid, signal.SIGUSR2):
            os.kill(child.pid, signal.SIGUSR2)
            self._delivered = True

    def _wait(self, timeout_s: float | None = None) -> int | None:
        """Wait for the trainer (at most ``timeout_s``), delivering a pending SIGUSR2 meanwhile."""
        deadline = None if timeout_s is None else time.time() + timeout_s
        while deadline is None or time.time() < deadline:
            if self._preempted:
                self._deliver_usr2()
            try:
                return self._child.wait(timeout=POLL_S)
            except subprocess.TimeoutExpired:
                pass
        return self._child.poll()

    def _on_usr2(self, submitit_handler):
        def handler(signum, frame):
            if self._preempted:  # Slurm may deliver it more than once (to the step, and via srun)
                return
            self._preempted = True
            self._deliver_usr2()
            if callable(submitit_handler):
                submitit_handler(signum, frame)  # rank 0: checkpoint() and requeue; others: log

        return handler

    # -- what submitit calls ------------------------------------------------------------------------

    def __call__(self) -> dict:
        """Run this rank's trainer to its end; return its status.json (raise if it failed)."""
        env = dict(os.environ)
        rank = int(env["SLURM_PROCID"])
        job_id = env["SLURM_JOB_ID"]
        master = first_host_address(env["SLURM_JOB_NODELIST"])
        env.update(rendezvous_env(env, master))
        name = run_name(self.name, self.base_name, job_id)
        argv = [sys.executable, "-m", "b2b.train", "--config", self.config, *self.overrides, f"name={name}"]
        restarts = env.get("SLURM_RESTART_COUNT", "0")
        _log(rank, f"job {job_id} (restart {restarts}) on {socket.gethostname()}: world {env['WORLD_SIZE']}, "
                   f"master {master}:{env['MASTER_PORT']}, run {self._run_path()}")  # fmt: skip
        # submitit installed its handlers before calling this: wrap its SIGUSR2 handler
        signal.signal(signal.SIGUSR2, self._on_usr2(signal.getsignal(signal.SIGUSR2)))
        self._child = subprocess.Popen(argv, cwd=self.workdir, env=env, preexec_fn=_ignore_usr2)
        try:
            code = self._wait()
        except submitit.core.utils.UncompletedJobError as exc:
            # submitit's handler on rank 0 did not requeue: the run had finished, or time-outs ran out
            _log(rank, f"not requeued: {exc}")
            code = self._child.wait()
        status = self._status()
        _log(rank, f"trainer exited with {code}: {status or 'no status written'}")
        if code != 0 and not self._preempted:
            raise RuntimeError(f"trainer (rank {rank}) failed with exit status {code}; see the log above")
        # preempted: rank 0 requeues the job; a rank whose trainer was killed by the step's teardown
        # after the save is not a failure
        return status

    def checkpoint(self) -> submitit.helpers.DelayedSubmission | None:
        """Called by submitit on rank 0, in its SIGUSR2 handler, before it requeues the job.

        The trainer got the signal too and saves collectively with the other ranks at its next
        step boundary: wait for it, at most ``save_timeout_s``. Returning a submission requeues the
        job; a run that finished meanwhile is not requeued (None).
        """
        if self._child is None:
            _log(0, "preempted before the trainer started; requeueing")
            return submitit.helpers.DelayedSubmission(dataclasses.replace(self))
        code = self._wait(self.save_timeout_s)
        status = self._status()
        if code is None:
            _log(0, f"trainer did not exit within {self.save_timeout_s:.0f} s of SIGUSR2; requeueing: the "
                    "run resumes from its last complete checkpoint")  # fmt: skip
        elif code == 0 and status.get("state") == "finished":
            _log(0, f"run finished before the preemption took effect: {status}; not requeueing")
            return None
        else:
            _log(0, f"trainer exited with {code}: {status}; requeueing")
        return submitit.helpers.DelayedSubmission(dataclasses.replace(self))
