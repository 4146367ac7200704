"""Two real ranks over gloo, each with its own TrainLoader: disjoint, complete epochs, equal batch counts."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_data import ids_of, write_shards

EPOCHS = 2


def _rank(rank: int, world: int, root: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{out}/rendezvous",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=60),
    )
    try:
        from b2b.data.loader import TrainLoader

        # 1 worker per rank: the batches cross a real worker process too.
        loader = TrainLoader(root, batch_size=3, rank=rank, world_size=world, seed=11, num_workers=1)
        epochs, current = [], {"ids": [], "batches": 0}
        for batch in loader:
            dist.all_reduce(torch.ones(1))  # as DDP does every step: unequal batch counts would hang here
            current["ids"] += ids_of(batch)
            current["batches"] += 1
            if loader.epoch != len(epochs):  # that batch was the last of its epoch
                epochs.append(current)
                current = {"ids": [], "batches": 0}
                if len(epochs) == EPOCHS:
                    break
        mine = {
            "epochs": epochs,
            "batches_per_epoch": loader.batches_per_epoch,
            "dropped": loader.dropped_per_epoch,
            "state": loader.state_dict(),
        }
        gathered = [None] * world
        dist.all_gather_object(gathered, mine)
        if rank == 0:
            (Path(out) / "result.json").write_text(json.dumps(gathered))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_cover_each_epoch_once_with_equal_batch_counts(tmp_path):
    root = write_shards(tmp_path / "shards", sizes=(7, 3, 12, 5, 9, 1), val_sizes=(2,))  # 37 samples
    # spawn: fresh interpreters, as a launcher starts ranks (each one's DataLoader worker forks from it)
    mp.spawn(_rank, args=(2, str(root), str(tmp_path)), nprocs=2, join=True)
    ranks = json.loads((tmp_path / "result.json").read_text())
    assert [r["batches_per_epoch"] for r in ranks] == [6, 6] and ranks[0]["dropped"] == 37 - 36
    for epoch in range(EPOCHS):
        per_rank = [r["epochs"][epoch]["ids"] for r in ranks]
        assert [r["epochs"][epoch]["batches"] for r in ranks] == [6, 6]
        assert not set(per_rank[0]) & set(per_rank[1]), f"epoch {epoch}: both ranks saw the same sample"
        served = per_rank[0] + per_rank[1]
        assert len(set(served)) == 36 and set(served) <= set(range(37))
    assert ranks[0]["epochs"][0]["ids"] != ranks[0]["epochs"][1]["ids"]
    assert ranks[0]["state"] == ranks[1]["state"] and ranks[0]["state"]["epoch"] == EPOCHS
