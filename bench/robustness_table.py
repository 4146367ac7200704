"""Run the fault cases of tests/bad_input_cases.py and write docs/robustness.md: what each command says.

The cases are the ones tests/test_bad_inputs.py asserts (one table, tests/bad_input_cases.py); this
script runs every one of them, slow ones included, on the same small real inputs (built once in a
temporary folder) and writes, per case, the command, its exit status, the one line the user sees and
the verdict: one clear line, or why not.

    python bench/robustness_table.py --out docs/robustness.md    # run every case, write the page
    python bench/robustness_table.py --list                      # the cases, without running them
    python bench/robustness_table.py -k resume                   # only cases whose id, area or fault say it
    python bench/robustness_table.py --fresh                     # every command in a fresh interpreter

It exits with status 1 when a case shows something other than what its test expects (the page still
says what it showed), so a page written with status 0 agrees with the tests.
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from bad_input_cases import CASES  # noqa: E402
from conftest import build_tiny_shards, write_tiny_lpd  # noqa: E402
from fault_kit import TINY, Case, Inputs, Verdict, run_case  # noqa: E402
from fault_runner import Runner  # noqa: E402

MAX_MESSAGE = 240  # characters of a message kept in the table

INTRO = """# Robustness: what a user sees for bad input

Each row is one kind of bad input or fault, tried with the real command (`b2b ...`, `python -m b2b.train`,
`python launch/submit.py`) on small real inputs in a temporary folder, after the case planted its faulty
files in its own folder: what the user sees is the exit status and the last line on stderr. *One clear
line* means no traceback and that last line is the message the case expects, on a single line; argparse's
usage lines and progress bars are not counted, and `warning:` lines about single files before it are
counted in the column. A command that succeeds and says what it did on stdout (a setting it took as
asked, checkpoints it moved aside) is judged by that line of stdout. A row whose verdict starts with *no*
is a fault that does not give one clear line today; its test is marked xfail(strict), so fixing it makes
the test fail until the case is updated.

The cases and what each must say are one table, `tests/bad_input_cases.py`; `tests/test_bad_inputs.py`
asserts every row (the slow ones, which train or start a fresh interpreter, are marked `slow`), and this
page is written from the same table by running every case:

```bash
python bench/robustness_table.py --out docs/robustness.md
```

(`--list` shows the cases, `-k WORD` runs some of them, `--fresh` runs every command in a fresh
interpreter instead of a fork of one that has imported b2b, to compare; {seconds} on 2 cores.)

In commands and messages, `{{case}}` is the case's own folder, `{{dir}}` the temporary folder and `{{repo}}`
the repository; `{{lpd}}` holds 12 LPD-5 songs of 16 bars (`tests/lpd_fixtures.py`) and `{{shards}}` the
shards built from them (`tests/conftest.py`: shape [5, 16, 48], 165 train and 15 val samples);
`{{other_shards}}` are shards of another roll spec ([5, 16, 36], no val split), `{{odd_shards}}` shards of
a shape the networks cannot produce ([5, 16, 47]); `{{runs}}` is the run folder of every run, `{{run}}` a
finished two-step run of a tiny model, `{{export}}` its exported generator and `{{samples}}` two samples of
it. `{{tiny}}` stands for the tiny model's overrides, `{tiny}`, and
`{{tiny_shards_args}}` for the options the tiny shards are built with. Long messages are cut at {max}
characters.

"""


def command_cell(case: Case) -> str:
    """The case's command as a shell line (placeholders kept), a newline in an argument as ``$'\\n'``."""
    env = [f"{k}={shell_word(v)}" for k, v in case.env.items()]
    words = [shell_word(arg) for arg in case.argv]
    return code_cell(" ".join([*env, *words]))


def shell_word(arg: str) -> str:
    """``arg`` as a shell word; placeholders stay bare, a newline is written ``$'\\n'``."""
    if re.fullmatch(r"[\w@%+=:,./{}-]+", arg):
        return arg
    if "\n" in arg:
        return "$'" + arg.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"
    return shlex.quote(arg)


