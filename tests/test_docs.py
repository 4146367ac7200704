"""The README and docs/ say what the code does: every command they show parses, every config key exists.

Commands are taken from the fenced shell blocks of README.md and docs/*.md and parsed, not run: ``b2b``
subcommands by their own argument parsers, training command lines by the trainer's parser and the config
loader (so every ``key=value`` names a real key with a valid value), ``accelerate launch`` by accelerate's
parser, ``launch/submit.py`` by its parser, and the scripts in ``bench/`` and ``launch/`` by running them
with ``--help`` and checking that every flag the docs use is one they offer.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def shell_commands() -> list[tuple[str, str]]:
    """``(file, command)`` for each command line in a fenced ``bash``/``sh``/``console`` block."""
    found = []
    for path in DOCS:
        text = path.read_text()
        for block in re.findall(r"```(?:bash|sh|console)\n(.*?)```", text, re.S):
            joined = re.sub(r"\\\n\s*", " ", block)
            for line in joined.splitlines():
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                line = re.sub(r"\s+#\s.*$", "", line)  # a trailing comment
                found.append((path.name, line))
    return found


COMMANDS = shell_commands()


def _b2b_parser(name: str) -> argparse.ArgumentParser:
    import importlib

    from b2b.cli.main import COMMANDS as SUBCOMMANDS

    parser = argparse.ArgumentParser(prog=f"b2b {name}", exit_on_error=False)
    importlib.import_module(SUBCOMMANDS[name][0]).add_arguments(parser)
    return parser


def _check_training_args(args: list[str]) -> None:
    """``--config FILE key=value ...`` as the trainer takes it: the file exists, the keys are real."""
    from b2b.config import load_config
    from b2b.train import parse_args

    parsed = parse_args(args)
    config = parsed.config
    if config is not None:
        assert (REPO / config).is_file(), f"{config} does not exist"
        config = REPO / config
    load_config(config, [o for o in parsed.overrides if "$" not in o and "<" not in o])


def _check(command: str) -> None:
    tokens = shlex.split(command)
    if tokens[0] == "b2b":
        name = tokens[1]
        if name == "train":
            _check_training_args(tokens[2:])
        elif name in ("--help", "--version"):
            return
        else:
            _b2b_parser(name).parse_args(tokens[2:])
        return
    if tokens[:2] == ["accelerate", "launch"]:
        from accelerate.commands.launch import launch_command_parser

        script = next(i for i, t in enumerate(tokens) if t.endswith("train.py") or t == "b2b.cli")
        launcher = tokens[2:script] if tokens[script] != "b2b.cli" else tokens[2 : script - 1]
        launch_command_parser().parse_args([*launcher, "b2b/train.py"])
        rest = tokens[script + 1 :]
        _check_training_args(rest[1:] if rest[:1] == ["train"] else rest)
        return
    if tokens[0] == "torchrun" or tokens[:3] == ["python", "-m", "b2b.train"]:
        start = tokens.index("b2b.train") + 1
        _check_training_args(tokens[start:])
        return
    if tokens[:2] == ["python", "launch/submit.py"]:
        sys.path.insert(0, str(REPO / "launch"))
        import submit

        args = submit.build_parser().parse_intermixed_args(tokens[2:])
        _check_training_args(["--config", args.config, *args.overrides])
        return
    if tokens[0] in ("python", "bash") and tokens[1].startswith(("bench/", "launch/")):
        script = REPO / tokens[1]
        assert script.is_file(), f"{tokens[1]} does not exist"
        if tokens[0] == "bash":
            return
        shown = subprocess.run(
            [sys.executable, str(script), "--help"], capture_output=True, text=True, cwd=REPO, timeout=120
        )
        assert shown.returncode == 0, shown.stderr[-2000:]
        for flag in (t.split("=")[0] for t in tokens[2:] if t.startswith("--")):
            assert flag in shown.stdout, f"{tokens[1]} has no option {flag}"
        return
    # Anything else (git, pip, cd, wandb, squeue, ...) is not ours to check.


@pytest.mark.parametrize(("where", "command"), COMMANDS, ids=[f"{w}:{c[:60]}" for w, c in COMMANDS])
def test_documented_command_parses(where: str, command: str) -> None:
    try:
        _check(command)
    except SystemExit as exc:  # argparse refusing the command line
        raise AssertionError(f"{where}: `{command}` does not parse (exit {exc.code})") from None


def test_the_docs_show_commands() -> None:
    assert len(COMMANDS) > 40 and {w for w, _ in COMMANDS} >= {"README.md", "data.md", "training.md"}


def test_every_config_key_is_documented_and_every_documented_key_exists() -> None:
    from b2b.config import valid_keys

    reference = (REPO / "docs" / "config.md").read_text()
    documented = set(re.findall(r"^\|\s*`([a-z_0-9]+(?:\.[a-z_0-9]+)?)`\s*\|", reference, re.M))
    assert documented, "no key rows found in docs/config.md"
    assert documented <= set(valid_keys()), (
        f"documented but unknown: {sorted(documented - set(valid_keys()))}"
    )
    assert set(valid_keys()) <= documented, f"not documented: {sorted(set(valid_keys()) - documented)}"


def test_the_readme_is_a_short_guide_with_links_that_resolve() -> None:
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    for link in re.findall(r"\]\(((?:docs|examples|configs|bench|launch)/[^)#]+)", readme):
        assert (REPO / link).exists(), f"README links to {link}, which does not exist"
    for path in DOCS:
        for link in re.findall(r"\]\(([^)#:]+\.(?:md|png|yaml|py))", path.read_text()):
            target = (path.parent / link) if not link.startswith(("docs/", "configs/")) else REPO / link
            assert target.exists() or (REPO / link).exists(), f"{path.name} links to {link}"


def test_the_config_reference_gives_each_key_its_real_default() -> None:
    """The default column is what ``Config()`` holds, written as YAML would write it."""
    import yaml

    from b2b.config import Config

    defaults = Config()
    rows = re.findall(
        r"^\|\s*`([a-z_0-9.]+)`\s*\|\s*`([^`]*)`\s*\|", (REPO / "docs" / "config.md").read_text(), re.M
    )
    assert len(rows) >= 50
    for key, shown in rows:
        value = defaults
        for part in key.split("."):
            value = getattr(value, part)
        assert yaml.safe_load(shown) == value, (
            f"docs/config.md gives {key} the default {shown}, the code {value!r}"
        )
