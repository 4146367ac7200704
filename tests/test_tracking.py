"""What a run shows its user (issue 4, logging): W&B offline, TensorBoard, metrics.jsonl, snapshots, the bar.

Three single-process ``python -m b2b.train`` runs of a tiny model on the tiny shards, shared by the tests:

* W&B: 4 steps (checkpoints every 2), then the step-4 checkpoint is deleted and the same command resumes
  from step 2 to 4 — the W&B run id, the history against metrics.jsonl, each step once in metrics.jsonl.
  The first run has no ``WANDB_MODE`` and no credentials (the trainer must fall back to offline by
  itself); the second sets ``WANDB_MODE=offline``. Nothing here can reach W&B's servers.
* TensorBoard with the progress bar on: the event files against metrics.jsonl, the snapshots they hold,
  the snapshots on disk against the checkpoint's EMA generator, and the bar's text.

The offline ``.wandb`` file is read with wandb's own protobuf ``Record`` (wandb >= 0.18 ships no Python
reader of the file; its framing, a LevelDB-style log, is decoded in ``wandb_records``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import overrides

from b2b.atomic import read_json_lines
from b2b.checkpoint.inference import load_generator
from b2b.training.trackers import wandb_run_id

STEPS = 4
N_SNAPSHOT = 3
THRESHOLD = 0.5  # an untrained generator's outputs sit near 0.5: rolls with notes and silences


def tiny_args(shards: Path, run_dir: Path, name: str, **extra: object) -> list[str]:
    """test_train's tiny model with snapshots every 2 steps; ``a__b=v`` overrides ``a.b``."""
    settings = {
        "train__steps": STEPS,
        "train__threshold": THRESHOLD,
        "log__snapshot_every": 2,
        "log__n_snapshot": N_SNAPSHOT,
        "checkpoint__keep": 3,
    }
    return overrides(shards, run_dir, name, **{**settings, **extra})


