"""The training data loader: WebDataset shards in, batches of boolean piano rolls out, split over ranks.

WebDataset streams tar members but keeps no resumable state, and splitting whole shards over ranks and
workers gives uneven batch counts (a DDP hang). So the order of an epoch is computed first, from sample
*indices* only, and the tars are read afterwards to fill it:

1. The samples of a split have global positions: shard ``i`` (in the manifest's order) holds positions
   ``[offset_i, offset_i + n_i)``. Epoch ``e`` shuffles the shard order with a generator seeded by
   ``(seed, e)`` and concatenates the shards' positions into one sequence.
2. With ``W`` ranks and batch size ``B``, every rank gets ``K = N // (W*B)`` batches; the last
   ``N - K*W*B < W*B`` positions of the sequence are dropped (counted in ``dropped_per_epoch``). Rank ``r``
   takes the contiguous block ``[r*K*B, (r+1)*K*B)``, so it opens only the shards that overlap its block.
3. A rank's block is cut into one contiguous *lane* per DataLoader worker (``max(1, num_workers)``
   lanes); lane ``l`` serves the rank's batches ``b`` with ``b mod lanes == l``, which is the order in
   which the DataLoader collects batches from its workers (round-robin). So a worker reads only its own
   lane: its shards, once, in order (webdataset's tar iterator), skipping members of other lanes and
   never decoding them.
4. Inside its lane a worker shuffles with a window of ``shuffle_buffer`` (``S``) samples: lane position
   ``i`` gets the key ``i + S*u`` (``u`` uniform, seeded by ``(seed, e, rank, lane)``) and samples come
   out sorted by key. A sample therefore comes out at most ``S`` places from where it sits, so a reader
   that streams the lane in order holds about ``S`` pending samples (as raw bytes), and a resumed reader
   starts reading only ``S`` samples before the resume point.

The stream is a pure function of ``(seed, epoch)`` and the *layout* ``(world_size, batch_size,
shuffle_buffer, lanes)``; ``num_workers`` 0 and 1 give the same stream. The position in it is ``(epoch,
batches received in the epoch)``. Resuming with the same layout continues with exactly the batches an
uninterrupted run would have produced. With another layout, the epoch's samples not yet consumed (a pure
function of the earlier layouts and their batch counts, kept as a short list of segments) are planned
afresh over the new layout, so that nothing is lost or repeated; the epochs after it use the new layout.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import functools
import os
import signal
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

if TYPE_CHECKING:
    from multiprocessing.sharedctypes import SynchronizedArray

from b2b.data.codec import packed_size, unpack_rolls
from b2b.data.epoch_plan import (
    TRANSPOSE_TAG,
    LayoutSpan,
    lane_batches,
    lane_block,
    remaining_sequence,
    rng,
)
from b2b.data.manifest import read_manifest
from b2b.data.reading import (
    ShardSplit,
    _Member,
    inflate_member,
    load_split,
    read_members,
    transpose,
    transpose_shifts,
)
from b2b.errors import B2BError, ConfigError, DataError
from b2b.runtime.stopping import die_with_parent, ignore_stop_signals

STATE_FORMAT = "b2b-loader/1"


class _WorkerFailure(NamedTuple):
    """A B2BError raised in a worker, carried to the main process as data so it stays one clear line."""

    message: str


class _Filled(NamedTuple):
    """Worker ``worker`` wrote its next bit-packed batch into its shared-memory slot ``slot``."""

    worker: int
    slot: int


# Shipping each batch as a new tensor (or as bytes through the pipe) cost this machine more CPU than
# decoding it: fresh shared memory, a file descriptor passed per batch, pages faulted on both sides. So
# each worker owns a few fixed slots in shared memory and sends only (worker, slot); a semaphore per worker
# counts its free slots. The main process unpacks a slot into a new bool batch, then frees the slot.
_PREFETCH = 2  # batches requested ahead from each worker (the DataLoader's prefetch_factor)


_SLOTS = _PREFETCH + 2  # a worker never waits for a slot unless the main process falls behind


class _BatchStream(IterableDataset):
    """One rank's endless stream of bit-packed batches; with ``slots``, written to shared memory."""

    def __init__(
        self,
        data: ShardSplit,
        rank: int,
        layout: LayoutSpan,
        seed: int,
        epoch: int,
        history: tuple,
        slots: torch.Tensor | None = None,
        free: list | None = None,
    ):
        super().__init__()
        self.data, self.rank, self.layout, self.seed = data, rank, layout, seed
        self.epoch, self.history = epoch, history
        self.slots, self.free = slots, free

    def __iter__(self) -> Iterator[np.ndarray | _Filled | _WorkerFailure]:
        info = get_worker_info()
        worker, n_workers = (0, 1) if info is None else (info.id, info.num_workers)
        if n_workers != self.layout.lanes:
            raise RuntimeError(f"a stream planned for {self.layout.lanes} lanes runs in {n_workers} workers")
        shape = (self.layout.batch_size, packed_size(self.data.shape))
        try:
            for count, members in enumerate(self._batches(worker)):
                if self.slots is None:
                    yield self._pack(members, np.empty(shape, dtype=np.uint8))
                else:
                    assert self.free is not None  # given with the slots
                    self.free[worker].acquire()
                    slot = count % _SLOTS
                    self._pack(members, self.slots[worker, slot].numpy())
                    yield _Filled(worker, slot)
        except B2BError as exc:
            yield _WorkerFailure(str(exc))

    def _pack(self, members: list[_Member], out: np.ndarray) -> np.ndarray:
        """Inflate a batch into ``out``, ``(batch, packed_size)`` uint8; the main process unpacks it."""
        for i, member in enumerate(members):
            out[i] = inflate_member(member, self.data.shape)
        return out

    def _batches(self, worker: int) -> Iterator[list[_Member]]:
        lanes, size = self.layout.lanes, self.layout.batch_size
        epoch, history, done = self.epoch, self.history, self.layout.batches_done
        served = 0  # batches of this stream before the current epoch's first one
        while True:
            sequence = remaining_sequence(self.data.counts, self.seed, epoch, history)
            per_rank = self.layout.batches_per_rank(len(sequence))
            # The DataLoader hands stream item t to worker t mod lanes; item t is the epoch's batch
            # done + t - served, which belongs to lane (done + t - served) mod lanes.
            lane = (worker + done - served) % lanes
            block, perm = lane_block(sequence, self.rank, lane, self.layout, self.seed, epoch, len(history))
            first = lane_batches(per_rank, lanes, lane, before=done)
            yield from self._epoch_batches(block, perm.reshape(-1, size)[first:])
            served += per_rank - done
            epoch, history, done = epoch + 1, (), 0

    def _epoch_batches(self, block: np.ndarray, rows: np.ndarray) -> Iterator[list[_Member]]:
        """The members of each batch; ``rows[j]`` holds the block indices of the lane's ``j``-th batch."""
        members = self._read(block, np.sort(rows, axis=None))
        pending: dict[int, _Member] = {}
        frontier = -1
        for row in rows:
            target = int(row.max())
            while frontier < target:  # members arrive in block order; read up to the batch's last one
                frontier, member = next(members)
                pending[frontier] = member
            yield [pending.pop(int(i)) for i in row]
        for _ in members:  # nothing left to read, but the last tar's end-of-file checks still run
            pass

    def _read(self, block: np.ndarray, wanted: np.ndarray) -> Iterator[tuple[int, _Member]]:
        """Members at block indices ``wanted`` (ascending), in block order, one tar at a time."""
        if len(wanted) == 0:  # a lane with no batches left in this epoch
            return
        positions = block[wanted]
        shard = np.searchsorted(self.data.offsets, positions, side="right") - 1
        # The block is a run of whole or partial shards, so equal shard ids are contiguous.
        cuts = np.flatnonzero(np.diff(shard)) + 1
        for indices, where, ids in zip(
            np.split(wanted, cuts), np.split(positions, cuts), np.split(shard, cuts), strict=True
        ):
            s = int(ids[0])
            members = read_members(self.data.paths[s], where - self.data.offsets[s], int(self.data.counts[s]))
            yield from zip(indices.tolist(), members, strict=True)


