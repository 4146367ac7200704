"""The user's path through the commands: each rough edge a newcomer met, tried as they would try it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port
from test_train import env, overrides

from b2b.cli.main import main

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def run(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny run made with `b2b train` (the console command, one process)."""
    root = tmp_path_factory.mktemp("cli")
    args = overrides(tiny_shards, root, "cli", train__steps=2, train__precision="auto")
    result = subprocess.run(
        [sys.executable, "-m", "b2b.cli", "train", *args], cwd=root, env=env(), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "precision fp32 (auto: no bf16 GPU (cpu))" in result.stdout  # train.precision: auto on a CPU
    return root / "cli"


def test_b2b_train_runs_under_accelerate_launch(tiny_shards: Path, tmp_path: Path) -> None:
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--main_process_port", str(free_port()), "--mixed_precision", "no"]
    launch += ["--dynamo_backend", "no", "-m", "b2b.cli", "train"]
    result = subprocess.run(
        [*launch, *overrides(tiny_shards, tmp_path, "launched", train__steps=2)],
        cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    meta = json.loads((tmp_path / "launched" / "checkpoints" / "step-2" / "meta.json").read_text())
    assert meta["world_size"] == 2


def test_an_export_under_any_name_samples(run: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "gen.pt"  # not .safetensors: sample must still read it
    assert main(["export", "--checkpoint", str(run), "--out", str(out)]) == 0
    hint = capsys.readouterr().out.strip().splitlines()[-1]
    assert hint == f"sample from it with: b2b sample --checkpoint {out} --n 8 --out samples/"
    assert (
        main(["sample", "--checkpoint", str(out), "--n", "2", "--out", str(tmp_path / "s"), "--no-progress"])
        == 0
    )
    captured = capsys.readouterr()
    assert "rendering" not in captured.err  # --no-progress
    assert len(list((tmp_path / "s").glob("sample-*.mid"))) == 2


def test_eval_and_sample_take_the_data_from_the_run(
    run: Path, tiny_shards: Path, tmp_path: Path, capsys
) -> None:
    assert main(["eval", "--checkpoint", str(run), "--n", "8", "--out", str(tmp_path / "e")]) == 0
    report = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert report["real_source"]["shards"] == str(tiny_shards)
    assert (
        main(["sample", "--checkpoint", str(run), "--n", "2", "--measure", "8", "--out", str(tmp_path / "s")])
        == 0
    )
    out = capsys.readouterr().out
    # The printed next step names the real path, not a placeholder; real samples are drawn beside.
    assert f"b2b eval --samples {tmp_path / 's'} --data {tiny_shards}" in out
    assert (tmp_path / "s" / "real-000.png").is_file() and (tmp_path / "s" / "compare.png").is_file()
    info = json.loads((tmp_path / "s" / "samples.json").read_text())
    assert {"distance_to_real", "diversity_ratio", "precision", "recall", "copies"} <= set(info["figures"])
    gallery = (tmp_path / "s" / "index.html").read_text()
    assert "Real samples" in gallery and "diversity" in gallery and 'class="sample real"' in gallery


def test_missing_shards_get_advice_that_fits_the_config(capsys) -> None:
    from b2b.train import main as train_main

    assert train_main(["--config", str(REPO / "configs" / "8gpu.yaml")]) == 2
    err = capsys.readouterr().err
    assert "--source lpd --input lpd_17/lpd_17_cleansed" in err and "salu133445.github.io" in err
    assert "--source demo" not in err


def test_help_is_for_users_and_there_is_a_version(capsys) -> None:
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "trains a music-generating GAN" in text and "train" in text and "A command module" not in text
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.startswith("b2b ")


def test_midi_reader_warnings_name_the_file(tmp_path: Path, capsys) -> None:
    import pretty_midi

    midi = pretty_midi.PrettyMIDI(initial_tempo=120)
    piano = pretty_midi.Instrument(0)
    piano.notes = [pretty_midi.Note(80, 60 + (i % 5), i * 0.5, i * 0.5 + 0.4) for i in range(64)]
    midi.instruments.append(piano)
    folder = tmp_path / "midi"
    folder.mkdir()
    path = folder / "tune.mid"
    midi.write(str(path))
    # A tempo change on a track other than the first: pretty_midi warns when it reads the file.
    import mido

    song = mido.MidiFile(str(path))
    song.tracks[1].insert(0, mido.MetaMessage("set_tempo", tempo=400000, time=0))
    song.save(str(path))
    args = ["shards", "build", "--source", "midi", "--input", str(folder), "--output", str(tmp_path / "o")]
    assert main([*args, "--n-bars", "2", "--workers", "1", "--no-progress", "--val-fraction", "0"]) == 0
    err = capsys.readouterr().err
    assert f"warning: {path}: Tempo, Key or Time signature change events found on non-zero tracks" in err


@pytest.mark.parametrize("example", sorted((REPO / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_each_example_config_describes_and_dry_runs(
    example: Path, tiny_shards: Path, tmp_path: Path, capsys
) -> None:
    """Each example is a valid config: `b2b describe` takes it, and so does `launch/submit.py --dry-run`
    (on the tiny shards, since the example's own data is a download away)."""
    sys.path.insert(0, str(REPO / "launch"))
    import submit

    assert main(["describe", "--config", str(example), f"data.shards={tiny_shards}"]) == 0
    assert "expected memory per rank" in capsys.readouterr().out
    args = ["--config", str(example), f"data.shards={tiny_shards}", f"run_dir={tmp_path}", "--dry-run"]
    assert submit.main([*args, "--nodes", "1", "--gpus-per-node", "1"]) == 0
    assert "#SBATCH --gpus-per-node=1" in capsys.readouterr().out
    assert example.read_text().startswith("# ")  # a comment block says how to use it
