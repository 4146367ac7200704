"""The plan of an epoch: which sample each rank and worker reads, and in which order, from indices alone.

Pure functions of ``(seed, epoch)`` and the layout (world size, batch size, shuffle buffer, lanes), so the
order is the same on every run and a checkpoint only stores a position (see :mod:`b2b.data.loader` for how the
loader reads tars to fill the plan):

1. The samples of a split have global positions: shard ``i`` (in the manifest's order) holds positions
   ``[offset_i, offset_i + n_i)``. Epoch ``e`` shuffles the shard order with a generator seeded by
   ``(seed, e)`` and concatenates the shards' positions into one sequence.
2. With ``W`` ranks and batch size ``B``, every rank gets ``K = N // (W*B)`` batches; the last
   ``N - K*W*B < W*B`` positions of the sequence are dropped. Rank ``r`` takes the contiguous block
   ``[r*K*B, (r+1)*K*B)``, so it opens only the shards that overlap its block.
3. A rank's block is cut into one contiguous *lane* per DataLoader worker; lane ``l`` serves the rank's
   batches ``b`` with ``b mod lanes == l`` (the DataLoader's round-robin order).
4. Inside its lane a worker shuffles with a window of ``shuffle_buffer`` (``S``) samples: lane position
   ``i`` gets the key ``i + S*u`` (``u`` uniform, seeded by ``(seed, e, rank, lane)``), so a sample comes
   out at most ``S`` places from where it sits.

An epoch read with several layouts (a run resumed on another world size) is a list of
:class:`LayoutSpan`; :func:`remaining_sequence` gives what the earlier spans left of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SHARD_TAG, WINDOW_TAG, TRANSPOSE_TAG = 0, 1, 2  # keep the random streams of an epoch apart


@dataclass(frozen=True)
class LayoutSpan:
    """A span of an epoch read with one layout; ``batches_done`` batches per rank were consumed in it.

    ``lanes`` is the number of DataLoader workers (at least 1) that split each rank's block.
    """

    world_size: int
    batch_size: int
    shuffle_buffer: int
    lanes: int = 1
    batches_done: int = 0

    def layout(self) -> tuple[int, int, int, int]:
        return (self.world_size, self.batch_size, self.shuffle_buffer, self.lanes)

    def batches_per_rank(self, n_samples: int) -> int:
        return n_samples // (self.world_size * self.batch_size)


def rng(seed: int, *tags: int) -> np.random.Generator:
    return np.random.default_rng([seed % 2**64, *tags])


def epoch_sequence(counts: Sequence[int] | np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """All sample positions of a split, shards in the order epoch ``epoch`` visits them."""
    counts = np.asarray(counts, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    order = rng(seed, epoch, SHARD_TAG).permutation(len(counts))
    return np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in order])


def lane_batches(per_rank: int, lanes: int, lane: int, before: int | None = None) -> int:
    """How many of a rank's first ``before`` batches (default: all ``per_rank``) belong to ``lane``."""
    before = per_rank if before is None else before
    return max(0, (before - lane + lanes - 1) // lanes)


def lane_block(
    sequence: np.ndarray, rank: int, lane: int, layout: LayoutSpan, seed: int, epoch: int, segment: int
) -> tuple[np.ndarray, np.ndarray]:
    """The part of ``sequence`` that ``lane`` of ``rank`` reads, and the order it serves it in.

    Returns
    -------
    block : np.ndarray
        The lane's positions in reading order: a contiguous slice of the rank's ``K * batch_size``.
    perm : np.ndarray
        ``block[perm]`` is the lane's output order; its ``j``-th batch is the rank's batch
        ``j * lanes + lane``.
    """
    size = layout.batch_size
    per_rank = layout.batches_per_rank(len(sequence))
    start = (rank * per_rank + sum(lane_batches(per_rank, layout.lanes, m) for m in range(lane))) * size
    block = sequence[start : start + lane_batches(per_rank, layout.lanes, lane) * size]
    jitter = rng(seed, epoch, WINDOW_TAG, segment, rank, lane).random(len(block))
    perm = np.argsort(np.arange(len(block)) + layout.shuffle_buffer * jitter, kind="stable")
    return block, perm


def remaining_sequence(
    counts: Sequence[int] | np.ndarray, seed: int, epoch: int, history: Sequence[LayoutSpan]
) -> np.ndarray:
    """The positions of epoch ``epoch`` not consumed by the segments in ``history``, in reading order."""
    sequence = epoch_sequence(counts, seed, epoch)
    for index, segment in enumerate(history):
        taken = np.zeros(int(np.sum(counts)), dtype=bool)
        per_rank = segment.batches_per_rank(len(sequence))
        for rank in range(segment.world_size):
            for lane in range(segment.lanes):
                block, perm = lane_block(sequence, rank, lane, segment, seed, epoch, index)
                done = lane_batches(per_rank, segment.lanes, lane, before=segment.batches_done)
                taken[block[perm[: done * segment.batch_size]]] = True
        sequence = sequence[~taken[sequence]]
    return sequence