def code_cell(text: str) -> str:
    """``text`` as a code span that survives a Markdown table (backticks inside, pipes escaped)."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    return f"{fence} {text.replace('|', chr(92) + '|')} {fence}"


def shorten(message: str) -> str:
    message = re.sub(r"\s+", " ", message).strip()
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 1] + "…"


def verdict_cell(case: Case, verdict: Verdict) -> str:
    if verdict.ok:
        where = " (stdout)" if case.stream == "stdout" else ""
        before = verdict.lines_before
        after = f" after {before} warning line{'s' if before > 1 else ''}" if before else ""
        return f"one clear line{where}{after}" + (
            " — **the case says xfail: update it**" if case.xfail else ""
        )
    if case.xfail:
        return f"no: {case.xfail}"
    return f"**not what the test expects: {'; '.join(verdict.problems)}**"


def render(rows: list[tuple[Case, int | None, Verdict | None]], seconds: float) -> str:
    ran = [(case, code, verdict) for case, code, verdict in rows if verdict is not None]
    clear = sum(1 for _, _, verdict in ran if verdict.ok)
    tiny = code_cell(" ".join(TINY))
    lines = [
        INTRO.format(max=MAX_MESSAGE, tiny=tiny, seconds=f"about {seconds / 60:.0f} minutes"),
        f"{len(ran)} cases; {clear} answered with one clear line.\n",
        "| # | area | what is wrong | command | exit | what the user sees | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for number, (case, code, verdict) in enumerate(rows, 1):
        kind = case.kind.replace("|", "\\|")
        if verdict is None:
            skipped = "skipped: this machine has a GPU"
            lines.append(f"| {number} | {case.area} | {kind} | {command_cell(case)} | | | {skipped} |")
            continue
        seen = code_cell(shorten(verdict.line))
        lines.append(f"| {number} | {case.area} | {kind} | {command_cell(case)} | {code} | {seen} | "
                     f"{verdict_cell(case, verdict)} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the page here (default: print it)")
    parser.add_argument("--list", action="store_true", help="print the cases without running them")
    parser.add_argument("-k", dest="keyword", help="only cases whose id, area or fault contain this")
    parser.add_argument("--fresh", action="store_true", help="every command in a fresh interpreter (slower)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (its path is printed)")
    args = parser.parse_args(argv)

    word = (args.keyword or "").lower()
    chosen = [case for case in CASES if word in f"{case.id} {case.area} {case.kind}".lower()]
    if args.list:
        for number, case in enumerate(chosen, 1):
            print(f"{number:3d}  {case.id:40s} {case.area}: {case.kind}")
        return 0

    import torch

    root = Path(tempfile.mkdtemp(prefix="b2b-robustness-"))
    runner = Runner(root / "runner", preload=not args.fresh)
    start = time.perf_counter()
    rows: list[tuple[Case, int | None, Verdict | None]] = []
    try:
        lpd = write_tiny_lpd(root / "tiny" / "lpd")
        inputs = Inputs(root, runner, lpd, build_tiny_shards(lpd, root / "tiny" / "shards"))
        for number, case in enumerate(chosen, 1):
            if case.no_gpu and torch.cuda.is_available():
                rows.append((case, None, None))
                continue
            began = time.perf_counter()
            try:
                outcome, verdict = run_case(case, inputs)
                code = outcome.exit
            except Exception as exc:  # an input could not be built: keep the row, go on
                code, verdict = (
                    -1,
                    Verdict(f"(the case could not run: {type(exc).__name__}: {exc})", ["error"], 0),
                )
            rows.append((case, code, verdict))
            state = "ok" if verdict.ok else ("xfail" if case.xfail else "DIFFERS")
            print(f"{number:3d} {time.perf_counter() - began:5.1f}s {state:7s} {case.id}", file=sys.stderr)
    finally:
        runner.close()
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    seconds = time.perf_counter() - start
    page = render(rows, seconds)
    if args.out:
        args.out.write_text(page)
    else:
        print(page)
    differ = [case.id for case, _, verdict in rows if verdict is not None and verdict.ok == bool(case.xfail)]
    print(f"{len(rows)} cases in {seconds:.0f} s; not as the tests expect: {', '.join(differ) or 'none'}",
          file=sys.stderr)  # fmt: skip
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
