"""Bad input and faults, tried as a user meets them: what each command says, as a Markdown table.

Every case runs the real command (``b2b ...``, ``python -m b2b.train``, ``python launch/submit.py``) in a
fresh subprocess inside one temporary folder, on small real inputs built once (LPD-format songs written
with pypianoroll, shards built from them by ``b2b shards build``, a two-step run of a tiny model). What
the user sees is recorded: the exit status and the first line of stderr (for a Python traceback, its
last line), with the temporary folder written as ``DIR`` and the repository as ``REPO``.

    python bench/bad_inputs.py --out docs/robustness.md     # run every case, write the table
    python bench/bad_inputs.py --list                       # the cases, without running them
    python bench/bad_inputs.py -k checkpoint                # only cases whose area or fault mention it

Cases run one after another and at most one training process runs at a time; on 2 busy cores the whole
set takes a few minutes.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MAX_MESSAGE = 240  # characters of a message kept in the table

# The tiny shards of tests/conftest.py: LPD-5 tracks, 2 bars of 8 steps, 48 pitches from 36.
SHARD_ARGS = [
    "--tracks", "lpd5", "--n-bars", "2", "--steps-per-bar", "8", "--lowest-pitch", "36",
    "--n-pitches", "48", "--hop-bars", "1", "--shard-size", "40", "--val-fraction", "0.15",
    "--workers", "1", "--no-progress",
]  # fmt: skip

# A model that trains in seconds on a CPU (tests/test_train.py's overrides()).
TINY = {
    "data.batch_size": 4, "model.latent_dim": 16, "model.g_width": 4, "model.d_width": 4,
    "loss.n_critic": 2, "train.steps": 2, "train.precision": "fp32", "log.progress": "false",
    "log.snapshot_every": 0, "log.metrics_every": 0, "checkpoint.every": 1, "checkpoint.keep": 10,
}  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# Running commands


@dataclass
class Result:
    """What one command showed the user."""

    returncode: int
    stdout: str
    stderr: str
    note: str = ""  # something the case checked beyond the message (e.g. that a payload did not run)


class Context:
    """The temporary folder, the commands, and the small inputs the cases share (built on first use)."""

    def __init__(self, root: Path, timeout: float = 180.0):
        self.root = root
        self.timeout = timeout
        self.env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
            "WANDB_MODE": "disabled",
            "COLUMNS": "110",
        }
        self.env.pop("PYTHONPATH", None)

    # -- commands ---------------------------------------------------------------------------------

    def run(self, argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> Result:
        try:
            proc = subprocess.run(
                [str(a) for a in argv],
                cwd=cwd or self.root,
                env={**self.env, **(env or {})},
                capture_output=True,
                text=True,
                timeout=self.timeout,
            )
        except subprocess.TimeoutExpired as exc:
            err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
            return Result(-1, "", f"(timed out after {self.timeout:.0f} s) {err}")
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def b2b(self, *args: object, env: dict[str, str] | None = None) -> Result:
        exe = BIN / "b2b"
        return self.run([str(exe) if exe.exists() else "b2b", *map(str, args)], env=env)

    def train(self, *overrides: object, name: str = "t", env: dict[str, str] | None = None) -> Result:
        """``python -m b2b.train`` with the tiny model on the tiny shards; ``overrides`` come last (win)."""
        values = {"name": name, "run_dir": self.runs, "data.shards": self.shards, **TINY}
        args = [f"{k}={v}" for k, v in values.items()]
        return self.run([sys.executable, "-m", "b2b.train", *args, *map(str, overrides)], env=env)

    def train_config(self, config: Path, *overrides: object) -> Result:
        return self.run([sys.executable, "-m", "b2b.train", "--config", config, *map(str, overrides)])

    def build(self, *args: object) -> Result:
        return self.b2b("shards", "build", *args)

    def submit(self, *args: object, config: Path | None = None) -> Result:
        config = config or self.submit_config
        return self.run([sys.executable, REPO / "launch" / "submit.py", "--config", config, *map(str, args)])

    # -- folders ----------------------------------------------------------------------------------

    def fresh(self, name: str) -> Path:
        """An empty folder ``DIR/cases/<name>``."""
        path = self.root / "cases" / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def file(self, name: str, content: str | bytes, filename: str | None = None) -> Path:
        """``content`` in ``DIR/cases/<name>/<filename>`` (default: config.yaml for text, else file)."""
        path = self.fresh(name) / (filename or ("file" if isinstance(content, bytes) else "config.yaml"))
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
        return path

    def copy_shards(self, name: str) -> Path:
        path = self.root / "cases" / name
        shutil.rmtree(path, ignore_errors=True)
        shutil.copytree(self.shards, path)
        return path

    def copy_checkpoint(self, name: str, step: int = 2) -> Path:
        """A copy of the base run's checkpoint ``step`` as ``DIR/cases/<name>/step-<step>``."""
        path = self.fresh(name) / f"step-{step}"
        shutil.copytree(self.run_path / "checkpoints" / f"step-{step}", path)
        return path

    def copy_run(self, name: str) -> Path:
        path = self.runs / name
        shutil.rmtree(path, ignore_errors=True)
        shutil.copytree(self.run_path, path, symlinks=True)
        return path

    # -- shared inputs (each built once, when a case first needs it) ------------------------------

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @cached_property
    def lpd(self) -> Path:
        """12 LPD-5 songs of 16 bars as LPD ``.npz`` files (tests/lpd_fixtures.py)."""
        sys.path.insert(0, str(REPO / "tests"))
        from lpd_fixtures import write_lpd_tree

        path = self.root / "lpd"
        write_lpd_tree(path, 12, seed=3, n_bars=16, tracks="lpd5")
        return path

    def _built(self, name: str, *extra: str) -> Path:
        out = self.root / name
        result = self.build("--source", "lpd", "--input", self.lpd, "--output", out, *SHARD_ARGS, *extra)
        if result.returncode != 0:
            raise RuntimeError(f"building {name} failed:\n{result.stderr[-3000:]}")
        return out

    @cached_property
    def shards(self) -> Path:
        """165 train and 15 val samples of shape [5, 16, 48] in 6 shards."""
        return self._built("shards")

    @cached_property
    def other_shards(self) -> Path:
        """Shards of another roll spec ([5, 16, 36]) and without a val split."""
        return self._built("shards-other", "--n-pitches", "36", "--val-fraction", "0")

    @cached_property
    def odd_shards(self) -> Path:
        """Shards of shape [5, 16, 47]: a pitch size the networks cannot produce."""
        return self._built("shards-odd", "--n-pitches", "47")

    @cached_property
    def run_path(self) -> Path:
        """A finished two-step run of the tiny model with a checkpoint at each step."""
        result = self.train(name="base")
        if result.returncode != 0:
            raise RuntimeError(f"the base run failed:\n{result.stderr[-3000:]}")
        return self.runs / "base"

    @cached_property
    def export(self) -> Path:
        out = self.root / "gen.safetensors"
        result = self.b2b("export", "--checkpoint", self.run_path, "--out", out)
        if result.returncode != 0:
            raise RuntimeError(f"the export failed:\n{result.stderr[-3000:]}")
        return out

    @cached_property
    def samples(self) -> Path:
        out = self.root / "samples"
        args = ["--checkpoint", self.export, "--n", "2", "--measure", "8", "--out", out, "--no-progress"]
        result = self.b2b("sample", *args, "--synth", "fallback", "--sample-rate", "8000")
        if result.returncode != 0:
            raise RuntimeError(f"sampling failed:\n{result.stderr[-3000:]}")
        return out

    @cached_property
    def submit_config(self) -> Path:
        path = self.root / "submit.yaml"
        values = {"data": {"shards": str(self.shards)}, "run_dir": str(self.runs), "train": {"steps": 2}}
        path.write_text(json.dumps(values))  # JSON is YAML
        return path