def train(args: list[str], cwd: Path, **env_extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
        WANDB_SILENT="true",
        # wandb's caches and settings stay inside the test's folder; no netrc means no credentials.
        WANDB_CONFIG_DIR=str(cwd / "wandb-config"),
        WANDB_CACHE_DIR=str(cwd / "wandb-cache"),
        WANDB_DATA_DIR=str(cwd / "wandb-data"),
        NETRC=str(cwd / "no-netrc"),
        **env_extra,
    )
    result = subprocess.run(
        [sys.executable, "-m", "b2b.train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------------------
# The runs


@pytest.fixture(scope="module")
def wandb_run(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("wandb")
    args = tiny_args(tiny_shards, root, "w", log__tracker="wandb")
    train(args, root)  # no WANDB_MODE, no API key, no netrc: the trainer must choose offline
    run = root / "w"
    first_metrics = read_metrics(run)
    first_id = (run / "wandb_id.txt").read_text().strip()
    shutil.rmtree(run / "checkpoints" / "step-4")  # as if the job died after step 4's log line
    second = train(args, root, WANDB_MODE="offline")
    return {"run": run, "first_metrics": first_metrics, "first_id": first_id, "second": second}


@pytest.fixture(scope="module")
def tb_run(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("tb")
    # A large generator lr moves the raw generator away from its EMA within 4 steps, so their binarized
    # samples differ and the snapshot test can tell which one a snapshot came from.
    args = tiny_args(
        tiny_shards, root, "tb", log__tracker="tensorboard", log__progress="true", optim__g_lr=0.01
    )
    result = train(args, root)
    return {"run": root / "tb", "result": result}


# ---------------------------------------------------------------------------------------------------
# W&B (offline)


def wandb_records(path: Path) -> list:
    """Every record of an offline run's ``.wandb`` file, as wandb's own protobuf ``Record``.

    The file is a 7-byte header (``:W&B``, magic 0xBEE1, version 0), then 32 KiB blocks of chunks, each
    ``crc32c (4) | length (2, little-endian) | type (1: full, 2: first, 3: middle, 4: last)``; a block's
    tail shorter than a chunk header is padding.
    """
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:7] == b":W&B\xe1\xbe\x00", f"{path} is not a version-0 W&B log"
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        length, kind = struct.unpack("<HB", data[pos + 4 : pos + 7])
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def wandb_history(path: Path) -> dict[int, dict]:
    """``{step: {key: value}}`` of an offline run's logged history; media as nested dicts."""
    history: dict[int, dict] = {}
    for record in wandb_records(path):
        if record.WhichOneof("record_type") != "history":
            continue
        row = history.setdefault(record.history.step.num, {})
        for item in record.history.item:
            value = json.loads(item.value_json)
            if item.key:
                row[item.key] = value
            else:
                *outer, last = item.nested_key
                node = row
                for key in outer:
                    node = node.setdefault(key, {})
                node[last] = value
    return history


def offline_runs(run: Path) -> list[Path]:
    return sorted((run / "wandb").glob("offline-run-*"))


def test_resumed_run_continues_the_same_wandb_run(wandb_run: dict) -> None:
    run = wandb_run["run"]
    run_id = (run / "wandb_id.txt").read_text().strip()
    assert re.fullmatch(r"[0-9a-f]{12}", run_id)
    assert run_id == wandb_run["first_id"]
    folders = offline_runs(run)
    # One offline folder per process, both under the stored id: offline means the trainer chose offline
    # mode by itself in the first run (no key) and obeyed WANDB_MODE in the second.
    assert len(folders) == 2 and all(f.name.endswith(f"-{run_id}") for f in folders)
    for folder in folders:
        records = wandb_records(folder / f"run-{run_id}.wandb")
        (run_record,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
        assert run_record.run_id == run_id
        assert run_record.config.update  # the run's config went to W&B too


def test_wandb_history_equals_metrics_jsonl(wandb_run: dict) -> None:
    run = wandb_run["run"]
    run_id = (run / "wandb_id.txt").read_text().strip()
    first, second = (wandb_history(f / f"run-{run_id}.wandb") for f in offline_runs(run))
    assert sorted(first) == [1, 2, 3, 4]  # the first process logged every step...
    assert sorted(second) == [3, 4]  # ...the resumed one the steps after its checkpoint
    merged = {**first, **second}
    metrics = read_metrics(run)
    for key in ("d_loss", "g_loss", "wasserstein", "penalty"):
        assert [merged[row["step"]][key] for row in metrics] == [row[key] for row in metrics], key


def test_wandb_snapshots_are_the_files_on_disk(wandb_run: dict) -> None:
    """Every snapshot step logged the PNG and the WAV written to samples/ as an image and as audio."""
    run = wandb_run["run"]
    run_id = (run / "wandb_id.txt").read_text().strip()
    for folder in offline_runs(run):
        history = wandb_history(folder / f"run-{run_id}.wandb")
        for step in (2, 4):
            if step not in history:
                continue
            image, audio = history[step]["snapshot"], history[step]["snapshot_audio"]
            assert image["_type"] == "image-file" and audio["_type"] == "audio-file"
            png = (run / "samples" / f"step-{step}.png").read_bytes()
            assert (folder / "files" / image["path"]).read_bytes() == png
            assert image["sha256"] == hashlib.sha256(png).hexdigest()
            wav = (run / "samples" / f"step-{step}.wav").read_bytes()  # the first sample, played
            assert (folder / "files" / audio["path"]).read_bytes() == wav
            assert audio["sha256"] == hashlib.sha256(wav).hexdigest()
            with wave.open(io.BytesIO(wav)) as sound:
                assert sound.getnchannels() == 1 and sound.getframerate() == 22050 and sound.getnframes() > 0
        assert all("snapshot" not in history[s] for s in history if s % 2)  # only every 2 steps


def test_metrics_jsonl_has_each_step_once_after_a_resume(wandb_run: dict) -> None:
    output = wandb_run["second"].stdout + wandb_run["second"].stderr
    assert "resumed from" in output and "step-2 at step 2" in output
    metrics = read_metrics(wandb_run["run"])
    assert [row["step"] for row in metrics] == [1, 2, 3, 4]
    # The resumed steps are the same computation as the first time (bit-exact resume), logged once.
    assert [row["d_loss"] for row in metrics] == [row["d_loss"] for row in wandb_run["first_metrics"]]


# ---------------------------------------------------------------------------------------------------
# TensorBoard


@pytest.fixture(scope="module")
def events(tb_run: dict):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folders = {p.parent for p in tb_run["run"].rglob("events.out.tfevents.*")}
    accumulators = []
    for folder in sorted(folders):
        acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "audio": 0})
        acc.Reload()
        accumulators.append(acc)
    (main,) = [a for a in accumulators if "d_loss" in a.Tags()["scalars"]]
    return main


def test_tensorboard_scalars_equal_metrics_jsonl(tb_run: dict, events) -> None:
    metrics = read_metrics(tb_run["run"])
    assert [row["step"] for row in metrics] == [1, 2, 3, 4]
    for key in ("d_loss", "g_loss", "wasserstein", "penalty", "g_lr", "samples_per_s"):
        series = events.Scalars(key)
        assert [e.step for e in series] == [1, 2, 3, 4], key
        # TensorBoard stores float32: the same number, rounded once.
        assert [np.float32(e.value) for e in series] == [np.float32(row[key]) for row in metrics], key


def test_tensorboard_snapshots_are_the_png_and_its_audio(tb_run: dict, events) -> None:
    import pretty_midi
    from PIL import Image

    from b2b.eval.render import phrase_audio
    from b2b.spec import RollSpec

    run = tb_run["run"]
    spec = RollSpec.from_dict(json.loads((run / "checkpoints" / "step-4" / "meta.json").read_text())["spec"])
    images = events.Images("snapshot")
    assert [e.step for e in images] == [2, 4]
    for event in images:
        logged = np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))
        on_disk = np.asarray(Image.open(run / "samples" / f"step-{event.step}.png").convert("RGB"))
        assert np.array_equal(logged, on_disk)
    sounds = events.Audio("snapshot_audio")
    assert [e.step for e in sounds] == [2, 4]
    for event in sounds:
        # The audio is the first sample's MIDI file, played by the same synth, as long as the phrase.
        midi = pretty_midi.PrettyMIDI(str(run / "samples" / f"step-{event.step}" / "sample-00.mid"))
        expected, _ = phrase_audio(midi, spec)
        with wave.open(io.BytesIO(event.encoded_audio_string)) as wav:
            assert wav.getframerate() == 22050 and wav.getnframes() == len(expected) > 0
            pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2") / 32767.0
        np.testing.assert_allclose(pcm, expected, atol=2 / 32767)


