"""Submit a b2b training run to Slurm (through submitit): many nodes, requeued on time limits and preemption.

    python launch/submit.py --config configs/demo.yaml [key=value ...] --nodes 2 --gpus-per-node 8 \\
        [--partition P] [--time MIN] [--account A] [--qos Q] [--constraint C] [--cpus-per-task K] [--dry-run]

One Slurm task per rank (per GPU; ``--gpus-per-node 0``: one CPU rank per node, over gloo). Each task
runs ``python -m b2b.train`` as a child process with RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT
taken from the allocation (see ``slurm_job.py`` for why a child). The config is validated and the
partition's resources are checked before anything is submitted; errors are one line, exit status 2.
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

try:
    import cloudpickle
    import submitit
    from submitit.slurm.slurm import SlurmExecutor
except ImportError:
    print("submit: error: launching on Slurm needs submitit: pip install 'b2b[slurm]'", file=sys.stderr)
    sys.exit(2)
import slurm_job  # launch/ is on sys.path: it is this script's folder

from b2b.config import load_config
from b2b.errors import B2BError
from b2b.training.preflight import validate_for_training

USR2_TRAP = [
    "# scancel --signal=USR2 --full also signals this shell: trap it so it is not killed by default",
    "trap 'echo \"batch shell: SIGUSR2 (the ranks save, then rank 0 requeues the job)\"' USR2",
]


# Values that reach #SBATCH lines: Slurm names and expressions, never a newline, space or quote.
SLURM_VALUE = re.compile(r"[A-Za-z0-9_.,:|&!*()\[\]@%+=-]{1,200}")


def check_slurm_values(args: argparse.Namespace) -> None:
    """Refuse a partition, account, QOS or constraint that could break out of its #SBATCH line."""
    for key in ("partition", "account", "qos", "constraint"):
        value = getattr(args, key)
        if value is not None and not SLURM_VALUE.fullmatch(value):
            raise B2BError(
                f"--{key} {value!r}: not a Slurm {key} (letters, digits and _.,:|&!*()[]@%+=- only; "
                "no spaces, quotes or newlines)"
            )


# ---------------------------------------------------------------------------------------------------
# What the cluster has