# ---------------------------------------------------------------------------------------------------
# The cases


@dataclass
class Case:
    area: str
    fault: str
    run: Callable[[Context], Result]


CASES: list[Case] = []


def case(area: str, fault: str) -> Callable[[Callable[[Context], Result]], Callable[[Context], Result]]:
    def register(fn: Callable[[Context], Result]) -> Callable[[Context], Result]:
        CASES.append(Case(area, fault, fn))
        return fn

    return register


def _train_overrides(*overrides: str) -> Callable[[Context], Result]:
    return lambda ctx: ctx.train(*overrides)


def _train_file(text: str | bytes) -> Callable[[Context], Result]:
    return lambda ctx: ctx.train_config(ctx.file("config", text, "config.yaml"))


# -- config: command-line overrides and YAML files (through the trainer, as a user meets them) -------

for fault, overrides in [
    ("unknown key in an override (typo `train.stpes`)", ["train.stpes=5"]),
    ("override without `=` (`train.steps 5`)", ["train.steps", "5"]),
    ("wrong type: `data.batch_size=abc`", ["data.batch_size=abc"]),
    ("below the minimum: `data.batch_size=0`", ["data.batch_size=0"]),
    ("not a valid choice: `train.precision=fp8`", ["train.precision=fp8"]),
    ("NaN: `optim.g_lr=nan`", ["optim.g_lr=nan"]),
    ("infinity: `loss.gp_lambda=inf`", ["loss.gp_lambda=inf"]),
    ("betas out of range: `optim.betas=[0.5, 1.0]`", ["optim.betas=[0.5, 1.0]"]),
    ("`train.steps=0` and `train.epochs=0`", ["train.steps=0", "train.epochs=0"]),
    (
        "SyncBatchNorm with a batch-norm critic and the gradient penalty",
        ["model.sync_batchnorm=true", "model.critic_norm=batch"],
    ),
    ("run name `..`", ["name=.."]),
    ("run name `a/b`", ["name=a/b"]),
    ("run name with a newline", ["name=run\nrm -rf"]),
    ("`data.shape` disagrees with the shards", ["data.shape=[5, 32, 48]"]),
    ("`deepspeed.zero_stage=3`", ["deepspeed.zero_stage=3"]),
]:
    case("config", fault)(_train_overrides(*overrides))

