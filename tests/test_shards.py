"""``b2b shards build`` / ``inspect``: windows, split, tars, manifest, determinism, resuming, bad input."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from lpd_fixtures import BAR, msd_id, notes_to_midi, rasterize, song_notes, write_lpd_tree, write_midi_folder

from b2b.cli.main import main
from b2b.data.codec import decode_roll, encode_roll
from b2b.data.output_folder import OutputFolder
from b2b.data.shards import assign_splits, tar_bytes
from b2b.data.windows import WindowParams, count_onsets, song_windows, window_starts
from b2b.spec import CHORALE_TRACKS, LPD17_TRACKS, RollSpec

N_SONGS = 12  # songs of 5..12 bars; song i has song_notes(i) (seed 0)
REPO = Path(__file__).resolve().parents[1]


def build(*args: str) -> int:
    return main(["shards", "build", "--no-progress", *map(str, args)])


def expected_windows(notes, n_bars: int, tracks: str = "lpd17", hop_bars: int = 4) -> list[bytes]:
    """Windows of the default grid (4 bars x 48 steps x 84 pitches from 24), computed independently:
    rasterize at 24 steps per beat, halve time with OR, cut every ``hop_bars`` bars, drop empty ones."""
    roll = rasterize(notes, n_bars * BAR, tracks=tracks, lowest_pitch=24, n_pitches=84)
    half = roll.reshape(roll.shape[0], -1, 2, 84).any(axis=2)  # 24 -> 12 steps per beat
    windows = [half[:, s : s + 192] for s in range(0, half.shape[1] - 191, hop_bars * 48)]
    return [np.packbits(w).tobytes() for w in windows if w.any()]


def shard_samples(out: Path, split: str | None = None) -> list[np.ndarray]:
    manifest = json.loads((out / "manifest.json").read_text())
    rolls = []
    for record in manifest["shards"]:
        if split in (None, record["split"]):
            with tarfile.open(out / record["name"]) as tar:
                rolls += [decode_roll(tar.extractfile(m).read(), manifest["shape"]) for m in tar]
    return rolls


def snapshot(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    """name -> (inode, mtime_ns, content) of every file directly in ``folder``."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def lpd(tmp_path_factory):
    """An LPD-17 tree of 12 songs and one build of it (shard size 7, one worker)."""
    root = tmp_path_factory.mktemp("lpd")
    rng = np.random.default_rng(0)
    bars = [int(b) for b in rng.integers(5, 13, N_SONGS)]
    paths = []
    for i, b in enumerate(bars):  # one song per call so each song's bars are known
        # old `beat_resolution` key on odd songs, uint8 velocities on every third
        paths += write_lpd_tree(
            root / "src", 1, seed=i, n_bars=b, old_key_every=i % 2, uint8_every=int(i % 3 == 0)
        )
    out = root / "out"
    assert (
        build("--source", "lpd", "--input", root / "src", "--output", out, "--shard-size", 7, "--workers", 1)
        == 0
    )
    songs = {msd_id(0, i): (song_notes(i * 1000, b), b) for i, b in enumerate(bars)}
    return {"src": root / "src", "out": out, "songs": songs, "paths": paths}


# ---------------------------------------------------------------------------------------------------
# Windows, onsets, split, tar


def test_window_starts_skip_a_pickup_and_windows_past_the_end():
    spec = RollSpec(CHORALE_TRACKS, n_bars=2, steps_per_bar=16)
    bars = np.array([0, 4, 20, 36, 52, 68, 84])  # a 4-step pickup, then bars of 16; the song is 90 steps
    starts, irregular = window_starts(bars, 90, spec, hop_bars=1)
    assert starts.tolist() == [4, 20, 36, 52] and irregular == 1  # 0 spans the pickup; 68 and 84 run past 90
    assert window_starts(bars, 90, spec, hop_bars=2)[0].tolist() == [20, 52]  # bars 0, 2, 4, 6
    # the second bar is 12 steps long and the last (from 44 to the end at 80) 36: only 28..60 is regular
    starts, irregular = window_starts(np.array([0, 16, 28, 44]), 80, spec, hop_bars=1)
    assert starts.tolist() == [28] and irregular == 3


