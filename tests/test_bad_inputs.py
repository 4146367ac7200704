"""Every case of tests/bad_input_cases.py: the real command on real files says one clear line.

Each case asserts the exit status, that stderr's last non-empty line is the expected message (placeholders
for the temporary paths) and that there is no traceback. Cases that do not give one clear line today are
xfail(strict=True), with the reason: a fix makes them pass, and then fail, until the case is updated.
docs/robustness.md is the table of the same cases (``python bench/robustness_table.py --out
docs/robustness.md``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from bad_input_cases import CASES
from fault_kit import Case, Inputs, run_case
from fault_runner import Runner

# A command that writes to both streams, leaves a thread running and an exit handler, then exits with
# the status in argv[1] or raises: what the interpreter does at exit must happen in a forked child too.
EXITING_SCRIPT = """
import atexit, sys, threading, time
print("to stdout")
print("to stderr", file=sys.stderr)
atexit.register(lambda: print("exit handler ran", file=sys.stderr))
threading.Thread(target=lambda: (time.sleep(0.2), print("thread finished"))).start()
if sys.argv[1] == "raise":
    raise ValueError("boom")
sys.exit(int(sys.argv[1]))
"""


def marks(case: Case) -> list[pytest.MarkDecorator]:
    found = [pytest.mark.slow] if case.slow else []
    if case.xfail:
        found.append(pytest.mark.xfail(strict=True, reason=case.xfail))
    if case.no_gpu:
        found.append(pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU"))
    return found


@pytest.fixture(scope="session")
def runner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runner]:
    """One zygote for the session: it imports b2b once (about 5 s), then forks a child per command."""
    runner = Runner(tmp_path_factory.mktemp("runner"))
    try:
        yield runner
    finally:
        runner.close()


@pytest.fixture(scope="session")
def fault_inputs(
    runner: Runner, tiny_lpd: Path, tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory
) -> Inputs:
    return Inputs(tmp_path_factory.mktemp("bad-inputs"), runner, tiny_lpd, tiny_shards)


@pytest.mark.parametrize("case", [pytest.param(case, id=case.id, marks=marks(case)) for case in CASES])
def test_what_the_user_sees(case: Case, fault_inputs: Inputs) -> None:
    outcome, verdict = run_case(case, fault_inputs)
    assert verdict.ok, (
        f"{case.kind}: {'; '.join(verdict.problems)}\n"
        f"expected exit {case.exit} and a line matching\n  {case.message}\ngot exit {outcome.exit} and\n  "
        f"{verdict.line}\nstderr (end):\n{outcome.stderr[-2000:]}\nstdout (end):\n{outcome.stdout[-1000:]}"
    )


@pytest.mark.parametrize("how", ["3", "0", "raise"])
def test_a_forked_command_shows_what_a_fresh_process_shows(how: str, runner: Runner, tmp_path: Path) -> None:
    script = tmp_path / "command.py"
    script.write_text(EXITING_SCRIPT)
    forked = runner.run(["python", str(script), how], tmp_path)
    fresh = runner.run(["python", str(script), how], tmp_path, fresh=True)
    assert (forked.exit, forked.stdout, forked.stderr) == (fresh.exit, fresh.stdout, fresh.stderr)
    assert forked.exit == (1 if how == "raise" else int(how))
    assert forked.stdout == "to stdout\nthread finished\n"
    if how == "raise":  # the command's own frame only, as the interpreter prints it
        assert forked.stderr.splitlines()[1:4] == [
            "Traceback (most recent call last):",
            f'  File "{script}", line 8, in <module>',
            '    raise ValueError("boom")',
        ]
    assert forked.stderr.splitlines()[-1] == "exit handler ran"


def test_a_command_past_its_timeout_is_killed_and_the_next_gets_its_own_answer(tmp_path: Path) -> None:
    script, hanging = tmp_path / "command.py", tmp_path / "hang.py"
    script.write_text(EXITING_SCRIPT)
    hanging.write_text("import time\nprint('started', flush=True)\ntime.sleep(60)\n")
    runner = Runner(tmp_path / "runner", timeout=3)
    try:
        hung = runner.run(["python", str(hanging)], tmp_path)
        after = runner.run(["python", str(script), "3"], tmp_path)
    finally:
        runner.close()
    assert (hung.exit, hung.stdout) == (-9, "started\n")
    assert hung.seconds < 30
    assert (after.exit, after.stdout) == (3, "to stdout\nthread finished\n")
