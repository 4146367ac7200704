"""Run a command line as a user would and keep what they see: the exit status, stdout and stderr.

A fresh Python process per command costs 5–9 s on 2 busy cores, nearly all of it importing torch and
b2b, and the fault cases (tests/bad_input_cases.py) run about 150 of them. So :class:`Runner` starts one
*zygote* process (``python tests/fault_runner.py --serve``) that imports b2b once and then forks a child
per command. The child is a real process of its own: it takes the command's environment, working
folder and arguments, runs the command's own entry point with :mod:`runpy` (the ``b2b`` console
script, ``-m module`` or a script file, as the interpreter would), writes to its own stdout and stderr
files, prints an uncaught exception's traceback as the interpreter does, runs its exit handlers and
exits with the command's status. What it shares with the zygote is only modules already imported.

Commands whose behaviour depends on how the interpreter starts (``PYTHONPATH``, ``sitecustomize``) run
as fresh processes (``fresh=True``), and ``Runner(preload=False)`` runs every command fresh, to compare.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

BIN = Path(sys.executable).parent
# What the zygote imports before its first fork: the commands' entry points and what they import.
PRELOAD = (
    "b2b.train", "b2b.cli.main", "b2b.cli.shards", "b2b.cli.sample", "b2b.cli.eval", "b2b.cli.export",
    "b2b.training.describe", "submitit",
)  # fmt: skip
# One thread per process and no tracker: the machine is shared and has no network.
BASE_ENV = {
    "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "WANDB_MODE": "disabled",
    "COLUMNS": "110",
}  # fmt: skip
PROGRESS_BAR = re.compile(r"\d+%\|")  # a tqdm line, e.g. "real val samples:  40%|####  | 6/15"


@dataclass
class Outcome:
    """What one command showed the user."""

    exit: int  # negative: killed by that signal (-9 when it ran past the timeout)
    stdout: str
    stderr: str
    seconds: float


def user_lines(text: str) -> list[str]:
    """The non-empty lines of ``text`` that say something: no argparse usage block, no progress bars."""
    lines, in_usage = [], False
    for line in text.splitlines():
        if line.startswith("usage:"):
            in_usage = True
            continue
        if in_usage and line.startswith(" "):
            continue
        in_usage = False
        if line.strip() and not PROGRESS_BAR.search(line):
            lines.append(line)
    return lines


def command_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a command runs in: this one without ``PYTHONPATH``, plus BASE_ENV and ``extra``."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**env, **BASE_ENV, **(extra or {})}


def executable(argv: list[str]) -> list[str]:
    """``argv`` with ``python`` and ``b2b`` resolved to this environment's interpreter and console script."""
    if argv[0] == "python":
        return [sys.executable, *argv[1:]]
    if argv[0] == "b2b" and (BIN / "b2b").exists():
        return [str(BIN / "b2b"), *argv[1:]]
    return list(argv)