for fault, text in [
    ("unknown key in the YAML file (`model: {gwidth: 8}`)", "model:\n  gwidth: 8\n"),
    ("empty YAML file (only a comment)", "# nothing yet\n"),
    ("invalid YAML (unclosed bracket)", "model: {g_width: 8\ntrain: [\n"),
    ("YAML file that is a list, not a mapping", "- train.steps=5\n"),
    ("config file that is not text (binary bytes)", b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x00"),
]:
    case("config", fault)(_train_file(text))


@case("config", "missing config file")
def _(ctx: Context) -> Result:
    return ctx.train_config(ctx.root / "nowhere.yaml")


@case("config", "config path is a folder")
def _(ctx: Context) -> Result:
    return ctx.train_config(ctx.fresh("config-dir"))


@case("config", "`log.tracker=wandb` without the wandb package (simulated: the import is blocked)")
def _(ctx: Context) -> Result:
    # Nothing is uninstalled: a sitecustomize.py on PYTHONPATH makes `import wandb` find nothing.
    folder = ctx.fresh("no-wandb")
    (folder / "sitecustomize.py").write_text("import sys\nsys.modules['wandb'] = None\n")
    return ctx.train("log.tracker=wandb", env={"PYTHONPATH": str(folder)})


@case("config", "accelerate DeepSpeed config with offload options b2b does not take")
def _(ctx: Context) -> Result:
    env = {
        "ACCELERATE_USE_DEEPSPEED": "true",
        "ACCELERATE_CONFIG_DS_FIELDS": "zero_stage,offload_optimizer_device,mixed_precision",
        "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2",
    }
    return ctx.train(env=env)


case("cli", "unknown command (`b2b trian`)")(lambda ctx: ctx.b2b("trian"))


# -- shards build -------------------------------------------------------------------------------------


def _lpd_build(*args: object) -> Callable[[Context], Result]:
    """``b2b shards build`` of the LPD songs with ``args`` (the fault) added."""

    def run(ctx: Context) -> Result:
        out = ctx.root / "cases" / "out"
        return ctx.build("--source", "lpd", "--input", ctx.lpd, "--output", out, "--tracks", "lpd5",
                         "--workers", "1", "--no-progress", *args)  # fmt: skip

    return run


case("shards build", "`--input` folder does not exist")(
    lambda ctx: ctx.build(
        "--source", "lpd", "--input", ctx.root / "no-such-folder", "--output", ctx.root / "o"
    )
)
case("shards build", "`--source lpd` without `--input`")(lambda ctx: ctx.build("--source", "lpd"))
case("shards build", "`--source demo` with `--input`")(
    lambda ctx: ctx.build("--source", "demo", "--input", ctx.root)
)
case("shards build", "`--tracks` with `--source demo`")(
    lambda ctx: ctx.build("--source", "demo", "--tracks", "lpd5")
)
case("shards build", "LPD-5 files with the default `--tracks lpd17`")(
    lambda ctx: _build_from(ctx, "lpd", ctx.lpd)
)
case("shards build", "`--n-bars abc`")(_lpd_build("--n-bars", "abc"))
case("shards build", "window longer than every song (`--n-bars 64`, songs have 16 bars)")(
    _lpd_build("--n-bars", "64")
)
case("shards build", "pitch grid past MIDI's 127 (`--lowest-pitch 100 --n-pitches 48`)")(
    _lpd_build("--lowest-pitch", "100", "--n-pitches", "48")
)
case("shards build", "negative lowest pitch (`--lowest-pitch -5`)")(_lpd_build("--lowest-pitch", "-5"))
case("shards build", "`--n-pitches 0`")(_lpd_build("--n-pitches", "0"))
case("shards build", "`--steps-per-bar 6` (not a multiple of 4 beats)")(_lpd_build("--steps-per-bar", "6"))
case("shards build", "`--hop-bars 0`")(_lpd_build("--hop-bars", "0"))
case("shards build", "`--val-fraction 1.0`")(_lpd_build("--val-fraction", "1.0"))
case("shards build", "`--shard-size 0`")(_lpd_build("--shard-size", "0"))
case("shards build", "`--limit 0`")(_lpd_build("--limit", "0"))
case("shards build", "`--min-notes` above every window's note count")(_lpd_build("--min-notes", "100000"))


@case("shards build", "`--workers 0`")
def _(ctx: Context) -> Result:
    return ctx.build("--source", "lpd", "--input", ctx.lpd, "--output", ctx.root / "o", "--workers", "0")


@case("shards build", "input folder holds no .npz files")
def _(ctx: Context) -> Result:
    folder = ctx.fresh("no-npz")
    (folder / "notes.txt").write_text("nothing here")
    return ctx.build("--source", "lpd", "--input", folder, "--output", ctx.root / "o")


def _source_folder(ctx: Context, name: str, files: dict[str, bytes]) -> Path:
    folder = ctx.fresh(name)
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    return folder


def _build_from(ctx: Context, kind: str, folder: Path, *extra: object) -> Result:
    out = ctx.root / "cases" / f"{folder.name}-out"
    shutil.rmtree(out, ignore_errors=True)
    return ctx.build("--source", kind, "--input", folder, "--output", out, "--workers", "1", "--no-progress",
                     *extra)  # fmt: skip


@case("shards build", "every .npz file is corrupt (garbage bytes)")
def _(ctx: Context) -> Result:
    folder = _source_folder(ctx, "corrupt-npz", {f"song{i}.npz": bytes(range(i, 256)) for i in range(3)})
    return _build_from(ctx, "lpd", folder)


@case("shards build", "an empty (0-byte) .npz file")
def _(ctx: Context) -> Result:
    return _build_from(ctx, "lpd", _source_folder(ctx, "empty-npz", {"song.npz": b""}))


@case("shards build", "a .npz that is not LPD (a plain numpy archive)")
def _(ctx: Context) -> Result:
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.savez(buffer, x=np.arange(10))
    return _build_from(ctx, "lpd", _source_folder(ctx, "plain-npz", {"song.npz": buffer.getvalue()}))


@case("shards build", "one corrupt file among good ones (build goes on, file listed as skipped)")
def _(ctx: Context) -> Result:
    folder = ctx.fresh("one-bad")
    shutil.copytree(ctx.lpd, folder, dirs_exist_ok=True)
    (folder / "broken.npz").write_bytes(b"PK\x03\x04 not really a zip")
    return _build_from(ctx, "lpd", folder, *SHARD_ARGS)


@case("shards build", "a text file named .mid (`--source midi`)")
def _(ctx: Context) -> Result:
    return _build_from(ctx, "midi", _source_folder(ctx, "text-mid", {"song.mid": b"this is not MIDI\n"}))


@case("shards build", "a valid MIDI file with no notes")
def _(ctx: Context) -> Result:
    import pretty_midi

    folder = ctx.fresh("silent-mid")
    midi = pretty_midi.PrettyMIDI()
    midi.instruments.append(pretty_midi.Instrument(0))
    midi.write(str(folder / "silence.mid"))
    return _build_from(ctx, "midi", folder)


@case("shards build", "`--ids` file does not exist")
def _(ctx: Context) -> Result:
    return _lpd_build("--ids", ctx.root / "no-ids.txt")(ctx)


@case("shards build", "`--ids` file lists no MSD ids")
def _(ctx: Context) -> Result:
    ids = ctx.file("ids-empty", b"rock\npop\n", "ids.txt")
    return _lpd_build("--ids", ids)(ctx)


@case("shards build", "`--ids` lists ids that match no song")
def _(ctx: Context) -> Result:
    ids = ctx.file("ids-other", b"TRAAAGR128F425B14B\n", "ids.txt")
    return _lpd_build("--ids", ids)(ctx)


@case("shards build", "`--output` is an existing file")
def _(ctx: Context) -> Result:
    out = ctx.file("out-file", b"x")
    return ctx.build("--source", "lpd", "--input", ctx.lpd, "--output", out, "--workers", "1")


@case("shards build", "`--output` lies under a file")
def _(ctx: Context) -> Result:
    out = ctx.file("out-under-file", b"x") / "shards"
    return ctx.build("--source", "lpd", "--input", ctx.lpd, "--output", out, "--workers", "1")


@case("shards build", "another build is writing to the same `--output` (its lock is held)")
def _(ctx: Context) -> Result:
    out = ctx.fresh("locked-out")
    with open(out / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return ctx.build("--source", "lpd", "--input", ctx.lpd, "--output", out, *SHARD_ARGS)


@case("shards build", "`--output` holds shards built with other options")
def _(ctx: Context) -> Result:
    out = ctx.copy_shards("rebuild")
    return ctx.build("--source", "lpd", "--input", ctx.lpd, "--output", out, *SHARD_ARGS, "--n-bars", "1")


# -- shards inspect ---------------------------------------------------------------------------------


def _edit_manifest(shards: Path, edit: Callable[[dict], object]) -> Path:
    path = shards / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    return shards


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _flip_member(shards: Path, rehash: bool) -> None:
    """Overwrite the payload of the first sample of train-00000.tar (same size); with ``rehash`` the
    manifest's sha256 is updated, so only decoding can find it."""
    tar = shards / "train-00000.tar"
    with tarfile.open(tar) as archive:
        first = archive.getmembers()[0]
    data = bytearray(tar.read_bytes())
    start = first.offset_data
    data[start : start + first.size] = b"\xff" * first.size
    tar.write_bytes(bytes(data))
    if rehash:
        _edit_manifest(shards, lambda m: m["shards"][0].update(sha256=_sha256(tar)))


def _inspect(ctx: Context, shards: Path, *extra: object) -> Result:
    return ctx.b2b("shards", "inspect", shards, "--n", "0", *extra)


case("shards inspect", "folder does not exist")(lambda ctx: _inspect(ctx, ctx.root / "no-shards"))


@case("shards inspect", "manifest.json is not JSON")
def _(ctx: Context) -> Result:
    shards = ctx.copy_shards("manifest-garbage")
    (shards / "manifest.json").write_text('{"shards": [')
    return _inspect(ctx, shards)


@case("shards inspect", "manifest.json is `{}`")
def _(ctx: Context) -> Result:
    shards = ctx.copy_shards("manifest-empty")
    (shards / "manifest.json").write_text("{}")
    return _inspect(ctx, shards)


@case("shards inspect", "manifest without its `spec`")
def _(ctx: Context) -> Result:
    return _inspect(ctx, _edit_manifest(ctx.copy_shards("no-spec"), lambda m: m.pop("spec")))


@case("shards inspect", "manifest names a shard outside its folder (`../../etc/passwd`), `--verify`")
def _(ctx: Context) -> Result:
    shards = _edit_manifest(
        ctx.copy_shards("escape-i"), lambda m: m["shards"][0].update(name="../../etc/passwd")
    )
    return _inspect(ctx, shards, "--verify")


@case("shards inspect", "a shard file is missing, `--verify`")
def _(ctx: Context) -> Result:
    shards = ctx.copy_shards("missing-i")
    (shards / "train-00001.tar").unlink()
    return _inspect(ctx, shards, "--verify")


@case("shards inspect", "a truncated shard, `--verify`")
def _(ctx: Context) -> Result:
    shards = ctx.copy_shards("trunc-i")
    tar = shards / "train-00000.tar"
    tar.write_bytes(tar.read_bytes()[:5000])
    return _inspect(ctx, shards, "--verify")


@case("shards inspect", "a corrupted sample, manifest sha256 updated to match, `--verify`")
def _(ctx: Context) -> Result:
    shards = ctx.copy_shards("flip-i")
    _flip_member(shards, rehash=True)
    return _inspect(ctx, shards, "--verify")


@case("shards inspect", "manifest's sample count for a shard is wrong, `--verify`")
def _(ctx: Context) -> Result:
    shards = _edit_manifest(ctx.copy_shards("count-i"), lambda m: m["shards"][0].update(n=41))
    return _inspect(ctx, shards, "--verify")


@case("shards inspect", "`--png` is an existing folder")
def _(ctx: Context) -> Result:
    return ctx.b2b("shards", "inspect", ctx.shards, "--n", "2", "--png", ctx.fresh("png-dir"))


# -- train: data ------------------------------------------------------------------------------------

case("train", "`data.shards` folder does not exist")(
    lambda ctx: ctx.train(f"data.shards={ctx.root / 'shards-lpd17'}")
)


@case("train", "manifest names a shard outside its folder (`../../etc/passwd`)")
def _(ctx: Context) -> Result:
    shards = _edit_manifest(
        ctx.copy_shards("escape-t"), lambda m: m["shards"][0].update(name="../../etc/passwd")
    )
    return ctx.train(f"data.shards={shards}")


@case("train", "manifest's `n_train` disagrees with its shards")
def _(ctx: Context) -> Result:
    return ctx.train(
        f"data.shards={_edit_manifest(ctx.copy_shards('count-t'), lambda m: m.update(n_train=999))}"
    )


@case("train", "manifest's `shards` is not a list")
def _(ctx: Context) -> Result:
    return ctx.train(f"data.shards={_edit_manifest(ctx.copy_shards('list-t'), lambda m: m.update(shards=5))}")


@case("train", "manifest's `shape` is not three sizes")
def _(ctx: Context) -> Result:
    shards = _edit_manifest(ctx.copy_shards("shape-t"), lambda m: m.update(shape=[5, 16]))
    return ctx.train(f"data.shards={shards}")


@case("train", "shards hold only a val split")
def _(ctx: Context) -> Result:
    edit = lambda m: m.update(shards=[s for s in m["shards"] if s["split"] == "val"], n_train=0)  # noqa: E731
    return ctx.train(f"data.shards={_edit_manifest(ctx.copy_shards('val-only'), edit)}")


@case("train", "a shard file is missing")
def _(ctx: Context) -> Result:
    shards = ctx.copy_shards("missing-t")
    (shards / "train-00001.tar").unlink()
    return ctx.train(f"data.shards={shards}")


@case("train", "a truncated shard")
def _(ctx: Context) -> Result:
    shards = ctx.copy_shards("trunc-t")
    tar = shards / "train-00000.tar"
    tar.write_bytes(tar.read_bytes()[:5000])
    return ctx.train(f"data.shards={shards}")


@case("train", "a corrupted sample (same size, bytes overwritten)")
def _(ctx: Context) -> Result:
    shards = ctx.copy_shards("flip-t")
    _flip_member(shards, rehash=False)
    return ctx.train(f"data.shards={shards}")


@case("train", "a shard holds a member that is not a sample")
def _(ctx: Context) -> Result:
    shards = ctx.copy_shards("stray-t")
    tar = shards / "train-00000.tar"
    with tarfile.open(tar) as archive:
        members = [(m, archive.extractfile(m).read()) for m in archive.getmembers()]
    import io

    with tarfile.open(tar, "w", format=tarfile.USTAR_FORMAT) as archive:
        info = tarfile.TarInfo("README.txt")
        info.size = 5
        archive.addfile(info, io.BytesIO(b"hello"))
        for member, data in members[:-1]:
            archive.addfile(member, io.BytesIO(data))
    size = tar.stat().st_size
    _edit_manifest(shards, lambda m: m["shards"][0].update(bytes=size, sha256=_sha256(tar)))
    return ctx.train(f"data.shards={shards}")


case("train", "shards of a shape the networks cannot produce ([5, 16, 47])")(
    lambda ctx: ctx.train(f"data.shards={ctx.odd_shards}")
)
case("train", "too few samples for one step (`data.batch_size=64`, 165 samples)")(
    lambda ctx: ctx.train("data.batch_size=64", "loss.n_critic=5")
)
case("train", "non-finite loss (`loss.gp_lambda=1e300` overflows float32)")(
    lambda ctx: ctx.train("loss.gp_lambda=1e300", name="nonfinite")
)


@case("train", "`train.precision=fp16` on a machine without a GPU")
def _(ctx: Context) -> Result:
    return ctx.train("train.precision=fp16", "train.steps=1", name="fp16")


@case("train", "a second trainer on the same run folder (its lock is held)")
def _(ctx: Context) -> Result:
    run = ctx.runs / "busy"
    run.mkdir(parents=True, exist_ok=True)
    with open(run / ".lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.write(json.dumps({"host": "node7", "pid": 4242, "since": "2025-01-01 12:00:00"}) + "\n")
        lock.flush()
        return ctx.train(name="busy")


@case("train", "`run_dir` is a file")
def _(ctx: Context) -> Result:
    return ctx.train(f"run_dir={ctx.file('run-dir-file', b'x')}")


# -- resume / checkpoints ---------------------------------------------------------------------------


def _rewrite_digest(folder: Path, name: str) -> None:
    listing = json.loads((folder / "COMPLETE").read_text())
    listing["sha256"][name] = _sha256(folder / name)
    (folder / "COMPLETE").write_text(json.dumps(listing))


def _resume(ctx: Context, folder: Path, *extra: str) -> Result:
    return ctx.train(
        f"checkpoint.resume={folder}", "train.steps=3", *extra, name=f"from-{folder.parent.name}"
    )


class Payload:
    """Unpickling this runs a shell command: what a crafted checkpoint file would do without weights_only."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


@case("resume/checkpoints", "resume with a different model (`model.g_width=8`)")
def _(ctx: Context) -> Result:
    return _resume(ctx, ctx.run_path / "checkpoints" / "step-2", "model.g_width=8")


@case("resume/checkpoints", "crafted pickle in a rank file, COMPLETE's digest rewritten to match")
def _(ctx: Context) -> Result:
    import torch

    folder = ctx.copy_checkpoint("evil")
    marker = folder.parent / "pwned"
    torch.save({"rng": Payload(marker)}, folder / "rank-00000.pt")
    _rewrite_digest(folder, "rank-00000.pt")
    result = _resume(ctx, folder)
    result.note = f"payload ran: {'YES' if marker.exists() else 'no'}"
    return result


@case("resume/checkpoints", "truncated generator.pt")
def _(ctx: Context) -> Result:
    folder = ctx.copy_checkpoint("trunc")
    (folder / "generator.pt").write_bytes((folder / "generator.pt").read_bytes()[:1000])
    return _resume(ctx, folder)


@case("resume/checkpoints", "truncated generator.pt, COMPLETE's digest rewritten to match")
def _(ctx: Context) -> Result:
    folder = ctx.copy_checkpoint("trunc-rehash")
    (folder / "generator.pt").write_bytes((folder / "generator.pt").read_bytes()[:1000])
    _rewrite_digest(folder, "generator.pt")
    return _resume(ctx, folder)


@case("resume/checkpoints", "weights changed, COMPLETE's digest rewritten to match")
def _(ctx: Context) -> Result:
    import torch

    folder = ctx.copy_checkpoint("tampered")
    state = torch.load(folder / "generator.pt", weights_only=True)
    first = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][first] += 1.0
    torch.save(state, folder / "generator.pt")
    _rewrite_digest(folder, "generator.pt")
    return _resume(ctx, folder)


@case("resume/checkpoints", "garbage meta.json (COMPLETE's digest rewritten to match)")
def _(ctx: Context) -> Result:
    folder = ctx.copy_checkpoint("meta-garbage-rehash")
    (folder / "meta.json").write_text("{not json")
    _rewrite_digest(folder, "meta.json")
    return _resume(ctx, folder)


@case("resume/checkpoints", "meta.json's config has an unknown key (digest rewritten)")
def _(ctx: Context) -> Result:
    folder = ctx.copy_checkpoint("meta-key")
    meta = json.loads((folder / "meta.json").read_text())
    meta["config"]["model"]["g_widht"] = 4
    (folder / "meta.json").write_text(json.dumps(meta))
    _rewrite_digest(folder, "meta.json")
    return _resume(ctx, folder)


@case("resume/checkpoints", "missing rank file")
def _(ctx: Context) -> Result:
    folder = ctx.copy_checkpoint("no-rank")
    (folder / "rank-00000.pt").unlink()
    return _resume(ctx, folder)


@case("resume/checkpoints", "garbage COMPLETE")
def _(ctx: Context) -> Result:
    folder = ctx.copy_checkpoint("complete-garbage")
    (folder / "COMPLETE").write_text("garbage")
    return _resume(ctx, folder)


@case("resume/checkpoints", "COMPLETE of the old format (no digests)")
def _(ctx: Context) -> Result:
    folder = ctx.copy_checkpoint("complete-old")
    (folder / "COMPLETE").write_text(json.dumps({"step": 2}))
    return _resume(ctx, folder)


@case("resume/checkpoints", "no COMPLETE (a save that was interrupted)")
def _(ctx: Context) -> Result:
    folder = ctx.copy_checkpoint("incomplete")
    (folder / "COMPLETE").unlink()
    return _resume(ctx, folder)


case("resume/checkpoints", "`checkpoint.resume` path does not exist")(
    lambda ctx: _resume(ctx, ctx.root / "no-run" / "step-7")
)
case("resume/checkpoints", "`checkpoint.resume` is a folder with no checkpoint")(
    lambda ctx: _resume(ctx, ctx.fresh("no-ckpt"))
)


@case("resume/checkpoints", "automatic resume, the latest checkpoint damaged (falls back to the one before)")
def _(ctx: Context) -> Result:
    run = ctx.copy_run("fallback")
    generator = run / "checkpoints" / "step-2" / "generator.pt"
    generator.write_bytes(generator.read_bytes()[:1000])
    return ctx.train("train.steps=3", name="fallback")


@case("resume/checkpoints", "`checkpoint.resume=never` in a run folder that has checkpoints")
def _(ctx: Context) -> Result:
    ctx.copy_run("again")
    return ctx.train("checkpoint.resume=never", "train.steps=1", name="again")


@case("resume/checkpoints", "`train.steps` lowered below the latest checkpoint's step")
def _(ctx: Context) -> Result:
    ctx.copy_run("shorter")
    return ctx.train("train.steps=1", name="shorter")


# -- sample -----------------------------------------------------------------------------------------


def _sample(ctx: Context, checkpoint: Path | str, *extra: object) -> Result:
    out = ctx.root / "cases" / "sample-out"
    return ctx.b2b("sample", "--checkpoint", checkpoint, "--out", out, "--n", "2", "--measure", "8",
                   "--no-progress", "--synth", "fallback", "--sample-rate", "8000", *extra)  # fmt: skip


case("sample", "`--checkpoint` does not exist")(lambda ctx: _sample(ctx, ctx.root / "runs" / "nope"))
case("sample", "`--checkpoint` is a folder with no checkpoint")(
    lambda ctx: _sample(ctx, ctx.fresh("empty-run"))
)


@case("sample", "`--checkpoint` is a garbage .safetensors file")
def _(ctx: Context) -> Result:
    return _sample(ctx, ctx.file("garbage-export", b"\x00" * 64, "gen.safetensors"))


@case("sample", "`--checkpoint` is a safetensors file not written by b2b")
def _(ctx: Context) -> Result:
    import numpy as np
    from safetensors.numpy import save_file

    path = ctx.fresh("foreign-export") / "model.safetensors"
    save_file({"weight": np.zeros((2, 2), np.float32)}, str(path))
    return _sample(ctx, path)


@case("sample", "damaged ema.pt in the run's checkpoint")
def _(ctx: Context) -> Result:
    run = ctx.copy_run("bad-ema")
    ema = run / "checkpoints" / "step-2" / "ema.pt"
    data = bytearray(ema.read_bytes())
    data[-100] ^= 0xFF
    ema.write_bytes(bytes(data))
    return _sample(ctx, run)


for fault, extra in [
    ("`--n 0`", ["--n", "0"]),
    ("`--threshold nan`", ["--threshold", "nan"]),
    ("`--tempo nan`", ["--tempo", "nan"]),
    ("`--sample-rate 0`", ["--sample-rate", "0"]),
    ("`--measure -1`", ["--measure", "-1"]),
    ("`--device foo`", ["--device", "foo"]),
    ("`--device cuda` on a machine without a GPU", ["--device", "cuda"]),
]:
    case("sample", fault)(lambda ctx, extra=extra: _sample(ctx, ctx.export, *extra))


case("sample", "`--data` holds another roll spec than the generator's")(
    lambda ctx: _sample(ctx, ctx.export, "--data", ctx.other_shards)
)
case("sample", "`--measure 0` (off) while the run's shards are present")(
    lambda ctx: _sample(ctx, ctx.export, "--measure", "0")
)
case("sample", "`--out` is an existing file")(
    lambda ctx: ctx.b2b(
        "sample",
        "--checkpoint",
        ctx.export,
        "--out",
        ctx.file("sample-out-file", b"x"),
        "--n",
        "1",
        "--measure",
        "0",
        "--no-progress",
    )  # fmt: skip
)


# -- eval -------------------------------------------------------------------------------------------


def _eval(ctx: Context, *args: object) -> Result:
    return ctx.b2b("eval", *args)


case("eval", "nothing to evaluate (only `--data`)")(lambda ctx: _eval(ctx, "--data", ctx.shards))
case("eval", "`--real-only` without `--data`")(lambda ctx: _eval(ctx, "--real-only"))
case("eval", "`--data` folder does not exist")(
    lambda ctx: _eval(ctx, "--real-only", "--data", ctx.root / "no-shards")
)
case("eval", "`--real-n 0`")(lambda ctx: _eval(ctx, "--real-only", "--data", ctx.shards, "--real-n", "0"))
case("eval", "`--split val` on shards without a val split")(
    lambda ctx: _eval(
        ctx,
        "--real-only",
        "--data",
        ctx.other_shards,
        "--split",
        "val",
        "--out",
        ctx.root / "cases" / "eval-out",
    )  # fmt: skip
)
case("eval", "`--out` is an existing file")(
    lambda ctx: _eval(ctx, "--real-only", "--data", ctx.shards, "--out", ctx.file("eval-out-file", b"x"))
)
case("eval", "`--checkpoint` with `--data` of another roll spec")(
    lambda ctx: _eval(
        ctx,
        "--checkpoint",
        ctx.export,
        "--data",
        ctx.other_shards,
        "--n",
        "8",
        "--out",
        ctx.root / "cases" / "eval-out",
    )  # fmt: skip
)
case("eval", "export given without `--data`")(lambda ctx: _eval(ctx, "--checkpoint", ctx.export, "--n", "8"))


@case("eval", "`--checkpoint` of a run whose shards are gone, no `--data`")
def _(ctx: Context) -> Result:
    run = ctx.copy_run("moved-data")
    meta = run / "checkpoints" / "step-2" / "meta.json"
    values = json.loads(meta.read_text())
    values["config"]["data"]["shards"] = str(ctx.root / "deleted-shards")
    meta.write_text(json.dumps(values))
    return _eval(ctx, "--checkpoint", run, "--n", "8")


case("eval", "`--samples` folder not written by `b2b sample`")(
    lambda ctx: _eval(ctx, "--samples", ctx.fresh("not-samples"), "--data", ctx.shards)
)


@case("eval", "`--samples` folder with a listed .npz missing")
def _(ctx: Context) -> Result:
    folder = ctx.root / "cases" / "samples-missing"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(ctx.samples, folder)
    next(folder.glob("sample-*.npz")).unlink()
    return _eval(ctx, "--samples", folder, "--data", ctx.shards)


@case("eval", "`--samples` folder whose samples.json is not JSON")
def _(ctx: Context) -> Result:
    folder = ctx.root / "cases" / "samples-garbage"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(ctx.samples, folder)
    (folder / "samples.json").write_text("{truncated")
    return _eval(ctx, "--samples", folder, "--data", ctx.shards)


# -- export -----------------------------------------------------------------------------------------

case("export", "`--checkpoint` does not exist")(
    lambda ctx: ctx.b2b("export", "--checkpoint", ctx.root / "no-run", "--out", ctx.root / "e.safetensors")
)


@case("export", "`--checkpoint` is incomplete (no COMPLETE)")
def _(ctx: Context) -> Result:
    folder = ctx.copy_checkpoint("export-incomplete")
    (folder / "COMPLETE").unlink()
    return ctx.b2b("export", "--checkpoint", folder, "--out", ctx.root / "e.safetensors")


case("export", "`--checkpoint` is itself an export")(
    lambda ctx: ctx.b2b("export", "--checkpoint", ctx.export, "--out", ctx.root / "e.safetensors")
)
case("export", "`--out` lies under a file")(
    lambda ctx: ctx.b2b(
        "export",
        "--checkpoint",
        ctx.run_path,
        "--out",
        ctx.file("export-under-file", b"x") / "gen.safetensors",
    )  # fmt: skip
)


# -- describe ---------------------------------------------------------------------------------------

case("describe", "no shards and no `data.shape`")(
    lambda ctx: ctx.b2b("describe", f"data.shards={ctx.root / 'no-shards'}")
)
case("describe", "a shape the networks cannot produce (`data.shape=[5,16,47]`)")(
    lambda ctx: ctx.b2b("describe", f"data.shards={ctx.root / 'no-shards'}", "data.shape=[5,16,47]")
)
case("describe", "`data.shape` disagrees with the shards")(
    lambda ctx: ctx.b2b("describe", f"data.shards={ctx.shards}", "data.shape=[5,32,48]")
)
case("describe", "unknown key in `--config`")(
    lambda ctx: ctx.b2b("describe", "--config", ctx.file("describe-config", "log:\n  trackr: wandb\n"))
)


# -- submit (launch/submit.py --dry-run; no Slurm is running) ----------------------------------------

for fault, args in [
    ("`--nodes 0`", ["--nodes", "0", "--gpus-per-node", "1", "--dry-run"]),
    ("`--nodes abc`", ["--nodes", "abc", "--gpus-per-node", "1", "--dry-run"]),
    ("`--gpus-per-node -1`", ["--nodes", "1", "--gpus-per-node", "-1", "--dry-run"]),
    ("`--time 0`", ["--nodes", "1", "--gpus-per-node", "1", "--time", "0", "--dry-run"]),
    ("`--cpus-per-task 0`", ["--nodes", "1", "--gpus-per-node", "1", "--cpus-per-task", "0", "--dry-run"]),
    (
        "`--signal-delay` longer than `--time`",
        ["--nodes", "1", "--gpus-per-node", "1", "--time", "2", "--signal-delay", "200", "--dry-run"],
    ),
    (
        "`--partition 'gpu; rm -rf ~'`",
        ["--nodes", "1", "--gpus-per-node", "1", "--partition", "gpu; rm -rf ~", "--dry-run"],
    ),  # fmt: skip
    (
        "`--partition` with a newline",
        ["--nodes", "1", "--gpus-per-node", "1", "--partition", "gpu\n#SBATCH x", "--dry-run"],
    ),  # fmt: skip
    ("`--account` with a quote", ["--nodes", "1", "--gpus-per-node", "1", "--account", "lab'x", "--dry-run"]),
    (
        "a config key typo in the overrides",
        ["--nodes", "1", "--gpus-per-node", "1", "train.stepz=5", "--dry-run"],
    ),
    ("no `sbatch` on this machine (no `--dry-run`)", ["--nodes", "1", "--gpus-per-node", "1"]),
]:
    case("submit", fault)(lambda ctx, args=args: ctx.submit(*args))


@case("submit", "the config's shards do not exist")
def _(ctx: Context) -> Result:
    return ctx.submit("--nodes", "1", "--gpus-per-node", "1", "--dry-run", f"data.shards={ctx.root / 'gone'}")


@case("submit", "`--config` file does not exist")
def _(ctx: Context) -> Result:
    return ctx.submit("--nodes", "1", "--gpus-per-node", "1", "--dry-run", config=ctx.root / "nowhere.yaml")


# ---------------------------------------------------------------------------------------------------
# The table


PROGRESS_BAR = re.compile(r"\d+%\|")  # a tqdm line, e.g. "real val samples:  40%|####  | 6/15"
WARNING = re.compile(r"^(\S+( \S+)?: )?warning: ")  # "warning: ..." or "b2b train: warning: ..."


def user_lines(stderr: str) -> list[str]:
    """The lines of ``stderr`` that say something: without argparse's usage block and progress bars."""
    lines, in_usage = [], False
    for line in stderr.splitlines():
        if line.startswith("usage:"):
            in_usage = True
            continue
        if in_usage and line.startswith(" "):
            continue
        in_usage = False
        if line.strip() and not PROGRESS_BAR.search(line):
            lines.append(line)
    return lines


def summarize(result: Result, root: Path) -> tuple[str, str]:
    """The message the user sees (placeholders for temporary paths) and whether it is one clear line."""
    lines = user_lines(result.stderr)
    warnings = [line for line in lines if WARNING.match(line)]
    errors = [line for line in lines if not WARNING.match(line)]
    after = f" (after {len(warnings)} warning line{'s' if len(warnings) > 1 else ''})" if warnings else ""
    if any(line.startswith("Traceback (most recent call last)") for line in lines):
        message, clear = f"Traceback … {lines[-1]}", "no: traceback"
    elif errors:
        message = errors[0]
        clear = f"yes{after}" if len(errors) == 1 else f"no: the message spans {len(errors)} lines"
    elif warnings:
        message, clear = warnings[0], "yes" if len(warnings) == 1 else f"no: {len(warnings)} warning lines"
    elif result.returncode == 0:
        first = next((line for line in result.stdout.splitlines() if line.strip()), "")
        message, clear = f"(nothing on stderr; stdout: {first})", "no: accepted silently"
    else:
        message, clear = "(nothing on stderr)", "no: no message"
    message = shorten(message, root)
    return (f"{message} [{result.note}]" if result.note else message), clear


def shorten(message: str, root: Path) -> str:
    for path, placeholder in ((str(root.resolve()), "DIR"), (str(root), "DIR"), (str(REPO), "REPO")):
        message = message.replace(path, placeholder)
    message = re.sub(r"\.tmp-\d+", ".tmp-PID", message)  # temporary names carry a process id
    message = re.sub(r"\s+", " ", message).strip()
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 1] + "…"


def code_cell(text: str) -> str:
    """``text`` as a code span that survives a Markdown table (backticks inside, pipes escaped)."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    return f"{fence} {text.replace('|', chr(92) + '|')} {fence}"


def fault_cell(text: str) -> str:
    return text.replace("|", "\\|")


INTRO = """# Robustness: what a user sees for bad input

Each row is one kind of bad input or fault, tried with the real command (`b2b ...`, `python -m b2b.train`,
`python launch/submit.py --dry-run`) on small real inputs in a temporary folder: what the user sees is
the exit status and the first line on stderr (for a Python traceback, its last line), with the temporary
folder written as `DIR` and the repository as `REPO`; long messages are cut at {max} characters. *One
clear line* means no traceback and the message on a single line of stderr; argparse's usage lines, progress
bars and `warning:` lines about single files before it are not counted (the column says how many warnings
came first). *Accepted silently* means the command succeeded without a word about the fault.

Reproduce (a few minutes on 2 cores; `--list` shows the cases, `-k WORD` runs some of them):

```bash
python bench/bad_inputs.py --out docs/robustness.md
```

"""


def render(rows: list[tuple[int, Case, Result, str, str]]) -> str:
    clear = sum(1 for *_, ok in rows if ok.startswith("yes"))
    lines = [
        INTRO.format(max=MAX_MESSAGE),
        f"{len(rows)} cases; {clear} answered with one clear line.\n",
        "| # | area | fault | what the user sees | exit | one clear line |",
        "|---|---|---|---|---|---|",
    ]
    for number, item, result, message, ok in rows:
        lines.append(
            f"| {number} | {item.area} | {fault_cell(item.fault)} | {code_cell(message)} | "
            f"{result.returncode} | {ok} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the Markdown table here (default: print it)")
    parser.add_argument("--list", action="store_true", help="print the cases without running them")
    parser.add_argument("-k", dest="keyword", help="only cases whose area or fault contain this (any case)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (its path is printed)")
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="print the whole stderr of every case that is not one clear line",
    )
    args = parser.parse_args(argv)

    chosen = [
        (i, c)
        for i, c in enumerate(CASES, 1)
        if not args.keyword or args.keyword.lower() in f"{c.area} {c.fault}".lower()
    ]
    if args.list:
        for number, item in chosen:
            print(f"{number:3d}  {item.area:18s} {item.fault}")
        return 0

    root = Path(tempfile.mkdtemp(prefix="b2b-bad-inputs-"))
    ctx = Context(root)
    start = time.perf_counter()
    rows = []
    try:
        for number, item in chosen:
            began = time.perf_counter()
            try:
                result = item.run(ctx)
            except Exception as exc:  # the case could not be prepared: keep the row, go on
                result = Result(-1, "", f"(the case itself failed: {type(exc).__name__}: {exc})")
            message, ok = summarize(result, root)
            rows.append((number, item, result, message, ok))
            if args.verbose and not ok.startswith("yes"):
                print(result.stderr.replace(str(root), "DIR"), file=sys.stderr)
            print(
                f"{number:3d} {time.perf_counter() - began:5.1f}s exit {result.returncode:3d} {ok:22s} "
                f"{item.area}: {item.fault}",
                file=sys.stderr,
                flush=True,
            )
    finally:
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    text = render(rows)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    else:
        print(text)
    clear = sum(1 for *_, ok in rows if ok.startswith("yes"))
    elapsed = time.perf_counter() - start
    print(f"{len(rows)} cases, {clear} one clear line, in {elapsed:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
