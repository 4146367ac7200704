"""A real two-node Slurm cluster on loopback, for tests (and by hand: ``python tests/slurm_cluster.py``).

Debian's slurm-wlm runs several slurmd on one host (``slurmd -N node1``, ``slurmd -N node2``), each
node listening on its own port of 127.0.0.1. Everything the daemons write (config, munge key and
socket, state, spool, logs) lives under one temporary folder, so the host's own Slurm or munge
setup, if any, is neither used nor touched. No accounting: job states come from squeue/scontrol.

``start_cluster()`` installs slurm-wlm and munge with apt-get when they are missing (root only),
starts munged, slurmctld and the two slurmd as child processes in the foreground and waits until
``sinfo`` shows both nodes idle. ``SlurmCluster.stop()`` cancels every job, waits for them to leave
and stops the daemons by their process ids, also after a failed test.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PACKAGES = ["slurm-wlm", "munge"]
PROGRAMS = ["munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol", "scancel", "srun"]
NODES = ("node1", "node2")
CPUS_PER_NODE = 2  # enough for one task of 2 CPUs or two tasks of 1 CPU per node
MEMORY_MB = 4000


class ClusterUnavailable(RuntimeError):
    """Slurm cannot be installed or started here; the message says why (tests skip with it)."""


def _free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports that are free on 127.0.0.1 right now."""
    sockets = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def ensure_installed(timeout_s: float = 400) -> None:
    """Install slurm-wlm and munge with apt-get if any of their programs is missing."""
    missing = [p for p in PROGRAMS if shutil.which(p) is None]
    if not missing:
        return
    if os.geteuid() != 0:
        raise ClusterUnavailable(f"Slurm programs {missing} are missing and installing them needs root")
    if shutil.which("apt-get") is None:
        raise ClusterUnavailable(f"Slurm programs {missing} are missing and there is no apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    steps = [
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES],
    ]
    for cmd in steps:
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise ClusterUnavailable(f"`{' '.join(cmd)}` took more than {timeout_s:.0f} s") from None
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise ClusterUnavailable(f"`{' '.join(cmd)}` failed: {' | '.join(tail)}")
    still = [p for p in PROGRAMS if shutil.which(p) is None]
    if still:
        raise ClusterUnavailable(f"after installing {PACKAGES}, programs {still} are still missing")


def _slurm_conf(root: Path, ctld_port: int, node_ports: list[int], munge_socket: Path) -> str:
    host = socket.gethostname().split(".")[0]
    nodes = "\n".join(
        f"NodeName={name} NodeHostname=localhost NodeAddr=127.0.0.1 Port={port} "
        f"CPUs={CPUS_PER_NODE} RealMemory={MEMORY_MB} State=UNKNOWN"
        for name, port in zip(NODES, node_ports, strict=True)
    )
    return f"""\
ClusterName=b2btest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool-%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd-%n.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd-%n.log
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SlurmctldTimeout=30
SlurmdTimeout=60
KillWait=30
MinJobAge=600
{nodes}
PartitionName=debug Nodes={",".join(NODES)} Default=YES MaxTime=INFINITE State=UP
PartitionName=short Nodes={",".join(NODES)} MaxTime=5 State=UP
"""