class Runner:
    """Runs commands in children of one zygote process (``preload``) or as fresh processes.

    Parameters
    ----------
    folder:
        Where the zygote's own stderr (``zygote.log``: its failures, never a command's output) and each
        command's stdout and stderr files go.
    preload:
        False runs every command as a fresh process (slower; the reference the zygote is compared with).
    timeout:
        Seconds a command may run before it and every process it started are killed.
    """

    def __init__(self, folder: Path, *, preload: bool = True, timeout: float = 180.0):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.log, self.preload, self.timeout = folder, folder / "zygote.log", preload, timeout
        self._zygote: subprocess.Popen | None = None
        self._pending = b""
        self._requests = 0  # each request and both its replies carry its number
        self._runs = 0  # each command writes its own stdout and stderr files
        self._child = 0  # the command running now, if any

    def run(
        self, argv: list[str], cwd: Path, env: dict[str, str] | None = None, fresh: bool = False
    ) -> Outcome:
        """Run ``argv`` (``python``/``b2b`` resolved) in ``cwd``, ``env`` added to the command environment."""
        start = time.perf_counter()
        self._runs += 1
        out, err = self.folder / f"{self._runs}.stdout", self.folder / f"{self._runs}.stderr"
        try:
            if fresh or not self.preload:
                code = self._run_fresh(executable(argv), cwd, command_env(env), out, err)
            else:
                code = self._run_forked(argv, cwd, command_env(env), out, err)
            stdout = out.read_text(errors="replace")
            stderr = err.read_text(errors="replace")
        finally:
            out.unlink(missing_ok=True)
            err.unlink(missing_ok=True)
        return Outcome(code, stdout, stderr, time.perf_counter() - start)

    def close(self) -> None:
        """Stop the zygote (closing its stdin ends it)."""
        if self._zygote is not None:
            self._zygote.stdin.close()
            try:
                self._zygote.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._zygote.kill()
            self._zygote = None

    # -- fresh processes --------------------------------------------------------------------------------

    def _run_fresh(self, argv: list[str], cwd: Path, env: dict[str, str], out: Path, err: Path) -> int:
        with open(out, "wb") as stdout, open(err, "wb") as stderr:
            proc = subprocess.Popen(
                argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                start_new_session=True,
            )  # fmt: skip
            try:
                return proc.wait(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc.pid)
                return proc.wait()

    # -- children of the zygote -------------------------------------------------------------------------

    def _start_zygote(self) -> subprocess.Popen:
        if self._zygote is None or self._zygote.poll() is not None:
            with open(self.log, "ab") as log:
                self._zygote = subprocess.Popen(
                    [sys.executable, __file__, "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    stderr=log, env=command_env(),
                )  # fmt: skip
            self._pending = b""
            ready = self._reply(None)  # everything is imported
            if ready != {"ready": True}:
                self.close()
                raise RuntimeError(f"the fault runner's zygote started with {ready!r}; see {self.log}")
        return self._zygote

    def _reply(self, deadline: float | None) -> dict | None:
        """The zygote's next reply line, or None when ``deadline`` (perf_counter seconds) passed first."""
        fd = self._zygote.stdout.fileno()
        while b"\n" not in self._pending:
            wait = None if deadline is None else max(0.0, deadline - time.perf_counter())
            if not select.select([fd], [], [], wait)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError(f"the fault runner's zygote died; see {self.log}")
            self._pending += chunk
        line, self._pending = self._pending.split(b"\n", 1)
        try:
            return json.loads(line)
        except json.JSONDecodeError as exc:
            raise RuntimeError(f"the fault runner's zygote wrote {line[:200]!r}; see {self.log}") from exc

    def _run_forked(self, argv: list[str], cwd: Path, env: dict[str, str], out: Path, err: Path) -> int:
        try:
            return self._request(argv, cwd, env, out, err)
        except BaseException:  # a reply left unread would answer the next request: start afresh
            if self._child:
                _kill_group(self._child)
            if self._zygote is not None:
                self._zygote.kill()
                self._zygote.wait()
                self._zygote = None
            raise

    def _request(self, argv: list[str], cwd: Path, env: dict[str, str], out: Path, err: Path) -> int:
        zygote = self._start_zygote()
        self._requests += 1
        request = {"id": self._requests, "argv": argv, "cwd": str(cwd), "env": env, "stdout": str(out),
                   "stderr": str(err)}  # fmt: skip
        zygote.stdin.write(json.dumps(request).encode() + b"\n")
        zygote.stdin.flush()
        self._child = pid = self._expect(self._reply(None), "pid")
        reply = self._reply(time.perf_counter() + self.timeout)
        if reply is None:  # past the timeout: the child leads its own session, so this kills what it started
            _kill_group(pid)
            reply = self._reply(None)
        self._child = 0
        return self._expect(reply, "exit")

    def _expect(self, reply: dict | None, key: str) -> int:
        """``reply[key]`` if ``reply`` answers the request just sent; otherwise say what it answered."""
        if reply is None or reply.get("id") != self._requests or key not in reply:
            log = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise RuntimeError(f"the fault runner's zygote answered {reply!r} to request "
                               f"{self._requests} (expected its {key!r}); its log ends:\n{log}")  # fmt: skip
        return reply[key]


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:  # it ended on its own meanwhile
        pass


# ---------------------------------------------------------------------------------------------------
# The zygote (this file run as a script)


def _serve() -> None:
    import importlib

    # Replies go to a descriptor of their own: whatever an import or a process it starts prints to
    # stdout goes to the log (stderr), so a stray line can never be read as a reply.
    global _replies
    _replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception as exc:  # a broken import is the command's to show: its child imports it again
            print(f"fault_runner: preloading {name} failed: {exc!r}", file=sys.stderr, flush=True)
    sys.modules.pop("b2b.train", None)  # `-m b2b.train` runs it as __main__; runpy warns if already imported
    _send({"ready": True})
    for line in sys.stdin.buffer:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _replies.close()  # the child is the command: it never writes a reply
            _child(request)  # never returns
        _send({"id": request["id"], "pid": pid})
        _, status = os.waitpid(pid, 0)
        _send({"id": request["id"], "exit": os.waitstatus_to_exitcode(status)})


_replies = sys.stdout  # the zygote's reply stream (set by _serve)


def _send(message: dict) -> None:
    _replies.write(json.dumps(message) + "\n")
    _replies.flush()


def _child(request: dict) -> None:
    """Become the command: its session, files, folder and environment; run it; exit with its status."""
    code = 1
    try:
        os.setsid()
        write = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, request["stdout"], write),
                                (2, request["stderr"], write)):  # fmt: skip
            opened = os.open(path, flags, 0o644)
            os.dup2(opened, fd)
            os.close(opened)
        sys.stdin = sys.__stdin__ = open(0, closefd=False)
        sys.stdout = sys.__stdout__ = open(1, "w", closefd=False, encoding="utf-8")
        sys.stderr = sys.__stderr__ = open(2, "w", closefd=False, encoding="utf-8", errors="backslashreplace")
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        code = _run_command(request["argv"])
    finally:
        _exit(code)