def _scontrol_records(kind: str) -> list[dict[str, str]]:
    """``scontrol show <kind> -o``, one dict of KEY=VALUE fields per partition or node."""
    proc = subprocess.run(["scontrol", "show", kind, "-o"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise B2BError(f"cannot query Slurm (`scontrol show {kind}`): {proc.stderr.strip()}")
    return [
        dict(item.split("=", 1) for item in line.split() if "=" in item)
        for line in proc.stdout.splitlines()
        if line.strip()
    ]


def slurm_minutes(text: str) -> float | None:
    """Minutes in Slurm's time format (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH[:MM[:SS]]``); None: none."""
    if text.upper() in ("UNLIMITED", "INFINITE", "NONE", ""):
        return None
    days, _, clock = text.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    if days:
        hours, minutes, seconds = (parts + [0, 0])[:3]
    elif len(parts) == 3:
        hours, minutes, seconds = parts
    else:
        hours, (minutes, seconds) = 0, (parts + [0])[:2]
    return int(days or 0) * 1440 + hours * 60 + minutes + seconds / 60


def gres_gpus(gres: str) -> int:
    """GPUs in a node's Gres field, e.g. ``gpu:a100:8(S:0-1)`` -> 8, ``(null)`` -> 0."""
    gres = re.sub(r"\([^)]*\)", "", gres)
    total = 0
    for entry in gres.split(","):
        parts = entry.split(":")
        if parts[0] == "gpu":
            total += int(parts[-1]) if parts[-1].isdigit() else 1
    return total


def check_resources(
    partition: str | None,
    nodes: int,
    tasks_per_node: int,
    cpus_per_task: int,
    gpus_per_node: int,
    minutes: int,
) -> str:
    """Check the request against the partition (Slurm's default one if None) and return its name.

    Raises
    ------
    B2BError
        Unknown partition (listing the valid ones), or more nodes, GPUs, CPUs or time than it has.
    """
    partitions = {p["PartitionName"]: p for p in _scontrol_records("partition")}
    valid = ", ".join(sorted(partitions)) or "(none)"
    if partition is None:
        defaults = [name for name, p in partitions.items() if p.get("Default") == "YES"]
        if not defaults:
            raise B2BError(f"this cluster has no default partition: pass --partition, one of: {valid}")
        partition = defaults[0]
    elif partition not in partitions:
        raise B2BError(f"--partition {partition!r}: no such partition; this cluster has: {valid}")
    info = partitions[partition]
    members = [n for n in _scontrol_records("node") if partition in n.get("Partitions", "").split(",")]
    limit = info.get("MaxNodes", "UNLIMITED")
    if limit.isdigit() and nodes > int(limit):
        raise B2BError(f"--nodes {nodes}: partition {partition!r} allows at most {limit} nodes per job")
    if nodes > len(members):
        raise B2BError(f"--nodes {nodes}: partition {partition!r} has only {len(members)} nodes")
    cpus = tasks_per_node * cpus_per_task
    fitting = [
        n
        for n in members
        if int(n.get("CPUTot", 0)) >= cpus and gres_gpus(n.get("Gres", "")) >= gpus_per_node
    ]
    if len(fitting) < nodes:
        kinds = sorted({(int(n.get("CPUTot", 0)), gres_gpus(n.get("Gres", ""))) for n in members})
        have = "; ".join(f"{c} CPUs and {g} GPUs" for c, g in kinds)
        raise B2BError(
            f"--nodes {nodes} --gpus-per-node {gpus_per_node} --cpus-per-task {cpus_per_task}: each node "
            f"must have {gpus_per_node} GPUs and {cpus} CPUs ({tasks_per_node} task(s) x {cpus_per_task}), "
            f"but only {len(fitting)} node(s) of partition {partition!r} do; its nodes have {have}"
        )
    max_minutes = slurm_minutes(info.get("MaxTime", "UNLIMITED"))
    if max_minutes is not None and minutes > max_minutes:
        raise B2BError(
            f"--time {minutes}: partition {partition!r} allows at most {info['MaxTime']} "
            f"({max_minutes:g} minutes)"
        )
    return partition


# ---------------------------------------------------------------------------------------------------
# The command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python launch/submit.py", description=__doc__.split("\n\n")[0], allow_abbrev=False
    )
    parser.add_argument("--config", required=True, help="YAML config file (e.g. configs/demo.yaml)")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.steps=100"
    )
    parser.add_argument("--nodes", type=int, required=True, help="number of nodes")
    parser.add_argument(
        "--gpus-per-node", type=int, required=True,
        help="GPUs per node; one rank (Slurm task) per GPU. 0: one CPU rank per node (gloo)",
    )  # fmt: skip
    parser.add_argument("--partition", help="Slurm partition (default: the cluster's default partition)")
    parser.add_argument(
        "--time", type=int, default=60, help="time limit of each job run, in minutes (default 60)"
    )
    parser.add_argument("--account", help="Slurm account to charge")
    parser.add_argument("--qos", help="Slurm quality of service")
    parser.add_argument("--constraint", help="Slurm node constraint (features), e.g. a100")
    parser.add_argument(
        "--cpus-per-task", type=int,
        help="CPUs per rank (default: data.num_workers + 1)",
    )  # fmt: skip
    parser.add_argument(
        "--signal-delay", type=int, default=120,
        help="seconds before the time limit at which Slurm sends SIGUSR2 (the grace for one step and a save)",
    )  # fmt: skip
    parser.add_argument(
        "--max-timeouts", type=int, default=20,
        help="how often a job that reaches its time limit is requeued (preemptions do not count; default 20)",
    )  # fmt: skip
    parser.add_argument("--dry-run", action="store_true", help="print the sbatch script and exit")
    return parser


MAX_GPUS_PER_NODE = 64  # more than any node has; a larger number is a typo
MAX_MINUTES = 366 * 24 * 60


def _check_numbers(args: argparse.Namespace) -> None:
    for flag, value, low in [
        ("--nodes", args.nodes, 1), ("--gpus-per-node", args.gpus_per_node, 0), ("--time", args.time, 1),
        ("--cpus-per-task", args.cpus_per_task, 1), ("--signal-delay", args.signal_delay, 10),
        ("--max-timeouts", args.max_timeouts, 0),
    ]:  # fmt: skip
        if value is not None and value < low:
            raise B2BError(f"{flag} {value}: must be at least {low}")
    for flag, value, high, why in [
        ("--gpus-per-node", args.gpus_per_node, MAX_GPUS_PER_NODE, "GPUs per node"),
        ("--time", args.time, MAX_MINUTES, "minutes (a year; Slurm's own limit is the partition's MaxTime)"),
    ]:  # fmt: skip
        if value > high:
            raise B2BError(f"{flag} {value}: at most {high} {why}")
    if args.signal_delay >= args.time * 60:
        raise B2BError(
            f"--signal-delay {args.signal_delay} s must be shorter than --time {args.time} min, "
            "or the job is signalled before it starts"
        )


def _explicit_name(overrides: list[str]) -> bool:
    return any(item.split("=", 1)[0].strip() == "name" for item in overrides)


def sbatch_parameters(args: argparse.Namespace, cpus_per_task: int, job_name: str) -> dict:
    """submitit's SlurmExecutor parameters for the command line's request."""
    params: dict = {
        "job_name": job_name,
        "nodes": args.nodes,
        "ntasks_per_node": max(1, args.gpus_per_node),  # one task per rank
        "cpus_per_task": cpus_per_task,
        "time": args.time,
        "signal_delay_s": args.signal_delay,
        "stderr_to_stdout": True,  # one log per rank: <job>_<rank>_log.out
        # --kill-on-bad-exit: a crashed rank ends the step instead of leaving the others hanging;
        # --cpus-per-task again: since Slurm 22.05 srun no longer inherits it from sbatch
        "srun_args": ["--kill-on-bad-exit=1", f"--cpus-per-task={cpus_per_task}"],
        "setup": [
            "# launch/submit.py submits this held, creates the log folder, then releases it",
            *USR2_TRAP,
        ],
        "additional_parameters": {"hold": True},
    }
    if args.gpus_per_node:
        params["gpus_per_node"] = args.gpus_per_node
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(args, key):
            params[key] = getattr(args, key)
    return params


