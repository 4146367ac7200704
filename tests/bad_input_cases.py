"""Bad input and faults as a user meets them: one table of cases, each a command and what it must say.

Every case runs the real command (``b2b ...``, ``python -m b2b.train``, ``python launch/submit.py``) on
small real inputs, after planting its faulty files in its own folder, and names what the user must see:
the exit status and one clear line (the last non-empty line of stderr, with no traceback) matching a
regular expression. tests/test_bad_inputs.py asserts every case; ``python bench/robustness_table.py
--out docs/robustness.md`` runs the same cases and writes the table of docs/robustness.md. Placeholders
(``{case}``, ``{shards}``, ``{tiny}``, ...) and how a case runs: tests/fault_kit.py.

A case that does not give one clear line today says why in ``xfail`` (its test is xfail(strict), so a
fix makes it fail until the case is updated).
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

from fault_kit import (
    Case,
    Inputs,
    Setup,
    checkpoint,
    copy,
    edit_json,
    held_lock,
    manifest,
    mkdir,
    rehash,
    remove,
    run_copy,
    text,
    truncate,
    write,
)
from test_hardening import Payload, rewrite_digest

from b2b.atomic import file_sha256

# ---------------------------------------------------------------------------------------------------
# What some cases plant


def flip_first_sample(rehash: bool) -> Setup:
    """The payload of the first sample of ``{case}/train-00000.tar`` overwritten (same size); with
    ``rehash`` the manifest's sha256 is updated, so only decoding can find it."""

    def plant(inputs: Inputs, folder: Path) -> None:
        tar = folder / "train-00000.tar"
        with tarfile.open(tar) as archive:
            first = archive.getmembers()[0]
        data = bytearray(tar.read_bytes())
        data[first.offset_data : first.offset_data + first.size] = b"\xff" * first.size
        tar.write_bytes(bytes(data))
        if rehash:
            manifest(lambda m: m["shards"][0].update(sha256=file_sha256(tar)))(inputs, folder)

    return plant


def stray_member(inputs: Inputs, folder: Path) -> None:
    """A ``README.txt`` put first in ``{case}/train-00000.tar`` (its last sample dropped), the manifest's
    size and sha256 updated to match."""
    tar = folder / "train-00000.tar"
    with tarfile.open(tar) as archive:
        members = [(m, archive.extractfile(m).read()) for m in archive.getmembers()]
    with tarfile.open(tar, "w", format=tarfile.USTAR_FORMAT) as archive:
        info = tarfile.TarInfo("README.txt")
        info.size = 5
        archive.addfile(info, io.BytesIO(b"hello"))
        for member, data in members[:-1]:
            archive.addfile(member, io.BytesIO(data))
    size = tar.stat().st_size
    manifest(lambda m: m["shards"][0].update(bytes=size, sha256=file_sha256(tar)))(inputs, folder)


def plain_npz(inputs: Inputs, folder: Path) -> None:
    import numpy as np

    np.savez(folder / "song.npz", x=np.arange(10))


def silent_midi(inputs: Inputs, folder: Path) -> None:
    import pretty_midi

    midi = pretty_midi.PrettyMIDI()
    midi.instruments.append(pretty_midi.Instrument(0))
    midi.write(str(folder / "silence.mid"))


def foreign_safetensors(inputs: Inputs, folder: Path) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    save_file({"weight": np.zeros((2, 2), np.float32)}, str(folder / "model.safetensors"))


def crafted_pickle(inputs: Inputs, folder: Path) -> None:
    """A rank file whose unpickling would run ``touch {case}/pwned``, COMPLETE's digest matching."""
    import torch

    torch.save({"rng": Payload(folder / "pwned")}, folder / "step-2" / "rank-00000.pt")
    rewrite_digest(folder / "step-2", "rank-00000.pt")


def payload_did_not_run(folder: Path) -> str | None:
    return "the crafted pickle's payload ran" if (folder / "pwned").exists() else None


def tampered_weights(inputs: Inputs, folder: Path) -> None:
    """One generator weight changed by +1, COMPLETE's digest matching the new file."""
    import torch

    path = folder / "step-2" / "generator.pt"
    state = torch.load(path, weights_only=True)
    first = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][first] += 1.0
    torch.save(state, path)
    rewrite_digest(folder / "step-2", "generator.pt")


def damage_run_file(run: str, name: str) -> Setup:
    """One byte near the end of ``{runs}/run/checkpoints/step-2/name`` flipped (same size)."""

    def plant(inputs: Inputs, folder: Path) -> None:
        path = inputs.paths["runs"] / run / "checkpoints" / "step-2" / name
        data = bytearray(path.read_bytes())
        data[-100] ^= 0xFF
        path.write_bytes(bytes(data))

    return plant


def truncate_run_file(run: str, name: str) -> Setup:
    def plant(inputs: Inputs, folder: Path) -> None:
        path = inputs.paths["runs"] / run / "checkpoints" / "step-2" / name
        path.write_bytes(path.read_bytes()[:1000])

    return plant


def rename_run_step(run: str, name: str) -> Setup:
    """``{runs}/run/checkpoints/step-2`` renamed to ``name``."""

    def plant(inputs: Inputs, folder: Path) -> None:
        steps = inputs.paths["runs"] / run / "checkpoints"
        (steps / "step-2").rename(steps / name)

    return plant


def run_trained_on(run: str, shards: str) -> Setup:
    """``{runs}/run``'s latest checkpoint says it trained on ``{dir}/shards`` (which does not exist)."""

    def plant(inputs: Inputs, folder: Path) -> None:
        meta = inputs.paths["runs"] / run / "checkpoints" / "step-2" / "meta.json"
        values = json.loads(meta.read_text())
        values["config"]["data"]["shards"] = str(inputs.root / shards)
        meta.write_text(json.dumps(values))

    return plant


def samples_copy(edit: Callable[[Path], None]) -> Setup:
    def plant(inputs: Inputs, folder: Path) -> None:
        shutil.copytree(inputs.path("samples"), folder, dirs_exist_ok=True)
        edit(folder)

    return plant


def submit_config(inputs: Inputs, folder: Path) -> None:
    """``{case}/submit.yaml``: the tiny shards, the runs folder, two steps (JSON is YAML)."""
    values = {"data": {"shards": str(inputs.paths["shards"])}, "run_dir": str(inputs.paths["runs"])}
    (folder / "submit.yaml").write_text(json.dumps({**values, "train": {"steps": 2}}))


def fake_slurm(inputs: Inputs, folder: Path) -> None:
    """``{case}/bin/sbatch`` and ``{case}/bin/scontrol`` as on a login node whose Slurm has no reachable
    controller: what scontrol prints then (Slurm 23.02, no slurm.conf, no DNS SRV record). A stand-in:
    no Slurm is installed here (tests/test_slurm.py runs a real cluster where it can)."""
    bin_folder = folder / "bin"
    bin_folder.mkdir()
    lines = [
        "scontrol: error: resolve_ctls_from_dns_srv: res_nsearch error: Unknown host",
        "scontrol: error: fetch_config: DNS SRV lookup failed",
        "scontrol: error: _establish_config_source: failed to fetch config",
        "scontrol: fatal: Could not establish a configuration source",
    ]
    script = "#!/bin/sh\n" + "".join(f"echo '{line}' >&2\n" for line in lines) + "exit 1\n"
    for name in ("sbatch", "scontrol"):
        (bin_folder / name).write_text(script)
        (bin_folder / name).chmod(0o755)


def no_wandb(inputs: Inputs, folder: Path) -> None:
    """Nothing is uninstalled: a sitecustomize.py on PYTHONPATH makes ``import wandb`` find nothing."""
    (folder / "sitecustomize.py").write_text("import sys\nsys.modules['wandb'] = None\n")


def only_val_split(values: dict) -> None:
    values.update(shards=[s for s in values["shards"] if s["split"] == "val"], n_train=0)


def remove_first_sample(inputs: Inputs, folder: Path) -> None:
    min((folder / "samples").glob("sample-*.npz")).unlink()