# ---------------------------------------------------------------------------------------------------
# Snapshots on disk


def roll_from_midi(path: Path, spec, tempo: float = 100.0) -> np.ndarray:
    """Read a snapshot MIDI back onto the roll grid (tracks by instrument name, 100 bpm as written)."""
    import pretty_midi

    roll = np.zeros(spec.shape, dtype=bool)
    step = 60.0 / tempo / spec.steps_per_beat
    names = [t.name for t in spec.tracks]
    for instrument in pretty_midi.PrettyMIDI(str(path)).instruments:
        track = names.index(instrument.name)
        for note in instrument.notes:
            start, end = round(note.start / step), round(note.end / step)
            roll[track, start:end, note.pitch - spec.lowest_pitch] = True
    return roll


def snapshot_rolls(run: Path, step: int, spec) -> np.ndarray:
    files = sorted((run / "samples" / f"step-{step}").glob("sample-*.mid"))
    assert [f.name for f in files] == [f"sample-{i:02d}.mid" for i in range(N_SNAPSHOT)]
    return np.stack([roll_from_midi(f, spec) for f in files])


def test_snapshot_is_the_ema_generator_on_the_fixed_latents(tb_run: dict) -> None:
    run = tb_run["run"]
    assert sorted(p.name for p in (run / "samples").glob("*.png")) == ["step-2.png", "step-4.png"]
    generator, spec, cfg = load_generator(run / "checkpoints" / "step-4")  # EMA weights
    latents = torch.randn(
        cfg.log.n_snapshot, cfg.model.latent_dim, generator=torch.Generator().manual_seed(cfg.train.seed)
    )
    with torch.no_grad():
        expected = (generator(latents) >= cfg.train.threshold).numpy()
    assert 0 < expected.mean() < 1  # rolls with notes and rests, so the comparison means something
    written = snapshot_rolls(run, 4, spec)
    assert np.array_equal(written, expected)
    # Not the raw generator's samples, and not a stale snapshot: step 2's differ.
    raw, _, _ = load_generator(run / "checkpoints" / "step-4", use_ema=False)
    with torch.no_grad():
        assert not np.array_equal((raw(latents) >= cfg.train.threshold).numpy(), written)
    assert not np.array_equal(snapshot_rolls(run, 2, spec), written)