def _submit_held(executor: SlurmExecutor, task: slurm_job.TrainerTask, run_root: Path) -> submitit.Job:
    """Submit held, create the job's log folder (Slurm opens the logs there), then release it."""
    before = set(run_root.glob("*.pkl")) if run_root.is_dir() else set()
    try:
        job = executor.submit(task)
    except (
        subprocess.CalledProcessError,
        submitit.core.utils.FailedJobError,
        submitit.core.utils.FailedSubmissionError,
    ) as exc:
        for leftover in set(run_root.glob("*.pkl")) - before:  # submitit's pickle, never moved
            leftover.unlink()
        raise B2BError(f"sbatch refused the job: {str(exc).strip().splitlines()[-1]}") from None
    for link in run_root.glob(".submission_file_*.sh"):  # submitit leaves a link to the script here
        if link.is_symlink() and link.resolve() == job.paths.submission_file.resolve():
            link.unlink()
    job.paths.folder.mkdir(parents=True, exist_ok=True)
    released = subprocess.run(["scontrol", "release", job.job_id], capture_output=True, text=True)
    if released.returncode != 0:
        subprocess.run(["scancel", job.job_id], capture_output=True)
        raise B2BError(f"could not release job {job.job_id} (cancelled it): {released.stderr.strip()}")
    return job


def submit(args: argparse.Namespace, argv: list[str]) -> int:
    """Validate, then submit (or print, with ``--dry-run``) the job; return the exit status.

    ``argv`` (the command line) is echoed back as the command that resumes the run.
    """
    _check_numbers(args)
    check_slurm_values(args)
    cfg = load_config(args.config, args.overrides)
    validate_for_training(cfg)
    explicit = cfg.name if _explicit_name(args.overrides) else None
    run_root = Path(cfg.run_dir).absolute()
    folder = run_root / slurm_job.run_name(explicit, cfg.name, "%j") / "slurm"
    cpus_per_task = args.cpus_per_task or cfg.data.num_workers + 1
    params = sbatch_parameters(args, cpus_per_task, cfg.name)
    task = slurm_job.TrainerTask(
        config=str(Path(args.config).absolute()),
        overrides=list(args.overrides),
        workdir=str(Path.cwd()),
        run_root=str(run_root),
        name=explicit,
        base_name=cfg.name,
        save_timeout_s=max(10, args.signal_delay - 20),  # leave time for the requeue itself
    )
    if args.dry_run:
        # submitit's private sbatch rendering (see b2b.compat); imported here because b2b.compat imports
        # torch, which takes seconds that a real submission does not need
        from b2b.compat import offline_slurm_executor, sbatch_script

        executor = offline_slurm_executor(folder, max_num_timeout=args.max_timeouts)
        executor.update_parameters(**params)
        print(sbatch_script(executor), end="")
        print(f"# dry run: nothing submitted, Slurm not queried; the run directory would be {folder.parent}",
              file=sys.stderr)  # fmt: skip
        return 0

    if shutil.which("sbatch") is None:
        raise B2BError("sbatch not found: run this on a Slurm login node (or use --dry-run)")
    params["partition"] = check_resources(
        args.partition, args.nodes, params["ntasks_per_node"], cpus_per_task, args.gpus_per_node, args.time
    )
    executor = SlurmExecutor(folder, max_num_timeout=args.max_timeouts)
    executor.update_parameters(**params)
    cloudpickle.register_pickle_by_value(slurm_job)  # the job imports nothing from launch/
    job = _submit_held(executor, task, run_root)

    run_path = run_root / slurm_job.run_name(explicit, cfg.name, job.job_id)
    log = job.paths.folder / f"{job.job_id}_0_log.out"
    resubmit = shlex.join(["python", "launch/submit.py", *(a for a in argv if not a.startswith("name="))])
    print(
        f"submitted job {job.job_id}: {args.nodes} node(s) x {params['ntasks_per_node']} rank(s), "
        f"partition {params['partition']}, {args.time} min per run\n"
        f"run directory: {run_path}\n"
        f"logs:          {job.paths.folder}/{job.job_id}_<rank>_log.out (one per rank)\n"
        f"follow:        tail -f {log}\n"
        f"queue:         squeue -j {job.job_id}\n"
        f"preempt:       scancel --signal=USR2 --full {job.job_id}   (saves, requeues, resumes)\n"
        f"cancel:        scancel {job.job_id}\n"
        f"resume later:  {resubmit} name={run_path.name}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_intermixed_args(argv)
    try:
        return submit(args, argv)
    except B2BError as exc:
        print(f"submit: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
