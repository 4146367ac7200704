"""The machinery of the fault cases (tests/bad_input_cases.py): a case, its shared inputs, its judgement.

A :class:`Case` is a command line (``b2b ...``, ``python -m b2b.train``, ``python launch/submit.py``),
the files to plant first, and what the user must see: the exit status and one clear line, the last
non-empty line of stderr, matching a regular expression, with no traceback. :func:`run_case` plants the
files in the case's own folder, runs the command (tests/fault_runner.py) and :func:`judge` compares.

Paths in commands and messages are written with placeholders: ``{case}`` is the case's own empty folder,
``{dir}`` the temporary folder, ``{repo}`` the repository, and the rest name the small real inputs the
cases share (:class:`Inputs`, each built on first use): ``{lpd}`` 12 LPD-5 songs and ``{shards}`` the
shards built from them (tests/conftest.py), ``{other_shards}`` shards of another roll spec without a val
split, ``{odd_shards}`` shards of a shape the networks cannot produce, ``{runs}`` the folder of every
run, ``{run}`` a finished two-step run of the tiny model, ``{export}`` its exported generator and
``{samples}`` two samples of it. ``{tiny}`` stands for the tiny model's overrides (:data:`TINY`) and
``{tiny_shards_args}`` for the options the tiny shards are built with.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from conftest import TINY_SHARDS_ARGS
from fault_runner import Outcome, Runner, user_lines
from test_hardening import rewrite_digest
from test_train import overrides

REPO = Path(__file__).resolve().parent.parent

# The tiny model of tests/test_train.py on the tiny shards, two steps with a checkpoint after each.
TINY = overrides(
    Path("{shards}"), Path("{runs}"), "t", train__steps=2, checkpoint__every=1, checkpoint__keep=10
)
# Arguments that stand for several: a case writes the name, the command gets the list.
MULTI = {"{tiny}": TINY, "{tiny_shards_args}": TINY_SHARDS_ARGS}
PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")

Setup = Callable[["Inputs", Path], "contextlib.AbstractContextManager | None"]


def text(message: str) -> str:
    """A regular expression for ``message`` taken literally, except that ``…`` stands for anything."""
    return ".*".join(re.escape(part) for part in message.split("…"))


@dataclass(frozen=True)
class Case:
    """One kind of bad input or fault, the command that meets it and what the user must see."""

    id: str
    area: str  # the command or subsystem: config, shards build, train, sample, ...
    kind: str  # what is wrong (Markdown)
    argv: tuple[str, ...]  # with placeholders (see the module docstring)
    exit: int
    message: str  # a regular expression the one line must match in full (placeholders for paths)
    setup: tuple[Setup, ...] = ()  # run in order in the empty {case} folder; a returned context is held
    env: dict[str, str] = field(default_factory=dict)  # added to the environment (placeholders allowed)
    stream: str = "stderr"  # "stdout": a command that succeeds says it in a line of stdout
    xfail: str = ""  # why this is not one clear line today (a b2b bug): the test is xfail(strict)
    slow: bool = False  # trains, or starts a fresh interpreter
    fresh: bool = False  # needs a fresh interpreter (its behaviour depends on how Python starts)
    no_gpu: bool = False  # the fault is "no GPU": skipped on a machine with one
    check: Callable[[Path], str | None] | None = None  # after the run: a problem on disk, or None


@dataclass
class Verdict:
    """What a case showed, as the table writes it, and whether it is what the case expects."""

    line: str  # the one line (placeholders for paths), or what stood in its place
    problems: list[str]  # empty: as expected
    lines_before: int  # other lines on the same stream before it (warnings about single files)

    @property
    def ok(self) -> bool:
        return not self.problems


# ---------------------------------------------------------------------------------------------------
# The shared inputs


class Inputs:
    """The temporary folder, the runner and the small real inputs the cases share (built on first use)."""

    def __init__(self, root: Path, runner: Runner, lpd: Path, shards: Path):
        self.root, self.runner = root, runner
        self.paths: dict[str, Path] = {
            "dir": root,
            "repo": REPO,
            "lpd": lpd,
            "shards": shards,
            "runs": root / "runs",
        }
        self._failed: dict[str, Exception] = {}

    def path(self, name: str) -> Path:
        """The input a placeholder names, built now if it is not yet."""
        if name not in self.paths:
            if name in self._failed:
                raise self._failed[name]
            try:
                self.paths[name] = getattr(self, f"_build_{name}")()
            except Exception as exc:  # every case that needs it fails with the same message, built once
                self._failed[name] = exc
                raise
        return self.paths[name]

    def expand(self, value: str, folder: Path) -> str:
        return PLACEHOLDER.sub(lambda m: str(folder if m[1] == "case" else self.path(m[1])), value)

    def command(self, case: Case, folder: Path) -> list[str]:
        """The case's command line with every placeholder filled in."""
        args = [a for arg in case.argv for a in MULTI.get(arg, [arg])]
        return [self.expand(arg, folder) for arg in args]

    def placeholders(self, message: str, folder: Path) -> str:
        """``message`` with the temporary paths in it written as placeholders (the longest first)."""
        known = {**{f"{{{k}}}": v for k, v in self.paths.items()}, "{case}": folder}
        pairs = [(str(p), k) for k, p in known.items()] + [(str(p.resolve()), k) for k, p in known.items()]
        for path, name in sorted(pairs, key=lambda pair: -len(pair[0])):
            message = message.replace(path, name)
        message = re.sub(r"\.tmp-\d+", ".tmp-PID", message)  # temporary names carry a process id
        return re.sub(r"\b\d{8}-\d{6}\b", "YYYYMMDD-HHMMSS", message)  # and folders their time

    def _run_or_fail(self, what: str, argv: list[str]) -> None:
        outcome = self.runner.run(argv, self.root)
        if outcome.exit != 0:
            raise RuntimeError(f"building {what} failed (exit {outcome.exit}):\n{outcome.stderr[-3000:]}")

    def _shards_like(self, name: str, *extra: str) -> Path:
        out = self.root / name
        argv = ["b2b", "shards", "build", "--source", "lpd", "--input", str(self.paths["lpd"]), "--output"]
        self._run_or_fail(
            name, [*argv, str(out), *TINY_SHARDS_ARGS, "--workers", "1", "--no-progress", *extra]
        )
        return out

    def _build_other_shards(self) -> Path:
        """Shards of another roll spec ([5, 16, 36]) and without a val split."""
        return self._shards_like("shards-other", "--n-pitches", "36", "--val-fraction", "0")

    def _build_odd_shards(self) -> Path:
        """Shards of shape [5, 16, 47]: a pitch size the networks cannot produce."""
        return self._shards_like("shards-odd", "--n-pitches", "47")

    def _build_run(self) -> Path:
        """A finished two-step run of the tiny model with a checkpoint at each step."""
        args = [self.expand(arg, self.root) for arg in TINY]
        self._run_or_fail("the base run", ["python", "-m", "b2b.train", *args, "name=base"])
        return self.paths["runs"] / "base"

    def _build_export(self) -> Path:
        out = self.root / "gen.safetensors"
        self._run_or_fail(
            "the export", ["b2b", "export", "--checkpoint", str(self.path("run")), "--out", str(out)]
        )
        return out

    def _build_samples(self) -> Path:
        out = self.root / "samples"
        argv = ["b2b", "sample", "--checkpoint", str(self.path("export")), "--n", "2", "--measure", "8"]
        self._run_or_fail("the samples", [*argv, "--out", str(out), "--no-progress", "--synth", "fallback",
                                          "--sample-rate", "8000"])  # fmt: skip
        return out