def midi_with_division(division: int) -> Setup:
    """``song.mid``: one note, its header's division (bytes 12-13) set to ``division``."""

    def plant(inputs: Inputs, folder: Path) -> None:
        import pretty_midi

        midi = pretty_midi.PrettyMIDI()
        piano = pretty_midi.Instrument(0)
        piano.notes.append(pretty_midi.Note(velocity=90, pitch=60, start=0.0, end=1.0))
        midi.instruments.append(piano)
        buffer = io.BytesIO()
        midi.write(buffer)
        data = bytearray(buffer.getvalue())
        data[12:14] = division.to_bytes(2, "big")
        (folder / "song.mid").write_bytes(bytes(data))

    return plant


def foreign(*names: str) -> Setup:
    """Files the user owns, ``{case}/name`` each, that no command may delete or change."""

    def plant(inputs: Inputs, folder: Path) -> None:
        for name in names:
            write(name, f"the user's {name}\n")(inputs, folder)

    return plant


def foreign_intact(*names: str) -> Callable[[Path], str | None]:
    """The files :func:`foreign` planted are there, unchanged."""

    def check(folder: Path) -> str | None:
        for name in names:
            path = folder / name
            if not path.is_file() or path.read_text() != f"the user's {name}\n":
                return f"the user's file {name} was deleted or changed"
        return None

    return check


def checkpoint_intact(folder: Path) -> str | None:
    """Every file of ``{case}/step-2`` still has the digest its COMPLETE lists, and nothing was added."""
    step = folder / "step-2"
    listed = json.loads((step / "COMPLETE").read_text())["sha256"]
    extra = sorted({p.name for p in step.iterdir()} - set(listed) - {"COMPLETE"})
    changed = sorted(name for name, digest in listed.items() if file_sha256(step / name) != digest)
    return f"the checkpoint changed: {changed or extra}" if changed or extra else None


# ---------------------------------------------------------------------------------------------------
# How the cases of each command are written

TRAIN, SHARDS, SAMPLE, EVAL, EXPORT, DESCRIBE, SUBMIT = (
    f"{prog}: error: "
    for prog in ("b2b train", "b2b shards", "b2b sample", "b2b eval", "b2b export", "b2b describe", "submit")
)
SAFE_NAME = (
    "is not a safe folder name: use letters, digits, '.', '_' and '-' (at most 100 characters, not '.' or "
    "'..'), e.g. name=lpd17-run1"
)
NOT_A_CHECKPOINT = (
    "is neither a checkpoint folder (…/checkpoints/step-N) nor a run folder with a complete checkpoint"
)
CANNOT_PRODUCE = (
    "sample shape [5, 16, 47]: the networks cannot produce pitch size 47; each of time and pitch must equal "
    "d0 × s1 × … × s5 with an initial size d0 <= 16 and every stride s_i in {1, 2, 3, 4} …"
)
NO_SHARDS_AT = (
    "no shards at '{dir}/{name}': {dir}/{name}/manifest.json does not exist; build them from your MIDI files "
    "with `b2b shards build --source midi --input MIDI_FOLDER --output {dir}/{name}`, or from the Lakh "
    "Pianoroll Dataset …"
)
SLURM_CHARACTERS = "(letters, digits and _.,:|&!*()[]@%+=- only; no spaces, quotes or newlines)"
LOCK_HOLDER = {"host": "node7", "pid": 4242, "since": "2025-01-01 12:00:00"}


def no_shards_at(name: str) -> str:
    return NO_SHARDS_AT.replace("{name}", name)


def train(id: str, area: str, kind: str, *args: str, msg: str, exit: int = 2, prefix: str = TRAIN,
          **extra) -> Case:  # fmt: skip
    """``python -m b2b.train {tiny} name=<id> args...``: the tiny model; the case's args come last, and "
    "win."""
    argv = ("python", "-m", "b2b.train", "{tiny}", f"name={id}", *args)
    return Case(id, area, kind, argv, exit, text(prefix + msg), **extra)


def config_file(id: str, kind: str, config: str, msg: str, *setup: Setup) -> Case:
    """``python -m b2b.train --config <config>``: a fault of the file is found before anything else."""
    argv = ("python", "-m", "b2b.train", "--config", config)
    return Case(id, "config", kind, argv, 2, text(TRAIN + msg), setup=setup)


def resume(id: str, kind: str, *setup: Setup, msg: str, args: tuple[str, ...] = (), **extra) -> Case:
    """A run resumed from a copy of the base run's last checkpoint, ``{case}/step-2``, changed by "
    "``setup``."""
    args = ("checkpoint.resume={case}/step-2", "train.steps=3", *args)
    setup = (checkpoint(), *setup)
    return train(id, "resume/checkpoints", kind, *args, msg=msg, exit=1, setup=setup, **extra)


def train_data(id: str, kind: str, *setup: Setup, msg: str, exit: int = 1) -> Case:
    """Training on a copy of the tiny shards in ``{case}``, changed by ``setup``."""
    return train(id, "train", kind, "data.shards={case}", msg=msg, exit=exit, setup=(copy("shards"), *setup))


def b2b(id: str, area: str, kind: str, *args: str, msg: str, prefix: str, exit: int = 2, **extra) -> Case:
    return Case(id, area, kind, ("b2b", *args), exit, text(prefix + msg), **extra)


def build(id: str, kind: str, *args: str, msg: str, prefix: str = SHARDS, **extra) -> Case:
    """``b2b shards build`` of the tiny LPD-5 songs into ``{case}/out``, with ``args`` (the fault) added."""
    argv = ("shards", "build", "--source", "lpd", "--input", "{lpd}", "--output", "{case}/out", "--tracks",
            "lpd5", "--workers", "1", "--no-progress", *args)  # fmt: skip
    return b2b(id, "shards build", kind, *argv, msg=msg, prefix=prefix, **extra)


def build_from(id: str, kind: str, source: str, files: dict[str, bytes] | Setup, *args: str, msg: str,
               setup: tuple[Setup, ...] = (), exit: int = 2, prefix: str = SHARDS) -> Case:  # fmt: skip
    """``b2b shards build --source <source>`` of the files planted in ``{case}/in``."""

    def plant(inputs: Inputs, folder: Path) -> None:
        if callable(files):
            return files(inputs, folder / "in")
        for name, data in files.items():
            write(f"in/{name}", data)(inputs, folder)

    argv = ("shards", "build", "--source", source, "--input", "{case}/in", "--output", "{case}/out",
            "--workers", "1", "--no-progress", *args)  # fmt: skip
    return b2b(id, "shards build", kind, *argv, msg=msg, prefix=prefix, setup=(mkdir("in"), *setup, plant),
               exit=exit)  # fmt: skip


def all_skipped(count: int, reason: str) -> str:
    return (f"nothing usable: all {count} source files under {{case}}/in were skipped (most common reason: "
            f"{reason}); see the warnings above")  # fmt: skip


def inspect(id: str, kind: str, *setup: Setup, msg: str, verify: bool = True) -> Case:
    """``b2b shards inspect {case} --n 0`` of a copy of the tiny shards changed by ``setup``."""
    argv = ("shards", "inspect", "{case}", "--n", "0", *(["--verify"] if verify else []))
    return b2b(id, "shards inspect", kind, *argv, msg=msg, prefix=SHARDS, setup=(copy("shards"), *setup))


def sample(id: str, kind: str, checkpoint: str, *args: str, msg: str, **extra) -> Case:
    """``b2b sample`` of two samples, audio by the fallback synthesizer, measured against 8 real ones."""
    argv = ("sample", "--checkpoint", checkpoint, "--out", "{case}/out", "--n", "2", "--measure", "8",
            "--no-progress", "--synth", "fallback", "--sample-rate", "8000", *args)  # fmt: skip
    return b2b(id, "sample", kind, *argv, msg=msg, prefix=SAMPLE, **extra)