def test_count_onsets_and_min_notes():
    w = np.zeros((3, 1, 8, 2), bool)
    w[0, 0, 2:5, 0] = True  # one held note: 1 onset
    w[1, 0, 0:2, 1] = w[1, 0, 3:5, 1] = True  # a repeated note: 2 onsets (one at the window start)
    assert count_onsets(w).tolist() == [1, 2, 0]
    spec = RollSpec(CHORALE_TRACKS[:1], n_bars=1, steps_per_bar=8, n_pitches=2, lowest_pitch=0)
    roll = np.concatenate([w[0], w[1], w[2]], axis=1)  # 3 bars of 8 steps
    kept, stats = song_windows(roll, np.array([0, 8, 16]), WindowParams(spec, "chorale", 1, 2))
    assert kept.shape == (1, 1, 8, 2) and np.array_equal(kept[0], w[1]) and stats["dropped_min_notes"] == 2


def test_split_by_song_is_deterministic_stable_and_never_empty():
    groups = [msd_id(i) for i in range(400)]
    split = assign_splits(groups, 0.1, seed=0)
    assert split == assign_splits(list(reversed(groups)), 0.1, seed=0)
    assert 20 < Counter(split.values())["val"] < 60
    more = assign_splits(groups + [msd_id(i, 9) for i in range(100)], 0.1, seed=0)
    assert all(more[g] == split[g] for g in groups)  # adding songs moves none of the old ones
    assert assign_splits(groups, 0.1, seed=1) != split
    assert sorted(assign_splits(groups[:2], 0.01, seed=0).values()) == ["train", "val"]
    assert set(assign_splits(groups[:5], 0.0, seed=0).values()) == {"train"}


def test_tar_bytes_are_reproducible_and_read_by_webdataset(tmp_path):
    members = [(f"{i:09d}.roll", encode_roll(np.eye(4, dtype=bool) ^ (i % 2))) for i in range(3)]
    data = tar_bytes(members)
    assert data == tar_bytes(members)
    (tmp_path / "s.tar").write_bytes(data)
    with tarfile.open(tmp_path / "s.tar") as tar:
        assert [(m.name, m.mtime, m.uid, m.uname) for m in tar] == [(n, 0, 0, "") for n, _ in members]
    samples = list(wds.WebDataset(str(tmp_path / "s.tar"), shardshuffle=False, empty_check=False))
    assert [s["__key__"] for s in samples] == ["000000000", "000000001", "000000002"]
    assert all(
        np.array_equal(decode_roll(s["roll"], (4, 4)), np.eye(4, dtype=bool) ^ (i % 2))
        for i, s in enumerate(samples)
    )


# ---------------------------------------------------------------------------------------------------
# Building from LPD


