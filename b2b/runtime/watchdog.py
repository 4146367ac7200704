"""A stall watchdog: when no training step completes for ``train.stall_timeout_s``, every rank writes the
stack of each of its threads to the run folder (``faulthandler``), so a hung collective or a stuck data
loader on a multi-node job shows where each rank waits instead of silently burning the allocation.

On CUDA, NCCL's flight recorder is switched on through its environment variables (unless the user set
them): the last collectives of each rank are recorded and dumped when a collective times out.
"""

from __future__ import annotations

import faulthandler
import os
import sys
import threading
import time
from pathlib import Path

NCCL_FLIGHT_RECORDER = {
    "TORCH_NCCL_TRACE_BUFFER_SIZE": "2000",  # collectives kept per rank
    "TORCH_NCCL_DUMP_ON_TIMEOUT": "1",  # written when a collective times out
}


def enable_nccl_flight_recorder(run_path: Path) -> None:
    """Set NCCL's flight-recorder variables (before the process group starts); the user's win."""
    for key, value in NCCL_FLIGHT_RECORDER.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault(
        "TORCH_NCCL_DEBUG_INFO_TEMP_FILE", str(Path(run_path).absolute() / "nccl_trace_rank_")
    )


class StallWatchdog:
    """Watch the time since the last :meth:`beat`; past ``timeout_s``, dump every thread's stack once
    (to ``<run>/stall-rank<r>-<time>.txt``) and say where, then wait for the next beat to re-arm."""

    def __init__(self, timeout_s: float, run_path: Path, rank: int, poll_s: float = 1.0):
        self.timeout_s, self.run_path, self.rank, self.poll_s = timeout_s, Path(run_path), rank, poll_s
        self.last = time.monotonic()
        self.dumped = False
        self.dumps: list[Path] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="b2b-stall-watchdog", daemon=True)

    def start(self) -> None:
        """Start watching (a thread; none with ``timeout_s`` 0)."""
        self.last = time.monotonic()
        if self.timeout_s > 0:
            self._thread.start()

    def beat(self) -> None:
        """A step completed."""
        self.last = time.monotonic()
        self.dumped = False

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            stalled = time.monotonic() - self.last
            if stalled >= self.timeout_s and not self.dumped:
                self.dumped = True
                self.dump(stalled)

    def dump(self, stalled: float) -> Path:
        path = self.run_path / f"stall-rank{self.rank}-{time.strftime('%Y%m%d-%H%M%S')}.txt"
        with open(path, "w") as handle:
            handle.write(f"rank {self.rank}: no training step completed for {stalled:.0f} s\n")
            handle.flush()
            faulthandler.dump_traceback(file=handle, all_threads=True)
        self.dumps.append(path)
        print(
            f"b2b train: rank {self.rank}: no step completed for {stalled:.0f} s "
            f"(train.stall_timeout_s={self.timeout_s:g}); the stack of every thread is in {path}",
            file=sys.stderr,
            flush=True,
        )
        return path

    def stop(self) -> None:
        """Stop watching and wait for the thread to end."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