def _run_command(argv: list[str]) -> int:
    """Run ``argv`` as the interpreter would; return its exit status (an uncaught exception: 1)."""
    import runpy

    try:
        if argv[0] == "python" and argv[1] == "-m":
            sys.argv = [argv[2], *argv[3:]]
            sys.path[0] = os.getcwd()
            runpy.run_module(argv[2], run_name="__main__", alter_sys=True)
        else:
            script = str(BIN / "b2b") if argv[0] == "b2b" else argv[1]
            sys.argv = [script, *(argv[1:] if argv[0] == "b2b" else argv[2:])]
            sys.path[0] = str(Path(script).resolve().parent)
            runpy.run_path(script, run_name="__main__")
        return 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    except BaseException as exc:
        exc.__traceback__ = _command_frames(exc.__traceback__)  # the traceback the user would see
        sys.excepthook(type(exc), exc, exc.__traceback__)
        return 1


def _command_frames(tb: TracebackType | None) -> TracebackType | None:
    """``tb`` without its first frames, this file's and runpy's: the interpreter shows only the command's."""
    import runpy

    ours = {__file__, runpy.__file__, "<frozen runpy>"}
    while tb is not None and tb.tb_frame.f_code.co_filename in ours:
        tb = tb.tb_next
    return tb


def _exit(code: int) -> None:
    """What the interpreter does at exit: join threads, run exit handlers, flush; then leave at once."""
    import atexit
    import threading

    try:
        threading._shutdown()  # waits for non-daemon threads, as a real exit does
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code & 0xFF)


if __name__ == "__main__" and sys.argv[1:] == ["--serve"]:
    _serve()