def test_lpd_build_holds_exactly_the_windows_of_the_songs_split_by_song(lpd):
    out = lpd["out"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "b2b-shards/1" and manifest["shape"] == [17, 192, 84]
    assert RollSpec.from_dict(manifest["spec"]) == RollSpec(LPD17_TRACKS)
    assert manifest["params"]["hop_bars"] == 4 and manifest["skipped"] == []
    expected = {sid: expected_windows(notes, bars) for sid, (notes, bars) in lpd["songs"].items()}
    split = assign_splits(list(expected), 0.05, seed=0)
    for name in ("train", "val"):
        got = sorted(np.packbits(r).tobytes() for r in shard_samples(out, name))
        want = sorted(w for sid, ws in expected.items() if split[sid] == name for w in ws)
        assert got == want and len(got) == manifest[f"n_{name}"] > 0
    assert manifest["source"]["n_songs_val"] >= 1 and manifest["source"]["n_songs"] == N_SONGS
    records = manifest["shards"]
    for name in ("train", "val"):
        sizes = [r["n"] for r in records if r["split"] == name]
        assert sizes[:-1] == [7] * (len(sizes) - 1) and 0 < sizes[-1] <= 7
    assert sum(r["n"] for r in records) == manifest["n_train"] + manifest["n_val"]
    for r in records:
        data = (out / r["name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == r["sha256"] and len(data) == r["bytes"]
    assert (
        manifest["content_hash"] == hashlib.sha256("".join(r["sha256"] for r in records).encode()).hexdigest()
    )
    # compact: fewer bytes than the source .npz files of the same songs
    shard_bytes = sum(r["bytes"] for r in records)
    source_bytes = sum(p.stat().st_size for p in lpd["paths"])
    assert shard_bytes < source_bytes
    n = manifest["n_train"] + manifest["n_val"]
    assert manifest["bytes_per_sample"] == round(shard_bytes / n, 1)
    assert manifest["source_bytes_per_sample"] == round(source_bytes / n, 1)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"] + sorted(r["name"] for r in records)


def test_rebuild_is_byte_identical_with_other_workers_and_rewrites_nothing(lpd, tmp_path):
    other = tmp_path / "other"
    assert (
        build("--source", "lpd", "--input", lpd["src"], "--output", other, "--shard-size", 7, "--workers", 2)
        == 0
    )
    before = snapshot(lpd["out"])
    assert {k: v[2] for k, v in snapshot(other).items()} == {k: v[2] for k, v in before.items()}
    assert build("--source", "lpd", "--input", lpd["src"], "--output", lpd["out"], "--shard-size", 7) == 0
    assert snapshot(lpd["out"]) == before  # same inodes and mtimes: nothing rewritten


@pytest.mark.slow
def test_killed_build_resumes_without_rewriting_complete_shards(tmp_path):
    src, out, ref = tmp_path / "src", tmp_path / "out", tmp_path / "ref"
    write_lpd_tree(src, 30, n_bars=12)
    args = ["--source", "lpd", "--input", str(src), "--shard-size", "4", "--workers", "1", "--no-progress"]
    child = subprocess.Popen(
        [sys.executable, "-m", "b2b.cli", "shards", "build", *args, "--output", str(out)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while len(list(out.glob("*.tar"))) < 3 and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert not (out / "manifest.json").exists(), "the build finished before it could be killed"
    done = sorted(out.glob("*.tar"))
    assert len(done) >= 3 and any((out / ".b2b-build" / "cache").iterdir())
    for path in done:  # a tar under a final name is always complete
        with tarfile.open(path) as tar:
            assert len([decode_roll(tar.extractfile(m).read(), (17, 192, 84)) for m in tar]) == 4
    kept = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in done}
    assert main(["shards", "build", *args, "--output", str(out)]) == 0
    assert all(
        (out / n).stat().st_ino == ino and (out / n).stat().st_mtime_ns == mt for n, (ino, mt) in kept.items()
    )
    assert main(["shards", "build", *args, "--output", str(ref)]) == 0
    assert {k: v[2] for k, v in snapshot(out).items()} == {k: v[2] for k, v in snapshot(ref).items()}
    assert not (out / ".b2b-build").exists() and not list(out.glob(".*.tmp-*"))


def test_bad_files_are_skipped_listed_and_warned(lpd, tmp_path, capsys):
    src = tmp_path / "src"
    shutil.copytree(lpd["src"], src)
    good = sorted(src.rglob("*.npz"))[0]
    bad = {
        src / "A" / "truncated.npz": good.read_bytes()[:3000],
        src / "B" / "notes.npz": b"shopping list: eggs, milk\n",
        src / "C" / "empty.npz": b"",
    }
    for path, data in bad.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    assert build("--source", "lpd", "--input", src, "--output", tmp_path / "out", "--shard-size", 7) == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert sorted(s["path"] for s in manifest["skipped"]) == sorted(map(str, bad))
    assert all("not a readable .npz" in s["reason"] for s in manifest["skipped"])
    assert manifest["source"]["n_songs"] == N_SONGS and manifest["source"]["n_files"] == N_SONGS + 3
    err = capsys.readouterr().err
    assert all(f"warning: skipped {p}: not a readable .npz" in err for p in bad)


def test_unusable_rerun_fails_clearly_and_keeps_the_shards(lpd, tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    shutil.copytree(lpd["src"], src)
    common = ("--source", "lpd", "--input", src, "--output", out, "--limit", 4)
    assert build(*common) == 0
    before = snapshot(out)
    for path in src.rglob("*.npz"):
        path.write_bytes(path.read_bytes()[:100])  # every file truncated
    capsys.readouterr()
    assert build(*common) == 2
    err = capsys.readouterr().err
    assert f"nothing usable: all 4 source files under {src} were skipped" in err
    assert snapshot(out) == before
    assert build(*common, "--n-bars", 2) == 2
    assert (
        "already holds shards built with other options (hop_bars 4 -> 2, n_bars 4 -> 2)"
        in capsys.readouterr().err
    )
    assert build(*common, "--n-bars", 2, "--overwrite") == 2
    assert snapshot(out) == before  # a failed --overwrite build keeps the old shards and manifest


def test_overwrite_replaces_shards_built_with_other_options(lpd, tmp_path):
    out = tmp_path / "out"
    common = ("--source", "lpd", "--input", lpd["src"], "--output", out, "--limit", 4)
    assert build(*common, "--shard-size", 2) == 0
    assert len(list(out.glob("*.tar"))) > 2
    assert build(*common, "--shard-size", 50, "--overwrite") == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(p.name for p in out.glob("*.tar")) == sorted(r["name"] for r in manifest["shards"])
    assert manifest["params"]["shard_size"] == 50 and len(manifest["shards"]) == 2


def tree(folder: Path) -> dict[str, bytes]:
    """relative path -> content of every file under ``folder``."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_folder_of_other_files_is_refused_and_left_as_it_was(tmp_path, capsys):
    out = tmp_path / "home"
    (out / ".cache" / "x").mkdir(parents=True)
    (out / ".cache" / "x" / "f").write_text("k")
    (out / "val-photos.tar").write_text("k")
    (out / ".lock").write_text("k")
    before = tree(out)
    assert build("--source", "demo", "--output", out, "--limit", 2) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"b2b shards: error: --output {str(out)!r} holds files that are not b2b shards (.cache, .lock, "
        "val-photos.tar); give a new or empty folder for the shards"
    )
    assert tree(out) == before and sorted(p.name for p in out.iterdir()) == [
        ".cache",
        ".lock",
        "val-photos.tar",
    ]


def test_a_rebuild_removes_only_the_shards_b2b_wrote(lpd, tmp_path):
    out = tmp_path / "out"
    common = ("--source", "lpd", "--input", lpd["src"], "--output", out, "--limit", 4)
    assert build(*common, "--shard-size", 2) == 0
    foreign = {".cache/x/f": b"model cache", "val-photos.tar": b"photos", "train-notes.tar": b"notes",
               ".lock": b"", "notes.txt": b"mine", ".train-00009.tar.tmp-1": b"not b2b's"}  # fmt: skip
    for name, data in foreign.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
    assert build(*common, "--shard-size", 50, "--overwrite") == 0
    manifest = json.loads((out / "manifest.json").read_text())
    listed = {r["name"] for r in manifest["shards"]}
    assert len(listed) == 2
    left = tree(out)
    assert {name: left[name] for name in foreign} == foreign  # every foreign file intact
    assert set(left) == {*foreign, *listed, "manifest.json"}  # and only the old shards gone


def test_old_shards_are_journalled_before_their_manifest_goes(lpd, tmp_path):
    """A build killed after it removed the old manifest still knows, on its rerun, the old shards it owns."""
    out = tmp_path / "out"
    assert (
        build("--source", "lpd", "--input", lpd["src"], "--output", out, "--limit", 4, "--shard-size", 2) == 0
    )
    old = {r["name"] for r in json.loads((out / "manifest.json").read_text())["shards"]}
    (out / "keep.txt").write_text("mine")
    killed = OutputFolder(out)
    killed.before_write(out / "train-00000.tar")  # the first write of a new build
    killed.close()  # killed here: no finish
    assert not (out / "manifest.json").exists()
    assert sorted((out / ".b2b-build" / "journal").read_text().split()) == sorted(old)
    rerun = OutputFolder(out)  # its scratch folder marks the output as b2b's
    rerun.finish({"shards": [{"name": "train-00000.tar"}]})
    rerun.close()
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt", "manifest.json", "train-00000.tar"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--input", "{tmp}/missing"], "--input '{tmp}/missing' does not exist"),
        (["--input", "{tmp}/empty"], "no .npz files under '{tmp}/empty'"),
        (["--input", "{src}", "--lowest-pitch", "60"], "lowest_pitch + n_pitches = 60 + 84 = 144 exceeds"),
        (
            ["--input", "{src}", "--val-fraction", "1.5"],
            "--val-fraction 1.5 is invalid: expected a number in [0, 1)",
        ),
    ],
)
def test_impossible_requests_exit_2_with_a_clear_message(lpd, tmp_path, capsys, extra, message):
    (tmp_path / "empty").mkdir()
    fill = {"tmp": tmp_path, "src": lpd["src"]}
    args = [a.format(**fill) for a in extra]
    assert build("--source", "lpd", *args, "--output", tmp_path / "out") == 2
    assert message.format(**fill) in capsys.readouterr().err
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_window_longer_than_every_song_names_the_longest(lpd, tmp_path, capsys):
    assert build("--source", "lpd", "--input", lpd["src"], "--output", tmp_path / "o", "--n-bars", 13) == 2
    longest = max(bars for _, bars in lpd["songs"].values())
    assert f"has {longest * 48} steps ({longest}.0 bars); lower --n-bars" in capsys.readouterr().err


def test_ids_and_limit_select_songs(lpd, tmp_path):
    chosen = sorted(lpd["songs"])[:3]
    (tmp_path / "rock.cls").write_text("# genre list\n" + "".join(f"{sid}\tRock\n" for sid in chosen))
    out = tmp_path / "out"
    assert (
        build("--source", "lpd", "--input", lpd["src"], "--output", out, "--ids", tmp_path / "rock.cls") == 0
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["n_files"] == 3 and manifest["source"]["ids"]["n_ids"] == 3
    got = sorted(np.packbits(r).tobytes() for r in shard_samples(out))
    assert got == sorted(w for sid in chosen for w in expected_windows(*lpd["songs"][sid]))
    assert build("--source", "lpd", "--input", lpd["src"], "--output", tmp_path / "o2", "--limit", 2) == 0
    assert json.loads((tmp_path / "o2" / "manifest.json").read_text())["source"]["n_files"] == 2


# ---------------------------------------------------------------------------------------------------
# MIDI and the demo corpus; inspect


def test_midi_build_maps_programs_to_lpd5(tmp_path, capsys):
    src = tmp_path / "midi"
    write_midi_folder(src, 3, n_bars=8)
    notes_to_midi(song_notes(77, 4), src / "sub" / "more.midi")
    (src / "readme.mid").write_text("not a MIDI file")
    out = tmp_path / "out"
    assert (
        build("--source", "midi", "--input", src, "--output", out, "--tracks", "lpd5", "--val-fraction", 0)
        == 0
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["shape"] == [5, 192, 84] and manifest["n_val"] == 0
    assert [s["path"] for s in manifest["skipped"]] == [str(src / "readme.mid")]
    songs = [(song_notes(i, 8), 8) for i in range(3)] + [(song_notes(77, 4), 4)]
    want = sorted(w for notes, bars in songs for w in expected_windows(notes, bars, tracks="lpd5"))
    assert sorted(np.packbits(r).tobytes() for r in shard_samples(out)) == want


def test_demo_build_and_inspect(tmp_path, capsys, monkeypatch):
    out = tmp_path / "demo"
    assert build("--source", "demo", "--limit", 10, "--output", out, "--workers", 1) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["shape"] == [4, 64, 48] and manifest["params"]["hop_bars"] == 1
    assert manifest["source"]["n_files"] == 10 and manifest["source"]["excluded"] == {"not in 4/4": 1}
    rolls = np.stack(shard_samples(out))
    assert len(rolls) == manifest["n_train"] + manifest["n_val"] > 50
    assert rolls.any(axis=(2, 3)).mean() > 0.95  # nearly every window has all four voices singing
    soprano, bass = (np.argwhere(rolls[:, c])[:, 2].mean() for c in (0, 3))
    assert soprano > bass + 12  # voices in SATB order: the soprano sits over an octave above the bass
    capsys.readouterr()
    monkeypatch.chdir(tmp_path)
    assert main(["shards", "inspect", str(out), "--n", "4", "--verify"]) == 0
    text = capsys.readouterr().out
    assert f"samples: {manifest['n_train']} train in" in text and manifest["content_hash"] in text
    # The picture goes to the working folder, never into the data folder.
    assert "verified: " in text and "samples rendered to demo-train.png" in text
    assert not list(out.glob("*.png"))
    import matplotlib.image

    image = matplotlib.image.imread(tmp_path / "demo-train.png")
    assert image.shape[0] > 200 and image.shape[1] > 400 and image[..., :3].min() < 0.5


def test_inspect_verify_names_a_damaged_shard(lpd, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(lpd["out"], out)
    victim = out / "train-00001.tar"
    data = bytearray(victim.read_bytes())
    data[700] ^= 0xFF
    victim.write_bytes(bytes(data))
    assert main(["shards", "inspect", str(out), "--n", "0", "--verify"]) == 2
    assert "train-00001.tar: sha256 differs from the manifest" in capsys.readouterr().err
    os.remove(out / "val-00000.tar")
    assert main(["shards", "inspect", str(out), "--n", "0", "--verify"]) == 2
    assert "val-00000.tar: missing" in capsys.readouterr().err