def test_tensorboard_takes_the_snapshots_of_a_silent_generator(tiny_shards: Path, tmp_path: Path) -> None:
    """An untrained sigmoid generator writes no note above 0.9: its snapshot's audio is silence, which
    TensorBoard's add_audio refused as an empty array; it must get a silent clip of the phrase's length."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    args = tiny_args(
        tiny_shards, tmp_path, "silent", log__tracker="tensorboard", model__output="sigmoid",
        model__density_init="false", model__pitch_bias="false", train__threshold=0.9,
    )  # fmt: skip
    train(args, tmp_path)
    run = tmp_path / "silent"
    folder = next(p.parent for p in run.rglob("events.out.tfevents.*"))
    acc = EventAccumulator(str(folder), size_guidance={"audio": 0})
    acc.Reload()
    sounds = acc.Audio("snapshot_audio")
    assert [e.step for e in sounds] == [2, 4]
    for event in sounds:
        assert not list((run / "samples" / f"step-{event.step}").glob("*.mid"))[0].read_bytes().count(b"\x90")
        with wave.open(io.BytesIO(event.encoded_audio_string)) as wav:
            # 2 bars of 8 steps at 2 steps per beat and 100 bpm: 4.8 s.
            assert wav.getnframes() == round(16 / 2 * 60 / 100 * 22050)
            assert not np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").any()


# ---------------------------------------------------------------------------------------------------
# The progress bar


def test_a_log_file_gets_plain_step_lines_not_bar_frames(tb_run: dict) -> None:
    """stdout/stderr are pipes here (a cluster's log file): one plain line per log.every steps, no \\r."""
    result = tb_run["result"]
    assert "\r" not in result.stderr and "\r" not in result.stdout
    lines = [x for x in result.stdout.splitlines() if x.startswith("step ") and "samples/s" in x]
    metrics = read_metrics(tb_run["run"])
    assert len(lines) == STEPS  # log.every 1
    for line, m in zip(lines, [x for x in metrics if "d_loss" in x], strict=True):
        assert line == (
            f"step {m['step']}/{STEPS} | D {m['d_loss']:.3f} | G {m['g_loss']:.3f} | "
            f"W {m['wasserstein']:.3f} | GP {m['penalty']:.3f} | lr {m['g_lr']:.1e} | "
            f"TFLOP/s {m['tflops']:.3g} | MFU {m['mfu']:.1%} | mem {m['peak_memory_gb']:.2f} GB | "
            f"data {m['data_wait']:.0%} | {m['samples_per_s']:.0f} samples/s | " + line.rsplit("| ", 1)[1]
        )
        assert m["tflops"] > 0 and 0 < m["mfu"] < 1 and m["peak_memory_gb"] > 0 and 0 <= m["data_wait"] <= 1
        assert re.fullmatch(r"ETA \d+:\d\d:\d\d", line.rsplit("| ", 1)[1])


def test_a_terminal_gets_a_progress_bar(tiny_shards: Path, tmp_path: Path) -> None:
    """Under a terminal (a pseudo-terminal here) the same run draws a tqdm bar with the same values."""
    import pty

    args = tiny_args(tiny_shards, tmp_path, "tty", log__progress="true")
    import fcntl
    import termios

    parent, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))  # a 200-column terminal
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "b2b.train", *args], cwd=tmp_path, env=env, stdout=child, stderr=child
    )
    os.close(child)
    chunks = []
    while True:
        try:
            data = os.read(parent, 4096)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=240) == 0
    text = b"".join(chunks).decode(errors="replace")
    frames = [f for f in re.split(r"[\r\n]", text) if "4/4 [" in f]
    assert frames, text[-2000:]
    final = frames[-1]
    assert re.search(r"\b4/4 \[\d\d:\d\d<\d\d:\d\d", final), final  # [elapsed<ETA
    shown = dict(re.findall(r"([A-Za-z/]+)=([^,\]\s]+)", final))
    last = next(m for m in reversed(read_metrics(tmp_path / "tty")) if "d_loss" in m)
    assert shown == {
        "D": f"{last['d_loss']:.3f}",
        "G": f"{last['g_loss']:.3f}",
        "W": f"{last['wasserstein']:.3f}",
        "GP": f"{last['penalty']:.3f}",
        "lr": f"{last['g_lr']:.1e}",
        "TFLOP/s": f"{last['tflops']:.3g}",
        "MFU": f"{last['mfu']:.1%}",
        "mem": f"{last['peak_memory_gb']:.2f}",  # followed by " GB"
        "data": f"{last['data_wait']:.0%}",
        "smp/s": f"{last['samples_per_s']:.0f}",
    }


