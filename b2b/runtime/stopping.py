"""Stopping a run cleanly: the signals that ask for it, and the flag the training loop checks.

Slurm (preemption, time limit), terminals and launchers send SIGTERM, SIGINT or SIGUSR2 to every process
of a job. The training process sets a flag and stops at the next step boundary, after a checkpoint; its
data-loading workers ignore these signals (a worker killed mid-batch would end the step with an error
instead of a checkpoint) and are stopped by the training process (:meth:`b2b.data.loader.TrainLoader.close`).
"""

from __future__ import annotations

import signal

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)


class StopFlag:
    """Set by a stop signal; acted on at the next step boundary by every rank together."""

    def __init__(self) -> None:
        self.signal: int = 0
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        """Put back the handlers :meth:`install` replaced (a run that ends gives the signals back)."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]  # what signal.signal returned
        self._previous.clear()

    def _handle(self, signum: int, frame: object) -> None:
        self.signal = signum


def ignore_stop_signals() -> None:
    """For worker processes: leave stop signals to the training process."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def die_with_parent(parent: int) -> None:
    """Linux: have the kernel kill this process (SIGKILL) when its parent, pid ``parent``, dies, so no
    worker outlives a training process or shard build that was killed; if it is already gone (killed
    while this worker was starting), exit now. Elsewhere: a no-op."""
    import ctypes
    import os
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:
        os._exit(1)