# ---------------------------------------------------------------------------------------------------
# Running a case and judging what it showed


def run_case(case: Case, inputs: Inputs) -> tuple[Outcome, Verdict]:
    """Plant the case's files in a fresh ``{case}`` folder, run its command, judge what it showed."""
    folder = inputs.root / "cases" / case.id
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    with contextlib.ExitStack() as held:
        for step in case.setup:
            context = step(inputs, folder)
            if context is not None:
                held.enter_context(context)
        argv = inputs.command(case, folder)
        env = {k: inputs.expand(v, folder) for k, v in case.env.items()}
        outcome = inputs.runner.run(argv, inputs.root, env, fresh=case.fresh)
    return outcome, judge(case, outcome, lambda s: inputs.placeholders(s, folder), folder)


def judge(case: Case, outcome: Outcome, placeholders: Callable[[str], str], folder: Path) -> Verdict:
    """The case's one line and what differs from what it expects (nothing: as expected)."""
    stream = outcome.stderr if case.stream == "stderr" else outcome.stdout
    lines = [placeholders(line).strip() for line in user_lines(stream)]
    if case.stream == "stderr":
        line = lines[-1] if lines else ""
    else:  # a command that succeeds logs more than its one line: the line must be one of stdout's
        line = next(
            (found for found in lines if re.fullmatch(case.message, found)), lines[0] if lines else ""
        )
    problems = []
    if outcome.exit != case.exit:
        problems.append(f"exit {outcome.exit}, expected {case.exit}")
    if "Traceback (most recent call last)" in outcome.stderr:
        problems.append("a traceback")
        line = f"Traceback … {line}"
    elif not lines:
        problems.append(f"nothing on {case.stream}")
        first = next(iter(user_lines(outcome.stdout)), "")
        line = (
            f"(nothing on stderr; stdout: {placeholders(first)})" if first else f"(nothing on {case.stream})"
        )
    elif not re.fullmatch(case.message, line):
        spans = sum(1 for other in lines if not re.match(r"(\S+( \S+)?: )?warning: ", other))
        problems.append(f"the message spans {spans} lines" if spans > 1 else "another message")
    if case.check is not None and (problem := case.check(folder)):
        problems.append(problem)
    return Verdict(line, problems, max(0, len(lines) - 1) if case.stream == "stderr" else 0)


