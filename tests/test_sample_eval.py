"""``b2b sample`` and ``b2b eval`` end to end: a real checkpoint, real shards, a real headless browser."""

from __future__ import annotations

import copy
import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import threading
import wave
from pathlib import Path

import numpy as np
import pretty_midi
import pytest
import torch

from b2b.checkpoint.checkpointer import Checkpointer, ModuleState
from b2b.cli.main import main
from b2b.config import Config
from b2b.data.codec import encode_roll
from b2b.data.shards import ShardWriter
from b2b.eval.generate import generate
from b2b.eval.metrics import distance_to_real, music_metrics
from b2b.model.networks import build_models
from b2b.spec import LPD5_TRACKS, RollSpec, Track

SPEC = RollSpec(
    tracks=(Track("Drums", 0, True), Track("Piano", 0), Track("Bass", 33), Track("Strings", 48)),
    n_bars=2,
    steps_per_bar=16,
    beats_per_bar=4,
    n_pitches=24,
    lowest_pitch=48,
)
THRESHOLD = "0.8"
N = 3


def write_shards(root: Path, spec: RollSpec, splits: dict[str, np.ndarray]) -> Path:
    """A shards folder in the documented format (manifest.json + tars of ``<key>.roll``)."""
    root.mkdir(parents=True)
    records, counts = [], {}
    for split, rolls in splits.items():
        writer = ShardWriter(root, split, shard_size=4, before_write=lambda path: None)
        for roll in rolls:
            writer.add(encode_roll(roll))
        writer.flush()
        records += writer.records
        counts[f"n_{split}"] = len(rolls)
    manifest = {
        "format": "b2b-shards/1",
        "shape": list(spec.shape),
        "spec": spec.to_dict(),
        "encoding": "packbits+zlib",
        "shards": records,
        **counts,
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def real_rolls() -> np.ndarray:
    """Five real samples with known statistics: the piano plays C4 in bar 0 only, the drums every beat."""
    rolls = np.zeros((5, *SPEC.shape), bool)
    rolls[:, 1, 0:8, 12] = True
    rolls[:, 0, ::4, 0] = True
    return rolls


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("sample_eval")
    cfg = Config()
    cfg.model.latent_dim, cfg.model.g_width, cfg.model.d_width = 8, 4, 4
    torch.manual_seed(0)
    generator, critic = build_models(cfg, SPEC.shape, SPEC.n_bars)
    # An untrained generator's outputs all sit near 0.5. Set its BatchNorm statistics from one batch and
    # sharpen its last layer, so that samples vary with the latent and some cells pass the threshold.
    for module in generator.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None
    with torch.no_grad():
        generator.train()(torch.randn(256, cfg.model.latent_dim))
        [*convs] = (m for m in generator.modules() if isinstance(m, torch.nn.ConvTranspose2d))
        convs[-1].weight.mul_(8.0)
    generator.eval()
    ema = copy.deepcopy(generator)
    with torch.no_grad():  # make the EMA weights differ, so --no-ema is visible in the output
        for p in ema.parameters():
            p.add_(0.05 * torch.randn_like(p))

    class GeneratorPart:  # what a trainer's Network saves: its model under "model"
        def state_dict(self) -> dict:
            return {"model": generator.state_dict()}

    parts = {"generator": GeneratorPart(), "critic": ModuleState(critic), "ema": ModuleState(ema)}
    meta = {"step": 7, "config": cfg.to_dict(), "spec": SPEC.to_dict()}
    checkpoint = Checkpointer(root / "run", parts, keep=1).save(7, meta)
    rolls = real_rolls()
    shards = write_shards(root / "shards", SPEC, {"train": rolls[:3], "val": rolls})
    return {"root": root, "checkpoint": checkpoint, "shards": shards, "ema": ema, "generator": generator}


@pytest.fixture(scope="module")
def samples(setup) -> Path:
    out = setup["root"] / "samples"
    args = ["sample", "--checkpoint", str(setup["checkpoint"]), "--n", str(N), "--out", str(out)]
    assert (
        main([*args, "--threshold", THRESHOLD, "--seed", "3", "--tempo", "120", "--synth", "fallback"]) == 0
    )
    return out


def test_generate_is_seeded(setup):
    ema = setup["ema"].eval()
    a = generate(ema, 5, seed=1)
    assert a.shape == (5, *SPEC.shape) and a.dtype == np.float32
    assert np.array_equal(a, generate(ema, 5, seed=1))  # bit for bit
    # The latents do not depend on the batch size; convolution rounding may, in the last bits.
    assert np.allclose(a, generate(ema, 5, seed=1, batch_size=2), rtol=0, atol=1e-4)
    assert not np.allclose(a, generate(ema, 5, seed=2), rtol=0, atol=0.05)


def test_sample_writes_midi_png_npz_wav_per_sample(setup, samples):
    info = json.loads((samples / "samples.json").read_text())
    assert info["step"] == 7 and info["weights"] == "EMA" and info["threshold"] == 0.8
    expected = generate(setup["ema"].eval(), N, seed=3)
    for i, entry in enumerate(info["samples"]):
        name = f"sample-{i:03d}"
        assert entry["name"] == name and entry["synth"] == "fallback"
        with np.load(samples / f"{name}.npz") as npz:
            assert np.array_equal(npz["probs"], expected[i])
            assert np.array_equal(npz["roll"], expected[i] >= 0.8)
            assert json.loads(str(npz["spec"])) == SPEC.to_dict()
            roll = npz["roll"]
        midi = pretty_midi.PrettyMIDI(str(samples / f"{name}.mid"))
        # One instrument per track that plays, with its program; the drums flagged (channel 10).
        assert [(i.name, i.program, i.is_drum) for i in midi.instruments] == [
            (t.name, t.program, t.is_drum) for t, r in zip(SPEC.tracks, roll, strict=True) if r.any()
        ]
        assert sum(len(i.notes) for i in midi.instruments) == entry["notes"] > 0
        with wave.open(str(samples / f"{name}.wav")) as w:
            # At least the whole phrase: 8 beats at 120 bpm = 4 s (plus the last notes' release).
            assert w.getframerate() == 22050 and w.getnframes() >= 4 * 22050
        assert (samples / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (samples / "grid.png").is_file()
    assert not [p.name for p in samples.iterdir() if ".tmp" in p.name]


def test_no_ema_samples_the_raw_generator(setup, tmp_path):
    out = tmp_path / "raw"
    args = ["sample", "--checkpoint", str(setup["checkpoint"].parent.parent), "--n", "1", "--out", str(out)]
    assert main([*args, "--no-ema", "--seed", "3", "--synth", "fallback"]) == 0  # a run folder: its latest
    with np.load(out / "sample-000.npz") as npz:
        assert np.array_equal(npz["probs"], generate(setup["generator"].eval(), 1, seed=3)[0])
        assert npz["threshold"] == np.float32(0.5)  # the run's train.threshold
    assert json.loads((out / "samples.json").read_text())["weights"] == "raw"


def _find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


CHECK_PAGE = b"""<!DOCTYPE html><html><body>
<iframe id="gallery" src="index.html" width="1200" height="900"></iframe>
<pre id="result">pending</pre>
<script>
const frame = document.getElementById("gallery");
frame.addEventListener("load", async () => {
  const doc = frame.contentDocument;
  const images = [...doc.querySelectorAll("img")];
  await Promise.all(images.map(i => i.complete ? 0 : new Promise(r => { i.onload = i.onerror = r; })));
  const audios = [...doc.querySelectorAll("audio")];
  const status = await Promise.all(audios.map(a => fetch(a.src).then(r => r.status, () => -1)));
  const durations = await Promise.all(audios.map(a => a.readyState >= 1 ? a.duration : new Promise(r => {
    a.addEventListener("loadedmetadata", () => r(a.duration));
    a.addEventListener("error", () => r(-1));
    a.load();
  })));
  document.getElementById("result").textContent = JSON.stringify({
    images: images.length, loaded: images.filter(i => i.naturalWidth > 0).length,
    audios: audios.length, status, durations, title: doc.title});
});
</script></body></html>"""


class _GalleryHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the gallery folder, plus /__check__.html (the page above), and records what was asked for."""

    requested: list[str]

    def do_GET(self):  # noqa: N802 (http.server's naming)
        self.requested.append(self.path)
        if self.path == "/__check__.html":
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(CHECK_PAGE)))
            self.end_headers()
            self.wfile.write(CHECK_PAGE)
            return
        super().do_GET()

    def log_message(self, *args):
        pass


def test_outputs_are_replaced_only_with_overwrite(setup, tmp_path, capsys):
    """export, sample and eval refuse what exists; with --overwrite they replace their own files only."""
    gen = tmp_path / "gen.safetensors"
    export = ["export", "--checkpoint", str(setup["checkpoint"]), "--out", str(gen)]
    gen.write_bytes(b"the user's")
    assert main(export) == 2 and gen.read_bytes() == b"the user's"
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert main([*export, "--overwrite"]) == 0 and gen.read_bytes()[:8] != b"the user"

    out = tmp_path / "samples"
    out.mkdir()
    (out / "mine.txt").write_text("kept")
    (out / "sample-000.npz").write_bytes(b"old")
    sample = ["sample", "--checkpoint", str(gen), "--n", "2", "--out", str(out), "--synth", "fallback"]
    assert main(sample) == 2 and (out / "sample-000.npz").read_bytes() == b"old"
    assert main([*sample, "--overwrite"]) == 0
    assert (out / "mine.txt").read_text() == "kept"
    with np.load(out / "sample-000.npz") as npz:
        assert np.array_equal(npz["probs"], generate(setup["ema"].eval(), 2, seed=0)[0])

    report = tmp_path / "report"
    evaluate = ["eval", "--samples", str(out), "--data", str(setup["shards"]), "--out", str(report)]
    report.mkdir()
    (report / "notes.md").write_text("kept")  # not a name eval writes: no --overwrite needed
    assert main(evaluate) == 0 and (report / "metrics.json").is_file()
    assert main(evaluate) == 2 and "already holds (metrics.json, metrics.md" in capsys.readouterr().err
    assert main([*evaluate, "--overwrite"]) == 0 and (report / "notes.md").read_text() == "kept"


def test_gallery_loads_in_headless_chromium(samples, tmp_path):
    chromium = _find_chromium()
    if chromium is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium)")
    requested: list[str] = []
    handler = functools.partial(
        type("H", (_GalleryHandler,), {"requested": requested}), directory=str(samples)
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        flags = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--mute-audio",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=20000",
            "--dump-dom",
        ]
        url = f"http://127.0.0.1:{server.server_address[1]}/__check__.html"
        done = subprocess.run(
            [chromium, *flags, url], capture_output=True, text=True, timeout=90, env=os.environ
        )
    finally:
        server.shutdown()
        server.server_close()
    match = re.search(r'<pre id="result">(.*?)</pre>', done.stdout, re.S)
    assert match, f"chromium printed no result (rc {done.returncode}): {done.stderr[-2000:]}"
    result = json.loads(match.group(1).replace("&quot;", '"'))
    assert result["title"] == "b2b samples"
    assert (result["images"], result["loaded"], result["audios"]) == (N, N, N)
    assert result["status"] == [200] * N
    assert all(d >= 4.0 for d in result["durations"]), result["durations"]  # decoded, whole phrase
    for i in range(N):
        assert f"/sample-{i:03d}.png" in requested and f"/sample-{i:03d}.wav" in requested


def _roll(path: Path) -> np.ndarray:
    with np.load(path) as npz:
        return npz["roll"]


def test_eval_samples_against_real_shards(setup, samples, capsys):
    assert main(["eval", "--samples", str(samples), "--data", str(setup["shards"])]) == 0
    printed = capsys.readouterr().out
    report = json.loads((samples / "metrics.json").read_text())
    # Real (val split, 5 samples): piano plays bar 0 only; drums 8 one-step hits, all on the grid.
    real = report["real"]
    assert report["real_source"]["split"] == "val" and real["n_samples"] == 5
    assert real["tracks"]["Piano"] == {
        "EB": 0.5,
        "density": 8 / (32 * 24),  # 8 steps of one pitch in a 32 × 24 roll
        "UPC": 1.0,
        "QN": 1.0,
        "mono": 1.0,
        "fragments": 0.0,
        "note_length": 8.0,  # one 8-step note, a 16th a step
        "on_8th": 1.0,
        "lengths": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0],  # in [8, 12) 16ths
        "pitches_used": 1.0,
        "polyphony": 1.0,
    }
    assert real["in_key"] == 1.0  # a single C: in C major
    # The 1-NN floor: 3 val samples against 3 train samples, all six the same roll, so each one's nearest
    # neighbours are the 5 others, tied, and 2 of them are from its own set.
    assert report["nn_floor"] == pytest.approx(0.4) and report["nn_n"] == N
    assert report["real_source"]["floor"] == "3 val against 3 train samples"
    assert "songs" in report["real_source"]  # these hand-written shards record no songs
    assert f"1-NN {report['nn_accuracy']:.2f} (real 0.40)" in printed
    # The five real samples are one roll five times: no diversity; the generated set's is measured too.
    assert real["diversity"] == 0.0 and report["diversity_ratio"] is None
    assert report["copies"] == {"identical": 0.0, "near": 0.0}  # untrained samples copy nothing
    assert report["real_copies"] == {"identical": 1.0, "near": 1.0}  # val rolls equal the train rolls
    assert (
        "copies of training samples: 0.0% identical" in printed and "real held-out samples: 100.0%" in printed
    )
    assert real["tracks"]["Drums"]["DP"] == 1.0 and real["tracks"]["Drums"]["EB"] == 0.0
    assert real["tracks"]["Bass"]["EB"] == 1.0 and real["TD"]["Piano-Bass"] is None
    rolls = np.stack([_roll(samples / f"sample-{i:03d}.npz") for i in range(N)])
    assert report["generated"] == music_metrics(rolls, SPEC)
    distance = distance_to_real(report["generated"], real, report["nn_accuracy"], report["nn_floor"])
    assert report["distance_to_real"] == distance
    assert f"distance to real: {distance:.4f}" in printed
    assert re.search(r"EB\s+Piano\s+\S+%\s+50\.0%", printed)
    markdown = (samples / "metrics.md").read_text()
    assert markdown.startswith("| metric | track | generated (n=3) | real (n=5) | gap |")
    assert (samples / "ssm.png").read_bytes()[:4] == b"\x89PNG"


def test_eval_checkpoint_matches_eval_of_its_samples(setup, samples, tmp_path):
    out = tmp_path / "eval"
    args = ["eval", "--checkpoint", str(setup["checkpoint"]), "--data", str(setup["shards"]), "--n", str(N)]
    assert main([*args, "--seed", "3", "--threshold", THRESHOLD, "--out", str(out), "--split", "train"]) == 0
    report = json.loads((out / "metrics.json").read_text())
    from_samples = json.loads((samples / "metrics.json").read_text())
    assert report["generated"] == from_samples["generated"]
    assert report["real"]["n_samples"] == 3 and report["real_source"]["split"] == "train"
    # Without --out, results go next to the checkpoint: <run>/eval/step-7.
    assert main([*args, "--real-n", "2"]) == 0
    default = setup["checkpoint"].parent.parent / "eval" / "step-7" / "metrics.json"
    assert json.loads(default.read_text())["real"]["n_samples"] == 2


def test_real_only_prints_musegan_row_for_lpd5(tmp_path, capsys, monkeypatch):
    spec = RollSpec(LPD5_TRACKS, n_bars=1, steps_per_bar=16, n_pitches=24, lowest_pitch=48)
    rolls = np.zeros((4, *spec.shape), bool)
    rolls[:2, 1, :, 3] = True  # piano plays in half the samples: EB 50%
    shards = write_shards(tmp_path / "lpd5", spec, {"train": rolls})
    monkeypatch.chdir(tmp_path)
    assert main(["eval", "--data", str(shards), "--real-only"]) == 0
    printed = capsys.readouterr().out
    assert "MuseGAN LPD-5 training data" in printed
    assert re.search(r"EB\s+Piano\s+50\.0%\s+24\.8%", printed)
    assert re.search(r"TD\s+Guitar-Bass\s+-\s+1\.570", printed)
    report = json.loads((tmp_path / "lpd5-real-stats" / "metrics.json").read_text())  # not in the data folder
    assert report["real"]["tracks"]["Piano"]["EB"] == 0.5 and "generated" not in report
    assert report["musegan_lpd5_training"]["TD"]["Piano-Guitar"] == 1.02


def test_real_only_without_lpd5_has_no_reference(setup, tmp_path, capsys):
    assert main(["eval", "--data", str(setup["shards"]), "--real-only", "--out", str(tmp_path)]) == 0
    assert "MuseGAN" not in capsys.readouterr().out
    assert "musegan_lpd5_training" not in json.loads((tmp_path / "metrics.json").read_text())


def test_eval_errors_are_one_clear_line(setup, samples, tmp_path, capsys):
    other = RollSpec(LPD5_TRACKS, n_bars=2, steps_per_bar=16, n_pitches=24, lowest_pitch=48)
    wrong = write_shards(tmp_path / "wrong", other, {"val": np.zeros((1, *other.shape), bool)})
    assert main(["eval", "--samples", str(samples), "--data", str(wrong), "--overwrite"]) == 2
    assert "compare with the corpus the model was trained on" in capsys.readouterr().err
    assert main(["eval", "--samples", str(tmp_path), "--data", str(setup["shards"])]) == 2
    assert (
        "samples.json does not exist: --samples needs a folder written by `b2b sample`"
        in capsys.readouterr().err
    )
    assert main(["eval", "--data", str(setup["shards"])]) == 2
    assert "needs one of --checkpoint PATH, --samples DIR or --real-only" in capsys.readouterr().err
    assert main(["eval", "--real-only", "--data", str(tmp_path / "none")]) == 2
    assert "manifest.json does not exist" in capsys.readouterr().err


def test_note_statistics_by_hand(tmp_path: Path) -> None:
    """What the output bias and the bar gates start from, on two hand-written samples of 2 bars."""
    from b2b.data.reading import note_statistics

    rolls = np.zeros((2, *SPEC.shape), bool)
    rolls[0, 1, 0:4, 12] = True  # piano: one note in bar 0 of sample 0 only
    rolls[:, 2, :, 5] = True  # bass: every step of both bars of both samples
    rolls[1, 3, 20, 7] = True  # strings: one step in bar 1 of sample 1
    shards = write_shards(tmp_path / "shards", SPEC, {"train": rolls, "val": rolls[:1]})
    # Bars played per track over 2 samples × 2 bars: drums 0, piano 1, bass 4, strings 1.
    density, activity = note_statistics(shards, SPEC.n_bars)
    assert activity.tolist() == [0.0, 0.25, 1.0, 0.25]
    # density: the share of the 32 steps each pitch is on, averaged over the samples
    assert density[1, 12] == 4 / 32 / 2 and density[2, 5] == 1.0 and density[3, 7] == 1 / 32 / 2
    assert density.sum() == pytest.approx(4 / 64 + 1.0 + 1 / 64)
