"""One trainer per run folder: an exclusive lock held by rank 0 for the whole run.

``fcntl.flock`` on ``<run>/.lock``: the kernel releases it when the holder exits or dies, so a stale lock
never blocks. The file names the holder (host, pid, start time) for the message a second trainer prints.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from b2b.errors import B2BError

LOCK_FILE = ".lock"


class RunInUse(B2BError):
    """Another trainer holds the run folder."""


class RunLock:
    """Take the lock of ``run_path`` (created if needed) or raise :class:`RunInUse` naming the holder."""

    def __init__(self, run_path: Path):
        self.path = Path(run_path) / LOCK_FILE
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = open(self.path, "a+")
        except OSError as exc:
            verb = "write in" if self.path.parent.is_dir() else "create"
            raise B2BError(
                f"cannot {verb} the run folder {self.path.parent} ({exc.strerror}): the trainer keeps its "
                "lock, logs and checkpoints there; fix its permissions or choose another run_dir"
            ) from None
        try:
            fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._handle.seek(0)
            holder = self._handle.read().strip()
            self._handle.close()
            raise RunInUse(
                f"the run folder {self.path.parent} is in use by another trainer ({_describe(holder)}); "
                "wait for it to finish, stop it, or train under another name="
            ) from None
        self._handle.seek(0)
        self._handle.truncate()
        info = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        self._handle.write(json.dumps(info) + "\n")
        self._handle.flush()

    def release(self) -> None:
        if not self._handle.closed:
            self._handle.close()  # closing releases the flock


def _describe(holder: str) -> str:
    try:
        info = json.loads(holder)
        return f"pid {info['pid']} on host {info['host']}, since {info['since']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"