def evaluate(id: str, kind: str, *args: str, msg: str, **extra) -> Case:
    return b2b(id, "eval", kind, "eval", *args, msg=msg, prefix=EVAL, **extra)


def export(id: str, kind: str, *args: str, msg: str, **extra) -> Case:
    return b2b(id, "export", kind, "export", *args, msg=msg, prefix=EXPORT, **extra)


def describe(id: str, kind: str, *args: str, msg: str, **extra) -> Case:
    return b2b(id, "describe", kind, "describe", *args, msg=msg, prefix=DESCRIBE, **extra)


def submit(id: str, kind: str, *args: str, msg: str, config: str = "{case}/submit.yaml", prefix: str = SUBMIT,
           setup: tuple[Setup, ...] = (), **extra) -> Case:  # fmt: skip
    """``python launch/submit.py --config <config> --nodes 1 --gpus-per-node 1 args...`` (later flags win)."""
    argv = ("python", "{repo}/launch/submit.py", "--config", config, "--nodes", "1", "--gpus-per-node", "1",
            *args)  # fmt: skip
    return Case(id, "submit", kind, argv, 2, text(prefix + msg), setup=(submit_config, *setup), **extra)


# ---------------------------------------------------------------------------------------------------
# The cases

# fmt: off
CASES: list[Case] = [
    # -- config: command-line overrides and YAML files, through the trainer as a user meets them --------
    train("config-override-unknown-key", "config", "unknown key in an override (typo `train.stpes`)",
          "train.stpes=5",
          msg="unknown config key 'train.stpes' in the command-line overrides: did you mean 'train.steps'? "
              "(docs/config.md)"),
    train("config-override-without-equals", "config", "override without `=` (`train.steps 5`)",
          "train.steps", "5",
          msg="override 'train.steps' is not of the form key=value (e.g. train.precision=fp16)"),
    train("config-wrong-type", "config", "wrong type: `data.batch_size=abc`", "data.batch_size=abc",
          msg="data.batch_size: expected int, got 'abc'"),
    train("config-below-minimum", "config", "below the minimum: `data.batch_size=0`", "data.batch_size=0",
          msg="data.batch_size: 0 is below the minimum 1"),
    train("config-not-a-choice", "config", "not a valid choice: `train.precision=fp8`", "train.precision=fp8",
          msg="train.precision: 'fp8' is not one of 'auto', 'bf16', 'fp16', 'fp32'"),
    train("config-nan", "config", "NaN: `optim.g_lr=nan`", "optim.g_lr=nan",
          msg="optim.g_lr: 'nan' is not a finite number"),
    train("config-infinity", "config", "infinity: `loss.gp_lambda=inf`", "loss.gp_lambda=inf",
          msg="loss.gp_lambda: 'inf' is not a finite number"),
    train("config-betas-out-of-range", "config", "betas out of range: `optim.betas=[0.5, 1.0]`",
          "optim.betas=[0.5, 1.0]",
          msg="optim.betas: expected two numbers in [0, 1), got [0.5, 1.0]"),
    train("config-no-length", "config", "`train.steps=0` and `train.epochs=0`",
          "train.steps=0", "train.epochs=0",
          msg="train.steps and train.epochs are both 0: set one of them to the length of the run"),
    train("config-syncbn-with-penalty", "config",
          "SyncBatchNorm with a batch-norm critic and the gradient penalty",
          "model.sync_batchnorm=true", "model.critic_norm=batch",
          msg="model.sync_batchnorm=true with model.critic_norm=batch cannot be used with the gradient "
              "penalty: SyncBatchNorm has no double backward (pytorch#61222). Use model.critic_norm=layer "
              "(recommended for WGAN-GP) or none, …"),
    train("config-name-dotdot", "config", "run name `..`", "name=..", msg=f"name: '..' {SAFE_NAME}"),
    train("config-name-slash", "config", "run name `a/b`", "name=a/b", msg=f"name: 'a/b' {SAFE_NAME}"),
    train("config-name-newline", "config", "run name with a newline", "name=run\nrm -rf",
          msg=f"name: 'run\\nrm -rf' {SAFE_NAME}"),
    train("config-shape-mismatch", "config", "`data.shape` disagrees with the shards",
          "data.shape=[5, 32, 48]",
          msg="data.shape [5, 32, 48] does not match the shards in '{shards}', which hold samples of shape "
              "[5, 16, 48]; drop data.shape or rebuild the shards"),
    train("config-zero3", "config", "`deepspeed.zero_stage=3`", "deepspeed.zero_stage=3",
          msg="deepspeed.zero_stage=3 is not supported: under ZeRO-3 the gradient penalty's double backward "
              "reaches convolution weights that ZeRO-3 has already released to their partitions …"),
    config_file("config-yaml-unknown-key", "unknown key in the YAML file (`model: {gwidth: 8}`)",
                "{case}/config.yaml",
                "unknown config key 'model.gwidth' in {case}/config.yaml: did you mean 'model.g_width'? "
                "(docs/config.md)",
                write("config.yaml", "model:\n  gwidth: 8\n")),
    config_file("config-yaml-empty", "empty YAML file (only a comment)", "{case}/config.yaml",
                "config file '{case}/config.yaml' is empty: give it settings (see configs/) or leave out "
                "--config to train with the defaults",
                write("config.yaml", "# nothing yet\n")),
    config_file("config-yaml-invalid", "invalid YAML (unclosed bracket)", "{case}/config.yaml",
                "config file '{case}/config.yaml' is not valid YAML: expected ',' or '}', but got ':' at "
                "line 2, column 6",
                write("config.yaml", "model: {g_width: 8\ntrain: [\n")),
    config_file("config-yaml-list", "YAML file that is a list, not a mapping", "{case}/config.yaml",
                "config in {case}/config.yaml: expected a mapping, got ['train.steps=5']",
                write("config.yaml", "- train.steps=5\n")),
    config_file("config-yaml-binary", "config file that is not text (binary bytes)", "{case}/config.yaml",
                "config file '{case}/config.yaml' cannot be read ('utf-8' codec can't decode byte 0x89 in "
                "position 0: invalid start byte)",
                write("config.yaml", b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x00")),
    config_file("config-file-missing", "missing config file", "{dir}/nowhere.yaml",
                "config file '{dir}/nowhere.yaml' does not exist"),
    config_file("config-file-is-folder", "config path is a folder", "{case}",
                "config file '{case}' is a folder; give a YAML file (see configs/)"),
    train("config-wandb-missing", "config",
          "`log.tracker=wandb` without the wandb package (simulated: a sitecustomize.py blocks the import)",
          "log.tracker=wandb", setup=(no_wandb,), env={"PYTHONPATH": "{case}"}, fresh=True, slow=True,
          msg="log.tracker=wandb needs wandb: pip install 'b2b[wandb]' (or log.tracker=none; metrics.jsonl "
              "is always written)"),
    train("config-accelerate-offload", "config",
          "accelerate DeepSpeed config with offload options b2b does not take",
          env={"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2",
               "ACCELERATE_CONFIG_DS_FIELDS": "zero_stage,offload_optimizer_device,mixed_precision"},
          msg="the accelerate config sets DeepSpeed options b2b does not take from it: "
              "offload_optimizer_device. b2b builds DeepSpeed's config itself (b2b/training/zero.py); keep "
              "only deepspeed_config.zero_stage …"),
    b2b("cli-unknown-command", "cli", "unknown command (`b2b trian`)", "trian", prefix="b2b: error: ",
        msg="argument COMMAND: invalid choice: 'trian' (choose from 'train', 'shards', 'describe', 'sample', "
            "'eval', 'export')"),

    # -- shards build -------------------------------------------------------------------------------------
    b2b("build-input-missing", "shards build", "`--input` folder does not exist",
        "shards", "build", "--source", "lpd", "--input", "{dir}/no-such-folder", "--output", "{case}/out",
        prefix=SHARDS, msg="--input '{dir}/no-such-folder' does not exist"),
    b2b("build-lpd-without-input", "shards build", "`--source lpd` without `--input`",
        "shards", "build", "--source", "lpd",
        prefix=SHARDS, msg="--source lpd needs --input DIR (a folder of source files)"),
    b2b("build-demo-with-input", "shards build", "`--source demo` with `--input`",
        "shards", "build", "--source", "demo", "--input", "{dir}",
        prefix=SHARDS,
        msg="--source demo takes no --input or --ids (it reads music21's bundled Bach corpus)"),
    b2b("build-tracks-with-demo", "shards build", "`--tracks` with `--source demo`",
        "shards", "build", "--source", "demo", "--tracks", "lpd5",
        prefix=SHARDS,
        msg="--tracks applies to --source lpd and midi; the demo's tracks are its four voices"),
    b2b("build-lpd5-files-as-lpd17", "shards build", "LPD-5 files with the default `--tracks lpd17`",
        "shards", "build", "--source", "lpd", "--input", "{lpd}", "--output", "{case}/out", "--workers", "1",
        "--no-progress", prefix=SHARDS,
        msg="nothing usable: all 12 source files under {lpd} were skipped (most common reason: an LPD-5 file "
            "(tracks Drums, Piano, Guitar, Bass, Strings): its Strings track merges many instrument families "
            "and cannot be split into …"),
    build("build-n-bars-not-an-int", "`--n-bars abc`", "--n-bars", "abc", prefix="b2b shards build: error: ",
          msg="argument --n-bars: invalid int value: 'abc'"),
    build("build-window-longer-than-songs",
          "window longer than every song (`--n-bars 64`, songs have 16 bars)",
          "--n-bars", "64",
          msg="the window (64 bars x 48 steps = 3072 steps) is longer than every song: the longest, '…', has "
              "768 steps (16.0 bars); lower --n-bars"),
    build("build-pitch-past-127", "pitch grid past MIDI's 127 (`--lowest-pitch 100 --n-pitches 48`)",
          "--lowest-pitch", "100", "--n-pitches", "48",
          msg="lowest_pitch + n_pitches = 100 + 48 = 148 exceeds MIDI's 128 pitches (0..127); lower "
              "n_pitches to at most 28"),
    build("build-negative-lowest-pitch", "negative lowest pitch (`--lowest-pitch -5`)",
          "--lowest-pitch", "-5",
          msg="lowest_pitch must be a MIDI pitch in 0..127, got -5"),
    build("build-no-pitches", "`--n-pitches 0`", "--n-pitches", "0", msg="n_pitches must be >= 1, got 0"),
    build("build-uneven-beats", "`--steps-per-bar 6` (not a multiple of 4 beats)", "--steps-per-bar", "6",
          msg="steps_per_bar (6) must be a multiple of beats_per_bar (4) so that every beat has the same "
              "number of steps"),
    build("build-hop-bars-0", "`--hop-bars 0`", "--hop-bars", "0",
          msg="--hop-bars 0 is invalid: expected an integer >= 1"),
    build("build-val-fraction-1", "`--val-fraction 1.0`", "--val-fraction", "1.0",
          msg="--val-fraction 1.0 is invalid: expected a number in [0, 1)"),
    build("build-shard-size-0", "`--shard-size 0`", "--shard-size", "0",
          msg="--shard-size 0 is invalid: expected an integer >= 1"),
    build("build-limit-0", "`--limit 0`", "--limit", "0",
          msg="--limit 0 is invalid: expected an integer >= 1"),
    build("build-min-notes-too-high", "`--min-notes` above every window's note count",
          "--min-notes", "100000",
          msg="nothing usable: no window of 4 bars passed the filters in {lpd} (48 had fewer than "
              "--min-notes 100000 note onsets, 0 covered bars of another length than 48 steps; 0 works "
              "excluded, 0 files skipped)"),
    build("build-workers-0", "`--workers 0`", "--workers", "0",
          msg="--workers 0 is invalid: expected an integer >= 1"),
    build("build-output-of-user-files", "`--output` holds the user's files (a `.cache/`, a `val-*.tar`), as "
          "`--output .` in a home folder would", setup=(foreign("out/.cache/pip/f", "out/val-photos.tar"),),
          check=foreign_intact("out/.cache/pip/f", "out/val-photos.tar"),
          msg="--output '{case}/out' holds files that are not b2b shards (.cache, val-photos.tar); give a "
              "new or empty folder for the shards"),
    build_from("build-no-npz", "input folder holds no .npz files", "lpd", {"notes.txt": b"nothing here"},
               msg="no .npz files under '{case}/in' (searched all subfolders)"),
    build_from("build-all-npz-corrupt", "every .npz file is corrupt (garbage bytes)", "lpd",
               {f"song{i}.npz": bytes(range(i, 256)) for i in range(3)},
               msg=all_skipped(3, "not a readable .npz (zip) file (BadZipFile: File is not a zip file)")),
    build_from("build-empty-npz", "an empty (0-byte) .npz file", "lpd", {"song.npz": b""},
               msg=all_skipped(1, "not a readable .npz (zip) file (BadZipFile: File is not a zip file)")),
    build_from("build-plain-npz", "a .npz that is not LPD (a plain numpy archive)", "lpd", plain_npz,
               msg=all_skipped(1, "no info.json inside: not an LPD/pypianoroll file")),
    build_from("build-one-corrupt-among-good",
               "one corrupt file among good ones (the build goes on and names the file it skipped)", "lpd",
               {"broken.npz": b"PK\x03\x04 not really a zip"}, "{tiny_shards_args}",
               setup=(copy("lpd", "in"),),
               exit=0, prefix="",
               msg="warning: skipped {case}/in/broken.npz: not a readable .npz (zip) file (BadZipFile: File "
                   "is not a zip file)"),
    build_from("build-text-as-midi", "a text file named .mid (`--source midi`)", "midi",
               {"song.mid": b"this is not MIDI\n"},
               msg=all_skipped(1, "not a readable MIDI file (OSError: MThd not found. Probably not a "
                                  "MIDI file)")),
    build_from("build-midi-without-notes", "a valid MIDI file with no notes", "midi", silent_midi,
               msg=all_skipped(1, "contains no notes")),
    build_from("build-midi-zero-ticks", "a MIDI file with 0 ticks per quarter note", "midi",
               midi_with_division(0),
               msg=all_skipped(1, "its header gives 0 ticks per quarter note, so its notes have no time")),
    build_from("build-midi-smpte", "a MIDI file with SMPTE timing (25 frames/s, 40 ticks each)", "midi",
               midi_with_division(0xE728),
               msg=all_skipped(1, "its timing is SMPTE (frames per second), not ticks per quarter note; b2b "
                                  "reads notes on beats: save the file with a beat-based resolution")),
    build("build-ids-missing", "`--ids` file does not exist", "--ids", "{dir}/no-ids.txt",
          msg="--ids file '{dir}/no-ids.txt' does not exist"),
    build("build-ids-empty", "`--ids` file lists no MSD ids", "--ids", "{case}/ids.txt",
          setup=(write("ids.txt", "rock\npop\n"),),
          msg="--ids file '{case}/ids.txt' lists no MSD track ids (expected lines such as "
              "'TRAAAGR128F425B14B', optionally with other columns)"),
    build("build-ids-match-nothing", "`--ids` lists ids that match no song", "--ids", "{case}/ids.txt",
          setup=(write("ids.txt", "TRAAAGR128F425B14B\n"),),
          msg="none of the 1 listed MSD ids matches any of the 12 files under '{lpd}' (a song's MSD id is "
              "the name of the folder holding it, e.g. …"),
    b2b("build-output-is-file", "shards build", "`--output` is an existing file",
        "shards", "build", "--source", "lpd", "--input", "{lpd}", "--output", "{case}/file", "--workers", "1",
        prefix=SHARDS, setup=(write("file", b"x"),), msg="--output '{case}/file' exists and is not a folder"),
    b2b("build-output-under-file", "shards build", "`--output` lies under a file",
        "shards", "build", "--source", "lpd", "--input", "{lpd}", "--output", "{case}/file/shards",
        "--workers", "1", prefix=SHARDS, setup=(write("file", b"x"),),
        msg="--output '{case}/file/shards' cannot be created: '{case}/file' is a file"),
    b2b("build-output-locked", "shards build",
        "another build is writing to the same `--output` (its lock is held)",
        "shards", "build", "--source", "lpd", "--input", "{lpd}", "--output", "{case}/out",
        "{tiny_shards_args}", "--workers", "1", "--no-progress", prefix=SHARDS,
        setup=(held_lock("{case}/out/.b2b-build/lock"),),
        msg="another `b2b shards build` is writing to '{case}/out'; wait for it to finish"),
    b2b("build-output-other-options", "shards build", "`--output` holds shards built with other options",
        "shards", "build", "--source", "lpd", "--input", "{lpd}", "--output", "{case}/out",
        "{tiny_shards_args}", "--workers", "1", "--no-progress", "--n-bars", "1", prefix=SHARDS,
        setup=(copy("shards", "out"),),
        msg="'{case}/out' already holds shards built with other options (n_bars 2 -> 1); pass --overwrite to "
            "replace them, or choose another --output"),

    # -- shards inspect -----------------------------------------------------------------------------------
    b2b("inspect-folder-missing", "shards inspect", "folder does not exist",
        "shards", "inspect", "{dir}/no-shards", "--n", "0", prefix=SHARDS, msg=no_shards_at("no-shards")),
    b2b("inspect-png-not-png", "shards inspect", "`--png out.json`", "shards", "inspect", "{shards}", "--n",
        "2", "--png", "{case}/out.json", prefix=SHARDS,
        msg="--png '{case}/out.json' must end in .png, e.g. '{case}/out.png'"),
    inspect("inspect-manifest-not-json", "manifest.json is not JSON", write("manifest.json", '{"shards": ['),
            verify=False,
            msg="{case}/manifest.json is not valid JSON (Expecting value: line 1 column 13 (char 12)); "
                "rebuild the shards"),
    inspect("inspect-manifest-empty", "manifest.json is `{}`", write("manifest.json", "{}"), verify=False,
            msg="{case}/manifest.json is not a b2b shards manifest (no 'shards' or 'shape'); rebuild the "
                "shards"),
    inspect("inspect-manifest-without-spec", "manifest without its `spec`", manifest(lambda m: m.pop("spec")),
            verify=False,
            msg="{case}/manifest.json has no valid 'spec' (KeyError: 'spec'); rebuild the shards"),
    inspect("inspect-shard-outside-folder",
            "manifest names a shard outside its folder (`../../etc/passwd`), `--verify`",
            manifest(lambda m: m["shards"][0].update(name="../../etc/passwd")),
            msg="{case}/manifest.json names a shard '../../etc/passwd' outside the shards folder {case}; a "
                "manifest may only name files inside its own folder: rebuild the shards"),
    inspect("inspect-shard-missing", "a shard file is missing, `--verify`", remove("train-00001.tar"),
            msg="1 problem(s) in {case}: train-00001.tar: missing"),
    inspect("inspect-shard-truncated", "a truncated shard, `--verify`", truncate("train-00000.tar", 5000),
            msg="1 problem(s) in {case}: train-00000.tar: sha256 differs from the manifest (changed or "
                "damaged)"),
    inspect("inspect-sample-corrupt",
            "a corrupted sample, the manifest's sha256 updated to match, `--verify`",
            flip_first_sample(rehash=True),
            msg="1 problem(s) in {case}: train-00000.tar: sample '000000000': not a packbits+zlib stream: "
                "Error -3 while decompressing data: incorrect header check"),
    inspect("inspect-sample-count-wrong", "the manifest's sample count for a shard is wrong, `--verify`",
            manifest(lambda m: m["shards"][0].update(n=41)),
            msg="1 problem(s) in {case}: train-00000.tar: holds 40 samples, the manifest says 41"),
    b2b("inspect-png-is-folder", "shards inspect", "`--png` is an existing folder",
        "shards", "inspect", "{shards}", "--n", "2", "--png", "{case}", prefix=SHARDS,
        msg="--png '{case}' is a folder; give the image's file name, e.g. {case}/samples.png"),

    # -- train: the data ----------------------------------------------------------------------------------
    train("train-shards-missing", "train", "`data.shards` folder does not exist",
          "data.shards={dir}/shards-lpd17",
          msg="no shards at '{dir}/shards-lpd17': {dir}/shards-lpd17/manifest.json does not exist; build "
              "them from the Lakh Pianoroll Dataset (…"),
    train_data("train-shard-outside-folder", "manifest names a shard outside its folder (`../../etc/passwd`)",
               manifest(lambda m: m["shards"][0].update(name="../../etc/passwd")),
               msg="{case}/manifest.json names a shard '../../etc/passwd' outside the shards folder {case}; "
                   "a manifest may only name files inside its own folder: rebuild the shards"),
    train_data("train-n-train-wrong", "the manifest's `n_train` disagrees with its shards",
               manifest(lambda m: m.update(n_train=999)),
               msg="{case}/manifest.json: n_train is 999 but its train shards list 165 samples; rebuild the "
                   "shards"),
    train_data("train-shards-not-a-list", "the manifest's `shards` is not a list",
               manifest(lambda m: m.update(shards=5)), exit=2,
               msg="{case}/manifest.json: 'shards' must be a list of shard entries; rebuild the shards"),
    train_data("train-shape-not-three-sizes", "the manifest's `shape` is not three sizes",
               manifest(lambda m: m.update(shape=[5, 16])), exit=2,
               msg="{case}/manifest.json: 'shape' must be [tracks, time, pitch] of positive integers, got "
                   "[5, 16]; rebuild the shards"),
    train_data("train-only-val-split", "the shards hold only a val split", manifest(only_val_split),
               msg="{case}/manifest.json lists no shards for split 'train'; it has shards for: val"),
    train_data("train-shard-missing", "a shard file is missing", remove("train-00001.tar"),
               msg="shard {case}/train-00001.tar is listed in {case}/manifest.json but does not exist; "
                   "rebuild the shards"),
    train_data("train-shard-truncated", "a truncated shard", truncate("train-00000.tar", 5000),
               msg="shard {case}/train-00000.tar is 5000 bytes but {case}/manifest.json says 51200: the file "
                   "is truncated or was rewritten after the manifest; rebuild the shards"),
    train_data("train-sample-corrupt", "a corrupted sample (same size, bytes overwritten)",
               flip_first_sample(rehash=False),
               msg="shard {case}/train-00000.tar: sample '000000000' does not decode to the manifest's shape "
                   "[5, 16, 48] (not a packbits+zlib stream: Error -3 while decompressing data: incorrect "
                   "header check); rebuild the shards"),
    train_data("train-stray-member", "a shard holds a member that is not a sample", stray_member,
               msg="shard {case}/train-00000.tar holds 'README.txt', which is not a sample (<key>.roll)"),
    train("train-shape-networks-cannot-make", "train", "shards of a shape the networks cannot produce "
          "([5, 16, 47])", "data.shards={odd_shards}", msg=CANNOT_PRODUCE),
    train("train-too-few-samples", "train",
          "too few samples for one step (`data.batch_size=64`, 165 samples)",
          "data.batch_size=64", "loss.n_critic=5", exit=1,
          msg="{shards} gives each of 1 ranks 2 batches of 64 per epoch, fewer than one step needs (5 = "
              "loss.n_critic × train.grad_accum): lower data.batch_size or add data"),
    train("train-non-finite-loss", "train", "non-finite loss (`loss.gp_lambda=1e300` overflows float32)",
          "loss.gp_lambda=1e300", exit=1, slow=True,
          msg="non-finite loss at step 1 (d_loss=inf); stopping without saving. The last good checkpoint is "
              "none (no checkpoint was written yet). Lower the learning rates (optim.g_lr, optim.d_lr) or "
              "use train.precision=bf16/fp32"),
    train("train-fp16-on-cpu", "train",
          "`train.precision=fp16` on a machine without a GPU (b2b's own autocast and loss scaling run on a "
          "CPU too; a line of stdout says so)",
          "train.precision=fp16", "train.steps=1", exit=0, prefix="", stream="stdout", slow=True, no_gpu=True,
          msg="b2b: 1 rank(s) on cpu, precision fp16 (as configured), …"),
    train("train-run-folder-locked", "train", "a second trainer on the same run folder (its lock is held)",
          setup=(held_lock("{runs}/train-run-folder-locked/.lock", LOCK_HOLDER),),
          msg="the run folder {runs}/train-run-folder-locked is in use by another trainer (pid 4242 on host "
              "node7, since 2025-01-01 12:00:00); wait for it to finish, stop it, or train under another "
              "name="),
    train("train-run-dir-is-file", "train", "`run_dir` is a file", "run_dir={case}/file", exit=1,
          setup=(write("file", b"x"),),
          msg="cannot create the run folder {case}/file/train-run-dir-is-file (Not a directory): the trainer "
              "keeps its lock, logs and checkpoints there; fix its permissions or choose another run_dir"),

    # -- resume and checkpoints ---------------------------------------------------------------------------
    resume("resume-other-model", "resume with a different model (`model.g_width=8`)",
           args=("model.g_width=8",),
           msg="cannot resume from {case}/step-2: the config changes what the checkpoint holds "
               "(model.g_width: checkpoint 4, config 8). …"),
    resume("resume-crafted-pickle",
           "crafted pickle in a rank file, COMPLETE's digest rewritten to match (the test also checks that "
           "its payload did not run)", crafted_pickle, check=payload_did_not_run,
           msg="{case}/step-2/rank-00000.pt cannot be loaded safely: it holds objects other than tensors and "
               "plain values (…); b2b never unpickles those …"),
    resume("resume-generator-truncated", "truncated generator.pt", truncate("step-2/generator.pt", 1000),
           msg="{case}/step-2/generator.pt is damaged: its sha256 differs from the one in COMPLETE"),
    resume("resume-generator-truncated-rehashed",
           "truncated generator.pt, COMPLETE's digest rewritten to match",
           truncate("step-2/generator.pt", 1000, digest="step-2"),
           msg="{case}/step-2/generator.pt cannot be loaded: it is damaged or not a checkpoint file (…"),
    resume("resume-weights-tampered", "weights changed, COMPLETE's digest rewritten to match",
           tampered_weights,
           msg="{case}/step-2/rank-00000.pt: the weights restored from the checkpoint do not have the digest "
               "saved with them: the checkpoint is damaged or was modified; resume from an earlier one"),
    resume("resume-meta-garbage", "garbage meta.json, COMPLETE's digest rewritten to match",
           write("step-2/meta.json", "{not json"), rehash("step-2", "meta.json"),
           msg="{case}/step-2/meta.json is not readable JSON (Expecting property name enclosed in double "
               "quotes: line 1 column 2 (char 1)); the checkpoint is damaged"),
    resume("resume-meta-unknown-key", "meta.json's config has an unknown key, COMPLETE's digest rewritten",
           edit_json("step-2/meta.json", lambda m: m["config"]["model"].update(g_widht=4), digest="step-2"),
           msg="unknown config key 'model.g_widht' (config saved in {case}/step-2): did you mean "
               "'model.g_width'? (docs/config.md)"),
    resume("resume-rank-file-missing", "missing rank file", remove("step-2/rank-00000.pt"),
           msg="{case}/step-2/rank-00000.pt is missing from checkpoint {case}/step-2 (listed in COMPLETE)"),
    resume("resume-complete-garbage", "garbage COMPLETE", write("step-2/COMPLETE", "garbage"),
           msg="{case}/step-2/COMPLETE is not readable (Expecting value: line 1 column 1 (char 0)); the "
               "checkpoint is damaged"),
    resume("resume-complete-old-format", "COMPLETE of the old format (no digests)",
           write("step-2/COMPLETE", json.dumps({"step": 2})),
           msg="{case}/step-2 was written by an older b2b (checkpoint format 1, without file digests) and "
               "cannot be resumed by this version; sample from it (b2b sample still reads it) or start a new "
               "run"),
    resume("resume-no-complete", "no COMPLETE (a save that was interrupted)", remove("step-2/COMPLETE"),
           msg="checkpoint '{case}/step-2' is incomplete (no COMPLETE marker): it was interrupted while "
               "being written; use an earlier one"),
    train("resume-path-missing", "resume/checkpoints", "`checkpoint.resume` path does not exist",
          "checkpoint.resume={dir}/no-run/step-7", exit=1,
          msg="checkpoint path '{dir}/no-run/step-7' does not exist"),
    train("resume-folder-without-checkpoint", "resume/checkpoints", "`checkpoint.resume` is a folder with no "
          "checkpoint", "checkpoint.resume={case}", exit=1, msg=f"'{{case}}' {NOT_A_CHECKPOINT}"),
    train("resume-latest-damaged", "resume/checkpoints",
          "automatic resume, the latest checkpoint damaged (it falls back to the one before)",
          "train.steps=3",
          exit=0, slow=True, prefix="b2b train: warning: ",
          setup=(run_copy("resume-latest-damaged"),
                 truncate_run_file("resume-latest-damaged", "generator.pt")),
          msg="{runs}/resume-latest-damaged/checkpoints/step-2/generator.pt is damaged: its sha256 differs "
              "from the one in COMPLETE; falling back to the previous checkpoint"),
    train("resume-never", "resume/checkpoints",
          "`checkpoint.resume=never` in a run folder that has checkpoints (a line of stdout says where they "
          "went)", "checkpoint.resume=never", "train.steps=1",
          exit=0, prefix="", stream="stdout", slow=True, setup=(run_copy("resume-never"),),
          msg="checkpoint.resume=never: a new run; moved step-1, step-2 to "
              "{runs}/resume-never/checkpoints/abandoned/…"),
    train("resume-steps-below-checkpoint", "resume/checkpoints", "`train.steps` lowered below the latest "
          "checkpoint's step (a line of stdout says there is nothing to train)", "train.steps=1", exit=0,
          prefix="", stream="stdout", slow=True, setup=(run_copy("resume-steps-below-checkpoint"),),
          msg="the run already reached step 2 (it trains 1 steps): nothing to train; raise train.steps to "
              "train on"),

    # -- sample -------------------------------------------------------------------------------------------
    sample("sample-checkpoint-missing", "`--checkpoint` does not exist", "{runs}/nope",
           msg="checkpoint path '{runs}/nope' does not exist"),
    sample("sample-folder-without-checkpoint", "`--checkpoint` is a folder with no checkpoint", "{case}/run",
           setup=(mkdir("run"),), msg=f"'{{case}}/run' {NOT_A_CHECKPOINT}"),
    sample("sample-garbage-safetensors", "`--checkpoint` is a garbage .safetensors file",
           "{case}/gen.safetensors", setup=(write("gen.safetensors", b"\x00" * 64),),
           msg="{case}/gen.safetensors is not a readable safetensors file (Error while deserializing header: "
               "…)"),
    sample("sample-foreign-safetensors", "`--checkpoint` is a safetensors file not written by b2b",
           "{case}/model.safetensors", setup=(foreign_safetensors,),
           msg="{case}/model.safetensors is not a b2b export (no b2b_config metadata); make one with `b2b "
               "export`"),
    sample("sample-ema-damaged", "a damaged ema.pt in the run's checkpoint", "{runs}/sample-ema-damaged",
           setup=(run_copy("sample-ema-damaged"), damage_run_file("sample-ema-damaged", "ema.pt")),
           msg="{runs}/sample-ema-damaged/checkpoints/step-2/ema.pt is damaged: its sha256 differs from the "
               "one in COMPLETE"),
    sample("sample-file-of-checkpoint", "`--checkpoint` is a file inside a checkpoint (`ema.pt`)",
           "{case}/step-2/ema.pt", setup=(checkpoint(),),
           msg="'{case}/step-2/ema.pt' is a file of the checkpoint '{case}/step-2'; give the folder itself "
               "(--checkpoint {case}/step-2), or its run folder for the latest checkpoint"),
    sample("sample-step-renamed", "`--checkpoint` names a step folder that was renamed (`step-2` to "
           "`step-2.old`)", "{runs}/sample-step-renamed/checkpoints/step-2",
           setup=(run_copy("sample-step-renamed"), rename_run_step("sample-step-renamed", "step-2.old")),
           msg="checkpoint path '{runs}/sample-step-renamed/checkpoints/step-2' does not exist; the complete "
               "ones of '{runs}/sample-step-renamed/checkpoints' are …"),
    sample("sample-n-0", "`--n 0`", "{export}", "--n", "0", msg="--n must be at least 1, got 0"),
    sample("sample-threshold-nan", "`--threshold nan`", "{export}", "--threshold", "nan",
           msg="--threshold must be within [0, 1], got nan"),
    sample("sample-tempo-nan", "`--tempo nan`", "{export}", "--tempo", "nan",
           msg="--tempo must be a number of beats per minute in (0, 1000], got nan"),
    sample("sample-rate-0", "`--sample-rate 0`", "{export}", "--sample-rate", "0",
           msg="--sample-rate must be in 1000..384000 samples per second, got 0"),
    sample("sample-measure-negative", "`--measure -1`", "{export}", "--measure", "-1",
           msg="--measure must be 0 (off) or a number of samples, got -1"),
    sample("sample-device-unknown", "`--device foo`", "{export}", "--device", "foo",
           msg="--device 'foo' is not a torch device; use auto, cpu, cuda or cuda:N"),
    sample("sample-cuda-without-gpu", "`--device cuda` on a machine without a GPU",
           "{export}", "--device", "cuda",
           no_gpu=True,
           msg="--device cuda: this machine has no CUDA GPU torch can use; use --device cpu (or auto)"),
    sample("sample-data-other-spec", "`--data` holds another roll spec than the generator's", "{export}",
           "--data", "{other_shards}",
           msg="--data '{other_shards}' holds another kind of sample than the generator makes (shape [5, 16, "
               "36] vs [5, 16, 48]): compare with the corpus the model was trained on"),
    b2b("sample-out-is-file", "sample", "`--out` is an existing file",
        "sample", "--checkpoint", "{export}", "--out", "{case}/file", "--n", "1", "--measure", "0",
        "--no-progress",
        prefix=SAMPLE, setup=(write("file", b"x"),),
        msg="--out '{case}/file' is a file; give a folder"),
    sample("sample-out-not-empty", "`--out` holds files of the user's", "{export}",
           setup=(foreign("out/notes.txt", "out/sample-000.mid"),),
           check=foreign_intact("out/notes.txt", "out/sample-000.mid"),
           msg="--out '{case}/out' holds files (notes.txt, sample-000.mid); pass --overwrite to replace "
               "files of the same names, or choose another --out"),
    sample("sample-out-in-checkpoint", "`--out` inside a checkpoint folder", "{case}/step-2",
           "--out", "{case}/step-2/samples", setup=(checkpoint(),), check=checkpoint_intact,
           msg="--out '{case}/step-2/samples' lies inside the checkpoint folder '{case}/step-2', which holds "
               "only what training wrote; choose another --out"),

    # -- eval ---------------------------------------------------------------------------------------------
    evaluate("eval-nothing-to-evaluate", "nothing to evaluate (only `--data`)", "--data", "{shards}",
             msg="b2b eval needs one of --checkpoint PATH, --samples DIR or --real-only"),
    evaluate("eval-real-only-without-data", "`--real-only` without `--data`", "--real-only",
             msg="b2b eval needs --data SHARDS (the real corpus to compare with)"),
    evaluate("eval-data-missing", "`--data` folder does not exist",
             "--real-only", "--data", "{dir}/no-shards",
             msg=no_shards_at("no-shards")),
    evaluate("eval-real-n-0", "`--real-n 0`", "--real-only", "--data", "{shards}", "--real-n", "0",
             msg="--real-n must be at least 1, got 0"),
    evaluate("eval-n-1", "`--n 1` (a set of one sample)", "--checkpoint", "{export}", "--data", "{shards}",
             "--n", "1", "--out", "{case}/out", check=lambda folder: "an --out folder was left" if
             (folder / "out").exists() else None,
             msg="--n must be at least 2 to compare generated with real samples (diversity, precision/recall "
                 "and the 1-NN test need pairs), got 1"),
    evaluate("eval-real-n-1", "`--real-n 1` with generated samples", "--checkpoint", "{export}",
             "--data", "{shards}", "--real-n", "1", "--out", "{case}/out",
             msg="--real-n must be at least 2 to compare generated with real samples (diversity, "
                 "precision/recall and the 1-NN test need pairs), got 1"),
    evaluate("eval-no-val-split", "`--split val` on shards without a val split",
             "--real-only", "--data", "{other_shards}", "--split", "val", "--out", "{case}/out",
             msg="{other_shards}/manifest.json lists no shards for split 'val'; it has shards for: train"),
    evaluate("eval-out-is-file", "`--out` is an existing file",
             "--real-only", "--data", "{shards}", "--out", "{case}/file", setup=(write("file", b"x"),),
             msg="--out '{case}/file' is a file; give a folder"),
    evaluate("eval-out-holds-a-report", "`--out` holds a `metrics.json` of the user's",
             "--real-only", "--data", "{shards}", "--out", "{case}/out", setup=(foreign("out/metrics.json"),),
             check=foreign_intact("out/metrics.json"),
             msg="--out '{case}/out' already holds (metrics.json); pass --overwrite to replace files of the "
                 "same names, or choose another --out"),
    evaluate("eval-out-in-checkpoint", "`--out` inside a checkpoint folder",
             "--real-only", "--data", "{shards}", "--out", "{case}/step-2/report", setup=(checkpoint(),),
             check=checkpoint_intact,
             msg="--out '{case}/step-2/report' lies inside the checkpoint folder '{case}/step-2', which "
                 "holds only what training wrote; choose another --out"),
    evaluate("eval-data-other-spec", "`--checkpoint` with `--data` of another roll spec",
             "--checkpoint", "{export}", "--data", "{other_shards}", "--n", "8", "--out", "{case}/out",
             msg="the generated samples differ from the samples in {other_shards} (shape [5, 16, 48] vs "
                 "[5, 16, 36], generated vs real): compare with the corpus the model was trained on"),
    evaluate("eval-export-without-data", "an export given without `--data`",
             "--checkpoint", "{export}", "--n", "8", "--out", "{case}/out",
             msg="b2b eval needs --data SHARDS (the real corpus to compare with)"),
    evaluate("eval-run-shards-gone", "`--checkpoint` of a run whose shards are gone, no `--data`",
             "--checkpoint", "{runs}/eval-run-shards-gone", "--n", "8", "--out", "{case}/out",
             setup=(run_copy("eval-run-shards-gone"),
                    run_trained_on("eval-run-shards-gone", "deleted-shards")),
             msg="the run of {runs}/eval-run-shards-gone trained on '{dir}/deleted-shards', which holds no "
                 "shards here; pass --data SHARDS"),
    evaluate("eval-samples-not-from-sample", "`--samples` folder not written by `b2b sample`",
             "--samples", "{case}/samples", "--data", "{shards}", "--out", "{case}/out",
             setup=(mkdir("samples"),),
             msg="{case}/samples/samples.json does not exist: --samples needs a folder written by `b2b "
                 "sample`"),
    evaluate("eval-samples-npz-missing", "`--samples` folder with a listed .npz missing",
             "--samples", "{case}/samples", "--data", "{shards}", "--out", "{case}/out",
             setup=(copy("samples", "samples"), remove_first_sample),
             msg="{case}/samples/sample-000.npz is listed in {case}/samples/samples.json but missing; run "
                 "`b2b sample` again"),
    evaluate("eval-samples-json-garbage", "`--samples` folder whose samples.json is not JSON",
             "--samples", "{case}/samples", "--data", "{shards}", "--out", "{case}/out",
             setup=(copy("samples", "samples"), write("samples/samples.json", "{truncated")),
             msg="{case}/samples/samples.json is not a `b2b sample` record (JSONDecodeError: Expecting "
                 "property name enclosed in double quotes: line 1 column 2 (char 1)); sample again"),

    # -- export -------------------------------------------------------------------------------------------
    export("export-checkpoint-missing", "`--checkpoint` does not exist",
           "--checkpoint", "{dir}/no-run", "--out", "{case}/gen.safetensors",
           msg="checkpoint path '{dir}/no-run' does not exist"),
    export("export-incomplete", "`--checkpoint` is incomplete (no COMPLETE)",
           "--checkpoint", "{case}/step-2", "--out", "{case}/gen.safetensors",
           setup=(checkpoint(), remove("step-2/COMPLETE")),
           msg="checkpoint '{case}/step-2' is incomplete (no COMPLETE marker): it was interrupted while "
               "being written; use an earlier one"),
    export("export-of-an-export", "`--checkpoint` is itself an export",
           "--checkpoint", "{export}", "--out", "{case}/gen.safetensors", msg=f"'{{export}}' "
                                                                              f"{NOT_A_CHECKPOINT}"),
    export("export-out-under-file", "`--out` lies under a file",
           "--checkpoint", "{run}", "--out", "{case}/file/gen.safetensors", setup=(write("file", b"x"),),
           msg="--out '{case}/file/gen.safetensors' cannot be created: '{case}/file' is a file"),
    export("export-out-exists", "`--out` is an existing file of the user's",
           "--checkpoint", "{run}", "--out", "{case}/gen.safetensors", setup=(foreign("gen.safetensors"),),
           check=foreign_intact("gen.safetensors"),
           msg="--out '{case}/gen.safetensors' already exists; pass --overwrite to replace it, or choose "
               "another --out"),
    export("export-over-the-checkpoint", "`--out` is the checkpoint's own `ema.pt`",
           "--checkpoint", "{case}/step-2", "--out", "{case}/step-2/ema.pt", "--overwrite",
           setup=(checkpoint(),), check=checkpoint_intact,
           msg="--out '{case}/step-2/ema.pt' lies inside the checkpoint folder '{case}/step-2', which holds "
               "only what training wrote; choose another --out"),
    export("export-out-is-folder", "`--out` is an existing folder",
           "--checkpoint", "{run}", "--out", "{case}/models", setup=(mkdir("models"),),
           msg="--out '{case}/models' is a folder; give a file name, e.g. '{case}/models/gen.safetensors'"),

    # -- describe -----------------------------------------------------------------------------------------
    describe("describe-no-shape", "no shards and no `data.shape`", "data.shards={dir}/no-shards",
             msg="no sample shape: {dir}/no-shards/manifest.json does not exist and data.shape is not set. "
                 "Set data.shape=[tracks,time,pitch] (e.g. data.shape=[4,64,48]) or build the shards first "
                 "(`b2b shards build --source demo --output …"),
    describe("describe-shape-networks-cannot-make", "a shape the networks cannot produce "
             "(`data.shape=[5,16,47]`)", "data.shards={dir}/no-shards", "data.shape=[5,16,47]",
             msg=CANNOT_PRODUCE),
    describe("describe-shape-mismatch", "`data.shape` disagrees with the shards",
             "data.shards={shards}", "data.shape=[5,32,48]",
             msg="data.shape [5, 32, 48] does not match the shards in '{shards}' (shape [5, 16, 48]); drop "
                 "data.shape or point data.shards elsewhere"),
    describe("describe-shards-empty", "`data.shards=` (empty)", "data.shards=",
             msg="data.shards is empty: give a folder, e.g. data.shards=shards/demo"),
    describe("describe-config-unknown-key", "unknown key in `--config`", "--config", "{case}/config.yaml",
             setup=(write("config.yaml", "log:\n  trackr: wandb\n"),),
             msg="unknown config key 'log.trackr' in {case}/config.yaml: did you mean 'log.tracker'? "
                 "(docs/config.md)"),

    # -- submit (launch/submit.py; --dry-run renders the sbatch script without asking Slurm) ----------------
    submit("submit-nodes-0", "`--nodes 0`", "--nodes", "0", "--dry-run", msg="--nodes 0: must be at least 1"),
    submit("submit-nodes-not-an-int", "`--nodes abc`", "--nodes", "abc", "--dry-run",
           prefix="python launch/submit.py: error: ", msg="argument --nodes: invalid int value: 'abc'"),
    submit("submit-gpus-negative", "`--gpus-per-node -1`", "--gpus-per-node", "-1", "--dry-run",
           msg="--gpus-per-node -1: must be at least 0"),
    submit("submit-gpus-1000", "`--gpus-per-node 1000`", "--gpus-per-node", "1000", "--dry-run",
           msg="--gpus-per-node 1000: at most 64 GPUs per node"),
    submit("submit-time-huge", "`--time 999999999`", "--time", "999999999", "--dry-run",
           msg="--time 999999999: at most 527040 minutes (a year; Slurm's own limit is the partition's "
               "MaxTime)"),
    submit("submit-time-0", "`--time 0`", "--time", "0", "--dry-run", msg="--time 0: must be at least 1"),
    submit("submit-cpus-0", "`--cpus-per-task 0`", "--cpus-per-task", "0", "--dry-run",
           msg="--cpus-per-task 0: must be at least 1"),
    submit("submit-signal-delay-too-long", "`--signal-delay` longer than `--time`",
           "--time", "2", "--signal-delay", "200", "--dry-run",
           msg="--signal-delay 200 s must be shorter than --time 2 min, or the job is signalled before it "
               "starts"),
    submit("submit-partition-shell", "`--partition 'gpu; rm -rf ~'`",
           "--partition", "gpu; rm -rf ~", "--dry-run",
           msg=f"--partition 'gpu; rm -rf ~': not a Slurm partition {SLURM_CHARACTERS}"),
    submit("submit-partition-newline", "`--partition` with a newline", "--partition", "gpu\n#SBATCH x",
           "--dry-run", msg=f"--partition 'gpu\\n#SBATCH x': not a Slurm partition {SLURM_CHARACTERS}"),
    submit("submit-account-quote", "`--account` with a quote", "--account", "lab'x", "--dry-run",
           msg=f"--account \"lab'x\": not a Slurm account {SLURM_CHARACTERS}"),
    submit("submit-override-typo", "a config key typo in the overrides", "train.stepz=5", "--dry-run",
           msg="unknown config key 'train.stepz' in the command-line overrides: did you mean 'train.steps'? "
               "(docs/config.md)"),
    submit("submit-no-sbatch", "no `sbatch` on this machine (no `--dry-run`)", env={"PATH": "{case}"},
           msg="sbatch not found: run this on a Slurm login node (or use --dry-run)"),
    submit("submit-slurm-unreachable",
           "Slurm's commands present but no controller reachable (a stand-in `scontrol` prints what Slurm's "
           "prints then: four lines)", setup=(fake_slurm,), env={"PATH": "{case}/bin"},
           msg="cannot query Slurm (`scontrol show partition`): scontrol: …",
           xfail="launch/submit.py puts scontrol's whole stderr, four lines, into its message"),
    submit("submit-shards-missing", "the config's shards do not exist", "--dry-run", "data.shards={dir}/gone",
           msg=no_shards_at("gone")),
    submit("submit-config-missing", "`--config` file does not exist",
           "--dry-run", config="{dir}/nowhere.yaml",
           msg="config file '{dir}/nowhere.yaml' does not exist"),
]
# fmt: on
assert len({case.id for case in CASES}) == len(CASES), "every case needs its own id"