@dataclass
class SlurmCluster:
    """A running cluster: ``env`` is what a client (sbatch, squeue, launch/submit.py) needs."""

    root: Path
    env: dict[str, str]
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    _held_since: dict[str, float] = field(default_factory=dict)

    def run(self, *cmd: str, check: bool = True, timeout: float = 30) -> str:
        """Run a Slurm client command against this cluster and return its stdout."""
        proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"`{' '.join(cmd)}` failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout

    def job_state(self, job_id: str) -> str:
        """The job's state as squeue shows it (PENDING, RUNNING, COMPLETED, ...); '' once it is gone."""
        out = self.run("squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T", check=False)
        return out.strip()

    def lift_requeue_hold(self, job_id: str) -> bool:
        """Start a requeued job now instead of after its ~2 minute hold; True if it was held.

        Slurm sets a requeued batch job's BeginTime when the job has finished completing, which can
        be after squeue already shows it PENDING: call this while waiting, not once.
        """
        state = self.run("squeue", "-h", "-j", job_id, "-o", "%T %r", check=False).split()
        nodes = self.run("sinfo", "-h", "-N", "-o", "%T", check=False).split()
        if state[:2] != ["PENDING", "BeginTime"] or any(n != "idle" for n in nodes):
            self._held_since.pop(job_id, None)
            return False
        # The hold exists so that the nodes finish tearing down the previous run: starting the job the
        # moment it is pending can reach a node that still holds its revoked credential ("Job credential
        # revoked", and the job fails). Lift it only after the job has been held with idle nodes a while.
        first = self._held_since.setdefault(job_id, time.monotonic())
        if time.monotonic() - first < 3.0:
            return False
        self.run("scontrol", "update", f"jobid={job_id}", "StartTime=now", check=False)
        self._held_since.pop(job_id, None)
        return True

    def describe(self, job_id: str) -> str:
        """The job's state and reason and the nodes' states and reasons, for failure messages."""
        job = self.run("squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T %r", check=False).strip()
        nodes = self.run("sinfo", "-h", "-N", "-o", "%N %T %E", check=False).strip().replace("\n", "; ")
        return f"job {job_id}: {job or 'gone'}; nodes: {nodes}"

    def job_ids(self) -> list[str]:
        """Every job the controller still holds (in any state)."""
        return self.run("squeue", "-h", "-t", "all", "-o", "%i", check=False).split()

    def node_states(self) -> dict[str, str]:
        out = self.run("sinfo", "-h", "-N", "-o", "%N %t", check=False)
        return dict(line.split() for line in out.splitlines() if line.strip())

    def logs(self) -> str:
        """The tails of the daemons' logs, for failure messages."""
        parts = []
        for path in sorted(self.root.glob("*.log")):
            lines = path.read_text(errors="replace").splitlines()[-15:]
            parts.append(f"--- {path.name}\n" + "\n".join(lines))
        return "\n".join(parts)

    def _cancel_all(self, timeout_s: float = 60) -> None:  # KillWait is 30 s
        active = ("PENDING", "RUNNING", "COMPLETING", "REQUEUED", "SUSPENDED")
        jobs = [j for j in self.job_ids() if self.job_state(j) in active]
        if jobs:
            self.run("scancel", *jobs, check=False)
            deadline = time.time() + timeout_s
            while time.time() < deadline and any(self.job_state(j) in active for j in jobs):
                time.sleep(0.5)

    def stop(self) -> None:
        """Cancel all jobs, wait for their steps to end, then stop the daemons (by their pids)."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            try:
                self._cancel_all()
            except (OSError, subprocess.SubprocessError):
                pass  # the daemons are stopped below regardless
        for name in ["slurmd-node2", "slurmd-node1", "slurmctld", "munged"]:
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self.procs.clear()


def _start(cluster: SlurmCluster, name: str, cmd: list[str]) -> None:
    log = open(cluster.root / f"{name}.console", "w")  # noqa: SIM115 - owned by the child process
    cluster.procs[name] = subprocess.Popen(cmd, env=cluster.env, stdout=log, stderr=subprocess.STDOUT)
    log.close()


def _wait_for(cluster: SlurmCluster, what: str, ready, timeout_s: float) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        dead = [n for n, p in cluster.procs.items() if p.poll() is not None]
        if dead:
            raise ClusterUnavailable(f"{dead} exited while waiting for {what}:\n{cluster.logs()}")
        if ready():
            return
        time.sleep(0.5)
    raise ClusterUnavailable(f"timed out after {timeout_s:.0f} s waiting for {what}:\n{cluster.logs()}")


def start_cluster(root: str | Path | None = None) -> SlurmCluster:
    """Install (if needed) and start munged, slurmctld and two slurmd; return the running cluster.

    Raises
    ------
    ClusterUnavailable
        Not root, no apt-get, the install failed, or a daemon did not come up (with its log).
    """
    if os.geteuid() != 0:
        raise ClusterUnavailable("starting slurmd needs root (it runs jobs as their users)")
    ensure_installed()
    root = Path(tempfile.mkdtemp(prefix="b2b-slurm-") if root is None else root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    # munged insists on private folders and a private key
    os.chmod(root, 0o700)
    (root / "state").mkdir(exist_ok=True)
    munge_socket = root / "munge.socket"
    key = root / "munge.key"
    key.write_bytes(os.urandom(1024))
    os.chmod(key, 0o600)
    ctld_port, *node_ports = _free_ports(1 + len(NODES))
    conf = root / "slurm.conf"
    conf.write_text(_slurm_conf(root, ctld_port, node_ports, munge_socket))
    env = dict(os.environ, SLURM_CONF=str(conf))
    cluster = SlurmCluster(root=root, env=env)
    try:
        _start(
            cluster,
            "munged",
            [
                "munged", "-F", "--force", f"--socket={munge_socket}", f"--key-file={key}",
                f"--pid-file={root}/munged.pid", f"--log-file={root}/munged.log",
                f"--seed-file={root}/munged.seed",
            ],
        )  # fmt: skip
        _wait_for(cluster, "the munge socket", munge_socket.exists, 20)
        _start(cluster, "slurmctld", ["slurmctld", "-D", "-c", "-i", "-f", str(conf)])
        _wait_for(
            cluster, "slurmctld", lambda: cluster.run("scontrol", "ping", check=False).count("UP") > 0, 30
        )
        for node in NODES:
            _start(cluster, f"slurmd-{node}", ["slurmd", "-D", "-N", node, "-f", str(conf)])
        _wait_for(
            cluster,
            "both nodes idle",
            lambda: all(cluster.node_states().get(n, "").startswith("idle") for n in NODES),
            60,
        )
    except BaseException:
        cluster.stop()
        raise
    return cluster


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """The cluster for a test session; stopped at its end, also after failures.

    Skips with the reason when Slurm cannot run here (not root, no apt-get, a daemon failed). Where
    B2B_REQUIRE_SLURM or CI is set, that is a failure instead: CI must run the Slurm tests.
    """
    try:
        cluster = start_cluster(tmp_path_factory.mktemp("slurm"))
    except ClusterUnavailable as exc:
        if os.environ.get("B2B_REQUIRE_SLURM") or os.environ.get("CI"):
            pytest.fail(f"Slurm is required here (B2B_REQUIRE_SLURM/CI) but cannot run: {exc}")
        pytest.skip(f"no Slurm cluster: {exc}")
    try:
        yield cluster
    finally:
        cluster.stop()


if __name__ == "__main__":
    # By hand: start the cluster, print how to reach it, stop it on Ctrl-C or SIGTERM.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in the background
    cluster = start_cluster(sys.argv[1] if len(sys.argv) > 1 else None)
    print(f"export SLURM_CONF={cluster.env['SLURM_CONF']}\n{cluster.run('sinfo')}", flush=True)
    print("cluster running; Ctrl-C (or kill PID) stops it", flush=True)
    try:
        while True:
            time.sleep(3600)
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        cluster.stop()
