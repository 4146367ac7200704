"""The training loader over real tar shards written here: coverage, order, resume, resizing, bad files.

Every sample carries its global id in its first 32 cells, so a test can tell exactly which samples a rank
saw. The train split uses uneven shard sizes; ids equal the samples' global positions.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from b2b.data.codec import encode_roll
from b2b.data.epoch_plan import LayoutSpan, epoch_sequence, lane_block
from b2b.data.loader import STATE_FORMAT, TrainLoader
from b2b.data.reading import iter_samples
from b2b.errors import DataError

pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")

SHAPE = (2, 8, 16)
ID_BITS = 32
VAL_BASE = 100_000  # val ids start here so they cannot be mistaken for train ids
SIZES = (7, 3, 12, 5, 9, 1)  # 37 train samples in uneven shards


def roll_for(sample_id: int, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    """A roll whose first 32 cells spell ``sample_id`` in binary; the rest is noise seeded by the id."""
    cells = np.random.default_rng(sample_id).random(int(np.prod(shape))) < 0.3
    cells[:ID_BITS] = (sample_id >> np.arange(ID_BITS)) & 1
    return cells.reshape(shape)


def ids_of(batch: torch.Tensor) -> list[int]:
    bits = batch.reshape(batch.shape[0], -1)[:, :ID_BITS].numpy().astype(np.int64)
    return (bits << np.arange(ID_BITS)).sum(axis=1).tolist()


def _write_tar(path: Path, ids: range, shape: tuple[int, ...]) -> None:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for sample_id in ids:
            data = encode_roll(roll_for(sample_id, shape))
            info = tarfile.TarInfo(f"{sample_id:09d}.roll")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def write_shards(
    root: Path, sizes: tuple[int, ...] = SIZES, val_sizes: tuple[int, ...] = (4, 2), shape=SHAPE
) -> Path:
    """Write ``train-*.tar``/``val-*.tar`` and a manifest.json in the shard builder's format."""
    root.mkdir(parents=True, exist_ok=True)
    entries = []
    for split, split_sizes, base in (("train", sizes, 0), ("val", val_sizes, VAL_BASE)):
        start = base
        for i, n in enumerate(split_sizes):
            name = f"{split}-{i:05d}.tar"
            _write_tar(root / name, range(start, start + n), shape)
            entries.append({"name": name, "split": split, "n": n, "bytes": (root / name).stat().st_size})
            start += n
    manifest = {
        "format": "b2b-shards/1",
        "shape": list(shape),
        "encoding": "packbits+zlib",
        "n_train": sum(sizes),
        "n_val": sum(val_sizes),
        "shards": entries,
        "content_hash": "hash-of-" + ",".join(str(s) for s in sizes),
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return write_shards(tmp_path_factory.mktemp("shards"))


def take(loader: TrainLoader, n: int, it=None) -> list[torch.Tensor]:
    it = iter(loader) if it is None else it
    return [next(it) for _ in range(n)]


def one_epoch_ids(shards: Path, world: int, batch: int, **kw) -> tuple[list[list[int]], list[int]]:
    """Ids each rank sees in epoch 0, and how many batches each yielded before its epoch turned to 1."""
    per_rank, counts = [], []
    for rank in range(world):
        loader = TrainLoader(shards, batch_size=batch, rank=rank, world_size=world, seed=3, **kw)
        seen, n = [], 0
        for b in loader:
            seen += ids_of(b)
            n += 1
            if loader.epoch == 1:
                break
        per_rank.append(seen)
        counts.append(n)
    return per_rank, counts


# ---------------------------------------------------------------------------------------------------
# One epoch over all ranks


@pytest.mark.parametrize(
    ("world", "batch", "workers", "dropped"),
    [
        (3, 4, 0, 37 - 36),  # 3 batches per rank
        (4, 2, 2, 37 - 32),  # 6 shards, 4 ranks × 2 workers: fewer shards than readers
        (1, 5, 0, 37 - 35),
        (2, 6, 3, 37 - 36),  # 3 workers of 1 batch each
    ],
)
def test_epoch_covers_every_sample_once_and_ranks_agree(shards, world, batch, workers, dropped):
    per_rank, counts = one_epoch_ids(shards, world, batch, num_workers=workers)
    loader = TrainLoader(shards, batch_size=batch, rank=0, world_size=world, seed=3)
    seen = [i for ids in per_rank for i in ids]
    assert len(seen) == len(set(seen)), "a sample was served twice in one epoch"
    assert set(seen) <= set(range(37))
    assert 37 - len(seen) == dropped == loader.dropped_per_epoch
    assert counts == [loader.batches_per_epoch] * world == [(37 - dropped) // (world * batch)] * world


def test_rank_reads_a_contiguous_block_of_the_shuffled_shards(shards):
    # shuffle_buffer=1 makes the in-block shuffle the identity (keys i + u, 0 <= u < 1), so each rank must
    # serve exactly its slice [r*K*B, (r+1)*K*B) of the epoch's shard-shuffled sequence.
    sequence = epoch_sequence(SIZES, seed=3, epoch=0)
    for rank in range(3):
        loader = TrainLoader(shards, batch_size=4, rank=rank, world_size=3, seed=3, shuffle_buffer=1)
        ids = [i for b in take(loader, 3) for i in ids_of(b)]
        assert ids == sequence[rank * 12 : (rank + 1) * 12].tolist()


def test_epoch_sequence_keeps_each_shard_whole():
    sequence = epoch_sequence([2, 3], seed=0, epoch=0).tolist()
    assert sequence in ([0, 1, 2, 3, 4], [2, 3, 4, 0, 1])
    orders = {tuple(epoch_sequence([2, 3, 4], seed=0, epoch=e)) for e in range(12)}
    assert len(orders) > 1, "the shard order never changes between epochs"


def test_window_shuffle_moves_samples_at_most_the_buffer(shards):
    sequence = epoch_sequence(SIZES, seed=3, epoch=0)
    layout = LayoutSpan(world_size=2, batch_size=3, shuffle_buffer=4)
    block, perm = lane_block(sequence, 1, 0, layout, seed=3, epoch=0, segment=0)
    assert len(block) == 18 and block.tolist() == sequence[18:36].tolist()
    assert sorted(perm.tolist()) == list(range(18)) and perm.tolist() != list(range(18))
    assert np.abs(perm - np.arange(18)).max() <= 4
    loader = TrainLoader(shards, batch_size=3, rank=1, world_size=2, seed=3, shuffle_buffer=4)
    assert [i for b in take(loader, 6) for i in ids_of(b)] == block[perm].tolist()


def test_workers_read_contiguous_lanes_served_round_robin(shards):
    # rank 1 of 2, batch 3: 6 batches = 18 samples; 2 workers split them 3 + 3 batches, in reading order.
    # With shuffle_buffer=1 each lane keeps its order, so the stream alternates between the two halves.
    sequence = epoch_sequence(SIZES, seed=3, epoch=0)[18:36].tolist()
    loader = TrainLoader(shards, batch_size=3, rank=1, world_size=2, seed=3, shuffle_buffer=1, num_workers=2)
    got = [ids_of(b) for b in take(loader, 6)]
    lane0, lane1 = sequence[:9], sequence[9:]
    assert got == [lane0[0:3], lane1[0:3], lane0[3:6], lane1[3:6], lane0[6:9], lane1[6:9]]
    # 3 workers, 5 batches per epoch (rank 0 of 1, batch 7): lanes of 2, 2 and 1 batches
    lanes = [LayoutSpan(world_size=1, batch_size=7, shuffle_buffer=1, lanes=3)] * 3
    sizes = [len(lane_block(epoch_sequence(SIZES, 3, 0), 0, j, lanes[j], 3, 0, 0)[0]) for j in range(3)]
    assert sizes == [14, 14, 7]


def test_order_is_a_function_of_seed_epoch_and_layout(shards):
    def stream(seed, workers):
        loader = TrainLoader(shards, batch_size=3, rank=1, world_size=2, seed=seed, num_workers=workers)
        batches = take(loader, 2 * loader.batches_per_epoch)
        return [ids_of(b) for b in batches], batches

    ids0, batches0 = stream(7, 0)
    ids1, batches1 = stream(7, 1)
    assert all(torch.equal(a, b) for a, b in zip(batches0, batches1, strict=True)), "0 and 1 workers differ"
    assert all(b.dtype == torch.bool and tuple(b.shape) == (3, *SHAPE) for b in batches0)
    half = len(ids0) // 2
    assert ids0[:half] != ids0[half:], "epoch 1 repeats epoch 0's order"
    assert stream(8, 0)[0] != ids0
    ids2, _ = stream(7, 2)  # two lanes: another order of the same samples of each epoch
    assert ids2 != ids0
    for epoch in (slice(0, half), slice(half, None)):
        assert sorted(sum(ids2[epoch], [])) == sorted(sum(ids0[epoch], []))
    # the samples are the real rolls, bit for bit
    assert torch.equal(batches0[0][1], torch.from_numpy(roll_for(ids0[0][1])))


# ---------------------------------------------------------------------------------------------------
# Resume


@pytest.mark.parametrize(("workers", "stop"), [(0, 4), (2, 3), (2, 6), (2, 11)])
def test_resume_continues_with_exactly_the_uninterrupted_batches(shards, workers, stop):
    # batch 3 per rank, 2 ranks: 6 batches per epoch; stops mid-epoch, at an epoch's end and in epoch 1
    kw = dict(batch_size=3, rank=0, world_size=2, seed=5, num_workers=workers, shuffle_buffer=5)
    reference = take(TrainLoader(shards, **kw), 15)
    first = TrainLoader(shards, **kw)
    it = iter(first)
    head = take(first, stop, it)  # the workers have prefetched more than this by now
    state = first.state_dict()
    assert (
        state["epoch"] == stop // 6 and state["batches_done"] == stop % 6 and state["format"] == STATE_FORMAT
    )
    resumed = TrainLoader(shards, **kw)
    resumed.load_state_dict(json.loads(json.dumps(state)))  # states survive a JSON round trip
    tail = take(resumed, 15 - stop)
    assert all(torch.equal(a, b) for a, b in zip(head + tail, reference, strict=True))


def _consume(shards, world, batch, n_batches, state=None, seed=5, workers=0):
    """Every rank of a ``world``-rank run takes ``n_batches`` (None: up to the epoch's end) from ``state``.

    Returns the ids served, the batch count of each rank and the (common) state afterwards.
    """
    ids, counts, states = [], [], []
    for rank in range(world):
        loader = TrainLoader(
            shards, batch_size=batch, rank=rank, world_size=world, seed=seed, num_workers=workers
        )
        if state is not None:
            loader.load_state_dict(state)
        start_epoch, n = loader.epoch, 0
        for b in loader:
            ids += ids_of(b)
            n += 1
            if n == n_batches or loader.epoch != start_epoch:
                break
        counts.append(n)
        states.append(loader.state_dict())
    assert all(s == states[0] for s in states), "ranks disagree about the position"
    return ids, counts, states[0]


@pytest.mark.parametrize(("old", "new"), [(2, 3), (3, 2)])
def test_world_size_change_continues_the_epoch_without_loss_or_repeat(shards, old, new):
    before, _, state = _consume(shards, old, 2, 3)
    after, counts, end = _consume(shards, new, 2, None, state)
    served = before + after
    assert len(served) == len(set(served)), "a sample was served twice in the resized epoch"
    rest = 37 - len(before)
    assert 37 - len(served) == rest % (new * 2) < new * 2  # only the new layout's remainder is dropped
    assert counts == [rest // (new * 2)] * new
    assert end["epoch"] == 1 and end["batches_done"] == 0 and end["history"] == []
    # the next epoch is a plain epoch of the new layout
    nxt, counts, _ = _consume(shards, new, 2, None, end)
    assert len(set(nxt)) == len(nxt) == 37 - 37 % (new * 2) and counts == [37 // (new * 2)] * new


def test_two_resizes_and_a_batch_size_change_in_one_epoch(shards):
    a, _, state = _consume(shards, 2, 2, 2)  # 8 samples
    b, _, state = _consume(shards, 3, 2, 1, state)  # 6 more
    assert [h["world_size"] for h in state["history"]] == [2] and state["world_size"] == 3
    c, counts, end = _consume(shards, 2, 3, None, state)  # 23 left: 3 batches of 3 per rank, 5 dropped
    served = a + b + c
    assert len(served) == len(set(served)) == 37 - 5 and counts == [3, 3] and end["epoch"] == 1


def test_worker_count_change_continues_the_epoch_without_loss_or_repeat(shards):
    before, _, state = _consume(shards, 2, 2, 3, workers=2)
    assert state["lanes"] == 2
    after, counts, end = _consume(shards, 2, 2, None, state, workers=3)
    served = before + after
    assert len(served) == len(set(served)) == 36 and counts == [6, 6] and end["epoch"] == 1


def test_more_workers_than_batches_per_epoch(shards):
    # 3 batches per epoch, 4 workers: one lane is empty in every epoch, the stream still runs on
    kw = dict(batch_size=10, rank=0, world_size=1, seed=2, num_workers=4, shuffle_buffer=3)
    loader = TrainLoader(shards, **kw)
    it = iter(loader)
    epochs = []
    for _ in range(3):
        epochs.append([i for b in take(loader, 3, it) for i in ids_of(b)])
        assert loader.epoch == len(epochs)
    assert all(len(set(e)) == 30 for e in epochs) and epochs[0] != epochs[1]
    head = take(TrainLoader(shards, **kw), 4)
    resumed = TrainLoader(shards, **kw)
    first = TrainLoader(shards, **kw)
    take(first, 4)
    resumed.load_state_dict(first.state_dict())
    assert [ids_of(b) for b in head + take(resumed, 5)] == [
        epochs[e][k : k + 10] for e in range(3) for k in (0, 10, 20)
    ]


def test_resume_refuses_another_seed_or_changed_shards(shards, tmp_path):
    loader = TrainLoader(shards, batch_size=2, rank=0, world_size=2, seed=5)
    take(loader, 2)
    state = loader.state_dict()
    with pytest.raises(DataError, match="seed 5.*this run has 6"):
        TrainLoader(shards, batch_size=2, rank=0, world_size=2, seed=6).load_state_dict(state)
    other = write_shards(tmp_path / "other", sizes=(7, 3, 12, 5, 10))
    with pytest.raises(DataError, match="changed since the checkpoint"):
        TrainLoader(other, batch_size=2, rank=0, world_size=2, seed=5).load_state_dict(state)
    with pytest.raises(DataError, match="inconsistent"):
        TrainLoader(shards, batch_size=2, rank=0, world_size=2, seed=5).load_state_dict(
            {**state, "batches_done": 99}
        )


# ---------------------------------------------------------------------------------------------------
# Bad files and bad layouts


def _member_offsets(path: Path) -> list[tuple[str, int, int]]:
    with tarfile.open(path) as tar:
        return [(m.name, m.offset_data, m.size) for m in tar.getmembers()]


def _set_manifest_bytes(root: Path) -> None:
    """Make the manifest agree with the damaged file's size, as if the damage happened before it was written,
    so that the damage is met while reading the tar, not by the size check."""
    manifest = json.loads((root / "manifest.json").read_text())
    for entry in manifest["shards"]:
        entry["bytes"] = (root / entry["name"]).stat().st_size
    (root / "manifest.json").write_text(json.dumps(manifest))


def _first_error(root: Path, workers: int = 0) -> str:
    loader = TrainLoader(root, batch_size=37, rank=0, world_size=1, seed=0, num_workers=workers)
    with pytest.raises(DataError) as err:
        next(iter(loader))
    return str(err.value)


def test_truncated_shard_is_refused_by_size_before_training(tmp_path):
    root = write_shards(tmp_path)
    path = root / "train-00002.tar"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError, match=r"train-00002.tar is 1000 bytes but .*manifest.json says \d+"):
        TrainLoader(root, batch_size=2, rank=0, world_size=1, seed=0)


@pytest.mark.parametrize("workers", [0, 2])
def test_shard_truncated_inside_a_member_names_file_and_member(tmp_path, workers):
    root = write_shards(tmp_path)
    path = root / "train-00002.tar"
    name, offset, size = _member_offsets(path)[4]
    path.write_bytes(path.read_bytes()[: offset + size // 2])
    _set_manifest_bytes(root)
    message = _first_error(root, workers)
    assert "train-00002.tar is truncated or corrupt" in message and name in message
    assert "\n" not in message and "DataLoader worker" not in message


def test_shard_cut_between_members_disagrees_with_the_manifest(tmp_path):
    root = write_shards(tmp_path)
    path = root / "train-00002.tar"
    _, offset, _ = _member_offsets(path)[5]  # keep members 0..4 whole, drop the header of member 5
    path.write_bytes(path.read_bytes()[: offset - 512])
    _set_manifest_bytes(root)
    assert "train-00002.tar holds 5 members but the manifest lists 12" in _first_error(root)


def test_corrupt_header_is_met_with_the_file_named(tmp_path):
    root = write_shards(tmp_path)
    path = root / "train-00000.tar"
    raw = bytearray(path.read_bytes())
    _, offset, _ = _member_offsets(path)[3]
    raw[offset - 512 : offset - 400] = b"\xff" * 112  # member 3's header: bad name and checksum
    path.write_bytes(bytes(raw))
    assert "train-00000.tar holds 3 members but the manifest lists 7" in _first_error(root)


def test_corrupt_member_data_names_shard_and_key(tmp_path):
    root = write_shards(tmp_path)
    path = root / "train-00003.tar"
    raw = bytearray(path.read_bytes())
    name, offset, size = _member_offsets(path)[2]
    raw[offset + 2 : offset + size] = bytes(size - 2)  # the zlib stream is garbage now
    path.write_bytes(bytes(raw))
    message = _first_error(root)
    assert (
        "train-00003.tar" in message and repr(name.split(".")[0]) in message and "does not decode" in message
    )


def test_member_of_another_shape_names_shard_and_key(tmp_path):
    root = write_shards(tmp_path, sizes=(3, 2), val_sizes=(1,), shape=(2, 8, 8))
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["shape"] = [2, 8, 16]
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(
        DataError, match=r"train-0000[01].tar: sample '00000000\d' does not decode to .*\[2, 8, 16\]"
    ):
        next(iter(TrainLoader(root, batch_size=5, rank=0, world_size=1, seed=0)))


def test_manifest_counts_that_disagree_with_the_shards(tmp_path):
    root = write_shards(tmp_path, sizes=(3, 2), val_sizes=(1,))
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["shards"][1]["n"] = 4
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="n_train is 5 but its train shards list 7"):
        TrainLoader(root, batch_size=2, rank=0, world_size=1, seed=0)
    manifest["n_train"] = 7
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="train-00001.tar holds 2 members but the manifest lists 4"):
        next(iter(TrainLoader(root, batch_size=7, rank=0, world_size=1, seed=0)))
    manifest["shards"][1]["n"], manifest["n_train"] = 1, 4  # a member more than the manifest says
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="train-00001.tar holds 2 members but the manifest lists 1"):
        take(TrainLoader(root, batch_size=4, rank=0, world_size=1, seed=0), 2)  # found after the 1st batch


def test_missing_split_and_too_little_data(shards):
    with pytest.raises(DataError, match="no shards for split 'test'.*train, val"):
        TrainLoader(shards, batch_size=2, rank=0, world_size=1, seed=0, split="test")
    with pytest.raises(DataError, match="holds 6 samples, fewer than world_size × batch_size = 2 × 4"):
        TrainLoader(shards, batch_size=4, rank=0, world_size=2, seed=0, split="val")


def test_iter_samples_reads_a_split_in_shard_order(shards):
    rolls = list(iter_samples(shards, "val"))
    assert [ids_of(torch.from_numpy(r[None]))[0] for r in rolls] == list(range(VAL_BASE, VAL_BASE + 6))
    assert all(r.dtype == bool and r.shape == SHAPE for r in rolls)
    assert np.array_equal(rolls[4], roll_for(VAL_BASE + 4))
    assert len(list(iter_samples(shards, "train", limit=9))) == 9


# ---------------------------------------------------------------------------------------------------
# Transposition


def test_transposition_moves_pitched_tracks_within_range_and_resumes(tmp_path):
    from b2b.data.reading import transpose, transpose_shifts

    rolls = np.zeros((3, 2, 4, 10), bool)
    rolls[0, 0, 0, [2, 5]] = True  # room: 2 down, 4 up
    rolls[0, 1, 1, 9] = True  # a drum track: ignored for the room and never moved
    rolls[1, 0, 2, 0] = True  # room: none down, 9 up
    pitched = np.array([True, False])
    shifts = transpose_shifts(rolls, pitched, 3, np.random.default_rng(0))
    assert -2 <= shifts[0] <= 3 and 0 <= shifts[1] <= 3 and shifts[2] == 0  # sample 2 is empty
    moved = transpose(rolls.copy(), pitched, np.array([-2, 3, 0]))
    assert np.flatnonzero(moved[0, 0, 0]).tolist() == [0, 3] and moved[0, 1, 1, 9]  # drums stay
    assert np.flatnonzero(moved[1, 0, 2]).tolist() == [3]
    # In the loader: the same notes count, pitches moved, and a resumed run sees the same shifts.
    root = write_sparse_shards(tmp_path / "s")
    kw = dict(batch_size=3, rank=0, world_size=1, seed=5, shuffle_buffer=4)
    plain = take(TrainLoader(root, **kw), 8)
    shifted = take(TrainLoader(root, transpose=4, **kw), 8)
    assert [int(b.sum()) for b in plain] == [int(b.sum()) for b in shifted]
    assert sum(not torch.equal(a, b) for a, b in zip(plain, shifted, strict=True)) >= 6
    first = TrainLoader(root, transpose=4, **kw)
    it = iter(first)
    take(first, 3, it)
    resumed = TrainLoader(root, transpose=4, **kw)
    resumed.load_state_dict(first.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(take(resumed, 5), shifted[3:], strict=True))


def write_sparse_shards(root: Path) -> Path:
    """Shards of 30 one-note samples (pitch 6 of 16): every sample has room to move 4 up or down."""
    root.mkdir(parents=True)
    shape = (2, 8, 16)
    with tarfile.open(root / "train-00000.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
        for i in range(30):
            roll = np.zeros(shape, bool)
            roll[0, i % 8, 6] = True
            data = encode_roll(roll)
            info = tarfile.TarInfo(f"{i:09d}.roll")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    entry = {
        "name": "train-00000.tar",
        "split": "train",
        "n": 30,
        "bytes": (root / "train-00000.tar").stat().st_size,
    }
    manifest = {"shape": list(shape), "encoding": "packbits+zlib", "n_train": 30, "shards": [entry]}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root