# ---------------------------------------------------------------------------------------------------
# Setups: what a case plants in its folder


def write(name: str, content: str | bytes) -> Setup:
    """``content`` written to ``{case}/name``."""

    def plant(inputs: Inputs, folder: Path) -> None:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)

    return plant


def copy(source: str, name: str = "") -> Setup:
    """The shared input ``source`` (a placeholder's name) copied to ``{case}/name`` (``{case}`` itself)."""

    def plant(inputs: Inputs, folder: Path) -> None:
        shutil.copytree(inputs.path(source), folder / name, symlinks=True, dirs_exist_ok=True)

    return plant


def checkpoint(name: str = "step-2") -> Setup:
    """The base run's checkpoint step-2 copied to ``{case}/name``."""

    def plant(inputs: Inputs, folder: Path) -> None:
        shutil.copytree(inputs.path("run") / "checkpoints" / "step-2", folder / name)

    return plant


def run_copy(name: str) -> Setup:
    """The base run copied to ``{runs}/name`` (removed first: a run folder outlives its case folder)."""

    def plant(inputs: Inputs, folder: Path) -> None:
        target = inputs.paths["runs"] / name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(inputs.path("run"), target, symlinks=True)

    return plant


def edit_json(name: str, edit: Callable[[dict], object], digest: str = "") -> Setup:
    """``{case}/name`` read as JSON, changed by ``edit`` and written back; with ``digest``, the
    checkpoint folder ``{case}/digest``'s COMPLETE is made to agree with the changed file."""

    def plant(inputs: Inputs, folder: Path) -> None:
        path = folder / name
        values = json.loads(path.read_text())
        edit(values)
        path.write_text(json.dumps(values))
        if digest:
            rewrite_digest(folder / digest, path.name)

    return plant


def manifest(edit: Callable[[dict], object]) -> Setup:
    return edit_json("manifest.json", edit)


def truncate(name: str, size: int, digest: str = "") -> Setup:
    """``{case}/name`` cut to ``size`` bytes (COMPLETE in ``{case}/digest`` agreeing, with ``digest``)."""

    def plant(inputs: Inputs, folder: Path) -> None:
        path = folder / name
        path.write_bytes(path.read_bytes()[:size])
        if digest:
            rewrite_digest(folder / digest, path.name)

    return plant


def remove(name: str) -> Setup:
    return lambda inputs, folder: (folder / name).unlink()


def held_lock(path: str, holder: dict | None = None) -> Setup:
    """The file ``path`` (placeholders allowed) locked (flock) by this process while the command runs, as
    a running build or trainer holds it; ``holder`` is written into it as the trainer's lock records who
    holds it."""

    @contextlib.contextmanager
    def locked(path: Path) -> Iterator[None]:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if holder:
                lock.write(json.dumps(holder) + "\n")
                lock.flush()
            yield

    return lambda inputs, folder: locked(Path(inputs.expand(path, folder)))


def mkdir(name: str) -> Setup:
    return lambda inputs, folder: (folder / name).mkdir(parents=True)


def rehash(checkpoint_folder: str, name: str) -> Setup:
    """COMPLETE of ``{case}/checkpoint_folder`` made to agree with its (changed) file ``name``."""
    return lambda inputs, folder: rewrite_digest(folder / checkpoint_folder, name)