def _init_worker(pids, parent: int, worker_id: int) -> None:
    """A DataLoader worker: leave stop signals to the training process (which stops at a step boundary
    and needs its batches until then), die with it, and tell it this pid (for :meth:`TrainLoader.close`)."""
    ignore_stop_signals()
    die_with_parent(parent)
    pids[worker_id] = os.getpid()


class TrainLoader:
    """Endless, resumable, rank-split batches of one split of a shards folder.

    Parameters
    ----------
    shards : str or Path
        Folder with ``manifest.json`` and the tars.
    batch_size : int
        Samples per batch on this rank.
    rank, world_size : int
        This process's rank and the number of ranks; every rank must build its loader with the same
        ``seed``, ``batch_size`` and ``shuffle_buffer``.
    seed : int
        The order of every epoch is a function of ``(seed, epoch)`` and the layout.
    num_workers : int
        DataLoader worker processes; each reads its own lane of the rank's block (0 and 1: one lane).
    shuffle_buffer : int
        Shuffle window: a sample comes out at most this many places from where it sits in the rank's block.
    split : str
        Which split of the manifest to read.
    transpose : int
        Pitch-transposition augmentation: each sample's pitched tracks move by a random number of semitones
        in ``-transpose..transpose`` (cut so no note leaves the range; drums stay). The shift of a batch is
        a function of the seed and the batch's position, so a resumed run sees the same shifts.

    Attributes
    ----------
    batches_per_epoch : int
        Batches each rank yields in a full epoch (the same on every rank).
    dropped_per_epoch : int
        Samples left out of each full epoch (fewer than ``world_size * batch_size``).
    """

    def __init__(
        self,
        shards: str | Path,
        *,
        batch_size: int,
        rank: int,
        world_size: int,
        seed: int,
        num_workers: int = 0,
        shuffle_buffer: int = 1024,
        split: str = "train",
        transpose: int = 0,
    ):
        for name, value, low in (
            ("transpose", transpose, 0),
            ("batch_size", batch_size, 1),
            ("world_size", world_size, 1),
            ("num_workers", num_workers, 0),
            ("shuffle_buffer", shuffle_buffer, 1),
        ):
            if value < low:
                raise ConfigError(f"TrainLoader: {name} must be at least {low}, got {value}")
        if not 0 <= rank < world_size:
            raise ConfigError(f"TrainLoader: rank {rank} is outside 0..{world_size - 1}")
        self.data = load_split(shards, split)
        self.rank, self.seed, self.num_workers, self.transpose = rank, seed, num_workers, transpose
        tracks = read_manifest(shards).get("spec", {}).get("tracks", [])
        self.pitched = np.array([not t.get("is_drum", False) for t in tracks] or [True] * self.data.shape[0])
        self.layout = LayoutSpan(world_size, batch_size, shuffle_buffer, lanes=max(1, num_workers))
        n = self.data.n_samples
        if n < world_size * batch_size:
            raise DataError(
                f"split {split!r} of {shards} holds {n} samples, fewer than world_size × batch_size = "
                f"{world_size} × {batch_size}: every rank needs a full batch each epoch; lower "
                f"data.batch_size or add data"
            )
        self.batches_per_epoch = n // (world_size * batch_size)
        self.dropped_per_epoch = n - self.batches_per_epoch * world_size * batch_size
        self.epoch = 0
        self._history: tuple[LayoutSpan, ...] = ()  # earlier layouts of the current epoch
        self._done = 0  # batches received in the current epoch under the current layout
        self._left = self.batches_per_epoch  # batches the current layout serves in this epoch
        self._generation = 0  # bumped by __iter__ and load_state_dict: a stale iterator stops
        self._worker_pids: SynchronizedArray[int] | None = None  # the current iterator's workers' (shared)
        # Registered after multiprocessing's own exit hook, so it runs first: its join of daemonic
        # children would otherwise wait forever for workers that ignore SIGTERM.
        atexit.register(self.close)

    # -- position ------------------------------------------------------------------------------------

    def _batches_in_layout(self, history: Sequence[LayoutSpan]) -> int:
        consumed = sum(s.world_size * s.batch_size * s.batches_done for s in history)
        return (self.data.n_samples - consumed) // (self.layout.world_size * self.layout.batch_size)

    def _count_batch(self) -> None:
        self._done += 1
        if self._done >= self._left:
            self.epoch, self._history, self._done = self.epoch + 1, (), 0
            self._left = self.batches_per_epoch

    @property
    def epochs_done(self) -> float:
        """Epochs of data consumed so far, as a fraction (the learning-rate schedule's clock)."""
        consumed = sum(s.world_size * s.batch_size * s.batches_done for s in self._history)
        consumed += self.layout.world_size * self.layout.batch_size * self._done
        return self.epoch + consumed / self.data.n_samples

    def state_dict(self) -> dict:
        """The position after the batches handed out so far (identical on every rank)."""
        return {
            "format": STATE_FORMAT,
            "epoch": self.epoch,
            "batches_done": self._done,
            "world_size": self.layout.world_size,
            "batch_size": self.layout.batch_size,
            "shuffle_buffer": self.layout.shuffle_buffer,
            "lanes": self.layout.lanes,
            "seed": self.seed,
            "split": self.data.split,
            "content_hash": self.data.content_hash,
            "history": [dataclasses.asdict(s) for s in self._history],
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state`` (from :meth:`state_dict`), before iterating.

        Same layout (world size, batch size, shuffle buffer, lanes): the continued stream is the
        uninterrupted one. If any differs, the rest of the epoch is re-planned over the new layout, nothing
        lost or repeated.

        Raises
        ------
        DataError
            The state was made with another seed, split or shards (content hash), or is malformed.
        """
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise DataError(f"loader state is not a {STATE_FORMAT} position: {state!r:.200}")
        for key, mine in (("seed", self.seed), ("split", self.data.split)):
            if state.get(key) != mine:
                raise DataError(
                    f"the checkpoint's data position was made with {key} {state.get(key)!r}, this run has "
                    f"{mine!r}: resume with the same {key} or start a fresh run"
                )
        if state.get("content_hash") != self.data.content_hash:
            raise DataError(
                f"the shards in {self.data.root} changed since the checkpoint (content_hash "
                f"{state.get('content_hash')!r:.20} then, {self.data.content_hash!r:.20} now): its position "
                f"would point at other samples; resume with the original shards or start a fresh run"
            )
        try:
            history = [LayoutSpan(**s) for s in state["history"]]
            saved = LayoutSpan(
                world_size=state["world_size"],
                batch_size=state["batch_size"],
                shuffle_buffer=state["shuffle_buffer"],
                lanes=state["lanes"],
                batches_done=state["batches_done"],
            )
            epoch = int(state["epoch"])
        except (KeyError, TypeError) as exc:
            raise DataError(f"loader state is malformed ({exc}): {state!r:.200}") from None
        for index, segment in enumerate([*history, saved]):
            consumed = sum(s.world_size * s.batch_size * s.batches_done for s in history[:index])
            planned = segment.batches_per_rank(self.data.n_samples - consumed)
            if not 0 <= segment.batches_done <= planned or epoch < 0:
                raise DataError(f"loader state is inconsistent: {segment} of epoch {epoch}: {state!r:.300}")
        if saved.layout() == self.layout.layout():
            done = saved.batches_done
        else:  # a new layout: what the old one consumed stays consumed, the rest is planned afresh
            history = [*history, saved] if saved.batches_done else history
            done = 0
        self._generation += 1
        self.epoch, self._history, self._done = epoch, tuple(history), done
        self._left = self._batches_in_layout(self._history)
        if self._done >= self._left:  # the epoch is used up (its rest is smaller than one global batch)
            self.epoch, self._history, self._done = epoch + 1, (), 0
            self._left = self.batches_per_epoch

    def close(self) -> None:
        """Stop the current iterator's worker processes now (SIGKILL: they ignore stop signals).

        The trainer calls this when it stops for any reason, so no worker outlives a failed rank; it
        also runs at interpreter exit.
        """
        pids, self._worker_pids = self._worker_pids, None
        self._generation += 1
        for pid in pids[:] if pids is not None else []:
            if pid > 0:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    # -- iteration -----------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[torch.Tensor]:
        """Batches of shape ``(batch_size, tracks, time, pitch)``, dtype bool, epoch after epoch, forever."""
        self._generation += 1
        generation = self._generation
        layout = dataclasses.replace(self.layout, batches_done=self._done)
        shape = self.data.shape
        if self.num_workers == 0:
            source = iter(_BatchStream(self.data, self.rank, layout, self.seed, self.epoch, self._history))
        else:
            context = torch.multiprocessing.get_context()
            slots = torch.zeros(
                (self.num_workers, _SLOTS, layout.batch_size, packed_size(shape)), dtype=torch.uint8
            )
            slots.share_memory_()
            slots_np = slots.numpy()
            self._worker_pids = context.Array("i", self.num_workers)
            free = [context.Semaphore(_SLOTS) for _ in range(self.num_workers)]
            stream = _BatchStream(
                self.data, self.rank, layout, self.seed, self.epoch, self._history, slots=slots, free=free
            )
            source = iter(
                DataLoader(
                    stream,
                    batch_size=None,
                    num_workers=self.num_workers,
                    prefetch_factor=_PREFETCH,
                    multiprocessing_context=context,
                    # A private generator: the iterator otherwise draws its base seed from the global
                    # torch RNG, so where an epoch starts (fresh or resumed) would shift later draws.
                    generator=torch.Generator(),
                    worker_init_fn=functools.partial(_init_worker, self._worker_pids, os.getpid()),
                )
            )
        try:
            for item in source:
                if generation != self._generation:
                    raise RuntimeError(
                        "TrainLoader: its position was changed after this iterator started; call iter() again"
                    )
                if isinstance(item, _WorkerFailure):
                    raise DataError(item.message)
                if isinstance(item, _Filled):
                    rolls = unpack_rolls(slots_np[item.worker, item.slot], shape)
                    free[item.worker].release()  # unpacking copied it: the worker may refill the slot
                else:
                    rolls = unpack_rolls(item, shape)
                if self.transpose:
                    draws = rng(
                        self.seed, self.epoch, TRANSPOSE_TAG, len(self._history), self.rank, self._done
                    )
                    transpose(
                        rolls, self.pitched, transpose_shifts(rolls, self.pitched, self.transpose, draws)
                    )
                self._count_batch()
                yield torch.from_numpy(rolls)
        finally:
            # Stop the workers now, by reference count: left to a later garbage collection (an exception's
            # traceback keeps this frame alive), the DataLoader's queues are finalized first and each
            # worker waits out a 5-second join timeout before it is killed.
            del source