# ---------------------------------------------------------------------------------------------------
# Logs that resume reads, after a torn write


def test_every_prefix_of_a_torn_last_line_is_dropped_and_the_whole_lines_kept(tmp_path: Path) -> None:
    """A kill or a full disk during an append leaves any prefix of the line: each one, cut byte by byte."""
    whole = [json.dumps({"step": 1, "d_loss": 0.5}), json.dumps({"step": 2, "d_loss": -1.25, "note": "é"})]
    last = (json.dumps({"step": 3, "d_loss": 2.0, "music/in_key": 0.875}) + "\n").encode()
    path = tmp_path / "metrics.jsonl"
    for cut in range(len(last) + 1):
        path.write_bytes(("\n".join(whole) + "\n").encode() + last[:cut])
        log = read_json_lines(path)
        complete = cut >= len(last) - 1  # the whole record, with or without its newline
        assert log.lines == whole + ([last.decode().strip()] if complete else [])
        assert [row["step"] for row in log.rows] == ([1, 2, 3] if complete else [1, 2])
        assert log.dropped == ([] if complete or cut == 0 else [3])
    path.write_text('{"step": 1}\n[1, 2]\n\n{"step": 3}\n')  # a line that is JSON but not a record
    log = read_json_lines(path)
    assert [row["step"] for row in log.rows] == [1, 3] and log.dropped == [2] and log.total == 4


def test_a_damaged_wandb_id_is_replaced_with_one_warning(tmp_path: Path, capsys) -> None:
    path = tmp_path / "wandb_id.txt"
    path.write_text("3f2a9c01b7de\n")
    assert wandb_run_id(tmp_path) == "3f2a9c01b7de" and capsys.readouterr().err == ""
    for damaged in (b"", b"\x00\x00\x00", b"3f2a9c\n01b7de\n"):
        path.write_bytes(damaged)
        new = wandb_run_id(tmp_path)
        assert re.fullmatch(r"[0-9a-f]{12}", new) and path.read_text() == new + "\n"
        (line,) = capsys.readouterr().err.splitlines()
        assert line.startswith(f"b2b train: warning: {path} holds no W&B run id (")
        assert line.endswith(f"); continuing as the new W&B run {new}")
        assert wandb_run_id(tmp_path) == new  # stored: the next resume continues it
